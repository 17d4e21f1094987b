//! The packed weight layout: `convert_folder` writes conv and linear weights packed (metadata
//! `tinydiffusion.layout = oc32`), such a file loads with no copy at all and gives the same
//! numbers as the diffusers-layout file packed at load; unknown layouts are refused.

mod common;

use common::fixtures_dir;
use safetensors::SafeTensors;
use tinydiffusion::kernels::KernelPath;
use tinydiffusion::model::convert::{
    convert_folder, convert_folder_with, to_f16_safetensors, Layout,
};
use tinydiffusion::weights::{WeightBytes, LAYOUT_KEY, LAYOUT_PACKED};
use tinydiffusion::{Error, Model};

fn run(model: &Model) -> Vec<f32> {
    let (c, h, w) = model.input_shape();
    let x: Vec<f32> = (0..2 * c * h * w)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let (co, _, _) = model.output_shape();
    let mut out = vec![0.0; 2 * co * h * w];
    let mut ws = vec![0.0; model.workspace_len(2)];
    let labels = model.config.num_class_embeds.map(|_| vec![0i64, 1]);
    model
        .forward(&mut ws, &x, &[3.0, 700.0], labels.as_deref(), &mut out)
        .unwrap();
    out
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tinydiffusion-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn converted_folder_loads_without_copies_and_matches() {
    for m in [
        "tiny-rgb16",
        "tiny-gray8",
        "tiny-class16",
        "tiny-learnedvar8",
        "ncsnpp/tiny-ncsnpp8",
    ] {
        let out = temp_dir(&format!("packed-{m}"));
        let report = convert_folder(&fixtures_dir().join(m), &out).unwrap();
        assert!(report.packed > 0);
        let packed = Model::load(&out).unwrap();
        let w = packed.weights();
        assert!(w.packed_file, "{m}: layout metadata missing");
        assert_eq!(
            (w.owned_len(), w.converted_tensors, w.packed_at_load),
            (0, 0, 0),
            "{m}: packed file copied data"
        );
        // The file itself: metadata and packed shapes.
        let bytes = std::fs::read(out.join("diffusion_pytorch_model.safetensors")).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .unwrap()
                .get(LAYOUT_KEY)
                .map(String::as_str),
            Some(LAYOUT_PACKED)
        );
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let boc0 = packed.config.block_out_channels[0];
        assert_eq!(
            st.tensor("conv_in.weight").unwrap().shape(),
            &[boc0.div_ceil(32), 3, 3, packed.config.in_channels, 32]
        );

        // Same numbers as the original (f32) file and its diffusers-layout f16 conversion.
        let diffusers = temp_dir(&format!("diffusers-{m}"));
        convert_folder_with(&fixtures_dir().join(m), &diffusers, Layout::Diffusers).unwrap();
        let plain = Model::load(&diffusers).unwrap();
        assert!(!plain.weights().packed_file && plain.weights().packed_at_load > 0);
        let original = Model::load(fixtures_dir().join(m)).unwrap();
        for path in [KernelPath::Scalar, KernelPath::detect()] {
            let mut a = Model::load(&out).unwrap();
            let mut b = Model::load(&diffusers).unwrap();
            let mut c = Model::load(fixtures_dir().join(m)).unwrap();
            a.set_kernels(path).unwrap();
            b.set_kernels(path).unwrap();
            c.set_kernels(path).unwrap();
            let ra = run(&a);
            assert_eq!(
                ra,
                run(&b),
                "{m} [{}]: packed file differs from the diffusers-layout file",
                path.name()
            );
            assert_eq!(
                ra,
                run(&c),
                "{m} [{}]: packed file differs from the original",
                path.name()
            );
        }
        drop(original);
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_dir_all(&diffusers);
    }
}

#[test]
fn unknown_layout_is_refused() {
    let dir = fixtures_dir().join("tiny-rgb16");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let bytes = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let (f16, _) = to_f16_safetensors(&bytes).unwrap();
    let st = SafeTensors::deserialize(&f16).unwrap();
    let tensors = st.tensors();
    let meta = std::collections::HashMap::from([(LAYOUT_KEY.to_string(), "oc64-v9".to_string())]);
    let relabelled = safetensors::serialize(tensors, Some(meta)).unwrap();
    match Model::from_parts(&config, WeightBytes::Owned(relabelled)) {
        Err(Error::InvalidSafetensors { message }) => {
            assert!(message.contains("oc64-v9"), "{message}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an unknown layout loaded"),
    }
}
