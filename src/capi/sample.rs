//! Schedulers and sampling: descriptions, built schedulers, the sampling calls.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::model::into_handle;
use super::pointers::{
    c_text, check_batch, check_disjoint, check_out_len, check_workspace_len, model_ref, read_desc,
    read_struct, scheduler_ref, slice, slice_mut, write_out, Span,
};
use super::{
    fail, guard, invalid, td_model, td_sampler_desc, td_scheduler, td_scheduler_desc,
    td_scheduler_kind, td_sde_desc, td_sde_predictor, td_status, Fail, KNOWN_FLAGS,
    KNOWN_SDE_FLAGS, TD_DEFAULT_NULL_CLASS, TD_NO_CLASS, TD_SCHEDULER_CLIPPED_MODEL_OUTPUT,
    TD_SCHEDULER_DDIM_NEXT_TIMESTEP, TD_SDE_NO_DENOISE,
};
use crate::sampler::{
    self, Guidance, Method, SampleOptions, Sampler, SamplerKind, SamplerSpec, TextConditioning,
};
use crate::schedule::{DdimPrevTimestep, Predictor, SchedulerConfig};

// ---------------------------------------------------------------------------------------------
// Schedulers and sampling
// ---------------------------------------------------------------------------------------------

/// The default scheduler description: the model's scheduler class, default steps, eta 0, no
/// flags. Thread-safe.
#[no_mangle]
pub extern "C" fn td_scheduler_desc_default() -> td_scheduler_desc {
    td_scheduler_desc {
        kind: td_scheduler_kind::FromConfig as i32,
        steps: 0,
        eta: 0.0,
        flags: 0,
    }
}

/// The default options of the continuous-time samplers: the kind's default predictor, 1
/// corrector step, snr 0.16, t_eps 0.001, no flags. Thread-safe.
#[no_mangle]
pub extern "C" fn td_sde_desc_default() -> td_sde_desc {
    td_sde_desc {
        predictor: td_sde_predictor::Default as i32,
        corrector_steps: 1,
        snr: 0.16,
        t_eps: 1e-3,
        flags: 0,
    }
}

/// The default sampling description: `struct_size` = `sizeof(td_sampler_desc)`,
/// `td_scheduler_desc_default()`, batch 1, seed 0, `TD_NO_CLASS` (a class-conditional model
/// then samples its default labels), no guidance (`null_class` = `TD_DEFAULT_NULL_CLASS`), no
/// injected noise, `td_sde_desc_default()`, threads 0 (the model's). Thread-safe.
#[no_mangle]
pub extern "C" fn td_sampler_desc_default() -> td_sampler_desc {
    td_sampler_desc {
        struct_size: core::mem::size_of::<td_sampler_desc>(),
        scheduler: td_scheduler_desc_default(),
        batch: 1,
        seed: 0,
        class_label: TD_NO_CLASS,
        class_labels: core::ptr::null(),
        num_class_labels: 0,
        guidance: 0.0,
        null_class: TD_DEFAULT_NULL_CLASS,
        initial_noise: core::ptr::null(),
        initial_noise_len: 0,
        step_noise: core::ptr::null(),
        step_noise_len: 0,
        sde: td_sde_desc_default(),
        threads: 0,
        scheduler_class: core::ptr::null(),
        scheduler_config_json: core::ptr::null(),
        prompt: core::ptr::null(),
        negative_prompt: core::ptr::null(),
        guidance_scale: 7.5,
    }
}

/// The front-end spec a description asks for: the C integers and flags checked and
/// translated; [`Sampler::new`] checks the values and applies the defaults. The options of the
/// other family are not read (`sde` for DDPM/DDIM; `eta` and `flags` for the SDE kinds).
fn spec_of(d: &td_scheduler_desc, sde: &td_sde_desc) -> Result<SamplerSpec, Fail> {
    spec_of_kind(SamplerSpec::new(kind_of(d)?), d, sde)
}

