//! Fuzz target bodies, shared by `fuzz/` (cargo-fuzz, nightly) and by an ordinary test
//! that replays the committed corpus on stable (`tests/fuzz_corpus.rs`).
//!
//! Responsible for turning arbitrary bytes into calls of every parser and of the handshake
//! responder, data open (one message, and batches sealed and opened together),
//! decompression and the TCP codec, and for asserting the invariants
//! that must hold whatever the input (no panic, results within bounds, round trips). Not
//! a stable API: hidden from the docs, used only by the fuzzers and that test.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::aead::{AeadBackend, TAG_LEN};
use crate::compress::{Compressor, compress_bound, decompress};
use crate::entropy::SeededEntropy;
use crate::handshake::{PeerHandshake, Phase1, ResponseVerdict, Tai64N};
use crate::ip::ip_packet_len;
use crate::keys::{PresharedKey, PrivateKey, PublicKey};
use crate::tcp::StreamDecoder;
use crate::transport::{Keypair, Received, TransportError, padded_len};
use crate::wire::{
    CookieReply, DATA_HEADER_LEN, DataMessage, HandshakeFlags, Initiation, Message, PayloadFlags,
    Response, initiation,
};
use crate::{Identity, Session, SessionConfig, SessionIndex};

/// A fuzz target body.
pub type FuzzTarget = fn(&[u8]);

/// Every fuzz target by name, for the corpus replay test.
pub const TARGETS: &[(&str, FuzzTarget)] = &[
    ("wire", wire),
    ("keys", keys),
    ("responder", responder),
    ("data_open", data_open),
    ("data_batch", data_batch),
    ("decompress", decompress_target),
    ("tcp", tcp),
];

/// All four message parsers and `ip_packet_len`. Results go through `black_box` so the
/// optimizer cannot delete the (pure) parsing the fuzzer is meant to watch.
pub fn wire(data: &[u8]) {
    if let Ok(m) = black_box(Message::classify(black_box(data))) {
        black_box((m.kind(), m.receiver_index()));
        match m {
            Message::Initiation(i) => {
                black_box((
                    i.flags(),
                    i.sender(),
                    i.ephemeral(),
                    i.encrypted_static(),
                    i.encrypted_timestamp(),
                    i.mac1(),
                    i.mac2(),
                    i.mac1_input(),
                    i.mac2_input(),
                ));
            }
            Message::Response(r) => {
                black_box((
                    r.flags(),
                    r.sender(),
                    r.receiver(),
                    r.ephemeral(),
                    r.encrypted_empty(),
                    r.mac1(),
                    r.mac2(),
                ));
            }
            Message::CookieReply(c) => {
                black_box((c.receiver(), c.nonce(), c.encrypted_cookie()));
            }
            Message::Data(d) => {
                let r = d.payload_range();
                assert!(r.end + 16 == data.len() && r.start == 16);
                black_box((d.flags(), d.counter(), d.tag()));
            }
        }
    }
    let _ = black_box(Initiation::new_checked(black_box(data)).map(|m| *m.mac2()));
    let _ = black_box(Response::new_checked(black_box(data)).map(|m| m.receiver()));
    let _ = black_box(CookieReply::new_checked(black_box(data)).map(|m| m.receiver()));
    let _ = black_box(DataMessage::new_checked(black_box(data)).map(|m| m.counter()));
    if let Some(n) = black_box(ip_packet_len(black_box(data))) {
        assert!(n <= data.len());
    }
}

/// The base64 key parsers.
pub fn keys(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(k) = PublicKey::from_base64(&text) {
        assert_eq!(PublicKey::from_base64(&k.to_base64()), Ok(k));
    }
    let _ = PrivateKey::from_base64(&text);
    let _ = PresharedKey::from_base64(&text);
}

struct Fixture {
    responder: Arc<Identity>,
    initiator: Arc<Identity>,
}

fn fixture() -> Fixture {
    Fixture {
        responder: Arc::new(Identity::new(PrivateKey::from_bytes([0x11; 32]))),
        initiator: Arc::new(Identity::new(PrivateKey::from_bytes([0x22; 32]))),
    }
}

/// Applies `(position, xor)` byte pairs from `edits` to `msg`.
fn mutate(msg: &mut [u8], edits: &[u8]) {
    for e in edits.chunks_exact(2) {
        let len = msg.len();
        if len > 0 {
            msg[usize::from(e[0]) * 7 % len] ^= e[1];
        }
    }
}

