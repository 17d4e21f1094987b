//! Sampling performs no heap allocation: a counting global allocator watches a forward pass,
//! a 10-step DDIM run and a 50-step DDPM run (with seeded noise, guidance, thresholding), and
//! the continuous-time samplers (reverse SDE, probability-flow ODE Euler and Heun,
//! predictor-corrector; plain and guided), and the sigma schedulers (Euler with Karras sigmas,
//! Euler ancestral, DPM-Solver++ order 3 with its multistep history, SDE-DPM-Solver++), and
//! the score-SDE VE, consistency, LCM and TCD schedulers (seeded noise, plain and guided), and
//! the CLIP text encoder's forward pass, and the conditional UNet's (`forward_conditional`), and
//! whole text-to-image pipeline runs (`StableDiffusionPipeline` folders: prompt encoding,
//! guided and unguided loops, decoding).
//!
//! This file runs without libtest's harness (`harness = false`): the harness's own threads
//! (its "running for over 60 seconds" notice) allocate, and the count is process-wide so that
//! worker threads of the kernels are watched too.

mod common;

use common::fixtures_dir;
use tinydiffusion::model::TextEncoder;
use tinydiffusion::sampler::{self, Guidance, Method, SampleOptions};
use tinydiffusion::schedule::{
    Predictor, Scheduler, SchedulerConfig, SchedulerKind, SdeConfig, SdeSampler,
};
use tinydiffusion::Model;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::allocations_during;

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

fn run(
    model: &Model,
    kind: SchedulerKind,
    steps: usize,
    thresholding: bool,
    guidance: Option<Guidance>,
    labels: Option<&[i64]>,
) -> usize {
    let mut cfg = SchedulerConfig::ddpm_default().with_kind(kind).unwrap();
    cfg.thresholding = thresholding;
    let mut scheduler = Scheduler::new(cfg, steps).unwrap();
    scheduler.set_eta(0.5);
    let batch = 2;
    let mut ws = vec![0.0f32; sampler::workspace_len(model, &scheduler, batch, guidance.is_some())];
    let (c, h, w) = model.input_shape();
    let mut out = vec![0.0f32; batch * c * h * w];
    let opts = SampleOptions {
        class_labels: labels,
        guidance,
        ..SampleOptions::new(batch, 7)
    };
    allocations_during(|| {
        sampler::sample(model, &scheduler, &mut ws, &opts, &mut out, None).unwrap()
    })
}

fn run_sde(
    model: &Model,
    cfg: SdeConfig,
    guidance: Option<Guidance>,
    labels: Option<&[i64]>,
) -> usize {
    let sde = SdeSampler::new(&SchedulerConfig::ddpm_default(), cfg).unwrap();
    let method = Method::Sde(&sde);
    let batch = 2;
    let mut ws =
        vec![0.0f32; sampler::workspace_len_with(model, method, batch, guidance.is_some())];
    let (c, h, w) = model.input_shape();
    let mut out = vec![0.0f32; batch * c * h * w];
    let opts = SampleOptions {
        class_labels: labels,
        guidance,
        ..SampleOptions::new(batch, 7)
    };
    allocations_during(|| {
        sampler::sample_with(model, method, &mut ws, &opts, &mut out, None).unwrap()
    })
}

/// A sigma-scheduler run built through the front end from a JSON config.
fn run_sigma(
    model: &Model,
    json: &str,
    steps: usize,
    guidance: Option<Guidance>,
    labels: Option<&[i64]>,
) -> usize {
    let cfg = SchedulerConfig::from_json(json).unwrap();
    let s = sampler::SamplerSpec::new(None)
        .steps(steps)
        .build(&cfg)
        .unwrap();
    let batch = 2;
    let mut ws = vec![0.0f32; s.workspace_len(model, batch, guidance.is_some())];
    // A latent pipeline returns the decoded image.
    let (c, h, w) = model.image_shape();
    let mut out = vec![0.0f32; batch * c * h * w];
    let opts = SampleOptions {
        class_labels: labels,
        guidance,
        ..SampleOptions::new(batch, 7)
    };
    allocations_during(|| s.sample(model, &mut ws, &opts, &mut out, None).unwrap())
}

