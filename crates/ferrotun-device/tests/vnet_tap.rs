//! The offload code for TAP devices without a device: Ethernet frames (untagged, 802.1Q,
//! QinQ) shaped like the kernel's are split by a `vnet::Reader` of `Layer::Ethernet`,
//! frames are merged by a `vnet::Writer` of the same layer, and every result is checked
//! by the independent builder and verifier in `vnet_support::packets` (its own walk of
//! the VLAN tags, a byte-at-a-time checksum). Property tests cover random MACs, tags,
//! sizes, batch sizes and interleavings of flows behind different link-layer headers;
//! the rest pin one rule each.

mod vnet_support;

use std::collections::HashMap;

use ferrotun_device::Mode;
use ferrotun_device::vnet::{
    self, Error, Layer, MAX_ETHERNET_HEADER, MAX_SEGMENTS, MAX_VLAN_TAGS, Offloads, Reader, Writer,
};
use proptest::prelude::*;
use vnet_support::coalesce;
use vnet_support::packets::*;

const HEADROOM: usize = 16;

fn tap_reader() -> Reader {
    Reader::with_layer(Layer::Ethernet)
}

fn tap_writer(offloads: Offloads) -> Writer {
    Writer::with_layer(offloads, Layer::Ethernet)
}

/// Pushes `frame` and pops all its frames in batches of `batch` buffers, checking that the
/// headroom of every buffer stays untouched and that `pending` counts down.
fn split(reader: &mut Reader, frame: &[u8], batch: usize) -> Vec<Vec<u8>> {
    reader.push_frame(frame).expect("a well-formed frame");
    let mut out = Vec::new();
    let mut bufs = vec![vec![0xa5u8; HEADROOM + 1600 + MAX_ETHERNET_HEADER]; batch];
    let mut lens = vec![0usize; batch];
    while reader.pending() > 0 {
        let before = reader.pending();
        let n = reader.pop(&mut bufs, HEADROOM, &mut lens).unwrap();
        assert_eq!(
            n,
            before.min(batch),
            "a batch is filled while frames remain"
        );
        assert_eq!(reader.pending(), before - n);
        for (b, &len) in bufs.iter_mut().zip(&lens).take(n) {
            assert!(b[..HEADROOM].iter().all(|&x| x == 0xa5), "headroom written");
            out.push(b[HEADROOM..HEADROOM + len].to_vec());
            b.fill(0xa5);
        }
    }
    out
}

/// Splits a frame with a fresh TAP reader in one big batch.
fn resplit(frame: &[u8]) -> Vec<Vec<u8>> {
    split(&mut tap_reader(), frame, 256)
}

/// Checks a frame from the writer: a merged super-segment has a virtio-net header whose
/// `csum_start` and `hdr_len` count the link-layer header, and a partial checksum; a
/// single frame an all-zero header. Returns whether it was merged.
fn check_frame(f: &[u8]) -> bool {
    let (flags, gso, hdr_len, gso_size, start, off) = vnet_fields(f);
    if gso == 0 {
        assert_eq!(&f[..VNET], &[0u8; VNET], "single frame, empty header");
        return false;
    }
    let (link, p) =
        parse_frame_checked(&f[VNET..], true).unwrap_or_else(|e| panic!("merged frame: {e}"));
    assert_eq!(flags, 1, "NEEDS_CSUM");
    let l3 = link.len() + if p.flow.is_v6() { 40 } else { 20 };
    assert_eq!(
        usize::from(start),
        l3,
        "csum_start counts from the frame's start"
    );
    match p.proto {
        6 => {
            assert_eq!(gso, if p.flow.is_v6() { 4 } else { 1 });
            assert_eq!(off, 16);
            assert_eq!(usize::from(hdr_len), l3 + 20 + p.options.len());
        }
        _ => {
            assert_eq!(gso, 5);
            assert_eq!(off, 6);
            assert_eq!(usize::from(hdr_len), l3 + 8);
        }
    }
    assert!(gso_size > 0 && p.payload.len() > usize::from(gso_size));
    assert!(f.len() - VNET - link.len() <= vnet::MAX_PACKET);
    true
}

