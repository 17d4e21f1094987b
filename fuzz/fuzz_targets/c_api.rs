//! The C API with arbitrary sizes, flags, NULL pointers, short, misaligned and overlapping
//! buffers, called in an arbitrary order on two tiny models (one unconditional, one
//! class-conditional) and on models made from arbitrary bytes. The harness keeps C's side of
//! the contract (every length describes memory that exists); everything else is the
//! library's to check. A panic (even one the API would catch and turn into
//! `TD_STATUS_INTERNAL`) or an out-of-bounds access is a bug.
#![no_main]

use core::ffi::c_char;
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tinydiffusion::capi::*;
use tinydiffusion_fuzz::{tiny_class_weights, tiny_weights, Bytes, TINY_CLASS_CONFIG, TINY_CONFIG};

struct Models([usize; 2]);

fn models() -> [*const td_model; 2] {
    static M: OnceLock<Models> = OnceLock::new();
    let m = M.get_or_init(|| {
        let load = |w: &'static [u8], c: &str| {
            let mut m = null_mut();
            let st = unsafe {
                td_model_from_memory(
                    w.as_ptr(),
                    w.len(),
                    c.as_ptr() as *const c_char,
                    c.len(),
                    null(),
                    0,
                    &mut m,
                )
            };
            assert_eq!(st, td_status::Ok);
            m as usize
        };
        Models([
            load(tiny_weights(), TINY_CONFIG),
            load(tiny_class_weights(), TINY_CLASS_CONFIG),
        ])
    });
    [m.0[0] as *const td_model, m.0[1] as *const td_model]
}

fn ok_or_error(st: td_status) -> td_status {
    assert_ne!(st, td_status::Internal, "a panic inside the C API");
    st
}

/// A caller buffer of f32: `len` floats that exist, possibly misaligned or NULL.
struct Buf {
    mem: Vec<u8>,
    len: usize,
    mode: u8,
}

impl Buf {
    /// At most 1 << 16 floats are ever allocated; larger lengths are passed with NULL.
    fn new(len: usize, mode: u8) -> Buf {
        let real = if len <= 1 << 16 { len } else { 0 };
        Buf {
            mem: vec![0u8; real * 4 + 8],
            len,
            mode,
        }
    }
    fn ptr(&mut self) -> *mut f32 {
        let base = self.mem.as_mut_ptr();
        let aligned = unsafe { base.add(base.align_offset(4)) };
        if self.len > 1 << 16 || self.mode % 8 == 0 {
            null_mut()
        } else if self.mode % 8 == 1 {
            unsafe { aligned.add(1) as *mut f32 } // misaligned, inside the allocation
        } else {
            aligned as *mut f32
        }
    }
}

/// A length near `needed`: exact, one short, one over, zero, or anything.
fn len_near(b: &mut Bytes, needed: usize) -> usize {
    match b.u8() % 6 {
        0 | 1 => needed,
        2 => needed.saturating_sub(1),
        3 => needed.saturating_add(1),
        4 => 0,
        _ => b.size(),
    }
}

