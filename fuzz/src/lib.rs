//! Shared pieces of the fuzz targets: the tiny model they run and the input formats.
//!
//! Input formats (what `gen_corpus` writes and each target reads):
//! - `load_model`: `[flags u8][config_len u16 LE][config.json bytes][safetensors bytes]`.
//! - `scheduler_config`: `[steps u16 LE][flags u8][eta u8][scheduler_config.json bytes]`.
//! - `c_api`: a byte stream decoded field by field ([`Bytes`]); missing bytes read as 0.
//! - `forward_bytes`: `[timestep f32 LE][label u8][x byte count u8][bytes]`: the bytes fill the
//!   input sample and then, cycled, the data section of [`TINY_CONFIG`]'s f16 weights file.

use std::sync::OnceLock;

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
