//! A persistent thread team (std): built once per model, reused by every kernel call.
//!
//! [`ThreadPool::run`] publishes a borrowed task closure, wakes the workers, runs tasks on the
//! calling thread too, and returns when every task is done. Tasks are handed out through one
//! atomic counter. Nothing is allocated per call: the closure is passed by reference, the
//! synchronisation is atomics plus a futex-backed `Mutex`/`Condvar`.
//!
//! Workers spin briefly after a job (the next kernel call of a forward pass follows within
//! microseconds), then sleep on the condition variable, so an idle model costs no CPU.
//!
//! If the team is busy (two forward passes sharing one model from different threads, or a task
//! that itself calls `run`), the caller runs its tasks alone, as thread 0: the results are the
//! same, since kernels never split a reduction across tasks.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::Parallel;

/// How long an idle worker spins before sleeping.
const SPIN: Duration = Duration::from_micros(200);
/// After this long, a waiting worker yields between checks instead of only spinning.
const YIELD_AFTER: Duration = Duration::from_micros(20);

type Task = dyn Fn(usize, usize) + Sync;

/// A `&Task` with its lifetime erased, so it can sit in shared state.
#[derive(Clone, Copy)]
struct JobRef(*const Task);

// SAFETY: the pointee is `Sync` (shared calls are fine), and `ThreadPool::run` keeps it alive
// until every worker has finished with it (it waits for `active == 0` before returning).
unsafe impl Send for JobRef {}

struct Shared {
    /// Bumped (under `sleep`) for every job.
    generation: AtomicUsize,
    job: Mutex<Option<JobRef>>,
    next: AtomicUsize,
    tasks: AtomicUsize,
    /// Workers that have not finished the current job.
    active: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Sleeping workers wait here; `sleepers` counts them so `run` only notifies when needed.
    sleep: Mutex<()>,
    wake: Condvar,
    sleepers: AtomicUsize,
    /// Workers that have started (see `ThreadPool::new`).
    started: AtomicUsize,
    /// Threads that take tasks of the current job: workers with an id at or above it only
    /// check in ([`Limited`]).
    limit: AtomicUsize,
}

impl Shared {
    fn run_tasks(&self, job: &(dyn Fn(usize, usize) + Sync), thread: usize) {
        loop {
            let t = self.next.fetch_add(1, Ordering::Relaxed);
            if t >= self.tasks.load(Ordering::Relaxed) {
                break;
            }
            if catch_unwind(AssertUnwindSafe(|| job(t, thread))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// A team of `threads - 1` workers plus the calling thread.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    dispatch: Mutex<()>,
}

impl ThreadPool {
    /// A team of `threads` (at least 1) threads: `threads - 1` are spawned now.
    pub fn new(threads: usize) -> std::io::Result<ThreadPool> {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            job: Mutex::new(None),
            next: AtomicUsize::new(0),
            tasks: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            sleepers: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            limit: AtomicUsize::new(usize::MAX),
        });
        let mut pool = ThreadPool {
            shared,
            workers: Vec::new(),
            dispatch: Mutex::new(()),
        };
        for id in 1..threads.max(1) {
            let shared = pool.shared.clone();
            let handle = std::thread::Builder::new()
                .name(std::format!("tinydiffusion-{id}"))
                .stack_size(1 << 20)
                .spawn(move || worker(&shared, id))?;
            pool.workers.push(handle);
        }
        // Wait until every worker runs: a thread's start-up allocates (its handle, name,
        // thread-locals), and that must not land in a later forward pass.
        while pool.shared.started.load(Ordering::Acquire) < pool.workers.len() {
            std::thread::yield_now();
        }
        Ok(pool)
    }

    /// Number of threads running tasks (workers + the caller).
    pub fn size(&self) -> usize {
        self.workers.len() + 1
    }
}

fn worker(shared: &Shared, id: usize) {
    let mut seen = 0usize;
    shared.started.fetch_add(1, Ordering::Release);
    loop {
        // Wait for a new job: spin a little, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            if shared.generation.load(Ordering::Acquire) != seen {
                break;
            }
            spins += 1;
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let waited = start.elapsed();
            if waited < SPIN {
                // Past the first few microseconds, let other threads (a descheduled caller on
                // a busy machine) have the core between checks.
                if waited > YIELD_AFTER {
                    std::thread::yield_now();
                }
                continue;
            }
            let mut guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            shared.sleepers.fetch_add(1, Ordering::SeqCst);
            while shared.generation.load(Ordering::SeqCst) == seen
                && !shared.shutdown.load(Ordering::SeqCst)
            {
                guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
        }
        seen = shared.generation.load(Ordering::Acquire);
        let job = *shared.job.lock().unwrap_or_else(|e| e.into_inner());
        let limit = shared.limit.load(Ordering::Acquire);
        if let (Some(JobRef(job)), true) = (job, id < limit) {
            // SAFETY: `run` published this pointer for the current generation and does not
            // return (so the closure stays alive) until `active` drops to zero below.
            shared.run_tasks(unsafe { &*job }, id);
        }
        shared.active.fetch_sub(1, Ordering::Release);
    }
}

