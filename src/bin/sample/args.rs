//! Command-line flags of `sample`, parsed by hand to keep the binary small.

use std::path::PathBuf;

use tinydiffusion::sampler::{SamplerKind, SamplerSpec};
use tinydiffusion::schedule::Predictor;

pub const HELP: &str = "\
sample: draw images from a diffusers UNet2DModel or pipeline folder (DDPM, DDIM, latent,
text-to-image StableDiffusionPipeline) with DDPM, DDIM, sigma or score-SDE samplers

USAGE:
    sample [FLAGS]                 sample from --model (default: the model in weights/)
    sample convert IN_DIR OUT_DIR  write an f16 copy of a model that loads without copying
    sample info [DIR] [--batch B] [--ops]
                                   print configuration, parameters, FLOPs, workspace bytes;
                                   --ops: the whole op list, one primitive op a line
    sample decode --vae DIR --latents FILE [--out img.png] [--save-tensor FILE]
                                   decode latents (safetensors, one tensor [B,C,h,w]) with a
                                   VQModel or AutoencoderKL folder (no scaling_factor applied)
    sample tokenize --model DIR --prompt TEXT
                                   print the CLIP token ids the text encoder receives (start,
                                   prompt, end, padding: model_max_length ids) as one JSON
                                   array; DIR: a pipeline folder with tokenizer/, or the
                                   tokenizer folder itself