/// The sampler kind of `d.kind` (`None`: the config's class).
fn kind_of(d: &td_scheduler_desc) -> Result<Option<SamplerKind>, Fail> {
    Ok(match d.kind {
        k if k == td_scheduler_kind::FromConfig as i32 => None,
        k if k == td_scheduler_kind::Ddpm as i32 => Some(SamplerKind::Ddpm),
        k if k == td_scheduler_kind::Ddim as i32 => Some(SamplerKind::Ddim),
        k if k == td_scheduler_kind::Sde as i32 => Some(SamplerKind::Sde),
        k if k == td_scheduler_kind::Ode as i32 => Some(SamplerKind::Ode),
        k if k == td_scheduler_kind::Pc as i32 => Some(SamplerKind::Pc),
        k if k == td_scheduler_kind::Euler as i32 => Some(SamplerKind::Euler),
        k if k == td_scheduler_kind::EulerAncestral as i32 => Some(SamplerKind::EulerAncestral),
        k if k == td_scheduler_kind::DpmSolverMultistep as i32 => {
            Some(SamplerKind::DpmSolverMultistep)
        }
        k if k == td_scheduler_kind::Heun as i32 => Some(SamplerKind::Heun),
        k if k == td_scheduler_kind::UniPcMultistep as i32 => Some(SamplerKind::UniPcMultistep),
        k if k == td_scheduler_kind::Pndm as i32 => Some(SamplerKind::Pndm),
        k if k == td_scheduler_kind::Lms as i32 => Some(SamplerKind::Lms),
        k if k == td_scheduler_kind::DpmSolverSinglestep as i32 => {
            Some(SamplerKind::DpmSolverSinglestep)
        }
        k if k == td_scheduler_kind::Kdpm2 as i32 => Some(SamplerKind::Kdpm2),
        k if k == td_scheduler_kind::Kdpm2Ancestral as i32 => Some(SamplerKind::Kdpm2Ancestral),
        k if k == td_scheduler_kind::DeisMultistep as i32 => Some(SamplerKind::DeisMultistep),
        k if k == td_scheduler_kind::Ipndm as i32 => Some(SamplerKind::Ipndm),
        k if k == td_scheduler_kind::ScoreSdeVe as i32 => Some(SamplerKind::ScoreSdeVe),
        k if k == td_scheduler_kind::Consistency as i32 => Some(SamplerKind::Consistency),
        k if k == td_scheduler_kind::Lcm as i32 => Some(SamplerKind::Lcm),
        k if k == td_scheduler_kind::Tcd as i32 => Some(SamplerKind::Tcd),
        k => {
            return Err(invalid(std::format!(
                "scheduler kind {k} is not a td_scheduler_kind"
            )))
        }
    })
}

/// [`spec_of`] for the kind (and name aliases) of `named`.
fn spec_of_kind(
    named: SamplerSpec,
    d: &td_scheduler_desc,
    sde: &td_sde_desc,
) -> Result<SamplerSpec, Fail> {
    let kind = named.kind;
    let spec = SamplerSpec {
        steps: (d.steps != 0).then_some(d.steps),
        ..named
    };
    if kind.is_some_and(SamplerKind::is_continuous) {
        let predictor = match sde.predictor {
            p if p == td_sde_predictor::Default as i32 => None,
            p if p == td_sde_predictor::EulerMaruyama as i32 => Some(Predictor::EulerMaruyama),
            p if p == td_sde_predictor::OdeEuler as i32 => Some(Predictor::OdeEuler),
            p if p == td_sde_predictor::OdeHeun as i32 => Some(Predictor::OdeHeun),
            p => {
                return Err(invalid(std::format!(
                    "sde.predictor {p} is not a td_sde_predictor"
                )))
            }
        };
        if sde.flags & !KNOWN_SDE_FLAGS != 0 {
            return Err(invalid(std::format!(
                "unknown sde flags {:#x}",
                sde.flags & !KNOWN_SDE_FLAGS
            )));
        }
        Ok(SamplerSpec {
            predictor,
            corrector_steps: Some(sde.corrector_steps),
            snr: Some(sde.snr),
            t_eps: Some(sde.t_eps),
            denoise: Some(sde.flags & TD_SDE_NO_DENOISE == 0),
            ..spec
        })
    } else {
        if d.flags & !KNOWN_FLAGS != 0 {
            return Err(invalid(std::format!(
                "unknown scheduler flags {:#x}",
                d.flags & !KNOWN_FLAGS
            )));
        }
        Ok(SamplerSpec {
            eta: Some(d.eta),
            ddim_prev_timestep: (d.flags & TD_SCHEDULER_DDIM_NEXT_TIMESTEP != 0)
                .then_some(DdimPrevTimestep::NextInSchedule),
            use_clipped_model_output: (d.flags & TD_SCHEDULER_CLIPPED_MODEL_OUTPUT != 0)
                .then_some(true),
            ..spec
        })
    }
}

