//! Seal and open of one message at tunnel sizes: this crate's AVX-512 ChaCha20-Poly1305
//! against `ring`'s (BoringSSL's AVX2 assembly), the default it is meant to replace.
//! Then a batch: the 44 packets of 1420 bytes a 64 KiB TCP super-segment becomes, sealed
//! and opened one by one and with `seal_many`/`open_many`, whose ChaCha20 passes carry
//! blocks of several messages.
//! `cargo bench -p ferrotun-chacha --bench chacha`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferrotun_chacha::{ChaCha20Poly1305, Job};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use std::hint::black_box;

const SIZES: [usize; 4] = [64, 576, 1420, 8192];

fn seal_open(c: &mut Criterion) {
    let key = [0x42u8; 32];
    let aad = [0x5au8; 16];
    let ring = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap());
    let ours = ChaCha20Poly1305::new(&key);
    if ours.is_none() {
        eprintln!("this CPU lacks AVX-512F/VL/IFMA: only ring is measured");
    }
    for size in SIZES {
        let mut g = c.benchmark_group(format!("seal_{size}"));
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0u8; size];
        let mut n = 0u64;
        g.bench_function("ring", |b| {
            b.iter(|| {
                n += 1;
                let nonce = nonce(n);
                ring.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad),
                    black_box(&mut buf),
                )
                .unwrap()
            })
        });
        if let Some(k) = &ours {
            g.bench_function("avx512", |b| {
                b.iter(|| {
                    n += 1;
                    k.seal_in_place(&nonce(n), &aad, black_box(&mut buf))
                        .unwrap()
                })
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("open_{size}"));
        g.throughput(Throughput::Bytes(size as u64));
        let mut ct = vec![0x17u8; size];
        let tag = ring
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce(1)),
                Aad::from(&aad),
                &mut ct,
            )
            .unwrap();
        g.bench_function("ring", |b| {
            b.iter_batched_ref(
                || ct.clone(),
                |buf| {
                    ring.open_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce(1)),
                        Aad::from(&aad),
                        tag,
                        buf,
                        0..,
                    )
                    .unwrap()
                    .len()
                },
                criterion::BatchSize::SmallInput,
            )
        });
        if let Some(k) = &ours {
            let tag: [u8; 16] = tag.as_ref().try_into().unwrap();
            g.bench_function("avx512", |b| {
                b.iter_batched_ref(
                    || ct.clone(),
                    |buf| k.open_in_place(&nonce(1), &aad, buf, &tag).unwrap(),
                    criterion::BatchSize::SmallInput,
                )
            });
        }
        g.finish();
    }
}

fn nonce(n: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_le_bytes());
    b
}

/// Messages in the batch benchmark, their length, and the stride of their slots.
const BATCH: usize = 44;
const BATCH_LEN: usize = 1420;
const STRIDE: usize = 1500;

fn batch(c: &mut Criterion) {
    let Some(k) = ChaCha20Poly1305::new(&[0x42u8; 32]) else {
        eprintln!("this CPU lacks AVX-512F/VL/IFMA: no batch benchmark");
        return;
    };
    let jobs: Vec<Job<'_>> = (0..BATCH)
        .map(|i| Job {
            nonce: nonce(i as u64),
            aad: &[],
            text: i * STRIDE..i * STRIDE + BATCH_LEN,
            tag: i * STRIDE + BATCH_LEN,
        })
        .collect();
    let mut arena = vec![0x17u8; BATCH * STRIDE];
    let mut g = c.benchmark_group(format!("batch_{BATCH}x{BATCH_LEN}"));
    g.throughput(Throughput::Bytes((BATCH * BATCH_LEN) as u64));
    g.bench_function("seal_one_by_one", |b| {
        b.iter(|| {
            for j in &jobs {
                let tag = k
                    .seal_in_place(&j.nonce, j.aad, &mut arena[j.text.clone()])
                    .unwrap();
                arena[j.tag..j.tag + 16].copy_from_slice(&tag);
            }
        })
    });
    g.bench_function("seal_many", |b| {
        b.iter(|| k.seal_many(black_box(&mut arena), &jobs).unwrap())
    });
    let mut sealed = vec![0x17u8; BATCH * STRIDE];
    k.seal_many(&mut sealed, &jobs).unwrap();
    g.bench_function("open_one_by_one", |b| {
        b.iter_batched_ref(
            || sealed.clone(),
            |buf| {
                for j in &jobs {
                    let tag: [u8; 16] = buf[j.tag..j.tag + 16].try_into().unwrap();
                    k.open_in_place(&j.nonce, j.aad, &mut buf[j.text.clone()], &tag)
                        .unwrap();
                }
            },
            criterion::BatchSize::LargeInput,
        )
    });
    let mut opened = [false; BATCH];
    g.bench_function("open_many", |b| {
        b.iter_batched_ref(
            || sealed.clone(),
            |buf| k.open_many(buf, &jobs, &mut opened).unwrap(),
            criterion::BatchSize::LargeInput,
        )
    });
    assert!(
        opened.iter().all(|&o| o),
        "every message of the batch opens"
    );
    g.finish();
}

criterion_group!(benches, seal_open, batch);
criterion_main!(benches);
