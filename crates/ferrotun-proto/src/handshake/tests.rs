use super::*;
use crate::entropy::SeededEntropy;
use crate::wire::{COOKIE_REPLY_LEN, RESPONSE_LEN};
use proptest::prelude::*;

const SRC: &[u8] = &[192, 0, 2, 1, 0x1f, 0x90];

struct Pair {
    a_id: Arc<Identity>,
    b_id: Arc<Identity>,
    a: PeerHandshake,
    b: PeerHandshake,
}

fn pair(seed: u64, psk: PresharedKey) -> (Pair, SeededEntropy) {
    let mut rng = SeededEntropy::new(seed);
    let a_id = Arc::new(Identity::new(PrivateKey::generate(&mut rng).unwrap()));
    let b_id = Arc::new(Identity::new(PrivateKey::generate(&mut rng).unwrap()));
    let a = PeerHandshake::new(a_id.clone(), b_id.public_key(), psk.clone()).unwrap();
    let b = PeerHandshake::new(b_id.clone(), a_id.public_key(), psk).unwrap();
    (Pair { a_id, b_id, a, b }, rng)
}

fn ts(secs: u64) -> Tai64N {
    Tai64N::from_unix(1_700_000_000 + secs, 0)
}

fn pending(p: Phase1) -> PendingInitiation {
    match p {
        Phase1::Pending(x) => x,
        Phase1::CookieReply(_) => panic!("unexpected cookie reply"),
    }
}

/// Runs a full handshake; returns (initiator keys, responder keys, initiation, response).
fn handshake(
    p: &mut Pair,
    rng: &mut SeededEntropy,
    now: Instant,
    t: Tai64N,
    flags: (HandshakeFlags, HandshakeFlags),
) -> (DerivedKeys, DerivedKeys, Vec<u8>, Vec<u8>) {
    let mut init = [0u8; INITIATION_LEN];
    p.a.create_initiation(0x100, flags.0, t, now, rng, &mut init)
        .unwrap();
    let pend = pending(
        p.b_id
            .begin_initiation(&init, SRC, false, now, rng, &mut [0; 64])
            .unwrap(),
    );
    assert_eq!(pend.initiator(), p.a_id.public_key());
    assert_eq!(pend.flags(), flags.0);
    let mut resp = [0u8; RESPONSE_LEN];
    let rk =
        p.b.accept_initiation(pend, 0x200, flags.1, now, rng, &mut resp)
            .unwrap();
    let ik = match p
        .a
        .consume_response(&resp, SRC, false, now, rng, &mut [0; 64])
        .unwrap()
    {
        ResponseVerdict::Complete(k) => k,
        other => panic!("{other:?}"),
    };
    (ik, rk, init.to_vec(), resp.to_vec())
}

#[test]
fn keys_match_and_indexes_cross() {
    let (mut p, mut rng) = pair(1, PresharedKey::none());
    let now = Instant::now();
    let (i, r, _, _) = handshake(
        &mut p,
        &mut rng,
        now,
        ts(0),
        (HandshakeFlags::NONE, HandshakeFlags::NONE),
    );
    assert_eq!(*i.send, *r.receive);
    assert_eq!(*i.receive, *r.send);
    assert_ne!(*i.send, *i.receive);
    assert_eq!((i.local_index, i.remote_index), (0x100, 0x200));
    assert_eq!((r.local_index, r.remote_index), (0x200, 0x100));
    assert!(i.initiator && !r.initiator);
}

