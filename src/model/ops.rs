//! The primitive ops of the model description: each is one kernel-level operation over
//! numbered tensors ([`TensorId`]), with its weights already resolved ([`WeightRef`]).
//!
//! A backend implements one method per variant ([`super::backend::Backend`]); the trainer has
//! one backward per variant. Blocks (a resnet, an attention block, the time embedding) exist
//! only in [`super::describe`], which spells them out as these ops.

use alloc::string::String;
use alloc::vec::Vec;

use crate::kernels::ConvShape;
use crate::weights::WeightRef;

/// Index of a tensor in [`crate::Model::tensors`].
pub type TensorId = usize;

/// An op's main input: one tensor, or the channel concatenation of two (the UNet skip
/// connection), which kernels read without materialising.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    One(TensorId),
    Concat(TensorId, TensorId),
}

impl Input {
    pub fn first(self) -> TensorId {
        match self {
            Input::One(a) | Input::Concat(a, _) => a,
        }
    }
    pub fn second(self) -> Option<TensorId> {
        match self {
            Input::One(_) => None,
            Input::Concat(_, b) => Some(b),
        }
    }
}

/// A tensor of the forward pass; its size is given per sample (f32 elements).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub len: usize,
    pub name: String,
}

/// Reads the caller's NCHW sample into the arena as NHWC (and centers it, `2x - 1`, if
/// configured).
#[derive(Debug, Clone, PartialEq)]
pub struct InputOp {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub center: bool,
    pub out: TensorId,
}

/// diffusers' `get_timestep_embedding` of the model's timestep input, in f32 as diffusers
/// computes it (it matters at t ~ 1000): `[batch, dim]`, sin then cos (swapped when
/// `flip_sin_to_cos`); an odd width leaves the last entry zero.
#[derive(Debug, Clone, PartialEq)]
pub struct SinusoidOp {
    pub dim: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    pub out: TensorId,
}

/// `out[r] = (input[r] · W^T + bias + residual[r]) / out_scale` for `rows` rows per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearOp {
    pub input: TensorId,
    /// Rows per sample (1 for embeddings, tokens for attention projections).
    pub rows: usize,
    pub in_f: usize,
    pub out_f: usize,
    pub weight: WeightRef,
    pub bias: WeightRef,
    pub residual: Option<TensorId>,
    pub out_scale: f32,
    pub out: TensorId,
}

/// `out = x * sigmoid(x)`, elementwise over `len` floats per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SiluOp {
    pub input: TensorId,
    pub len: usize,
    pub out: TensorId,
}

/// `out[b] = input[b] + table[label[b]]`: the class embedding added to the time embedding
/// (`table` is `[classes, dim]`; the labels are the forward pass's class labels).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassEmbeddingOp {
    pub input: TensorId,
    pub table: WeightRef,
    pub classes: usize,
    pub dim: usize,
    pub out: TensorId,
}

/// A convolution over NHWC activations with its epilogue:
/// `out = (conv(input) + bias + channel_add + residual) / out_scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvOp {
    pub input: Input,
    pub shape: ConvShape,
    pub weight: WeightRef,
    pub bias: WeightRef,
    /// `[batch, out_c]` added per channel (time-embedding projection).
    pub channel_add: Option<TensorId>,
    pub residual: Option<TensorId>,
    pub out_scale: f32,
    pub out: TensorId,
}

/// GroupNorm over NHWC activations (optionally followed by SiLU).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupNormOp {
    pub input: Input,
    pub in_ca: usize,
    pub in_cb: usize,
    pub pixels: usize,
    pub groups: usize,
    pub eps: f32,
    pub gamma: WeightRef,
    pub beta: WeightRef,
    pub silu: bool,
    pub out: TensorId,
}

