//! Fuzz target bodies for the virtio-net code, shared by `fuzz/` (cargo-fuzz, nightly)
//! and by the test that replays the committed corpus on stable (`tests/fuzz_corpus.rs` at
//! the workspace root).
//!
//! Responsible for driving the two places where this crate parses bytes it did not make:
//! the [`Reader`] (frames from the kernel, and on a TAP bridge from other hosts) and the
//! [`Writer`] (packets a peer sent, decrypted and otherwise unchecked), with the partial
//! checksum rule both use, and for asserting what must hold whatever the input. Not a
//! stable API: hidden from the docs, used only by the fuzzers and that test.

use std::io::IoSlice;

use crate::VNET_HDR_LEN;
use crate::vnet::checksum;
use crate::vnet::packet::{
    IPV4_CHECKSUM, IPV4_DF, IPV4_DST, IPV4_FRAG, IPV4_FRAG_MASK, IPV4_HEADER_MIN, IPV4_ID,
    IPV4_PROTOCOL, IPV4_SRC, IPV4_TOTAL_LEN, IPV6_DST, IPV6_HEADER_LEN, IPV6_NEXT_HEADER,
    IPV6_PAYLOAD_LEN, IPV6_SRC, PROTO_TCP, PROTO_UDP, TCP_ACK_FLAG, TCP_CHECKSUM, TCP_CWR,
    TCP_DATA_OFFSET, TCP_FIN, TCP_FLAGS, TCP_HEADER_MIN, TCP_PSH, TCP_URG, TCP_URGENT,
    UDP_CHECKSUM, UDP_HEADER_LEN, UDP_LEN, at, get16, pseudo_header, put16, set_ipv4_checksum,
};
use crate::vnet::{
    GsoType, Header, HeaderRepr, Layer, MAX_ETHERNET_HEADER, MAX_PACKET, MAX_SEGMENTS, Offloads,
    Reader, Writer, complete_checksum, partial_checksum,
};

/// A fuzz target body.
pub type FuzzTarget = fn(&[u8]);

/// Every fuzz target by name, for the corpus replay test.
pub const TARGETS: &[(&str, FuzzTarget)] =
    &[("vnet_reader", vnet_reader), ("vnet_writer", vnet_writer)];

/// The most bytes a packet buffer needs after its offset.
const BIG: usize = MAX_PACKET + MAX_ETHERNET_HEADER;

/// Control byte, then one frame as a device read gives it (virtio-net header and packet).
/// The control byte picks the layer (bit 0), whether checksums are left partial (bit 1),
/// the batch size (bits 2–4), the offset (bits 5–6) and small or large buffers (bit 7).
///
/// Checks: the reader hands out every packet of the frame or an error and then has
/// nothing pending; a packet marked partial is one a receiver can complete (its checksum
/// field is where [`partial_checksum`] looks, so the receive path's guard will not drop
/// it; for a segment, where the kernel's `csum_start` said); a segment cut from a
/// super-segment is what [`segment_matches`] says.
pub fn vnet_reader(data: &[u8]) {
    let Some((&ctl, frame)) = data.split_first() else {
        return;
    };
    let layer = layer(ctl);
    let mut reader = Reader::with_layer(layer).leave_checksums_partial(ctl & 2 != 0);
    let batch = 1 + usize::from((ctl >> 2) & 7);
    let offset = [0, 10, 16, 32][usize::from((ctl >> 5) & 3)];
    let room = if ctl & 0x80 == 0 { 1600 } else { BIG };
    let header = Header::new_checked(frame).ok();
    let csum_start = header.as_ref().map(|h| usize::from(h.csum_start()));
    let gso = header
        .and_then(|h| HeaderRepr::parse(&h).ok())
        .map(|h| h.gso);
    if reader.push_frame(frame).is_err() {
        assert_eq!(reader.pending(), 0, "a refused frame left packets pending");
        return;
    }
    let cut = reader.stats().super_segments > 0;
    let mut bufs = vec![vec![0u8; offset + room]; batch];
    let mut lens = vec![0usize; batch];
    let mut segment = 0;
    // A frame holds at most MAX_PACKET bytes, so at most that many segments.
    for _ in 0..=MAX_PACKET {
        let n = match reader.pop(&mut bufs, offset, &mut lens) {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => continue,
        };
        assert!(n <= batch);
        assert_eq!(reader.partial().len(), n, "one partial mark per packet");
        for i in 0..n {
            let packet = &mut bufs[i][offset..offset + lens[i]];
            if reader.partial()[i] {
                let at = partial_checksum(packet, layer)
                    .expect("a packet left partial has a field the receiver finds");
                if cut {
                    assert_eq!(Some(at.start), csum_start, "left partial elsewhere");
                }
                assert!(complete_checksum(packet, layer));
            }
            if cut {
                let last = i == n - 1 && reader.pending() == 0;
                segment_matches(
                    packet,
                    &frame[VNET_HDR_LEN..],
                    layer,
                    gso,
                    csum_start,
                    segment,
                    last,
                );
                segment += 1;
            }
        }
    }
    assert_eq!(reader.pending(), 0, "the reader never finished the frame");
}

