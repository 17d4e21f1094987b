//! Finite-difference checks of every layer's backward, on small random shapes.
//!
//! For a layer `y = f(x, w, ...)`, take a random cotangent `r` and the scalar
//! `L = sum(y * r)` (accumulated in f64). The backward called with `d_out = r` gives `dL/dθ` for
//! every input and weight `θ`; for a random direction `u` it must match the central difference
//! `(L(θ + h u) - L(θ - h u)) / 2h` (Richardson-extrapolated over h = 1e-2, 5e-3; f32 forward,
//! so the bar is 2e-3 relative).
#![cfg(feature = "train")]

use tinydiffusion::kernels::scalar::FirArgs;
use tinydiffusion::kernels::ConvShape;
use tinydiffusion::train::layers::ncsnpp;
use tinydiffusion::train::layers::{
    activation, attention, conv, embedding, group_norm, linear, resample,
};
use tinydiffusion::train::rng::{Purpose, Stream};

fn randn(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = Stream::new(seed, Purpose::Noise, n as u64);
    (0..n).map(|_| s.gaussian() as f32 * scale).collect()
}

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Checks `grads[i]` (analytic) against central differences of `L(θ) = sum(forward(θ) * r)`
/// for every tensor `i` of `theta` that has a gradient.
fn check(
    layer: &str,
    theta: &[Vec<f32>],
    names: &[&str],
    forward: impl Fn(&[Vec<f32>]) -> Vec<f32>,
    backward: impl Fn(&[Vec<f32>], &[f32]) -> Vec<Vec<f32>>,
) {
    let y = forward(theta);
    let r = randn(999, y.len(), 1.0);
    let grads = backward(theta, &r);
    let loss = |th: &[Vec<f32>]| dot64(&forward(th), &r);
    for (i, g) in grads.iter().enumerate() {
        if g.is_empty() {
            continue;
        }
        assert_eq!(
            g.len(),
            theta[i].len(),
            "{layer}: gradient size of {}",
            names[i]
        );
        let u = randn(100 + i as u64, g.len(), 1.0);
        let analytic = dot64(g, &u);
        let central = |h: f32| {
            let mut plus = theta.to_vec();
            let mut minus = theta.to_vec();
            for ((p, m), d) in plus[i].iter_mut().zip(minus[i].iter_mut()).zip(&u) {
                *p += h * d;
                *m -= h * d;
            }
            (loss(&plus) - loss(&minus)) / (2.0 * h as f64)
        };
        // Richardson extrapolation of two central differences cancels the h^2 term.
        let fd = (4.0 * central(5e-3) - central(1e-2)) / 3.0;
        // Absolute floor: some gradients are exactly zero (the key bias: softmax rows are
        // shift-invariant), where only f32 noise of the difference quotient remains.
        let err = (fd - analytic).abs() / analytic.abs().max(0.1);
        println!(
            "{layer:<28} d/d{:<10} analytic {analytic:>12.6} fd {fd:>12.6} rel {err:.1e}",
            names[i]
        );
        assert!(
            err < 2e-3,
            "{layer}: gradient of {} off: analytic {analytic} vs fd {fd}",
            names[i]
        );
    }
}

type Six = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

