//! The built-in seeded Gaussian noise: counter-based, so it is bit-reproducible everywhere.
//!
//! Element `j` of stream `s` is a pure function of `(seed, s, j)`: Philox4x32-10 (Salmon et
//! al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) turns the counter
//! `(j / 2, s)` and the key `seed` into 128 random bits, which Box-Muller (f64, through
//! `libm`) turns into the normals `2k` and `2k + 1`. No state is carried from one element to
//! the next, so the values do not depend on the machine, the thread count or how a buffer is
//! split into chunks ([`GaussianNoise::fill_range`]).
//!
//! Stream convention of the sampler: stream 0 is the initial sample x_T, stream `i + 1` is the
//! noise of step `i`.

/// Seeded standard normal noise. See the module documentation for the construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaussianNoise {
    seed: u64,
}

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds: a bijection of the 128-bit counter keyed by 64 bits.
pub(crate) fn philox4x32_10(mut ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = (M0 as u64) * (ctr[0] as u64);
        let p1 = (M1 as u64) * (ctr[2] as u64);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        ctr = [hi1 ^ ctr[1] ^ k[0], lo1, hi0 ^ ctr[3] ^ k[1], lo0];
    }
    ctr
}

impl GaussianNoise {
    pub fn new(seed: u64) -> GaussianNoise {
        GaussianNoise { seed }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The two normals of block `block` (elements `2 * block` and `2 * block + 1`) of `stream`.
    fn pair(&self, stream: u64, block: u64) -> (f64, f64) {
        let ctr = [
            block as u32,
            (block >> 32) as u32,
            stream as u32,
            (stream >> 32) as u32,
        ];
        let r = philox4x32_10(ctr, [self.seed as u32, (self.seed >> 32) as u32]);
        let a = ((r[0] as u64) << 32) | r[1] as u64;
        let b = ((r[2] as u64) << 32) | r[3] as u64;
        // 53-bit uniforms: u1 in (0, 1] keeps the log finite, u2 in [0, 1).
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        let u1 = ((a >> 11) + 1) as f64 * SCALE;
        let u2 = (b >> 11) as f64 * SCALE;
        let radius = libm::sqrt(-2.0 * libm::log(u1));
        let (s, c) = libm::sincos(2.0 * core::f64::consts::PI * u2);
        (radius * c, radius * s)
    }

    /// Fills `out` with elements `0..out.len()` of `stream`.
    pub fn fill(&self, stream: u64, out: &mut [f32]) {
        self.fill_range(stream, 0, out);
    }

    /// Fills `out` with elements `start..start + out.len()` of `stream`: the same values a
    /// whole-buffer [`GaussianNoise::fill`] puts there, so buffers can be filled in chunks.
    pub fn fill_range(&self, stream: u64, start: u64, out: &mut [f32]) {
        let mut j = start;
        // A leading odd element takes the second half of its block.
        let rest = match out.split_first_mut() {
            Some((first, tail)) if j % 2 == 1 => {
                *first = self.pair(stream, j / 2).1 as f32;
                j = j.wrapping_add(1);
                tail
            }
            _ => out,
        };
        let mut chunks = rest.chunks_exact_mut(2);
        for two in &mut chunks {
            let (z0, z1) = self.pair(stream, j / 2);
            two[0] = z0 as f32;
            two[1] = z1 as f32;
            j = j.wrapping_add(2);
        }
        if let [last] = chunks.into_remainder() {
            *last = self.pair(stream, j / 2).0 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::philox4x32_10;

    /// Known-answer vectors of Random123's kat_vectors for philox4x32_10.
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }
}
