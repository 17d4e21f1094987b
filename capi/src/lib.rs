//! `libtinydiffusion.a`: the C static library. The functions live in `tinydiffusion::capi`
//! (src/capi/); this crate only links them, with everything they need, into one archive.
//! Header: `include/tinydiffusion.h`.

pub use tinydiffusion_core::capi::*;
