//! The transport AEAD: ChaCha20-Poly1305 (RFC 8439) behind one small trait.
//!
//! Responsible for sealing and opening data-message payloads in place with a detached
//! 16-byte tag and WireGuard's counter nonce (32 zero bits, then the 64-bit counter little
//! endian: whitepaper §5.4.6), with three interchangeable backends: `ferrotun-chacha`
//! (AVX-512 and AVX-512 IFMA; the default where the CPU has them: about 1.7× faster than
//! ring at 1420 bytes on our Emerald Rapids lab, `cargo bench -p ferrotun-chacha`), `ring`
//! (BoringSSL's AVX2 assembly, the default elsewhere: `benches/proto.rs` measured it ~3×
//! faster than RustCrypto at 1420 bytes) and RustCrypto's `chacha20poly1305` (pure Rust).
//! Not responsible for counters, replay protection or framing (see [`crate::transport`]).

use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, KeyInit};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use thiserror::Error;

use crate::primitives::counter_nonce;

/// Length of the Poly1305 tag appended to every sealed payload (RFC 8439 §2.5).
pub const TAG_LEN: usize = 16;
/// Length of a ChaCha20-Poly1305 key (RFC 8439 §2.8).
pub const AEAD_KEY_LEN: usize = 32;

/// The AEAD refused: the tag did not verify (forgery, corruption, wrong key, wrong
/// associated data) or a length limit of the algorithm was exceeded.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("AEAD authentication failed")]
pub struct AeadError;