/// Control byte, then packets, each as a flag byte (bit 0: partial checksum), a
/// little-endian `u16` length (cut to what is left) and its bytes. The control byte
/// picks the layer (bit 0), whether the writer trusts checksums (bit 1), the offset
/// (bits 2–3), and whether each packet's length fields and checksums are first made to
/// agree with its bytes (bit 4; [`make_consistent`]), so that the fuzzer's changes of
/// lengths and contents reach the merge rules rather than stop at the checksum test.
///
/// Checks, for a batch the writer accepts: the frames taken whole ([`Writer::next_frame`])
/// and in parts ([`Writer::next_frame_parts`]) are the same bytes; every packet is written
/// exactly once and in order (frames in the order of their first packets): a lone one
/// unchanged, behind the header its partial mark asks for; a merged one, cut again by a
/// [`Reader`], as far as `kept` says, in a frame of at most [`MAX_SEGMENTS`] packets that
/// [`merge_allowed`] says may merge, across no packet that closes the run, behind a
/// header that asks for the first packet's segments back. And for every packet,
/// [`partial_checksum`] points inside it and [`complete_checksum`] changes nothing but
/// that field.
pub fn vnet_writer(data: &[u8]) {
    let Some((&ctl, mut rest)) = data.split_first() else {
        return;
    };
    let layer = layer(ctl);
    let offset = [0, 10, 16, 24][usize::from((ctl >> 2) & 3)];
    let mut packets = Vec::new();
    let mut lens = Vec::new();
    let mut partial = Vec::new();
    while let [flags, a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
        let mut buf = vec![0u8; offset];
        buf.extend_from_slice(&tail[..len]);
        if ctl & 0x10 != 0 {
            make_consistent(&mut buf[offset..], layer, flags & 1 != 0);
        }
        packets.push(buf);
        lens.push(len);
        partial.push(flags & 1 != 0);
        rest = &tail[len..];
        if packets.len() == 256 {
            break;
        }
    }
    for (p, &len) in packets.iter().zip(&lens) {
        completes_only_its_field(&p[offset..offset + len], layer);
    }

    let originals: Vec<Vec<u8>> = packets
        .iter()
        .zip(&lens)
        .map(|(p, &len)| p[offset..offset + len].to_vec())
        .collect();
    let mut whole = Writer::with_layer(Offloads::ALL, layer).trust_checksums(ctl & 2 != 0);
    if whole
        .prepare_partial(&mut packets, offset, &lens, &partial)
        .is_err()
    {
        return;
    }
    let mut in_parts = whole.clone();
    let mut twin = packets.clone();
    let mut frames = Vec::new();
    while let Some(frame) = whole.next_frame(&mut packets, offset) {
        frames.push(frame.to_vec());
    }
    let mut k = 0;
    loop {
        let mut parts = [IoSlice::new(&[]); MAX_SEGMENTS];
        let Some(frame) = in_parts.next_frame_parts(&mut twin, offset, &mut parts) else {
            break;
        };
        assert!(k < frames.len(), "more frames in parts than whole");
        let joined: Vec<u8> = frame.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(joined, frames[k], "frame {k} whole and in parts differ");
        k += 1;
    }
    assert_eq!(k, frames.len(), "fewer frames in parts than whole");

    // Frames come in the order of their first packets, so each frame starts with the
    // lowest-numbered packet that no earlier frame took. A lone frame is that packet, byte
    // for byte, behind the header its partial mark asks for. A merged frame, cut again by
    // a reader, is that packet and later ones, each the first not yet taken after the one
    // before it that the segment matches as far as `kept` says and whose IPv4 id may
    // follow; then `merge_allowed` checks those packets by the merge rules.
    let originals_kept: Vec<Vec<u8>> = originals.iter().map(|o| kept(o, layer)).collect();
    let mut taken = vec![false; originals.len()];
    let most = lens.iter().max().copied().unwrap_or(0);
    for (f, frame) in frames.iter().enumerate() {
        let first = taken
            .iter()
            .position(|t| !t)
            .expect("more frames than packets");
        taken[first] = true;
        let hdr = HeaderRepr::parse(&Header::new_checked(&frame[..]).expect("a whole header"))
            .expect("a header the writer made parses");
        if hdr.gso == GsoType::None {
            assert_eq!(
                &frame[VNET_HDR_LEN..],
                &originals[first][..],
                "frame {f} is not packet {first} alone"
            );
            // Nothing but, for a packet marked partial, NEEDS_CSUM where its field is.
            let field = partial[first]
                .then(|| partial_checksum(&originals[first], layer))
                .flatten()
                .map(|at| (at.start, at.offset));
            let asked = hdr
                .needs_csum
                .then(|| (usize::from(hdr.csum_start), usize::from(hdr.csum_offset)));
            assert_eq!(asked, field, "checksum asked for packet {first} alone");
            let rest = HeaderRepr {
                needs_csum: false,
                csum_start: 0,
                csum_offset: 0,
                ..hdr
            };
            assert_eq!(rest, HeaderRepr::NONE, "header of packet {first} alone");
            continue;
        }
        let mut reader = Reader::with_layer(layer);
        reader
            .push_frame(frame)
            .expect("the reader takes a merged frame");
        // Cut again, every segment is as long as the packet it was.
        let mut bufs = vec![vec![0u8; most]; MAX_SEGMENTS];
        let mut seg_lens = vec![0usize; MAX_SEGMENTS];
        let n = reader
            .pop(&mut bufs, 0, &mut seg_lens)
            .expect("a merged frame splits");
        assert!(
            (2..=MAX_SEGMENTS).contains(&n),
            "{n} packets in a merged frame"
        );
        assert_eq!(
            reader.pending(),
            0,
            "more than MAX_SEGMENTS in a merged frame"
        );
        let mut members = vec![first];
        for (k, (buf, &len)) in bufs.iter().zip(&seg_lens[..n]).enumerate() {
            let segment = kept(&buf[..len], layer);
            if k == 0 {
                assert_eq!(
                    segment, originals_kept[first],
                    "frame {f} does not start with packet {first}"
                );
                continue;
            }
            let after = members[k - 1] + 1;
            let next = (after..originals.len())
                .find(|&i| {
                    !taken[i]
                        && originals_kept[i] == segment
                        && id_may_follow(&originals[first], &originals[i], layer, k)
                })
                .expect("a segment that is no later packet");
            taken[next] = true;
            members.push(next);
        }
        let merged: Vec<(&[u8], bool)> = members
            .iter()
            .map(|&i| (&originals[i][..], partial[i]))
            .collect();
        let run = merge_allowed(&merged, layer, ctl & 2 != 0);
        // Nothing between the first and the last member may close the run: a packet of
        // the flow that did not join it, or one whose flow cannot be told.
        let (lo, hi) = (members[0], members[members.len() - 1]);
        for (i, other) in originals.iter().enumerate().take(hi).skip(lo + 1) {
            let closes =
                tells_no_flow(other, layer) || flow(other, layer).is_some_and(|o| o.key == run.key);
            assert!(
                members.contains(&i) || !closes,
                "frame {f} merged across packet {i}, which closes its run"
            );
        }
        // The header asks for the first packet's segments back, and a checksum.
        let hdr_len = match run.tcp {
            true => run.l4 + usize::from(originals[first][run.l4 + TCP_DATA_OFFSET] >> 4) * 4,
            false => run.l4 + UDP_HEADER_LEN,
        };
        let gso = match (run.tcp, run.key[0]) {
            (true, 4) => GsoType::TcpV4,
            (true, _) => GsoType::TcpV6,
            (false, _) => GsoType::UdpL4,
        };
        let field = if run.tcp { TCP_CHECKSUM } else { UDP_CHECKSUM };
        let want = (
            gso,
            true,
            hdr_len,
            originals[first].len() - hdr_len,
            run.l4,
            field.start,
        );
        let got = (
            hdr.gso,
            hdr.needs_csum,
            usize::from(hdr.hdr_len),
            usize::from(hdr.gso_size),
            usize::from(hdr.csum_start),
            usize::from(hdr.csum_offset),
        );
        assert_eq!(got, want, "header of merged frame {f}");
    }
    assert!(taken.iter().all(|&t| t), "a packet was not written");
}

