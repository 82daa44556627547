//! Cryptokey routing per packet: the destination read from the packet, then the longest
//! matching prefix among the peers' allowed IPs. A server table of 1000 peers, each with
//! an IPv4 /32 and an IPv6 /128, plus a few wider prefixes.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use ferrotun::routing::{AllowedIps, ip_destination};
use ipnet::IpNet;

const PEERS: u32 = 1000;

fn v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a4d_0000 + 2 + i) // 10.77.x.y
}

fn v6(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2 + i as u16)
}

fn table() -> AllowedIps<u32> {
    let mut t = AllowedIps::new();
    for i in 0..PEERS {
        t.insert(IpNet::new(IpAddr::V4(v4(i)), 32).unwrap(), i);
        t.insert(IpNet::new(IpAddr::V6(v6(i)), 128).unwrap(), i);
    }
    for (k, net) in [
        "10.99.0.0/16",
        "10.98.7.0/24",
        "192.168.0.0/24",
        "fd99::/48",
    ]
    .iter()
    .enumerate()
    {
        t.insert(net.parse().unwrap(), PEERS + k as u32);
    }
    t
}

/// A minimal IPv4 header to `dst`.
fn packet4(dst: Ipv4Addr) -> [u8; 20] {
    let mut p = [0u8; 20];
    p[0] = 0x45;
    p[16..20].copy_from_slice(&dst.octets());
    p
}

fn bench(c: &mut Criterion) {
    let t = table();
    let mut g = c.benchmark_group("routing_1000_peers");
    let hits: Vec<[u8; 20]> = (0..64).map(|i| packet4(v4(i * 15 % PEERS))).collect();
    g.bench_function("v4_packet_to_peer", |b| {
        let mut k = 0;
        b.iter(|| {
            k = (k + 1) % hits.len();
            let dst = ip_destination(black_box(&hits[k])).unwrap();
            black_box(t.lookup(dst))
        })
    });
    let wide = IpAddr::V4(Ipv4Addr::new(10, 99, 3, 4));
    g.bench_function("v4_wider_prefix", |b| {
        b.iter(|| black_box(t.lookup(black_box(wide))))
    });
    let miss = IpAddr::V4(Ipv4Addr::new(172, 16, 0, 1));
    g.bench_function("v4_no_route", |b| {
        b.iter(|| black_box(t.lookup(black_box(miss))))
    });
    let six = IpAddr::V6(v6(517));
    g.bench_function("v6_to_peer", |b| {
        b.iter(|| black_box(t.lookup(black_box(six))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