#[allow(clippy::too_many_arguments)]
fn conv_case(
    name: &str,
    in_hw: (usize, usize),
    ca: usize,
    cb: usize,
    out_c: usize,
    k: usize,
    stride: usize,
    pad: usize,
    upsample: bool,
    extras: bool,
) {
    let batch = 2;
    let (in_h, in_w) = in_hw;
    let (vh, vw) = if upsample {
        (2 * in_h, 2 * in_w)
    } else {
        (in_h, in_w)
    };
    let extra = if stride == 2 && pad == 0 { 1 } else { 0 };
    let out_h = (vh + 2 * pad + extra - k) / stride + 1;
    let out_w = (vw + 2 * pad + extra - k) / stride + 1;
    let shape = ConvShape {
        batch,
        in_h,
        in_w,
        in_ca: ca,
        in_cb: cb,
        out_c,
        out_h,
        out_w,
        kernel: k,
        stride,
        pad_top: pad,
        pad_left: pad,
        upsample,
    };
    let cin = ca + cb;
    let n_out = batch * out_h * out_w * out_c;
    let theta = vec![
        randn(1, batch * in_h * in_w * ca, 1.0),
        randn(2, batch * in_h * in_w * cb, 1.0),
        randn(3, k * k * cin * out_c, 1.0 / (cin * k * k) as f32),
        randn(4, out_c, 0.1),
        if extras {
            randn(5, batch * out_c, 1.0)
        } else {
            vec![]
        },
        if extras { randn(6, n_out, 1.0) } else { vec![] },
    ];
    let scale = if extras { 1.3 } else { 1.0 };
    let args = |t: &[Vec<f32>]| -> Six {
        (
            t[0].clone(),
            t[1].clone(),
            t[2].clone(),
            t[3].clone(),
            t[4].clone(),
            t[5].clone(),
        )
    };
    let fwd = |t: &[Vec<f32>]| {
        let (a, b, w, bias, ch, res) = args(t);
        let c = conv::Conv {
            shape,
            in_a: &a,
            in_b: &b,
            weight: &w,
            bias: &bias,
            channel_add: &ch,
            residual: &res,
            out_scale: scale,
        };
        let mut out = vec![0.0; n_out];
        conv::forward(&c, &mut out, &mut vec![0.0; conv::scratch_len(&shape)]);
        out
    };
    let bwd = |t: &[Vec<f32>], d: &[f32]| {
        let (a, b, w, bias, ch, res) = args(t);
        let c = conv::Conv {
            shape,
            in_a: &a,
            in_b: &b,
            weight: &w,
            bias: &bias,
            channel_add: &ch,
            residual: &res,
            out_scale: scale,
        };
        let mut g: Vec<Vec<f32>> = t.iter().map(|v| vec![0.0; v.len()]).collect();
        let [ga, gb, gw, gbias, gch, gres] = &mut g[..] else {
            unreachable!()
        };
        conv::backward(
            &c,
            d,
            conv::ConvGrads {
                in_a: ga,
                in_b: gb,
                weight: gw,
                bias: gbias,
                channel_add: gch,
                residual: gres,
            },
            &mut vec![0.0; conv::scratch_len(&shape)],
        );
        g
    };
    check(
        name,
        &theta,
        &["in_a", "in_b", "weight", "bias", "chan_add", "residual"],
        fwd,
        bwd,
    );
}

#[test]
fn conv_3x3_concat_chanadd_residual_scale() {
    conv_case(
        "conv3x3 concat+add+res",
        (5, 4),
        3,
        2,
        4,
        3,
        1,
        1,
        false,
        true,
    );
}

#[test]
fn conv_1x1_shortcut_over_concat() {
    conv_case("conv1x1 concat", (4, 3), 3, 2, 5, 1, 1, 0, false, false);
}

#[test]
fn conv_stride2_asymmetric_padding() {
    conv_case(
        "conv3x3 s2 pad(0,1,0,1)",
        (6, 4),
        3,
        0,
        4,
        3,
        2,
        0,
        false,
        false,
    );
}

#[test]
fn conv_stride2_padding1() {
    conv_case("conv3x3 s2 pad1", (6, 4), 3, 0, 4, 3, 2, 1, false, false);
}

#[test]
fn conv_upsample_nearest2x() {
    conv_case("upsample2x+conv3x3", (3, 2), 4, 0, 3, 3, 1, 1, true, false);
}

