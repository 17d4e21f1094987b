//! The arithmetic, behind one small boundary.
//!
//! A backend is a [`KernelTable`]: plain function pointers for the handful of operations the
//! UNet needs. The model's forward walk ([`crate::model`]) only ever calls through a table, so a
//! new backend (SIMD, GPU host side) adds a table and never touches model code.
//!
//! ## Backends ([`KernelPath`])
//! - [`KernelPath::Scalar`]: plain loops, the reference every other path is tested against and
//!   the fallback of targets without SIMD (`no_std` microcontrollers).
//! - [`KernelPath::Avx512`], [`KernelPath::Avx2`] (x86-64, with FMA and F16C) and
//!   [`KernelPath::Neon`] (aarch64): hand-written `core::arch` microkernels, f32 accumulation,
//!   f16 weights widened in registers. Under `std` the CPU is probed at run time; without
//!   `std` a path is available when the build enables its target features.
//! - [`KernelPath::NeonFp16`] (aarch64 with FEAT_FP16): f16 arithmetic in convolutions and
//!   linears for the opt-in [`Precision::F16`] (`neon_f16.rs`); never picked by detection.
//!
//! `TINYDIFFUSION_KERNELS=scalar|avx2|avx512|neon|neon-fp16` forces a path at model load (std);
//! a path the CPU lacks is an error ([`KernelPath::table`]), never undefined behaviour.
//!
//! ## Convolution algorithms
//! The SIMD paths run a 3x3 stride-1 "same" convolution over a map of at least 16 4x4 tiles
//! as Winograd F(4x4, 3x3) (`winograd.rs`: 36 multiplies per output tile and channel pair
//! instead of 144, about 3e-6 relative error per conv); every other conv, and every conv of
//! the scalar path, is the direct implicit GEMM (`simd/`). Winograd needs kernel scratch
//! the model plans ([`KernelTable::scratch_layout`], part of [`crate::Model::workspace_len`]);
//! with less (an [`Exec::new`] scratch, or [`crate::Model::set_winograd`] off) the direct
//! kernel runs, as it does for every model with `TINYDIFFUSION_WINOGRAD=0` ([`WINOGRAD_ENV`]).
//! The CIFAR-10 UNet's forward pass is about 1.6x faster with it.
//!
//! ## Activation layout: NHWC, f32
//! Activations are stored channels-last (`[batch, height, width, channels]`):
//! - a convolution becomes a GEMM whose reduction runs over contiguous channels (`9 * C_in` per
//!   output pixel), the layout SIMD microkernels and tensor cores want: the SIMD paths copy each
//!   pixel's channel run into a small packed tile with plain vector loads (no transpose), and the
//!   output pixel's channels are one contiguous vector store;
//! - attention reads `[batch, tokens, channels]` with no transpose;
//! - the UNet's skip concatenation (along channels) needs no copy: kernels take the two parts
//!   as separate slices (`in_a`, `in_b`) and read channel `c` from whichever holds it.
//!
//! A blocked layout (`NCHW16c`, as oneDNN uses) would let a microkernel address a row of pixels
//! with one pointer, but every non-conv op (GroupNorm, attention, the skip concat, the NCHW
//! boundary) would then have to follow it; packing a 14-pixel tile from NHWC costs one vector
//! copy per 16 channels, amortised over all output channels, so NHWC stays.
//!
//! ## Weight layout: output channels in blocks of [`PACK_OC`]
//! Conv and linear weights are stored *packed*, f16: `[ceil(out / 32), kh, kw, in, 32]`
//! (see [`packed_index`]), zero-padded to a multiple of 32 output channels. Why:
//! - the microkernels compute 32 output channels of a tile of pixels (AVX-512: two zmm per
//!   pixel; AVX2 and NEON: 16 at a time, half a block), so one reduction step reads one
//!   contiguous 64-byte row of weights;
//! - the reduction order (tap-major, then input channel) is the order in which an NHWC pixel's
//!   channels sit in memory, so the weight rows and the packed input tile walk the same `k`;
//! - a kernel-size-1 conv and a linear (`[out, in]`) share the layout, so linears run on the
//!   conv microkernel too.
//!
//! `model::convert::convert_folder` writes this layout into the safetensors file, so a
//! converted model still loads in place; an unconverted diffusers file is packed once at load.
//! Biases, norms and the class embedding stay in diffusers' layout.

