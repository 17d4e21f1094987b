//! UNet2DModel variants beyond the shared fixtures (tests/tools/make_unet_a_fixtures.py,
//! diffusers 0.42): the improved-DDPM family (AdaGN `scale_shift`, resnet down/upsamplers,
//! multi-head attention, a mid attention without GroupNorm, learned variance). Forward parity
//! per block on every kernel path this CPU has, and whole sampling runs with injected noise.

mod common;

use common::{fixtures_dir, read_json, rel_l2, SampleCase, TensorFile};
use tinydiffusion::kernels::KernelPath;
use tinydiffusion::memory::Reuse;
use tinydiffusion::sampler;
use tinydiffusion::weights::LoadOptions;
use tinydiffusion::Model;

const MODELS: [&str; 1] = ["unet-a/iddpm8"];

/// The forward case against diffusers: every block's activation (a report naming the first
/// bad block) and the output within 1e-4; returns the output's error.
fn check_forward(name: &str, path: KernelPath) -> f64 {
    let dir = fixtures_dir().join(name);
    let cases = read_json(dir.join("cases.json"));
    let case = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "forward")
        .unwrap()
        .clone();
    let tensors = TensorFile::open(dir.join("cases.safetensors"));
    let inputs = &case["inputs"];
    let x = tensors.f32s(inputs["x"].as_str().unwrap());
    let t = tensors.f32s(inputs["t"].as_str().unwrap());
    let labels = inputs
        .get("class_labels")
        .map(|n| tensors.i64s(n.as_str().unwrap()));
    let expected = tensors.f64s(case["expected"]["out"].as_str().unwrap());
    let activations = case["expected"]["activations"].as_object().unwrap();

    let mut model = Model::load_with(&dir, LoadOptions::default(), Reuse::None).unwrap();
    model.set_kernels(path).unwrap();
    let (c, h, w) = model.input_shape();
    let batch = x.len() / (c * h * w);
    let mut ws = vec![0.0f32; model.workspace_len(batch)];
    let mut out = vec![0.0f32; expected.len()];
    model
        .forward(&mut ws, &x, &t, labels.as_deref(), &mut out)
        .unwrap();
    let mut report = String::new();
    let mut worst_tap = 0.0f64;
    for tap in model.taps() {
        let (key, post) = match tap.name.split_once('+') {
            Some((k, p)) => (k, Some(p)),
            None => (tap.name.as_str(), None),
        };
        let Some(tensor) = activations.get(key) else {
            continue;
        };
        let mut want = tensors.f64s(tensor.as_str().unwrap());
        if post == Some("silu") {
            want.iter_mut().for_each(|v| *v /= 1.0 + (-*v).exp());
        }
        let (s, l) = model.tensor_region(tap.tensor, batch);
        let hw = tap.height * tap.width;
        let mut ours = vec![0.0f32; l];
        for b in 0..batch {
            for p in 0..hw {
                for ch in 0..tap.channels {
                    ours[(b * tap.channels + ch) * hw + p] =
                        ws[s + (b * hw + p) * tap.channels + ch];
                }
            }
        }
        let e = rel_l2(&ours, &want);
        worst_tap = worst_tap.max(e);
        report += &format!("  {:<24} {e:.2e}\n", tap.name);
    }
    let err = rel_l2(&out, &expected);
    println!(
        "{name} [{}]: out rel L2 {err:.3e}, worst block {worst_tap:.2e}\n{report}",
        model.kernels_name()
    );
    assert!(
        err <= 1e-4 && worst_tap <= 1e-4,
        "{name}: {err:.3e}\n{report}"
    );

    // The shared (inference) memory plan gives the same bits.
    let mut shared = Model::load(&dir).unwrap();
    shared.set_kernels(path).unwrap();
    let mut ws2 = vec![f32::NAN; shared.workspace_len(batch)];
    let mut out2 = vec![0.0f32; out.len()];
    shared
        .forward(&mut ws2, &x, &t, labels.as_deref(), &mut out2)
        .unwrap();
    assert_eq!(out, out2, "{name}: shared memory plan changed the result");
    err
}

#[test]
fn variants_forward_match_diffusers_on_every_path() {
    for path in KernelPath::ALL {
        if !path.is_available() {
            println!("skipped: no {} kernels on this CPU", path.name());
            continue;
        }
        for m in MODELS {
            check_forward(m, path);
        }
    }
}

#[test]
fn variants_sampling_runs_match_diffusers() {
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
            let run = SampleCase::read(&model, case, &tensors);
            assert_eq!(
                run.scheduler.timesteps(),
                &run.expected_timesteps(&tensors)[..]
            );
            let mut ws = vec![0.0f32; run.workspace_len(&model)];
            let mut out = vec![0.0f32; run.x_t.len()];
            sampler::sample(
                &model,
                &run.scheduler,
                &mut ws,
                &run.options(),
                &mut out,
                None,
            )
            .unwrap();
            let err = rel_l2(&out, &run.expected_final(&tensors));
            println!("{m} {}: final rel L2 {err:.2e}", run.name);
            assert!(err <= 1e-3, "{m} {}: {err:.3e}", run.name);
        }
    }
}