#[test]
fn flags_are_exchanged_and_authenticated() {
    let (mut p, mut rng) = pair(2, PresharedKey::none());
    let now = Instant::now();
    let f = (HandshakeFlags::COMPRESSION, HandshakeFlags::ETHERNET);
    let (i, r, _, _) = handshake(&mut p, &mut rng, now, ts(0), f);
    assert_eq!(i.peer_flags, HandshakeFlags::ETHERNET);
    assert_eq!(r.peer_flags, HandshakeFlags::COMPRESSION);

    // An attacker changes the initiation's flags and recomputes mac1 (mac1 is keyed by a
    // public key, so anyone can): the prologue differs, so the static key fails to decrypt.
    let mut init = [0u8; INITIATION_LEN];
    p.a.create_initiation(
        0x101,
        HandshakeFlags::COMPRESSION,
        ts(1),
        now,
        &mut rng,
        &mut init,
    )
    .unwrap();
    init[1] = HandshakeFlags::ETHERNET.bits();
    let k = hash(&[LABEL_MAC1, p.b_id.public_key().as_bytes()]);
    let m = mac(&k, &init[..initiation::MAC1.start]);
    init[initiation::MAC1].copy_from_slice(&m);
    assert_eq!(
        p.b_id
            .begin_initiation(&init, SRC, false, now, &mut rng, &mut [0; 64])
            .unwrap_err(),
        HandshakeError::Decryption {
            message: "initiation",
            field: "static key"
        }
    );

    // Same for the response's flags: the empty payload fails to authenticate.
    let now = now + Duration::from_secs(1);
    let mut init = [0u8; INITIATION_LEN];
    p.a.create_initiation(0x102, HandshakeFlags::NONE, ts(2), now, &mut rng, &mut init)
        .unwrap();
    let pend = pending(
        p.b_id
            .begin_initiation(&init, SRC, false, now, &mut rng, &mut [0; 64])
            .unwrap(),
    );
    let mut resp = [0u8; RESPONSE_LEN];
    p.b.accept_initiation(pend, 0x201, HandshakeFlags::NONE, now, &mut rng, &mut resp)
        .unwrap();
    resp[1] = HandshakeFlags::COMPRESSION.bits();
    let k = hash(&[LABEL_MAC1, p.a_id.public_key().as_bytes()]);
    let m = mac(&k, &resp[..response::MAC1.start]);
    resp[response::MAC1].copy_from_slice(&m);
    assert_eq!(
        p.a.consume_response(&resp, SRC, false, now, &mut rng, &mut [0; 64])
            .unwrap_err(),
        HandshakeError::Decryption {
            message: "response",
            field: "empty payload"
        }
    );
}

#[test]
fn replayed_initiation_is_rejected() {
    let (mut p, mut rng) = pair(3, PresharedKey::none());
    let now = Instant::now();
    let (_, _, init, _) = handshake(
        &mut p,
        &mut rng,
        now,
        ts(0),
        (HandshakeFlags::NONE, HandshakeFlags::NONE),
    );
    let later = now + Duration::from_secs(1);
    let pend = pending(
        p.b_id
            .begin_initiation(&init, SRC, false, later, &mut rng, &mut [0; 64])
            .unwrap(),
    );
    let err =
        p.b.accept_initiation(
            pend,
            0x300,
            HandshakeFlags::NONE,
            later,
            &mut rng,
            &mut [0; 92],
        )
        .unwrap_err();
    assert!(
        matches!(err, HandshakeError::ReplayedInitiation { .. }),
        "{err:?}"
    );
    // An older timestamp is refused too; a newer one is accepted.
    let mut old = [0u8; INITIATION_LEN];
    p.a.create_initiation(
        0x103,
        HandshakeFlags::NONE,
        Tai64N::from_unix(1_600_000_000, 0),
        later,
        &mut rng,
        &mut old,
    )
    .unwrap();
    let pend = pending(
        p.b_id
            .begin_initiation(&old, SRC, false, later, &mut rng, &mut [0; 64])
            .unwrap(),
    );
    assert!(matches!(
        p.b.accept_initiation(
            pend,
            0x301,
            HandshakeFlags::NONE,
            later,
            &mut rng,
            &mut [0; 92]
        ),
        Err(HandshakeError::ReplayedInitiation { .. })
    ));
    let mut new = [0u8; INITIATION_LEN];
    p.a.create_initiation(
        0x104,
        HandshakeFlags::NONE,
        ts(5),
        later,
        &mut rng,
        &mut new,
    )
    .unwrap();
    let pend = pending(
        p.b_id
            .begin_initiation(&new, SRC, false, later, &mut rng, &mut [0; 64])
            .unwrap(),
    );
    p.b.accept_initiation(
        pend,
        0x302,
        HandshakeFlags::NONE,
        later,
        &mut rng,
        &mut [0; 92],
    )
    .unwrap();
}