/// Link-layer headers: random MACs, no tag, an 802.1Q tag or QinQ with random TCIs.
fn links() -> impl Strategy<Value = Link> {
    (
        any::<[u8; 6]>(),
        any::<[u8; 6]>(),
        prop::collection::vec(
            (
                prop::sample::select(vec![TPID_8021Q, TPID_8021AD]),
                any::<u16>(),
            ),
            0..=2,
        ),
    )
        .prop_map(|(dst, src, tags)| Link { dst, src, tags })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A TCP super-segment in an Ethernet frame is cut into frames that each carry the
    /// super-segment's link-layer header and verify, with the right sequence numbers,
    /// ids and flags, across batches of any size; merging those frames again and cutting
    /// the result gives the same frames byte for byte.
    #[test]
    fn tcp_frames_split_then_coalesce_round_trips(
        link in links(),
        v6 in any::<bool>(),
        mss_raw in any::<u16>(),
        len_raw in any::<u32>(),
        seq in any::<u32>(),
        id in any::<u16>(),
        flags in prop::sample::select(vec![ACK, ACK | PSH, ACK | PSH | FIN, ACK | CWR]),
        ts in any::<bool>(),
        claimed in prop::sample::select(vec![0u16, 54, 0xffff]),
        batch in 1usize..70,
        seed in any::<u64>(),
    ) {
        let mss = 536 + usize::from(mss_raw) % 925;
        let len = len_raw as usize % (65_535 - 72 + 1);
        let flow = if v6 { Flow::v6(1) } else { Flow::v4(1) };
        let mut t = Tcp::new(flow, seq);
        if ts { t = t.timestamps(seed as u32); }
        t.flags = flags;
        t.id = id;
        let data = payload(len, seed);
        let frame = link.vnet_frame(&t.super_frame(&data, mss as u16, claimed));
        let mut reader = tap_reader();
        let segs = split(&mut reader, &frame, batch);
        let n = len.div_ceil(mss).max(1);
        prop_assert_eq!(segs.len(), n);
        for (i, s) in segs.iter().enumerate() {
            let (l, p) = parse_frame_checked(s, false)
                .map_err(|e| TestCaseError::fail(format!("seg {i}: {e}")))?;
            prop_assert_eq!(&l, &link, "the link-layer header of segment {}", i);
            prop_assert_eq!(p.flow, flow);
            prop_assert_eq!(p.seq, seq.wrapping_add((i * mss) as u32));
            if !v6 {
                prop_assert_eq!(p.id, id.wrapping_add(i as u16));
            }
            let mut want = flags;
            if i + 1 < n { want &= !(FIN | PSH); }
            if i > 0 { want &= !CWR; }
            prop_assert_eq!(p.flags, want);
            let end = ((i + 1) * mss).min(len);
            prop_assert_eq!(&p.payload[..], &data[(i * mss).min(end)..end]);
        }
        let st = reader.stats();
        prop_assert_eq!((st.frames, st.super_segments, st.packets), (1, 1, n as u64));

        let frames = coalesce(&mut tap_writer(Offloads::TSO), &segs, HEADROOM);
        let alone = segs.iter().filter(|s| {
            let f = parse_frame_checked(s, false).unwrap().1.flags;
            f & !PSH != ACK
        }).count();
        prop_assert_eq!(frames.len(), alone + (n - alone).div_ceil(MAX_SEGMENTS));
        let mut again = Vec::new();
        for f in &frames {
            if check_frame(f) {
                again.extend(resplit(f));
            } else {
                again.push(f[VNET..].to_vec());
            }
        }
        prop_assert_eq!(again, segs);
    }

    /// The same for UDP (USO) in Ethernet frames.
    #[test]
    fn udp_frames_split_then_coalesce_round_trips(
        link in links(),
        v6 in any::<bool>(),
        gso in 1u16..1473,
        len_raw in any::<u16>(),
        id in any::<u16>(),
        batch in 1usize..70,
        seed in any::<u64>(),
    ) {
        let flow = if v6 { Flow::v6(3) } else { Flow::v4(3) };
        let len = (usize::from(len_raw) % (65_535 - 48 + 1)).min(usize::from(gso) * 200);
        let data = payload(len, seed);
        let frame = link.vnet_frame(&udp_super_frame(&flow, id, &data, gso));
        let segs = split(&mut tap_reader(), &frame, batch);
        let g = usize::from(gso);
        prop_assert_eq!(segs.len(), len.div_ceil(g).max(1));
        for (i, s) in segs.iter().enumerate() {
            let (l, p) = parse_frame_checked(s, false).map_err(TestCaseError::fail)?;
            prop_assert_eq!(&l, &link);
            let end = ((i + 1) * g).min(len);
            prop_assert_eq!(&p.payload[..], &data[(i * g).min(end)..end]);
        }
        let merged = coalesce(&mut tap_writer(Offloads::ALL), &segs, HEADROOM);
        prop_assert_eq!(merged.len(), segs.len().div_ceil(MAX_SEGMENTS));
        let mut again = Vec::new();
        for f in &merged {
            check_frame(f);
            again.extend(resplit(f));
        }
        prop_assert_eq!(&again, &segs);
    }

    /// Random interleavings of flows, each sent behind one of several link-layer headers
    /// (another MAC, another VLAN, no tag) that may change mid-flow, with gaps, pushes,
    /// ARP, other EtherTypes and padded frames in between: every frame comes out exactly
    /// once and unchanged, and within each IP flow in the order it went in, whatever its
    /// link-layer header. (A frame merged behind another link-layer header would come out
    /// of the re-split with the wrong header, and the comparison would fail.)
    #[test]
    fn coalescing_frames_keeps_every_frame_and_the_order_within_each_flow(
        events in prop::collection::vec((0usize..3, 0usize..6, 0u8..10), 1..160),
        offset in prop::sample::select(vec![0usize, 4, 10, 16]),
    ) {
        let flows = [Flow::v4(1), Flow::v6(1), Flow::v4(2)];
        let mut other_dst = Link::plain();
        other_dst.dst[5] = 0x0c;
        let mut other_src = Link::plain();
        other_src.src[0] = 0x06;
        // Flows 0..3 use the first three; any may go behind any of the six.
        let heads = [
            Link::plain(),
            other_dst,
            Link::vlan(10),
            Link::qinq(100, 10),
            other_src,
            Link::vlan(20),
        ];
        let mut seqs = [1000u32, 9000, 70000];
        let mut ids = [1u16; 3];
        let mut frames = Vec::new();
        for (k, h, ev) in events {
            // Mostly the flow's usual header, sometimes another one.
            let link = if ev == 9 { &heads[h] } else { &heads[k] };
            let mut t = Tcp::new(flows[k], seqs[k]).timestamps(1);
            t.id = ids[k];
            let mut len = 1200;
            match ev {
                0 => t.seq = t.seq.wrapping_add(7),
                1 => t.flags = ACK | PSH,
                2 => len = 300,
                3 => {
                    frames.push(link.arp());
                    continue;
                }
                4 => {
                    let mut f = link.header(0x88b5); // local experimental EtherType
                    f.extend_from_slice(&payload(100, seqs[k].into()));
                    frames.push(f);
                    continue;
                }
                // Without options, IPv4 with one byte is a 55-byte frame, padded below to
                // Ethernet's 60 bytes.
                5 => {
                    t.options.clear();
                    len = 1;
                }
                _ => {}
            }
            let mut f = link.frame(&t.packet(&payload(len, u64::from(t.seq))));
            if f.len() < 60 {
                f.resize(60, 0);
            }
            seqs[k] = t.seq.wrapping_add(len as u32);
            ids[k] = ids[k].wrapping_add(1);
            frames.push(f);
        }
        let out_frames = coalesce(&mut tap_writer(Offloads::ALL), &frames, offset);
        prop_assert!(out_frames.len() <= frames.len());
        let out = carried(&out_frames, check_frame, resplit);
        // Same frames, byte for byte, and per IP flow (or per non-IP frame) in order.
        let by_flow = |fs: &[Vec<u8>]| {
            let mut m: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
            for f in fs {
                let key = match parse_frame_checked(f, false) {
                    Ok((_, p)) => format!("{:?}", p.flow),
                    Err(_) => "other".to_string(),
                };
                m.entry(key).or_default().push(f.clone());
            }
            m
        };
        prop_assert_eq!(out.len(), frames.len());
        prop_assert_eq!(by_flow(&out), by_flow(&frames));
    }

    /// Whatever bytes arrive as a frame, the TAP reader returns frames or an error, never
    /// panics, and stays usable.
    #[test]
    fn arbitrary_frames_never_panic(
        head in prop::collection::vec(any::<u8>(), 0..80),
        gso in prop::sample::select(vec![0u8, 1, 4, 5, 0x81, 3]),
        csum in any::<bool>(),
        ethertypes in prop::collection::vec(
            prop::sample::select(vec![TPID_8021Q, TPID_8021AD, ETH_IPV4, ETH_IPV6, ETH_ARP, 0x1234]),
            0..12,
        ),
        rest in 0usize..3000,
        batch in 1usize..8,
    ) {
        let mut frame = head.clone();
        if frame.len() >= 2 {
            frame[0] = u8::from(csum);
            frame[1] = gso;
        }
        // Tags and EtherTypes where the link-layer header is.
        for (i, t) in ethertypes.iter().enumerate() {
            let at = VNET + 12 + 4 * i;
            if frame.len() >= at + 2 {
                frame[at..at + 2].copy_from_slice(&t.to_be_bytes());
            }
        }
        frame.extend(payload(rest, head.len() as u64));
        let mut reader = tap_reader();
        if reader.push_frame(&frame).is_ok() {
            let mut bufs = vec![vec![0u8; 2048]; batch];
            let mut lens = vec![0; batch];
            for _ in 0..4000 {
                if let Ok(0) = reader.pop(&mut bufs, 0, &mut lens) {
                    break;
                }
            }
        }
        prop_assert_eq!(reader.pending(), 0);
        // Nor does the writer, which writes what it does not understand alone.
        let mut w = tap_writer(Offloads::ALL);
        let frames = coalesce(&mut w, &[frame.clone(), frame.clone()], HEADROOM);
        prop_assert!(!frames.is_empty());
        let ok = Link::vlan(5).vnet_frame(&Tcp::new(Flow::v4(1), 1).super_frame(&[1; 3000], 1000, 0));
        prop_assert_eq!(split(&mut reader, &ok, 8).len(), 3);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A TAP peer chooses every byte of its frames, link-layer header included. Frames of
    /// one flow behind one link-layer header, their IP packets changed as `make_hostile`
    /// does, a link-layer byte changed, or cut short anywhere; a sixth left alone: the
    /// writer does not panic, writes every frame exactly once (alone and unchanged, or
    /// inside a merged frame that splits back into it), and merged frames are coherent
    /// (see the same test for TUN in vnet.rs).
    #[test]
    fn hostile_frames_are_each_written_once_and_never_panic_the_writer(
        link in links(),
        v6 in any::<bool>(),
        changes in prop::collection::vec(
            (0..HOSTILE_KINDS + 4, any::<u16>(), 1u8..=255, any::<u64>()),
            1..48,
        ),
        trusted in any::<bool>(),
        offset in prop::sample::select(vec![0usize, 10, 16]),
    ) {
        let flow = if v6 { Flow::v6(1) } else { Flow::v4(1) };
        let (_, mut frames) = stream(&link, flow, &vec![1000; changes.len()]);
        let l2 = link.len();
        for (i, (f, &change)) in frames.iter_mut().zip(&changes).enumerate() {
            let (kind, at, mask, _) = change;
            let at = usize::from(at);
            match kind {
                // A link-layer header byte (MACs, tags, EtherType) changed.
                k if k == HOSTILE_KINDS => f[at % l2] ^= mask,
                // Cut short, perhaps inside the link-layer header.
                k if k == HOSTILE_KINDS + 1 => f.truncate(at % f.len()),
                // The IP packet changed, behind the same link-layer header.
                _ => {
                    let mut ip = f.split_off(l2);
                    make_hostile(&mut ip, &flow, i, change);
                    f.extend(ip);
                }
            }
        }
        let mut writer = tap_writer(Offloads::ALL).trust_checksums(trusted);
        let written = coalesce(&mut writer, &frames, offset);
        prop_assert!(written.len() <= frames.len());
        let out = carried(&written, check_frame, resplit);
        let sorted = |fs: &[Vec<u8>]| {
            let mut v: Vec<Vec<u8>> = fs.iter().map(|f| canonical_frame(f, trusted)).collect();
            v.sort();
            v
        };
        prop_assert_eq!(sorted(&out), sorted(&frames));
    }
}

// ---- The reader, one rule at a time ----

#[test]
fn non_ip_frames_pass_the_reader_unchanged() {
    let mut lldp = Link::plain().header(0x88cc);
    lldp.extend_from_slice(&payload(40, 1));
    // An 802.3 frame: a length where the EtherType would be, then LLC.
    let mut llc = Link::plain().header(46);
    llc.extend_from_slice(&payload(46, 2));
    for f in [
        Link::plain().arp(),
        Link::vlan(7).arp(),
        Link::qinq(3, 4).arp(),
        lldp,
        llc,
    ] {
        for flags in [0u8, 2] {
            let mut frame = vnet_header(flags, 0, 0, 0, 0, 0);
            frame.extend_from_slice(&f);
            let mut r = tap_reader();
            assert_eq!(split(&mut r, &frame, 1), vec![f.clone()]);
            assert_eq!(r.stats().checksums_completed, 0);
        }
    }
}

#[test]
fn partial_checksums_of_single_frames_are_completed() {
    for link in [Link::plain(), Link::vlan(10), Link::qinq(100, 10)] {
        for flow in [Flow::v4(1), Flow::v6(1)] {
            let l3 = if flow.is_v6() { 40 } else { 20 };
            let full = link.frame(&Tcp::new(flow, 77).packet(&payload(700, 1)));
            let tcp = link.len() + l3;
            let mut partial = full.clone();
            let ip = &full[link.len()..];
            let ps = fold16(pseudo_sum(
                &ip[src_range(&flow)],
                &ip[dst_range(&flow)],
                6,
                ip.len() - l3,
            ));
            partial[tcp + 16..tcp + 18].copy_from_slice(&ps.to_be_bytes());
            let mut frame = vnet_header(1, 0, 0, 0, tcp as u16, 16);
            frame.extend_from_slice(&partial);
            let mut r = tap_reader();
            assert_eq!(split(&mut r, &frame, 4), vec![full.clone()]);
            assert_eq!(r.stats().checksums_completed, 1);

            let u = link.frame(&udp_packet(&flow, 9, &payload(333, 2)));
            let mut partial = u.clone();
            let ip = &u[link.len()..];
            let ps = fold16(pseudo_sum(
                &ip[src_range(&flow)],
                &ip[dst_range(&flow)],
                17,
                ip.len() - l3,
            ));
            partial[tcp + 6..tcp + 8].copy_from_slice(&ps.to_be_bytes());
            let mut frame = vnet_header(1, 0, 0, 0, tcp as u16, 6);
            frame.extend_from_slice(&partial);
            let out = split(&mut tap_reader(), &frame, 1);
            assert_eq!(out, vec![u.clone()]);
        }
    }
}

fn fold16(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn src_range(flow: &Flow) -> std::ops::Range<usize> {
    if flow.is_v6() { 8..24 } else { 12..16 }
}

fn dst_range(flow: &Flow) -> std::ops::Range<usize> {
    if flow.is_v6() { 24..40 } else { 16..20 }
}

#[test]
fn malformed_super_frames_are_errors() {
    let t = Tcp::new(Flow::v4(1), 1);
    let tun = t.super_frame(&payload(3000, 5), 1000, 0);
    let good = Link::vlan(10).vnet_frame(&tun);
    let with = |f: &[u8], at: usize, v: &[u8]| {
        let mut f = f.to_vec();
        f[at..at + v.len()].copy_from_slice(v);
        f
    };
    // The link-layer header with EtherType `ethertype` and `tags` 802.1Q tags in front of
    // the TUN frame's IP packet, csum_start moved along.
    let behind = |tags: usize, ethertype: u16| {
        let link = Link {
            tags: vec![(TPID_8021Q, 1); tags],
            ..Link::plain()
        };
        let mut f = vnet_header(1, 1, 0, 1000, (link.len() + 20) as u16, 16);
        f.extend_from_slice(&link.header(ethertype));
        f.extend_from_slice(&tun[VNET..]);
        f
    };
    let cases: Vec<(&str, Vec<u8>, Error)> = vec![
        (
            "ARP as a super-segment",
            behind(0, ETH_ARP),
            Error::NotIpEtherType(ETH_ARP),
        ),
        (
            "IPv6 EtherType, IPv4 packet",
            behind(1, ETH_IPV6),
            Error::EtherTypeMismatch {
                ethertype: ETH_IPV6,
                version: 4,
            },
        ),
        (
            "too many tags",
            behind(MAX_VLAN_TAGS + 1, ETH_IPV4),
            Error::TooManyVlanTags,
        ),
        (
            "frame ends in the Ethernet header",
            good[..VNET + 10].to_vec(),
            Error::Truncated {
                what: "the Ethernet header",
                need: 14,
                have: 10,
            },
        ),
        (
            "frame ends in the tag",
            good[..VNET + 16].to_vec(),
            Error::Truncated {
                what: "the Ethernet header",
                need: 18,
                have: 16,
            },
        ),
        (
            "frame ends in the IPv4 header",
            good[..VNET + 18 + 12].to_vec(),
            Error::Truncated {
                what: "the IPv4 header",
                need: 38,
                have: 30,
            },
        ),
        (
            "csum_start counted from the IP header, as on TUN",
            with(&good, 6, &[20, 0]),
            Error::BadCsumStart {
                csum_start: 20,
                ip_header: 38,
            },
        ),
        (
            "TCPV6 on an IPv4 frame",
            with(&good, 1, &[4]),
            Error::GsoVersionMismatch {
                gso: vnet::GsoType::TcpV6,
                version: 4,
            },
        ),
        (
            "oversized",
            vec![0; VNET + MAX_ETHERNET_HEADER + vnet::MAX_PACKET + 1],
            Error::Oversized {
                len: VNET + MAX_ETHERNET_HEADER + vnet::MAX_PACKET + 1,
            },
        ),
    ];
    let mut r = tap_reader();
    let n = cases.len() as u64;
    for (what, frame, want) in cases {
        assert_eq!(r.push_frame(&frame), Err(want), "{what}");
        assert_eq!(r.pending(), 0, "{what}: nothing pending");
    }
    assert_eq!(r.stats().dropped, n);
    // The reader goes on.
    assert_eq!(split(&mut r, &good, 3).len(), 3);
    // Eight tags are still walked.
    let deep = behind(MAX_VLAN_TAGS, ETH_IPV4);
    assert_eq!(split(&mut r, &deep, 3).len(), 3);
    let e: std::io::Error = Error::NotIpEtherType(ETH_ARP).into();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn the_largest_frames_are_cut_and_merged() {
    // A 65535-byte IP packet behind QinQ is a legal frame of 65535 + 22 bytes.
    let link = Link::qinq(100, 10);
    let t = Tcp::new(Flow::v4(1), 1).timestamps(1);
    let tun = t.super_frame(&payload(vnet::MAX_PACKET - 52, 6), 1368, 0);
    let frame = link.vnet_frame(&tun);
    assert_eq!(frame.len(), VNET + 22 + vnet::MAX_PACKET);
    let segs = split(&mut tap_reader(), &frame, 64);
    assert_eq!(segs.len(), 48);
    // Merging stops at a 64 KiB IP packet, not counting the link-layer header:
    // 20 + 32 header bytes + 45 * 1448 = 65212 fits, a 46th segment would not.
    let sizes = [1448usize; 50];
    let mut seq = 1u32;
    let frames: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut t = Tcp::new(Flow::v4(1), seq).timestamps(9);
            t.id = i as u16;
            seq += n as u32;
            link.frame(&t.packet(&payload(n, u64::from(t.seq))))
        })
        .collect();
    let out = coalesce(&mut tap_writer(Offloads::TSO), &frames, HEADROOM);
    assert_eq!(out.len(), 2);
    assert!(check_frame(&out[0]) && check_frame(&out[1]));
    assert_eq!(out[0].len() - VNET, 22 + 52 + 45 * 1448);
    assert_eq!(resplit(&out[0]).len(), 45);
}

// ---- The writer, one rule at a time ----

/// Frames of one TCP flow behind `link`, `sizes[i]` payload bytes each, contiguous.
fn stream(link: &Link, flow: Flow, sizes: &[usize]) -> (Vec<Tcp>, Vec<Vec<u8>>) {
    let mut seq = 1u32;
    let ts: Vec<Tcp> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut t = Tcp::new(flow, seq).timestamps(9);
            t.id = i as u16;
            seq = seq.wrapping_add(n as u32);
            t
        })
        .collect();
    let frames = ts
        .iter()
        .zip(sizes)
        .map(|(t, &n)| link.frame(&t.packet(&payload(n, u64::from(t.seq)))))
        .collect();
    (ts, frames)
}

