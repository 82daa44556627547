//! The send path: packets from the device to peers.
//!
//! Reads a batch of packets into buffers that leave room for the data header in front
//! and for padding and the tag behind, picks each packet's peer, compresses it if the peer
//! asked for compression and it shrinks, seals it in place and sends it. A packet for a
//! peer without a usable keypair is staged (bounded) and the control task is asked for a
//! handshake.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use ferrotun_device::Mode;
use ferrotun_proto::session::{REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME};
use ferrotun_proto::transport::TransportError;
use ferrotun_proto::wire::DATA_HEADER_LEN;
use ferrotun_proto::{Compressor, PayloadFlags};

use super::switch::{self, LOCAL};
use super::{PeerTable, Shared, TRAILER};
use crate::peer::{MAX_STAGED, Peer};
use crate::routing::ip_destination;
use crate::stats::DropReason;

/// Packets read from the device per wakeup.
const BATCH: usize = 32;

/// Per-task state for sealing: compressors of the peers that compress, and scratch.
pub struct Sealer {
    compressors: HashMap<u32, Compressor>,
    scratch: Vec<u8>,
}

impl Sealer {
    /// A sealer for frames up to `frame` bytes.
    pub fn new(frame: usize) -> Sealer {
        Sealer {
            compressors: HashMap::new(),
            scratch: vec![0u8; ferrotun_proto::compress::compress_bound(frame) + 64],
        }
    }

    /// Seals the packet at `buf[16..16 + len]` for `peer` and sends it, or stages it.
    /// `compress` is false for packets that are being switched on (they go as they came).
    pub async fn seal_and_send(
        &mut self,
        shared: &Shared,
        peer: &Peer,
        buf: &mut [u8],
        len: usize,
        now: Instant,
        compress: bool,
    ) {
        let Some(ep) = peer.endpoint() else {
            shared.drop_for(peer, DropReason::NoEndpoint, || {
                format!("peer {} has not connected yet", peer.name())
            });
            return;
        };
        let mut flags = if shared.mode == Mode::Tap {
            PayloadFlags::ETHERNET
        } else {
            PayloadFlags::NONE
        };
        let keypair = peer.send_keypair.load();
        let Some(kp) = keypair
            .as_deref()
            .filter(|k| now < k.created() + REJECT_AFTER_TIME)
        else {
            stage(shared, peer, buf, len);
            return;
        };
        let mut payload = len;
        if compress && peer.config.compress {
            let c = self.compressors.entry(peer.slot).or_default();
            let src = &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len];
            if let Some(n) = c.compress(src, &mut self.scratch) {
                buf[DATA_HEADER_LEN..DATA_HEADER_LEN + n].copy_from_slice(&self.scratch[..n]);
                payload = n;
                flags = flags.union(PayloadFlags::COMPRESSED);
            }
        }
        match kp.seal(flags, payload, buf, shared.mtu) {
            Ok(n) => {
                shared.transmit(&buf[..n], &ep).await;
                peer.traffic.sent(len, payload);
                peer.notes.sent.store(shared.stamp(now), Ordering::Relaxed);
                let stale = (kp.is_initiator() && now >= kp.created() + REKEY_AFTER_TIME)
                    || kp.send_counter() > REKEY_AFTER_MESSAGES;
                if stale && !peer.notes.wants_handshake.swap(true, Ordering::AcqRel) {
                    peer.mark();
                    shared.wake.notify_one();
                }
            }
            Err(TransportError::CounterExhausted) => {
                if payload != len {
                    // Staged packets are sealed later without compression: undo it.
                    shared.drops.count(DropReason::QueueFull);
                    return;
                }
                stage(shared, peer, buf, len);
            }
            Err(e) => shared.drop_packet(DropReason::TooBig, || {
                format!("sealing for {}: {e}", peer.name())
            }),
        }
    }

    /// Forgets compressors of peers that are gone.
    pub fn retain(&mut self, table: &PeerTable) {
        self.compressors
            .retain(|slot, _| table.get(*slot).is_some());
    }
}

/// Keeps a packet until a handshake completes, and asks for one.
fn stage(shared: &Shared, peer: &Peer, buf: &[u8], len: usize) {
    {
        let mut staged = peer.staged();
        if staged.len() >= MAX_STAGED {
            staged.pop_front();
            peer.drops.count(DropReason::QueueFull);
            shared.drops.count(DropReason::QueueFull);
        }
        let mut v = Vec::with_capacity(DATA_HEADER_LEN + len + TRAILER);
        v.extend_from_slice(&buf[..DATA_HEADER_LEN + len]);
        v.resize(DATA_HEADER_LEN + len + TRAILER, 0);
        staged.push_back(v);
    }
    if !peer.notes.wants_handshake.swap(true, Ordering::AcqRel) {
        peer.mark();
        shared.wake.notify_one();
    }
}