fn desc(b: &mut Bytes) -> td_sampler_desc {
    let mut d = td_sampler_desc_default();
    d.scheduler.kind = match b.u8() % 5 {
        0 => 0,
        1 => 1,
        2 => 2,
        _ => b.u32() as i32,
    };
    d.scheduler.steps = match b.u8() % 4 {
        0 => b.size(),
        _ => (b.u8() % 12) as usize,
    };
    d.scheduler.eta = match b.u8() % 4 {
        0 => b.f64(),
        _ => (b.u8() as f64) / 100.0,
    };
    d.scheduler.flags = match b.u8() % 4 {
        0 => b.u32(),
        _ => (b.u8() % 4) as u32,
    };
    d.batch = match b.u8() % 4 {
        0 => b.size(),
        _ => (b.u8() % 4) as usize,
    };
    d.seed = b.u64();
    d.threads = match b.u8() % 4 {
        0 => b.size(),
        _ => (b.u8() % 4) as usize,
    };
    d.class_label = match b.u8() % 3 {
        0 => TD_NO_CLASS,
        1 => (b.u8() % 5) as i64 - 1,
        _ => b.i64(),
    };
    d.guidance = match b.u8() % 3 {
        0 => 0.0,
        1 => 1.5,
        _ => b.f32(),
    };
    d.null_class = match b.u8() % 3 {
        0 => TD_DEFAULT_NULL_CLASS,
        1 => (b.u8() % 5) as i64 - 1,
        _ => b.i64(),
    };
    d
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let ms = models();
    for _ in 0..8 {
        let op = b.u8();
        let model = match b.u8() % 5 {
            0 => null(),
            1 | 2 => ms[0],
            _ => ms[1],
        };
        unsafe {
            match op % 9 {
                0 => {
                    // A model from arbitrary bytes.
                    let wl = b.u16() as usize;
                    let w = b.take(wl).to_vec();
                    let cl = b.u16() as usize;
                    let c = b.take(cl).to_vec();
                    let sl = b.u16() as usize;
                    let s = b.take(sl).to_vec();
                    let flags = b.u8();
                    let p = |v: &Vec<u8>, bit: u8| {
                        if flags & bit != 0 {
                            null()
                        } else {
                            v.as_ptr()
                        }
                    };
                    let mut out = null_mut();
                    let out_ptr = if flags & 8 != 0 { null_mut() } else { &mut out };
                    let st = ok_or_error(td_model_from_memory(
                        p(&w, 1),
                        w.len(),
                        p(&c, 2) as *const c_char,
                        c.len(),
                        p(&s, 4) as *const c_char,
                        s.len(),
                        out_ptr,
                    ));
                    if st == td_status::Ok {
                        let mut info = td_model_info::default();
                        ok_or_error(td_model_get_info(out, &mut info));
                        td_model_free(out);
                    } else {
                        assert!(out.is_null());
                    }
                }
                1 => {
                    let mut info = td_model_info::default();
                    let p = if b.u8() % 4 == 0 {
                        null_mut()
                    } else {
                        &mut info
                    };
                    ok_or_error(td_model_get_info(model, p));
                }
                2 => {
                    let mut n = 0usize;
                    let p = if b.u8() % 4 == 0 { null_mut() } else { &mut n };
                    ok_or_error(td_model_workspace_len(model, b.size(), p));
                }
                3 => {
                    // One evaluation with arbitrary sizes.
                    let batch = (b.u8() % 3) as usize + 1;
                    let mut ws_needed = 0usize;
                    ok_or_error(td_model_workspace_len(ms[0], batch, &mut ws_needed));
                    let sample = 16; // 1 x 4 x 4
                    let mut ws = Buf::new(len_near(&mut b, ws_needed), b.u8());
                    let mut x = Buf::new(len_near(&mut b, batch * sample), b.u8());
                    let nt = len_near(&mut b, batch).min(64);
                    let t_val = b.f32();
                    let ts: Vec<f32> = vec![t_val; nt];
                    let nl = len_near(&mut b, batch).min(64);
                    let label = (b.u8() % 5) as i64 - 1;
                    let labels: Vec<i64> = vec![label; nl];
                    let mut out = Buf::new(len_near(&mut b, batch * sample), b.u8());
                    let same = b.u8() % 8 == 0; // out aliases the workspace
                    let ts_ptr = if b.u8() % 8 == 0 { null() } else { ts.as_ptr() };
                    let l_ptr = if b.u8() % 2 == 0 {
                        null()
                    } else {
                        labels.as_ptr()
                    };
                    let out_ptr = if same { ws.ptr() } else { out.ptr() };
                    let out_len = if same { ws.len } else { out.len };
                    ok_or_error(td_model_eval(
                        model,
                        ws.ptr(),
                        ws.len,
                        x.ptr(),
                        x.len,
                        ts_ptr,
                        nt,
                        l_ptr,
                        nl,
                        out_ptr,
                        out_len,
                    ));
                }
                4 | 5 => {
                    // Sampling, with or without a prebuilt scheduler.
                    let mut d = desc(&mut b);
                    let labels: Vec<i64> = (0..(b.u8() % 4) as usize)
                        .map(|_| (b.u8() % 5) as i64 - 1)
                        .collect();
                    if b.u8() % 2 == 0 {
                        d.class_labels = labels.as_ptr();
                        d.num_class_labels = labels.len();
                    }
                    let mut init = Buf::new(len_near(&mut b, d.batch.saturating_mul(16)), b.u8());
                    if b.u8() % 3 == 0 {
                        d.initial_noise = init.ptr();
                        d.initial_noise_len = init.len;
                    }
                    let steps_guess = d.scheduler.steps.min(1000);
                    let mut step_noise = Buf::new(
                        len_near(
                            &mut b,
                            steps_guess.saturating_mul(d.batch.saturating_mul(16)),
                        ),
                        b.u8(),
                    );
                    if b.u8() % 4 == 0 {
                        d.step_noise = step_noise.ptr();
                        d.step_noise_len = step_noise.len;
                    }
                    let mut ws_needed = 0usize;
                    let st = ok_or_error(td_sample_workspace_len(model, &d, &mut ws_needed));
                    if st != td_status::Ok {
                        ws_needed = 1000;
                    }
                    // Keep runs short: at most 24 steps of a tiny model.
                    let mut steps = 0usize;
                    let mut sched = null_mut();
                    let st = ok_or_error(td_scheduler_new(model, &d.scheduler, &mut sched));
                    if st == td_status::Ok {
                        ok_or_error(td_scheduler_num_steps(sched, &mut steps));
                        let mut t = vec![0i64; len_near(&mut b, steps).min(1 << 16)];
                        ok_or_error(td_scheduler_timesteps(sched, t.as_mut_ptr(), t.len()));
                    } else {
                        assert!(sched.is_null());
                    }
                    if steps <= 24 && d.batch <= 4 {
                        let mut ws = Buf::new(len_near(&mut b, ws_needed), b.u8());
                        let mut out =
                            Buf::new(len_near(&mut b, d.batch.saturating_mul(16)), b.u8());
                        if op % 9 == 4 {
                            ok_or_error(td_sample(model, &d, ws.ptr(), ws.len, out.ptr(), out.len));
                        } else {
                            ok_or_error(td_sample_with_scheduler(
                                model,
                                if b.u8() % 8 == 0 { null() } else { sched },
                                &d,
                                ws.ptr(),
                                ws.len,
                                out.ptr(),
                                out.len,
                            ));
                        }
                    }
                    td_scheduler_free(sched);
                }
                6 => {
                    let n = b.u8() as usize % 40;
                    let mut buf = vec![0 as c_char; n.max(1)];
                    let mut needed = 0usize;
                    let p = if b.u8() % 4 == 0 {
                        null_mut()
                    } else {
                        buf.as_mut_ptr()
                    };
                    let np = if b.u8() % 2 == 0 {
                        null_mut()
                    } else {
                        &mut needed
                    };
                    ok_or_error(td_last_error_message(p, n, np));
                }
                7 => {
                    let s = td_status_message(b.u32() as i32);
                    assert!(!s.is_null());
                    assert!(!td_version().is_null());
                }
                _ => {
                    let mut n = 0usize;
                    let d = desc(&mut b);
                    let dp = if b.u8() % 8 == 0 {
                        null()
                    } else {
                        &d as *const _
                    };
                    ok_or_error(td_sample_workspace_len(model, dp, &mut n));
                }
            }
        }
    }
});
