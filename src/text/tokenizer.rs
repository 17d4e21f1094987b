//! CLIP's byte-level BPE tokenizer, giving the ids transformers' `CLIPTokenizer` gives with
//! `padding="max_length", truncation=True` (what diffusers' `StableDiffusionPipeline` asks for).
//!
//! The reference is the `CLIPTokenizer` of the transformers release diffusers 0.42 runs with
//! (5.x), which is backed by the `tokenizers` library. It does, in order:
//! 1. split the prompt on the added tokens that are matched on the prompt as written
//!    (`normalized: false`, e.g. SD 1.x's `<|endoftext|>`, SD 2.x's pad token `!`);
//! 2. normalise the rest: NFC, every run of white space to one space, lower case (per char);
//! 3. split on the added tokens matched after normalisation (`normalized: true`);
//! 4. pre-tokenise with CLIP's pattern (matches kept, the rest, white space, dropped), then
//!    GPT-2's byte-level pattern inside each piece (it only changes `<|endoftext|>` spelled in
//!    a case the added-token match missed: `<|`, `endoftext`, `|>`);
//! 5. map each piece's UTF-8 bytes to GPT-2's printable characters and run BPE on them, `</w>`
//!    appended to the last symbol, the lowest-ranked adjacent pair merged first (leftmost on a
//!    tie);
//! 6. keep the first `model_max_length - 2` ids, put the start and end tokens around them and
//!    pad with the folder's pad token.
//!
//! Which added tokens exist, and whether each is matched before or after normalisation,
//! follows what transformers makes of the folder's files (tested against it): the added tokens
//! a file declares (`added_tokens_decoder` in `tokenizer_config.json`, else `tokenizer.json`'s
//! `added_tokens`) keep their flags; the special tokens (`bos_token`, `eos_token`, `unk_token`,
//! `pad_token`, ...) come from `special_tokens_map.json` over `tokenizer_config.json` over
//! CLIP's defaults, a plain string meaning "as written".
//!
//! Why not the `tokenizers` crate: it is the reference implementation, but it brings a large
//! dependency tree (its default regex engine is Oniguruma, a C library; the pure-Rust
//! `fancy-regex` build still pulls in rayon, esaxx, spm and friends), while CLIP needs one BPE
//! model, two regexes and NFC. This module uses `regex` (pure Rust, Unicode classes) and
//! `unicode-normalization`, both optional dependencies of the `std` feature; the `no_std` core
//! takes token ids.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;

use regex::Regex;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// CLIP's context length: what `model_max_length` is in every published Stable Diffusion
/// folder, and the length used when a folder does not say.
pub const CLIP_CONTEXT_LENGTH: usize = 77;

/// The longest `model_max_length` taken from a folder; transformers writes `1e30` for "no
/// limit", which this tokenizer reads as "not given".
const MAX_MODEL_LENGTH: u64 = 1 << 16;

const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// GPT-2's pattern as the byte-level pre-tokeniser uses it, less its white-space branches: the
/// pieces it splits come from `CLIP_SPLIT` and never contain white space.
const BYTE_LEVEL_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+";

/// The special-token keys transformers knows, in its order (the order matters when two keys
/// name the same token with different flags).
const SPECIAL_KEYS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Which of the two published folder layouts the tokenizer was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerLayout {
    /// `tokenizer.json` (the `tokenizers` library's format).
    TokenizerJson,
    /// `vocab.json` + `merges.txt`.
    VocabMerges,
}

/// The text of a tokenizer folder's files, `None` for a file that is absent. Built by
/// [`ClipTokenizer::from_dir`]; given directly by callers (and the fuzzer) that hold the files
/// in memory. `tokenizer_json` wins over `vocab_json` + `merges_txt`, as in transformers.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenizerFiles<'a> {
    pub tokenizer_json: Option<&'a str>,
    pub vocab_json: Option<&'a str>,
    pub merges_txt: Option<&'a str>,
    pub special_tokens_map_json: Option<&'a str>,
    pub tokenizer_config_json: Option<&'a str>,
}

/// How an added token is matched (`lstrip`, `rstrip`, `single_word` are refused when true).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TokenFlags {
    normalized: bool,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
}