use half::f16;

pub mod pack;
pub mod scalar;
// Generic over the vector width; instantiated only by the x86-64 and aarch64 tables, so on
// scalar-only targets (thumbv7em) it is compiled but unused.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) mod simd;
#[cfg(feature = "std")]
pub mod threads;
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
mod winograd;

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "aarch64")]
mod neon_f16;

pub use pack::{pack_weight, packed_index, packed_len, PACK_OC};

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
        // Saturating: a huge batch must not overflow a statistic.
        [
            self.out_h,
            self.out_w,
            self.out_c,
            self.in_c(),
            self.kernel,
            self.kernel,
        ]
        .iter()
        .fold(2 * self.batch as u64, |acc, &d| {
            acc.saturating_mul(d as u64)
        })
    }
    /// Elements of the packed weight (see [`packed_len`]).
    pub fn weight_len(&self) -> usize {
        packed_len(self.out_c, self.in_c(), self.kernel)
    }
}

/// Arguments of a convolution. Optional inputs are empty slices.
pub struct ConvArgs<'a> {
    pub shape: ConvShape,
    pub in_a: &'a [f32],
    pub in_b: &'a [f32],
    /// Packed: `[ceil(out_c / 32), k, k, in_c, 32]` (see the module docs).
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

impl ConvArgs<'_> {
    /// Checks every slice against the shape (the SIMD kernels rely on it before reading
    /// through raw pointers).
    pub fn check(&self, out: &[f32]) {
        let s = &self.shape;
        let in_px = s.batch * s.in_h * s.in_w;
        let out_len = s.batch * s.out_h * s.out_w * s.out_c;
        assert!(s.kernel == 1 || s.kernel == 3, "conv kernel must be 1 or 3");
        assert!(s.stride == 1 || s.stride == 2, "conv stride must be 1 or 2");
        assert!(self.in_a.len() >= in_px * s.in_ca, "conv in_a too short");
        assert!(self.in_b.len() >= in_px * s.in_cb, "conv in_b too short");
        assert!(self.weight.len() >= s.weight_len(), "conv weight too short");
        assert!(self.bias.len() >= s.out_c, "conv bias too short");
        assert!(
            self.channel_add.is_empty() || self.channel_add.len() >= s.batch * s.out_c,
            "conv channel_add too short"
        );
        assert!(
            self.residual.is_empty() || self.residual.len() >= out_len,
            "conv residual too short"
        );
        assert!(out.len() >= out_len, "conv output too short");
    }
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
    /// `[batch, groups, 2]` (mean, 1 / std) from [`group_norm_stats`], or empty: the kernel
    /// computes them.
    pub stats: &'a [f32],
    /// Pixels `[first, end)` of every sample are normalised; `out` holds `end - first` pixels
    /// per sample (a band of rows of a conv's input). The statistics stay over all pixels.
    pub out_pixels: (usize, usize),
}

impl GroupNormArgs<'_> {
    /// Pixels per sample normalised into `out`.
    pub fn out_len_pixels(&self) -> usize {
        self.out_pixels.1 - self.out_pixels.0
    }

    pub fn check(&self, out: &[f32]) {
        let c = self.in_ca + self.in_cb;
        let px = self.batch * self.pixels;
        assert!(
            self.out_pixels.0 <= self.out_pixels.1 && self.out_pixels.1 <= self.pixels,
            "group_norm out_pixels outside the input"
        );
        assert!(
            self.stats.is_empty() || self.stats.len() >= self.batch * self.groups * 2,
            "group_norm stats too short"
        );
        assert!(
            self.groups > 0 && c.is_multiple_of(self.groups),
            "group_norm: channels not divisible by groups"
        );
        assert!(
            self.in_a.len() >= px * self.in_ca && self.in_b.len() >= px * self.in_cb,
            "group_norm input too short"
        );
        assert!(
            self.gamma.len() >= c && self.beta.len() >= c,
            "group_norm affine too short"
        );
        assert!(
            out.len() >= self.batch * self.out_len_pixels() * c,
            "group_norm output too short"
        );
    }
}

