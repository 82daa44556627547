//! TAP offloads for real: two namespaces whose TAP devices are joined by a userspace
//! forwarder (a `vnet::Reader` of `Layer::Ethernet` on one device, a `vnet::Writer` of the
//! same layer on the other, both ways), so that the two TAP devices behave like the two
//! ends of one Ethernet cable: ARP and neighbour discovery cross the forwarder before
//! the checksummed TCP transfers do. The forwarder's counters prove that the kernel handed
//! out Ethernet super-segments and took merged ones. Runs across a VLAN trunk (a bridge in
//! a third namespace, the forwarders pushing and popping 802.1Q tags, or QinQ's two)
//! prove the same with tagged frames, read from and written to the kernel. A control run
//! without offloads shows that the same counters tell the difference, and a UDP run with
//! `UDP_SEGMENT` shows USO on TAP. Needs root, like the device tests.

mod vnet_support;

use std::net::SocketAddr;
use std::time::Duration;

use ferrotun_device::vnet::{self, Error, Layer, Offloads, Reader, Writer};
use ferrotun_device::{DeviceBuilder, Mode};
use ferrotun_lab::{TcpTransfer, UdpSink, seq_datagram};
use vnet_support::forwarder::{DirectionStats, Pair, Path};
use vnet_support::set_udp_segment;

fn transfer(pair: &Pair, v6: bool, bytes: u64) {
    let listen = SocketAddr::new(pair.b_ip(v6), 0);
    let report = TcpTransfer::new(bytes)
        .seed(if v6 { 16 } else { 14 })
        .timeout(Duration::from_secs(30))
        .run(&pair.b, listen, &pair.a)
        .expect("the transfer runs to its end");
    report.assert_intact();
    eprintln!(
        "{} {} MiB through the TAP forwarder: {:.0} Mbit/s",
        if v6 { "IPv6" } else { "IPv4" },
        bytes >> 20,
        report.mbit_per_s()
    );
}

fn show(what: &str, d: &DirectionStats) {
    eprintln!(
        "{what}: {} reads -> {} frames ({} super-segments, at most {} segments from one read, {} completed checksums, {} ARP, {} tagged); {} frames -> {} writes ({} merged frames of {} frames)",
        d.reads(),
        d.packets(),
        d.reader.super_segments,
        d.reader.max_segments,
        d.reader.checksums_completed,
        d.arp_frames,
        d.tagged_frames,
        d.writer.packets,
        d.writes(),
        d.writer.merged_frames,
        d.writer.merged_packets,
    );
}

/// What every offloading run must show in the data direction.
fn assert_offloads_worked(ab: &DirectionStats, ba: &DirectionStats) {
    assert_eq!(ab.bad_frames + ba.bad_frames, 0, "no malformed frames");
    // Reads: the sender's kernel handed out Ethernet super-segments.
    assert!(ab.reader.super_segments > 0, "no super-segment was read");
    assert!(ab.reader.max_segments > 1);
    assert!(
        ab.packets() >= 4 * ab.reads(),
        "{} frames from {} reads: offloads did not batch",
        ab.packets(),
        ab.reads()
    );
    // Writes: the frames were merged again, far fewer writes than frames.
    assert!(ab.writer.merged_frames > 0, "nothing was merged");
    assert!(
        4 * ab.writes() <= ab.writer.packets,
        "{} writes for {} frames",
        ab.writes(),
        ab.writer.packets
    );
    assert_eq!(ab.writer.write_errors + ba.writer.write_errors, 0);
    assert_eq!(ab.writer.bad_checksums, 0, "every segment we cut verifies");
}

#[test]
fn tcp_crosses_an_offloading_tap_forwarder_intact_in_super_segments() {
    let pair = Pair::start_tap("vtap", Path::Vnet(Offloads::ALL));
    assert!(
        pair.offloads.0.tso && pair.offloads.1.tso,
        "this kernel takes TSO on a TAP device: {:?}",
        pair.offloads
    );
    transfer(&pair, false, 64 << 20);
    transfer(&pair, true, 64 << 20);
    let (ab, ba) = pair.stop();
    show("A->B (data)", &ab);
    show("B->A (acks)", &ba);
    // ARP went through the forwarder (A asked for B, B answered), as non-IP frames.
    assert!(ab.arp_frames > 0 && ba.arp_frames > 0, "ARP did not cross");
    assert_eq!(ab.tagged_frames + ba.tagged_frames, 0);
    assert_offloads_worked(&ab, &ba);
}

