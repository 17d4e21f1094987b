//! `train`: trains a diffusers `UNet2DModel` with the crate's own backward passes.
//!
//! ```text
//! train --data DIR_OR_IDX --out DIR (--config config.json | --init MODEL_DIR) --steps N
//!       --batch B --lr X [--seed S] [options]
//! train --resume OUT --steps N
//! ```
//! Writes diffusers-layout checkpoints (`OUT/checkpoint-N/`, `OUT/latest`), `OUT/loss.csv` and
//! `OUT/run.json` (the data and run settings the checkpoints do not hold, for `--resume`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use tinydiffusion::schedule::{BetaSchedule, PredictionType, SchedulerConfig, VarianceType};
use tinydiffusion::train::checkpoint;
use tinydiffusion::train::data::Dataset;
use tinydiffusion::train::loss::{LossKind, NoiseSchedule};
use tinydiffusion::train::trainer::{Init, TrainOptions, Trainer};
use tinydiffusion::UNetConfig;

const USAGE: &str = "usage: train --data DIR_OR_IDX --out DIR (--config CONFIG.json | --init MODEL_DIR) --steps N --batch B --lr X [options]
       train --resume OUT --steps N [options]          (continue a run; see --resume below)
       train eval --model DIR --data DIR_OR_IDX [--range 9000..10000] [--timesteps K] [--batch B] [--seed S]
                  [--variance fixed_small|fixed_large|learned_range]   (variational bound, bits/dim)

data:
  --data PATH           MNIST IDX images file (.gz ok; labels file beside it is used), a folder
                        holding one, or a folder of PNGs (subfolders = classes)
  --range A..B          IDX images to train on (default 0..9000; 9000..10000 is held out)
  --hflip               random horizontal flips
model:
  --config FILE         diffusers UNet2DModel config.json, weights initialised from --seed
  --init DIR            start from a model folder's weights instead
run:
  --out DIR             checkpoints, loss.csv
  --steps N             total steps (a resumed run stops at the same N)
  --batch B             (default 16)
  --seed S              (default 0): data order, noise, init; same seed = same weights
  --resume [DIR]        continue the run in DIR (a training --out folder: its latest
                        checkpoint; or one checkpoint-N folder), or in --out. Only --steps is
                        needed: the model and every optimiser and objective option below, with
                        --batch, --seed and --hflip, come from the checkpoint; a flag given
                        anyway must equal the checkpoint's value, else it is an error (--init
                        is not checked: the checkpoint holds the weights). --data, --range,
                        --save-every, --keep and --log-every default to the run's OUT/run.json
                        and may be given to override them. --out defaults to the run's folder.
  --save-every N        checkpoint period in steps (default 1000, and at the end)
  --keep K              checkpoints kept (default 2)
  --log-every N         progress line period (default 10)
  --threads N           threads for the convolutions (default: all cores; the weights do not
                        depend on it)
optimiser:
  --lr X                peak learning rate (default 1e-4)
  --warmup N            linear warmup steps (default 0)
  --weight-decay X      AdamW decoupled decay (default 0)
  --grad-clip X         global gradient-norm clip (default 1, 0 = off)
  --ema X               EMA decay (default 0.999)