#[test]
fn initiation_flood_is_rejected() {
    let (mut p, mut rng) = pair(4, PresharedKey::none());
    let now = Instant::now();
    handshake(
        &mut p,
        &mut rng,
        now,
        ts(0),
        (HandshakeFlags::NONE, HandshakeFlags::NONE),
    );
    let soon = now + Duration::from_millis(10);
    let mut init = [0u8; INITIATION_LEN];
    p.a.create_initiation(
        0x105,
        HandshakeFlags::NONE,
        ts(1),
        soon,
        &mut rng,
        &mut init,
    )
    .unwrap();
    let pend = pending(
        p.b_id
            .begin_initiation(&init, SRC, false, soon, &mut rng, &mut [0; 64])
            .unwrap(),
    );
    assert!(matches!(
        p.b.accept_initiation(
            pend,
            0x303,
            HandshakeFlags::NONE,
            soon,
            &mut rng,
            &mut [0; 92]
        ),
        Err(HandshakeError::InitiationFlood { .. })
    ));
    // The refused initiation did not advance the replay state: it is accepted once the
    // interval has passed.
    let ok = now + MIN_INITIATION_INTERVAL;
    let pend = pending(
        p.b_id
            .begin_initiation(&init, SRC, false, ok, &mut rng, &mut [0; 64])
            .unwrap(),
    );
    p.b.accept_initiation(
        pend,
        0x304,
        HandshakeFlags::NONE,
        ok,
        &mut rng,
        &mut [0; 92],
    )
    .unwrap();
}

#[test]
fn unknown_initiator_is_identified_and_refused() {
    let (p, mut rng) = pair(5, PresharedKey::none());
    let now = Instant::now();
    // A stranger who knows B's public key: phase 1 succeeds and names the stranger...
    let stranger = Arc::new(Identity::new(PrivateKey::generate(&mut rng).unwrap()));
    let mut s =
        PeerHandshake::new(stranger.clone(), p.b_id.public_key(), PresharedKey::none()).unwrap();
    let mut init = [0u8; INITIATION_LEN];
    s.create_initiation(9, HandshakeFlags::NONE, ts(0), now, &mut rng, &mut init)
        .unwrap();
    let pend = pending(
        p.b_id
            .begin_initiation(&init, SRC, false, now, &mut rng, &mut [0; 64])
            .unwrap(),
    );
    assert_eq!(pend.initiator(), stranger.public_key());
    assert_ne!(pend.initiator(), p.a_id.public_key());
    // The caller's lookup fails: the typed error names the key.
    let mut again = [0u8; INITIATION_LEN];
    s.create_initiation(10, HandshakeFlags::NONE, ts(1), now, &mut rng, &mut again)
        .unwrap();
    let other = pending(
        p.b_id
            .begin_initiation(&again, SRC, false, now, &mut rng, &mut [0; 64])
            .unwrap(),
    );
    assert_eq!(
        other.unknown_initiator(),
        HandshakeError::UnknownInitiator {
            key: stranger.public_key()
        }
    );
    // ...and phase 2 on a configured peer's state refuses it.
    let mut b = p.b;
    assert_eq!(
        b.accept_initiation(pend, 1, HandshakeFlags::NONE, now, &mut rng, &mut [0; 92])
            .unwrap_err(),
        HandshakeError::PeerMismatch {
            got: stranger.public_key(),
            want: p.a_id.public_key()
        }
    );
}

#[test]
fn wrong_responder_key_fails() {
    let (p, mut rng) = pair(6, PresharedKey::none());
    let now = Instant::now();
    let other = PrivateKey::generate(&mut rng).unwrap().public_key();
    let mut a = PeerHandshake::new(p.a_id.clone(), other, PresharedKey::none()).unwrap();
    let mut init = [0u8; INITIATION_LEN];
    a.create_initiation(1, HandshakeFlags::NONE, ts(0), now, &mut rng, &mut init)
        .unwrap();
    assert_eq!(
        p.b_id
            .begin_initiation(&init, SRC, false, now, &mut rng, &mut [0; 64])
            .unwrap_err(),
        HandshakeError::InvalidMac1
    );
    // Even with mac1 fixed up for B, the static key does not decrypt.
    let k = hash(&[LABEL_MAC1, p.b_id.public_key().as_bytes()]);
    let m = mac(&k, &init[..initiation::MAC1.start]);
    init[initiation::MAC1].copy_from_slice(&m);
    assert!(matches!(
        p.b_id
            .begin_initiation(&init, SRC, false, now, &mut rng, &mut [0; 64]),
        Err(HandshakeError::Decryption { .. })
    ));
}

