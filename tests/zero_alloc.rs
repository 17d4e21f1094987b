//! Sampling performs no heap allocation: a counting global allocator watches a forward pass,
//! a 10-step DDIM run and a 50-step DDPM run (with seeded noise, guidance, thresholding).
//!
//! This file runs without libtest's harness (`harness = false`): the harness's own threads
//! (its "running for over 60 seconds" notice) allocate, and the count is process-wide so that
//! worker threads of the kernels are watched too.

mod common;

use common::fixtures_dir;
use tinydiffusion::sampler::{self, Guidance, SampleOptions};
use tinydiffusion::schedule::{Scheduler, SchedulerConfig, SchedulerKind};
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
    let mut cfg = SchedulerConfig::ddpm_default().with_kind(kind);
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
}
