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
use super::graph::{TrainGraph, TrainWorkspace};
use super::loss::{loss_and_grad, Batch, LossKind, LossValue, Prediction};
use super::optim::{adamw_step, clip_grad_norm, ema_decay, ema_update, AdamWConfig};
use super::rng::{permutation, Purpose, Stream};
use super::schedule::{BetaSchedule, Schedule};
use crate::config::UNetConfig;
use crate::error::{invalid_arg, Error, Result};
use crate::memory::Reuse;
use crate::weights::{LoadOptions, WeightBytes};
use crate::Model;

/// Options of a run. Those that shape the result are stored in every checkpoint and restored
/// on resume.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    pub batch: usize,
    pub seed: u64,
    pub adamw: AdamWConfig,
    /// Largest EMA decay (the decay warms up as `(1 + step) / (10 + step)`).
    pub ema_max_decay: f32,
    pub prediction: Prediction,
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
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            batch: 16,
            seed: 0,
            adamw: AdamWConfig::default(),
            ema_max_decay: 0.999,
            prediction: Prediction::Epsilon,
            loss: LossKind::Simple,
            beta_schedule: BetaSchedule::Linear,
            num_train_timesteps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            label_dropout: 0.0,
            null_class: None,
            hflip: false,
            save_dtype: Dtype::F16,
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
            "ema_max_decay": self.ema_max_decay, "prediction_type": self.prediction.name(),
            "loss": match self.loss { LossKind::Simple => json!("simple"), LossKind::Hybrid { lambda } => json!({"hybrid": lambda}) },
            "beta_schedule": self.beta_schedule.name(), "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start, "beta_end": self.beta_end,
            "label_dropout": self.label_dropout, "null_class": self.null_class, "hflip": self.hflip,
            "save_dtype": if self.save_dtype == Dtype::F16 { "f16" } else { "f32" },
        })
    }

    pub fn from_json(v: &Value) -> Result<TrainOptions> {
        let bad = |k: &str| Error::InvalidJson {
            file: "training_state.json",
            message: std::format!("bad or missing `{k}`"),
        };
        let f = |k: &str| v[k].as_f64().ok_or_else(|| bad(k));
        let u = |k: &str| v[k].as_u64().ok_or_else(|| bad(k));
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
            prediction: match v["prediction_type"].as_str() {
                Some("epsilon") => Prediction::Epsilon,
                Some("v_prediction") => Prediction::V,
                _ => return Err(bad("prediction_type")),
            },
            loss,
            beta_schedule: BetaSchedule::parse(
                v["beta_schedule"]
                    .as_str()
                    .ok_or_else(|| bad("beta_schedule"))?,
            )?,
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
        })
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
    pub model: Model,
    pub graph: TrainGraph,
    config_json: String,
    pub opts: TrainOptions,
    sched: Schedule,
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

fn zero_weights(config: &UNetConfig) -> Result<Vec<u8>> {
    let specs = Model::parameter_specs(config)?;
    let data: Vec<Vec<u8>> = specs
        .iter()
        .map(|s| std::vec![0u8; 4 * s.shape.iter().product::<usize>()])
        .collect();
    let views = specs
        .iter()
        .zip(&data)
        .map(|(s, d)| {
            safetensors::tensor::TensorView::new(Dtype::F32, s.shape.clone(), d)
                .map(|v| (s.name.clone(), v))
                .map_err(|e| Error::InvalidSafetensors {
                    message: std::format!("{e:?}"),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::InvalidSafetensors {
        message: std::format!("{e:?}"),
    })
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
        let weights = match init {
            Init::Seeded(_) => zero_weights(&config)?,
            Init::Weights(b) => b.to_vec(),
        };
        let model = Model::new(
            config,
            WeightBytes::Owned(weights.clone()),
            LoadOptions::default(),
            Reuse::Shared,
        )?;
        let graph = TrainGraph::new(&model)?;
        let n = graph.params.buffer_len();
        let mut params = std::vec![0.0f32; n];
        match init {
            Init::Seeded(seed) => graph.params.init(seed, &mut params),
            Init::Weights(b) => graph.params.read_safetensors(b, "", &mut params)?,
        }
        let ema = params.clone();
        Trainer::assemble(
            model,
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
        model: Model,
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
        let (c, h, w) = model.input_shape();
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
        if let Some(n) = model.config.num_class_embeds {
            if data.labels.is_none() {
                return Err(invalid_arg(
                    "data",
                    "the model is class-conditional but the data has no labels",
                ));
            }
            let null = opts.null_class.unwrap_or(n as i64 - 1);
            for &l in data.labels.iter().flatten().chain(core::iter::once(&null)) {
                model.check_class_label(l)?;
            }
        }
        if let LossKind::Hybrid { .. } = opts.loss {
            if model.output_shape().0 != 2 * c {
                return Err(invalid_arg(
                    "loss",
                    "the hybrid loss needs out_channels = 2 * in_channels (learned_range)",
                ));
            }
        }
        let b = opts.batch;
        let sched = Schedule::new(
            opts.beta_schedule,
            opts.num_train_timesteps,
            opts.beta_start,
            opts.beta_end,
        );
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
            model,
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
        let model = Model::new(
            config,
            WeightBytes::Owned(zero_weights(&UNetConfig::from_json(&config_json)?)?),
            LoadOptions::default(),
            Reuse::Shared,
        )?;
        let graph = TrainGraph::new(&model)?;
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
        // The inference model keeps the zero placeholder weights: training reads only `params`.
        Trainer::assemble(
            model,
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
        self.model.config.num_class_embeds.is_some()
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
            .unwrap_or(self.model.config.num_class_embeds.unwrap_or(1) as i64 - 1);
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
            self.t[k] = times.below(self.sched.steps() as u64) as usize;
            self.t_f32[k] = self.t[k] as f32;
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
        self.graph
            .forward(&self.params, &mut self.ws, &self.x_t, &self.t_f32, labels)?;
        let (c, h, w) = self.model.input_shape();
        let batch = Batch {
            channels: c,
            pixels: h * w,
            x0: &self.x0,
            eps: &self.eps,
            x_t: &self.x_t,
            timesteps: &self.t,
        };
        let ws = &mut self.ws;
        let loss = loss_and_grad(
            self.opts.loss,
            self.opts.prediction,
            &self.sched,
            &batch,
            &ws.out,
            &mut ws.d_out,
        );
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
        let learned = self.model.output_shape().0 == 2 * self.model.input_shape().0;
        let v = json!({
            "_class_name": "DDPMScheduler",
            "_diffusers_version": "0.42.1",
            "num_train_timesteps": self.opts.num_train_timesteps,
            "beta_start": self.opts.beta_start,
            "beta_end": self.opts.beta_end,
            "beta_schedule": self.opts.beta_schedule.name(),
            "variance_type": if learned { "learned_range" } else { "fixed_small" },
            "clip_sample": true,
            "prediction_type": self.opts.prediction.name(),
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