impl TokenFlags {
    const AS_WRITTEN: TokenFlags = TokenFlags {
        normalized: false,
        lstrip: false,
        rstrip: false,
        single_word: false,
    };
}

/// A token matched in the prompt text before BPE, as one id.
#[derive(Debug, Clone)]
struct AddedToken {
    content: String,
    id: u32,
}

/// A CLIP tokenizer read from a `tokenizer/` folder.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    /// `(left, right)` → `(rank, merged id)`.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The id of each byte's symbol, and of that symbol ending a word (`</w>` appended).
    byte_ids: [u32; 256],
    byte_end_ids: [u32; 256],
    /// Added tokens matched on the prompt as written, and after normalisation.
    tokens_as_written: Vec<AddedToken>,
    tokens_normalized: Vec<AddedToken>,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    max_length: usize,
    layout: TokenizerLayout,
    clip_split: Regex,
    byte_level_split: Regex,
    white_space: Regex,
}

fn json_error(file: &'static str, message: impl Into<String>) -> Error {
    Error::InvalidJson {
        file,
        message: message.into(),
    }
}

fn invalid(key: String, message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        key,
        message: message.into(),
    }
}

fn parse_json(file: &'static str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| json_error(file, e.to_string()))
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes map to
/// themselves, the others to U+0100 onwards in byte order.
fn byte_to_char_table() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        // Every value is below 0x200, a valid scalar value.
        table[b as usize] = char::from_u32(c).unwrap_or('\u{fffd}');
    }
    table
}

/// A special-token value: a plain string, or an object with `content` and flags.
fn special_value(
    file: &'static str,
    key: &str,
    value: &Value,
    default_normalized: bool,
) -> Result<Option<(String, TokenFlags)>> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some((s.clone(), TokenFlags::AS_WRITTEN))),
        Value::Object(_) => Ok(Some(token_object(file, key, value, default_normalized)?)),
        _ => Err(json_error(
            file,
            format!("`{key}` must be a string or an object"),
        )),
    }
}

/// `{"content": ..., "normalized": ..., "lstrip": ..., ...}`.
fn token_object(
    file: &'static str,
    key: &str,
    value: &Value,
    default_normalized: bool,
) -> Result<(String, TokenFlags)> {
    let content = value
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| json_error(file, format!("`{key}.content` must be a string")))?;
    let flag = |name: &str, default: bool| -> Result<bool> {
        match value.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(json_error(
                file,
                format!("`{key}.{name}` must be true or false"),
            )),
        }
    };
    let flags = TokenFlags {
        normalized: flag("normalized", default_normalized)?,
        lstrip: flag("lstrip", false)?,
        rstrip: flag("rstrip", false)?,
        single_word: flag("single_word", false)?,
    };
    for (name, on) in [
        ("lstrip", flags.lstrip),
        ("rstrip", flags.rstrip),
        ("single_word", flags.single_word),
    ] {
        if on {
            return Err(Error::UnsupportedConfig {
                key: format!("{file}: {key}.{name}"),
                value: "true".into(),
            });
        }
    }
    Ok((content.to_string(), flags))
}

fn object<'v>(
    file: &'static str,
    value: &'v Value,
    what: &str,
) -> Result<&'v serde_json::Map<String, Value>> {
    value
        .as_object()
        .ok_or_else(|| json_error(file, format!("{what} must be an object")))
}

fn token_id(file: &'static str, key: &str, value: &Value) -> Result<u32> {
    value
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .filter(|&v| v < u32::MAX)
        .ok_or_else(|| {
            json_error(
                file,
                format!("`{key}`: the id must be an integer below 2^32 - 1"),
            )
        })
}

/// `vocab.json` / `tokenizer.json`'s `model.vocab`: token → id.
fn read_vocab(file: &'static str, value: &Value) -> Result<HashMap<String, u32>> {
    let map = object(file, value, "the vocabulary")?;
    let mut vocab = HashMap::with_capacity(map.len());
    for (token, id) in map {
        vocab.insert(token.clone(), token_id(file, token, id)?);
    }
    if vocab.is_empty() {
        return Err(json_error(file, "the vocabulary is empty"));
    }
    Ok(vocab)
}

