//! Reading: frames from the device become plain IP packets (TUN) or Ethernet frames (TAP)
//! in the caller's buffers.
//!
//! The segmentation rules are the kernel's own, so that a packet we produce is the packet
//! the kernel would have put on a wire without offloads:
//! - every segment carries the super-segment's IP and transport headers; IPv4 gets its
//!   total length, an id incremented per segment and a new header checksum
//!   (`inet_gso_segment()` in `net/ipv4/af_inet.c`), IPv6 its payload length
//!   (`ipv6_gso_segment()` in `net/ipv6/ip6_offload.c`);
//! - TCP sequence numbers advance by the payload before each segment, FIN and PSH stay on
//!   the last segment only and CWR on the first only (`tcp_gso_segment()` in
//!   `net/ipv4/tcp_offload.c`);
//! - UDP segments get their own length (`__udp_gso_segment()` in `net/ipv4/udp_offload.c`);
//! - every transport checksum is computed in full, pseudo-header included (RFC 9293 §3.1,
//!   RFC 768, RFC 8200 §8.1); a computed UDP checksum of 0 is sent as 0xffff (RFC 768),
//!   as is any completed checksum of 0 (`skb_checksum_help()` in `net/core/dev.c`);
//! - on TAP, each segment starts with the super-segment's Ethernet header and VLAN tags,
//!   unchanged (`skb_segment()` in `net/core/skbuff.c` copies the MAC header into every
//!   segment), and `csum_start` counts from the start of the frame.

use std::io;

use crate::asyncio::AsyncQueue;
use crate::tun::{Queue, VNET_HDR_LEN};
use crate::vnet::header::{GsoType, Header, HeaderRepr};
use crate::vnet::packet::*;
use crate::vnet::{Error, Layer, MAX_PACKET, check_layer, checksum, ethernet, partial_checksum};

/// Counters of a [`Reader`], for statistics and for tests that must see offloads work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Frames read from the device or pushed (one `read` system call each).
    pub frames: u64,
    /// Frames that were super-segments (`gso_type` other than NONE).
    pub super_segments: u64,
    /// IP packets (TUN) or frames (TAP) handed to the caller.
    pub packets: u64,
    /// Single packets whose partial checksum was completed.
    pub checksums_completed: u64,
    /// Packets handed out with a partial checksum
    /// ([`Reader::leave_checksums_partial`]).
    pub checksums_left_partial: u64,
    /// Frames dropped, wholly or in part, because they were malformed or a caller's
    /// buffer was too small.
    pub dropped: u64,
    /// The most packets one frame produced.
    pub max_segments: u64,
}

/// Turns frames read from a TUN or TAP device with a virtio-net header into plain IP
/// packets or Ethernet frames, as the device would carry them without offloads.
///
/// [`Reader::new`] reads a TUN device ([`Layer::Ip`]); [`Reader::with_layer`] with
/// [`Layer::Ethernet`] a TAP device. On TAP, a super-segment is cut into whole frames,
/// each with a copy of its Ethernet header and VLAN tags; a super-segment whose
/// link-layer header cannot be walked to an IPv4 or IPv6 header (an unknown EtherType,
/// more than [`MAX_VLAN_TAGS`](crate::vnet::MAX_VLAN_TAGS) tags) is dropped with an
/// error; every frame that is not a super-segment (ARP, other EtherTypes) is passed on
/// as it is, its checksum completed if the kernel left it partial.
///
/// One reader belongs to the task that reads a queue; it owns a 64 KiB frame buffer and
/// the state of a super-segment that did not fit the caller's last batch, whose remaining
/// segments come first in the next call (nothing is dropped for lack of buffers).
///
/// Errors: a malformed frame is dropped and reported as an `io::Error` of kind
/// `InvalidData` (see [`Error::from_io`]); when packets were already placed in the
/// caller's buffers the error is held back and returned by the next call instead, so no
/// packet is lost with it. A device error is returned as it is.
#[derive(Debug)]
pub struct Reader {
    layer: Layer,
    frame: Box<[u8]>,
    pending: Option<Split>,
    deferred: Option<io::Error>,
    stats: ReaderStats,
    leave_partial: bool,
    /// Whether each packet of the last call has a partial checksum.
    partial: Vec<bool>,
}

