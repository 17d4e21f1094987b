//! The one matrix-multiply the convolutions are built on:
//! `C[m, n] (+)= A[m, k] · B[k, n]`, `B` and `C` row-major, `A` read through two strides so
//! that `A` or `A^T` of a row-major buffer can be passed without a copy.
//!
//! Kernels, picked once per process from [`KernelPath::preferred`] (so `TINYDIFFUSION_KERNELS`
//! forces one, as for the core): on x86-64 one register-tile micro-kernel written over the
//! core's vector type (`simd_gemm`, 12x32 on AVX-512, 6x16 on AVX2, the same bits on both);
//! elsewhere a portable 4x16 register-tile kernel (fixed-size arrays LLVM keeps in vector
//! registers) with a plain loop for the edges.
//! `cargo bench --features train --bench train_gemm` compares them with the `gemm` crate.
//!
//! Threads: [`set_threads`] installs a process-wide team; a large product is then split into
//! bands of rows of `C`, one task each. Every element of `C` is still summed by one thread in
//! the same order, so the result does not depend on the thread count (bit for bit). Layers with
//! coarser independent work (pixel tiles, samples) run it through [`for_each_task`] and call
//! [`gemm_serial`] inside.

use std::sync::OnceLock;

use crate::kernels::threads::ThreadPool;
use crate::kernels::{KernelPath, Parallel};

/// `A[i, p] = a[i * rs + p * cs]`.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

const MR: usize = 4;
const NR: usize = 16;

static TEAM: OnceLock<ThreadPool> = OnceLock::new();

/// Uses `threads` threads (the caller plus `threads - 1` workers) for every large product from
/// now on. Only the first call with `threads > 1` takes effect (the team lives for the process).
pub fn set_threads(threads: usize) -> std::io::Result<()> {
    if threads > 1 && TEAM.get().is_none() {
        let team = ThreadPool::new(threads)?;
        let _ = TEAM.set(team);
    }
    Ok(())
}

std::thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Threads of the team [`set_threads`] installed (1 without one): how many parts the layers
/// split work into when each part must walk all of it (e.g. a conv's weight-gradient bands).
pub fn team_threads() -> usize {
    TEAM.get().map_or(1, |team| team.threads())
}