#[test]
fn psk_mismatch_fails_at_the_initiator() {
    let (mut p, mut rng) = pair(7, PresharedKey::from_bytes([1; 32]));
    p.b = PeerHandshake::new(
        p.b_id.clone(),
        p.a_id.public_key(),
        PresharedKey::from_bytes([2; 32]),
    )
    .unwrap();
    let now = Instant::now();
    let mut init = [0u8; INITIATION_LEN];
    p.a.create_initiation(1, HandshakeFlags::NONE, ts(0), now, &mut rng, &mut init)
        .unwrap();
    let pend = pending(
        p.b_id
            .begin_initiation(&init, SRC, false, now, &mut rng, &mut [0; 64])
            .unwrap(),
    );
    let mut resp = [0u8; RESPONSE_LEN];
    p.b.accept_initiation(pend, 2, HandshakeFlags::NONE, now, &mut rng, &mut resp)
        .unwrap();
    assert!(matches!(
        p.a.consume_response(&resp, SRC, false, now, &mut rng, &mut [0; 64]),
        Err(HandshakeError::Decryption {
            message: "response",
            ..
        })
    ));
    // The failure did not consume our initiation state; matching PSKs work.
    assert_eq!(p.a.pending_index(), Some(1));
}

#[test]
fn replayed_response_is_rejected() {
    let (mut p, mut rng) = pair(8, PresharedKey::none());
    let now = Instant::now();
    let (_, _, _, resp) = handshake(
        &mut p,
        &mut rng,
        now,
        ts(0),
        (HandshakeFlags::NONE, HandshakeFlags::NONE),
    );
    assert_eq!(
        p.a.consume_response(&resp, SRC, false, now, &mut rng, &mut [0; 64])
            .unwrap_err(),
        HandshakeError::UnexpectedResponse { index: 0x100 }
    );
}

#[test]
fn cookie_under_load() {
    let (mut p, mut rng) = pair(9, PresharedKey::none());
    let now = Instant::now();
    let mut init = [0u8; INITIATION_LEN];
    p.a.create_initiation(0x42, HandshakeFlags::NONE, ts(0), now, &mut rng, &mut init)
        .unwrap();
    // Under load, no mac2: a cookie reply to the sender index.
    let mut reply = [0u8; COOKIE_REPLY_LEN];
    let n = match p
        .b_id
        .begin_initiation(&init, SRC, true, now, &mut rng, &mut reply)
        .unwrap()
    {
        Phase1::CookieReply(n) => n,
        Phase1::Pending(_) => panic!("mac2 must be required under load"),
    };
    assert_eq!(n, COOKIE_REPLY_LEN);
    assert_eq!(
        CookieReply::new_checked(&reply[..]).unwrap().receiver(),
        0x42
    );
    // A reply with a different receiver index, or a forged one, is refused.
    let mut wrong = reply;
    wrong[4] ^= 1;
    assert_eq!(
        p.a.consume_cookie_reply(&wrong, now).unwrap_err(),
        HandshakeError::UnexpectedCookieReply
    );
    let mut forged = reply;
    forged[40] ^= 1;
    assert!(matches!(
        p.a.consume_cookie_reply(&forged, now),
        Err(HandshakeError::Decryption { .. })
    ));
    p.a.consume_cookie_reply(&reply, now).unwrap();
    // Only one cookie per message sent.
    assert_eq!(
        p.a.consume_cookie_reply(&reply, now).unwrap_err(),
        HandshakeError::UnexpectedCookieReply
    );
    // The next initiation carries mac2 and passes under load...
    let t1 = now + Duration::from_secs(1);
    p.a.create_initiation(0x43, HandshakeFlags::NONE, ts(1), t1, &mut rng, &mut init)
        .unwrap();
    assert_ne!(Initiation::new_checked(&init[..]).unwrap().mac2(), &[0; 16]);
    assert!(matches!(
        p.b_id
            .begin_initiation(&init, SRC, true, t1, &mut rng, &mut reply),
        Ok(Phase1::Pending(_))
    ));
    // ...but not from another address (the cookie is bound to the source).
    assert!(matches!(
        p.b_id.begin_initiation(
            &init,
            &[192, 0, 2, 2, 0x1f, 0x90],
            true,
            t1,
            &mut rng,
            &mut reply
        ),
        Ok(Phase1::CookieReply(_))
    ));
    // After the responder's secret rotates (120 s) the old cookie is worthless.
    let t2 = now + COOKIE_SECRET_MAX_AGE + Duration::from_secs(1);
    assert!(matches!(
        p.b_id
            .begin_initiation(&init, SRC, true, t2, &mut rng, &mut reply),
        Ok(Phase1::CookieReply(_))
    ));
    // And the initiator stops using a cookie after 115 s.
    let t3 = now + COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY;
    p.a.create_initiation(0x44, HandshakeFlags::NONE, ts(3), t3, &mut rng, &mut init)
        .unwrap();
    assert_eq!(Initiation::new_checked(&init[..]).unwrap().mac2(), &[0; 16]);
    // A response under load also needs mac2.
    let mut resp = [0u8; RESPONSE_LEN];
    let pend = pending(
        p.b_id
            .begin_initiation(&init, SRC, false, t3, &mut rng, &mut reply)
            .unwrap(),
    );
    p.b.accept_initiation(pend, 0x99, HandshakeFlags::NONE, t3, &mut rng, &mut resp)
        .unwrap();
    assert!(matches!(
        p.a.consume_response(&resp, SRC, true, t3, &mut rng, &mut reply),
        Ok(ResponseVerdict::CookieReply(64))
    ));
    assert!(matches!(
        p.a.consume_response(&resp, SRC, false, t3, &mut rng, &mut reply),
        Ok(ResponseVerdict::Complete(_))
    ));
}