/// What is left of the frame in `Reader::frame`.
#[derive(Debug, Clone, Copy)]
struct Split {
    /// Length of the packet: the frame without its virtio-net header.
    len: usize,
    how: How,
    /// Its packets keep (a single packet) or get (segments) a partial checksum.
    partial: bool,
    /// Segments emitted so far.
    index: u32,
}

#[derive(Debug, Clone, Copy)]
enum How {
    /// A single packet; `Some((start, offset))` if its checksum is to be completed.
    Single(Option<(usize, usize)>),
    /// A super-segment.
    Segments(Segments),
}

#[derive(Debug, Clone, Copy)]
struct Segments {
    v6: bool,
    tcp: bool,
    /// Offset of the IP header: the length of the link-layer header (0 on TUN).
    l3: usize,
    /// Offset of the transport header.
    l4: usize,
    /// Length of link-layer, IP and transport header.
    hdr_len: usize,
    gso_size: usize,
    /// Offset of the next payload byte to emit.
    next: usize,
    seq0: u32,
    id0: u16,
    /// Folded sum of the IPv4 header without its total length, id and checksum, which
    /// change per segment (0 for IPv6).
    ip_sum: u32,
    /// Folded sum of the pseudo-header without its length: addresses and protocol.
    pseudo_sum: u32,
}

impl Default for Reader {
    fn default() -> Self {
        Self::new()
    }
}

impl Reader {
    /// A reader for a TUN device ([`Layer::Ip`]) with its 64 KiB frame buffer.
    pub fn new() -> Reader {
        Reader::with_layer(Layer::Ip)
    }

    /// A reader for frames of `layer`: [`Layer::Ip`] for a TUN device,
    /// [`Layer::Ethernet`] for a TAP device (`Layer::from(queue.mode())`).
    pub fn with_layer(layer: Layer) -> Reader {
        Reader {
            layer,
            // One byte more than the largest legal frame: a read that fills the buffer
            // was truncated.
            frame: vec![0u8; VNET_HDR_LEN + layer.max_header_len() + MAX_PACKET + 1]
                .into_boxed_slice(),
            pending: None,
            deferred: None,
            stats: ReaderStats::default(),
            leave_partial: false,
            partial: Vec::new(),
        }
    }

    /// Leaves transport checksums partial where it can (see [`crate::vnet::partial`]):
    /// the segments of a TCP or UDP super-segment get only their pseudo-header sum in the
    /// checksum field instead of a full checksum, and a single packet the kernel handed
    /// out with a partial checksum keeps it, if [`partial_checksum`] finds the field where
    /// the kernel said it is. [`partial`](Self::partial) says which packets of a call
    /// have one: their receiver must complete it or hand them to a kernel as partial.
    /// Summing is most of the cost of cutting a super-segment (the copy is the rest).
    ///
    /// [`partial_checksum`]: crate::vnet::partial_checksum
    pub fn leave_checksums_partial(mut self, on: bool) -> Reader {
        self.leave_partial = on;
        self
    }

    /// Whether each packet the last call placed (`bufs[i]`, by
    /// [`recv_batch`](Self::recv_batch), [`recv_batch_sync`](Self::recv_batch_sync) or
    /// [`pop`](Self::pop)) has a partial checksum. All false unless
    /// [`leave_checksums_partial`](Self::leave_checksums_partial) is on.
    pub fn partial(&self) -> &[bool] {
        &self.partial
    }

    /// The kind of frame this reader takes.
    pub fn layer(&self) -> Layer {
        self.layer
    }

    /// The counters so far.
    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// How many packets of the last frame are still waiting to be taken.
    pub fn pending(&self) -> usize {
        match &self.pending {
            None => 0,
            Some(Split {
                how: How::Single(_),
                ..
            }) => 1,
            Some(Split {
                len,
                how: How::Segments(s),
                ..
            }) => (len - s.next).div_ceil(s.gso_size).max(1),
        }
    }

