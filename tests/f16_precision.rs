//! The opt-in f16 precision (`Model::set_precision`): the setting itself everywhere; on a CPU
//! with f16 arithmetic (aarch64 FEAT_FP16, e.g. `qemu-aarch64 -cpu max` in `.ci/neon.sh`) the
//! whole forward pass of every fixture against diffusers' float64 output, and a sampling run
//! against the same run in f32. Elsewhere those two say "skipped" and check the typed refusal.

mod common;

use common::{fixtures_dir, rel_l2};
use tinydiffusion::kernels::{KernelPath, F16_NEEDS};
use tinydiffusion::sampler::{SampleOptions, Sampler, SamplerKind};
use tinydiffusion::schedule::SchedulerConfig;
use tinydiffusion::{Error, Model, Precision};

const MODELS: [&str; 4] = [
    "tiny-rgb16",
    "tiny-gray8",
    "tiny-class16",
    "tiny-learnedvar8",
];

/// Whole forward pass in f16 against float64. The f32 path is within 1e-4; f16 rounds every
/// conv/linear input to 11 bits (2.4e-4 relative) and sums 32 products in f16, and the errors
/// of about 40 ops compound: 5e-3 leaves room for that and still catches a wrong kernel
/// (a misplaced tap or channel is O(1)).
const FORWARD_BAR: f64 = 5e-3;
/// A 20-step DDIM run in f16 against the same run in f32 (the target).
const SAMPLING_BAR: f64 = 1e-2;

fn f16_available() -> bool {
    let ok = KernelPath::F16.iter().any(|p| p.is_available());
    if !ok {
        println!("skipped: this CPU has no f16 arithmetic (needs aarch64 FEAT_FP16); checked the typed refusal instead");
    }
    ok
}

#[test]
fn precision_setting() {
    assert_eq!(Precision::default(), Precision::F32);
    assert_eq!(Precision::from_name("F16").unwrap(), Precision::F16);
    assert_eq!(Precision::from_name(" f32 ").unwrap(), Precision::F32);
    assert!(matches!(
        Precision::from_name("bf16"),
        Err(Error::InvalidArgument {
            what: "precision",
            ..
        })
    ));
    assert_eq!(KernelPath::parse("NEON-FP16"), Some(KernelPath::NeonFp16));
    assert_eq!(KernelPath::NeonFp16.precision(), Precision::F16);
    assert!(KernelPath::ALL
        .iter()
        .all(|p| p.precision() == Precision::F32));
    assert_eq!(KernelPath::detect().precision(), Precision::F32);

    let mut model = Model::load(fixtures_dir().join("tiny-rgb16")).unwrap();
    assert_eq!(model.precision(), Precision::F32);
    let f32_path = model.kernels();
    if KernelPath::NeonFp16.is_available() {
        model.set_precision(Precision::F16).unwrap();
        assert_eq!(model.precision(), Precision::F16);
        assert_eq!(model.kernels_name(), "neon-fp16");
        model.set_precision(Precision::F32).unwrap();
        assert_eq!(model.kernels(), f32_path);
    } else {
        let err = model.set_precision(Precision::F16).unwrap_err();
        assert_eq!(
            err,
            Error::UnsupportedConfig {
                key: "precision".into(),
                value: F16_NEEDS.into()
            }
        );
        assert!(err.to_string().contains("FEAT_FP16"), "{err}");
        assert_eq!(
            model.kernels(),
            f32_path,
            "a refused precision changed the model"
        );
        assert!(model.set_kernels(KernelPath::NeonFp16).is_err());
    }
    model.set_precision(Precision::F32).unwrap();
    assert_eq!(model.kernels(), f32_path);
}

#[test]
fn f16_forward_against_float64() {
    if !f16_available() {
        return;
    }
    for name in MODELS {
        let common::ForwardCase {
            x,
            t,
            labels,
            expected,
            ..
        } = common::forward_case(name);
        let mut model = Model::load(fixtures_dir().join(name)).unwrap();
        let (c, h, w) = model.input_shape();
        let batch = x.len() / (c * h * w);
        let run = |model: &Model| {
            let mut ws = vec![f32::NAN; model.workspace_len(batch)];
            let mut out = vec![0.0f32; expected.len()];
            model
                .forward(&mut ws, &x, &t, labels.as_deref(), &mut out)
                .unwrap();
            out
        };
        let out32 = run(&model);
        model.set_precision(Precision::F16).unwrap();
        let out16 = run(&model);
        let (e16, e32) = (rel_l2(&out16, &expected), rel_l2(&out32, &expected));
        println!(
            "{name} [{}]: out rel L2 vs float64 {e16:.3e} (f32 path {e32:.3e}; f16 vs f32 {:.3e})",
            model.kernels_name(),
            rel_l2(&out16, &out32.iter().map(|&v| v as f64).collect::<Vec<_>>())
        );
        assert!(
            e16 <= FORWARD_BAR,
            "{name}: f16 forward rel L2 {e16:.3e} > {FORWARD_BAR:.0e}"
        );
        // Tasks split pixels and channels, never the reduction: any thread count, same bits.
        model.set_threads(3).unwrap();
        assert_eq!(
            run(&model),
            out16,
            "{name}: 3 threads changed the f16 result"
        );
    }
}

/// A 20-step DDIM run (batch 2, seed 7) in f16 and in f32 on `model`: rel L2 of x_0.
fn sampling_run_error(model: &mut Model) -> f64 {
    let sampler = Sampler::builder(SamplerKind::Ddim)
        .steps(20)
        .build(&SchedulerConfig::ddpm_default())
        .unwrap();
    let batch = 2;
    let (c, h, w) = model.image_shape();
    let run = |model: &Model| {
        let mut ws = vec![0.0f32; sampler.workspace_len(model, batch, false)];
        let mut out = vec![0.0f32; batch * c * h * w];
        sampler
            .sample(
                model,
                &mut ws,
                &SampleOptions::new(batch, 7),
                &mut out,
                None,
            )
            .unwrap();
        out
    };
    model.set_precision(Precision::F32).unwrap();
    let x32 = run(model);
    model.set_precision(Precision::F16).unwrap();
    let x16 = run(model);
    rel_l2(&x16, &x32)
}

#[test]
fn f16_sampling_run_against_f32() {
    if !f16_available() {
        return;
    }
    // A trained model (the 16x16 MNIST one of weights/mcu: the 32x32 default model takes too
    // long under QEMU): a denoiser contracts errors, as real models do.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/mcu");
    let mut model = Model::load(dir).unwrap();
    let err = sampling_run_error(&mut model);
    println!("trained MNIST 16x16 model (weights/mcu): DDIM-20 sampling run, f16 vs f32 rel L2 {err:.3e}");
    assert!(
        err <= SAMPLING_BAR,
        "weights/mcu: f16 sampling run rel L2 {err:.3e} > {SAMPLING_BAR:.0e}"
    ); // Random-weight fixtures are no denoisers: their 20-step runs amplify any per-step
       // difference (reported, not held to the bar).
    for name in ["tiny-rgb16", "tiny-class16"] {
        let mut model = Model::load(fixtures_dir().join(name)).unwrap();
        let err = sampling_run_error(&mut model);
        println!("{name} (random weights): DDIM-20 sampling run, f16 vs f32 rel L2 {err:.3e}");
    }
}