/// `conv(GroupNorm(input))` (SiLU after the norm when `silu`) with the conv's bias and an
/// optional shortcut, computed in bands of `band_rows` output rows: the normalised input only
/// ever exists one band (plus the conv's halo rows) at a time, in `scratch`, never whole. The
/// statistics are over the whole input, as GroupNorm's, so the numbers are the unfused pair's.
/// This is what keeps a VAE decoder's last level (256 channels at 512x512: 256 MiB per map in
/// f32) from holding a normalised copy of its input.
///
/// The shortcut, added per band, is `residual` itself or its 1x1 conv (`shortcut`, from
/// `residual_c` channels). When `out == residual` the result is written over the residual,
/// band by band: a band's rows are written only after every residual row they cover has been
/// read (`residual_c >= out_c`, and bands run in order), so the resnet's output needs no map of
/// its own.
#[derive(Debug, Clone, PartialEq)]
pub struct NormConvOp {
    pub input: TensorId,
    pub groups: usize,
    pub eps: f32,
    pub gamma: WeightRef,
    pub beta: WeightRef,
    pub silu: bool,
    /// The whole conv (`batch` 1, stride 1, no upsample, one input part); bands run per sample.
    pub shape: ConvShape,
    pub weight: WeightRef,
    pub bias: WeightRef,
    pub residual: Option<TensorId>,
    pub residual_c: usize,
    /// The 1x1 shortcut conv (weight, bias) from `residual_c` to `out_c` channels.
    pub shortcut: Option<(WeightRef, WeightRef)>,
    pub band_rows: usize,
    /// Per sample [`NormConvOp::scratch_len`] floats: statistics, the normalised band, the
    /// conv's band output and the shortcut's.
    pub scratch: TensorId,
    pub out: TensorId,
}

impl NormConvOp {
    /// Rows of halo the conv reads above and below a band.
    pub fn halo(&self) -> usize {
        self.shape.kernel / 2
    }

    /// Floats per sample of `scratch`: the statistics (`groups * 2`; the batch's all fit in
    /// `batch` times this), then one band's normalised input, output and shortcut.
    pub fn scratch_len(&self) -> usize {
        let s = &self.shape;
        let band_px = self.band_rows.min(s.out_h) * s.out_w;
        let norm = (self.band_rows.min(s.in_h) + 2 * self.halo()) * s.in_w * s.in_ca;
        let shortcut = if self.shortcut.is_some() {
            band_px * s.out_c
        } else {
            0
        };
        self.groups * 2 + norm + band_px * s.out_c + shortcut
    }

    /// The conv over output rows `[r0, r1)`: (its shape over the normalised rows `[lo, hi)`,
    /// `lo`, `hi`).
    pub fn band_shape(&self, r0: usize, r1: usize) -> (ConvShape, usize, usize) {
        let s = &self.shape;
        let halo = self.halo();
        let lo = r0.saturating_sub(halo);
        let hi = (r1 + halo).min(s.in_h);
        let shape = ConvShape {
            batch: 1,
            in_h: hi - lo,
            out_h: r1 - r0,
            // Rows above the image are the conv's zero padding (only the first band has any).
            pad_top: s.pad_top - (r0 - lo),
            ..*s
        };
        (shape, lo, hi)
    }

    /// The shortcut's 1x1 conv over `rows` rows.
    pub fn shortcut_shape(&self, rows: usize) -> ConvShape {
        let s = &self.shape;
        ConvShape {
            batch: 1,
            in_h: rows,
            in_w: s.out_w,
            in_ca: self.residual_c,
            in_cb: 0,
            out_c: s.out_c,
            out_h: rows,
            out_w: s.out_w,
            kernel: 1,
            stride: 1,
            pad_top: 0,
            pad_left: 0,
            upsample: false,
        }
    }

    /// The distinct conv shapes its bands run (first, middle, last band; the shortcut), for the
    /// kernel scratch layout.
    pub fn conv_shapes(&self) -> [Option<ConvShape>; 4] {
        let h = self.shape.out_h;
        let band = self.band_rows.min(h).max(1);
        let last0 = h.saturating_sub(1) / band * band;
        [
            Some(self.band_shape(0, band).0),
            (band < h).then(|| self.band_shape(band, (2 * band).min(h)).0),
            (band < h).then(|| self.band_shape(last0, h).0),
            self.shortcut.map(|_| self.shortcut_shape(band)),
        ]
    }
}

/// The attention core: per head, `out = softmax(Q K^T / sqrt(d)) V` over `[tokens, channels]`
/// queries and `[kv_tokens, channels]` keys and values (`kv_tokens == tokens` for
/// self-attention; the text states' count for cross-attention), channels split into `heads`
/// contiguous groups of width `d`. Projections, norm and residual are ops of their own.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionOp {
    pub q: TensorId,
    pub k: TensorId,
    pub v: TensorId,
    pub tokens: usize,
    pub kv_tokens: usize,
    pub channels: usize,
    pub heads: usize,
    /// Query `i` attends to keys `0..=i` only (the CLIP text encoder's causal mask).
    pub causal: bool,
    /// `kv_tokens` floats per sample the kernel may use (the scalar path's score row).
    pub scratch: TensorId,
    pub out: TensorId,
}