/// For each frame, how many frames it carries (1 for a single frame).
fn shape(frames: &[Vec<u8>]) -> Vec<usize> {
    frames
        .iter()
        .map(|f| if check_frame(f) { resplit(f).len() } else { 1 })
        .collect()
}

#[test]
fn a_contiguous_flow_merges_behind_any_link_layer_header() {
    for link in [Link::plain(), Link::vlan(10), Link::qinq(100, 10)] {
        for flow in [Flow::v4(1), Flow::v6(1)] {
            let sizes = [1368; 10];
            let (_, frames) = stream(&link, flow, &sizes);
            let mut w = tap_writer(Offloads::TSO);
            let out = coalesce(&mut w, &frames, HEADROOM);
            assert_eq!(shape(&out), vec![10], "{link:?} {flow:?}");
            assert_eq!(resplit(&out[0]), frames);
            let (_, _, hdr_len, gso_size, start, _) = vnet_fields(&out[0]);
            let l3 = if flow.is_v6() { 40 } else { 20 };
            assert_eq!(usize::from(start), link.len() + l3);
            assert_eq!(usize::from(hdr_len), link.len() + l3 + 32);
            assert_eq!(gso_size, 1368);
            let st = w.stats();
            assert_eq!((st.packets, st.frames, st.merged_packets), (10, 1, 10));
        }
    }
}

