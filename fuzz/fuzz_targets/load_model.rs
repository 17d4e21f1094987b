//! The loader on untrusted files: `config.json` text and safetensors bytes, through config
//! parsing and validation, the safetensors header, every tensor's presence, dtype, shape,
//! alignment and finiteness, packing, the model description and the memory plan. A model that
//! loads and is small enough is evaluated once. Any panic or out-of-bounds access is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinydiffusion::weights::WeightBytes;
use tinydiffusion::{Model, UNetConfig};
use tinydiffusion_fuzz::{config_and_weights, Bytes};

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let flags = b.u8();
    let Some((config_text, weights, options, reuse)) = config_and_weights(&mut b, flags) else {
        return;
    };
    let Ok(config) = UNetConfig::from_json(config_text) else {
        return;
    };
    // Listing the parameters needs no file and must agree with any config that validates.
    let Ok(specs) = Model::parameter_specs(&config) else {
        return;
    };
    let Ok(mut model) = Model::new(config, WeightBytes::Owned(weights), options, reuse) else {
        return;
    };
    assert_eq!(specs.len(), model.weights().named.len());
    let _ = model.set_threads(1);
    let (c, h, w) = model.input_shape();
    let (c_out, _, _) = model.output_shape();
    let ws_len = model.workspace_len(1);
    if ws_len > 1 << 20 || model.flops_per_sample() > 50_000_000 {
        return;
    }
    let mut ws = vec![0.0f32; ws_len];
    let x = vec![0.5f32; c * h * w];
    let mut out = vec![0.0f32; c_out * h * w];
    let labels = model.config.num_class_embeds.map(|_| [0i64]);
    // A text-conditional UNet takes text states instead (zeros, as many as it was built for),
    // a class_embed_type "identity" one class embeddings.
    let result = match &model.config.cross_attention {
        Some(cross) => {
            let ctx = vec![0.0f32; cross.text_tokens * cross.cross_attention_dim];
            model.forward_conditional(&mut ws, &x, &[10.0], &ctx, &mut out)
        }
        None if model.config.identity_class_embedding => {
            let embedding = vec![0.0f32; model.config.time_embed_dim];
            model.forward_with_class_embeddings(&mut ws, &x, &[10.0], &embedding, &mut out)
        }
        None => model.forward(
            &mut ws,
            &x,
            &[10.0],
            labels.as_ref().map(|l| &l[..]),
            &mut out,
        ),
    };
    result.expect("a loaded model evaluates with valid arguments");
});
