//! The trainer's dropout (`UNet2DModel` `dropout`: every `ResnetBlock2D` drops inputs of its
//! `conv2` while training): gradients against PyTorch float64 run with the same masks
//! (`tests/tools/make_dropout_fixtures.py`), finite differences through a fixed mask, and
//! `dropout: 0` / `Dropout::Off` computing exactly what the trainer computed without it.
#![cfg(feature = "train")]

mod common;

use common::{fixtures_dir, read_json, rel_l2, simple_loss, TensorFile};
use tinydiffusion::model::describe_config;
use tinydiffusion::schedule::SchedulerConfig;
use tinydiffusion::train::loss::NoiseSchedule;
use tinydiffusion::train::rng::{Purpose, Stream};
use tinydiffusion::train::{Dropout, TrainGraph};
use tinydiffusion::{Error, UNetConfig};

fn config(dir: &str, dropout: Option<f64>) -> UNetConfig {
    let path = fixtures_dir().join(dir).join("config.json");
    let mut v: serde_json::Value = read_json(path);
    match dropout {
        Some(p) => v["dropout"] = serde_json::json!(p),
        None => {
            v.as_object_mut().unwrap().remove("dropout");
        }
    }
    UNetConfig::from_json(&v.to_string()).unwrap()
}

/// The fixture's keep flags, site by site in the graph's order, NCHW -> NHWC.
fn fixture_masks(graph: &TrainGraph, tensors: &TensorFile, prefix: &str, batch: usize) -> Vec<f32> {
    let mut flags = Vec::new();
    for site in graph.dropout_sites() {
        let (c, h, w) = graph.dropout_site_shape(site);
        let name = format!("{prefix}{}", site.resnet);
        assert_eq!(tensors.shape(&name), [batch, c, h, w], "{name}");
        let nchw = tensors.f32s(&name);
        let hw = h * w;
        let mut nhwc = vec![0.0; nchw.len()];
        for b in 0..batch {
            for ch in 0..c {
                for q in 0..hw {
                    nhwc[(b * hw + q) * c + ch] = nchw[(b * c + ch) * hw + q];
                }
            }
        }
        flags.extend(nhwc);
    }
    flags
}

fn gradient_parity(model_name: &str) -> f64 {
    let dir = fixtures_dir().join("dropout").join(model_name);
    let cases = read_json(dir.join("cases.json"));
    let case = &cases["cases"][0];
    assert_eq!(case["kind"], "gradient");
    let tensors = TensorFile::open(dir.join("cases.safetensors"));
    let inputs = &case["inputs"];
    let get = |k: &str| tensors.f32s(inputs[k].as_str().unwrap());
    let (x0, eps, x_t) = (get("x0"), get("eps"), get("x_t"));
    let t: Vec<usize> = (tensors.i64s(inputs["t"].as_str().unwrap()).iter())
        .map(|&v| v as usize)
        .collect();
    let expected = &case["expected"];
    let expected_loss = tensors.f64s(expected["loss"].as_str().unwrap())[0];
    let grad_prefix = expected["param_grad_prefix"].as_str().unwrap();
    let mask_prefix = expected["dropout_mask_prefix"].as_str().unwrap();

    let config = config(&format!("dropout/{model_name}"), case["dropout"].as_f64());
    let graph = TrainGraph::new(&describe_config(&config).unwrap()).unwrap();
    let n_resnets = (tensors.names().iter())
        .filter(|n| n.starts_with(mask_prefix))
        .count();
    assert_eq!(
        graph.dropout_sites().len(),
        n_resnets,
        "one site per resnet"
    );
    let table = &graph.params;
    let mut params = vec![0.0f32; table.buffer_len()];
    let weights = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    table.read_safetensors(&weights, "", &mut params).unwrap();

    let batch = t.len();
    let flags = fixture_masks(&graph, &tensors, mask_prefix, batch);
    let mut ws = graph.workspace(batch);
    let tf: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    (graph.forward_with_dropout(&params, &mut ws, &x_t, &tf, None, Dropout::Masks(&flags)))
        .unwrap();
    let sched = NoiseSchedule::new(&SchedulerConfig::ddpm_default()).unwrap();
    let (c, h, w) = (
        config.in_channels,
        config.sample_size.0,
        config.sample_size.1,
    );
    let loss = simple_loss(&mut ws, &sched, c, h * w, &x0, &eps, &x_t, &t);
    let mut grads = vec![0.0f32; table.buffer_len()];
    graph.backward(&params, &mut grads, &mut ws, None).unwrap();

    let loss_err = (loss.total - expected_loss).abs() / expected_loss.abs();
    println!(
        "{model_name}: loss {} vs {expected_loss} (rel {loss_err:.2e})",
        loss.total
    );
    assert!(
        loss_err <= 1e-4,
        "{model_name}: loss {} vs {expected_loss}",
        loss.total
    );
    let mut results: Vec<(f64, String)> = Vec::new();
    for spec in table.specs() {
        let name = format!("{grad_prefix}{}", spec.name);
        let want = tensors.f64s(&name);
        if want.iter().map(|v| v * v).sum::<f64>().sqrt() < 1e-8 {
            continue;
        }
        results.push((
            rel_l2(&table.export(spec, &grads), &want),
            spec.name.clone(),
        ));
    }
    results.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
    println!("{model_name}: {} gradient tensors; worst:", results.len());
    for (e, n) in results.iter().take(3) {
        println!("  {e:.2e}  {n}");
    }
    let bad: Vec<_> = (results.iter())
        .filter(|(e, _)| e.is_nan() || *e > 1e-3)
        .collect();
    assert!(
        bad.is_empty(),
        "{model_name}: gradients above 1e-3: {bad:?}"
    );
    let n_fixture = (tensors.names().iter())
        .filter(|n| n.starts_with(grad_prefix))
        .count();
    assert_eq!(
        n_fixture,
        table.specs().len(),
        "{model_name}: parameter count"
    );
    results[0].0
}

