//! The trainer end to end: the training forward equals the inference forward, whole-model
//! finite differences, resume = uninterrupted (bit for bit), checkpoints reload through the
//! inference path, and the data readers.
#![cfg(feature = "train")]

mod common;

use common::{fixtures_dir, rel_l2, simple_loss};
use half::f16;
use tinydiffusion::model::describe_config;
use tinydiffusion::schedule::{PredictionType, SchedulerConfig};
use tinydiffusion::train::data::Dataset;
use tinydiffusion::train::loss::{LossKind, NoiseSchedule};
use tinydiffusion::train::rng::{Purpose, Stream};
use tinydiffusion::train::trainer::{Init, TrainOptions, Trainer};
use tinydiffusion::train::TrainGraph;
use tinydiffusion::Model;

type LossFn<'a> = dyn FnMut(&[f32], Option<&mut Vec<f32>>) -> f64 + 'a;

const MODELS: [&str; 4] = [
    "tiny-rgb16",
    "tiny-gray8",
    "tiny-class16",
    "tiny-learnedvar8",
];

fn randn(seed: u64, n: usize) -> Vec<f32> {
    let mut s = Stream::new(seed, Purpose::Noise, 7);
    (0..n).map(|_| s.gaussian() as f32).collect()
}

fn fixture_params(model: &str) -> (Model, TrainGraph, Vec<f32>) {
    let dir = fixtures_dir().join(model);
    let m = Model::load(&dir).unwrap();
    let g = TrainGraph::new(&describe_config(&m.config).unwrap()).unwrap();
    let mut p = vec![0.0; g.params.buffer_len()];
    let bytes = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    g.params.read_safetensors(&bytes, "", &mut p).unwrap();
    (m, g, p)
}

fn labels_for(m: &Model, batch: usize) -> Option<Vec<i64>> {
    m.config
        .num_class_embeds
        .map(|n| (0..batch).map(|b| (3 * b as i64 + 1) % n as i64).collect())
}

/// The trainer's f32 forward on f16-rounded weights is the inference forward on the same f16
/// weights, for every fixture model (up to f32 summation order: the inference side runs its
/// direct convolutions, since Winograd's rounding is a few times larger).
#[test]
fn training_forward_equals_inference_forward() {
    for name in MODELS {
        let (mut m, g, mut p) = fixture_params(name);
        m.set_winograd(false);
        p.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32());
        let batch = 2;
        let (c, h, w) = m.input_shape();
        let x = randn(1, batch * c * h * w);
        let t = [17.0f32, 930.0];
        let labels = labels_for(&m, batch);
        let mut ws = g.workspace(batch);
        g.forward(&p, &mut ws, &x, &t, labels.as_deref()).unwrap();
        let mut iws = vec![0.0; m.workspace_len(batch)];
        let mut out = vec![0.0; ws.out.len()];
        m.forward(&mut iws, &x, &t, labels.as_deref(), &mut out)
            .unwrap();
        let err = rel_l2(&ws.out, &out);
        println!("{name}: training vs inference forward rel L2 {err:.2e}");
        assert!(err < 1e-5, "{name}: {err}");
    }
}

/// Directional derivatives of the whole model's loss (f32) against central differences, for
/// the models without a PyTorch gradient case: the class embedding path and a 2C-channel
/// (learned variance) output.
#[test]
fn whole_model_finite_differences() {
    for name in ["tiny-class16", "tiny-learnedvar8"] {
        let (m, g, p) = fixture_params(name);
        let batch = 2;
        let (c, h, w) = m.input_shape();
        let n = batch * c * h * w;
        let (x0, eps) = (randn(2, n), randn(3, n));
        let sched = NoiseSchedule::new(&SchedulerConfig::ddpm_default()).unwrap();
        let t = [40usize, 610];
        let tf: Vec<f32> = t.iter().map(|&v| v as f32).collect();
        let mut x_t = vec![0.0; n];
        for i in 0..n {
            let a = sched.alphas_cumprod[t[i / (c * h * w)]];
            x_t[i] = (a.sqrt() * x0[i] as f64 + (1.0 - a).sqrt() * eps[i] as f64) as f32;
        }
        let labels = labels_for(&m, batch);
        let mut ws = g.workspace(batch);
        let mut loss = |params: &[f32], grads: Option<&mut Vec<f32>>| -> f64 {
            g.forward(params, &mut ws, &x_t, &tf, labels.as_deref())
                .unwrap();
            let l = simple_loss(&mut ws, &sched, c, h * w, &x0, &eps, &x_t, &t);
            if let Some(gr) = grads {
                g.backward(params, gr, &mut ws, labels.as_deref()).unwrap();
            }
            l.total
        };
        let mut grads = vec![0.0; p.len()];
        loss(&p, Some(&mut grads));
        let mut names: Vec<&str> = vec![
            "conv_in.weight",
            "time_embedding.linear_1.weight",
            "conv_out.bias",
        ];
        if m.config.num_class_embeds.is_some() {
            names.push("class_embedding.weight");
        }
        names.push("mid_block.attentions.0.to_v.weight");
        for pname in names {
            let spec = g.params.find(pname).unwrap().clone();
            let u = randn(11, spec.len);
            let analytic: f64 = grads[spec.range()]
                .iter()
                .zip(&u)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let central = |hh: f32, loss: &mut LossFn<'_>| {
                let (mut plus, mut minus) = (p.clone(), p.clone());
                for (k, d) in spec.range().zip(&u) {
                    plus[k] += hh * d;
                    minus[k] -= hh * d;
                }
                (loss(&plus, None) - loss(&minus, None)) / (2.0 * hh as f64)
            };
            let fd = (4.0 * central(2e-3, &mut loss) - central(4e-3, &mut loss)) / 3.0;
            let err = (fd - analytic).abs() / analytic.abs().max(1e-2);
            println!("{name} d/d{pname}: analytic {analytic:.6} fd {fd:.6} rel {err:.1e}");
            assert!(err < 5e-3, "{name} {pname}: analytic {analytic} fd {fd}");
        }
    }
}

