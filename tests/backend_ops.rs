//! Every backend against the scalar reference, one op at a time (ggml's `test-backend-ops`
//! idea): the scalar kernels run a whole forward pass of each fixture model with every tensor
//! in its own slot; then each other backend runs each op alone on a copy of that workspace
//! (the op's reference inputs) and its output must match the reference's.
//!
//! Backends: every SIMD path this CPU has (Winograd on and off), and the CUDA backend when the
//! build has it and a GPU is present (it says so when it skips). The test also checks that the
//! fixtures exercise every op kind, so a new op without a case fails here.

mod common;

use std::collections::BTreeSet;

use common::{fixtures_dir, rel_l2};
use tinydiffusion::kernels::KernelPath;
use tinydiffusion::memory::Reuse;
use tinydiffusion::model::{Op, TextEncoder};
use tinydiffusion::weights::LoadOptions;
use tinydiffusion::Model;

const MODELS: [&str; 13] = [
    "tiny-rgb16",
    "tiny-gray8",
    "tiny-class16",
    "tiny-learnedvar8",
    "extra/options-a",
    "extra/options-b",
    "extra/options-c",
    "unet-a/iddpm8",
    "unet-a/learned8",
    "unet-a/gelu8",
    "unet-a/relu8",
    "unet-a/classts8",
    "ncsnpp/tiny-ncsnpp8",
];

/// Every op kind the model description has (`Op::kind`). Not listed: `geglu`, which no model
/// emits yet (the conditional UNet will; `tests/text_ops_parity.rs` checks its kernel).
const ALL_KINDS: [&str; 19] = [
    "input",
    "sinusoid",
    "linear",
    "silu",
    "class_embedding",
    "conv",
    "group_norm",
    "attention",
    "output",
    "scale_shift",
    "resample",
    "activation",
    "timestep_table",
    "class_sinusoid",
    "fourier_embedding",
    "fir_resample",
    "timestep_divide",
    "layer_norm",
    "token_embedding",
];

/// The CLIP text encoders (token ids in): layer_norm, token_embedding, causal attention,
/// quick_gelu and gelu activations.
const TEXT_ENCODERS: [&str; 2] = ["quick", "gelu"];

/// A fixture model with every tensor in its own workspace slot.
fn load(name: &str) -> Model {
    Model::load_with(
        fixtures_dir().join(name),
        LoadOptions::default(),
        Reuse::None,
    )
    .unwrap()
}

/// Inputs and the scalar reference's workspace after a whole forward pass.
struct Reference {
    batch: usize,
    x: Vec<f32>,
    t: Vec<f32>,
    labels: Option<Vec<i64>>,
    workspace: Vec<f32>,
    out: Vec<f32>,
}

fn reference(name: &str) -> Reference {
    let mut model = load(name);
    model.set_kernels(KernelPath::Scalar).unwrap();
    let batch = 2;
    let (c, h, w) = model.input_shape();
    let (c_out, _, _) = model.output_shape();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let x: Vec<f32> = (0..batch * c * h * w)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    // A fractional timestep and a large one (where f32 rounding of the sinusoid matters).
    // A learned time embedding takes integer timesteps only.
    let t = match model.config.learned_time_embedding {
        None => vec![37.5, 981.0],
        Some(_) => vec![37.0, 981.0],
    };
    let labels = model
        .config
        .num_class_embeds
        .map(|n| vec![1 % n as i64, 3 % n as i64]);
    let mut workspace = vec![0.0f32; model.workspace_len(batch)];
    let mut out = vec![0.0f32; batch * c_out * h * w];
    model
        .forward(&mut workspace, &x, &t, labels.as_deref(), &mut out)
        .unwrap();
    Reference {
        batch,
        x,
        t,
        labels,
        workspace,
        out,
    }
}

/// Runs each op of `model` alone on the reference's inputs; returns the op kinds checked.
fn check_ops(
    name: &str,
    backend: &str,
    model: &Model,
    r: &Reference,
    bar: f64,
) -> Vec<&'static str> {
    check_ops_with(name, backend, model, r, |_| bar)
}