/// A `StableDiffusionPipeline` run (two prompts; guided with negative ids when `scale > 1`)
/// with the folder's scheduler or `json`'s.
fn run_text(model: &Model, json: Option<&str>, scale: f32) -> usize {
    let dir = fixtures_dir().join("sd-pipeline").join("sd2");
    let cfg = match json {
        Some(j) => SchedulerConfig::from_json(j).unwrap(),
        None => tinydiffusion::model::load::ModelFiles::find(&dir)
            .unwrap()
            .load_scheduler_config()
            .unwrap(),
    };
    let s = sampler::SamplerSpec::new(None)
        .steps(3)
        .build(&cfg)
        .unwrap();
    let batch = 2;
    let tokens = model.text_encoder().unwrap().tokens();
    let ids: Vec<u32> = (0..batch * tokens).map(|i| (i % 500) as u32).collect();
    let neg: Vec<u32> = (0..batch * tokens).map(|i| (i % 7) as u32).collect();
    let text = sampler::TextConditioning {
        prompt_ids: &ids,
        negative_ids: Some(&neg),
        guidance_scale: scale,
    };
    let mut ws = vec![0.0f32; s.workspace_len(model, batch, text.guided())];
    let (c, h, w) = model.image_shape();
    let mut out = vec![0.0f32; batch * c * h * w];
    let opts = SampleOptions {
        text: Some(text),
        ..SampleOptions::new(batch, 7)
    };
    allocations_during(|| s.sample(model, &mut ws, &opts, &mut out, None).unwrap())
}

fn main() {
    forward_and_sampling_allocate_nothing();
    println!("zero_alloc: 1 passed, 0 failed");
}

