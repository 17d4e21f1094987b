//! Every SIMD kernel against the scalar reference on random shapes: odd sizes, channel counts
//! that are not multiples of the vector width, two-part (skip concat) inputs, folded upsample,
//! stride 2 with both paddings, channel_add / residual / out_scale, several reduction chunks;
//! each on one thread and on a team of three, which must agree bit for bit.
//!
//! Paths this CPU cannot run are skipped with a printed reason.

mod common;

use common::rel_l2;
use half::f16;
use tinydiffusion::kernels::threads::ThreadPool;
use tinydiffusion::kernels::{
    pack_weight, packed_len, AttentionArgs, ConvArgs, ConvShape, Exec, GroupNormArgs, KernelPath,
    KernelTable, LinearArgs, Parallel, ScratchLayout, Sequential, SCRATCH_PER_THREAD,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn f32(&mut self) -> f32 {
        (self.next() % 20001) as f32 / 10000.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
    fn halves(&mut self, n: usize, scale: f32) -> Vec<f16> {
        (0..n).map(|_| f16::from_f32(self.f32() * scale)).collect()
    }
}

fn simd_paths() -> Vec<KernelPath> {
    let mut v = Vec::new();
    for p in [KernelPath::Avx2, KernelPath::Avx512, KernelPath::Neon] {
        if p.is_available() {
            v.push(p);
        } else {
            println!(
                "skipped: this CPU or build cannot run the {} kernels",
                p.name()
            );
        }
    }
    v
}

/// Runs `f` with a sequential `Exec` and with a 3-thread team; returns both outputs.
fn both(pool: &ThreadPool, f: impl Fn(&Exec<'_>) -> Vec<f32>) -> (Vec<f32>, Vec<f32>) {
    let mut s1 = vec![0.0f32; SCRATCH_PER_THREAD];
    let one = f(&Exec::new(&Sequential, &mut s1));
    let mut s3 = vec![f32::NAN; pool.threads() * SCRATCH_PER_THREAD];
    let team = f(&Exec::new(pool, &mut s3));
    (one, team)
}

/// As [`both`], with the kernel scratch laid out as `layout` (room for the Winograd conv).
fn both_with(
    pool: &ThreadPool,
    layout: ScratchLayout,
    f: impl Fn(&Exec<'_>) -> Vec<f32>,
) -> (Vec<f32>, Vec<f32>) {
    let mut s1 = vec![0.0f32; layout.len(1)];
    let one = f(&Exec::with_layout(&Sequential, &mut s1, layout));
    let mut s3 = vec![f32::NAN; layout.len(pool.threads())];
    let team = f(&Exec::with_layout(pool, &mut s3, layout));
    (one, team)
}

fn check(what: &str, path: KernelPath, ours: (Vec<f32>, Vec<f32>), reference: &[f32], tol: f64) {
    assert_eq!(
        ours.0,
        ours.1,
        "{what} [{}]: 1 thread and 3 threads differ",
        path.name()
    );
    assert!(
        ours.0.iter().all(|v| v.is_finite()),
        "{what} [{}]: non-finite output",
        path.name()
    );
    let err = rel_l2(&ours.0, reference);
    assert!(
        err <= tol,
        "{what} [{}]: rel L2 {err:.2e} > {tol:.0e}",
        path.name()
    );
}

/// Random inputs, weights and epilogue terms for a conv of `shape`, and their scalar result.
struct ConvData {
    shape: ConvShape,
    weight: Vec<f16>,
    in_a: Vec<f32>,
    in_b: Vec<f32>,
    bias: Vec<f16>,
    channel_add: Vec<f32>,
    residual: Vec<f32>,
    out_scale: f32,
    reference: Vec<f32>,
}

impl ConvData {
    /// With `extras`: a channel add, a residual and an output scale, as a resnet's convs use.
    fn new(rng: &mut Rng, shape: ConvShape, extras: bool) -> ConvData {
        let (cin, k) = (shape.in_c(), shape.kernel);
        let plain = rng.halves(
            shape.out_c * cin * k * k,
            1.0 / ((cin * k * k) as f32).sqrt(),
        );
        let mut weight = vec![f16::ZERO; packed_len(shape.out_c, cin, k)];
        pack_weight(&plain, shape.out_c, cin, k, &mut weight);
        let px = shape.batch * shape.in_h * shape.in_w;
        let out_len = shape.batch * shape.out_h * shape.out_w * shape.out_c;
        let mut d = ConvData {
            shape,
            weight,
            in_a: rng.vec(px * shape.in_ca),
            in_b: rng.vec(px * shape.in_cb),
            bias: rng.halves(shape.out_c, 0.5),
            channel_add: if extras {
                rng.vec(shape.batch * shape.out_c)
            } else {
                Vec::new()
            },
            residual: if extras { rng.vec(out_len) } else { Vec::new() },
            out_scale: if extras {
                std::f32::consts::SQRT_2
            } else {
                1.0
            },
            reference: vec![0.0; out_len],
        };
        let mut reference = vec![0.0f32; out_len];
        tinydiffusion::kernels::scalar::conv2d(&d.args(), &mut reference);
        d.reference = reference;
        d
    }

    fn args(&self) -> ConvArgs<'_> {
        ConvArgs {
            shape: self.shape,
            in_a: &self.in_a,
            in_b: &self.in_b,
            weight: &self.weight,
            bias: &self.bias,
            channel_add: &self.channel_add,
            residual: &self.residual,
            out_scale: self.out_scale,
        }
    }

    /// Runs `table`'s conv on a fresh NaN-filled output.
    fn run(&self, table: &KernelTable, ex: &Exec<'_>) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.reference.len()];
        (table.conv2d)(&self.args(), &mut out, ex);
        out
    }
}

/// The shape of a conv as the UNet builds it: `padding` all round, except stride 2 without
/// padding, which pads one row and column at the end (diffusers' `(0, 1, 0, 1)`).
#[allow(clippy::too_many_arguments)]
fn conv_shape(
    batch: usize,
    (in_h, in_w): (usize, usize),
    (ca, cb): (usize, usize),
    out_c: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    upsample: bool,
) -> ConvShape {
    let (vh, vw) = if upsample {
        (2 * in_h, 2 * in_w)
    } else {
        (in_h, in_w)
    };
    let extra = if stride == 2 && padding == 0 { 1 } else { 0 };
    ConvShape {
        batch,
        in_h,
        in_w,
        in_ca: ca,
        in_cb: cb,
        out_c,
        out_h: (vh + 2 * padding + extra - kernel) / stride + 1,
        out_w: (vw + 2 * padding + extra - kernel) / stride + 1,
        kernel,
        stride,
        pad_top: padding,
        pad_left: padding,
        upsample,
    }
}

#[allow(clippy::too_many_arguments)]
fn conv_case(
    rng: &mut Rng,
    tables: &[&'static KernelTable],
    pool: &ThreadPool,
    batch: usize,
    size: (usize, usize),
    parts: (usize, usize),
    out_c: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    upsample: bool,
    extras: bool,
) {
    let shape = conv_shape(batch, size, parts, out_c, kernel, stride, padding, upsample);
    let data = ConvData::new(rng, shape, extras);
    for t in tables {
        let ours = both(pool, |ex| data.run(t, ex));
        check(
            &format!("conv {shape:?} extras={extras}"),
            t.path,
            ours,
            &data.reference,
            2e-6,
        );
    }
}

fn tables() -> Vec<&'static KernelTable> {
    simd_paths()
        .into_iter()
        .map(|p| p.table().unwrap())
        .collect()
}

#[test]
fn conv_matches_scalar() {
    let tables = tables();
    if tables.is_empty() {
        return;
    }
    let pool = ThreadPool::new(3).unwrap();
    let mut rng = Rng(1);
    // The UNet's own cases, small.
    conv_case(
        &mut rng,
        &tables,
        &pool,
        2,
        (8, 8),
        (3, 0),
        32,
        3,
        1,
        1,
        false,
        false,
    ); // conv_in
    conv_case(
        &mut rng,
        &tables,
        &pool,
        1,
        (8, 8),
        (32, 0),
        3,
        3,
        1,
        1,
        false,
        false,
    ); // conv_out
    conv_case(
        &mut rng,
        &tables,
        &pool,
        2,
        (8, 8),
        (48, 0),
        64,
        3,
        1,
        1,
        false,
        true,
    ); // resnet conv
    conv_case(
        &mut rng,
        &tables,
        &pool,
        2,
        (6, 6),
        (48, 32),
        64,
        3,
        1,
        1,
        false,
        true,
    ); // concat input
    conv_case(
        &mut rng,
        &tables,
        &pool,
        1,
        (6, 6),
        (48, 32),
        64,
        1,
        1,
        0,
        false,
        false,
    ); // 1x1 shortcut
    conv_case(
        &mut rng,
        &tables,
        &pool,
        2,
        (8, 8),
        (32, 0),
        32,
        3,
        2,
        0,
        false,
        false,
    ); // downsample, pad (0,1,0,1)
    conv_case(
        &mut rng,
        &tables,
        &pool,
        1,
        (9, 7),
        (32, 0),
        32,
        3,
        2,
        1,
        false,
        false,
    ); // stride 2, pad 1
    conv_case(
        &mut rng,
        &tables,
        &pool,
        2,
        (4, 5),
        (64, 0),
        64,
        3,
        1,
        1,
        true,
        false,
    ); // folded upsample
    conv_case(
        &mut rng,
        &tables,
        &pool,
        1,
        (4, 4),
        (512, 256),
        256,
        3,
        1,
        1,
        false,
        true,
    ); // many chunks
       // Random odd shapes.
    for _ in 0..24 {
        let kernel = [1, 3][rng.below(2)];
        let stride = if kernel == 3 { 1 + rng.below(2) } else { 1 };
        let padding = if kernel == 3 { rng.below(2) } else { 0 };
        let upsample = kernel == 3 && stride == 1 && rng.below(3) == 0;
        let (h, w) = (1 + rng.below(11), 1 + rng.below(11));
        if (stride == 1 && kernel == 3 && padding == 0 && (h < 3 || w < 3) && !upsample)
            || (stride == 2 && (h < 2 || w < 2))
        {
            continue;
        }
        let ca = 1 + rng.below(70);
        let cb = if rng.below(2) == 0 {
            0
        } else {
            1 + rng.below(40)
        };
        let out_c = 1 + rng.below(80);
        let batch = 1 + rng.below(3);
        let extras = rng.below(2) == 0;
        conv_case(
            &mut rng,
            &tables,
            &pool,
            batch,
            (h, w),
            (ca, cb),
            out_c,
            kernel,
            stride,
            padding,
            upsample,
            extras,
        );
    }
}

#[test]
fn linear_matches_scalar() {
    let tables = tables();
    if tables.is_empty() {
        return;
    }
    let pool = ThreadPool::new(3).unwrap();
    let mut rng = Rng(2);
    for (rows, in_f, out_f, residual) in [
        (1, 128, 512, false),
        (1, 512, 256, false),
        (2, 37, 40, true),
        (3, 512, 256, false),
        (37, 24, 24, true),
        (256, 64, 64, true),
        (5, 300, 33, false),
    ] {
        let plain = rng.halves(out_f * in_f, 1.0 / (in_f as f32).sqrt());
        let mut weight = vec![f16::ZERO; packed_len(out_f, in_f, 1)];
        pack_weight(&plain, out_f, in_f, 1, &mut weight);
        let input = rng.vec(rows * in_f);
        let bias = rng.halves(out_f, 0.5);
        let res = if residual {
            rng.vec(rows * out_f)
        } else {
            Vec::new()
        };
        let args = LinearArgs {
            rows,
            in_f,
            out_f,
            input: &input,
            weight: &weight,
            bias: &bias,
            residual: &res,
            out_scale: if residual { 2.0 } else { 1.0 },
        };
        let mut reference = vec![0.0f32; rows * out_f];
        tinydiffusion::kernels::scalar::linear(&args, &mut reference);
        for t in &tables {
            let ours = both(&pool, |ex| {
                let mut out = vec![f32::NAN; rows * out_f];
                (t.linear)(&args, &mut out, ex);
                out
            });
            check(
                &format!("linear {rows}x{in_f}->{out_f}"),
                t.path,
                ours,
                &reference,
                2e-6,
            );
        }
    }
}

#[test]
fn group_norm_matches_scalar() {
    let tables = tables();
    if tables.is_empty() {
        return;
    }
    let pool = ThreadPool::new(3).unwrap();
    let mut rng = Rng(3);
    // (batch, pixels, ca, cb, groups)
    for (batch, pixels, ca, cb, groups) in [
        (1, 64, 128, 0, 32),
        (2, 17, 256, 128, 32),
        (1, 9, 24, 0, 8),
        (3, 5, 20, 12, 8),
        (1, 33, 7, 0, 7),
        (2, 16, 48, 16, 4),
        (1, 100, 640, 0, 2),
    ] {
        let c = ca + cb;
        // An offset, so the two-pass statistics matter.
        let in_a: Vec<f32> = rng
            .vec(batch * pixels * ca)
            .into_iter()
            .map(|v| 3.0 + 2.0 * v)
            .collect();
        let in_b = rng.vec(batch * pixels * cb);
        let gamma = rng.halves(c, 1.0);
        let beta = rng.halves(c, 1.0);
        for silu in [false, true] {
            let args = GroupNormArgs {
                batch,
                pixels,
                in_ca: ca,
                in_cb: cb,
                groups,
                eps: 1e-6,
                in_a: &in_a,
                in_b: &in_b,
                gamma: &gamma,
                beta: &beta,
                silu,
                stats: &[],
                out_pixels: (0, pixels),
            };
            let n = batch * pixels * c;
            let mut reference = vec![0.0f32; n];
            tinydiffusion::kernels::scalar::group_norm(&args, &mut reference);
            for t in &tables {
                let ours = both(&pool, |ex| {
                    let mut out = vec![f32::NAN; n];
                    (t.group_norm)(&args, &mut out, ex);
                    out
                });
                check(
                    &format!("group_norm {batch}x{pixels}x({ca}+{cb})/{groups} silu={silu}"),
                    t.path,
                    ours,
                    &reference,
                    2e-6,
                );
            }
            // A band of pixels normalised with statistics given (the decoder's `norm_conv`):
            // the same values as those pixels of the whole map, on every path.
            let mut stats = vec![0.0f32; batch * groups * 2];
            tinydiffusion::kernels::group_norm_stats(&args, &mut stats);
            let (p0, p1) = (pixels / 3, pixels - pixels / 4);
            let band = GroupNormArgs {
                stats: &stats,
                out_pixels: (p0, p1),
                ..args
            };
            let expected: Vec<f32> = (0..batch)
                .flat_map(|b| reference[(b * pixels + p0) * c..(b * pixels + p1) * c].to_vec())
                .collect();
            let mut scalar_band = vec![f32::NAN; expected.len()];
            tinydiffusion::kernels::scalar::group_norm(&band, &mut scalar_band);
            check(
                &format!("group_norm band {p0}..{p1} of {batch}x{pixels}x({ca}+{cb})/{groups}"),
                KernelPath::Scalar,
                (scalar_band.clone(), scalar_band),
                &expected,
                2e-6,
            );
            for t in &tables {
                let ours = both(&pool, |ex| {
                    let mut out = vec![f32::NAN; expected.len()];
                    (t.group_norm)(&band, &mut out, ex);
                    out
                });
                check(
                    &format!("group_norm band {p0}..{p1} of {batch}x{pixels}x({ca}+{cb})/{groups}"),
                    t.path,
                    ours,
                    &expected,
                    2e-6,
                );
            }
        }
    }
}

#[test]
fn attention_matches_scalar() {
    let tables = tables();
    if tables.is_empty() {
        return;
    }
    let pool = ThreadPool::new(3).unwrap();
    let mut rng = Rng(4);
    // (batch, tokens, kv_tokens, channels, heads); kv_tokens != tokens is cross-attention.
    for (batch, tokens, kv_tokens, channels, heads) in [
        (1, 256, 256, 64, 1),
        (2, 16, 16, 64, 1),
        (1, 37, 37, 24, 3),
        (2, 70, 70, 36, 2),
        (1, 5, 5, 16, 4),
        (1, 129, 129, 32, 1),
        (2, 77, 77, 32, 4),
        (2, 64, 77, 40, 5),
        (1, 16, 7, 16, 2),
        (2, 3, 130, 24, 3),
        // Head sizes of real models, many not a multiple of the vector width: SD 1.5's 40
        // (self- and cross-attention), 80, 160; small and odd ones (8, 3, 24); 64; 100.
        (2, 70, 70, 80, 2),
        (2, 70, 77, 80, 2),
        (2, 37, 37, 80, 1),
        (2, 33, 77, 160, 1),
        (2, 50, 50, 24, 3),
        (2, 45, 45, 6, 2),
        (2, 40, 40, 48, 2),
        (2, 64, 64, 128, 2),
        (2, 20, 20, 100, 1),
    ] {
        for causal in [false, true] {
            let n = batch * tokens * channels;
            let m = batch * kv_tokens * channels;
            let (q, k, v) = (rng.vec(n), rng.vec(m), rng.vec(m));
            // Larger logits, so the softmax is not flat.
            let q: Vec<f32> = q.into_iter().map(|x| 3.0 * x).collect();
            let args = AttentionArgs {
                batch,
                tokens,
                kv_tokens,
                channels,
                heads,
                causal,
                q: &q,
                k: &k,
                v: &v,
            };
            let mut scores = vec![0.0f32; m.max(kv_tokens)];
            let mut reference = vec![0.0f32; n];
            tinydiffusion::kernels::scalar::attention(&args, &mut scores, &mut reference);
            for t in &tables {
                let ours = both(&pool, |ex| {
                    let mut scores = vec![f32::NAN; m.max(kv_tokens)];
                    let mut out = vec![f32::NAN; n];
                    (t.attention)(&args, &mut scores, &mut out, ex);
                    out
                });
                check(
                    &format!(
                        "attention b{batch} n{tokens} m{kv_tokens} c{channels} h{heads} \
                         causal {causal}"
                    ),
                    t.path,
                    ours,
                    &reference,
                    2e-6,
                );
            }
        }
    }
}

/// A 3x3 stride-1 "same" conv (the Winograd path, F(4x4, 3x3) or F(2x2, 3x3) as the map and
/// batch select) against the scalar reference,
/// with scratch for it, on 1 and 3 threads (bit-identical); and it must differ from the direct
/// SIMD kernel (which shows the Winograd path ran).
#[allow(clippy::too_many_arguments)]
fn winograd_case(
    rng: &mut Rng,
    tables: &[&'static KernelTable],
    pool: &ThreadPool,
    batch: usize,
    size: (usize, usize),
    parts: (usize, usize),
    out_c: usize,
    upsample: bool,
    extras: bool,
) {
    let shape = conv_shape(batch, size, parts, out_c, 3, 1, 1, upsample);
    winograd_shape_case(rng, tables, pool, shape, extras);
}

/// [`winograd_case`] of any shape the Winograd path takes.
fn winograd_shape_case(
    rng: &mut Rng,
    tables: &[&'static KernelTable],
    pool: &ThreadPool,
    shape: ConvShape,
    extras: bool,
) {
    let data = ConvData::new(rng, shape, extras);
    for t in tables {
        let layout = t.scratch_layout([shape]);
        assert_ne!(
            layout,
            ScratchLayout::DIRECT,
            "{shape:?}: no Winograd scratch planned"
        );
        let wino = both_with(pool, layout, |ex| data.run(t, ex));
        let direct = both(pool, |ex| data.run(t, ex));
        assert_ne!(
            wino.0,
            direct.0,
            "{shape:?} [{}]: the Winograd path did not run",
            t.path.name()
        );
        check(
            &format!("winograd conv {shape:?} extras={extras}"),
            t.path,
            wino,
            &data.reference,
            2e-5,
        );
    }
}

#[test]
fn winograd_conv_matches_scalar() {
    let tables = tables();
    if tables.is_empty() {
        return;
    }
    let pool = ThreadPool::new(3).unwrap();
    let mut rng = Rng(7);
    // (batch, input size, input parts, out channels, upsample, bias/residual/channel-add)
    let cases = [
        // Weight-major (few tiles): the CIFAR UNet's 16x16 level at batch 1, small.
        (1, (16, 16), (32, 0), 32, false, true),
        // Sizes not multiples of the tile, two-part input, a half output block (48 channels).
        (2, (18, 14), (16, 16), 48, false, true),
        // Folded 2x upsample.
        (1, (8, 8), (32, 0), 32, true, false),
        // More input channels than one weight chunk (64), and not a multiple of it.
        (1, (16, 16), (96, 0), 32, false, false),
        // Tile-major (many tiles), with every epilogue term, and with a two-part input.
        (3, (24, 24), (32, 0), 64, false, true),
        (6, (21, 11), (16, 32), 96, false, true),
        (4, (10, 10), (32, 16), 32, true, true),
        // F(2x2, 3x3): a 4x4 map at batch 1 (one 4x4 tile, four 2x2 ones), every epilogue term.
        (1, (4, 4), (64, 0), 32, false, true),
        // F(2x2, 3x3) on odd sizes (partial tiles), a two-part input, more than one weight chunk.
        (1, (5, 3), (48, 32), 48, false, true),
        // F(2x2, 3x3) with the folded upsample (2x2 to 4x4), and 2x2 maps at batch 4.
        (1, (2, 2), (32, 0), 32, true, true),
        (4, (2, 2), (16, 0), 16, false, false),
    ];
    for (batch, size, parts, out_c, upsample, extras) in cases {
        winograd_case(
            &mut rng, &tables, &pool, batch, size, parts, out_c, upsample, extras,
        );
    }
}

/// Bands of rows of a "same" conv (the decoder's `norm_conv`): the first band (padding above,
/// one halo row below), a middle one (halo rows on both sides, no padding) and the last (one
/// halo row above, padding below), at F(4x4) and F(2x2) sizes, on the Winograd path.
#[test]
fn winograd_conv_bands_match_scalar() {
    let tables = tables();
    if tables.is_empty() {
        return;
    }
    let pool = ThreadPool::new(3).unwrap();
    let mut rng = Rng(8);
    // (batch, out rows, width, in channels, out channels, extras)
    for (batch, rows, width, in_c, out_c, extras) in [
        (1, 8, 16, 32, 32, true),
        (1, 5, 12, 48, 16, false),
        (2, 24, 20, 16, 48, true),
        (1, 4, 4, 32, 32, true),
    ] {
        for (pad_top, in_h) in [(1, rows + 1), (0, rows + 2), (0, rows + 1)] {
            let shape = ConvShape {
                batch,
                in_h,
                in_w: width,
                in_ca: in_c,
                in_cb: 0,
                out_c,
                out_h: rows,
                out_w: width,
                kernel: 3,
                stride: 1,
                pad_top,
                pad_left: 1,
                upsample: false,
            };
            winograd_shape_case(&mut rng, &tables, &pool, shape, extras);
        }
    }
}

/// Shapes the Winograd path must leave to the direct kernel: stride 2, a 1x1 kernel, channels
/// not in 16-blocks, a 2x2 map at batch 1 (a single 2x2 tile), a map one pixel wide.
#[test]
fn winograd_declines_other_shapes() {
    let base = ConvShape {
        batch: 1,
        in_h: 16,
        in_w: 16,
        in_ca: 32,
        in_cb: 0,
        out_c: 32,
        out_h: 16,
        out_w: 16,
        kernel: 3,
        stride: 1,
        pad_top: 1,
        pad_left: 1,
        upsample: false,
    };
    for t in tables() {
        assert_ne!(t.scratch_layout([base]), ScratchLayout::DIRECT);
        let declined = [
            ConvShape {
                stride: 2,
                out_h: 8,
                out_w: 8,
                pad_top: 0,
                pad_left: 0,
                ..base
            },
            ConvShape {
                kernel: 1,
                pad_top: 0,
                pad_left: 0,
                ..base
            },
            ConvShape { in_ca: 24, ..base },
            ConvShape { out_c: 3, ..base },
            ConvShape {
                in_h: 2,
                in_w: 2,
                out_h: 2,
                out_w: 2,
                ..base
            },
            ConvShape {
                in_w: 1,
                out_w: 1,
                ..base
            },
        ];
        for s in declined {
            assert_eq!(
                t.scratch_layout([s]),
                ScratchLayout::DIRECT,
                "{s:?} [{}]",
                t.path.name()
            );
        }
    }
}

#[test]
fn layer_norm_and_geglu_match_scalar() {
    let tables = tables();
    let mut rng = Rng(11);
    // (rows, dim): SD's widths, odd widths with a scalar tail, one row, fewer than a vector.
    for (rows, dim) in [
        (5, 320),
        (3, 768),
        (2, 1280),
        (7, 40),
        (4, 37),
        (1, 100),
        (3, 5),
    ] {
        // An offset, so the two-pass statistics matter.
        let x: Vec<f32> = rng
            .vec(rows * dim)
            .into_iter()
            .map(|v| 3.0 + 2.0 * v)
            .collect();
        let gamma = rng.halves(dim, 1.0);
        let beta = rng.halves(dim, 1.0);
        let mut reference = vec![0.0f32; rows * dim];
        tinydiffusion::kernels::scalar::layer_norm(&x, dim, 1e-5, &gamma, &beta, &mut reference);
        // GEGLU over gates spanning erf's clamp (|x| / sqrt 2 > 4) and its middle.
        let gg: Vec<f32> = rng
            .vec(rows * 2 * dim)
            .into_iter()
            .map(|v| 7.0 * v)
            .collect();
        let mut geglu_ref = vec![0.0f32; rows * dim];
        tinydiffusion::kernels::scalar::geglu(&gg, dim, &mut geglu_ref);
        for t in &tables {
            let mut out = vec![f32::NAN; rows * dim];
            (t.layer_norm)(&x, dim, 1e-5, &gamma, &beta, &mut out);
            check(
                &format!("layer_norm {rows}x{dim}"),
                t.path,
                (out.clone(), out),
                &reference,
                1e-6,
            );
            // Same operations in the same order as the scalar GELU: equal bit for bit.
            assert_eq!(
                geglu_out(&t.geglu, &gg, dim),
                geglu_ref,
                "geglu {rows}x{dim} [{}]",
                t.path.name()
            );
        }
    }
}

fn geglu_out(geglu: &fn(&[f32], usize, &mut [f32]), x: &[f32], dim: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; x.len() / 2];
    geglu(x, dim, &mut out);
    out
}
