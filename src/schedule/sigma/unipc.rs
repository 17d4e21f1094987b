//! `UniPCMultistepScheduler`'s step (UniP predictor, UniC corrector).

use super::{convert_model_output, SigmaScheduler};
use crate::schedule::config::UniPcSolver;

impl SigmaScheduler {
    /// UniPC step `i`: convert the model output, correct the previous step's result with it
    /// (UniC, unless disabled), then predict the next sample (UniP). Coefficients as
    /// diffusers' `multistep_uni_c_bh_update` / `multistep_uni_p_bh_update`, in f64.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn unipc_step(
        &self,
        i: usize,
        per: usize,
        stride: usize,
        batch: usize,
        model_output: &[f32],
        sample: &mut [f32],
        history: &mut [f32],
    ) {
        let c = &self.cfg;
        let n = per * batch;
        let slots = c.solver_order + 1;
        let slot = |j: usize| (j % slots) * n;
        let x0 = c.predict_x0;
        // convert_model_output (from the uncorrected sample) into this step's slot.
        let (a0, s0) = self.alpha_sigma(self.sigmas[i]);
        let here = slot(i);
        convert_model_output(
            x0,
            c.prediction_type,
            (a0, s0),
            sample,
            model_output,
            (per, stride),
            &mut history[here..here + n],
        );
        if self.thresholds() {
            self.threshold_slot(here, (n, per), history, None);
        }
        let (outs, last) = history.split_at_mut(slots * n);
        let last = &mut last[..n];
        // Corrector: from the last sample at sigma_{i-1}, with the order step i-1 predicted with.
        if i > 0 && !c.disable_corrector.contains(&(i - 1)) {
            let order = self.order_at(i - 1);
            let co = self.unipc_coeffs(i - 1, order, true);
            let m0 = slot(i - 1);
            for k in 0..n {
                let m0k = outs[m0 + k] as f64;
                let mut v = co.cx * last[k] as f64 + co.c0 * m0k;
                for j in 1..order {
                    let mj = outs[slot(i - 1 - j) + k] as f64;
                    v += co.cd[j - 1] * (mj - m0k);
                }
                v += co.ct * (outs[here + k] as f64 - m0k);
                sample[k] = v as f32;
            }
        }
        // Predictor from the (corrected) sample at sigma_i.
        last.copy_from_slice(&sample[..n]);
        let order = self.order_at(i);
        let co = self.unipc_coeffs(i, order, false);
        for k in 0..n {
            let m0k = outs[here + k] as f64;
            let mut v = co.cx * last[k] as f64 + co.c0 * m0k;
            for j in 1..order {
                let mj = outs[slot(i - j) + k] as f64;
                v += co.cd[j - 1] * (mj - m0k);
            }
            sample[k] = v as f32;
        }
    }

    /// The UniP (`corrector` false) or UniC (true) update from sigma_s to sigma_{s+1} of
    /// `order`, as x_t = cx x + c0 m0 + sum_j cd_j (m_{s-j} - m0) [+ ct (m_t - m0)].
    ///
    /// The scalars are float32 as in diffusers (0-d float32 tensors): near the last step the
    /// update cancels (x against sigma * eps), and their rounding shows in the result.
    fn unipc_coeffs(&self, s: usize, order: usize, corrector: bool) -> UniCoeffs {
        let c = &self.cfg;
        let sg = |j: usize| self.sigmas[j] as f32;
        let (at, st) = self.alpha_sigma32(sg(s + 1));
        let (a0, s0) = self.alpha_sigma32(sg(s));
        let l0 = self.lambda32(sg(s));
        let h = self.lambda32(sg(s + 1)) - l0;
        // rks: (lambda_{s-j} - lambda_s) / h for j = 1..order-1, then 1.
        let mut rks = [1.0f32; 3];
        for j in 1..order {
            rks[j - 1] = (self.lambda32(sg(s - j)) - l0) / h;
        }
        rks[order - 1] = 1.0;
        let hh = if c.predict_x0 { -h } else { h };
        let h_phi_1 = libm::expm1f(hh);
        let b_h = match c.unipc_solver {
            UniPcSolver::Bh1 => hh,
            UniPcSolver::Bh2 => h_phi_1,
        };
        let mut b = [0.0f32; 3];
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1u32;
        for (j, bj) in b.iter_mut().enumerate().take(order) {
            *bj = h_phi_k * factorial as f32 / b_h;
            factorial *= j as u32 + 2;
            h_phi_k = h_phi_k / hh - (1.0 / factorial as f64) as f32;
        }
        // rhos: the predictor solves the (order-1)-square system, the corrector the full one.
        let m = if corrector { order } else { order - 1 };
        let mut rhos = [0.0f64; 3];
        if (corrector && order == 1) || (!corrector && order == 2) {
            rhos[0] = 0.5;
        } else if m > 0 {
            // R[r][col] = rks[col]^r
            let mut a = [[0.0f64; 4]; 3];
            for (r, row) in a.iter_mut().enumerate().take(m) {
                for col in 0..m {
                    row[col] = match r {
                        0 => 1.0,
                        1 => rks[col],
                        _ => rks[col] * rks[col],
                    } as f64;
                }
                row[3] = b[r] as f64;
            }
            solve(&mut a, m, &mut rhos);
            // torch.linalg.solve in float32.
            for r in rhos.iter_mut() {
                *r = *r as f32 as f64;
            }
        }
        let (cx, scale, c0) = if c.predict_x0 {
            (st / s0, -(at * b_h), -(at * h_phi_1))
        } else {
            (at / a0, -(st * b_h), -(st * h_phi_1))
        };
        let (cx, scale, c0) = (cx as f64, scale as f64, c0 as f64);
        let mut cd = [0.0f64; 2];
        for j in 1..order {
            cd[j - 1] = scale * rhos[j - 1] / rks[j - 1] as f64;
        }
        let ct = if corrector { scale * rhos[m - 1] } else { 0.0 };
        UniCoeffs { cx, c0, cd, ct }
    }
}