#[test]
fn merging_is_refused_across_macs_vlans_and_tag_types() {
    let base = Link::vlan(10);
    let sizes = [1000; 3];
    let (_, frames) = stream(&base, Flow::v4(1), &sizes);
    type Change = Box<dyn Fn(&mut Link)>;
    let variants: Vec<(&str, Change)> = vec![
        ("destination MAC", Box::new(|l| l.dst[0] ^= 0x80)),
        ("source MAC", Box::new(|l| l.src[5] ^= 1)),
        ("VLAN id", Box::new(|l| l.tags[0].1 = 11)),
        ("priority", Box::new(|l| l.tags[0].1 |= 0xa000)),
        (
            "802.1ad instead of 802.1Q",
            Box::new(|l| l.tags[0].0 = TPID_8021AD),
        ),
        ("untagged", Box::new(|l| l.tags.clear())),
        ("QinQ", Box::new(|l| l.tags.insert(0, (TPID_8021AD, 100)))),
    ];
    for (what, change) in variants {
        let mut other = base.clone();
        change(&mut other);
        let mut fs = frames.clone();
        fs[2] = other.frame(&fs[2][base.len()..]);
        let out = coalesce(&mut tap_writer(Offloads::TSO), &fs, HEADROOM);
        assert_eq!(shape(&out), vec![2, 1], "{what}");
        assert_eq!(
            out[1][VNET..],
            fs[2][..],
            "{what}: the odd one out is unchanged"
        );
        // And the other way round: a different head, the same rest.
        let mut fs = frames.clone();
        fs[0] = other.frame(&fs[0][base.len()..]);
        let out = coalesce(&mut tap_writer(Offloads::TSO), &fs, HEADROOM);
        assert_eq!(shape(&out), vec![1, 2], "{what} (head)");
    }
    // A flow behind another header in between closes the super-segment: the same flow's
    // next segment behind the first header cannot overtake it.
    let (_, more) = stream(&base, Flow::v4(1), &[1000; 4]);
    let mut other = base.clone();
    other.tags[0].1 = 20;
    let fs = vec![
        more[0].clone(),
        other.frame(&more[1][base.len()..]),
        more[2].clone(),
        more[3].clone(),
    ];
    let out = coalesce(&mut tap_writer(Offloads::TSO), &fs, HEADROOM);
    assert_eq!(shape(&out), vec![1, 1, 2]);
    assert_eq!(out[1][VNET..], fs[1][..]);
}

