//! Writing: a batch of plain IP packets (TUN) or Ethernet frames (TAP) becomes as few
//! device writes as the kernel's GRO rules allow.
//!
//! A TCP segment joins the super-segment its flow has open when everything the kernel
//! compares before merging is equal (`tcp_gro_receive()` in `net/ipv4/tcp_offload.c`,
//! `inet_gro_receive()` in `net/ipv4/af_inet.c`, `ipv6_gro_receive()` in
//! `net/ipv6/ip6_offload.c`, and the cases of `tools/testing/selftests/net/gro.c`):
//! - same addresses and ports, acknowledgment number, TCP options (byte for byte), IPv4
//!   TOS, TTL and DF bit, or IPv6 version/traffic class/flow label word and hop limit;
//! - IPv4 ids that go up by one per segment, or (with DF) stay the same
//!   (`inet_gro_flush()` in `include/net/gro.h`), so that cutting the super-segment again
//!   gives back the very packets that were merged (a fixed-id run comes back with
//!   incrementing ids: the virtio-net header cannot carry the kernel's `FIXEDID` flag,
//!   and the id of a DF packet means nothing, RFC 6864);
//! - the sequence number continues the super-segment exactly;
//! - flags are ACK, or ACK|PSH; a segment with PSH ends the super-segment (PSH is only
//!   ever on the last segment), anything with SYN, FIN, RST, URG, ECE or CWR is written
//!   alone;
//! - every payload is as long as the first one's (`gso_size`), except the last, which
//!   may be shorter and ends the super-segment;
//! - no IPv4 options and no fragments, no IPv6 extension headers;
//! - the checksums are valid (the merged packet gets a partial checksum that the kernel
//!   treats as verified, so a corrupted segment would otherwise be accepted as good),
//!   unless the writer trusts them or the caller gave the packet as partial (it has no
//!   checksum to verify yet);
//! - the merged packet stays within [`MAX_PACKET`] bytes and [`MAX_SEGMENTS`] segments;
//! - on TAP, the link-layer headers are equal byte for byte: destination and source MAC,
//!   every VLAN tag (TPID, priority, VLAN id) and the EtherType (`eth_gro_receive()` in
//!   `net/ethernet/eth.c` compares the Ethernet header, `vlan_gro_receive()` in
//!   `net/8021q/vlan_core.c` the tag). The merged frame carries that header once, and its
//!   virtio-net `csum_start` and `hdr_len` count it.
//!
//! UDP datagrams of one flow merge the same way when USO is on (`udp_gro_receive()` in
//! `net/ipv4/udp_offload.c`): equal sizes except a shorter last one, valid non-zero
//! checksums.
//!
//! Order: the super-segment is written where its first packet was. A packet of a flow
//! that does not join the flow's open super-segment closes it, so later packets of that
//! flow cannot overtake it; packets of different flows may be reordered among each other
//! (as the kernel's GRO does). A packet whose flow cannot be told (IP fragments, IPv6
//! extension headers) closes every open super-segment. On TAP a flow is its IP addresses
//! and ports, whatever the link-layer header: a segment of the flow behind another MAC
//! or VLAN tag does not join, and closes the flow's super-segment like any other that
//! does not join. Frames that are not IPv4 or IPv6 (ARP, other EtherTypes, more than
//! [`MAX_VLAN_TAGS`](crate::vnet::MAX_VLAN_TAGS) tags, an EtherType that disagrees with
//! the IP version) are written alone and close nothing.

use std::io::{self, IoSlice};

use crate::asyncio::AsyncQueue;
use crate::tun::{Queue, VNET_HDR_LEN};
use crate::vnet::header::{GsoType, HeaderRepr};
use crate::vnet::packet::*;
use crate::vnet::{
    Error, Layer, MAX_PACKET, MAX_SEGMENTS, Offloads, check_layer, checksum, partial_checksum,
};

/// Open super-segments tracked at once; when more flows interleave in one batch, the
/// oldest is closed. Batches rarely carry more than a handful of bulk flows.
const MAX_OPEN: usize = 16;

const NONE: u32 = u32::MAX;

/// Counters of a [`Writer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// IP packets (TUN) or frames (TAP) handed in.
    pub packets: u64,
    /// Frames produced (one `write` or `writev` system call each).
    pub frames: u64,
    /// Frames that were merged super-segments.
    pub merged_frames: u64,
    /// Packets that went into merged super-segments.
    pub merged_packets: u64,
    /// Segments that could have merged but were written alone because a checksum was
    /// wrong (the kernel drops them).
    pub bad_checksums: u64,
    /// Frames the device refused.
    pub write_errors: u64,
}

