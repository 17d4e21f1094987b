//! The conditional UNet (`UNet2DConditionModel`, diffusers 0.42) against a float64 reference
//! with f16-rounded weights (fixtures: `tests/tools/make_unet_cond_fixtures.py`): an SD
//! 1.x-shaped config (1x1-conv projections, one head count) and an SD 2.x-shaped one (linear
//! projections, heads and transformer layers per block, upcast_attention), output and every
//! block's activation within 1e-4 relative L2 on the scalar reference and every SIMD path;
//! the shared memory plan gives the same bits.

mod common;

use common::{fixtures_dir, rel_l2, tap_nchw, TensorFile};
use tinydiffusion::kernels::KernelPath;
use tinydiffusion::memory::Reuse;
use tinydiffusion::weights::{LoadOptions, WeightBytes};
use tinydiffusion::{Error, Model, UNetConfig};

const BAR: f64 = 1e-4;
const MODELS: [&str; 2] = ["sd1", "sd2"];

fn build(name: &str, text_tokens: usize, reuse: Reuse) -> Model {
    let dir = fixtures_dir().join("unet-cond").join(name);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut cfg = UNetConfig::from_json(&config).unwrap();
    cfg.cross_attention.as_mut().unwrap().text_tokens = text_tokens;
    let bytes = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    Model::new(
        cfg,
        WeightBytes::Owned(bytes),
        LoadOptions::default(),
        reuse,
    )
    .unwrap()
}

fn check(name: &str, path: KernelPath) {
    let t = TensorFile::open(fixtures_dir().join(format!("unet-cond/{name}/cases.safetensors")));
    let (x, ts, ctx) = (t.f32s("x"), t.f32s("t"), t.f32s("context"));
    let expected = t.f64s("out");
    let tokens = t.shape("context")[1];
    let batch = t.shape("x")[0];
    let mut model = build(name, tokens, Reuse::None);
    model.set_kernels(path).unwrap();
    let mut ws = vec![0.0f32; model.workspace_len(batch)];
    let mut out = vec![f32::NAN; expected.len()];
    model
        .forward_conditional(&mut ws, &x, &ts, &ctx, &mut out)
        .unwrap();
    let mut report = String::new();
    let mut worst_block = 0.0f64;
    for tap in model.taps() {
        let key = format!("act.{}", tap.name);
        if !t.has(&key) {
            continue;
        }
        let want = t.f64s(&key);
        let ours = tap_nchw(&model, &ws, tap, batch);
        let err = rel_l2(&ours, &want);
        worst_block = worst_block.max(err);
        report += &format!("  {:<14} {err:.2e}\n", tap.name);
    }
    let err = rel_l2(&out, &expected);
    println!("{name} [{}]: out rel L2 {err:.3e}\n{report}", path.name());
    assert!(
        report.matches('\n').count() >= 6,
        "{name}: block taps missing\n{report}"
    );
    assert!(
        err <= BAR,
        "{name} [{}]: out rel L2 {err:.3e}\n{report}",
        path.name()
    );
    assert!(
        worst_block <= BAR,
        "{name} [{}]: a block is off\n{report}",
        path.name()
    );

    // The inference plan: same bits, smaller workspace (tests/zero_alloc.rs: no allocation).
    let mut shared = build(name, tokens, Reuse::Shared);
    shared.set_kernels(path).unwrap();
    assert!(shared.workspace_len(batch) < model.workspace_len(batch));
    let mut ws2 = vec![f32::NAN; shared.workspace_len(batch)];
    let mut out2 = vec![0.0f32; out.len()];
    shared
        .forward_conditional(&mut ws2, &x, &ts, &ctx, &mut out2)
        .unwrap();
    assert_eq!(out, out2, "{name}: shared memory plan changed the result");
    // One workspace float short is a typed error.
    let short = shared.workspace_len(batch) - 1;
    assert!(matches!(
        shared.forward_conditional(&mut ws2[..short], &x, &ts, &ctx, &mut out2),
        Err(Error::BufferSize {
            what: "workspace",
            ..
        })
    ));
}

#[test]
fn conditional_unet_matches_diffusers_on_every_kernel_path() {
    for path in KernelPath::ALL {
        if !path.is_available() {
            continue;
        }
        for name in MODELS {
            check(name, path);
        }
    }
}

#[test]
fn conditional_unet_inputs_are_checked() {
    let model = build("sd1", 7, Reuse::Shared);
    let (batch, n) = (2, 4 * 8 * 8);
    let x = vec![0.1f32; batch * n];
    let mut out = vec![0.0f32; batch * n];
    let mut ws = vec![0.0f32; model.workspace_len(batch)];
    let ctx = vec![0.5f32; batch * 7 * 16];
    // The plain forward has no text states to give.
    let e = model
        .forward(&mut ws, &x, &[1.0], None, &mut out)
        .unwrap_err();
    assert!(e.to_string().contains("encoder_hidden_states"), "{e}");
    // Wrong token count (the model is built for 7).
    let e = model
        .forward_conditional(&mut ws, &x, &[1.0], &ctx[..batch * 6 * 16], &mut out)
        .unwrap_err();
    assert!(
        matches!(e, Error::BufferSize { expected, .. } if expected == batch * 7 * 16),
        "{e}"
    );
    let mut bad = ctx.clone();
    bad[3] = f32::NAN;
    let e = model
        .forward_conditional(&mut ws, &x, &[1.0], &bad, &mut out)
        .unwrap_err();
    assert!(e.to_string().contains("encoder_hidden_states"), "{e}");
    model
        .forward_conditional(&mut ws, &x, &[1.0], &ctx, &mut out)
        .unwrap();
    // A UNet2DModel refuses text states.
    let dir = fixtures_dir().join("tiny-gray8");
    let plain = Model::load(&dir).unwrap();
    let (c, h, w) = plain.input_shape();
    let x = vec![0.0f32; c * h * w];
    let mut out = vec![0.0f32; c * h * w];
    let mut ws = vec![0.0f32; plain.workspace_len(1)];
    let e = plain
        .forward_conditional(&mut ws, &x, &[1.0], &[0.0; 4], &mut out)
        .unwrap_err();
    assert!(e.to_string().contains("encoder_hidden_states"), "{e}");
}

#[test]
fn conditional_unet_loads_from_its_folder() {
    // A plain folder (config.json + weights) builds for CLIP's 77 text tokens.
    let model = Model::load(fixtures_dir().join("unet-cond/sd2")).unwrap();
    let cross = model.config.cross_attention.as_ref().unwrap();
    assert_eq!(
        (
            cross.text_tokens,
            cross.cross_attention_dim,
            cross.linear_projection
        ),
        (77, 24, true)
    );
    assert_eq!(
        (cross.heads.as_slice(), cross.layers.as_slice()),
        (&[2, 4][..], &[1, 2][..])
    );
    let (c, h, w) = model.input_shape();
    let x = vec![0.2f32; c * h * w];
    let ctx = vec![0.1f32; 77 * 24];
    let mut out = vec![f32::NAN; c * h * w];
    let mut ws = vec![0.0f32; model.workspace_len(1)];
    model
        .forward_conditional(&mut ws, &x, &[500.0], &ctx, &mut out)
        .unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
}
