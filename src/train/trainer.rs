//! The training loop: data order, noising, forward, loss, backward, AdamW, EMA, checkpoints.
//!
//! Everything random is drawn from [`super::rng`] streams keyed by `(seed, step)`, so the
//! weights after `n` steps depend only on the seed, the options and the data, and a run resumed
//! from a checkpoint continues bit for bit as if it had never stopped.

use std::path::{Path, PathBuf};
use std::string::{String, ToString};

use safetensors::Dtype;
use serde_json::{json, Value};

use super::checkpoint::{self, CheckpointFiles};
use super::data::Dataset;
use super::graph::{Dropout, TrainGraph, TrainWorkspace};
use super::loss::ve_score_matching_loss_and_grad;
use super::loss::{check_prediction, loss_and_grad, Batch, LossKind, LossValue, NoiseSchedule};
use super::optim::{adamw_step, clip_grad_norm, ema_decay, ema_update, AdamWConfig};
use super::rng::{permutation, Purpose, Stream};
use crate::config::UNetConfig;
use crate::error::{invalid_arg, Error, Result};
use crate::model::{describe_config, describe_weights};
use crate::schedule::{BetaSchedule, PredictionType, SchedulerConfig, VarianceType};
use crate::weights::WeightBytes;

/// Options of a run. Those that shape the result are stored in every checkpoint and restored
/// on resume.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    pub batch: usize,
    pub seed: u64,
    pub adamw: AdamWConfig,
    /// Largest EMA decay (the decay warms up as `(1 + step) / (10 + step)`).
    pub ema_max_decay: f32,
    /// Epsilon or v; `sample` is refused ([`super::loss::check_prediction`]).
    pub prediction: PredictionType,
    pub loss: LossKind,
    pub beta_schedule: BetaSchedule,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// Probability of replacing a label by the null class (classifier-free guidance training).
    pub label_dropout: f32,
    /// The null class; default: the last class of the model.
    pub null_class: Option<i64>,
    pub hflip: bool,
    /// Dtype of the checkpoint's UNet weights (F16 or F32).
    pub save_dtype: Dtype,
    /// A sigma-conditioned (fourier, NCSN++) model trains on sigmas log-uniform in
    /// [sigma_min, sigma_max] (the VE score-matching loss); default: `ScoreSdeVeScheduler`'s
    /// 0.01 and 1348. Other models ignore them.
    pub sigma_min: f64,
    pub sigma_max: f64,
}

/// `ScoreSdeVeScheduler`'s default `sigma_min` and `sigma_max`.
pub const VE_SIGMA_DEFAULTS: (f64, f64) = (0.01, 1348.0);

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            batch: 16,
            seed: 0,
            adamw: AdamWConfig::default(),
            ema_max_decay: 0.999,
            prediction: PredictionType::Epsilon,
            loss: LossKind::Simple,
            beta_schedule: BetaSchedule::Linear,
            num_train_timesteps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            label_dropout: 0.0,
            null_class: None,
            hflip: false,
            save_dtype: Dtype::F16,
            sigma_min: VE_SIGMA_DEFAULTS.0,
            sigma_max: VE_SIGMA_DEFAULTS.1,
        }
    }
}

impl TrainOptions {
    pub fn to_json(&self) -> Value {
        let a = &self.adamw;
        json!({
            "batch": self.batch, "seed": self.seed,
            "lr": a.lr, "beta1": a.beta1, "beta2": a.beta2, "adam_eps": a.eps,
            "weight_decay": a.weight_decay, "warmup": a.warmup, "max_grad_norm": a.max_grad_norm,
            "ema_max_decay": self.ema_max_decay, "prediction_type": self.prediction.as_str(),
            "loss": match self.loss { LossKind::Simple => json!("simple"), LossKind::Hybrid { lambda } => json!({"hybrid": lambda}) },
            "beta_schedule": self.beta_schedule.as_str(), "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start, "beta_end": self.beta_end,
            "label_dropout": self.label_dropout, "null_class": self.null_class, "hflip": self.hflip,
            "save_dtype": if self.save_dtype == Dtype::F16 { "f16" } else { "f32" },
            "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
        })
    }

