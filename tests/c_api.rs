//! The C API end to end.
//!
//! - Builds `libtinydiffusion.a` (the `tinydiffusion-capi` package) with the profile of this
//!   test binary, into the same target folder, so it reuses the dependencies `cargo test`
//!   already compiled (about 20 s the first time, nothing after); set `TINYDIFFUSION_STATICLIB`
//!   to use a library built elsewhere.
//! - Compiles `examples/c/sample.c` and `tests/c/negative.c` with
//!   `-std=c99 -Wall -Wextra -Werror -pedantic` (compiler: `$CC`, else `gcc`, else `cc`).
//! - Runs the example on fixture models and checks its output equals the Rust API's for the same
//!   seed bit for bit (raw floats and PGM/PPM bytes), and runs the negative cases (NULL
//!   pointers, small buffers, malformed files).
//! - Without a C compiler: threads sharing one model, and f16 weights used in place from memory,
//!   through the same `extern "C"` functions called from Rust.

mod common;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::fixtures_dir;
use tinydiffusion::capi::*;
use tinydiffusion::sampler::{self, Guidance, SampleOptions, Sampler, SamplerKind};
use tinydiffusion::schedule::{Scheduler, SchedulerConfig, SchedulerKind};
use tinydiffusion::weights::WeightBytes;
use tinydiffusion::Model;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("c_api")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `target/<profile>/libtinydiffusion.a`, built once per test run.
fn staticlib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        if let Some(p) = std::env::var_os("TINYDIFFUSION_STATICLIB") {
            return PathBuf::from(p);
        }
        // This binary is target/<profile dir>/deps/c_api-<hash>.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary location")
            .to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("release") => "release",
            _ => "test", // target/debug holds the test profile's artifacts under `cargo test`
        };
        let status = Command::new(env!("CARGO"))
            .current_dir(root())
            .args([
                "build",
                "--quiet",
                "--lib",
                "-p",
                "tinydiffusion-capi",
                "--profile",
                profile,
            ])
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("running cargo to build tinydiffusion-capi");
        assert!(status.success(), "cargo build -p tinydiffusion-capi failed");
        let lib = profile_dir.join("libtinydiffusion.a");
        assert!(lib.is_file(), "{} was not produced", lib.display());
        lib
    })
}

fn c_compiler() -> String {
    if let Ok(cc) = std::env::var("CC") {
        return cc;
    }
    let has = |c: &str| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has("gcc") {
        "gcc".into()
    } else {
        "cc".into()
    }
}

/// The system libraries the static library needs, as printed by
/// `cargo rustc -p tinydiffusion-capi --lib -- --print native-static-libs` on each platform.
fn native_libs() -> Vec<String> {
    if let Ok(libs) = std::env::var("TINYDIFFUSION_NATIVE_LIBS") {
        return libs.split_whitespace().map(String::from).collect();
    }
    let libs: &[&str] = if cfg!(target_os = "macos") {
        &["-lSystem", "-lc", "-lm"]
    } else {
        &[
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ]
    };
    libs.iter().map(|s| s.to_string()).collect()
}

/// Compiles one C file against the header and the static library, the way the README says.
fn compile_c(source: &Path, out: &Path) {
    let output = Command::new(c_compiler())
        .args([
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O1",
        ])
        .arg("-I")
        .arg(root().join("include"))
        .arg(source)
        .arg(staticlib())
        .args(native_libs())
        .arg("-o")
        .arg(out)
        .output()
        .expect("running the C compiler (set CC)");
    assert!(
        output.status.success(),
        "compiling {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn run(cmd: &mut Command) -> String {
    let output = cmd.output().expect("running a compiled C program");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        output.status
    );
    text
}

