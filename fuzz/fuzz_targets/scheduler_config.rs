//! `scheduler_config.json` on untrusted text, then the schedule for an arbitrary step count
//! (betas, alpha-bars, timestep spacing) and every step of it on a tiny sample with
//! arbitrary flags and eta. Any panic is a bug; a config or step count that is rejected must
//! be rejected with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinydiffusion::schedule::{
    DdimPrevTimestep, Scheduler, SchedulerConfig, SchedulerKind, SigmaScheduler, StepShape,
};
use tinydiffusion_fuzz::Bytes;

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let steps = b.u16() as usize;
    let flags = b.u8();
    let eta = b.u8() as f64 / 64.0; // 0 ..= ~4
    let Ok(text) = std::str::from_utf8(b.rest()) else {
        return;
    };
    let Ok(mut cfg) = SchedulerConfig::from_json(text) else {
        return;
    };
    match flags & 3 {
        1 => match cfg.with_kind(SchedulerKind::Ddpm) {
            Ok(c) => cfg = c,
            Err(_) => return,
        },
        2 => match cfg.with_kind(SchedulerKind::Ddim) {
            Ok(c) => cfg = c,
            Err(_) => return,
        },
        _ => {}
    }
    if flags & 4 != 0 {
        cfg.ddim_prev_timestep = DdimPrevTimestep::NextInSchedule;
    }
    cfg.use_clipped_model_output = flags & 8 != 0;
    if cfg.kind.is_sigma() {
        sigma_run(cfg, steps);
        return;
    }
    let learned = cfg.variance_type.is_learned();
    let Ok(mut s) = Scheduler::new(cfg, steps) else {
        return;
    };
    s.set_eta(eta);
    let t_max = s.config().num_train_timesteps as i64;
    assert_eq!(s.timesteps().len(), s.num_steps());
    assert!(s.timesteps().iter().all(|&t| (0..t_max).contains(&t)));
    // Step a 1x1x2x2 sample through the whole schedule (at most T steps of 4 elements).
    let shape = StepShape::new(1, 1, 2, 2);
    let c_out = if learned { 2 } else { 1 };
    let eps: Vec<f32> = (0..4 * c_out).map(|i| i as f32 * 0.25 - 0.5).collect();
    let mut x = vec![0.3f32, -0.7, 1.5, -2.0];
    let noise = [0.1f32, -0.2, 0.3, -0.4];
    let mut x0 = [0.0f32; 4];
    let mut scratch = vec![0.0f32; s.scratch_len(shape)];
    for i in 0..s.num_steps() {
        let z = s.needs_noise(i).then_some(&noise[..]);
        s.step(i, shape, &eps, &mut x, z, Some(&mut x0), &mut scratch)
            .expect("a valid step");
    }
    let mut noisy = [0.0f32; 4];
    let t = [s.timesteps()[0]];
    s.add_noise(&x0, &noise, &t, &mut noisy).expect("add_noise");
});

/// The sigma-family classes (Euler ... DEIS, with their sigma ramps, SDE variants and
/// thresholding): the schedule, then every step on a 1x1x2x2 sample with the history buffer
/// the scheduler asks for.
fn sigma_run(cfg: SchedulerConfig, steps: usize) {
    let Ok(s) = SigmaScheduler::new(cfg, steps) else {
        return;
    };
    // PNDM and IPNDM step on alpha-bars / their own angles: no sigma ramp.
    let no_sigmas = matches!(s.config().kind, SchedulerKind::Pndm | SchedulerKind::Ipndm);
    if no_sigmas {
        assert!(s.sigmas().is_empty());
    } else {
        assert_eq!(s.sigmas().len(), s.num_steps() + 1);
    }
    let shape = StepShape::new(1, 1, 2, 2);
    let eps = [-0.5f32, 0.25, 1.75, -3.0];
    let mut x = [0.3f32, -0.7, 1.5, -2.0];
    let noise = [0.1f32, -0.2, 0.3, -0.4];
    let mut history = vec![0.0f32; s.history_len(shape)];
    for i in 0..s.num_steps() {
        let z = s.needs_noise(i).then_some(&noise[..]);
        s.step(i, shape, &eps, &mut x, z, &mut history)
            .expect("a valid step");
    }
}
