//! `sample`: the command-line sampler. Errors print one line and exit with status 1.

mod args;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use args::{Command, SampleArgs};
use tinydiffusion::config::{DownBlockKind, UpBlockKind};
use tinydiffusion::io::{read_tensor, write_png_grid, write_tensors};
use tinydiffusion::kernels::KernelPath;
use tinydiffusion::memory::Reuse;
use tinydiffusion::model::load::ModelFiles;
use tinydiffusion::sampler::{
    Guidance, SampleOptions, Sampler, SamplerKind, SamplerSpec, StepInfo, TextConditioning,
};
use tinydiffusion::schedule::{DdimPrevTimestep, SchedulerConfig};
use tinydiffusion::text::ClipTokenizer;
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
        Ok(Command::Info { model, batch, ops }) => info(&model_dir(model.as_deref()), batch, ops),
        Ok(Command::Sample(a)) => run(&a),
        Ok(Command::Tokenize { model, prompt }) => tokenize(&model, &prompt),
        Ok(Command::Decode {
            vae,
            latents,
            out,
            save_tensor,
        }) => decode(&vae, &latents, &out, save_tensor.as_deref()),
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

/// `sample tokenize`: the padded ids as one JSON array on stdout.
fn tokenize(dir: &Path, prompt: &str) -> Result<(), String> {
    let tokenizer = tinydiffusion::text::ClipTokenizer::from_dir(dir).map_err(|e| e.to_string())?;
    let ids = tokenizer.encode(prompt);
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    println!("[{}]", list.join(", "));
    Ok(())
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

/// The folder's scheduler config (diffusers' `DDPMScheduler()` defaults when it has none):
/// what the sampler is built from.
fn scheduler_config(dir: &Path) -> Result<SchedulerConfig, Error> {
    ModelFiles::find(dir)?.load_scheduler_config()
}

/// The sampler the flags ask for; every option not given takes the front end's default
/// (`SamplerSpec`), which also checks the values.
fn sampler_spec(a: &SampleArgs) -> SamplerSpec {
    SamplerSpec {
        kind: a.scheduler,
        steps: a.steps,
        eta: a.eta,
        ddim_prev_timestep: a.ddim_next.then_some(DdimPrevTimestep::NextInSchedule),
        use_clipped_model_output: None,
        // `--ode-solver` is an option of `--scheduler ode` only (pc keeps Euler-Maruyama).
        predictor: a
            .ode_solver
            .filter(|_| a.scheduler == Some(SamplerKind::Ode)),
        corrector_steps: a.corrector_steps,
        snr: a.snr,
        t_eps: a.sde_eps,
        denoise: None,
        dpm_algorithm: a.scheduler_named.and_then(|n| n.dpm_algorithm),
        solver_order: a.scheduler_named.and_then(|n| n.solver_order),
    }
}

/// A sampler error, naming the flag of the value it rejects.
fn sampler_error(e: Error) -> String {
    let flag = match &e {
        Error::InvalidArgument { what, .. } => match *what {
            "steps" => "--steps",
            "eta" => "--eta",
            "snr" => "--snr",
            "sde eps" => "--sde-eps",
            "predictor" => "--ode-solver",
            _ => "",
        },
        _ => "",
    };
    if flag.is_empty() {
        e.to_string()
    } else {
        format!("{flag}: {e}")
    }
}

fn convert(input: &Path, output: &Path) -> Result<(), String> {
    let report =
        tinydiffusion::model::convert::convert_folder(input, output).map_err(|e| e.to_string())?;
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

fn info(dir: &Path, batch: usize, list_ops: bool) -> Result<(), String> {
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
                    DownBlockKind::ResnetDownsample => "ResnetDownsampleBlock2D",
                    DownBlockKind::Skip => "SkipDownBlock2D",
                    DownBlockKind::AttentionSkip => "AttnSkipDownBlock2D",
                    DownBlockKind::CrossAttention => "CrossAttnDownBlock2D",
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
                    UpBlockKind::ResnetUpsample => "ResnetUpsampleBlock2D",
                    UpBlockKind::Skip => "SkipUpBlock2D",
                    UpBlockKind::AttentionSkip => "AttnSkipUpBlock2D",
                    UpBlockKind::CrossAttention => "CrossAttnUpBlock2D",
                })
                .collect()
        )
    );
    match &c.mid_block {
        None => println!("mid block        none"),
        Some(m) => println!(
            "mid block        {}, {}, output scale {}",
            if c.cross_attention.is_some() {
                "UNetMidBlock2DCrossAttn"
            } else {
                "UNetMidBlock2D"
            },
            if m.add_attention {
                "with attention"
            } else {
                "no attention"
            },
            m.scale_factor
        ),
    }
    if c.time_fourier {
        println!("time embedding   fourier (sigma-conditioned, output / sigma)");
    }
    println!(
        "classes          {}",
        c.num_class_embeds
            .map_or("unconditional".into(), |n| n.to_string())
    );
    println!(
        "resnets          act_fn {:?}, time embedding norm {}, time embedding {}{}",
        c.act_fn,
        if c.scale_shift {
            "scale_shift"
        } else {
            "default"
        },
        c.learned_time_embedding
            .map_or("positional".into(), |n| format!("learned ({n} steps)")),
        if c.timestep_class_embedding {
            ", class labels through the sinusoid (class_embed_type timestep)"
        } else {
            ""
        }
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
    let sampler = SamplerSpec::new(None)
        .steps(1)
        .build(&scheduler_config(dir).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let floats = sampler.workspace_len(&model, batch, false);
    print!(
        "                 {} bytes for sampling at batch {batch}",
        floats * 4
    );
    if model.config.num_class_embeds.is_some() || model.text_encoder().is_some() {
        print!(
            " ({} with guidance)",
            sampler.workspace_len(&model, batch, true) * 4
        );
    }
    println!();
    if let Some(d) = model.decoder() {
        println!(
            "decoder          {}, {:?} latents -> {:?} image, {} parameters, {:.3} GFLOP per \
             image, {} bytes for a decode at batch {batch} (inside the sampling workspace: it \
             reuses the UNet's arena after the last step)",
            d.config.class_name(),
            d.latent_shape(),
            d.image_shape(),
            d.parameters(),
            d.net().flops_per_sample() as f64 / 1e9,
            d.workspace_len(batch) * 4
        );
    }
    if let Some(t) = model.text_encoder() {
        println!(
            "text encoder     CLIPTextModel, {} layers, hidden {}, {} heads, {}, {} tokens, \
             vocabulary {}, {} parameters, {} bytes for encoding {batch} prompt{} (inside the \
             sampling workspace: it runs in the UNet's arena before the first step)",
            t.config.num_hidden_layers,
            t.config.hidden_size,
            t.config.num_attention_heads,
            match t.config.hidden_act {
                tinydiffusion::model::Activation::QuickGelu => "quick_gelu",
                _ => "gelu",
            },
            t.tokens(),
            t.config.vocab_size,
            t.parameters(),
            t.workspace_len(batch) * 4,
            if batch == 1 { "" } else { "s" }
        );
        if let Ok(files) = ModelFiles::find(dir) {
            if !files.not_run.is_empty() {
                println!(
                    "not run          {} (present in the folder, not loaded)",
                    files.not_run.join(", ")
                );
            }
        }
    }
    println!("kernels          {}", model.kernels_name());
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for op in model.ops() {
        match counts.iter_mut().find(|(k, _)| *k == op.kind()) {
            Some((_, n)) => *n += 1,
            None => counts.push((op.kind(), 1)),
        }
    }
    let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "ops              {} ({})",
        model.ops().len(),
        counts.join(", ")
    );
    if list_ops {
        println!();
        for (i, op) in model.ops().iter().enumerate() {
            let name = op
                .output()
                .map_or("(output)", |t| model.tensors()[t].name.as_str());
            println!("{i:>4}  {:<16} {name}", op.kind());
        }
    }
    Ok(())
}

