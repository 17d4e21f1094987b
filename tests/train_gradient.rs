//! Gradient parity with PyTorch: for every fixture model with a `gradient` case, the trainer's
//! loss and every parameter's gradient (f32 master weights, f32 math) within 1e-3 relative L2 of
//! diffusers' float64 autograd (tensors whose expected norm is below 1e-8 are skipped).
#![cfg(feature = "train")]

mod common;

use common::{fixtures_dir, read_json, rel_l2, simple_loss, TensorFile};
use tinydiffusion::model::describe_config;
use tinydiffusion::schedule::SchedulerConfig;
use tinydiffusion::train::loss::NoiseSchedule;
use tinydiffusion::train::TrainGraph;
use tinydiffusion::Model;

fn check(model_name: &str) -> f64 {
    let dir = fixtures_dir().join(model_name);
    let cases = read_json(dir.join("cases.json"));
    let Some(case) = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "gradient")
    else {
        panic!("{model_name}: no gradient case");
    };
    let tensors = TensorFile::open(dir.join("cases.safetensors"));
    let inputs = &case["inputs"];
    let get = |k: &str| tensors.f32s(inputs[k].as_str().unwrap());
    let (x0, eps, x_t) = (get("x0"), get("eps"), get("x_t"));
    let t: Vec<usize> = tensors
        .i64s(inputs["t"].as_str().unwrap())
        .iter()
        .map(|&v| v as usize)
        .collect();
    let expected_loss = tensors.f64s(case["expected"]["loss"].as_str().unwrap())[0];
    let prefix = case["expected"]["param_grad_prefix"].as_str().unwrap();

    let model = Model::load(&dir).unwrap();
    let graph = TrainGraph::new(&describe_config(&model.config).unwrap()).unwrap();
    let table = &graph.params;
    let mut params = vec![0.0f32; table.buffer_len()];
    let weights = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    table.read_safetensors(&weights, "", &mut params).unwrap();

    let batch = t.len();
    let mut ws = graph.workspace(batch);
    let tf: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    graph.forward(&params, &mut ws, &x_t, &tf, None).unwrap();
    let sched = NoiseSchedule::new(&SchedulerConfig::ddpm_default()).unwrap();
    let (c, h, w) = model.input_shape();
    let loss = simple_loss(&mut ws, &sched, c, h * w, &x0, &eps, &x_t, &t);
    let mut grads = vec![0.0f32; table.buffer_len()];
    graph.backward(&params, &mut grads, &mut ws, None).unwrap();

    let loss_err = (loss.total - expected_loss).abs() / expected_loss.abs();
    println!(
        "{model_name}: loss {:.6} vs {:.6} (rel {loss_err:.2e})",
        loss.total, expected_loss
    );
    assert!(
        loss_err <= 1e-3,
        "{model_name}: loss {} vs {expected_loss}",
        loss.total
    );

    let mut results: Vec<(f64, String)> = Vec::new();
    for spec in table.specs() {
        let name = format!("{prefix}{}", spec.name);
        assert!(tensors.has(&name), "{model_name}: fixture lacks {name}");
        let expected = tensors.f64s(&name);
        let norm = expected.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm < 1e-8 {
            continue;
        }
        let ours = table.export(spec, &grads);
        results.push((rel_l2(&ours, &expected), spec.name.clone()));
    }
    results.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
    println!("{model_name}: {} gradient tensors; worst:", results.len());
    for (e, n) in results.iter().take(5) {
        println!("  {e:.2e}  {n}");
    }
    let bad: Vec<_> = results
        .iter()
        .filter(|(e, _)| e.is_nan() || *e > 1e-3)
        .collect();
    assert!(
        bad.is_empty(),
        "{model_name}: gradients above 1e-3: {bad:?}"
    );
    // Every parameter of the fixture is covered, and every one of ours is in the fixture.
    let n_fixture = tensors
        .names()
        .iter()
        .filter(|n| n.starts_with(prefix))
        .count();
    assert_eq!(
        n_fixture,
        table.specs().len(),
        "{model_name}: parameter count differs from PyTorch's"
    );
    results[0].0
}

