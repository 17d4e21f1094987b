//! The kernel table of a SIMD path, and its FMA throughput probe.

use super::Simd;

/// `iters` rounds of 24 independent vector FMAs (enough to fill two FMA pipes); returns a
/// value depending on all of them so nothing is optimised away. Peak-throughput probe.
///
/// # Safety
/// CPU features of `S` only (register arithmetic).
#[inline(always)]
pub(crate) unsafe fn fma_loop<S: Simd>(iters: usize) -> f32 {
    // SAFETY: the caller runs with S's features.
    unsafe {
        let mut acc = [S::zero(); 24];
        for (i, a) in acc.iter_mut().enumerate() {
            *a = S::splat(i as f32 * 1e-3);
        }
        let (x, y) = (S::splat(0.999_999), S::splat(1e-7));
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = S::fma(*a, x, y);
            }
        }
        let mut t = S::zero();
        for a in acc {
            t = S::add(t, a);
        }
        S::hsum(t)
    }
}

/// Generates a path's kernel table from its [`Simd`] type: entry points (plain Rust, checking
/// arguments and splitting tasks) and per-task functions compiled with the path's features.
#[allow(unused_macros)] // no SIMD path on some targets (thumbv7em)
macro_rules! simd_table {
    ($table:ident, $peak:ident, $name:literal, $path:expr, $S:ty, $mr:literal, $mrs:literal, $nv:literal, $features:literal) => {
        /// FMA throughput probe: (flops done, result).
        pub(crate) fn $peak(iters: usize) -> (f64, f32) {
            ///
            /// # Safety
            /// the CPU has `$features` (the table is only handed out by `KernelPath::table` after detection).
            #[target_feature(enable = $features)]
            unsafe fn run(iters: usize) -> f32 {
                // SAFETY: forwarded contract.
                unsafe { $crate::kernels::simd::fma_loop::<$S>(iters) }
            }
            assert!($path.is_available());
            // SAFETY: the features were checked just above.
            let r = unsafe { run(iters) };
            (
                (iters * 24 * 2 * <$S as $crate::kernels::simd::Simd>::LANES) as f64,
                r,
            )
        }

        pub(crate) static $table: $crate::kernels::KernelTable = {
            use $crate::kernels::simd::{self, ConvPlan, Shared};
            use $crate::kernels::winograd::{self, WinogradPlan};
            use $crate::kernels::{
                AttentionArgs, ConvArgs, ConvShape, Exec, GroupNormArgs, LinearArgs,
            };

            ///
            /// # Safety
            /// the CPU has `$features`; as [`simd::conv_task`].
            #[target_feature(enable = $features)]
            unsafe fn conv_task(p: &ConvPlan<'_>, task: usize, scratch: &mut [f32]) {
                // SAFETY: forwarded contract (features enabled, plan checked).
                unsafe { simd::conv_task::<$S, $mr, $mrs, $nv>(p, task, scratch) }
            }
            ///
            /// # Safety
            /// the CPU has `$features`; as [`simd::gemv_task`].
            #[target_feature(enable = $features)]
            unsafe fn gemv_task(a: &LinearArgs<'_>, out: Shared<f32>, ob: usize) {
                // SAFETY: forwarded contract.
                unsafe { simd::gemv_task::<$S>(a, out, ob) }
            }
            ///
            /// # Safety
            /// the CPU has `$features`; as [`simd::group_norm_task`].
            #[target_feature(enable = $features)]
            unsafe fn gn_task(a: &GroupNormArgs<'_>, out: Shared<f32>, task: usize, gpt: usize) {
                // SAFETY: forwarded contract.
                unsafe { simd::group_norm_task::<$S>(a, out, task, gpt) }
            }
            ///
            /// # Safety
            /// the CPU has `$features`; as [`simd::attention_task`].
            #[target_feature(enable = $features)]
            unsafe fn attn_task(
                a: &AttentionArgs<'_>,
                out: Shared<f32>,
                task: usize,
                scratch: &mut [f32],
            ) {
                // SAFETY: forwarded contract.
                unsafe { simd::attention_task::<$S>(a, out, task, scratch) }
            }

            ///
            /// # Safety
            /// the CPU has `$features`; as [`winograd::phase1`].
            #[target_feature(enable = $features)]
            unsafe fn wino_phase1(p: &WinogradPlan<'_>, task: usize) {
                // SAFETY: forwarded contract.
                unsafe { winograd::phase1::<$S>(p, task) }
            }
            ///
            /// # Safety
            /// the CPU has `$features`; as [`winograd::phase2`].
            #[target_feature(enable = $features)]
            unsafe fn wino_phase2(p: &WinogradPlan<'_>, task: usize, scratch: &mut [f32]) {
                // SAFETY: forwarded contract.
                unsafe { winograd::phase2::<$S, $mr, $mrs, $nv>(p, task, scratch) }
            }

            ///
            /// # Safety
            /// the CPU has `$features`.
            #[target_feature(enable = $features)]
            unsafe fn ln_rows(
                x: &[f32],
                dim: usize,
                eps: f32,
                gamma: &[half::f16],
                beta: &[half::f16],
                out: &mut [f32],
            ) {
                // SAFETY: forwarded contract (the kernel checks its slices itself).
                unsafe { simd::layer_norm_rows::<$S>(x, dim, eps, gamma, beta, out) }
            }
            ///
            /// # Safety
            /// the CPU has `$features`.
            #[target_feature(enable = $features)]
            unsafe fn geglu_task(x: &[f32], dim: usize, out: &mut [f32]) {
                // SAFETY: forwarded contract (the kernel checks its slices itself).
                unsafe { simd::geglu_rows::<$S>(x, dim, out) }
            }
            fn layer_norm(
                x: &[f32],
                dim: usize,
                eps: f32,
                gamma: &[half::f16],
                beta: &[half::f16],
                out: &mut [f32],
            ) {
                // SAFETY: this table is only reachable through `KernelPath::table`, which
                // checked the features.
                unsafe { ln_rows(x, dim, eps, gamma, beta, out) }
            }
            fn geglu(x: &[f32], dim: usize, out: &mut [f32]) {
                // SAFETY: as above.
                unsafe { geglu_task(x, dim, out) }
            }

            fn conv_scratch(s: &ConvShape) -> Option<(usize, usize)> {
                winograd::scratch_need(s, $mr)
            }

            fn conv2d(a: &ConvArgs<'_>, out: &mut [f32], ex: &Exec<'_>) {
                // SAFETY: called from the kernel entry point, not a task; the slice is dropped
                // before this function returns (the plan keeps only its address, used by the
                // tasks run below, which finish before we return).
                let shared = unsafe { ex.shared() };
                let plan = if ex.winograd() {
                    WinogradPlan::new(a, out, $mr, $mrs, ex.threads(), ex.per_thread(), shared)
                } else {
                    None
                };
                if let Some(plan) = plan {
                    // SAFETY: features checked (this table is only reachable through
                    // `KernelPath::table`); phase 1 tasks write disjoint blocks of the shared
                    // region; phase 2 starts after every phase 1 task returned (`run` waits),
                    // only reads it, and writes disjoint tiles x channel blocks; `th` is the
                    // running thread.
                    ex.run(plan.phase1_tasks(), &|t, _| unsafe {
                        wino_phase1(&plan, t)
                    });
                    // SAFETY: as above (phase 2).
                    ex.run(plan.phase2_tasks(), &|t, th| unsafe {
                        wino_phase2(&plan, t, ex.scratch(th))
                    });
                    return;
                }
                let plan = ConvPlan::new(a, out, $mr, ex.threads());
                ex.run(plan.tasks, &|t, th| {
                    // SAFETY: this table is only reachable through `KernelPath::table`, which
                    // checked the CPU features; the plan checked every slice; `th` is the
                    // thread running this task.
                    unsafe { conv_task(&plan, t, ex.scratch(th)) }
                });
            }
            fn linear(a: &LinearArgs<'_>, out: &mut [f32], ex: &Exec<'_>) {
                if a.rows > simd::GEMV_MAX_ROWS {
                    return conv2d(&a.as_conv(), out, ex);
                }
                a.as_conv().check(out);
                let o = Shared(out.as_mut_ptr());
                // SAFETY: features checked (see conv2d); the arguments were checked just above;
                // tasks write disjoint 32-column blocks of every row.
                ex.run(a.out_f.div_ceil($crate::kernels::PACK_OC), &|t, _| unsafe {
                    gemv_task(a, o, t)
                });
            }
            fn group_norm(a: &GroupNormArgs<'_>, out: &mut [f32], ex: &Exec<'_>) {
                a.check(out);
                let (gpt, tasks) = simd::gn_split(a);
                let o = Shared(out.as_mut_ptr());
                // SAFETY: features checked (see conv2d); tasks write disjoint (sample, group)
                // channel ranges.
                ex.run(tasks, &|t, _| unsafe { gn_task(a, o, t, gpt) });
            }
            fn attention(
                a: &AttentionArgs<'_>,
                scratch: &mut [f32],
                out: &mut [f32],
                ex: &Exec<'_>,
            ) {
                a.check(out);
                // The table-wide contract (the scalar path's score row); unused here.
                assert!(
                    scratch.len() >= a.kv_tokens,
                    "attention scratch must hold kv_tokens floats"
                );
                let o = Shared(out.as_mut_ptr());
                // SAFETY: features checked; tasks write disjoint query rows; `th` is the
                // running thread.
                ex.run(simd::attention_tasks::<$S>(a), &|t, th| unsafe {
                    attn_task(a, o, t, ex.scratch(th))
                });
            }
            $crate::kernels::KernelTable {
                name: $name,
                path: $path,
                conv2d,
                group_norm,
                linear,
                attention,
                conv_scratch,
                layer_norm,
                geglu,
            }
        };
    };
}
#[allow(unused_imports)]
pub(crate) use simd_table;
