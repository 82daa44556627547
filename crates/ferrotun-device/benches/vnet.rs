//! What the TUN and TAP offloads are worth, from one run:
//! - in memory: the cost of cutting a 64 KiB TCP super-segment into MTU-sized packets
//!   (`vnet::Reader`) and of merging them again (`vnet::Writer`: copied into one frame, or
//!   as the parts of one gather write), as bare IP packets (TUN) and as 802.1Q-tagged
//!   Ethernet frames (TAP);
//! - in the namespace lab (root only): TCP throughput through the userspace forwarder of
//!   the offload tests, and system calls per MB, between two TUN devices and between two
//!   TAP devices, each with plain reads and writes, with a virtio-net header but offloads
//!   off, and with TSO/USO on.
//!
//! `cargo bench -p ferrotun-device --bench vnet` (set `VNET_BENCH_MB` for the transfer
//! size, default 512). Numbers are for notes, never for assertions.

#[path = "../tests/vnet_support/mod.rs"]
mod vnet_support;

use std::hint::black_box;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferrotun_device::vnet::{Layer, MAX_SEGMENTS, Offloads, Reader, Writer};
use ferrotun_lab::TcpTransfer;
use vnet_support::forwarder::{Pair, Path};
use vnet_support::packets::{Flow, Link, Tcp};

const MSS: usize = 1368;

fn in_memory(layer: Layer) {
    let data: Vec<u8> = (0..47 * MSS).map(|i| (i * 31) as u8).collect();
    let frame = Tcp::new(Flow::v4(1), 1)
        .timestamps(3)
        .super_frame(&data, MSS as u16, 0);
    let frame = match layer {
        Layer::Ip => frame,
        Layer::Ethernet => Link::vlan(10).vnet_frame(&frame),
    };
    let mut reader = Reader::with_layer(layer);
    let mut bufs = vec![vec![0u8; 16 + 1500 + layer.max_header_len()]; 64];
    let mut lens = vec![0usize; 64];
    let rounds = 20_000;
    let start = Instant::now();
    let mut n = 0;
    for _ in 0..rounds {
        reader.push_frame(black_box(&frame)).unwrap();
        n = reader.pop(&mut bufs, 16, &mut lens).unwrap();
    }
    let split = start.elapsed() / rounds;
    let mut writer = Writer::with_layer(Offloads::TSO, layer);
    let mut frame_len = 0;
    let start = Instant::now();
    for _ in 0..rounds {
        writer.prepare(&mut bufs[..n], 16, &lens[..n]).unwrap();
        while let Some(f) = writer.next_frame(&mut bufs[..n], 16) {
            frame_len = black_box(f).len();
        }
    }
    let merge = start.elapsed() / rounds;
    // Writing in parts rewrites the first packet's headers: put them back each round.
    let head = bufs[0][..16 + 128].to_vec();
    let start = Instant::now();
    let mut parts_len = 0;
    for _ in 0..rounds {
        bufs[0][..head.len()].copy_from_slice(&head);
        writer.prepare(&mut bufs[..n], 16, &lens[..n]).unwrap();
        loop {
            let mut parts = [IoSlice::new(&[]); MAX_SEGMENTS];
            let Some(f) = writer.next_frame_parts(&mut bufs[..n], 16, &mut parts) else {
                break;
            };
            parts_len = black_box(f).len();
        }
    }
    let in_parts = start.elapsed() / rounds;
    let gbps = |d: Duration| data.len() as f64 * 8.0 / d.as_secs_f64() / 1e9;
    println!(
        "in memory, {:?}: {}-byte super-segment <-> {n} packets of MSS {MSS}{}:",
        layer,
        frame.len(),
        if layer == Layer::Ethernet {
            " in 802.1Q-tagged frames"
        } else {
            ""
        }
    );
    println!(
        "  split  {:>7.2} us  ({:>5.1} Gbit/s of payload on one core)",
        split.as_secs_f64() * 1e6,
        gbps(split)
    );
    println!(
        "  merge  {:>7.2} us  ({:>5.1} Gbit/s, one {frame_len}-byte frame)",
        merge.as_secs_f64() * 1e6,
        gbps(merge)
    );
    println!(
        "  merge  {:>7.2} us  ({:>5.1} Gbit/s, the same frame in {parts_len} parts, not copied)",
        in_parts.as_secs_f64() * 1e6,
        gbps(in_parts)
    );
}

/// CPU time (user plus system) of this process so far, from `/proc/self/stat` (fields 14
/// and 15, in the fixed USER_HZ of 100 ticks per second that `/proc` reports in).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn lab(mb: u64) {
    if let Err(e) = ferrotun_lab::require_lab() {
        println!("namespace part skipped: {e}");
        return;
    }
    println!(
        "\nTCP through the userspace forwarder, {mb} MiB per run, IPv4 then IPv6, MTU {}:",
        vnet_support::forwarder::MTU
    );
    println!(
        "  {:<32} {:>10} {:>10} {:>14} {:>14} {:>12}",
        "path", "v4 Mbit/s", "v6 Mbit/s", "reads per MB", "writes per MB", "CPU s per GB"
    );
    // TUN and TAP side by side for each path, so that each ratio comes from neighbouring
    // runs on this shared machine.
    let paths = [
        ("TUN plain read/write", false, Path::Plain),
        ("TAP plain read/write", true, Path::Plain),
        (
            "TUN vnet header, offloads off",
            false,
            Path::Vnet(Offloads::NONE),
        ),
        (
            "TAP vnet header, offloads off",
            true,
            Path::Vnet(Offloads::NONE),
        ),
        ("TUN vnet header, TSO+USO", false, Path::Vnet(Offloads::ALL)),
        ("TAP vnet header, TSO+USO", true, Path::Vnet(Offloads::ALL)),
    ];
    let mut tun_tap = [0.0f64; 2];
    for (name, tap, path) in paths {
        let pair = if tap {
            Pair::start_tap("vbench", path)
        } else {
            Pair::start("vbench", path)
        };
        let cpu0 = cpu_seconds();
        let mut rates = Vec::new();
        for v6 in [false, true] {
            let report = TcpTransfer::new(mb << 20)
                .timeout(Duration::from_secs(120))
                .run(&pair.b, SocketAddr::new(pair.b_ip(v6), 0), &pair.a)
                .expect("transfer");
            report.assert_intact();
            rates.push(report.mbit_per_s());
        }
        if path == Path::Vnet(Offloads::ALL) {
            tun_tap[usize::from(tap)] = rates[0] + rates[1];
        }
        let cpu = cpu_seconds() - cpu0;
        let (ab, ba) = pair.stop();
        let total_mb = (2 * mb) as f64 * 1.048576;
        println!(
            "  {:<32} {:>10.0} {:>10.0} {:>14.1} {:>14.1} {:>12.2}",
            name,
            rates[0],
            rates[1],
            (ab.reads() + ba.reads()) as f64 / total_mb,
            (ab.writes() + ba.writes()) as f64 / total_mb,
            cpu / (total_mb / 1000.0),
        );
    }
    println!(
        "  (reads and writes: both directions, data and ACKs; CPU: the whole process, so the TCP sender and receiver too)"
    );
    println!(
        "  TAP / TUN with TSO+USO (sum of v4 and v6): {:.2}",
        tun_tap[1] / tun_tap[0]
    );
}

fn main() {
    // `cargo test --benches` runs this with --bench absent; only measure under cargo bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mb = std::env::var("VNET_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    in_memory(Layer::Ip);
    in_memory(Layer::Ethernet);
    lab(mb);
}
