//! A forward pass of a tiny model whose weights, input and timestep are arbitrary bytes (NaN,
//! infinities, subnormals included; loaded with the finiteness check off). NaN in, NaN out is
//! fine; a panic, an out-of-bounds access or undefined behaviour is not. Both the scalar
//! reference kernels and the preferred (SIMD) path are run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinydiffusion::kernels::KernelPath;
use tinydiffusion::memory::Reuse;
use tinydiffusion::weights::{LoadOptions, WeightBytes};
use tinydiffusion::{Model, UNetConfig};
use tinydiffusion_fuzz::{data_start, tiny_class_weights, Bytes, TINY_CLASS_CONFIG};

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let t = b.f32();
    let label = b.u8() as i64 % 4 - 1; // -1 and 3 are out of range
    let x_bytes = b.u8() as usize;
    let x_raw = b.take(x_bytes);
    let fill = b.rest();

    let mut weights = tiny_class_weights().to_vec();
    let start = data_start(&weights);
    if !fill.is_empty() {
        for (dst, src) in weights[start..].iter_mut().zip(fill.iter().cycle()) {
            *dst = *src;
        }
    }
    let config = UNetConfig::from_json(TINY_CLASS_CONFIG).unwrap();
    let options = LoadOptions {
        check_finite: false,
    };
    let mut model = Model::new(config, WeightBytes::Owned(weights), options, Reuse::Shared)
        .expect("any data bytes under a valid header load with the check off");
    model.set_threads(1).unwrap();
    let (c, h, w) = model.input_shape();
    let mut x = vec![0.0f32; c * h * w];
    for (i, chunk) in x_raw.chunks(4).enumerate().take(x.len()) {
        let mut v = [0u8; 4];
        v[..chunk.len()].copy_from_slice(chunk);
        x[i] = f32::from_le_bytes(v);
    }
    let mut out = vec![0.0f32; model.output_shape().0 * h * w];
    let mut ws = vec![0.0f32; model.workspace_len(1)];
    for path in [KernelPath::Scalar, KernelPath::detect()] {
        model.set_kernels(path).unwrap();
        let r = model.forward(&mut ws, &x, &[t], Some(&[label]), &mut out);
        if (0..3).contains(&label) && t.is_finite() {
            r.expect("valid arguments");
        } else {
            assert!(matches!(
                r,
                Err(tinydiffusion::Error::InvalidArgument { .. })
            ));
        }
    }
});
