//! Every backend against the scalar reference, one op at a time (ggml's `test-backend-ops`
//! idea): the scalar kernels run a whole forward pass of each fixture model with every tensor
//! in its own slot; then each other backend runs each op alone on a copy of that arena
//! (the op's reference inputs) and its output must match the reference's.
//!
//! Backends: every SIMD path this CPU has (Winograd on and off), and the CUDA backend when the
//! build has it and a GPU is present (it says so when it skips). The test also checks that the
//! fixtures exercise every op kind of the library's list (`model::KINDS`), so a new op without a
//! case fails here.

mod common;

use std::collections::BTreeSet;

use common::{fixtures_dir, rel_l2};
use tinydiffusion::kernels::KernelPath;
use tinydiffusion::memory::Reuse;
use tinydiffusion::model::decoder::Decoder;
use tinydiffusion::model::{Op, TextEncoder, KINDS};
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

/// Beyond `MODELS`: the identity class-embedding UNet (`class_vector`, fed float class
/// embeddings) and the latent pipelines' decoders (VQ, KL, and AutoencoderTiny's
/// `elementwise`), run op by op as the UNets are.
const IDENTITY_MODELS: [&str; 1] = ["unet-c/identity8"];
const DECODERS: [&str; 3] = ["latent/ldm/vqvae", "latent/kl/vae", "latent/tiny_vae"];

/// Op kinds of the library's list ([`KINDS`]) that no model emits yet, with where their kernel
/// is checked instead. The coverage test fails once a fixture emits one: it then belongs to the
/// op-by-op checks like every other kind. (None today: the conditional UNet emits `geglu`.)
const NOT_EMITTED: [(&str, &str); 0] = [];

/// The text-conditional UNets (`tests/fixtures/unet-cond`): cross-attention, layer_norm,
/// geglu, encoder_states.
const CONDITIONAL_UNETS: [&str; 2] = ["sd1", "sd2"];

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

/// A latent pipeline's decoder with every tensor in its own workspace slot.
fn load_decoder(name: &str) -> Decoder {
    Decoder::load_with(
        &fixtures_dir().join(name),
        (8, 8),
        LoadOptions::default(),
        Reuse::None,
    )
    .unwrap()
}

/// A UNet (`MODELS`, `IDENTITY_MODELS`) or a decoder's net (`DECODERS`), by fixture name.
enum Subject {
    Unet(Model),
    Decoder(Decoder),
}

impl Subject {
    fn load(name: &str) -> Subject {
        if DECODERS.contains(&name) {
            Subject::Decoder(load_decoder(name))
        } else {
            Subject::Unet(load(name))
        }
    }
    fn net(&self) -> &Model {
        match self {
            Subject::Unet(m) => m,
            Subject::Decoder(d) => d.net(),
        }
    }
    fn net_mut(&mut self) -> &mut Model {
        match self {
            Subject::Unet(m) => m,
            Subject::Decoder(d) => d.net_mut(),
        }
    }
}

/// Every fixture run op by op on the CPU paths.
fn cpu_subjects() -> impl Iterator<Item = &'static str> {
    MODELS.into_iter().chain(IDENTITY_MODELS).chain(DECODERS)
}

/// The conditioning a forward pass takes besides `x` and `t`.
enum Condition {
    Labels(Option<Vec<i64>>),
    /// `class_embed_type: "identity"`: `[batch, time_embed_dim]` floats.
    ClassEmbeddings(Vec<f32>),
}

/// Inputs and the scalar reference's workspace after a whole forward pass.
struct Reference {
    batch: usize,
    x: Vec<f32>,
    t: Vec<f32>,
    condition: Condition,
    workspace: Vec<f32>,
    out: Vec<f32>,
}

impl Reference {
    /// `model`'s ops `ops` on these inputs.
    fn run(
        &self,
        model: &Model,
        ops: std::ops::Range<usize>,
        ws: &mut [f32],
        out: &mut [f32],
    ) -> tinydiffusion::Result<()> {
        let (x, t) = (&self.x, &self.t);
        match &self.condition {
            Condition::Labels(l) => model.forward_ops(ops, ws, x, t, l.as_deref(), out),
            Condition::ClassEmbeddings(e) => {
                model.forward_ops_with_class_embeddings(ops, ws, x, t, e, out)
            }
        }
    }
}