/// One merge as written in a file, and where (for the error message).
struct MergeEntry<'a> {
    left: &'a str,
    right: &'a str,
    place: String,
}

fn merges_from_txt(text: &str) -> Result<Vec<MergeEntry<'_>>> {
    let mut merges = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("#version") || line.is_empty() {
            continue;
        }
        let place = format!("merges.txt line {}", n + 1);
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(left), Some(right), None) if !left.is_empty() && !right.is_empty() => {
                merges.push(MergeEntry { left, right, place })
            }
            _ => {
                return Err(invalid(
                    place,
                    "a merge is two symbols separated by one space",
                ))
            }
        }
    }
    Ok(merges)
}

fn merges_from_json(value: &Value) -> Result<Vec<MergeEntry<'_>>> {
    const FILE: &str = "tokenizer.json";
    let list = value
        .as_array()
        .ok_or_else(|| json_error(FILE, "`model.merges` must be an array"))?;
    let mut merges = Vec::with_capacity(list.len());
    for (n, m) in list.iter().enumerate() {
        let place = format!("tokenizer.json model.merges[{n}]");
        let pair = match m {
            Value::String(s) => {
                let mut parts = s.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(l), Some(r), None) => Some((l, r)),
                    _ => None,
                }
            }
            Value::Array(a) if a.len() == 2 => a[0].as_str().zip(a[1].as_str()),
            _ => None,
        };
        match pair {
            Some((left, right)) if !left.is_empty() && !right.is_empty() => {
                merges.push(MergeEntry { left, right, place })
            }
            _ => {
                return Err(invalid(
                    place,
                    "a merge is \"left right\" or [\"left\", \"right\"]",
                ))
            }
        }
    }
    Ok(merges)
}

