//! The CLIP tokenizer against transformers' `CLIPTokenizer` (tests/tools/
//! make_clip_tokenizer_fixtures.py): CLIP's real vocabulary, awkward prompts, both folder
//! layouts, both pad conventions, and `sample tokenize`.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use tinydiffusion::text::tokenizer::{TokenizerLayout, CLIP_CONTEXT_LENGTH};
use tinydiffusion::text::ClipTokenizer;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip-tokenizer");

/// GPT-2's byte → printable character map, in CLIP's vocabulary order.
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

/// CLIP's vocabulary (49408 tokens, in id order) and merges, built from open_clip's file.
fn clip_vocab() -> (Vec<String>, Vec<String>) {
    let gz = std::fs::read(Path::new(FIXTURES).join("bpe_simple_vocab_16e6.txt.gz")).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap();
    let merges: Vec<String> = text
        .split('\n')
        .skip(1)
        .take(48894)
        .map(String::from)
        .collect();
    let symbols = byte_symbols();
    let mut vocab: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
    vocab.extend(symbols.iter().map(|c| format!("{c}</w>")));
    vocab.extend(merges.iter().map(|m| m.replace(' ', "")));
    vocab.push("<|startoftext|>".into());
    vocab.push("<|endoftext|>".into());
    assert_eq!(vocab.len(), 49408);
    (vocab, merges)
}

/// A tokenizer folder for one fixture variant in a fresh temporary folder: the variant's small
/// files, with the vocabulary and merges filled in (vocab.json + merges.txt, or inside
/// tokenizer.json).
fn variant_folder(variant: &str, into: &Path) {
    let (vocab, merges) = clip_vocab();
    std::fs::create_dir_all(into).unwrap();
    let src = Path::new(FIXTURES).join(variant);
    let vocab_map: Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let mut has_json = false;
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name == "tokenizer.json" {
            has_json = true;
            let mut tj: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            tj["model"]["vocab"] = Value::Object(vocab_map.clone());
            tj["model"]["merges"] = merges
                .iter()
                .map(|m| {
                    let (l, r) = m.split_once(' ').unwrap();
                    json!([l, r])
                })
                .collect();
            std::fs::write(into.join(name), tj.to_string()).unwrap();
        } else {
            std::fs::copy(&path, into.join(name)).unwrap();
        }
    }
    if !has_json {
        std::fs::write(
            into.join("vocab.json"),
            Value::Object(vocab_map).to_string(),
        )
        .unwrap();
        std::fs::write(
            into.join("merges.txt"),
            format!("#version: 0.2\n{}\n", merges.join("\n")),
        )
        .unwrap();
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("td-clip-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn expected() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(Path::new(FIXTURES).join("expected.json")).unwrap(),
    )
    .unwrap()
}

/// The full padded ids of a fixture row.
fn padded(variant: &Value, row: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = variant["ids"][row]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    ids.resize(
        variant["max_length"].as_u64().unwrap() as usize,
        variant["pad_id"].as_u64().unwrap() as u32,
    );
    ids
}

#[test]
fn ids_equal_transformers_in_every_layout() {
    let expected = expected();
    let prompts = expected["prompts"].as_array().unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, variant) in expected["variants"].as_object().unwrap() {
        let dir = temp_dir(name);
        variant_folder(name, &dir);
        let tokenizer = ClipTokenizer::from_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let layout = if name.contains("json") {
            TokenizerLayout::TokenizerJson
        } else {
            TokenizerLayout::VocabMerges
        };
        assert_eq!(tokenizer.layout(), layout, "{name}");
        assert_eq!(tokenizer.max_length(), CLIP_CONTEXT_LENGTH, "{name}");
        assert_eq!(
            tokenizer.pad_id() as u64,
            variant["pad_id"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(tokenizer.vocab_len(), 49408);
        for (row, prompt) in prompts.iter().enumerate() {
            let prompt = prompt.as_str().unwrap();
            let got = tokenizer.encode(prompt);
            let want = padded(variant, row);
            checked += 1;
            if got != want {
                failures.push(format!(
                    "{name} {prompt:?}:\n  got  {got:?}\n  want {want:?}"
                ));
            }
        }
    }
    assert!(checked >= 6 * 40, "{checked} rows");
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn sample_tokenize_prints_the_padded_ids() {
    let expected = expected();
    let prompts = expected["prompts"].as_array().unwrap();
    let variant = &expected["variants"]["sd2-vocab-merges"];
    // A pipeline folder (tokenizer/ inside) and the tokenizer folder itself.
    let pipeline = temp_dir("pipeline");
    variant_folder("sd2-vocab-merges", &pipeline.join("tokenizer"));
    for dir in [pipeline.clone(), pipeline.join("tokenizer")] {
        for row in [0, 1, 4, 10, 36] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_sample"))
                .args(["tokenize", "--model"])
                .arg(&dir)
                .args(["--prompt", prompts[row].as_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let got: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(
                got,
                padded(variant, row),
                "row {row} from {}",
                dir.display()
            );
        }
    }
    // A folder without a tokenizer: one line naming the missing file, exit status 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sample"))
        .args(["tokenize", "--prompt", "x", "--model"])
        .arg(pipeline.join("missing"))
        .output()
        .unwrap();
    std::fs::remove_dir_all(&pipeline).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("vocab.json"), "{stderr}");
    // Missing flags: one line saying which, exit status 1.
    for (args, says) in [
        (&["tokenize", "--model", "x"][..], "--prompt"),
        (&["tokenize", "--prompt", "x"][..], "--model"),
        (&["tokenize", "--prompt"][..], "--prompt needs a value"),
        (&["tokenize", "--seed", "1"][..], "unknown argument"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sample"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
