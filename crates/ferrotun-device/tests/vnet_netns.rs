//! Offloads for real: two namespaces whose TUN devices are joined by a userspace
//! forwarder (a `vnet::Reader` on one device, a `vnet::Writer` on the other, both ways),
//! checksummed TCP transfers across it, and the forwarder's counters proving that the
//! kernel handed out super-segments and took merged ones. A control run without offloads
//! shows that the same counters tell the difference. Needs root, like the device tests.

mod vnet_support;

use std::net::SocketAddr;
use std::time::Duration;

use ferrotun_device::vnet::Offloads;
use ferrotun_lab::TcpTransfer;
use vnet_support::forwarder::{DirectionStats, Pair, Path};

fn transfer(pair: &Pair, v6: bool, bytes: u64) {
    let listen = SocketAddr::new(Pair::b_addr(v6), 0);
    let report = TcpTransfer::new(bytes)
        .seed(if v6 { 6 } else { 4 })
        .timeout(Duration::from_secs(30))
        .run(&pair.b, listen, &pair.a)
        .expect("the transfer runs to its end");
    report.assert_intact();
    eprintln!(
        "{} {} MiB through the forwarder: {:.0} Mbit/s",
        if v6 { "IPv6" } else { "IPv4" },
        bytes >> 20,
        report.mbit_per_s()
    );
}

fn show(what: &str, d: &DirectionStats) {
    eprintln!(
        "{what}: {} reads -> {} packets ({} super-segments, at most {} segments from one read, {} completed checksums); {} packets -> {} writes ({} merged frames of {} packets)",
        d.reads(),
        d.packets(),
        d.reader.super_segments,
        d.reader.max_segments,
        d.reader.checksums_completed,
        d.writer.packets,
        d.writes(),
        d.writer.merged_frames,
        d.writer.merged_packets,
    );
}

#[test]
fn tcp_crosses_an_offloading_forwarder_intact_in_super_segments() {
    let pair = Pair::start("vnet", Path::Vnet(Offloads::ALL));
    assert!(
        pair.offloads.0.tso && pair.offloads.1.tso,
        "this kernel takes TSO: {:?}",
        pair.offloads
    );
    transfer(&pair, false, 64 << 20);
    transfer(&pair, true, 64 << 20);
    let (ab, ba) = pair.stop();
    show("A->B (data)", &ab);
    show("B->A (acks)", &ba);
    assert_eq!(ab.bad_frames + ba.bad_frames, 0, "no malformed frames");
    // Reads: the sender's kernel handed out super-segments, many segments per read.
    assert!(ab.reader.super_segments > 0, "no super-segment was read");
    assert!(ab.reader.max_segments > 1);
    assert!(
        ab.packets() >= 4 * ab.reads(),
        "{} packets from {} reads: offloads did not batch",
        ab.packets(),
        ab.reads()
    );
    // Writes: the segments were merged again, far fewer writes than packets.
    assert!(ab.writer.merged_frames > 0, "nothing was merged");
    assert!(
        4 * ab.writes() <= ab.writer.packets,
        "{} writes for {} packets",
        ab.writes(),
        ab.writer.packets
    );
    assert_eq!(ab.writer.write_errors + ba.writer.write_errors, 0);
    assert_eq!(ab.writer.bad_checksums, 0, "every segment we cut verifies");
}

#[test]
fn without_offloads_the_same_counters_show_one_packet_per_system_call() {
    let pair = Pair::start("vnoff", Path::Vnet(Offloads::NONE));
    assert_eq!(pair.offloads, (Offloads::NONE, Offloads::NONE));
    transfer(&pair, false, 8 << 20);
    let (ab, _) = pair.stop();
    show("A->B (data, offloads off)", &ab);
    assert_eq!(ab.reader.super_segments, 0);
    assert_eq!(ab.reader.checksums_completed, 0);
    assert_eq!(ab.packets(), ab.reads());
    assert_eq!(ab.writer.merged_frames, 0);
    assert_eq!(ab.writes(), ab.writer.packets);
}
