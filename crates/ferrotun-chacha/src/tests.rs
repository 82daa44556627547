//! The AEAD against `ring`, byte for byte, and its refusals.

use super::*;
use proptest::prelude::*;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

/// xorshift64*: a deterministic filler for keys, nonces and messages.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for chunk in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        self.fill(&mut a);
        a
    }
    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.fill(&mut v);
        v
    }
    pub(crate) fn key(&mut self) -> [u8; 32] {
        self.array()
    }
}

fn ours(key: &[u8; 32]) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(key).expect(
        "these tests need AVX-512F, AVX-512VL and AVX-512 IFMA (`available()` is false here)",
    )
}

fn ring_seal(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], pt: &[u8]) -> (Vec<u8>, [u8; 16]) {
    let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).unwrap());
    let mut buf = pt.to_vec();
    let tag = k
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            &mut buf,
        )
        .unwrap();
    (buf, tag.as_ref().try_into().unwrap())
}

/// Seals with both, compares, and opens ring's output with ours.
fn check_against_ring(key: &[u8; 32], nonce: &[u8; 12], aad: &[u8], pt: &[u8]) {
    let (ct, tag) = ring_seal(key, nonce, aad, pt);
    let k = ours(key);
    let mut buf = pt.to_vec();
    let t = k.seal_in_place(nonce, aad, &mut buf).unwrap();
    assert!(
        buf == ct,
        "ciphertext differs at len {} aad {}",
        pt.len(),
        aad.len()
    );
    assert_eq!(t, tag, "tag differs at len {} aad {}", pt.len(), aad.len());
    k.open_in_place(nonce, aad, &mut buf, &tag).unwrap();
    assert!(buf == pt, "open did not restore len {}", pt.len());
}

/// Whether the tests of the SIMD code can run. Where the CPU lacks the features they check
/// the other half of the contract instead (no key can be made, so callers fall back); under
/// `CI=true` that fails unless `FERROTUN_ALLOW_NO_AVX512=1` says the gap is known, so a CI
/// machine without AVX-512 IFMA cannot pass these tests silently.
pub(crate) fn cpu_ok() -> bool {
    if available() {
        return true;
    }
    assert!(ChaCha20Poly1305::new(&[7; 32]).is_none());
    assert!(
        std::env::var_os("CI").is_none() || std::env::var_os("FERROTUN_ALLOW_NO_AVX512").is_some(),
        "CI=true on a CPU without AVX-512F/VL/IFMA: the AVX-512 AEAD is untested here \
         (set FERROTUN_ALLOW_NO_AVX512=1 to accept that)"
    );
    eprintln!("this CPU lacks AVX-512F/VL/IFMA: checked that no key can be made");
    false
}

#[test]
fn a_message_longer_than_one_nonce_covers_is_refused() {
    let max = usize::try_from(MAX_LEN).expect("a 64-bit target");
    assert!(!too_long(max));
    assert!(too_long(max + 1));
}

#[test]
fn rfc8439_section_2_8_2_vector() {
    if !cpu_ok() {
        return;
    }
    let key: [u8; 32] = core::array::from_fn(|i| 0x80 + i as u8);
    let nonce = [
        0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
    ];
    let aad = [
        0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
    ];
    let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let mut buf = pt.to_vec();
    let tag = ours(&key).seal_in_place(&nonce, &aad, &mut buf).unwrap();
    assert_eq!(&buf[..8], &[0xd3, 0x1a, 0x8d, 0x34, 0x64, 0x8e, 0x60, 0xdb]);
    assert_eq!(&buf[pt.len() - 2..], &[0x61, 0x16]);
    assert_eq!(
        tag,
        [
            0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60,
            0x06, 0x91
        ]
    );
    check_against_ring(&key, &nonce, &aad, pt);
}

#[test]
fn identical_to_ring_for_every_length_to_2048() {
    if !cpu_ok() {
        return;
    }
    let mut rng = Rng(0x00c0_ffee);
    let mut pt = vec![0u8; 2048];
    for len in 0..=2048 {
        let key = rng.array::<32>();
        let nonce = rng.array::<12>();
        let aad = rng.array::<40>();
        rng.fill(&mut pt[..len]);
        check_against_ring(&key, &nonce, &aad[..len % 41], &pt[..len]);
    }
}

#[test]
fn identical_to_ring_on_sampled_lengths_to_65535() {
    if !cpu_ok() {
        return;
    }
    let mut rng = Rng(65535);
    let mut pt = vec![0u8; 65535];
    let mut lens: Vec<usize> = (0..40).map(|_| rng.next() as usize % 65536).collect();
    lens.extend([4095, 4096, 4097, 16383, 16384, 65534, 65535]);
    for len in lens {
        let key = rng.array::<32>();
        let nonce = rng.array::<12>();
        rng.fill(&mut pt[..len]);
        check_against_ring(&key, &nonce, &[1, 2, 3], &pt[..len]);
    }
}

