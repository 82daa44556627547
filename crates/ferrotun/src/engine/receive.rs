//! The receive path: messages from the network to the device (or, for a TAP server, on to
//! another peer).
//!
//! One function, [`receive_one`], handles a message whatever carried it (a UDP datagram,
//! a TCP frame). Data is opened in place with the keypair its receiver index names;
//! handshake messages go to the control task. Only an authenticated message changes
//! anything: the peer's address (roaming), its timers, the MAC table.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use ferrotun_device::Mode;
use ferrotun_proto::session::REJECT_AFTER_TIME;
use ferrotun_proto::transport::TransportError;
use ferrotun_proto::wire::{
    DATA_HEADER_LEN, DataMessage, TYPE_COOKIE_REPLY, TYPE_DATA, TYPE_INITIATION, TYPE_RESPONSE,
};
use ferrotun_proto::{Message, PayloadFlags, SessionIndex};

use super::control::Inbound;
use super::send::{Sealer, flood_to_peers};
use super::switch::{self, LOCAL};
use super::{PeerTable, Shared, Source, TRAILER, Turn, canonical};
use crate::peer::Peer;
use crate::routing::ip_source;
use crate::stats::DropReason;

/// Scratch a receiving task needs: room to decompress, and to re-seal frames it switches.
pub struct ReceiveScratch {
    /// The time to stamp this batch's messages with (one clock read per batch).
    pub now: Instant,
    plain: Vec<u8>,
    fwd: Forwarder,
}

/// What switching a frame on to other peers needs.
struct Forwarder {
    /// The device queue to write to (the receive task's).
    queue: usize,
    forward: Vec<u8>,
    flood: Vec<u8>,
    sealer: Sealer,
}

impl ReceiveScratch {
    /// Scratch for `shared`'s frame size, for a task that writes to device queue `queue`
    /// (a UDP receive task's own queue, so that all of a flow's packets enter the device
    /// through one queue).
    pub fn new(shared: &Shared, queue: usize) -> ReceiveScratch {
        let frame = shared.frame_len();
        let sealed = DATA_HEADER_LEN + frame + TRAILER;
        ReceiveScratch {
            now: Instant::now(),
            plain: vec![0u8; HEADROOM + shared.plain_len()],
            fwd: Forwarder {
                queue,
                forward: vec![0u8; sealed],
                flood: vec![0u8; sealed],
                sealer: Sealer::new(frame),
            },
        }
    }

    /// The device queue this task writes to.
    pub fn queue(&self) -> usize {
        self.fwd.queue
    }
}

/// Receive buffers per system call; with GRO each holds up to 64 coalesced datagrams.
const RX_BUFFERS: usize = 8;
/// Size of one receive buffer: the largest GRO batch the kernel hands over.
const RX_BUFFER_LEN: usize = 65536;

/// A packet decrypted in place, to be written to the device: buffer, start, length.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// Which buffer.
    pub buf: usize,
    /// Where the packet starts in it (at least 16 bytes in).
    pub start: usize,
    /// Its length.
    pub len: usize,
}

