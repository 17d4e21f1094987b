//! No heap allocation in a forward pass on any kernel path this CPU runs, at any thread count
//! (the thread team is built at load or `set_threads`, never during a pass). Runs without
//! libtest's harness (its threads allocate; the count is process-wide so that the kernel
//! worker threads are watched too).

mod common;

use common::fixtures_dir;
use tinydiffusion::kernels::KernelPath;
use tinydiffusion::Model;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::allocations_during;

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

fn main() {
    let mut checked = 0;
    // Every UNet2DModel op kind: the NCSN++ skip blocks; AdaGN, resnet samplers and heads
    // (iddpm8); the learned time table and mish (learned8); the label sinusoid (classts8);
    // float class embeddings (identity8).
    let models = [
        "tiny-rgb16",
        "tiny-gray8",
        "ncsnpp/tiny-ncsnpp8",
        "unet-a/iddpm8",
        "unet-a/learned8",
        "unet-a/classts8",
        "unet-c/identity8",
    ];
    for name in models {
        let mut model = Model::load(fixtures_dir().join(name)).unwrap();
        let (c, h, w) = model.input_shape();
        let x = vec![0.25f32; 3 * c * h * w];
        let mut out = vec![0.0f32; 3 * model.config.out_channels * h * w];
        let labels = model.config.num_class_embeds.map(|_| vec![0i64, 1, 0]);
        let embeddings = vec![0.5f32; 3 * model.config.time_embed_dim];
        let forward = |model: &Model, ws: &mut [f32], out: &mut [f32]| {
            let t = [5.0, 50.0, 500.0];
            if model.config.identity_class_embedding {
                model.forward_with_class_embeddings(ws, &x, &t, &embeddings, out)
            } else {
                model.forward(ws, &x, &t, labels.as_deref(), out)
            }
            .unwrap()
        };
        for path in KernelPath::ALL.into_iter().chain(KernelPath::F16) {
            if !path.is_available() {
                println!(
                    "skipped: this CPU or build cannot run the {} kernels",
                    path.name()
                );
                continue;
            }
            model.set_kernels(path).unwrap();
            for threads in [1, 2, 3] {
                model.set_threads(threads).unwrap();
                let mut ws = vec![0.0f32; model.workspace_len(3)];
                forward(&model, &mut ws, &mut out);
                let n = allocations_during(|| {
                    for _ in 0..3 {
                        forward(&model, &mut ws, &mut out);
                    }
                });
                assert_eq!(
                    n,
                    0,
                    "{name} [{}] {threads} threads: {n} allocations in 3 forward passes",
                    path.name()
                );
                checked += 1;
            }
        }
    }
    println!("alloc_simd: {checked} passed, 0 failed");
}