#[test]
fn tai64n_order_and_rounding() {
    assert!(Tai64N::from_unix(10, 0) < Tai64N::from_unix(10, 20_000_000));
    assert!(Tai64N::from_unix(10, 999_999_999) < Tai64N::from_unix(11, 0));
    // Rounded down to 2^24 ns.
    assert_eq!(Tai64N::from_unix(10, 16_777_215), Tai64N::from_unix(10, 0));
    assert_eq!(
        Tai64N::from_unix(10, 16_777_216).0[8..],
        16_777_216u32.to_be_bytes()
    );
    assert_eq!(
        Tai64N::from_unix(0, 0).0[..8],
        0x4000_0000_0000_000au64.to_be_bytes()
    );
    assert_eq!(
        Tai64N::from_system_time(UNIX_EPOCH - Duration::from_secs(5)),
        Tai64N::from_unix(0, 0)
    );
}

#[test]
fn low_order_ephemeral_is_refused() {
    let (p, mut rng) = pair(10, PresharedKey::none());
    let now = Instant::now();
    let mut init = [0u8; INITIATION_LEN];
    let mut a =
        PeerHandshake::new(p.a_id.clone(), p.b_id.public_key(), PresharedKey::none()).unwrap();
    a.create_initiation(1, HandshakeFlags::NONE, ts(0), now, &mut rng, &mut init)
        .unwrap();
    init[initiation::EPHEMERAL].fill(0);
    let k = hash(&[LABEL_MAC1, p.b_id.public_key().as_bytes()]);
    let m = mac(&k, &init[..initiation::MAC1.start]);
    init[initiation::MAC1].copy_from_slice(&m);
    assert_eq!(
        p.b_id
            .begin_initiation(&init, SRC, false, now, &mut rng, &mut [0; 64])
            .unwrap_err(),
        HandshakeError::LowOrderPoint
    );
}