/// Writes the final NHWC tensor to the caller's NCHW output.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputOp {
    pub input: TensorId,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// AdaGN (`resnet_time_scale_shift: "scale_shift"`): `out = x * (1 + scale) + shift` per
/// sample and channel over NHWC `x`, optionally followed by SiLU; `scale_shift` is the time
/// projection `[batch, 2 * channels]`, scales first.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleShiftOp {
    pub input: TensorId,
    pub scale_shift: TensorId,
    pub channels: usize,
    pub pixels: usize,
    pub silu: bool,
    pub out: TensorId,
}

/// How [`ResampleOp`] changes the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResampleMode {
    /// 2x2 average pool, stride 2 (`in_h`, `in_w` even).
    AvgPool2,
    /// Nearest-neighbour 2x upsample.
    Nearest2,
}

/// A plain resample of an NHWC tensor (the `down=True` / `up=True` resnet's paths);
/// `in_h x in_w` is the input's resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct ResampleOp {
    pub input: TensorId,
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub mode: ResampleMode,
    pub out: TensorId,
}

impl ResampleOp {
    /// Output (height, width).
    pub fn out_hw(&self) -> (usize, usize) {
        match self.mode {
            ResampleMode::AvgPool2 => (self.in_h / 2, self.in_w / 2),
            ResampleMode::Nearest2 => (self.in_h * 2, self.in_w * 2),
        }
    }
}

/// The resnets' nonlinearity (`act_fn`, diffusers' `get_activation`); SiLU is the [`SiluOp`]
/// and GroupNorm's fused SiLU, the others run as an [`ActivationOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu` / `swish`.
    Silu,
    /// `x * tanh(softplus(x))`, softplus linear above 20 as torch's.
    Mish,
    /// The exact (erf) GELU, torch's `nn.GELU()`.
    Gelu,
    Relu,
    /// `x * sigmoid(1.702 x)`: CLIP's `quick_gelu`.
    QuickGelu,
}

/// `out = act(x)`, elementwise over `len` floats per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationOp {
    pub input: TensorId,
    pub len: usize,
    pub act: Activation,
    pub out: TensorId,
}

/// `time_embedding_type: "learned"`: `out[b] = table[t_b]`, diffusers' `nn.Embedding` over the
/// integer timestep (`table` is `[steps, dim]`); a fractional or out-of-range timestep is a
/// typed error, as torch refuses a float index.
#[derive(Debug, Clone, PartialEq)]
pub struct TimestepTableOp {
    pub table: WeightRef,
    pub steps: usize,
    pub dim: usize,
    pub out: TensorId,
}

/// diffusers' `GaussianFourierProjection` (NCSN++ `time_embedding_type: "fourier"`) of the
/// timestep input: `[batch, 2 * dim]`, `sin(2 pi W log t)` then `cos(...)` (swapped when
/// `flip_sin_to_cos`), computed in f64 since `|2 pi W log t|` reaches the hundreds.
#[derive(Debug, Clone, PartialEq)]
pub struct FourierEmbeddingOp {
    /// `embedding_size`: entries of `W`; the output has twice as many.
    pub dim: usize,
    /// `time_proj.W` (`[dim]`), fixed (not trained).
    pub weight: WeightRef,
    /// Project `log(t)` (diffusers' `log=True`) rather than `t`.
    pub log: bool,
    pub flip_sin_to_cos: bool,
    pub out: TensorId,
}

/// diffusers' `upfirdn2d_native` with the `[1, 3, 3, 1]` FIR kernel as `upsample_2d` /
/// `downsample_2d` use it (gain 1, zero padding): per channel, a separable 4-tap filter with
/// factor-2 up- or down-sampling over NHWC activations.
#[derive(Debug, Clone, PartialEq)]
pub struct FirResampleOp {
    pub input: TensorId,
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    /// Upsample (out = 2x in) or downsample (out = in / 2).
    pub up: bool,
    pub out: TensorId,
}

impl FirResampleOp {
    pub fn out_hw(&self) -> (usize, usize) {
        if self.up {
            (2 * self.in_h, 2 * self.in_w)
        } else {
            (self.in_h / 2, self.in_w / 2)
        }
    }
}

