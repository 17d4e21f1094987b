//! The conditional UNet's op forms against diffusers 0.42 (fixtures:
//! `tests/tools/make_text_op_fixtures.py`, float64): the cross-attention core (queries from
//! latent tokens, keys and values from text states: `kv_tokens != tokens`) on the scalar
//! reference and every SIMD path, and GEGLU after its projection; <= 1e-4 relative L2.

mod common;

use common::{fixtures_dir, rel_l2, TensorFile};
use tinydiffusion::kernels::{scalar, AttentionArgs, Exec, KernelPath, Sequential};

const BAR: f64 = 1e-4;

fn cases() -> TensorFile {
    TensorFile::open(fixtures_dir().join("text-ops/ops.safetensors"))
}

#[test]
fn cross_attention_matches_diffusers() {
    let t = cases();
    for i in 0..2 {
        let get = |n: &str| t.f32s(&format!("cross.{i}.{n}"));
        let shape = t.shape(&format!("cross.{i}.q"));
        let (batch, tokens, channels) = (shape[0], shape[1], shape[2]);
        let kv_tokens = t.shape(&format!("cross.{i}.k"))[1];
        let heads = t.i64s(&format!("cross.{i}.shape"))[0] as usize;
        let (q, k, v) = (get("q"), get("k"), get("v"));
        let expected = t.f64s(&format!("cross.{i}.out"));
        let args = AttentionArgs {
            batch,
            tokens,
            kv_tokens,
            channels,
            heads,
            causal: false,
            q: &q,
            k: &k,
            v: &v,
        };
        for path in KernelPath::ALL {
            if !path.is_available() {
                continue;
            }
            let table = path.table().unwrap();
            let mut scratch = vec![0.0f32; batch * kv_tokens * channels];
            let mut kernel_scratch = vec![0.0f32; tinydiffusion::kernels::SCRATCH_PER_THREAD];
            let mut out = vec![f32::NAN; batch * tokens * channels];
            let ex = Exec::new(&Sequential, &mut kernel_scratch);
            (table.attention)(&args, &mut scratch, &mut out, &ex);
            let err = rel_l2(&out, &expected);
            println!(
                "cross {i} (n {tokens}, m {kv_tokens}, c {channels}, heads {heads}) [{}]: {err:.2e}",
                path.name()
            );
            assert!(err <= BAR, "cross {i} [{}]: rel L2 {err:.3e}", path.name());
        }
    }
}

#[test]
fn geglu_matches_diffusers() {
    let t = cases();
    let x = t.f32s("geglu.x");
    let expected = t.f64s("geglu.out");
    let dim = t.shape("geglu.out")[1];
    let mut out = vec![f32::NAN; expected.len()];
    scalar::geglu(&x, dim, &mut out);
    let err = rel_l2(&out, &expected);
    println!("geglu: {err:.2e}");
    assert!(err <= BAR, "geglu: rel L2 {err:.3e}");
}