/// The sampler a whole sampling description asks for: `scheduler_config_json` (or the
/// model's config), `scheduler_class` (or `scheduler.kind`), and the options.
///
/// # Safety
/// `d.scheduler_class` and `d.scheduler_config_json` are NULL or NUL-terminated strings.
unsafe fn build_for(m: &td_model, d: &td_sampler_desc) -> Result<Sampler, Fail> {
    let json_config = if d.scheduler_config_json.is_null() {
        None
    } else {
        // SAFETY: non-NULL and NUL-terminated per the contract.
        let text = unsafe { c_text(d.scheduler_config_json, "scheduler_config_json") }?;
        Some(SchedulerConfig::from_json(text)?)
    };
    let base = json_config.as_ref().unwrap_or(&m.scheduler_config);
    if d.scheduler_class.is_null() {
        return build(base, &d.scheduler, &d.sde);
    }
    if d.scheduler.kind != td_scheduler_kind::FromConfig as i32 {
        return Err(invalid(
            "scheduler_class is set: scheduler.kind must be TD_SCHEDULER_KIND_FROM_CONFIG",
        ));
    }
    // SAFETY: non-NULL and NUL-terminated per the contract.
    let name = unsafe { c_text(d.scheduler_class, "scheduler_class") }?;
    let named = SamplerSpec::named(name).ok_or_else(|| {
        invalid(std::format!(
            "scheduler_class '{name}' is not a scheduler class or name this library runs"
        ))
    })?;
    Ok(Sampler::new(
        &spec_of_kind(named, &d.scheduler, &d.sde)?,
        base,
    )?)
}

/// The sampler (discrete or continuous-time) a description asks for.
fn build(
    base: &SchedulerConfig,
    d: &td_scheduler_desc,
    sde: &td_sde_desc,
) -> Result<Sampler, Fail> {
    Ok(Sampler::new(&spec_of(d, sde)?, base)?)
}

/// Builds a scheduler for `model` (its schedule tables are allocated here, once), for
/// `td_sample_with_scheduler`. On failure `*out_scheduler` is set to NULL when
/// `out_scheduler` is not NULL. Errors: `TD_STATUS_INVALID_ARGUMENT` (kind, flags, eta,
/// steps), `_NULL_POINTER`. Thread-safe.
///
/// # Safety
/// `model` is NULL or a live model; `desc` NULL or readable; `out_scheduler` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_scheduler_new(
    model: *const td_model,
    desc: *const td_scheduler_desc,
    out_scheduler: *mut *mut td_scheduler,
) -> td_status {
    guard(|| {
        // SAFETY: contract above, for each of the three pointers.
        unsafe { write_out(out_scheduler, core::ptr::null_mut(), "out_scheduler") }?;
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: contract above.
        let d = unsafe { read_struct(desc, "desc") }?;
        let handle = into_handle(td_scheduler {
            sampler: build(&m.scheduler_config, &d, &td_sde_desc_default())?,
        });
        // SAFETY: checked by `write_out` above.
        unsafe { out_scheduler.write(handle) };
        Ok(())
    })
}

/// As `td_scheduler_new`, with the options `sde` of the continuous-time kinds
/// (`TD_SCHEDULER_KIND_SDE`, `_ODE`, `_PC`; `td_scheduler_new` uses `td_sde_desc_default()`).
/// Thread-safe.
///
/// # Safety
/// As `td_scheduler_new`; `sde` NULL or readable.
#[no_mangle]
pub unsafe extern "C" fn td_scheduler_new_sde(
    model: *const td_model,
    desc: *const td_scheduler_desc,
    sde: *const td_sde_desc,
    out_scheduler: *mut *mut td_scheduler,
) -> td_status {
    guard(|| {
        // SAFETY: contract above, for each of the four pointers.
        unsafe { write_out(out_scheduler, core::ptr::null_mut(), "out_scheduler") }?;
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: contract above.
        let d = unsafe { read_struct(desc, "desc") }?;
        // SAFETY: contract above.
        let sde = unsafe { read_struct(sde, "sde") }?;
        let handle = into_handle(td_scheduler {
            sampler: build(&m.scheduler_config, &d, &sde)?,
        });
        // SAFETY: checked by `write_out` above.
        unsafe { out_scheduler.write(handle) };
        Ok(())
    })
}

