//! Firmware: the 16x16 MNIST model of `weights/mcu/` samples one digit of each class (DDIM,
//! eta 0, [`STEPS`] evaluations each, batch 1) on a Cortex-M7 and writes them to the host
//! through semihosting: `digits.f32` (the ten x_0 tensors, `[10, 1, 16, 16]` little-endian f32
//! in [-1, 1]) and `digits.pgm` (the ten digits side by side, 160x16 grey), then exits with
//! status 0 (or 1 after printing what failed).
//!
//! Memory: the f16 weights are used in place from flash (`include_bytes!`, 16-byte aligned);
//! the sampling workspace is one static buffer of [`WORKSPACE_FLOATS`], checked at start-up
//! against the library's exact size; the model description and the scheduler are built once
//! on a small static heap (`embedded-alloc`), whose peak use is printed. Sampling allocates
//! nothing (checked: the allocation count does not move while it runs). Digit `k` is drawn
//! from the library's counter-based generator with seed [`SEED_BASE`] + k, so
//! `sample --batch 1 --class-label k --seed k --scheduler ddim --steps 20` on a host draws
//! the same noise (`.ci/mcu.sh` compares the two).
#![no_std]
#![no_main]

extern crate alloc;

use core::alloc::{GlobalAlloc, Layout};
use core::fmt::Display;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicUsize, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln, nr, syscall};
use embedded_alloc::LlffHeap;
use tinydiffusion::sampler::{SampleOptions, Sampler, SamplerKind, StepInfo};
use tinydiffusion::schedule::SchedulerConfig;
use tinydiffusion::weights::WeightBytes;
use tinydiffusion::Model;

/// DDIM steps (= model evaluations) per digit; `TD_MCU_STEPS=N` at build time overrides it.
const STEPS: usize = match option_env!("TD_MCU_STEPS") {
    Some(s) => parse_usize(s),
    None => 20,
};
/// Digit k is sampled with seed `SEED_BASE + k`.
const SEED_BASE: u64 = 0;
const CLASSES: usize = 10;
/// Pixels of one digit (1 channel, 16x16).
const SIDE: usize = 16;
const PIXELS: usize = SIDE * SIDE;
/// f32 elements of the sampling workspace at batch 1: the library's
/// `Sampler::workspace_len(&model, 1, false)` for this model, checked equal at start-up.
const WORKSPACE_FLOATS: usize = 49_827;
/// Header of `digits.pgm`: binary grey, 160x16, 8 bits.
const PGM_HEADER: &[u8] = b"P5 160 16 255\n";
/// The heap the model description and scheduler are built on (set-up only).
const HEAP_BYTES: usize = 88 * 1024;

/// `include_bytes!` data at an alignment the weights loader accepts in place (f16 tensors need
/// 2 bytes; 16 leaves room).
#[repr(C, align(16))]
struct Aligned<B: ?Sized>(B);

static WEIGHTS: &Aligned<[u8]> = &Aligned(*include_bytes!(
    "../../../weights/mcu/diffusion_pytorch_model.safetensors"
));
const MODEL_CONFIG: &str = include_str!("../../../weights/mcu/config.json");
const SCHEDULER_CONFIG: &str = include_str!("../../../weights/mcu/scheduler_config.json");

/// `embedded-alloc`'s linked-list heap, counting allocations and recording its peak use.
struct CountingHeap {
    heap: LlffHeap,
    peak: AtomicUsize,
    allocations: AtomicUsize,
}

// SAFETY: every method forwards to `LlffHeap` with its caller's arguments and contract; the
// counters are atomics and change nothing about the memory handed out.
unsafe impl GlobalAlloc for CountingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which is `LlffHeap`'s.
        let p = unsafe { self.heap.alloc(layout) };
        self.allocations.fetch_add(1, Ordering::Relaxed);
        self.peak.fetch_max(self.heap.used(), Ordering::Relaxed);
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this `layout` (the caller's contract).
        unsafe { self.heap.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static HEAP: CountingHeap = CountingHeap {
    heap: LlffHeap::empty(),
    peak: AtomicUsize::new(0),
    allocations: AtomicUsize::new(0),
};

const fn parse_usize(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "TD_MCU_STEPS must be a number");
        n = n * 10 + (b[i] - b'0') as usize;
        i += 1;
    }
    n
}

/// SysTick counts core-clock ticks down from this and wraps (24 bits, no interrupt): an
/// interval read with [`elapsed`] must be shorter than one wrap.
const SYSTICK_RELOAD: u32 = 0x00FF_FFFF;