fn gn_case(name: &str, silu: bool, cb: usize) {
    let (batch, pixels, ca, groups) = (2, 5, 4, 3);
    let c = ca + cb;
    let theta = vec![
        randn(1, batch * pixels * ca, 1.5),
        randn(2, batch * pixels * cb, 1.5),
        randn(3, c, 0.3).iter().map(|v| v + 1.0).collect(),
        randn(4, c, 0.3),
    ];
    let gn = |t: &[Vec<f32>]| -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        (t[0].clone(), t[1].clone(), t[2].clone(), t[3].clone())
    };
    let fwd = |t: &[Vec<f32>]| {
        let (a, b, g, be) = gn(t);
        let args = group_norm::GroupNorm {
            batch,
            pixels,
            in_ca: ca,
            in_cb: cb,
            groups,
            eps: 1e-5,
            in_a: &a,
            in_b: &b,
            gamma: &g,
            beta: &be,
            silu,
        };
        let mut out = vec![0.0; batch * pixels * c];
        let mut saved = vec![0.0; batch * group_norm::saved_len(groups)];
        group_norm::forward(&args, &mut out, &mut saved);
        out
    };
    let bwd = |t: &[Vec<f32>], d: &[f32]| {
        let (a, b, g, be) = gn(t);
        let args = group_norm::GroupNorm {
            batch,
            pixels,
            in_ca: ca,
            in_cb: cb,
            groups,
            eps: 1e-5,
            in_a: &a,
            in_b: &b,
            gamma: &g,
            beta: &be,
            silu,
        };
        let mut out = vec![0.0; batch * pixels * c];
        let mut saved = vec![0.0; batch * group_norm::saved_len(groups)];
        group_norm::forward(&args, &mut out, &mut saved);
        let mut gr: Vec<Vec<f32>> = t.iter().map(|v| vec![0.0; v.len()]).collect();
        let [ga, gb, gg, gbe] = &mut gr[..] else {
            unreachable!()
        };
        group_norm::backward(
            &args,
            &saved,
            &mut d.to_vec(),
            group_norm::GroupNormGrads {
                in_a: ga,
                in_b: gb,
                gamma: gg,
                beta: gbe,
            },
        );
        gr
    };
    check(name, &theta, &["in_a", "in_b", "gamma", "beta"], fwd, bwd);
}

#[test]
fn group_norm_silu_over_concat() {
    gn_case("groupnorm+silu concat", true, 2);
}

#[test]
fn group_norm_plain() {
    gn_case("groupnorm", false, 0);
}

#[test]
fn silu() {
    let theta = vec![randn(1, 50, 3.0)];
    let fwd = |t: &[Vec<f32>]| {
        let mut o = vec![0.0; t[0].len()];
        activation::forward(&t[0], &mut o);
        o
    };
    let bwd = |t: &[Vec<f32>], d: &[f32]| {
        let mut g = vec![0.0; t[0].len()];
        activation::backward(&t[0], d, &mut g);
        vec![g]
    };
    check("silu", &theta, &["x"], fwd, bwd);
}

#[test]
fn linear_residual_scale() {
    let (rows, in_f, out_f) = (3, 5, 4);
    let theta = vec![
        randn(1, rows * in_f, 1.0),
        randn(2, out_f * in_f, 0.5),
        randn(3, out_f, 0.1),
        randn(4, rows * out_f, 1.0),
    ];
    let mk = |t: &[Vec<f32>]| -> Vec<Vec<f32>> { t.to_vec() };
    let fwd = |t: &[Vec<f32>]| {
        let t = mk(t);
        let l = linear::Linear {
            rows,
            in_f,
            out_f,
            input: &t[0],
            weight: &t[1],
            bias: &t[2],
            residual: &t[3],
            out_scale: 0.7,
        };
        let mut o = vec![0.0; rows * out_f];
        linear::forward(&l, &mut o);
        o
    };
    let bwd = |t: &[Vec<f32>], d: &[f32]| {
        let t = mk(t);
        let l = linear::Linear {
            rows,
            in_f,
            out_f,
            input: &t[0],
            weight: &t[1],
            bias: &t[2],
            residual: &t[3],
            out_scale: 0.7,
        };
        let mut g: Vec<Vec<f32>> = t.iter().map(|v| vec![0.0; v.len()]).collect();
        let [gi, gw, gb, gr] = &mut g[..] else {
            unreachable!()
        };
        linear::backward(
            &l,
            d,
            linear::LinearGrads {
                input: gi,
                weight: gw,
                bias: gb,
                residual: gr,
            },
        );
        g
    };
    check(
        "linear+residual/scale",
        &theta,
        &["input", "weight", "bias", "residual"],
        fwd,
        bwd,
    );
}

