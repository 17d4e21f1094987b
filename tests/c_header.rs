//! The committed C header `include/tinydiffusion.h` must equal a fresh cbindgen generation
//! from `src/capi/mod.rs` (and the modules it declares) with `cbindgen.toml`. Set
//! `TD_BLESS_HEADER=1` to rewrite it instead.

use std::path::PathBuf;

fn generate() -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src").join("capi").join("mod.rs"))
        .generate()
        .expect("cbindgen failed on src/capi/");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("header is UTF-8")
}

#[test]
fn committed_header_is_fresh() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("include")
        .join("tinydiffusion.h");
    let fresh = generate();
    if std::env::var_os("TD_BLESS_HEADER").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    // Compare ignoring line-ending differences (a checkout with autocrlf).
    if committed.replace("\r\n", "\n") != fresh {
        let first = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b);
        panic!(
            "include/tinydiffusion.h is stale (first differing line: {}); regenerate it with\n  \
             TD_BLESS_HEADER=1 cargo test --test c_header\nand commit it",
            first.map_or("at the end".to_string(), |i| (i + 1).to_string())
        );
    }
}
