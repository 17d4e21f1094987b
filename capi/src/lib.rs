//! `libtinydiffusion.a`: the core crate's C API (`tinydiffusion::capi`, see
//! `include/tinydiffusion.h`), linked into one static library with the Rust runtime it needs.
//! Build with `cargo build --release -p tinydiffusion-capi`.

pub use tinydiffusion_core::*;
