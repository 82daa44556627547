//! ChaCha20-Poly1305 (RFC 8439) for x86-64 CPUs with AVX-512F, AVX-512VL and AVX-512 IFMA.
//!
//! Responsible for sealing and opening one message in place with a detached tag, as fast
//! as those instruction sets allow at tunnel packet sizes: ChaCha20 runs sixteen blocks at
//! once, one block per 32-bit lane of a 512-bit register ([`chacha`]); Poly1305 runs eight
//! 16-byte blocks at once in radix 2^44 with the 52-bit multiply-add instructions
//! ([`poly1305`]). Not responsible for choosing nonces, for CPUs without these features
//! ([`ChaCha20Poly1305::new`] returns `None` there and the caller uses another backend), or
//! for anything else of the protocol: `ferrotun-proto` wraps it behind its `Aead` trait.
//!
//! This crate exists so that `ferrotun-proto` can keep `#![forbid(unsafe_code)]`: calling
//! a `#[target_feature]` function and loading a vector from memory are `unsafe`, and every
//! such call here carries a `SAFETY:` comment. Nothing here branches on, or indexes memory
//! by, a secret value: both algorithms are additions, rotations, multiplications and XORs.
//! The tests check every length from 0 to 2048 bytes (and sampled lengths to 64 KiB)
//! against `ring` byte for byte.

#[cfg(target_arch = "x86_64")]
mod chacha;
#[cfg(target_arch = "x86_64")]
mod poly1305;

use zeroize::Zeroize;

/// Length of the Poly1305 tag (RFC 8439 §2.5).
pub const TAG_LEN: usize = 16;
/// Length of a key (RFC 8439 §2.8).
pub const KEY_LEN: usize = 32;
/// Length of a nonce (RFC 8439 §2.8).
pub const NONCE_LEN: usize = 12;
/// The longest message one nonce may cover: block 0 keys Poly1305 and the 32-bit block
/// counter must not wrap (RFC 8439 §2.8: 2^32 - 1 blocks of 64 bytes for the cipher).
pub const MAX_LEN: u64 = ((1u64 << 32) - 1) * 64;

/// Whether this CPU has what [`ChaCha20Poly1305`] needs.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512ifma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The AEAD refused: the tag did not verify, or the message was longer than [`MAX_LEN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error;

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChaCha20-Poly1305 refused: authentication failed, or message too long")
    }
}

impl std::error::Error for Error {}

/// A ChaCha20-Poly1305 key. Its words are zeroized on drop; the copies a seal or an open
/// makes on the stack (the state words, the one-time key, the partial-block keystream) are
/// zeroized when it returns, but keystream and powers of the Poly1305 key may remain in
/// vector registers and in the stack slots the compiler spills them to, as with every
/// AEAD written in a language that does not control spills (ring's keys are not zeroized
/// at all).
pub struct ChaCha20Poly1305 {
    key: [u32; 8],
    /// Off x86-64 no value of this type can exist: `new` returns `None`, and this field,
    /// of a type without values, lets the compiler prove the SIMD calls unreachable.
    #[cfg(not(target_arch = "x86_64"))]
    never: std::convert::Infallible,
}

impl Drop for ChaCha20Poly1305 {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl ChaCha20Poly1305 {
    /// A key, or `None` when the CPU lacks AVX-512F, AVX-512VL or AVX-512 IFMA (the proof,
    /// held by every value of this type, that the SIMD code may run).
    pub fn new(key: &[u8; KEY_LEN]) -> Option<Self> {
        if !available() {
            return None;
        }
        let mut k = ChaCha20Poly1305 {
            key: [0; 8],
            #[cfg(not(target_arch = "x86_64"))]
            never: unreachable!("available() is false off x86-64"),
        };
        for (w, b) in k.key.iter_mut().zip(key.chunks_exact(4)) {
            *w = u32::from_le_bytes(b.try_into().expect("chunks_exact(4) gives 4 bytes"));
        }
        Some(k)
    }

    /// Encrypts `buf` in place under `nonce` and `aad`; returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], Error> {
        if too_long(buf.len()) {
            return Err(Error);
        }
        let mut otk = [0u8; 32];
        self.apply(nonce, buf, |k, _| {
            otk = *k;
            true
        });
        let tag = self.poly_tag(&otk, aad, buf);
        wipe(&mut otk, 0);
        Ok(tag)
    }

    /// Verifies `tag` over `aad` and the ciphertext in `buf`, then decrypts `buf` in place.
    /// On error `buf` is left as it was (still ciphertext).
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Error> {
        if too_long(buf.len()) {
            return Err(Error);
        }
        let verified = self.apply(nonce, buf, |otk, ct| {
            equal_in_constant_time(&self.poly_tag(otk, aad, ct), tag)
        });
        if verified { Ok(()) } else { Err(Error) }
    }

    /// See `chacha::apply`.
    fn apply(
        &self,
        nonce: &[u8; NONCE_LEN],
        buf: &mut [u8],
        check: impl FnOnce(&[u8; 32], &[u8]) -> bool,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `ChaCha20Poly1305` exists only where `available()` returned true, so the
        // CPU has the AVX-512 features `chacha::apply` is compiled for.
        let verified = unsafe { chacha::apply(&self.key, nonce, buf, check) };
        #[cfg(not(target_arch = "x86_64"))]
        let verified = match self.never {};
        verified
    }

    /// The AEAD tag of RFC 8439 §2.8 under one-time key `otk`.
    fn poly_tag(&self, otk: &[u8; 32], aad: &[u8], ct: &[u8]) -> [u8; TAG_LEN] {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `apply`: `self` exists, so the CPU has the features `aead_tag` is
        // compiled for.
        let tag = unsafe { poly1305::aead_tag(otk, aad, ct) };
        #[cfg(not(target_arch = "x86_64"))]
        let tag = match self.never {};
        tag
    }
}

/// Overwrites `x` with `zero`s in one volatile store of the whole array, which the compiler
/// may not drop as dead and which it emits as a few wide stores. `zeroize` writes an array
/// one element at a time: 64 single-byte stores for a block, about 5 % of sealing a
/// 1420-byte message before this replaced it on the per-message copies.
pub(crate) fn wipe<T: Copy, const N: usize>(x: &mut [T; N], zero: T) {
    // SAFETY: `x` is a valid, aligned, exclusive reference to an initialised `[T; N]`,
    // and `[zero; N]` is a valid value of that type.
    unsafe { std::ptr::write_volatile(x, [zero; N]) };
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// Whether a message of `len` bytes is longer than one nonce may cover.
fn too_long(len: usize) -> bool {
    len as u64 > MAX_LEN
}

/// Compares two tags without a branch or an early exit that depends on their contents.
fn equal_in_constant_time(a: &[u8; TAG_LEN], b: &[u8; TAG_LEN]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Entry points for the benchmarks in `benches/`, which see only the public API.
#[doc(hidden)]
pub mod bench_api {
    /// The AEAD tag of RFC 8439 §2.8 under one-time key `otk`. A key (any key: made once,
    /// outside the timed loop) stands for the CPU features the code needs.
    pub fn poly1305_aead_tag(
        features: &super::ChaCha20Poly1305,
        otk: &[u8; 32],
        aad: &[u8],
        ct: &[u8],
    ) -> [u8; 16] {
        features.poly_tag(otk, aad, ct)
    }
}

#[cfg(test)]
mod tests;