/// Reads a file of the folder; `None` when it does not exist.
fn read_optional(dir: &Path, name: &str) -> Result<Option<String>> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    std::fs::read_to_string(&path)
        .map(Some)
        .map_err(|e| Error::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

impl ClipTokenizer {
    /// Reads a tokenizer folder: `dir/tokenizer/` when `dir` is a pipeline folder, else `dir`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<ClipTokenizer> {
        let dir = dir.as_ref();
        let dir: PathBuf = if dir.join("tokenizer").is_dir() {
            dir.join("tokenizer")
        } else {
            dir.to_path_buf()
        };
        let tokenizer_json = read_optional(&dir, "tokenizer.json")?;
        let (vocab_json, merges_txt) = if tokenizer_json.is_some() {
            (None, None)
        } else {
            let missing = |name: &str, why: &str| Error::Io {
                path: dir.join(name).display().to_string(),
                message: why.into(),
            };
            let vocab = read_optional(&dir, "vocab.json")?.ok_or_else(|| {
                missing(
                    "vocab.json",
                    "not found (a CLIP tokenizer folder holds tokenizer.json, or vocab.json and merges.txt)",
                )
            })?;
            let merges = read_optional(&dir, "merges.txt")?
                .ok_or_else(|| missing("merges.txt", "not found (it goes with vocab.json)"))?;
            (Some(vocab), Some(merges))
        };
        let special_tokens_map = read_optional(&dir, "special_tokens_map.json")?;
        let tokenizer_config = read_optional(&dir, "tokenizer_config.json")?;
        ClipTokenizer::from_files(TokenizerFiles {
            tokenizer_json: tokenizer_json.as_deref(),
            vocab_json: vocab_json.as_deref(),
            merges_txt: merges_txt.as_deref(),
            special_tokens_map_json: special_tokens_map.as_deref(),
            tokenizer_config_json: tokenizer_config.as_deref(),
        })
    }

    /// Builds the tokenizer from the files' text (see [`TokenizerFiles`]).
    pub fn from_files(files: TokenizerFiles<'_>) -> Result<ClipTokenizer> {
        let config = match files.tokenizer_config_json {
            Some(text) => Some(parse_json("tokenizer_config.json", text)?),
            None => None,
        };
        if let Some(c) = &config {
            object("tokenizer_config.json", c, "the file")?;
        }
        let tokenizer_json = match files.tokenizer_json {
            Some(text) => Some(parse_json("tokenizer.json", text)?),
            None => None,
        };

        // The BPE model: vocabulary, merges, end-of-word suffix, unknown token.
        let layout;
        let vocab;
        let merge_list;
        let mut end_of_word = String::from("</w>");
        let mut model_unk: Option<String> = None;
        let mut declared: Vec<(String, u32, TokenFlags)> = Vec::new();
        let mut json_max_length: Option<u64> = None;
        if let Some(tj) = &tokenizer_json {
            const FILE: &str = "tokenizer.json";
            layout = TokenizerLayout::TokenizerJson;
            let model = tj
                .get("model")
                .ok_or_else(|| json_error(FILE, "no `model` section"))?;
            object(FILE, model, "`model`")?;
            match model.get("type").and_then(Value::as_str) {
                None | Some("BPE") => {}
                Some(other) => {
                    return Err(Error::UnsupportedConfig {
                        key: "tokenizer.json: model.type".into(),
                        value: format!("{other} (a CLIP tokenizer is BPE)"),
                    })
                }
            }
            match model.get("continuing_subword_prefix") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s.is_empty() => {}
                Some(other) => {
                    return Err(Error::UnsupportedConfig {
                        key: "tokenizer.json: model.continuing_subword_prefix".into(),
                        value: other.to_string(),
                    })
                }
            }
            match model.get("end_of_word_suffix") {
                None | Some(Value::Null) => end_of_word.clear(),
                Some(Value::String(s)) => end_of_word = s.clone(),
                Some(_) => {
                    return Err(json_error(
                        FILE,
                        "`model.end_of_word_suffix` must be a string",
                    ))
                }
            }
            match model.get("unk_token") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => model_unk = Some(s.clone()),
                Some(_) => return Err(json_error(FILE, "`model.unk_token` must be a string")),
            }
            let v = model
                .get("vocab")
                .ok_or_else(|| json_error(FILE, "no `model.vocab`"))?;
            vocab = read_vocab(FILE, v)?;
            let m = model
                .get("merges")
                .ok_or_else(|| json_error(FILE, "no `model.merges`"))?;
            merge_list = merges_from_json(m)?;
            if let Some(added) = tj.get("added_tokens") {
                let list = added
                    .as_array()
                    .ok_or_else(|| json_error(FILE, "`added_tokens` must be an array"))?;
                for (n, t) in list.iter().enumerate() {
                    let key = format!("added_tokens[{n}]");
                    let id = token_id(FILE, &key, t.get("id").unwrap_or(&Value::Null))?;
                    let (content, flags) = token_object(FILE, &key, t, false)?;
                    declared.push((content, id, flags));
                }
            }
            json_max_length = tj
                .get("truncation")
                .and_then(|t| t.get("max_length"))
                .and_then(Value::as_u64);
        } else {
            layout = TokenizerLayout::VocabMerges;
            let v = files.vocab_json.ok_or_else(|| {
                json_error(
                    "vocab.json",
                    "missing (neither tokenizer.json nor vocab.json given)",
                )
            })?;
            vocab = read_vocab("vocab.json", &parse_json("vocab.json", v)?)?;
            let m = files.merges_txt.ok_or_else(|| Error::Io {
                path: "merges.txt".into(),
                message: "missing (it goes with vocab.json)".into(),
            })?;
            merge_list = merges_from_txt(m)?;
        }

        // Merges: each pair of vocabulary ids → its rank and the merged symbol's id.
        let merges_file = match layout {
            TokenizerLayout::TokenizerJson => "tokenizer.json",
            TokenizerLayout::VocabMerges => "vocab.json",
        };
        let lookup = |place: &str, symbol: &str| -> Result<u32> {
            vocab.get(symbol).copied().ok_or_else(|| {
                invalid(
                    place.to_string(),
                    format!("`{symbol}` is not in the vocabulary ({merges_file})"),
                )
            })
        };
        let mut merges = HashMap::with_capacity(merge_list.len());
        for (rank, m) in merge_list.iter().enumerate() {
            let left = lookup(&m.place, m.left)?;
            let right = lookup(&m.place, m.right)?;
            let mut joined = String::with_capacity(m.left.len() + m.right.len());
            joined.push_str(m.left);
            joined.push_str(m.right);
            let merged = lookup(&m.place, &joined)?;
            let rank =
                u32::try_from(rank).map_err(|_| invalid(m.place.clone(), "too many merges"))?;
            merges.insert((left, right), (rank, merged));
        }

        // Special tokens: special_tokens_map.json over tokenizer_config.json over CLIP's
        // defaults. `added_tokens_decoder` in the config replaces the legacy sources
        // (special_tokens_map.json and tokenizer.json's added_tokens), as in transformers.
        let config_decoder = config.as_ref().and_then(|c| c.get("added_tokens_decoder"));
        let legacy = config_decoder.is_none();
        if let Some(d) = config_decoder {
            const FILE: &str = "tokenizer_config.json";
            declared.clear();
            for (id, t) in object(FILE, d, "`added_tokens_decoder`")? {
                let key = format!("added_tokens_decoder.{id}");
                let id: u32 = id.parse().ok().filter(|&v| v < u32::MAX).ok_or_else(|| {
                    json_error(FILE, format!("`{key}`: the key must be a token id"))
                })?;
                let (content, flags) = token_object(FILE, &key, t, true)?;
                declared.push((content, id, flags));
            }
        }
        let special_map = match (legacy, files.special_tokens_map_json) {
            (true, Some(text)) => {
                let v = parse_json("special_tokens_map.json", text)?;
                object("special_tokens_map.json", &v, "the file")?;
                Some(v)
            }
            _ => None,
        };
        let mut specials: Vec<(&str, String, TokenFlags)> = Vec::new();
        for key in SPECIAL_KEYS {
            let from_map = match special_map.as_ref().and_then(|m| m.get(key)) {
                Some(v) => special_value("special_tokens_map.json", key, v, false)?,
                None => None,
            };
            let from_config = match config.as_ref().and_then(|c| c.get(key)) {
                Some(v) => special_value("tokenizer_config.json", key, v, true)?,
                None => None,
            };
            let default = match key {
                "bos_token" => Some("<|startoftext|>"),
                "eos_token" | "unk_token" | "pad_token" => Some("<|endoftext|>"),
                _ => None,
            };
            let chosen = from_map
                .or(from_config)
                .or_else(|| default.map(|d| (d.to_string(), TokenFlags::AS_WRITTEN)));
            if let Some((content, flags)) = chosen {
                specials.push((key, content, flags));
            }
        }

        let id_of = |key: &str, content: &str| -> Result<u32> {
            if let Some((_, id, _)) = declared.iter().find(|(c, _, _)| c == content) {
                return Ok(*id);
            }
            vocab.get(content).copied().ok_or_else(|| {
                invalid(
                    key.to_string(),
                    format!("`{content}` is neither in the vocabulary nor an added token"),
                )
            })
        };
        let special = |key: &str| specials.iter().find(|(k, _, _)| *k == key);
        let special_id = |key: &str| -> Result<u32> {
            let (_, content, _) = special(key).ok_or_else(|| invalid(key.into(), "not set"))?;
            id_of(key, content)
        };
        let bos_id = special_id("bos_token")?;
        let eos_id = special_id("eos_token")?;
        let pad_id = special_id("pad_token")?;
        let unk_content = model_unk.or_else(|| special("unk_token").map(|(_, c, _)| c.clone()));
        let unk_id = match &unk_content {
            Some(c) => id_of("unk_token", c)?,
            None => eos_id,
        };

        // The added tokens and how each is matched: a declared token keeps its file's flags;
        // a special token only named by key takes, of the distinct flags its keys give it (in
        // key order), the last: what transformers' de-duplicated add_tokens call leaves.
        let mut added: Vec<(String, u32, bool)> = declared
            .iter()
            .map(|(c, id, f)| (c.clone(), *id, f.normalized))
            .collect();
        let mut seen: Vec<(&str, Vec<TokenFlags>)> = Vec::new();
        for (_, content, flags) in &specials {
            if declared.iter().any(|(c, _, _)| c == content) {
                continue;
            }
            match seen.iter_mut().find(|(c, _)| c == content) {
                Some((_, list)) if !list.contains(flags) => list.push(*flags),
                Some(_) => {}
                None => seen.push((content, vec![*flags])),
            }
        }
        for (content, list) in seen {
            let key = specials
                .iter()
                .find(|(_, c, _)| c == content)
                .map_or("special token", |(k, _, _)| *k);
            let id = id_of(key, content)?;
            let normalized = list.last().is_some_and(|f| f.normalized);
            added.push((content.to_string(), id, normalized));
        }

        let max_length = {
            let from_config = config
                .as_ref()
                .and_then(|c| c.get("model_max_length"))
                .and_then(|v| {
                    v.as_u64()
                        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                })
                .filter(|&v| v <= MAX_MODEL_LENGTH);
            let len = from_config
                .or(json_max_length.filter(|&v| v <= MAX_MODEL_LENGTH))
                .unwrap_or(CLIP_CONTEXT_LENGTH as u64);
            if len < 2 {
                return Err(invalid(
                    "tokenizer_config.json: model_max_length".into(),
                    format!("{len} leaves no room for the start and end tokens"),
                ));
            }
            len as usize
        };

        let table = byte_to_char_table();
        let mut byte_ids = [unk_id; 256];
        let mut byte_end_ids = [unk_id; 256];
        for b in 0..256 {
            let mut s = String::new();
            s.push(table[b]);
            if let Some(&id) = vocab.get(&s) {
                byte_ids[b] = id;
            }
            s.push_str(&end_of_word);
            if let Some(&id) = vocab.get(&s) {
                byte_end_ids[b] = id;
            }
        }

        let regex = |pattern: &str| {
            Regex::new(pattern).map_err(|e| Error::InvalidArgument {
                what: "tokenizer pattern",
                message: e.to_string(),
            })
        };
        let mut tokenizer = ClipTokenizer {
            vocab,
            merges,
            byte_ids,
            byte_end_ids,
            tokens_as_written: Vec::new(),
            tokens_normalized: Vec::new(),
            bos_id,
            eos_id,
            pad_id,
            max_length,
            layout,
            clip_split: regex(CLIP_SPLIT)?,
            byte_level_split: regex(BYTE_LEVEL_SPLIT)?,
            white_space: regex(r"\s+")?,
        };
        for (content, id, normalized) in added {
            if content.is_empty() {
                continue;
            }
            if normalized {
                // Matched on normalised text, so its own text is normalised first.
                let content = tokenizer.normalize(&content);
                tokenizer.tokens_normalized.push(AddedToken { content, id });
            } else {
                tokenizer.tokens_as_written.push(AddedToken { content, id });
            }
        }
        Ok(tokenizer)
    }

    /// The ids the text encoder receives: start token, the prompt's first
    /// `max_length() - 2` tokens, end token, then the pad token up to `max_length()`.
    pub fn encode(&self, prompt: &str) -> Vec<u32> {
        let limit = self.max_length - 2;
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        let mut content = Vec::with_capacity(limit);
        for piece in split_on_tokens(prompt, &self.tokens_as_written) {
            if content.len() >= limit {
                break;
            }
            match piece {
                Piece::Token(id) => content.push(id),
                Piece::Text(text) => {
                    let normalized = self.normalize(text);
                    for piece in split_on_tokens(&normalized, &self.tokens_normalized) {
                        if content.len() >= limit {
                            break;
                        }
                        match piece {
                            Piece::Token(id) => content.push(id),
                            Piece::Text(text) => self.tokenize_words(text, &mut content, limit),
                        }
                    }
                }
            }
        }
        content.truncate(limit);
        ids.extend_from_slice(&content);
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        ids
    }

    /// The padded length of [`ClipTokenizer::encode`]'s output (`model_max_length`).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn layout(&self) -> TokenizerLayout {
        self.layout
    }

    /// The vocabulary's size (the BPE model's, added tokens not counted).
    pub fn vocab_len(&self) -> usize {
        self.vocab.len()
    }

    /// NFC, white-space runs to one space, lower case char by char (not `str::to_lowercase`,
    /// whose final-sigma rule the reference does not apply).
    fn normalize(&self, text: &str) -> String {
        let nfc: String = text.nfc().collect();
        let spaced = self.white_space.replace_all(&nfc, " ");
        spaced.chars().flat_map(char::to_lowercase).collect()
    }

    /// Pre-tokenises normalised text and appends each piece's BPE ids, stopping once `out`
    /// holds `limit` ids (the rest would be truncated anyway).
    fn tokenize_words(&self, text: &str, out: &mut Vec<u32>, limit: usize) {
        for word in self.clip_split.find_iter(text) {
            let word = word.as_str();
            let mut start = 0;
            for m in self.byte_level_split.find_iter(word) {
                if out.len() >= limit {
                    return;
                }
                if m.start() > start {
                    self.bpe(&word.as_bytes()[start..m.start()], out);
                }
                self.bpe(m.as_str().as_bytes(), out);
                start = m.end();
            }
            if start < word.len() && out.len() < limit {
                self.bpe(&word.as_bytes()[start..], out);
            }
        }
    }

    /// Byte-level BPE of one word: the lowest-ranked adjacent pair is merged first, the
    /// leftmost on a tie, until no pair has a merge.
    fn bpe(&self, word: &[u8], out: &mut Vec<u32>) {
        let Some((&last, head)) = word.split_last() else {
            return;
        };
        // Symbols as a linked list over the word; `len == 0` marks one merged away.
        struct Symbol {
            id: u32,
            prev: usize,
            next: usize,
            len: usize,
        }
        const NONE: usize = usize::MAX;
        let n = word.len();
        let mut symbols: Vec<Symbol> = head
            .iter()
            .map(|&b| self.byte_ids[b as usize])
            .chain([self.byte_end_ids[last as usize]])
            .enumerate()
            .map(|(i, id)| Symbol {
                id,
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
                len: 1,
            })
            .collect();
        let mut queue = BinaryHeap::new();
        for i in 0..n.saturating_sub(1) {
            if let Some(&(rank, merged)) = self.merges.get(&(symbols[i].id, symbols[i + 1].id)) {
                queue.push(Reverse((rank, i, merged)));
            }
        }
        while let Some(Reverse((rank, pos, merged))) = queue.pop() {
            let next = symbols[pos].next;
            if symbols[pos].len == 0 || next == NONE {
                continue;
            }
            // Stale entry: one side has been merged since it was queued.
            if self.merges.get(&(symbols[pos].id, symbols[next].id)) != Some(&(rank, merged)) {
                continue;
            }
            symbols[pos].id = merged;
            symbols[pos].len += symbols[next].len;
            symbols[next].len = 0;
            let after = symbols[next].next;
            symbols[pos].next = after;
            if after != NONE {
                symbols[after].prev = pos;
                if let Some(&(r, m)) = self.merges.get(&(merged, symbols[after].id)) {
                    queue.push(Reverse((r, pos, m)));
                }
            }
            let before = symbols[pos].prev;
            if before != NONE {
                if let Some(&(r, m)) = self.merges.get(&(symbols[before].id, merged)) {
                    queue.push(Reverse((r, before, m)));
                }
            }
        }
        let mut i = 0;
        while i != NONE {
            out.push(symbols[i].id);
            i = symbols[i].next;
        }
    }
}

enum Piece<'a> {
    Text(&'a str),
    Token(u32),
}

/// Splits `text` on the added tokens, leftmost-longest match first; text between them (never
/// empty) and the tokens' ids, in order.
fn split_on_tokens<'a>(text: &'a str, tokens: &[AddedToken]) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let best = tokens
            .iter()
            .filter(|t| rest.starts_with(t.content.as_str()))
            .max_by_key(|t| t.content.len());
        match best {
            Some(t) => {
                if i > start {
                    pieces.push(Piece::Text(&text[start..i]));
                }
                pieces.push(Piece::Token(t.id));
                i += t.content.len();
                start = i;
            }
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    if start < text.len() {
        pieces.push(Piece::Text(&text[start..]));
    }
    pieces
}
