//! The offload code without a device: frames shaped like the kernel's are split by a
//! `vnet::Reader`, packets are merged by a `vnet::Writer`, and every result is checked by
//! the independent builder and verifier in `vnet_support::packets` (a byte-at-a-time
//! checksum, its own header parsing). Property tests cover random sizes, MSS, batch sizes
//! and interleavings; the rest pin one rule each.

mod vnet_support;

use std::collections::HashMap;

use ferrotun_device::vnet::{self, Error, MAX_SEGMENTS, Offloads, Reader, Writer};
use proptest::prelude::*;
use vnet_support::coalesce;
use vnet_support::packets::*;

const HEADROOM: usize = 16;

/// Pushes `frame` and pops all its packets in batches of `batch` buffers, checking that
/// the headroom of every buffer stays untouched and that `pending` counts down.
fn split(reader: &mut Reader, frame: &[u8], batch: usize) -> Vec<Vec<u8>> {
    split_marked(reader, frame, batch)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// [`split`], with whether the reader marked each packet's checksum partial.
fn split_marked(reader: &mut Reader, frame: &[u8], batch: usize) -> Vec<(Vec<u8>, bool)> {
    reader.push_frame(frame).expect("a well-formed frame");
    let mut out = Vec::new();
    let mut bufs = vec![vec![0xa5u8; HEADROOM + 1600]; batch];
    let mut lens = vec![0usize; batch];
    while reader.pending() > 0 {
        let before = reader.pending();
        let n = reader.pop(&mut bufs, HEADROOM, &mut lens).unwrap();
        assert_eq!(
            n,
            before.min(batch),
            "a batch is filled while packets remain"
        );
        assert_eq!(reader.pending(), before - n);
        assert_eq!(reader.partial().len(), n, "one mark per packet");
        for ((b, &len), &partial) in bufs.iter_mut().zip(&lens).zip(reader.partial()) {
            assert!(b[..HEADROOM].iter().all(|&x| x == 0xa5), "headroom written");
            out.push((b[HEADROOM..HEADROOM + len].to_vec(), partial));
            b.fill(0xa5);
        }
    }
    out
}

/// Splits a frame with a fresh reader in one big batch.
fn resplit(frame: &[u8]) -> Vec<Vec<u8>> {
    split(&mut Reader::new(), frame, 256)
}

/// `packet` (IPv4 or IPv6 without options, then TCP or UDP) with a transport checksum of
/// 0x0000 written as 0xffff. Both mean the same in one's complement: a TCP checksum
/// computed in full may come out 0x0000, while one completed from a partial sum is stored
/// as 0xffff, as the kernel's `skb_checksum_help()` does.
fn zero_sum_as_ones(packet: &[u8], v6: bool, tcp: bool) -> Vec<u8> {
    let field = if v6 { 40 } else { 20 } + if tcp { 16 } else { 6 };
    let mut p = packet.to_vec();
    if p[field..field + 2] == [0, 0] {
        p[field..field + 2].copy_from_slice(&[0xff, 0xff]);
    }
    p
}

/// Checks a frame from the writer: a merged super-segment has a coherent header and a
/// partial checksum, a single packet an all-zero header and a complete one. Returns
/// whether it was merged.
fn check_frame(f: &[u8]) -> bool {
    let (flags, gso, hdr_len, gso_size, start, off) = vnet_fields(f);
    let pkt = &f[VNET..];
    if gso == 0 {
        assert_eq!(&f[..VNET], &[0u8; VNET], "single packet, empty header");
        return false;
    }
    let p = parse_checked(pkt, true).unwrap_or_else(|e| panic!("merged frame: {e}"));
    assert_eq!(flags, 1, "NEEDS_CSUM");
    let l3 = if p.flow.is_v6() { 40 } else { 20 };
    assert_eq!(usize::from(start), l3);
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
    assert!(pkt.len() <= vnet::MAX_PACKET);
    true
}

fn check_segments(segs: &[Vec<u8>], t: &Tcp, data: &[u8], mss: usize) -> Result<(), TestCaseError> {
    let n = data.len().div_ceil(mss).max(1);
    prop_assert_eq!(segs.len(), n);
    for (i, s) in segs.iter().enumerate() {
        let p =
            parse_checked(s, false).map_err(|e| TestCaseError::fail(format!("seg {i}: {e}")))?;
        prop_assert_eq!(p.flow, t.flow);
        prop_assert_eq!(p.seq, t.seq.wrapping_add((i * mss) as u32));
        prop_assert_eq!(p.ack, t.ack);
        if !t.flow.is_v6() {
            prop_assert_eq!(p.id, t.id.wrapping_add(i as u16));
        }
        let last = i == n - 1;
        let mut want = t.flags;
        if !last {
            want &= !(FIN | PSH);
        }
        if i > 0 {
            want &= !CWR;
        }
        prop_assert_eq!(p.flags, want, "flags of segment {} of {}", i, n);
        prop_assert_eq!(&p.options, &t.options);
        let end = ((i + 1) * mss).min(data.len());
        prop_assert_eq!(&p.payload[..], &data[(i * mss).min(end)..end]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A TCP super-segment is cut into packets that each verify, with the right sequence
    /// numbers, ids and flags, across batches of any size; merging those packets again
    /// and cutting the result gives the same packets byte for byte.
    #[test]
    fn tcp_split_then_coalesce_round_trips(
        v6 in any::<bool>(),
        small_mss in any::<bool>(),
        mss_raw in any::<u16>(),
        len_raw in any::<u32>(),
        seq in any::<u32>(),
        id in any::<u16>(),
        flags in prop::sample::select(vec![ACK, ACK | PSH, ACK | PSH | FIN, ACK | FIN, ACK | CWR, ACK | PSH | CWR]),
        ts in any::<bool>(),
        claimed in prop::sample::select(vec![0u16, 54, 0xffff]),
        batch in 1usize..70,
        seed in any::<u64>(),
    ) {
        let mss = if small_mss { 1 + usize::from(mss_raw) % 64 } else { 536 + usize::from(mss_raw) % 925 };
        let max_len = if small_mss { 3000 } else { 65_535 - 72 };
        let len = len_raw as usize % (max_len + 1);
        let flow = if v6 { Flow::v6(1) } else { Flow::v4(1) };
        let mut t = Tcp::new(flow, seq);
        if ts { t = t.timestamps(seed as u32); }
        t.flags = flags;
        t.id = id;
        let data = payload(len, seed);
        // hdr_len as the kernel may report it: right, zero, or absurd; never used.
        let frame = t.super_frame(&data, mss as u16, claimed);
        let mut reader = Reader::new();
        let segs = split(&mut reader, &frame, batch);
        check_segments(&segs, &t, &data, mss)?;
        let st = reader.stats();
        prop_assert_eq!((st.frames, st.super_segments, st.packets), (1, 1, segs.len() as u64));

        let mut writer = Writer::new(Offloads::TSO);
        let frames = coalesce(&mut writer, &segs, HEADROOM);
        // Candidates are the segments with flags ACK or ACK|PSH: a CWR first segment and
        // a FIN last one go alone. Runs of candidates merge MAX_SEGMENTS at a time.
        let alone = segs.iter().filter(|s| {
            let f = parse_checked(s, false).unwrap().flags;
            f & !PSH != ACK
        }).count();
        let runs = (segs.len() - alone).div_ceil(MAX_SEGMENTS);
        prop_assert_eq!(frames.len(), alone + runs);
        let mut again = Vec::new();
        for f in &frames {
            check_frame(f);
            again.extend(resplit(f));
        }
        prop_assert_eq!(again, segs);
        let ws = writer.stats();
        prop_assert_eq!(ws.frames, frames.len() as u64);
        prop_assert_eq!(ws.packets, (len.div_ceil(mss).max(1)) as u64);
    }

    /// With checksums left partial, a TCP or UDP super-segment is cut into packets that
    /// are each marked partial and hold the pseudo-header sum in their checksum field;
    /// completing it gives, byte for byte, the packet a reader with full checksums cuts.
    /// A writer told which packets are partial (trusting them or not) merges them into
    /// the very frames the full packets give; those it writes alone go with `NEEDS_CSUM`
    /// at the checksum field, and complete to the full packet.
    #[test]
    fn partial_checksums_complete_to_the_full_ones(
        v6 in any::<bool>(),
        tcp in any::<bool>(),
        mss_raw in any::<u16>(),
        len_raw in any::<u16>(),
        batch in 1usize..70,
        trusted in any::<bool>(),
        uso in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let flow = if v6 { Flow::v6(2) } else { Flow::v4(2) };
        let mss = 1 + usize::from(mss_raw) % 1400;
        let len = (usize::from(len_raw) % 65_000).min(mss * 100);
        let data = payload(len, seed);
        let frame = if tcp {
            Tcp::new(flow, seed as u32).super_frame(&data, mss as u16, 0)
        } else {
            udp_super_frame(&flow, seed as u16, &data, mss as u16)
        };
        let full = split(&mut Reader::new(), &frame, batch);
        let mut reader = Reader::new().leave_checksums_partial(true);
        let marked = split_marked(&mut reader, &frame, batch);
        prop_assert_eq!(marked.len(), full.len());
        prop_assert_eq!(reader.stats().checksums_left_partial, full.len() as u64);
        let partial: Vec<Vec<u8>> = marked.iter().map(|(p, _)| p.clone()).collect();
        for ((p, mark), f) in marked.iter().zip(&full) {
            prop_assert!(*mark);
            prop_assert!(parse_checked(p, true).is_ok(), "a pseudo-header sum");
            let mut done = p.clone();
            prop_assert!(vnet::complete_checksum(&mut done, vnet::Layer::Ip));
            prop_assert_eq!(zero_sum_as_ones(&done, v6, tcp), zero_sum_as_ones(f, v6, tcp));
        }

        let offloads = if uso { Offloads::ALL } else { Offloads::TSO };
        let want = coalesce(&mut Writer::new(offloads), &full, HEADROOM);
        let mut writer = Writer::new(offloads).trust_checksums(trusted);
        let bufs = || -> Vec<Vec<u8>> {
            partial.iter().map(|p| [&[0u8; HEADROOM][..], p].concat()).collect()
        };
        let lens: Vec<usize> = partial.iter().map(Vec::len).collect();
        let marks = vec![true; lens.len()];
        let mut twin = writer.clone();
        let mut whole = bufs();
        writer.prepare_partial(&mut whole, HEADROOM, &lens, &marks).unwrap();
        let mut got = Vec::new();
        while let Some(f) = writer.next_frame(&mut whole, HEADROOM) {
            got.push(f.to_vec());
        }
        // As written (in parts), the same frames.
        let mut in_parts = bufs();
        twin.prepare_partial(&mut in_parts, HEADROOM, &lens, &marks).unwrap();
        let mut joined = Vec::new();
        loop {
            let mut parts = [std::io::IoSlice::new(&[]); MAX_SEGMENTS];
            let Some(f) = twin.next_frame_parts(&mut in_parts, HEADROOM, &mut parts) else {
                break;
            };
            joined.push(f.iter().flat_map(|p| p.iter().copied()).collect::<Vec<u8>>());
        }
        prop_assert_eq!(&joined, &got);
        prop_assert_eq!(got.len(), want.len());
        prop_assert_eq!(writer.stats().bad_checksums, 0);
        for (g, w) in got.iter().zip(&want) {
            let (flags, gso, _, _, start, off) = vnet_fields(g);
            if gso != 0 {
                prop_assert_eq!(g, w, "a merged frame");
                continue;
            }
            let l4 = if v6 { 40 } else { 20 };
            prop_assert_eq!((flags, start, off), (1, l4, if tcp { 16 } else { 6 }));
            let mut done = g[VNET..].to_vec();
            prop_assert!(vnet::complete_checksum(&mut done, vnet::Layer::Ip));
            prop_assert_eq!(
                zero_sum_as_ones(&done, v6, tcp),
                zero_sum_as_ones(&w[VNET..], v6, tcp)
            );
        }
    }

    /// Finding and completing a partial checksum takes any bytes a peer may send without
    /// panicking, and changes only the two bytes of the field it found.
    #[test]
    fn partial_checksums_of_arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        ethernet in any::<bool>(),
        version in prop::sample::select(vec![4u8, 6]),
        protocol in prop::sample::select(vec![6u8, 17, 1]),
    ) {
        let layer = if ethernet { vnet::Layer::Ethernet } else { vnet::Layer::Ip };
        let mut p = bytes.clone();
        // Often enough an IP header that is nearly plausible.
        if !ethernet && p.len() > 40 {
            p[0] = (version << 4) | (p[0] & 0x0f);
            p[if version == 4 { 9 } else { 6 }] = protocol;
        }
        let before = p.clone();
        let found = vnet::partial_checksum(&p, layer);
        let done = vnet::complete_checksum(&mut p, layer);
        prop_assert_eq!(done, found.is_some());
        match found {
            Some(f) => {
                prop_assert!(f.start < f.end && f.end <= p.len());
                let field = f.start + f.offset;
                prop_assert_eq!(&p[..field], &before[..field]);
                prop_assert_eq!(&p[field + 2..], &before[field + 2..]);
            }
            None => prop_assert_eq!(&p, &before),
        }
    }

    /// The same for UDP (USO): datagrams of gso_size with their own lengths and
    /// checksums, merged back only when the writer has USO.
    #[test]
    fn udp_split_then_coalesce_round_trips(
        v6 in any::<bool>(),
        gso in 1u16..1473,
        len_raw in any::<u16>(),
        id in any::<u16>(),
        batch in 1usize..70,
        seed in any::<u64>(),
    ) {
        let flow = if v6 { Flow::v6(3) } else { Flow::v4(3) };
        let len = usize::from(len_raw) % (65_535 - 48 + 1);
        let len = len.min(usize::from(gso) * 200);
        let data = payload(len, seed);
        let frame = udp_super_frame(&flow, id, &data, gso);
        let segs = split(&mut Reader::new(), &frame, batch);
        let g = usize::from(gso);
        prop_assert_eq!(segs.len(), len.div_ceil(g).max(1));
        for (i, s) in segs.iter().enumerate() {
            let p = parse_checked(s, false).map_err(TestCaseError::fail)?;
            prop_assert_eq!(p.flow, flow);
            let end = ((i + 1) * g).min(len);
            prop_assert_eq!(&p.payload[..], &data[(i * g).min(end)..end]);
            if !v6 { prop_assert_eq!(p.id, id.wrapping_add(i as u16)); }
        }
        let merged = coalesce(&mut Writer::new(Offloads::ALL), &segs, HEADROOM);
        let mut again = Vec::new();
        for f in &merged {
            check_frame(f);
            again.extend(resplit(f));
        }
        prop_assert_eq!(&again, &segs);
        prop_assert_eq!(merged.len(), segs.len().div_ceil(MAX_SEGMENTS));
        // Without USO nothing UDP is merged.
        let alone = coalesce(&mut Writer::new(Offloads::TSO), &segs, HEADROOM);
        prop_assert_eq!(alone.len(), segs.len());
    }

    /// Random interleavings of several flows with gaps, flag changes, option changes,
    /// bad checksums and other traffic: every packet comes out exactly once, within each
    /// flow in the order it went in, and merged frames are coherent.
    #[test]
    fn coalescing_keeps_every_packet_and_the_order_within_each_flow(
        events in prop::collection::vec((0usize..4, 0u8..12), 1..160),
        offset in prop::sample::select(vec![0usize, 4, 10, 16]),
    ) {
        let flows = [Flow::v4(1), Flow::v4(2), Flow::v6(1), Flow::v6(2)];
        let mut state: Vec<(u32, u16)> = vec![(1000, 1), (5000, 1), (9000, 1), (70000, 1)];
        // UDP comes from other sockets, with ids of their own.
        let mut udp_ids = [100u16; 4];
        let mut packets = Vec::new();
        for (k, ev) in events {
            let (seq, id) = &mut state[k];
            let mut t = Tcp::new(flows[k], *seq).timestamps(1);
            t.id = *id;
            let mut len = 1200;
            match ev {
                0 => { t.seq = t.seq.wrapping_add(7); } // a gap
                1 => t.flags = ACK | PSH,
                2 => t.flags = ACK | FIN,
                3 => t = t.timestamps(2),               // options change
                4 => t.ttl = 63,
                5 => len = 300,                          // short segment
                6 => len = 0,                            // pure ACK
                7 => {
                    let uid = &mut udp_ids[k];
                    packets.push(udp_packet(&flows[k], *uid, &payload(100, u64::from(*uid))));
                    *uid = uid.wrapping_add(1);
                    continue;
                }
                _ => {}
            }
            let mut p = t.packet(&payload(len, u64::from(t.seq)));
            if ev == 8 && len > 0 {
                let last = p.len() - 1;
                p[last] ^= 0xff; // corrupt the payload: the checksum no longer verifies
            }
            *seq = t.seq.wrapping_add(len as u32);
            *id = id.wrapping_add(1);
            packets.push(p);
        }
        let mut writer = Writer::new(Offloads::ALL);
        let frames = coalesce(&mut writer, &packets, offset);
        prop_assert!(frames.len() <= packets.len());
        let out = carried(&frames, check_frame, resplit);
        // Same packets, byte for byte, and per flow in the same order.
        let by_flow = |ps: &[Vec<u8>]| {
            let mut m: HashMap<(Vec<u8>, u8), Vec<Vec<u8>>> = HashMap::new();
            for p in ps {
                let key = if p[0] >> 4 == 4 { (p[12..24].to_vec(), p[9]) } else { (p[8..44].to_vec(), p[6]) };
                m.entry(key).or_default().push(p.clone());
            }
            m
        };
        prop_assert_eq!(out.len(), packets.len());
        prop_assert_eq!(by_flow(&out), by_flow(&packets));
    }

    /// Whatever bytes arrive as a frame, the reader returns packets or an error, never
    /// panics, and stays usable.
    #[test]
    fn arbitrary_frames_never_panic(
        head in prop::collection::vec(any::<u8>(), 0..80),
        gso in prop::sample::select(vec![0u8, 1, 4, 5, 0x81, 3]),
        csum in any::<bool>(),
        rest in 0usize..3000,
        batch in 1usize..8,
    ) {
        let mut frame = head.clone();
        if frame.len() >= 2 {
            frame[0] = u8::from(csum);
            frame[1] = gso;
        }
        frame.extend(payload(rest, head.len() as u64));
        let mut reader = Reader::new();
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
        let ok = Tcp::new(Flow::v4(1), 1).super_frame(&[1; 3000], 1000, 0);
        prop_assert_eq!(split(&mut reader, &ok, 8).len(), 3);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A peer chooses every byte of the packets the receive path hands the writer (the
    /// AEAD proves who sent them, not that they are well formed). Whatever they are —
    /// segments of one flow changed as `make_hostile` does, a fifth of them left alone —
    /// the writer does not panic, writes every packet exactly once (alone and unchanged,
    /// or inside a merged frame that splits back into it), and every merged frame is
    /// coherent. A verifying writer merges only packets whose
    /// checksums hold, so they come back byte for byte but for the urgent pointer of
    /// segments without URG; a trusting one may merge packets with wrong transport
    /// checksums, so those are compared as `canonical_ip` says.
    #[test]
    fn hostile_packets_are_each_written_once_and_never_panic_the_writer(
        v6 in any::<bool>(),
        changes in prop::collection::vec(
            (0..HOSTILE_KINDS + 2, any::<u16>(), 1u8..=255, any::<u64>()),
            1..48,
        ),
        trusted in any::<bool>(),
        offset in prop::sample::select(vec![0usize, 10, 16]),
    ) {
        let flow = if v6 { Flow::v6(1) } else { Flow::v4(1) };
        let sizes = vec![1000; changes.len()];
        let ts = stream(flow, 7, &sizes);
        let mut packets = build(&ts, &sizes);
        for (i, (p, &change)) in packets.iter_mut().zip(&changes).enumerate() {
            make_hostile(p, &flow, i, change);
        }
        let mut writer = Writer::new(Offloads::ALL).trust_checksums(trusted);
        let frames = coalesce(&mut writer, &packets, offset);
        prop_assert!(frames.len() <= packets.len());
        let out = carried(&frames, check_frame, resplit);
        let sorted = |ps: &[Vec<u8>]| {
            let mut v: Vec<Vec<u8>> = ps.iter().map(|p| canonical_ip(p, trusted)).collect();
            v.sort();
            v
        };
        prop_assert_eq!(sorted(&out), sorted(&packets));
    }
}

// ---- The reader, one rule at a time ----

#[test]
fn partial_checksums_of_single_packets_are_completed() {
    for flow in [Flow::v4(1), Flow::v6(1)] {
        // A TCP segment and a UDP datagram whose checksum field holds only the pseudo
        // header sum, as the kernel hands them out with TUN_F_CSUM.
        let t = Tcp::new(flow, 77);
        let full = t.packet(&payload(700, 1));
        let l3 = if flow.is_v6() { 40 } else { 20 };
        let mut partial = full.clone();
        let ps = fold16(pseudo_sum(
            &full[src_range(&flow)],
            &full[dst_range(&flow)],
            6,
            full.len() - l3,
        ));
        partial[l3 + 16..l3 + 18].copy_from_slice(&ps.to_be_bytes());
        let mut frame = vnet_header(1, 0, 0, 0, l3 as u16, 16);
        frame.extend_from_slice(&partial);
        let mut r = Reader::new();
        let out = split(&mut r, &frame, 4);
        assert_eq!(out, vec![full.clone()]);
        assert_eq!(r.stats().checksums_completed, 1);

        let u = udp_packet(&flow, 9, &payload(333, 2));
        let mut partial = u.clone();
        let ps = fold16(pseudo_sum(
            &u[src_range(&flow)],
            &u[dst_range(&flow)],
            17,
            u.len() - l3,
        ));
        partial[l3 + 6..l3 + 8].copy_from_slice(&ps.to_be_bytes());
        let mut frame = vnet_header(1, 0, 0, 0, l3 as u16, 6);
        frame.extend_from_slice(&partial);
        let out = split(&mut Reader::new(), &frame, 1);
        parse_checked(&out[0], false).unwrap();

        // Without NEEDS_CSUM (or with DATA_VALID) the packet passes unchanged.
        for flags in [0u8, 2] {
            let mut frame = vnet_header(flags, 0, 0, 0, 0, 0);
            frame.extend_from_slice(&full);
            assert_eq!(split(&mut Reader::new(), &frame, 1), vec![full.clone()]);
        }
    }
}

#[test]
fn a_reader_leaving_checksums_partial_keeps_them_where_the_kernel_said() {
    for flow in [Flow::v4(1), Flow::v6(1)] {
        let full = Tcp::new(flow, 77).packet(&payload(700, 1));
        let l3 = if flow.is_v6() { 40 } else { 20 };
        let ps = fold16(pseudo_sum(
            &full[src_range(&flow)],
            &full[dst_range(&flow)],
            6,
            full.len() - l3,
        ));
        let mut partial = full.clone();
        partial[l3 + 16..l3 + 18].copy_from_slice(&ps.to_be_bytes());
        let reader = || Reader::new().leave_checksums_partial(true);
        // At the transport header's checksum field: kept, and marked.
        let mut frame = vnet_header(1, 0, 0, 0, l3 as u16, 16);
        frame.extend_from_slice(&partial);
        let mut r = reader();
        assert_eq!(
            split_marked(&mut r, &frame, 4),
            vec![(partial.clone(), true)]
        );
        assert_eq!(
            (
                r.stats().checksums_left_partial,
                r.stats().checksums_completed
            ),
            (1, 0)
        );
        // Anywhere else: completed as the kernel asked, not marked.
        let mut frame = vnet_header(1, 0, 0, 0, l3 as u16 + 4, 12);
        frame.extend_from_slice(&partial);
        let mut r = reader();
        let out = split_marked(&mut r, &frame, 4);
        assert!(!out[0].1);
        assert_ne!(out[0].0, partial);
        assert_eq!(r.stats().checksums_completed, 1);
        // No partial checksum: as it came, not marked.
        let mut frame = vnet_header(0, 0, 0, 0, 0, 0);
        frame.extend_from_slice(&full);
        assert_eq!(split_marked(&mut reader(), &frame, 4), vec![(full, false)]);
    }
}

/// An IPv6 super-segment with an extension header between the fixed header and TCP is
/// cut as any other, but with full checksums: a receiver would have to walk the extension
/// headers to find the checksum field, so such packets are never partial.
#[test]
fn packets_behind_ipv6_extension_headers_keep_full_checksums() {
    let data = payload(5000, 9);
    let plain = Tcp::new(Flow::v6(4), 1000).super_frame(&data, 1200, 0);
    // Insert an 8-byte hop-by-hop options header (next header TCP, PadN) after the fixed
    // header, and move everything the virtio-net header counts past it.
    let (vnet, ip) = plain.split_at(VNET);
    let mut frame = vnet.to_vec();
    frame.extend_from_slice(&ip[..40]);
    frame.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    frame.extend_from_slice(&ip[40..]);
    frame[VNET + 6] = 0; // next header: hop-by-hop options
    let payload_len = u16::from_be_bytes([frame[VNET + 4], frame[VNET + 5]]) + 8;
    frame[VNET + 4..VNET + 6].copy_from_slice(&payload_len.to_be_bytes());
    for field in [2, 6] {
        // hdr_len and csum_start
        let v = u16::from_le_bytes([frame[field], frame[field + 1]]) + 8;
        frame[field..field + 2].copy_from_slice(&v.to_le_bytes());
    }
    let full = split(&mut Reader::new(), &frame, 8);
    assert_eq!(full.len(), 5);
    let mut r = Reader::new().leave_checksums_partial(true);
    let marked = split_marked(&mut r, &frame, 8);
    assert_eq!(r.stats().checksums_left_partial, 0);
    assert_eq!(
        marked,
        full.into_iter().map(|p| (p, false)).collect::<Vec<_>>()
    );
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
fn a_super_segment_larger_than_the_batch_is_delivered_across_calls() {
    let t = Tcp::new(Flow::v4(1), 1).timestamps(5);
    let data = payload(45 * 1368, 3);
    let frame = t.super_frame(&data, 1368, 0);
    let mut r = Reader::new();
    r.push_frame(&frame).unwrap();
    assert_eq!(r.pending(), 45);
    assert_eq!(
        r.push_frame(&frame),
        Err(Error::Busy),
        "one frame at a time"
    );
    let mut bufs = vec![vec![0u8; 1500]; 4];
    let mut lens = [0; 4];
    let mut got = Vec::new();
    let mut calls = 0;
    while r.pending() > 0 {
        let n = r.pop(&mut bufs, 0, &mut lens).unwrap();
        calls += 1;
        for i in 0..n {
            got.extend_from_slice(&parse_checked(&bufs[i][..lens[i]], false).unwrap().payload);
        }
    }
    assert_eq!(calls, 12);
    assert_eq!(got, data);
    assert_eq!(r.stats().max_segments, 45);
}

#[test]
fn buffers_too_small_drop_the_frame_with_an_error_after_the_packets_that_fit() {
    let t = Tcp::new(Flow::v4(1), 1);
    let frame = t.super_frame(&payload(3000, 4), 1000, 0);
    let mut r = Reader::new();
    r.push_frame(&frame).unwrap();
    let mut bufs = vec![vec![0u8; 1100], vec![0u8; 100], vec![0u8; 1100]];
    let mut lens = [0; 3];
    // The first segment fits; the second does not: the first is returned now, the error
    // with the next call, and the rest of the frame is gone.
    assert_eq!(r.pop(&mut bufs, 0, &mut lens).unwrap(), 1);
    let e = r.pop(&mut bufs, 0, &mut lens).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(
        Error::from_io(&e),
        Some(&Error::BufferTooSmall {
            index: 1,
            need: 1040,
            have: 100
        })
    );
    assert_eq!(r.pending(), 0);
    assert_eq!(r.stats().dropped, 1);
    // The reader goes on with the next frame.
    assert_eq!(split(&mut r, &frame, 3).len(), 3);
}

#[test]
fn malformed_frames_are_errors() {
    let good = Tcp::new(Flow::v4(1), 1).super_frame(&payload(3000, 5), 1000, 0);
    let good6 = Tcp::new(Flow::v6(1), 1).super_frame(&payload(3000, 5), 1000, 0);
    let with = |f: &[u8], at: usize, v: &[u8]| {
        let mut f = f.to_vec();
        f[at..at + v.len()].copy_from_slice(v);
        f
    };
    let cases: Vec<(&str, Vec<u8>, Error)> = vec![
        ("short", vec![0; 9], Error::ShortFrame { len: 9 }),
        ("UFO", with(&good, 1, &[3]), Error::UnsupportedGso(3)),
        (
            "unknown gso",
            with(&good, 1, &[0x22]),
            Error::UnsupportedGso(0x22),
        ),
        ("no NEEDS_CSUM", with(&good, 0, &[0]), Error::GsoWithoutCsum),
        ("gso_size 0", with(&good, 4, &[0, 0]), Error::ZeroGsoSize),
        (
            "TCPV4 on IPv6",
            with(&good6, 1, &[1]),
            Error::GsoVersionMismatch {
                gso: vnet::GsoType::TcpV4,
                version: 6,
            },
        ),
        ("not IP", with(&good, VNET, &[0x55]), Error::NotIp(5)),
        (
            "TCPV4 on UDP",
            with(&good, VNET + 9, &[17]),
            Error::GsoProtocolMismatch {
                gso: vnet::GsoType::TcpV4,
                protocol: 17,
            },
        ),
        (
            "TCPV6 on ICMPv6",
            with(&good6, VNET + 6, &[58]),
            Error::GsoProtocolMismatch {
                gso: vnet::GsoType::TcpV6,
                protocol: 58,
            },
        ),
        (
            "csum_start",
            with(&good, 6, &[24, 0]),
            Error::BadCsumStart {
                csum_start: 24,
                ip_header: 20,
            },
        ),
        (
            "csum_offset",
            with(&good, 8, &[6, 0]),
            Error::BadCsumOffset {
                csum_offset: 6,
                protocol: "TCP",
            },
        ),
        (
            "TCP data offset",
            with(&good, VNET + 20 + 12, &[0x40]),
            Error::BadTcpHeaderLen(16),
        ),
        (
            "truncated TCP header",
            good[..VNET + 30].to_vec(),
            Error::Truncated {
                what: "the TCP header",
                need: 40,
                have: 30,
            },
        ),
        (
            "truncated IPv4 header",
            good[..VNET + 12].to_vec(),
            Error::Truncated {
                what: "the IPv4 header",
                need: 20,
                have: 12,
            },
        ),
        (
            "partial checksum beyond the end",
            {
                let mut f = vnet_header(1, 0, 0, 0, 40, 16);
                f.extend_from_slice(&[0x45; 50]);
                f
            },
            Error::Truncated {
                what: "the partial checksum",
                need: 58,
                have: 50,
            },
        ),
        (
            "oversized",
            vec![0; VNET + vnet::MAX_PACKET + 1],
            Error::Oversized {
                len: VNET + vnet::MAX_PACKET + 1,
            },
        ),
    ];
    let mut r = Reader::new();
    for (what, frame, want) in cases {
        assert_eq!(r.push_frame(&frame), Err(want), "{what}");
        assert_eq!(r.pending(), 0, "{what}: nothing pending");
    }
    assert_eq!(r.stats().dropped, 16);
    // The largest legal frame, a 65535-byte IP packet, is no error.
    let t = Tcp::new(Flow::v4(1), 1).timestamps(1);
    let max = t.super_frame(&payload(vnet::MAX_PACKET - 52, 6), 1368, 0);
    assert_eq!(max.len(), VNET + vnet::MAX_PACKET);
    assert_eq!(split(&mut r, &max, 64).len(), 48);
    let e: std::io::Error = Error::ZeroGsoSize.into();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
}

// ---- The writer, one rule at a time ----

/// Segments of a flow, `sizes[i]` payload bytes each, contiguous from `seq`.
fn stream(flow: Flow, seq: u32, sizes: &[usize]) -> Vec<Tcp> {
    let mut s = seq;
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut t = Tcp::new(flow, s).timestamps(9);
            t.id = i as u16;
            s = s.wrapping_add(n as u32);
            t
        })
        .collect()
}

fn build(ts: &[Tcp], sizes: &[usize]) -> Vec<Vec<u8>> {
    ts.iter()
        .zip(sizes)
        .map(|(t, &n)| t.packet(&payload(n, u64::from(t.seq))))
        .collect()
}

/// For each frame, how many packets it carries (1 for a single packet).
fn shape(frames: &[Vec<u8>]) -> Vec<usize> {
    frames
        .iter()
        .map(|f| if check_frame(f) { resplit(f).len() } else { 1 })
        .collect()
}

fn tso() -> Writer {
    Writer::new(Offloads::TSO)
}

#[test]
fn a_contiguous_flow_merges_into_one_super_segment() {
    let sizes = [1368; 10];
    let pkts = build(&stream(Flow::v4(1), 1, &sizes), &sizes);
    let mut w = tso();
    let frames = coalesce(&mut w, &pkts, HEADROOM);
    assert_eq!(shape(&frames), vec![10]);
    let (_, _, _, gso_size, _, _) = vnet_fields(&frames[0]);
    assert_eq!(gso_size, 1368);
    let st = w.stats();
    assert_eq!(
        (st.packets, st.frames, st.merged_frames, st.merged_packets),
        (10, 1, 1, 10)
    );
}

#[test]
fn interleaved_flows_merge_separately() {
    let sizes = [1000; 4];
    let a = build(&stream(Flow::v4(1), 1, &sizes), &sizes);
    let b = build(&stream(Flow::v6(2), 1, &sizes), &sizes);
    let mixed: Vec<Vec<u8>> = a
        .iter()
        .zip(&b)
        .flat_map(|(x, y)| [x.clone(), y.clone()])
        .collect();
    let frames = coalesce(&mut tso(), &mixed, HEADROOM);
    assert_eq!(shape(&frames), vec![4, 4]);
    assert_eq!(resplit(&frames[0]), a);
    assert_eq!(resplit(&frames[1]), b);
}

#[test]
fn sequence_gaps_flags_options_and_ip_fields_stop_merging() {
    let sizes = [1000; 3];
    let base = stream(Flow::v4(1), 1, &sizes);
    type Change = Box<dyn Fn(&mut Tcp)>;
    let variants: Vec<(&str, Change)> = vec![
        ("seq gap", Box::new(|t| t.seq += 1)),
        ("ack", Box::new(|t| t.ack += 1)),
        ("options", Box::new(|t| *t = t.clone().timestamps(10))),
        ("no options", Box::new(|t| t.options.clear())),
        ("ttl", Box::new(|t| t.ttl = 1)),
        ("tos", Box::new(|t| t.tos = 0x10)),
        ("SYN", Box::new(|t| t.flags = ACK | SYN)),
        ("CWR", Box::new(|t| t.flags = ACK | CWR)),
        ("no ACK", Box::new(|t| t.flags = PSH)),
        ("IPv4 id jumps", Box::new(|t| t.id += 5)),
        ("window", Box::new(|t| t.window += 1)),
        ("zero window reopened", Box::new(|t| t.window = 65535)),
    ];
    for (what, change) in variants {
        let mut ts = base.clone();
        change(&mut ts[2]);
        let pkts = build(&ts, &sizes);
        let frames = coalesce(&mut tso(), &pkts, HEADROOM);
        assert_eq!(shape(&frames), vec![2, 1], "{what}");
        assert_eq!(
            frames[1][VNET..],
            pkts[2][..],
            "{what}: the odd one out is unchanged"
        );
    }
    // DF differs (IPv4 flags byte).
    let mut pkts = build(&base, &sizes);
    pkts[2][6] = 0;
    pkts[2][10..12].copy_from_slice(&[0, 0]);
    let c = !(ones_sum(&pkts[2][..20]) as u16);
    pkts[2][10..12].copy_from_slice(&c.to_be_bytes());
    assert_eq!(shape(&coalesce(&mut tso(), &pkts, HEADROOM)), vec![2, 1]);
    // The AE bit (the lowest of byte 12) set on the third, its checksum updated (RFC 1624).
    let mut pkts = build(&base, &sizes);
    pkts[2][20 + 12] |= 1;
    let old = u16::from_be_bytes([pkts[2][36], pkts[2][37]]);
    let sum = u32::from(!old) + 0x0100;
    let sum = (sum & 0xffff) + (sum >> 16);
    pkts[2][36..38].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let frames = coalesce(&mut tso(), &pkts, HEADROOM);
    assert_eq!(shape(&frames), vec![2, 1], "AE");
    assert_eq!(
        frames[1][VNET..],
        pkts[2][..],
        "AE: the odd one out is unchanged"
    );
}

#[test]
fn ipv4_ids_increment_or_stay_fixed_with_df() {
    let sizes = [1000; 4];
    let mut ts = stream(Flow::v4(1), 1, &sizes);
    for t in &mut ts {
        t.id = 7; // fixed id, DF set (as the builder always does)
    }
    let pkts = build(&ts, &sizes);
    assert_eq!(shape(&coalesce(&mut tso(), &pkts, HEADROOM)), vec![4]);
    // A flow that starts fixed cannot switch to incrementing.
    ts[3].id = 8;
    let pkts = build(&ts, &sizes);
    assert_eq!(shape(&coalesce(&mut tso(), &pkts, HEADROOM)), vec![3, 1]);
    // Without DF a fixed id does not merge.
    let mut pkts = build(&ts[..2], &sizes[..2]);
    for p in &mut pkts {
        p[6] = 0;
        p[10..12].copy_from_slice(&[0, 0]);
        let c = !(ones_sum(&p[..20]) as u16);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    assert_eq!(shape(&coalesce(&mut tso(), &pkts, HEADROOM)), vec![1, 1]);
}

#[test]
fn psh_ends_a_super_segment_and_fin_goes_alone() {
    let sizes = [1000; 5];
    let mut ts = stream(Flow::v6(1), 1, &sizes);
    ts[1].flags = ACK | PSH;
    ts[4].flags = ACK | FIN;
    let pkts = build(&ts, &sizes);
    let frames = coalesce(&mut tso(), &pkts, HEADROOM);
    assert_eq!(shape(&frames), vec![2, 2, 1]);
    let merged = parse_checked(&frames[0][VNET..], true).unwrap();
    assert_eq!(merged.flags, ACK | PSH, "PSH of the last segment is kept");
    assert_eq!(resplit(&frames[0]), pkts[..2].to_vec());
}

#[test]
fn sizes_must_be_equal_except_a_shorter_last() {
    let sizes = [1000, 1000, 500, 1000, 1000];
    let pkts = build(&stream(Flow::v4(1), 1, &sizes), &sizes);
    assert_eq!(shape(&coalesce(&mut tso(), &pkts, HEADROOM)), vec![3, 2]);
    let sizes = [500, 1000, 1000];
    let pkts = build(&stream(Flow::v4(1), 1, &sizes), &sizes);
    assert_eq!(shape(&coalesce(&mut tso(), &pkts, HEADROOM)), vec![1, 2]);
}

#[test]
fn segment_count_and_size_are_bounded() {
    let sizes = [100; 150];
    let pkts = build(&stream(Flow::v4(1), 1, &sizes), &sizes);
    assert_eq!(
        shape(&coalesce(&mut tso(), &pkts, HEADROOM)),
        vec![64, 64, 22]
    );
    // 20 + 32 header bytes + 45 * 1448 = 65212 fits, a 46th segment would not.
    let sizes = [1448; 50];
    let pkts = build(&stream(Flow::v4(1), 1, &sizes), &sizes);
    let frames = coalesce(&mut tso(), &pkts, HEADROOM);
    assert_eq!(shape(&frames), vec![45, 5]);
    assert_eq!(frames[0].len() - VNET, 52 + 45 * 1448);
}

#[test]
fn bad_checksums_are_never_merged_and_pass_unchanged() {
    let sizes = [1000; 5];
    let mut pkts = build(&stream(Flow::v4(1), 1, &sizes), &sizes);
    pkts[2][100] ^= 1; // a middle segment
    let mut w = tso();
    let frames = coalesce(&mut w, &pkts, HEADROOM);
    assert_eq!(shape(&frames), vec![2, 1, 2]);
    assert_eq!(frames[1][VNET..], pkts[2][..]);
    assert_eq!(w.stats().bad_checksums, 1);

    let mut pkts = build(&stream(Flow::v4(1), 1, &sizes), &sizes);
    pkts[0][100] ^= 1; // the head
    let frames = coalesce(&mut tso(), &pkts, HEADROOM);
    assert_eq!(shape(&frames), vec![1, 4]);
    assert_eq!(frames[0][VNET..], pkts[0][..]);
}

#[test]
fn a_trusting_writer_merges_without_verifying_and_the_kernel_sums_afresh() {
    let sizes = [1000; 5];
    let mut pkts = build(&stream(Flow::v4(1), 1, &sizes), &sizes);
    pkts[2][100] ^= 1; // a payload byte: the checksum no longer verifies
    let mut w = tso().trust_checksums(true);
    let frames = coalesce(&mut w, &pkts, HEADROOM);
    assert_eq!(shape(&frames), vec![5], "merged without checking");
    assert_eq!(w.stats().bad_checksums, 0);
    // The merged frame asks for a new checksum over all of it (NEEDS_CSUM) ...
    assert_eq!(frames[0][0], ferrotun_device::vnet::flags::NEEDS_CSUM);
    // ... and carries every payload byte as it came, the flipped one included.
    assert_eq!(resplit(&frames[0]).len(), 5);
    assert_eq!(frames[0][VNET + 52 + 2 * 1000 + 100 - 52], pkts[2][100]);
}

#[test]
fn packets_of_a_flow_in_between_keep_their_place() {
    let sizes = [1000, 1000];
    let ts = stream(Flow::v4(1), 1, &sizes);
    let pkts = build(&ts, &sizes);
    // A pure ACK of the same flow between two segments: nothing may overtake it.
    let ack = ts[1].packet(&[]);
    let frames = coalesce(
        &mut tso(),
        &[pkts[0].clone(), ack.clone(), pkts[1].clone()],
        HEADROOM,
    );
    assert_eq!(shape(&frames), vec![1, 1, 1]);
    assert_eq!(frames[1][VNET..], ack[..]);
    // Other traffic in between does not stop the flow from merging.
    let udp = udp_packet(&Flow::v4(1), 3, b"other");
    let frames = coalesce(
        &mut tso(),
        &[pkts[0].clone(), udp.clone(), pkts[1].clone()],
        HEADROOM,
    );
    assert_eq!(shape(&frames), vec![2, 1]);
    assert_eq!(frames[1][VNET..], udp[..]);
    // An IPv4 fragment (its flow unknown) closes every super-segment.
    let mut frag = udp.clone();
    frag[6] = 0x20; // MF
    frag[10..12].copy_from_slice(&[0, 0]);
    let c = !(ones_sum(&frag[..20]) as u16);
    frag[10..12].copy_from_slice(&c.to_be_bytes());
    let frames = coalesce(
        &mut tso(),
        &[pkts[0].clone(), frag, pkts[1].clone()],
        HEADROOM,
    );
    assert_eq!(shape(&frames), vec![1, 1, 1]);
}

#[test]
fn without_offloads_or_headroom_every_frame_is_still_right() {
    let sizes = [1000; 6];
    let pkts = build(&stream(Flow::v6(1), 1, &sizes), &sizes);
    let mut w = Writer::new(Offloads::NONE);
    let frames = coalesce(&mut w, &pkts, HEADROOM);
    assert_eq!(shape(&frames), vec![1; 6]);
    for (f, p) in frames.iter().zip(&pkts) {
        assert_eq!(f[VNET..], p[..]);
    }
    assert_eq!(w.stats().merged_frames, 0);
    // With less headroom than a header, packets are copied, and merging still works.
    for offset in [0, 9] {
        let frames = coalesce(&mut tso(), &pkts, offset);
        assert_eq!(shape(&frames), vec![6]);
        let mut mixed = pkts.clone();
        mixed.insert(1, udp_packet(&Flow::v4(1), 1, b"x"));
        let frames = coalesce(&mut tso(), &mixed, offset);
        assert_eq!(shape(&frames), vec![6, 1]);
        assert_eq!(frames[1][VNET..], mixed[1][..]);
    }
}

#[test]
fn buffers_shorter_than_their_length_are_refused() {
    let mut bufs = vec![vec![0u8; 100]];
    let e = tso().prepare(&mut bufs, 16, &[90]).unwrap_err();
    assert_eq!(
        e,
        Error::BufferTooSmall {
            index: 0,
            need: 106,
            have: 100
        }
    );
}
