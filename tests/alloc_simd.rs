//! No heap allocation in a forward pass on any kernel path this CPU runs, at any thread count
//! (the thread team is built at load or `set_threads`, never during a pass). Runs without
//! libtest's harness (its threads allocate; the count is process-wide so that the kernel
//! worker threads are watched too).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::fixtures_dir;
use tinydiffusion::kernels::KernelPath;
use tinydiffusion::Model;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let mut checked = 0;
    for name in ["tiny-rgb16", "tiny-gray8"] {
        let mut model = Model::load(fixtures_dir().join(name)).unwrap();
        let (c, h, w) = model.input_shape();
        let x = vec![0.25f32; 3 * c * h * w];
        let mut out = vec![0.0f32; x.len()];
        for path in KernelPath::ALL {
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
                let before = ALLOCATIONS.load(Ordering::SeqCst);
                for _ in 0..3 {
                    model
                        .forward(&mut ws, &x, &[5.0, 50.0, 500.0], None, &mut out)
                        .unwrap();
                }
                let n = ALLOCATIONS.load(Ordering::SeqCst) - before;
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