/// Core-clock ticks from `since` (a [`SYST::get_current`] reading) to now, modulo 2^24: cycles
/// on a real Cortex-M; under QEMU, virtual time at the board's 25 MHz, so with
/// `-icount shift=0` (1 ns an instruction) 40 instructions a tick. `.ci/mcu.sh` reads them
/// per model evaluation (about 10^8 instructions, well inside a wrap of 6.7 * 10^8).
fn elapsed(since: u32) -> u32 {
    since.wrapping_sub(SYST::get_current()) & SYSTICK_RELOAD
}

/// Ticks a loop of `2 * iterations` instructions takes: under QEMU `-icount` it converts the
/// ticks below into instructions (`.ci/mcu.sh`).
fn calibration_ticks(iterations: u32) -> u32 {
    let start = SYST::get_current();
    // SAFETY: a register-only countdown loop (two instructions an iteration); no memory, no
    // stack.
    unsafe {
        core::arch::asm!(
            "2:",
            "subs {0}, {0}, #1",
            "bne 2b",
            inout(reg) iterations => _,
            options(nomem, nostack),
        )
    };
    elapsed(start)
}

fn fail(what: &str, detail: impl Display) -> ! {
    hprintln!("error: {}: {}", what, detail);
    exit(debug::EXIT_FAILURE)
}

/// Ends the QEMU run with `status` (semihosting SYS_EXIT); on a board without a debugger
/// attached, waits for interrupts forever.
fn exit(status: debug::ExitStatus) -> ! {
    debug::exit(status);
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    fail("panic", info)
}

/// Writes `bytes` to the host file `name` (NUL-terminated), created or truncated.
fn write_host_file(name: &str, bytes: &[u8]) -> Result<(), &'static str> {
    let n = name.as_bytes();
    // SAFETY: SYS_OPEN reads `n.len() - 1` bytes of the live string `n` (its NUL excluded).
    let fd = unsafe { syscall!(OPEN, n.as_ptr(), nr::open::W_TRUNC_BINARY, n.len() - 1) };
    if fd as isize == -1 {
        return Err("semihosting open failed");
    }
    // SAFETY: SYS_WRITE reads `bytes.len()` bytes of the live slice `bytes`.
    let left = unsafe { syscall!(WRITE, fd, bytes.as_ptr(), bytes.len()) };
    // SAFETY: closes the handle SYS_OPEN returned above; no memory is passed.
    unsafe { syscall!(CLOSE, fd) };
    if left != 0 {
        return Err("semihosting write failed");
    }
    Ok(())
}

/// Stack high-water mark: the stack region below the current frame is painted before sampling
/// and scanned after it.
mod stack {
    const PAINT: u32 = 0xC0DE_C0DE;

    extern "C" {
        static __sheap: u32;
        static _stack_start: u32;
    }

    /// The end of the static data and the top of the stack (cortex-m-rt's link.x symbols;
    /// only their addresses are taken).
    fn region() -> (*mut u32, *mut u32) {
        (
            &raw const __sheap as *mut u32,
            &raw const _stack_start as *mut u32,
        )
    }

    /// Fills the free RAM between the static data and the current stack pointer (less a
    /// 256-byte margin for this function's own frame) with [`PAINT`].
    pub fn paint() {
        let (bottom, _) = region();
        let sp = cortex_m::register::msp::read() as usize - 256;
        let mut p = bottom;
        while (p as usize) < sp {
            // SAFETY: `p` lies in [end of static data, stack pointer - 256): RAM that no static,
            // heap block or live stack frame uses.
            unsafe { p.write_volatile(PAINT) };
            p = p.wrapping_add(1);
        }
    }

    /// Bytes of stack used since [`paint`]: from the top of RAM down to the lowest overwritten
    /// word.
    pub fn used() -> usize {
        let (bottom, top) = region();
        let mut p = bottom;
        // SAFETY: reads words of RAM between the static data and the stack top, all mapped.
        while (p as usize) < top as usize && unsafe { p.read_volatile() } == PAINT {
            p = p.wrapping_add(1);
        }
        top as usize - p as usize
    }
}