/// Frees a scheduler (NULL is ignored). No other thread may be using it.
///
/// # Safety
/// `scheduler` is NULL or a scheduler not yet freed.
#[no_mangle]
pub unsafe extern "C" fn td_scheduler_free(scheduler: *mut td_scheduler) {
    if scheduler.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: a pointer from `Box::into_raw` in `td_scheduler_new`, freed once.
        drop(unsafe { Box::from_raw(scheduler) });
    }));
}

/// `*out_steps` = the number of steps of a run (the rows of `step_noise`). Thread-safe.
///
/// # Safety
/// `scheduler` is NULL or live; `out_steps` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_scheduler_num_steps(
    scheduler: *const td_scheduler,
    out_steps: *mut usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let s = unsafe { scheduler_ref(scheduler) }?;
        // SAFETY: contract above.
        unsafe { write_out(out_steps, s.sampler.method().num_steps(), "out_steps") }
    })
}

/// `*out_rows` = the rows of `td_sampler_desc.step_noise` a run reads: the number of steps
/// for DDPM and DDIM, the number of Gaussian draws for the SDE kinds (0 for `_ODE`).
/// Thread-safe.
///
/// # Safety
/// `scheduler` is NULL or live; `out_rows` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_scheduler_noise_rows(
    scheduler: *const td_scheduler,
    out_rows: *mut usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let s = unsafe { scheduler_ref(scheduler) }?;
        // SAFETY: contract above.
        unsafe { write_out(out_rows, s.sampler.method().noise_rows(), "out_rows") }
    })
}

/// `*out_evals` = the model evaluations of a run without guidance (twice as many with it):
/// one per step for DDPM and DDIM; for the SDE kinds steps * (predictor evaluations +
/// corrector steps) + 1 for the final denoising step. Thread-safe.
///
/// # Safety
/// `scheduler` is NULL or live; `out_evals` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn td_scheduler_model_evaluations(
    scheduler: *const td_scheduler,
    out_evals: *mut usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let s = unsafe { scheduler_ref(scheduler) }?;
        let n = s.sampler.method().model_evaluations();
        // SAFETY: contract above.
        unsafe { write_out(out_evals, n, "out_evals") }
    })
}

/// Copies the run's timesteps, first (noisiest) to last, into `out` (`len` >= the number of
/// steps, else `TD_STATUS_BUFFER_TOO_SMALL`). For the SDE kinds: the model timestep
/// t (T - 1) where each step starts, rounded (the model is evaluated at the fractional
/// value). Thread-safe.
///
/// # Safety
/// `scheduler` is NULL or live; `out` NULL or `len` writable int64s.
#[no_mangle]
pub unsafe extern "C" fn td_scheduler_timesteps(
    scheduler: *const td_scheduler,
    out: *mut i64,
    len: usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let s = unsafe { scheduler_ref(scheduler) }?;
        let span = Span::of(out as *const i64, len, "out")?;
        let t = s.sampler.timesteps();
        if len < t.len() {
            return Err(fail(
                td_status::BufferTooSmall,
                std::format!("out: {len} entries, {} needed", t.len()),
            ));
        }
        // SAFETY: checked span, writable per the contract; the timesteps are the scheduler's
        // own allocation, which a caller cannot reach, so they do not overlap.
        let dst: &mut [i64] = unsafe { slice_mut(span) };
        dst[..t.len()].copy_from_slice(t);
        Ok(())
    })
}