/// A packet's flow, as far as the merge rules go.
struct Flow {
    /// IP version, protocol, addresses and ports.
    key: Vec<u8>,
    /// Where its IP header starts.
    l3: usize,
    /// Where its TCP or UDP header starts.
    l4: usize,
    tcp: bool,
}

/// The flow of an IPv4 packet that is not a fragment, or of an IPv6 packet with TCP or
/// UDP right after the fixed header, whose TCP or UDP header is whole; else `None`.
fn flow(packet: &[u8], layer: Layer) -> Option<Flow> {
    let l3 = layer.ip_start(packet)?;
    let ip = &packet[l3..];
    let (l4, proto, addrs) = match ip.first()? >> 4 {
        4 if ip.len() >= IPV4_HEADER_MIN && get16(ip, IPV4_FRAG) & IPV4_FRAG_MASK == 0 => (
            usize::from(ip[0] & 15) * 4,
            ip[IPV4_PROTOCOL],
            &ip[IPV4_SRC.start..IPV4_DST.end],
        ),
        6 if ip.len() >= IPV6_HEADER_LEN => (
            IPV6_HEADER_LEN,
            ip[IPV6_NEXT_HEADER],
            &ip[IPV6_SRC.start..IPV6_DST.end],
        ),
        _ => return None,
    };
    let min = match proto {
        PROTO_TCP => TCP_HEADER_MIN,
        PROTO_UDP => UDP_HEADER_LEN,
        _ => return None,
    };
    if l4 < IPV4_HEADER_MIN || ip.len() < l4 + min {
        return None;
    }
    let mut key = vec![ip[0] >> 4, proto];
    key.extend_from_slice(addrs);
    key.extend_from_slice(&ip[l4..l4 + 4]);
    Some(Flow {
        key,
        l3,
        l4: l3 + l4,
        tcp: proto == PROTO_TCP,
    })
}