    pub fn from_json(v: &Value) -> Result<TrainOptions> {
        let bad = |k: &str| Error::InvalidJson {
            file: "training_state.json",
            message: std::format!("bad or missing `{k}`"),
        };
        let f = |k: &str| v[k].as_f64().ok_or_else(|| bad(k));
        let u = |k: &str| v[k].as_u64().ok_or_else(|| bad(k));
        let name = |k: &str| v[k].as_str().ok_or_else(|| bad(k));
        let loss = match &v["loss"] {
            Value::String(s) if s == "simple" => LossKind::Simple,
            Value::Object(o) => LossKind::Hybrid {
                lambda: o
                    .get("hybrid")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| bad("loss"))?,
            },
            _ => return Err(bad("loss")),
        };
        Ok(TrainOptions {
            batch: u("batch")? as usize,
            seed: u("seed")?,
            adamw: AdamWConfig {
                lr: f("lr")? as f32,
                beta1: f("beta1")? as f32,
                beta2: f("beta2")? as f32,
                eps: f("adam_eps")? as f32,
                weight_decay: f("weight_decay")? as f32,
                warmup: u("warmup")?,
                max_grad_norm: f("max_grad_norm")? as f32,
            },
            ema_max_decay: f("ema_max_decay")? as f32,
            prediction: name("prediction_type")?.parse()?,
            loss,
            beta_schedule: name("beta_schedule")?.parse()?,
            num_train_timesteps: u("num_train_timesteps")? as usize,
            beta_start: f("beta_start")?,
            beta_end: f("beta_end")?,
            label_dropout: f("label_dropout")? as f32,
            null_class: v["null_class"].as_i64(),
            hflip: v["hflip"].as_bool().ok_or_else(|| bad("hflip"))?,
            save_dtype: if v["save_dtype"] == "f32" {
                Dtype::F32
            } else {
                Dtype::F16
            },
            // States written before the VE loss existed have none.
            sigma_min: v["sigma_min"].as_f64().unwrap_or(VE_SIGMA_DEFAULTS.0),
            sigma_max: v["sigma_max"].as_f64().unwrap_or(VE_SIGMA_DEFAULTS.1),
        })
    }

    /// The scheduler config of what this run trains (a DDPM scheduler with diffusers' defaults
    /// for every key the options do not set): its betas and alpha-bars are the training noise
    /// levels, and it is what checkpoints write as `scheduler_config.json`. `learned_variance`:
    /// the model outputs `2C` channels (`variance_type` `learned_range`, else `fixed_small`).
    pub fn scheduler(&self, learned_variance: bool) -> SchedulerConfig {
        SchedulerConfig {
            num_train_timesteps: self.num_train_timesteps,
            beta_start: self.beta_start,
            beta_end: self.beta_end,
            beta_schedule: self.beta_schedule,
            variance_type: if learned_variance {
                VarianceType::LearnedRange
            } else {
                VarianceType::FixedSmall
            },
            clip_sample: true,
            prediction_type: self.prediction,
            ..SchedulerConfig::ddpm_default()
        }
    }
}

/// How to start the weights.
pub enum Init<'a> {
    /// PyTorch's default initialisation, seeded.
    Seeded(u64),
    /// A diffusers-named safetensors file's bytes (any float dtype).
    Weights(&'a [u8]),
}

/// What one step did.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// The step just taken (0-based).
    pub step: u64,
    pub loss: LossValue,
    pub grad_norm: f64,
    pub lr: f32,
}

/// A training run in memory.
pub struct Trainer {
    /// The model's config (the UNet being trained).
    pub config: UNetConfig,
    pub graph: TrainGraph,
    config_json: String,
    pub opts: TrainOptions,
    sched: NoiseSchedule,
    params: Vec<f32>,
    grads: Vec<f32>,
    adam_m: Vec<f32>,
    adam_v: Vec<f32>,
    ema: Vec<f32>,
    step: u64,
    ws: TrainWorkspace,
    data: Dataset,
    // Per-step batch buffers (allocated once).
    x0: Vec<f32>,
    eps: Vec<f32>,
    x_t: Vec<f32>,
    t: Vec<usize>,
    t_f32: Vec<f32>,
    labels: Vec<i64>,
    perm: Vec<usize>,
    perm_epoch: u64,
}