/// `*out_floats` = the exact number of floats of workspace `td_sample` needs for this
/// description. It depends on the model, `batch`, whether `guidance` is non-zero, the model's
/// scheduler config, and `threads`: with `desc->threads` = N >= 1 it is the size for N
/// threads, the same on every machine (of the architecture) and under any CPU affinity, and
/// the run uses at most N threads; with 0 (the default) it is the size for the model's
/// thread count, which depends on the machine (see `td_sampler_desc.threads`). The same size
/// serves `td_sample_with_scheduler` with a scheduler made for the same model.
///
/// The description is checked in full first, as `td_sample` checks it (an invalid one gives
/// its error here, never a size). Thread-safe.
///
/// # Safety
/// `model` is NULL or live; `desc` NULL or readable, its pointers as documented on
/// `td_sampler_desc` (`class_labels` is read, to check the labels); `out_floats` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn td_sample_workspace_len(
    model: *const td_model,
    desc: *const td_sampler_desc,
    out_floats: *mut usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: contract above.
        let d = unsafe { read_desc(desc) }?;
        // SAFETY: contract above (the description's strings).
        let sampler = unsafe { build_for(m, &d) }?;
        // SAFETY: contract above (the description's pointers).
        let checked = unsafe { check_desc(m, sampler.method(), &d) }?;
        let n = sampler.workspace_len_for_threads(&m.model, d.batch, checked.guided(), d.threads);
        // SAFETY: contract above.
        unsafe { write_out(out_floats, n, "out_floats") }
    })
}

/// The most threads a description may ask for (as `Model::set_threads`).
const MAX_THREADS: usize = 1024;

/// A description's buffers and guidance, checked against the model and the method.
struct CheckedDesc {
    labels: Option<Span>,
    initial_noise: Option<Span>,
    step_noise: Option<Span>,
    guidance: Option<Guidance>,
    text: Option<TextIds>,
}

/// A text pipeline's ids: prompt, negative prompt (guided), guidance scale.
type TextIds = (Vec<u32>, Option<Vec<u32>>, f32);

impl CheckedDesc {
    /// Whether the run evaluates an unconditional branch (class or text guidance).
    fn guided(&self) -> bool {
        self.guidance.is_some() || self.text.as_ref().is_some_and(|t| t.2 > 1.0)
    }
}

/// A description's prompt against the model: ids for a text pipeline, nothing otherwise.
///
/// # Safety
/// `d.prompt` and `d.negative_prompt` are NULL or NUL-terminated strings.
unsafe fn text_ids(m: &td_model, d: &td_sampler_desc) -> Result<Option<TextIds>, Fail> {
    // The tokenizer `td_model_load` read with a text-to-image pipeline folder.
    let Some(tokenizer) = m.model.tokenizer() else {
        if !d.prompt.is_null() || !d.negative_prompt.is_null() {
            return Err(invalid(
                "desc.prompt: the model is not a text-to-image pipeline (load its folder with \
                 td_model_load)",
            ));
        }
        return Ok(None);
    };
    // SAFETY: NULL-checked by c_text; NUL-terminated per the contract.
    let prompt = unsafe { c_text(d.prompt, "desc.prompt") }?;
    if !d.guidance_scale.is_finite() {
        return Err(invalid(std::format!(
            "desc.guidance_scale: {} is not finite",
            d.guidance_scale
        )));
    }
    let negative = if d.guidance_scale > 1.0 {
        let text = if d.negative_prompt.is_null() {
            ""
        } else {
            // SAFETY: as above.
            unsafe { c_text(d.negative_prompt, "desc.negative_prompt") }?
        };
        Some(tokenizer.encode(text))
    } else {
        None
    };
    Ok(Some((tokenizer.encode(prompt), negative, d.guidance_scale)))
}