/// `out[b] = input[b] + class_embeddings[b]` over `dim` floats per sample: the caller's class
/// embeddings added to the time embedding (`class_embed_type: "identity"`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClassVectorOp {
    pub input: TensorId,
    pub dim: usize,
    pub out: TensorId,
}

/// `out[b] = input[b] / t[b]` over `len` floats per sample: the fourier model's output divided
/// by its sigma (diffusers' `sample / timesteps`).
#[derive(Debug, Clone, PartialEq)]
pub struct TimestepDivideOp {
    pub input: TensorId,
    pub len: usize,
    pub out: TensorId,
}

/// What an [`ElementwiseOp`] computes per float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ElementwiseKind {
    /// `max(x, 0)`.
    Relu,
    /// `tanh(x / m) * m`: the soft clamp `AutoencoderTiny`'s decoder applies to its latents.
    TanhClamp(f32),
    /// `x * mul + add` (`DecoderTiny` maps its [0, 1] output to [-1, 1]: `x * 2 - 1`).
    Affine { mul: f32, add: f32 },
}

/// `out = f(input)` elementwise over `len` floats per sample (layout-agnostic).
#[derive(Debug, Clone, PartialEq)]
pub struct ElementwiseOp {
    pub input: TensorId,
    pub len: usize,
    pub kind: ElementwiseKind,
    pub out: TensorId,
}

impl ElementwiseKind {
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            ElementwiseKind::Relu => x.max(0.0),
            ElementwiseKind::TanhClamp(m) => libm::tanhf(x / m) * m,
            ElementwiseKind::Affine { mul, add } => x * mul + add,
        }
    }
}

/// LayerNorm over the last dimension: each of `rows` rows per sample of `dim` floats is
/// normalised with its own mean and (biased) variance, in f32, then `* gamma + beta`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormOp {
    pub input: TensorId,
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
    pub gamma: WeightRef,
    pub beta: WeightRef,
    pub out: TensorId,
}

/// `out[b, i] = table[ids[b, i]] + positions[i]` for `tokens` token ids per sample (the forward
/// pass's token ids): CLIP's token plus position embedding. An id outside `0..vocab` is a
/// typed error naming it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEmbeddingOp {
    /// `[vocab, dim]`.
    pub table: WeightRef,
    pub vocab: usize,
    /// `[positions, dim]`, positions >= tokens; row `i` is added to token `i`.
    pub positions: WeightRef,
    pub tokens: usize,
    pub dim: usize,
    pub out: TensorId,
}

/// diffusers' `GEGLU` after its projection: each of `rows` rows per sample holds `2 * dim`
/// floats `[hidden, gate]` (the `proj` Linear's output), and `out[r] = hidden * gelu(gate)`
/// (exact GELU), `dim` floats per row.
#[derive(Debug, Clone, PartialEq)]
pub struct GegluOp {
    pub input: TensorId,
    pub rows: usize,
    pub dim: usize,
    pub out: TensorId,
}

/// Copies the forward pass's `encoder_hidden_states` (`[tokens, dim]` per sample, the text
/// states a conditional UNet's cross-attention reads) into the arena.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderStatesOp {
    pub tokens: usize,
    pub dim: usize,
    pub out: TensorId,
}

/// One step of the forward walk.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Input(InputOp),
    Sinusoid(SinusoidOp),
    Linear(LinearOp),
    Silu(SiluOp),
    ClassEmbedding(ClassEmbeddingOp),
    Conv(ConvOp),
    GroupNorm(GroupNormOp),
    Attention(AttentionOp),
    Output(OutputOp),
    ScaleShift(ScaleShiftOp),
    Resample(ResampleOp),
    Activation(ActivationOp),
    TimestepTable(TimestepTableOp),
    /// [`SinusoidOp`] of the class labels (`class_embed_type: "timestep"`).
    ClassSinusoid(SinusoidOp),
    FourierEmbedding(FourierEmbeddingOp),
    FirResample(FirResampleOp),
    TimestepDivide(TimestepDivideOp),
    Elementwise(ElementwiseOp),
    ClassVector(ClassVectorOp),
    LayerNorm(LayerNormOp),
    TokenEmbedding(TokenEmbeddingOp),
    Geglu(GegluOp),
    EncoderStates(EncoderStatesOp),
    NormConv(NormConvOp),
}