#[entry]
fn main() -> ! {
    // cortex-m-rt turns these into `&'static mut` (zero-initialised, in .bss): no `unsafe`.
    static mut HEAP_MEMORY: [MaybeUninit<u8>; HEAP_BYTES] = [MaybeUninit::uninit(); HEAP_BYTES];
    static mut WORKSPACE: [f32; WORKSPACE_FLOATS] = [0.0; WORKSPACE_FLOATS];
    static mut DIGITS: [f32; CLASSES * PIXELS] = [0.0; CLASSES * PIXELS];
    static mut PGM: [u8; PGM_HEADER.len() + CLASSES * PIXELS] =
        [0; PGM_HEADER.len() + CLASSES * PIXELS];

    // SAFETY: called once, before any allocation; the memory is a static this function owns.
    unsafe {
        HEAP.heap
            .init(HEAP_MEMORY.as_mut_ptr() as usize, HEAP_BYTES)
    };

    let model = Model::from_parts(MODEL_CONFIG, WeightBytes::Static(&WEIGHTS.0))
        .unwrap_or_else(|e| fail("model", e));
    let scheduler_config =
        SchedulerConfig::from_json(SCHEDULER_CONFIG).unwrap_or_else(|e| fail("scheduler", e));
    let sampler = Sampler::builder(SamplerKind::Ddim)
        .steps(STEPS)
        .build(&scheduler_config)
        .unwrap_or_else(|e| fail("sampler", e));
    let need = sampler.workspace_len(&model, 1, false);
    if need != WORKSPACE_FLOATS {
        hprintln!(
            "error: the library needs a workspace of {} f32 ({} bytes) for this model and sampler; \
             this build reserves {}: set WORKSPACE_FLOATS = {}",
            need,
            need * 4,
            WORKSPACE_FLOATS,
            need
        );
        exit(debug::EXIT_FAILURE);
    }
    hprintln!(
        "model: {} parameters, {} FLOP per evaluation; weights {} bytes in flash at {:p}",
        model.parameters(),
        model.flops_per_sample(),
        WEIGHTS.0.len(),
        WEIGHTS.0.as_ptr()
    );
    hprintln!(
        "RAM: workspace {} bytes, heap peak {} of {} bytes ({} allocations at set-up)",
        need * 4,
        HEAP.peak.load(Ordering::Relaxed),
        HEAP_BYTES,
        HEAP.allocations.load(Ordering::Relaxed)
    );

    let mut core = cortex_m::Peripherals::take().unwrap_or_else(|| fail("peripherals", "taken"));
    core.SYST.set_clock_source(SystClkSource::Core);
    core.SYST.set_reload(SYSTICK_RELOAD);
    core.SYST.clear_current();
    core.SYST.enable_counter();

    const CALIBRATION_ITERATIONS: u32 = 10_000_000;
    hprintln!(
        "calibration: {} instructions in {} core-clock ticks",
        2 * CALIBRATION_ITERATIONS,
        calibration_ticks(CALIBRATION_ITERATIONS)
    );

    stack::paint();
    let allocations_before = HEAP.allocations.load(Ordering::Relaxed);
    for (k, digit) in DIGITS.chunks_exact_mut(PIXELS).enumerate() {
        let label = [k as i64];
        let mut opts = SampleOptions::new(1, SEED_BASE + k as u64);
        opts.class_labels = Some(&label);
        // Ticks of each step (one evaluation and one scheduler step), summed.
        let mut took = 0u64;
        let mut mark = SYST::get_current();
        let mut on_step = |_: &StepInfo<'_>| {
            took += u64::from(elapsed(mark));
            mark = SYST::get_current();
        };
        sampler
            .sample(&model, WORKSPACE, &opts, digit, Some(&mut on_step))
            .unwrap_or_else(|e| fail("sample", e));
        hprintln!(
            "digit {}: {} evaluations, {} core-clock ticks",
            k,
            sampler.model_evaluations(),
            took
        );
    }
    let sampling_allocations = HEAP.allocations.load(Ordering::Relaxed) - allocations_before;
    hprintln!(
        "stack peak {} bytes; allocations while sampling: {}",
        stack::used(),
        sampling_allocations
    );
    if sampling_allocations != 0 {
        fail("sampling allocated", sampling_allocations);
    }

    write_host_file("digits.f32\0", bytemuck::cast_slice(&DIGITS[..]))
        .unwrap_or_else(|e| fail("digits.f32", e));
    // The ten digits side by side, [-1, 1] mapped to 0..=255.
    PGM[..PGM_HEADER.len()].copy_from_slice(PGM_HEADER);
    for y in 0..SIDE {
        for k in 0..CLASSES {
            for x in 0..SIDE {
                let v = DIGITS[k * PIXELS + y * SIDE + x];
                let grey = ((v.clamp(-1.0, 1.0) + 1.0) * 127.5 + 0.5) as u8;
                PGM[PGM_HEADER.len() + y * CLASSES * SIDE + k * SIDE + x] = grey;
            }
        }
    }
    write_host_file("digits.pgm\0", PGM).unwrap_or_else(|e| fail("digits.pgm", e));
    hprintln!("wrote digits.f32 and digits.pgm");
    exit(debug::EXIT_SUCCESS)
}
