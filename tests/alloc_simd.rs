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
    for name in ["tiny-rgb16", "tiny-gray8", "ncsnpp/tiny-ncsnpp8"] {
        let mut model = Model::load(fixtures_dir().join(name)).unwrap();
        let (c, h, w) = model.input_shape();
        let x = vec![0.25f32; 3 * c * h * w];
        let mut out = vec![0.0f32; x.len()];
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
                model
                    .forward(&mut ws, &x, &[5.0, 50.0, 500.0], None, &mut out)
                    .unwrap();
                let n = allocations_during(|| {
                    for _ in 0..3 {
                        model
                            .forward(&mut ws, &x, &[5.0, 50.0, 500.0], None, &mut out)
                            .unwrap();
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