/// GroupNorm's statistics of `a`'s input: `(mean, 1 / sqrt(var + eps))` per sample and group
/// into `stats` (`[batch, groups, 2]`), two passes (sum, then squared deviations from the mean)
/// accumulated in f64 per pixel, as the scalar kernel. One sweep over the pixels per pass
/// serves every group: a map of hundreds of MiB is read twice, not twice per group. A kernel
/// given them ([`GroupNormArgs::stats`]) normalises any band of pixels alike.
pub fn group_norm_stats(a: &GroupNormArgs<'_>, stats: &mut [f32]) {
    let (ca, cb) = (a.in_ca, a.in_cb);
    let groups = a.groups;
    let cpg = (ca + cb) / groups;
    let count = (a.pixels * cpg) as f64;
    // At most 64 groups per sweep (the SIMD kernels' limit too); more take further sweeps.
    const CHUNK: usize = 64;
    for b in 0..a.batch {
        let mut g0 = 0;
        while g0 < groups {
            let g1 = (g0 + CHUNK).min(groups);
            let mut mean = [0.0f64; CHUNK];
            for pass in 0..2 {
                let mut acc = [0.0f64; CHUNK];
                for p in 0..a.pixels {
                    let pix = b * a.pixels + p;
                    let parts = [
                        (&a.in_a[pix * ca..(pix + 1) * ca], 0),
                        (&a.in_b[pix * cb..(pix + 1) * cb], ca),
                    ];
                    for (row, base) in parts {
                        for g in g0..g1 {
                            let (c0, c1) = (g * cpg, (g + 1) * cpg);
                            let (lo, hi) = (c0.max(base), c1.min(base + row.len()));
                            if lo >= hi {
                                continue;
                            }
                            let xs = &row[lo - base..hi - base];
                            acc[g - g0] += if pass == 0 {
                                xs.iter().map(|&x| x as f64).sum::<f64>()
                            } else {
                                let m = mean[g - g0];
                                xs.iter().map(|&x| (x as f64 - m) * (x as f64 - m)).sum()
                            };
                        }
                    }
                }
                for g in g0..g1 {
                    if pass == 0 {
                        mean[g - g0] = acc[g - g0] / count;
                    } else {
                        let at = (b * groups + g) * 2;
                        stats[at] = mean[g - g0] as f32;
                        stats[at + 1] =
                            (1.0 / libm::sqrt(acc[g - g0] / count + a.eps as f64)) as f32;
                    }
                }
            }
            g0 = g1;
        }
    }
}

/// `out[r] = (in[r] · W^T + bias + residual[r]) / out_scale` for `rows` rows.
pub struct LinearArgs<'a> {
    pub rows: usize,
    pub in_f: usize,
    pub out_f: usize,
    pub input: &'a [f32],
    /// Packed like a 1x1 conv: `[ceil(out_f / 32), in_f, 32]`.
    pub weight: &'a [f16],
    /// `[out_f]`.
    pub bias: &'a [f16],
    /// Empty, or `[rows, out_f]`.
    pub residual: &'a [f32],
    pub out_scale: f32,
}

impl<'a> LinearArgs<'a> {
    /// The same computation as a 1x1 convolution over `rows` pixels.
    pub fn as_conv(&self) -> ConvArgs<'a> {
        ConvArgs {
            shape: ConvShape {
                batch: 1,
                in_h: self.rows,
                in_w: 1,
                in_ca: self.in_f,
                in_cb: 0,
                out_c: self.out_f,
                out_h: self.rows,
                out_w: 1,
                kernel: 1,
                stride: 1,
                pad_top: 0,
                pad_left: 0,
                upsample: false,
            },
            in_a: self.input,
            in_b: &[],
            weight: self.weight,
            bias: self.bias,
            channel_add: &[],
            residual: self.residual,
            out_scale: self.out_scale,
        }
    }
}

/// Multi-head softmax(Q K^T * scale) V over `[batch, tokens, channels]` queries and
/// `[batch, kv_tokens, channels]` keys and values (self-attention: `kv_tokens == tokens`;
/// cross-attention: the text states' count), channels split into `heads` contiguous groups.
pub struct AttentionArgs<'a> {
    pub batch: usize,
    pub tokens: usize,
    pub kv_tokens: usize,
    pub channels: usize,
    pub heads: usize,
    /// Query `i` attends to keys `0..=i` only (`0..=min(i, kv_tokens - 1)`).
    pub causal: bool,
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
}