/// One table of op kinds: `Op::kind` (an exhaustive match, so a new variant must get a name
/// here) and [`KINDS`], the list the per-op backend tests check coverage against, come from it
/// and cannot drift apart.
macro_rules! op_kinds {
    ($($variant:ident => $name:literal,)*) => {
        /// Every op kind's name ([`Op::kind`]), in the order of the `Op` variants.
        pub const KINDS: &[&str] = &[$($name),*];

        impl Op {
            /// A short name of the op kind (profiles, error messages); one of [`KINDS`].
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Op::$variant(_) => $name,)*
                }
            }
        }
    };
}

op_kinds! {
    Input => "input",
    Sinusoid => "sinusoid",
    Linear => "linear",
    Silu => "silu",
    ClassEmbedding => "class_embedding",
    Conv => "conv",
    GroupNorm => "group_norm",
    Attention => "attention",
    Output => "output",
    ScaleShift => "scale_shift",
    Resample => "resample",
    Activation => "activation",
    TimestepTable => "timestep_table",
    ClassSinusoid => "class_sinusoid",
    FourierEmbedding => "fourier_embedding",
    FirResample => "fir_resample",
    TimestepDivide => "timestep_divide",
    Elementwise => "elementwise",
    ClassVector => "class_vector",
    LayerNorm => "layer_norm",
    TokenEmbedding => "token_embedding",
    Geglu => "geglu",
    EncoderStates => "encoder_states",
    NormConv => "norm_conv",
}

impl Op {
    /// Tensors this op reads.
    pub fn reads(&self) -> Vec<TensorId> {
        let mut r = Vec::new();
        let mut input = |i: Input| {
            r.push(i.first());
            r.extend(i.second());
        };
        match self {
            Op::Input(_) | Op::Sinusoid(_) => {}
            Op::Linear(l) => {
                input(Input::One(l.input));
                r.extend(l.residual);
            }
            Op::Silu(s) => input(Input::One(s.input)),
            Op::ClassEmbedding(c) => input(Input::One(c.input)),
            Op::Conv(c) => {
                input(c.input);
                r.extend(c.channel_add);
                r.extend(c.residual);
            }
            Op::GroupNorm(g) => input(g.input),
            Op::Attention(a) => r.extend([a.q, a.k, a.v]),
            Op::Output(o) => input(Input::One(o.input)),
            Op::ScaleShift(o) => r.extend([o.input, o.scale_shift]),
            Op::Resample(o) => r.push(o.input),
            Op::Activation(o) => r.push(o.input),
            Op::TimestepTable(_) | Op::ClassSinusoid(_) => {}
            Op::FourierEmbedding(_) => {}
            Op::FirResample(f) => input(Input::One(f.input)),
            Op::TimestepDivide(d) => input(Input::One(d.input)),
            Op::Elementwise(e) => input(Input::One(e.input)),
            Op::ClassVector(c) => input(Input::One(c.input)),
            Op::LayerNorm(l) => input(Input::One(l.input)),
            Op::TokenEmbedding(_) | Op::EncoderStates(_) => {}
            Op::Geglu(g) => input(Input::One(g.input)),
            Op::NormConv(n) => {
                r.push(n.input);
                r.extend(n.residual);
            }
        }
        r
    }

    /// The tensor this op produces (none for [`Op::Output`], which writes the caller's buffer).
    pub fn output(&self) -> Option<TensorId> {
        match self {
            Op::Input(o) => Some(o.out),
            Op::Sinusoid(o) => Some(o.out),
            Op::Linear(o) => Some(o.out),
            Op::Silu(o) => Some(o.out),
            Op::ClassEmbedding(o) => Some(o.out),
            Op::Conv(o) => Some(o.out),
            Op::GroupNorm(o) => Some(o.out),
            Op::Attention(o) => Some(o.out),
            Op::Output(_) => None,
            Op::ScaleShift(o) => Some(o.out),
            Op::Resample(o) => Some(o.out),
            Op::Activation(o) => Some(o.out),
            Op::TimestepTable(o) => Some(o.out),
            Op::ClassSinusoid(o) => Some(o.out),
            Op::FourierEmbedding(o) => Some(o.out),
            Op::FirResample(o) => Some(o.out),
            Op::TimestepDivide(o) => Some(o.out),
            Op::Elementwise(o) => Some(o.out),
            Op::ClassVector(o) => Some(o.out),
            Op::LayerNorm(o) => Some(o.out),
            Op::TokenEmbedding(o) => Some(o.out),
            Op::Geglu(o) => Some(o.out),
            Op::EncoderStates(o) => Some(o.out),
            Op::NormConv(o) => Some(o.out),
        }
    }