/// Whether `packet` is IP whose flow cannot be told, which closes every run: an IPv4
/// fragment, or IPv6 with a hop-by-hop, routing, fragment or destination options header.
fn tells_no_flow(packet: &[u8], layer: Layer) -> bool {
    let Some(l3) = layer.ip_start(packet) else {
        return false;
    };
    let ip = &packet[l3..];
    match ip.first().map(|b| b >> 4) {
        Some(4) => ip.len() >= IPV4_HEADER_MIN && get16(ip, IPV4_FRAG) & IPV4_FRAG_MASK != 0,
        Some(6) => ip.len() >= IPV6_HEADER_LEN && matches!(ip[IPV6_NEXT_HEADER], 0 | 43 | 44 | 60),
        _ => false,
    }
}

/// Whether `packet` may be segment `k` of a super-segment that starts with `head` by its
/// IPv4 id: the head's plus `k`, or the head's with DF set (a fixed-id run).
/// `merge_allowed` checks that a run keeps to one of the two.
fn id_may_follow(head: &[u8], packet: &[u8], layer: Layer, k: usize) -> bool {
    let Some(l3) = layer.ip_start(head) else {
        return false;
    };
    if head[l3] >> 4 != 4 {
        return true;
    }
    let (id0, id) = (get16(head, at(l3, IPV4_ID)), get16(packet, at(l3, IPV4_ID)));
    id == id0.wrapping_add(k as u16) || (id == id0 && get16(head, at(l3, IPV4_FRAG)) & IPV4_DF != 0)
}

