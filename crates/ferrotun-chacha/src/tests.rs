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
