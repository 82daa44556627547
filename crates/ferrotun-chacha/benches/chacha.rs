//! Seal and open of one message at tunnel sizes: this crate's AVX-512 ChaCha20-Poly1305
//! against `ring`'s (BoringSSL's AVX2 assembly), the default it is meant to replace.
//! `cargo bench -p ferrotun-chacha --bench chacha`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferrotun_chacha::ChaCha20Poly1305;
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

criterion_group!(benches, seal_open);
criterion_main!(benches);