/// [`check_ops`] with a bar per op.
fn check_ops_with(
    name: &str,
    backend: &str,
    model: &Model,
    r: &Reference,
    bar_of: impl Fn(&Op) -> f64,
) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    let mut worst = (0.0f64, "");
    for (at, op) in model.ops().iter().enumerate() {
        let mut ws = r.workspace.clone();
        ws.resize(model.workspace_len(r.batch), 0.0);
        let mut out = vec![f32::NAN; r.out.len()];
        model
            .forward_ops(
                at..at + 1,
                &mut ws,
                &r.x,
                &r.t,
                r.labels.as_deref(),
                &mut out,
            )
            .unwrap_or_else(|e| panic!("{name} [{backend}] op {at} ({}): {e}", op.kind()));
        let err = match op.output() {
            Some(t) => {
                let (s, l) = model.tensor_region(t, r.batch);
                rel_l2(&ws[s..s + l], &r.workspace[s..s + l])
            }
            None => rel_l2(&out, &r.out),
        };
        let bar = bar_of(op);
        assert!(
            err <= bar,
            "{name} [{backend}] op {at} ({}): rel L2 {err:.3e} against the scalar reference \
             (bar {bar:.0e}); op: {op:?}",
            op.kind()
        );
        if err > worst.0 {
            worst = (err, op.kind());
        }
        kinds.push(op.kind());
    }
    println!(
        "{name} [{backend}]: {} ops, worst rel L2 {:.2e} ({})",
        model.ops().len(),
        worst.0,
        worst.1
    );
    kinds
}

#[test]
fn cpu_paths_match_scalar_op_by_op() {
    let mut covered = BTreeSet::new();
    for name in MODELS {
        let r = reference(name);
        for path in KernelPath::ALL {
            if path == KernelPath::Scalar {
                continue;
            }
            if !path.is_available() {
                println!(
                    "skipped: this CPU or build cannot run the {} kernels",
                    path.name()
                );
                continue;
            }
            for winograd in [true, false] {
                let mut model = load(name);
                model.set_kernels(path).unwrap();
                model.set_winograd(winograd);
                let label = format!(
                    "{}{}",
                    path.name(),
                    if winograd { "" } else { ", direct conv" }
                );
                // Winograd convs are within about 3e-6 of the direct kernel; the rest are
                // reassociated sums of the same products.
                covered.extend(check_ops(name, &label, &model, &r, 2e-5));
            }
        }
    }
    for name in TEXT_ENCODERS {
        covered.extend(check_text_encoder(name));
    }
    let missing: Vec<_> = ALL_KINDS.iter().filter(|k| !covered.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "op kinds no fixture exercises: {missing:?} (add a fixture that has them)"
    );
}

/// The f16-arithmetic paths (`Precision::F16`), op by op against the scalar reference. Each op
/// reads the reference's exact inputs, so an op's error is its own: f16 rounding of the conv or
/// linear input (2.4e-4 relative per value) and, mostly, the f16 accumulator's rounding over
/// 32-step sums give up to 1.1e-3 under `qemu-aarch64 -cpu max` on every fixture; the bar,
/// 3e-3, leaves room for that and is still far below a wrong tap or channel (O(1)). Ops the
/// f16 paths leave in f32 are held to the f32 bar.
#[test]
fn f16_paths_match_scalar_op_by_op() {
    for path in KernelPath::F16 {
        if !path.is_available() {
            println!(
                "skipped: this CPU or build cannot run the {} kernels (needs f16 arithmetic)",
                path.name()
            );
            continue;
        }
        for name in MODELS {
            let r = reference(name);
            let mut model = load(name);
            model.set_kernels(path).unwrap();
            check_ops_with(name, path.name(), &model, &r, |op| match op {
                Op::Conv(_) | Op::Linear(_) => 3e-3,
                _ => 2e-5,
            });
        }
    }
}