/// Writes batches of IP packets into a TUN device, or of Ethernet frames into a TAP
/// device, with a virtio-net header, merging consecutive TCP (and UDP) segments of a
/// flow into super-segments.
///
/// [`Writer::new`] writes to a TUN device ([`Layer::Ip`]); [`Writer::with_layer`] with
/// [`Layer::Ethernet`] to a TAP device, where only frames with equal link-layer headers
/// merge.
///
/// One writer belongs to the task that writes a queue. It owns a 64 KiB scratch area in
/// which [`next_frame`](Self::next_frame) builds merged packets, and small tables reused
/// from batch to batch.
///
/// A packet that is written alone is not copied: its virtio-net header goes into the 10
/// bytes before `offset` in the caller's buffer (when `offset` is at least
/// [`VNET_HDR_LEN`]; with less headroom it is copied to the scratch area first).
/// `next_frame` never changes the packet bytes. [`send_batch`](Self::send_batch) does
/// not copy merged packets either: it writes each as parts
/// ([`next_frame_parts`](Self::next_frame_parts)), after rewriting the headers of its
/// first packet in place.
#[derive(Debug, Clone)]
pub struct Writer {
    offloads: Offloads,
    layer: Layer,
    scratch: Box<[u8]>,
    members: Vec<Member>,
    items: Vec<Item>,
    open: Vec<Open>,
    cursor: usize,
    stats: WriterStats,
    trusted: bool,
}

/// A packet of the batch: its length, the next packet of its super-segment, and whether
/// its checksum is partial.
#[derive(Debug, Clone, Copy)]
struct Member {
    len: u32,
    next: u32,
    partial: bool,
}

/// One frame to write: a packet alone, or the packets of a super-segment.
#[derive(Debug, Clone, Copy)]
struct Item {
    first: u32,
    last: u32,
    count: u32,
    merge: Option<Merge>,
}

#[derive(Debug, Clone, Copy)]
struct Merge {
    tcp: bool,
    v6: bool,
    /// Offset of the IP header: the link-layer header's length (0 on TUN).
    l3: usize,
    /// Offset of the transport header.
    l4: usize,
    /// Link-layer, IP and transport header.
    hdr_len: usize,
    /// Payload of the first segment; every other is as long, the last may be shorter.
    gso_size: usize,
    /// Length of the merged packet (link-layer header included) so far.
    total: usize,
    /// The sequence number the next segment must have.
    next_seq: u32,
    /// The last segment had PSH.
    psh: bool,
    /// Nothing more may join.
    closed: bool,
    /// The first packet's checksum has been verified.
    head_checked: bool,
    /// IPv4 ids: unknown until the second segment, then incrementing (`false`) or fixed
    /// (`true`, only with DF).
    fixed_id: Option<bool>,
}

/// A flow's super-segment that may still grow.
#[derive(Debug, Clone, Copy)]
struct Open {
    key: FlowKey,
    item: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    addrs: [u8; 32],
    ports: [u8; 4],
    protocol: u8,
    v6: bool,
}

/// What a packet is to the coalescer.
enum Class {
    /// Not TCP or UDP, or not parseable: written alone, affects nothing.
    Other,
    /// A packet whose flow cannot be known: closes every open super-segment.
    Barrier,
    /// A packet of a known flow that cannot merge: closes that flow's super-segment.
    Alone(FlowKey),
    /// May merge.
    Candidate(Candidate),
}

struct Candidate {
    key: FlowKey,
    tcp: bool,
    v6: bool,
    l3: usize,
    l4: usize,
    hdr_len: usize,
    payload: usize,
    seq: u32,
    psh: bool,
}

impl Writer {
    /// A writer for a TUN device ([`Layer::Ip`]) that merges what `offloads` allows: TCP
    /// with `tso`, UDP with `uso` ([`Offloads::NONE`]: every packet alone, still with its
    /// empty header).
    pub fn new(offloads: Offloads) -> Writer {
        Writer::with_layer(offloads, Layer::Ip)
    }