#[test]
fn time_and_class_embedding() {
    let (batch, c0, e, classes) = (3, 6, 8, 4);
    let labels = [2i64, 0, 2];
    let mut sinusoids = vec![0.0; batch * c0];
    for (b, t) in [3.0f32, 500.0, 999.0].iter().enumerate() {
        embedding::sinusoid(*t, true, 0.0, &mut sinusoids[b * c0..(b + 1) * c0]);
    }
    let theta = vec![
        randn(1, e * c0, 0.5),
        randn(2, e, 0.1),
        randn(3, e * e, 0.4),
        randn(4, e, 0.1),
        randn(5, classes * e, 1.0),
    ];
    let run = |t: &[Vec<f32>], d: Option<&[f32]>| -> (Vec<f32>, Vec<Vec<f32>>) {
        let m = embedding::TimeMlp {
            batch,
            sinusoid_dim: c0,
            embed_dim: e,
            w1: &t[0],
            b1: &t[1],
            w2: &t[2],
            b2: &t[3],
            class_table: &t[4],
            labels: &labels,
        };
        let mut hidden = vec![0.0; batch * e];
        let mut saved = vec![0.0; batch * embedding::saved_len(e)];
        let mut out = vec![0.0; batch * e];
        embedding::forward(&m, &sinusoids, &mut hidden, &mut saved, &mut out);
        let mut g: Vec<Vec<f32>> = t.iter().map(|v| vec![0.0; v.len()]).collect();
        if let Some(d) = d {
            let mut d_out = d.to_vec();
            let mut d_hidden = vec![0.0; batch * e];
            let [w1, b1, w2, b2, ct] = &mut g[..] else {
                unreachable!()
            };
            let grads = embedding::TimeMlpGrads {
                w1,
                b1,
                w2,
                b2,
                class_table: ct,
            };
            embedding::backward(
                &m,
                &sinusoids,
                &hidden,
                &saved,
                &mut d_out,
                &mut d_hidden,
                grads,
            );
        }
        (out, g)
    };
    check(
        "time mlp + class embedding",
        &theta,
        &[
            "linear_1.w",
            "linear_1.b",
            "linear_2.w",
            "linear_2.b",
            "class_emb",
        ],
        |t| run(t, None).0,
        |t, d| run(t, Some(d)).1,
    );
}

#[test]
fn attention_core_softmax() {
    let heads = attention::Heads {
        batch: 2,
        tokens: 5,
        channels: 6,
        heads: 2,
    };
    let n = 2 * 5 * 6;
    let theta = vec![randn(1, n, 1.0), randn(2, n, 1.0), randn(3, n, 1.0)];
    let fwd = |t: &[Vec<f32>]| {
        let mut probs = vec![0.0; heads.probs_len()];
        let mut out = vec![0.0; n];
        attention::core_forward(heads, &t[0], &t[1], &t[2], &mut probs, &mut out);
        out
    };
    let bwd = |t: &[Vec<f32>], d: &[f32]| {
        let mut probs = vec![0.0; heads.probs_len()];
        let mut out = vec![0.0; n];
        attention::core_forward(heads, &t[0], &t[1], &t[2], &mut probs, &mut out);
        let mut g: Vec<Vec<f32>> = t.iter().map(|v| vec![0.0; v.len()]).collect();
        let mut row = vec![0.0; 5];
        let [dq, dk, dv] = &mut g[..] else {
            unreachable!()
        };
        attention::core_backward(heads, &t[0], &t[1], &t[2], &probs, d, dq, dk, dv, &mut row);
        g
    };
    check(
        "attention core (softmax)",
        &theta,
        &["q", "k", "v"],
        fwd,
        bwd,
    );
}