#[test]
fn non_ip_frames_pass_the_writer_alone_and_leave_flows_open() {
    let link = Link::vlan(10);
    let (_, frames) = stream(&link, Flow::v6(1), &[1000; 3]);
    let arp = link.arp();
    // An EtherType that says IPv4 in front of an IPv6 packet is not taken for IP.
    let mut liar = link.header(ETH_IPV4);
    liar.extend_from_slice(&frames[0][link.len()..]);
    let fs = vec![
        frames[0].clone(),
        arp.clone(),
        frames[1].clone(),
        liar.clone(),
        frames[2].clone(),
    ];
    let out = coalesce(&mut tap_writer(Offloads::ALL), &fs, HEADROOM);
    assert_eq!(shape(&out), vec![3, 1, 1]);
    assert_eq!(out[1][VNET..], arp[..]);
    assert_eq!(out[2][VNET..], liar[..]);
    assert_eq!(resplit(&out[0]), frames);
    // Nine tags: not walked, written alone.
    let deep = Link {
        tags: vec![(TPID_8021Q, 1); MAX_VLAN_TAGS + 1],
        ..Link::plain()
    };
    let (_, deep_frames) = stream(&deep, Flow::v4(1), &[1000; 2]);
    let out = coalesce(&mut tap_writer(Offloads::ALL), &deep_frames, HEADROOM);
    assert_eq!(shape(&out), vec![1, 1]);
}