impl AttentionArgs<'_> {
    pub fn check(&self, out: &[f32]) {
        let n = self.batch * self.tokens * self.channels;
        let m = self.batch * self.kv_tokens * self.channels;
        assert!(
            self.heads > 0 && self.channels.is_multiple_of(self.heads),
            "attention: channels not divisible by heads"
        );
        assert!(self.kv_tokens > 0, "attention: no keys");
        assert!(
            self.q.len() >= n && self.k.len() >= m && self.v.len() >= m && out.len() >= n,
            "attention buffers too short"
        );
    }
}

/// Runs independent tasks, possibly on several threads.
///
/// Kernels split their output (pixels, output channels, queries) into tasks, never a
/// reduction, so results do not depend on how many threads run them.
pub trait Parallel: Sync {
    /// Upper bound (exclusive) of the `thread` index passed to tasks.
    fn threads(&self) -> usize;
    /// Calls `f(task, thread)` once for every `task` in `0..tasks` and returns when all are done.
    /// A thread runs its tasks one after another, so per-thread scratch indexed by `thread` is
    /// never shared by two running tasks.
    fn run(&self, tasks: usize, f: &(dyn Fn(usize, usize) + Sync));
}

/// Every task on the calling thread, in order (and the only choice without `std`).
pub struct Sequential;

impl Parallel for Sequential {
    fn threads(&self) -> usize {
        1
    }
    fn run(&self, tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        for t in 0..tasks {
            f(t, 0);
        }
    }
}

/// f32 elements of scratch each thread of a kernel call gets at least (the SIMD direct conv's
/// packed input tile and weight panels, which is more than the other kernels need).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub const SCRATCH_PER_THREAD: usize = simd::SCRATCH_FLOATS;
/// f32 elements of scratch each thread of a kernel call gets at least: none on a target with no
/// SIMD path (thumbv7em, ...), whose scalar kernels use no scratch (attention keeps its score
/// row in the arena), so a microcontroller's workspace is the activations alone.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const SCRATCH_PER_THREAD: usize = 0;

/// How the kernel scratch of one forward pass is laid out: `per_thread` floats for each thread,
/// then `shared` floats one kernel call at a time uses as a whole (the Winograd conv's
/// transformed inputs), and whether convs may run Winograd at all. Computed from the model's
/// convolutions by [`KernelTable::scratch_layout`] for one batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScratchLayout {
    pub per_thread: usize,
    pub shared: usize,
    /// Winograd where the conv's shape takes it and the scratch is large enough; `false`: the
    /// direct kernel for every conv (bit-identical to the scalar reference's order), even where
    /// the direct kernel's own scratch would hold a small conv's Winograd buffers.
    pub winograd: bool,
}

impl ScratchLayout {
    /// What every kernel needs for its direct algorithm (no Winograd region).
    pub const DIRECT: ScratchLayout = ScratchLayout {
        per_thread: SCRATCH_PER_THREAD,
        shared: 0,
        winograd: false,
    };

    /// Floats of scratch for `threads` threads.
    pub fn len(&self, threads: usize) -> usize {
        threads
            .saturating_mul(self.per_thread)
            .saturating_add(self.shared)
    }
}

/// A raw pointer handed to the tasks of one [`Exec::for_each_chunk`] call.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);

impl SharedMut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the tasks of one `for_each_chunk` call write disjoint pieces through it (see there).
unsafe impl Sync for SharedMut {}

/// How a kernel call may run: the thread team, one scratch region per thread and one region
/// shared by the call's tasks.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub struct Exec<'a> {
    par: &'a dyn Parallel,
    scratch: *mut f32,
    per_thread: usize,
    shared_len: usize,
    winograd: bool,
    _scratch: core::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: `Exec` hands out the scratch region of thread `t` only through `Exec::scratch(t)`,
// whose contract is that only the task running on thread `t` calls it, and the shared region
// only through `Exec::shared`, whose contract is that one kernel call at a time uses it (and
// splits it between its tasks itself); the regions are disjoint, so sharing `Exec` between
// threads creates no aliasing `&mut`.
unsafe impl Sync for Exec<'_> {}