#[test]
fn gradients_match_pytorch_with_the_same_masks_scale_shift_mish() {
    gradient_parity("iddpm-drop8");
}

#[test]
fn gradients_match_pytorch_with_the_same_masks_default_silu() {
    gradient_parity("plain-drop8");
}

fn randn(seed: u64, n: usize) -> Vec<f32> {
    let mut s = Stream::new(seed, Purpose::Noise, n as u64);
    (0..n).map(|_| s.gaussian() as f32).collect()
}

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// `L = sum(out * r)` through the whole UNet with one fixed set of masks: the backward's
/// gradient of parameter tensors before, at and after the dropout sites against central
/// differences (Richardson over h = 1e-2, 5e-3; f32 forward).
#[test]
fn finite_differences_through_a_fixed_mask() {
    let config = config("dropout/plain-drop8", Some(0.25));
    let graph = TrainGraph::new(&describe_config(&config).unwrap()).unwrap();
    let table = &graph.params;
    let mut params = vec![0.0f32; table.buffer_len()];
    table.init(7, &mut params);
    // Non-trivial norms and biases (init leaves them at 1 and 0).
    for spec in table.specs() {
        if spec.shape.len() == 1 {
            let r = randn(spec.offset as u64, spec.len);
            for (p, v) in params[spec.range()].iter_mut().zip(r) {
                *p += 0.2 * v;
            }
        }
    }
    let batch = 2;
    let (c, h, w) = (
        config.in_channels,
        config.sample_size.0,
        config.sample_size.1,
    );
    let x = randn(1, batch * c * h * w);
    let t = [40.0f32, 700.0];
    let mask_len: usize = (graph.dropout_sites().iter())
        .map(|s| {
            let (c, h, w) = graph.dropout_site_shape(s);
            batch * c * h * w
        })
        .sum();
    let mut draws = Stream::new(3, Purpose::Dropout, 0);
    let flags: Vec<f32> = (0..mask_len)
        .map(|_| (draws.uniform() >= 0.25) as u8 as f32)
        .collect();
    assert!(flags.contains(&0.0) && flags.contains(&1.0));
    let mut ws = graph.workspace(batch);
    let r = randn(2, batch * c * h * w);
    let mut loss = |p: &[f32]| {
        graph
            .forward_with_dropout(p, &mut ws, &x, &t, None, Dropout::Masks(&flags))
            .unwrap();
        dot64(&ws.out, &r)
    };
    let base = loss(&params);
    assert!(base.is_finite());
    let mut ws = graph.workspace(batch);
    graph
        .forward_with_dropout(&params, &mut ws, &x, &t, None, Dropout::Masks(&flags))
        .unwrap();
    ws.d_out.copy_from_slice(&r);
    let mut grads = vec![0.0f32; table.buffer_len()];
    graph.backward(&params, &mut grads, &mut ws, None).unwrap();
    let names = [
        "conv_in.weight",
        "time_embedding.linear_1.weight",
        "down_blocks.0.resnets.0.conv1.weight",
        "down_blocks.0.resnets.0.norm2.weight",
        "down_blocks.0.resnets.0.conv2.weight",
        "mid_block.resnets.0.norm2.bias",
        "up_blocks.1.resnets.0.conv1.weight",
    ];
    for (k, name) in names.iter().enumerate() {
        let spec = (table.specs().iter())
            .find(|s| s.name == *name)
            .unwrap_or_else(|| panic!("no {name}"));
        let u = randn(100 + k as u64, spec.len);
        let analytic = dot64(&grads[spec.range()], &u);
        let mut central = |hh: f32| {
            let (mut plus, mut minus) = (params.clone(), params.clone());
            for ((p, m), d) in (plus[spec.range()].iter_mut())
                .zip(minus[spec.range()].iter_mut())
                .zip(&u)
            {
                *p += hh * d;
                *m -= hh * d;
            }
            (loss(&plus) - loss(&minus)) / (2.0 * hh as f64)
        };
        let fd = (4.0 * central(5e-3) - central(1e-2)) / 3.0;
        let err = (fd - analytic).abs() / analytic.abs().max(0.1);
        println!("d/d{name:<40} analytic {analytic:>12.6} fd {fd:>12.6} rel {err:.1e}");
        assert!(err < 5e-3, "{name}: analytic {analytic} vs fd {fd}");
    }
}

