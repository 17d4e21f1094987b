//! The arithmetic, behind one small boundary.
//!
//! A backend is a [`KernelTable`]: plain function pointers for the handful of operations the
//! UNet needs. The model's forward walk ([`crate::model`]) only ever calls through a table, so a
//! new backend (SIMD, GPU host side) adds a table and never touches model code.
//!
//! ## Activation layout: NHWC, f32
//! Activations are stored channels-last (`[batch, height, width, channels]`):
//! - a convolution becomes a GEMM whose reduction runs over contiguous channels (`9 * C_in` per
//!   output pixel), the layout SIMD microkernels and tensor cores want;
//! - attention reads `[batch, tokens, channels]` with no transpose;
//! - the UNet's skip concatenation (along channels) needs no copy: kernels take the two parts
//!   as separate slices (`in_a`, `in_b`) and read channel `c` from whichever holds it.
//!
//! Weights stay in diffusers' layout (`[out, in, kh, kw]` for convs, `[out, in]` for linears),
//! f16, read in place from the file.

use half::f16;

pub mod scalar;

/// Geometry of one convolution over NHWC activations whose input may be split in two channel
/// ranges (`in_ca` channels from `in_a`, then `in_cb` from `in_b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    /// Size of the stored input (before the optional nearest-neighbour 2x upsample).
    pub in_h: usize,
    pub in_w: usize,
    pub in_ca: usize,
    pub in_cb: usize,
    pub out_c: usize,
    pub out_h: usize,
    pub out_w: usize,
    /// 1 or 3.
    pub kernel: usize,
    /// 1 or 2.
    pub stride: usize,
    /// Zero padding before the first row / column (bottom and right follow from the sizes,
    /// which is how diffusers' asymmetric `(0, 1, 0, 1)` padding is expressed).
    pub pad_top: usize,
    pub pad_left: usize,
    /// Read the input as if upsampled 2x (nearest), folding diffusers' `Upsample2D` into the conv.
    pub upsample: bool,
}

impl ConvShape {
    pub fn in_c(&self) -> usize {
        self.in_ca + self.in_cb
    }
    /// Height and width of the (virtually upsampled) input the kernel slides over.
    pub fn virtual_in(&self) -> (usize, usize) {
        if self.upsample {
            (2 * self.in_h, 2 * self.in_w)
        } else {
            (self.in_h, self.in_w)
        }
    }
    pub fn flops(&self) -> u64 {
        2 * (self.batch
            * self.out_h
            * self.out_w
            * self.out_c
            * self.in_c()
            * self.kernel
            * self.kernel) as u64
    }
}

/// Arguments of a convolution. Optional inputs are empty slices.
pub struct ConvArgs<'a> {
    pub shape: ConvShape,
    pub in_a: &'a [f32],
    pub in_b: &'a [f32],
    /// `[out_c, in_c, k, k]`.
    pub weight: &'a [f16],
    /// `[out_c]`.
    pub bias: &'a [f16],
    /// `[batch, out_c]`, added to every pixel (a resnet's time-embedding projection).
    pub channel_add: &'a [f32],
    /// `[batch, out_h, out_w, out_c]`, added after the conv (a resnet's shortcut).
    pub residual: &'a [f32],
    /// Output is `(conv + bias + channel_add + residual) / out_scale`.
    pub out_scale: f32,
}

/// Arguments of a GroupNorm (optionally followed by SiLU) over NHWC activations.
pub struct GroupNormArgs<'a> {
    pub batch: usize,
    pub pixels: usize,
    pub in_ca: usize,
    pub in_cb: usize,
    pub groups: usize,
    pub eps: f32,
    pub in_a: &'a [f32],
    pub in_b: &'a [f32],
    pub gamma: &'a [f16],
    pub beta: &'a [f16],
    pub silu: bool,
}

/// `out[r] = (in[r] · W^T + bias + residual[r]) / out_scale` for `rows` rows.
pub struct LinearArgs<'a> {
    pub rows: usize,
    pub in_f: usize,
    pub out_f: usize,
    pub input: &'a [f32],
    /// `[out_f, in_f]`.
    pub weight: &'a [f16],
    /// `[out_f]`.
    pub bias: &'a [f16],
    /// Empty, or `[rows, out_f]`.
    pub residual: &'a [f32],
    pub out_scale: f32,
}

/// Multi-head softmax(Q K^T * scale) V over `[batch, tokens, channels]` tensors whose channels
/// are split into `heads` contiguous groups.
pub struct AttentionArgs<'a> {
    pub batch: usize,
    pub tokens: usize,
    pub channels: usize,
    pub heads: usize,
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
}

/// One backend: the functions the forward walk calls. Output slices have exactly the size the
/// arguments imply (the forward walk checks this before calling).
#[derive(Clone, Copy)]
pub struct KernelTable {
    pub name: &'static str,
    pub conv2d: fn(&ConvArgs<'_>, &mut [f32]),
    pub group_norm: fn(&GroupNormArgs<'_>, &mut [f32]),
    pub linear: fn(&LinearArgs<'_>, &mut [f32]),
    /// `scores` holds at least `tokens` floats of scratch.
    pub attention: fn(&AttentionArgs<'_>, &mut [f32], &mut [f32]),
}

/// Which implementation of the kernels to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// Plain Rust loops: the reference every other path is tested against.
    Scalar,
}

impl KernelPath {
    /// The fastest path this machine supports.
    pub fn detect() -> KernelPath {
        KernelPath::Scalar
    }

    /// Parses a path name (`scalar`, ...), as given on a command line.
    pub fn from_name(name: &str) -> crate::Result<KernelPath> {
        match name {
            "scalar" => Ok(KernelPath::Scalar),
            other => Err(crate::error::invalid_arg("kernel path", alloc::format!("'{other}' is not one of: scalar"))),
        }
    }

    pub fn table(self) -> &'static KernelTable {
        match self {
            KernelPath::Scalar => &scalar::TABLE,
        }
    }

    pub fn name(self) -> &'static str {
        self.table().name
    }
}

/// `x * sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + libm::expf(-x))
}
