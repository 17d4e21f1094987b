//! `cargo bench --bench kernels`: every kernel on the CIFAR-10 DDPM UNet's real shapes (batch
//! 1), comparing
//! - `naive`: the scalar reference kernels (`tinydiffusion::kernels::scalar`),
//! - `gemm-im2col`: im2col then the `gemm` crate's f32 GEMM (what candle does), weights
//!   widened to f32 beforehand (not timed), one thread,
//! - `ours-1t`: the best SIMD path on one thread,
//! - `ours-Nt`: the same on all cores (the model's default team),
//! - `winograd-1t`, `winograd-Nt`: for the 3x3 stride-1 convs of 8x8 maps and up, the same
//!   path with the kernel scratch that lets it take Winograd F(4x4, 3x3) (the model's default;
//!   throughput still counts the direct conv's FLOPs),
//!
//! then the whole forward pass at batch 1 and 8 and a 50-step DDIM sample at batch 1.
//! Throughput is reported in FLOP (`Elements` = floating-point operations).
//!
//! The model has seeded random f16 weights (`tinydiffusion::testing::random_model`), no
//! download. Filter with criterion's usual arguments, e.g. `cargo bench --bench kernels -- conv`.

use std::collections::BTreeSet;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use tinydiffusion::kernels::threads::ThreadPool;
use tinydiffusion::kernels::{
    scalar, AttentionArgs, ConvArgs, ConvShape, Exec, GroupNormArgs, KernelPath, LinearArgs,
    Parallel, ScratchLayout, Sequential, SCRATCH_PER_THREAD,
};
use tinydiffusion::model::Op;
use tinydiffusion::sampler::{self, SampleOptions};
use tinydiffusion::schedule::{Scheduler, SchedulerConfig, SchedulerKind};
use tinydiffusion::testing::{rand_vec, random_model, CIFAR10_CONFIG};
use tinydiffusion::Model;

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The packed weight back in f32 `[k][out]` order (k = tap * in_c + channel), as im2col wants.
fn weight_kn(w: &[f16], out_c: usize, k_total: usize) -> Vec<f32> {
    let mut dst = vec![0.0f32; k_total * out_c];
    for o in 0..out_c {
        for k in 0..k_total {
            dst[k * out_c + o] = w[((o / 32) * k_total + k) * 32 + o % 32].to_f32();
        }
    }
    dst
}

/// im2col over NHWC with the two-part input, padding, stride and folded upsample.
fn im2col(a: &ConvArgs<'_>, cols: &mut [f32]) {
    let s = &a.shape;
    let (ca, cb, cin) = (s.in_ca, s.in_cb, s.in_c());
    let (vh, vw) = s.virtual_in();
    let up = s.upsample as usize;
    let k_total = s.kernel * s.kernel * cin;
    for b in 0..s.batch {
        for oy in 0..s.out_h {
            for ox in 0..s.out_w {
                let row = &mut cols[((b * s.out_h + oy) * s.out_w + ox) * k_total..][..k_total];
                for ky in 0..s.kernel {
                    for kx in 0..s.kernel {
                        let dst = &mut row[(ky * s.kernel + kx) * cin..][..cin];
                        let iy = (oy * s.stride + ky) as isize - s.pad_top as isize;
                        let ix = (ox * s.stride + kx) as isize - s.pad_left as isize;
                        if iy < 0 || ix < 0 || iy as usize >= vh || ix as usize >= vw {
                            dst.fill(0.0);
                            continue;
                        }
                        let sp = (b * s.in_h + (iy as usize >> up)) * s.in_w + (ix as usize >> up);
                        dst[..ca].copy_from_slice(&a.in_a[sp * ca..(sp + 1) * ca]);
                        dst[ca..].copy_from_slice(&a.in_b[sp * cb..(sp + 1) * cb]);
                    }
                }
            }
        }
    }
}

