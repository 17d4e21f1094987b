//! Counter-based random numbers: every draw is a pure function of `(seed, purpose, step, index)`.
//!
//! Nothing carries state from one training step to the next, so the "RNG state" of a run is
//! just its seed and step: resuming at step `s` draws exactly what an uninterrupted run draws
//! at step `s` (data order, timesteps, noise, label dropout, flips), bit for bit.
//!
//! The mixer is SplitMix64's finaliser; Gaussians use Box–Muller in f64.
//!
//! Why not the sampler's [`crate::schedule::GaussianNoise`]: that source is one seed with
//! numbered streams of Gaussians (stream = sampling step). Training draws several kinds of
//! value per step (a permutation per epoch, uniform timesteps, Bernoulli label dropout and
//! flips, Gaussian noise, initial weights), each from its own stream keyed by
//! `(seed, purpose, step)` so that adding or resizing one kind of draw never shifts another, and
//! every checkpoint written so far is a function of exactly these draws: changing the source
//! would change every trained weight.

/// What a stream of draws is used for; keeps the streams of one step independent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Purpose {
    DataOrder = 1,
    Timestep = 2,
    Noise = 3,
    LabelDropout = 4,
    Flip = 5,
    Init = 6,
    /// `ResnetBlock2D` dropout masks.
    Dropout = 7,
}

/// SplitMix64's output function: a bijective 64-bit mixer.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stream of draws for one (seed, purpose, step).
#[derive(Debug, Clone)]
pub struct Stream {
    key: u64,
    counter: u64,
    spare: Option<f64>,
}

impl Stream {
    pub fn new(seed: u64, purpose: Purpose, step: u64) -> Stream {
        let key = mix(mix(mix(seed) ^ (purpose as u64)) ^ step);
        Stream {
            key,
            counter: 0,
            spare: None,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let v = mix(self.key ^ mix(self.counter));
        self.counter += 1;
        v
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (Lemire's multiply-shift; the bias is below 2^-40 for the
    /// sizes used here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal (Box–Muller, both values used).
    pub fn gaussian(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let (s, c) = (
            libm::sin(2.0 * core::f64::consts::PI * u2),
            libm::cos(2.0 * core::f64::consts::PI * u2),
        );
        self.spare = Some(r * s);
        r * c
    }
}

/// A permutation of `0..n` for one epoch (Fisher–Yates).
pub fn permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut s = Stream::new(seed, Purpose::DataOrder, epoch);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = s.below(i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}
