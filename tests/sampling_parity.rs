//! Whole sampling runs against diffusers with injected noise: every `sample` case of every
//! fixture model (DDPM and DDIM, clipping, trailing spacing, eta, v-prediction with cosine
//! betas, learned variance, classifier-free guidance, a full 1000-step DDPM run).

mod common;

use common::{fixtures_dir, read_json, rel_l2, SampleCase, TensorFile};
use tinydiffusion::sampler;
use tinydiffusion::Model;

const MODELS: [&str; 4] = [
    "tiny-rgb16",
    "tiny-gray8",
    "tiny-class16",
    "tiny-learnedvar8",
];

fn run_case(model: &Model, case: &serde_json::Value, tensors: &TensorFile) -> f64 {
    let run = SampleCase::read(model, case, tensors);
    let expected_t = run.expected_timesteps(tensors);
    assert_eq!(
        run.scheduler.timesteps(),
        &expected_t[..],
        "{}: timesteps",
        run.name
    );
    let mut ws = vec![0.0f32; run.workspace_len(model)];
    let mut out = vec![0.0f32; run.x_t.len()];
    sampler::sample(
        model,
        &run.scheduler,
        &mut ws,
        &run.options(),
        &mut out,
        None,
    )
    .unwrap();
    rel_l2(&out, &run.expected_final(tensors))
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
            if err.is_nan() || err > bar {
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
