//! Timestep and class embedding.
//!
//! The op list spells the time embedding out as primitive ops: `Sinusoid` (the core's
//! [`sinusoid`]; nothing to learn, and no gradient flows into `t`), `Linear`, `Silu`, `Linear`,
//! `ClassEmbedding` (a row gather: [`class_forward`] adds row `y[b]` of the table to sample
//! `b`; [`class_backward`] scatters `d_emb[b]` back into row `y[b]` of the table's gradient,
//! rows of classes absent from the batch get nothing), and the `Silu` every resnet applies
//! before its projection; each goes backward through its own layer.
//!
//! [`TimeMlp`] is that chain as one function pair, composed of the same layers, for the
//! gradient tests that check it against PyTorch.

use super::linear::{self, Linear, LinearGrads};
use super::vmath;

pub use crate::model::forward::sinusoid;

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

/// `class_embed_type: "identity"`: `out = input + class_embeddings` (both `[batch, dim]`; the
/// embeddings are the caller's float class labels).
pub fn class_vector_forward(input: &[f32], class_embeddings: &[f32], out: &mut [f32]) {
    for ((o, x), e) in out.iter_mut().zip(input).zip(class_embeddings) {
        *o = x + e;
    }
}

/// Backward of [`class_vector_forward`] into the input: `d_input += d_out` (the embeddings
/// are inputs and get no gradient).
pub fn class_vector_backward(d_out: &[f32], d_input: &mut [f32]) {
    for (d, g) in d_input.iter_mut().zip(d_out) {
        *d += g;
    }
}