/// A transfer from A to B across a trunk that tags every frame with `tags`, and what the
/// forwarders between A and m1 and between m2 and B must have seen.
fn across_a_trunk(tag: &str, tags: &'static [(u16, u16)]) {
    let pair = Pair::start_trunk(tag, Path::Vnet(Offloads::ALL), tags);
    transfer(&pair, false, 16 << 20);
    transfer(&pair, true, 16 << 20);
    let d = pair.stop_all();
    let (a_m1, m1_a, m2_b, b_m2) = (&d[0], &d[1], &d[2], &d[3]);
    show("A->m1 (data, tagged on write)", a_m1);
    show("m2->B (data, tagged on read)", m2_b);
    show("B->m2 (acks, tagged on write)", b_m2);
    show("m1->A (acks, tagged on read)", m1_a);
    // Every frame read from m1 or m2 had all the trunk's tags (the forwarder pops them
    // and counts any frame that lacks one).
    for x in [m1_a, m2_b] {
        assert_eq!(
            x.untagged_on_trunk, 0,
            "every frame on the trunk had its tags"
        );
        assert_eq!(x.tagged_frames, x.packets());
    }
    // The bridge handed out tagged super-segments from m2, which the reader cut into
    // frames that B's kernel took (the transfer's checksum says so).
    assert_offloads_worked(m2_b, b_m2);
    // The writer merged tagged frames into m1, and the kernel took them.
    assert_offloads_worked(a_m1, m1_a);
}

#[test]
fn tcp_over_a_vlan_trunk_crosses_the_tap_forwarder_in_tagged_super_segments() {
    across_a_trunk("vtvlan", &[(0x8100, 10)]);
}

#[test]
fn tcp_over_a_qinq_trunk_crosses_the_tap_forwarder_in_double_tagged_super_segments() {
    across_a_trunk("vtqinq", &[(0x88a8, 100), (0x8100, 10)]);
}

#[test]
fn udp_segmentation_crosses_the_tap_forwarder_as_super_segments() {
    const SEGMENT: usize = 1200;
    const PER_SEND: u64 = 32;
    const SENDS: u64 = 40;
    let pair = Pair::start_tap("vtuso", Path::Vnet(Offloads::ALL));
    assert_eq!(
        pair.offloads,
        (Offloads::ALL, Offloads::ALL),
        "this kernel takes USO on a TAP device"
    );
    for v6 in [false, true] {
        let peer = SocketAddr::new(pair.b_ip(v6), 9000);
        let me = SocketAddr::new(
            if v6 {
                vnet_support::forwarder::TAP_A_V6.into()
            } else {
                vnet_support::forwarder::TAP_A_V4.into()
            },
            0,
        );
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
    let (ab, ba) = pair.stop();
    show("A->B (UDP)", &ab);
    assert_eq!(ab.bad_frames + ba.bad_frames, 0);
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

#[test]
fn without_offloads_the_tap_counters_show_one_frame_per_system_call() {
    let pair = Pair::start_tap("vtoff", Path::Vnet(Offloads::NONE));
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

/// A reader or writer made for one kind of device refuses a queue of the other kind
/// instead of misreading its frames.
#[test]
fn a_reader_or_writer_of_the_wrong_layer_is_refused() {
    let ns = ferrotun_lab::Netns::new("vtlayer").expect("create a namespace (run as root)");
    ns.run(|| {
        for (mode, name) in [(Mode::Tap, "fvl0"), (Mode::Tun, "fvl1")] {
            let dev = DeviceBuilder::new(name, mode)
                .vnet_hdr(true)
                .open()
                .unwrap();
            dev.link().set_up(true).unwrap();
            let q = &dev.queues()[0];
            q.set_nonblocking(true).unwrap();
            assert!(
                vnet::enable_offloads(q, Offloads::ALL).unwrap().tso,
                "{mode}: TSO"
            );
            let wrong = match Layer::from(mode) {
                Layer::Ip => Layer::Ethernet,
                Layer::Ethernet => Layer::Ip,
            };
            let mut bufs = vec![vec![0u8; 64]; 1];
            let mut lens = [0usize; 1];
            let e = Reader::with_layer(wrong)
                .recv_batch_sync(q, &mut bufs, 0, &mut lens)
                .unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
            assert_eq!(
                Error::from_io(&e),
                Some(&Error::LayerMismatch { layer: wrong, mode })
            );
            let e = Writer::with_layer(Offloads::ALL, wrong)
                .send_batch_sync(q, &mut bufs, 0, &[20])
                .unwrap_err();
            assert_eq!(
                Error::from_io(&e),
                Some(&Error::LayerMismatch { layer: wrong, mode })
            );
            // The right layer reads without complaint (a frame of the kernel's own, or
            // nothing yet).
            let mut bufs = vec![vec![0u8; 2048]; 1];
            match Reader::with_layer(Layer::from(mode)).recv_batch_sync(q, &mut bufs, 0, &mut lens)
            {
                Ok(_) => {}
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{mode}: {e}"),
            }
        }
    })
    .expect("run in the namespace");
}
