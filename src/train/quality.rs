//! Sample quality: a Fréchet distance between the feature statistics of generated and held-out
//! images (the FID construction of Heusel et al. 2017, with a small MNIST classifier in place
//! of Inception).
//!
//! - [`Classifier`]: an MLP `pixels → hidden (ReLU) → 10`, trained on labelled images with
//!   cross-entropy and Adam, hand-written backprop on the trainer's [`linear`] layer, seeded
//!   (the same seed gives the same weights on every machine).
//! - Features: the hidden layer (after ReLU) of [`Classifier::features`].
//! - [`frechet_distance`]: `|m1 - m2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`, in f64,
//!   the matrix square roots through symmetric eigendecompositions (cyclic Jacobi, [`sym_eigen`]).
//!
//! The value is only comparable between runs that use the same classifier (seed, data,
//! options) and the same reference images; it is small-sample biased upwards, so compare sets
//! of equal size.

use super::data::Dataset;
use super::layers::linear::{self, Linear, LinearGrads};
use super::rng::{permutation, Purpose, Stream};
use crate::error::{invalid_arg, Result};

/// Training options of the feature classifier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassifierOptions {
    pub hidden: usize,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub seed: u64,
}

impl Default for ClassifierOptions {
    fn default() -> ClassifierOptions {
        ClassifierOptions {
            hidden: 256,
            epochs: 6,
            batch: 64,
            lr: 1e-3,
            seed: 0,
        }
    }
}

/// The MLP: `W1 [hidden, pixels]`, `W2 [10, hidden]` (diffusers' `[out, in]` layout).
#[derive(Debug, Clone)]
pub struct Classifier {
    pub pixels: usize,
    pub hidden: usize,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

const CLASSES: usize = 10;

impl Classifier {
    /// Trains on `data` (labels 0..9 required). A few seconds per epoch on one core for
    /// 9000 MNIST images.
    pub fn train(data: &Dataset, opts: ClassifierOptions) -> Result<Classifier> {
        let labels = data
            .labels
            .as_ref()
            .ok_or_else(|| invalid_arg("classifier data", "needs class labels"))?;
        if labels.iter().any(|&l| !(0..CLASSES as i64).contains(&l)) {
            return Err(invalid_arg("classifier data", "labels must be 0..9"));
        }
        if data.is_empty() || opts.batch == 0 || opts.hidden == 0 {
            return Err(invalid_arg(
                "classifier",
                "empty data, batch or hidden layer",
            ));
        }
        let (p, hd) = (data.sample_len(), opts.hidden);
        let mut init = Stream::new(opts.seed, Purpose::Init, 0);
        let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
            // He-uniform: variance 2 / fan_in, for the ReLU layer.
            let bound = (6.0 / fan_in as f64).sqrt();
            (0..n)
                .map(|_| ((init.uniform() * 2.0 - 1.0) * bound) as f32)
                .collect()
        };
        let mut c = Classifier {
            pixels: p,
            hidden: hd,
            w1: uniform(hd * p, p),
            b1: vec![0.0; hd],
            w2: uniform(CLASSES * hd, hd),
            b2: vec![0.0; CLASSES],
        };
        let sizes = [hd * p, hd, CLASSES * hd, CLASSES];
        let mut m: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        let mut v: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        let bs = opts.batch;
        let mut x = vec![0.0f32; bs * p];
        let mut h = vec![0.0f32; bs * hd];
        let mut logits = vec![0.0f32; bs * CLASSES];
        let mut dlogits = vec![0.0f32; bs * CLASSES];
        let mut dh = vec![0.0f32; bs * hd];
        let mut g: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        let mut step = 0i32;
        for epoch in 0..opts.epochs {
            let order = permutation(opts.seed, epoch as u64, data.len());
            for chunk in order.chunks(bs) {
                let rows = chunk.len();
                for (r, &i) in chunk.iter().enumerate() {
                    for (d, &v) in x[r * p..(r + 1) * p]
                        .iter_mut()
                        .zip(&data.images[i * p..(i + 1) * p])
                    {
                        *d = prep(v);
                    }
                }
                c.forward(
                    &x[..rows * p],
                    rows,
                    &mut h[..rows * hd],
                    &mut logits[..rows * CLASSES],
                );
                // Softmax cross-entropy: dlogits = (softmax - onehot) / rows.
                for (r, &i) in chunk.iter().enumerate() {
                    let l = &logits[r * CLASSES..(r + 1) * CLASSES];
                    let d = &mut dlogits[r * CLASSES..(r + 1) * CLASSES];
                    softmax(l, d);
                    d[labels[i] as usize] -= 1.0;
                    for v in d.iter_mut() {
                        *v /= rows as f32;
                    }
                }
                for gi in g.iter_mut() {
                    gi.fill(0.0);
                }
                dh[..rows * hd].fill(0.0);
                let (g1, rest) = g.split_at_mut(1);
                let (gb1, rest) = rest.split_at_mut(1);
                let (g2, gb2) = rest.split_at_mut(1);
                linear::backward(
                    &Linear {
                        rows,
                        in_f: hd,
                        out_f: CLASSES,
                        input: &h[..rows * hd],
                        weight: &c.w2,
                        bias: &c.b2,
                        residual: &[],
                        out_scale: 1.0,
                    },
                    &dlogits[..rows * CLASSES],
                    LinearGrads {
                        input: &mut dh[..rows * hd],
                        weight: &mut g2[0],
                        bias: &mut gb2[0],
                        residual: &mut [],
                    },
                );
                // ReLU backward.
                for (d, &a) in dh[..rows * hd].iter_mut().zip(&h[..rows * hd]) {
                    if a <= 0.0 {
                        *d = 0.0;
                    }
                }
                linear::backward(
                    &Linear {
                        rows,
                        in_f: p,
                        out_f: hd,
                        input: &x[..rows * p],
                        weight: &c.w1,
                        bias: &c.b1,
                        residual: &[],
                        out_scale: 1.0,
                    },
                    &dh[..rows * hd],
                    LinearGrads {
                        input: &mut [],
                        weight: &mut g1[0],
                        bias: &mut gb1[0],
                        residual: &mut [],
                    },
                );
                step += 1;
                let params: [&mut Vec<f32>; 4] = [&mut c.w1, &mut c.b1, &mut c.w2, &mut c.b2];
                for (k, w) in params.into_iter().enumerate() {
                    adam(w, &g[k], &mut m[k], &mut v[k], opts.lr, step);
                }
            }
        }
        Ok(c)
    }