fn run(a: &SampleArgs) -> Result<(), String> {
    let t0 = Instant::now();
    // Without --batch, an injected x_T decides how many images there are.
    let mut a = a.clone();
    if let (false, Some(path)) = (a.batch_given, &a.init_noise) {
        let (_, shape) = read_tensor(path, "x_T").map_err(|e| e.to_string())?;
        a.batch = shape.first().copied().unwrap_or(a.batch);
        if let Some(l) = &a.class_labels {
            args::check_label_count(l, a.batch)?;
        }
    }
    let dir = model_dir(a.model.as_deref());
    let files = ModelFiles::find(&dir).ok();
    let text_pipeline = files.as_ref().is_some_and(|f| f.text_encoder.is_some());
    if !text_pipeline {
        for (given, flag) in [
            (a.prompt.is_some(), "--prompt"),
            (a.negative_prompt.is_some(), "--negative-prompt"),
            (a.guidance_scale.is_some(), "--guidance-scale"),
            (a.clip_skip.is_some(), "--clip-skip"),
        ] {
            if given {
                return Err(format!(
                    "{flag}: {} is not a text-to-image pipeline (no text_encoder)",
                    dir.display()
                ));
            }
        }
    } else if !a.batch_given && a.init_noise.is_none() {
        // diffusers' num_images_per_prompt default.
        a.batch = 1;
    }
    let a = &a;
    let mut model = match (
        &files,
        text_pipeline && (a.height.is_some() || a.width.is_some()),
    ) {
        // The UNet's and the decoder's op lists are built for the requested size.
        (Some(f), true) => {
            let (h, w) = default_image_size(f).map_err(|e| e.to_string())?;
            let size = (a.height.unwrap_or(h), a.width.unwrap_or(w));
            Model::load_sized(&dir, Default::default(), Reuse::Shared, Some(size))
                .map_err(|e| e.to_string())?
        }
        _ => load_model(&dir)?,
    };
    // The tokenizer the model was loaded with (a text-to-image pipeline's).
    let text_ids = match (&files, model.tokenizer()) {
        (Some(f), Some(tokenizer)) => Some(text_ids(tokenizer, f, a)?),
        _ => None,
    };
    if let Some(skip) = a.clip_skip {
        model
            .set_clip_skip(skip)
            .map_err(|e| format!("--clip-skip {skip}: {e}"))?;
    }
    if let Some(k) = &a.kernels {
        let path = KernelPath::from_name(k).map_err(|e| e.to_string())?;
        model.set_kernels(path).map_err(|e| e.to_string())?;
    }
    if a.precision != tinydiffusion::Precision::F32 {
        model
            .set_precision(a.precision)
            .map_err(|e| format!("--precision {}: {e}", a.precision.name()))?;
    }
    if a.direct_conv {
        model.set_winograd(false);
    }
    if let Some(n) = a.threads {
        model.set_threads(n).map_err(|e| e.to_string())?;
    }
    model.to_device(a.device).map_err(|e| e.to_string())?;
    let (c, h, w) = model.input_shape();
    if text_pipeline {
        // Checked by the load above.
    } else if a.height.is_some_and(|v| v != h) || a.width.is_some_and(|v| v != w) {
        return Err(format!(
            "--height/--width: this model samples at {h}x{w} only"
        ));
    }
    let sched_cfg = match &a.scheduler_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--scheduler-config {}: {e}", path.display()))?;
            SchedulerConfig::from_json(&text)
                .map_err(|e| format!("--scheduler-config {}: {e}", path.display()))?
        }
        None => scheduler_config(&dir).map_err(|e| e.to_string())?,
    };
    let sampler = Sampler::new(&sampler_spec(a), &sched_cfg).map_err(sampler_error)?;
    let steps = sampler.num_steps();
    let noise_rows = sampler.noise_rows();

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
    // DDPM/DDIM also take one row per draw (diffusers' order: no row for DDPM's t = 0).
    let draws = sampler.method().noise_draws();
    let rows = match &a.step_noise {
        Some(path) if draws != noise_rows => {
            let (_, shape) = read_tensor(path, "noise").map_err(|e| e.to_string())?;
            if shape.first() == Some(&draws) {
                draws
            } else {
                noise_rows
            }
        }
        _ => noise_rows,
    };
    let step_noise = read(&a.step_noise, "noise", &[rows, a.batch, c, h, w])?;

    let labels: Option<Vec<i64>> = match model.config.num_class_embeds {
        // No --class-label: the sampler front end's default (`default_class_label`, shared
        // with the C API), so the grid shows every class: image i gets class i, cycling over
        // all classes but the last (the null class of classifier-free guidance).
        Some(_) => a.class_labels.clone(),
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
        text: text_ids.as_ref().map(|t| TextConditioning {
            prompt_ids: &t.0,
            negative_ids: t.1.as_deref(),
            guidance_scale: t.2,
        }),
        threads: 0,
    };
    let guided = guidance.is_some() || opts.text.is_some_and(|t| t.guided());
    let mut workspace = vec![0.0f32; sampler.workspace_len(&model, a.batch, guided)];
    // A latent pipeline returns the decoded image; the loop's latents stay in the workspace.
    let (c, h, w) = model.image_shape();
    let mut out = vec![0.0f32; a.batch * c * h * w];
    let start = Instant::now();
    let setup_ms = t0.elapsed().as_secs_f64() * 1e3;
    let quiet = a.quiet;
    // On a terminal one line, rewritten every step; into a log (stderr not a terminal) at most
    // about ten lines: every 10% of the steps and the last one.
    let tty = std::io::stderr().is_terminal();
    let mut progress = |s: &StepInfo<'_>| {
        let done = s.index + 1;
        if quiet || !(tty || done.is_multiple_of(s.steps.div_ceil(10).max(1)) || done == s.steps) {
            return;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let eta = elapsed / done as f64 * (s.steps - done) as f64;
        let line = format!(
            "step {done}/{} (t={}), {elapsed:.1}s elapsed, eta {eta:.1}s",
            s.steps, s.timestep
        );
        if tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    };
    sampler
        .sample(&model, &mut workspace, &opts, &mut out, Some(&mut progress))
        .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    if !quiet && tty {
        eprintln!();
    }

    // The tensor first: a picture that cannot be drawn must not lose the result.
    if let Some(path) = &a.save_tensor {
        write_tensors(path, &[("x_0", &[a.batch, c, h, w], &out)]).map_err(|e| e.to_string())?;
    }
    let cols = a
        .grid
        .unwrap_or_else(|| (a.batch as f64).sqrt().ceil() as usize);
    let picture = if a.out.as_os_str() == "none" {
        None
    } else if c == 1 || c == 3 {
        write_png_grid(&a.out, &out, a.batch, c, h, w, cols).map_err(|e| e.to_string())?;
        Some(a.out.display().to_string())
    } else {
        // No colour mapping for other channel counts (latents, learned-variance halves):
        // each image is a row of its channels as gray tiles. Only a preview: if it cannot be
        // written the run still succeeds (its result is the tensor), with a one-line note.
        match write_png_grid(&a.out, &out, a.batch * c, 1, h, w, c) {
            Ok(()) => {
                if !quiet {
                    eprintln!(
                        "{c} channels: {} shows each image's channels as a row of gray tiles",
                        a.out.display()
                    );
                }
                Some(a.out.display().to_string())
            }
            Err(e) => {
                eprintln!("note: {c}-channel preview not written ({e})");
                None
            }
        }
    };
    if !quiet {
        eprintln!(
            "{steps} steps ({} model evaluations), batch {}, {:.2}s ({:.2} images/s), setup {:.0} ms, workspace {:.1} MiB, peak RSS {}, kernels {}; wrote {}",
            sampler.model_evaluations() * if guided { 2 } else { 1 },
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
            match (&picture, &a.save_tensor) {
                (Some(p), Some(t)) => format!("{p} and {}", t.display()),
                (Some(p), None) => p.clone(),
                (None, Some(t)) => t.display().to_string(),
                (None, None) => "nothing (--out none)".into(),
            }
        );
    }
    Ok(())
}