/// What the Rust API gives for the same run as the example's flags.
fn rust_sample(
    dir: &Path,
    kind: SchedulerKind,
    steps: usize,
    batch: usize,
    seed: u64,
    label: Option<i64>,
    w: f32,
) -> Vec<f32> {
    let model = Model::load(dir).unwrap();
    // The fixture folders have no scheduler_config.json: diffusers' DDPM defaults.
    let scheduler = Scheduler::new(
        SchedulerConfig::ddpm_default().with_kind(kind).unwrap(),
        steps,
    )
    .unwrap();
    let guidance = (w != 0.0).then(|| Guidance::new(&model, w).unwrap());
    let labels = label.map(|l| [l]);
    let opts = SampleOptions {
        class_labels: labels.as_ref().map(|l| &l[..]),
        guidance,
        ..SampleOptions::new(batch, seed)
    };
    let mut ws =
        vec![0.0f32; sampler::workspace_len(&model, &scheduler, batch, guidance.is_some())];
    let (c, h, w) = model.input_shape();
    let mut out = vec![0.0f32; batch * c * h * w];
    sampler::sample(&model, &scheduler, &mut ws, &opts, &mut out, None).unwrap();
    out
}

/// The example's PGM/PPM bytes for `x`, with the same float arithmetic.
fn netpbm(x: &[f32], batch: usize, c: usize, h: usize, w: usize) -> Vec<u8> {
    let mut bytes = format!(
        "{}\n{} {}\n255\n",
        if c == 1 { "P5" } else { "P6" },
        batch * w,
        h
    )
    .into_bytes();
    for y in 0..h {
        for b in 0..batch {
            for xx in 0..w {
                for ch in 0..c {
                    let v = x[((b * c + ch) * h + y) * w + xx];
                    let u = ((v + 1.0) * 0.5).clamp(0.0, 1.0);
                    bytes.push((u * 255.0 + 0.5) as i32 as u8);
                }
            }
        }
    }
    bytes
}