#[test]
fn attention_block_norm_qkv_out_residual() {
    let (batch, tokens, channels, h, groups) = (2, 6, 8, 2, 2);
    let c2 = channels * channels;
    let theta = vec![
        randn(1, batch * tokens * channels, 1.0),
        randn(2, channels, 0.2).iter().map(|v| v + 1.0).collect(),
        randn(3, channels, 0.2),
        randn(4, c2, 0.4),
        randn(5, channels, 0.1),
        randn(6, c2, 0.4),
        randn(7, channels, 0.1),
        randn(8, c2, 0.4),
        randn(9, channels, 0.1),
        randn(10, c2, 0.4),
        randn(11, channels, 0.1),
    ];
    let heads = attention::Heads {
        batch,
        tokens,
        channels,
        heads: h,
    };
    let dims = (batch, tokens, channels, h, groups);
    let names = [
        "input", "norm.w", "norm.b", "q.w", "q.b", "k.w", "k.b", "v.w", "v.b", "o.w", "o.b",
    ];
    check(
        "attention block",
        &theta,
        &names,
        |t| attention_block(t, None, dims, heads).0,
        |t, d| attention_block(t, Some(d), dims, heads).1,
    );
}

/// The attention block as the op list spells it: GroupNorm, the Q/K/V projections, the
/// attention core, the output projection with the residual and the rescale (1.5); the
/// backward in reverse order, each layer's own.
fn attention_block(
    t: &[Vec<f32>],
    d: Option<&[f32]>,
    (batch, tokens, channels, h, groups): (usize, usize, usize, usize, usize),
    heads: attention::Heads,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let n = batch * tokens * channels;
    let norm = group_norm::GroupNorm {
        batch,
        pixels: tokens,
        in_ca: channels,
        in_cb: 0,
        groups,
        eps: 1e-5,
        in_a: &t[0],
        in_b: &[],
        gamma: &t[1],
        beta: &t[2],
        silu: false,
    };
    let proj = |input: &'_ [f32], w: usize, residual: &'_ [f32], out_scale: f32| -> Vec<f32> {
        let mut out = vec![0.0; n];
        let args = linear::Linear {
            rows: batch * tokens,
            in_f: channels,
            out_f: channels,
            input,
            weight: &t[w],
            bias: &t[w + 1],
            residual,
            out_scale,
        };
        linear::forward(&args, &mut out);
        out
    };
    let mut stats = vec![0.0; batch * group_norm::saved_len(groups)];
    let mut normed = vec![0.0; n];
    group_norm::forward(&norm, &mut normed, &mut stats);
    let (q, k, v) = (
        proj(&normed, 3, &[], 1.0),
        proj(&normed, 5, &[], 1.0),
        proj(&normed, 7, &[], 1.0),
    );
    let mut probs = vec![0.0; batch * attention::saved_len(tokens, h)];
    let mut attended = vec![0.0; n];
    attention::core_forward(heads, &q, &k, &v, &mut probs, &mut attended);
    let out = proj(&attended, 9, &t[0], 1.5);
    let mut g: Vec<Vec<f32>> = t.iter().map(|v| vec![0.0; v.len()]).collect();
    let Some(d) = d else {
        return (out, g);
    };
    let [gi, nw, nb, qw, qb, kw, kb, vw, vb, ow, ob] = &mut g[..] else {
        unreachable!()
    };
    let back = |input: &[f32],
                w: usize,
                residual: &[f32],
                out_scale: f32,
                dy: &[f32],
                grads: linear::LinearGrads<'_>| {
        let args = linear::Linear {
            rows: batch * tokens,
            in_f: channels,
            out_f: channels,
            input,
            weight: &t[w],
            bias: &t[w + 1],
            residual,
            out_scale,
        };
        linear::backward(&args, dy, grads);
    };
    let mut d_attended = vec![0.0; n];
    back(
        &attended,
        9,
        &t[0],
        1.5,
        d,
        linear::LinearGrads {
            input: &mut d_attended,
            weight: ow,
            bias: ob,
            residual: &mut *gi,
        },
    );
    let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    attention::core_backward(
        heads,
        &q,
        &k,
        &v,
        &probs,
        &d_attended,
        &mut dq,
        &mut dk,
        &mut dv,
        &mut [],
    );
    let mut d_normed = vec![0.0; n];
    for (w, dy, dw, db) in [(3, &dq, qw, qb), (5, &dk, kw, kb), (7, &dv, vw, vb)] {
        let grads = linear::LinearGrads {
            input: &mut d_normed,
            weight: dw,
            bias: db,
            residual: &mut [],
        };
        back(&normed, w, &[], 1.0, dy, grads);
    }
    group_norm::backward(
        &norm,
        &stats,
        &mut d_normed,
        group_norm::GroupNormGrads {
            in_a: gi,
            in_b: &mut [],
            gamma: nw,
            beta: nb,
        },
    );
    (out, g)
}