/// Reads packets from the device and sends them to their peers until the device fails.
pub async fn send_path(shared: Arc<Shared>) -> anyhow::Result<()> {
    let frame = shared.frame_len();
    let buf_len = DATA_HEADER_LEN + frame + TRAILER;
    let mut bufs = vec![vec![0u8; buf_len]; BATCH];
    let mut lens = [0usize; BATCH];
    let mut sealer = Sealer::new(frame);
    let mut flood = vec![0u8; buf_len];
    let mut table_seen = 0usize;
    loop {
        let n = shared
            .tun
            .recv_batch(&mut bufs, DATA_HEADER_LEN, &mut lens)
            .await
            .context("reading from the device")?;
        let now = Instant::now();
        let table = shared.table.load_full();
        let addr = Arc::as_ptr(&table) as usize;
        if addr != table_seen {
            sealer.retain(&table);
            table_seen = addr;
        }
        for (buf, &len) in bufs.iter_mut().zip(&lens).take(n) {
            if len == 0 {
                continue;
            }
            if len > frame {
                shared.drop_packet(DropReason::TooBig, || {
                    format!("{len}-byte packet from the device exceeds the MTU")
                });
                continue;
            }
            match shared.mode {
                Mode::Tun => send_ip(&shared, &table, &mut sealer, buf, len, now).await,
                Mode::Tap => {
                    send_frame(&shared, &table, &mut sealer, buf, len, &mut flood, now).await
                }
            }
        }
    }
}

async fn send_ip(
    shared: &Shared,
    table: &PeerTable,
    sealer: &mut Sealer,
    buf: &mut [u8],
    len: usize,
    now: Instant,
) {
    let packet = &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len];
    let Some(dst) = ip_destination(packet) else {
        shared.drops.count(DropReason::NoRoute);
        return;
    };
    let Some(peer) = table.routes.lookup(dst).and_then(|s| table.get(*s)) else {
        // The host's own multicast (router solicitations, MLD) is routine: counted quietly.
        if dst.is_multicast() {
            shared.drops.count(DropReason::NoRoute);
        } else {
            shared.drop_packet(DropReason::NoRoute, || {
                format!("no peer's allowed_ips covers {dst}")
            });
        }
        return;
    };
    sealer
        .seal_and_send(shared, peer, buf, len, now, true)
        .await;
}

async fn send_frame(
    shared: &Shared,
    table: &PeerTable,
    sealer: &mut Sealer,
    buf: &mut [u8],
    len: usize,
    flood: &mut [u8],
    now: Instant,
) {
    let Some((dst, src)) = switch::macs(&buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len]) else {
        shared.drops.count(DropReason::Malformed);
        return;
    };
    if !shared.server {
        // A client has one port: the server.
        if let Some(peer) = table.peers().next() {
            sealer
                .seal_and_send(shared, peer, buf, len, now, true)
                .await;
        }
        return;
    }
    shared.switch.learn(src, LOCAL, shared.stamp(now));
    let target = if switch::is_group(&dst) {
        None
    } else {
        shared.switch.lookup(&dst)
    };
    match target {
        Some(LOCAL) => shared.drops.count(DropReason::Hairpin),
        Some(slot) => match table.get(slot) {
            Some(peer) => {
                sealer
                    .seal_and_send(shared, peer, buf, len, now, true)
                    .await
            }
            None => flood_to_peers(shared, table, sealer, buf, len, flood, None, now).await,
        },
        None => flood_to_peers(shared, table, sealer, buf, len, flood, None, now).await,
    }
}

/// Sends a frame to every peer except `except`, each from its own copy (sealing works in
/// place).
#[allow(clippy::too_many_arguments)]
pub async fn flood_to_peers(
    shared: &Shared,
    table: &PeerTable,
    sealer: &mut Sealer,
    buf: &[u8],
    len: usize,
    scratch: &mut [u8],
    except: Option<u32>,
    now: Instant,
) {
    for peer in table.peers() {
        if Some(peer.slot) == except || peer.endpoint().is_none() {
            continue;
        }
        scratch[..DATA_HEADER_LEN + len].copy_from_slice(&buf[..DATA_HEADER_LEN + len]);
        sealer
            .seal_and_send(shared, peer, scratch, len, now, except.is_none())
            .await;
    }
}
