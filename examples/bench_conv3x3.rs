//! `cargo run --release --example bench_conv3x3 [-- PATH]`: the SIMD 3x3 convolution (f16
//! weights, f32 NHWC activations) at Stable Diffusion 1.5's UNet shapes with guidance (batch
//! 2), with the Winograd scratch planned as the model plans it, on all cores. Prints the median
//! of 7 runs per shape, as direct-conv-equivalent GFLOP/s (`2 * pixels * 9 * in * out` FLOP
//! per call, whatever algorithm runs). `PATH` picks a kernel path by name (`avx512`, `avx2`,
//! ...); the detected one by default.

use half::f16;
use tinydiffusion::kernels::threads::ThreadPool;
use tinydiffusion::kernels::{ConvArgs, ConvShape, Exec};
use tinydiffusion::testing::{kernel_path_from_args, median_secs_per_call, rand_vec};

fn main() {
    let path = kernel_path_from_args();
    let table = path.table().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = ThreadPool::new(cores).unwrap();
    println!("path {}, {cores} threads, batch 2", path.name());
    // (edge, in, out): the UNet's stride-1 3x3 convs at 64x64 latents.
    for (edge, in_c, out_c) in [
        (64usize, 320usize, 320usize),
        (32, 640, 640),
        (16, 1280, 1280),
        (8, 1280, 1280),
        (32, 1920, 640),
        (64, 960, 320),
        (16, 2560, 1280),
    ] {
        let shape = ConvShape {
            batch: 2,
            in_h: edge,
            in_w: edge,
            in_ca: in_c,
            in_cb: 0,
            out_c,
            out_h: edge,
            out_w: edge,
            kernel: 3,
            stride: 1,
            pad_top: 1,
            pad_left: 1,
            upsample: false,
        };
        let input = rand_vec(2 * edge * edge * in_c, 1);
        let weight: Vec<f16> = rand_vec(out_c.div_ceil(32) * 32 * in_c * 9, 2)
            .into_iter()
            .map(|x| f16::from_f32(x * 0.02))
            .collect();
        let bias = vec![f16::from_f32(0.1); out_c];
        let args = ConvArgs {
            shape,
            in_a: &input,
            in_b: &[],
            weight: &weight,
            bias: &bias,
            channel_add: &[],
            residual: &[],
            out_scale: 1.0,
        };
        let layout = table.scratch_layout([shape]);
        let mut scratch = vec![0.0f32; layout.len(cores)];
        let ex = Exec::with_layout(&pool, &mut scratch, layout);
        let mut out = vec![0.0f32; 2 * edge * edge * out_c];
        let flop = 2.0 * (2 * edge * edge * 9 * in_c * out_c) as f64;
        let reps = ((4e9 / flop) as usize).max(1);
        let med = median_secs_per_call(reps, || (table.conv2d)(&args, &mut out, &ex));
        println!(
            "{edge:2}x{edge:<2} {in_c:5} -> {out_c:5}: {:7.1} GFLOP/s ({:7.2} ms)",
            flop / med / 1e9,
            med * 1e3
        );
    }
}
