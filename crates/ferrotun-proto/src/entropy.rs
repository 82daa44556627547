//! Injectable randomness.
//!
//! Responsible for the one trait through which every random byte of this crate flows
//! (ephemeral keys, private-key generation, cookie secrets and nonces, timer jitter), an
//! implementation over the operating system's CSPRNG, and a seeded deterministic one that
//! makes tests and simulations repeatable. Not responsible for seeding policy or for
//! thread sharing: the caller owns an instance per thread ([`OsEntropy`] is a zero-sized
//! handle, so that is free).

use thiserror::Error;

/// The operating system refused to give us random bytes.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("the operating system's random number generator failed (OS error code {code:?})")]
pub struct EntropyError {
    /// The OS error code `getrandom` reported, if it was an OS error.
    pub code: Option<i64>,
}

/// A source of random bytes.
///
/// Production code uses [`OsEntropy`]. Tests use [`SeededEntropy`], which is deterministic
/// and **not** cryptographically secure.
pub trait Entropy {
    /// Fills `dest` with random bytes.
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError>;

    /// A uniformly random `u64`.
    fn next_u64(&mut self) -> Result<u64, EntropyError> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

impl<E: Entropy + ?Sized> Entropy for &mut E {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        (**self).fill(dest)
    }
}

/// The operating system's CSPRNG via `getrandom` (the `getrandom(2)` syscall on Linux).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        getrandom::getrandom(dest).map_err(|e| EntropyError {
            code: e.raw_os_error().map(i64::from),
        })
    }
}

/// A deterministic generator (xoshiro256**, seeded through SplitMix64) for tests and
/// simulations. **Not cryptographically secure: never use it for real keys.**
#[derive(Debug, Clone)]
pub struct SeededEntropy {
    s: [u64; 4],
}

impl SeededEntropy {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            // SplitMix64 (Steele, Lea, Flood 2014), the seeding routine xoshiro's authors
            // recommend.
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        SeededEntropy {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits (infallible, unlike [`Entropy::next_u64`]).
    pub fn gen_u64(&mut self) -> u64 {
        // xoshiro256** 1.0 (Blackman, Vigna 2018).
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A number in `0..bound` (`bound` > 0); slightly biased, which is fine for tests.
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0, "SeededEntropy::below needs a positive bound");
        self.gen_u64() % bound.max(1)
    }
}

impl Entropy for SeededEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        for chunk in dest.chunks_mut(8) {
            let v = self.gen_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_deterministic_and_seed_dependent() {
        let (mut a, mut b, mut c) = (
            SeededEntropy::new(7),
            SeededEntropy::new(7),
            SeededEntropy::new(8),
        );
        let (mut x, mut y, mut z) = ([0u8; 37], [0u8; 37], [0u8; 37]);
        a.fill(&mut x).unwrap();
        b.fill(&mut y).unwrap();
        c.fill(&mut z).unwrap();
        assert_eq!(x, y);
        assert_ne!(x, z);
    }

    #[test]
    fn os_entropy_fills() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        OsEntropy.fill(&mut a).unwrap();
        OsEntropy.fill(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