/// `dst[m][n] = lhs[m][k] * rhs[k][n]` with the gemm crate, one thread.
fn gemm_f32(m: usize, n: usize, k: usize, lhs: &[f32], rhs: &[f32], dst: &mut [f32]) {
    // SAFETY: row-major m x k, k x n and m x n buffers of exactly those sizes (asserted).
    assert!(lhs.len() >= m * k && rhs.len() >= k * n && dst.len() >= m * n);
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

struct Teams {
    pool: ThreadPool,
    scratch1: Vec<f32>,
    scratch_n: Vec<f32>,
}

impl Teams {
    fn new() -> Teams {
        let n = cores();
        Teams {
            pool: ThreadPool::new(n).unwrap(),
            scratch1: vec![0.0; SCRATCH_PER_THREAD],
            scratch_n: vec![0.0; n * SCRATCH_PER_THREAD],
        }
    }
}

fn conv_label(s: &ConvShape) -> String {
    format!(
        "conv{}x{}_s{}_{}x{}_{}{}to{}{}",
        s.kernel,
        s.kernel,
        s.stride,
        s.out_h,
        s.out_w,
        s.in_ca,
        if s.in_cb > 0 {
            format!("+{}", s.in_cb)
        } else {
            String::new()
        },
        s.out_c,
        if s.upsample { "_up" } else { "" }
    )
}

fn bench_convs(c: &mut Criterion, model: &Model, path: KernelPath, teams: &mut Teams) {
    let table = path.table().unwrap();
    let mut seen = BTreeSet::new();
    for op in model.ops() {
        let Op::Conv(cv) = op else { continue };
        let s = cv.shape;
        if !seen.insert(conv_label(&s)) {
            continue;
        }
        let weight = model.weights().get(cv.weight);
        let bias = model.weights().get(cv.bias);
        let in_a = rand_vec(s.in_h * s.in_w * s.in_ca, 1);
        let in_b = rand_vec(s.in_h * s.in_w * s.in_cb, 2);
        let args = ConvArgs {
            shape: s,
            in_a: &in_a,
            in_b: &in_b,
            weight,
            bias,
            channel_add: &[],
            residual: &[],
            out_scale: 1.0,
        };
        let out_len = s.out_h * s.out_w * s.out_c;
        let mut out = vec![0.0f32; out_len];
        let k_total = s.kernel * s.kernel * s.in_c();
        let w_kn = weight_kn(weight, s.out_c, k_total);
        let mut cols = vec![0.0f32; s.out_h * s.out_w * k_total];
        let mut g = c.benchmark_group(conv_label(&s));
        g.throughput(Throughput::Elements(s.flops()));
        g.bench_function("naive", |b| b.iter(|| scalar::conv2d(&args, &mut out)));
        g.bench_function("gemm-im2col", |b| {
            b.iter(|| {
                im2col(&args, &mut cols);
                gemm_f32(s.out_h * s.out_w, s.out_c, k_total, &cols, &w_kn, &mut out);
                for px in out.chunks_mut(s.out_c) {
                    for (o, bv) in px.iter_mut().zip(bias) {
                        *o += bv.to_f32();
                    }
                }
            })
        });
        let ex1 = Exec::new(&Sequential, &mut teams.scratch1);
        g.bench_function(BenchmarkId::new("ours-1t", path.name()), |b| {
            b.iter(|| (table.conv2d)(&args, &mut out, &ex1))
        });
        let exn = Exec::new(&teams.pool, &mut teams.scratch_n);
        g.bench_function(
            BenchmarkId::new(format!("ours-{}t", teams.pool.threads()), path.name()),
            |b| b.iter(|| (table.conv2d)(&args, &mut out, &exn)),
        );
        let layout = table.scratch_layout([s]);
        if layout != ScratchLayout::DIRECT {
            let mut w1 = vec![0.0f32; layout.len(1)];
            let ex1 = Exec::with_layout(&Sequential, &mut w1, layout);
            g.bench_function(BenchmarkId::new("winograd-1t", path.name()), |b| {
                b.iter(|| (table.conv2d)(&args, &mut out, &ex1))
            });
            let mut wn = vec![0.0f32; layout.len(teams.pool.threads())];
            let exn = Exec::with_layout(&teams.pool, &mut wn, layout);
            g.bench_function(
                BenchmarkId::new(format!("winograd-{}t", teams.pool.threads()), path.name()),
                |b| b.iter(|| (table.conv2d)(&args, &mut out, &exn)),
            );
        }
        g.finish();
    }
}

fn bench_group_norm(c: &mut Criterion, path: KernelPath, teams: &mut Teams) {
    let table = path.table().unwrap();
    for (pixels, ca, cb) in [
        (1024, 128, 0),
        (1024, 256, 128),
        (256, 256, 0),
        (64, 512, 0),
    ] {
        let ch = ca + cb;
        let in_a = rand_vec(pixels * ca, 3);
        let in_b = rand_vec(pixels * cb, 4);
        let gamma: Vec<f16> = rand_vec(ch, 5).into_iter().map(f16::from_f32).collect();
        let beta: Vec<f16> = rand_vec(ch, 6).into_iter().map(f16::from_f32).collect();
        let args = GroupNormArgs {
            batch: 1,
            pixels,
            in_ca: ca,
            in_cb: cb,
            groups: 32,
            eps: 1e-6,
            in_a: &in_a,
            in_b: &in_b,
            gamma: &gamma,
            beta: &beta,
            silu: true,
            stats: &[],
            out_pixels: (0, pixels),
        };
        let mut out = vec![0.0f32; pixels * ch];
        let mut g = c.benchmark_group(format!(
            "group_norm_silu_{pixels}px_{ca}{}ch",
            if cb > 0 {
                format!("+{cb}")
            } else {
                String::new()
            }
        ));
        g.throughput(Throughput::Elements((pixels * ch) as u64));
        g.bench_function("naive", |b| b.iter(|| scalar::group_norm(&args, &mut out)));
        let ex1 = Exec::new(&Sequential, &mut teams.scratch1);
        g.bench_function(BenchmarkId::new("ours-1t", path.name()), |b| {
            b.iter(|| (table.group_norm)(&args, &mut out, &ex1))
        });
        let exn = Exec::new(&teams.pool, &mut teams.scratch_n);
        g.bench_function(
            BenchmarkId::new(format!("ours-{}t", teams.pool.threads()), path.name()),
            |b| b.iter(|| (table.group_norm)(&args, &mut out, &exn)),
        );
        g.finish();
    }
}

fn bench_linear_attention(c: &mut Criterion, model: &Model, path: KernelPath, teams: &mut Teams) {
    let table = path.table().unwrap();
    // A time-embedding projection (1 row) and an attention projection (256 tokens).
    let mut lins = Vec::new();
    for op in model.ops() {
        if let Op::Linear(l) = op {
            if l.rows == 1 && l.out_f == 256 && lins.is_empty() {
                lins.push((1, l.in_f, l.out_f, l.weight, l.bias));
            } else if l.rows == 256 && l.in_f == l.out_f && lins.len() == 1 {
                lins.push((l.rows, l.in_f, l.out_f, l.weight, l.bias));
            }
        }
    }
    for (rows, in_f, out_f, w, bias) in lins {
        let (weight, bias) = (model.weights().get(w), model.weights().get(bias));
        let input = rand_vec(rows * in_f, 7);
        let args = LinearArgs {
            rows,
            in_f,
            out_f,
            input: &input,
            weight,
            bias,
            residual: &[],
            out_scale: 1.0,
        };
        let mut out = vec![0.0f32; rows * out_f];
        let w_kn = weight_kn(weight, out_f, in_f);
        let mut g = c.benchmark_group(format!("linear_{rows}x{in_f}to{out_f}"));
        g.throughput(Throughput::Elements(2 * (rows * in_f * out_f) as u64));
        g.bench_function("naive", |b| b.iter(|| scalar::linear(&args, &mut out)));
        g.bench_function("gemm", |b| {
            b.iter(|| gemm_f32(rows, out_f, in_f, &input, &w_kn, &mut out))
        });
        let ex1 = Exec::new(&Sequential, &mut teams.scratch1);
        g.bench_function(BenchmarkId::new("ours-1t", path.name()), |b| {
            b.iter(|| (table.linear)(&args, &mut out, &ex1))
        });
        let exn = Exec::new(&teams.pool, &mut teams.scratch_n);
        g.bench_function(
            BenchmarkId::new(format!("ours-{}t", teams.pool.threads()), path.name()),
            |b| b.iter(|| (table.linear)(&args, &mut out, &exn)),
        );
        g.finish();
    }

    // softmax(Q K^T / sqrt(d)) V at 16x16 (256 tokens, 256 channels, one head).
    let (n, ch) = (256usize, 256usize);
    let (q, k, v) = (
        rand_vec(n * ch, 8),
        rand_vec(n * ch, 9),
        rand_vec(n * ch, 10),
    );
    let args = AttentionArgs {
        batch: 1,
        tokens: n,
        kv_tokens: n,
        channels: ch,
        heads: 1,
        causal: false,
        q: &q,
        k: &k,
        v: &v,
    };
    let mut scratch = vec![0.0f32; n * ch];
    let mut out = vec![0.0f32; n * ch];
    let mut g = c.benchmark_group(format!("attention_{n}tok_{ch}ch"));
    g.throughput(Throughput::Elements(4 * (n * n * ch) as u64));
    g.bench_function("naive", |b| {
        b.iter(|| scalar::attention(&args, &mut scratch, &mut out))
    });
    // The gemm crate: the whole score matrix materialised (what a framework does).
    let mut kt = vec![0.0f32; n * ch];
    let mut s = vec![0.0f32; n * n];
    g.bench_function("gemm", |b| {
        b.iter(|| {
            for j in 0..n {
                for d in 0..ch {
                    kt[d * n + j] = k[j * ch + d];
                }
            }
            gemm_f32(n, n, ch, &q, &kt, &mut s);
            let scale = 1.0 / (ch as f32).sqrt();
            for row in s.chunks_mut(n) {
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x * scale));
                let mut t = 0.0;
                for x in row.iter_mut() {
                    *x = (*x * scale - m).exp();
                    t += *x;
                }
                row.iter_mut().for_each(|x| *x /= t);
            }
            gemm_f32(n, ch, n, &s, &v, &mut out);
        })
    });
    let ex1 = Exec::new(&Sequential, &mut teams.scratch1);
    g.bench_function(BenchmarkId::new("ours-1t", path.name()), |b| {
        b.iter(|| (table.attention)(&args, &mut scratch, &mut out, &ex1))
    });
    let exn = Exec::new(&teams.pool, &mut teams.scratch_n);
    g.bench_function(
        BenchmarkId::new(format!("ours-{}t", teams.pool.threads()), path.name()),
        |b| b.iter(|| (table.attention)(&args, &mut scratch, &mut out, &exn)),
    );
    g.finish();
}