    /// A writer for frames of `layer` ([`Layer::Ip`] for a TUN device,
    /// [`Layer::Ethernet`] for a TAP device) that merges what `offloads` allows.
    pub fn with_layer(offloads: Offloads, layer: Layer) -> Writer {
        Writer {
            offloads,
            layer,
            scratch: vec![0u8; VNET_HDR_LEN + layer.max_header_len() + MAX_PACKET]
                .into_boxed_slice(),
            members: Vec::new(),
            items: Vec::new(),
            open: Vec::new(),
            cursor: 0,
            stats: WriterStats::default(),
            trusted: false,
        }
    }

    /// Trusts the packets' integrity (they were authenticated on the way, as a tunnel's
    /// decrypted packets are): segments are merged without verifying their checksums
    /// first, and the merged frame asks the kernel for a fresh one (`NEEDS_CSUM`), as for
    /// any merged frame. Kernel WireGuard trusts decrypted packets the same way (it marks
    /// them `CHECKSUM_UNNECESSARY`). Packets written alone are untouched, and the kernel
    /// verifies them as usual (a TUN write ignores `DATA_VALID`), but for those given as
    /// partial ([`prepare_partial`](Self::prepare_partial)), whose checksum it completes.
    pub fn trust_checksums(mut self, on: bool) -> Writer {
        self.trusted = on;
        self
    }

    /// The offloads this writer produces frames for.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// The kind of packet this writer takes.
    pub fn layer(&self) -> Layer {
        self.layer
    }

    /// The counters so far.
    pub fn stats(&self) -> WriterStats {
        self.stats
    }

    /// Writes the packets `packets[i][offset..offset + lens[i]]` into the device, merged
    /// where the rules allow, waiting whenever the kernel pushes back. The headers of a
    /// merged frame's first packet are left as the merged packet's. Every frame is
    /// attempted; the first write error is returned after the rest were written (a
    /// device that went away fails them all).
    ///
    /// Not cancel-safe: dropping the future while the kernel pushes back loses the frames
    /// not yet written. (A TUN or TAP device takes writes without blocking, so in practice
    /// each `send` completes at once.)
    ///
    /// A queue of the other kind of device is refused with [`Error::LayerMismatch`]
    /// before anything is written.
    pub async fn send_batch<B: AsMut<[u8]>>(
        &mut self,
        queue: &AsyncQueue,
        packets: &mut [B],
        offset: usize,
        lens: &[usize],
    ) -> io::Result<()> {
        self.send_batch_partial(queue, packets, offset, lens, &[])
            .await
    }

    /// [`send_batch`](Self::send_batch) for packets of which those with `partial[i]` set
    /// have a partial checksum, as [`prepare_partial`](Self::prepare_partial) takes them.
    pub async fn send_batch_partial<B: AsMut<[u8]>>(
        &mut self,
        queue: &AsyncQueue,
        packets: &mut [B],
        offset: usize,
        lens: &[usize],
        partial: &[bool],
    ) -> io::Result<()> {
        check_layer(self.layer, queue.get_ref())?;
        self.prepare_partial(packets, offset, lens, partial)?;
        let mut first_err = None;
        let mut errors = 0;
        loop {
            let mut parts = [IoSlice::new(&[]); MAX_SEGMENTS];
            let Some(frame) = self.next_frame_parts(packets, offset, &mut parts) else {
                break;
            };
            if let Err(e) = queue.send_vectored(frame).await {
                errors += 1;
                first_err.get_or_insert(e);
            }
        }
        self.finish_batch(errors, first_err)
    }

    /// [`send_batch`](Self::send_batch) on a synchronous queue.
    pub fn send_batch_sync<B: AsMut<[u8]>>(
        &mut self,
        queue: &Queue,
        packets: &mut [B],
        offset: usize,
        lens: &[usize],
    ) -> io::Result<()> {
        check_layer(self.layer, queue)?;
        self.prepare(packets, offset, lens)?;
        let mut first_err = None;
        let mut errors = 0;
        loop {
            let mut parts = [IoSlice::new(&[]); MAX_SEGMENTS];
            let Some(frame) = self.next_frame_parts(packets, offset, &mut parts) else {
                break;
            };
            if let Err(e) = queue.send_vectored(frame) {
                errors += 1;
                first_err.get_or_insert(e);
            }
        }
        self.finish_batch(errors, first_err)
    }

