//! ferrotun-proto benchmarks: `cargo bench -p ferrotun-proto`.
//!
//! * `seal`, `open`: [`Keypair::seal`]/[`Keypair::open`] per backend at 64, 1420 and 65535
//!   bytes (throughput in bytes of payload).
//! * `roundtrip_1420`: seal then open of one 1420-byte packet, framed (`Keypair`: header,
//!   counter, padding, replay window) against the raw AEAD of the same backend on the same
//!   buffer (seal in place then open in place): the difference is our framing overhead.
//! * `handshake`: responder phase 1 + phase 2 (what one initiation costs a server), and a
//!   full handshake of both sides.
//! * `lz4`: compress/decompress one 1420-byte packet of text and of random bytes.
//! * `replay`: window check + update, in order and reordered.
//! * `batch_44x1420`: the 44 packets of a 64 KiB TCP super-segment sealed one by one and
//!   prepared then sealed together (`Keypair::seal_prepared`, what the send path does);
//!   the resulting datagrams, back to back as one GRO read, opened one by one and with
//!   `Keypair::open_many` (what the receive path does).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferrotun_proto::aead::Aead;
use ferrotun_proto::compress::compress_bound;
use ferrotun_proto::handshake::{PeerHandshake, Phase1, ResponseVerdict};
use ferrotun_proto::{
    AeadBackend, Compressor, Entropy, HandshakeFlags, Identity, Keypair, PayloadFlags,
    PresharedKey, PrivateKey, Received, ReplayWindow, SeededEntropy, Session, SessionConfig,
    SessionIndex, Tai64N, decompress,
};

const SIZES: [usize; 3] = [64, 1420, 65535];

fn keypairs(backend: AeadBackend) -> (Keypair, Keypair) {
    let now = Instant::now();
    (
        Keypair::new(backend, &[1; 32], &[2; 32], 1, 2, now, true),
        Keypair::new(backend, &[2; 32], &[1; 32], 2, 1, now, false),
    )
}

/// The backends this CPU runs (an `Avx512` key would be a ring key elsewhere, measured
/// under the wrong name).
fn available_backends() -> impl Iterator<Item = AeadBackend> {
    AeadBackend::ALL.into_iter().filter(|b| b.is_available())
}

/// Payloads are sealed with flags = ETHERNET so no padding changes the byte count and the
/// one-byte AAD path is measured; `roundtrip_1420` also measures flags = 0.
fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    for backend in available_backends() {
        for size in SIZES {
            let (a, _) = keypairs(backend);
            let mut buf = vec![0u8; 16 + size + 16];
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(
                BenchmarkId::new(backend.name(), size),
                &size,
                |bch, &size| {
                    bch.iter(|| {
                        a.seal(PayloadFlags::ETHERNET, size, black_box(&mut buf), 65535)
                            .unwrap()
                    })
                },
            );
        }
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open");
    for backend in available_backends() {
        for size in SIZES {
            let (a, b) = keypairs(backend);
            let mut template = vec![0u8; 16 + size + 16];
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(
                BenchmarkId::new(backend.name(), size),
                &size,
                |bch, &size| {
                    bch.iter_batched_ref(
                        || {
                            a.seal(PayloadFlags::ETHERNET, size, &mut template, 65535)
                                .unwrap();
                            template.clone()
                        },
                        |m| b.open(black_box(m)).unwrap(),
                        BatchSize::SmallInput,
                    )
                },
            );
        }
    }
    g.finish();
}