/// The handshake responder, phase 1 and phase 2 with a configured peer, then the
/// initiator consuming the response. Byte 0 picks the mode: raw message, or a valid
/// initiation mutated by the following `(position, xor)` pairs, with mac1 optionally
/// recomputed so the mutation reaches the Noise layer.
pub fn responder(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let mut rng = SeededEntropy::new(u64::from(mode));
    let now = Instant::now();
    let under_load = mode & 0x10 != 0;
    let src = [192, 0, 2, 1, 0, 53];
    let mut peer_i = PeerHandshake::new(
        f.initiator.clone(),
        f.responder.public_key(),
        PresharedKey::none(),
    )
    .expect("fixed fuzz keys are valid");
    let msg: Vec<u8> = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut m = [0u8; 148];
        let flags = HandshakeFlags::from_bits(mode >> 6).unwrap_or_default();
        peer_i
            .create_initiation(
                0x100,
                flags,
                Tai64N::from_unix(1_700_000_000, 0),
                now,
                &mut rng,
                &mut m,
            )
            .expect("creating an initiation into 148 bytes succeeds");
        mutate(&mut m, rest);
        if mode & 2 != 0 {
            let key = crate::primitives::hash(&[
                crate::handshake::LABEL_MAC1,
                f.responder.public_key().as_bytes(),
            ]);
            let mac1 = crate::primitives::mac(&key, &m[..initiation::MAC1.start]);
            m[initiation::MAC1].copy_from_slice(&mac1);
        }
        m.to_vec()
    };
    let mut reply = [0u8; 64];
    let pending = match f
        .responder
        .begin_initiation(&msg, &src, under_load, now, &mut rng, &mut reply)
    {
        Ok(Phase1::Pending(p)) => p,
        Ok(Phase1::CookieReply(n)) => {
            assert_eq!(n, 64);
            let _ = peer_i.consume_cookie_reply(&reply, now);
            return;
        }
        Err(_) => return,
    };
    let mut session = Session::new(
        f.responder.clone(),
        f.initiator.public_key(),
        None,
        SessionIndex::new(3).expect("3 < 2^24"),
        SessionConfig::default(),
    )
    .expect("fixed fuzz keys are valid");
    let mut resp = [0u8; 92];
    let Ok(n) = session.accept_initiation(pending, now, &mut rng, &mut resp) else {
        return;
    };
    assert_eq!(n, 92);
    if mode & 4 != 0 {
        mutate(&mut resp, rest);
    }
    if let Ok(ResponseVerdict::Complete(k)) =
        peer_i.consume_response(&resp, &src, under_load, now, &mut rng, &mut reply)
    {
        assert_eq!(k.remote_index >> 8, 3);
    }
    // The responder's session confirms and polls without panicking.
    let _ = session.poll_transmit(
        now + Duration::from_secs(1),
        SystemTime::UNIX_EPOCH,
        &mut rng,
        &mut resp,
    );
}

/// The AEAD backend the top two bits of a mode byte pick.
fn backend_of(mode: u8) -> AeadBackend {
    match mode >> 6 {
        0 => AeadBackend::Ring,
        1 => AeadBackend::Avx512,
        _ => AeadBackend::RustCrypto,
    }
}

/// Two ends of one session: `a` the initiator's keypair, `b` the responder's.
fn keypairs(backend: AeadBackend, now: Instant) -> (Keypair, Keypair) {
    (
        Keypair::new(backend, &[1; 32], &[2; 32], 7, 9, now, true),
        Keypair::new(backend, &[2; 32], &[1; 32], 9, 7, now, false),
    )
}

/// Data open: raw bytes, or a sealed message (payload and flags from the input) mutated by
/// `(position, xor)` pairs. A mutated message must never open.
pub fn data_open(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    // Mode byte: bit 0 raw or sealed; bits 1–7 where the payload ends, in 4-byte steps
    // (bits 1–2 also give its flags); bits 6–7 the backend as well.
    let (a, b) = keypairs(backend_of(mode), now);
    if mode & 1 == 0 {
        let mut m = rest.to_vec();
        if let Ok((_, r)) = b.open(&mut m) {
            assert!(r.end <= m.len());
        }
        return;
    }
    let split = rest.len().min(usize::from(mode >> 1) * 4);
    let (payload, edits) = rest.split_at(split);
    let flags = PayloadFlags::from_bits((mode >> 1) & 3).unwrap_or_default();
    let mut buf = vec![0u8; 16 + payload.len() + 32];
    buf[16..16 + payload.len()].copy_from_slice(payload);
    let n = a
        .seal(flags, payload.len(), &mut buf, 1420)
        .expect("buffer sized for padding and tag");
    let original = buf[..n].to_vec();
    let mut m = original.clone();
    mutate(&mut m, edits);
    let changed = m != original;
    match b.open(&mut m) {
        Ok((f, r)) => {
            assert!(!changed, "a modified data message opened");
            assert_eq!(f, flags);
            assert_eq!(&m[r.start..r.start + payload.len()], payload);
        }
        Err(_) => assert!(changed, "an untouched data message failed to open"),
    }
}