    fn finish_batch(&mut self, errors: u64, first_err: Option<io::Error>) -> io::Result<()> {
        self.stats.write_errors += errors;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Plans the frames for a batch: decides which packets merge. The sans-I/O half of
    /// [`send_batch`](Self::send_batch); take the frames with
    /// [`next_frame`](Self::next_frame) and write each into the device. Fails with
    /// [`Error::BufferTooSmall`] if a buffer is shorter than `offset + lens[i]`, or a
    /// length exceeds [`MAX_PACKET`] (plus, on TAP,
    /// [`MAX_ETHERNET_HEADER`](crate::vnet::MAX_ETHERNET_HEADER)), before anything is
    /// planned.
    pub fn prepare<B: AsMut<[u8]>>(
        &mut self,
        packets: &mut [B],
        offset: usize,
        lens: &[usize],
    ) -> Result<(), Error> {
        self.prepare_partial(packets, offset, lens, &[])
    }

    /// [`prepare`](Self::prepare) for packets of which those with `partial[i]` set have a
    /// partial checksum (see [`crate::vnet::partial`]; a missing entry means false). Such
    /// a packet merges without its checksum being verified, as merged packets get a
    /// partial checksum anyway; written alone, it goes with a virtio-net header that
    /// asks the kernel to complete its checksum (`NEEDS_CSUM` at the place
    /// [`partial_checksum`] finds). A packet marked partial whose checksum field cannot
    /// be found that way is written as it is, and the kernel drops it.
    pub fn prepare_partial<B: AsMut<[u8]>>(
        &mut self,
        packets: &mut [B],
        offset: usize,
        lens: &[usize],
        partial: &[bool],
    ) -> Result<(), Error> {
        self.members.clear();
        self.items.clear();
        self.open.clear();
        self.cursor = 0;
        let n = packets.len().min(lens.len());
        let max = self.layer.max_header_len() + MAX_PACKET;
        for (i, (p, &len)) in packets.iter_mut().zip(lens).enumerate() {
            let have = p.as_mut().len();
            if len > max || have < offset + len {
                return Err(Error::BufferTooSmall {
                    index: i,
                    need: offset + len,
                    have: have.min(offset + max),
                });
            }
        }
        if u32::try_from(n).is_err() {
            return Err(Error::BufferTooSmall {
                index: 0,
                need: 0,
                have: 0,
            });
        }
        for i in 0..n {
            let len = lens[i];
            self.members.push(Member {
                len: len as u32,
                next: NONE,
                partial: partial.get(i).copied().unwrap_or(false),
            });
            let class = classify(
                &packets[i].as_mut()[offset..offset + len],
                self.offloads,
                self.layer,
            );
            match class {
                Class::Other => self.push_alone(i),
                Class::Barrier => {
                    self.close_all();
                    self.push_alone(i);
                }
                Class::Alone(key) => {
                    self.close_flow(&key);
                    self.push_alone(i);
                }
                Class::Candidate(c) => self.add_candidate(packets, offset, i, c),
            }
        }
        self.stats.packets += n as u64;
        Ok(())
    }

    fn push_alone(&mut self, i: usize) {
        self.items.push(Item {
            first: i as u32,
            last: i as u32,
            count: 1,
            merge: None,
        });
    }

    fn close_all(&mut self) {
        for o in self.open.drain(..) {
            if let Some(m) = self.items[o.item].merge.as_mut() {
                m.closed = true;
            }
        }
    }

    fn close_flow(&mut self, key: &FlowKey) {
        if let Some(pos) = self.open.iter().position(|o| o.key == *key) {
            let o = self.open.remove(pos);
            if let Some(m) = self.items[o.item].merge.as_mut() {
                m.closed = true;
            }
        }
    }

    fn add_candidate<B: AsMut<[u8]>>(
        &mut self,
        packets: &mut [B],
        offset: usize,
        i: usize,
        c: Candidate,
    ) {
        if let Some(pos) = self.open.iter().position(|o| o.key == c.key) {
            let item_index = self.open[pos].item;
            match self.try_append(packets, offset, item_index, i, &c) {
                Append::Done { closed } => {
                    if closed {
                        self.open.remove(pos);
                    }
                    return;
                }
                Append::No => {
                    self.open.remove(pos);
                }
                Append::BadCandidate => {
                    self.open.remove(pos);
                    if let Some(m) = self.items[item_index].merge.as_mut() {
                        m.closed = true;
                    }
                    self.push_alone(i);
                    return;
                }
            }
        }
        // Start a super-segment with this packet.
        let closed = c.psh;
        self.items.push(Item {
            first: i as u32,
            last: i as u32,
            count: 1,
            merge: Some(Merge {
                tcp: c.tcp,
                v6: c.v6,
                l3: c.l3,
                l4: c.l4,
                hdr_len: c.hdr_len,
                gso_size: c.payload,
                total: c.hdr_len + c.payload,
                next_seq: c.seq.wrapping_add(c.payload as u32),
                psh: c.psh,
                closed,
                head_checked: false,
                fixed_id: None,
            }),
        });
        if !closed {
            if self.open.len() == MAX_OPEN {
                let o = self.open.remove(0);
                if let Some(m) = self.items[o.item].merge.as_mut() {
                    m.closed = true;
                }
            }
            self.open.push(Open {
                key: c.key,
                item: self.items.len() - 1,
            });
        }
    }

    fn try_append<B: AsMut<[u8]>>(
        &mut self,
        packets: &mut [B],
        offset: usize,
        item_index: usize,
        i: usize,
        c: &Candidate,
    ) -> Append {
        let item = self.items[item_index];
        let Some(mut m) = item.merge else {
            return Append::No;
        };
        let mut fixed_id = m.fixed_id;
        let first = item.first as usize;
        let head_len = self.members[first].len as usize;
        if m.closed
            || m.tcp != c.tcp
            || m.l3 != c.l3
            || m.l4 != c.l4
            || m.hdr_len != c.hdr_len
            || c.payload > m.gso_size
            || m.total + c.payload > m.l3 + MAX_PACKET
            || item.count as usize >= MAX_SEGMENTS
            || (m.tcp && c.seq != m.next_seq)
        {
            return Append::No;
        }
        {
            let (head, pkt) = two(packets, first, i);
            let head = &head.as_mut()[offset..offset + head_len];
            let pkt = &pkt.as_mut()[offset..offset + c.payload + c.hdr_len];
            if !headers_match(head, pkt, &m) {
                return Append::No;
            }
            if !m.v6 {
                let head_id = get16(head, at(m.l3, IPV4_ID));
                let id = get16(pkt, at(m.l3, IPV4_ID));
                let incrementing = id == head_id.wrapping_add(item.count as u16);
                let fixed = id == head_id && get16(head, at(m.l3, IPV4_FRAG)) & IPV4_DF != 0;
                fixed_id = match m.fixed_id {
                    None if incrementing => Some(false),
                    None if fixed => Some(true),
                    Some(false) if incrementing => Some(false),
                    Some(true) if fixed => Some(true),
                    _ => return Append::No,
                };
            }
            // A partial checksum has nothing to verify: the merged packet's is computed
            // afresh anyway.
            if !m.head_checked && !self.trusted && !self.members[first].partial {
                if !transport_checksum_ok(head, &m) {
                    self.stats.bad_checksums += 1;
                    // The head goes out alone, and the kernel drops it.
                    self.items[item_index].merge = None;
                    return Append::No;
                }
                m.head_checked = true;
            }
            if !self.trusted && !self.members[i].partial && !transport_checksum_ok(pkt, &m) {
                self.stats.bad_checksums += 1;
                self.items[item_index].merge = Some(m);
                return Append::BadCandidate;
            }
        }
        self.members[item.last as usize].next = i as u32;
        m.fixed_id = fixed_id;
        m.total += c.payload;
        m.next_seq = m.next_seq.wrapping_add(c.payload as u32);
        m.psh = c.psh;
        m.closed = c.psh || c.payload < m.gso_size;
        let closed = m.closed;
        self.items[item_index] = Item {
            first: item.first,
            last: i as u32,
            count: item.count + 1,
            merge: Some(m),
        };
        Append::Done { closed }
    }

    /// The next frame of the prepared batch (virtio-net header and packet or Ethernet
    /// frame), or `None` when all are taken. Write each into the device as it is.
    pub fn next_frame<'a, B: AsMut<[u8]>>(
        &'a mut self,
        packets: &'a mut [B],
        offset: usize,
    ) -> Option<&'a [u8]> {
        let item = *self.items.get(self.cursor)?;
        self.cursor += 1;
        self.stats.frames += 1;
        let first = item.first as usize;
        let first_len = self.members[first].len as usize;
        let merge = match item.merge {
            Some(m) if item.count > 1 => m,
            _ => {
                let buf = packets[first].as_mut();
                let packet = &buf[offset..offset + first_len];
                let header = match self.members[first].partial {
                    true => alone_partial(packet, self.layer),
                    false => HeaderRepr::NONE,
                };
                if offset >= VNET_HDR_LEN {
                    let frame = &mut buf[offset - VNET_HDR_LEN..offset + first_len];
                    header.emit_into(frame);
                    return Some(frame);
                }
                let frame = &mut self.scratch[..VNET_HDR_LEN + first_len];
                header.emit_into(frame);
                frame[VNET_HDR_LEN..].copy_from_slice(&buf[offset..offset + first_len]);
                return Some(frame);
            }
        };
        self.stats.merged_frames += 1;
        self.stats.merged_packets += u64::from(item.count);