/// Forward output and every parameter gradient of one step.
fn step(graph: &TrainGraph, params: &[f32], dropout: Dropout) -> (Vec<f32>, Vec<f32>) {
    let batch = 2;
    let n = graph.input_len();
    let x = randn(1, batch * n);
    let t = [40.0f32, 700.0];
    let mut ws = graph.workspace(batch);
    graph
        .forward_with_dropout(params, &mut ws, &x, &t, None, dropout)
        .unwrap();
    ws.d_out
        .copy_from_slice(&randn(2, batch * graph.output_len()));
    let mut grads = vec![0.0f32; graph.params.buffer_len()];
    graph.backward(params, &mut grads, &mut ws, None).unwrap();
    (ws.out.clone(), grads)
}

#[test]
fn zero_dropout_and_dropout_off_compute_the_undropped_numbers_exactly() {
    let absent =
        TrainGraph::new(&describe_config(&config("dropout/plain-drop8", None)).unwrap()).unwrap();
    let zero =
        TrainGraph::new(&describe_config(&config("dropout/plain-drop8", Some(0.0))).unwrap())
            .unwrap();
    let some =
        TrainGraph::new(&describe_config(&config("dropout/plain-drop8", Some(0.3))).unwrap())
            .unwrap();
    assert!(absent.dropout_sites().is_empty() && zero.dropout_sites().is_empty());
    assert_eq!(some.dropout_sites().len(), 8);
    // Same planned memory as without dropout when p = 0.
    assert_eq!(zero.activation_len(2), absent.activation_len(2));
    let mut params = vec![0.0f32; absent.params.buffer_len()];
    absent.params.init(5, &mut params);
    let reference = step(&absent, &params, Dropout::Off);
    let seeded = Dropout::Seeded { seed: 9, step: 4 };
    assert_eq!(step(&zero, &params, seeded), reference, "p = 0, seeded");
    assert_eq!(
        step(&some, &params, Dropout::Off),
        reference,
        "p = 0.3, off"
    );
    // With p > 0 the seeded masks change the numbers, the same way for the same (seed, step).
    let dropped = step(&some, &params, seeded);
    assert_ne!(dropped.0, reference.0);
    assert_eq!(step(&some, &params, seeded), dropped);
    assert_ne!(
        step(&some, &params, Dropout::Seeded { seed: 9, step: 5 }).0,
        dropped.0
    );
}

#[test]
fn bad_dropout_values_and_masks_are_typed_errors() {
    for p in [-0.1, 1.5] {
        let path = fixtures_dir().join("dropout/plain-drop8/config.json");
        let mut v = read_json(path);
        v["dropout"] = serde_json::json!(p);
        match UNetConfig::from_json(&v.to_string()) {
            Err(Error::InvalidConfig { key, .. }) => assert_eq!(key, "dropout"),
            other => panic!("dropout {p}: {other:?}"),
        }
    }
    let graph =
        TrainGraph::new(&describe_config(&config("dropout/plain-drop8", Some(0.3))).unwrap())
            .unwrap();
    let params = vec![0.0f32; graph.params.buffer_len()];
    let mut ws = graph.workspace(1);
    let x = vec![0.0; graph.input_len()];
    let run = |ws: &mut _, flags: &[f32]| {
        graph.forward_with_dropout(&params, ws, &x, &[1.0], None, Dropout::Masks(flags))
    };
    assert!(matches!(
        run(&mut ws, &[1.0; 3]),
        Err(Error::BufferSize {
            what: "dropout masks",
            ..
        })
    ));
    let total: usize = (graph.dropout_sites().iter())
        .map(|s| {
            let (c, h, w) = graph.dropout_site_shape(s);
            c * h * w
        })
        .sum();
    // A model without dropout takes no masks.
    let zero =
        TrainGraph::new(&describe_config(&config("dropout/plain-drop8", Some(0.0))).unwrap())
            .unwrap();
    let mut ws0 = zero.workspace(1);
    let masks = Dropout::Masks(&[1.0; 4]);
    assert!(matches!(
        zero.forward_with_dropout(&params, &mut ws0, &x, &[1.0], None, masks),
        Err(Error::BufferSize {
            what: "dropout masks",
            ..
        })
    ));
    let mut flags = vec![1.0; total];
    flags[5] = 0.5;
    match run(&mut ws, &flags) {
        Err(Error::InvalidArgument { what, .. }) => assert_eq!(what, "dropout masks"),
        other => panic!("{other:?}"),
    }
}