    /// Hidden activations and logits of `rows` images.
    fn forward(&self, x: &[f32], rows: usize, h: &mut [f32], logits: &mut [f32]) {
        linear::forward(
            &Linear {
                rows,
                in_f: self.pixels,
                out_f: self.hidden,
                input: x,
                weight: &self.w1,
                bias: &self.b1,
                residual: &[],
                out_scale: 1.0,
            },
            h,
        );
        for v in h.iter_mut() {
            *v = v.max(0.0);
        }
        linear::forward(
            &Linear {
                rows,
                in_f: self.hidden,
                out_f: CLASSES,
                input: h,
                weight: &self.w2,
                bias: &self.b2,
                residual: &[],
                out_scale: 1.0,
            },
            logits,
        );
    }

    /// Penultimate-layer features `[n, hidden]` of `images` (`[n, pixels]` in [-1, 1]; values
    /// outside are clamped first, as an image file would hold them).
    pub fn features(&self, images: &[f32]) -> Vec<f32> {
        let n = images.len() / self.pixels;
        let mut feats = vec![0.0f32; n * self.hidden];
        let mut logits = vec![0.0f32; 256 * CLASSES];
        let mut x = vec![0.0f32; 256 * self.pixels];
        for (k, chunk) in images.chunks(256 * self.pixels).enumerate() {
            let rows = chunk.len() / self.pixels;
            for (d, &s) in x.iter_mut().zip(chunk) {
                *d = prep(s);
            }
            let f = &mut feats[k * 256 * self.hidden..][..rows * self.hidden];
            self.forward(
                &x[..rows * self.pixels],
                rows,
                f,
                &mut logits[..rows * CLASSES],
            );
        }
        feats
    }