#[test]
fn every_bit_flip_of_handshake_messages_is_rejected() {
    let (mut p, mut rng) = pair(11, PresharedKey::none());
    let now = Instant::now();
    let f = (HandshakeFlags::COMPRESSION, HandshakeFlags::NONE);
    // Give A a cookie so its messages carry a real mac2, checked under load.
    let mut init = [0u8; INITIATION_LEN];
    p.a.create_initiation(0x100, f.0, ts(0), now, &mut rng, &mut init)
        .unwrap();
    let mut reply = [0u8; 64];
    assert!(matches!(
        p.b_id
            .begin_initiation(&init, SRC, true, now, &mut rng, &mut reply),
        Ok(Phase1::CookieReply(_))
    ));
    p.a.consume_cookie_reply(&reply, now).unwrap();
    p.a.create_initiation(0x100, f.0, ts(1), now, &mut rng, &mut init)
        .unwrap();

    for bit in 0..INITIATION_LEN * 8 {
        let mut m = init;
        m[bit / 8] ^= 1 << (bit % 8);
        let mut b =
            PeerHandshake::new(p.b_id.clone(), p.a_id.public_key(), PresharedKey::none()).unwrap();
        let ok = match p
            .b_id
            .begin_initiation(&m, SRC, true, now, &mut rng, &mut reply)
        {
            Ok(Phase1::Pending(pend)) => b
                .accept_initiation(pend, 1, f.1, now, &mut rng, &mut [0; 92])
                .is_ok(),
            _ => false,
        };
        assert!(!ok, "initiation with bit {bit} flipped was accepted");
    }
    // The pristine message passes.
    let pend = pending(
        p.b_id
            .begin_initiation(&init, SRC, true, now, &mut rng, &mut reply)
            .unwrap(),
    );
    let mut resp = [0u8; RESPONSE_LEN];
    p.b.accept_initiation(pend, 0x200, f.1, now, &mut rng, &mut resp)
        .unwrap();

    // Responses: B needs a cookie from A for mac2 to be real.
    let mut cookie = [0u8; 64];
    assert!(matches!(
        p.a.consume_response(&resp, SRC, true, now, &mut rng, &mut cookie),
        Ok(ResponseVerdict::CookieReply(_))
    ));
    p.b.consume_cookie_reply(&cookie, now).unwrap();
    // Re-run the handshake so the response is made with the cookie.
    let t = now + Duration::from_secs(1);
    p.a.create_initiation(0x101, f.0, ts(2), t, &mut rng, &mut init)
        .unwrap();
    let pend = pending(
        p.b_id
            .begin_initiation(&init, SRC, false, t, &mut rng, &mut reply)
            .unwrap(),
    );
    p.b.accept_initiation(pend, 0x201, f.1, t, &mut rng, &mut resp)
        .unwrap();
    assert_ne!(Response::new_checked(&resp[..]).unwrap().mac2(), &[0; 16]);
    for bit in 0..RESPONSE_LEN * 8 {
        let mut m = resp;
        m[bit / 8] ^= 1 << (bit % 8);
        let ok = matches!(
            p.a.consume_response(&m, SRC, true, t, &mut rng, &mut reply),
            Ok(ResponseVerdict::Complete(_))
        );
        assert!(!ok, "response with bit {bit} flipped was accepted");
    }
    assert!(matches!(
        p.a.consume_response(&resp, SRC, true, t, &mut rng, &mut reply),
        Ok(ResponseVerdict::Complete(_))
    ));

    // Cookie replies: make A send a message B answers with a cookie, then flip each bit.
    p.a.create_initiation(0x102, f.0, ts(3), t, &mut rng, &mut init)
        .unwrap();
    let later = t + COOKIE_SECRET_MAX_AGE; // B's secret rotates: A's cookie is stale
    assert!(matches!(
        p.b_id
            .begin_initiation(&init, SRC, true, later, &mut rng, &mut cookie),
        Ok(Phase1::CookieReply(_))
    ));
    for bit in 0..COOKIE_REPLY_LEN * 8 {
        let mut m = cookie;
        m[bit / 8] ^= 1 << (bit % 8);
        assert!(
            p.a.consume_cookie_reply(&m, later).is_err(),
            "cookie reply with bit {bit} flipped was accepted"
        );
    }
    p.a.consume_cookie_reply(&cookie, later).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Handshakes between random key pairs (with and without PSK, any flags) always agree.
    #[test]
    fn random_keypairs_always_agree(seed in any::<u64>(), psk in any::<Option<[u8; 32]>>(), fi in 0u8..4, fr in 0u8..4) {
        let psk = psk.map(PresharedKey::from_bytes).unwrap_or_default();
        let (mut p, mut rng) = pair(seed, psk);
        let f = (HandshakeFlags::from_bits(fi).unwrap(), HandshakeFlags::from_bits(fr).unwrap());
        let (i, r, _, _) = handshake(&mut p, &mut rng, Instant::now(), ts(0), f);
        prop_assert_eq!(*i.send, *r.receive);
        prop_assert_eq!(*i.receive, *r.send);
        prop_assert_eq!(i.peer_flags, f.1);
        prop_assert_eq!(r.peer_flags, f.0);
    }

    #[test]
    fn responder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200), load in any::<bool>()) {
        let (p, mut rng) = pair(12, PresharedKey::none());
        let mut reply = [0u8; 64];
        let _ = p.b_id.begin_initiation(&bytes, SRC, load, Instant::now(), &mut rng, &mut reply);
        let mut a = p.a;
        let _ = a.consume_response(&bytes, SRC, load, Instant::now(), &mut rng, &mut reply);
        let _ = a.consume_cookie_reply(&bytes, Instant::now());
    }
}