/// Every check of a description that does not involve the workspace or the output, shared by
/// `td_sample_workspace_len` and the sampling calls so that both fail the same way, before
/// any size is computed.
///
/// # Safety
/// The pointers of `d` follow the contract of `td_sampler_desc` (`class_labels` is read).
unsafe fn check_desc(
    m: &td_model,
    method: Method<'_>,
    d: &td_sampler_desc,
) -> Result<CheckedDesc, Fail> {
    let model = &m.model;
    let batch = d.batch;
    check_batch(model, batch)?;
    if d.threads > MAX_THREADS {
        return Err(invalid(std::format!(
            "desc.threads: {} is more than {MAX_THREADS}",
            d.threads
        )));
    }
    let labels_span = Span::optional(d.class_labels, d.num_class_labels, "desc.class_labels")?;
    let init_span = Span::optional(d.initial_noise, d.initial_noise_len, "desc.initial_noise")?;
    let noise_span = Span::optional(d.step_noise, d.step_noise_len, "desc.step_noise")?;
    let (c, h, w) = model.input_shape();
    let n = batch * c * h * w;
    if init_span.is_some() && d.initial_noise_len != n {
        return Err(fail(
            td_status::BadSize,
            std::format!(
                "desc.initial_noise: {} floats, expected batch*C*H*W = {n}",
                d.initial_noise_len
            ),
        ));
    }
    let steps = method.noise_rows();
    let draws = method.noise_draws();
    if noise_span.is_some()
        && steps.checked_mul(n) != Some(d.step_noise_len)
        && draws.checked_mul(n) != Some(d.step_noise_len)
    {
        return Err(fail(
            td_status::BadSize,
            std::format!(
                "desc.step_noise: {} floats, expected steps*batch*C*H*W = {steps}*{n}",
                d.step_noise_len
            ),
        ));
    }
    let conditional = model.config.num_class_embeds.is_some();
    if let Some(span) = labels_span {
        if d.num_class_labels != batch && d.num_class_labels != 1 {
            return Err(fail(
                td_status::BadSize,
                std::format!(
                    "desc.class_labels: {} labels, expected batch ({batch}) or 1",
                    d.num_class_labels
                ),
            ));
        }
        if !conditional {
            return Err(invalid(
                "desc.class_labels: the model is not class-conditional",
            ));
        }
        // SAFETY: checked span (NULL, alignment, size); readable per the contract.
        let labels: &[i64] = unsafe { slice(span) };
        for &l in labels {
            model.check_class_label(l)?;
        }
    } else if d.class_label != TD_NO_CLASS {
        if !conditional {
            return Err(invalid(
                "desc.class_label: the model is not class-conditional (use TD_NO_CLASS)",
            ));
        }
        model.check_class_label(d.class_label)?;
    }
    let guidance = if d.guidance != 0.0 {
        if !d.guidance.is_finite() {
            return Err(invalid(std::format!(
                "desc.guidance: {} is not finite",
                d.guidance
            )));
        }
        let mut g = Guidance::new(model, d.guidance)?;
        if d.null_class != TD_DEFAULT_NULL_CLASS {
            model.check_class_label(d.null_class)?;
            g.null_class = d.null_class;
        }
        Some(g)
    } else {
        None
    };
    // SAFETY: the description's strings per the contract.
    let text = unsafe { text_ids(m, d) }?;
    Ok(CheckedDesc {
        labels: labels_span,
        initial_noise: init_span,
        step_noise: noise_span,
        guidance,
        text,
    })
}

/// The body of both sampling functions. Allocates nothing.
///
/// # Safety
/// The pointers of `d` and `workspace` / `out` follow the contract of `td_sample`.
unsafe fn run_sample(
    m: &td_model,
    method: Method<'_>,
    d: &td_sampler_desc,
    workspace: *mut f32,
    workspace_len: usize,
    out: *mut f32,
    out_len: usize,
) -> Result<(), Fail> {
    let model = &m.model;
    // SAFETY: forwarded contract.
    let checked = unsafe { check_desc(m, method, d) }?;
    let ws_span = Span::of(workspace as *const f32, workspace_len, "workspace")?;
    let out_span = Span::of(out as *const f32, out_len, "out")?;
    // A latent pipeline's output is the decoded image (td_model_info.image_len per image).
    let (ic, ih, iw) = model.image_shape();
    check_out_len("out", out_len, d.batch * ic * ih * iw)?;
    let guidance = checked.guidance;
    check_workspace_len(
        workspace_len,
        sampler::workspace_len_for_threads(model, method, d.batch, checked.guided(), d.threads),
    )?;
    let weights = m
        .borrowed
        .map_or(Span::EMPTY, |(addr, bytes)| Span { addr, bytes });
    let opt = |s: Option<Span>| s.unwrap_or(Span::EMPTY);
    check_disjoint(
        &[(ws_span, "workspace"), (out_span, "out")],
        &[
            (opt(checked.labels), "desc.class_labels"),
            (opt(checked.initial_noise), "desc.initial_noise"),
            (opt(checked.step_noise), "desc.step_noise"),
            (weights, "the model's weights"),
        ],
    )?;
    // SAFETY: every span was checked (NULL, alignment, size) above, the written ones are
    // disjoint from each other and from everything read; validity for the call is the
    // caller's contract.
    let (ws, out) = unsafe { (slice_mut::<f32>(ws_span), slice_mut::<f32>(out_span)) };
    let one_label = [d.class_label];
    // No label at all on a class-conditional model: `None`, and the sampling loop takes the
    // front end's default labels (`sampler::default_class_label`), as the `sample` tool does.
    let labels: Option<&[i64]> = match checked.labels {
        // SAFETY: as above.
        Some(s) => Some(unsafe { slice(s) }),
        None if d.class_label != TD_NO_CLASS => Some(&one_label),
        None => None,
    };
    // SAFETY: as above.
    let initial_noise = checked.initial_noise.map(|s| unsafe { slice::<f32>(s) });
    // SAFETY: as above.
    let step_noise = checked.step_noise.map(|s| unsafe { slice::<f32>(s) });
    let opts = SampleOptions {
        batch: d.batch,
        seed: d.seed,
        initial_noise,
        step_noise,
        class_labels: labels,
        guidance,
        text: checked.text.as_ref().map(|t| TextConditioning {
            prompt_ids: &t.0,
            negative_ids: t.1.as_deref(),
            guidance_scale: t.2,
        }),
        threads: d.threads,
    };
    sampler::sample_with(model, method, ws, &opts, out, None)?;
    Ok(())
}