/// Runs `f` on a thread-local buffer of `len` floats (contents unspecified), grown on first use
/// and reused after, so the layers' small transposes and staging need no allocation per call.
/// Not reentrant: `f` must not call `with_scratch` again (it panics if it does).
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with_borrow_mut(|buf| {
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
}

/// Calls `f(task)` for every task in `0..tasks` on the team (where [`set_threads`] installed
/// one; in order on the calling thread otherwise) and returns when all are done. For coarse,
/// independent work (a conv's pixel tiles, an attention's heads): a task's result must not
/// depend on which thread runs it, so results stay the same for any thread count. Inside a
/// task, use [`gemm_serial`] (the team is busy with the tasks themselves).
pub fn for_each_task(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    match TEAM.get() {
        Some(team) if tasks > 1 => team.run(tasks, &|t, _| f(t)),
        _ => (0..tasks).for_each(f),
    }
}

/// [`gemm`] on the calling thread only.
#[allow(clippy::too_many_arguments)]
pub fn gemm_serial(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    gemm_on(path(), m, n, k, a, b, ldb, c, ldc, accumulate)
}

/// A mutable buffer that tasks of one [`for_each_task`] call slice into disjoint parts.
#[derive(Clone, Copy)]
pub struct SharedMut<'a> {
    ptr: *mut f32,
    len: usize,
    _buf: core::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a plain address and length; every `slice` call site documents why the parts that
// concurrent tasks take are disjoint.
unsafe impl Sync for SharedMut<'_> {}
// SAFETY: as above.
unsafe impl Send for SharedMut<'_> {}

impl<'a> SharedMut<'a> {
    /// Borrows `buf` for the tasks.
    pub fn new(buf: &'a mut [f32]) -> SharedMut<'a> {
        SharedMut {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: core::marker::PhantomData,
        }
    }
    /// `buf[start..start + len]`.
    ///
    /// # Safety
    /// no two slices taken from one `SharedMut` and alive at the same time overlap.
    pub unsafe fn slice(self, start: usize, len: usize) -> &'a mut [f32] {
        assert!(
            start <= self.len && len <= self.len - start,
            "slice out of range"
        );
        // SAFETY: in bounds (asserted), inside a buffer mutably borrowed for `'a`; exclusive
        // per the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// Below this many multiply-adds a product runs on the calling thread: waking the team costs
/// more than it saves.
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// `C = A · B` (or `C += A · B` when `accumulate`), with `ldb`, `ldc` the row strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let team = TEAM
        .get()
        .filter(|_| m * n * k >= PARALLEL_MIN_MACS && m >= 2 * MR);
    let Some(team) = team else {
        return gemm_on(path(), m, n, k, a, b, ldb, c, ldc, accumulate);
    };
    // Bands of whole micro-tiles, a few per thread so an unlucky thread does not hold up the rest.
    let tasks = (team.threads() * 2).min(m / MR);
    // Multiples of 12 rows: whole tiles of every kernel (4 rows portable, 6 AVX2, 12 AVX-512).
    let band = (m / tasks).next_multiple_of(12);
    let tasks = m.div_ceil(band);
    assert!(c.len() >= (m - 1) * ldc + n, "C too short");
    let c_base = c.as_mut_ptr() as usize;
    team.run(tasks, &|t, _| {
        let (i0, i1) = (t * band, ((t + 1) * band).min(m));
        let rows = i1 - i0;
        let len = (rows - 1) * ldc + n;
        // SAFETY: `c` holds at least `(m - 1) * ldc + n` floats (asserted above) and is
        // mutably borrowed for the whole `run`, which returns only when every task is done.
        // Task `t` touches rows `i0..i1` only, elements `[i0 * ldc, (i1 - 1) * ldc + n)`;
        // since `n <= ldc` these ranges of different tasks are disjoint.
        let c_band =
            unsafe { std::slice::from_raw_parts_mut((c_base as *mut f32).add(i0 * ldc), len) };
        let a_band = Strided {
            data: &a.data[i0 * a.rs..],
            ..a
        };
        gemm_on(path(), rows, n, k, a_band, b, ldb, c_band, ldc, accumulate);
    });
}

/// Which kernel the products run on: the one [`KernelPath::preferred`] names (so
/// `TINYDIFFUSION_KERNELS` picks the trainer's kernel as it does the core's), fetched once.
/// AVX-512 and AVX2 give the same bits; any other path runs the portable kernel. A name the
/// variable cannot mean here (unknown, or a path this CPU lacks) falls back to detection, since
/// a product has no error to return; the core's model loading reports that name as an error.
fn path() -> KernelPath {
    static PATH: OnceLock<KernelPath> = OnceLock::new();
    *PATH.get_or_init(|| match KernelPath::preferred() {
        Ok(p) if p.is_available() => p,
        _ => KernelPath::detect(),
    })
}

/// [`gemm_serial`] on a given kernel path (the portable kernel where `path` is not an x86 one
/// this CPU has): what [`gemm`] and [`gemm_serial`] call with [`path`], and what tests and
/// benches call to compare the paths.
#[allow(clippy::too_many_arguments)]
pub fn gemm_on(
    path: KernelPath,
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernels::x86::{avx2_available, avx512_available};
        if path == KernelPath::Avx512 && avx512_available() {
            // SAFETY: the CPU supports AVX-512F, AVX2, FMA and F16C (checked just above).
            return unsafe { gemm_avx512(m, n, k, a, b, ldb, c, ldc, accumulate) };
        }
        if matches!(path, KernelPath::Avx512 | KernelPath::Avx2) && avx2_available() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
            return unsafe { gemm_avx2(m, n, k, a, b, ldb, c, ldc, accumulate) };
        }
    }
    let _ = path;
    gemm_kernel::<false>(m, n, k, a, b, ldb, c, ldc, accumulate)
}

