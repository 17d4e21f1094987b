//! Sampling on the GPU: one step (noise, forward passes, guidance, scheduler update) captured
//! into a CUDA graph and replayed for every step.

use cudarc::driver::{result, sys, CudaGraph};

use super::backend::{grid1, CudaBackend, Inner};
use super::device::cu;
use crate::error::{device_err, invalid_arg, unsupported, Error, Result};
use crate::model::Model;
use crate::schedule::config::{PredictionType, SchedulerKind, VarianceType};
use crate::schedule::{SampleOptions, Scheduler, StepInfo};

/// What a captured step graph depends on besides the session's buffers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct GraphKey {
    pub(super) generated_noise: bool,
    pub(super) labels: bool,
    pub(super) guidance: Option<(u32, i64)>,
    pub(super) kind: i32,
    pub(super) pred: i32,
    pub(super) var: i32,
    pub(super) clip: i32,
    pub(super) clip_range: u64,
    pub(super) clipped_eps: i32,
}

/// A captured step. CUDA graph handles are not tied to a thread; this one is only touched
/// under the backend's mutex, with the backend's context bound.
pub(super) struct StepGraph(CudaGraph);

// SAFETY: see above: never used by two threads at once.
unsafe impl Send for StepGraph {}

impl CudaBackend {
    /// [`crate::sampler::sample`] on the GPU (after the sampler validated its arguments).
    pub(super) fn run_sample(
        &self,
        model: &Model,
        scheduler: &Scheduler,
        opts: &SampleOptions<'_>,
        out: &mut [f32],
        mut on_step: Option<&mut dyn FnMut(&StepInfo<'_>)>,
    ) -> Result<()> {
        let cfg = scheduler.config();
        if model.config.time_fourier {
            // The device loop runs DDPM/DDIM, whose integer timesteps a sigma-conditioned
            // (fourier) model cannot take; its forward passes run on the device all the same.
            return Err(unsupported(
                "time_embedding_type",
                "fourier models are not sampled by the CUDA DDPM/DDIM loop",
            ));
        }
        if cfg.thresholding {
            return Err(unsupported(
                "thresholding",
                "dynamic thresholding is not implemented on the CUDA backend (use the CPU)",
            ));
        }
        if cfg.kind == SchedulerKind::Ddim
            && !(scheduler.eta().is_finite() && scheduler.eta() >= 0.0)
        {
            return Err(invalid_arg(
                "eta",
                std::format!("{} must be finite and >= 0", scheduler.eta()),
            ));
        }
        let batch = opts.batch;
        let (c, h, w) = model.input_shape();
        let (c_out, _, _) = model.output_shape();
        let (per, n) = (c * h * w, batch * c * h * w);
        // The step kernel implements DDPM and DDIM; the sigma schedulers run on the CPU.
        let kind = match cfg.kind {
            SchedulerKind::Ddpm => 0,
            SchedulerKind::Ddim => 1,
            other => {
                return Err(unsupported(
                    "_class_name",
                    std::format!("{other:?} on the CUDA backend (it runs on the CPU for now)"),
                ))
            }
        };
        let learned = cfg.kind == SchedulerKind::Ddpm && cfg.variance_type.is_learned();
        if learned && c_out != 2 * c {
            return Err(Error::BufferSize {
                what: "model output [B, 2C, H, W] (learned variance)",
                expected: 2 * n,
                found: batch * c_out * h * w,
            });
        }
        let steps = scheduler.num_steps();
        let guidance = opts.guidance.filter(|g| g.scale != 0.0);
        let key = GraphKey {
            generated_noise: opts.step_noise.is_none()
                && (0..steps).any(|i| scheduler.needs_noise(i)),
            labels: opts.class_labels.is_some(),
            guidance: guidance.map(|g| (g.scale.to_bits(), g.null_class)),
            kind,
            pred: match cfg.prediction_type {
                PredictionType::Epsilon => 0,
                PredictionType::Sample => 1,
                PredictionType::VPrediction => 2,
                PredictionType::FlowPrediction => {
                    // Refused by `SchedulerConfig::validate` for DDPM/DDIM.
                    return Err(unsupported("prediction_type", "flow_prediction"));
                }
            },
            var: match (cfg.kind, cfg.variance_type) {
                (SchedulerKind::Ddpm, VarianceType::Learned) => 1,
                (SchedulerKind::Ddpm, VarianceType::LearnedRange) => 2,
                _ => 0,
            },
            clip: cfg.clip_sample as i32,
            clip_range: cfg.clip_sample_range.to_bits(),
            clipped_eps: (cfg.kind == SchedulerKind::Ddim && cfg.use_clipped_model_output) as i32,
        };

        let mut g = self.lock()?;
        let inner = &mut *g;
        inner.ensure_session(model, batch, steps)?;
        let st = inner.stream.cu_stream();
        {
            let s = inner.session.as_mut().expect("session");
            s.host_ts.clear();
            s.host_ts
                .extend(scheduler.timesteps().iter().map(|&t| t as f32));
            s.host_coef.clear();
            for i in 0..steps {
                s.host_coef
                    .extend(scheduler.step_coefficients(i).expect("step in range"));
            }
            // Always one label per sample on the device, so the captured graph does not depend
            // on whether one label was given for all.
            s.host_labels.clear();
            if let Some(l) = opts.class_labels {
                s.host_labels
                    .extend((0..batch).map(|b| l[if l.len() == 1 { 0 } else { b }] as i32));
            }
            let null = [guidance.map_or(0, |g| g.null_class as i32)];
            let seed = [opts.seed];
            // SAFETY: destinations sized by ensure_session for (batch, steps); pageable
            // sources are consumed when each call returns.
            unsafe {
                cu(
                    result::memcpy_htod_async(s.ts, &s.host_ts, st),
                    "copy timesteps",
                )?;
                cu(
                    result::memcpy_htod_async(s.coef, &s.host_coef, st),
                    "copy scheduler coefficients",
                )?;
                if !s.host_labels.is_empty() {
                    cu(
                        result::memcpy_htod_async(s.labels, &s.host_labels, st),
                        "copy labels",
                    )?;
                }
                cu(
                    result::memcpy_htod_async(s.null_label, &null, st),
                    "copy label",
                )?;
                cu(result::memcpy_htod_async(s.seed, &seed, st), "copy seed")?;
                if let Some(x_t) = opts.initial_noise {
                    cu(result::memcpy_htod_async(s.x, x_t, st), "copy x_T")?;
                }
            }
        }
        let s = inner.session.as_ref().expect("session");
        let (sx, sseed, sstep) = (s.x, s.seed, s.step);
        if opts.initial_noise.is_none() {
            // Stream 0 is x_T.
            let (nn, null, base) = (n as i64, 0u64, 0u64);
            inner.launch(
                &inner.f.gaussian_noise,
                grid1(n.div_ceil(2)),
                256,
                0,
                &mut kargs![sx, nn, sseed, null, base],
            )?;
        }
        let zero = 0i32;
        inner.launch(&inner.f.set_step, (1, 1, 1), 1, 0, &mut kargs![sstep, zero])?;

        let have =
            matches!(&inner.session.as_ref().expect("session").graph, Some((k, _)) if *k == key);
        if !have {
            let s = inner.session.as_mut().expect("session");
            s.graph = None;
            let stream = inner.stream.clone();
            cu(
                stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
                "begin graph capture",
            )?;
            let captured = inner.enqueue_step(model, batch, per, c_out * h * w, &key);
            let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
            captured?;
            let graph = cu(graph, "end graph capture")?
                .ok_or_else(|| device_err("graph capture produced no graph"))?;
            inner.session.as_mut().expect("session").graph = Some((key, StepGraph(graph)));
        }
        let s = inner.session.as_ref().expect("session");
        let graph = &s.graph.as_ref().expect("graph").1 .0;
        // Step noise is one row per step, or one per draw (diffusers' order; the sampler
        // checked which).
        let mut draw = 0;
        for i in 0..steps {
            if let (Some(z), true) = (opts.step_noise, scheduler.needs_noise(i)) {
                let row = if z.len() == steps * n { i } else { draw };
                draw += 1;
                // SAFETY: the noise buffer holds n floats; the row is n floats (checked by
                // the sampler); the copy is ordered before the graph launch on the stream.
                unsafe {
                    cu(
                        result::memcpy_htod_async(s.noise, &z[row * n..(row + 1) * n], st),
                        "copy step noise",
                    )?
                };
            }
            cu(graph.launch(), "launch step graph")?;
            if let Some(cb) = on_step.as_mut() {
                // SAFETY: out holds n floats, as x does; synchronize completes the copy.
                unsafe { cu(result::memcpy_dtoh_async(out, s.x, st), "copy sample")? };
                cu(inner.stream.synchronize(), "sampling step")?;
                cb(&StepInfo {
                    index: i,
                    steps,
                    timestep: scheduler.timesteps()[i],
                    sample: out,
                });
            }
        }
        // SAFETY: as above.
        unsafe { cu(result::memcpy_dtoh_async(out, s.x, st), "copy x_0")? };
        cu(inner.stream.synchronize(), "sampling")?;
        Ok(())
    }
}

impl Inner {
    /// One sampling step, as captured into the graph.
    pub(super) fn enqueue_step(
        &self,
        model: &Model,
        batch: usize,
        per: usize,
        stride: usize,
        key: &GraphKey,
    ) -> Result<()> {
        let s = self.session.as_ref().expect("session");
        let n = batch * per;
        if key.generated_noise {
            // Stream i + 1 is the noise of step i.
            let (nn, base) = (n as i64, 1u64);
            self.launch(
                &self.f.gaussian_noise,
                grid1(n.div_ceil(2)),
                256,
                0,
                &mut kargs![s.noise, nn, s.seed, s.step, base],
            )?;
        }
        let n_labels = if key.labels {
            s.host_labels.len() as i32
        } else {
            0
        };
        self.enqueue_forward(
            model, batch, s.x, s.ts, 0, s.step, s.labels, n_labels, s.eps,
        )?;
        if let Some((scale_bits, _)) = key.guidance {
            self.enqueue_forward(
                model,
                batch,
                s.x,
                s.ts,
                0,
                s.step,
                s.null_label,
                1,
                s.eps_uncond,
            )?;
            let (c, h, w) = model.input_shape();
            let (c_out, _, _) = model.output_shape();
            let (scale, b, co, ci, hw) = (
                f32::from_bits(scale_bits),
                batch as i32,
                c_out as i32,
                c as i32,
                (h * w) as i32,
            );
            self.launch(
                &self.f.guidance_combine,
                grid1(batch * c * h * w),
                256,
                0,
                &mut kargs![s.eps, s.eps_uncond, scale, b, co, ci, hw],
            )?;
        }
        // Read only on steps that draw noise (generated above or copied in before launch).
        let z = s.noise;
        let clip_range = f64::from_bits(key.clip_range);
        let (per_l, stride_l, n_l) = (per as i64, stride as i64, n as i64);
        self.launch(
            &self.f.scheduler_step,
            grid1(n),
            256,
            0,
            &mut kargs![
                s.x,
                s.eps,
                z,
                s.coef,
                s.step,
                key.kind,
                key.pred,
                key.var,
                key.clip,
                clip_range,
                key.clipped_eps,
                per_l,
                stride_l,
                n_l
            ],
        )?;
        self.launch(&self.f.advance_step, (1, 1, 1), 1, 0, &mut kargs![s.step])
    }
}