fn reference(name: &str) -> Reference {
    let mut subject = Subject::load(name);
    let model = subject.net_mut();
    model.set_kernels(KernelPath::Scalar).unwrap();
    let batch = 2;
    let (c, h, w) = model.input_shape();
    let (c_out, _, _) = model.output_shape();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    };
    let x = uniform(batch * c * h * w);
    // A fractional timestep and a large one (where f32 rounding of the sinusoid matters).
    // A learned time embedding takes integer timesteps only.
    let t = match model.config.learned_time_embedding {
        None => vec![37.5, 981.0],
        Some(_) => vec![37.0, 981.0],
    };
    let condition = if model.config.identity_class_embedding {
        Condition::ClassEmbeddings(uniform(batch * model.config.time_embed_dim))
    } else {
        let labels = (model.config.num_class_embeds).map(|n| vec![1 % n as i64, 3 % n as i64]);
        Condition::Labels(labels)
    };
    let (_, out_h, out_w) = model.output_shape();
    let mut r = Reference {
        batch,
        x,
        t,
        condition,
        workspace: vec![0.0f32; model.workspace_len(batch)],
        out: vec![0.0f32; batch * c_out * out_h * out_w],
    };
    let (mut ws, mut out) = (std::mem::take(&mut r.workspace), std::mem::take(&mut r.out));
    let all = 0..model.ops().len();
    r.run(model, all, &mut ws, &mut out).unwrap();
    (r.workspace, r.out) = (ws, out);
    r
}

/// A new workspace for `model` at `batch` holding the activations of `src` (the arenas, which
/// start on each buffer's first cache line, not the buffers, are copied).
fn workspace_copy(model: &Model, src: &[f32], batch: usize) -> Vec<f32> {
    let mut ws = vec![0.0f32; model.workspace_len(batch)];
    let from = model.arena(src, batch).expect("reference workspace");
    model
        .arena_mut(&mut ws, batch)
        .expect("workspace")
        .copy_from_slice(from);
    ws
}

/// One op's result against the scalar reference's: its output tensor in the workspace, or the
/// caller's buffer for the op that writes it (`Output`).
fn op_error(
    model: &Model,
    op: &Op,
    batch: usize,
    (ws, ws_ref): (&[f32], &[f32]),
    (out, out_ref): (&[f32], &[f32]),
) -> f64 {
    match op.output() {
        Some(t) => {
            let ours = model.tensor_data(ws, t, batch).unwrap();
            let reference = model.tensor_data(ws_ref, t, batch).unwrap();
            rel_l2(ours, reference)
        }
        None => rel_l2(out, out_ref),
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
        let mut ws = workspace_copy(model, &r.workspace, r.batch);
        let mut out = vec![f32::NAN; r.out.len()];
        r.run(model, at..at + 1, &mut ws, &mut out)
            .unwrap_or_else(|e| panic!("{name} [{backend}] op {at} ({}): {e}", op.kind()));
        let err = op_error(model, op, r.batch, (&ws, &r.workspace), (&out, &r.out));
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
    for name in cpu_subjects() {
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
                let mut subject = Subject::load(name);
                let model = subject.net_mut();
                model.set_kernels(path).unwrap();
                model.set_winograd(winograd);
                let label = format!(
                    "{}{}",
                    path.name(),
                    if winograd { "" } else { ", direct conv" }
                );
                // Winograd convs are within about 3e-6 of the direct kernel; the rest are
                // reassociated sums of the same products.
                covered.extend(check_ops(name, &label, model, &r, 2e-5));
            }
        }
    }
    for name in TEXT_ENCODERS {
        covered.extend(check_text_encoder(name));
    }
    for name in CONDITIONAL_UNETS {
        covered.extend(check_conditional_unet(name));
    }
    if !KernelPath::ALL
        .iter()
        .any(|p| *p != KernelPath::Scalar && p.is_available())
    {
        return; // nothing ran; `every_op_kind_is_exercised_by_a_fixture` still checks the list
    }
    assert_eq!(
        covered,
        emitted_kinds(),
        "every op kind the fixtures emit is checked on the CPU paths"
    );
}

/// The op kinds of every fixture this file runs (CPU subjects and text encoders).
fn emitted_kinds() -> BTreeSet<&'static str> {
    let mut kinds = BTreeSet::new();
    for name in cpu_subjects() {
        kinds.extend(Subject::load(name).net().ops().iter().map(|op| op.kind()));
    }
    for name in TEXT_ENCODERS {
        kinds.extend(load_text(name).net().ops().iter().map(|op| op.kind()));
    }
    for name in CONDITIONAL_UNETS {
        let text = std::fs::read_to_string(
            fixtures_dir()
                .join("unet-cond")
                .join(name)
                .join("config.json"),
        )
        .unwrap();
        let cfg = tinydiffusion::UNetConfig::from_json(&text).unwrap();
        let model = Model::new(
            cfg,
            tinydiffusion::weights::WeightBytes::Owned(
                std::fs::read(
                    fixtures_dir()
                        .join("unet-cond")
                        .join(name)
                        .join("diffusion_pytorch_model.safetensors"),
                )
                .unwrap(),
            ),
            LoadOptions::default(),
            Reuse::None,
        )
        .unwrap();
        kinds.extend(model.ops().iter().map(|op| op.kind()));
    }
    kinds
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
            let mut ws = workspace_copy(enc.net(), &ws_ref, batch);
            let mut out = vec![f32::NAN; out_ref.len()];
            enc.encode_ops(at..at + 1, &mut ws, &ids, &mut out)
                .unwrap_or_else(|e| panic!("{name} [{}] op {at}: {e}", path.name()));
            let err = op_error(enc.net(), op, batch, (&ws, &ws_ref), (&out, &out_ref));
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