/// The trainer takes no text states: a `UNet2DConditionModel` is inference only here.
fn check_unconditional(config: &UNetConfig) -> Result<()> {
    if config.cross_attention.is_some() {
        return Err(crate::error::unsupported(
            "_class_name",
            "UNet2DConditionModel: the trainer trains UNet2DModel only (text-conditional \
             training is not implemented)",
        ));
    }
    Ok(())
}

/// A sigma-conditioned (fourier, score-SDE VE) model trains with the VE denoising
/// score-matching loss ([`super::loss::ve_score_matching_loss_and_grad`]) on log-uniform
/// sigmas; DDPM's options (hybrid loss, v-prediction) do not apply to it.
fn check_fourier(config: &UNetConfig, opts: &TrainOptions) -> Result<()> {
    if !config.time_fourier {
        return Ok(());
    }
    if opts.loss != LossKind::Simple || opts.prediction != PredictionType::Epsilon {
        return Err(invalid_arg(
            "loss",
            "a fourier (score-SDE VE) model trains with the score-matching loss only (no \
             hybrid loss, no v-prediction)",
        ));
    }
    if !(opts.sigma_min > 0.0 && opts.sigma_max > opts.sigma_min && opts.sigma_max.is_finite()) {
        return Err(invalid_arg(
            "sigma_min, sigma_max",
            std::format!(
                "need 0 < sigma_min < sigma_max, got {} and {}",
                opts.sigma_min,
                opts.sigma_max
            ),
        ));
    }
    Ok(())
}

