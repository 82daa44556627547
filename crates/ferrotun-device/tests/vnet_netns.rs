//! Offloads for real: two namespaces whose TUN devices are joined by a userspace
//! forwarder (a `vnet::Reader` on one device, a `vnet::Writer` on the other, both ways),
//! checksummed TCP transfers across it, and the forwarder's counters proving that the
//! kernel handed out super-segments and took merged ones. A control run without offloads
//! shows that the same counters tell the difference. Needs root, like the device tests.

mod vnet_support;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use ferrotun_device::vnet::Offloads;
use ferrotun_lab::{TcpTransfer, UdpSink, seq_datagram};
use vnet_support::forwarder::{A_V4, A_V6, B_V4, B_V6, DirectionStats, Pair, Path};
use vnet_support::set_udp_segment;

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

#[test]
fn udp_segmentation_crosses_the_forwarder_as_super_segments() {
    const SEGMENT: usize = 1200;
    const PER_SEND: u64 = 32;
    const SENDS: u64 = 60;
    let pair = Pair::start("vuso", Path::Vnet(Offloads::ALL));
    if !(pair.offloads.0.uso && pair.offloads.1.uso) {
        panic!(
            "this kernel (6.2 or later expected) refused USO: {:?}",
            pair.offloads
        );
    }
    for (v6, me, peer) in [
        (
            false,
            SocketAddr::from((A_V4, 0)),
            SocketAddr::from((B_V4, 9000)),
        ),
        (
            true,
            SocketAddr::from((A_V6, 0)),
            SocketAddr::from((B_V6, 9000)),
        ),
    ] {
        let sink = UdpSink::bind(&pair.b, peer).expect("bind the receiver");
        let socket = pair.a.udp_bind(me).expect("bind the sender");
        set_udp_segment(&socket, SEGMENT as u16);
        let mut send = Vec::new();
        let mut one = Vec::new();
        for s in 0..SENDS {
            send.clear();
            for k in 0..PER_SEND {
                seq_datagram(s * PER_SEND + k, SEGMENT, &mut one);
                send.extend_from_slice(&one);
            }
            socket
                .send_to(&send, peer)
                .expect("send a UDP super-segment");
            // Keep at most a few sends in flight: a UDP test must not lose to queues.
            sink.wait_for_count(((s + 1) * PER_SEND) as usize, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("IPv6 {v6}: datagrams of send {s} missing: {e}"));
        }
        let got = sink.finish().expect("the receiver ran");
        let seqs: Vec<u64> = got.iter().filter_map(|r| r.seq).collect();
        assert_eq!(
            seqs,
            (0..SENDS * PER_SEND).collect::<Vec<_>>(),
            "every datagram once, in order"
        );
        assert!(got.iter().all(|r| r.len == SEGMENT), "every datagram whole");
    }
    let (ab, _) = pair.stop();
    show("A->B (UDP)", &ab);
    assert!(
        ab.reader.super_segments > 0,
        "no UDP super-segment was read"
    );
    assert!(
        ab.writer.merged_frames > 0,
        "no UDP super-segment was written"
    );
    assert!(4 * ab.writes() <= ab.writer.packets);
    assert_eq!(ab.writer.write_errors, 0);
}

/// A frame that cannot be placed, read after packets were already placed in the same
/// call, must not take those packets with it: they are returned, the error comes next.
#[test]
fn a_read_error_after_placed_packets_waits_for_the_next_call() {
    let ns = ferrotun_lab::Netns::new("vnerr").expect("create a namespace (run as root)");
    // Without IPv6 the kernel sends nothing of its own into the device: a TUN device does
    // get a link-local address here, and its router solicitation raced the datagrams.
    for key in [
        "net.ipv6.conf.all.disable_ipv6",
        "net.ipv6.conf.default.disable_ipv6",
    ] {
        ns.sysctl(key, "1").expect("switch IPv6 off");
    }
    ns.run(|| {
        let dev = ferrotun_device::DeviceBuilder::new("fve", ferrotun_device::Mode::Tun)
            .vnet_hdr(true)
            .open()
            .unwrap();
        dev.link()
            .add_address("10.98.0.1/24".parse().unwrap())
            .unwrap();
        dev.link().set_up(true).unwrap();
        ferrotun_device::vnet::enable_offloads(&dev.queues()[0], Offloads::ALL).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let q = dev.into_queues().pop().unwrap().into_async().unwrap();
            let mut reader = ferrotun_device::vnet::Reader::new();
            let mut bufs = vec![vec![0u8; 200]; 8];
            let mut lens = [0usize; 8];
            let sock = UdpSocket::bind("10.98.0.1:0").unwrap();
            sock.send_to(&[1u8; 20], "10.98.0.2:9").unwrap();
            sock.send_to(&[2u8; 1000], "10.98.0.2:9").unwrap();
            // Both datagrams are in the device's queue once send_to returns (the qdisc
            // hands them straight to the device); the buffers take only the first.
            let n = tokio::time::timeout(
                Duration::from_secs(5),
                reader.recv_batch(&q, &mut bufs, 0, &mut lens),
            )
            .await
            .expect("a packet arrives")
            .expect("the first packet is returned, not the second one's error");
            assert_eq!((n, lens[0]), (1, 48), "the 20-byte datagram");
            let e = reader
                .recv_batch(&q, &mut bufs, 0, &mut lens)
                .await
                .expect_err("the deferred error");
            assert!(
                matches!(
                    ferrotun_device::vnet::Error::from_io(&e),
                    Some(ferrotun_device::vnet::Error::BufferTooSmall { need: 1028, .. })
                ),
                "{e}"
            );
        });
    })
    .expect("run in the namespace");
}