fn fir_case(name: &str, up: bool, (h, w): (usize, usize)) {
    let (batch, c) = (2, 3);
    let theta = vec![randn(31, batch * h * w * c, 1.0)];
    let out_len = if up { 4 * h * w * c } else { h * w * c / 4 } * batch;
    let fwd = |t: &[Vec<f32>]| {
        let mut o = vec![0.0; out_len];
        let args = FirArgs {
            batch,
            channels: c,
            in_h: h,
            in_w: w,
            up,
            input: &t[0],
        };
        ncsnpp::fir_forward(&args, &mut o);
        o
    };
    let bwd = |t: &[Vec<f32>], d: &[f32]| {
        let mut g = vec![0.0; t[0].len()];
        ncsnpp::fir_backward(batch, c, (h, w), up, d, &mut g);
        vec![g]
    };
    check(name, &theta, &["x"], fwd, bwd);
}

#[test]
fn fir_downsample() {
    fir_case("fir_resample down", false, (6, 4));
}

#[test]
fn fir_upsample() {
    fir_case("fir_resample up", true, (3, 5));
}

#[test]
fn fir_constant_image_keeps_its_value_inside() {
    // The kernel is normalised: away from the zero-padded border a constant stays constant.
    let (h, w, c) = (8, 8, 2);
    let input = vec![1.5f32; h * w * c];
    for up in [false, true] {
        let args = FirArgs {
            batch: 1,
            channels: c,
            in_h: h,
            in_w: w,
            up,
            input: &input,
        };
        let (oh, ow) = if up { (16, 16) } else { (4, 4) };
        let mut out = vec![0.0; oh * ow * c];
        ncsnpp::fir_forward(&args, &mut out);
        let v = out[((oh / 2) * ow + ow / 2) * c];
        assert_eq!(v, 1.5, "up {up}");
    }
}

#[test]
fn timestep_divide() {
    let per = 10;
    let t = [0.01f32, 1.0, 50.0];
    let theta = vec![randn(41, 3 * per, 1.0)];
    let fwd = |th: &[Vec<f32>]| {
        let mut o = vec![0.0; th[0].len()];
        ncsnpp::timestep_divide_forward(&th[0], &t, per, &mut o);
        o
    };
    let bwd = |th: &[Vec<f32>], d: &[f32]| {
        let mut g = vec![0.0; th[0].len()];
        ncsnpp::timestep_divide_backward(d, &t, per, &mut g);
        vec![g]
    };
    check("timestep_divide", &theta, &["x"], fwd, bwd);
}

#[test]
fn scale_shift_adagn() {
    let (batch, pixels, c) = (2, 5, 3);
    for silu in [true, false] {
        let theta = vec![
            randn(1, batch * pixels * c, 1.5),
            randn(2, batch * 2 * c, 0.5),
        ];
        let fwd = |t: &[Vec<f32>]| {
            let mut o = vec![0.0; t[0].len()];
            resample::scale_shift_forward(&t[0], &t[1], batch, pixels, c, silu, &mut o);
            o
        };
        let bwd = |t: &[Vec<f32>], d: &[f32]| {
            let (mut dx, mut dss) = (vec![0.0; t[0].len()], vec![0.0; t[1].len()]);
            resample::scale_shift_backward(
                &t[0], &t[1], batch, pixels, c, silu, d, &mut dx, &mut dss,
            );
            vec![dx, dss]
        };
        let name = if silu {
            "scale_shift+silu"
        } else {
            "scale_shift"
        };
        check(name, &theta, &["x", "scale_shift"], fwd, bwd);
    }
}