fn forward_and_sampling_allocate_nothing() {
    let model = Model::load(fixtures_dir().join("tiny-rgb16")).unwrap();
    let (c, h, w) = model.input_shape();
    let x = vec![0.5f32; 2 * c * h * w];
    let mut out = vec![0.0f32; x.len()];
    let mut ws = vec![0.0f32; model.workspace_len(2)];
    // Warm up once (thread pools, lazy statics), then count.
    model
        .forward(&mut ws, &x, &[10.0, 500.0], None, &mut out)
        .unwrap();
    let n = allocations_during(|| {
        model
            .forward(&mut ws, &x, &[10.0, 500.0], None, &mut out)
            .unwrap()
    });
    assert_eq!(n, 0, "forward pass allocated {n} times");

    assert_eq!(
        run(&model, SchedulerKind::Ddim, 10, false, None, None),
        0,
        "10-step DDIM allocated"
    );
    assert_eq!(
        run(&model, SchedulerKind::Ddpm, 50, true, None, None),
        0,
        "50-step DDPM allocated"
    );

    // The UNet2DModel variants (AdaGN scale-shift, resnet down/upsamplers, learned time
    // embedding, other activations, no mid block).
    for name in ["unet-a/iddpm8", "unet-a/learned8", "unet-a/gelu8"] {
        let variant = Model::load(fixtures_dir().join(name)).unwrap();
        let (c, h, w) = variant.input_shape();
        let x = vec![0.5f32; 2 * c * h * w];
        let mut out = vec![0.0f32; 2 * variant.config.out_channels * h * w];
        let mut ws = vec![0.0f32; variant.workspace_len(2)];
        variant
            .forward(&mut ws, &x, &[10.0, 500.0], None, &mut out)
            .unwrap();
        let n = allocations_during(|| {
            variant
                .forward(&mut ws, &x, &[10.0, 500.0], None, &mut out)
                .unwrap()
        });
        assert_eq!(n, 0, "{name}: forward pass allocated {n} times");
        let n = run(&variant, SchedulerKind::Ddpm, 10, false, None, None);
        assert_eq!(n, 0, "{name}: 10-step DDPM allocated {n} times");
    }

    let class = Model::load(fixtures_dir().join("tiny-class16")).unwrap();
    let g = Guidance::new(&class, 3.0).unwrap();
    assert_eq!(
        run(
            &class,
            SchedulerKind::Ddim,
            10,
            false,
            Some(g),
            Some(&[1, 2])
        ),
        0,
        "guided DDIM allocated"
    );

    for json in [
        r#"{"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": true}"#,
        r#"{"_class_name": "EulerAncestralDiscreteScheduler"}"#,
        r#"{"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}"#,
        r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}"#,
        r#"{"_class_name": "HeunDiscreteScheduler", "use_karras_sigmas": true}"#,
        r#"{"_class_name": "UniPCMultistepScheduler", "solver_order": 3}"#,
        r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": true}"#,
        r#"{"_class_name": "LMSDiscreteScheduler", "use_karras_sigmas": true}"#,
        r#"{"_class_name": "DPMSolverSinglestepScheduler", "solver_order": 3}"#,
        r#"{"_class_name": "DPMSolverSinglestepScheduler", "algorithm_type": "sde-dpmsolver++"}"#,
        r#"{"_class_name": "KDPM2AncestralDiscreteScheduler"}"#,
        r#"{"_class_name": "DEISMultistepScheduler", "solver_order": 3}"#,
        r#"{"_class_name": "IPNDMScheduler"}"#,
        r#"{"_class_name": "KDPM2DiscreteScheduler", "use_karras_sigmas": true}"#,
        r#"{"_class_name": "ScoreSdeVeScheduler", "correct_steps": 2, "sigma_max": 5.0}"#,
        r#"{"_class_name": "CMStochasticIterativeScheduler"}"#,
        r#"{"_class_name": "LCMScheduler", "clip_sample": true}"#,
        r#"{"_class_name": "TCDScheduler", "prediction_type": "v_prediction"}"#,
        // Issue 18's remaining options: the sigma ramps, sde-dpmsolver, thresholding (its
        // quantile runs in the history's scratch).
        r#"{"_class_name": "EulerDiscreteScheduler", "use_beta_sigmas": true}"#,
        r#"{"_class_name": "KDPM2AncestralDiscreteScheduler", "use_exponential_sigmas": true}"#,
        r#"{"_class_name": "DPMSolverMultistepScheduler", "use_lu_lambdas": true, "thresholding": true}"#,
        r#"{"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "thresholding": true}"#,
        r#"{"_class_name": "DPMSolverSinglestepScheduler", "solver_order": 3, "use_beta_sigmas": true, "thresholding": true}"#,
        r#"{"_class_name": "UniPCMultistepScheduler", "use_exponential_sigmas": true, "thresholding": true}"#,
        r#"{"_class_name": "DEISMultistepScheduler", "use_beta_sigmas": true, "thresholding": true}"#,
        r#"{"_class_name": "LCMScheduler", "thresholding": true}"#,
        r#"{"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": true, "flow_shift": 3.0, "prediction_type": "flow_prediction"}"#,
    ] {
        let n = run_sigma(&model, json, 6, None, None);
        assert_eq!(n, 0, "{json} allocated {n} times");
        let n = run_sigma(&class, json, 4, Some(g), Some(&[1, 2]));
        assert_eq!(n, 0, "guided {json} allocated {n} times");
    }

    for cfg in [
        SdeConfig::sde(5),
        SdeConfig::ode(Predictor::OdeEuler, 5),
        SdeConfig::ode(Predictor::OdeHeun, 5),
        SdeConfig::pc(4, 2),
    ] {
        let n = run_sde(&model, cfg, None, None);
        assert_eq!(n, 0, "{cfg:?} allocated {n} times");
        let n = run_sde(&class, cfg, Some(g), Some(&[1, 2]));
        assert_eq!(n, 0, "guided {cfg:?} allocated {n} times");
    }

    // Latent pipelines: the loop on the latents, the VQ lookup and each decoder.
    for dir in ["latent/ldm", "latent/kl"] {
        let latent = Model::load(fixtures_dir().join(dir)).unwrap();
        for json in [
            r#"{"_class_name": "DDIMScheduler"}"#,
            r#"{"_class_name": "EulerDiscreteScheduler"}"#,
        ] {
            run_sigma(&latent, json, 3, None, None); // warm-up: the decoder's thread team
            let n = run_sigma(&latent, json, 3, None, None);
            assert_eq!(n, 0, "{dir} {json} allocated {n} times");
        }
    }

    // Text-to-image pipelines: encoder, guided loop, decoder in one workspace.
    for name in ["sd1", "sd2"] {
        let sd = Model::load(fixtures_dir().join("sd-pipeline").join(name)).unwrap();
        for (json, scale) in [
            (None, 7.5),
            (None, 1.0),
            (
                Some(r#"{"_class_name": "EulerAncestralDiscreteScheduler"}"#),
                5.0,
            ),
        ] {
            run_text(&sd, json, scale); // warm-up: the thread teams
            let n = run_text(&sd, json, scale);
            assert_eq!(
                n, 0,
                "text pipeline {name} {json:?} {scale} allocated {n} times"
            );
        }
    }

    // The CLIP text encoder: token ids to hidden states, on the model's threads and on one.
    for (name, clip_skip) in [("quick", 0), ("gelu", 1)] {
        let enc = TextEncoder::load(
            fixtures_dir()
                .join("clip-text")
                .join(name)
                .join("text_encoder"),
            clip_skip,
        )
        .unwrap();
        let ids: Vec<u32> = (0..2 * enc.tokens() as u32).map(|i| i % 300).collect();
        let mut out = vec![0.0f32; 2 * enc.output_len()];
        for threads in [0, 1] {
            let mut ws = vec![0.0f32; enc.workspace_len_for_threads(2, threads)];
            enc.encode(threads, &mut ws, &ids, &mut out).unwrap(); // warm-up
            let n = allocations_during(|| enc.encode(threads, &mut ws, &ids, &mut out).unwrap());
            assert_eq!(
                n, 0,
                "text encoder {name} ({threads} threads) allocated {n} times"
            );
        }
    }

    // The conditional UNet (cross-attention to text states).
    for name in ["sd1", "sd2"] {
        let dir = fixtures_dir().join("unet-cond").join(name);
        let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let mut cfg = tinydiffusion::UNetConfig::from_json(&config).unwrap();
        cfg.cross_attention.as_mut().unwrap().text_tokens = 7;
        let bytes = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
        let model = Model::new(
            cfg,
            tinydiffusion::weights::WeightBytes::Owned(bytes),
            Default::default(),
            tinydiffusion::memory::Reuse::Shared,
        )
        .unwrap();
        let (c, h, w) = model.input_shape();
        let x = vec![0.3f32; 2 * c * h * w];
        let ctx = vec![
            0.2f32;
            2 * 7
                * model
                    .config
                    .cross_attention
                    .as_ref()
                    .unwrap()
                    .cross_attention_dim
        ];
        let mut out = vec![0.0f32; x.len()];
        let mut ws = vec![0.0f32; model.workspace_len(2)];
        model
            .forward_conditional(&mut ws, &x, &[5.0, 900.0], &ctx, &mut out)
            .unwrap(); // warm-up
        let n = allocations_during(|| {
            model
                .forward_conditional(&mut ws, &x, &[5.0, 900.0], &ctx, &mut out)
                .unwrap()
        });
        assert_eq!(n, 0, "conditional UNet {name} allocated {n} times");
    }
}