impl<'a> Exec<'a> {
    /// `scratch` must hold [`SCRATCH_PER_THREAD`] floats for each of `par.threads()` threads
    /// (the direct kernels only; see [`Exec::with_layout`]).
    pub fn new(par: &'a dyn Parallel, scratch: &'a mut [f32]) -> Exec<'a> {
        Exec::with_layout(par, scratch, ScratchLayout::DIRECT)
    }

    /// `scratch` must hold `layout.len(par.threads())` floats; a conv whose faster algorithm
    /// needs more scratch than the layout gives runs the direct kernel, as every conv does when
    /// `layout.winograd` is false.
    pub fn with_layout(
        par: &'a dyn Parallel,
        scratch: &'a mut [f32],
        layout: ScratchLayout,
    ) -> Exec<'a> {
        let per_thread = layout.per_thread.max(SCRATCH_PER_THREAD);
        let layout = ScratchLayout {
            per_thread,
            ..layout
        };
        assert!(
            scratch.len() >= layout.len(par.threads()),
            "kernel scratch too small for the thread count"
        );
        Exec {
            par,
            scratch: scratch.as_mut_ptr(),
            per_thread,
            shared_len: layout.shared,
            winograd: layout.winograd,
            _scratch: core::marker::PhantomData,
        }
    }

    pub fn threads(&self) -> usize {
        self.par.threads()
    }

    /// Whether convs may take the Winograd path ([`ScratchLayout::winograd`]).
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    pub(crate) fn winograd(&self) -> bool {
        self.winograd
    }

    /// Floats of each thread's scratch region.
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    pub(crate) fn per_thread(&self) -> usize {
        self.per_thread
    }

    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if tasks == 1 {
            f(0, 0)
        } else {
            self.par.run(tasks, f)
        }
    }

    /// `f(i, chunk)` for the `i`-th `chunk`-float piece of `out` (the last may be shorter),
    /// pieces spread over the team: for row-wise ops (LayerNorm, GEGLU) whose rows are
    /// independent, so the result is the sequential one whatever the thread count.
    pub fn for_each_chunk(
        &self,
        out: &mut [f32],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [f32]) + Sync),
    ) {
        let chunk = chunk.max(1);
        let (len, tasks) = (out.len(), out.len().div_ceil(chunk));
        let base = SharedMut(out.as_mut_ptr());
        self.run(tasks, &|i, _| {
            let start = i * chunk;
            let n = chunk.min(len - start);
            // SAFETY: task `i` alone gets floats `start..start + n` of `out`, which is borrowed
            // mutably for the whole call; the pieces of different tasks are disjoint.
            let piece = unsafe { core::slice::from_raw_parts_mut(base.get().add(start), n) };
            f(i, piece)
        });
    }

    /// The scratch region of thread `thread`.
    ///
    /// # Safety
    /// Call only from a task that [`Parallel::run`] started on thread `thread`, and drop the
    /// slice before that task returns: then no two live slices alias.
    #[allow(clippy::mut_from_ref)]
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    pub(crate) unsafe fn scratch(&self, thread: usize) -> &mut [f32] {
        assert!(thread < self.par.threads());
        // SAFETY: in bounds by the assert and the check in `with_layout`; exclusive by the
        // contract.
        unsafe {
            core::slice::from_raw_parts_mut(
                self.scratch.add(thread * self.per_thread),
                self.per_thread,
            )
        }
    }

    /// The shared region (after every thread's region).
    ///
    /// # Safety
    /// Call only from a kernel entry point (on the calling thread, not from a task), and drop
    /// the slice before the kernel returns; kernel calls on one `Exec` run one after another,
    /// so no two live slices alias. Tasks reach the region through the raw pointer the kernel
    /// took from it, each at places no other running task writes.
    #[allow(clippy::mut_from_ref)]
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    pub(crate) unsafe fn shared(&self) -> &mut [f32] {
        // SAFETY: in bounds by the check in `with_layout`; exclusive by the contract.
        unsafe {
            core::slice::from_raw_parts_mut(
                self.scratch.add(self.par.threads() * self.per_thread),
                self.shared_len,
            )
        }
    }
}

/// A [`KernelTable::layer_norm`] entry: (`input`, `dim`, `eps`, `gamma`, `beta`, `out`).
pub type LayerNormRows = fn(&[f32], usize, f32, &[half::f16], &[half::f16], &mut [f32]);