/// The SIMD path, generic over the core's vector type ([`Simd`]: AVX2 or AVX-512 here): a
/// register tile of `TM` rows by two vectors (6x16 on AVX2's 16 ymm registers, 12x32 on
/// AVX-512's 32 zmm: accumulators, the two `B` vectors and a broadcast all fit), the reduction
/// cut in blocks of [`KC`] (the `A` rows of a tile and the `B` rows of a block stay in L1/L2).
/// The columns past the last full panel use the same tile on a zero-padded copy of those columns
/// of `B`. Every element of `C` is, per reduction block, one chain of fused multiply-adds in `k`
/// order from zero, added to `C` (or stored, for the first block when not accumulating): the
/// same operations for any split of the rows between threads and for either vector width, so
/// AVX-512 and AVX2 give the same bits and a training run's weights do not depend on the CPU.
#[cfg(target_arch = "x86_64")]
mod simd_gemm {
    use super::Strided;
    use crate::kernels::simd::Simd;
    use std::cell::RefCell;

    /// Reduction block.
    pub const KC: usize = 512;
    /// The most rows any path's tile has (AVX-512's).
    const TM_MAX: usize = 12;
    /// The widest panel (two AVX-512 vectors).
    const W_MAX: usize = 32;

    /// Rows of `S`'s register tile: 3/8 of its registers (6 of 16, 12 of 32), which leaves room
    /// beside the `2 x rows` accumulators for the two `B` vectors and the broadcast `A` value.
    const fn tile_rows_of<S: Simd>() -> usize {
        S::REGISTERS * 3 / 8
    }

    std::thread_local! {
        /// Zero-padded copy of the edge columns of `B` (grows once, then reused).
        static EDGE_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }

