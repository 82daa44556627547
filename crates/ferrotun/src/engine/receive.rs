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
use super::{PeerTable, Shared, Source, TRAILER, canonical};
use crate::peer::Peer;
use crate::routing::ip_source;
use crate::stats::DropReason;

/// Scratch a receiving task needs: room to decompress, and to re-seal frames it switches.
pub struct ReceiveScratch {
    plain: Vec<u8>,
    fwd: Forwarder,
}

/// What switching a frame on to other peers needs.
struct Forwarder {
    forward: Vec<u8>,
    flood: Vec<u8>,
    sealer: Sealer,
}

impl ReceiveScratch {
    /// Scratch for `shared`'s frame size.
    pub fn new(shared: &Shared) -> ReceiveScratch {
        let frame = shared.frame_len();
        let sealed = DATA_HEADER_LEN + frame + TRAILER;
        ReceiveScratch {
            plain: vec![0u8; shared.plain_len()],
            fwd: Forwarder {
                forward: vec![0u8; sealed],
                flood: vec![0u8; sealed],
                sealer: Sealer::new(frame),
            },
        }
    }
}

/// Reads datagrams from the UDP socket until it fails.
pub async fn udp_receive_path(shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65536];
    let mut scratch = ReceiveScratch::new(&shared);
    let sock = shared.udp.as_ref().context("no UDP socket")?;
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors can surface on a UDP socket; they are not ours to act on.
            Err(e) if is_transient(&e) => continue,
            Err(e) => return Err(e).context("receiving from the UDP socket"),
        };
        receive_one(
            &shared,
            &mut buf[..n],
            Source::Udp(canonical(src)),
            &mut scratch,
        )
        .await;
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
    let receiver = match DataMessage::new_checked(&buf[..]) {
        Ok(m) => m.receiver(),
        Err(e) => {
            shared.drop_packet(DropReason::Malformed, || format!("from {src}: {e}"));
            return Verdict::Malformed;
        }
    };
    let now = Instant::now();
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
    // What the payload took on the wire, for the compression counters: the compressed
    // block, or (uncompressed) the packet itself, whose padding is not payload.
    let compressed = flags.contains(PayloadFlags::COMPRESSED);
    let wire_len = if compressed { range.len() } else { 0 };
    let (payload_buf, payload_range) = if compressed {
        match ferrotun_proto::decompress(&buf[range.clone()], &mut scratch.plain) {
            Ok(n) => (&scratch.plain[..], 0..n),
            Err(e) => {
                shared.drop_for(peer, DropReason::Decompress, || {
                    format!("from peer {}: {e}", peer.name())
                });
                return Verdict::Dropped;
            }
        }
    } else {
        (&buf[..], range)
    };
    let payload = &payload_buf[payload_range];
    match shared.mode {
        Mode::Tun => deliver_ip(shared, &table, peer, payload, wire_len).await,
        Mode::Tap => {
            deliver_frame(
                shared,
                &table,
                peer,
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

async fn deliver_ip(
    shared: &Shared,
    table: &PeerTable,
    peer: &Peer,
    payload: &[u8],
    wire_len: usize,
) {
    // Padding was added to a multiple of 16; the IP header says where the packet ends.
    let Some(n) = ferrotun_proto::ip::ip_packet_len(payload) else {
        shared.drop_packet(DropReason::Malformed, || {
            format!("non-IP payload from peer {}", peer.name())
        });
        return;
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
        return;
    }
    write_device(shared, peer, packet, wire_len).await;
}

/// Writes a packet to the device; `wire_len` is what it took on the wire if it came
/// compressed, else 0.
async fn write_device(shared: &Shared, peer: &Peer, packet: &[u8], wire_len: usize) {
    let wire_len = if wire_len == 0 {
        packet.len()
    } else {
        wire_len
    };
    match shared.tun.send(packet).await {
        Ok(_) => peer.traffic.received(packet.len(), wire_len),
        Err(e) => shared.drop_packet(DropReason::SendFailed, || {
            format!("writing to the device: {e}")
        }),
    }
}

/// TAP: a client writes every frame to its device; a server switches it.
async fn deliver_frame(
    shared: &Shared,
    table: &PeerTable,
    peer: &Peer,
    frame: &[u8],
    wire_len: usize,
    now: Instant,
    fwd: &mut Forwarder,
) {
    let Some((dst, src)) = switch::macs(frame) else {
        shared.drop_packet(DropReason::Malformed, || {
            format!("short frame from peer {}", peer.name())
        });
        return;
    };
    if !shared.server {
        write_device(shared, peer, frame, wire_len).await;
        return;
    }
    shared.switch.learn(src, peer.slot, shared.stamp(now));
    let target = if switch::is_group(&dst) {
        None
    } else {
        shared.switch.lookup(&dst)
    };
    let len = frame.len();
    match target {
        Some(LOCAL) => write_device(shared, peer, frame, wire_len).await,
        Some(slot) if slot == peer.slot => {
            peer.drops.count(DropReason::Hairpin);
            shared.drops.count(DropReason::Hairpin);
        }
        Some(slot) => {
            peer.traffic
                .received(len, if wire_len == 0 { len } else { wire_len });
            if let Some(other) = table.get(slot) {
                let buf = &mut fwd.forward;
                buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len].copy_from_slice(frame);
                fwd.sealer
                    .seal_and_send(shared, other, buf, len, now, false)
                    .await;
            }
        }
        None => {
            // Broadcast, multicast or unknown: our own device and every other peer.
            write_device(shared, peer, frame, wire_len).await;
            fwd.forward[DATA_HEADER_LEN..DATA_HEADER_LEN + len].copy_from_slice(frame);
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