FLAGS:
    --model DIR          UNet2DModel folder or diffusers pipeline folder   [default: weights]
    --scheduler NAME     ddpm | ddim | euler | euler-a | dpm | dpm++2m | dpm++2m-sde |
                         heun | unipc | pndm | lms | dpm-singlestep | dpm++2s | kdpm2 |
                         kdpm2-a | deis | ipndm | sde | ode | pc | sde-ve | cm | lcm | tcd,
                         or a diffusers class name (EulerDiscreteScheduler, ...); keeps the
                         folder's schedule options                  [default: the folder's]
                         sde: reverse-time VP-SDE, Euler-Maruyama; ode: probability-flow
                         ODE; pc: Euler-Maruyama predictor + Langevin corrector;
                         sde-ve (score-sde-ve): diffusers' ScoreSdeVeScheduler; cm
                         (consistency): CMStochasticIterativeScheduler; lcm, tcd
    --scheduler-config FILE  a diffusers scheduler_config.json (its _class_name and
                         options) used instead of the folder's
    --steps N            inference (predictor) steps; the default, for a model trained with
                         T timesteps: ddpm T, ddim min(50, T), sde min(1000, T),
                         ode min(50, T), pc min(500, T), euler/euler-a/dpm/heun/unipc/pndm/lms/
                         dpm-singlestep/kdpm2/kdpm2-a/deis/ipndm min(50, T),
                         sde-ve min(2000, T), cm 1, lcm/tcd min(4, T)
    --ode-solver NAME    ode: euler (1 evaluation per step) | heun (2)     [default: heun]
    --corrector-steps N  pc, sde-ve: Langevin corrector steps per step
                                            [default: 1; sde-ve: the config's correct_steps]
    --snr F              pc, sde-ve: signal-to-noise ratio of the Langevin step size
                                            [default: 0.16; sde-ve: the config's snr]
    --sde-eps F          sde/ode/pc: last time of the grid t in [eps, 1], followed by one
                         Tweedie denoising step                            [default: 0.001]
    --eta F              DDIM eta (0 = deterministic)                          [default: 0]
                         tcd: gamma, in [0, 1]                                [default: 0.3]
    --ddim-prev MODE     DDIM previous timestep: diffusers (t - T/N) | next (the next
                         scheduled timestep, correct for trailing/linspace)  [default: diffusers]
    --batch B            images per run (text-to-image: images per prompt)
                         [default: the batch of --init-noise, else 4 (text-to-image: 1)]
    --seed S             seed of the built-in noise generator                  [default: 0]
    --class-label K[,K..]  class of every image, or one per image (class-conditional
                         models)       [default: 0, 1, 2, ... cycling over all but the last class]
    --guidance W         classifier-free guidance weight w (eps = (1+w) eps_y - w eps_null)
                                                                               [default: 0]
    --null-class K       label used as 'no class' for guidance       [default: last class]
    --prompt TEXT        text-to-image pipelines (StableDiffusionPipeline): the prompt of
                         every image                         [default: the empty prompt \"\"]
    --negative-prompt TEXT  the negative prompt (guidance only)   [default: \"\", as diffusers]
    --clip-skip N        the prompt's states from the text encoder's layer N before the last
                         (then its final LayerNorm), as diffusers' clip_skip; the negative
                         prompt keeps the last hidden state, as diffusers         [default: 0]
    --guidance-scale S   text guidance: eps = uncond + S (cond - uncond), on when S > 1
                                                                             [default: 7.5]
    --init-noise FILE    safetensors with tensor x_T [B,C,H,W] f32 to start from
    --init-noise is the standard normal draw: euler, euler-a and heun multiply it by the
                         scheduler's init_noise_sigma, as diffusers does
    --step-noise FILE    safetensors with tensor noise [S,B,C,H,W] f32, row i for step i
                         (ddpm/ddim: or row k for the k-th draw, as diffusers draws them,
                         none at DDPM's t = 0; sde/pc/sde-ve: row k for the k-th draw; euler-a and
                         dpm++2m-sde: one row per step; lcm/tcd: one per step but the last;
                         cm: one per step when steps > 1)
    --save-tensor FILE   also write the final sample as tensor x_0 [B,C,H,W] f32 (sde-ve:
                         the last step's sample_mean, before the pipeline's clamp; latent and
                         text-to-image pipelines: the decoder output before (x/2+0.5).clamp)
    --out PATH           PNG grid of the batch, or `none`            [default: samples.png]
                         (a model with other than 1 or 3 channels: each image's channels
                         as a row of gray tiles)
    --grid COLS          images per row of the grid                 [default: ceil(sqrt(B))]
    --height H, --width W  text-to-image pipelines: image size, multiples of 8 (the UNet and
                         decoder are built for it) [default: unet sample_size x vae scale];
                         other models: must equal the model's sample_size
    --threads N          worker threads                                 [default: all cores]
    --kernels NAME       force a kernel path (scalar, ...)                [default: fastest]
    --precision P        f32, or f16 (f16 arithmetic in convs and linears;
                         needs an aarch64 CPU with FEAT_FP16)            [default: f32]
    --conv ALGO          winograd (3x3 convs where it pays) or direct     [default: winograd]
    --device DEV         cpu, cuda or cuda:N (needs a build with --features cuda)
                                                                            [default: cpu]
    --quiet              no progress line
    -h, --help           this text
";

#[derive(Debug, Clone)]
pub struct SampleArgs {
    pub model: Option<PathBuf>,
    /// `None`: the folder's scheduler class. Every sampler option left `None` takes the
    /// front end's default ([`tinydiffusion::sampler::SamplerSpec`]), which also checks them.
    pub scheduler: Option<SamplerKind>,
    /// What `--scheduler NAME` asks for beyond the kind (the `dpm++2m` aliases).
    pub scheduler_named: Option<SamplerSpec>,
    pub steps: Option<usize>,
    /// `--ode-solver`: `OdeHeun` or `OdeEuler` (used by `--scheduler ode` only).
    pub ode_solver: Option<Predictor>,
    pub corrector_steps: Option<usize>,
    pub snr: Option<f64>,
    pub sde_eps: Option<f64>,
    pub eta: Option<f64>,
    pub ddim_next: bool,
    pub batch: usize,
    /// Whether `--batch` was given (otherwise an `--init-noise` tensor sets the batch).
    pub batch_given: bool,
    pub seed: u64,
    pub class_labels: Option<Vec<i64>>,
    pub guidance: f32,
    pub null_class: Option<i64>,
    pub init_noise: Option<PathBuf>,
    pub step_noise: Option<PathBuf>,
    pub save_tensor: Option<PathBuf>,
    pub out: PathBuf,
    pub grid: Option<usize>,
    pub height: Option<usize>,
    pub width: Option<usize>,
    pub threads: Option<usize>,
    pub kernels: Option<String>,
    pub precision: tinydiffusion::Precision,
    /// `--conv direct`: no Winograd convolutions.
    pub direct_conv: bool,
    pub device: tinydiffusion::Device,
    pub quiet: bool,
    /// `--scheduler-config FILE`: read instead of the folder's scheduler config.
    pub scheduler_config: Option<PathBuf>,
    /// Text-to-image pipelines: `--prompt`, `--negative-prompt`, `--guidance-scale`.
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub guidance_scale: Option<f32>,
    /// `--clip-skip N` (diffusers' `clip_skip`).
    pub clip_skip: Option<usize>,
}

// Parsed once per run: the size of the `Sample` variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    Sample(SampleArgs),
    Convert {
        input: PathBuf,
        output: PathBuf,
    },
    Info {
        model: Option<PathBuf>,
        batch: usize,
        /// Print the whole op list.
        ops: bool,
    },
    Tokenize {
        model: PathBuf,
        prompt: String,
    },
    Decode {
        vae: PathBuf,
        latents: PathBuf,
        out: PathBuf,
        save_tensor: Option<PathBuf>,
    },
    Help,
}

fn parse_num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: '{v}' is not a valid value (see --help)"))
}

pub fn parse(args: &[String]) -> Result<Command, String> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Command::Help);
    }
    match args.first().map(String::as_str) {
        Some("convert") => {
            return match &args[1..] {
                [i, o] => Ok(Command::Convert {
                    input: i.into(),
                    output: o.into(),
                }),
                _ => Err("convert takes two arguments: IN_DIR OUT_DIR".into()),
            }
        }
        Some("info") => {
            let mut model = None;
            let mut batch = 1;
            let mut ops = false;
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--batch" => {
                        batch = parse_num("--batch", it.next().ok_or("--batch needs a value")?)?
                    }
                    "--model" => model = Some(it.next().ok_or("--model needs a value")?.into()),
                    "--ops" => ops = true,
                    s if !s.starts_with('-') && model.is_none() => model = Some(s.into()),
                    s => return Err(format!("info: unknown argument '{s}' (see --help)")),
                }
            }
            return Ok(Command::Info { model, batch, ops });
        }
        Some("tokenize") => {
            let (mut model, mut prompt) = (None, None);
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                let mut value = || it.next().ok_or(format!("{a} needs a value"));
                match a.as_str() {
                    "--model" => model = Some(value()?.into()),
                    "--prompt" => prompt = Some(value()?.clone()),
                    s => return Err(format!("tokenize: unknown argument '{s}' (see --help)")),
                }
            }
            return Ok(Command::Tokenize {
                model: model.ok_or("tokenize: --model DIR is required")?,
                prompt: prompt.ok_or("tokenize: --prompt TEXT is required")?,
            });
        }
        Some("decode") => {
            let (mut vae, mut latents, mut out, mut save_tensor) = (None, None, None, None);
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                let mut value = || -> Result<PathBuf, String> {
                    Ok(it.next().ok_or(format!("{a} needs a value"))?.into())
                };
                match a.as_str() {
                    "--vae" => vae = Some(value()?),
                    "--latents" => latents = Some(value()?),
                    "--out" => out = Some(value()?),
                    "--save-tensor" => save_tensor = Some(value()?),
                    s => return Err(format!("decode: unknown argument '{s}' (see --help)")),
                }
            }
            return Ok(Command::Decode {
                vae: vae.ok_or("decode: --vae DIR is required")?,
                latents: latents.ok_or("decode: --latents FILE is required")?,
                out: out.unwrap_or_else(|| "decoded.png".into()),
                save_tensor,
            });
        }
        _ => {}
    }
    let mut s = SampleArgs {
        model: None,
        scheduler: None,
        scheduler_named: None,
        steps: None,
        ode_solver: None,
        corrector_steps: None,
        snr: None,
        sde_eps: None,
        eta: None,
        ddim_next: false,
        batch: 4,
        batch_given: false,
        seed: 0,
        class_labels: None,
        guidance: 0.0,
        null_class: None,
        init_noise: None,
        step_noise: None,
        save_tensor: None,
        out: "samples.png".into(),
        grid: None,
        height: None,
        width: None,
        threads: None,
        kernels: None,
        precision: tinydiffusion::Precision::F32,
        direct_conv: false,
        device: tinydiffusion::Device::Cpu,
        quiet: false,
        scheduler_config: None,
        prompt: None,
        negative_prompt: None,
        guidance_scale: None,
        clip_skip: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--quiet" {
            s.quiet = true;
            continue;
        }
        let mut value = || {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| format!("{flag} needs a value (see --help)"))
        };
        match flag.as_str() {
            "--model" => s.model = Some(value()?.into()),
            "--scheduler" => {
                let name = value()?;
                let spec = SamplerSpec::named(name).ok_or_else(|| {
                    format!(
                        "--scheduler: '{name}' is not one of ddpm, ddim, euler, euler-a, dpm, \
                         dpm++2m, dpm++2m-sde, heun, unipc, pndm, lms, dpm-singlestep, dpm++2s, \
                         kdpm2, kdpm2-a, deis, ipndm, sde, ode, pc, sde-ve, cm, lcm, tcd or a \
                         supported diffusers class name"
                    )
                })?;
                s.scheduler = spec.kind;
                s.scheduler_named = Some(spec);
            }
            "--steps" => s.steps = Some(parse_num(flag, value()?)?),
            "--scheduler-config" => s.scheduler_config = Some(value()?.into()),
            "--eta" => s.eta = Some(parse_num(flag, value()?)?),
            "--ode-solver" => {
                s.ode_solver = match value()? {
                    "heun" => Some(Predictor::OdeHeun),
                    "euler" => Some(Predictor::OdeEuler),
                    other => {
                        return Err(format!("--ode-solver: '{other}' is not one of euler, heun"))
                    }
                }
            }
            "--corrector-steps" => s.corrector_steps = Some(parse_num(flag, value()?)?),
            "--snr" => s.snr = Some(parse_num(flag, value()?)?),
            "--sde-eps" => s.sde_eps = Some(parse_num(flag, value()?)?),
            "--ddim-prev" => {
                s.ddim_next = match value()? {
                    "diffusers" => false,
                    "next" => true,
                    other => {
                        return Err(format!(
                            "--ddim-prev: '{other}' is not one of diffusers, next"
                        ))
                    }
                }
            }
            "--batch" => {
                s.batch = parse_num(flag, value()?)?;
                s.batch_given = true;
            }
            "--seed" => s.seed = parse_num(flag, value()?)?,
            "--class-label" => {
                let list = value()?
                    .split(',')
                    .map(|v| parse_num(flag, v.trim()))
                    .collect::<Result<Vec<i64>, _>>()?;
                s.class_labels = Some(list);
            }
            "--guidance" => s.guidance = parse_num(flag, value()?)?,
            "--prompt" => s.prompt = Some(value()?.into()),
            "--negative-prompt" => s.negative_prompt = Some(value()?.into()),
            "--guidance-scale" => s.guidance_scale = Some(parse_num(flag, value()?)?),
            "--clip-skip" => s.clip_skip = Some(parse_num(flag, value()?)?),
            "--null-class" => s.null_class = Some(parse_num(flag, value()?)?),
            "--init-noise" => s.init_noise = Some(value()?.into()),
            "--step-noise" => s.step_noise = Some(value()?.into()),
            "--save-tensor" => s.save_tensor = Some(value()?.into()),
            "--out" => s.out = value()?.into(),
            "--grid" => s.grid = Some(parse_num(flag, value()?)?),
            "--height" => s.height = Some(parse_num(flag, value()?)?),
            "--width" => s.width = Some(parse_num(flag, value()?)?),
            "--threads" => s.threads = Some(parse_num(flag, value()?)?),
            "--kernels" => s.kernels = Some(value()?.into()),
            "--precision" => {
                s.precision = tinydiffusion::Precision::from_name(value()?)
                    .map_err(|e| format!("{flag}: {e}"))?
            }
            "--conv" => {
                s.direct_conv = match value()? {
                    "direct" => true,
                    "winograd" => false,
                    other => return Err(format!("--conv {other}: expected winograd or direct")),
                }
            }
            "--device" => {
                s.device = tinydiffusion::Device::parse(value()?).map_err(|e| e.to_string())?
            }
            other => return Err(format!("unknown argument '{other}' (see --help)")),
        }
    }
    if s.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    // With --init-noise and no --batch the batch is x_T's: the label count is checked
    // against it in `run`.
    if let (Some(l), true) = (&s.class_labels, s.batch_given || s.init_noise.is_none()) {
        check_label_count(l, s.batch)?;
    }
    if s.grid == Some(0) {
        return Err("--grid must be at least 1".into());
    }
    if s.threads == Some(0) {
        return Err("--threads must be at least 1".into());
    }
    // --steps, --eta, --snr, --sde-eps and --ode-solver are checked where the sampler is
    // built (`Sampler::new`), as for every other front end.
    if !s.guidance.is_finite() {
        return Err("--guidance must be a finite number".into());
    }
    if s.guidance_scale.is_some_and(|g| !g.is_finite()) {
        return Err("--guidance-scale must be a finite number".into());
    }
    Ok(Command::Sample(s))
}

/// `--class-label` gives one label for every image or one per image.
pub fn check_label_count(labels: &[i64], batch: usize) -> Result<(), String> {
    if labels.len() != 1 && labels.len() != batch {
        return Err(format!(
            "--class-label: give one label or {batch} (one per image), not {}",
            labels.len()
        ));
    }
    Ok(())
}
