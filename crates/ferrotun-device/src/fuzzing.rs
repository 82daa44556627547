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
use crate::vnet::{
    GsoType, Header, HeaderRepr, Layer, MAX_ETHERNET_HEADER, MAX_PACKET, MAX_SEGMENTS, Offloads,
    Reader, Writer, complete_checksum, partial_checksum,
};
use crate::vnet::{checksum, ethernet};

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
/// nothing pending; no packet overruns its buffer; a packet marked partial is one a
/// receiver can complete (its checksum field is where [`partial_checksum`] looks, so the
/// receive path's guard will not drop it); a segment cut from a super-segment and not
/// left partial has checksums that hold.
pub fn vnet_reader(data: &[u8]) {
    let Some((&ctl, frame)) = data.split_first() else {
        return;
    };
    let layer = layer(ctl);
    let mut reader = Reader::with_layer(layer).leave_checksums_partial(ctl & 2 != 0);
    let batch = 1 + usize::from((ctl >> 2) & 7);
    let offset = [0, 10, 16, 32][usize::from((ctl >> 5) & 3)];
    let room = if ctl & 0x80 == 0 { 1600 } else { BIG };
    let csum_start = Header::new_checked(frame)
        .ok()
        .map(|h| usize::from(h.csum_start()));
    if reader.push_frame(frame).is_err() {
        assert_eq!(reader.pending(), 0, "a refused frame left packets pending");
        return;
    }
    let mut bufs = vec![vec![0u8; offset + room]; batch];
    let mut lens = vec![0usize; batch];
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
            assert!(lens[i] <= room, "packet of {} bytes in {room}", lens[i]);
            let packet = &mut bufs[i][offset..offset + lens[i]];
            if reader.partial()[i] {
                let at = partial_checksum(packet, layer)
                    .expect("a packet left partial has a field the receiver finds");
                assert!(at.start + at.offset + 2 <= packet.len());
                assert!(complete_checksum(packet, layer));
            }
            // Segments cut from a super-segment get their checksums here, whatever the
            // kernel's header held (a single packet's partial sum is taken as it is).
            // Checked where the transport header is where a receiver looks for it: the
            // reader takes csum_start's word for IPv6 extension headers before it.
            if reader.stats().super_segments > 0 && !reader.partial()[i] {
                assert!(
                    checksums_hold(packet, layer, csum_start),
                    "a segment with a bad checksum"
                );
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
/// exactly once: a lone one unchanged, a merged one (cut again by a [`Reader`]) with its
/// length and payload; merged frames hold at most [`MAX_SEGMENTS`] packets. And for every packet, [`partial_checksum`]
/// points inside it and [`complete_checksum`] changes nothing but that field.
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

    // Each packet that comes out must be one that went in, taken once: a lone one byte
    // for byte, a segment of a merged frame as far as `kept` says (matched after the
    // lone ones).
    let mut lone = Vec::new();
    let mut segments = Vec::new();
    for frame in &frames {
        let hdr = HeaderRepr::parse(&Header::new_checked(&frame[..]).expect("a whole header"))
            .expect("a header the writer made parses");
        if hdr.gso == GsoType::None {
            lone.push(frame[VNET_HDR_LEN..].to_vec());
            continue;
        }
        let mut reader = Reader::with_layer(layer);
        reader
            .push_frame(frame)
            .expect("the reader takes a merged frame");
        // Cut again, every segment is as long as the packet it was.
        let most = lens.iter().max().copied().unwrap_or(0);
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
        for (mut buf, &len) in bufs.into_iter().zip(&seg_lens[..n]) {
            buf.truncate(len);
            segments.push(kept(&buf, layer));
        }
    }
    let mut unmatched: Vec<Option<&Vec<u8>>> = originals.iter().map(Some).collect();
    for packet in &lone {
        let found = unmatched.iter_mut().find(|o| *o == &Some(packet));
        *found.expect("a lone packet out that did not go in, or went in fewer times") = None;
    }
    for packet in &segments {
        let found = unmatched
            .iter_mut()
            .find(|o| o.is_some_and(|o| kept(o, layer) == *packet));
        *found.expect("a segment out that did not go in, or went in fewer times") = None;
    }
    assert!(
        unmatched.iter().all(Option::is_none),
        "a packet was not written"
    );
}

/// Where the IP packet starts in `packet`: 0 on TUN, behind the Ethernet header on TAP.
fn ip_start(packet: &[u8], layer: Layer) -> Option<usize> {
    match layer {
        Layer::Ip => Some(0),
        Layer::Ethernet => ethernet::parse(packet).ok().map(|link| link.len),
    }
}

/// Whether a segment's checksums hold: the IPv4 header checksum, and the TCP or UDP one
/// over its pseudo-header. True for a packet in which [`partial_checksum`] finds no
/// field, or finds one with a transport header elsewhere than at `l4`.
fn checksums_hold(packet: &[u8], layer: Layer, l4: Option<usize>) -> bool {
    let (Some(l3), Some(at)) = (ip_start(packet, layer), partial_checksum(packet, layer)) else {
        return true;
    };
    if l4 != Some(at.start) {
        return true;
    }
    let ip = &packet[l3..at.end];
    let (proto, src, dst) = if ip[0] >> 4 == 4 {
        if checksum::finish(checksum::sum(&ip[..at.start - l3])) != 0 {
            return false;
        }
        (ip[9], &ip[12..16], &ip[16..20])
    } else {
        (ip[6], &ip[8..24], &ip[24..40])
    };
    let l4 = &packet[at.start..at.end];
    let pseudo = checksum::pseudo_header(src, dst, proto, l4.len());
    checksum::finish(checksum::add(pseudo, checksum::sum(l4))) == 0
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
    let Some(l3) = ip_start(packet, layer) else {
        return;
    };
    let len = packet.len() - l3;
    let Ok(len16) = u16::try_from(len) else {
        return;
    };
    let ip = &mut packet[l3..];
    let (l4, proto, src, dst) = match ip.first().map(|b| b >> 4) {
        Some(4) if len >= 20 => {
            let ihl = usize::from(ip[0] & 15) * 4;
            if !(20..=len).contains(&ihl) {
                return;
            }
            ip[2..4].copy_from_slice(&len16.to_be_bytes());
            ip[10..12].fill(0);
            let c = checksum::finish(checksum::sum(&ip[..ihl]));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            (ihl, ip[9], 12..16, 16..20)
        }
        Some(6) if len >= 40 => {
            ip[4..6].copy_from_slice(&(len16 - 40).to_be_bytes());
            (40, ip[6], 8..24, 24..40)
        }
        _ => return,
    };
    let l4_len = len - l4;
    let field = match proto {
        6 if l4_len >= 20 => l4 + 16,
        17 if l4_len >= 8 => {
            ip[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l4 + 6
        }
        _ => return,
    };
    let pseudo = checksum::pseudo_header(&ip[src], &ip[dst], proto, l4_len);
    ip[field..field + 2].copy_from_slice(&(pseudo as u16).to_be_bytes());
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
    let Some(l3) = ip_start(&p, layer) else {
        return p;
    };
    let Some(&first) = p.get(l3) else {
        return p;
    };
    let (l4, proto) = match first >> 4 {
        4 if p.len() >= l3 + 20 => {
            p[l3 + 4..l3 + 6].fill(0);
            p[l3 + 10..l3 + 12].fill(0);
            (l3 + usize::from(first & 15) * 4, p[l3 + 9])
        }
        6 if p.len() >= l3 + 40 => (l3 + 40, p[l3 + 6]),
        _ => return p,
    };
    match proto {
        6 if p.len() >= l4 + 20 => {
            p[l4 + 16..l4 + 18].fill(0);
            if p[l4 + 13] & 0x20 == 0 {
                p[l4 + 18..l4 + 20].fill(0);
            }
        }
        17 if p.len() >= l4 + 8 => p[l4 + 6..l4 + 8].fill(0),
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