/// One backend: the functions the forward walk calls. Output slices have exactly the size the
/// arguments imply (the forward walk checks this before calling).
#[derive(Clone, Copy)]
pub struct KernelTable {
    pub name: &'static str,
    pub path: KernelPath,
    pub conv2d: fn(&ConvArgs<'_>, &mut [f32], &Exec<'_>),
    pub group_norm: fn(&GroupNormArgs<'_>, &mut [f32], &Exec<'_>),
    pub linear: fn(&LinearArgs<'_>, &mut [f32], &Exec<'_>),
    /// `scratch` holds at least `kv_tokens` floats: the scalar path's score row (the SIMD
    /// paths keep their tiles in the per-thread scratch of `Exec`).
    pub attention: fn(&AttentionArgs<'_>, &mut [f32], &mut [f32], &Exec<'_>),
    /// LayerNorm of whole rows of `dim` floats (as [`scalar::layer_norm`]: `input`, `eps`,
    /// `gamma`, `beta`, `out`); one call is one task's rows, the caller splits the rows.
    pub layer_norm: LayerNormRows,
    /// GEGLU of whole rows (as [`scalar::geglu`]: rows of `2 * dim` in, `dim` out).
    pub geglu: fn(&[f32], usize, &mut [f32]),
    /// Scratch a convolution (at its shape's batch) needs for its fastest algorithm beyond
    /// [`ScratchLayout::DIRECT`], as (f32 per thread, f32 shared); `None` when it runs the
    /// direct kernel.
    pub conv_scratch: fn(&ConvShape) -> Option<(usize, usize)>,
}

impl KernelTable {
    /// The scratch layout that lets every conv of `convs` (shapes with the batch they run at)
    /// run its fastest algorithm.
    pub fn scratch_layout(&self, convs: impl IntoIterator<Item = ConvShape>) -> ScratchLayout {
        let mut layout = ScratchLayout::DIRECT;
        for s in convs {
            if let Some((per_thread, shared)) = (self.conv_scratch)(&s) {
                // Whole cache lines, so every thread's region starts on one.
                let per_thread =
                    per_thread.div_ceil(crate::memory::ALIGN_FLOATS) * crate::memory::ALIGN_FLOATS;
                layout.per_thread = layout.per_thread.max(per_thread);
                layout.shared = layout.shared.max(shared);
                layout.winograd = true;
            }
        }
        layout
    }
}

/// The scratch layout that lets every conv of `convs` run its fastest algorithm on any kernel
/// path this build has, whatever the CPU it runs on detects (the largest of each path's
/// [`KernelTable::scratch_layout`]): a size computed from it holds on every machine of the
/// target architecture. `convs` is iterated once per path.
pub fn portable_scratch_layout<I>(convs: I) -> ScratchLayout
where
    I: IntoIterator<Item = ConvShape> + Clone,
{
    let tables: &[&KernelTable] = &[
        &scalar::TABLE,
        #[cfg(target_arch = "x86_64")]
        &x86::AVX2_TABLE,
        #[cfg(target_arch = "x86_64")]
        &x86::AVX512_TABLE,
        #[cfg(target_arch = "aarch64")]
        &neon::TABLE,
        #[cfg(target_arch = "aarch64")]
        &neon_f16::TABLE,
    ];
    // Only the tables' `conv_scratch` (plain size arithmetic, no CPU features) is called.
    tables.iter().fold(ScratchLayout::DIRECT, |acc, t| {
        let l = t.scratch_layout(convs.clone());
        ScratchLayout {
            per_thread: acc.per_thread.max(l.per_thread),
            shared: acc.shared.max(l.shared),
            winograd: acc.winograd || l.winograd,
        }
    })
}

/// Which implementation of the kernels to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// Plain Rust loops: the reference every other path is tested against.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512F (+ AVX2, FMA, F16C).
    Avx512,
    /// aarch64 Advanced SIMD.
    Neon,
    /// aarch64 Advanced SIMD with FEAT_FP16: f16 arithmetic in convolutions and linears
    /// ([`Precision::F16`]); never chosen by [`KernelPath::detect`].
    NeonFp16,
}

/// The arithmetic a model's forward pass computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// f32 arithmetic everywhere (the default; parity-exact against the scalar reference).
    #[default]
    F32,
    /// f16 products and short f16 sums in convolutions and linears, f32 accumulation across
    /// blocks of the reduction, f32 GroupNorm, softmax and scheduler state: about 2x the f32
    /// rate on CPUs with f16 arithmetic, at a few 1e-3 relative error per forward pass.
    F16,
}