fn read_raw(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

fn assert_same_bits(c: &[f32], rust: &[f32], what: &str) {
    assert_eq!(c.len(), rust.len(), "{what}: length");
    let differing = c
        .iter()
        .zip(rust)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(
        differing,
        0,
        "{what}: {differing} of {} values differ from the Rust API",
        c.len()
    );
}

#[test]
fn c_example_matches_rust_api_bit_for_bit() {
    let dir = scratch_dir("example");
    let exe = dir.join("sample_c");
    compile_c(&root().join("examples/c/sample.c"), &exe);

    // Class-conditional RGB model, DDIM with guidance -> PPM.
    let model = fixtures_dir().join("tiny-class16");
    let (ppm, raw) = (dir.join("class.ppm"), dir.join("class.raw"));
    run(Command::new(&exe)
        .arg(&model)
        .arg(&ppm)
        .args(["--batch", "2", "--seed", "5", "--scheduler", "ddim"])
        .args(["--steps", "4", "--class", "4", "--guidance", "1.5", "--raw"])
        .arg(&raw));
    let expected = rust_sample(&model, SchedulerKind::Ddim, 4, 2, 5, Some(4), 1.5);
    assert_same_bits(&read_raw(&raw), &expected, "tiny-class16 DDIM guided");
    assert_eq!(
        std::fs::read(&ppm).unwrap(),
        netpbm(&expected, 2, 3, 16, 16),
        "PPM bytes"
    );

    // Unconditional 1-channel model, DDPM -> PGM.
    let model = fixtures_dir().join("tiny-gray8");
    let (pgm, raw) = (dir.join("gray.pgm"), dir.join("gray.raw"));
    run(Command::new(&exe)
        .arg(&model)
        .arg(&pgm)
        .args(["--batch", "3", "--seed", "1", "--scheduler", "ddpm"])
        .args(["--steps", "20", "--raw"])
        .arg(&raw));
    let expected = rust_sample(&model, SchedulerKind::Ddpm, 20, 3, 1, None, 0.0);
    assert_same_bits(&read_raw(&raw), &expected, "tiny-gray8 DDPM");
    assert_eq!(
        std::fs::read(&pgm).unwrap(),
        netpbm(&expected, 3, 1, 8, 8),
        "PGM bytes"
    );

    // The sigma schedulers through the C API: same bits as the Rust front end.
    for (name, kind) in [
        ("euler", SamplerKind::Euler),
        ("euler-a", SamplerKind::EulerAncestral),
        ("dpm", SamplerKind::DpmSolverMultistep),
    ] {
        let raw = dir.join(format!("{name}.raw"));
        run(Command::new(&exe)
            .arg(&model)
            .arg(dir.join(format!("{name}.pgm")))
            .args(["--batch", "2", "--seed", "3", "--scheduler", name])
            .args(["--steps", "6", "--raw"])
            .arg(&raw));
        let m = Model::load(&model).unwrap();
        let s = Sampler::builder(kind)
            .steps(6)
            .build(&SchedulerConfig::ddpm_default())
            .unwrap();
        let mut ws = vec![0.0f32; s.workspace_len(&m, 2, false)];
        let mut out = vec![0.0f32; 2 * 64];
        s.sample(&m, &mut ws, &SampleOptions::new(2, 3), &mut out, None)
            .unwrap();
        assert_same_bits(&read_raw(&raw), &out, name);
    }

    // Errors reach the user as a status message plus the detail.
    let out = Command::new(&exe)
        .arg(dir.join("no-such-model"))
        .arg(dir.join("x.pgm"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("I/O error") && err.contains("no-such-model"),
        "{err}"
    );
}

/// The README's C example compiles and links as printed.
#[test]
fn readme_c_example_builds() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = &readme[readme.find("## Using from C").expect("README section")..];
    let start = section.find("```c\n").expect("a C block") + 5;
    let code = &section[start..start + section[start..].find("```").unwrap()];
    let dir = scratch_dir("readme");
    std::fs::write(dir.join("app.c"), code).unwrap();
    compile_c(&dir.join("app.c"), &dir.join("app"));
    // Issue 25: it runs as written on the model the repository ships (from the root).
    let out = run(Command::new(dir.join("app")).current_dir(root()));
    assert!(out.contains("images of 1x32x32"), "{out}");
}

/// Issue 25: a workspace sized for a stated thread count is the same size under any CPU
/// affinity, and sampling with it gives the same bytes: `examples/c/from_memory.c` (weights
/// and config in the program's own buffers, `td_model_from_memory`) under `taskset -c 0` and
/// on every core, for threads = 1 and 2.
#[test]
fn stated_threads_size_and_output_do_not_depend_on_affinity() {
    let dir = scratch_dir("threads");
    let exe = dir.join("from_memory");
    compile_c(&root().join("examples/c/from_memory.c"), &exe);
    let weights = root().join("weights");
    let sample = |taskset: bool, threads: &str| {
        let mut cmd = if taskset {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = run(cmd.arg(&weights).args([threads, "2", "3"]));
        // "workspace N floats for T thread(s); ...; x_0 fnv1a H"
        let words: Vec<&str> = out.split_whitespace().collect();
        let size: usize = words[1].parse().unwrap_or_else(|_| panic!("{out}"));
        (size, words.last().unwrap().to_string(), out)
    };
    let has_taskset = Command::new("taskset")
        .args(["-c", "0", "true"])
        .status()
        .is_ok_and(|s| s.success());
    for threads in ["1", "2"] {
        let all = sample(false, threads);
        eprintln!("all cores, threads {threads}: {}", all.2.trim());
        if !has_taskset {
            eprintln!("SKIP the taskset -c 0 half: `taskset` (util-linux) is not available");
            continue;
        }
        let one = sample(true, threads);
        eprintln!("taskset -c 0, threads {threads}: {}", one.2.trim());
        assert_eq!(
            one.0, all.0,
            "workspace size for {threads} thread(s) under taskset"
        );
        assert_eq!(
            one.1, all.1,
            "x_0 bytes for {threads} thread(s) under taskset"
        );
    }
    // And the output does not depend on the stated count either.
    assert_eq!(sample(false, "1").1, sample(false, "2").1);
}

#[test]
fn c_negative_cases() {
    let dir = scratch_dir("negative");
    let exe = dir.join("negative");
    compile_c(&root().join("tests/c/negative.c"), &exe);

    let src = fixtures_dir().join("tiny-class16");
    let weights = std::fs::read(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let config = std::fs::read(src.join("config.json")).unwrap();
    let bad_json = dir.join("bad-json");
    std::fs::create_dir_all(&bad_json).unwrap();
    std::fs::write(bad_json.join("config.json"), b"{\"in_channels\": 3,").unwrap();
    std::fs::write(
        bad_json.join("diffusion_pytorch_model.safetensors"),
        &weights,
    )
    .unwrap();
    let truncated = dir.join("truncated");
    std::fs::create_dir_all(&truncated).unwrap();
    std::fs::write(truncated.join("config.json"), &config).unwrap();
    std::fs::write(
        truncated.join("diffusion_pytorch_model.safetensors"),
        &weights[..weights.len() - 100],
    )
    .unwrap();

    let text = run(Command::new(&exe)
        .arg(&src)
        .arg(fixtures_dir().join("tiny-gray8"))
        .arg(&bad_json)
        .arg(&truncated));
    println!("{text}");
    assert!(text.contains(" 0 failed"), "{text}");
}

/// A model handle shared by threads (the pointer is only read; `td_model` is `Sync`).
#[derive(Clone, Copy)]
struct Shared(*const td_model);
// SAFETY: `td_model` is immutable and `Sync` (asserted in src/capi/mod.rs); the C API documents
// concurrent use with separate workspaces, which is what the threads below do.
unsafe impl Send for Shared {}

fn load(dir: &Path) -> *mut td_model {
    let path = CString::new(dir.to_str().unwrap()).unwrap();
    let mut model = std::ptr::null_mut();
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    assert_eq!(
        unsafe { td_model_load(path.as_ptr(), &mut model) },
        td_status::Ok
    );
    model
}

/// One `td_sample` run with its own buffers.
fn c_sample(model: *const td_model, desc: &td_sampler_desc) -> Vec<f32> {
    let mut info = td_model_info::default();
    let mut ws_len = 0;
    // SAFETY: live model, valid out-pointers; buffers sized as the library says.
    unsafe {
        assert_eq!(td_model_get_info(model, &mut info), td_status::Ok);
        assert_eq!(
            td_sample_workspace_len(model, desc, &mut ws_len),
            td_status::Ok
        );
        let mut ws = vec![0.0f32; ws_len];
        let mut out = vec![0.0f32; desc.batch * info.sample_len];
        let s = td_sample(
            model,
            desc,
            ws.as_mut_ptr(),
            ws.len(),
            out.as_mut_ptr(),
            out.len(),
        );
        assert_eq!(s, td_status::Ok);
        out
    }
}

#[test]
fn threads_share_one_model() {
    let model = load(&fixtures_dir().join("tiny-class16"));
    let desc = |seed: u64| td_sampler_desc {
        batch: 2,
        seed,
        class_label: (seed % 10) as i64,
        scheduler: td_scheduler_desc {
            kind: td_scheduler_kind::Ddim as i32,
            steps: 3,
            eta: 0.3,
            flags: 0,
        },
        ..td_sampler_desc_default()
    };
    let sequential: Vec<Vec<f32>> = (0..3).map(|seed| c_sample(model, &desc(seed))).collect();
    let shared = Shared(model);
    let parallel: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|seed| {
                s.spawn(move || {
                    let shared = shared;
                    c_sample(shared.0, &desc(seed))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (seed, (a, b)) in sequential.iter().zip(&parallel).enumerate() {
        assert_same_bits(b, a, &format!("seed {seed} on a thread"));
    }
    // SAFETY: no thread uses the model any more.
    unsafe { td_model_free(model) };
}

#[test]
fn from_memory_uses_f16_weights_in_place() {
    let dir = scratch_dir("f16");
    tinydiffusion::model::convert::convert_folder(&fixtures_dir().join("tiny-gray8"), &dir)
        .unwrap();
    let bytes = std::fs::read(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let config = std::fs::read(dir.join("config.json")).unwrap();
    // 8-aligned storage, and a copy one byte off.
    let mut store = vec![0u64; bytes.len() / 8 + 2];
    let aligned: &mut [u8] =
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut store)[..bytes.len() + 1];
    aligned[..bytes.len()].copy_from_slice(&bytes);
    let aligned_ptr = aligned.as_ptr();

    let mut model = std::ptr::null_mut();
    // SAFETY: valid pointers and lengths; `store` outlives the model (freed below).
    let s = unsafe {
        td_model_from_memory(
            aligned_ptr,
            bytes.len(),
            config.as_ptr().cast(),
            config.len(),
            std::ptr::null(),
            0,
            &mut model,
        )
    };
    assert_eq!(s, td_status::Ok);
    let scheduler = td_scheduler_desc {
        kind: td_scheduler_kind::Ddim as i32,
        steps: 10,
        ..td_scheduler_desc_default()
    };
    let desc = td_sampler_desc {
        batch: 2,
        seed: 9,
        scheduler,
        ..td_sampler_desc_default()
    };
    let ours = c_sample(model, &desc);
    // SAFETY: not used afterwards.
    unsafe { td_model_free(model) };

    let rust = Model::from_parts(
        std::str::from_utf8(&config).unwrap(),
        WeightBytes::Owned(bytes.clone()),
    )
    .unwrap();
    let sched = Scheduler::new(SchedulerConfig::ddim_default(), 10).unwrap();
    let mut ws = vec![0.0; sampler::workspace_len(&rust, &sched, 2, false)];
    let mut expected = vec![0.0; ours.len()];
    sampler::sample(
        &rust,
        &sched,
        &mut ws,
        &SampleOptions::new(2, 9),
        &mut expected,
        None,
    )
    .unwrap();
    assert_same_bits(&ours, &expected, "f16 model from memory");

    // One byte off, the f16 data is misaligned: used in place, it cannot be read as f16.
    let shifted: &mut [u8] =
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut store)[..bytes.len() + 1];
    shifted.copy_within(0..bytes.len(), 1);
    let mut model = std::ptr::null_mut();
    // SAFETY: as above.
    let s = unsafe {
        td_model_from_memory(
            shifted[1..].as_ptr(),
            bytes.len(),
            config.as_ptr().cast(),
            config.len(),
            std::ptr::null(),
            0,
            &mut model,
        )
    };
    assert_eq!(s, td_status::InvalidWeights);
    assert!(model.is_null());
    let mut msg = [0 as std::ffi::c_char; 256];
    // SAFETY: a valid buffer.
    unsafe { td_last_error_message(msg.as_mut_ptr(), msg.len(), std::ptr::null_mut()) };
    // SAFETY: NUL-terminated by the call.
    let msg = unsafe { std::ffi::CStr::from_ptr(msg.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    assert!(msg.contains("aligned"), "{msg}");
}

/// `td_sampler_desc.scheduler_class` and `scheduler_config_json` choose the scheduler by name
/// and config text: the sched_b fixture runs (LCM, TCD, consistency with labels, VE) replayed
/// through `td_sample` with injected noise match diffusers; bad names, text and combinations
/// are typed errors.
#[test]
fn scheduler_by_class_name_and_config_json() {
    use common::{read_json, rel_l2, TensorFile};
    let dir = fixtures_dir().join("sched_b");
    let meta = read_json(dir.join("cases.json"));
    let t = TensorFile::open(dir.join("cases.safetensors"));
    for (run, class) in [
        ("run.lcm_default.4", "LCMScheduler"),
        ("run.tcd_default.4", "tcd"),
        ("run.cm_imagenet.3", "CMStochasticIterativeScheduler"),
        ("run.ve_small.5", "score-sde-ve"),
    ] {
        let case = meta["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == run)
            .unwrap();
        let model = load(&fixtures_dir().join(case["model"].as_str().unwrap()));
        let x_t = t.f32s(&format!("{run}.x_T"));
        let noise =
            (case["noise_rows"].as_u64().unwrap() > 0).then(|| t.f32s(&format!("{run}.noise")));
        let traj = t.f32s(&format!("{run}.traj"));
        let labels: Option<Vec<i64>> = case["class_labels"]
            .as_array()
            .map(|l| l.iter().map(|v| v.as_i64().unwrap()).collect());
        let json = CString::new(case["scheduler_json"].as_str().unwrap()).unwrap();
        let class = CString::new(class).unwrap();
        let desc = td_sampler_desc {
            batch: 2,
            scheduler: td_scheduler_desc {
                steps: case["num_inference_steps"].as_u64().unwrap() as usize,
                eta: case["gamma"].as_f64().unwrap_or(0.0),
                ..td_scheduler_desc_default()
            },
            initial_noise: x_t.as_ptr(),
            initial_noise_len: x_t.len(),
            step_noise: noise.as_ref().map_or(std::ptr::null(), |z| z.as_ptr()),
            step_noise_len: noise.as_ref().map_or(0, |z| z.len()),
            class_labels: labels.as_ref().map_or(std::ptr::null(), |l| l.as_ptr()),
            num_class_labels: labels.as_ref().map_or(0, |l| l.len()),
            scheduler_class: class.as_ptr(),
            scheduler_config_json: json.as_ptr(),
            ..td_sampler_desc_default()
        };
        let out = c_sample(model, &desc);
        let n = x_t.len();
        let err = rel_l2(&out, &traj[traj.len() - n..]);
        println!("{run} through the C API: rel L2 {err:.2e}");
        assert!(err <= 1e-3, "{run}: {err:.3e}");

        // The config alone picks its class (scheduler_class NULL, kind FROM_CONFIG).
        let by_config = c_sample(
            model,
            &td_sampler_desc {
                scheduler_class: std::ptr::null(),
                ..desc
            },
        );
        assert_same_bits(&by_config, &out, &format!("{run} by config"));

        let status = |d: &td_sampler_desc| {
            let mut len = 0;
            // SAFETY: live model, readable description (its strings NUL-terminated).
            unsafe { td_sample_workspace_len(model, d, &mut len) }
        };
        let unknown = CString::new("NoSuchScheduler").unwrap();
        assert_eq!(
            status(&td_sampler_desc {
                scheduler_class: unknown.as_ptr(),
                ..desc
            }),
            td_status::InvalidArgument
        );
        let both = td_sampler_desc {
            scheduler: td_scheduler_desc {
                kind: td_scheduler_kind::Ddim as i32,
                ..desc.scheduler
            },
            ..desc
        };
        assert_eq!(status(&both), td_status::InvalidArgument);
        let not_json = CString::new("{\"_class_name\": ").unwrap();
        assert_eq!(
            status(&td_sampler_desc {
                scheduler_config_json: not_json.as_ptr(),
                ..desc
            }),
            td_status::InvalidJson
        );
        let bad_key = CString::new(r#"{"_class_name": "LCMScheduler", "no_such_key": 1}"#).unwrap();
        assert_eq!(
            status(&td_sampler_desc {
                scheduler_config_json: bad_key.as_ptr(),
                scheduler_class: std::ptr::null(),
                ..desc
            }),
            td_status::Unsupported
        );
        let not_utf8 = [0xffu8, 0xfe, 0];
        assert_eq!(
            status(&td_sampler_desc {
                scheduler_class: not_utf8.as_ptr().cast(),
                ..desc
            }),
            td_status::InvalidArgument
        );
        // SAFETY: not used afterwards.
        unsafe { td_model_free(model) };
    }
    // The new kinds by enum value (values from 20 on), built on a DDPM model's config.
    let model = load(&fixtures_dir().join("tiny-rgb16"));
    for (value, steps, rows) in [
        (td_scheduler_kind::ScoreSdeVe, 3, 6),
        (td_scheduler_kind::Consistency, 2, 2),
        (td_scheduler_kind::Lcm, 3, 2),
        (td_scheduler_kind::Tcd, 3, 0), // eta 0: TCD draws nothing
    ] {
        assert!(value as i32 >= 20);
        let d = td_scheduler_desc {
            kind: value as i32,
            steps,
            ..td_scheduler_desc_default()
        };
        let mut sched = std::ptr::null_mut();
        let (mut n, mut r) = (0, 0);
        // SAFETY: live model, readable desc, writable out-pointers; the scheduler is freed.
        unsafe {
            assert_eq!(td_scheduler_new(model, &d, &mut sched), td_status::Ok);
            assert_eq!(td_scheduler_num_steps(sched, &mut n), td_status::Ok);
            assert_eq!(td_scheduler_noise_rows(sched, &mut r), td_status::Ok);
            td_scheduler_free(sched);
        }
        assert_eq!((n, r), (steps, rows), "{value:?}");
    }
    // SAFETY: not used afterwards.
    unsafe { td_model_free(model) };
}

#[test]
fn set_precision() {
    let model = load(&fixtures_dir().join("tiny-rgb16"));
    let f16_ok = tinydiffusion::kernels::KernelPath::F16
        .iter()
        .any(|p| p.is_available());
    // SAFETY: a live model used by this thread only; NULL is refused.
    unsafe {
        assert_eq!(
            td_model_set_precision(model, td_precision::F32 as i32),
            td_status::Ok
        );
        let want = if f16_ok {
            td_status::Ok
        } else {
            td_status::Unsupported
        };
        assert_eq!(
            td_model_set_precision(model, td_precision::F16 as i32),
            want
        );
        assert_eq!(td_model_set_precision(model, 7), td_status::InvalidArgument);
        assert_eq!(
            td_model_set_precision(std::ptr::null_mut(), 0),
            td_status::NullPointer
        );
        td_model_free(model);
    }
}

/// The text-to-image pipeline through the C API (`examples/c/text_to_image.c`): a prompt,
/// negative prompt and guidance scale give the Rust API's bits; a NULL prompt on a text
/// pipeline, a prompt that is not UTF-8 and a prompt on a model without text encoder are
/// typed errors.
#[test]
fn c_text_to_image_matches_rust_api() {
    use tinydiffusion::sampler::{SamplerSpec, TextConditioning};
    let dir = scratch_dir("text");
    let exe = dir.join("t2i_c");
    compile_c(&root().join("examples/c/text_to_image.c"), &exe);
    let model_dir = fixtures_dir().join("sd-pipeline").join("sd1");
    let raw = dir.join("t2i.raw");
    let out = run(Command::new(&exe)
        .arg(&model_dir)
        .arg(&raw)
        .arg("a photo of a cat")
        .args(["--negative", "blurry", "--guidance", "7.5", "--steps", "3"])
        .args(["--seed", "4", "--batch", "2"]));
    assert!(out.contains("2 images of 3x16x16"), "{out}");

    let m = Model::load(&model_dir).unwrap();
    let tok = tinydiffusion::text::ClipTokenizer::from_dir(&model_dir).unwrap();
    let (ids, neg) = (tok.encode("a photo of a cat"), tok.encode("blurry"));
    let cfg = tinydiffusion::model::load::ModelFiles::find(&model_dir)
        .unwrap()
        .load_scheduler_config()
        .unwrap();
    let s = Sampler::new(&SamplerSpec::new(None).steps(3), &cfg).unwrap();
    let mut ws = vec![0.0f32; s.workspace_len(&m, 2, true)];
    let mut expected = vec![0.0f32; 2 * 3 * 16 * 16];
    let opts = SampleOptions {
        text: Some(TextConditioning {
            prompt_ids: &ids,
            negative_ids: Some(&neg),
            guidance_scale: 7.5,
        }),
        ..SampleOptions::new(2, 4)
    };
    s.sample(&m, &mut ws, &opts, &mut expected, None).unwrap();
    assert_same_bits(&read_raw(&raw), &expected, "sd1 text-to-image");

    // Typed errors, straight through the API.
    let path = std::ffi::CString::new(model_dir.to_str().unwrap()).unwrap();
    let mut model: *mut td_model = std::ptr::null_mut();
    // SAFETY: a NUL-terminated path and a writable out-pointer.
    assert_eq!(
        unsafe { td_model_load(path.as_ptr(), &mut model) },
        td_status::Ok
    );
    let mut n = 0usize;
    let mut desc = td_sampler_desc_default();
    // SAFETY: live model, readable description, writable out-pointer.
    let st = unsafe { td_sample_workspace_len(model, &desc, &mut n) };
    assert_eq!(st, td_status::NullPointer, "NULL prompt");
    let bad = [b'a', 0xff, 0xfe, 0];
    desc.prompt = bad.as_ptr().cast();
    // SAFETY: as above (a NUL-terminated byte string).
    let st = unsafe { td_sample_workspace_len(model, &desc, &mut n) };
    assert_eq!(st, td_status::InvalidArgument, "prompt not UTF-8");
    let prompt = std::ffi::CString::new("a cat").unwrap();
    desc.prompt = prompt.as_ptr();
    desc.negative_prompt = bad.as_ptr().cast();
    // SAFETY: as above.
    let st = unsafe { td_sample_workspace_len(model, &desc, &mut n) };
    assert_eq!(st, td_status::InvalidArgument, "negative prompt not UTF-8");
    desc.negative_prompt = std::ptr::null();
    // SAFETY: as above.
    let st = unsafe { td_sample_workspace_len(model, &desc, &mut n) };
    assert_eq!(st, td_status::Ok);
    assert_eq!(n, s.workspace_len(&m, 1, true));
    // diffusers' clip_skip: the prompt through layer 1 before the last, as the Rust API.
    // SAFETY: a live model no other thread uses.
    assert_eq!(unsafe { td_model_set_clip_skip(model, 1) }, td_status::Ok);
    desc.scheduler.steps = 3;
    desc.guidance_scale = 7.5;
    let mut ours = vec![0.0f32; 3 * 16 * 16];
    // SAFETY: live model, readable description, buffers of the lengths given.
    unsafe {
        assert_eq!(td_sample_workspace_len(model, &desc, &mut n), td_status::Ok);
        let mut ws = vec![0.0f32; n];
        let st = td_sample(
            model,
            &desc,
            ws.as_mut_ptr(),
            ws.len(),
            ours.as_mut_ptr(),
            ours.len(),
        );
        assert_eq!(st, td_status::Ok);
    }
    let mut m = Model::load(&model_dir).unwrap();
    m.set_clip_skip(1).unwrap();
    let (ids, neg) = (tok.encode("a cat"), tok.encode(""));
    let opts = SampleOptions {
        text: Some(TextConditioning {
            prompt_ids: &ids,
            negative_ids: Some(&neg),
            guidance_scale: 7.5,
        }),
        ..SampleOptions::new(1, desc.seed)
    };
    let mut ws = vec![0.0f32; s.workspace_len(&m, 1, true)];
    let mut expected = vec![0.0f32; 3 * 16 * 16];
    s.sample(&m, &mut ws, &opts, &mut expected, None).unwrap();
    assert_same_bits(&ours, &expected, "sd1 clip_skip 1");
    // SAFETY: as above.
    let st = unsafe { td_model_set_clip_skip(model, 99) };
    assert_eq!(st, td_status::InvalidArgument, "clip_skip past the layers");
    // SAFETY: a model from td_model_load, freed once.
    unsafe { td_model_free(model) };

    let plain =
        std::ffi::CString::new(fixtures_dir().join("tiny-gray8").to_str().unwrap()).unwrap();
    let mut model: *mut td_model = std::ptr::null_mut();
    // SAFETY: as above.
    assert_eq!(
        unsafe { td_model_load(plain.as_ptr(), &mut model) },
        td_status::Ok
    );
    // SAFETY: as above.
    let st = unsafe { td_sample_workspace_len(model, &desc, &mut n) };
    assert_eq!(st, td_status::InvalidArgument, "a prompt on a UNet2DModel");
    // SAFETY: as above.
    let st = unsafe { td_model_set_clip_skip(model, 1) };
    assert_eq!(st, td_status::InvalidArgument, "clip_skip on a UNet2DModel");
    // SAFETY: as above.
    unsafe { td_model_free(model) };
}
