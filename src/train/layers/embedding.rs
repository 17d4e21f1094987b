//! Timestep and class embedding:
//!
//! `emb = silu(linear_2(silu(linear_1(sinusoid(t)))) + class_embedding[y])`, then the SiLU every
//! resnet applies before its projection: the op's output is `silu(emb)`.
//!
//! - The sinusoid is a fixed function of the (integer) timestep: nothing to learn, and no
//!   gradient flows into `t`; the backward stops at `linear_1`.
//! - The class embedding is a row gather: `forward` adds row `y[b]` of the table to sample `b`;
//!   `backward` scatters `d_emb[b]` back into row `y[b]` of the table's gradient (rows of
//!   classes absent from the batch get nothing).
//! - The MLP is two [`super::linear`] layers with [`super::activation`] SiLUs in between, whose
//!   backward is theirs, applied in reverse.

use super::linear::{self, Linear, LinearGrads};
use super::vmath;

/// diffusers' `get_timestep_embedding`, in f32 as diffusers computes it (it matters at t ~ 1000):
/// `row[i] = sin(t * exp(-ln(10000) * i / (half - shift)))`, `row[half + i] = cos(...)`
/// (swapped when `flip_sin_to_cos`); an odd width leaves the last entry zero.
pub fn sinusoid(t: f32, flip_sin_to_cos: bool, freq_shift: f32, row: &mut [f32]) {
    let half = row.len() / 2;
    let ln_max_period = -libm::logf(10000.0);
    row.fill(0.0);
    for i in 0..half {
        let exponent = ln_max_period * i as f32 / (half as f32 - freq_shift);
        let arg = t * libm::expf(exponent);
        let (sin, cos) = (libm::sin(arg as f64) as f32, libm::cos(arg as f64) as f32);
        let (first, second) = if flip_sin_to_cos {
            (cos, sin)
        } else {
            (sin, cos)
        };
        row[i] = first;
        row[half + i] = second;
    }
}

/// `emb[b] += table[labels[b]]`, `table` is `[classes, dim]`.
pub fn class_forward(table: &[f32], labels: &[i64], dim: usize, emb: &mut [f32]) {
    for (b, &y) in labels.iter().enumerate() {
        let row = &table[y as usize * dim..(y as usize + 1) * dim];
        for (e, r) in emb[b * dim..(b + 1) * dim].iter_mut().zip(row) {
            *e += r;
        }
    }
}

/// `d_table[labels[b]] += d_emb[b]`.
pub fn class_backward(d_emb: &[f32], labels: &[i64], dim: usize, d_table: &mut [f32]) {
    for (b, &y) in labels.iter().enumerate() {
        let row = &mut d_table[y as usize * dim..(y as usize + 1) * dim];
        for (r, d) in row.iter_mut().zip(&d_emb[b * dim..(b + 1) * dim]) {
            *r += d;
        }
    }
}

/// The embedding MLP's weights and inputs.
pub struct TimeMlp<'a> {
    pub batch: usize,
    pub sinusoid_dim: usize,
    pub embed_dim: usize,
    pub w1: &'a [f32],
    pub b1: &'a [f32],
    pub w2: &'a [f32],
    pub b2: &'a [f32],
    /// `[classes, embed_dim]`, empty for an unconditional model.
    pub class_table: &'a [f32],
    pub labels: &'a [i64],
}

/// Gradients to accumulate into.
pub struct TimeMlpGrads<'a> {
    pub w1: &'a mut [f32],
    pub b1: &'a mut [f32],
    pub w2: &'a mut [f32],
    pub b2: &'a mut [f32],
    pub class_table: &'a mut [f32],
}

/// Floats saved per sample: both pre-activations (`h1 = linear_1(...)`, `emb`).
pub fn saved_len(embed_dim: usize) -> usize {
    2 * embed_dim
}

/// Forward from a filled `sinusoids` (`[batch, sinusoid_dim]`): writes `hidden = silu(h1)`,
/// `saved = [h1 | emb]` and `out = silu(emb)`.
pub fn forward(
    m: &TimeMlp<'_>,
    sinusoids: &[f32],
    hidden: &mut [f32],
    saved: &mut [f32],
    out: &mut [f32],
) {
    let (e, n) = (m.embed_dim, m.batch * m.embed_dim);
    let (h1, emb) = saved.split_at_mut(n);
    let l1 = Linear {
        rows: m.batch,
        in_f: m.sinusoid_dim,
        out_f: e,
        input: sinusoids,
        weight: m.w1,
        bias: m.b1,
        residual: &[],
        out_scale: 1.0,
    };
    linear::forward(&l1, h1);
    vmath::silu(h1, hidden);
    let l2 = Linear {
        rows: m.batch,
        in_f: e,
        out_f: e,
        input: hidden,
        weight: m.w2,
        bias: m.b2,
        residual: &[],
        out_scale: 1.0,
    };
    linear::forward(&l2, &mut emb[..n]);
    if !m.class_table.is_empty() {
        class_forward(m.class_table, m.labels, e, &mut emb[..n]);
    }
    vmath::silu(emb, out);
}

/// Backward. `d_out` (the gradient of `silu(emb)`) is consumed: it is turned into `d_emb` in
/// place; `d_hidden` (`[batch, embed_dim]`) is scratch.
pub fn backward(
    m: &TimeMlp<'_>,
    sinusoids: &[f32],
    hidden: &[f32],
    saved: &[f32],
    d_out: &mut [f32],
    d_hidden: &mut [f32],
    g: TimeMlpGrads<'_>,
) {
    let (e, n) = (m.embed_dim, m.batch * m.embed_dim);
    let (h1, emb) = saved.split_at(n);
    vmath::mul_silu_grad(emb, d_out);
    if !m.class_table.is_empty() {
        class_backward(d_out, m.labels, e, g.class_table);
    }
    d_hidden.fill(0.0);
    let l2 = Linear {
        rows: m.batch,
        in_f: e,
        out_f: e,
        input: hidden,
        weight: m.w2,
        bias: m.b2,
        residual: &[],
        out_scale: 1.0,
    };
    linear::backward(
        &l2,
        d_out,
        LinearGrads {
            input: d_hidden,
            weight: g.w2,
            bias: g.b2,
            residual: &mut [],
        },
    );
    vmath::mul_silu_grad(h1, d_hidden);
    let l1 = Linear {
        rows: m.batch,
        in_f: m.sinusoid_dim,
        out_f: e,
        input: sinusoids,
        weight: m.w1,
        bias: m.b1,
        residual: &[],
        out_scale: 1.0,
    };
    linear::backward(
        &l1,
        d_hidden,
        LinearGrads {
            input: &mut [],
            weight: g.w1,
            bias: g.b1,
            residual: &mut [],
        },
    );
}
