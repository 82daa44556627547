//! Poly1305 AEAD tag (RFC 8439 §2.8): this crate's AVX-512 IFMA code against RustCrypto's
//! `poly1305` (AVX2 where the CPU has it) over the same padded stream, at tunnel packet
//! sizes and one larger size, with a 16-byte aad.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use poly1305::Poly1305;
use poly1305::universal_hash::{KeyInit, UniversalHash};

const CT_LENGTHS: [usize; 4] = [64, 576, 1420, 8192];

/// RustCrypto's Poly1305 over `aad ‖ pad ‖ ct ‖ pad ‖ le64(aad.len()) ‖ le64(ct.len())`.
fn rustcrypto_tag(otk: &[u8; 32], aad: &[u8], ct: &[u8]) -> [u8; 16] {
    let mut mac = Poly1305::new(&(*otk).into());
    mac.update_padded(aad);
    mac.update_padded(ct);
    let mut lengths = [0u8; 16];
    lengths[..8].copy_from_slice(&(aad.len() as u64).to_le_bytes());
    lengths[8..].copy_from_slice(&(ct.len() as u64).to_le_bytes());
    mac.update(&[lengths.into()]);
    mac.finalize().into()
}

fn bench_poly(c: &mut Criterion) {
    let otk: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let aad = [0x5a_u8; 16];
    let features = ferrotun_chacha::ChaCha20Poly1305::new(&[0; 32]);
    if features.is_none() {
        eprintln!("ferrotun-chacha: CPU lacks AVX-512F/VL/IFMA; benchmarking RustCrypto only");
    }

    let mut group = c.benchmark_group("poly1305_aead_tag");
    for len in CT_LENGTHS {
        let ct: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(13)).collect();
        group.throughput(Throughput::Bytes(len as u64));
        if let Some(features) = &features {
            group.bench_with_input(BenchmarkId::new("ferrotun", len), &ct, |b, ct| {
                b.iter(|| {
                    ferrotun_chacha::bench_api::poly1305_aead_tag(
                        features,
                        black_box(&otk),
                        black_box(&aad),
                        black_box(ct),
                    )
                })
            });
        }
        group.bench_with_input(BenchmarkId::new("rustcrypto", len), &ct, |b, ct| {
            b.iter(|| rustcrypto_tag(black_box(&otk), black_box(&aad), black_box(ct)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_poly);
criterion_main!(benches);
