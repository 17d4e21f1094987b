//! Puts memory.x where the linker (cortex-m-rt's link.x) finds it, and rebuilds when the
//! weights or the memory map change.
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=../../weights/mcu");
    println!("cargo:rerun-if-env-changed=TD_MCU_STEPS");
}