    /// Waits for the device and fills the caller's buffers: each packet goes into
    /// `bufs[i][offset..]` (the bytes before `offset` are not touched) with its length in
    /// `lens[i]`. Returns how many packets were placed, at least one unless `bufs` or
    /// `lens` is empty.
    ///
    /// Segments left over from the last call come first, without waiting. After the
    /// first frame it keeps reading frames while the device has them and there are
    /// buffers left, so one call can return up to `bufs.len()` packets; a super-segment
    /// that does not fit is finished in the next call.
    ///
    /// Each buffer needs room for an MTU-sized packet after `offset` (the kernel cuts
    /// super-segments to the device's MTU), on TAP plus its Ethernet header and VLAN
    /// tags; a packet that does not fit is dropped with [`Error::BufferTooSmall`].
    ///
    /// A queue of the other kind of device (TAP for a [`Layer::Ip`] reader, or TUN for a
    /// [`Layer::Ethernet`] one) is refused with [`Error::LayerMismatch`].
    ///
    /// Cancel-safe: the only wait is for the first frame, before anything is read or
    /// placed, so dropping the future (in a `select!`) loses nothing.
    pub async fn recv_batch<B: AsMut<[u8]>>(
        &mut self,
        queue: &AsyncQueue,
        bufs: &mut [B],
        offset: usize,
        lens: &mut [usize],
    ) -> io::Result<usize> {
        check_layer(self.layer, queue.get_ref())?;
        self.partial.clear();
        let max = bufs.len().min(lens.len());
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        if max == 0 {
            return Ok(0);
        }
        let mut n = self.take(bufs, offset, lens, 0)?;
        if n == 0 {
            let len = queue.recv(&mut self.frame).await?;
            self.accept(len)?;
            n = self.take(bufs, offset, lens, 0)?;
        }
        // Read on until the queue is empty or the batch is full. The read that finds the
        // queue empty tells the reactor, so the next call waits instead of trying again.
        while n < max && self.pending.is_none() && self.deferred.is_none() {
            match queue.try_recv(&mut self.frame) {
                // Packets are already in the caller's buffers: any error waits for the
                // next call rather than losing them.
                Ok(len) => match self.accept(len) {
                    Ok(()) => match self.take(bufs, offset, lens, n) {
                        Ok(k) => n += k,
                        Err(e) => self.deferred = Some(e),
                    },
                    Err(e) => self.deferred = Some(e.into()),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => self.deferred = Some(e),
            }
        }
        Ok(n)
    }

    /// [`recv_batch`](Self::recv_batch) on a synchronous queue: segments left over from
    /// the last call are returned without a system call; otherwise it reads one frame
    /// (blocking, unless the queue is non-blocking, where an empty queue is
    /// `WouldBlock`) and returns its packets.
    pub fn recv_batch_sync<B: AsMut<[u8]>>(
        &mut self,
        queue: &Queue,
        bufs: &mut [B],
        offset: usize,
        lens: &mut [usize],
    ) -> io::Result<usize> {
        check_layer(self.layer, queue)?;
        self.partial.clear();
        let max = bufs.len().min(lens.len());
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        if max == 0 {
            return Ok(0);
        }
        if self.pending.is_none() {
            let len = queue.recv(&mut self.frame)?;
            self.accept(len)?;
        }
        self.take(bufs, offset, lens, 0)
    }

    /// Takes one frame (virtio-net header and IP packet or Ethernet frame, as read from
    /// the device) from
    /// elsewhere than a [`Queue`]: a test, a capture, another transport. Its packets are
    /// then taken with [`pop`](Self::pop). Fails with [`Error::Busy`] while packets of
    /// the last frame are pending, and with the frame's defect if it is malformed.
    pub fn push_frame(&mut self, frame: &[u8]) -> Result<(), Error> {
        if self.pending.is_some() {
            return Err(Error::Busy);
        }
        let Some(dst) = self.frame.get_mut(..frame.len()) else {
            self.stats.frames += 1;
            self.stats.dropped += 1;
            return Err(Error::Oversized { len: frame.len() });
        };
        dst.copy_from_slice(frame);
        self.accept(frame.len())
    }

    /// Places pending packets into `bufs[i][offset..]`, lengths in `lens[i]`, and returns
    /// how many. The sans-I/O half of [`recv_batch`](Self::recv_batch).
    pub fn pop<B: AsMut<[u8]>>(
        &mut self,
        bufs: &mut [B],
        offset: usize,
        lens: &mut [usize],
    ) -> io::Result<usize> {
        self.partial.clear();
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        self.take(bufs, offset, lens, 0)
    }

    /// Checks the frame of `len` bytes in `self.frame` and makes it pending.
    fn accept(&mut self, len: usize) -> Result<(), Error> {
        self.stats.frames += 1;
        match parse(&self.frame, len, self.layer) {
            Ok(mut split) => {
                // Partial only where a receiver's `partial_checksum` finds the field
                // where the kernel (or the segment's header) has it.
                if self.leave_partial {
                    let packet = &self.frame[VNET_HDR_LEN..VNET_HDR_LEN + split.len];
                    let found = partial_checksum(packet, self.layer);
                    split.partial = match split.how {
                        How::Segments(s) => found.is_some_and(|p| p.start == s.l4),
                        How::Single(Some((start, offset))) => {
                            found.is_some_and(|p| p.start == start && p.offset == offset)
                        }
                        How::Single(None) => false,
                    };
                }
                if let How::Segments(_) = split.how {
                    self.stats.super_segments += 1;
                }
                self.pending = Some(split);
                Ok(())
            }
            Err(e) => {
                self.stats.dropped += 1;
                Err(e)
            }
        }
    }

    /// Emits pending packets into `bufs[start..]`. An error with nothing emitted is
    /// returned; after something was emitted it is deferred to the next call.
    fn take<B: AsMut<[u8]>>(
        &mut self,
        bufs: &mut [B],
        offset: usize,
        lens: &mut [usize],
        start: usize,
    ) -> io::Result<usize> {
        let max = bufs.len().min(lens.len());
        let mut i = start;
        while i < max {
            let Some(split) = self.pending.as_mut() else {
                break;
            };
            let packet = &self.frame[VNET_HDR_LEN..VNET_HDR_LEN + split.len];
            let buf = bufs[i].as_mut();
            let room = buf.len().saturating_sub(offset);
            let out = buf.get_mut(offset..).unwrap_or(&mut []);
            match emit(packet, split, out) {
                Ok((len, done)) => {
                    lens[i] = len;
                    debug_assert_eq!(self.partial.len(), i, "one flag per packet placed");
                    self.partial.truncate(i);
                    self.partial.push(split.partial);
                    i += 1;
                    self.stats.packets += 1;
                    if split.partial {
                        self.stats.checksums_left_partial += 1;
                    } else if let How::Single(Some(_)) = split.how {
                        self.stats.checksums_completed += 1;
                    }
                    if done {
                        self.stats.max_segments =
                            self.stats.max_segments.max(u64::from(split.index));
                        self.pending = None;
                    }
                }
                Err(need) => {
                    self.stats.dropped += 1;
                    self.pending = None;
                    let e: io::Error = Error::BufferTooSmall {
                        index: i,
                        need,
                        have: room,
                    }
                    .into();
                    if i == start {
                        return Err(e);
                    }
                    self.deferred = Some(e);
                    break;
                }
            }
        }
        Ok(i - start)
    }
}

/// Validates the frame `frame[..len]`, whose packet is of `layer`, and describes how to
/// cut it.
fn parse(frame: &[u8], len: usize, layer: Layer) -> Result<Split, Error> {
    if len >= frame.len() {
        // The kernel truncated the packet to our buffer: depending on its version, a read
        // then returns the buffer's length or the packet's (`tun_put_user()` in
        // `drivers/net/tun.c`); the buffer is one byte longer than any legal frame.
        return Err(Error::Oversized { len });
    }
    let frame = &frame[..len];
    let hdr = HeaderRepr::parse(&Header::new_checked(frame)?)?;
    let packet = &frame[VNET_HDR_LEN..];
    let len = packet.len();
    let truncated = |what, need| Error::Truncated {
        what,
        need,
        have: len,
    };

    // A single packet needs nothing of its headers: csum_start says where its checksum
    // starts, counted from the frame's first byte on TUN and TAP alike, and anything
    // else (ARP, other EtherTypes, IP without a partial checksum) passes as it is.
    if hdr.gso == GsoType::None {
        let csum = if hdr.needs_csum {
            let start = usize::from(hdr.csum_start);
            let off = usize::from(hdr.csum_offset);
            if start + off + 2 > len {
                return Err(truncated("the partial checksum", start + off + 2));
            }
            Some((start, off))
        } else {
            None
        };
        return Ok(Split {
            len,
            how: How::Single(csum),
            partial: false,
            index: 0,
        });
    }

    if !hdr.needs_csum {
        return Err(Error::GsoWithoutCsum);
    }
    if hdr.gso_size == 0 {
        return Err(Error::ZeroGsoSize);
    }
    let l3 = match layer {
        Layer::Ip => 0,
        Layer::Ethernet => {
            let link = ethernet::parse(packet)?;
            let Some(version) = link.ip_version() else {
                return Err(Error::NotIpEtherType(link.ethertype));
            };
            match packet.get(link.len).map(|b| b >> 4) {
                Some(v) if v != version => {
                    return Err(Error::EtherTypeMismatch {
                        ethertype: link.ethertype,
                        version: v,
                    });
                }
                _ => {}
            }
            link.len
        }
    };
    let version = packet.get(l3).map(|b| b >> 4).unwrap_or(0);
    let (v6, ip_header) = match version {
        4 => {
            if len < l3 + IPV4_HEADER_MIN {
                return Err(truncated("the IPv4 header", l3 + IPV4_HEADER_MIN));
            }
            (false, usize::from(packet[l3] & 0x0f) * 4)
        }
        6 => (true, IPV6_HEADER_LEN),
        v => return Err(Error::NotIp(v)),
    };
    let tcp = match (hdr.gso, v6) {
        (GsoType::TcpV4, false) | (GsoType::TcpV6, true) => true,
        (GsoType::UdpL4, _) => false,
        (gso, _) => return Err(Error::GsoVersionMismatch { gso, version }),
    };
    if len < l3 + ip_header {
        return Err(truncated("the IP header", l3 + ip_header));
    }
    let l4 = usize::from(hdr.csum_start);
    // IPv4 header options are part of the IP header; IPv6 extension headers sit between
    // the fixed header and csum_start, and are copied into every segment as they are.
    let start_ok = if v6 {
        l4 >= l3 + ip_header
    } else {
        l4 == l3 + ip_header
    };
    if !start_ok || ip_header < IPV4_HEADER_MIN {
        return Err(Error::BadCsumStart {
            csum_start: l4,
            ip_header: l3 + ip_header,
        });
    }
    // The transport protocol must be the one the GSO type names. IPv6 extension headers
    // (between the fixed header and csum_start) are not walked: there the last one's next
    // header field would have to be found first, and the kernel never sends such a frame
    // with a wrong type.
    let named = if v6 {
        (l4 == l3 + IPV6_HEADER_LEN).then(|| packet[l3 + IPV6_NEXT_HEADER])
    } else {
        Some(packet[l3 + IPV4_PROTOCOL])
    };
    let want = if tcp { PROTO_TCP } else { PROTO_UDP };
    if let Some(protocol) = named.filter(|&p| p != want) {
        return Err(Error::GsoProtocolMismatch {
            gso: hdr.gso,
            protocol,
        });
    }
    let (protocol, csum_field) = if tcp {
        ("TCP", TCP_CHECKSUM.start)
    } else {
        ("UDP", UDP_CHECKSUM.start)
    };
    if usize::from(hdr.csum_offset) != csum_field {
        return Err(Error::BadCsumOffset {
            csum_offset: usize::from(hdr.csum_offset),
            protocol,
        });
    }
    // hdr_len is not used: see the module documentation.
    let hdr_len = if tcp {
        if len < l4 + TCP_HEADER_MIN {
            return Err(truncated("the TCP header", l4 + TCP_HEADER_MIN));
        }
        let thl = usize::from(packet[l4 + TCP_DATA_OFFSET] >> 4) * 4;
        if !(TCP_HEADER_MIN..=TCP_HEADER_MAX).contains(&thl) {
            return Err(Error::BadTcpHeaderLen(thl));
        }
        l4 + thl
    } else {
        l4 + UDP_HEADER_LEN
    };
    if len < hdr_len {
        return Err(truncated("the transport header", hdr_len));
    }
    Ok(Split {
        len,
        how: How::Segments(Segments {
            v6,
            tcp,
            l3,
            l4,
            hdr_len,
            gso_size: usize::from(hdr.gso_size),
            next: hdr_len,
            seq0: if tcp {
                get32(packet, at(l4, TCP_SEQ))
            } else {
                0
            },
            id0: if v6 {
                0
            } else {
                get16(packet, at(l3, IPV4_ID))
            },
            ip_sum: if v6 {
                0
            } else {
                let mut h = [0u8; 60];
                let h = &mut h[..l4 - l3];
                h.copy_from_slice(&packet[l3..l4]);
                for field in [IPV4_TOTAL_LEN, IPV4_ID, IPV4_CHECKSUM] {
                    put16(h, field, 0);
                }
                checksum::sum(h)
            },
            pseudo_sum: pseudo_header(
                &packet[l3..],
                v6,
                if tcp { PROTO_TCP } else { PROTO_UDP },
                0,
            ),
        }),
        partial: false,
        index: 0,
    })
}

/// Writes the next packet of `split` into `out`. Returns its length and whether it was
/// the last, or the length `out` would have needed.
fn emit(packet: &[u8], split: &mut Split, out: &mut [u8]) -> Result<(usize, bool), usize> {
    match &mut split.how {
        How::Single(csum) => {
            let len = packet.len();
            let Some(out) = out.get_mut(..len) else {
                return Err(len);
            };
            if let Some((start, off)) = csum.filter(|_| !split.partial) {
                // The field holds the pseudo-header sum; summing over it completes it.
                out[..start].copy_from_slice(&packet[..start]);
                let s = checksum::copy_and_sum(&mut out[start..], &packet[start..]);
                let c = checksum::finish(s);
                let c = if c == 0 { 0xffff } else { c };
                put16(out, start + off..start + off + 2, c);
            } else {
                // No checksum to complete, or one left partial.
                out.copy_from_slice(packet);
            }
            split.index = 1;
            Ok((len, true))
        }
        How::Segments(s) => {
            let payload = s.gso_size.min(split.len - s.next);
            let total = s.hdr_len + payload;
            let Some(out) = out.get_mut(..total) else {
                return Err(total);
            };
            let last = s.next + payload >= split.len;
            let first = split.index == 0;
            out[..s.hdr_len].copy_from_slice(&packet[..s.hdr_len]);
            let src = &packet[s.next..s.next + payload];
            let payload_sum = if split.partial {
                out[s.hdr_len..].copy_from_slice(src);
                0
            } else {
                checksum::copy_and_sum(&mut out[s.hdr_len..], src)
            };
            let (l3, l4) = (s.l3, s.l4);
            if s.v6 {
                put16(
                    out,
                    at(l3, IPV6_PAYLOAD_LEN),
                    (total - l3 - IPV6_HEADER_LEN) as u16,
                );
            } else {
                // The header's checksum from its sum without the fields that change, not
                // by summing `out`: loads right after the stores into it stalled (perf).
                let (total_len, id) = ((total - l3) as u16, s.id0.wrapping_add(split.index as u16));
                put16(out, at(l3, IPV4_TOTAL_LEN), total_len);
                put16(out, at(l3, IPV4_ID), id);
                let sum = checksum::add(s.ip_sum, checksum::add(total_len.into(), id.into()));
                put16(out, at(l3, IPV4_CHECKSUM), checksum::finish(sum));
            }
            let (protocol, csum_at) = if s.tcp {
                let seq = s.seq0.wrapping_add((s.next - s.hdr_len) as u32);
                put32(out, at(l4, TCP_SEQ), seq);
                let mut flags = out[l4 + TCP_FLAGS];
                if !last {
                    flags &= !(TCP_FIN | TCP_PSH);
                }
                if !first {
                    flags &= !TCP_CWR;
                }
                out[l4 + TCP_FLAGS] = flags;
                (PROTO_TCP, at(l4, TCP_CHECKSUM))
            } else {
                put16(out, at(l4, UDP_LEN), (total - l4) as u16);
                (PROTO_UDP, at(l4, UDP_CHECKSUM))
            };
            // The segment's transport length is below 2^16: one more folded word.
            let pseudo = checksum::add(s.pseudo_sum, (total - l4) as u32);
            let c = if split.partial {
                // The pseudo-header sum alone, for the receiver to complete.
                pseudo as u16
            } else {
                put16(out, csum_at.clone(), 0);
                // The transport header's length is even (a multiple of 4 for TCP, 8 for
                // UDP), so its sum and the payload's add up to the sum of the whole.
                debug_assert_eq!((s.hdr_len - l4) % 2, 0);
                let rest = checksum::add(checksum::sum(&out[l4..s.hdr_len]), payload_sum);
                let c = checksum::finish(checksum::add(pseudo, rest));
                if c == 0 && protocol == PROTO_UDP {
                    0xffff
                } else {
                    c
                }
            };
            put16(out, csum_at, c);
            s.next += payload;
            split.index += 1;
            Ok((total, last))
        }
    }
}