/// Reads datagrams from the UDP socket until it fails: several buffers per system call,
/// each holding one datagram or (with GRO) several of one size from one sender. Packets
/// decrypted in place are written to the device together at the end of the batch, merged
/// into super-segments when the device has offloads.
///
/// Task `index` reads UDP socket `index` and writes to device queue `index`.
pub async fn udp_receive_path(shared: Arc<Shared>, index: usize) -> anyhow::Result<()> {
    let udp = shared.udp(index).context("no UDP socket")?;
    let mut bufs: Vec<Vec<u8>> = (0..RX_BUFFERS).map(|_| vec![0u8; RX_BUFFER_LEN]).collect();
    let mut metas = [quinn_udp::RecvMeta::default(); RX_BUFFERS];
    let mut scratch = ReceiveScratch::new(&shared, index);
    let mut writer = shared.device_writer();
    let mut deliveries: Vec<Delivery> = Vec::with_capacity(RX_BUFFERS * 64);
    let mut lens: Vec<usize> = Vec::with_capacity(RX_BUFFERS * 64);
    let mut turn = Turn::new(Instant::now());
    loop {
        let n = {
            let mut it = bufs.iter_mut();
            let mut iovs: [std::io::IoSliceMut<'_>; RX_BUFFERS] = std::array::from_fn(|_| {
                std::io::IoSliceMut::new(it.next().expect("RX_BUFFERS buffers").as_mut_slice())
            });
            match turn.wait(udp.recv(&mut iovs, &mut metas)).await {
                Ok(n) => n,
                // ICMP errors can surface on a UDP socket; they are not ours to act on.
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e).context("receiving from the UDP socket"),
            }
        };
        deliveries.clear();
        scratch.now = Instant::now();
        for (k, meta) in metas.iter().enumerate().take(n) {
            let src = Source::Udp(canonical(meta.addr));
            let stride = meta.stride.max(1);
            let mut at = 0;
            while at < meta.len {
                let end = (at + stride).min(meta.len);
                let dgram = &mut bufs[k][at..end];
                if let Verdict::Deliver { start, len } =
                    receive_one(&shared, dgram, src, &mut scratch).await
                {
                    deliveries.push(Delivery {
                        buf: k,
                        start: at + start,
                        len,
                    });
                }
                at = end;
            }
        }
        write_deliveries(
            &shared,
            scratch.queue(),
            writer.as_mut(),
            &mut bufs,
            &deliveries,
            &mut lens,
        )
        .await;
        turn.next_batch().await;
    }
}

/// Writes packets that were decrypted in place, each at `bufs[d.buf][d.start..]` with 16
/// bytes of headroom before it: all in one [`vnet::Writer`] batch (merged into
/// super-segments where possible) when the device has offloads, else one by one.
pub async fn write_deliveries<B: AsMut<[u8]>>(
    shared: &Shared,
    queue: usize,
    writer: Option<&mut ferrotun_device::vnet::Writer>,
    bufs: &mut [B],
    deliveries: &[Delivery],
    lens: &mut Vec<usize>,
) {
    if deliveries.is_empty() {
        return;
    }
    match writer {
        Some(w) => {
            // Disjoint slices, one per packet, each with its headroom.
            let mut packets: Vec<&mut [u8]> = Vec::with_capacity(deliveries.len());
            lens.clear();
            let mut rest = deliveries.iter().peekable();
            for (k, buf) in bufs.iter_mut().enumerate() {
                let mut tail: &mut [u8] = buf.as_mut();
                let mut taken = 0;
                while let Some(d) = rest.next_if(|d| d.buf == k) {
                    let (_, from) =
                        std::mem::take(&mut tail).split_at_mut(d.start - HEADROOM - taken);
                    let (pkt, after) = from.split_at_mut(HEADROOM + d.len);
                    taken = d.start + d.len;
                    tail = after;
                    packets.push(pkt);
                    lens.push(d.len);
                }
            }
            if let Err(e) = w
                .send_batch(shared.tun.queue(queue), &mut packets, HEADROOM, lens)
                .await
            {
                shared.drop_packet(DropReason::SendFailed, || {
                    format!("writing to the device: {e}")
                });
            }
        }
        None => {
            for d in deliveries {
                let buf = &mut bufs[d.buf].as_mut()[d.start - HEADROOM..d.start + d.len];
                if let Err(e) = shared.tun.write(queue, buf, HEADROOM, d.len).await {
                    shared.drop_packet(DropReason::SendFailed, || {
                        format!("writing to the device: {e}")
                    });
                }
            }
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EMSGSIZE
                | libc::ENOBUFS
        )
    ) || e.kind() == std::io::ErrorKind::Interrupted
}

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered, switched, or handed to the control task.
    Accepted,
    /// An IP packet for the device, left in place at `buf[start..start + len]` with at
    /// least 16 bytes of headroom: the caller writes it (alone, or merged with others).
    Deliver {
        /// Where the packet starts in the message buffer.
        start: usize,
        /// Its length.
        len: usize,
    },
    /// Well-formed but not accepted (unknown index, replay, failed authentication, ...).
    Dropped,
    /// Not a message at all: a TCP connection that sends this is closed.
    Malformed,
}

