//! Every `kernels/*.cu` compiles with NVRTC (CUDA 13) for sm_80 and sm_90, to PTX and to a
//! CUBIN (ptxas included); no GPU
//! needed. Skips with a printed reason when libnvrtc cannot be loaded, unless
//! `TINYDIFFUSION_REQUIRE_NVRTC=1` (set by `.ci/cuda.sh`), where that is a failure.
#![cfg(feature = "cuda")]

use tinydiffusion::cuda::kernels;

/// Entry points the host side loads, by file.
const ENTRIES: &[(&str, &[&str])] = &[
    (
        "attention.cu",
        &["attention_f16_r1", "attention_f16_r2", "attention_f16_r4"],
    ),
    ("conv.cu", &["conv2d_f16"]),
    (
        "elementwise.cu",
        &[
            "nchw_to_nhwc",
            "nhwc_to_nchw",
            "timestep_sinusoid",
            "silu",
            "class_embed_add",
            "class_sinusoid",
            "timestep_table",
            "guidance_combine",
            "gaussian_noise",
            "scheduler_step",
            "set_step",
            "advance_step",
            "scale_shift",
            "resample2x",
            "activation",
            "fourier_embedding",
            "fir_resample",
            "timestep_divide",
        ],
    ),
    ("norm.cu", &["group_norm_f16"]),
];

fn nvrtc_or_skip() -> bool {
    if kernels::nvrtc_available() {
        return true;
    }
    let reason = "libnvrtc (CUDA 13) not found on the loader path; `pip install \
                  nvidia-cuda-nvrtc` and add its nvidia/cu13/lib to LD_LIBRARY_PATH";
    if std::env::var("TINYDIFFUSION_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
        panic!("{reason}");
    }
    eprintln!("SKIP: {reason}");
    false
}

#[test]
fn every_kernel_compiles_to_ptx() {
    if !nvrtc_or_skip() {
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        for (file, src) in kernels::SOURCES {
            let ptx = kernels::compile(file, src, arch).unwrap_or_else(|e| panic!("{e}"));
            let text = ptx.to_src();
            let entries = ENTRIES
                .iter()
                .find(|(f, _)| f == file)
                .unwrap_or_else(|| panic!("{file}: add its entry points to ENTRIES"))
                .1;
            for e in entries {
                assert!(
                    text.contains(&format!(".entry {e}(")),
                    "{file} ({arch}): no entry point {e} in the PTX"
                );
            }
            // The CUBIN the backend loads: also runs ptxas (registers, shared memory).
            let cubin = kernels::compile_cubin(file, src, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                cubin.starts_with(b"\x7fELF"),
                "{file} ({arch}): CUBIN is not an ELF"
            );
            eprintln!(
                "{file} {arch}: {} bytes of PTX, {} bytes of CUBIN",
                text.len(),
                cubin.len()
            );
        }
    }
}

#[test]
fn every_cu_file_is_compiled_by_the_backend() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".cu"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = kernels::SOURCES
        .iter()
        .map(|(f, _)| f.to_string())
        .collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "kernels/*.cu and cuda::kernels::SOURCES differ"
    );
}