/// ChaCha20-Poly1305 with WireGuard's counter nonce, sealing and opening in place.
pub trait Aead: Send + Sync {
    /// Encrypts `buf` in place under `nonce(counter)` and `aad`; returns the tag.
    fn seal_in_place(
        &self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError>;
    /// Decrypts `buf` in place and verifies `tag`. On error the contents of `buf` are
    /// unspecified (callers must discard them).
    fn open_in_place(
        &self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError>;
    /// Seals every job's text in `buf` in place and writes its tag at
    /// `buf[job.tag..job.tag + 16]`: the same bytes as [`Aead::seal_in_place`] job by job,
    /// which is what this default does. Refuses the whole batch, touching nothing, when a
    /// job's text or tag does not lie in `buf`.
    fn seal_many(&self, buf: &mut [u8], jobs: &[AeadJob<'_>]) -> Result<(), AeadError> {
        check_jobs(buf.len(), jobs)?;
        for job in jobs {
            let tag = self.seal_in_place(job.counter, job.aad, &mut buf[job.text.clone()])?;
            buf[job.tag..job.tag + TAG_LEN].copy_from_slice(&tag);
        }
        Ok(())
    }
    /// Opens every job of a batch: verifies the tag at `buf[job.tag..job.tag + 16]` over
    /// its aad and the ciphertext `buf[job.text]` and decrypts the text in place;
    /// `opened[i]` tells whether job `i` verified (its text is then plaintext; else its
    /// contents are unspecified). This default opens job by job. Refuses the whole batch,
    /// touching nothing, when a job does not lie in `buf` or `opened` is too short.
    fn open_many(
        &self,
        buf: &mut [u8],
        jobs: &[AeadJob<'_>],
        opened: &mut [bool],
    ) -> Result<(), AeadError> {
        check_open(buf.len(), jobs, opened)?;
        for (job, ok) in jobs.iter().zip(opened) {
            let tag: [u8; TAG_LEN] = buf[job.tag..job.tag + TAG_LEN]
                .try_into()
                .expect("check_jobs: the tag lies in buf");
            *ok = self
                .open_in_place(job.counter, job.aad, &mut buf[job.text.clone()], &tag)
                .is_ok();
        }
        Ok(())
    }
}

/// One message of a batch for [`Aead::seal_many`] or [`Aead::open_many`], which seal or
/// open messages that lie in one buffer.
#[derive(Debug, Clone)]
pub struct AeadJob<'a> {
    /// Its counter (the nonce).
    pub counter: u64,
    /// Its associated data.
    pub aad: &'a [u8],
    /// Where its plaintext (sealing) or ciphertext (opening) lies in the buffer.
    pub text: std::ops::Range<usize>,
    /// Where its 16-byte tag goes (sealing) or lies (opening) in the buffer.
    pub tag: usize,
}

/// [`check_jobs`], and that `opened` has room for every job.
fn check_open(len: usize, jobs: &[AeadJob<'_>], opened: &[bool]) -> Result<(), AeadError> {
    check_jobs(len, jobs)?;
    if opened.len() < jobs.len() {
        return Err(AeadError);
    }
    Ok(())
}

/// That every job's text and tag lie in a buffer of `len` bytes.
fn check_jobs(len: usize, jobs: &[AeadJob<'_>]) -> Result<(), AeadError> {
    let fits = |j: &AeadJob<'_>| {
        j.text.start <= j.text.end
            && j.text.end <= len
            && j.tag.checked_add(TAG_LEN).is_some_and(|end| end <= len)
    };
    if jobs.iter().all(fits) {
        Ok(())
    } else {
        Err(AeadError)
    }
}

/// Which implementation seals and opens transport data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AeadBackend {
    /// `ferrotun-chacha` (AVX-512F, AVX-512VL and AVX-512 IFMA). On a CPU without them a
    /// key of this backend is a `Ring` key.
    Avx512,
    /// `ring` 0.17 (BoringSSL's stitched AVX2/SSE4.1 assembly, chosen at run time).
    Ring,
    /// RustCrypto `chacha20poly1305` 0.11 (portable Rust with run-time AVX2 dispatch).
    RustCrypto,
}

impl Default for AeadBackend {
    /// The fastest backend this CPU runs: `Avx512` where it has the features, else `Ring`.
    fn default() -> Self {
        if AeadBackend::Avx512.is_available() {
            AeadBackend::Avx512
        } else {
            AeadBackend::Ring
        }
    }
}

impl AeadBackend {
    /// Every backend, for tests and benchmarks.
    pub const ALL: [AeadBackend; 3] = [
        AeadBackend::Avx512,
        AeadBackend::Ring,
        AeadBackend::RustCrypto,
    ];

    /// The backend's name in configuration files and logs.
    pub fn name(self) -> &'static str {
        match self {
            AeadBackend::Avx512 => "avx512",
            AeadBackend::Ring => "ring",
            AeadBackend::RustCrypto => "rustcrypto",
        }
    }

    /// The backend of that [`name`](Self::name), if any.
    pub fn from_name(name: &str) -> Option<AeadBackend> {
        AeadBackend::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Whether this CPU runs this backend (only `Avx512` depends on it).
    pub fn is_available(self) -> bool {
        match self {
            AeadBackend::Avx512 => ferrotun_chacha::available(),
            AeadBackend::Ring | AeadBackend::RustCrypto => true,
        }
    }

    /// A key of this backend (of `Ring` for `Avx512` on a CPU without AVX-512 IFMA: see
    /// [`TransportAead::backend`]).
    pub fn key(self, key: &[u8; AEAD_KEY_LEN]) -> TransportAead {
        match self {
            AeadBackend::Avx512 => match ferrotun_chacha::ChaCha20Poly1305::new(key) {
                Some(k) => TransportAead::Avx512(Avx512ChaCha(k)),
                None => TransportAead::Ring(RingChaCha::new(key)),
            },
            AeadBackend::Ring => TransportAead::Ring(RingChaCha::new(key)),
            AeadBackend::RustCrypto => TransportAead::RustCrypto(RustCryptoChaCha::new(key)),
        }
    }
}

/// `ferrotun-chacha`'s AVX-512 ChaCha20-Poly1305 (its key is zeroized on drop).
pub struct Avx512ChaCha(ferrotun_chacha::ChaCha20Poly1305);

impl Aead for Avx512ChaCha {
    #[inline]
    fn seal_in_place(
        &self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        self.0
            .seal_in_place(&counter_nonce(counter), aad, buf)
            .map_err(|_| AeadError)
    }

    #[inline]
    fn open_in_place(
        &self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        self.0
            .open_in_place(&counter_nonce(counter), aad, buf, tag)
            .map_err(|_| AeadError)
    }

    /// `ferrotun-chacha`'s batch seal, sixteen jobs at a time (what it shares passes and
    /// Poly1305 lanes among).
    fn seal_many(&self, buf: &mut [u8], jobs: &[AeadJob<'_>]) -> Result<(), AeadError> {
        check_jobs(buf.len(), jobs)?;
        for chunk in jobs.chunks(16) {
            self.0
                .seal_many(buf, &chacha_jobs(chunk)[..chunk.len()])
                .map_err(|_| AeadError)?;
        }
        Ok(())
    }

    /// `ferrotun-chacha`'s batch open, sixteen jobs at a time.
    fn open_many(
        &self,
        buf: &mut [u8],
        jobs: &[AeadJob<'_>],
        opened: &mut [bool],
    ) -> Result<(), AeadError> {
        check_open(buf.len(), jobs, opened)?;
        for (chunk, opened) in jobs.chunks(16).zip(opened.chunks_mut(16)) {
            self.0
                .open_many(buf, &chacha_jobs(chunk)[..chunk.len()], opened)
                .map_err(|_| AeadError)?;
        }
        Ok(())
    }
}

/// Up to sixteen jobs in `ferrotun-chacha`'s form (the array is filled up by repeating the
/// last job; callers take the first `chunk.len()`). `chunk` is not empty.
fn chacha_jobs<'a>(chunk: &[AeadJob<'a>]) -> [ferrotun_chacha::Job<'a>; 16] {
    std::array::from_fn(|i| {
        let j = &chunk[i.min(chunk.len() - 1)];
        ferrotun_chacha::Job {
            nonce: counter_nonce(j.counter),
            aad: j.aad,
            text: j.text.clone(),
            tag: j.tag,
        }
    })
}

/// `ring`'s `CHACHA20_POLY1305` as a `LessSafeKey` (we supply unique counter nonces).
/// ring keeps its key schedule opaque and does not zeroize it on drop (RustCrypto's key
/// does): a known limitation of the default backend on CPUs without AVX-512 IFMA.
pub struct RingChaCha(LessSafeKey);

impl RingChaCha {
    /// A key.
    pub fn new(key: &[u8; AEAD_KEY_LEN]) -> Self {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key)
            .expect("CHACHA20_POLY1305 takes exactly 32-byte keys");
        RingChaCha(LessSafeKey::new(unbound))
    }
}

impl Aead for RingChaCha {
    #[inline]
    fn seal_in_place(
        &self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        let nonce = Nonce::assume_unique_for_key(counter_nonce(counter));
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, Aad::from(aad), buf)
            .map_err(|_| AeadError)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    #[inline]
    fn open_in_place(
        &self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        let nonce = Nonce::assume_unique_for_key(counter_nonce(counter));
        self.0
            .open_in_place_separate_tag(nonce, Aad::from(aad), Tag::from(*tag), buf, 0..)
            .map(|_| ())
            .map_err(|_| AeadError)
    }
}

/// RustCrypto `chacha20poly1305` 0.11 (its key is zeroized on drop).
pub struct RustCryptoChaCha(ChaCha20Poly1305);

impl RustCryptoChaCha {
    /// A key.
    pub fn new(key: &[u8; AEAD_KEY_LEN]) -> Self {
        RustCryptoChaCha(ChaCha20Poly1305::new(key.into()))
    }
}

impl Aead for RustCryptoChaCha {
    #[inline]
    fn seal_in_place(
        &self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        let tag = self
            .0
            .encrypt_inout_detached(&counter_nonce(counter).into(), aad, buf.into())
            .map_err(|_| AeadError)?;
        Ok(tag.into())
    }

    #[inline]
    fn open_in_place(
        &self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        self.0
            .decrypt_inout_detached(&counter_nonce(counter).into(), aad, buf.into(), tag.into())
            .map_err(|_| AeadError)
    }
}

/// A transport key of either backend; dispatches with a `match`, no virtual call.
#[allow(
    clippy::large_enum_variant,
    reason = "kept inline: a Box would add a pointer chase to every packet, and keys live in long-lived keypairs"
)]
pub enum TransportAead {
    /// See [`Avx512ChaCha`].
    Avx512(Avx512ChaCha),
    /// See [`RingChaCha`].
    Ring(RingChaCha),
    /// See [`RustCryptoChaCha`].
    RustCrypto(RustCryptoChaCha),
}