#[test]
fn avg_pool_and_nearest_upsample() {
    let (batch, h, w, c) = (2, 4, 6, 3);
    let theta = vec![randn(3, batch * h * w * c, 1.0)];
    let fwd = |t: &[Vec<f32>]| {
        let mut o = vec![0.0; t[0].len() / 4];
        resample::avg_pool2(&t[0], batch, h, w, c, &mut o);
        o
    };
    let bwd = |t: &[Vec<f32>], d: &[f32]| {
        let mut g = vec![0.0; t[0].len()];
        resample::avg_pool2_backward(d, batch, h, w, c, &mut g);
        vec![g]
    };
    check("avg_pool2", &theta, &["x"], fwd, bwd);
    let fwd = |t: &[Vec<f32>]| {
        let mut o = vec![0.0; t[0].len() * 4];
        resample::nearest2(&t[0], batch, h, w, c, &mut o);
        o
    };
    let bwd = |t: &[Vec<f32>], d: &[f32]| {
        let mut g = vec![0.0; t[0].len()];
        resample::nearest2_backward(d, batch, h, w, c, &mut g);
        vec![g]
    };
    check("nearest2", &theta, &["x"], fwd, bwd);
}

#[test]
fn resnet_activations_mish_gelu_relu() {
    use tinydiffusion::model::forward::activation as act_forward;
    use tinydiffusion::model::Activation;
    // Away from relu's kink at 0 (the finite difference straddles it there).
    let mut x = randn(4, 60, 3.0);
    x.iter_mut()
        .filter(|v| v.abs() < 0.05)
        .for_each(|v| *v += 0.1);
    for (act, name) in [
        (Activation::Mish, "mish"),
        (Activation::Gelu, "gelu"),
        (Activation::Relu, "relu"),
        (Activation::Silu, "silu (act)"),
    ] {
        let theta = vec![x.clone()];
        let fwd = |t: &[Vec<f32>]| {
            let mut o = vec![0.0; t[0].len()];
            act_forward(act, &t[0], &mut o);
            o
        };
        let bwd = |t: &[Vec<f32>], d: &[f32]| {
            let mut g = vec![0.0; t[0].len()];
            activation::act_backward(act, &t[0], d, &mut g);
            vec![g]
        };
        check(name, &theta, &["x"], fwd, bwd);
    }
}

#[test]
fn class_vector_identity_embedding() {
    use tinydiffusion::train::layers::embedding as emb;
    // The embeddings are inputs (no gradient); the time embedding's passes through.
    let (input, vectors) = (randn(21, 24, 1.0), randn(22, 24, 1.0));
    let theta = vec![input];
    let fwd = |t: &[Vec<f32>]| {
        let mut o = vec![0.0; t[0].len()];
        emb::class_vector_forward(&t[0], &vectors, &mut o);
        o
    };
    let bwd = |t: &[Vec<f32>], d: &[f32]| {
        let mut g = vec![0.0; t[0].len()];
        emb::class_vector_backward(d, &mut g);
        vec![g]
    };
    check("class_vector", &theta, &["temb"], fwd, bwd);
}

#[test]
fn dropout_fixed_mask() {
    use tinydiffusion::train::layers::dropout;
    let x = randn(23, 64, 1.0);
    let mut draws = Stream::new(4, Purpose::Dropout, 0);
    let mut mask = vec![0.0; x.len()];
    dropout::draw(0.3, &mut draws, &mut mask);
    let kept = mask.iter().filter(|&&m| m != 0.0).count();
    assert!(kept > 0 && kept < mask.len());
    assert!(mask.iter().all(|&m| m == 0.0 || m == 1.0 / 0.7));
    let theta = vec![x];
    let fwd = |t: &[Vec<f32>]| {
        let mut o = t[0].clone();
        dropout::forward(&mask, &mut o);
        o
    };
    let bwd = |_: &[Vec<f32>], d: &[f32]| {
        let mut g = d.to_vec();
        dropout::backward(&mask, &mut g);
        vec![g]
    };
    check("dropout", &theta, &["x"], fwd, bwd);
}
