//! The streamed attention kernel at the head sizes real models use, including those that are
//! not a multiple of the SIMD width (SD 1.5's 40 at 64x64 latents, 80, 160; odd small ones):
//! every SIMD path against the scalar reference (one row of scores at a time), <= 1e-5
//! relative L2, self- and cross-attention, causal too. The printed `bits` hash of each output
//! lets a kernel change be checked for bit-identical results (`-- --nocapture`).

mod common;

use common::rel_l2;
use tinydiffusion::kernels::{AttentionArgs, Exec, KernelPath, Sequential};

fn pattern(n: usize, k: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * k + 17) % 1999) as f32 / 999.5 - 1.0)
        .collect()
}

fn fnv(out: &[f32]) -> u64 {
    out.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ x.to_bits() as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn every_path_matches_scalar_at_model_head_sizes() {
    // (tokens, kv_tokens, heads, head dim, causal)
    let cases = [
        (70, 70, 2, 40, false),
        (70, 77, 2, 40, false),
        (37, 37, 1, 80, false),
        (33, 77, 1, 160, false),
        (50, 50, 3, 8, true),
        (45, 45, 2, 3, false),
        (40, 40, 2, 24, false),
        (64, 64, 2, 64, true),
        (20, 20, 1, 100, false),
    ];
    for (tokens, kv_tokens, heads, d, causal) in cases {
        let (batch, channels) = (2, heads * d);
        let q = pattern(batch * tokens * channels, 7919);
        let k = pattern(batch * kv_tokens * channels, 104_729);
        let v = pattern(batch * kv_tokens * channels, 15_485_863);
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
        let run = |path: KernelPath| {
            let table = path.table().unwrap();
            let mut scratch = vec![0.0f32; batch * kv_tokens.max(tokens) * channels];
            let mut kernel_scratch = vec![0.0f32; tinydiffusion::kernels::SCRATCH_PER_THREAD];
            let mut out = vec![f32::NAN; batch * tokens * channels];
            let ex = Exec::new(&Sequential, &mut kernel_scratch);
            (table.attention)(&args, &mut scratch, &mut out, &ex);
            out
        };
        let reference: Vec<f64> = run(KernelPath::Scalar).iter().map(|&x| x as f64).collect();
        for path in KernelPath::ALL {
            if !path.is_available() || path == KernelPath::Scalar {
                continue;
            }
            let out = run(path);
            let err = rel_l2(&out, &reference);
            println!(
                "n {tokens} m {kv_tokens} heads {heads} d {d} causal {causal} [{}]: {err:.2e} bits {:016x}",
                path.name(),
                fnv(&out)
            );
            assert!(err <= 1e-5, "d {d} [{}]: rel L2 {err:.3e}", path.name());
        }
    }
}