/// The MTU of `data_batch`'s messages.
const BATCH_MTU: usize = 1420;

/// The batch AEAD calls ([`Keypair::seal_prepared`], [`Keypair::open_many`]) on messages
/// of lengths from the input. Byte 0 picks the backend (bits 6–7, as in [`data_open`])
/// and how many messages (bits 0–5, up to 40, more than one AEAD batch); then two bytes of
/// length per message (up to [`BATCH_MTU`]), the payload bytes, and changes of the sealed batch, 3
/// bytes each: a little-endian 2-byte position (modulo the batch's length) and an xor.
///
/// Checks: the batch seals every message to the bytes one-by-one sealing with ring gives;
/// `open_many` gives, message by message, what `open` gives (but for the one case where
/// the batch's order of checks tells a forgery apart differently, below); a changed
/// message never opens, and an unchanged one opens to its payload and flags; the same
/// 3-byte changes, read again as a position, a message and a length, place real headers
/// anywhere in the pristine batch, and only a message where it lies under its own header
/// opens (inside the buffer); the pristine batch opened again is a replay exactly where
/// the first opening succeeded.
pub fn data_batch(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let (a, b) = keypairs(backend_of(mode), now);
    let (reference, b_one) = keypairs(AeadBackend::Ring, now);
    let count = usize::from(mode & 63).min(40);
    let mut payloads = Vec::with_capacity(count);
    for i in 0..count {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let len = (usize::from(u16::from_le_bytes(*len)) % (BATCH_MTU + 1)).min(tail.len());
        let flags = PayloadFlags::from_bits((i % 4) as u8).unwrap_or_default();
        payloads.push((flags, &tail[..len]));
        rest = &tail[len..];
    }
    // Every slot room for a header, the payload padded to the MTU, and the tag.
    let slot_len = DATA_HEADER_LEN + padded_len(PayloadFlags::NONE, BATCH_MTU, BATCH_MTU) + TAG_LEN;
    let mut buf = vec![0u8; payloads.len() * slot_len];
    let mut prepared = Vec::with_capacity(payloads.len());
    let mut ranges = Vec::with_capacity(payloads.len());
    let mut expected = Vec::new();
    let mut at = 0;
    for &(flags, payload) in &payloads {
        let slot = &mut buf[at..];
        slot[DATA_HEADER_LEN..DATA_HEADER_LEN + payload.len()].copy_from_slice(payload);
        let p = a
            .prepare(flags, payload.len(), slot, BATCH_MTU, at)
            .expect("slots sized for padding and tag");
        let n = p.datagram_len();
        let mut one = vec![0u8; n];
        one[DATA_HEADER_LEN..DATA_HEADER_LEN + payload.len()].copy_from_slice(payload);
        let sealed = reference
            .seal(flags, payload.len(), &mut one, BATCH_MTU)
            .expect("sized as prepared");
        assert_eq!(sealed, n);
        expected.push(one);
        prepared.push(p);
        ranges.push(at..at + n);
        at += n;
    }
    a.seal_prepared(&mut buf, prepared)
        .expect("every message in the buffer");
    for (r, one) in ranges.iter().zip(&expected) {
        assert_eq!(
            &buf[r.clone()],
            &one[..],
            "batch and one-by-one seals differ"
        );
    }

    let sealed = buf.clone();
    for e in rest.chunks_exact(3) {
        if at > 0 {
            buf[usize::from(u16::from_le_bytes([e[0], e[1]])) % at] ^= e[2];
        }
    }
    let mut singles = buf.clone();
    let mut out = Vec::new();
    b.open_ranges(&mut buf, &ranges, &mut out);
    assert_eq!(out.len(), ranges.len());
    for (i, (r, opened)) in ranges.iter().zip(&out).enumerate() {
        let changed = sealed[r.clone()] != singles[r.clone()];
        let one = b_one.open(&mut singles[r.clone()]);
        let one = one.map(|(f, p)| (f, r.start + p.start..r.start + p.end));
        match (opened, &one) {
            // A forged message that reuses the counter of one before it in its chunk: the
            // batch checks every header before it records a counter, open one at a time.
            (
                Err(TransportError::Authentication { counter: a }),
                Err(TransportError::Replay { counter: b }),
            ) if changed && a == b => {}
            _ => assert_eq!(opened, &one, "open_many and open disagree on {i}"),
        }
        match opened {
            Ok((flags, range)) => {
                assert!(!changed, "a changed message opened");
                let (f, p) = payloads[i];
                assert_eq!(*flags, f);
                assert_eq!(&buf[range.start..range.start + p.len()], p);
            }
            Err(_) => assert!(changed, "an unchanged message did not open"),
        }
    }
    // Messages placed anywhere, with any real header: only a message exactly where it
    // lies, under its own header, may open; nothing panics or reaches outside the buffer.
    let (_, fresh) = keypairs(backend_of(mode), now);
    let mut anywhere = sealed.clone();
    let placed: Vec<Received> = rest
        .chunks_exact(3)
        .filter(|_| !ranges.is_empty())
        .map(|e| {
            let start = usize::from(u16::from_le_bytes([e[0], e[1]])) % (at + 64);
            let of = &ranges[usize::from(e[2]) % ranges.len()];
            let len = if e[2] & 0x80 == 0 {
                of.len()
            } else {
                usize::from(e[2])
            };
            let header = Received::parse(&sealed[of.clone()], of.start)
                .expect("a sealed message parses")
                .header;
            Received {
                at: start..start + len,
                header,
            }
        })
        .collect();
    let mut placed_out = Vec::new();
    fresh.open_many(&mut anywhere, &placed, &mut placed_out);
    assert_eq!(placed_out.len(), placed.len());
    for (m, o) in placed.iter().zip(&placed_out) {
        if let Ok((_, payload)) = o {
            let real = Received::parse(&sealed[m.at.clone()], m.at.start);
            assert!(
                ranges.contains(&m.at) && real.as_ref().map(|r| r.header) == Ok(m.header),
                "a message opened away from where it lies, or under another header"
            );
            assert!(payload.end <= m.at.end && payload.start >= m.at.start);
        }
    }

    // The batch again, unchanged: what opened is a replay now, what did not opens.
    let mut again = sealed;
    let mut second = Vec::new();
    b.open_ranges(&mut again, &ranges, &mut second);
    for (i, (first, second)) in out.iter().zip(&second).enumerate() {
        assert_eq!(
            first.is_ok(),
            matches!(second, Err(TransportError::Replay { .. })),
            "message {i} opened twice, or not once"
        );
    }
}