#[test]
fn all_ones_inputs_match_ring() {
    if !cpu_ok() {
        return;
    }
    let pt = vec![0xffu8; 4200];
    for len in [0, 1, 15, 16, 17, 63, 64, 65, 1420, 4200] {
        for aad_len in [0, 16, 33] {
            check_against_ring(&[0xff; 32], &[0xff; 12], &pt[..aad_len], &pt[..len]);
        }
    }
}

#[test]
fn any_flipped_bit_is_refused_and_leaves_the_ciphertext() {
    if !cpu_ok() {
        return;
    }
    let mut rng = Rng(7);
    let key = rng.array::<32>();
    let nonce = rng.array::<12>();
    let aad = rng.array::<20>();
    // Every width `chacha::keystream` picks for `apply` (block 0 and up to 3, 7 or 15 more
    // blocks), the tail `xor_from` takes after 15 blocks, and the edges between them.
    for len in [
        0, 1, 100, 192, 193, 300, 448, 449, 960, 961, 1000, 1420, 1472, 1473, 2000,
    ] {
        let mut pt = vec![0u8; len];
        rng.fill(&mut pt);
        let k = ours(&key);
        let mut ct = pt.clone();
        let tag = k.seal_in_place(&nonce, &aad, &mut ct).unwrap();
        // Each bit of the tag, the ciphertext, the aad and the nonce.
        for bit in 0..(16 + len + 20 + 12) * 8 {
            let (mut t, mut c, mut a, mut n) = (tag, ct.clone(), aad, nonce);
            let (i, m) = (bit / 8, 1u8 << (bit % 8));
            match i {
                i if i < 16 => t[i] ^= m,
                i if i < 16 + len => c[i - 16] ^= m,
                i if i < 16 + len + 20 => a[i - 16 - len] ^= m,
                i => n[i - 16 - len - 20] ^= m,
            }
            let before = c.clone();
            assert_eq!(k.open_in_place(&n, &a, &mut c, &t), Err(Error), "bit {bit}");
            assert_eq!(c, before, "a refused open changed the buffer (bit {bit})");
        }
        // A different key.
        let mut other = key;
        other[31] ^= 0x80;
        let mut c = ct.clone();
        assert_eq!(
            ours(&other).open_in_place(&nonce, &aad, &mut c, &tag),
            Err(Error)
        );
        let mut c = ct;
        k.open_in_place(&nonce, &aad, &mut c, &tag).unwrap();
        assert_eq!(c, pt);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn identical_to_ring_proptest(
        key in proptest::array::uniform32(any::<u8>()),
        nonce in proptest::array::uniform12(any::<u8>()),
        aad in proptest::collection::vec(any::<u8>(), 0..80),
        pt in proptest::collection::vec(any::<u8>(), 0..5000),
    ) {
        if cpu_ok() {
            check_against_ring(&key, &nonce, &aad, &pt);
        }
    }
}

#[test]
fn wipe_zeroes_every_element() {
    let mut block = [0xa5u8; 64];
    wipe(&mut block, 0);
    assert_eq!(block, [0u8; 64]);
    let mut words = [u32::MAX; 16];
    wipe(&mut words, 0);
    assert_eq!(words, [0u32; 16]);
}

/// A batch: job `i` has `lens[i]` bytes of text, `aad_lens[i]` bytes of aad (from `aads`),
/// each text in a slot of its own, its tag right behind it, and a gap of junk between
/// slots. Returns the buffer (the plaintexts, random) and the jobs.
fn batch<'a>(
    rng: &mut Rng,
    lens: &[usize],
    aad_lens: &[usize],
    aads: &'a [u8],
) -> (Vec<u8>, Vec<Job<'a>>) {
    let mut jobs = Vec::new();
    let mut at = rng.next() as usize % 64;
    for (i, (&len, &aad_len)) in lens.iter().zip(aad_lens).enumerate() {
        // Random nonces: every word of each lane's nonce differs from the others'.
        let nonce: [u8; 12] = rng.bytes(12).try_into().expect("12 bytes");
        jobs.push(Job {
            nonce,
            aad: &aads[i % 16..i % 16 + aad_len],
            text: at..at + len,
            tag: at + len,
        });
        at += len + TAG_LEN + rng.next() as usize % 48;
    }
    (rng.bytes(at + 5), jobs)
}

