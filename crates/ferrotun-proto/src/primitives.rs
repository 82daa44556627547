//! The handshake's symmetric primitives, as the WireGuard whitepaper §5.4 defines them.
//!
//! Responsible for `Hash` (BLAKE2s-256), `Mac` (keyed BLAKE2s-128), `Hmac` (HMAC-BLAKE2s,
//! RFC 2104 with a 64-byte block), the HKDF-style `Kdf1/2/3`, and the handshake AEADs
//! (ChaCha20-Poly1305 with a counter nonce, XChaCha20-Poly1305 for cookies). Not
//! responsible for the transport data path's AEAD (see [`crate::aead`], which is
//! faster and selectable) or for the Noise state machine (see [`crate::handshake`]).

use blake2::digest::{Digest, FixedOutput, KeyInit, Mac as _, Update};
use blake2::{Blake2s256, Blake2sMac, digest::consts::U16};
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, XChaCha20Poly1305};
use zeroize::Zeroizing;

/// BLAKE2s-256 output length.
pub(crate) const HASH_LEN: usize = 32;
/// Keyed BLAKE2s output length used for mac1, mac2 and cookies (whitepaper §5.4.4).
pub(crate) const MAC_LEN: usize = 16;
/// Poly1305 tag length (RFC 8439 §2.5).
pub(crate) const TAG_LEN: usize = 16;
/// BLAKE2s block length, the HMAC block size (RFC 7693 §2.1).
const BLAKE2S_BLOCK: usize = 64;

/// `Hash(a || b || ...)`: BLAKE2s-256 over the concatenation of `parts`.
pub(crate) fn hash(parts: &[&[u8]]) -> [u8; HASH_LEN] {
    let mut h = Blake2s256::new();
    for p in parts {
        Digest::update(&mut h, p);
    }
    h.finalize().into()
}

/// `Mac(key, input)`: keyed BLAKE2s with a 16-byte output (whitepaper §5.4).
pub(crate) fn mac(key: &[u8], input: &[u8]) -> [u8; MAC_LEN] {
    let mut m = Blake2sMac::<U16>::new_from_slice(key)
        .expect("mac keys are 16 or 32 bytes, within BLAKE2s' 32-byte key limit");
    Update::update(&mut m, input);
    m.finalize_fixed().into()
}

/// Checks `Mac(key, input) == tag` in constant time.
pub(crate) fn mac_verify(key: &[u8], input: &[u8], tag: &[u8]) -> bool {
    let mut m = Blake2sMac::<U16>::new_from_slice(key)
        .expect("mac keys are 16 or 32 bytes, within BLAKE2s' 32-byte key limit");
    Update::update(&mut m, input);
    m.verify_slice(tag).is_ok()
}

/// `Hmac(key, input)`: HMAC (RFC 2104) instantiated with BLAKE2s-256. Keys here are 32 bytes.
pub(crate) fn hmac(key: &[u8; HASH_LEN], parts: &[&[u8]]) -> Zeroizing<[u8; HASH_LEN]> {
    let mut ipad = Zeroizing::new([0x36u8; BLAKE2S_BLOCK]);
    let mut opad = Zeroizing::new([0x5cu8; BLAKE2S_BLOCK]);
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = Blake2s256::new();
    Digest::update(&mut inner, &ipad[..]);
    for p in parts {
        Digest::update(&mut inner, p);
    }
    let inner_hash = Zeroizing::new(<[u8; HASH_LEN]>::from(inner.finalize()));
    let mut outer = Blake2s256::new();
    Digest::update(&mut outer, &opad[..]);
    Digest::update(&mut outer, &inner_hash[..]);
    Zeroizing::new(outer.finalize().into())
}

/// `Kdf_n(key, input)` (whitepaper §5.4, HKDF of RFC 5869 with HMAC-BLAKE2s):
/// `τ0 = Hmac(key, input)`, `τ1 = Hmac(τ0, 0x1)`, `τi = Hmac(τ0, τ(i-1) || i)`.
/// Returns `τ1..τN`; `N` is 1, 2 or 3.
pub(crate) fn kdf<const N: usize>(
    key: &[u8; HASH_LEN],
    input: &[u8],
) -> [Zeroizing<[u8; HASH_LEN]>; N] {
    let t0 = hmac(key, &[input]);
    let mut out: [Zeroizing<[u8; HASH_LEN]>; N] =
        std::array::from_fn(|_| Zeroizing::new([0; HASH_LEN]));
    for i in 0..N {
        let counter = [(i + 1) as u8];
        let next = if i == 0 {
            hmac(&t0, &[&counter])
        } else {
            hmac(&t0, &[&out[i - 1][..], &counter])
        };
        out[i] = next;
    }
    out
}