        let hdr_len = merge.hdr_len;
        let scratch = &mut self.scratch[..];
        let head = &packets[first].as_mut()[offset..offset + first_len];
        scratch[VNET_HDR_LEN..VNET_HDR_LEN + hdr_len].copy_from_slice(&head[..hdr_len]);
        let mut pos = VNET_HDR_LEN + hdr_len;
        let mut m = item.first;
        while m != NONE {
            let member = self.members[m as usize];
            let payload =
                &packets[m as usize].as_mut()[offset + hdr_len..offset + member.len as usize];
            scratch[pos..pos + payload.len()].copy_from_slice(payload);
            pos += payload.len();
            m = member.next;
        }
        debug_assert_eq!(pos - VNET_HDR_LEN, merge.total);
        finish_merged(&merge, &mut scratch[..VNET_HDR_LEN + hdr_len]);
        Some(&self.scratch[..pos])
    }

    /// The next frame of the prepared batch, as [`next_frame`](Self::next_frame) gives
    /// it, but as the parts of one gather write (`writev`): a merged super-segment is not
    /// copied together. Its first packet's headers are rewritten in place for the merged
    /// packet, with the virtio-net header in the [`VNET_HDR_LEN`] bytes before `offset`;
    /// the first part runs from there to the end of the first packet, and each further
    /// part is another packet's payload. Merged frames are copied as by `next_frame` only
    /// when `offset` leaves no room for the header. At most [`MAX_SEGMENTS`] parts.
    pub fn next_frame_parts<'a, 'p, B: AsMut<[u8]>>(
        &'a mut self,
        packets: &'a mut [B],
        offset: usize,
        parts: &'p mut [IoSlice<'a>; MAX_SEGMENTS],
    ) -> Option<&'p [IoSlice<'a>]> {
        let item = *self.items.get(self.cursor)?;
        let merge = match item.merge {
            Some(m) if item.count > 1 && offset >= VNET_HDR_LEN => m,
            _ => {
                parts[0] = IoSlice::new(self.next_frame(packets, offset)?);
                return Some(&parts[..1]);
            }
        };
        self.cursor += 1;
        self.stats.frames += 1;
        self.stats.merged_frames += 1;
        self.stats.merged_packets += u64::from(item.count);
        let hdr_len = merge.hdr_len;
        // Members are chained in the order of their indices, so one pass over the
        // buffers takes them all, each borrowed for as long as the parts live.
        let mut n = 0;
        let mut next = item.first;
        for (i, buf) in packets.iter_mut().enumerate() {
            if i as u32 != next {
                continue;
            }
            let member = self.members[i];
            let buf: &'a mut [u8] = buf.as_mut();
            let end = offset + member.len as usize;
            let part = if n == 0 {
                let frame = &mut buf[offset - VNET_HDR_LEN..end];
                finish_merged(&merge, &mut frame[..VNET_HDR_LEN + hdr_len]);
                &*frame
            } else {
                &buf[offset + hdr_len..end]
            };
            parts[n] = IoSlice::new(part);
            n += 1;
            next = member.next;
            if next == NONE {
                break;
            }
        }
        debug_assert_eq!(next, NONE, "every member taken");
        debug_assert_eq!(
            parts[..n].iter().map(|p| p.len()).sum::<usize>(),
            VNET_HDR_LEN + merge.total
        );
        Some(&parts[..n])
    }
}

