//! Whole sampling runs against diffusers with injected noise: every `sample` case of every
//! fixture model (DDPM and DDIM, clipping, trailing spacing, eta, v-prediction with cosine
//! betas, learned variance, classifier-free guidance, a full 1000-step DDPM run).

mod common;

use common::{fixtures_dir, read_json, rel_l2, TensorFile};
use tinydiffusion::sampler::{self, Guidance, SampleOptions};
use tinydiffusion::schedule::{Scheduler, SchedulerConfig};
use tinydiffusion::Model;

const MODELS: [&str; 4] = [
    "tiny-rgb16",
    "tiny-gray8",
    "tiny-class16",
    "tiny-learnedvar8",
];

fn run_case(model: &Model, case: &serde_json::Value, tensors: &TensorFile) -> f64 {
    let name = case["name"].as_str().unwrap();
    let cfg = SchedulerConfig::from_json(&case["scheduler"].to_string()).unwrap();
    let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
    let mut scheduler = Scheduler::new(cfg, steps).unwrap();
    scheduler.set_eta(case["eta"].as_f64().unwrap_or(0.0));
    let expected_t = tensors.i64s(case["expected"]["timesteps"].as_str().unwrap());
    assert_eq!(scheduler.timesteps(), &expected_t[..], "{name}: timesteps");

    let inputs = &case["inputs"];
    let x_t = tensors.f32s(inputs["x_T"].as_str().unwrap());
    let noise = inputs
        .get("noise")
        .map(|n| tensors.f32s(n.as_str().unwrap()));
    let labels = inputs
        .get("class_labels")
        .map(|n| tensors.i64s(n.as_str().unwrap()));
    let (c, h, w) = model.input_shape();
    let batch = x_t.len() / (c * h * w);
    let guidance = case["guidance_w"].as_f64().map(|wgt| Guidance {
        scale: wgt as f32,
        null_class: case["null_class"].as_i64().unwrap(),
    });
    let opts = SampleOptions {
        batch,
        seed: 0,
        initial_noise: Some(&x_t),
        step_noise: noise.as_deref(),
        class_labels: labels.as_deref(),
        guidance,
    };
    let mut ws = vec![0.0f32; sampler::workspace_len(model, &scheduler, batch, guidance.is_some())];
    let mut out = vec![0.0f32; x_t.len()];
    sampler::sample(model, &scheduler, &mut ws, &opts, &mut out, None).unwrap();
    let traj = tensors.f64s(case["expected"]["traj"].as_str().unwrap());
    let last = &traj[traj.len() - out.len()..];
    rel_l2(&out, last)
}

#[test]
fn sampling_runs_match_diffusers() {
    let mut failures = Vec::new();
    for m in MODELS {
        let dir = fixtures_dir().join(m);
        let model = Model::load(&dir).unwrap();
        let cases = read_json(dir.join("cases.json"));
        let tensors = TensorFile::open(dir.join("cases.safetensors"));
        for case in cases["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["kind"] == "sample")
        {
            let name = case["name"].as_str().unwrap();
            let steps = case["num_inference_steps"].as_u64().unwrap();
            let bar = if steps >= 1000 { 1e-2 } else { 1e-3 };
            let err = run_case(&model, case, &tensors);
            println!("{m:<18} {name:<24} final rel L2 {err:.2e} (bar {bar:.0e})");
            if !(err <= bar) {
                failures.push(format!("{m}/{name}: {err:.3e} > {bar:.0e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "sampling parity failures:\n{}",
        failures.join("\n")
    );
}
