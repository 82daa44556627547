//! The send path: packets from the device to peers.
//!
//! Reads up to [`SLOTS`] packets per wakeup (with TUN offloads, TCP super-segments cut back
//! into packets) straight into the [`Outbox`]'s slots, routes each to its peer (cryptokey
//! routing in TUN mode; in TAP mode a client sends everything to its server and a server
//! switches by MAC address, flooding what it does not know), prepares it there, and
//! flushes the outbox once per batch (and whenever a flood fills its copy slots).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use ferrotun_device::Mode;
use ferrotun_proto::wire::DATA_HEADER_LEN;

use crate::routing::ip_destination;
use crate::stats::DropReason;

use super::outbox::{Outbox, SLOTS};
use super::peer::Peer;
use super::shared::Shared;
use super::switch::{self, LOCAL};
use super::table::PeerTable;
use super::turn::Turn;

/// Slots for copies of flooded frames, beyond the batch's own; a flood to more peers
/// flushes the outbox as it fills.
const FLOOD_SLOTS: usize = 16;

/// Reads packets from the device and sends them to their peers until the device fails.
/// Task `index` reads device queue `index` and sends through UDP socket `index`.
pub(crate) async fn send_path(shared: Arc<Shared>, index: usize) -> anyhow::Result<()> {
    let frame = shared.frame_len();
    let mut out = Outbox::new(&shared, index, SLOTS, FLOOD_SLOTS);
    let mut lens = [0usize; SLOTS];
    let mut reader = shared.device_reader();
    // The table the outbox's compressors were last pruned for (its address).
    let mut table_seen = 0usize;
    let mut turn = Turn::new(Instant::now());
    loop {
        let read = {
            let mut slots = out.input_slots();
            let q = shared.tun.queue(index);
            match reader.as_mut() {
                Some(r) => {
                    turn.wait(r.recv_batch(q, &mut slots, DATA_HEADER_LEN, &mut lens))
                        .await
                }
                None => {
                    turn.wait(q.recv_batch(&mut slots, DATA_HEADER_LEN, &mut lens))
                        .await
                }
            }
        };
        let n = match read {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                ) =>
            {
                // A frame the offload reader could not parse: dropped, counted, go on.
                shared.drop_packet(DropReason::Malformed, || format!("from the device: {e}"));
                continue;
            }
            Err(e) => return Err(e).context("reading from the device"),
        };
        shared.queue_packets[index].fetch_add(n as u64, Ordering::Relaxed);
        let now = Instant::now();
        let table = shared.peers.load_full();
        if Arc::as_ptr(&table) as usize != table_seen {
            out.forget_gone(&table);
            table_seen = Arc::as_ptr(&table) as usize;
        }
        for (i, &len) in lens.iter().enumerate().take(n) {
            if len == 0 {
                continue;
            }
            if len > frame {
                shared.drop_packet(DropReason::TooBig, || {
                    format!("{len}-byte packet from the device exceeds the MTU")
                });
                continue;
            }
            match shared.settings.mode {
                Mode::Tun => {
                    if let Some(peer) = route_ip(&shared, &table, out.packet(i, len)) {
                        let partial = reader
                            .as_ref()
                            .is_some_and(|r| r.partial().get(i) == Some(&true));
                        out.prepare(&shared, peer, i, len, now, partial, true);
                    }
                }
                Mode::Tap => switch_frame(&shared, &table, &mut out, i, len, now).await,
            }
        }
        out.flush(&shared).await;
        turn.next_batch().await;
    }
}

/// The peer whose allowed IPs cover the packet's destination.
fn route_ip<'t>(shared: &Shared, table: &'t PeerTable, packet: &[u8]) -> Option<&'t Arc<Peer>> {
    let Some(dst) = ip_destination(packet) else {
        shared.drops.count(DropReason::NoRoute);
        return None;
    };
    let peer = table.routes.lookup(dst).and_then(|s| table.get(*s));
    if peer.is_none() {
        // The host's own multicast (router solicitations, MLD) is routine: counted quietly.
        if dst.is_multicast() {
            shared.drops.count(DropReason::NoRoute);
        } else {
            shared.drop_packet(DropReason::NoRoute, || {
                format!("no peer's allowed_ips covers {dst}")
            });
        }
    }
    peer
}

/// TAP: a client sends everything to its server; a server learns the frame's source as
/// its own, and sends the frame to the peer its destination is behind or floods it to
/// every peer.
async fn switch_frame(
    shared: &Shared,
    table: &PeerTable,
    out: &mut Outbox,
    slot: usize,
    len: usize,
    now: Instant,
) {
    let Some((dst, src)) = switch::macs(out.packet(slot, len)) else {
        shared.drops.count(DropReason::Malformed);
        return;
    };
    if !shared.settings.server {
        if let Some(peer) = table.peers().next() {
            out.prepare(shared, peer, slot, len, now, false, true);
        }
        return;
    }
    shared.switch.learn(src, LOCAL, shared.stamp(now));
    let target = if switch::is_group(&dst) {
        None
    } else {
        shared.switch.lookup(&dst)
    };
    match target.map(|port| (port, table.get(port))) {
        Some((LOCAL, _)) => shared.drops.count(DropReason::Hairpin),
        Some((_, Some(peer))) => {
            out.prepare(shared, peer, slot, len, now, false, true);
        }
        _ => {
            for peer in table.peers().filter(|p| p.endpoint().is_some()) {
                if !out.has_room() {
                    out.flush(shared).await;
                }
                let copy = out.copy_slot(slot, len);
                out.prepare(shared, peer, copy, len, now, false, true);
            }
        }
    }
}