    /// `C[R x V lanes] (+)= A[R x k] B[k x V lanes]`, `A[r, p] = a[r * rs + p * cs]`,
    /// `B[p, :] = b[p * ldb..]`.
    ///
    /// # Safety
    /// the CPU has `S`'s features; `a` is readable at `r * rs + p * cs` and `b` at
    /// `p * ldb + [0, V * LANES)` for `r < R`, `p < k`; `c` is writable at
    /// `r * ldc + [0, V * LANES)`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<S: Simd, const R: usize, const V: usize>(
        k: usize,
        a: *const f32,
        rs: usize,
        cs: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        // SAFETY (whole body): every access is inside the ranges the caller guarantees.
        unsafe {
            let mut acc = [[S::zero(); V]; R];
            // One base pointer per row and a shared offset: `[base_r + off * 4]` addressing,
            // no per-row pointer arithmetic inside the loop.
            let rows: [*const f32; R] = core::array::from_fn(|r| a.add(r * rs));
            let mut bp = b;
            let mut off = 0;
            for _ in 0..k {
                let mut bv = [S::zero(); V];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = S::load(bp.add(S::LANES * v));
                }
                for (row, base) in acc.iter_mut().zip(rows) {
                    let av = S::bcast(base.add(off));
                    for v in 0..V {
                        row[v] = S::fma(av, bv[v], row[v]);
                    }
                }
                off += cs;
                bp = bp.add(ldb);
            }
            for (r, row) in acc.iter().enumerate() {
                for (v, x) in row.iter().enumerate() {
                    let dst = c.add(r * ldc + S::LANES * v);
                    let y = if accumulate {
                        S::add(S::load(dst), *x)
                    } else {
                        *x
                    };
                    S::store(dst, y);
                }
            }
        }
    }

    /// [`tile`] for `rows <= tile_rows_of::<S>()` rows, with the strides of the common layouts
    /// made constants.
    ///
    /// # Safety
    /// as [`tile`], with `R = rows`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_rows<S: Simd, const V: usize>(
        rows: usize,
        k: usize,
        a: *const f32,
        rs: usize,
        cs: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        macro_rules! go {
            ($r:literal) => {
                // SAFETY: forwarded from the caller.
                unsafe {
                    if cs == 1 {
                        tile::<S, $r, V>(k, a, rs, 1, b, ldb, c, ldc, accumulate)
                    } else if rs == 1 {
                        tile::<S, $r, V>(k, a, 1, cs, b, ldb, c, ldc, accumulate)
                    } else {
                        tile::<S, $r, V>(k, a, rs, cs, b, ldb, c, ldc, accumulate)
                    }
                }
            };
        }
        match rows {
            12 => go!(12),
            11 => go!(11),
            10 => go!(10),
            9 => go!(9),
            8 => go!(8),
            7 => go!(7),
            6 => go!(6),
            5 => go!(5),
            4 => go!(4),
            3 => go!(3),
            2 => go!(2),
            _ => go!(1),
        }
    }

    /// # Safety
    /// the CPU has `S`'s features (the caller is compiled with them, so the kernel inlines);
    /// the slices hold what the portable kernel indexes.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm<S: Simd>(
        m: usize,
        n: usize,
        k: usize,
        a: Strided<'_>,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        if k == 0 {
            if !accumulate {
                for i in 0..m {
                    c[i * ldc..i * ldc + n].fill(0.0);
                }
            }
            return;
        }
        // Bounds the raw accesses below rely on.
        assert!(
            a.data.len() > (m - 1) * a.rs + (k - 1) * a.cs,
            "A too short"
        );
        assert!(b.len() >= (k - 1) * ldb + n, "B too short");
        assert!(c.len() >= (m - 1) * ldc + n, "C too short");
        let (lanes, tm) = (S::LANES, tile_rows_of::<S>());
        debug_assert!(tm <= TM_MAX && 2 * lanes <= W_MAX);
        // Full panels of two vectors, then the edge columns padded to one or two vectors.
        let w = 2 * lanes;
        let n_full = n - n % w;
        let rem = n - n_full;
        let ew = if rem > lanes { w } else { lanes };
        // Taken out of its thread-local rather than borrowed in a closure: a closure would be
        // compiled without the caller's target features, and the kernel would not inline.
        let mut edge = EDGE_B.take();
        if rem > 0 {
            edge.clear();
            edge.resize(k * ew, 0.0);
            for p in 0..k {
                edge[p * ew..p * ew + rem].copy_from_slice(&b[p * ldb + n_full..p * ldb + n]);
            }
        }
        let (ap, bp, cp) = (a.data.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let acc = accumulate || k0 > 0;
            for i0 in (0..m).step_by(tm) {
                let rows = tm.min(m - i0);
                // SAFETY: rows `i0..i0 + rows <= m`, reduction `k0..k0 + kc <= k` and
                // columns `j0..j0 + w <= n_full` are inside the bounds asserted above.
                let a0 = unsafe { ap.add(i0 * a.rs + k0 * a.cs) };
                for j0 in (0..n_full).step_by(w) {
                    // SAFETY: as above.
                    unsafe {
                        tile_rows::<S, 2>(
                            rows,
                            kc,
                            a0,
                            a.rs,
                            a.cs,
                            bp.add(k0 * ldb + j0),
                            ldb,
                            cp.add(i0 * ldc + j0),
                            ldc,
                            acc,
                        )
                    };
                }
                if rem > 0 {
                    let mut out = [0.0f32; TM_MAX * W_MAX];
                    // SAFETY: `edge` holds `k * ew` floats; `out` holds `rows * w`.
                    unsafe {
                        let e = edge.as_ptr().add(k0 * ew);
                        let o = out.as_mut_ptr();
                        if ew == w {
                            tile_rows::<S, 2>(rows, kc, a0, a.rs, a.cs, e, ew, o, w, false);
                        } else {
                            tile_rows::<S, 1>(rows, kc, a0, a.rs, a.cs, e, ew, o, w, false);
                        }
                    }
                    for r in 0..rows {
                        let dst = &mut c[(i0 + r) * ldc + n_full..(i0 + r) * ldc + n];
                        let src = &out[r * w..r * w + rem];
                        if acc {
                            for (d, s) in dst.iter_mut().zip(src) {
                                *d += s;
                            }
                        } else {
                            dst.copy_from_slice(src);
                        }
                    }
                }
            }
        }
        EDGE_B.set(edge);
    }
}

/// `$name`: [`simd_gemm::gemm`] on vector type `$simd`, compiled with `$features`.
macro_rules! simd_gemm_entry {
    ($name:ident, $simd:ty, $features:literal) => {
        /// # Safety
        /// the CPU has the features this function is compiled with; the slices hold what the
        /// portable kernel indexes.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            m: usize,
            n: usize,
            k: usize,
            a: Strided<'_>,
            b: &[f32],
            ldb: usize,
            c: &mut [f32],
            ldc: usize,
            accumulate: bool,
        ) {
            // SAFETY: forwarded from the caller.
            unsafe { simd_gemm::gemm::<$simd>(m, n, k, a, b, ldb, c, ldc, accumulate) }
        }
    };
}
simd_gemm_entry!(
    gemm_avx512,
    crate::kernels::x86::Avx512,
    "avx512f,avx2,fma,f16c"
);
simd_gemm_entry!(gemm_avx2, crate::kernels::x86::Avx2, "avx2,fma,f16c");