objective:
  --prediction P        epsilon | v_prediction (default epsilon)
  --loss L              simple | hybrid (learned_range models; lambda 0.001)
  --beta-schedule S     linear | scaled_linear | squaredcos_cap_v2 | sigmoid | laplace
                        (diffusers' schedules; default linear)
  --timesteps T         (default 1000)
  --label-dropout P     probability of the null class (classifier-free guidance; default 0)
  --null-class K        (default: the model's last class)
  --save-dtype D        f16 | f32 UNet weights in checkpoints (default f16)
  --sigma-min X, --sigma-max X
                        a fourier (NCSN++, score-SDE VE) model trains with the VE denoising
                        score-matching loss on sigmas log-uniform in [sigma-min, sigma-max]
                        (default: the --init folder's ScoreSdeVeScheduler config, else 0.01
                        and 1348); its checkpoints are ScoreSdeVePipeline folders";

struct Args {
    data: PathBuf,
    range: std::ops::Range<usize>,
    out: PathBuf,
    config: Option<PathBuf>,
    init: Option<PathBuf>,
    steps: u64,
    /// The checkpoint folder to continue from.
    resume: Option<PathBuf>,
    save_every: u64,
    keep: usize,
    log_every: u64,
    threads: usize,
    opts: TrainOptions,
    /// The options given on the command line that the checkpoint also records (checked
    /// against it on resume).
    given: Vec<&'static str>,
}

/// `OUT/run.json`: what a run needs besides its checkpoint (which must not change), so that
/// `--resume` needs no more than `--steps`.
const RUN_FILE: &str = "run.json";

/// The flags whose values the checkpoint records (`training_state.json` options and the
/// UNet config).
const RECORDED: [&str; 18] = [
    "--config",
    "--batch",
    "--seed",
    "--hflip",
    "--lr",
    "--warmup",
    "--weight-decay",
    "--grad-clip",
    "--ema",
    "--prediction",
    "--loss",
    "--beta-schedule",
    "--timesteps",
    "--label-dropout",
    "--null-class",
    "--save-dtype",
    "--sigma-min",
    "--sigma-max",
];

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1).peekable();
    let mut o = TrainOptions::default();
    let (mut data, mut out, mut config, mut init, mut steps) = (None, None, None, None, None);
    let (mut range, mut resume, mut save_every, mut keep, mut log_every) =
        (None, None::<Option<PathBuf>>, None, None, None);
    let mut threads = default_threads();
    let mut hybrid_lambda = None;
    let mut given: Vec<&'static str> = Vec::new();
    while let Some(a) = it.next() {
        if let Some(&flag) = RECORDED.iter().find(|f| **f == a) {
            given.push(flag);
        }
        if a == "--resume" {
            // An optional value: the run's folder (else --out).
            resume = Some(it.next_if(|v| !v.starts_with('-')).map(PathBuf::from));
            continue;
        }
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{flag}: cannot parse `{v}`"))
        }
        match a.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--data" => data = Some(PathBuf::from(val()?)),
            "--range" => {
                let v = val()?;
                let (s, e) = v.split_once("..").ok_or("--range takes A..B")?;
                range =
                    Some(num::<usize>("--range", s.into())?..num::<usize>("--range", e.into())?);
            }
            "--hflip" => o.hflip = true,
            "--config" => config = Some(PathBuf::from(val()?)),
            "--init" => init = Some(PathBuf::from(val()?)),
            "--out" => out = Some(PathBuf::from(val()?)),
            "--steps" => steps = Some(num("--steps", val()?)?),
            "--batch" => o.batch = num("--batch", val()?)?,
            "--seed" => o.seed = num("--seed", val()?)?,
            "--save-every" => save_every = Some(num("--save-every", val()?)?),
            "--keep" => keep = Some(num("--keep", val()?)?),
            "--log-every" => log_every = Some(num("--log-every", val()?)?),
            "--threads" => threads = num("--threads", val()?)?,
            "--lr" => o.adamw.lr = num("--lr", val()?)?,
            "--warmup" => o.adamw.warmup = num("--warmup", val()?)?,
            "--weight-decay" => o.adamw.weight_decay = num("--weight-decay", val()?)?,
            "--grad-clip" => o.adamw.max_grad_norm = num("--grad-clip", val()?)?,
            "--ema" => o.ema_max_decay = num("--ema", val()?)?,
            "--prediction" => {
                o.prediction = match val()?.as_str() {
                    "epsilon" => PredictionType::Epsilon,
                    "v_prediction" | "v" => PredictionType::VPrediction,
                    v => return Err(format!("--prediction: `{v}` (epsilon | v_prediction)")),
                }
            }
            "--loss" => {
                hybrid_lambda = match val()?.as_str() {
                    "simple" => None,
                    "hybrid" => Some(0.001),
                    v => return Err(format!("--loss: `{v}` (simple | hybrid)")),
                }
            }
            "--beta-schedule" => {
                let v = val()?;
                o.beta_schedule = v.parse().map_err(|_| {
                    format!(
                        "--beta-schedule: `{v}` ({})",
                        BetaSchedule::NAMES.join(" | ")
                    )
                })?
            }
            "--timesteps" => o.num_train_timesteps = num("--timesteps", val()?)?,
            "--sigma-min" => o.sigma_min = num("--sigma-min", val()?)?,
            "--sigma-max" => o.sigma_max = num("--sigma-max", val()?)?,
            "--label-dropout" => o.label_dropout = num("--label-dropout", val()?)?,
            "--null-class" => o.null_class = Some(num("--null-class", val()?)?),
            "--save-dtype" => {
                o.save_dtype = match val()?.as_str() {
                    "f16" => safetensors::Dtype::F16,
                    "f32" => safetensors::Dtype::F32,
                    v => return Err(format!("--save-dtype: `{v}` (f16 | f32)")),
                }
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if let Some(lambda) = hybrid_lambda {
        o.loss = LossKind::Hybrid { lambda };
    }
    let steps = steps.ok_or("--steps is required")?;
    let mut resume_from = None;
    let mut run = serde_json::Value::Null;
    if let Some(dir) = resume {
        let dir = dir
            .or_else(|| out.clone())
            .ok_or("--resume needs the run's folder: --resume DIR (or --out DIR)")?;
        // A checkpoint folder itself, or a training output folder (its latest checkpoint).
        let (ckpt, run_dir) = if dir.join("training_state.json").is_file() {
            let parent = dir.parent().map_or_else(PathBuf::new, Path::to_path_buf);
            (dir, parent)
        } else {
            (checkpoint::latest(&dir).map_err(|e| e.to_string())?, dir)
        };
        if let Ok(text) = std::fs::read_to_string(run_dir.join(RUN_FILE)) {
            run = serde_json::from_str(&text)
                .map_err(|e| format!("{}: {e}", run_dir.join(RUN_FILE).display()))?;
        }
        out = out.or(Some(run_dir));
        resume_from = Some(ckpt);
    } else if config.is_none() && init.is_none() {
        return Err("give --config (new model) or --init (model folder), or --resume".into());
    }
    // Run settings not given: the resumed run's (OUT/run.json), else the defaults.
    let recorded = |k: &str| run[k].as_u64();
    let data = data
        .or_else(|| run["data"].as_str().map(PathBuf::from))
        .ok_or("--data is required")?;
    let range = range
        .or_else(|| Some(recorded("range_start")? as usize..recorded("range_end")? as usize))
        .unwrap_or(0..9000);
    let out = out.ok_or("--out is required")?;
    Ok(Args {
        data,
        range,
        out,
        config,
        init,
        steps,
        resume: resume_from,
        save_every: save_every.or(recorded("save_every")).unwrap_or(1000).max(1),
        keep: keep.or(recorded("keep").map(|k| k as usize)).unwrap_or(2),
        log_every: log_every.or(recorded("log_every")).unwrap_or(10).max(1),
        threads: threads.max(1),
        opts: o,
        given,
    })
}

/// Fails if an option given on the command line differs from the checkpoint's value.
fn check_given(args: &Args, ck: &TrainOptions, ck_config: &str) -> Result<(), String> {
    let (o, a, b) = (&args.opts, &args.opts.adamw, &ck.adamw);
    for &flag in &args.given {
        let (same, mine, theirs) = match flag {
            "--config" => {
                let path = args.config.as_deref().unwrap_or(Path::new(""));
                let text = std::fs::read_to_string(path)
                    .map_err(|x| format!("{}: {x}", path.display()))?;
                let norm = |t: &str| checkpoint::unet_config(t).map_err(|e| e.to_string());
                let same = norm(&text)? == norm(ck_config)?;
                (
                    same,
                    path.display().to_string(),
                    "the checkpoint's unet/config.json".into(),
                )
            }
            "--batch" => cmp(o.batch, ck.batch),
            "--seed" => cmp(o.seed, ck.seed),
            "--hflip" => cmp(o.hflip, ck.hflip),
            "--lr" => cmp(a.lr, b.lr),
            "--warmup" => cmp(a.warmup, b.warmup),
            "--weight-decay" => cmp(a.weight_decay, b.weight_decay),
            "--grad-clip" => cmp(a.max_grad_norm, b.max_grad_norm),
            "--ema" => cmp(o.ema_max_decay, ck.ema_max_decay),
            "--prediction" => cmp(o.prediction, ck.prediction),
            "--loss" => cmp(o.loss, ck.loss),
            "--beta-schedule" => cmp(o.beta_schedule, ck.beta_schedule),
            "--timesteps" => cmp(o.num_train_timesteps, ck.num_train_timesteps),
            "--label-dropout" => cmp(o.label_dropout, ck.label_dropout),
            "--null-class" => cmp(o.null_class, ck.null_class),
            "--save-dtype" => cmp(o.save_dtype, ck.save_dtype),
            "--sigma-min" => cmp(o.sigma_min, ck.sigma_min),
            "--sigma-max" => cmp(o.sigma_max, ck.sigma_max),
            _ => continue,
        };
        if !same {
            return Err(format!(
                "{flag}: {mine} differs from the checkpoint's {theirs}; a resumed run keeps the \
                 checkpoint's options (leave the flag out to use them)"
            ));
        }
    }
    Ok(())
}

fn cmp<T: PartialEq + std::fmt::Debug>(mine: T, theirs: T) -> (bool, String, String) {
    (mine == theirs, format!("{mine:?}"), format!("{theirs:?}"))
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Finds the IDX images file a `--data` path means, if it means one.
fn idx_file(p: &Path) -> Option<PathBuf> {
    let is_idx = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains("images-idx3-ubyte"))
    };
    if p.is_file() {
        return is_idx(p).then(|| p.to_path_buf());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(p)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_idx(p))
        .collect();
    found.sort();
    found.into_iter().next()
}