#[test]
fn gradients_match_pytorch_tiny_rgb16() {
    check("tiny-rgb16");
}

#[test]
fn gradients_match_pytorch_tiny_gray8() {
    check("tiny-gray8");
}

#[test]
fn gradients_match_pytorch_unet_a_iddpm8() {
    check("unet-a/iddpm8");
}

#[test]
fn gradients_match_pytorch_unet_a_learned8() {
    check("unet-a/learned8");
}

/// `mid_block_type: null`: the first up resnet reads the bottom map concatenated with itself.
#[test]
fn gradients_match_pytorch_unet_c_nomid8() {
    check("unet-c/nomid8");
}

/// The score-SDE VE denoising score-matching loss of a fourier (NCSN++) model,
/// `mean((sigma * model(x0 + sigma eps, sigma) + eps)^2)`, and every parameter's gradient
/// against PyTorch float64 (`unet-c/ve/unet`: the ScoreSdeVePipeline fixture's UNet).
#[test]
fn gradients_match_pytorch_ve_score_matching() {
    use tinydiffusion::train::loss::ve_score_matching_loss_and_grad;
    let dir = fixtures_dir().join("unet-c/ve/unet");
    let tensors = TensorFile::open(dir.join("cases.safetensors"));
    let (x_t, eps, sigma) = (
        tensors.f32s("grad.x_t"),
        tensors.f32s("grad.eps"),
        tensors.f32s("grad.sigma"),
    );
    let expected_loss = tensors.f64s("grad.loss")[0];
    let model = Model::load(&dir).unwrap();
    assert!(model.config.time_fourier);
    let graph = TrainGraph::new(&describe_config(&model.config).unwrap()).unwrap();
    let table = &graph.params;
    let mut params = vec![0.0f32; table.buffer_len()];
    let weights = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    table.read_safetensors(&weights, "", &mut params).unwrap();
    let mut ws = graph.workspace(sigma.len());
    graph.forward(&params, &mut ws, &x_t, &sigma, None).unwrap();
    let out = ws.out.clone();
    let loss = ve_score_matching_loss_and_grad(&sigma, &eps, &out, &mut ws.d_out).unwrap();
    let mut grads = vec![0.0f32; table.buffer_len()];
    graph.backward(&params, &mut grads, &mut ws, None).unwrap();
    let loss_err = (loss.total - expected_loss).abs() / expected_loss;
    println!(
        "ve: loss {:.6} vs {expected_loss:.6} (rel {loss_err:.2e})",
        loss.total
    );
    assert!(loss_err <= 1e-4, "{loss_err:.2e}");
    let mut results: Vec<(f64, String)> = Vec::new();
    let mut seen = 0;
    for spec in table.specs() {
        let name = format!("grad.param.{}", spec.name);
        // The Gaussian Fourier projection's W is fixed (requires_grad=False in diffusers).
        if !tensors.has(&name) {
            assert_eq!(spec.name, "time_proj.weight", "fixture lacks {name}");
            continue;
        }
        seen += 1;
        let expected = tensors.f64s(&name);
        if expected.iter().map(|v| v * v).sum::<f64>().sqrt() < 1e-8 {
            continue;
        }
        results.push((
            rel_l2(&table.export(spec, &grads), &expected),
            spec.name.clone(),
        ));
    }
    let in_fixture = tensors
        .names()
        .iter()
        .filter(|n| n.starts_with("grad.param."))
        .count();
    assert_eq!(seen, in_fixture, "parameters differ from PyTorch's");
    results.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
    println!("ve: {} gradient tensors; worst:", results.len());
    for (e, n) in results.iter().take(5) {
        println!("  {e:.2e}  {n}");
    }
    assert!(
        results.iter().all(|(e, _)| *e <= 1e-3),
        "{:?}",
        &results[..3]
    );
}