/// The library's list of op kinds against the fixtures: every kind is emitted by a fixture this
/// file runs op by op, except the few in `NOT_EMITTED`, which none may emit (a stale exemption
/// fails). Needs no SIMD path, so it holds on any machine.
#[test]
fn every_op_kind_is_exercised_by_a_fixture() {
    let emitted = emitted_kinds();
    let exempt: BTreeSet<&str> = NOT_EMITTED.iter().map(|(k, _)| *k).collect();
    let missing: Vec<_> = (KINDS.iter())
        .filter(|k| !emitted.contains(*k) && !exempt.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "op kinds no fixture exercises: {missing:?} (add a fixture that has them)"
    );
    for (kind, checked_in) in NOT_EMITTED {
        assert!(KINDS.contains(&kind), "{kind} is no op kind");
        assert!(
            !emitted.contains(kind),
            "{kind} is emitted now: drop it from NOT_EMITTED ({checked_in})"
        );
    }
    assert!(emitted.iter().all(|k| KINDS.contains(k)));
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

/// The conditional UNets (`tests/fixtures/unet-cond`, text states in): every SIMD path, with
/// and without Winograd, op by op against the scalar reference; returns the kinds checked.
fn check_conditional_unet(name: &str) -> Vec<&'static str> {
    let dir = fixtures_dir().join("unet-cond").join(name);
    let build = |path: KernelPath, winograd: bool| {
        let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let mut cfg = tinydiffusion::UNetConfig::from_json(&config).unwrap();
        cfg.cross_attention.as_mut().unwrap().text_tokens = 7;
        let bytes = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
        let mut m = Model::new(
            cfg,
            tinydiffusion::weights::WeightBytes::Owned(bytes),
            LoadOptions::default(),
            Reuse::None,
        )
        .unwrap();
        m.set_kernels(path).unwrap();
        m.set_winograd(winograd);
        m
    };
    let scalar = build(KernelPath::Scalar, false);
    let batch = 2;
    let (c, h, w) = scalar.input_shape();
    let dim = scalar
        .config
        .cross_attention
        .as_ref()
        .unwrap()
        .cross_attention_dim;
    let wave = |n: usize, f: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * f).sin()).collect() };
    let (x, ctx, t) = (
        wave(batch * c * h * w, 0.37),
        wave(batch * 7 * dim, 0.71),
        [37.5, 981.0],
    );
    let mut reference = vec![0.0f32; scalar.workspace_len(batch)];
    let mut ref_out = vec![0.0f32; x.len()];
    scalar
        .forward_conditional(&mut reference, &x, &t, &ctx, &mut ref_out)
        .unwrap();
    let mut kinds = Vec::new();
    for path in KernelPath::ALL {
        if path == KernelPath::Scalar || !path.is_available() {
            continue;
        }
        for winograd in [true, false] {
            let model = build(path, winograd);
            let mut worst = (0.0f64, "");
            for (at, op) in model.ops().iter().enumerate() {
                let mut ws = workspace_copy(&model, &reference, batch);
                let mut out = vec![f32::NAN; ref_out.len()];
                model
                    .forward_ops_conditional(at..at + 1, &mut ws, &x, &t, &ctx, &mut out)
                    .unwrap_or_else(|e| panic!("{name} [{}] op {at}: {e}", path.name()));
                let err = op_error(&model, op, batch, (&ws, &reference), (&out, &ref_out));
                assert!(
                    err <= 2e-5,
                    "{name} [{}] op {at} ({}): rel L2 {err:.3e} against the scalar reference",
                    path.name(),
                    op.kind()
                );
                if err > worst.0 {
                    worst = (err, op.kind());
                }
                kinds.push(op.kind());
            }
            println!(
                "unet-cond/{name} [{}{}]: {} ops, worst rel L2 {:.2e} ({})",
                path.name(),
                if winograd { "" } else { ", direct conv" },
                model.ops().len(),
                worst.0,
                worst.1
            );
        }
    }
    kinds
}
