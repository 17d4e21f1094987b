//! Sample quality of DDPM, DDIM, reverse-SDE (Euler-Maruyama), probability-flow ODE (Heun) and
//! predictor-corrector at equal numbers of model evaluations, on the MNIST model.
//!
//! ```sh
//! cargo run --release --features train --example compare_samplers -- \
//!     --model weights --data data/mnist/t10k-images-idx3-ubyte.gz \
//!     --images 1000 --evals 10,20,50 --out docs/samplers
//! # the f16 arithmetic cost on an ARMv8.2+ CPU: the same table with --precision f16
//! ```
//!
//! 1. Trains the feature classifier (`train::quality`, an MLP 1024-256-10) on images
//!    0..8999 (seeded; a few seconds per epoch) and reports its held-out accuracy.
//! 2. For every sampler and budget E: the most steps whose evaluations fit in E (DDPM, DDIM
//!    and Euler-Maruyama use one per step, Heun two, PC one plus its corrector steps; the SDE
//!    samplers add one for the final denoising step), `--images` samples with class labels
//!    0..9 in turn (class-conditional models), seeds by batch.
//! 3. The Fréchet distance between the classifier features of the samples and of held-out
//!    images 9000..9999, and the fraction the classifier labels as the class asked for.
//!
//! Writes `OUT/table.md` (the table, also printed), `OUT/grid-SAMPLER-E.png` (the first 100
//! samples, 10 per row: one column per class) and `OUT/grids.md` (the grids as a Markdown
//! table, for the README).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use tinydiffusion::io::write_png_grid;
use tinydiffusion::model::load::ModelFiles;
use tinydiffusion::sampler::{Guidance, SampleOptions, Sampler, SamplerKind, SamplerSpec};
use tinydiffusion::schedule::{Predictor, SchedulerConfig};
use tinydiffusion::train::data::Dataset;
use tinydiffusion::train::quality::{
    frechet_distance, Classifier, ClassifierOptions, FeatureStats,
};
use tinydiffusion::{Model, Precision};