/// The virtio-net header of a packet with a partial checksum written alone: the kernel
/// is to complete the checksum where [`partial_checksum`] finds it; nothing if it cannot
/// be found (the packet goes as it is, and the kernel drops it).
fn alone_partial(packet: &[u8], layer: Layer) -> HeaderRepr {
    match partial_checksum(packet, layer) {
        Some(p) => HeaderRepr {
            needs_csum: true,
            csum_start: p.start as u16,
            csum_offset: p.offset as u16,
            ..HeaderRepr::NONE
        },
        None => HeaderRepr::NONE,
    }
}

/// Turns the first packet's headers into the merged packet's, in `frame`: the virtio-net
/// header (written here) and the packet's headers after it (`VNET_HDR_LEN + hdr_len`
/// bytes). Sets the IP length (and the IPv4 header checksum), PSH if the last segment had
/// it, and the transport checksum field to the pseudo-header sum, for the kernel to
/// complete.
fn finish_merged(merge: &Merge, frame: &mut [u8]) {
    let (l3, l4, total) = (merge.l3, merge.l4, merge.total);
    let (vnet, p) = frame.split_at_mut(VNET_HDR_LEN);
    if merge.v6 {
        put16(
            p,
            at(l3, IPV6_PAYLOAD_LEN),
            (total - l3 - IPV6_HEADER_LEN) as u16,
        );
    } else {
        put16(p, at(l3, IPV4_TOTAL_LEN), (total - l3) as u16);
        set_ipv4_checksum(&mut p[l3..l4]);
    }
    // The checksum field gets the pseudo-header sum, not complemented, as the kernel
    // leaves it for CHECKSUM_PARTIAL (`tcp_v4_send_check()`, `udp4_hwcsum()`).
    let (protocol, csum_at, gso) = if merge.tcp {
        if merge.psh {
            p[l4 + TCP_FLAGS] |= TCP_PSH;
        }
        let gso = if merge.v6 {
            GsoType::TcpV6
        } else {
            GsoType::TcpV4
        };
        (PROTO_TCP, at(l4, TCP_CHECKSUM), gso)
    } else {
        put16(p, at(l4, UDP_LEN), (total - l4) as u16);
        (PROTO_UDP, at(l4, UDP_CHECKSUM), GsoType::UdpL4)
    };
    let pseudo = pseudo_header(&p[l3..], merge.v6, protocol, total - l4);
    put16(p, csum_at.clone(), pseudo as u16);
    HeaderRepr {
        needs_csum: true,
        data_valid: false,
        gso,
        ecn: false,
        hdr_len: merge.hdr_len as u16,
        gso_size: merge.gso_size as u16,
        csum_start: l4 as u16,
        csum_offset: csum_at.start.wrapping_sub(l4) as u16,
    }
    .emit_into(vnet);
}

