//! GPU benchmark of the CIFAR-10 DDPM UNet (google/ddpm-cifar10-32's architecture, seeded
//! random f16 weights) on the CUDA backend:
//! `cargo run --release --features cuda --example bench_cuda [-- --runs N --device cuda:N]`.
//!
//! Prints, for batch 1 and 64: the median ms per forward (host copies of x and eps included)
//! and TFLOP/s at 12.44 GFLOP per image; then a 50-step DDIM run of 64 images (one CUDA
//! graph per step, replayed), its total seconds, ms per step and images/s. Compare in the
//! same sitting with `python3 benches/torch_cuda_reference.py`.

use std::time::Instant;

use tinydiffusion::sampler::{SampleOptions, Sampler, SamplerKind};
use tinydiffusion::schedule::SchedulerConfig;
use tinydiffusion::testing::{random_model, CIFAR10_CONFIG};
use tinydiffusion::Device;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut runs = 30usize;
    let mut device = Device::Cuda(0);
    let mut sample_batch = 64usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("flag needs a value");
        match a.as_str() {
            "--runs" => runs = val().parse().expect("--runs N"),
            "--device" => device = Device::parse(&val()).expect("--device"),
            "--sample-batch" => sample_batch = val().parse().expect("--sample-batch N"),
            other => panic!("unknown flag {other} (--runs N, --device cuda:N, --sample-batch N)"),
        }
    }
    let mut model = random_model(CIFAR10_CONFIG, 42).expect("build the CIFAR-10 model");
    let t0 = Instant::now();
    if let Err(e) = model.to_device(device) {
        eprintln!("SKIP: {e}");
        return;
    }
    let gpu = model.cuda_backend().expect("on the GPU");
    println!(
        "{} ({}), setup (NVRTC + upload) {:.0} ms; {:.1}M parameters, {:.2} GFLOP/image",
        gpu.device_name(),
        gpu.arch(),
        t0.elapsed().as_secs_f64() * 1e3,
        model.parameters() as f64 / 1e6,
        model.flops_per_sample() as f64 / 1e9
    );
    let (c, h, w) = model.input_shape();
    println!(
        "{:>6} {:>12} {:>10} {:>9}",
        "batch", "ms/forward", "ms/image", "TFLOP/s"
    );
    for batch in [1usize, 64] {
        let n = batch * c * h * w;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let t: Vec<f32> = (0..batch).map(|b| (10 + 97 * b % 1000) as f32).collect();
        let mut ws = vec![0.0f32; model.workspace_len(batch)];
        let mut out = vec![0.0f32; n];
        for _ in 0..3 {
            model.forward(&mut ws, &x, &t, None, &mut out).unwrap();
        }
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                let t0 = Instant::now();
                model.forward(&mut ws, &x, &t, None, &mut out).unwrap();
                t0.elapsed().as_secs_f64()
            })
            .collect();
        let s = median(&mut times);
        let tflops = (model.flops_per_sample() * batch as u64) as f64 / s / 1e12;
        println!(
            "{batch:>6} {:>12.3} {:>10.4} {tflops:>9.2}",
            s * 1e3,
            s * 1e3 / batch as f64
        );
    }

    let sampler = Sampler::builder(SamplerKind::Ddim)
        .steps(50)
        .build(&SchedulerConfig::ddim_default())
        .unwrap();
    let batch = sample_batch;
    let mut ws = vec![0.0f32; sampler.workspace_len(&model, batch, false)];
    let mut out = vec![0.0f32; batch * c * h * w];
    let opts = SampleOptions::new(batch, 1);
    let t0 = Instant::now();
    sampler
        .sample(&model, &mut ws, &opts, &mut out, None)
        .unwrap();
    let first = t0.elapsed().as_secs_f64();
    let mut times: Vec<f64> = (0..3)
        .map(|_| {
            let t0 = Instant::now();
            sampler
                .sample(&model, &mut ws, &opts, &mut out, None)
                .unwrap();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    let s = median(&mut times);
    println!(
        "DDIM 50 steps, batch {batch}: {s:.3} s ({:.2} ms/step, {:.1} images/s); first run \
         (graph capture included) {first:.3} s; device workspace {:.1} MiB",
        s * 1e3 / 50.0,
        batch as f64 / s,
        tinydiffusion::cuda::CudaBackend::workspace_bytes(&model, batch, 50) as f64
            / (1 << 20) as f64
    );
}
