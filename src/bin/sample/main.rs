//! `sample`: the command-line sampler. Errors print one line and exit with status 1.

mod args;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use args::{Command, SampleArgs, SchedulerChoice};
use tinydiffusion::config::{DownBlockKind, UpBlockKind};
use tinydiffusion::io::{read_tensor, write_png_grid, write_tensors};
use tinydiffusion::kernels::KernelPath;
use tinydiffusion::model::load::{read_text, ModelFiles};
use tinydiffusion::sampler::{self, Guidance, Method, SampleOptions, StepInfo};
use tinydiffusion::schedule::{
    DdimPrevTimestep, Predictor, Scheduler, SchedulerConfig, SchedulerKind, SdeConfig, SdeSampler,
};
use tinydiffusion::{Error, Model};

fn main() -> ExitCode {
    // `args_os`: `std::env::args` panics on an argument that is not UTF-8.
    let argv: Result<Vec<String>, String> = std::env::args_os()
        .skip(1)
        .map(|a| {
            a.into_string().map_err(|a| {
                format!(
                    "argument `{}` is not valid UTF-8 (paths and flags must be UTF-8)",
                    a.to_string_lossy()
                )
            })
        })
        .collect();
    let result = match argv.and_then(|argv| args::parse(&argv)) {
        Ok(Command::Help) => {
            print!("{}", args::HELP);
            Ok(())
        }
        Ok(Command::Convert { input, output }) => convert(&input, &output),
        Ok(Command::Info { model, batch }) => info(&model_dir(model.as_deref()), batch),
        Ok(Command::Sample(a)) => run(&a),
        Err(message) => Err(message),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The default model: `weights/` in the working directory, else the one beside the sources.
fn model_dir(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    let local = PathBuf::from("weights");
    if local.join("config.json").is_file() || local.join("model_index.json").is_file() {
        return local;
    }
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    if built_in.is_dir() {
        built_in
    } else {
        local
    }
}

fn load_model(dir: &Path) -> Result<Model, String> {
    let has_model = dir.join("config.json").is_file() || dir.join("model_index.json").is_file();
    if !has_model && dir.ends_with("weights") && dir.is_dir() {
        return Err(format!(
            "{}: no default model has been shipped yet (the MNIST model is trained by the `train` tool); \
             pass --model DIR with a diffusers UNet2DModel or pipeline folder",
            dir.display()
        ));
    }
    Model::load(dir).map_err(|e| e.to_string())
}

/// The scheduler as diffusers' `from_config` would build it from the folder's config (or the
/// defaults), converted to the requested class.
fn scheduler_config(dir: &Path, choice: Option<SchedulerChoice>) -> Result<SchedulerConfig, Error> {
    let files = ModelFiles::find(dir)?;
    let base = match &files.scheduler_config {
        Some(path) => SchedulerConfig::from_json(&read_text(path)?)?,
        None => SchedulerConfig::ddpm_default(),
    };
    Ok(match choice {
        None => base,
        Some(SchedulerChoice::Ddpm) => base.with_kind(SchedulerKind::Ddpm),
        Some(SchedulerChoice::Ddim) => base.with_kind(SchedulerKind::Ddim),
        // The continuous-time samplers read only the schedule and the prediction type.
        Some(_) => base,
    })
}

fn convert(input: &Path, output: &Path) -> Result<(), String> {
    let report = tinydiffusion::weights::convert::convert_folder(input, output)
        .map_err(|e| e.to_string())?;
    println!(
        "wrote {} ({} tensors, {} converted to f16, {} -> {} bytes)",
        output.display(),
        report.tensors,
        report.converted,
        report.bytes_in,
        report.bytes_out
    );
    Ok(())
}

fn info(dir: &Path, batch: usize) -> Result<(), String> {
    if batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let model = load_model(dir)?;
    let c = &model.config;
    println!("model            {}", dir.display());
    println!(
        "sample size      {}x{}, {} -> {} channels",
        c.sample_size.0, c.sample_size.1, c.in_channels, c.out_channels
    );
    println!(
        "blocks           {:?} x {} layers",
        c.block_out_channels, c.layers_per_block
    );
    let names = |v: Vec<&str>| v.join(", ");
    println!(
        "down blocks      {}",
        names(
            c.down_blocks
                .iter()
                .map(|k| match k {
                    DownBlockKind::Plain => "DownBlock2D",
                    DownBlockKind::Attention => "AttnDownBlock2D",
                })
                .collect()
        )
    );
    println!(
        "up blocks        {}",
        names(
            c.up_blocks
                .iter()
                .map(|k| match k {
                    UpBlockKind::Plain => "UpBlock2D",
                    UpBlockKind::Attention => "AttnUpBlock2D",
                })
                .collect()
        )
    );
    match &c.mid_block {
        None => println!("mid block        none"),
        Some(m) => println!(
            "mid block        UNetMidBlock2D, {}, output scale {}",
            if m.add_attention {
                "with attention"
            } else {
                "no attention"
            },
            m.scale_factor
        ),
    }
    println!(
        "classes          {}",
        c.num_class_embeds
            .map_or("unconditional".into(), |n| n.to_string())
    );
    println!("parameters       {}", model.parameters());
    println!(
        "GFLOP per step   {:.3} per image",
        model.flops_per_sample() as f64 / 1e9
    );
    println!(
        "workspace        {} bytes for a forward pass at batch {batch}",
        model.workspace_bytes(batch)
    );
    let sched = Scheduler::new(scheduler_config(dir, None).map_err(|e| e.to_string())?, 1)
        .map_err(|e| e.to_string())?;
    let floats = sampler::workspace_len(&model, &sched, batch, false);
    print!(
        "                 {} bytes for sampling at batch {batch}",
        floats * 4
    );
    if model.config.num_class_embeds.is_some() {
        print!(
            " ({} with guidance)",
            sampler::workspace_len(&model, &sched, batch, true) * 4
        );
    }
    println!();
    println!("kernels          {}", model.kernels_name());
    Ok(())
}

fn run(a: &SampleArgs) -> Result<(), String> {
    let t0 = Instant::now();
    let dir = model_dir(a.model.as_deref());
    let mut model = load_model(&dir)?;
    if let Some(k) = &a.kernels {
        let path = KernelPath::from_name(k).map_err(|e| e.to_string())?;
        model.set_kernels(path).map_err(|e| e.to_string())?;
    }
    if a.direct_conv {
        model.set_winograd(false);
    }
    if let Some(n) = a.threads {
        model.set_threads(n).map_err(|e| e.to_string())?;
    }
    model.to_device(a.device).map_err(|e| e.to_string())?;
    let (c, h, w) = model.input_shape();
    if a.height.is_some_and(|v| v != h) || a.width.is_some_and(|v| v != w) {
        return Err(format!(
            "--height/--width: this model samples at {h}x{w} only"
        ));
    }
    let mut sched_cfg = scheduler_config(&dir, a.scheduler).map_err(|e| e.to_string())?;
    if a.ddim_next {
        sched_cfg.ddim_prev_timestep = DdimPrevTimestep::NextInSchedule;
    }
    let sde_cfg = match a.scheduler {
        Some(SchedulerChoice::Sde) => Some(SdeConfig::sde(a.steps.unwrap_or(1000))),
        Some(SchedulerChoice::Ode) => Some(SdeConfig::ode(
            if a.ode_heun {
                Predictor::OdeHeun
            } else {
                Predictor::OdeEuler
            },
            a.steps.unwrap_or(50),
        )),
        Some(SchedulerChoice::Pc) => Some(SdeConfig::pc(a.steps.unwrap_or(500), a.corrector_steps)),
        _ => None,
    }
    .map(|c| SdeConfig {
        snr: a.snr,
        t_eps: a.sde_eps,
        ..c
    });
    let steps = a.steps.unwrap_or(match sched_cfg.kind {
        SchedulerKind::Ddpm => sched_cfg.num_train_timesteps,
        SchedulerKind::Ddim => 50,
    });
    let (scheduler, sde) = match sde_cfg {
        Some(c) => (
            None,
            Some(SdeSampler::new(&sched_cfg, c).map_err(|e| e.to_string())?),
        ),
        None => {
            let mut s = Scheduler::new(sched_cfg, steps).map_err(|e| e.to_string())?;
            s.set_eta(a.eta);
            (Some(s), None)
        }
    };
    let method = match (&scheduler, &sde) {
        (Some(s), _) => Method::Scheduler(s),
        (None, Some(s)) => Method::Sde(s),
        (None, None) => unreachable!("one of the two is built"),
    };
    let steps = method.num_steps();
    let noise_rows = method.noise_rows();

    let n = a.batch * c * h * w;
    let read = |path: &Option<PathBuf>,
                name: &str,
                expected: &[usize]|
     -> Result<Option<Vec<f32>>, String> {
        let Some(path) = path else { return Ok(None) };
        let (data, shape) = read_tensor(path, name).map_err(|e| e.to_string())?;
        if shape != expected {
            return Err(format!(
                "{}: tensor {name} has shape {shape:?}, expected {expected:?}",
                path.display()
            ));
        }
        Ok(Some(data))
    };
    let init = read(&a.init_noise, "x_T", &[a.batch, c, h, w])?;
    let step_noise = read(&a.step_noise, "noise", &[noise_rows, a.batch, c, h, w])?;

    let labels: Option<Vec<i64>> = match model.config.num_class_embeds {
        // By default the grid shows every class: image i gets class i, cycling over all classes
        // but the last, which is the null class of classifier-free guidance by convention.
        Some(n) => Some(a.class_labels.clone().unwrap_or_else(|| {
            let real = (n as i64 - 1).max(1);
            (0..a.batch as i64).map(|i| i % real).collect()
        })),
        None if a.class_labels.is_some() => {
            return Err("--class-label: the model is not class-conditional".into())
        }
        None => None,
    };
    let guidance = if a.guidance != 0.0 || a.null_class.is_some() {
        let mut g = Guidance::new(&model, a.guidance).map_err(|e| e.to_string())?;
        if let Some(nc) = a.null_class {
            g.null_class = nc;
        }
        Some(g)
    } else {
        None
    };
    let opts = SampleOptions {
        batch: a.batch,
        seed: a.seed,
        initial_noise: init.as_deref(),
        step_noise: step_noise.as_deref(),
        class_labels: labels.as_deref(),
        guidance,
    };
    let mut workspace =
        vec![0.0f32; sampler::workspace_len_with(&model, method, a.batch, guidance.is_some())];
    let mut out = vec![0.0f32; n];
    let start = Instant::now();
    let setup_ms = t0.elapsed().as_secs_f64() * 1e3;
    let quiet = a.quiet;
    let mut progress = |s: &StepInfo<'_>| {
        if quiet {
            return;
        }
        let done = s.index + 1;
        let elapsed = start.elapsed().as_secs_f64();
        let eta = elapsed / done as f64 * (s.steps - done) as f64;
        eprint!(
            "\rstep {done}/{} (t={}), {elapsed:.1}s elapsed, eta {eta:.1}s   ",
            s.steps, s.timestep
        );
    };
    sampler::sample_with(
        &model,
        method,
        &mut workspace,
        &opts,
        &mut out,
        Some(&mut progress),
    )
    .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    if !quiet {
        eprintln!();
    }

    let (grid_c, grid) = (
        c,
        a.grid
            .unwrap_or_else(|| (a.batch as f64).sqrt().ceil() as usize),
    );
    write_png_grid(&a.out, &out, a.batch, grid_c, h, w, grid).map_err(|e| e.to_string())?;
    if let Some(path) = &a.save_tensor {
        write_tensors(path, &[("x_0", &[a.batch, c, h, w], &out)]).map_err(|e| e.to_string())?;
    }
    if !quiet {
        eprintln!(
            "{steps} steps ({} model evaluations), batch {}, {:.2}s ({:.2} images/s), setup {:.0} ms, workspace {:.1} MiB, peak RSS {}, kernels {}; wrote {}",
            method.model_evaluations() * if guidance.is_some() { 2 } else { 1 },
            a.batch,
            secs,
            a.batch as f64 / secs,
            setup_ms,
            (workspace.len() * 4) as f64 / (1 << 20) as f64,
            peak_rss().map_or("n/a".into(), |kib| format!("{:.1} MiB", kib as f64 / 1024.0)),
            match model.device() {
                tinydiffusion::Device::Cpu => model.kernels_name().to_string(),
                gpu => gpu.to_string(),
            },
            a.out.display()
        );
    }
    Ok(())
}

/// Peak resident memory in KiB (Linux: `VmHWM` of /proc/self/status).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