fn class16_run() -> (String, Dataset, TrainOptions) {
    let dir = fixtures_dir().join("tiny-class16");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let n = 7;
    let mut s = Stream::new(5, Purpose::Noise, 0);
    let images: Vec<f32> = (0..n * 3 * 16 * 16)
        .map(|_| (s.uniform() * 2.0 - 1.0) as f32)
        .collect();
    let data = Dataset {
        channels: 3,
        height: 16,
        width: 16,
        images,
        labels: Some((0..n as i64).map(|i| i % 10).collect()),
    };
    let mut opts = TrainOptions {
        batch: 3,
        seed: 42,
        label_dropout: 0.3,
        hflip: true,
        ..Default::default()
    };
    opts.adamw.lr = 1e-3;
    opts.adamw.warmup = 2;
    opts.adamw.weight_decay = 0.01;
    (config, data, opts)
}

/// Stopping after a checkpoint and resuming gives the same weights, EMA and moments bit for bit
/// as an uninterrupted run (and saving does not perturb the run).
#[test]
fn resume_equals_uninterrupted() {
    let (config, data, opts) = class16_run();
    let out = std::env::temp_dir().join(format!("tinydiffusion-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut a = Trainer::new(&config, Init::Seeded(1), data.clone(), opts.clone()).unwrap();
    let mut losses = Vec::new();
    for _ in 0..4 {
        losses.push(a.train_step().unwrap().loss.total);
    }
    let mut b = Trainer::new(&config, Init::Seeded(1), data.clone(), opts).unwrap();
    for _ in 0..2 {
        b.train_step().unwrap();
    }
    b.save(&out, 2).unwrap();
    drop(b);
    let ckpt = tinydiffusion::train::checkpoint::latest(&out).unwrap();
    let mut c = Trainer::resume(&ckpt, data).unwrap();
    assert_eq!(c.step_count(), 2);
    for l in &losses[2..] {
        assert_eq!(c.train_step().unwrap().loss.total, *l);
    }
    assert!(a.params() == c.params(), "params differ after resume");
    assert!(a.ema() == c.ema(), "EMA differs after resume");
    assert!(losses[3] < losses[0] * 1.5, "training diverged: {losses:?}");
    std::fs::remove_dir_all(&out).unwrap();
}

/// A checkpoint loads with the inference path (`Model::load` on the pipeline folder) and gives
/// the trainer's EMA forward up to the f16 rounding of the saved weights.
#[test]
fn checkpoint_reloads_with_inference_path() {
    let (config, data, opts) = class16_run();
    let out = std::env::temp_dir().join(format!("tinydiffusion-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut tr = Trainer::new(&config, Init::Seeded(2), data, opts).unwrap();
    for _ in 0..3 {
        tr.train_step().unwrap();
    }
    let dir = tr.save(&out, 1).unwrap();
    for f in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let model = Model::load(&dir).unwrap();
    // f16 in the file: norms and biases are used in place, convs and linears packed once into
    // the kernels' layout (a converted file would need neither).
    let w = model.weights();
    assert_eq!(
        w.converted_tensors, 0,
        "f16 weights need no dtype conversion"
    );
    assert_eq!(
        w.in_place_tensors + w.packed_at_load,
        tr.graph.params.specs().len(),
        "every parameter is either read in place or packed"
    );
    let batch = tr.opts.batch;
    let (c, h, w) = model.input_shape();
    let x = randn(9, batch * c * h * w);
    let t: Vec<f32> = (0..batch).map(|b| 100.0 + 300.0 * b as f32).collect();
    let labels: Vec<i64> = (0..batch as i64).collect();
    let ours = tr.eval_forward(true, &x, &t, Some(&labels)).unwrap();
    let mut ws = vec![0.0; model.workspace_len(batch)];
    let mut theirs = vec![0.0; ours.len()];
    model
        .forward(&mut ws, &x, &t, Some(&labels), &mut theirs)
        .unwrap();
    let err = rel_l2(&theirs, &ours);
    println!("checkpoint (f16) vs trainer EMA forward: rel L2 {err:.2e}");
    assert!(err < 5e-3, "{err}");
    let sched: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("scheduler/scheduler_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sched["_class_name"], "DDPMScheduler");
    // A second save keeps only the newest checkpoint and `latest` points at it.
    tr.train_step().unwrap();
    let dir2 = tr.save(&out, 1).unwrap();
    assert!(!dir.exists() && dir2.exists());
    assert_eq!(
        tinydiffusion::train::checkpoint::latest(&out).unwrap(),
        dir2
    );
    std::fs::remove_dir_all(&out).unwrap();
}

/// Options the trainer refuses are typed errors; the options a checkpoint stores round-trip,
/// schedule and prediction type by the core's names.
#[test]
fn trainer_options_and_refusals() {
    use tinydiffusion::schedule::BetaSchedule;
    use tinydiffusion::Error;
    let (config, data, opts) = class16_run();
    let sample = TrainOptions {
        prediction: PredictionType::Sample,
        ..opts.clone()
    };
    let err = Trainer::new(&config, Init::Seeded(1), data.clone(), sample).err();
    assert!(
        matches!(err, Some(Error::UnsupportedConfig { ref key, .. }) if key == "prediction_type"),
        "{err:?}"
    );
    let zero_start = TrainOptions {
        beta_start: 0.0,
        ..opts.clone()
    };
    let err = Trainer::new(&config, Init::Seeded(1), data.clone(), zero_start).err();
    assert!(matches!(err, Some(Error::InvalidConfig { .. })), "{err:?}");
    for (schedule, prediction) in [
        (BetaSchedule::Sigmoid, PredictionType::VPrediction),
        (BetaSchedule::Laplace, PredictionType::Epsilon),
        (BetaSchedule::SquaredcosCapV2, PredictionType::VPrediction),
    ] {
        let o = TrainOptions {
            beta_schedule: schedule,
            prediction,
            ..opts.clone()
        };
        assert_eq!(TrainOptions::from_json(&o.to_json()).unwrap(), o);
        let tr = Trainer::new(&config, Init::Seeded(1), data.clone(), o).unwrap();
        let mut written = SchedulerConfig::from_json(&tr.scheduler_config()).unwrap();
        // (`given` records the JSON's keys; a config built in code has none.)
        written.given = None;
        assert_eq!(written, tr.opts.scheduler(false));
        assert_eq!(
            (written.beta_schedule, written.prediction_type),
            (schedule, prediction)
        );
    }
}

/// Starting from a weights file with old diffusers attention names (`query`, ...) trains the
/// same numbers as from the same file with today's names.
#[test]
fn init_from_old_attention_names() {
    let dir = fixtures_dir().join("tiny-class16");
    let (config, data, opts) = class16_run();
    let bytes = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n.replace(".to_q.", ".query."), v))
        .collect();
    let renamed = safetensors::serialize(tensors, None).unwrap();
    let mut a = Trainer::new(&config, Init::Weights(&bytes), data.clone(), opts.clone()).unwrap();
    let mut b = Trainer::new(&config, Init::Weights(&renamed), data, opts).unwrap();
    assert!(b
        .graph
        .params
        .find("mid_block.attentions.0.query.weight")
        .is_some());
    for _ in 0..2 {
        assert_eq!(
            a.train_step().unwrap().loss.total,
            b.train_step().unwrap().loss.total
        );
    }
    assert!(a.params() == b.params());
}

#[test]
fn mnist_idx_reader() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/mnist/t10k-images-idx3-ubyte.gz");
    let train = Dataset::mnist(&root, 0..9000, (32, 32)).unwrap();
    let held = Dataset::mnist(&root, 9000..10000, (32, 32)).unwrap();
    assert_eq!((train.len(), held.len()), (9000, 1000));
    let labels = train.labels.as_ref().unwrap();
    assert_eq!(&labels[..5], &[7, 2, 1, 0, 4]); // the canonical first test labels
    let img = &train.images[..32 * 32];
    assert!(img.iter().all(|v| (-1.0..=1.0).contains(v)));
    // 2 px of background around the 28x28 digit.
    assert!(img[..64].iter().all(|v| *v == -1.0) && img[32 * 30..].iter().all(|v| *v == -1.0));
    assert!(img.iter().any(|v| *v > 0.9));
}

#[test]
fn png_folder_reader() {
    let dir = std::env::temp_dir().join(format!("tinydiffusion-png-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (class, value) in [("a", 0u8), ("b", 255u8)] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        let f = std::fs::File::create(dir.join(class).join("x.png")).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), 4, 2);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()
            .unwrap()
            .write_image_data(&[value; 8])
            .unwrap();
    }
    let ds = Dataset::png_folder(&dir, 3, (2, 4)).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.labels, Some(vec![0, 1]));
    assert!(
        ds.images[..24].iter().all(|v| *v == -1.0) && ds.images[24..].iter().all(|v| *v == 1.0)
    );
    assert!(Dataset::png_folder(&dir, 3, (4, 4)).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fourier (NCSN++) model trains with the VE score-matching loss (a short run on random
/// images: finite, falling loss), and its checkpoint is a `ScoreSdeVePipeline` folder with the
/// trained sigma range that loads and samples through the inference path; DDPM-only options
/// are refused for it.
#[test]
fn ve_score_matching_smoke_run() {
    let dir = fixtures_dir().join("unet-c/ve/unet");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let n = 6;
    let mut s = Stream::new(11, Purpose::Noise, 0);
    let images: Vec<f32> = (0..n * 3 * 8 * 8)
        .map(|_| (s.uniform() * 2.0 - 1.0) as f32)
        .collect();
    let data = Dataset {
        channels: 3,
        height: 8,
        width: 8,
        images,
        labels: None,
    };
    let mut opts = TrainOptions {
        batch: 3,
        seed: 3,
        sigma_min: 0.01,
        sigma_max: 50.0,
        ..Default::default()
    };
    opts.adamw.lr = 2e-3;
    let refused = |o: TrainOptions| {
        Trainer::new(&config, Init::Seeded(1), data.clone(), o)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(refused(TrainOptions {
        loss: LossKind::Hybrid { lambda: 0.001 },
        ..opts.clone()
    })
    .contains("loss"));
    assert!(refused(TrainOptions {
        sigma_min: 60.0,
        ..opts.clone()
    })
    .contains("sigma_min"));
    let mut tr = Trainer::new(&config, Init::Seeded(1), data, opts).unwrap();
    let losses: Vec<f64> = (0..16)
        .map(|_| tr.train_step().unwrap().loss.total)
        .collect();
    println!("VE score matching losses: {losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()));
    let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
    assert!(
        mean(&losses[12..]) < mean(&losses[..4]),
        "loss did not fall: {losses:?}"
    );
    let out = std::env::temp_dir().join(format!("tinydiffusion-ve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let ckpt = tr.save(&out, 1).unwrap();
    let index = std::fs::read_to_string(ckpt.join("model_index.json")).unwrap();
    assert!(index.contains("ScoreSdeVePipeline"), "{index}");
    let files = tinydiffusion::model::load::ModelFiles::find(&ckpt).unwrap();
    let cfg = files.load_scheduler_config().unwrap();
    assert_eq!(
        (cfg.kind.class_name(), cfg.sigma_min, cfg.sigma_max),
        ("ScoreSdeVeScheduler", Some(0.01), Some(50.0))
    );
    // The checkpoint samples through the one front end (the folder's VE scheduler).
    let model = Model::load(&ckpt).unwrap();
    let sampler = tinydiffusion::sampler::SamplerSpec::new(None)
        .steps(3)
        .build(&cfg)
        .unwrap();
    let mut ws = vec![0.0f32; sampler.workspace_len(&model, 1, false)];
    let mut img = vec![0.0f32; 3 * 8 * 8];
    sampler
        .sample(
            &model,
            &mut ws,
            &tinydiffusion::sampler::SampleOptions::new(1, 0),
            &mut img,
            None,
        )
        .unwrap();
    assert!(img.iter().all(|v| v.is_finite()));
    // The trained sigma range survives a resume.
    let resumed = Trainer::resume(&ckpt, tr_data()).unwrap();
    assert_eq!(
        (resumed.opts.sigma_min, resumed.opts.sigma_max),
        (0.01, 50.0)
    );
    std::fs::remove_dir_all(&out).unwrap();
}

fn tr_data() -> Dataset {
    Dataset {
        channels: 3,
        height: 8,
        width: 8,
        images: vec![0.0; 3 * 8 * 8],
        labels: None,
    }
}