    /// Predicted classes of `images`.
    pub fn predict(&self, images: &[f32]) -> Vec<usize> {
        let n = images.len() / self.pixels;
        let mut h = vec![0.0f32; self.hidden];
        let mut logits = [0.0f32; CLASSES];
        (0..n)
            .map(|i| {
                let x: Vec<f32> = images[i * self.pixels..(i + 1) * self.pixels]
                    .iter()
                    .map(|&v| prep(v))
                    .collect();
                self.forward(&x, 1, &mut h, &mut logits);
                (0..CLASSES)
                    .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Fraction of `data` classified correctly.
    pub fn accuracy(&self, data: &Dataset) -> f64 {
        let Some(labels) = &data.labels else {
            return f64::NAN;
        };
        let pred = self.predict(&data.images);
        let ok = pred
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p as i64 == **l)
            .count();
        ok as f64 / labels.len().max(1) as f64
    }
}

/// The classifier's input: the image value clamped to [-1, 1] (as an image file holds it)
/// and mapped to [0, 1], so that the background is 0.
#[inline]
fn prep(v: f32) -> f32 {
    (v.clamp(-1.0, 1.0) + 1.0) * 0.5
}

fn softmax(l: &[f32], out: &mut [f32]) {
    let mx = l.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sum = 0.0f32;
    for (o, &v) in out.iter_mut().zip(l) {
        *o = (v - mx).exp();
        sum += *o;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

fn adam(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], lr: f32, step: i32) {
    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let c1 = 1.0 - b1.powi(step);
    let c2 = 1.0 - b2.powi(step);
    for i in 0..w.len() {
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        w[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
    }
}

/// Mean and covariance of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    pub dim: usize,
    pub count: usize,
    pub mean: Vec<f64>,
    /// `[dim, dim]`, row-major, unbiased (divided by count - 1).
    pub cov: Vec<f64>,
}

impl FeatureStats {
    /// Statistics of `features` (`[n, dim]`, n >= 2).
    pub fn of(features: &[f32], dim: usize) -> Result<FeatureStats> {
        let n = features.len() / dim.max(1);
        if dim == 0 || n < 2 || features.len() != n * dim {
            return Err(invalid_arg(
                "features",
                "need at least 2 rows of dim values",
            ));
        }
        let mut mean = vec![0.0f64; dim];
        for row in features.chunks_exact(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        for m in mean.iter_mut() {
            *m /= n as f64;
        }
        let mut cov = vec![0.0f64; dim * dim];
        let mut c = vec![0.0f64; dim];
        for row in features.chunks_exact(dim) {
            for (ci, (&v, &m)) in c.iter_mut().zip(row.iter().zip(&mean)) {
                *ci = v as f64 - m;
            }
            for i in 0..dim {
                let ci = c[i];
                if ci == 0.0 {
                    continue;
                }
                let r = &mut cov[i * dim..(i + 1) * dim];
                for (o, &cj) in r.iter_mut().zip(&c) {
                    *o += ci * cj;
                }
            }
        }
        for v in cov.iter_mut() {
            *v /= (n - 1) as f64;
        }
        Ok(FeatureStats {
            dim,
            count: n,
            mean,
            cov,
        })
    }
}

/// Eigendecomposition of the symmetric `n x n` matrix `a` (row-major; destroyed) by cyclic
/// Jacobi rotations: returns the eigenvalues and the eigenvectors as the columns of a
/// row-major `n x n` matrix.
pub fn sym_eigen(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let frob: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * frob.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A <- J^T A J on rows/columns p and q.
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// `V f(L) V^T` for a symmetric matrix with eigen-decomposition (L, V), f applied to each
/// eigenvalue clamped at 0.
fn sym_apply(vals: &[f64], vecs: &[f64], n: usize, f: impl Fn(f64) -> f64) -> Vec<f64> {
    let fl: Vec<f64> = vals.iter().map(|&l| f(l.max(0.0))).collect();
    let mut out = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            let mut s = 0.0;
            for k in 0..n {
                s += vecs[i * n + k] * fl[k] * vecs[j * n + k];
            }
            out[i * n + j] = s;
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            if aik == 0.0 {
                continue;
            }
            let (row, bk) = (&mut out[i * n..(i + 1) * n], &b[k * n..(k + 1) * n]);
            for (o, &bv) in row.iter_mut().zip(bk) {
                *o += aik * bv;
            }
        }
    }
    out
}

/// The Fréchet distance between the Gaussians fitted to two feature sets:
/// `|m1 - m2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2`.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> f64 {
    let n = a.dim;
    assert_eq!(n, b.dim, "feature dimensions differ");
    let dm: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    let tr = |m: &[f64]| (0..n).map(|i| m[i * n + i]).sum::<f64>();
    let (vals, vecs) = sym_eigen(&mut a.cov.clone(), n);
    let root_a = sym_apply(&vals, &vecs, n, f64::sqrt);
    let mut m = matmul(&matmul(&root_a, &b.cov, n), &root_a, n);
    // Symmetrize rounding before the second decomposition.
    for i in 0..n {
        for j in i + 1..n {
            let s = 0.5 * (m[i * n + j] + m[j * n + i]);
            m[i * n + j] = s;
            m[j * n + i] = s;
        }
    }
    let (mv, _) = sym_eigen(&mut m, n);
    let tr_sqrt: f64 = mv.iter().map(|&l| l.max(0.0).sqrt()).sum();
    (dm + tr(&a.cov) + tr(&b.cov) - 2.0 * tr_sqrt).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_diagonalizes() {
        let mut a = vec![4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 1.0];
        let orig = a.clone();
        let (vals, vecs) = sym_eigen(&mut a, 3);
        let back = sym_apply(&vals, &vecs, 3, |x| x);
        for (x, y) in back.iter().zip(&orig) {
            assert!((x - y).abs() < 1e-12, "{back:?}");
        }
        let tr: f64 = vals.iter().sum();
        assert!((tr - 8.0).abs() < 1e-12);
    }

    #[test]
    fn frechet_of_gaussians_in_closed_form() {
        // Diagonal covariances: FD = |dm|^2 + sum (sqrt(s1) - sqrt(s2))^2.
        let d = 3;
        let a = FeatureStats {
            dim: d,
            count: 10,
            mean: vec![0.0, 1.0, 2.0],
            cov: vec![1.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 9.0],
        };
        let b = FeatureStats {
            dim: d,
            count: 10,
            mean: vec![1.0, 1.0, 2.0],
            cov: vec![4.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 1.0],
        };
        let fd = frechet_distance(&a, &b);
        assert!((fd - (1.0 + 1.0 + 0.0 + 4.0)).abs() < 1e-10, "{fd}");
        assert!(frechet_distance(&a, &a).abs() < 1e-10);
    }
}