/// diffusers' default image size of a pipeline folder: the UNet's `sample_size` times the
/// decoder's upscale (`vae_scale_factor`), read from the configs without loading weights.
fn default_image_size(files: &ModelFiles) -> Result<(usize, usize), Error> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| Error::Io {
            path: p.display().to_string(),
            message: e.to_string(),
        })
    };
    let unet = tinydiffusion::UNetConfig::from_json(&read(&files.config)?)?;
    let up = match &files.decoder {
        Some(d) => tinydiffusion::model::decoder_config::DecoderConfig::from_json(&read(
            &d.join("config.json"),
        )?)?
        .upscale(),
        None => 1,
    };
    Ok((unet.sample_size.0 * up, unet.sample_size.1 * up))
}

/// A text-to-image run's ids: the prompt (one for every image), the negative prompt (`""`
/// when none is given, as diffusers) when guidance is on, and the guidance scale. Notes on
/// stderr for a missing `--prompt` and for the components that are not run.
type TextIds = (Vec<u32>, Option<Vec<u32>>, f32);

fn text_ids(
    tokenizer: &ClipTokenizer,
    files: &ModelFiles,
    a: &SampleArgs,
) -> Result<TextIds, String> {
    if !files.not_run.is_empty() && !a.quiet {
        eprintln!(
            "note: {} present in the folder, not loaded nor run",
            files.not_run.join(", ")
        );
    }
    let prompt = match &a.prompt {
        Some(p) => p.as_str(),
        None => {
            eprintln!("note: no --prompt: sampling the empty prompt \"\"");
            ""
        }
    };
    let scale = a.guidance_scale.unwrap_or(7.5);
    let negative =
        (scale > 1.0).then(|| tokenizer.encode(a.negative_prompt.as_deref().unwrap_or("")));
    Ok((tokenizer.encode(prompt), negative, scale))
}

