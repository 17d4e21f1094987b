//! The CLIP text encoder against transformers (fixtures: `tests/tools/make_clip_text_fixtures.py`):
//! every hidden state (`hidden_states[i]`, read from the taps), `last_hidden_state` and
//! diffusers' `clip_skip` 1 and 2, on every CPU kernel path, <= 1e-4 relative L2 against
//! float64 with the f16 weights. `quick/` is quick_gelu with f16 weights under transformers 4's
//! `text_model.` names, `gelu/` gelu with f32 weights under transformers 5's unprefixed names.

mod common;

use common::{fixtures_dir, rel_l2, TensorFile};
use tinydiffusion::kernels::KernelPath;
use tinydiffusion::memory::Reuse;
use tinydiffusion::model::{Activation, Op, TextEncoder};

const BAR: f64 = 1e-4;

fn dir(name: &str) -> std::path::PathBuf {
    fixtures_dir().join("clip-text").join(name)
}

fn ids(t: &TensorFile) -> Vec<u32> {
    t.i64s("ids").into_iter().map(|i| i as u32).collect()
}

fn load(name: &str, clip_skip: usize, path: KernelPath) -> TextEncoder {
    let mut enc = TextEncoder::load_with(
        &dir(name).join("text_encoder"),
        clip_skip,
        Default::default(),
        Reuse::None,
    )
    .unwrap();
    enc.net_mut().set_kernels(path).unwrap();
    enc
}

#[test]
fn hidden_states_and_clip_skip_match_transformers() {
    let mut worst = 0.0f64;
    for (name, layers, act) in [
        ("quick", 2, Activation::QuickGelu),
        ("gelu", 3, Activation::Gelu),
    ] {
        let t = TensorFile::open(dir(name).join("cases.safetensors"));
        let ids = ids(&t);
        for path in KernelPath::ALL {
            if !path.is_available() {
                continue;
            }
            for skip in [0usize, 1, 2] {
                let enc = load(name, skip, path);
                assert_eq!(enc.config.hidden_act, act);
                assert_eq!(enc.config.num_hidden_layers, layers);
                let batch = ids.len() / enc.tokens();
                let mut ws = vec![0.0f32; enc.workspace_len(batch)];
                let mut out = vec![f32::NAN; batch * enc.output_len()];
                enc.encode(0, &mut ws, &ids, &mut out).unwrap();
                let expected = if skip == 0 {
                    t.f64s("last")
                } else {
                    t.f64s(&format!("skip.{skip}"))
                };
                let err = rel_l2(&out, &expected);
                println!(
                    "{name} [{}] clip_skip {skip}: rel L2 {err:.2e}",
                    path.name()
                );
                assert!(
                    err <= BAR,
                    "{name} [{}] clip_skip {skip}: {err:.3e}",
                    path.name()
                );
                worst = worst.max(err);
                // Per layer: the taps are hidden_states[0 ..= layers - skip], each tensor in
                // its own slot (Reuse::None). A tap is per sample contiguous over the batch.
                for tap in enc.net().taps() {
                    let i = match tap.name.as_str() {
                        "embeddings" => 0,
                        "final_layer_norm" => continue,
                        n => 1 + n["encoder.layers.".len()..].parse::<usize>().unwrap(),
                    };
                    let data = enc.net().tensor_data(&ws, tap.tensor, batch).unwrap();
                    let err = rel_l2(data, &t.f64s(&format!("hidden.{i}")));
                    assert!(
                        err <= BAR,
                        "{name} [{}] clip_skip {skip} hidden_states[{i}]: {err:.3e}",
                        path.name()
                    );
                    worst = worst.max(err);
                }
            }
        }
    }
    println!("worst rel L2 {worst:.2e}");
}

#[test]
fn shared_memory_plan_gives_the_same_output() {
    let t = TensorFile::open(dir("quick").join("cases.safetensors"));
    let ids = ids(&t);
    let shared = TextEncoder::load(dir("quick").join("text_encoder"), 0).unwrap();
    let separate = load("quick", 0, shared.net().kernels());
    let batch = ids.len() / shared.tokens();
    assert!(shared.workspace_len(batch) < separate.workspace_len(batch));
    let run = |enc: &TextEncoder, threads: usize| {
        let mut ws = vec![0.0f32; enc.workspace_len_for_threads(batch, threads)];
        let mut out = vec![0.0f32; batch * enc.output_len()];
        enc.encode(threads, &mut ws, &ids, &mut out).unwrap();
        out
    };
    let a = run(&shared, 0);
    assert_eq!(a, run(&separate, 0));
    // The exact workspace for one thread is enough, and a float short is refused.
    assert_eq!(a, run(&shared, 1));
    let mut ws = vec![0.0f32; shared.workspace_len_for_threads(batch, 1) - 1];
    let mut out = vec![0.0f32; batch * shared.output_len()];
    assert!(matches!(
        shared.encode(1, &mut ws, &ids, &mut out),
        Err(tinydiffusion::Error::BufferSize { .. })
    ));
}

#[test]
fn op_list_is_the_clip_layer() {
    let enc = TextEncoder::load(dir("quick").join("text_encoder"), 0).unwrap();
    let kinds: Vec<&str> = enc.net().ops().iter().map(Op::kind).collect();
    let layer = [
        "layer_norm",
        "linear",
        "linear",
        "linear",
        "attention",
        "linear",
        "layer_norm",
        "linear",
        "activation",
        "linear",
    ];
    let mut expected = vec!["token_embedding"];
    expected.extend(layer);
    expected.extend(layer);
    expected.extend(["layer_norm", "output"]);
    assert_eq!(kinds, expected);
    assert!(enc
        .net()
        .ops()
        .iter()
        .all(|o| !matches!(o, Op::Attention(a) if !a.causal)));
    // 1000 x 32 tokens, 77 x 32 positions, 2 layers, final norm.
    let layer_params = 4 * (32 * 32 + 32) + 2 * 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32);
    assert_eq!(
        enc.parameters(),
        1000 * 32 + 77 * 32 + 2 * layer_params + 2 * 32
    );
}