#[test]
fn padded_frames_are_not_merged() {
    // A short last segment padded to Ethernet's 60-byte minimum: the IP length no longer
    // covers the frame, so it goes alone. Unpadded, the same segment would join.
    let link = Link::plain();
    let flow = Flow::v4(1);
    let first = link.frame(&Tcp::new(flow, 1).packet(&payload(1000, 1)));
    let small = link.frame(&Tcp::new(flow, 1001).packet(&[7]));
    assert_eq!(small.len(), 55);
    let out = coalesce(
        &mut tap_writer(Offloads::TSO),
        &[first.clone(), small.clone()],
        HEADROOM,
    );
    assert_eq!(shape(&out), vec![2]);
    let mut padded = small.clone();
    padded.resize(60, 0);
    let out = coalesce(
        &mut tap_writer(Offloads::TSO),
        &[first.clone(), padded.clone()],
        HEADROOM,
    );
    assert_eq!(shape(&out), vec![1, 1]);
    assert_eq!(out[1][VNET..], padded[..]);
}

#[test]
fn without_offloads_or_headroom_every_frame_is_still_right() {
    let link = Link::vlan(3);
    let (_, frames) = stream(&link, Flow::v6(1), &[1000; 6]);
    let mut w = tap_writer(Offloads::NONE);
    let out = coalesce(&mut w, &frames, HEADROOM);
    assert_eq!(shape(&out), vec![1; 6]);
    for (f, p) in out.iter().zip(&frames) {
        assert_eq!(f[VNET..], p[..]);
    }
    for offset in [0, 9] {
        let out = coalesce(&mut tap_writer(Offloads::TSO), &frames, offset);
        assert_eq!(shape(&out), vec![6]);
    }
}

