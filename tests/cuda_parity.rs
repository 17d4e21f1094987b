//! The CUDA backend against diffusers and against the CPU path (feature `cuda`, a GPU):
//! - every fixture model's forward case (the unet-a models: the learned time embedding's table
//!   and the class label's sinusoid kernels) within 5e-3 relative L2 of diffusers' float64 output;
//! - every fixture sampling run (injected noise) within 1e-2 of diffusers' x_0;
//! - the CIFAR-10-sized model (random weights): GPU forward vs CPU forward within 5e-3, a
//!   seeded 10-step DDIM run (noise generated on the GPU) within 1e-2 of the CPU run, and two
//!   GPU runs bit-identical (graph replay is deterministic).
//!
//! Each test skips with a printed reason when no GPU, driver or NVRTC is present, unless
//! `TINYDIFFUSION_REQUIRE_GPU=1`, where that is a failure.
#![cfg(feature = "cuda")]

mod common;

use common::{fixtures_dir, forward_case, read_json, rel_l2, SampleCase, TensorFile};
use tinydiffusion::sampler::{self, SampleOptions};
use tinydiffusion::schedule::{Scheduler, SchedulerConfig};
use tinydiffusion::testing::{random_model, CIFAR10_CONFIG};
use tinydiffusion::{Device, Error, Model};

/// The unet-a models exercise the TimestepTable (`learned8`) and ClassSinusoid (`classts8`)
/// kernels.
const MODELS: [&str; 6] = [
    "tiny-rgb16",
    "tiny-gray8",
    "tiny-class16",
    "tiny-learnedvar8",
    "unet-a/learned8",
    "unet-a/classts8",
];

/// Moves `model` to GPU 0; `false` (after printing why) when there is none.
fn to_gpu(model: &mut Model) -> bool {
    match model.to_device(Device::Cuda(0)) {
        Ok(()) => {
            let b = model.cuda_backend().unwrap();
            eprintln!("GPU: {} ({})", b.device_name(), b.arch());
            true
        }
        Err(e @ Error::Device { .. }) => {
            if std::env::var("TINYDIFFUSION_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("no usable GPU: {e}");
            }
            eprintln!("SKIP: {e}");
            false
        }
        Err(e) => panic!("moving the model to the GPU failed: {e}"),
    }
}

fn gpu_fixture(name: &str) -> Option<Model> {
    let mut m = Model::load(fixtures_dir().join(name)).unwrap();
    to_gpu(&mut m).then_some(m)
}

#[test]
fn forward_cases_match_diffusers_on_gpu() {
    let mut failures = Vec::new();
    for name in MODELS {
        let Some(model) = gpu_fixture(name) else {
            return;
        };
        // Each fixture holds one forward case.
        let case = forward_case(name);
        let (c, h, w) = model.input_shape();
        let batch = case.x.len() / (c * h * w);
        let mut ws = vec![0.0f32; model.workspace_len(batch)];
        let mut out = vec![0.0f32; case.expected.len()];
        model
            .forward(&mut ws, &case.x, &case.t, case.labels.as_deref(), &mut out)
            .unwrap();
        let err = rel_l2(&out, &case.expected);
        println!("{name:<18} forward (batch {batch}) rel L2 {err:.2e} (bar 5e-3)");
        if err.is_nan() || err > 5e-3 {
            failures.push(format!("{name}: {err:.3e}"));
        }
    }
    assert!(failures.is_empty(), "GPU forward off: {failures:?}");
}

