//! Likelihood: the variational bound on `-log p(x_0)` in bits/dim (Ho et al. 2020, eq. 5):
//!
//! `L = L_T + sum_{t=2}^{T} L_{t-1} + L_0`, with
//! - `L_T = KL(q(x_T | x_0) || N(0, I))` (no model),
//! - `L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))` for each `t`, at one draw of
//!   `x_t ~ q(x_t | x_0)` (the bound's expectation over `x_t`, estimated by one sample),
//! - `L_0 = -log p(x_0 | x_1)` under the discretized Gaussian decoder (256 bins on [-1, 1]),
//!
//! all divided by `ln 2` and the number of dimensions. In diffusers' 0-based timesteps the
//! model term at timestep `s` is [`vlb_term`] with `t = s` (`s = 0` is the decoder).
//!
//! Over all `T` timesteps the sum is exact per draw; with `K < T` timesteps per image it is
//! estimated without bias by stratified sampling: the timesteps are cut into `K` equal strata,
//! one timestep drawn uniformly in each, its term weighted by the stratum's size.

use super::data::Dataset;
use super::graph::{TrainGraph, TrainWorkspace};
use super::loss::{check_prediction, vlb_term, Batch, NoiseSchedule, Variance};
use super::rng::{Purpose, Stream};
use crate::error::Result;
use crate::schedule::PredictionType;

/// The bound of a set of images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nll {
    /// Mean over images of the full bound, bits/dim.
    pub bits_per_dim: f64,
    /// Mean prior term `L_T`.
    pub prior: f64,
    /// Mean decoder term `L_0` (exact only when every timestep is evaluated, else its share of
    /// the estimate).
    pub decoder: f64,
    /// Standard error of `bits_per_dim` over images.
    pub std_err: f64,
    pub images: usize,
    pub timesteps_per_image: usize,
}

/// `L_T` of one image in bits/dim: `KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1))` per dim.
pub fn prior_bpd(sched: &NoiseSchedule, x0: &[f32]) -> f64 {
    let abar = sched.alphas_cumprod[sched.steps() - 1];
    let var = 1.0 - abar;
    let kl: f64 = x0
        .iter()
        .map(|&x| {
            let mean = abar.sqrt() * x as f64;
            0.5 * (-1.0 - libm::log(var) + var + mean * mean)
        })
        .sum();
    kl / (x0.len() as f64 * core::f64::consts::LN_2)
}

/// The bound for images `0..data.len()` with `timesteps_per_image` model terms each (`T` for
/// the exact sum over timesteps). Class-conditional models are evaluated with each image's
/// label (a conditional likelihood).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    graph: &TrainGraph,
    params: &[f32],
    ws: &mut TrainWorkspace,
    data: &Dataset,
    sched: &NoiseSchedule,
    pred: PredictionType,
    variance: Variance,
    timesteps_per_image: usize,
    seed: u64,
    mut progress: impl FnMut(usize, usize),
) -> Result<Nll> {
    check_prediction(pred)?;
    let big_t = sched.steps();
    let k = timesteps_per_image.clamp(1, big_t);
    let batch = ws.batch();
    let sample = data.sample_len();
    let pixels = data.height * data.width;
    // Jobs: (image, timestep, weight), in a fixed order.
    let mut jobs: Vec<(usize, usize, f64)> = Vec::with_capacity(data.len() * k);
    for img in 0..data.len() {
        let mut rng = Stream::new(seed, Purpose::Timestep, img as u64);
        for s in 0..k {
            let (lo, hi) = (s * big_t / k, (s + 1) * big_t / k);
            let t = lo + rng.below((hi - lo) as u64) as usize;
            jobs.push((img, t, (hi - lo) as f64));
        }
    }
    let mut per_image = alloc::vec![0.0f64; data.len()];
    let mut decoder = 0.0;
    let (mut x0, mut eps, mut x_t) = (
        alloc::vec![0.0f32; batch * sample],
        alloc::vec![0.0f32; batch * sample],
        alloc::vec![0.0f32; batch * sample],
    );
    let (mut t, mut tf, mut labels) = (
        alloc::vec![0usize; batch],
        alloc::vec![0.0f32; batch],
        alloc::vec![0i64; batch],
    );
    let mut done = 0;
    for chunk in jobs.chunks(batch) {
        // A short last chunk is padded by repeating its first job (ignored below).
        for slot in 0..batch {
            let (img, ts, _) = chunk[slot.min(chunk.len() - 1)];
            data.copy_sample(img, false, &mut x0[slot * sample..(slot + 1) * sample]);
            if let Some(l) = &data.labels {
                labels[slot] = l[img];
            }
            t[slot] = ts;
            tf[slot] = ts as f32;
            let mut noise = Stream::new(seed, Purpose::Noise, ((img as u64) << 20) | ts as u64);
            let abar = sched.alphas_cumprod[ts];
            for i in slot * sample..(slot + 1) * sample {
                eps[i] = noise.gaussian() as f32;
                x_t[i] = (abar.sqrt() * x0[i] as f64 + (1.0 - abar).sqrt() * eps[i] as f64) as f32;
            }
        }
        let lab = if data.labels.is_some() && graph.class_conditional() {
            Some(&labels[..])
        } else {
            None
        };
        graph.forward(params, ws, &x_t, &tf, lab)?;
        let b = Batch {
            channels: data.channels,
            pixels,
            x0: &x0,
            eps: &eps,
            x_t: &x_t,
            timesteps: &t,
        };
        for (slot, &(img, ts, weight)) in chunk.iter().enumerate() {
            let term = weight * vlb_term(sched, pred, variance, &b, slot, &ws.out, None, 0.0)?;
            per_image[img] += term;
            if ts == 0 {
                decoder += term;
            }
        }
        done += chunk.len();
        progress(done, jobs.len());
    }
    let n = data.len() as f64;
    let mut prior = 0.0;
    for (img, v) in per_image.iter_mut().enumerate() {
        let p = prior_bpd(sched, &data.images[img * sample..(img + 1) * sample]);
        prior += p;
        *v += p;
    }
    let mean = per_image.iter().sum::<f64>() / n;
    let var = per_image
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum::<f64>()
        / (n - 1.0).max(1.0);
    Ok(Nll {
        bits_per_dim: mean,
        prior: prior / n,
        decoder: decoder / n,
        std_err: (var / n).sqrt(),
        images: data.len(),
        timesteps_per_image: k,
    })
}