/// Decompression bounded by a limit from the input, and a compress/decompress round trip.
pub fn decompress_target(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let limit = usize::from(u16::from_le_bytes(*head)) % 4096;
    let mut out = vec![0u8; limit];
    if let Ok(n) = decompress(rest, &mut out) {
        assert!(n <= limit && n > 0);
    }
    let mut c = Compressor::new();
    let mut dst = vec![0u8; compress_bound(rest.len())];
    if let Some(n) = c.compress(rest, &mut dst) {
        assert!(n < rest.len());
        let mut back = vec![0u8; rest.len()];
        assert_eq!(decompress(&dst[..n], &mut back), Ok(rest.len()));
        assert_eq!(back, rest);
    }
}

/// The TCP decoder with a maximum from the input, fed in chunks whose sizes come from the
/// input too.
pub fn tcp(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let max = usize::from(u16::from_le_bytes([head[0], head[1]]));
    let chunk = usize::from(head[2]) + 1;
    let mut d = StreamDecoder::new(max);
    let max_frame = d.max_frame();
    let mut off = 0;
    while off < rest.len() {
        let end = (off + chunk).min(rest.len());
        while off < end {
            let k = d.push(&rest[off..end]);
            assert!(k > 0, "a healthy decoder always has room");
            off += k;
            loop {
                match d.next_frame() {
                    Ok(Some(f)) => {
                        assert!(!f.is_empty() && f.len() <= max_frame);
                        black_box(f);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        assert!(d.next_frame().is_err(), "errors are sticky");
                        return;
                    }
                }
            }
        }
    }
}