fn load_data(args: &Args, cfg: &UNetConfig) -> Result<Dataset, String> {
    let size = cfg.sample_size;
    let ds = match idx_file(&args.data) {
        Some(f) => Dataset::mnist(&f, args.range.clone(), size),
        None => Dataset::png_folder(&args.data, cfg.in_channels, size),
    };
    ds.map_err(|e| e.to_string())
}

fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

fn run(args: Args) -> Result<(), String> {
    let e = |e: tinydiffusion::Error| e.to_string();
    tinydiffusion::train::layers::gemm::set_threads(args.threads)
        .map_err(|x| format!("cannot start {} threads: {x}", args.threads))?;
    let mut trainer = if let Some(dir) = &args.resume {
        let cfg =
            std::fs::read_to_string(dir.join("unet/config.json")).map_err(|x| x.to_string())?;
        let state =
            std::fs::read_to_string(dir.join("training_state.json")).map_err(|x| x.to_string())?;
        let state: serde_json::Value = serde_json::from_str(&state).map_err(|x| x.to_string())?;
        let ck = TrainOptions::from_json(&state["options"]).map_err(e)?;
        check_given(&args, &ck, &cfg)?;
        let data = load_data(&args, &UNetConfig::from_json(&cfg).map_err(e)?)?;
        eprintln!("resuming from {}", dir.display());
        Trainer::resume(dir, data).map_err(e)?
    } else {
        let mut opts = args.opts.clone();
        let (config_path, weights) = match (&args.config, &args.init) {
            (_, Some(dir)) => {
                let files = tinydiffusion::model::load::ModelFiles::find(dir).map_err(e)?;
                // A VE folder's sigma range, unless the flags give one.
                let sched = files.load_scheduler_config().map_err(e)?;
                if sched.kind == tinydiffusion::schedule::SchedulerKind::ScoreSdeVe {
                    if !args.given.contains(&"--sigma-min") {
                        opts.sigma_min = sched.sigma_min.unwrap_or(opts.sigma_min);
                    }
                    if !args.given.contains(&"--sigma-max") {
                        opts.sigma_max = sched.sigma_max.unwrap_or(opts.sigma_max);
                    }
                }
                (
                    files.config,
                    Some(std::fs::read(&files.weights).map_err(|x| x.to_string())?),
                )
            }
            (Some(c), None) => (c.clone(), None),
            (None, None) => unreachable!(),
        };
        let cfg_text = std::fs::read_to_string(&config_path)
            .map_err(|x| format!("{}: {x}", config_path.display()))?;
        let data = load_data(&args, &UNetConfig::from_json(&cfg_text).map_err(e)?)?;
        let init = match &weights {
            Some(w) => Init::Weights(w),
            None => Init::Seeded(args.opts.seed),
        };
        Trainer::new(&cfg_text, init, data, opts).map_err(e)?
    };
    let g = &trainer.graph;
    let b = trainer.opts.batch;
    eprintln!(
        "model: {} parameters; batch {b}; training memory {:.1} MiB (activations {:.1} MiB, activation gradients {:.1} MiB)",
        g.params.count(),
        trainer.memory_bytes() as f64 / 1048576.0,
        4.0 * g.activation_len(b) as f64 / 1048576.0,
        4.0 * g.gradient_len(b) as f64 / 1048576.0,
    );
    std::fs::create_dir_all(&args.out).map_err(|x| x.to_string())?;
    let run_json = serde_json::json!({
        "data": std::fs::canonicalize(&args.data).unwrap_or_else(|_| args.data.clone()),
        "range_start": args.range.start,
        "range_end": args.range.end,
        "save_every": args.save_every,
        "keep": args.keep,
        "log_every": args.log_every,
    });
    checkpoint::write_atomic(
        &args.out.join(RUN_FILE),
        serde_json::to_string_pretty(&run_json)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(e)?;
    // The CSV keeps exactly the rows of steps taken before the resumed step.
    let csv_path = args.out.join("loss.csv");
    let start = trainer.step_count();
    let mut rows: Vec<String> = std::fs::read_to_string(&csv_path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            l.split(',')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s < start)
        })
        .map(String::from)
        .collect();
    rows.insert(0, "step,loss,mse,vlb,grad_norm,lr".into());
    let mut csv = std::fs::File::create(&csv_path).map_err(|x| x.to_string())?;
    writeln!(csv, "{}", rows.join("\n")).map_err(|x| x.to_string())?;
    let t0 = Instant::now();
    let mut window = (Instant::now(), start);
    let mut avg = None::<f64>;
    while trainer.step_count() < args.steps {
        let s = trainer.train_step().map_err(e)?;
        writeln!(
            csv,
            "{},{:.6},{:.6},{:.6},{:.4},{:.3e}",
            s.step, s.loss.total, s.loss.mse, s.loss.vlb, s.grad_norm, s.lr
        )
        .map_err(|x| x.to_string())?;
        avg = Some(avg.map_or(s.loss.total, |a| 0.95 * a + 0.05 * s.loss.total));
        let done = trainer.step_count();
        if done % args.log_every == 0 || done == args.steps {
            let rate = (done - window.1) as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
            window = (Instant::now(), done);
            eprintln!(
                "step {done}/{}  loss {:.4} (avg {:.4})  |g| {:.3}  lr {:.2e}  {:.2} steps/s  ETA {}",
                args.steps,
                s.loss.total,
                avg.unwrap_or(0.0),
                s.grad_norm,
                s.lr,
                rate,
                fmt_duration((args.steps - done) as f64 / rate.max(1e-9))
            );
        }
        if done % args.save_every == 0 || done == args.steps {
            csv.flush().map_err(|x| x.to_string())?;
            let dir = trainer.save(&args.out, args.keep).map_err(e)?;
            eprintln!("saved {}", dir.display());
        }
    }
    eprintln!(
        "done: {} steps in {}",
        args.steps - start,
        fmt_duration(t0.elapsed().as_secs_f64())
    );
    Ok(())
}