/// The 96-bit nonce WireGuard builds from a 64-bit counter: 32 zero bits, then the counter
/// little endian (whitepaper §5.4.6, RFC 8439 §2.8 nonce of 12 bytes).
pub(crate) fn counter_nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// `AEAD(key, counter, plaintext, aad)` in place; returns the tag.
pub(crate) fn aead_seal(key: &[u8; 32], counter: u64, aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
    let c = ChaCha20Poly1305::new(key.into());
    let tag = c
        .encrypt_inout_detached(&counter_nonce(counter).into(), aad, buf.into())
        .expect("handshake plaintexts are at most 32 bytes, far below ChaCha20-Poly1305's limit");
    tag.into()
}

/// Opens `AEAD(key, counter, ·, aad)` in place; `false` when the tag does not verify.
pub(crate) fn aead_open(
    key: &[u8; 32],
    counter: u64,
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> bool {
    let c = ChaCha20Poly1305::new(key.into());
    c.decrypt_inout_detached(&counter_nonce(counter).into(), aad, buf.into(), tag.into())
        .is_ok()
}

/// `XAEAD(key, nonce, plaintext, aad)` in place (cookie replies, whitepaper §5.4.7).
pub(crate) fn xaead_seal(
    key: &[u8; 32],
    nonce: &[u8; 24],
    aad: &[u8],
    buf: &mut [u8],
) -> [u8; TAG_LEN] {
    let c = XChaCha20Poly1305::new(key.into());
    let tag = c
        .encrypt_inout_detached(nonce.into(), aad, buf.into())
        .expect("a cookie is 16 bytes, far below XChaCha20-Poly1305's limit");
    tag.into()
}

/// Opens an `XAEAD` in place; `false` when the tag does not verify.
pub(crate) fn xaead_open(
    key: &[u8; 32],
    nonce: &[u8; 24],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> bool {
    let c = XChaCha20Poly1305::new(key.into());
    c.decrypt_inout_detached(nonce.into(), aad, buf.into(), tag.into())
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn blake2s_empty_matches_rfc7693_family() {
        // BLAKE2s-256("") (reference value from the BLAKE2 test vectors).
        assert_eq!(
            hash(&[]).to_vec(),
            unhex("69217a3079908094e11121d042354a7c1f55b6482ca1a51e1b250dfd1ed0eef9")
        );
        // RFC 7693 Appendix B: BLAKE2s-256("abc").
        assert_eq!(
            hash(&[b"a", b"bc"]).to_vec(),
            unhex("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982")
        );
    }

    #[test]
    fn hmac_matches_generic_definition() {
        // HMAC with a key equal to the block-padded key is BLAKE2s(opad || BLAKE2s(ipad || m)):
        // check our streaming version against a direct concatenation.
        let key = [0x0bu8; 32];
        let msg = b"Hi There";
        let mut k = [0u8; 64];
        k[..32].copy_from_slice(&key);
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = hash(&[&ipad, msg]);
        let expect = hash(&[&opad, &inner]);
        assert_eq!(*hmac(&key, &[msg]), expect);
        assert_eq!(*hmac(&key, &[b"Hi ", b"There"]), expect);
    }

    #[test]
    fn kdf_chains_as_specified() {
        let key = [3u8; 32];
        let [a, b, c] = kdf::<3>(&key, b"input");
        let t0 = hmac(&key, &[b"input"]);
        let t1 = hmac(&t0, &[&[1]]);
        let t2 = hmac(&t0, &[&t1[..], &[2]]);
        let t3 = hmac(&t0, &[&t2[..], &[3]]);
        assert_eq!((*a, *b, *c), (*t1, *t2, *t3));
        let [x] = kdf::<1>(&key, b"input");
        assert_eq!(*x, *t1);
    }

    #[test]
    fn aead_round_trip_and_tamper() {
        let key = [9u8; 32];
        let mut buf = *b"sixteen byte msg";
        let tag = aead_seal(&key, 0, b"ad", &mut buf);
        assert_ne!(&buf, b"sixteen byte msg");
        let mut bad = buf;
        assert!(!aead_open(&key, 0, b"ae", &mut bad, &tag));
        assert!(aead_open(&key, 0, b"ad", &mut buf, &tag));
        assert_eq!(&buf, b"sixteen byte msg");
        let nonce = [1u8; 24];
        let mut c = [5u8; 16];
        let tag = xaead_seal(&key, &nonce, b"m", &mut c);
        assert!(xaead_open(&key, &nonce, b"m", &mut c, &tag));
        assert_eq!(c, [5u8; 16]);
    }

    #[test]
    fn mac_verify_agrees_with_mac() {
        let t = mac(&[1u8; 32], b"x");
        assert!(mac_verify(&[1u8; 32], b"x", &t));
        assert!(!mac_verify(&[1u8; 32], b"y", &t));
        assert!(!mac_verify(&[2u8; 16], b"x", &t));
    }
}