struct Args {
    model: PathBuf,
    data: PathBuf,
    images: usize,
    batch: usize,
    evals: Vec<usize>,
    out: PathBuf,
    guidance: f32,
    seed: u64,
    threads: Option<usize>,
    samplers: Vec<String>,
    precision: Precision,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        model: "weights".into(),
        data: "data/mnist/t10k-images-idx3-ubyte.gz".into(),
        images: 1000,
        batch: 50,
        evals: vec![10, 20, 50],
        out: "docs/samplers".into(),
        guidance: 0.0,
        seed: 0,
        threads: None,
        samplers: ["ddpm", "ddim", "sde", "ode", "pc"]
            .map(String::from)
            .to_vec(),
        precision: Precision::F32,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        let num = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: bad number {v}"))
        };
        match flag.as_str() {
            "--model" => a.model = val()?.into(),
            "--data" => a.data = val()?.into(),
            "--images" => a.images = num(val()?)?,
            "--batch" => a.batch = num(val()?)?,
            "--evals" => {
                a.evals = val()?
                    .split(',')
                    .map(|v| v.trim().parse().map_err(|_| format!("--evals: bad {v}")))
                    .collect::<Result<_, _>>()?
            }
            "--samplers" => a.samplers = val()?.split(',').map(String::from).collect(),
            "--out" => a.out = val()?.into(),
            "--guidance" => {
                a.guidance = val()?
                    .parse()
                    .map_err(|_| "--guidance: bad number".to_string())?
            }
            "--seed" => a.seed = num(val()?)? as u64,
            "--threads" => a.threads = Some(num(val()?)?),
            "--precision" => {
                a.precision = Precision::from_name(&val()?).map_err(|e| e.to_string())?
            }
            "-h" | "--help" => {
                println!(
                    "compare_samplers [--model DIR] [--data IDX] [--images N] [--batch B] \
                     [--evals 10,20,50] [--samplers ddpm,ddim,sde,ode,pc] [--out DIR] \
                     [--guidance W] [--seed S] [--threads N] [--precision f32|f16]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.images < 2 || a.batch == 0 || a.evals.iter().any(|&e| e < 3) {
        return Err("--images >= 2, --batch >= 1, every --evals >= 3".into());
    }
    Ok(a)
}

/// The sampler of `name` at a budget of `evals` model evaluations.
fn build(name: &str, evals: usize, base: &SchedulerConfig) -> Result<Sampler, String> {
    use SamplerKind::{Ddim, Ddpm, Ode, Pc, Sde};
    let spec = match name {
        "ddpm" => Sampler::builder(Ddpm).steps(evals),
        "ddim" => Sampler::builder(Ddim).steps(evals),
        "sde" => Sampler::builder(Sde).steps(evals - 1),
        "ode" => Sampler::builder(Ode)
            .predictor(Predictor::OdeHeun)
            .steps((evals - 1) / 2),
        "ode-euler" => Sampler::builder(Ode)
            .predictor(Predictor::OdeEuler)
            .steps(evals - 1),
        "pc" => Sampler::builder(Pc)
            .corrector_steps(1)
            .steps((evals - 1) / 2),
        // Any other `--scheduler` name: the most steps whose evaluations fit the budget.
        other => {
            let spec =
                SamplerSpec::named(other).ok_or_else(|| format!("unknown sampler {other}"))?;
            // A step count the scheduler refuses (PNDM's warm-up needs 4) is skipped.
            let mut refusal = None;
            for steps in (1..=evals).rev() {
                match spec.steps(steps).build(base) {
                    Ok(sampler) if sampler.model_evaluations() <= evals => return Ok(sampler),
                    Ok(_) => {}
                    Err(e) => refusal = Some(e.to_string()),
                }
            }
            let why = refusal.map(|e| format!(" ({e})")).unwrap_or_default();
            return Err(format!("no step count fits {evals} evaluations{why}"));
        }
    };
    spec.build(base).map_err(|e| e.to_string())
}

fn label(name: &str) -> &str {
    match name {
        "ddpm" => "DDPM",
        "ddim" => "DDIM (eta 0)",
        "sde" => "reverse SDE, Euler-Maruyama",
        "ode" => "PF-ODE, Heun",
        "ode-euler" => "PF-ODE, Euler",
        "pc" => "PC (EM + 1 Langevin, snr 0.16)",
        "euler" => "Euler",
        "euler-a" => "Euler ancestral",
        "dpm++2m" => "DPM-Solver++ 2M",
        "dpm++2m-sde" => "SDE-DPM-Solver++ 2M",
        "dpm++2s" => "DPM-Solver++ 2S (singlestep)",
        "heun" => "Heun",
        "unipc" => "UniPC (bh2, order 2)",
        "pndm" => "PNDM (PLMS)",
        "lms" => "LMS (order 4)",
        "kdpm2" => "KDPM2",
        "kdpm2-a" => "KDPM2 ancestral",
        "deis" => "DEIS (order 2)",
        "ipndm" => "IPNDM",
        "lcm" => "LCM",
        "tcd" => "TCD (gamma 0.3)",
        other => other,
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let a = parse()?;
    let s = |e: tinydiffusion::Error| e.to_string();
    let mut model = Model::load(&a.model).map_err(s)?;
    if let Some(n) = a.threads {
        model.set_threads(n).map_err(s)?;
    }
    // f16 arithmetic (aarch64 with FEAT_FP16; a typed error elsewhere): its quality cost is
    // this table at f16 against the same run at f32.
    model.set_precision(a.precision).map_err(s)?;
    let base = ModelFiles::find(&a.model)
        .and_then(|f| f.load_scheduler_config())
        .map_err(s)?;
    let (c, h, w) = model.input_shape();
    let t0 = Instant::now();
    let train = Dataset::mnist(&a.data, 0..9000, (h, w)).map_err(s)?;
    let held = Dataset::mnist(&a.data, 9000..10000, (h, w)).map_err(s)?;
    if c != 1 {
        return Err("the comparison needs a 1-channel (MNIST) model".into());
    }
    let clf = Classifier::train(&train, ClassifierOptions::default()).map_err(s)?;
    let acc = clf.accuracy(&held);
    let held_stats = FeatureStats::of(&clf.features(&held.images), clf.hidden).map_err(s)?;
    // The floor: as many training images as samples, against the same held-out set.
    let k = a.images.min(train.len());
    let floor_stats =
        FeatureStats::of(&clf.features(&train.images[..k * h * w]), clf.hidden).map_err(s)?;
    let floor = frechet_distance(&floor_stats, &held_stats);
    eprintln!(
        "classifier: held-out accuracy {:.2}%, {:.1}s; FD of {k} training images vs held-out: {floor:.3}",
        acc * 100.0,
        t0.elapsed().as_secs_f64()
    );

    let classes = model.config.num_class_embeds;
    let guidance = if a.guidance != 0.0 {
        Some(Guidance::new(&model, a.guidance).map_err(s)?)
    } else {
        None
    };
    std::fs::create_dir_all(&a.out).map_err(|e| e.to_string())?;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "FD: Fréchet distance of classifier features (MLP 1024-256-10 trained on MNIST 0..8999, \
         held-out accuracy {:.2}%) between {} samples and held-out images 9000..9999; lower is \
         better. Floor ({k} training images): {floor:.3}. Class: fraction of samples the \
         classifier labels as the class asked for.\n",
        acc * 100.0,
        a.images
    );
    let _ = write!(table, "| sampler |");
    for e in &a.evals {
        let _ = write!(table, " {e} evals: FD | class | NFE |");
    }
    let _ = write!(table, "\n|---|");
    for _ in &a.evals {
        let _ = write!(table, "---:|---:|---:|");
    }
    let _ = writeln!(table);
    // The cells that got samples (and a grid).
    let mut filled: Vec<(&str, usize)> = Vec::new();
    for name in &a.samplers {
        let _ = write!(table, "| {} |", label(name));
        for &e in &a.evals {
            let sampler = match build(name, e, &base) {
                Ok(sampler) => sampler,
                // A cell the sampler cannot fill is marked, not fatal to the whole table.
                Err(why) => {
                    eprintln!("{name:>9} {e:>3} evals: n/a: {why}");
                    let _ = write!(table, " n/a | n/a | - |");
                    continue;
                }
            };
            // Network evaluations: guidance runs the model twice per evaluation.
            let nfe = sampler.model_evaluations() * if guidance.is_some() { 2 } else { 1 };
            let mut ws = vec![0.0f32; sampler.workspace_len(&model, a.batch, guidance.is_some())];
            let mut images = vec![0.0f32; a.images * h * w];
            let mut wanted = Vec::with_capacity(a.images);
            let t = Instant::now();
            for (b, chunk) in images.chunks_mut(a.batch * h * w).enumerate() {
                let bs = chunk.len() / (h * w);
                let labels: Vec<i64> = (0..bs).map(|i| ((b * a.batch + i) % 10) as i64).collect();
                wanted.extend(labels.iter().copied());
                let opts = SampleOptions {
                    class_labels: classes.map(|_| &labels[..]),
                    guidance,
                    ..SampleOptions::new(bs, a.seed.wrapping_mul(1_000_003).wrapping_add(b as u64))
                };
                sampler
                    .sample(&model, &mut ws, &opts, chunk, None)
                    .map_err(s)?;
            }
            let stats = FeatureStats::of(&clf.features(&images), clf.hidden).map_err(s)?;
            let fd = frechet_distance(&stats, &held_stats);
            let class_ok = if classes.is_some() {
                let pred = clf.predict(&images);
                let ok = pred
                    .iter()
                    .zip(&wanted)
                    .filter(|(p, l)| **p as i64 == **l)
                    .count();
                format!("{:.1}%", 100.0 * ok as f64 / a.images as f64)
            } else {
                "-".into()
            };
            let shown = a.images.min(100);
            let grid = a.out.join(format!("grid-{name}-{e}.png"));
            write_png_grid(&grid, &images[..shown * h * w], shown, 1, h, w, 10).map_err(s)?;
            filled.push((name.as_str(), e));
            eprintln!(
                "{name:>9} {e:>3} evals (NFE {nfe}): FD {fd:.3}, class {class_ok}, {:.1}s",
                t.elapsed().as_secs_f64()
            );
            let _ = write!(table, " {fd:.3} | {class_ok} | {nfe} |");
        }
        let _ = writeln!(table);
    }
    print!("{table}");
    std::fs::write(a.out.join("table.md"), &table).map_err(|e| e.to_string())?;
    // The grids as a Markdown table (paths relative to the working directory, i.e. the
    // repository root when run from there), ready to paste into the README.
    let mut grids = String::from("| sampler |");
    for e in &a.evals {
        let _ = write!(grids, " {e} evaluations |");
    }
    grids.push_str("\n|---|");
    for _ in &a.evals {
        grids.push_str("---|");
    }
    grids.push('\n');
    for name in &a.samplers {
        let _ = write!(grids, "| {} |", label(name));
        for e in &a.evals {
            let path = a.out.join(format!("grid-{name}-{e}.png"));
            if filled.contains(&(name.as_str(), *e)) {
                let _ = write!(grids, " ![{name} {e}]({}) |", path.display());
            } else {
                grids.push_str(" n/a |");
            }
        }
        grids.push('\n');
    }
    std::fs::write(a.out.join("grids.md"), &grids).map_err(|e| e.to_string())?;
    Ok(())
}