/// `train eval`: the variational bound in bits/dim of a model folder on IDX or PNG images.
fn eval_main(args: &[String]) -> Result<(), String> {
    use tinydiffusion::train::eval;
    use tinydiffusion::train::loss::Variance;
    let (mut model, mut data, mut range, mut k, mut batch, mut seed, mut variance) = (
        None,
        None,
        9000..10000,
        1000usize,
        16usize,
        0u64,
        None::<Variance>,
    );
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{a}: cannot parse `{v}`"))
        };
        match a.as_str() {
            "--model" => model = Some(PathBuf::from(val()?)),
            "--data" => data = Some(PathBuf::from(val()?)),
            "--range" => {
                let v = val()?;
                let (s, e) = v.split_once("..").ok_or("--range takes A..B")?;
                range = num(s.into())? as usize..num(e.into())? as usize;
            }
            "--timesteps" => k = num(val()?)? as usize,
            "--batch" => batch = num(val()?)? as usize,
            "--seed" => seed = num(val()?)?,
            "--variance" => {
                variance = Some(match val()?.as_str() {
                    "fixed_small" => Variance::FixedSmall,
                    "fixed_large" => Variance::FixedLarge,
                    "learned_range" => Variance::Learned,
                    v => {
                        return Err(format!(
                            "--variance: `{v}` (fixed_small | fixed_large | learned_range)"
                        ))
                    }
                })
            }
            other => return Err(format!("eval: unknown argument `{other}`")),
        }
    }
    let e = |e: tinydiffusion::Error| e.to_string();
    let dir = model.ok_or("eval: --model DIR is required")?;
    let files = tinydiffusion::model::load::ModelFiles::find(&dir).map_err(e)?;
    let read_text =
        |p: &Path| std::fs::read_to_string(p).map_err(|x| format!("{}: {x}", p.display()));
    let config = UNetConfig::from_json(&read_text(&files.config)?).map_err(e)?;
    let bytes = std::fs::read(&files.weights).map_err(|x| x.to_string())?;
    // The parameters as this file names them (old or new diffusers names).
    let description = tinydiffusion::model::describe_weights(
        &config,
        tinydiffusion::weights::WeightBytes::Owned(bytes.clone()),
    )
    .map_err(e)?;
    let graph = tinydiffusion::train::TrainGraph::new(&description).map_err(e)?;
    let mut params = vec![0.0f32; graph.params.buffer_len()];
    graph
        .params
        .read_safetensors(&bytes, "", &mut params)
        .map_err(e)?;
    // The training schedule, prediction type and variance from the scheduler config (diffusers'
    // DDPM defaults without one).
    let sc = match &files.scheduler_config {
        Some(p) => SchedulerConfig::from_json(&read_text(p)?).map_err(e)?,
        None => SchedulerConfig::ddpm_default(),
    };
    let sched = NoiseSchedule::new(&sc).map_err(e)?;
    let pred = sc.prediction_type;
    let variance = variance.unwrap_or(match sc.variance_type {
        VarianceType::LearnedRange => Variance::Learned,
        VarianceType::FixedLarge | VarianceType::FixedLargeLog => Variance::FixedLarge,
        _ => Variance::FixedSmall,
    });
    let data_path = data.ok_or("eval: --data is required")?;
    let args_like = Args {
        data: data_path,
        range,
        out: PathBuf::new(),
        config: None,
        init: None,
        steps: 0,
        resume: None,
        save_every: 1,
        keep: 1,
        log_every: 1,
        threads: default_threads(),
        opts: TrainOptions::default(),
        given: Vec::new(),
    };
    tinydiffusion::train::layers::gemm::set_threads(args_like.threads)
        .map_err(|x| format!("cannot start threads: {x}"))?;
    let ds = load_data(&args_like, &config)?;
    let mut ws = graph.workspace(batch.max(1));
    let t0 = Instant::now();
    eprintln!(
        "eval: {} images x {} timesteps, {variance:?} variance, {} prediction",
        ds.len(),
        k.min(sched.steps()),
        pred
    );
    let nll = eval::evaluate(
        &graph,
        &params,
        &mut ws,
        &ds,
        &sched,
        pred,
        variance,
        k,
        seed,
        |done, total| {
            if done % (50 * batch.max(1)) < batch.max(1) || done == total {
                let el = t0.elapsed().as_secs_f64();
                eprint!(
                    "\r{done}/{total} model evaluations, ETA {}   ",
                    fmt_duration(el / done as f64 * (total - done) as f64)
                );
            }
        },
    )
    .map_err(e)?;
    eprintln!();
    println!(
        "bits/dim {:.4} +- {:.4} (prior L_T {:.5}, decoder L_0 {:.4}); {} images, {} timesteps each; {:.0} s",
        nll.bits_per_dim,
        nll.std_err,
        nll.prior,
        nll.decoder,
        nll.images,
        nll.timesteps_per_image,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let all: Vec<String> = std::env::args().collect();
    if all.get(1).map(String::as_str) == Some("eval") {
        return match eval_main(&all[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("train eval: {msg}\n\nusage: train eval --model DIR --data DIR_OR_IDX [--range 9000..10000] [--timesteps K] [--batch B] [--seed S] [--variance V]");
                ExitCode::FAILURE
            }
        };
    }
    match parse() {
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("train: {msg}\n");
            }
            eprintln!("{USAGE}");
            ExitCode::from(if msg.is_empty() { 0 } else { 2 })
        }
        Ok(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("train: {msg}");
                ExitCode::FAILURE
            }
        },
    }
}
