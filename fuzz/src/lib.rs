//! Shared pieces of the fuzz targets: the tiny model they run and the input formats.
//!
//! Input formats (what `gen_corpus` writes and each target reads):
//! - `load_model`: `[flags u8][config_len u16 LE][config.json bytes][safetensors bytes]`.
//! - `scheduler_config`: `[steps u16 LE][flags u8][eta u8][scheduler_config.json bytes]`.
//! - `c_api`: a byte stream decoded field by field ([`Bytes`]); missing bytes read as 0.
//! - `forward_bytes`: `[timestep f32 LE][label u8][x byte count u8][bytes]`: the bytes fill the
//!   input sample and then, cycled, the data section of [`TINY_CONFIG`]'s f16 weights file.
//! - `clip_tokenizer`: `[flags u8]`, four `[len u16 LE][bytes]` files, then the prompt
//!   ([`clip_tokenizer_sections`]).

use std::sync::OnceLock;

use tinydiffusion::memory::Reuse;
use tinydiffusion::weights::LoadOptions;

/// A tiny UNet2DModel (1 channel, 4x4, two blocks, one with attention, mid block with
/// attention): every op kind, a forward pass in microseconds.
pub const TINY_CONFIG: &str = r#"{
  "_class_name": "UNet2DModel",
  "act_fn": "silu",
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

/// [`TINY_CONFIG`] with 3 classes.
pub const TINY_CLASS_CONFIG: &str = r#"{
  "_class_name": "UNet2DModel",
  "attention_head_dim": 2,
  "block_out_channels": [4, 8],
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
  "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
  "in_channels": 1,
  "out_channels": 1,
  "layers_per_block": 1,
  "norm_num_groups": 2,
  "num_class_embeds": 3,
  "sample_size": 4
}"#;

/// Seeded f16 weights (diffusers layout) for [`TINY_CONFIG`], made once.
pub fn tiny_weights() -> &'static [u8] {
    static W: OnceLock<Vec<u8>> = OnceLock::new();
    W.get_or_init(|| tinydiffusion::testing::random_weights(TINY_CONFIG, 7).expect("tiny weights"))
}

/// Seeded f16 weights for [`TINY_CLASS_CONFIG`], made once.
pub fn tiny_class_weights() -> &'static [u8] {
    static W: OnceLock<Vec<u8>> = OnceLock::new();
    W.get_or_init(|| {
        tinydiffusion::testing::random_weights(TINY_CLASS_CONFIG, 8).expect("tiny weights")
    })
}

/// Byte offset of the data section of a safetensors file (8 + header length).
pub fn data_start(st: &[u8]) -> usize {
    let mut n = [0u8; 8];
    n.copy_from_slice(&st[..8]);
    8 + u64::from_le_bytes(n) as usize
}

/// A loader input's head and body: `[config_len u16 LE][config text][weights...]`, then the
/// load options of `flags` (bit 0: finiteness check off, bit 1: no memory reuse). `None` when
/// the config is not UTF-8.
pub fn config_and_weights<'a>(
    b: &mut Bytes<'a>,
    flags: u8,
) -> Option<(&'a str, Vec<u8>, LoadOptions, Reuse)> {
    let config_len = b.u16() as usize;
    let config = std::str::from_utf8(b.take(config_len)).ok()?;
    let weights = b.rest().to_vec();
    let options = LoadOptions {
        check_finite: flags & 1 == 0,
    };
    let reuse = if flags & 2 == 0 {
        Reuse::Shared
    } else {
        Reuse::None
    };
    Some((config, weights, options, reuse))
}

/// Reads fields off a fuzz input; past the end every read is 0.
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let src = self.take(N);
        out[..src.len()].copy_from_slice(src);
        out
    }
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    pub fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.array())
    }
    pub fn f32(&mut self) -> f32 {
        f32::from_le_bytes(self.array())
    }
    pub fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.array())
    }
    /// A size: mostly small values, sometimes anything (huge, overflowing).
    pub fn size(&mut self) -> usize {
        let tag = self.u8();
        match tag % 8 {
            0 => usize::MAX - (self.u8() as usize),
            1 => self.u64() as usize,
            2 => 1usize << (self.u8() % 64),
            _ => self.u16() as usize,
        }
    }
}

/// The `clip_tokenizer` target's input, decoded by [`clip_tokenizer_sections`].
pub struct ClipTokenizerInput {
    /// `first` is `tokenizer.json` (else `vocab.json`, and `second` is `merges.txt`).
    pub tokenizer_json: bool,
    pub first: String,
    pub second: String,
    pub special_tokens_map: Option<String>,
    pub tokenizer_config: Option<String>,
    pub prompt: String,
}

/// `clip_tokenizer`: `[flags u8]` then four sections `[len u16 LE][bytes]` (first file, second
/// file, special_tokens_map.json, tokenizer_config.json), then the prompt (the rest). Flags:
/// bit 0 the first file is tokenizer.json, bit 1 special_tokens_map.json present, bit 2
/// tokenizer_config.json present. Bytes that are not UTF-8 are replaced (lossy).
pub fn clip_tokenizer_sections(data: &[u8]) -> ClipTokenizerInput {
    let mut b = Bytes::new(data);
    let flags = b.u8();
    let mut section = || {
        let n = b.u16() as usize;
        String::from_utf8_lossy(b.take(n)).into_owned()
    };
    let first = section();
    let second = section();
    let special = section();
    let config = section();
    ClipTokenizerInput {
        tokenizer_json: flags & 1 != 0,
        first,
        second,
        special_tokens_map: (flags & 2 != 0).then_some(special),
        tokenizer_config: (flags & 4 != 0).then_some(config),
        prompt: String::from_utf8_lossy(b.rest()).into_owned(),
    }
}

/// Encodes a `clip_tokenizer` input (the inverse of [`clip_tokenizer_sections`]).
pub fn clip_tokenizer_input(
    tokenizer_json: bool,
    first: &str,
    second: &str,
    special_tokens_map: Option<&str>,
    tokenizer_config: Option<&str>,
    prompt: &str,
) -> Vec<u8> {
    let flags = u8::from(tokenizer_json)
        | (u8::from(special_tokens_map.is_some()) << 1)
        | (u8::from(tokenizer_config.is_some()) << 2);
    let mut v = vec![flags];
    for s in [
        first,
        second,
        special_tokens_map.unwrap_or(""),
        tokenizer_config.unwrap_or(""),
    ] {
        v.extend_from_slice(&(s.len() as u16).to_le_bytes());
        v.extend_from_slice(s.as_bytes());
    }
    v.extend_from_slice(prompt.as_bytes());
    v
}
