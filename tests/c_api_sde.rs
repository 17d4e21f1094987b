//! The continuous-time samplers through the C API (called from Rust, no C compiler needed):
//! `td_sample` with `TD_SCHEDULER_KIND_SDE` / `_ODE` / `_PC` equals the Rust API bit for bit,
//! `td_scheduler_new_sde` + `td_sample_with_scheduler` equals `td_sample`, the counts
//! (`td_scheduler_noise_rows`, `td_scheduler_model_evaluations`) match, and bad options are
//! error codes.

mod common;

use std::ffi::CString;
use std::path::Path;

use common::fixtures_dir;
use tinydiffusion::capi::*;
use tinydiffusion::sampler::{self, Method, SampleOptions};
use tinydiffusion::schedule::{Predictor, SchedulerConfig, SdeConfig, SdeSampler};
use tinydiffusion::Model;

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

fn c_sample(model: *const td_model, desc: &td_sampler_desc) -> Result<Vec<f32>, td_status> {
    let mut info = td_model_info::default();
    let mut ws_len = 0;
    // SAFETY: live model, valid out-pointers; buffers sized as the library says.
    unsafe {
        assert_eq!(td_model_get_info(model, &mut info), td_status::Ok);
        let s = td_sample_workspace_len(model, desc, &mut ws_len);
        if s != td_status::Ok {
            return Err(s);
        }
        let mut ws = vec![0.0f32; ws_len];
        let mut out = vec![0.0f32; desc.batch * info.sample_len];
        match td_sample(
            model,
            desc,
            ws.as_mut_ptr(),
            ws.len(),
            out.as_mut_ptr(),
            out.len(),
        ) {
            td_status::Ok => Ok(out),
            s => Err(s),
        }
    }
}