fn load_text(name: &str) -> TextEncoder {
    let dir = fixtures_dir()
        .join("clip-text")
        .join(name)
        .join("text_encoder");
    TextEncoder::load_with(&dir, 0, LoadOptions::default(), Reuse::None).unwrap()
}

/// Each op of a text encoder alone on the scalar reference's workspace, on every other CPU
/// path; returns the op kinds checked.
fn check_text_encoder(name: &str) -> Vec<&'static str> {
    let mut reference = load_text(name);
    reference.net_mut().set_kernels(KernelPath::Scalar).unwrap();
    let batch = 2;
    let vocab = reference.config.vocab_size as u32;
    let ids: Vec<u32> = (0..batch * reference.tokens())
        .map(|i| (i as u32 * 7919) % vocab)
        .collect();
    let mut ws_ref = vec![0.0f32; reference.workspace_len(batch)];
    let mut out_ref = vec![0.0f32; batch * reference.output_len()];
    reference
        .encode(0, &mut ws_ref, &ids, &mut out_ref)
        .unwrap();
    let mut kinds = Vec::new();
    for path in KernelPath::ALL {
        if path == KernelPath::Scalar || !path.is_available() {
            continue;
        }
        let mut enc = load_text(name);
        enc.net_mut().set_kernels(path).unwrap();
        let mut worst = (0.0f64, "");
        for (at, op) in enc.net().ops().iter().enumerate() {
            let mut ws = ws_ref.clone();
            ws.resize(enc.workspace_len(batch), 0.0);
            let mut out = vec![f32::NAN; out_ref.len()];
            enc.encode_ops(at..at + 1, &mut ws, &ids, &mut out)
                .unwrap_or_else(|e| panic!("{name} [{}] op {at}: {e}", path.name()));
            let err = match op.output() {
                Some(t) => {
                    let (s, l) = enc.net().tensor_region(t, batch);
                    rel_l2(&ws[s..s + l], &ws_ref[s..s + l])
                }
                None => rel_l2(&out, &out_ref),
            };
            assert!(
                err <= 2e-5,
                "text encoder {name} [{}] op {at} ({}): rel L2 {err:.3e}; op: {op:?}",
                path.name(),
                op.kind()
            );
            if err > worst.0 {
                worst = (err, op.kind());
            }
            kinds.push(op.kind());
        }
        println!(
            "text encoder {name} [{}]: {} ops, worst rel L2 {:.2e} ({})",
            path.name(),
            enc.net().ops().len(),
            worst.0,
            worst.1
        );
    }
    kinds
}

#[test]
fn every_op_kind_is_listed() {
    // `Op::kind` of every variant must be in ALL_KINDS (a new variant must be added there and
    // get a fixture above).
    let model = load("tiny-class16");
    for op in model.ops() {
        assert!(
            ALL_KINDS.contains(&op.kind()),
            "unlisted op kind {}",
            op.kind()
        );
    }
    assert!(model
        .ops()
        .iter()
        .any(|o| matches!(o, Op::ClassEmbedding(_))));
}

/// The CUDA backend op by op (f16 activations on the device: bar 5e-3). Runs only where the
/// build has the `cuda` feature and a GPU, driver and NVRTC are present.
#[cfg(feature = "cuda")]
#[test]
fn cuda_matches_scalar_op_by_op() {
    for name in MODELS {
        let r = reference(name);
        let mut model = load(name);
        if let Err(e) = model.to_device(tinydiffusion::Device::Cuda(0)) {
            // .ci/cuda_gpu_check.sh sets this on the GPU machine, where a skip is a failure.
            if std::env::var("TINYDIFFUSION_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("TINYDIFFUSION_REQUIRE_GPU=1 but the CUDA backend cannot run: {e}");
            }
            println!("skipped: the CUDA backend cannot run here: {e}");
            return;
        }
        check_ops(name, "cuda", &model, &r, 5e-3);
    }
}
