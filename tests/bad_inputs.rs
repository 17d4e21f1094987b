//! Bad inputs, table-driven: every way a model file, a config, scheduler options, sampling
//! arguments or a C caller can be wrong, each with the exact typed error it must give (never a
//! panic, an out-of-bounds read or a silently wrong result). Inputs the fuzzers (fuzz/) found
//! crashing are kept here as regression rows.

use std::ffi::c_char;
use std::ptr::{null, null_mut};

use safetensors::Dtype;
use serde_json::{json, Map, Value};
use tinydiffusion::capi::*;
use tinydiffusion::memory::Reuse;
use tinydiffusion::model::convert::to_packed_safetensors;
use tinydiffusion::model::{TextEncoder, TextEncoderConfig};
use tinydiffusion::sampler::{self, Guidance, SampleOptions};
use tinydiffusion::schedule::{Scheduler, SchedulerConfig};
use tinydiffusion::testing::random_weights;
use tinydiffusion::weights::{LoadOptions, WeightBytes};
use tinydiffusion::{Error, Model, Result, UNetConfig};

/// 1 channel, 4x4, a plain and an attention block, mid block with attention.
const TINY: &str = r#"{
  "_class_name": "UNet2DModel",
  "attention_head_dim": 2,
  "block_out_channels": [4, 8],
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
  "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
  "in_channels": 1,
  "out_channels": 1,
  "layers_per_block": 1,
  "norm_num_groups": 2,
  "sample_size": 4
}"#;

fn tiny_class() -> String {
    with_config(|o| {
        o.insert("num_class_embeds".into(), json!(3));
    })
}

/// TINY with some keys changed.
fn with_config(f: impl FnOnce(&mut Map<String, Value>)) -> String {
    let mut v: Value = serde_json::from_str(TINY).unwrap();
    f(v.as_object_mut().unwrap());
    v.to_string()
}

fn weights() -> Vec<u8> {
    random_weights(TINY, 1).unwrap()
}

fn load_with(config: &str, bytes: Vec<u8>, options: LoadOptions) -> Result<Model> {
    Model::new(
        UNetConfig::from_json(config)?,
        WeightBytes::Owned(bytes),
        options,
        Reuse::Shared,
    )
}

fn load(config: &str, bytes: Vec<u8>) -> Result<Model> {
    load_with(config, bytes, LoadOptions::default())
}

/// The header (as JSON) and data section of a safetensors file.
fn split(st: &[u8]) -> (Map<String, Value>, Vec<u8>) {
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
    (header.as_object().unwrap().clone(), st[8 + n..].to_vec())
}