/// The trainer draws its masks per step from `(seed, step)`: a dropout run resumes bit for bit,
/// and with `dropout: 0` it is the run without the key.
#[test]
fn trainer_applies_dropout_and_resumes_with_the_same_masks() {
    use tinydiffusion::train::data::Dataset;
    use tinydiffusion::train::trainer::Init;
    use tinydiffusion::train::{TrainOptions, Trainer};
    let text = |p: Option<f64>| {
        let mut v = read_json(fixtures_dir().join("dropout/plain-drop8/config.json"));
        match p {
            Some(p) => v["dropout"] = serde_json::json!(p),
            None => {
                v.as_object_mut().unwrap().remove("dropout");
            }
        }
        v.to_string()
    };
    let mut s = Stream::new(5, Purpose::Noise, 0);
    let data = Dataset {
        channels: 1,
        height: 8,
        width: 8,
        images: (0..5 * 64)
            .map(|_| (s.uniform() * 2.0 - 1.0) as f32)
            .collect(),
        labels: None,
    };
    let opts = TrainOptions {
        batch: 2,
        seed: 11,
        ..Default::default()
    };
    let run = |config: &str, steps: usize| {
        let mut tr = Trainer::new(config, Init::Seeded(1), data.clone(), opts.clone()).unwrap();
        let losses: Vec<f64> = (0..steps)
            .map(|_| tr.train_step().unwrap().loss.total)
            .collect();
        (losses, tr)
    };
    let (absent, a) = run(&text(None), 3);
    let (zero, z) = run(&text(Some(0.0)), 3);
    assert_eq!(zero, absent);
    assert!(a.params() == z.params());
    let (dropped, d) = run(&text(Some(0.3)), 3);
    assert!(dropped.iter().all(|l| l.is_finite()));
    assert_ne!(dropped[1..], absent[1..], "the masks change the run");

    let out = std::env::temp_dir().join(format!("tinydiffusion-dropout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (_, b) = run(&text(Some(0.3)), 1);
    b.save(&out, 1).unwrap();
    let ckpt = tinydiffusion::train::checkpoint::latest(&out).unwrap();
    let mut c = Trainer::resume(&ckpt, data.clone()).unwrap();
    for l in &dropped[1..] {
        assert_eq!(c.train_step().unwrap().loss.total, *l);
    }
    assert!(c.params() == d.params(), "params differ after resume");
    std::fs::remove_dir_all(&out).unwrap();
}

/// Every UNet2DModel family builds its dropout sites: one per `ResnetBlock2D` (each has one
/// `conv2`), including the NCSN++ skip blocks' FIR resnets and the resnet samplers.
#[test]
fn every_family_has_one_dropout_site_per_resnet() {
    for dir in [
        "tiny-rgb16",
        "tiny-class16",
        "unet-a/iddpm8",
        "unet-a/learned8",
        "unet-a/gelu8",
        "unet-a/relu8",
        "unet-a/classts8",
        "ncsnpp/tiny-ncsnpp8",
        "unet-c/cm/unet",
        "unet-c/ve/unet",
        "unet-c/nomid8",
        "unet-c/identity8",
        "extra/options-c",
    ] {
        let config = config(dir, Some(0.1));
        let graph = TrainGraph::new(&describe_config(&config).unwrap())
            .unwrap_or_else(|e| panic!("{dir}: {e}"));
        let resnets = (graph.params.specs().iter())
            .filter(|s| s.name.ends_with(".conv2.weight"))
            .count();
        assert!(resnets > 0, "{dir}");
        assert_eq!(graph.dropout_sites().len(), resnets, "{dir}");
        for site in graph.dropout_sites() {
            let (c, h, w) = graph.dropout_site_shape(site);
            assert!(c * h * w > 0, "{dir}: {}", site.resnet);
        }
    }
}
