//! Zero host allocations per step on the GPU: after a first sampling run (which allocates the
//! device workspace and captures the step graph), a second whole run and a second forward pass
//! make no heap allocation at all. Needs a GPU (feature `cuda`); prints SKIP without one
//! (a failure with `TINYDIFFUSION_REQUIRE_GPU=1`). Runs without libtest's harness, whose
//! threads allocate.

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::allocations_during;
use tinydiffusion::sampler::{self, SampleOptions};
use tinydiffusion::schedule::{Scheduler, SchedulerConfig};
use tinydiffusion::{Device, Model};

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-rgb16");
    let mut model = Model::load(&dir).unwrap();
    if let Err(e) = model.to_device(Device::Cuda(0)) {
        if std::env::var("TINYDIFFUSION_REQUIRE_GPU").is_ok_and(|v| v == "1") {
            panic!("no usable GPU: {e}");
        }
        println!("SKIP: {e}");
        return;
    }
    let mut scheduler = Scheduler::new(SchedulerConfig::ddim_default(), 20).unwrap();
    scheduler.set_eta(1.0);
    let batch = 4;
    let (c, h, w) = model.input_shape();
    let n = batch * c * h * w;
    let opts = SampleOptions::new(batch, 3);
    let mut ws = vec![0.0f32; sampler::workspace_len(&model, &scheduler, batch, false)];
    let mut out = vec![0.0f32; n];
    sampler::sample(&model, &scheduler, &mut ws, &opts, &mut out, None).unwrap();
    let allocs = allocations_during(|| {
        sampler::sample(&model, &scheduler, &mut ws, &opts, &mut out, None).unwrap();
    });
    println!("second 20-step GPU sampling run: {allocs} heap allocations");
    assert_eq!(allocs, 0, "the GPU sampling loop allocated");

    let x = vec![0.1f32; n];
    let t = [500.0f32];
    let mut fws = vec![0.0f32; model.workspace_len(batch)];
    model.forward(&mut fws, &x, &t, None, &mut out).unwrap();
    let allocs = allocations_during(|| {
        model.forward(&mut fws, &x, &t, None, &mut out).unwrap();
    });
    println!("second GPU forward pass: {allocs} heap allocations");
    assert_eq!(allocs, 0, "the GPU forward pass allocated");
    println!("ok");
}