/// Samples a batch: `out` (exactly `[batch, C, H, W]` floats, NCHW, roughly in [-1, 1])
/// receives x_0; for a latent pipeline (a folder with a VQModel or AutoencoderKL decoder) the
/// decoded image, `batch * td_model_info.image_len` floats, before diffusers maps it to
/// [0, 1] (the latents never leave the workspace). The scheduler is built from `desc->scheduler` for this call (its tables are
/// the only allocation; use `td_scheduler_new` + `td_sample_with_scheduler` to sample with
/// none). `workspace`: at least `td_sample_workspace_len` floats for the same description
/// (the same `threads` included), scratch. A class-conditional model given no label samples
/// the default labels (see `td_sampler_desc.class_label`).
///
/// Checks, in this order: `model` and `desc`; the whole description (exactly as
/// `td_sample_workspace_len`); then `workspace` and `out` (NULL, alignment, `out_len`,
/// `workspace_len` against the size, overlaps). So an invalid description gives its own
/// error whatever buffers are passed.
///
/// Thread-safe for one model as long as each thread has its own workspace and output;
/// `workspace` and `out` must not overlap each other, the noise or label arrays, or the
/// model's weights.
///
/// # Safety
/// `model` is NULL or live; `desc` NULL or readable, and its pointers as documented on
/// `td_sampler_desc`; `workspace` / `out` NULL or their lengths in writable floats; nothing is
/// modified by other threads during the call.
#[no_mangle]
pub unsafe extern "C" fn td_sample(
    model: *const td_model,
    desc: *const td_sampler_desc,
    workspace: *mut f32,
    workspace_len: usize,
    out: *mut f32,
    out_len: usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: contract above.
        let d = unsafe { read_desc(desc) }?;
        // SAFETY: contract above (the description's strings).
        let sampler = unsafe { build_for(m, &d) }?;
        // SAFETY: contract above.
        unsafe {
            run_sample(
                m,
                sampler.method(),
                &d,
                workspace,
                workspace_len,
                out,
                out_len,
            )
        }
    })
}

/// As `td_sample`, with a scheduler from `td_scheduler_new` (`desc->scheduler` is ignored).
/// Allocates nothing. One scheduler may serve several threads at once.
///
/// # Safety
/// As `td_sample`; `scheduler` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn td_sample_with_scheduler(
    model: *const td_model,
    scheduler: *const td_scheduler,
    desc: *const td_sampler_desc,
    workspace: *mut f32,
    workspace_len: usize,
    out: *mut f32,
    out_len: usize,
) -> td_status {
    guard(|| {
        // SAFETY: contract above.
        let m = unsafe { model_ref(model) }?;
        // SAFETY: contract above.
        let s = unsafe { scheduler_ref(scheduler) }?;
        // SAFETY: contract above.
        let d = unsafe { read_desc(desc) }?;
        // SAFETY: contract above.
        unsafe {
            run_sample(
                m,
                s.sampler.method(),
                &d,
                workspace,
                workspace_len,
                out,
                out_len,
            )
        }
    })
}