    /// Tensors this op writes (its output and its scratch).
    pub fn writes(&self) -> Vec<TensorId> {
        let mut w: Vec<TensorId> = self.output().into_iter().collect();
        match self {
            Op::Attention(a) => w.push(a.scratch),
            Op::NormConv(n) => w.push(n.scratch),
            _ => {}
        }
        w
    }

    /// The weights this op reads, in a fixed order per op kind.
    pub fn weights(&self) -> Vec<WeightRef> {
        match self {
            Op::Conv(c) => alloc::vec![c.weight, c.bias],
            Op::Linear(l) => alloc::vec![l.weight, l.bias],
            Op::GroupNorm(g) => alloc::vec![g.gamma, g.beta],
            Op::ClassEmbedding(c) => alloc::vec![c.table],
            Op::FourierEmbedding(f) => alloc::vec![f.weight],
            Op::FirResample(_) | Op::TimestepDivide(_) => Vec::new(),
            Op::Input(_) | Op::Sinusoid(_) | Op::Silu(_) | Op::Attention(_) | Op::Output(_) => {
                Vec::new()
            }
            Op::ScaleShift(_) | Op::Resample(_) | Op::Activation(_) | Op::ClassSinusoid(_) => {
                Vec::new()
            }
            Op::TimestepTable(t) => alloc::vec![t.table],
            Op::Elementwise(_) | Op::ClassVector(_) => Vec::new(),
            Op::LayerNorm(l) => alloc::vec![l.gamma, l.beta],
            Op::TokenEmbedding(t) => alloc::vec![t.table, t.positions],
            Op::Geglu(_) | Op::EncoderStates(_) => Vec::new(),
            Op::NormConv(n) => {
                let mut w = alloc::vec![n.gamma, n.beta, n.weight, n.bias];
                if let Some((sw, sb)) = n.shortcut {
                    w.extend([sw, sb]);
                }
                w
            }
        }
    }

    /// The convolution shapes this op runs at `batch` (a [`NormConvOp`] runs its bands one
    /// sample at a time), for the kernel scratch layout.
    pub fn conv_shapes(&self, batch: usize) -> [Option<ConvShape>; 4] {
        match self {
            Op::Conv(c) => [Some(ConvShape { batch, ..c.shape }), None, None, None],
            Op::NormConv(n) => n.conv_shapes(),
            _ => [None; 4],
        }
    }

    /// Floating-point operations per sample (multiply-adds count two).
    pub fn flops_per_sample(&self) -> u64 {
        match self {
            Op::Conv(c) => ConvShape {
                batch: 1,
                ..c.shape
            }
            .flops(),
            Op::NormConv(n) => {
                let main = n.shape.flops();
                let shortcut = n
                    .shortcut
                    .map_or(0, |_| n.shortcut_shape(n.shape.out_h).flops());
                main + shortcut
            }
            Op::Linear(l) => 2 * (l.rows * l.in_f * l.out_f) as u64,
            Op::Attention(a) => {
                let (n, m, c) = (a.tokens as u64, a.kv_tokens as u64, a.channels as u64);
                // Saturating: n * m overflows u64 for absurd (but valid) sample sizes.
                let full = 4u64.saturating_mul(n).saturating_mul(m).saturating_mul(c);
                // A causal mask (n == m) scores n (n + 1) / 2 of the n^2 pairs.
                if a.causal {
                    full / 2 + 2 * n * c
                } else {
                    full
                }
            }
            Op::FirResample(f) => {
                // 16 taps per downsampled output, 4 per upsampled one; a multiply-add each.
                let (h, w) = f.out_hw();
                let taps = if f.up { 4 } else { 16 };
                2 * (h * w * f.channels * taps) as u64
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod kinds_tests {
    use super::KINDS;

    #[test]
    fn kinds_are_unique_snake_case_names() {
        for (i, k) in KINDS.iter().enumerate() {
            assert!(!KINDS[..i].contains(k), "{k} twice");
            assert!(
                k.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{k} is not snake_case"
            );
        }
        assert_eq!(KINDS.len(), 24, "one name per `Op` variant");
    }
}