/// A safetensors file from a header and data (header padded to 8 bytes, as the format asks).
fn join(header: &Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let mut h = Value::Object(header.clone()).to_string().into_bytes();
    while !(8 + h.len()).is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// The tiny model's weights with the header edited.
fn edit_header(f: impl FnOnce(&mut Map<String, Value>, &mut Vec<u8>)) -> Vec<u8> {
    let (mut h, mut d) = split(&weights());
    f(&mut h, &mut d);
    join(&h, &d)
}

/// A file rewritten tensor by tensor: `f(name, dtype, shape, data)`, None drops the tensor.
fn rewrite(
    bytes: &[u8],
    f: impl Fn(&str, Dtype, &[usize], &[u8]) -> Option<(String, Dtype, Vec<usize>, Vec<u8>)>,
) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let owned: Vec<_> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, v)| f(&n, v.dtype(), v.shape(), v.data()))
        .collect();
    let views: Vec<_> = owned
        .iter()
        .map(|(n, d, s, b)| {
            let v = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (n.clone(), v)
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// The tiny model's weights as f32, with `conv_in.weight[0]` set to `first`.
fn f32_weights(first: f32) -> Vec<u8> {
    rewrite(&weights(), |n, _, s, d| {
        let mut v: Vec<u8> = d
            .chunks_exact(2)
            .flat_map(|c| {
                half::f16::from_le_bytes([c[0], c[1]])
                    .to_f32()
                    .to_le_bytes()
            })
            .collect();
        if n == "conv_in.weight" {
            v[..4].copy_from_slice(&first.to_le_bytes());
        }
        Some((n.into(), Dtype::F32, s.to_vec(), v))
    })
}

/// `conv_in.weight[0]` of the f16 file set to `bits`.
fn f16_weights_with(bits: u16) -> Vec<u8> {
    edit_header(|h, d| {
        let start = h["conv_in.weight"]["data_offsets"][0].as_u64().unwrap() as usize;
        d[start..start + 2].copy_from_slice(&bits.to_le_bytes());
    })
}

struct Row<'a> {
    name: &'static str,
    run: Box<dyn Fn() -> Result<()> + 'a>,
    check: fn(&Result<()>) -> bool,
    want: &'static str,
}

macro_rules! row {
    ($name:expr, $run:expr, $pat:pat $(if $guard:expr)?) => {
        Row {
            name: $name,
            run: {
                let f = $run;
                Box::new(move || f().map(|_| ()))
            },
            check: |r| matches!(r, $pat $(if $guard)?),
            want: stringify!($pat $(if $guard)?),
        }
    };
}

fn run_table(rows: Vec<Row<'_>>) {
    let mut failures = Vec::new();
    for r in &rows {
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (r.run)()));
        match got {
            Ok(res) if (r.check)(&res) => {}
            Ok(res) => failures.push(format!("{}: got {res:?}, want {}", r.name, r.want)),
            Err(_) => failures.push(format!("{}: PANICKED, want {}", r.name, r.want)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn malformed_safetensors() {
    let rows = vec![
        row!("valid file loads", || load(TINY, weights()), Ok(())),
        row!(
            "empty file",
            || load(TINY, Vec::new()),
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "shorter than the 8-byte length",
            || load(TINY, vec![1, 2, 3]),
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "truncated file",
            || {
                let w = weights();
                load(TINY, w[..w.len() / 2].to_vec())
            },
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "truncated by one byte",
            || {
                let w = weights();
                load(TINY, w[..w.len() - 1].to_vec())
            },
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "trailing bytes after the last tensor",
            || {
                let mut w = weights();
                w.extend_from_slice(&[0; 6]);
                load(TINY, w)
            },
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "header length larger than the file",
            || {
                let mut w = weights();
                let n = w.len() as u64 + 1000;
                w[..8].copy_from_slice(&n.to_le_bytes());
                load(TINY, w)
            },
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "header length u64::MAX",
            || {
                let mut w = weights();
                w[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                load(TINY, w)
            },
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "header JSON invalid",
            || {
                let mut w = b"\x10\0\0\0\0\0\0\0{\"a\": [1, 2,   ".to_vec();
                w.extend_from_slice(&[0; 8]);
                load(TINY, w)
            },
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "header not UTF-8",
            || {
                let mut w = b"\x08\0\0\0\0\0\0\0{\xff\xfe}    ".to_vec();
                w.truncate(16);
                load(TINY, w)
            },
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "header JSON is not an object",
            || load(TINY, b"\x08\0\0\0\0\0\0\0[1,2,3] ".to_vec()),
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "overlapping offsets",
            || load(
                TINY,
                edit_header(|h, _| {
                    let other = h["conv_in.bias"]["data_offsets"].clone();
                    let shape = h["conv_in.bias"]["shape"].clone();
                    h["time_embedding.linear_1.bias"]["data_offsets"] = other;
                    h["time_embedding.linear_1.bias"]["shape"] = shape;
                })
            ),
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "offsets out of range",
            || load(
                TINY,
                edit_header(|h, d| {
                    let end = d.len() as u64;
                    h["conv_in.bias"]["data_offsets"] = json!([end, end + 8]);
                })
            ),
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "offsets reversed",
            || load(
                TINY,
                edit_header(|h, _| {
                    let o = &h["conv_in.bias"]["data_offsets"];
                    let (a, b) = (o[0].clone(), o[1].clone());
                    h["conv_in.bias"]["data_offsets"] = json!([b, a]);
                })
            ),
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "offsets disagree with dtype x shape",
            || load(
                TINY,
                edit_header(|h, _| {
                    h["conv_in.bias"]["shape"] = json!([3]);
                })
            ),
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "shape whose element count overflows",
            || load(
                TINY,
                edit_header(|h, _| {
                    h["conv_in.bias"]["shape"] = json!([1u64 << 40, 1u64 << 40, 1u64 << 40]);
                })
            ),
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "unaligned f16 data",
            || load(
                TINY,
                edit_header(|h, d| {
                    // A 1-byte tensor first shifts every f16 tensor to an odd offset.
                    for (_, v) in h.iter_mut() {
                        if let Some(o) = v.get_mut("data_offsets") {
                            let (a, b) = (o[0].as_u64().unwrap(), o[1].as_u64().unwrap());
                            *o = json!([a + 1, b + 1]);
                        }
                    }
                    h.insert(
                        "pad".into(),
                        json!({"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}),
                    );
                    d.insert(0, 0);
                })
            ),
            Err(Error::UnalignedTensor { .. })
        ),
        row!(
            "dtype safetensors knows but we do not read (I16)",
            || load(
                TINY,
                edit_header(|h, _| {
                    h["conv_in.weight"]["dtype"] = json!("I16");
                })
            ),
            Err(Error::UnsupportedDtype { name, .. }) if name == "conv_in.weight"
        ),
        row!(
            "dtype nobody knows",
            || load(
                TINY,
                edit_header(|h, _| {
                    h["conv_in.weight"]["dtype"] = json!("Q4_K");
                })
            ),
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "missing tensor",
            || load(
                TINY,
                rewrite(&weights(), |n, d, s, b| {
                    (n != "conv_out.bias").then(|| (n.into(), d, s.to_vec(), b.to_vec()))
                })
            ),
            Err(Error::MissingTensor { name }) if name == "conv_out.bias"
        ),
        row!(
            "extra tensors are allowed and ignored",
            || {
                let extra = [7u8; 12];
                let st = safetensors::SafeTensors::deserialize(&weights())
                    .unwrap()
                    .tensors()
                    .into_iter()
                    .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
                    .collect::<Vec<_>>();
                let mut views: Vec<_> = st
                    .iter()
                    .map(|(n, d, s, b)| {
                        (
                            n.clone(),
                            safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                        )
                    })
                    .collect();
                views.push((
                    "unused.extra".into(),
                    safetensors::tensor::TensorView::new(Dtype::U8, vec![12], &extra).unwrap(),
                ));
                load(TINY, safetensors::serialize(views, None).unwrap())
            },
            Ok(())
        ),
        row!(
            "shape mismatch (same element count)",
            || load(
                TINY,
                edit_header(|h, _| {
                    h["conv_in.weight"]["shape"] = json!([2, 2, 3, 3]);
                })
            ),
            Err(Error::ShapeMismatch { name, .. }) if name == "conv_in.weight"
        ),
        row!(
            "unknown layout metadata",
            || load(
                TINY,
                edit_header(|h, _| {
                    h.insert(
                        "__metadata__".into(),
                        json!({"tinydiffusion.layout": "oc64"}),
                    );
                })
            ),
            Err(Error::InvalidSafetensors { .. })
        ),
        row!(
            "packed file with a diffusers-shaped tensor",
            || load(
                TINY,
                edit_header(|h, _| {
                    h.insert(
                        "__metadata__".into(),
                        json!({"tinydiffusion.layout": "oc32"}),
                    );
                })
            ),
            Err(Error::ShapeMismatch { .. })
        ),
        row!(
            "packed file with an f32 conv weight",
            || {
                let (packed, _) = to_packed_safetensors(TINY, &weights()).unwrap();
                let (h, _) = split(&packed);
                let meta = h["__metadata__"].clone();
                let f32_file = rewrite(&packed, |n, _, s, d| {
                    let v: Vec<u8> = d
                        .chunks_exact(2)
                        .flat_map(|c| {
                            half::f16::from_le_bytes([c[0], c[1]])
                                .to_f32()
                                .to_le_bytes()
                        })
                        .collect();
                    Some((n.into(), Dtype::F32, s.to_vec(), v))
                });
                let (_, data) = split(&f32_file);
                let (mut h2, _) = split(&f32_file);
                h2.insert("__metadata__".into(), meta);
                load(TINY, join(&h2, &data))
            },
            Err(Error::UnsupportedDtype { .. })
        ),
    ];
    run_table(rows);
}

#[test]
fn non_finite_weights() {
    let off = LoadOptions {
        check_finite: false,
    };
    let rows = vec![
        row!("f16 NaN refused by default", || load(TINY, f16_weights_with(0x7e00)),
            Err(Error::NonFiniteWeight { name }) if name == "conv_in.weight"),
        row!(
            "f16 +inf refused",
            || load(TINY, f16_weights_with(0x7c00)),
            Err(Error::NonFiniteWeight { .. })
        ),
        row!(
            "f16 -inf refused",
            || load(TINY, f16_weights_with(0xfc00)),
            Err(Error::NonFiniteWeight { .. })
        ),
        row!(
            "f16 NaN allowed with check_finite off",
            || load_with(TINY, f16_weights_with(0x7e00), off),
            Ok(())
        ),
        row!(
            "f16 max finite is fine",
            || load(TINY, f16_weights_with(0x7bff)),
            Ok(())
        ),
        row!(
            "f32 NaN refused",
            || load(TINY, f32_weights(f32::NAN)),
            Err(Error::NonFiniteWeight { .. })
        ),
        row!(
            "f32 inf refused",
            || load(TINY, f32_weights(f32::INFINITY)),
            Err(Error::NonFiniteWeight { .. })
        ),
        row!(
            "f32 beyond f16 range refused (would round to inf)",
            || load(TINY, f32_weights(1e6)),
            Err(Error::NonFiniteWeight { .. })
        ),
        row!(
            "f32 NaN allowed with check_finite off",
            || load_with(TINY, f32_weights(f32::NAN), off),
            Ok(())
        ),
        row!(
            "f32 ordinary value loads",
            || load(TINY, f32_weights(0.5)),
            Ok(())
        ),
    ];
    run_table(rows);
}

#[test]
fn bad_configs() {
    let cfg = |f: fn(&mut Map<String, Value>)| with_config(f);
    let parse = |s: String| UNetConfig::from_json(&s).map(|_| ());
    let rows = vec![
        row!("valid", || parse(TINY.into()), Ok(())),
        row!(
            "not JSON",
            || parse("{\"sample_size\": ".into()),
            Err(Error::InvalidJson { .. })
        ),
        row!(
            "not an object",
            || parse("[1]".into()),
            Err(Error::InvalidJson { .. })
        ),
        row!("channels not divisible by groups", || parse(cfg(|o| { o.insert("norm_num_groups".into(), json!(3)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "norm_num_groups"),
        row!("attention channels not divisible by head dim", || parse(cfg(|o| { o.insert("attention_head_dim".into(), json!(3)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "attention_head_dim"),
        row!("mid attention groups do not divide", || parse(cfg(|o| { o.insert("attn_norm_num_groups".into(), json!(3)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "attn_norm_num_groups"),
        row!("zero in_channels", || parse(cfg(|o| { o.insert("in_channels".into(), json!(0)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "in_channels"),
        row!("zero sample_size", || parse(cfg(|o| { o.insert("sample_size".into(), json!(0)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "sample_size"),
        row!("zero layers_per_block", || parse(cfg(|o| { o.insert("layers_per_block".into(), json!(0)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "layers_per_block"),
        row!("empty block_out_channels", || parse(cfg(|o| {
                o.insert("block_out_channels".into(), json!([]));
                o.insert("down_block_types".into(), json!([]));
                o.insert("up_block_types".into(), json!([]));
            })),
            Err(Error::InvalidConfig { key, .. }) if key == "block_out_channels"),
        row!("negative size", || parse(cfg(|o| { o.insert("out_channels".into(), json!(-1)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "out_channels"),
        row!("fractional size", || parse(cfg(|o| { o.insert("out_channels".into(), json!(1.5)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "out_channels"),
        row!("huge sample_size", || parse(cfg(|o| { o.insert("sample_size".into(), json!(1u64 << 40)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "sample_size"),
        row!(
            "huge channels x resolution (tensor sizes would overflow)",
            || parse(cfg(|o| {
                o.insert("sample_size".into(), json!(1u64 << 20));
                o.insert("block_out_channels".into(), json!([1u64 << 20, 1u64 << 20]));
            })),
            Err(Error::InvalidConfig { .. })
        ),
        row!("huge layers_per_block", || parse(cfg(|o| { o.insert("layers_per_block".into(), json!(1u64 << 20)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "layers_per_block"),
        row!("huge class count", || parse(cfg(|o| { o.insert("num_class_embeds".into(), json!(1u64 << 40)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "num_class_embeds"),
        row!("block counts disagree", || parse(cfg(|o| { o.insert("down_block_types".into(), json!(["DownBlock2D"])); })),
            Err(Error::InvalidConfig { key, .. }) if key == "down_block_types"),
        row!("sample_size not divisible by the downsampling", || parse(cfg(|o| { o.insert("sample_size".into(), json!(5)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "sample_size"),
        row!("unknown key", || parse(cfg(|o| { o.insert("cross_attention_dim".into(), json!(8)); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "cross_attention_dim"),
        row!("unknown block type", || parse(cfg(|o| { o.insert("down_block_types".into(), json!(["DownBlock2D", "CrossAttnDownBlock2D"])); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "down_block_types"),
        row!("unsupported activation", || parse(cfg(|o| { o.insert("act_fn".into(), json!("tanh")); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "act_fn"),
        row!(
            "non-finite norm_eps is not JSON",
            || parse(TINY.replace(
                "\"sample_size\": 4",
                "\"sample_size\": 4, \"norm_eps\": NaN"
            )),
            Err(Error::InvalidJson { .. })
        ),
        row!("norm_eps 0", || parse(cfg(|o| { o.insert("norm_eps".into(), json!(0.0)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "norm_eps"),
    ];
    run_table(rows);
}

fn ddim(steps: usize) -> Result<Scheduler> {
    Scheduler::new(SchedulerConfig::ddim_default(), steps)
}

#[test]
fn bad_scheduler_options() {
    let parse = |s: &str| SchedulerConfig::from_json(s).map(|_| ());
    let sigma_steps = |s: &str, steps: usize| {
        tinydiffusion::schedule::SigmaScheduler::new(SchedulerConfig::from_json(s)?, steps)
            .map(|_| ())
    };
    let sigma = |s: &str| sigma_steps(s, 10);
    let rows = vec![
        row!("defaults", || parse("{}"), Ok(())),
        row!(
            "steps 0",
            || ddim(0),
            Err(Error::InvalidArgument {
                what: "num_inference_steps",
                ..
            })
        ),
        row!(
            "steps above the training timesteps",
            || ddim(1001),
            Err(Error::InvalidArgument {
                what: "num_inference_steps",
                ..
            })
        ),
        row!(
            "steps usize::MAX",
            || ddim(usize::MAX),
            Err(Error::InvalidArgument {
                what: "num_inference_steps",
                ..
            })
        ),
        row!("steps = training timesteps is fine", || ddim(1000), Ok(())),
        row!("unknown option", || parse(r#"{"use_karras_sigma": true}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "use_karras_sigma"),
        row!("unknown scheduler class", || parse(r#"{"_class_name": "NoSuchScheduler"}"#),
            Err(Error::UnsupportedConfig { key, value }) if key == "_class_name" && value.contains("NoSuchScheduler")),
        row!("scheduler class not run yet", || parse(r#"{"_class_name": "RePaintScheduler"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "_class_name"),
        row!(
            "euler class",
            || parse(r#"{"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": true}"#),
            Ok(())
        ),
        row!("unknown algorithm_type", || parse(r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver+++"}"#),
            Err(Error::UnsupportedConfig { key, value }) if key == "algorithm_type" && value.contains("dpmsolver+++")),
        row!("unknown final_sigmas_type", || parse(r#"{"_class_name": "EulerDiscreteScheduler", "final_sigmas_type": "one"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "final_sigmas_type"),
        row!("solver_order 4", || parse(r#"{"_class_name": "DPMSolverMultistepScheduler", "solver_order": 4}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "solver_order"),
        row!("interpolation_type log_linear with continuous v timesteps (diffusers steps past its schedule)", || parse(r#"{"_class_name": "EulerDiscreteScheduler", "interpolation_type": "log_linear", "timestep_type": "continuous", "prediction_type": "v_prediction"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "interpolation_type"),
        row!("unipc: shift_terminal without flow sigmas (diffusers raises)", || parse(r#"{"_class_name": "UniPCMultistepScheduler", "shift_terminal": 0.2}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "shift_terminal"),
        row!("unipc: shift_terminal 1 (divides by zero)", || parse(r#"{"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": true, "shift_terminal": 1.0}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "shift_terminal"),
        row!("unipc: shift_terminal not a number", || parse(r#"{"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": true, "shift_terminal": "x"}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "shift_terminal"),
        row!("interpolation_type unknown", || parse(r#"{"_class_name": "EulerDiscreteScheduler", "interpolation_type": "cubic"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "interpolation_type"),
        row!(
            "euler: exponential sigmas",
            || sigma(
                r#"{"_class_name": "EulerDiscreteScheduler", "use_exponential_sigmas": true}"#
            ),
            Ok(())
        ),
        row!("euler: exponential and Karras sigmas (diffusers refuses two ramps)", || parse(r#"{"_class_name": "EulerDiscreteScheduler", "use_exponential_sigmas": true, "use_karras_sigmas": true}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "use_exponential_sigmas"),
        row!("euler: use_beta_sigmas not a bool", || parse(r#"{"_class_name": "EulerDiscreteScheduler", "use_beta_sigmas": "yes"}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "use_beta_sigmas"),
        row!("euler ancestral: exponential sigmas (not an option of the class): hidden, ignored as diffusers does", || parse(r#"{"_class_name": "EulerAncestralDiscreteScheduler", "use_exponential_sigmas": true}"#),
            Ok(())),
        row!("pndm: beta sigmas (not an option of the class): hidden, ignored as diffusers does", || parse(r#"{"_class_name": "PNDMScheduler", "use_beta_sigmas": true}"#),
            Ok(())),
        row!(
            "dpm: Lu lambdas",
            || sigma(r#"{"_class_name": "DPMSolverMultistepScheduler", "use_lu_lambdas": true}"#),
            Ok(())
        ),
        row!("dpm: use_lu_lambdas not a bool", || parse(r#"{"_class_name": "DPMSolverMultistepScheduler", "use_lu_lambdas": 1}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "use_lu_lambdas"),
        row!("dpm singlestep: Lu lambdas (a multistep option): hidden, ignored as diffusers does", || parse(r#"{"_class_name": "DPMSolverSinglestepScheduler", "use_lu_lambdas": true}"#),
            Ok(())),
        row!("dpm: sde-dpmsolver with final sigma zero (diffusers refuses it)", || sigma(r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "final_sigmas_type"),
        row!("dpm: sde-dpmsolver of order 3 (diffusers has no such update)", || sigma(r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver", "solver_order": 3, "final_sigmas_type": "sigma_min"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "solver_order"),
        row!(
            "dpm: sde-dpmsolver of order 2",
            || sigma(
                r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"}"#
            ),
            Ok(())
        ),
        row!("dpm: algorithm_type deis with final sigma zero (diffusers refuses it)", || parse(r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "deis"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "final_sigmas_type"),
        row!("dpm: thresholding ratio above 1", || parse(r#"{"_class_name": "DPMSolverMultistepScheduler", "thresholding": true, "dynamic_thresholding_ratio": 1.5}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "dynamic_thresholding_ratio"),
        row!("dpm: sample_max_value 0", || parse(r#"{"_class_name": "DPMSolverMultistepScheduler", "thresholding": true, "sample_max_value": 0}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "sample_max_value"),
        row!(
            "dpm: thresholding",
            || sigma(r#"{"_class_name": "DPMSolverMultistepScheduler", "thresholding": true}"#),
            Ok(())
        ),
        row!("DPM-Solver option on Euler: hidden, ignored as diffusers does", || parse(r#"{"_class_name": "EulerDiscreteScheduler", "solver_order": 2}"#),
            Ok(())),
        row!("dpmsolver with final sigma zero", || sigma(r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "dpmsolver"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "final_sigmas_type"),
        row!("euler ancestral with sample prediction", || sigma(r#"{"_class_name": "EulerAncestralDiscreteScheduler", "prediction_type": "sample"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "prediction_type"),
        row!("heun: exp betas (not run)", || parse(r#"{"_class_name": "HeunDiscreteScheduler", "beta_schedule": "exp"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "beta_schedule"),
        row!("heun: sigmoid betas (diffusers refuses)", || parse(r#"{"_class_name": "HeunDiscreteScheduler", "beta_schedule": "sigmoid"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "beta_schedule"),
        row!(
            "heun: beta sigmas",
            || sigma(r#"{"_class_name": "HeunDiscreteScheduler", "use_beta_sigmas": true}"#),
            Ok(())
        ),
        row!(
            "dpm: flow sigmas with flow_prediction",
            || sigma(
                r#"{"_class_name": "DPMSolverMultistepScheduler", "use_flow_sigmas": true, "flow_shift": 3.0, "prediction_type": "flow_prediction"}"#
            ),
            Ok(())
        ),
        row!("dpm: flow_shift 0", || parse(r#"{"_class_name": "DPMSolverMultistepScheduler", "use_flow_sigmas": true, "flow_shift": 0}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "flow_shift"),
        row!("dpm: flow sigmas with Karras sigmas (not run)", || parse(r#"{"_class_name": "DPMSolverMultistepScheduler", "use_flow_sigmas": true, "use_karras_sigmas": true}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "use_flow_sigmas"),
        row!("dpm: flow_prediction with dpmsolver (diffusers refuses it)", || sigma(r#"{"_class_name": "DPMSolverMultistepScheduler", "use_flow_sigmas": true, "prediction_type": "flow_prediction", "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "prediction_type"),
        row!("dpm: dynamic shifting (needs the pipeline's mu)", || parse(r#"{"_class_name": "DPMSolverMultistepScheduler", "use_flow_sigmas": true, "use_dynamic_shifting": true}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "use_dynamic_shifting"),
        row!("euler: flow_prediction (not an Euler prediction type here)", || parse(r#"{"_class_name": "EulerDiscreteScheduler", "prediction_type": "flow_prediction"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "prediction_type"),
        row!("ddpm: flow_prediction", || parse(r#"{"prediction_type": "flow_prediction"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "prediction_type"),
        row!("heun: rescale_betas_zero_snr (not an option of the class): hidden, ignored as diffusers does", || parse(r#"{"_class_name": "HeunDiscreteScheduler", "rescale_betas_zero_snr": true}"#),
            Ok(())),
        row!(
            "unipc: rescale_betas_zero_snr",
            || sigma(
                r#"{"_class_name": "UniPCMultistepScheduler", "rescale_betas_zero_snr": true, "prediction_type": "v_prediction"}"#
            ),
            Ok(())
        ),
        row!("heun: beta and exponential sigmas (diffusers refuses two ramps)", || parse(r#"{"_class_name": "HeunDiscreteScheduler", "use_beta_sigmas": true, "use_exponential_sigmas": true}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "use_beta_sigmas"),
        row!("heun: DPM-Solver option: hidden, ignored as diffusers does", || parse(r#"{"_class_name": "HeunDiscreteScheduler", "algorithm_type": "dpmsolver++"}"#),
            Ok(())),
        row!("unipc: unknown solver_type", || parse(r#"{"_class_name": "UniPCMultistepScheduler", "solver_type": "bh3"}"#),
            Err(Error::UnsupportedConfig { key, value }) if key == "solver_type" && value.contains("bh3")),
        row!("unipc: solver_p (not run)", || parse(r#"{"_class_name": "UniPCMultistepScheduler", "solver_p": {"a": 1}}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "solver_p"),
        row!("unipc: flow_prediction (not run)", || parse(r#"{"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "prediction_type"),
        row!("unipc: disable_corrector not a list", || parse(r#"{"_class_name": "UniPCMultistepScheduler", "disable_corrector": 3}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "disable_corrector"),
        row!("unipc: bh1 with final sigma zero (diffusers gives NaN)", || sigma(r#"{"_class_name": "UniPCMultistepScheduler", "solver_type": "bh1"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "solver_type"),
        row!("unipc: no lower-order final step with final sigma zero (diffusers gives inf)", || sigma(r#"{"_class_name": "UniPCMultistepScheduler", "lower_order_final": false}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "lower_order_final"),
        row!(
            "unipc: thresholding",
            || sigma(r#"{"_class_name": "UniPCMultistepScheduler", "thresholding": true}"#),
            Ok(())
        ),
        row!("unipc: thresholding ratio NaN-like string", || parse(r#"{"_class_name": "UniPCMultistepScheduler", "thresholding": true, "dynamic_thresholding_ratio": "high"}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "dynamic_thresholding_ratio"),
        row!("lms: unknown timestep_spacing", || parse(r#"{"_class_name": "LMSDiscreteScheduler", "timestep_spacing": "even"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "timestep_spacing"),
        row!("lms: final_sigmas_type (not an LMS option): hidden, ignored as diffusers does", || parse(r#"{"_class_name": "LMSDiscreteScheduler", "final_sigmas_type": "sigma_min"}"#),
            Ok(())),
        row!("dpm singlestep: unknown algorithm_type", || parse(r#"{"_class_name": "DPMSolverSinglestepScheduler", "algorithm_type": "sde-dpmsolver"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "algorithm_type"),
        row!("dpm singlestep: solver_order 4", || parse(r#"{"_class_name": "DPMSolverSinglestepScheduler", "solver_order": 4}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "solver_order"),
        row!("dpm singlestep: euler_at_final (a multistep option): hidden, ignored as diffusers does", || parse(r#"{"_class_name": "DPMSolverSinglestepScheduler", "euler_at_final": true}"#),
            Ok(())),
        row!("dpm singlestep: dpmsolver with final sigma zero (diffusers refuses it)", || sigma(r#"{"_class_name": "DPMSolverSinglestepScheduler", "algorithm_type": "dpmsolver"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "final_sigmas_type"),
        row!(
            "dpm singlestep: thresholding",
            || sigma(r#"{"_class_name": "DPMSolverSinglestepScheduler", "thresholding": true}"#),
            Ok(())
        ),
        row!("dpm singlestep: thresholding with dpmsolver (diffusers fails on it)", || sigma(r#"{"_class_name": "DPMSolverSinglestepScheduler", "thresholding": true, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "thresholding"),
        row!("kdpm2: sample prediction (diffusers has none)", || sigma(r#"{"_class_name": "KDPM2DiscreteScheduler", "prediction_type": "sample"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "prediction_type"),
        row!(
            "kdpm2-a: beta sigmas",
            || sigma(
                r#"{"_class_name": "KDPM2AncestralDiscreteScheduler", "use_beta_sigmas": true}"#
            ),
            Ok(())
        ),
        row!("kdpm2-a: unknown prediction_type", || parse(r#"{"_class_name": "KDPM2AncestralDiscreteScheduler", "prediction_type": "x0"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "prediction_type"),
        row!("deis: unknown algorithm_type", || parse(r#"{"_class_name": "DEISMultistepScheduler", "algorithm_type": "unipc"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "algorithm_type"),
        row!("deis: unknown solver_type", || parse(r#"{"_class_name": "DEISMultistepScheduler", "solver_type": "rk4"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "solver_type"),
        row!(
            "deis: thresholding",
            || sigma(r#"{"_class_name": "DEISMultistepScheduler", "thresholding": true}"#),
            Ok(())
        ),
        row!("deis: Lu lambdas (a DPM-Solver multistep option): hidden, ignored as diffusers does", || parse(r#"{"_class_name": "DEISMultistepScheduler", "use_lu_lambdas": true}"#),
            Ok(())),
        row!("ipndm: trained_betas of the wrong length", || sigma_steps(r#"{"_class_name": "IPNDMScheduler", "trained_betas": [0.5, 0.1]}"#, 4),
            Err(Error::InvalidConfig { key, .. }) if key == "trained_betas"),
        row!("ipndm: trained_betas outside [0, 1]", || sigma_steps(r#"{"_class_name": "IPNDMScheduler", "trained_betas": [1.5, 0.1, 0.0]}"#, 2),
            Err(Error::InvalidConfig { key, .. }) if key == "trained_betas"),
        row!("pndm: sample prediction (diffusers has none)", || sigma(r#"{"_class_name": "PNDMScheduler", "prediction_type": "sample"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "prediction_type"),
        row!("pndm: Karras sigmas (not a PNDM option): hidden, ignored as diffusers does", || parse(r#"{"_class_name": "PNDMScheduler", "use_karras_sigmas": true}"#),
            Ok(())),
        row!("pndm: skip_prk_steps not a bool", || parse(r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": "yes"}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "skip_prk_steps"),
        row!(
            "pndm: Runge-Kutta warm-up with 3 steps",
            || sigma_steps(r#"{"_class_name": "PNDMScheduler"}"#, 3),
            Err(Error::InvalidArgument {
                what: "num_inference_steps",
                ..
            })
        ),
        row!(
            "euler steps 0",
            || sigma_steps(r#"{"_class_name": "EulerDiscreteScheduler"}"#, 0),
            Err(Error::InvalidArgument {
                what: "num_inference_steps",
                ..
            })
        ),
        row!(
            "dpm steps above T",
            || sigma_steps(r#"{"_class_name": "DPMSolverMultistepScheduler"}"#, 1001),
            Err(Error::InvalidArgument {
                what: "num_inference_steps",
                ..
            })
        ),
        row!("sde-ve: a beta key (the VE class has none): hidden, ignored as diffusers does", || parse(r#"{"_class_name": "ScoreSdeVeScheduler", "beta_end": 0.02}"#),
            Ok(())),
        row!("sde-ve: snr not a number", || parse(r#"{"_class_name": "ScoreSdeVeScheduler", "snr": "high"}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "snr"),
        row!("sde-ve: sampling_eps 0", || parse(r#"{"_class_name": "ScoreSdeVeScheduler", "sampling_eps": 0}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "sampling_eps"),
        row!("sde-ve: negative sigma_max", || parse(r#"{"_class_name": "ScoreSdeVeScheduler", "sigma_max": -3}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "sigma_max"),
        row!("sde-ve: correct_steps not a count", || parse(r#"{"_class_name": "ScoreSdeVeScheduler", "correct_steps": 1.5}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "correct_steps"),
        row!("sde-ve: sigma_max below sigma_min", || tinydiffusion::schedule::ScoreVeScheduler::new(
                SchedulerConfig::from_json(r#"{"_class_name": "ScoreSdeVeScheduler", "sigma_min": 2, "sigma_max": 1}"#)?, 5).map(|_| ()),
            Err(Error::InvalidConfig { key, .. }) if key == "sigma_max"),
        row!("sde-ve: built as DDPM", || Scheduler::new(SchedulerConfig::from_json(r#"{"_class_name": "ScoreSdeVeScheduler"}"#)?, 5).map(|_| ()),
            Err(Error::UnsupportedConfig { key, .. }) if key == "_class_name"),
        row!("cm: prediction_type (the class has none): hidden, ignored as diffusers does", || parse(r#"{"_class_name": "CMStochasticIterativeScheduler", "prediction_type": "sample"}"#),
            Ok(())),
        row!("cm: sigma_data 0", || parse(r#"{"_class_name": "CMStochasticIterativeScheduler", "sigma_data": 0}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "sigma_data"),
        row!("cm: clip_denoised not a bool", || parse(r#"{"_class_name": "CMStochasticIterativeScheduler", "clip_denoised": "yes"}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "clip_denoised"),
        row!(
            "cm: steps above num_train_timesteps",
            || tinydiffusion::schedule::ConsistencyScheduler::new(
                SchedulerConfig::from_json(r#"{"_class_name": "CMStochasticIterativeScheduler"}"#)?,
                41
            )
            .map(|_| ()),
            Err(Error::InvalidArgument { what: "steps", .. })
        ),
        row!(
            "cm: custom timesteps not descending",
            || tinydiffusion::schedule::ConsistencyScheduler::with_timesteps(
                SchedulerConfig::from_json(r#"{"_class_name": "CMStochasticIterativeScheduler"}"#)?,
                &[10, 22]
            )
            .map(|_| ()),
            Err(Error::InvalidArgument {
                what: "timesteps",
                ..
            })
        ),
        row!("lcm: unknown key", || parse(r#"{"_class_name": "LCMScheduler", "gamma": 0.3}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "gamma"),
        row!("lcm: timestep_scaling not a number", || parse(r#"{"_class_name": "LCMScheduler", "timestep_scaling": "ten"}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "timestep_scaling"),
        row!("lcm: original_inference_steps above T", || tinydiffusion::schedule::LcmScheduler::new(
                SchedulerConfig::from_json(r#"{"_class_name": "LCMScheduler", "num_train_timesteps": 40}"#)?, 4, 0.3).map(|_| ()),
            Err(Error::InvalidConfig { key, .. }) if key == "original_inference_steps"),
        row!(
            "lcm: thresholding",
            || parse(r#"{"_class_name": "LCMScheduler", "thresholding": true}"#),
            Ok(())
        ),
        row!("lcm: thresholding ratio negative", || parse(r#"{"_class_name": "LCMScheduler", "thresholding": true, "dynamic_thresholding_ratio": -0.1}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "dynamic_thresholding_ratio"),
        row!("tcd: laplace betas (diffusers refuses)", || parse(r#"{"_class_name": "TCDScheduler", "beta_schedule": "laplace"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "beta_schedule"),
        row!(
            "tcd: gamma above 1",
            || tinydiffusion::schedule::LcmScheduler::new(
                SchedulerConfig::from_json(r#"{"_class_name": "TCDScheduler"}"#)?,
                4,
                1.5
            )
            .map(|_| ()),
            Err(Error::InvalidArgument { what: "eta", .. })
        ),
        row!("unknown beta schedule", || parse(r#"{"beta_schedule": "cubic"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "beta_schedule"),
        row!("unknown prediction type", || parse(r#"{"prediction_type": "flow"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "prediction_type"),
        row!("unknown timestep spacing", || parse(r#"{"timestep_spacing": "karras"}"#),
            Err(Error::UnsupportedConfig { key, .. }) if key == "timestep_spacing"),
        row!("wrong type", || parse(r#"{"clip_sample": "yes"}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "clip_sample"),
        row!("zero training timesteps", || parse(r#"{"num_train_timesteps": 0}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "num_train_timesteps"),
        row!("huge training timesteps", || parse(r#"{"num_train_timesteps": 1e30}"#),
            Err(Error::InvalidConfig { key, .. }) if key == "num_train_timesteps"),
        row!(
            "trained betas of the wrong length",
            || parse(r#"{"num_train_timesteps": 3, "trained_betas": [0.1, 0.2]}"#),
            Err(Error::InvalidConfig { .. })
        ),
        row!(
            "trained beta of 0",
            || parse(r#"{"num_train_timesteps": 2, "trained_betas": [0.0, 0.2]}"#),
            Err(Error::InvalidConfig { .. })
        ),
        row!(
            "invalid JSON",
            || parse("{"),
            Err(Error::InvalidJson { .. })
        ),
    ];
    run_table(rows);
}

struct Setup {
    model: Model,
    class: Model,
    sched: Scheduler,
}

fn setup() -> Setup {
    let class_cfg = tiny_class();
    Setup {
        model: load(TINY, weights()).unwrap(),
        class: load(&class_cfg, random_weights(&class_cfg, 2).unwrap()).unwrap(),
        sched: ddim(2).unwrap(),
    }
}

/// Runs `sample` with buffers of the right size unless overridden.
fn sample_with(
    model: &Model,
    sched: &Scheduler,
    opts: SampleOptions<'_>,
    ws_delta: isize,
    out_len: Option<usize>,
) -> Result<()> {
    let (c, h, w) = model.input_shape();
    let guided = opts.guidance.is_some();
    let need = sampler::workspace_len(model, sched, opts.batch.min(4), guided);
    let mut ws = vec![0.0f32; (need as isize + ws_delta).max(0) as usize];
    let mut out = vec![0.0f32; out_len.unwrap_or(opts.batch.min(4) * c * h * w)];
    sampler::sample(model, sched, &mut ws, &opts, &mut out, None)
}

#[test]
fn bad_sampling_arguments() {
    let s = std::rc::Rc::new(setup());
    macro_rules! with {
        (|$m:ident, $c:ident, $sc:ident| $body:expr) => {{
            let s = s.clone();
            move || {
                let ($m, $c, $sc) = (&s.model, &s.class, &s.sched);
                let _ = (&$m, &$c, &$sc);
                $body
            }
        }};
    }
    let rows = vec![
        row!(
            "valid",
            with!(|m, _c, sc| sample_with(m, sc, SampleOptions::new(2, 1), 0, None)),
            Ok(())
        ),
        row!(
            "batch 0",
            with!(|m, _c, sc| sample_with(m, sc, SampleOptions::new(0, 1), 0, None)),
            Err(Error::InvalidArgument { what: "batch", .. })
        ),
        row!(
            "huge batch",
            with!(|m, _c, sc| sample_with(
                m,
                sc,
                SampleOptions::new(usize::MAX / 3, 1),
                0,
                Some(16)
            )),
            Err(Error::BufferSize { .. } | Error::InvalidArgument { what: "batch", .. })
        ),
        row!(
            "workspace_len of a huge batch does not overflow",
            with!(|m, _c, sc| {
                let n = sampler::workspace_len(m, sc, usize::MAX, true);
                if n == usize::MAX {
                    Ok(())
                } else {
                    Err(Error::InvalidArgument {
                        what: "test",
                        message: n.to_string(),
                    })
                }
            }),
            Ok(())
        ),
        row!(
            "workspace one float short",
            with!(|m, _c, sc| sample_with(m, sc, SampleOptions::new(2, 1), -1, None)),
            Err(Error::BufferSize {
                what: "sampling workspace",
                ..
            })
        ),
        row!(
            "empty workspace",
            with!(|m, _c, sc| sample_with(m, sc, SampleOptions::new(1, 1), -1_000_000, None)),
            Err(Error::BufferSize {
                what: "sampling workspace",
                ..
            })
        ),
        row!(
            "output too short",
            with!(|m, _c, sc| sample_with(m, sc, SampleOptions::new(2, 1), 0, Some(31))),
            Err(Error::BufferSize {
                what: "sample output",
                ..
            })
        ),
        row!(
            "initial noise of the wrong length",
            with!(|m, _c, sc| {
                let x = vec![0.0f32; 5];
                let mut o = SampleOptions::new(1, 1);
                o.initial_noise = Some(&x);
                sample_with(m, sc, o, 0, None)
            }),
            Err(Error::BufferSize {
                what: "initial noise x_T",
                ..
            })
        ),
        row!(
            "step noise of the wrong length",
            with!(|m, _c, sc| {
                let z = vec![0.0f32; 16];
                let mut o = SampleOptions::new(1, 1);
                o.step_noise = Some(&z);
                sample_with(m, sc, o, 0, None)
            }),
            Err(Error::BufferSize { .. })
        ),
        row!(
            "class label out of range",
            with!(|_m, c, sc| {
                let mut o = SampleOptions::new(1, 1);
                o.class_labels = Some(&[3]);
                sample_with(c, sc, o, 0, None)
            }),
            Err(Error::InvalidArgument {
                what: "class label",
                ..
            })
        ),
        row!(
            "negative class label",
            with!(|_m, c, sc| {
                let mut o = SampleOptions::new(1, 1);
                o.class_labels = Some(&[-1]);
                sample_with(c, sc, o, 0, None)
            }),
            Err(Error::InvalidArgument {
                what: "class label",
                ..
            })
        ),
        // Issue 25: no label on a class-conditional model samples the front end's default
        // labels (as the CLI and the C API do), no longer an error.
        row!(
            "no label for a class-conditional model: the default labels",
            with!(|_m, c, sc| sample_with(c, sc, SampleOptions::new(1, 1), 0, None)),
            Ok(())
        ),
        row!(
            "NaN guidance with a workspace too small: the argument error first",
            with!(|_m, c, sc| {
                let mut o = SampleOptions::new(1, 1);
                o.guidance = Some(Guidance {
                    scale: f32::NAN,
                    null_class: 2,
                });
                sample_with(c, sc, o, -1_000_000, None)
            }),
            Err(Error::InvalidArgument {
                what: "guidance",
                ..
            })
        ),
        row!(
            "label out of range with a workspace too small: the argument error first",
            with!(|_m, c, sc| {
                let mut o = SampleOptions::new(1, 1);
                o.class_labels = Some(&[3]);
                sample_with(c, sc, o, -1_000_000, None)
            }),
            Err(Error::InvalidArgument {
                what: "class label",
                ..
            })
        ),
        row!(
            "labels for an unconditional model",
            with!(|m, _c, sc| {
                let mut o = SampleOptions::new(1, 1);
                o.class_labels = Some(&[0]);
                sample_with(m, sc, o, 0, None)
            }),
            Err(Error::InvalidArgument {
                what: "class labels",
                ..
            })
        ),
        row!(
            "label count neither 1 nor batch",
            with!(|_m, c, sc| {
                let mut o = SampleOptions::new(3, 1);
                o.class_labels = Some(&[0, 1]);
                sample_with(c, sc, o, 0, None)
            }),
            Err(Error::BufferSize {
                what: "class labels",
                ..
            })
        ),
        row!(
            "guidance on an unconditional model (Guidance::new)",
            with!(|m, _c, _sc| Guidance::new(m, 2.0)),
            Err(Error::InvalidArgument {
                what: "guidance",
                ..
            })
        ),
        row!(
            "guidance on an unconditional model (hand-built)",
            with!(|m, _c, sc| {
                let mut o = SampleOptions::new(1, 1);
                o.guidance = Some(Guidance {
                    scale: 2.0,
                    null_class: 0,
                });
                sample_with(m, sc, o, 0, None)
            }),
            Err(Error::InvalidArgument {
                what: "guidance",
                ..
            })
        ),
        row!(
            "guidance null class out of range",
            with!(|_m, c, sc| {
                let mut o = SampleOptions::new(1, 1);
                o.class_labels = Some(&[0]);
                o.guidance = Some(Guidance {
                    scale: 2.0,
                    null_class: 7,
                });
                sample_with(c, sc, o, 0, None)
            }),
            Err(Error::InvalidArgument {
                what: "class label",
                ..
            })
        ),
        row!(
            "guidance NaN",
            with!(|_m, c, sc| {
                let mut o = SampleOptions::new(1, 1);
                o.class_labels = Some(&[0]);
                o.guidance = Some(Guidance {
                    scale: f32::NAN,
                    null_class: 2,
                });
                sample_with(c, sc, o, 0, None)
            }),
            Err(Error::InvalidArgument {
                what: "guidance",
                ..
            })
        ),
        row!(
            "guided sampling valid",
            with!(|_m, c, sc| {
                let mut o = SampleOptions::new(2, 1);
                o.class_labels = Some(&[0, 1]);
                o.guidance = Some(Guidance::new(c, 1.5)?);
                sample_with(c, sc, o, 0, None)
            }),
            Ok(())
        ),
        row!(
            "forward: workspace too small",
            with!(|m, _c, _sc| {
                let mut ws = vec![0.0; m.workspace_len(1) - 1];
                m.forward(&mut ws, &[0.0; 16], &[1.0], None, &mut [0.0; 16])
            }),
            Err(Error::BufferSize {
                what: "workspace",
                ..
            })
        ),
        row!(
            "forward: empty input",
            with!(|m, _c, _sc| {
                let mut ws = vec![0.0; m.workspace_len(1)];
                m.forward(&mut ws, &[], &[1.0], None, &mut [])
            }),
            Err(Error::BufferSize {
                what: "model input x",
                ..
            })
        ),
        row!(
            "forward: NaN timestep",
            with!(|m, _c, _sc| {
                let mut ws = vec![0.0; m.workspace_len(1)];
                m.forward(&mut ws, &[0.0; 16], &[f32::NAN], None, &mut [0.0; 16])
            }),
            Err(Error::InvalidArgument {
                what: "timestep",
                ..
            })
        ),
        row!(
            "forward: timesteps neither 1 nor batch",
            with!(|m, _c, _sc| {
                let mut ws = vec![0.0; m.workspace_len(3)];
                m.forward(&mut ws, &[0.0; 48], &[1.0, 2.0], None, &mut [0.0; 48])
            }),
            Err(Error::BufferSize {
                what: "timesteps",
                ..
            })
        ),
        row!(
            "threads: too many",
            with!(|_m, _c, _sc| load(TINY, weights())?.set_threads(1 << 20)),
            Err(Error::InvalidArgument {
                what: "threads",
                ..
            })
        ),
    ];
    run_table(rows);
}

// ----------------------------------------------------------------------------------------------
// C API
// ----------------------------------------------------------------------------------------------

fn c_model(config: &str, weights: &'static [u8]) -> *mut td_model {
    let mut m = null_mut();
    let st = unsafe {
        td_model_from_memory(
            weights.as_ptr(),
            weights.len(),
            config.as_ptr() as *const c_char,
            config.len(),
            null(),
            0,
            &mut m,
        )
    };
    assert_eq!(st, td_status::Ok);
    m
}

#[test]
fn c_api_bad_calls() {
    let w: &'static [u8] = Box::leak(weights().into_boxed_slice());
    let class_cfg = tiny_class();
    let cw: &'static [u8] = Box::leak(random_weights(&class_cfg, 2).unwrap().into_boxed_slice());
    let m = c_model(TINY, w);
    let cm = c_model(&class_cfg, cw);
    let mut ws_needed = 0usize;
    let mut d = td_sampler_desc_default();
    d.scheduler.steps = 2;
    assert_eq!(
        unsafe { td_sample_workspace_len(m, &d, &mut ws_needed) },
        td_status::Ok
    );
    let sample = |model: *const td_model, d: td_sampler_desc, ws_len: usize, out_len: usize| {
        let mut ws = vec![0.0f32; ws_len.max(1)];
        let mut out = vec![0.0f32; out_len.max(1)];
        unsafe {
            td_sample(
                model,
                &d,
                ws.as_mut_ptr(),
                ws_len,
                out.as_mut_ptr(),
                out_len,
            )
        }
    };
    let with = |f: &dyn Fn(&mut td_sampler_desc)| {
        let mut d2 = d;
        f(&mut d2);
        d2
    };
    // The weights again, one byte past an even address: every f16 tensor sits at an odd one.
    let w_odd: &'static [u8] = {
        let buf: &'static mut [u8] = Box::leak(vec![0u8; w.len() + 2].into_boxed_slice());
        let at = if (buf.as_ptr() as usize).is_multiple_of(2) {
            1
        } else {
            0
        };
        buf[at..at + w.len()].copy_from_slice(w);
        &buf[at..at + w.len()]
    };
    let last_error = || {
        let mut buf = vec![0 as c_char; 1024];
        unsafe { td_last_error_message(buf.as_mut_ptr(), buf.len(), null_mut()) };
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    let bad_utf8 = b"{\"sample_size\": \xff}";
    let garbage = [0xffu8; 64];
    let mut n = 0usize;
    let mut model_out = null_mut();
    let cases: Vec<(&str, td_status, td_status)> = vec![
        ("valid sample", sample(m, d, ws_needed, 16), td_status::Ok),
        (
            "NULL model",
            sample(null(), d, ws_needed, 16),
            td_status::NullPointer,
        ),
        (
            "NULL desc",
            unsafe {
                td_sample(
                    m,
                    null(),
                    [0.0f32; 1].as_mut_ptr(),
                    1,
                    [0.0f32; 16].as_mut_ptr(),
                    16,
                )
            },
            td_status::NullPointer,
        ),
        (
            "NULL workspace",
            unsafe { td_sample(m, &d, null_mut(), ws_needed, [0.0f32; 16].as_mut_ptr(), 16) },
            td_status::NullPointer,
        ),
        (
            "workspace too small",
            sample(m, d, ws_needed - 1, 16),
            td_status::BufferTooSmall,
        ),
        (
            "output too small",
            sample(m, d, ws_needed, 15),
            td_status::BufferTooSmall,
        ),
        (
            "output too large",
            sample(m, d, ws_needed, 17),
            td_status::BadSize,
        ),
        (
            "batch 0",
            sample(m, with(&|d| d.batch = 0), ws_needed, 16),
            td_status::InvalidArgument,
        ),
        (
            "huge batch",
            sample(m, with(&|d| d.batch = usize::MAX / 2), ws_needed, 16),
            td_status::BadSize,
        ),
        (
            "steps above the training timesteps",
            sample(m, with(&|d| d.scheduler.steps = 1001), ws_needed, 16),
            td_status::InvalidArgument,
        ),
        (
            "unknown scheduler kind",
            sample(m, with(&|d| d.scheduler.kind = 99), ws_needed, 16),
            td_status::InvalidArgument,
        ),
        (
            "unknown scheduler flag",
            sample(m, with(&|d| d.scheduler.flags = 0x100), ws_needed, 16),
            td_status::InvalidArgument,
        ),
        (
            "eta NaN",
            sample(m, with(&|d| d.scheduler.eta = f64::NAN), ws_needed, 16),
            td_status::InvalidArgument,
        ),
        (
            "class label on an unconditional model",
            sample(m, with(&|d| d.class_label = 0), ws_needed, 16),
            td_status::InvalidArgument,
        ),
        (
            "guidance on an unconditional model",
            sample(m, with(&|d| d.guidance = 2.0), 4 * ws_needed, 16),
            td_status::InvalidArgument,
        ),
        (
            "class label out of range",
            sample(cm, with(&|d| d.class_label = 3), 4 * ws_needed, 16),
            td_status::InvalidArgument,
        ),
        // Issue 25: the C API now samples the default labels (as the CLI does) instead of
        // failing with "the model is class-conditional".
        (
            "no class label for a class-conditional model: the default labels",
            sample(cm, d, 4 * ws_needed, 16),
            td_status::Ok,
        ),
        // Issue 25, item 4: every argument is checked before any size is computed, the same in
        // td_sample_workspace_len and td_sample (whatever the buffers).
        (
            "workspace_len with a NaN guidance scale",
            unsafe { td_sample_workspace_len(cm, &with(&|d| d.guidance = f32::NAN), &mut n) },
            td_status::InvalidArgument,
        ),
        (
            "sample with a NaN guidance scale and a workspace too small",
            sample(cm, with(&|d| d.guidance = f32::NAN), 1, 16),
            td_status::InvalidArgument,
        ),
        (
            "sample with a NaN guidance scale and a large workspace",
            sample(cm, with(&|d| d.guidance = f32::NAN), 8 * ws_needed, 16),
            td_status::InvalidArgument,
        ),
        (
            "workspace_len with an infinite guidance scale",
            unsafe { td_sample_workspace_len(cm, &with(&|d| d.guidance = f32::INFINITY), &mut n) },
            td_status::InvalidArgument,
        ),
        (
            "workspace_len with a class label out of range",
            unsafe { td_sample_workspace_len(cm, &with(&|d| d.class_label = 3), &mut n) },
            td_status::InvalidArgument,
        ),
        (
            "workspace_len with a label on an unconditional model",
            unsafe { td_sample_workspace_len(m, &with(&|d| d.class_label = 0), &mut n) },
            td_status::InvalidArgument,
        ),
        (
            "workspace_len with a null class out of range",
            unsafe {
                td_sample_workspace_len(
                    cm,
                    &with(&|d| {
                        d.guidance = 1.0;
                        d.null_class = 7;
                    }),
                    &mut n,
                )
            },
            td_status::InvalidArgument,
        ),
        (
            "workspace_len with initial noise of the wrong length",
            unsafe {
                td_sample_workspace_len(
                    m,
                    &with(&|d| {
                        d.initial_noise = [0.0f32; 4].as_ptr();
                        d.initial_noise_len = 4;
                    }),
                    &mut n,
                )
            },
            td_status::BadSize,
        ),
        (
            "workspace_len with eta NaN",
            unsafe {
                td_sample_workspace_len(
                    m,
                    &with(&|d| {
                        d.scheduler.kind = td_scheduler_kind::Ddim as i32;
                        d.scheduler.eta = f64::NAN;
                    }),
                    &mut n,
                )
            },
            td_status::InvalidArgument,
        ),
        (
            "workspace_len with 1025 threads",
            unsafe { td_sample_workspace_len(m, &with(&|d| d.threads = 1025), &mut n) },
            td_status::InvalidArgument,
        ),
        (
            "sample with 1025 threads and a workspace too small",
            sample(m, with(&|d| d.threads = 1025), 1, 16),
            td_status::InvalidArgument,
        ),
        (
            "desc with another struct_size (built against another header)",
            unsafe { td_sample_workspace_len(m, &with(&|d| d.struct_size -= 8), &mut n) },
            td_status::BadSize,
        ),
        (
            "sample with a desc of another struct_size",
            sample(m, with(&|d| d.struct_size = 0), ws_needed, 16),
            td_status::BadSize,
        ),
        (
            "set_threads NULL model",
            unsafe { td_model_set_threads(null_mut(), 1) },
            td_status::NullPointer,
        ),
        (
            "set_threads 1025",
            unsafe { td_model_set_threads(m, 1025) },
            td_status::InvalidArgument,
        ),
        (
            "get_threads NULL out",
            unsafe { td_model_get_threads(m, null_mut()) },
            td_status::NullPointer,
        ),
        (
            "step noise length wrong",
            sample(
                m,
                with(&|d| {
                    d.step_noise = [0.0f32; 4].as_ptr();
                    d.step_noise_len = 4;
                }),
                ws_needed,
                16,
            ),
            td_status::BadSize,
        ),
        (
            "NULL step noise with a length",
            sample(
                m,
                with(&|d| {
                    d.step_noise_len = 32;
                }),
                ws_needed,
                16,
            ),
            td_status::NullPointer,
        ),
        (
            "misaligned workspace",
            unsafe {
                let mut buf = vec![0u8; ws_needed * 4 + 8];
                let p = buf.as_mut_ptr().add(buf.as_ptr().align_offset(4) + 1) as *mut f32;
                td_sample(m, &d, p, ws_needed, [0.0f32; 16].as_mut_ptr(), 16)
            },
            td_status::InvalidArgument,
        ),
        (
            "output overlapping the workspace",
            unsafe {
                let mut ws = vec![0.0f32; ws_needed];
                td_sample(m, &d, ws.as_mut_ptr(), ws_needed, ws.as_mut_ptr(), 16)
            },
            td_status::InvalidArgument,
        ),
        (
            "workspace_len of a huge batch",
            unsafe { td_model_workspace_len(m, usize::MAX, &mut n) },
            td_status::BadSize,
        ),
        (
            "workspace_len NULL out",
            unsafe { td_model_workspace_len(m, 1, null_mut()) },
            td_status::NullPointer,
        ),
        (
            "from_memory NULL weights",
            unsafe {
                td_model_from_memory(
                    null(),
                    10,
                    TINY.as_ptr() as *const c_char,
                    TINY.len(),
                    null(),
                    0,
                    &mut model_out,
                )
            },
            td_status::NullPointer,
        ),
        (
            "from_memory garbage weights",
            unsafe {
                td_model_from_memory(
                    garbage.as_ptr(),
                    garbage.len(),
                    TINY.as_ptr() as *const c_char,
                    TINY.len(),
                    null(),
                    0,
                    &mut model_out,
                )
            },
            td_status::InvalidWeights,
        ),
        (
            "from_memory config not UTF-8",
            unsafe {
                td_model_from_memory(
                    w.as_ptr(),
                    w.len(),
                    bad_utf8.as_ptr() as *const c_char,
                    bad_utf8.len(),
                    null(),
                    0,
                    &mut model_out,
                )
            },
            td_status::InvalidJson,
        ),
        (
            "from_memory bad scheduler option",
            unsafe {
                let s = br#"{"use_karras_sigma": true}"#;
                td_model_from_memory(
                    w.as_ptr(),
                    w.len(),
                    TINY.as_ptr() as *const c_char,
                    TINY.len(),
                    s.as_ptr() as *const c_char,
                    s.len(),
                    &mut model_out,
                )
            },
            td_status::Unsupported,
        ),
        // Issue 25, item 5: weights at an odd address (the file is fine).
        (
            "from_memory weights at an odd address",
            unsafe {
                let st = td_model_from_memory(
                    w_odd.as_ptr(),
                    w_odd.len(),
                    TINY.as_ptr() as *const c_char,
                    TINY.len(),
                    null(),
                    0,
                    &mut model_out,
                );
                let message = last_error();
                assert!(
                    message.contains("address") && message.contains("the file itself is fine"),
                    "{message}"
                );
                assert!(!message.contains("sample convert"), "{message}");
                st
            },
            td_status::InvalidWeights,
        ),
        (
            "load NULL path",
            unsafe { td_model_load(null(), &mut model_out) },
            td_status::NullPointer,
        ),
        (
            "load non-UTF-8 path",
            unsafe { td_model_load(c"/nonexistent/\xff\xfe".as_ptr(), &mut model_out) },
            td_status::Io,
        ),
        (
            "last error into a 1-byte buffer",
            unsafe { td_last_error_message([0 as c_char; 1].as_mut_ptr(), 1, &mut n) },
            td_status::BufferTooSmall,
        ),
        (
            "timesteps into a short buffer",
            unsafe {
                let mut s = null_mut();
                assert_eq!(td_scheduler_new(m, &d.scheduler, &mut s), td_status::Ok);
                let st = td_scheduler_timesteps(s, [0i64; 1].as_mut_ptr(), 1);
                td_scheduler_free(s);
                st
            },
            td_status::BufferTooSmall,
        ),
    ];
    assert!(model_out.is_null());
    let failures: Vec<String> = cases
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(name, got, want)| format!("{name}: got {got:?}, want {want:?}"))
        .collect();
    unsafe {
        td_model_free(m);
        td_model_free(cm);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[cfg(unix)]
#[test]
fn non_utf8_paths() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    // A path that does not exist: a clear I/O error, no panic.
    let missing = OsStr::from_bytes(b"/nonexistent/\xff\xfeweights");
    assert!(matches!(Model::load(missing), Err(Error::Io { .. })));
    // A real folder under a non-UTF-8 name loads.
    let dir = std::env::temp_dir().join(OsStr::from_bytes(
        format!("td-bad-inputs-{}-\u{0}", std::process::id())
            .replace('\u{0}', "")
            .as_bytes(),
    ));
    let dir = dir.with_file_name({
        let mut n = dir.file_name().unwrap().as_bytes().to_vec();
        n.extend_from_slice(b"\xff\xfe");
        std::ffi::OsString::from(OsStr::from_bytes(&n))
    });
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), TINY).unwrap();
    std::fs::write(dir.join("diffusion_pytorch_model.safetensors"), weights()).unwrap();
    let loaded = Model::load(&dir);
    // The CLI with that path: it works, or it says why; never a panic (exit 101).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sample"))
        .arg("info")
        .arg(&dir)
        .output()
        .unwrap();
    let bad_flag = std::process::Command::new(env!("CARGO_BIN_EXE_sample"))
        .arg(OsStr::from_bytes(b"--sch\xffeduler"))
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(loaded.is_ok(), "{:?}", loaded.err());
    // The CLI takes UTF-8 arguments only: a non-UTF-8 path is refused with a message.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || (out.status.code() == Some(1) && stderr.contains("UTF-8")),
        "sample info on a non-UTF-8 path: {:?} {stderr}",
        out.status
    );
    let stderr = String::from_utf8_lossy(&bad_flag.stderr);
    assert_eq!(bad_flag.status.code(), Some(1), "non-UTF-8 flag: {stderr}");
    assert!(stderr.contains("UTF-8"), "{stderr}");
}

/// The CLIP text encoder fixture (`quick/`: f16 weights under `text_model.` names).
fn clip_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip-text/quick/text_encoder")
}

fn clip_config(f: impl FnOnce(&mut Map<String, Value>)) -> String {
    let text = std::fs::read_to_string(clip_dir().join("config.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    f(v.as_object_mut().unwrap());
    v.to_string()
}

fn clip_weights() -> Vec<u8> {
    std::fs::read(clip_dir().join("model.safetensors")).unwrap()
}

fn clip_load(config: String, weights: Vec<u8>, clip_skip: usize) -> Result<TextEncoder> {
    TextEncoder::from_parts(&config, WeightBytes::Owned(weights), clip_skip)
}

#[test]
fn bad_text_encoder_config_and_weights() {
    let cfg = |f: fn(&mut Map<String, Value>)| clip_config(f);
    let parse = |s: String| TextEncoderConfig::from_json(&s).map(|_| ());
    let load = |c: String, w: Vec<u8>| clip_load(c, w, 0).map(|_| ());
    let rows = vec![
        row!("valid", || load(cfg(|_| {}), clip_weights()), Ok(())),
        row!(
            "not JSON",
            || parse("{\"vocab_size\": ".into()),
            Err(Error::InvalidJson { .. })
        ),
        row!(
            "not an object",
            || parse("[1]".into()),
            Err(Error::InvalidJson { .. })
        ),
        row!("unknown key", || parse(cfg(|o| { o.insert("cross_attention_dim".into(), json!(8)); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "cross_attention_dim"),
        row!("unknown hidden_act", || parse(cfg(|o| { o.insert("hidden_act".into(), json!("gelu_new")); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "hidden_act"),
        row!("hidden_act not a string", || parse(cfg(|o| { o.insert("hidden_act".into(), json!(3)); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "hidden_act"),
        row!("CLIPTextModelWithProjection", || parse(cfg(|o| { o.insert("architectures".into(), json!(["CLIPTextModelWithProjection"])); })),
            Err(Error::UnsupportedConfig { key, value }) if key == "architectures" && value.contains("CLIPTextModelWithProjection")),
        row!("a CLIPModel config", || parse(cfg(|o| { o.insert("model_type".into(), json!("clip")); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "model_type"),
        row!("heads do not divide hidden_size", || parse(cfg(|o| { o.insert("num_attention_heads".into(), json!(5)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "num_attention_heads"),
        row!("zero hidden_size", || parse(cfg(|o| { o.insert("hidden_size".into(), json!(0)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "hidden_size"),
        row!("fractional vocab_size", || parse(cfg(|o| { o.insert("vocab_size".into(), json!(10.5)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "vocab_size"),
        row!("layer_norm_eps 0", || parse(cfg(|o| { o.insert("layer_norm_eps".into(), json!(0.0)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "layer_norm_eps"),
        row!("negative token id", || parse(cfg(|o| { o.insert("eos_token_id".into(), json!(-1)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "eos_token_id"),
        row!("padding mask asked for", || parse(cfg(|o| { o.insert("use_attention_mask".into(), json!(true)); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "use_attention_mask"),
        row!("huge max_position_embeddings", || parse(cfg(|o| {
                o.insert("max_position_embeddings".into(), json!(60000));
                o.insert("intermediate_size".into(), json!(1u64 << 20));
            })),
            Err(Error::InvalidConfig { key, .. }) if key == "max_position_embeddings"),
        row!(
            "generic PretrainedConfig keys are accepted",
            || parse(cfg(|o| {
                o.insert("torch_dtype".into(), json!("float32"));
                o.insert(
                    "_name_or_path".into(),
                    json!("openai/clip-vit-large-patch14"),
                );
                o.insert("dropout".into(), json!(0.0));
                o.insert("id2label".into(), json!({"0": "LABEL_0"}));
            })),
            Ok(())
        ),
        row!("missing tensor", || load(cfg(|_| {}), rewrite(&clip_weights(), |n, d, s, b| {
                (n != "text_model.encoder.layers.1.mlp.fc2.bias").then(|| (n.into(), d, s.to_vec(), b.to_vec()))
            })),
            Err(Error::MissingTensor { name }) if name == "text_model.encoder.layers.1.mlp.fc2.bias"),
        row!("vocab_size larger than the token table", || load(cfg(|o| { o.insert("vocab_size".into(), json!(1001)); }), clip_weights()),
            Err(Error::ShapeMismatch { name, .. }) if name == "text_model.embeddings.token_embedding.weight"),
        row!("fewer positions than max_position_embeddings", || load(cfg(|o| { o.insert("max_position_embeddings".into(), json!(78)); }), clip_weights()),
            Err(Error::ShapeMismatch { name, .. }) if name == "text_model.embeddings.position_embedding.weight"),
        row!("more layers than the file has", || load(cfg(|o| { o.insert("num_hidden_layers".into(), json!(3)); }), clip_weights()),
            Err(Error::MissingTensor { name }) if name.starts_with("text_model.encoder.layers.2.")),
        row!("wrong intermediate_size", || load(cfg(|o| { o.insert("intermediate_size".into(), json!(48)); }), clip_weights()),
            Err(Error::ShapeMismatch { name, .. }) if name == "text_model.encoder.layers.0.mlp.fc1.weight"),
        row!(
            "clip_skip past the layers",
            || clip_load(cfg(|_| {}), clip_weights(), 3).map(|_| ()),
            Err(Error::InvalidArgument {
                what: "clip_skip",
                ..
            })
        ),
    ];
    run_table(rows);
}

#[test]
fn bad_text_encoder_arguments() {
    let enc = clip_load(clip_config(|_| {}), clip_weights(), 0).unwrap();
    let n = enc.tokens();
    let ws_len = enc.workspace_len_for_threads(1, 1);
    let encode = |ids: Vec<u32>, out_len: usize, ws_len: usize| {
        let mut ws = vec![0.0f32; ws_len];
        let mut out = vec![0.0f32; out_len];
        enc.encode(1, &mut ws, &ids, &mut out)
    };
    let per = enc.output_len();
    let rows = vec![
        row!("valid", || encode(vec![5; n], per, ws_len), Ok(())),
        row!(
            "no ids",
            || encode(vec![], 0, ws_len),
            Err(Error::BufferSize { .. })
        ),
        row!(
            "ids not a multiple of the tokens",
            || encode(vec![5; n + 1], per, ws_len),
            Err(Error::BufferSize { .. })
        ),
        row!(
            "output too short",
            || encode(vec![5; n], per - 1, ws_len),
            Err(Error::BufferSize {
                what: "text encoder output",
                ..
            })
        ),
        row!(
            "workspace too short",
            || encode(vec![5; n], per, ws_len - 1),
            Err(Error::BufferSize {
                what: "workspace",
                ..
            })
        ),
        row!("id out of the vocabulary", || {
                let mut ids = vec![5u32; n];
                ids[7] = 1000;
                encode(ids, per, ws_len)
            },
            Err(Error::InvalidArgument { what: "token id", message }) if message.contains("1000")),
        row!(
            "id u32::MAX",
            || encode(vec![u32::MAX; n], per, ws_len),
            Err(Error::InvalidArgument {
                what: "token id",
                ..
            })
        ),
    ];
    run_table(rows);
}

/// A tiny CLIP-style tokenizer: enough symbols for `ab` to merge.
const TOK_VOCAB: &str = r#"{"a": 0, "b": 1, "a</w>": 2, "b</w>": 3, "ab</w>": 4, "!": 5,
  "<|startoftext|>": 6, "<|endoftext|>": 7}"#;
const TOK_MERGES: &str = "#version: 0.2\na b</w>\n";

fn tokenizer_files(
    vocab: &str,
    merges: &str,
    special: Option<&str>,
    config: Option<&str>,
) -> Result<tinydiffusion::text::ClipTokenizer> {
    tinydiffusion::text::ClipTokenizer::from_files(tinydiffusion::text::tokenizer::TokenizerFiles {
        vocab_json: Some(vocab),
        merges_txt: Some(merges),
        special_tokens_map_json: special,
        tokenizer_config_json: config,
        ..Default::default()
    })
}

fn tokenizer_json(edit: impl FnOnce(&mut Value)) -> Result<tinydiffusion::text::ClipTokenizer> {
    let mut tj = json!({
        "added_tokens": [{"id": 7, "content": "<|endoftext|>", "lstrip": false, "rstrip": false,
                          "normalized": false, "single_word": false, "special": true}],
        "model": {"type": "BPE", "vocab": serde_json::from_str::<Value>(TOK_VOCAB).unwrap(),
                  "merges": [["a", "b</w>"]], "end_of_word_suffix": "</w>",
                  "unk_token": "<|endoftext|>"}
    });
    edit(&mut tj);
    let text = tj.to_string();
    tinydiffusion::text::ClipTokenizer::from_files(tinydiffusion::text::tokenizer::TokenizerFiles {
        tokenizer_json: Some(&text),
        ..Default::default()
    })
}

/// A tokenizer folder with the given files (name, bytes), loaded with `from_dir`.
fn tokenizer_dir(
    name: &str,
    files: &[(&str, &[u8])],
) -> Result<tinydiffusion::text::ClipTokenizer> {
    let dir = std::env::temp_dir().join(format!("td-bad-tok-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (f, bytes) in files {
        std::fs::write(dir.join(f), bytes).unwrap();
    }
    let r = tinydiffusion::text::ClipTokenizer::from_dir(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    r
}

#[test]
fn bad_tokenizer_files() {
    let v = TOK_VOCAB;
    let m = TOK_MERGES;
    let rows = vec![
        row!(
            "valid files load and encode",
            || tokenizer_files(v, m, None, None).map(|t| {
                // `!</w>` is not in this vocabulary: the unknown token (the end token) stands in.
                assert_eq!(&t.encode("AB! a")[..5], &[6, 4, 7, 2, 7]);
                assert_eq!(t.encode("").len(), 77);
            }),
            Ok(())
        ),
        row!(
            "valid tokenizer.json loads",
            || tokenizer_json(|_| {}),
            Ok(())
        ),
        row!(
            "empty folder: vocab.json named",
            || tokenizer_dir("empty", &[]),
            Err(Error::Io { path, .. }) if path.ends_with("vocab.json")
        ),
        row!(
            "vocab.json without merges.txt",
            || tokenizer_dir("nomerges", &[("vocab.json", v.as_bytes())]),
            Err(Error::Io { path, .. }) if path.ends_with("merges.txt")
        ),
        row!(
            "merges.txt not UTF-8",
            || tokenizer_dir("utf8", &[("vocab.json", v.as_bytes()), ("merges.txt", b"a \xff\n")]),
            Err(Error::Io { path, .. }) if path.ends_with("merges.txt")
        ),
        row!(
            "vocab.json not JSON",
            || tokenizer_files("{\"a\": ", m, None, None),
            Err(Error::InvalidJson {
                file: "vocab.json",
                ..
            })
        ),
        row!(
            "vocab.json not an object",
            || tokenizer_files("[1, 2]", m, None, None),
            Err(Error::InvalidJson {
                file: "vocab.json",
                ..
            })
        ),
        row!(
            "vocab.json negative id",
            || tokenizer_files(r#"{"a": -1}"#, m, None, None),
            Err(Error::InvalidJson {
                file: "vocab.json",
                ..
            })
        ),
        row!(
            "vocab.json id as a string",
            || tokenizer_files(r#"{"a": "0"}"#, m, None, None),
            Err(Error::InvalidJson {
                file: "vocab.json",
                ..
            })
        ),
        row!(
            "vocab.json empty",
            || tokenizer_files("{}", m, None, None),
            Err(Error::InvalidJson {
                file: "vocab.json",
                ..
            })
        ),
        row!(
            "vocab.json without the end token",
            || tokenizer_files(r#"{"a": 0, "b</w>": 1, "ab</w>": 2, "<|startoftext|>": 3}"#, m, None, None),
            Err(Error::InvalidConfig { key, .. }) if key == "eos_token"
        ),
        row!(
            "merges.txt line of three symbols",
            || tokenizer_files(v, "#version: 0.2\na b c\n", None, None),
            Err(Error::InvalidConfig { key, .. }) if key == "merges.txt line 2"
        ),
        row!(
            "merges.txt line of one symbol",
            || tokenizer_files(v, "a\n", None, None),
            Err(Error::InvalidConfig { key, .. }) if key == "merges.txt line 1"
        ),
        row!(
            "merges.txt symbol not in the vocabulary",
            || tokenizer_files(v, "a z\n", None, None),
            Err(Error::InvalidConfig { key, .. }) if key == "merges.txt line 1"
        ),
        row!(
            "merges.txt merged symbol not in the vocabulary",
            || tokenizer_files(v, "a b\n", None, None),
            Err(Error::InvalidConfig { key, .. }) if key == "merges.txt line 1"
        ),
        row!(
            "special_tokens_map.json not JSON",
            || tokenizer_files(v, m, Some("{"), None),
            Err(Error::InvalidJson {
                file: "special_tokens_map.json",
                ..
            })
        ),
        row!(
            "special_tokens_map.json not an object",
            || tokenizer_files(v, m, Some("[]"), None),
            Err(Error::InvalidJson {
                file: "special_tokens_map.json",
                ..
            })
        ),
        row!(
            "special_tokens_map.json pad_token a number",
            || tokenizer_files(v, m, Some(r#"{"pad_token": 5}"#), None),
            Err(Error::InvalidJson {
                file: "special_tokens_map.json",
                ..
            })
        ),
        row!(
            "special_tokens_map.json token object without content",
            || tokenizer_files(v, m, Some(r#"{"eos_token": {"normalized": true}}"#), None),
            Err(Error::InvalidJson {
                file: "special_tokens_map.json",
                ..
            })
        ),
        row!(
            "special_tokens_map.json pad_token not in the vocabulary",
            || tokenizer_files(v, m, Some(r#"{"pad_token": "[PAD]"}"#), None),
            Err(Error::InvalidConfig { key, .. }) if key == "pad_token"
        ),
        row!(
            "special_tokens_map.json lstrip",
            || tokenizer_files(v, m, Some(r#"{"eos_token": {"content": "<|endoftext|>", "lstrip": true}}"#), None),
            Err(Error::UnsupportedConfig { key, .. }) if key.starts_with("special_tokens_map.json")
        ),
        row!(
            "tokenizer_config.json not JSON",
            || tokenizer_files(v, m, None, Some("nope")),
            Err(Error::InvalidJson {
                file: "tokenizer_config.json",
                ..
            })
        ),
        row!(
            "tokenizer_config.json model_max_length 1",
            || tokenizer_files(v, m, None, Some(r#"{"model_max_length": 1}"#)),
            Err(Error::InvalidConfig { key, .. }) if key.contains("model_max_length")
        ),
        row!(
            "tokenizer_config.json added_tokens_decoder key not an id",
            || tokenizer_files(
                v,
                m,
                None,
                Some(r#"{"added_tokens_decoder": {"x": {"content": "!"}}}"#)
            ),
            Err(Error::InvalidJson {
                file: "tokenizer_config.json",
                ..
            })
        ),
        row!(
            "tokenizer.json not JSON",
            || tinydiffusion::text::ClipTokenizer::from_files(
                tinydiffusion::text::tokenizer::TokenizerFiles {
                    tokenizer_json: Some("{\"model\""),
                    ..Default::default()
                }
            ),
            Err(Error::InvalidJson {
                file: "tokenizer.json",
                ..
            })
        ),
        row!(
            "tokenizer.json without model",
            || tokenizer_json(|tj| {
                tj.as_object_mut().unwrap().remove("model");
            }),
            Err(Error::InvalidJson {
                file: "tokenizer.json",
                ..
            })
        ),
        row!(
            "tokenizer.json WordPiece model",
            || tokenizer_json(|tj| tj["model"]["type"] = json!("WordPiece")),
            Err(Error::UnsupportedConfig { key, .. }) if key == "tokenizer.json: model.type"
        ),
        row!(
            "tokenizer.json merges not an array",
            || tokenizer_json(|tj| tj["model"]["merges"] = json!("a b")),
            Err(Error::InvalidJson {
                file: "tokenizer.json",
                ..
            })
        ),
        row!(
            "tokenizer.json merge of three symbols",
            || tokenizer_json(|tj| tj["model"]["merges"] = json!(["a b c"])),
            Err(Error::InvalidConfig { key, .. }) if key == "tokenizer.json model.merges[0]"
        ),
        row!(
            "tokenizer.json vocab missing",
            || tokenizer_json(|tj| {
                tj["model"].as_object_mut().unwrap().remove("vocab");
            }),
            Err(Error::InvalidJson {
                file: "tokenizer.json",
                ..
            })
        ),
        row!(
            "tokenizer.json added token without id",
            || tokenizer_json(|tj| {
                tj["added_tokens"][0].as_object_mut().unwrap().remove("id");
            }),
            Err(Error::InvalidJson {
                file: "tokenizer.json",
                ..
            })
        ),
        row!(
            "tokenizer.json added token rstrip",
            || tokenizer_json(|tj| tj["added_tokens"][0]["rstrip"] = json!(true)),
            Err(Error::UnsupportedConfig { key, .. }) if key.starts_with("tokenizer.json")
        ),
        row!(
            "tokenizer.json continuing_subword_prefix",
            || tokenizer_json(|tj| tj["model"]["continuing_subword_prefix"] = json!("##")),
            Err(Error::UnsupportedConfig { key, .. }) if key.starts_with("tokenizer.json")
        ),
    ];
    run_table(rows);
}

/// The SD 1.x-shaped conditional UNet fixture's config with some keys changed.
fn cond_config(f: impl FnOnce(&mut Map<String, Value>)) -> String {
    let dir = fixtures_dir_cond();
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    f(v.as_object_mut().unwrap());
    v.to_string()
}

fn fixtures_dir_cond() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet-cond/sd1")
}

fn cond_weights() -> Vec<u8> {
    std::fs::read(fixtures_dir_cond().join("diffusion_pytorch_model.safetensors")).unwrap()
}

#[test]
fn bad_conditional_unet_configs_and_weights() {
    let cfg = |f: fn(&mut Map<String, Value>)| cond_config(f);
    let parse = |s: String| UNetConfig::from_json(&s).map(|_| ());
    let null_keys = [
        "class_embed_type",
        "num_class_embeds",
        "addition_embed_type",
        "addition_time_embed_dim",
        "encoder_hid_dim",
        "encoder_hid_dim_type",
        "time_cond_proj_dim",
        "projection_class_embeddings_input_dim",
        "cross_attention_norm",
        "reverse_transformer_layers_per_block",
        "time_embedding_act_fn",
        "timestep_post_act",
        "num_attention_heads",
    ];
    let mut rows = vec![
        row!("valid", || load(&cfg(|_| {}), cond_weights()), Ok(())),
        row!(
            "SD 1.x-shaped defaults parse",
            || parse(r#"{"_class_name": "UNet2DConditionModel", "sample_size": 64}"#.into()),
            Ok(())
        ),
        row!("UNet2DModel-only block", || parse(cfg(|o| { o.insert("down_block_types".into(), json!(["AttnDownBlock2D", "DownBlock2D"])); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "down_block_types"),
        row!("unknown up block", || parse(cfg(|o| { o.insert("up_block_types".into(), json!(["UpBlock2D", "SimpleCrossAttnUpBlock2D"])); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "up_block_types"),
        row!("SDXL mid block", || parse(cfg(|o| { o.insert("mid_block_type".into(), json!("UNetMidBlock2DSimpleCrossAttn")); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "mid_block_type"),
        row!("only_cross_attention", || parse(cfg(|o| { o.insert("only_cross_attention".into(), json!(true)); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "only_cross_attention"),
        row!("only_cross_attention per block", || parse(cfg(|o| { o.insert("only_cross_attention".into(), json!([false, true])); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "only_cross_attention"),
        row!("dual_cross_attention", || parse(cfg(|o| { o.insert("dual_cross_attention".into(), json!(true)); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "dual_cross_attention"),
        row!("conv_in_kernel 1", || parse(cfg(|o| { o.insert("conv_in_kernel".into(), json!(1)); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "conv_in_kernel"),
        row!("attention_type gated", || parse(cfg(|o| { o.insert("attention_type".into(), json!("gated")); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "attention_type"),
        row!("scale_shift", || parse(cfg(|o| { o.insert("resnet_time_scale_shift".into(), json!("scale_shift")); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "resnet_time_scale_shift"),
        row!("act_fn gelu", || parse(cfg(|o| { o.insert("act_fn".into(), json!("gelu")); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "act_fn"),
        row!("fourier time embedding", || parse(cfg(|o| { o.insert("time_embedding_type".into(), json!("fourier")); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "time_embedding_type"),
        row!("null norm_num_groups", || parse(cfg(|o| { o.insert("norm_num_groups".into(), json!(null)); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "norm_num_groups"),
        row!("unknown key", || parse(cfg(|o| { o.insert("controlnet_conditioning_channel_order".into(), json!("rgb")); })),
            Err(Error::UnsupportedConfig { key, .. }) if key == "controlnet_conditioning_channel_order"),
        row!("heads do not divide channels", || parse(cfg(|o| { o.insert("attention_head_dim".into(), json!(3)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "attention_head_dim"),
        row!("heads list of the wrong length", || parse(cfg(|o| { o.insert("attention_head_dim".into(), json!([2, 2, 2])); })),
            Err(Error::InvalidConfig { key, .. }) if key == "attention_head_dim"),
        row!("zero heads", || parse(cfg(|o| { o.insert("attention_head_dim".into(), json!([0, 2])); })),
            Err(Error::InvalidConfig { key, .. }) if key == "attention_head_dim"),
        row!("transformer layers list too short", || parse(cfg(|o| { o.insert("transformer_layers_per_block".into(), json!([1])); })),
            Err(Error::InvalidConfig { key, .. }) if key == "transformer_layers_per_block"),
        row!("nested transformer layers (SDXL refiner style)", || parse(cfg(|o| { o.insert("transformer_layers_per_block".into(), json!([[1], [1]])); })),
            Err(Error::InvalidConfig { key, .. }) if key == "transformer_layers_per_block"),
        row!("huge transformer layers", || parse(cfg(|o| { o.insert("transformer_layers_per_block".into(), json!(1u64 << 19)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "transformer_layers_per_block"),
        row!("cross_attention_dim 0", || parse(cfg(|o| { o.insert("cross_attention_dim".into(), json!(0)); })),
            Err(Error::InvalidConfig { key, .. }) if key == "cross_attention_dim"),
        row!("cross_attention_dim per block", || parse(cfg(|o| { o.insert("cross_attention_dim".into(), json!([16, 16])); })),
            Err(Error::InvalidConfig { key, .. }) if key == "cross_attention_dim"),
        row!("use_linear_projection not a bool", || parse(cfg(|o| { o.insert("use_linear_projection".into(), json!("yes")); })),
            Err(Error::InvalidConfig { key, .. }) if key == "use_linear_projection"),
        row!("no sample_size", || parse(cfg(|o| { o.remove("sample_size"); })),
            Err(Error::InvalidConfig { key, .. }) if key == "sample_size"),
        // Weights: a linear-projection config over the conv projections' file is the same
        // product (the loader takes trailing unit dimensions, as for older attention
        // checkpoints); a missing cross-attention key, text width unlike the weights.
        row!(
            "linear projection over 1x1 conv weights",
            || load(
                &cfg(|o| {
                    o.insert("use_linear_projection".into(), json!(true));
                }),
                cond_weights()
            ),
            Ok(())
        ),
        row!(
            "cross_attention_dim unlike the weights",
            || load(
                &cfg(|o| {
                    o.insert("cross_attention_dim".into(), json!(8));
                }),
                cond_weights()
            ),
            Err(Error::ShapeMismatch { .. })
        ),
        row!("missing attn2.to_k", || load(&cfg(|_| {}), rewrite(&cond_weights(), |n, d, s, b| {
                (!n.ends_with("attn2.to_k.weight")).then(|| (n.to_string(), d, s.to_vec(), b.to_vec()))
            })),
            Err(Error::MissingTensor { name }) if name.contains("attn2.to_k")),
    ];
    for key in null_keys {
        rows.push(Row {
            name: key,
            run: Box::new(move || {
                UNetConfig::from_json(&cond_config(|o| {
                    o.insert(key.into(), json!(4));
                }))
                .map(|_| ())
            }),
            check: |r| matches!(r, Err(Error::UnsupportedConfig { .. })),
            want: "Err(UnsupportedConfig { key })",
        });
    }
    run_table(rows);
}

#[test]
fn bad_conditional_unet_calls() {
    let model = load(&cond_config(|_| {}), cond_weights()).unwrap();
    let cross = model.config.cross_attention.clone().unwrap();
    assert_eq!(cross.text_tokens, 77);
    let (c, h, w) = model.input_shape();
    let x = vec![0.1f32; c * h * w];
    let ctx = vec![0.0f32; 77 * cross.cross_attention_dim];
    let run = |x: &[f32], t: &[f32], ctx: &[f32], ws_short: bool| {
        let mut ws = vec![0.0f32; model.workspace_len(1) - usize::from(ws_short)];
        let mut out = vec![0.0f32; c * h * w];
        model.forward_conditional(&mut ws, x, t, ctx, &mut out)
    };
    let plain = || {
        let mut ws = vec![0.0f32; model.workspace_len(1)];
        let mut out = vec![0.0f32; c * h * w];
        model.forward(&mut ws, &x, &[1.0], None, &mut out)
    };
    let mut bad_ctx = ctx.clone();
    bad_ctx[0] = f32::INFINITY;
    let rows = vec![
        row!("valid", || run(&x, &[1.0], &ctx, false), Ok(())),
        row!(
            "plain forward of a conditional UNet",
            plain,
            Err(Error::InvalidArgument {
                what: "encoder_hidden_states",
                ..
            })
        ),
        row!("states of another token count", || run(&x, &[1.0], &ctx[..76 * cross.cross_attention_dim], false),
            Err(Error::BufferSize { what, .. }) if what.starts_with("encoder_hidden_states")),
        row!("empty states", || run(&x, &[1.0], &[], false),
            Err(Error::BufferSize { what, .. }) if what.starts_with("encoder_hidden_states")),
        row!(
            "non-finite states",
            || run(&x, &[1.0], &bad_ctx, false),
            Err(Error::InvalidArgument {
                what: "encoder_hidden_states",
                ..
            })
        ),
        row!(
            "workspace one short",
            || run(&x, &[1.0], &ctx, true),
            Err(Error::BufferSize {
                what: "workspace",
                ..
            })
        ),
        row!(
            "timesteps of another batch",
            || run(&x, &[1.0, 2.0, 3.0], &ctx, false),
            Err(Error::BufferSize {
                what: "timesteps",
                ..
            })
        ),
        row!(
            "UNet2DModel given states",
            || {
                let m = load(TINY, weights()).unwrap();
                let (c, h, w) = m.input_shape();
                let mut ws = vec![0.0f32; m.workspace_len(1)];
                let mut out = vec![0.0f32; c * h * w];
                m.forward_conditional(&mut ws, &vec![0.0; c * h * w], &[1.0], &[0.0; 3], &mut out)
            },
            Err(Error::InvalidArgument {
                what: "encoder_hidden_states",
                ..
            })
        ),
        row!(
            "the sampler loop (no text states yet)",
            || {
                let s = Scheduler::new(SchedulerConfig::ddpm_default(), 2)?;
                let mut ws = vec![0.0f32; sampler::workspace_len(&model, &s, 1, false)];
                let mut out = vec![0.0f32; c * h * w];
                sampler::sample(
                    &model,
                    &s,
                    &mut ws,
                    &SampleOptions::new(1, 1),
                    &mut out,
                    None,
                )
            },
            Err(Error::InvalidArgument {
                what: "encoder_hidden_states",
                ..
            })
        ),
    ];
    run_table(rows);
}

#[cfg(feature = "train")]
#[test]
fn trainer_refuses_the_conditional_unet() {
    use tinydiffusion::train::data::Dataset;
    use tinydiffusion::train::trainer::{Init, TrainOptions, Trainer};
    let data = Dataset {
        channels: 4,
        height: 8,
        width: 8,
        images: vec![0.0; 2 * 4 * 8 * 8],
        labels: None,
    };
    let opts = TrainOptions {
        batch: 2,
        ..TrainOptions::default()
    };
    let err = Trainer::new(&cond_config(|_| {}), Init::Seeded(1), data, opts).err();
    assert!(
        matches!(&err, Some(Error::UnsupportedConfig { value, .. }) if value.contains("UNet2DConditionModel")),
        "{err:?}"
    );
}

/// No CUDA kernels for the transformer ops: attaching a conditional UNet to a GPU is a typed
/// error on any machine (checked before the driver).
#[cfg(feature = "cuda")]
#[test]
fn cuda_refuses_the_conditional_unet() {
    let mut model = load(&cond_config(|_| {}), cond_weights()).unwrap();
    let err = model.to_device(tinydiffusion::Device::Cuda(0)).err();
    assert!(
        matches!(&err, Some(Error::UnsupportedConfig { key, .. }) if key == "op encoder_states"),
        "{err:?}"
    );
}
