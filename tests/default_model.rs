//! The default model shipped in `weights/`: what the issue promises of it (a class-conditional
//! 32x32 MNIST `UNet2DModel`, 10 classes + a null class, at most ~1.5M parameters, f16 in the
//! kernels' layout so it loads with no copy), and that `sample` with no `--model` uses it.

use std::path::PathBuf;
use std::process::Command;

use tinydiffusion::Model;

fn weights_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights")
}

#[test]
fn the_default_model_is_the_promised_mnist_model_and_loads_in_place() {
    let model = Model::load(weights_dir()).expect("weights/ holds the default model");
    assert_eq!(model.input_shape(), (1, 32, 32));
    assert_eq!(model.config.num_class_embeds, Some(11));
    assert!(
        model.parameters() <= 1_500_000,
        "{} parameters",
        model.parameters()
    );
    assert_eq!(
        model.weights().owned_len(),
        0,
        "weights/ must be converted (f16, packed) so that it loads without a copy"
    );
}

#[test]
fn sample_without_flags_uses_the_default_model() {
    // From a folder with no weights/ of its own, `sample` falls back to the one beside the
    // sources. Ten DDIM steps keep the test short; the defaults are otherwise untouched.
    let dir = std::env::temp_dir().join(format!("tinydiffusion-default-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sample"))
        .current_dir(&dir)
        .args(["--scheduler", "ddim", "--steps", "10", "--quiet"])
        .output()
        .expect("run sample");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(dir.join("samples.png")).expect("samples.png written");
    let reader = png::Decoder::new(std::io::Cursor::new(&png))
        .read_info()
        .unwrap();
    // The default batch of 4 in a 2x2 grid of 32x32 grayscale images with 2-pixel gaps.
    let info = reader.info();
    assert_eq!(
        (info.width, info.height, info.color_type),
        (66, 66, png::ColorType::Grayscale)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