/// Checks that the packets of one merged frame (each with its partial mark) were allowed
/// to merge, by rules stated here rather than taken from the writer, and returns the
/// first one's flow: every one has a [`flow`] (TCP or UDP right after the IP header, not
/// a fragment); IPv4 with a header of 20 bytes whose checksum holds; IPv4 ids that all go
/// up by one, or all stay the same under DF; TCP flags ACK, with PSH only on the last; UDP
/// sums not 0; and, unless the writer trusts them, transport checksums that hold on every
/// packet not marked partial. (Equal headers, following sequence numbers and equal
/// lengths are what cutting the frame again and comparing showed.)
fn merge_allowed(members: &[(&[u8], bool)], layer: Layer, trusted: bool) -> Flow {
    let flows: Vec<Flow> = members
        .iter()
        .enumerate()
        .map(|(k, (p, _))| {
            flow(p, layer).unwrap_or_else(|| panic!("merged packet {k} has no flow (a fragment?)"))
        })
        .collect();
    let (head, l3) = (members[0].0, flows[0].l3);
    let v4 = head[l3] >> 4 == 4;
    if v4 {
        let ids: Vec<u16> = members
            .iter()
            .map(|(p, _)| get16(p, at(l3, IPV4_ID)))
            .collect();
        let stepping = (0..ids.len()).all(|k| ids[k] == ids[0].wrapping_add(k as u16));
        let fixed =
            ids.iter().all(|&id| id == ids[0]) && get16(head, at(l3, IPV4_FRAG)) & IPV4_DF != 0;
        assert!(stepping || fixed, "merged across IPv4 ids {ids:?}");
    }
    let last = members.len() - 1;
    for (k, (&(packet, partial), f)) in members.iter().zip(&flows).enumerate() {
        if v4 {
            let ip = &packet[l3..];
            assert_eq!(
                f.l4 - l3,
                IPV4_HEADER_MIN,
                "merged packet {k} with IPv4 options"
            );
            assert_eq!(
                checksum::finish(checksum::sum(&ip[..IPV4_HEADER_MIN])),
                0,
                "merged packet {k} with a bad IPv4 header checksum"
            );
        }
        if f.tcp {
            let flags = packet[f.l4 + TCP_FLAGS];
            let psh = if k == last { TCP_PSH } else { 0 };
            assert_eq!(
                flags & !psh,
                TCP_ACK_FLAG,
                "merged segment {k} of {} with TCP flags {flags:#04x}",
                last + 1
            );
        } else {
            assert_ne!(
                get16(packet, at(f.l4, UDP_CHECKSUM)),
                0,
                "merged UDP datagram {k} without a checksum"
            );
        }
        if !trusted && !partial {
            assert!(
                checksums_hold(packet, layer, Some(f.l4)),
                "merged packet {k} with a bad checksum"
            );
        }
    }
    flows
        .into_iter()
        .next()
        .expect("a merged frame has members")
}

/// Whether a segment's checksums hold: the IPv4 header checksum, and the TCP or UDP one
/// over its pseudo-header. True for a packet in which [`partial_checksum`] finds no
/// field, or finds one with a transport header elsewhere than at `l4`.
fn checksums_hold(packet: &[u8], layer: Layer, l4: Option<usize>) -> bool {
    let (Some(l3), Some(at)) = (layer.ip_start(packet), partial_checksum(packet, layer)) else {
        return true;
    };
    if l4 != Some(at.start) {
        return true;
    }
    let ip = &packet[l3..at.end];
    let v6 = ip[0] >> 4 == 6;
    if !v6 && checksum::finish(checksum::sum(&ip[..at.start - l3])) != 0 {
        return false;
    }
    let proto = if v6 {
        ip[IPV6_NEXT_HEADER]
    } else {
        ip[IPV4_PROTOCOL]
    };
    let segment = &packet[at.start..at.end];
    let pseudo = pseudo_header(ip, v6, proto, segment.len());
    checksum::finish(checksum::add(pseudo, checksum::sum(segment))) == 0
}

/// Checks segment number `k` (`last` or not) cut from the super-segment `orig`: its
/// checksums hold (completed, if it was left partial), its IPv4 id is the super-segment's
/// plus `k`, a TCP segment has the super-segment's flags but FIN and PSH (last only) and
/// CWR (first only), and a UDP one a checksum other than 0.
fn segment_matches(
    packet: &[u8],
    orig: &[u8],
    layer: Layer,
    gso: Option<GsoType>,
    l4: Option<usize>,
    k: usize,
    last: bool,
) {
    assert!(
        checksums_hold(packet, layer, l4),
        "segment {k} with a bad checksum"
    );
    let (Some(l3), Some(l4)) = (layer.ip_start(packet), l4) else {
        return;
    };
    if packet[l3] >> 4 == 4 {
        let id0 = get16(orig, at(l3, IPV4_ID));
        assert_eq!(
            get16(packet, at(l3, IPV4_ID)),
            id0.wrapping_add(k as u16),
            "id of {k}"
        );
    }
    match gso {
        Some(GsoType::TcpV4 | GsoType::TcpV6) => {
            let mut want = orig[l4 + TCP_FLAGS];
            if !last {
                want &= !(TCP_FIN | TCP_PSH);
            }
            if k > 0 {
                want &= !TCP_CWR;
            }
            assert_eq!(packet[l4 + TCP_FLAGS], want, "TCP flags of segment {k}");
        }
        Some(GsoType::UdpL4) => {
            assert_ne!(
                get16(packet, at(l4, UDP_CHECKSUM)),
                0,
                "UDP segment {k} without sum"
            );
        }
        _ => {}
    }
}