enum Append {
    Done {
        closed: bool,
    },
    No,
    /// The new packet's checksum is wrong: it goes alone and closes the flow.
    BadCandidate,
}

/// Two distinct elements of a slice, mutably.
fn two<B>(s: &mut [B], a: usize, b: usize) -> (&mut B, &mut B) {
    debug_assert!(a < b, "a super-segment's head precedes its members");
    let (lo, hi) = s.split_at_mut(b);
    (&mut lo[a], &mut hi[0])
}

/// Whether the link-layer, IP and transport headers of `pkt` allow it to join the
/// super-segment whose first packet is `head` (lengths, sequence and flags checked by the
/// caller).
fn headers_match(head: &[u8], pkt: &[u8], m: &Merge) -> bool {
    // MACs, VLAN tags and EtherType: the same link-layer header, or none on TUN.
    if head[..m.l3] != pkt[..m.l3] {
        return false;
    }
    let (h, p) = (&head[m.l3..], &pkt[m.l3..]);
    let ip_ok = if m.v6 {
        h[..4] == p[..4] && h[IPV6_HOP_LIMIT] == p[IPV6_HOP_LIMIT]
    } else {
        h[1] == p[1] && h[IPV4_FRAG] == p[IPV4_FRAG] && h[IPV4_TTL] == p[IPV4_TTL]
    };
    if !ip_ok {
        return false;
    }
    if m.tcp {
        // As the kernel's GRO: the data offset with the reserved and AE bits, and the
        // window, must be equal too, or a merged segment would carry only the first's
        // (a window update, say from zero, would be lost).
        let l4 = m.l4;
        head[at(l4, TCP_ACK)] == pkt[at(l4, TCP_ACK)]
            && head[l4 + TCP_DATA_OFFSET] == pkt[l4 + TCP_DATA_OFFSET]
            && head[at(l4, TCP_WINDOW)] == pkt[at(l4, TCP_WINDOW)]
            && head[l4 + TCP_HEADER_MIN..m.hdr_len] == pkt[l4 + TCP_HEADER_MIN..m.hdr_len]
    } else {
        true
    }
}