/// Handles one message from the network, whatever carried it.
pub async fn receive_one(
    shared: &Shared,
    buf: &mut [u8],
    src: Source<'_>,
    scratch: &mut ReceiveScratch,
) -> Verdict {
    match buf.first() {
        Some(&TYPE_DATA) => receive_data(shared, buf, src, scratch).await,
        Some(&(TYPE_INITIATION | TYPE_RESPONSE | TYPE_COOKIE_REPLY)) => {
            if let Err(e) = Message::classify(buf) {
                shared.drop_packet(DropReason::Malformed, || format!("from {src}: {e}"));
                return Verdict::Malformed;
            }
            let msg = Inbound {
                bytes: buf.to_vec(),
                src: src.to_peer_addr(),
            };
            if !shared.to_control(msg) {
                shared.drop_packet(DropReason::HandshakeFlood, || {
                    format!("handshake queue full; dropped one from {src}")
                });
                return Verdict::Dropped;
            }
            Verdict::Accepted
        }
        _ => {
            shared.drop_packet(DropReason::Malformed, || {
                format!("{}-byte message of unknown type from {src}", buf.len())
            });
            Verdict::Malformed
        }
    }
}

async fn receive_data(
    shared: &Shared,
    buf: &mut [u8],
    src: Source<'_>,
    scratch: &mut ReceiveScratch,
) -> Verdict {
    let queue = scratch.queue();
    let receiver = match DataMessage::new_checked(&buf[..]) {
        Ok(m) => m.receiver(),
        Err(e) => {
            shared.drop_packet(DropReason::Malformed, || format!("from {src}: {e}"));
            return Verdict::Malformed;
        }
    };
    let now = scratch.now;
    let table = shared.table.load();
    let Some(peer) = table.get(SessionIndex::of_receiver(receiver).slot()) else {
        shared.drop_packet(DropReason::UnknownIndex, || {
            format!("index {receiver:#010x} from {src}")
        });
        return Verdict::Dropped;
    };
    let keypairs = peer.recv_keypairs.load();
    let Some(kp) = keypairs.iter().find(|k| k.local_index() == receiver) else {
        shared.drop_packet(DropReason::UnknownIndex, || {
            format!("index {receiver:#010x} from {src}")
        });
        return Verdict::Dropped;
    };
    if now >= kp.created() + REJECT_AFTER_TIME {
        shared.drop_for(peer, DropReason::KeyExpired, || {
            format!("from {src}: keypair older than 180 s")
        });
        return Verdict::Dropped;
    }
    let (flags, range) = match kp.open(buf) {
        Ok(r) => r,
        Err(TransportError::Replay { .. }) => {
            shared.drop_for(peer, DropReason::Replay, || {
                format!("replayed or too old, from {src}")
            });
            return Verdict::Dropped;
        }
        Err(e) => {
            shared.drop_for(peer, DropReason::Decrypt, || {
                format!("from {src} for peer {}: {e}", peer.name())
            });
            return Verdict::Dropped;
        }
    };
    // Authenticated: the peer is at `src` now, and the control task learns of the packet.
    let stamp = shared.stamp(now);
    peer.notes.received.store(stamp, Ordering::Relaxed);
    if let Source::Tcp(c) = src {
        c.authenticate(peer.slot);
    }
    peer.set_endpoint(src.to_peer_addr());
    if kp.local_index() == peer.next_index.load(Ordering::Relaxed)
        && peer.notes.confirm.swap(kp.local_index(), Ordering::AcqRel) != kp.local_index()
    {
        peer.mark();
        shared.wake.notify_one();
    }
    if range.is_empty() {
        return Verdict::Accepted; // keepalive
    }
    peer.notes.received_data.store(stamp, Ordering::Relaxed);
    let want = if shared.mode == Mode::Tap {
        PayloadFlags::ETHERNET
    } else {
        PayloadFlags::NONE
    };
    let allowed = if peer.config.compress {
        want.union(PayloadFlags::COMPRESSED)
    } else {
        want
    };
    if !flags.contains(want) || !allowed.contains(flags) {
        shared.drop_for(peer, DropReason::FlagsRefused, || {
            format!(
                "payload flags {:#04x} from peer {} do not fit its configuration",
                flags.bits(),
                peer.name()
            )
        });
        return Verdict::Dropped;
    }
    let compressed = flags.contains(PayloadFlags::COMPRESSED);
    if !compressed && shared.mode == Mode::Tun {
        // The common case: an IP packet in place, for the caller to write (and merge).
        return match check_ip(shared, &table, peer, &buf[range.clone()]) {
            Some(n) => {
                peer.traffic.received(n, n);
                Verdict::Deliver {
                    start: range.start,
                    len: n,
                }
            }
            None => Verdict::Dropped,
        };
    }
    // Compressed payloads are decompressed behind 16 bytes of headroom.
    let (payload, wire_len): (&mut [u8], usize) = if compressed {
        match ferrotun_proto::decompress(&buf[range.clone()], &mut scratch.plain[HEADROOM..]) {
            Ok(n) => (&mut scratch.plain[..HEADROOM + n], range.len()),
            Err(e) => {
                shared.drop_for(peer, DropReason::Decompress, || {
                    format!("from peer {}: {e}", peer.name())
                });
                return Verdict::Dropped;
            }
        }
    } else {
        let len = range.len();
        (&mut buf[range.start - HEADROOM..range.end], len)
    };
    match shared.mode {
        Mode::Tun => {
            if let Some(n) = check_ip(shared, &table, peer, &payload[HEADROOM..]) {
                write_device(shared, queue, peer, payload, n, wire_len).await;
            }
        }
        Mode::Tap => {
            // A switch port drops frames over its MTU, and the buffers that forward and
            // flood frames to other peers hold no more: a peer configured with a larger
            // MTU than ours gets its big frames counted, not switched.
            let len = payload.len() - HEADROOM;
            if len > shared.frame_len() {
                shared.drop_for(peer, DropReason::TooBig, || {
                    format!("{len}-byte frame from peer {} exceeds the MTU", peer.name())
                });
                return Verdict::Dropped;
            }
            let Some(port) = switch_port(shared, peer, &payload[HEADROOM..], now) else {
                return Verdict::Dropped;
            };
            if port == Port::Device && !compressed {
                // The common case: a frame for our device, left in place to be merged.
                peer.traffic.received(wire_len, wire_len);
                return Verdict::Deliver {
                    start: range.start,
                    len: range.len(),
                };
            }
            forward_frame(
                shared,
                &table,
                peer,
                port,
                payload,
                wire_len,
                now,
                &mut scratch.fwd,
            )
            .await;
        }
    }
    Verdict::Accepted
}