impl Precision {
    /// `f32` or `f16` (case-insensitive).
    pub fn from_name(name: &str) -> crate::Result<Precision> {
        match name.trim() {
            n if n.eq_ignore_ascii_case("f32") => Ok(Precision::F32),
            n if n.eq_ignore_ascii_case("f16") => Ok(Precision::F16),
            _ => Err(crate::error::invalid_arg(
                "precision",
                alloc::format!("'{name}' is not one of: f32, f16"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }

    /// The kernel path that computes in this precision on this CPU, given the f32 path in use.
    /// f16 on a CPU without f16 arithmetic is an [`crate::Error::UnsupportedConfig`] naming the
    /// CPU feature it needs, never a silent f32 fallback.
    pub fn kernel_path(self, current: KernelPath) -> crate::Result<KernelPath> {
        match self {
            Precision::F32 if current.precision() == Precision::F32 => Ok(current),
            Precision::F32 => {
                let p = KernelPath::preferred()?;
                Ok(if p.precision() == Precision::F32 {
                    p
                } else {
                    KernelPath::detect()
                })
            }
            Precision::F16 if KernelPath::NeonFp16.is_available() => Ok(KernelPath::NeonFp16),
            Precision::F16 => Err(crate::Error::UnsupportedConfig {
                key: alloc::string::String::from("precision"),
                value: alloc::string::String::from(F16_NEEDS),
            }),
        }
    }
}

/// What [`Precision::F16`] needs from the CPU (the error text where it is missing).
pub const F16_NEEDS: &str = "f16 needs f16 arithmetic in the CPU: aarch64 FEAT_FP16 \
     (`fp16`, ARMv8.2-A, e.g. Cortex-A55/A76 or newer); this CPU or build has none \
     (x86 AVX512-FP16 has no kernels yet)";

/// Name of the environment variable that forces a kernel path at model load.
pub const KERNELS_ENV: &str = "TINYDIFFUSION_KERNELS";

/// Name of the environment variable that, set to `0` (or `off`), makes models loaded under
/// `std` run every convolution with the direct kernel (see [`crate::Model::set_winograd`]).
pub const WINOGRAD_ENV: &str = "TINYDIFFUSION_WINOGRAD";

/// Whether [`WINOGRAD_ENV`] allows Winograd (the default: yes).
pub fn winograd_default() -> bool {
    #[cfg(feature = "std")]
    if let Ok(v) = std::env::var(WINOGRAD_ENV) {
        let v = v.trim();
        return !(v == "0" || v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("false"));
    }
    true
}

impl KernelPath {
    /// The f32 paths (each parity-checked against the scalar reference at f32 tolerances).
    pub const ALL: [KernelPath; 4] = [
        KernelPath::Scalar,
        KernelPath::Avx2,
        KernelPath::Avx512,
        KernelPath::Neon,
    ];
    /// The f16-arithmetic paths ([`Precision::F16`]).
    pub const F16: [KernelPath; 1] = [KernelPath::NeonFp16];

    /// The arithmetic the path computes in.
    pub fn precision(self) -> Precision {
        match self {
            KernelPath::NeonFp16 => Precision::F16,
            _ => Precision::F32,
        }
    }

    /// Whether this CPU (under `std`: probed at run time; without: the build's target
    /// features) can run the path.
    pub fn is_available(self) -> bool {
        match self {
            KernelPath::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => x86::avx2_available(),
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512 => x86::avx512_available(),
            #[cfg(target_arch = "aarch64")]
            KernelPath::Neon => neon::available(),
            #[cfg(target_arch = "aarch64")]
            KernelPath::NeonFp16 => neon_f16::available(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest path this machine supports (ignores [`KERNELS_ENV`]).
    pub fn detect() -> KernelPath {
        [KernelPath::Avx512, KernelPath::Avx2, KernelPath::Neon]
            .into_iter()
            .find(|p| p.is_available())
            .unwrap_or(KernelPath::Scalar)
    }

    /// `scalar`, `avx2`, `avx512`, `neon` or `neon-fp16` (case-insensitive).
    pub fn parse(name: &str) -> Option<KernelPath> {
        KernelPath::ALL
            .into_iter()
            .chain(KernelPath::F16)
            .find(|p| p.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Parses a path name (`scalar`, `avx2`, `avx512`, `neon`), as given on a command line.
    pub fn from_name(name: &str) -> crate::Result<KernelPath> {
        KernelPath::parse(name).ok_or_else(|| {
            crate::error::invalid_arg(
                "kernel path",
                alloc::format!("'{name}' is not one of: scalar, avx2, avx512, neon, neon-fp16"),
            )
        })
    }

    /// The path named by [`KERNELS_ENV`], if set (an unknown name is an error).
    #[cfg(feature = "std")]
    pub fn from_env() -> crate::Result<Option<KernelPath>> {
        match std::env::var(KERNELS_ENV) {
            Ok(v) if !v.trim().is_empty() => KernelPath::parse(&v).map(Some).ok_or_else(|| {
                crate::error::invalid_arg(
                    KERNELS_ENV,
                    alloc::format!("`{v}`: expected scalar, avx2, avx512, neon or neon-fp16"),
                )
            }),
            _ => Ok(None),
        }
    }

    /// The path forced by [`KERNELS_ENV`] if set, else [`KernelPath::detect`].
    pub fn preferred() -> crate::Result<KernelPath> {
        #[cfg(feature = "std")]
        if let Some(p) = KernelPath::from_env()? {
            return Ok(p);
        }
        Ok(KernelPath::detect())
    }

    /// The kernel table, or an error if this CPU cannot run the path.
    pub fn table(self) -> crate::Result<&'static KernelTable> {
        if !self.is_available() {
            return Err(crate::error::invalid_arg(
                "kernel path",
                alloc::format!("`{}` is not supported by this CPU or build", self.name()),
            ));
        }
        match self {
            KernelPath::Scalar => Ok(&scalar::TABLE),
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => Ok(&x86::AVX2_TABLE),
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512 => Ok(&x86::AVX512_TABLE),
            #[cfg(target_arch = "aarch64")]
            KernelPath::Neon => Ok(&neon::TABLE),
            #[cfg(target_arch = "aarch64")]
            KernelPath::NeonFp16 => Ok(&neon_f16::TABLE),
            #[allow(unreachable_patterns)]
            _ => unreachable!("is_available() was checked"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Scalar => "scalar",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512 => "avx512",
            KernelPath::Neon => "neon",
            KernelPath::NeonFp16 => "neon-fp16",
        }
    }
}

/// Runs `iters` rounds of an f32 FMA loop (24 independent vector FMAs per round) on the
/// calling thread with `path`'s instructions; returns the floating-point operations done (and
/// a value to keep alive). Benchmarks use it to measure the machine's FMA peak.
pub fn fma_probe(path: KernelPath, iters: usize) -> crate::Result<(f64, f32)> {
    path.table()?;
    match path {
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx512 => Ok(x86::avx512_fma_peak(iters)),
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2 => Ok(x86::avx2_fma_peak(iters)),
        #[cfg(target_arch = "aarch64")]
        KernelPath::Neon => Ok(neon::fma_peak(iters)),
        _ => {
            let mut acc = [0.0f32; 8];
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = libm::fmaf(*a, 0.999_999, 1e-7);
                }
            }
            Ok(((iters * 16) as f64, acc.iter().sum()))
        }
    }
}

/// The caller's NCHW sample to the arena's NHWC layout (`2x - 1` when `center`, diffusers'
/// `center_input_sample`); `batch` samples of `channels` x `pixels`.
pub fn nchw_to_nhwc(
    src: &[f32],
    dst: &mut [f32],
    batch: usize,
    channels: usize,
    pixels: usize,
    center: bool,
) {
    let (c, hw) = (channels, pixels);
    for b in 0..batch {
        for ch in 0..c {
            let plane = &src[(b * c + ch) * hw..(b * c + ch + 1) * hw];
            for (p, v) in plane.iter().enumerate() {
                dst[(b * hw + p) * c + ch] = if center { 2.0 * v - 1.0 } else { *v };
            }
        }
    }
}

/// The arena's NHWC layout back to the caller's NCHW.
pub fn nhwc_to_nchw(src: &[f32], dst: &mut [f32], batch: usize, channels: usize, pixels: usize) {
    let (c, hw) = (channels, pixels);
    for b in 0..batch {
        for ch in 0..c {
            let plane = &mut dst[(b * c + ch) * hw..(b * c + ch + 1) * hw];
            for (p, o) in plane.iter_mut().enumerate() {
                *o = src[(b * hw + p) * c + ch];
            }
        }
    }
}

/// `x * sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + libm::expf(-x))
}
