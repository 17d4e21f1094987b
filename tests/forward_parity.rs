//! The UNet forward pass against diffusers (float64 reference with f16-rounded weights):
//! every fixture model, output within 1e-4 relative L2, and each diffusers block's activation
//! checked too, so a mismatch names the block where it starts.

mod common;

use common::{fixtures_dir, forward_case, rel_l2, tap_nchw};
use tinydiffusion::kernels::KernelPath;
use tinydiffusion::memory::Reuse;
use tinydiffusion::weights::LoadOptions;
use tinydiffusion::Model;

pub const MODELS: [&str; 4] = [
    "tiny-rgb16",
    "tiny-gray8",
    "tiny-class16",
    "tiny-learnedvar8",
];

fn check_model(name: &str, path: KernelPath) {
    let dir = fixtures_dir().join(name);
    let case = forward_case(name);
    // Every tensor in its own slot, so each block's output can be read after the pass.
    let mut model = Model::load_with(&dir, LoadOptions::default(), Reuse::None).unwrap();
    model.set_kernels(path).unwrap();
    let (c, h, w) = model.input_shape();
    let batch = case.x.len() / (c * h * w);
    let mut ws = vec![0.0f32; model.workspace_len(batch)];
    let mut out = vec![0.0f32; case.expected.len()];
    model
        .forward(&mut ws, &case.x, &case.t, case.labels.as_deref(), &mut out)
        .unwrap();

    let mut report = String::new();
    for tap in model.taps() {
        let (key, post) = match tap.name.split_once('+') {
            Some((k, p)) => (k, Some(p)),
            None => (tap.name.as_str(), None),
        };
        let Some(tensor) = case.activations.get(key) else {
            continue;
        };
        let mut expected = case.tensors.f64s(tensor.as_str().unwrap());
        if post == Some("silu") {
            expected
                .iter_mut()
                .for_each(|v| *v = *v / (1.0 + (-*v).exp()));
        }
        // Ours is NHWC (or [B, E] for embeddings); diffusers' is NCHW.
        let ours = tap_nchw(&model, &ws, tap, batch);
        report += &format!("  {:<22} {:.2e}\n", tap.name, rel_l2(&ours, &expected));
    }
    let err = rel_l2(&out, &case.expected);
    println!(
        "{name} [{}]: out rel L2 {err:.3e}\n{report}",
        model.kernels_name()
    );
    assert!(
        err <= 1e-4,
        "{name}: forward rel L2 {err:.3e} > 1e-4\n{report}"
    );

    // The shared (inference) plan must give the same numbers bit for bit.
    let mut shared = Model::load(&dir).unwrap();
    shared.set_kernels(path).unwrap();
    assert!(shared.workspace_len(batch) < model.workspace_len(batch));
    let mut ws2 = vec![f32::NAN; shared.workspace_len(batch)];
    let mut out2 = vec![0.0f32; out.len()];
    shared
        .forward(
            &mut ws2,
            &case.x,
            &case.t,
            case.labels.as_deref(),
            &mut out2,
        )
        .unwrap();
    assert_eq!(out, out2, "{name}: shared memory plan changed the result");

    // Any thread count gives the same bits (kernels split outputs, never reductions).
    for threads in [1, 3] {
        shared.set_threads(threads).unwrap();
        let mut ws3 = vec![f32::NAN; shared.workspace_len(batch)];
        let mut out3 = vec![0.0f32; out.len()];
        shared
            .forward(
                &mut ws3,
                &case.x,
                &case.t,
                case.labels.as_deref(),
                &mut out3,
            )
            .unwrap();
        assert_eq!(out, out3, "{name}: {threads} threads changed the result");
    }
}

/// Runs every fixture model on `path`, or says why it cannot on this machine.
fn check_path(path: KernelPath) {
    if !path.is_available() {
        println!(
            "skipped: this CPU or build cannot run the {} kernels",
            path.name()
        );
        return;
    }
    for m in MODELS {
        check_model(m, path);
    }
}

#[test]
fn forward_matches_diffusers_avx2() {
    check_path(KernelPath::Avx2);
}

#[test]
fn forward_matches_diffusers_avx512() {
    check_path(KernelPath::Avx512);
}

#[test]
fn forward_matches_diffusers_neon() {
    check_path(KernelPath::Neon);
}

#[test]
fn unavailable_path_is_an_error() {
    let mut model = Model::load(fixtures_dir().join("tiny-rgb16")).unwrap();
    for path in KernelPath::ALL {
        assert_eq!(
            model.set_kernels(path).is_ok(),
            path.is_available(),
            "{path:?}"
        );
    }
    assert!(KernelPath::Scalar.is_available());
    assert!(KernelPath::detect().is_available());
    assert_eq!(KernelPath::parse("AVX512"), Some(KernelPath::Avx512));
    assert_eq!(KernelPath::parse("sse"), None);
}

#[test]
fn forward_matches_diffusers_scalar() {
    for m in MODELS {
        check_model(m, KernelPath::Scalar);
    }
}
