//! Cross-check of our Noise_IKpsk2 against the independent `snow` implementation: with the
//! same static, ephemeral and preshared keys and the same prologue, the Noise payload parts
//! of our initiation (ephemeral, encrypted static, encrypted timestamp) and response
//! (ephemeral, encrypted empty payload) must be byte-identical to what snow writes, and
//! the transport keys identical to snow's raw split.

use std::sync::Arc;
use std::time::Instant;

use ferrotun_proto::entropy::EntropyError;
use ferrotun_proto::handshake::{IDENTIFIER, PeerHandshake, Phase1, ResponseVerdict};
use ferrotun_proto::wire::{initiation, response};
use ferrotun_proto::{
    Entropy, HandshakeFlags, Identity, PresharedKey, PrivateKey, SeededEntropy, Tai64N,
};

/// Hands out exactly the bytes it was given (the ephemeral keys), then fails.
struct Fixed(Vec<u8>);

impl Entropy for Fixed {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        if self.0.len() < dest.len() {
            return Err(EntropyError { code: None });
        }
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
        Ok(())
    }
}

fn check(seed: u64, psk: Option<[u8; 32]>, init_flags: HandshakeFlags) {
    let mut rng = SeededEntropy::new(seed);
    let mut bytes = || {
        let mut b = [0u8; 32];
        rng.fill(&mut b).unwrap();
        b
    };
    let (si, sr, ei, er) = (bytes(), bytes(), bytes(), bytes());
    let psk_bytes = psk.unwrap_or([0; 32]);
    let ki = PrivateKey::from_bytes(si);
    let kr = PrivateKey::from_bytes(sr);
    let (pi, pr) = (ki.public_key(), kr.public_key());
    let ts = Tai64N::from_unix(1_700_000_000 + seed, 123_456_789);
    let now = Instant::now();

    let mut prologue = IDENTIFIER.to_vec();
    if !init_flags.is_empty() {
        prologue.push(init_flags.bits());
    }
    let params: snow::params::NoiseParams =
        "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s".parse().unwrap();
    let mut snow_i = snow::Builder::new(params.clone())
        .local_private_key(&si)
        .unwrap()
        .remote_public_key(pr.as_bytes())
        .unwrap()
        .psk(2, &psk_bytes)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&ei)
        .build_initiator()
        .unwrap();
    let mut snow_r = snow::Builder::new(params)
        .local_private_key(&sr)
        .unwrap()
        .psk(2, &psk_bytes)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&er)
        .build_responder()
        .unwrap();

    // Initiation.
    let id_i = Arc::new(Identity::new(ki));
    let id_r = Arc::new(Identity::new(kr));
    let mut ours_i = PeerHandshake::new(id_i, pr, PresharedKey::from_bytes(psk_bytes)).unwrap();
    let mut ours_r =
        PeerHandshake::new(id_r.clone(), pi, PresharedKey::from_bytes(psk_bytes)).unwrap();
    let mut init = [0u8; 148];
    ours_i
        .create_initiation(7, init_flags, ts, now, &mut Fixed(ei.to_vec()), &mut init)
        .unwrap();
    let mut snow_msg1 = [0u8; 256];
    let n = snow_i.write_message(&ts.0, &mut snow_msg1).unwrap();
    assert_eq!(n, 108);
    assert_eq!(
        &init[initiation::EPHEMERAL.start..initiation::TIMESTAMP.end],
        &snow_msg1[..n],
        "initiation differs from snow (seed {seed})"
    );
    let mut payload = [0u8; 64];
    let m = snow_r
        .read_message(
            &init[initiation::EPHEMERAL.start..initiation::TIMESTAMP.end],
            &mut payload,
        )
        .unwrap();
    assert_eq!(&payload[..m], &ts.0);

    // Response (flags zero: our response-flag MixHash has no counterpart in snow).
    let pending = match id_r
        .begin_initiation(&init, &[1], false, now, &mut Fixed(vec![]), &mut [0; 64])
        .unwrap()
    {
        Phase1::Pending(p) => p,
        Phase1::CookieReply(_) => unreachable!(),
    };
    let mut resp = [0u8; 92];
    let keys_r = ours_r
        .accept_initiation(
            pending,
            9,
            HandshakeFlags::NONE,
            now,
            &mut Fixed(er.to_vec()),
            &mut resp,
        )
        .unwrap();
    let mut snow_msg2 = [0u8; 128];
    let n = snow_r.write_message(&[], &mut snow_msg2).unwrap();
    assert_eq!(n, 48);
    assert_eq!(
        &resp[response::EPHEMERAL.start..response::EMPTY.end],
        &snow_msg2[..n],
        "response differs (seed {seed})"
    );
    snow_i.read_message(&snow_msg2[..n], &mut payload).unwrap();
    let keys_i = match ours_i
        .consume_response(&resp, &[1], false, now, &mut Fixed(vec![]), &mut [0; 64])
        .unwrap()
    {
        ResponseVerdict::Complete(k) => k,
        ResponseVerdict::CookieReply(_) => unreachable!(),
    };

    // Transport keys: snow's split is (initiator→responder, responder→initiator).
    let (k1, k2) = snow_i.dangerously_get_raw_split();
    assert_eq!((k1, k2), snow_r.dangerously_get_raw_split());
    assert_eq!(*keys_i.send, k1);
    assert_eq!(*keys_i.receive, k2);
    assert_eq!(*keys_r.receive, k1);
    assert_eq!(*keys_r.send, k2);
}

#[test]
fn matches_snow_without_psk() {
    for seed in 0..8 {
        check(seed, None, HandshakeFlags::NONE);
    }
}

#[test]
fn matches_snow_with_psk() {
    for seed in 100..108 {
        check(seed, Some([seed as u8; 32]), HandshakeFlags::NONE);
    }
}

#[test]
fn matches_snow_with_initiation_flags_in_the_prologue() {
    for (seed, bits) in [(200, 1), (201, 2), (202, 3)] {
        check(
            seed,
            Some([9; 32]),
            HandshakeFlags::from_bits(bits).unwrap(),
        );
    }
}