fn layer(ctl: u8) -> Layer {
    match ctl & 1 {
        0 => Layer::Ip,
        _ => Layer::Ethernet,
    }
}

/// Sets the IPv4 total length and header checksum, or the IPv6 payload length, and the
/// UDP length, from the length of `packet`; then its TCP or UDP checksum, in full or
/// (`partial`) as the pseudo-header sum a partial checksum holds. A packet too short for
/// its headers is left as it is.
fn make_consistent(packet: &mut [u8], layer: Layer, partial: bool) {
    let Some(l3) = layer.ip_start(packet) else {
        return;
    };
    let len = packet.len() - l3;
    let Ok(len16) = u16::try_from(len) else {
        return;
    };
    let ip = &mut packet[l3..];
    let (l4, proto, v6) = match ip.first().map(|b| b >> 4) {
        Some(4) if len >= IPV4_HEADER_MIN => {
            let ihl = usize::from(ip[0] & 15) * 4;
            if !(IPV4_HEADER_MIN..=len).contains(&ihl) {
                return;
            }
            put16(ip, IPV4_TOTAL_LEN, len16);
            set_ipv4_checksum(&mut ip[..ihl]);
            (ihl, ip[IPV4_PROTOCOL], false)
        }
        Some(6) if len >= IPV6_HEADER_LEN => {
            put16(ip, IPV6_PAYLOAD_LEN, len16 - IPV6_HEADER_LEN as u16);
            (IPV6_HEADER_LEN, ip[IPV6_NEXT_HEADER], true)
        }
        _ => return,
    };
    let l4_len = len - l4;
    let field = match proto {
        PROTO_TCP if l4_len >= TCP_HEADER_MIN => at(l4, TCP_CHECKSUM),
        PROTO_UDP if l4_len >= UDP_HEADER_LEN => {
            put16(ip, at(l4, UDP_LEN), l4_len as u16);
            at(l4, UDP_CHECKSUM)
        }
        _ => return,
    };
    let pseudo = pseudo_header(ip, v6, proto, l4_len);
    put16(ip, field, pseudo as u16);
    if !partial {
        complete_checksum(packet, layer);
    }
}

/// What merging a packet and cutting it again must keep of it: everything but the IPv4
/// id and header checksum (segments cut again get ids that go up), the TCP or UDP checksum
/// (a merged frame gets a fresh one), and the urgent pointer of a TCP segment without URG
/// (which no one reads, and merging does not compare).
fn kept(packet: &[u8], layer: Layer) -> Vec<u8> {
    let mut p = packet.to_vec();
    let Some(l3) = layer.ip_start(&p) else {
        return p;
    };
    let Some(&first) = p.get(l3) else {
        return p;
    };
    let ip = &mut p[l3..];
    let (l4, proto) = match first >> 4 {
        4 if ip.len() >= IPV4_HEADER_MIN => {
            ip[IPV4_ID].fill(0);
            ip[IPV4_CHECKSUM].fill(0);
            (usize::from(first & 15) * 4, ip[IPV4_PROTOCOL])
        }
        6 if ip.len() >= IPV6_HEADER_LEN => (IPV6_HEADER_LEN, ip[IPV6_NEXT_HEADER]),
        _ => return p,
    };
    match proto {
        PROTO_TCP if ip.len() >= l4 + TCP_HEADER_MIN => {
            ip[at(l4, TCP_CHECKSUM)].fill(0);
            if ip[l4 + TCP_FLAGS] & TCP_URG == 0 {
                ip[at(l4, TCP_URGENT)].fill(0);
            }
        }
        PROTO_UDP if ip.len() >= l4 + UDP_HEADER_LEN => ip[at(l4, UDP_CHECKSUM)].fill(0),
        _ => {}
    }
    p
}

/// [`partial_checksum`] points inside `packet`; completing it changes only that field.
fn completes_only_its_field(packet: &[u8], layer: Layer) {
    let mut done = packet.to_vec();
    let at = partial_checksum(packet, layer);
    assert_eq!(complete_checksum(&mut done, layer), at.is_some());
    let Some(at) = at else {
        assert_eq!(done, packet, "completed without a field");
        return;
    };
    let field = at.start + at.offset;
    assert!(field + 2 <= packet.len());
    done[field..field + 2].copy_from_slice(&packet[field..field + 2]);
    assert_eq!(done, packet, "completing changed more than the field");
}