/// Whether the TCP or UDP checksum of `pkt`, a packet shaped like `m`'s, verifies.
fn transport_checksum_ok(pkt: &[u8], m: &Merge) -> bool {
    let protocol = if m.tcp { PROTO_TCP } else { PROTO_UDP };
    let s = checksum::add(
        pseudo_header(&pkt[m.l3..], m.v6, protocol, pkt.len() - m.l4),
        checksum::sum(&pkt[m.l4..]),
    );
    s == 0xffff
}

/// IPv6 next-header values that are extension headers (RFC 8200 §4, IANA's list),
/// behind which the transport header cannot be found without walking the chain.
fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

/// Sorts the packet `frame` (an IP packet, or on TAP an Ethernet frame) for the coalescer.
fn classify(frame: &[u8], offloads: Offloads, layer: Layer) -> Class {
    // Not IP, or on TAP an EtherType that disagrees with the packet: written alone.
    let Some(l3) = layer.ip_start(frame) else {
        return Class::Other;
    };
    let pkt = &frame[l3..];
    let Some(&first) = pkt.first() else {
        return Class::Other;
    };
    let (v6, l4, protocol, whole) = match first >> 4 {
        4 => {
            if pkt.len() < IPV4_HEADER_MIN {
                return Class::Other;
            }
            if get16(pkt, IPV4_FRAG) & IPV4_FRAG_MASK != 0 {
                return Class::Barrier;
            }
            let ihl = usize::from(first & 0x0f) * 4;
            let whole = ihl == IPV4_HEADER_MIN
                && usize::from(get16(pkt, IPV4_TOTAL_LEN)) == pkt.len()
                && checksum::sum(&pkt[..IPV4_HEADER_MIN]) == 0xffff;
            (false, ihl, pkt[IPV4_PROTOCOL], whole)
        }
        6 => {
            if pkt.len() < IPV6_HEADER_LEN {
                return Class::Other;
            }
            let next = pkt[IPV6_NEXT_HEADER];
            if is_ipv6_extension(next) {
                return Class::Barrier;
            }
            let whole = usize::from(get16(pkt, IPV6_PAYLOAD_LEN)) + IPV6_HEADER_LEN == pkt.len();
            (true, IPV6_HEADER_LEN, next, whole)
        }
        _ => return Class::Other,
    };
    let tcp = match protocol {
        PROTO_TCP => true,
        PROTO_UDP => false,
        _ => return Class::Other,
    };
    let min = if tcp { TCP_HEADER_MIN } else { UDP_HEADER_LEN };
    if l4 < IPV4_HEADER_MIN || pkt.len() < l4 + min {
        return Class::Other;
    }
    let mut key = FlowKey {
        addrs: [0; 32],
        ports: [0; 4],
        protocol,
        v6,
    };
    if v6 {
        key.addrs
            .copy_from_slice(&pkt[IPV6_SRC.start..IPV6_DST.end]);
    } else {
        key.addrs[..8].copy_from_slice(&pkt[IPV4_SRC.start..IPV4_DST.end]);
    }
    key.ports.copy_from_slice(&pkt[l4..l4 + 4]);
    if !whole {
        return Class::Alone(key);
    }
    if tcp {
        let thl = usize::from(pkt[l4 + TCP_DATA_OFFSET] >> 4) * 4;
        let flags = pkt[l4 + TCP_FLAGS];
        if !offloads.tso
            || !(TCP_HEADER_MIN..=TCP_HEADER_MAX).contains(&thl)
            || pkt.len() <= l4 + thl
            || flags & !TCP_PSH != TCP_ACK_FLAG
        {
            return Class::Alone(key);
        }
        Class::Candidate(Candidate {
            key,
            tcp,
            v6,
            l3,
            l4: l3 + l4,
            hdr_len: l3 + l4 + thl,
            payload: pkt.len() - l4 - thl,
            seq: get32(pkt, at(l4, TCP_SEQ)),
            psh: flags & TCP_PSH != 0,
        })
    } else {
        if !offloads.uso
            || pkt.len() <= l4 + UDP_HEADER_LEN
            || usize::from(get16(pkt, at(l4, UDP_LEN))) != pkt.len() - l4
            || get16(pkt, at(l4, UDP_CHECKSUM)) == 0
        {
            return Class::Alone(key);
        }
        Class::Candidate(Candidate {
            key,
            tcp,
            v6,
            l3,
            l4: l3 + l4,
            hdr_len: l3 + l4 + UDP_HEADER_LEN,
            payload: pkt.len() - l4 - UDP_HEADER_LEN,
            seq: 0,
            psh: false,
        })
    }
}