/// Bytes before every payload handed to [`write_device`]: room for a virtio-net header.
const HEADROOM: usize = DATA_HEADER_LEN;

/// Checks a decrypted IP packet (padding trimmed by its header's length) and that its
/// source is the sending peer's; returns its length.
fn check_ip(shared: &Shared, table: &PeerTable, peer: &Peer, payload: &[u8]) -> Option<usize> {
    let Some(n) = ferrotun_proto::ip::ip_packet_len(payload) else {
        shared.drop_for(peer, DropReason::Malformed, || {
            format!("non-IP payload from peer {}", peer.name())
        });
        return None;
    };
    let packet = &payload[..n];
    let owner = ip_source(packet).and_then(|a| table.routes.lookup(a).copied());
    if owner != Some(peer.slot) {
        shared.drop_for(peer, DropReason::SourceNotAllowed, || {
            format!(
                "peer {} sent a packet from {}, outside its allowed_ips",
                peer.name(),
                ip_source(packet).map_or("?".into(), |a| a.to_string())
            )
        });
        return None;
    }
    Some(n)
}

/// Writes `buf[HEADROOM..HEADROOM + len]` to the device; `wire_len` is what it took on the
/// wire (for the compression counters).
async fn write_device(
    shared: &Shared,
    queue: usize,
    peer: &Peer,
    buf: &mut [u8],
    len: usize,
    wire_len: usize,
) {
    match shared.tun.write(queue, buf, HEADROOM, len).await {
        Ok(()) => peer.traffic.received(len, wire_len),
        Err(e) => shared.drop_packet(DropReason::SendFailed, || {
            format!("writing to the device: {e}")
        }),
    }
}