/// `acc += a * b`, sixteen lanes; fused where the caller was compiled with FMA.
#[inline(always)]
fn fma16<const FUSED: bool>(acc: &mut [f32; NR], a: f32, b: &[f32; NR]) {
    for l in 0..NR {
        acc[l] = if FUSED {
            a.mul_add(b[l], acc[l])
        } else {
            acc[l] + a * b[l]
        };
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_kernel<const FUSED: bool>(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<'_>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let (m4, n16) = (m - m % MR, n - n % NR);
    for i in (0..m4).step_by(MR) {
        for j in (0..n16).step_by(NR) {
            // Four named 16-wide accumulators: kept in vector registers at any opt-level.
            let (mut c0, mut c1, mut c2, mut c3) =
                ([0.0f32; NR], [0.0f32; NR], [0.0f32; NR], [0.0f32; NR]);
            // Rows of B walked by iterator: no index arithmetic (nor overflow checks) inside.
            let b_rows = b[j..].chunks(ldb).take(k);
            if a.cs == 1 {
                // A row-major: four contiguous rows.
                let row = |r: usize| &a.data[(i + r) * a.rs..(i + r) * a.rs + k];
                let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                for ((((bchunk, &a0), &a1), &a2), &a3) in b_rows.zip(r0).zip(r1).zip(r2).zip(r3) {
                    let brow: &[f32; NR] = bchunk[..NR].try_into().unwrap_or(&[0.0; NR]);
                    fma16::<FUSED>(&mut c0, a0, brow);
                    fma16::<FUSED>(&mut c1, a1, brow);
                    fma16::<FUSED>(&mut c2, a2, brow);
                    fma16::<FUSED>(&mut c3, a3, brow);
                }
            } else if a.rs == 1 {
                // A transposed: the four values of one step are contiguous.
                for (bchunk, achunk) in b_rows.zip(a.data[i..].chunks(a.cs)) {
                    let brow: &[f32; NR] = bchunk[..NR].try_into().unwrap_or(&[0.0; NR]);
                    let av: &[f32; MR] = achunk[..MR].try_into().unwrap_or(&[0.0; MR]);
                    fma16::<FUSED>(&mut c0, av[0], brow);
                    fma16::<FUSED>(&mut c1, av[1], brow);
                    fma16::<FUSED>(&mut c2, av[2], brow);
                    fma16::<FUSED>(&mut c3, av[3], brow);
                }
            } else {
                for (p, bchunk) in b_rows.enumerate() {
                    let brow: &[f32; NR] = bchunk[..NR].try_into().unwrap_or(&[0.0; NR]);
                    let at = |r: usize| a.data[(i + r) * a.rs + p * a.cs];
                    fma16::<FUSED>(&mut c0, at(0), brow);
                    fma16::<FUSED>(&mut c1, at(1), brow);
                    fma16::<FUSED>(&mut c2, at(2), brow);
                    fma16::<FUSED>(&mut c3, at(3), brow);
                }
            }
            for (r, acc) in [c0, c1, c2, c3].iter().enumerate() {
                let dst = &mut c[(i + r) * ldc + j..(i + r) * ldc + j + NR];
                if accumulate {
                    for l in 0..NR {
                        dst[l] += acc[l];
                    }
                } else {
                    dst.copy_from_slice(acc);
                }
            }
        }
    }
    // Edges: the last n % 16 columns of the first m4 rows, then the last m % 4 rows.
    let edge = |i: usize, j: usize, c: &mut [f32]| {
        let mut s = 0.0f32;
        for p in 0..k {
            let (x, y) = (a.data[i * a.rs + p * a.cs], b[p * ldb + j]);
            s = if FUSED { x.mul_add(y, s) } else { s + x * y };
        }
        let d = &mut c[i * ldc + j];
        if accumulate {
            *d += s;
        } else {
            *d = s;
        }
    };
    for i in 0..m4 {
        for j in n16..n {
            edge(i, j, c);
        }
    }
    for i in m4..m {
        for j in 0..n {
            edge(i, j, c);
        }
    }
}
