//! Writes the seed corpora `corpus/<target>/seed-*` from `tests/fixtures`:
//!
//! - `load_model`: every fixture's `config.json`, verbatim and shrunk to a few channels, with
//!   seeded weights in diffusers f16, f32 and bf16 and in the packed (converted) layout.
//! - `scheduler_config`: the distinct scheduler configs of `tests/fixtures/extra/scheduler_cases.json`
//!   with their step counts, eta and flags.
//! - `c_api`: each operation of the harness on each model, with default-ish fields.
//! - `forward_bytes`: the tiny model's own weights and a few special-value patterns.
//! - `clip_tokenizer`: each folder variant of `tests/fixtures/clip-tokenizer` with a small
//!   byte-level vocabulary (the 512 byte symbols, a few merges, the two special tokens).
//!
//! `cargo run --release --example gen_corpus` from `fuzz/` (overwrites the seeds, keeps the rest).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde_json::Value;
use tinydiffusion_fuzz::{tiny_class_weights, tiny_weights, TINY_CLASS_CONFIG, TINY_CONFIG};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn load_model_input(flags: u8, config: &str, weights: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(&(config.len() as u16).to_le_bytes());
    v.extend_from_slice(config.as_bytes());
    v.extend_from_slice(weights);
    v
}

/// The f16 tensors of a safetensors file rewritten as `dtype` (F32 or BF16).
fn retyped(f16_file: &[u8], dtype: safetensors::Dtype) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(f16_file).unwrap();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let vals = view
                .data()
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32());
            let bytes: Vec<u8> = match dtype {
                safetensors::Dtype::F32 => vals.flat_map(|x| x.to_le_bytes()).collect(),
                _ => vals.flat_map(|x| bf16::from_f32(x).to_le_bytes()).collect(),
            };
            (name, view.shape().to_vec(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(dtype, s.clone(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// A fixture config with its block structure kept and every size made tiny.
fn shrink(config: &str) -> String {
    let mut v: Value = serde_json::from_str(config).unwrap();
    let o = v.as_object_mut().unwrap();
    let n = o["block_out_channels"].as_array().map_or(4, |a| a.len());
    o.insert(
        "block_out_channels".into(),
        Value::from((0..n).map(|i| 4 * (1 + i % 2)).collect::<Vec<_>>()),
    );
    o.insert("norm_num_groups".into(), Value::from(2));
    o.insert("attn_norm_num_groups".into(), Value::Null);
    o.insert("layers_per_block".into(), Value::from(1));
    o.insert("sample_size".into(), Value::from(1usize << (n - 1)));
    if o.get("attention_head_dim").is_some_and(|a| !a.is_null()) {
        o.insert("attention_head_dim".into(), Value::from(2));
    }
    if o.get("time_embedding_dim").is_some_and(|a| !a.is_null()) {
        o.insert("time_embedding_dim".into(), Value::from(8));
    }
    serde_json::to_string_pretty(&v).unwrap()
}

fn load_model_seeds(fixtures: &Path) {
    let mut configs: Vec<(String, String)> = vec![
        ("tiny".into(), TINY_CONFIG.into()),
        ("tiny-class".into(), TINY_CLASS_CONFIG.into()),
    ];
    let mut dirs: Vec<PathBuf> = Vec::new();
    for sub in ["", "extra"] {
        for e in fs::read_dir(fixtures.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.join("config.json").is_file() {
                dirs.push(p);
            }
        }
    }
    dirs.sort();
    for d in dirs {
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(d.join("config.json")).unwrap();
        // Verbatim config, weights of its shrunk twin (fails at shape checks: a useful seed).
        let small = shrink(&text);
        if let Ok(w) = tinydiffusion::testing::random_weights(&small, 1) {
            write(
                "load_model",
                &format!("{name}-verbatim-config"),
                &load_model_input(0, &text, &w[..w.len().min(4096)]),
            );
        }
        configs.push((format!("{name}-small"), small));
    }
    for (name, config) in &configs {
        let Ok(w) = tinydiffusion::testing::random_weights(config, 3) else {
            eprintln!("skipping {name}: no weights");
            continue;
        };
        write(
            "load_model",
            &format!("{name}-f16"),
            &load_model_input(0, config, &w),
        );
        // The other dtypes and the packed layout for the two tiny models only (size).
        if !name.starts_with("tiny") || name.ends_with("-small") {
            continue;
        }
        write(
            "load_model",
            &format!("{name}-f32"),
            &load_model_input(0, config, &retyped(&w, safetensors::Dtype::F32)),
        );
        write(
            "load_model",
            &format!("{name}-bf16"),
            &load_model_input(2, config, &retyped(&w, safetensors::Dtype::BF16)),
        );
        if let Ok((packed, _)) = tinydiffusion::model::convert::to_packed_safetensors(config, &w) {
            write(
                "load_model",
                &format!("{name}-packed"),
                &load_model_input(1, config, &packed),
            );
        }
    }
}

fn scheduler_seeds(fixtures: &Path) {
    let text = fs::read_to_string(fixtures.join("extra/scheduler_cases.json")).unwrap();
    let cases: Value = serde_json::from_str(&text).unwrap();
    let mut seen = BTreeSet::new();
    for case in cases["cases"].as_array().unwrap() {
        let json = serde_json::to_string(&case["scheduler"]).unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap_or(10) as u16;
        if !seen.insert(json.clone()) || seen.len() > 40 {
            continue;
        }
        let eta = (case["eta"].as_f64().unwrap_or(0.0) * 64.0) as u8;
        let flags = if case["use_clipped_model_output"].as_bool() == Some(true) {
            8
        } else {
            0
        };
        let mut v = steps.to_le_bytes().to_vec();
        v.push(flags);
        v.push(eta);
        v.extend_from_slice(json.as_bytes());
        write("scheduler_config", &format!("case{:02}", seen.len()), &v);
    }
    let mut v = 50u16.to_le_bytes().to_vec();
    v.extend_from_slice(&[2, 0]);
    v.extend_from_slice(b"{}");
    write("scheduler_config", "defaults-ddim", &v);
}

fn c_api_seeds() {
    for op in 0u8..9 {
        for model in [0u8, 1, 3] {
            let mut v = vec![op, model];
            v.extend((0..48u8).map(|i| i.wrapping_mul(37) % 7));
            write("c_api", &format!("op{op}-model{model}"), &v);
        }
    }
    // A model from memory: the tiny model's own bytes.
    let w = tiny_weights();
    let mut v = vec![0u8, 1];
    v.extend_from_slice(&(w.len() as u16).to_le_bytes());
    v.extend_from_slice(w);
    v.extend_from_slice(&(TINY_CONFIG.len() as u16).to_le_bytes());
    v.extend_from_slice(TINY_CONFIG.as_bytes());
    v.extend_from_slice(&[2, 0, b'{', b'}', 0]);
    write("c_api", "from-memory", &v);
}

fn forward_seeds() {
    let w = tiny_class_weights();
    let data = &w[tinydiffusion_fuzz::data_start(w)..];
    let head = |t: f32, label: u8| {
        let mut v = t.to_le_bytes().to_vec();
        v.push(label);
        v.push(64);
        v.extend((0..16).flat_map(|i| (i as f32 / 8.0 - 1.0).to_le_bytes()));
        v
    };
    let mut v = head(500.0, 1);
    v.extend_from_slice(data);
    write("forward_bytes", "own-weights", &v);
    for (name, pattern) in [
        ("nan", f16::NAN),
        ("inf", f16::INFINITY),
        ("max", f16::MAX),
        ("subnormal", f16::from_bits(1)),
        ("zero", f16::ZERO),
    ] {
        let mut v = head(999.0, 2);
        v.extend_from_slice(&pattern.to_le_bytes());
        v.extend_from_slice(&f16::from_f32(0.25).to_le_bytes());
        write("forward_bytes", name, &v);
    }
}

/// `text_encoder` inputs: flags, clip_skip, the config's length and text, the weights; the two
/// CLIP text-encoder fixtures (the larger gelu one once; quick_gelu also with clip_skip 1 and
/// with the checks off).
fn text_encoder_seeds(dir: &Path) {
    for variant in ["quick", "gelu"] {
        let folder = dir.join(variant).join("text_encoder");
        let config = fs::read_to_string(folder.join("config.json")).unwrap();
        let weights = fs::read(folder.join("model.safetensors")).unwrap();
        let variants: &[(&str, u8, u8)] = if variant == "quick" {
            &[("", 0, 0), ("-skip1", 0, 1), ("-unchecked", 3, 0)]
        } else {
            &[("", 0, 0)]
        };
        for &(name, flags, clip_skip) in variants {
            let mut v = vec![flags, clip_skip];
            v.extend_from_slice(&(config.len() as u16).to_le_bytes());
            v.extend_from_slice(config.as_bytes());
            v.extend_from_slice(&weights);
            write("text_encoder", &format!("clip-{variant}{name}"), &v);
        }
    }
}

fn main() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    load_model_seeds(&fixtures);
    scheduler_seeds(&fixtures);
    c_api_seeds();
    forward_seeds();
    clip_tokenizer_seeds(&fixtures.join("clip-tokenizer"));
    text_encoder_seeds(&fixtures.join("clip-text"));
}

/// GPT-2's byte symbols in CLIP's vocabulary order.
fn byte_symbols() -> Vec<char> {
    let mut bytes: Vec<u32> = (0x21..=0x7e)
        .chain(0xa1..=0xac)
        .chain(0xae..=0xff)
        .collect();
    let mut chars = bytes.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    chars
        .into_iter()
        .map(|c| char::from_u32(c).unwrap())
        .collect()
}

fn clip_tokenizer_seeds(dir: &Path) {
    use tinydiffusion_fuzz::clip_tokenizer_input;
    let merges = [
        "p h",
        "ph o",
        "pho t",
        "phot o</w>",
        "c a",
        "ca t</w>",
        "o f</w>",
        "t h",
        "th e</w>",
    ];
    let mut vocab: Vec<String> = Vec::new();
    for c in byte_symbols() {
        vocab.push(c.to_string());
    }
    for c in byte_symbols() {
        vocab.push(format!("{c}</w>"));
    }
    vocab.extend(merges.iter().map(|m| m.replace(' ', "")));
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());
    let vocab_map: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), Value::from(i)))
        .collect();
    let vocab_json = Value::Object(vocab_map.clone()).to_string();
    let merges_txt = format!("#version: 0.2\n{}\n", merges.join("\n"));
    let prompt = "A photo of a CAT, 8k!! <|endoftext|> don't \t caf\u{e9} \u{1F600}";
    let read = |variant: &str, file: &str| fs::read_to_string(dir.join(variant).join(file)).ok();
    for variant in [
        "sd1-vocab-merges",
        "sd2-vocab-merges",
        "sd2-v4-config",
        "sd1-tokenizer-json",
        "sd2-tokenizer-json",
        "tokenizer-json-only",
    ] {
        let special = read(variant, "special_tokens_map.json");
        let config = read(variant, "tokenizer_config.json");
        let input = match read(variant, "tokenizer.json") {
            Some(tj) => {
                let mut tj: Value = serde_json::from_str(&tj).unwrap();
                tj["model"]["vocab"] = Value::Object(vocab_map.clone());
                tj["model"]["merges"] = merges.iter().map(|&m| Value::from(m)).collect();
                let tj = tj.to_string();
                clip_tokenizer_input(true, &tj, "", special.as_deref(), config.as_deref(), prompt)
            }
            None => clip_tokenizer_input(
                false,
                &vocab_json,
                &merges_txt,
                special.as_deref(),
                config.as_deref(),
                prompt,
            ),
        };
        write("clip_tokenizer", variant, &input);
    }
}