/// Where the TAP switch sends a frame that came from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// Our own device.
    Device,
    /// Another peer.
    Peer(u32),
    /// Our device and every other peer (broadcast, multicast, unknown destination).
    Flood,
    /// Back to the peer it came from: dropped.
    Hairpin,
}

/// The switch's decision for a frame from `peer` (learning its source address on the
/// way); a client has one port, its device. `None` for a frame too short to switch.
fn switch_port(shared: &Shared, peer: &Peer, frame: &[u8], now: Instant) -> Option<Port> {
    let Some((dst, src)) = switch::macs(frame) else {
        shared.drop_for(peer, DropReason::Malformed, || {
            format!("short frame from peer {}", peer.name())
        });
        return None;
    };
    if !shared.server {
        return Some(Port::Device);
    }
    shared.switch.learn(src, peer.slot, shared.stamp(now));
    let target = if switch::is_group(&dst) {
        None
    } else {
        shared.switch.lookup(&dst)
    };
    Some(match target {
        None => Port::Flood,
        Some(LOCAL) => Port::Device,
        Some(slot) if slot == peer.slot => Port::Hairpin,
        Some(slot) => Port::Peer(slot),
    })
}

/// Sends a frame at `buf[HEADROOM..]` where the switch decided.
#[allow(clippy::too_many_arguments)]
async fn forward_frame(
    shared: &Shared,
    table: &PeerTable,
    peer: &Peer,
    port: Port,
    buf: &mut [u8],
    wire_len: usize,
    now: Instant,
    fwd: &mut Forwarder,
) {
    let len = buf.len() - HEADROOM;
    match port {
        Port::Device => write_device(shared, fwd.queue, peer, buf, len, wire_len).await,
        Port::Hairpin => {
            peer.drops.count(DropReason::Hairpin);
            shared.drops.count(DropReason::Hairpin);
        }
        Port::Peer(slot) => {
            peer.traffic.received(len, wire_len);
            if let Some(other) = table.get(slot) {
                let f = &mut fwd.forward;
                f[DATA_HEADER_LEN..DATA_HEADER_LEN + len].copy_from_slice(&buf[HEADROOM..]);
                fwd.sealer
                    .seal_and_send(shared, other, f, len, now, false)
                    .await;
            }
        }
        Port::Flood => {
            fwd.forward[DATA_HEADER_LEN..DATA_HEADER_LEN + len].copy_from_slice(&buf[HEADROOM..]);
            write_device(shared, fwd.queue, peer, buf, len, wire_len).await;
            flood_to_peers(
                shared,
                table,
                &mut fwd.sealer,
                &fwd.forward,
                len,
                &mut fwd.flood,
                Some(peer.slot),
                now,
            )
            .await;
        }
    }
}