impl TransportAead {
    /// Which backend this key uses.
    pub fn backend(&self) -> AeadBackend {
        match self {
            TransportAead::Avx512(_) => AeadBackend::Avx512,
            TransportAead::Ring(_) => AeadBackend::Ring,
            TransportAead::RustCrypto(_) => AeadBackend::RustCrypto,
        }
    }
}

impl std::fmt::Debug for TransportAead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TransportAead({:?}, <redacted>)", self.backend())
    }
}

impl Aead for TransportAead {
    #[inline]
    fn seal_in_place(
        &self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        match self {
            TransportAead::Avx512(k) => k.seal_in_place(counter, aad, buf),
            TransportAead::Ring(k) => k.seal_in_place(counter, aad, buf),
            TransportAead::RustCrypto(k) => k.seal_in_place(counter, aad, buf),
        }
    }

    #[inline]
    fn open_in_place(
        &self,
        counter: u64,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        match self {
            TransportAead::Avx512(k) => k.open_in_place(counter, aad, buf, tag),
            TransportAead::Ring(k) => k.open_in_place(counter, aad, buf, tag),
            TransportAead::RustCrypto(k) => k.open_in_place(counter, aad, buf, tag),
        }
    }

    fn seal_many(&self, buf: &mut [u8], jobs: &[AeadJob<'_>]) -> Result<(), AeadError> {
        match self {
            TransportAead::Avx512(k) => k.seal_many(buf, jobs),
            TransportAead::Ring(k) => k.seal_many(buf, jobs),
            TransportAead::RustCrypto(k) => k.seal_many(buf, jobs),
        }
    }

    fn open_many(
        &self,
        buf: &mut [u8],
        jobs: &[AeadJob<'_>],
        opened: &mut [bool],
    ) -> Result<(), AeadError> {
        match self {
            TransportAead::Avx512(k) => k.open_many(buf, jobs, opened),
            TransportAead::Ring(k) => k.open_many(buf, jobs, opened),
            TransportAead::RustCrypto(k) => k.open_many(buf, jobs, opened),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::SeededEntropy;
    use proptest::prelude::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 8439 §2.8.2 test vector. Its nonce `07000000 4041424344454647` is not a WireGuard
    /// counter nonce (first 4 bytes are not zero), so it is checked against the raw crates
    /// with that nonce, and our trait is checked against the raw crates below.
    #[test]
    fn rfc8439_section_2_8_2_vector() {
        let key: [u8; 32] =
            unhex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
                .try_into()
                .unwrap();
        let nonce: [u8; 12] = unhex("070000004041424344454647").try_into().unwrap();
        let aad = unhex("50515253c0c1c2c3c4c5c6c7");
        let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let ct = unhex(
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
             3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
             92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
             3ff4def08e4b7a9de576d26586cec64b6116",
        );
        let tag = unhex("1ae10b594f09e26a7e902ecbd0600691");

        let mut buf = pt.to_vec();
        let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
        let t = k
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut buf,
            )
            .unwrap();
        assert_eq!(buf, ct);
        assert_eq!(t.as_ref(), &tag[..]);

        let mut buf = pt.to_vec();
        let c = ChaCha20Poly1305::new((&key).into());
        let t = c
            .encrypt_inout_detached((&nonce).into(), &aad, buf.as_mut_slice().into())
            .unwrap();
        assert_eq!(buf, ct);
        assert_eq!(t.as_slice(), &tag[..]);
    }

    /// RFC 8439 Appendix A.5: the AEAD decryption vector. Its nonce is
    /// `000000000102030405060708`, i.e. a WireGuard counter nonce with counter
    /// `0x0807060504030201`, so it runs through our trait on both backends.
    #[test]
    fn rfc8439_appendix_a5_vector_through_trait() {
        let key: [u8; 32] =
            unhex("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0")
                .try_into()
                .unwrap();
        let counter = u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]);
        let aad = unhex("f33388860000000000004e91");
        let ct = unhex(
            "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2
             4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf
             332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855
             9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4
             b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e
             af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a
             0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10
             49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29
             a6ad5cb4022b02709b",
        );
        let tag: [u8; 16] = unhex("eead9d67890cbb22392336fea1851f38")
            .try_into()
            .unwrap();
        let pt_start = b"Internet-Drafts are draft documents valid for a maximum of six months";
        for backend in AeadBackend::ALL {
            let k = backend.key(&key);
            let mut buf = ct.clone();
            k.open_in_place(counter, &aad, &mut buf, &tag).unwrap();
            assert!(buf.starts_with(pt_start), "{backend:?}");
            let t = k.seal_in_place(counter, &aad, &mut buf).unwrap();
            assert_eq!(buf, ct);
            assert_eq!(t, tag);
            let mut bad = tag;
            bad[0] ^= 1;
            let mut buf = ct.clone();
            assert_eq!(
                k.open_in_place(counter, &aad, &mut buf, &bad),
                Err(AeadError)
            );
        }
    }

    /// Every backend seals `pt` to the same bytes and tag, and each opens every other's.
    fn check_same(key: &[u8; 32], counter: u64, aad: &[u8], pt: &[u8]) {
        let keys = AeadBackend::ALL.map(|b| b.key(key));
        let sealed: Vec<(Vec<u8>, [u8; TAG_LEN])> = keys
            .iter()
            .map(|k| {
                let mut c = pt.to_vec();
                let t = k.seal_in_place(counter, aad, &mut c).unwrap();
                (c, t)
            })
            .collect();
        for (k, (c, t)) in keys.iter().zip(&sealed) {
            assert_eq!(
                c,
                &sealed[0].0,
                "{:?} ciphertext, len {}",
                k.backend(),
                pt.len()
            );
            assert_eq!(t, &sealed[0].1, "{:?} tag, len {}", k.backend(), pt.len());
        }
        for opener in &keys {
            for (c, t) in &sealed {
                let mut x = c.clone();
                opener.open_in_place(counter, aad, &mut x, t).unwrap();
                assert_eq!(x, pt, "{:?} open", opener.backend());
            }
        }
    }

    /// Where the CPU has AVX-512 IFMA (every machine of our lab) the default is the AVX-512
    /// backend and its keys really are AVX-512 keys; elsewhere both fall back to ring.
    #[test]
    fn the_default_backend_is_the_fastest_this_cpu_runs() {
        let key = AeadBackend::Avx512.key(&[9; 32]);
        if ferrotun_chacha::available() {
            assert_eq!(AeadBackend::default(), AeadBackend::Avx512);
            assert_eq!(key.backend(), AeadBackend::Avx512);
        } else {
            assert_eq!(AeadBackend::default(), AeadBackend::Ring);
            assert_eq!(key.backend(), AeadBackend::Ring);
        }
    }

    #[test]
    fn backends_identical_for_every_length_to_1600() {
        let mut rng = SeededEntropy::new(0xaead);
        let mut pt = vec![0u8; 1600];
        for len in 0..=1600 {
            let mut key = [0u8; 32];
            crate::Entropy::fill(&mut rng, &mut key).unwrap();
            crate::Entropy::fill(&mut rng, &mut pt[..len]).unwrap();
            let aad_len = rng.below(3) as usize;
            let aad = [0xa5u8, 0x01][..aad_len.min(2)].to_vec();
            check_same(&key, rng.gen_u64(), &aad, &pt[..len]);
        }
    }

    #[test]
    fn backends_identical_on_sampled_lengths_to_65535() {
        let mut rng = SeededEntropy::new(0x65535);
        let mut pt = vec![0u8; 65535];
        let mut lens: Vec<usize> = (0..40)
            .map(|_| 1601 + rng.below(65535 - 1601) as usize)
            .collect();
        lens.extend([4095, 4096, 4097, 16383, 16384, 65534, 65535]);
        for len in lens {
            let mut key = [0u8; 32];
            crate::Entropy::fill(&mut rng, &mut key).unwrap();
            crate::Entropy::fill(&mut rng, &mut pt[..len]).unwrap();
            check_same(&key, rng.gen_u64(), &[3], &pt[..len]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn backends_identical_proptest(
            key in proptest::array::uniform32(any::<u8>()),
            counter in any::<u64>(),
            aad in proptest::collection::vec(any::<u8>(), 0..64),
            len in 0usize..=65535,
            seed in any::<u64>(),
        ) {
            let mut pt = vec![0u8; len];
            crate::Entropy::fill(&mut SeededEntropy::new(seed), &mut pt).unwrap();
            check_same(&key, counter, &aad, &pt);
        }
    }
}