#[test]
fn frame_lengths_are_bounded_by_a_64_kib_packet_and_its_link_layer_header() {
    let max = MAX_ETHERNET_HEADER + vnet::MAX_PACKET;
    let mut bufs = vec![vec![0u8; max + 1]];
    tap_writer(Offloads::TSO)
        .prepare(&mut bufs, 0, &[max])
        .expect("the largest frame");
    assert_eq!(
        tap_writer(Offloads::TSO).prepare(&mut bufs, 0, &[max + 1]),
        Err(Error::BufferTooSmall {
            index: 0,
            need: max + 1,
            have: max
        })
    );
    // The TUN writer keeps its limit.
    assert!(
        Writer::new(Offloads::TSO)
            .prepare(&mut bufs, 0, &[max])
            .is_err()
    );
}

#[test]
fn layers_follow_device_modes() {
    assert_eq!(Layer::from(Mode::Tun), Layer::Ip);
    assert_eq!(Layer::from(Mode::Tap), Layer::Ethernet);
    assert_eq!(Layer::Ethernet.mode(), Mode::Tap);
    assert_eq!(Layer::Ip.max_header_len(), 0);
    assert_eq!(Layer::Ethernet.max_header_len(), 14 + 4 * MAX_VLAN_TAGS);
    assert_eq!(Reader::new().layer(), Layer::Ip);
    assert_eq!(Writer::new(Offloads::ALL).layer(), Layer::Ip);
    assert_eq!(tap_reader().layer(), Layer::Ethernet);
    assert_eq!(tap_writer(Offloads::NONE).layer(), Layer::Ethernet);
}
