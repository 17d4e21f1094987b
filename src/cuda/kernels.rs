//! The CUDA C sources (`kernels/*.cu`), compiled at run time by NVRTC.
//!
//! Each source is compiled as `kernels/common.cuh` followed by the file (with a `#line` so
//! NVRTC's messages name the file and line), so no include path or CUDA header is needed.

use std::string::String;
use std::vec::Vec;

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use crate::error::{device_err, Result};

pub const COMMON: &str = include_str!("../../kernels/common.cuh");

/// `(file name, source)` of every `kernels/*.cu`.
pub const SOURCES: &[(&str, &str)] = &[
    ("attention.cu", include_str!("../../kernels/attention.cu")),
    ("conv.cu", include_str!("../../kernels/conv.cu")),
    (
        "elementwise.cu",
        include_str!("../../kernels/elementwise.cu"),
    ),
    ("norm.cu", include_str!("../../kernels/norm.cu")),
];

/// The text NVRTC compiles for `file`: the common header, then the file.
pub fn full_source(file: &str, src: &str) -> String {
    std::format!("{COMMON}\n#line 1 \"{file}\"\n{src}")
}

/// Whether `libnvrtc` (CUDA 13) can be loaded (`LD_LIBRARY_PATH` is searched). Checked before
/// any NVRTC call: cudarc panics when the library is absent.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the candidate names; nothing is called.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether the CUDA driver library (`libcuda.so`) can be loaded.
pub fn driver_available() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The NVRTC `--gpu-architecture` for a compute capability (8.0 or newer: the conv uses
/// `mma.sync.m16n8k16`).
pub fn arch_for(major: i32, minor: i32) -> Result<&'static str> {
    Ok(match (major, minor) {
        (8, 0) => "sm_80",
        (8, 6) => "sm_86",
        (8, 7) => "sm_87",
        (8, 9) => "sm_89",
        (8, _) => "sm_80",
        (9, _) => "sm_90",
        (10, 0) => "sm_100",
        (12, 0) => "sm_120",
        (m, _) if m >= 10 => "compute_90",
        _ => {
            return Err(device_err(std::format!(
                "compute capability {major}.{minor}: the CUDA backend needs 8.0 or newer \
                 (tensor-core mma.sync m16n8k16)"
            )))
        }
    })
}

/// Compiles one source to PTX for `arch` (e.g. `sm_90`); the error carries NVRTC's log.
pub fn compile(file: &str, src: &str, arch: &'static str) -> Result<Ptx> {
    if !nvrtc_available() {
        return Err(device_err(
            "NVRTC not found (libnvrtc.so.13): install the `nvidia-cuda-nvrtc` wheel or the CUDA \
             toolkit and put its lib folder on LD_LIBRARY_PATH",
        ));
    }
    let opts = CompileOptions {
        arch: Some(arch),
        options: std::vec!["--std=c++17".into()],
        name: Some(file.into()),
        ..Default::default()
    };
    compile_ptx_with_opts(full_source(file, src), opts).map_err(|e| {
        let detail = match &e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                log.to_string_lossy().into_owned()
            }
            other => std::format!("{other:?}"),
        };
        device_err(std::format!(
            "NVRTC failed to compile kernels/{file} for {arch}:\n{detail}"
        ))
    })
}

/// Compiles every source; `(file, ptx)` in [`SOURCES`] order.
pub fn compile_all(arch: &'static str) -> Result<Vec<(&'static str, Ptx)>> {
    SOURCES
        .iter()
        .map(|(f, s)| compile(f, s, arch).map(|p| (*f, p)))
        .collect()
}

/// Compiles one source to a CUBIN (machine code) for a real architecture `sm_XX`, which runs
/// ptxas too (register and shared-memory limits are checked here, not at load). The backend
/// loads CUBINs rather than PTX: a CUBIN from a newer CUDA 13 NVRTC loads on any CUDA 13
/// driver (minor-version compatibility), whereas PTX newer than the driver is rejected
/// (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`).
pub fn compile_cubin(file: &str, src: &str, arch: &'static str) -> Result<Vec<u8>> {
    use cudarc::nvrtc::{result, sys};
    if !nvrtc_available() {
        return Err(device_err("NVRTC not found (libnvrtc.so.13)"));
    }
    let fail = |what: &str, e: &dyn core::fmt::Debug| {
        device_err(std::format!(
            "NVRTC {what} for kernels/{file} ({arch}): {e:?}"
        ))
    };
    let text = std::ffi::CString::new(full_source(file, src))
        .map_err(|e| fail("source has a NUL byte", &e))?;
    let name = std::ffi::CString::new(file).map_err(|e| fail("bad name", &e))?;
    let prog = result::create_program(&text, Some(&name)).map_err(|e| fail("create", &e))?;
    let opts = [
        std::format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
    ];
    // SAFETY: `prog` is a live program (destroyed once, below); `text` and `name` outlive it.
    let out = unsafe {
        let compiled = result::compile_program(prog, &opts);
        let r = match compiled {
            Ok(()) => {
                let mut size = 0usize;
                match sys::nvrtcGetCUBINSize(prog, &mut size).result() {
                    Ok(()) => {
                        let mut bin = std::vec![0u8; size];
                        sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut _)
                            .result()
                            .map(|()| bin)
                            .map_err(|e| fail("get CUBIN", &e))
                    }
                    Err(e) => Err(fail("get CUBIN size", &e)),
                }
            }
            Err(e) => {
                let log = result::get_program_log(prog)
                    .map(|l| {
                        let bytes: Vec<u8> =
                            l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                        String::from_utf8_lossy(&bytes).into_owned()
                    })
                    .unwrap_or_default();
                Err(device_err(std::format!(
                    "NVRTC failed to compile kernels/{file} for {arch} ({e:?}):\n{log}"
                )))
            }
        };
        let _ = result::destroy_program(prog);
        r
    };
    out
}