impl Trainer {
    /// A new run of the UNet described by `config_json` (diffusers' `config.json`) on `data`.
    pub fn new(
        config_json: &str,
        init: Init<'_>,
        data: Dataset,
        opts: TrainOptions,
    ) -> Result<Trainer> {
        let config = UNetConfig::from_json(config_json)?;
        check_unconditional(&config)?;
        // Initial weights from a file: the parameters take the names that file uses (old or
        // new diffusers names), as loading it for inference would.
        let description = match init {
            Init::Seeded(_) => describe_config(&config)?,
            Init::Weights(b) => describe_weights(&config, WeightBytes::Owned(b.to_vec()))?,
        };
        let graph = TrainGraph::new(&description)?;
        let n = graph.params.buffer_len();
        let mut params = std::vec![0.0f32; n];
        match init {
            Init::Seeded(seed) => graph.params.init(seed, &mut params),
            Init::Weights(b) => graph.params.read_safetensors(b, "", &mut params)?,
        }
        let ema = params.clone();
        Trainer::assemble(
            config,
            graph,
            config_json,
            opts,
            params,
            ema,
            std::vec![0.0; n],
            std::vec![0.0; n],
            0,
            data,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: UNetConfig,
        graph: TrainGraph,
        config_json: &str,
        opts: TrainOptions,
        params: Vec<f32>,
        ema: Vec<f32>,
        adam_m: Vec<f32>,
        adam_v: Vec<f32>,
        step: u64,
        data: Dataset,
    ) -> Result<Trainer> {
        check_unconditional(&config)?;
        let (c, (h, w)) = (config.in_channels, config.sample_size);
        if (data.channels, data.height, data.width) != (c, h, w) {
            return Err(invalid_arg(
                "data",
                std::format!(
                    "{}x{}x{} images for a {c}x{h}x{w} model",
                    data.channels,
                    data.height,
                    data.width
                ),
            ));
        }
        if data.is_empty() || opts.batch == 0 {
            return Err(invalid_arg(
                "data",
                "needs at least one image and a batch of at least 1",
            ));
        }
        if let Some(n) = config.num_class_embeds {
            if data.labels.is_none() {
                return Err(invalid_arg(
                    "data",
                    "the model is class-conditional but the data has no labels",
                ));
            }
            let null = opts.null_class.unwrap_or(n as i64 - 1);
            for &l in data.labels.iter().flatten().chain(core::iter::once(&null)) {
                if !(0..n as i64).contains(&l) {
                    return Err(invalid_arg(
                        "class label",
                        std::format!("{l} is out of range 0..{n}"),
                    ));
                }
            }
        }
        if config.identity_class_embedding {
            return Err(crate::error::unsupported(
                "class_embed_type",
                "identity: the Trainer's datasets carry integer labels, not class embeddings \
                 (TrainGraph::forward_with_class_embeddings trains such a model)",
            ));
        }
        let learned = config.out_channels == 2 * c;
        if let LossKind::Hybrid { .. } = opts.loss {
            if !learned {
                return Err(invalid_arg(
                    "loss",
                    "the hybrid loss needs out_channels = 2 * in_channels (learned_range)",
                ));
            }
        }
        check_prediction(opts.prediction)?;
        check_fourier(&config, &opts)?;
        let b = opts.batch;
        let sched = NoiseSchedule::new(&opts.scheduler(learned))?;
        let n = graph.params.buffer_len();
        let ws = graph.workspace(b);
        let sample = c * h * w;
        Ok(Trainer {
            config_json: config_json.into(),
            sched,
            grads: std::vec![0.0; n],
            x0: std::vec![0.0; b * sample],
            eps: std::vec![0.0; b * sample],
            x_t: std::vec![0.0; b * sample],
            t: std::vec![0; b],
            t_f32: std::vec![0.0; b],
            labels: std::vec![0; b],
            perm: permutation(opts.seed, 0, data.len()),
            perm_epoch: 0,
            config,
            graph,
            opts,
            params,
            adam_m,
            adam_v,
            ema,
            step,
            ws,
            data,
        })
    }

    /// Continues the run saved in `checkpoint_dir` (a folder written by [`Trainer::save`]) on
    /// `data`, with the options stored there.
    pub fn resume(checkpoint_dir: &Path, data: Dataset) -> Result<Trainer> {
        let read = |p: PathBuf| {
            std::fs::read(&p).map_err(|e| Error::Io {
                path: p.display().to_string(),
                message: e.to_string(),
            })
        };
        let state: Value = serde_json::from_slice(&read(
            checkpoint_dir.join("training_state.json"),
        )?)
        .map_err(|e| Error::InvalidJson {
            file: "training_state.json",
            message: e.to_string(),
        })?;
        let opts = TrainOptions::from_json(&state["options"])?;
        let step = state["step"]
            .as_u64()
            .ok_or_else(|| invalid_arg("training state", "no step"))?;
        let config_json =
            String::from_utf8_lossy(&read(checkpoint_dir.join("unet/config.json"))?).into_owned();
        let config = UNetConfig::from_json(&config_json)?;
        let tensors = read(checkpoint_dir.join("training_state.safetensors"))?;
        let graph = TrainGraph::new(&describe_config(&config)?)?;
        let n = graph.params.buffer_len();
        let mut bufs = [
            std::vec![0.0f32; n],
            std::vec![0.0; n],
            std::vec![0.0; n],
            std::vec![0.0; n],
        ];
        for (buf, prefix) in bufs
            .iter_mut()
            .zip(["param.", "ema.", "adam_m.", "adam_v."])
        {
            graph.params.read_safetensors(&tensors, prefix, buf)?;
        }
        let [params, ema, m, v] = bufs;
        Trainer::assemble(
            config,
            graph,
            &config_json,
            opts,
            params,
            ema,
            m,
            v,
            step,
            data,
        )
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The f32 master weights (flat, [`super::ParamTable`] layout).
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The EMA of the weights (what checkpoints export).
    pub fn ema(&self) -> &[f32] {
        &self.ema
    }

    /// Bytes of the planned training memory: workspace plus the five parameter-sized buffers.
    pub fn memory_bytes(&self) -> usize {
        self.ws.bytes() + 5 * 4 * self.graph.params.buffer_len()
    }

    pub fn workspace(&self) -> &TrainWorkspace {
        &self.ws
    }

    fn class_conditional(&self) -> bool {
        self.config.num_class_embeds.is_some()
    }

    /// (channels, height, width) of the model's input.
    fn input_shape(&self) -> (usize, usize, usize) {
        let (h, w) = self.config.sample_size;
        (self.config.in_channels, h, w)
    }

    /// Draws step `s`'s batch: images (data order, flips), labels (dropout), timesteps, noise.
    fn fill_batch(&mut self, s: u64) {
        let b = self.opts.batch;
        let n = self.data.len();
        let sample = self.data.sample_len();
        let mut flips = Stream::new(self.opts.seed, Purpose::Flip, s);
        let mut drops = Stream::new(self.opts.seed, Purpose::LabelDropout, s);
        let mut times = Stream::new(self.opts.seed, Purpose::Timestep, s);
        let mut noise = Stream::new(self.opts.seed, Purpose::Noise, s);
        let null = self
            .opts
            .null_class
            .unwrap_or(self.config.num_class_embeds.unwrap_or(1) as i64 - 1);
        for k in 0..b {
            let pos = s * b as u64 + k as u64;
            let epoch = pos / n as u64;
            if epoch != self.perm_epoch {
                self.perm = permutation(self.opts.seed, epoch, n);
                self.perm_epoch = epoch;
            }
            let idx = self.perm[(pos % n as u64) as usize];
            let flip = self.opts.hflip && flips.uniform() < 0.5;
            self.data
                .copy_sample(idx, flip, &mut self.x0[k * sample..(k + 1) * sample]);
            if let Some(labels) = &self.data.labels {
                let drop = drops.uniform() < self.opts.label_dropout as f64;
                self.labels[k] = if drop { null } else { labels[idx] };
            }
            if self.config.time_fourier {
                let (lo, hi) = (self.opts.sigma_min, self.opts.sigma_max);
                self.t[k] = 0;
                self.t_f32[k] = super::loss::ve_sigma(lo, hi, times.uniform()) as f32;
            } else {
                self.t[k] = times.below(self.sched.steps() as u64) as usize;
                self.t_f32[k] = self.t[k] as f32;
            }
        }
        if self.config.time_fourier {
            // x = x0 + sigma z: the VE perturbation.
            for (k, &sigma) in self.t_f32.iter().enumerate() {
                for i in k * sample..(k + 1) * sample {
                    self.eps[i] = noise.gaussian() as f32;
                    self.x_t[i] = self.x0[i] + sigma * self.eps[i];
                }
            }
            return;
        }
        for (k, t) in self.t.iter().enumerate() {
            let abar = self.sched.alphas_cumprod[*t];
            let (sa, sb) = (abar.sqrt() as f32, (1.0 - abar).sqrt() as f32);
            for i in k * sample..(k + 1) * sample {
                self.eps[i] = noise.gaussian() as f32;
                self.x_t[i] = sa * self.x0[i] + sb * self.eps[i];
            }
        }
    }

    /// One optimisation step.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let s = self.step;
        self.fill_batch(s);
        let labels = if self.class_conditional() {
            Some(&self.labels[..])
        } else {
            None
        };
        // The config's dropout, masks drawn for this step (resuming redraws the same ones).
        let dropout = Dropout::Seeded {
            seed: self.opts.seed,
            step: s,
        };
        self.graph.forward_with_dropout(
            &self.params,
            &mut self.ws,
            &self.x_t,
            &self.t_f32,
            labels,
            dropout,
        )?;
        let (c, h, w) = self.input_shape();
        let batch = Batch {
            channels: c,
            pixels: h * w,
            x0: &self.x0,
            eps: &self.eps,
            x_t: &self.x_t,
            timesteps: &self.t,
        };
        let ws = &mut self.ws;
        let loss = if self.config.time_fourier {
            ve_score_matching_loss_and_grad(&self.t_f32, &self.eps, &ws.out, &mut ws.d_out)?
        } else {
            loss_and_grad(
                self.opts.loss,
                self.opts.prediction,
                &self.sched,
                &batch,
                &ws.out,
                &mut ws.d_out,
            )?
        };
        if !loss.total.is_finite() {
            return Err(invalid_arg("loss", std::format!("not finite at step {s}")));
        }
        self.grads.fill(0.0);
        self.graph
            .backward(&self.params, &mut self.grads, &mut self.ws, labels)?;
        let grad_norm = clip_grad_norm(&mut self.grads, self.opts.adamw.max_grad_norm);
        adamw_step(
            &self.opts.adamw,
            s,
            &mut self.params,
            &self.grads,
            &mut self.adam_m,
            &mut self.adam_v,
        );
        ema_update(
            &mut self.ema,
            &self.params,
            ema_decay(self.opts.ema_max_decay, s),
        );
        self.step += 1;
        Ok(StepStats {
            step: s,
            loss,
            grad_norm,
            lr: self.opts.adamw.lr_at(s),
        })
    }

    /// The model's output for given inputs with the given weights (`params()` or `ema()`),
    /// through the training forward; uses the trainer's workspace (batch must be the run's).
    pub fn eval_forward(
        &mut self,
        use_ema: bool,
        x: &[f32],
        t: &[f32],
        labels: Option<&[i64]>,
    ) -> Result<Vec<f32>> {
        let w = if use_ema { &self.ema } else { &self.params };
        self.graph.forward(w, &mut self.ws, x, t, labels)?;
        Ok(self.ws.out.clone())
    }

    /// `scheduler/scheduler_config.json` for sampling what this run trains.
    pub fn scheduler_config(&self) -> String {
        if self.config.time_fourier {
            // What ScoreSdeVePipeline samples it with: the trained sigma range, the class's
            // other defaults.
            let v = json!({
                "_class_name": "ScoreSdeVeScheduler",
                "_diffusers_version": "0.42.1",
                "num_train_timesteps": 2000,
                "sigma_min": self.opts.sigma_min,
                "sigma_max": self.opts.sigma_max,
                "snr": 0.15,
                "sampling_eps": 1e-5,
                "correct_steps": 1,
            });
            return serde_json::to_string_pretty(&v).unwrap_or_default();
        }
        let learned = self.config.out_channels == 2 * self.config.in_channels;
        let cfg = self.opts.scheduler(learned);
        let v = json!({
            "_class_name": cfg.kind.class_name(),
            "_diffusers_version": "0.42.1",
            "num_train_timesteps": cfg.num_train_timesteps,
            "beta_start": cfg.beta_start,
            "beta_end": cfg.beta_end,
            "beta_schedule": cfg.beta_schedule.as_str(),
            "variance_type": cfg.variance_type.as_str(),
            "clip_sample": cfg.clip_sample,
            "prediction_type": cfg.prediction_type.as_str(),
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// The checkpoint's files (EMA weights as the UNet; full state beside).
    pub fn checkpoint_files(&self) -> Result<CheckpointFiles> {
        let table = &self.graph.params;
        let state = json!({
            "step": self.step,
            "options": self.opts.to_json(),
            "rng": {"kind": "counter-based (seed, purpose, step)", "seed": self.opts.seed, "next_step": self.step},
            "parameters": table.count(),
        });
        Ok(CheckpointFiles {
            step: self.step,
            unet_config: checkpoint::unet_config(&self.config_json)?,
            unet_weights: table.write_safetensors(&[("", &self.ema)], self.opts.save_dtype)?,
            scheduler_config: self.scheduler_config(),
            pipeline: if self.config.time_fourier {
                ("ScoreSdeVePipeline", "ScoreSdeVeScheduler")
            } else {
                ("DDPMPipeline", "DDPMScheduler")
            },
            state_json: serde_json::to_string_pretty(&state).unwrap_or_default(),
            state_tensors: table.write_safetensors(
                &[
                    ("param.", &self.params),
                    ("ema.", &self.ema),
                    ("adam_m.", &self.adam_m),
                    ("adam_v.", &self.adam_v),
                ],
                Dtype::F32,
            )?,
        })
    }

    /// Saves a checkpoint under `out` (see [`checkpoint`]); keeps the newest `keep`.
    pub fn save(&self, out: &Path, keep: usize) -> Result<PathBuf> {
        checkpoint::save(out, &self.checkpoint_files()?, keep)
    }
}
