//! The CLIP text encoder loader on untrusted files: `config.json` text and `model.safetensors`
//! bytes, through config parsing and validation (`TextEncoderConfig`), the safetensors header,
//! every tensor's presence, dtype, shape and finiteness, the op list and the memory plan. An
//! encoder that loads and is small enough encodes one prompt of in-vocabulary ids and is then
//! given one id past its vocabulary (a typed error). Any panic or out-of-bounds access is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinydiffusion::memory::Reuse;
use tinydiffusion::model::text_encoder::TextEncoder;
use tinydiffusion::model::text_encoder_config::TextEncoderConfig;
use tinydiffusion::weights::{LoadOptions, WeightBytes};
use tinydiffusion_fuzz::{config_and_weights, Bytes};

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let flags = b.u8();
    let clip_skip = (b.u8() % 4) as usize;
    let Some((config_text, weights, options, reuse)) = config_and_weights(&mut b, flags) else {
        return;
    };
    let Ok(config) = TextEncoderConfig::from_json(config_text) else {
        return;
    };
    let vocab = config.vocab_size;
    let Ok(mut encoder) = TextEncoder::new(
        config,
        WeightBytes::Owned(weights),
        options,
        clip_skip,
        reuse,
    ) else {
        return;
    };
    let _ = encoder.net_mut().set_threads(1);
    let ws_len = encoder.workspace_len_for_threads(1, 1);
    if ws_len > 1 << 22 || encoder.net().flops_per_sample() > 50_000_000 {
        return;
    }
    let mut ws = vec![0.0f32; ws_len];
    let tokens = encoder.tokens();
    let mut ids: Vec<u32> = (0..tokens).map(|i| (i % vocab) as u32).collect();
    let mut out = vec![0.0f32; encoder.output_len()];
    encoder
        .encode(1, &mut ws, &ids, &mut out)
        .expect("a loaded encoder encodes in-vocabulary ids");
    ids[tokens / 2] = vocab as u32;
    assert!(
        encoder.encode(1, &mut ws, &ids, &mut out).is_err(),
        "an id past the vocabulary must be refused"
    );
});
