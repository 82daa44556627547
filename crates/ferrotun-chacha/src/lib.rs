//! ChaCha20-Poly1305 (RFC 8439) for x86-64 CPUs with AVX-512F, AVX-512VL and AVX-512 IFMA.
//!
//! Responsible for sealing and opening messages in place with a detached tag, one at a time
//! or a batch at once, as fast as those instruction sets allow at tunnel packet sizes:
//! ChaCha20 runs sixteen blocks at once, one block per 32-bit lane of a 512-bit register
//! (in a batch the blocks of several messages share a pass) ([`chacha`]); Poly1305 runs
//! eight 16-byte blocks at once in radix 2^44 with the 52-bit multiply-add instructions,
//! or in a batch up to sixteen messages side by side, one per lane ([`poly1305`]). Not
//! responsible for choosing nonces, for CPUs without these features
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

    /// Seals every job's text in `buf` in place under its nonce and aad, and writes its
    /// tag at `buf[job.tag..job.tag + 16]`: the same bytes as [`Self::seal_in_place`] on
    /// each job in turn, faster for a batch: the ChaCha20 blocks of all jobs share
    /// sixteen-lane passes, and Poly1305 hashes up to sixteen jobs of one length side by
    /// side, one per lane. Refuses the whole batch, touching nothing, when a job's text or
    /// tag does not lie in `buf` or its text is longer than [`MAX_LEN`] less one block.
    /// Jobs whose bytes overlap give unspecified output.
    pub fn seal_many(&self, buf: &mut [u8], jobs: &[Job<'_>]) -> Result<(), Error> {
        check_jobs(buf.len(), jobs)?;
        for jobs in jobs.chunks(CHUNK) {
            if worth_batching(jobs) {
                self.seal_chunk(buf, jobs);
            } else {
                for job in jobs {
                    let tag =
                        self.seal_in_place(&job.nonce, job.aad, &mut buf[job.text.clone()])?;
                    buf[job.tag..job.tag + TAG_LEN].copy_from_slice(&tag);
                }
            }
        }
        Ok(())
    }

    /// Opens every job of a batch: verifies its tag (read from `buf[job.tag..]`) over its
    /// aad and the ciphertext `buf[job.text]`, and decrypts the text in place when it
    /// verifies. `opened[i]` tells whether job `i` did; a job that did not is left as it
    /// was (still ciphertext). Refuses the whole batch, touching nothing, for the reasons
    /// [`Self::seal_many`] gives, or when `opened` is shorter than `jobs`.
    pub fn open_many(
        &self,
        buf: &mut [u8],
        jobs: &[Job<'_>],
        opened: &mut [bool],
    ) -> Result<(), Error> {
        check_jobs(buf.len(), jobs)?;
        if opened.len() < jobs.len() {
            return Err(Error);
        }
        for (jobs, opened) in jobs.chunks(CHUNK).zip(opened.chunks_mut(CHUNK)) {
            if worth_batching(jobs) {
                self.open_chunk(buf, jobs, opened);
            } else {
                for (job, ok) in jobs.iter().zip(opened.iter_mut()) {
                    let tag = buf[job.tag..job.tag + TAG_LEN]
                        .try_into()
                        .expect("check_jobs: the tag lies in buf");
                    *ok = self
                        .open_in_place(&job.nonce, job.aad, &mut buf[job.text.clone()], &tag)
                        .is_ok();
                }
            }
        }
        Ok(())
    }

    /// [`Self::seal_many`] for one chunk (at most [`CHUNK`] jobs), together.
    fn seal_chunk(&self, buf: &mut [u8], jobs: &[Job<'_>]) {
        let mut all_keys = [[0u8; 32]; CHUNK];
        let mut tags = [[0u8; TAG_LEN]; CHUNK];
        let keys = &mut all_keys[..jobs.len()];
        self.apply_many(jobs, buf, keys, |_, len| 0..blocks_of(len) + 1);
        self.tags(jobs, keys, buf, &mut tags);
        for (job, tag) in jobs.iter().zip(&tags) {
            buf[job.tag..job.tag + TAG_LEN].copy_from_slice(tag);
        }
        wipe(&mut all_keys, [0; 32]);
    }

    /// [`Self::open_many`] for one chunk (at most [`CHUNK`] jobs), together: first every
    /// key block, then the tags, then the keystream of the jobs that verified.
    fn open_chunk(&self, buf: &mut [u8], jobs: &[Job<'_>], opened: &mut [bool]) {
        let mut all_keys = [[0u8; 32]; CHUNK];
        let mut tags = [[0u8; TAG_LEN]; CHUNK];
        let keys = &mut all_keys[..jobs.len()];
        self.apply_many(jobs, buf, keys, |_, _| 0..1);
        self.tags(jobs, keys, buf, &mut tags);
        for ((job, want), ok) in jobs.iter().zip(&tags).zip(opened.iter_mut()) {
            let tag = buf[job.tag..job.tag + TAG_LEN]
                .try_into()
                .expect("check_jobs: the tag lies in buf");
            *ok = equal_in_constant_time(want, tag);
        }
        let opened = &*opened;
        self.apply_many(jobs, buf, keys, |i, len| {
            if opened[i] {
                1..blocks_of(len) + 1
            } else {
                1..1
            }
        });
        wipe(&mut all_keys, [0; 32]);
    }

    /// The tags of a chunk's jobs under their one-time keys over their texts as `buf`
    /// holds them now, into `tags[..jobs.len()]`. Jobs of the chunk's [`common_shape`] are
    /// hashed side by side, one per lane, when there are at least [`MIN_SIDE_BY_SIDE`] of
    /// them; the others one by one.
    fn tags(&self, jobs: &[Job<'_>], keys: &[[u8; 32]], buf: &[u8], tags: &mut [[u8; TAG_LEN]]) {
        let mut side = [0usize; CHUNK];
        let mut n = 0;
        if let Some((common, count)) = common_shape(jobs)
            && count >= MIN_SIDE_BY_SIDE
        {
            for (i, job) in jobs.iter().enumerate() {
                if shape(job) == common {
                    side[n] = i;
                    n += 1;
                }
            }
            self.tags_side_by_side(&side[..n], jobs, keys, buf, tags);
        }
        let mut together = side[..n].iter().peekable();
        for (i, (job, otk)) in jobs.iter().zip(keys).enumerate() {
            if together.next_if_eq(&&i).is_none() {
                tags[i] = self.poly_tag(otk, job.aad, &buf[job.text.clone()]);
            }
        }
    }

    /// The tags of jobs `which` (at most [`CHUNK`], all of one shape) into `tags`.
    fn tags_side_by_side(
        &self,
        which: &[usize],
        jobs: &[Job<'_>],
        keys: &[[u8; 32]],
        buf: &[u8],
        tags: &mut [[u8; TAG_LEN]],
    ) {
        let n = which.len();
        let pick = |k: usize| which[k.min(n - 1)];
        let mut otks: [[u8; 32]; CHUNK] = std::array::from_fn(|k| keys[pick(k)]);
        let aads: [&[u8]; CHUNK] = std::array::from_fn(|k| jobs[pick(k)].aad);
        let texts: [&[u8]; CHUNK] = std::array::from_fn(|k| &buf[jobs[pick(k)].text.clone()]);
        let mut out = [[0u8; TAG_LEN]; CHUNK];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `apply`: `self` exists, so the CPU has the features
        // `aead_tags_lanes` is compiled for.
        unsafe {
            poly1305::aead_tags_lanes(&otks[..n], &aads[..n], &texts[..n], &mut out[..n])
        };
        #[cfg(not(target_arch = "x86_64"))]
        match self.never {}
        for (&i, tag) in which.iter().zip(&out) {
            tags[i] = *tag;
        }
        wipe(&mut otks, [0; 32]);
    }

    /// See `chacha::apply_many`: the blocks `blocks(i, text length)` of every job `i`.
    fn apply_many(
        &self,
        jobs: &[Job<'_>],
        buf: &mut [u8],
        keys: &mut [[u8; 32]],
        blocks: impl Fn(usize, usize) -> std::ops::Range<u32>,
    ) {
        let span = |i: usize| {
            let job = &jobs[i];
            chacha::Span {
                nonce: job.nonce,
                bytes: job.text.clone(),
                blocks: blocks(i, job.text.len()),
            }
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `apply`: `self` exists, so the CPU has the features
        // `chacha::apply_many` is compiled for.
        unsafe {
            chacha::apply_many(&self.key, span, buf, keys)
        };
        #[cfg(not(target_arch = "x86_64"))]
        match self.never {}
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
/// may not drop as dead and which it emits as wide stores (or, for large arrays, a copy
/// from a zeroed stack slot). `zeroize` writes an array one element at a time: 64
/// single-byte stores for a block, which cost about 5 % of sealing a 1420-byte message
/// when the per-message copies were wiped that way.
pub(crate) fn wipe<T: Copy, const N: usize>(x: &mut [T; N], zero: T) {
    // SAFETY: `x` is a valid, aligned, exclusive reference to an initialised `[T; N]`,
    // and `[zero; N]` is a valid value of that type.
    unsafe { std::ptr::write_volatile(x, [zero; N]) };
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// One message of a batch for [`ChaCha20Poly1305::seal_many`] and
/// [`ChaCha20Poly1305::open_many`], all of whose messages lie in one buffer.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    /// The message's nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Its associated data.
    pub aad: &'a [u8],
    /// Where its plaintext (sealing) or ciphertext (opening) lies in the buffer.
    pub text: std::ops::Range<usize>,
    /// Where its 16-byte tag lies in the buffer.
    pub tag: usize,
}

/// Jobs per round of a batch: as many as Poly1305 hashes side by side. Their one-time
/// keys sit on the stack, their texts stay in the L1 cache between encryption and hash.
const CHUNK: usize = 16;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(CHUNK == poly1305::LANES);

/// Jobs of one shape that are hashed side by side rather than one by one: sixteen lanes
/// cost about as much as eleven 1424-byte messages one by one, or eight of 576 bytes
/// (measured on the Emerald Rapids guest).
const MIN_SIDE_BY_SIDE: usize = 10;

/// Whether a chunk of jobs is faster together than one by one. Measured on the Emerald
/// Rapids guest (`cargo bench --bench chacha`, and alternating runs of both ways): for
/// 1420-byte messages only the side-by-side Poly1305 pays, from about ten of one shape
/// (sharing ChaCha20 passes alone gained 0–3 % sealing and lost opening, which computes
/// the key blocks in a pass of their own); for short messages (three blocks or fewer,
/// whose single ChaCha20 pass is bound by latency) packing pays from four.
fn worth_batching(jobs: &[Job<'_>]) -> bool {
    if jobs.iter().all(|j| j.text.len() <= 3 * 64) {
        return jobs.len() >= 4;
    }
    common_shape(jobs).is_some_and(|(_, count)| count >= MIN_SIDE_BY_SIDE)
}

/// A job's shape: its aad and text lengths, which fix the layout of its Poly1305 input.
fn shape(job: &Job<'_>) -> (usize, usize) {
    (job.aad.len(), job.text.len())
}

/// The more common of the first and the last job's shapes (a batch from one TCP
/// super-segment is full-size packets and one short one, at either end), and how many jobs
/// have it; `None` for no jobs.
fn common_shape(jobs: &[Job<'_>]) -> Option<((usize, usize), usize)> {
    let count = |s| jobs.iter().filter(|j| shape(j) == s).count();
    let (first, last) = (shape(jobs.first()?), shape(jobs.last()?));
    let (a, b) = (count(first), count(last));
    Some(if a >= b { (first, a) } else { (last, b) })
}

/// ChaCha20 blocks after block 0 that `len` bytes take. `check_jobs` keeps `len` a block
/// below [`MAX_LEN`], so this and one more fit a `u32`.
fn blocks_of(len: usize) -> u32 {
    len.div_ceil(64) as u32
}

/// That every job's text and tag lie in a buffer of `len` bytes and no text is too long
/// for a batch (a block less than [`MAX_LEN`], so that block counters stay in a `u32`).
fn check_jobs(len: usize, jobs: &[Job<'_>]) -> Result<(), Error> {
    let fits = |j: &Job<'_>| {
        j.text.start <= j.text.end
            && j.text.end <= len
            && !too_long(j.text.len() + 64)
            && j.tag.checked_add(TAG_LEN).is_some_and(|end| end <= len)
    };
    if jobs.iter().all(fits) {
        Ok(())
    } else {
        Err(Error)
    }
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