#[test]
fn sampling_runs_match_diffusers_on_gpu() {
    let mut failures = Vec::new();
    for name in MODELS {
        let Some(model) = gpu_fixture(name) else {
            return;
        };
        let dir = fixtures_dir().join(name);
        let cases = read_json(dir.join("cases.json"));
        let tensors = TensorFile::open(dir.join("cases.safetensors"));
        for case in cases["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["kind"] == "sample")
        {
            let run = SampleCase::read(&model, case, &tensors);
            let case_name = &run.name;
            let mut ws = vec![0.0f32; run.workspace_len(&model)];
            let mut out = vec![0.0f32; run.x_t.len()];
            match sampler::sample(
                &model,
                &run.scheduler,
                &mut ws,
                &run.options(),
                &mut out,
                None,
            ) {
                Err(Error::UnsupportedConfig { key, value }) => {
                    println!("{name:<18} {case_name:<24} skipped on the GPU: {key}: {value}");
                    continue;
                }
                r => r.unwrap(),
            }
            let err = rel_l2(&out, &run.expected_final(&tensors));
            println!("{name:<18} {case_name:<24} final rel L2 {err:.2e} (bar 1e-2)");
            if err.is_nan() || err > 1e-2 {
                failures.push(format!("{name}/{case_name}: {err:.3e}"));
            }
        }
    }
    assert!(failures.is_empty(), "GPU sampling off: {failures:?}");
}

fn cifar_pair() -> Option<(Model, Model)> {
    let cpu = random_model(CIFAR10_CONFIG, 42).unwrap();
    let mut gpu = random_model(CIFAR10_CONFIG, 42).unwrap();
    to_gpu(&mut gpu).then_some((cpu, gpu))
}

#[test]
fn cifar10_forward_cpu_vs_gpu() {
    let Some((cpu, gpu)) = cifar_pair() else {
        return;
    };
    let (c, h, w) = cpu.input_shape();
    for batch in [1usize, 3] {
        let n = batch * c * h * w;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let t: Vec<f32> = (0..batch).map(|b| (10 + 490 * b) as f32).collect();
        let mut ws = vec![0.0f32; cpu.workspace_len(batch)];
        let (mut a, mut b) = (vec![0.0f32; n], vec![0.0f32; n]);
        cpu.forward(&mut ws, &x, &t, None, &mut a).unwrap();
        let mut ws = vec![0.0f32; gpu.workspace_len(batch)];
        gpu.forward(&mut ws, &x, &t, None, &mut b).unwrap();
        let err = rel_l2(&b, &a);
        println!("cifar10 forward batch {batch}: GPU vs CPU rel L2 {err:.2e} (bar 5e-3)");
        assert!(err <= 5e-3, "batch {batch}: {err:.3e}");
    }
}

#[test]
fn cifar10_seeded_ddim_cpu_vs_gpu() {
    let Some((cpu, gpu)) = cifar_pair() else {
        return;
    };
    let mut scheduler = Scheduler::new(SchedulerConfig::ddim_default(), 10).unwrap();
    scheduler.set_eta(0.5); // draws noise every step: exercises the GPU's Philox stream
    let batch = 2;
    let (c, h, w) = cpu.input_shape();
    let n = batch * c * h * w;
    let opts = SampleOptions::new(batch, 7);
    let mut ws = vec![0.0f32; sampler::workspace_len(&cpu, &scheduler, batch, false)];
    let (mut a, mut b, mut b2) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    sampler::sample(&cpu, &scheduler, &mut ws, &opts, &mut a, None).unwrap();
    sampler::sample(&gpu, &scheduler, &mut ws, &opts, &mut b, None).unwrap();
    sampler::sample(&gpu, &scheduler, &mut ws, &opts, &mut b2, None).unwrap();
    let err = rel_l2(&b, &a);
    println!("cifar10 DDIM 10 steps eta 0.5: GPU vs CPU rel L2 {err:.2e} (bar 1e-2)");
    assert!(err <= 1e-2, "{err:.3e}");
    assert!(
        b.iter().zip(&b2).all(|(x, y)| x.to_bits() == y.to_bits()),
        "two GPU runs differ"
    );
}

#[test]
fn first_step_from_seeded_noise_cpu_vs_gpu() {
    // The sample after step 0 (seen through the step callback, which copies it back every
    // step) depends on x_T, drawn on each device from the same Philox stream.
    let Some((cpu, gpu)) = cifar_pair() else {
        return;
    };
    let scheduler = Scheduler::new(SchedulerConfig::ddim_default(), 2).unwrap();
    let batch = 1;
    let (c, h, w) = cpu.input_shape();
    let n = batch * c * h * w;
    let opts = SampleOptions::new(batch, 123);
    let mut ws = vec![0.0f32; sampler::workspace_len(&cpu, &scheduler, batch, false)];
    let mut first = |m: &Model| {
        let mut out = vec![0.0f32; n];
        let mut seen = Vec::new();
        let mut cb = |s: &sampler::StepInfo<'_>| {
            if s.index == 0 {
                seen = s.sample.to_vec();
            }
        };
        sampler::sample(m, &scheduler, &mut ws, &opts, &mut out, Some(&mut cb)).unwrap();
        seen
    };
    let (a, b) = (first(&cpu), first(&gpu));
    let err = rel_l2(&b, &a);
    println!("first step from seeded x_T: GPU vs CPU rel L2 {err:.2e} (bar 5e-3)");
    assert!(err <= 5e-3, "{err:.3e}");
}

/// A latent pipeline on the GPU: the UNet loop runs on the device, the decoder after it on the
/// CPU (never skipped); the decoded image within 1e-2 of diffusers' `LDMPipeline`.
#[test]
fn latent_pipeline_decodes_after_the_gpu_loop() {
    use tinydiffusion::model::load::ModelFiles;
    use tinydiffusion::sampler::{Sampler, SamplerKind};
    let dir = fixtures_dir().join("latent/ldm");
    let mut model = Model::load(&dir).unwrap();
    if !to_gpu(&mut model) {
        return;
    }
    let t = TensorFile::open(fixtures_dir().join("latent/cases.safetensors"));
    let cfg = ModelFiles::find(&dir)
        .unwrap()
        .load_scheduler_config()
        .unwrap();
    let sampler = Sampler::builder(SamplerKind::Ddim)
        .steps(4)
        .build(&cfg)
        .unwrap();
    let x_t = t.f32s("ldm_eta0.x_T");
    let opts = SampleOptions {
        initial_noise: Some(&x_t),
        ..SampleOptions::new(1, 0)
    };
    let (c, h, w) = model.image_shape();
    let mut out = vec![f32::NAN; c * h * w];
    let mut ws = vec![0.0f32; sampler.workspace_len(&model, 1, false)];
    sampler
        .sample(&model, &mut ws, &opts, &mut out, None)
        .unwrap();
    let err = rel_l2(&out, &t.f64s("ldm_eta0.image"));
    println!("LDMPipeline on the GPU (decoder on the CPU): rel L2 {err:.2e} (bar 1e-2)");
    assert!(err <= 1e-2, "{err:.3e}");
}