/// `sample decode`: a decoder folder's `decode` of a latents file (its one tensor, or `x_0`).
fn decode(vae: &Path, latents: &Path, out: &Path, save: Option<&Path>) -> Result<(), String> {
    let file = std::fs::read(latents).map_err(|e| format!("{}: {e}", latents.display()))?;
    let names = safetensors::SafeTensors::deserialize(&file)
        .map_err(|e| format!("{}: {e}", latents.display()))?
        .names()
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    let name = match names.as_slice() {
        [one] => one.clone(),
        _ if names.iter().any(|n| n == "x_0") => "x_0".into(),
        _ => {
            return Err(format!(
                "{}: holds {} tensors; give a file with one (or one named x_0)",
                latents.display(),
                names.len()
            ))
        }
    };
    let (mut z, shape) = read_tensor(latents, &name).map_err(|e| e.to_string())?;
    let [b, _, lh, lw] = shape[..] else {
        return Err(format!(
            "{}: tensor {name} has shape {shape:?}, expected [B, C, h, w]",
            latents.display()
        ));
    };
    let decoder = tinydiffusion::model::decoder::Decoder::load_with(
        vae,
        (lh, lw),
        Default::default(),
        tinydiffusion::memory::Reuse::Shared,
    )
    .map_err(|e| e.to_string())?;
    let (c, _, _) = decoder.latent_shape();
    if shape[1] != c {
        return Err(format!(
            "{}: tensor {name} has {} channels, the decoder takes {c}",
            latents.display(),
            shape[1]
        ));
    }
    let (oc, oh, ow) = decoder.image_shape();
    let mut image = vec![0.0f32; b * oc * oh * ow];
    let mut ws = vec![0.0f32; decoder.workspace_len(b)];
    let start = Instant::now();
    decoder
        .decode(0, &mut ws, &mut z, &mut image)
        .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    if let Some(path) = save {
        write_tensors(path, &[("image", &[b, oc, oh, ow], &image)]).map_err(|e| e.to_string())?;
    }
    if out.as_os_str() != "none" {
        let cols = (b as f64).sqrt().ceil() as usize;
        write_png_grid(out, &image, b, oc, oh, ow, cols).map_err(|e| e.to_string())?;
    }
    eprintln!(
        "decoded {b} x {:?} latents to {oc}x{oh}x{ow} in {secs:.2}s with {} ({} parameters)",
        &shape[1..],
        decoder.config.class_name(),
        decoder.parameters()
    );
    Ok(())
}

/// Peak resident memory in KiB (Linux: `VmHWM` of /proc/self/status).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