fn bench_forward(c: &mut Criterion, model: &Model) {
    let (ch, h, w) = model.input_shape();
    let mut g = c.benchmark_group("forward");
    for batch in [1usize, 8] {
        let x = rand_vec(batch * ch * h * w, 11);
        let t: Vec<f32> = (0..batch).map(|i| (10 + 97 * i) as f32).collect();
        let mut out = vec![0.0f32; x.len()];
        let mut ws = vec![0.0f32; model.workspace_len(batch)];
        g.throughput(Throughput::Elements(
            model.flops_per_sample() * batch as u64,
        ));
        g.bench_function(
            BenchmarkId::new(
                format!("{}-{}t", model.kernels_name(), model.threads()),
                format!("batch{batch}"),
            ),
            |b| b.iter(|| model.forward(&mut ws, &x, &t, None, &mut out).unwrap()),
        );
    }
    g.finish();

    // One full 50-step DDIM sample at batch 1 (the sampler's own loop, guidance off).
    let scheduler = Scheduler::new(
        SchedulerConfig::ddpm_default()
            .with_kind(SchedulerKind::Ddim)
            .unwrap(),
        50,
    )
    .unwrap();
    let mut ws = vec![0.0f32; sampler::workspace_len(model, &scheduler, 1, false)];
    let mut out = vec![0.0f32; ch * h * w];
    let mut g = c.benchmark_group("ddim50");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(50 * model.flops_per_sample()));
    g.bench_function(
        BenchmarkId::new(
            format!("{}-{}t", model.kernels_name(), model.threads()),
            "batch1",
        ),
        |b| {
            b.iter(|| {
                sampler::sample(
                    model,
                    &scheduler,
                    &mut ws,
                    &SampleOptions::new(1, 7),
                    &mut out,
                    None,
                )
                .unwrap()
            })
        },
    );
    g.finish();
}

fn benches(c: &mut Criterion) {
    let model = random_model(CIFAR10_CONFIG, 42).expect("build the CIFAR-10 model");
    let path = KernelPath::detect();
    let mut teams = Teams::new();
    bench_convs(c, &model, path, &mut teams);
    bench_group_norm(c, path, &mut teams);
    bench_linear_attention(c, &model, path, &mut teams);
    bench_forward(c, &model);
}

criterion_group! {
    name = kernels;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(kernels);