impl SigmaScheduler {
    /// `_sigma_to_alpha_sigma_t` in float32 (flow sigmas: 1 - sigma, sigma).
    fn alpha_sigma32(&self, s: f32) -> (f32, f32) {
        if self.flow() {
            return (1.0 - s, s);
        }
        let alpha = 1.0 / libm::sqrtf(s * s + 1.0);
        (alpha, s * alpha)
    }

    /// log alpha - log sigma in float32.
    fn lambda32(&self, s: f32) -> f32 {
        let (a, sg) = self.alpha_sigma32(s);
        libm::logf(a) - libm::logf(sg)
    }
}

/// One UniPC update's coefficients ([`SigmaScheduler::unipc_coeffs`]).
struct UniCoeffs {
    cx: f64,
    c0: f64,
    cd: [f64; 2],
    ct: f64,
}

/// Solves the m x m system in `a` (augmented: column 3 is the right-hand side) into `x` by
/// Gaussian elimination with partial pivoting (m <= 3).
fn solve(a: &mut [[f64; 4]; 3], m: usize, x: &mut [f64; 3]) {
    for col in 0..m {
        let p = (col..m)
            .max_by(|&r1, &r2| libm::fabs(a[r1][col]).total_cmp(&libm::fabs(a[r2][col])))
            .unwrap_or(col);
        a.swap(col, p);
        let pivot = a[col];
        for row in a.iter_mut().take(m).skip(col + 1) {
            let f = row[col] / pivot[col];
            for (v, p) in row[col..].iter_mut().zip(&pivot[col..]) {
                *v -= f * p;
            }
        }
    }
    for r in (0..m).rev() {
        let mut v = a[r][3];
        for k in r + 1..m {
            v -= a[r][k] * x[k];
        }
        x[r] = v / a[r][r];
    }
}