/// `seal_many` over the batch against `seal_in_place` job by job; then `open_many` opens
/// it back, except the jobs in `corrupt`, whose tag gets one bit flipped: those must be
/// refused and left as they were. Every byte outside the jobs' texts and tags is left
/// alone throughout.
fn check_batch(key: &[u8; 32], lens: &[usize], aad_lens: &[usize], corrupt: &[usize], seed: u64) {
    let mut rng = Rng(seed | 1);
    let aads = rng.bytes(16 + aad_lens.iter().max().copied().unwrap_or(0));
    let (plain, jobs) = batch(&mut rng, lens, aad_lens, &aads);
    let k = ours(key);
    let mut one_by_one = plain.clone();
    for j in &jobs {
        let tag = k
            .seal_in_place(&j.nonce, j.aad, &mut one_by_one[j.text.clone()])
            .unwrap();
        one_by_one[j.tag..j.tag + TAG_LEN].copy_from_slice(&tag);
    }
    let mut many = plain.clone();
    k.seal_many(&mut many, &jobs).unwrap();
    assert!(
        many == one_by_one,
        "seal_many differs: lens {lens:?} aads {aad_lens:?}"
    );

    let mut corrupt = corrupt.to_vec();
    corrupt.sort_unstable();
    corrupt.dedup();
    for &c in &corrupt {
        many[jobs[c].tag + c % TAG_LEN] ^= 1 << (c % 8);
    }
    let sealed = many.clone();
    let mut opened = vec![false; jobs.len()];
    k.open_many(&mut many, &jobs, &mut opened).unwrap();
    let mut expected = plain.clone();
    for (i, j) in jobs.iter().enumerate() {
        let bad = corrupt.contains(&i);
        assert_eq!(opened[i], !bad, "job {i} of lens {lens:?}");
        let want = if bad { &sealed } else { &plain };
        expected[j.text.clone()].copy_from_slice(&want[j.text.clone()]);
        expected[j.tag..j.tag + TAG_LEN].copy_from_slice(&sealed[j.tag..j.tag + TAG_LEN]);
    }
    assert!(
        many == expected,
        "open_many output wrong: lens {lens:?} corrupt {corrupt:?}"
    );
}

#[test]
fn batches_of_one_shape_match_one_by_one() {
    if !cpu_ok() {
        return;
    }
    let mut rng = Rng(0x5eed);
    // Sixteen or more of one shape are hashed side by side; around the threshold of ten,
    // with a stray shape first, last or in between; every aad and text tail length.
    for n in [1, 9, 10, 11, 15, 16, 17, 33, 44] {
        for (len, aad) in [
            (1420, 0),
            (1424, 0),
            (1424, 1),
            (576, 17),
            (0, 0),
            (15, 16),
            (64, 0),
        ] {
            let mut lens = vec![len; n];
            let aads = vec![aad; n];
            check_batch(&rng.key(), &lens, &aads, &[], rng.next());
            *lens.last_mut().unwrap() = 100;
            check_batch(&rng.key(), &lens, &aads, &[0, n / 2], rng.next());
            lens[0] = 7;
            check_batch(&rng.key(), &lens, &aads, &[n - 1], rng.next());
        }
    }
    for len in 0..200 {
        check_batch(&rng.key(), &[len; 12], &[len % 20; 12], &[3], rng.next());
    }
}

#[test]
fn a_batch_that_does_not_fit_is_refused_whole() {
    if !cpu_ok() {
        return;
    }
    let k = ours(&[9; 32]);
    let job = |text: std::ops::Range<usize>, tag| Job {
        nonce: [1; 12],
        aad: &[],
        text,
        tag,
    };
    let good = job(0..10, 10);
    for bad in [
        job(0..100, 100),
        job(90..100, 100),
        #[allow(
            clippy::reversed_empty_ranges,
            reason = "a backwards range is the bad input"
        )]
        job(50..40, 60),
        job(0..10, 90),
        job(0..10, usize::MAX - 3),
    ] {
        let mut buf = vec![0x33u8; 100];
        assert_eq!(
            k.seal_many(&mut buf, &[good.clone(), bad.clone()]),
            Err(Error)
        );
        assert_eq!(buf, vec![0x33u8; 100], "{bad:?} changed the buffer");
        let mut opened = [true; 2];
        assert_eq!(
            k.open_many(&mut buf, &[good.clone(), bad], &mut opened),
            Err(Error)
        );
        assert_eq!(buf, vec![0x33u8; 100]);
    }
    let mut buf = vec![0u8; 100];
    assert_eq!(
        k.open_many(&mut buf, &[good.clone(), good], &mut [false]),
        Err(Error)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn batches_match_one_by_one_proptest(
        key in proptest::array::uniform32(any::<u8>()),
        shape in (0usize..3000, 0usize..40),
        jobs in proptest::collection::vec((any::<bool>(), 0usize..3000, 0usize..40, any::<bool>()), 0..40),
        seed in any::<u64>(),
    ) {
        if cpu_ok() {
            // Each job takes the common shape or one of its own; some are corrupted.
            let lens: Vec<usize> = jobs.iter().map(|j| if j.0 { shape.0 } else { j.1 }).collect();
            let aads: Vec<usize> = jobs.iter().map(|j| if j.0 { shape.1 } else { j.2 }).collect();
            let corrupt: Vec<usize> = (0..jobs.len()).filter(|&i| jobs[i].3).collect();
            check_batch(&key, &lens, &aads, &corrupt, seed);
        }
    }
}