fn roundtrip(c: &mut Criterion) {
    let mut g = c.benchmark_group("roundtrip_1420");
    g.throughput(Throughput::Bytes(1420));
    for backend in available_backends() {
        let (a, b) = keypairs(backend);
        let mut buf = vec![0u8; 16 + 1420 + 16];
        buf[16] = 0x45;
        buf[18..20].copy_from_slice(&1420u16.to_be_bytes());
        g.bench_function(BenchmarkId::new(backend.name(), "framed_flags0"), |bch| {
            bch.iter(|| {
                let n = a
                    .seal(PayloadFlags::NONE, 1420, black_box(&mut buf), 1420)
                    .unwrap();
                b.open(black_box(&mut buf[..n])).unwrap()
            })
        });
        g.bench_function(
            BenchmarkId::new(backend.name(), "framed_flags_ethernet"),
            |bch| {
                bch.iter(|| {
                    let n = a
                        .seal(PayloadFlags::ETHERNET, 1420, black_box(&mut buf), 1420)
                        .unwrap();
                    b.open(black_box(&mut buf[..n])).unwrap()
                })
            },
        );
        let key = backend.key(&[1; 32]);
        let mut counter = 0u64;
        g.bench_function(BenchmarkId::new(backend.name(), "raw_aead"), |bch| {
            bch.iter(|| {
                counter += 1;
                let payload = &mut black_box(&mut buf)[16..16 + 1420];
                let tag = key.seal_in_place(counter, &[], payload).unwrap();
                key.open_in_place(counter, &[], black_box(payload), &tag)
                    .unwrap();
            })
        });
    }
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    let mut rng = SeededEntropy::new(1);
    let id_r = Arc::new(Identity::new(PrivateKey::generate(&mut rng).unwrap()));
    let id_i = Arc::new(Identity::new(PrivateKey::generate(&mut rng).unwrap()));
    let mut initiator =
        PeerHandshake::new(id_i.clone(), id_r.public_key(), PresharedKey::none()).unwrap();
    let mut session = Session::new(
        id_r.clone(),
        id_i.public_key(),
        None,
        SessionIndex::new(1).unwrap(),
        SessionConfig::default(),
    )
    .unwrap();
    let t0 = Instant::now();
    let mut i = 0u64;
    g.throughput(Throughput::Elements(1));
    g.bench_function("responder_phase1_phase2", |bch| {
        bch.iter_batched(
            || {
                i += 1;
                let mut init = [0u8; 148];
                let now = t0 + Duration::from_secs(i);
                initiator
                    .create_initiation(
                        5,
                        HandshakeFlags::NONE,
                        Tai64N::from_unix(1_700_000_000 + i, 0),
                        now,
                        &mut rng,
                        &mut init,
                    )
                    .unwrap();
                (init, now)
            },
            |(init, now)| {
                let mut reply = [0u8; 64];
                let mut r = SeededEntropy::new(7);
                let Phase1::Pending(p) = id_r
                    .begin_initiation(&init, &[1], false, now, &mut r, &mut reply)
                    .unwrap()
                else {
                    unreachable!()
                };
                let mut resp = [0u8; 92];
                session
                    .accept_initiation(p, now, &mut r, &mut resp)
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    let mut j = 0u64;
    g.bench_function("full_both_sides", |bch| {
        bch.iter(|| {
            j += 1;
            let now = t0 + Duration::from_secs(1_000_000 + j);
            let mut init = [0u8; 148];
            let mut resp = [0u8; 92];
            let mut pi =
                PeerHandshake::new(id_i.clone(), id_r.public_key(), PresharedKey::none()).unwrap();
            let mut pr =
                PeerHandshake::new(id_r.clone(), id_i.public_key(), PresharedKey::none()).unwrap();
            pi.create_initiation(
                1,
                HandshakeFlags::NONE,
                Tai64N::from_unix(j, 0),
                now,
                &mut rng,
                &mut init,
            )
            .unwrap();
            let Phase1::Pending(p) = id_r
                .begin_initiation(&init, &[1], false, now, &mut rng, &mut [0; 64])
                .unwrap()
            else {
                unreachable!()
            };
            pr.accept_initiation(p, 2, HandshakeFlags::NONE, now, &mut rng, &mut resp)
                .unwrap();
            match pi
                .consume_response(&resp, &[1], false, now, &mut rng, &mut [0; 64])
                .unwrap()
            {
                ResponseVerdict::Complete(k) => k,
                ResponseVerdict::CookieReply(_) => unreachable!(),
            }
        })
    });
    g.finish();
}

fn lz4(c: &mut Criterion) {
    let mut g = c.benchmark_group("lz4_1420");
    g.throughput(Throughput::Bytes(1420));
    // An HTTP response with an HTML list whose entries differ (ids, links, dates), behind a
    // 40-byte IPv4+TCP header: compressible, but not trivially repetitive.
    let mut text = vec![0x45u8; 40];
    text.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nCache-Control: max-age=60\r\n\r\n<ul>",
    );
    let words = [
        "tunnel",
        "packet",
        "replay",
        "window",
        "cookie",
        "handshake",
        "rekey",
        "keepalive",
        "ferrotun",
        "noise",
    ];
    let mut k = 0usize;
    while text.len() < 1420 {
        let line = format!(
            "<li id=\"n{}\"><a href=\"/{}/{}\">{} {} {}</a> <time>2026-{:02}-{:02}</time></li>\n",
            k * 37 % 1000,
            words[k % 10],
            k * 13 % 97,
            words[(k * 3) % 10],
            words[(k * 7 + 1) % 10],
            k,
            k % 12 + 1,
            k * 5 % 28 + 1
        );
        text.extend_from_slice(line.as_bytes());
        k += 1;
    }
    text.truncate(1420);
    let mut random = vec![0u8; 1420];
    SeededEntropy::new(9).fill(&mut random).unwrap();
    let mut dst = vec![0u8; compress_bound(1420)];
    // `attempt` is one LZ4 try without the adaptive back-off (which stops trying on the
    // random input after 16 packets); `adaptive_random` is the backed-off steady state.
    let mut comp = Compressor::new();
    for (label, input) in [("text", &text), ("random", &random)] {
        g.bench_function(BenchmarkId::new("compress", label), |bch| {
            bch.iter(|| comp.attempt(black_box(input), &mut dst))
        });
    }
    g.bench_function(BenchmarkId::new("compress", "adaptive_random"), |bch| {
        bch.iter(|| comp.compress(black_box(&random), &mut dst))
    });
    let n = comp.attempt(&text, &mut dst).unwrap();
    let text_block = dst[..n].to_vec();
    let mut raw_block = vec![0u8; compress_bound(1420)];
    let m = lz4_flex::block::compress_into(&random, &mut raw_block).unwrap();
    raw_block.truncate(m);
    let mut out = vec![0u8; 1420];
    for (label, block) in [("text", &text_block), ("random", &raw_block)] {
        g.bench_function(BenchmarkId::new("decompress", label), |bch| {
            bch.iter(|| decompress(black_box(block), &mut out).unwrap())
        });
    }
    g.finish();
    eprintln!("lz4: text 1420 -> {n} bytes; random 1420 -> {m} bytes (sent raw)");
}

fn replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay_window");
    g.throughput(Throughput::Elements(1));
    let mut w = ReplayWindow::new();
    let mut ctr = 0u64;
    g.bench_function("in_order_check_update", |bch| {
        bch.iter(|| {
            ctr += 1;
            black_box(w.check(ctr)) && w.update(ctr)
        })
    });
    let mut w = ReplayWindow::new();
    let mut base = 0u64;
    g.bench_function("reordered_check_update", |bch| {
        bch.iter(|| {
            base += 8;
            // Deliver the eight counters of each group in reverse.
            let mut ok = true;
            for k in (0..8).rev() {
                ok &= black_box(w.check(base + k)) && w.update(base + k);
            }
            ok
        })
    });
    g.finish();
}

/// Packets in the batch benchmark, their length, and the stride of the send path's slots.
const BATCH: usize = 44;
const BATCH_LEN: usize = 1420;
const STRIDE: usize = 1500;

fn batch(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("batch_{BATCH}x{BATCH_LEN}"));
    g.throughput(Throughput::Bytes((BATCH * BATCH_LEN) as u64));
    let slot = |i: usize| i * STRIDE..(i + 1) * STRIDE;
    for backend in available_backends() {
        let (a, b) = keypairs(backend);
        let mut arena = vec![0x45u8; BATCH * STRIDE];
        g.bench_function(BenchmarkId::new(backend.name(), "seal_one_by_one"), |bch| {
            bch.iter(|| {
                for i in 0..BATCH {
                    a.seal(
                        PayloadFlags::NONE,
                        BATCH_LEN,
                        &mut arena[slot(i)],
                        BATCH_LEN,
                    )
                    .unwrap();
                }
            })
        });
        let mut prepared = Vec::with_capacity(BATCH);
        g.bench_function(BenchmarkId::new(backend.name(), "seal_prepared"), |bch| {
            bch.iter(|| {
                prepared.clear();
                for i in 0..BATCH {
                    let at = slot(i).start;
                    let p = a.prepare(
                        PayloadFlags::NONE,
                        BATCH_LEN,
                        &mut arena[slot(i)],
                        BATCH_LEN,
                        at,
                    );
                    prepared.push(p.unwrap());
                }
                a.seal_prepared(black_box(&mut arena), prepared.drain(..))
                    .unwrap();
            })
        });
        // Fresh datagrams (new counters) for every round of the open benchmarks.
        let mut datagrams = || {
            let mut gro = Vec::with_capacity(BATCH * (BATCH_LEN + 32));
            let mut ranges = Vec::with_capacity(BATCH);
            for i in 0..BATCH {
                let n = a
                    .seal(
                        PayloadFlags::NONE,
                        BATCH_LEN,
                        &mut arena[slot(i)],
                        BATCH_LEN,
                    )
                    .unwrap();
                ranges.push(gro.len()..gro.len() + n);
                gro.extend_from_slice(&arena[slot(i)][..n]);
            }
            (gro, ranges)
        };
        g.bench_function(BenchmarkId::new(backend.name(), "open_one_by_one"), |bch| {
            bch.iter_batched_ref(
                &mut datagrams,
                |(gro, ranges)| {
                    for r in ranges.iter() {
                        b.open(&mut gro[r.clone()]).unwrap();
                    }
                },
                BatchSize::LargeInput,
            )
        });
        let mut out = Vec::with_capacity(BATCH);
        let mut parsed = Vec::with_capacity(BATCH);
        g.bench_function(BenchmarkId::new(backend.name(), "open_many"), |bch| {
            bch.iter_batched_ref(
                &mut datagrams,
                |(gro, ranges)| {
                    // The receive path reads each header once, then opens the run.
                    parsed.clear();
                    parsed.extend(
                        ranges
                            .iter()
                            .map(|r| Received::parse(&gro[r.clone()], r.start).unwrap()),
                    );
                    b.open_many(gro, &parsed, &mut out);
                    assert!(out.iter().all(Result::is_ok));
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = seal, open, roundtrip, handshake, lz4, replay, batch
}
criterion_main!(benches);
