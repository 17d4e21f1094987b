//! The device workspace of one batch size: the activation arena and the sampler's buffers,
//! allocated once and reused.

use std::vec::Vec;

use super::backend::Inner;
use super::device::{cu, DevBuf};
use super::sample::{GraphKey, StepGraph};
use crate::error::Result;
use crate::model::Model;

/// The device workspace of one batch size.
pub(super) struct Session {
    pub(super) batch: usize,
    pub(super) steps_cap: usize,
    pub(super) _mem: DevBuf,
    pub(super) arena: u64,
    pub(super) x: u64,
    pub(super) eps: u64,
    pub(super) eps_uncond: u64,
    pub(super) noise: u64,
    pub(super) ts: u64,
    pub(super) coef: u64,
    pub(super) labels: u64,
    pub(super) null_label: u64,
    pub(super) step: u64,
    pub(super) seed: u64,
    pub(super) host_labels: Vec<i32>,
    pub(super) host_ts: Vec<f32>,
    pub(super) host_coef: Vec<f64>,
    pub(super) graph: Option<(GraphKey, StepGraph)>,
}

/// (offsets, total bytes) of a session's buffers: arena, x, eps, eps_uncond, noise, ts, coef,
/// labels, null_label, step, seed; each 256-byte aligned.
pub(super) fn session_layout(model: &Model, batch: usize, steps: usize) -> ([usize; 11], usize) {
    let (c, h, w) = model.input_shape();
    let (c_out, _, _) = model.output_shape();
    let (n, n_out) = (batch * c * h * w, batch * c_out * h * w);
    let sizes = [
        model.plan.arena_len(batch) * 2,
        n * 4,
        n_out * 4,
        n_out * 4,
        n * 4,
        batch.max(steps) * 4,
        steps.max(1) * 8 * 8,
        batch * 4,
        4,
        4,
        8,
    ];
    let mut offs = [0usize; 11];
    let mut at = 0;
    for (o, s) in offs.iter_mut().zip(sizes) {
        *o = at;
        at += s.div_ceil(256) * 256;
    }
    (offs, at)
}

impl Inner {
    /// Makes sure the session fits `batch` exactly and at least `steps` steps; a new one is
    /// allocated (the old one freed) only when it does not.
    pub(super) fn ensure_session(
        &mut self,
        model: &Model,
        batch: usize,
        steps: usize,
    ) -> Result<()> {
        if let Some(s) = &self.session {
            if s.batch == batch && s.steps_cap >= steps {
                return Ok(());
            }
        }
        let steps_cap = steps.max(self.session.as_ref().map_or(0, |s| s.steps_cap));
        cu(self.stream.synchronize(), "synchronize")?;
        self.session = None;
        let (offs, total) = session_layout(model, batch, steps_cap);
        let mem = DevBuf::new(&self.ctx, total)?;
        let p = |i: usize| mem.ptr + offs[i] as u64;
        let session = Session {
            batch,
            steps_cap,
            arena: p(0),
            x: p(1),
            eps: p(2),
            eps_uncond: p(3),
            noise: p(4),
            ts: p(5),
            coef: p(6),
            labels: p(7),
            null_label: p(8),
            step: p(9),
            seed: p(10),
            host_labels: Vec::with_capacity(batch),
            host_ts: Vec::with_capacity(batch.max(steps_cap)),
            host_coef: Vec::with_capacity(8 * steps_cap),
            graph: None,
            _mem: mem,
        };
        self.session = Some(session);
        Ok(())
    }
}
