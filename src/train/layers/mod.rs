//! Every layer of the UNet with its forward and backward side by side (as llm.c does for GPT-2).
//!
//! These are the trainer's kernels: f32 activations *and* f32 weights (the inference kernels in
//! [`crate::kernels`] read f16 weights in place and stay untouched). Each file holds one layer:
//! a `forward` that computes exactly what the inference kernel computes, the `backward` right
//! under it, and the math of the backward in a few comment lines.
//!
//! Conventions, shared by every layer:
//! - activations are NHWC (`[batch, pixels, channels]`), as in inference;
//! - conv weights are stored **HWIO** (`[kh][kw][in][out]`, see [`crate::train::params`]) so
//!   that every inner loop runs over contiguous output channels; linear weights keep diffusers'
//!   `[out][in]` layout;
//! - every `backward` *accumulates* (`+=`) into the gradients it is given: a tensor read by
//!   several ops (a skip connection, the time embedding) collects all contributions, and the
//!   caller zeroes each gradient buffer once, before its first contribution. An empty gradient
//!   slice means "not needed" and is skipped.
//!
//! The loops are plain but cache-friendly (contiguous innermost loops, 8-lane accumulators that
//! LLVM turns into SIMD); on x86-64 with AVX2+FMA the hot ones are compiled a second time with
//! those features (run-time dispatch), the products run on [`gemm`]'s intrinsics micro-kernels
//! (AVX-512 or AVX2, the same bits) and `exp` (SiLU, softmax) on [`vmath`]. Work is split into independent tasks (pixel tiles,
//! samples, row bands of a product) on [`gemm::for_each_task`]'s team; the partition is fixed and
//! partial sums are combined in a fixed order, so results do not depend on the thread count.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod dropout;
pub mod embedding;
pub mod gemm;
pub mod group_norm;
pub mod linear;
pub mod ncsnpp;
pub mod resample;
pub mod vmath;

/// `sum a[i] * b[i]` with eight independent accumulators (vectorisable; fixed order, so
/// deterministic).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for i in chunks * 8..n {
        tail += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y += alpha * x`.
#[inline(always)]
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}