impl Parallel for ThreadPool {
    fn threads(&self) -> usize {
        self.size()
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        self.run_on(self.size(), tasks, f);
    }
}

/// The first `threads` threads of a team (the caller and `threads - 1` workers): a forward
/// pass whose workspace was sized for fewer threads than the model's team has
/// ([`crate::Model::forward_with_threads`]). Thread indices stay below `threads`.
pub struct Limited<'a> {
    pool: &'a ThreadPool,
    threads: usize,
}

impl<'a> Limited<'a> {
    /// At most `threads` (at least 1) threads of `pool`.
    pub fn new(pool: &'a ThreadPool, threads: usize) -> Limited<'a> {
        Limited {
            pool,
            threads: threads.clamp(1, pool.size()),
        }
    }
}

impl Parallel for Limited<'_> {
    fn threads(&self) -> usize {
        self.threads
    }

    fn run(&self, tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        self.pool.run_on(self.threads, tasks, f);
    }
}

impl ThreadPool {
    /// [`Parallel::run`] on the caller and the workers with ids below `threads`.
    fn run_on(&self, threads: usize, tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        let guard = match self.dispatch.try_lock() {
            Ok(g) if !self.workers.is_empty() && tasks > 1 && threads > 1 => g,
            _ => {
                // Busy (or nothing to share): run everything here, as thread 0.
                for t in 0..tasks {
                    f(t, 0);
                }
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY (lifetime erasure): the pointer is only dereferenced by workers between the
        // generation bump below and their `active` decrement, and this function waits for
        // `active == 0` before returning, while `f` is still borrowed.
        let erased: *const Task =
            unsafe { core::mem::transmute::<&(dyn Fn(usize, usize) + Sync), &'static Task>(f) };
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(JobRef(erased));
        s.tasks.store(tasks, Ordering::Relaxed);
        s.limit.store(threads, Ordering::Release);
        s.next.store(0, Ordering::Relaxed);
        s.panicked.store(false, Ordering::Relaxed);
        s.active.store(self.workers.len(), Ordering::Relaxed);
        {
            let _sleep = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.generation.fetch_add(1, Ordering::SeqCst);
            if s.sleepers.load(Ordering::SeqCst) > 0 {
                s.wake.notify_all();
            }
        }
        s.run_tasks(f, 0);
        let mut spins = 0u32;
        while s.active.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < 256 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let panicked = s.panicked.load(Ordering::Relaxed);
        drop(guard);
        if panicked {
            resume_unwind(std::boxed::Box::new("a kernel task panicked"));
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _sleep = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        let pool = ThreadPool::new(3).unwrap();
        for tasks in [0usize, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(tasks, &|t, th| {
                assert!(th < 3);
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn limited_keeps_thread_indices_below_its_count() {
        let pool = ThreadPool::new(4).unwrap();
        for n in 1..=4 {
            let limited = Limited::new(&pool, n);
            assert_eq!(limited.threads(), n);
            let hits: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
            limited.run(64, &|t, th| {
                assert!(th < n, "thread {th} of a team limited to {n}");
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
        // The whole team again afterwards.
        let seen: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
        pool.run(256, &|_, th| {
            seen[th].fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(Limited::new(&pool, 99).threads(), 4);
    }

    #[test]
    fn nested_run_falls_back_to_caller() {
        let pool = ThreadPool::new(2).unwrap();
        let total = AtomicUsize::new(0);
        pool.run(4, &|_, _| {
            pool.run(3, &|_, th| {
                assert_eq!(th, 0);
                total.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn task_panic_reaches_caller() {
        let pool = ThreadPool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(8, &|t, _| assert!(t != 5))));
        assert!(r.is_err());
        // The team still works afterwards.
        let n = AtomicUsize::new(0);
        pool.run(8, &|_, _| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 8);
    }
}