fn rust_sample(dir: &Path, cfg: SdeConfig, batch: usize, seed: u64) -> Vec<f32> {
    let model = Model::load(dir).unwrap();
    let sde = SdeSampler::new(&SchedulerConfig::ddpm_default(), cfg).unwrap();
    let method = Method::Sde(&sde);
    let mut ws = vec![0.0f32; sampler::workspace_len_with(&model, method, batch, false)];
    let (c, h, w) = model.input_shape();
    let mut out = vec![0.0f32; batch * c * h * w];
    let opts = SampleOptions::new(batch, seed);
    sampler::sample_with(&model, method, &mut ws, &opts, &mut out, None).unwrap();
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn sde_kinds_match_the_rust_api_bit_for_bit() {
    let dir = fixtures_dir().join("tiny-gray8");
    let model = load(&dir);
    let d = td_sampler_desc_default();
    assert_eq!(d.sde.predictor, td_sde_predictor::Default as i32);
    assert_eq!(
        (d.sde.corrector_steps, d.sde.snr, d.sde.t_eps),
        (1, 0.16, 1e-3)
    );
    let cases = [
        (
            td_scheduler_kind::Sde,
            td_sde_predictor::Default,
            6,
            SdeConfig::sde(6),
        ),
        (
            td_scheduler_kind::Ode,
            td_sde_predictor::Default,
            4,
            SdeConfig::ode(Predictor::OdeHeun, 4),
        ),
        (
            td_scheduler_kind::Ode,
            td_sde_predictor::OdeEuler,
            5,
            SdeConfig::ode(Predictor::OdeEuler, 5),
        ),
        (
            td_scheduler_kind::Pc,
            td_sde_predictor::Default,
            3,
            SdeConfig::pc(3, 2),
        ),
    ];
    for (kind, predictor, steps, cfg) in cases {
        let mut desc = td_sampler_desc {
            batch: 2,
            seed: 4,
            ..td_sampler_desc_default()
        };
        desc.scheduler.kind = kind as i32;
        desc.scheduler.steps = steps;
        desc.sde.predictor = predictor as i32;
        desc.sde.corrector_steps = 2;
        let c = c_sample(model, &desc).unwrap();
        let r = rust_sample(&dir, cfg, 2, 4);
        assert_eq!(bits(&c), bits(&r), "{kind:?}");

        // A scheduler built once gives the same bits, and reports the counts.
        let mut sched = std::ptr::null_mut();
        let (mut rows, mut evals, mut nsteps) = (0usize, 0usize, 0usize);
        // SAFETY: live model, readable descriptions, valid out-pointers.
        unsafe {
            assert_eq!(
                td_scheduler_new_sde(model, &desc.scheduler, &desc.sde, &mut sched),
                td_status::Ok
            );
            assert_eq!(td_scheduler_noise_rows(sched, &mut rows), td_status::Ok);
            assert_eq!(
                td_scheduler_model_evaluations(sched, &mut evals),
                td_status::Ok
            );
            assert_eq!(td_scheduler_num_steps(sched, &mut nsteps), td_status::Ok);
            let mut ts = vec![0i64; nsteps];
            assert_eq!(
                td_scheduler_timesteps(sched, ts.as_mut_ptr(), ts.len()),
                td_status::Ok
            );
            assert_eq!(ts[0], 999);
            let mut ws_len = 0;
            assert_eq!(
                td_sample_workspace_len(model, &desc, &mut ws_len),
                td_status::Ok
            );
            let mut ws = vec![0.0f32; ws_len];
            let mut out = vec![0.0f32; c.len()];
            assert_eq!(
                td_sample_with_scheduler(
                    model,
                    sched,
                    &desc,
                    ws.as_mut_ptr(),
                    ws.len(),
                    out.as_mut_ptr(),
                    out.len()
                ),
                td_status::Ok
            );
            assert_eq!(bits(&out), bits(&c), "{kind:?} with a prebuilt scheduler");
            td_scheduler_free(sched);
        }
        assert_eq!(nsteps, steps);
        assert_eq!(rows, cfg.noise_rows(), "{kind:?}");
        assert_eq!(evals, cfg.model_evaluations(), "{kind:?}");

        // Injected noise rows: the seeded ones reproduce the seeded run; a wrong count fails.
        let n = c.len();
        let g = tinydiffusion::schedule::GaussianNoise::new(4);
        let mut z = vec![0.0f32; rows * n];
        for (k, r) in z.chunks_exact_mut(n).enumerate() {
            g.fill(k as u64 + 1, r);
        }
        let mut injected = desc;
        injected.step_noise = if rows > 0 {
            z.as_ptr()
        } else {
            std::ptr::null()
        };
        injected.step_noise_len = z.len();
        assert_eq!(bits(&c_sample(model, &injected).unwrap()), bits(&c));
        if rows > 0 {
            injected.step_noise_len = z.len() - n;
            assert_eq!(c_sample(model, &injected), Err(td_status::BadSize));
        }
    }
    // SAFETY: no other user.
    unsafe { td_model_free(model) };
}

#[test]
fn bad_sde_options_are_errors() {
    let model = load(&fixtures_dir().join("tiny-gray8"));
    let base = || {
        let mut d = td_sampler_desc_default();
        d.scheduler.kind = td_scheduler_kind::Ode as i32;
        d.scheduler.steps = 2;
        d
    };
    let mut d = base();
    d.sde.predictor = td_sde_predictor::EulerMaruyama as i32;
    assert_eq!(c_sample(model, &d), Err(td_status::InvalidArgument));
    let mut d = base();
    d.scheduler.kind = td_scheduler_kind::Sde as i32;
    d.sde.predictor = td_sde_predictor::OdeHeun as i32;
    assert_eq!(c_sample(model, &d), Err(td_status::InvalidArgument));
    let mut d = base();
    d.sde.predictor = 7;
    assert_eq!(c_sample(model, &d), Err(td_status::InvalidArgument));
    let mut d = base();
    d.sde.t_eps = 0.0;
    assert_eq!(c_sample(model, &d), Err(td_status::InvalidArgument));
    let mut d = base();
    d.sde.snr = f64::NAN;
    assert_eq!(c_sample(model, &d), Err(td_status::InvalidArgument));
    let mut d = base();
    d.sde.flags = 2;
    assert_eq!(c_sample(model, &d), Err(td_status::InvalidArgument));
    let mut d = base();
    d.scheduler.kind = 99; // 6..=8 are the sigma schedulers
    assert_eq!(c_sample(model, &d), Err(td_status::InvalidArgument));
    // Skipping the denoising step is one evaluation less and still samples.
    let mut d = base();
    d.sde.flags = TD_SDE_NO_DENOISE;
    assert!(c_sample(model, &d).is_ok());
    // SAFETY: NULL sde description.
    let mut sched = std::ptr::null_mut();
    let s = unsafe { td_scheduler_new_sde(model, &d.scheduler, std::ptr::null(), &mut sched) };
    assert_eq!(s, td_status::NullPointer);
    assert!(sched.is_null());
    // SAFETY: no other user.
    unsafe { td_model_free(model) };
}
