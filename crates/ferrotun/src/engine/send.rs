//! The send path: packets from the device to peers.
//!
//! Reads up to [`SLOTS`] packets per wakeup (with TUN offloads, TCP super-segments cut back
//! into packets) into one arena with a fixed stride, each with room for the data header in
//! front and for padding and the tag behind. Each packet is routed to its peer, compressed
//! if the peer asked for it and it shrinks, and prepared in place (counter, header,
//! padding); at the end of the batch the prepared packets are sealed together, in runs of
//! one keypair, with the AEAD's batch code. Then the batch goes out:
//! consecutive datagrams of one size to one UDP address leave in one `sendmsg` with UDP
//! GSO, gathered from their slots, and TCP messages are appended to their connection. A
//! packet for a peer without a usable keypair is staged (bounded) and the control task is
//! asked for a handshake.

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use ferrotun_device::Mode;
use ferrotun_device::vnet;
use ferrotun_proto::transport::TransportError;
use ferrotun_proto::wire::DATA_HEADER_LEN;
use ferrotun_proto::{Compressor, Keypair, PayloadFlags, Prepared};

use super::switch::{self, LOCAL};
use super::{PeerAddr, PeerTable, Shared, TRAILER, Turn};
use crate::peer::{MAX_STAGED, Peer};
use crate::routing::ip_destination;
use crate::stats::{DropReason, Tally};

/// Whom [`Sealer::seal_or_prepare`] works for: one message sealed at once, or a message of
/// the batch, prepared in its slot.
#[derive(Clone, Copy)]
enum Sealing<'p> {
    One(&'p Peer),
    /// The peer, the slot, and whether the packet's checksum is partial.
    Batch(&'p Arc<Peer>, usize, bool),
}

/// Packets read from the device per wakeup: a 64 KiB super-segment is at most 46 packets
/// of 1420 bytes, so one fits whole.
pub const SLOTS: usize = 64;

/// Bytes a sealed frame of up to `frame` bytes takes: header, frame, padding and tag. The
/// send path's batch slots are this long.
pub fn slot_len(frame: usize) -> usize {
    DATA_HEADER_LEN + frame + TRAILER
}

/// Per-task state for sealing: compressors of the peers that compress, scratch, and the
/// messages of the current batch that wait to be sealed together.
pub struct Sealer {
    compressors: HashMap<u32, Compressor>,
    scratch: Vec<u8>,
    /// [`slot_len`] of the frame size: where batch slot `i` starts in the batch's buffer.
    stride: usize,
    /// Messages [`Sealer::prepare`]d this batch, in order, and the slot of each.
    pending: Vec<Prepared>,
    slots: Vec<usize>,
    /// Runs of `pending` under one keypair, in order: how many messages each has.
    runs: Vec<(usize, Arc<Keypair>)>,
    /// The traffic of this batch's prepared messages, added to their peers' counters in
    /// [`Sealer::finish`].
    tally: Tally,
    /// The endpoint and keypair of the peer this batch's last message went to: a batch
    /// for one peer loads them once, not per message (the two `ArcSwap` loads were about
    /// 3 % of the sending process's perf samples). Emptied in [`Sealer::finish`], so a
    /// new endpoint or keypair is used from the next batch on.
    seen: Option<Seen>,
}

/// See [`Sealer::seen`].
struct Seen {
    peer: Arc<Peer>,
    endpoint: Option<PeerAddr>,
    keypair: Option<Arc<Keypair>>,
}

impl Sealer {
    /// A sealer for frames up to `frame` bytes.
    pub fn new(frame: usize) -> Sealer {
        Sealer {
            compressors: HashMap::new(),
            scratch: vec![0u8; ferrotun_proto::compress::compress_bound(frame) + 64],
            stride: slot_len(frame),
            pending: Vec::with_capacity(SLOTS),
            slots: Vec::with_capacity(SLOTS),
            runs: Vec::new(),
            tally: Tally::sent(),
            seen: None,
        }
    }

    /// Seals the packet at `buf[16..16 + len]` for `peer` in place; returns the datagram's
    /// length and where it goes, or `None` when it was staged or dropped. `compress` is
    /// false for packets that are being switched on (they go as they came).
    pub fn seal(
        &mut self,
        shared: &Shared,
        peer: &Peer,
        buf: &mut [u8],
        len: usize,
        now: Instant,
        compress: bool,
    ) -> Option<(usize, PeerAddr)> {
        self.seal_or_prepare(shared, Sealing::One(peer), buf, len, now, compress)
    }

    /// As [`Sealer::seal`], but the encryption waits for [`Sealer::finish`], which seals
    /// all messages prepared since in a few AEAD calls (see
    /// [`Keypair::seal_prepared`]). `buf` is batch slot `slot` (at `slot` times
    /// [`slot_len`] in the buffer `finish` gets); until then it holds the header and the
    /// padded plaintext. `partial`: the IP packet's checksum is partial (the message says
    /// so, or the packet gets its full checksum if it has to wait for a handshake).
    #[allow(clippy::too_many_arguments)]
    pub fn prepare(
        &mut self,
        shared: &Shared,
        peer: &Arc<Peer>,
        buf: &mut [u8],
        len: usize,
        now: Instant,
        slot: usize,
        partial: bool,
    ) -> Option<(usize, PeerAddr)> {
        let to = Sealing::Batch(peer, slot, partial);
        self.seal_or_prepare(shared, to, buf, len, now, true)
    }

    /// Seals the messages prepared since the last call, in `buf`. A run that cannot be
    /// sealed (it does not lie in `buf`: a bug) is dropped, its entries in `sealed` (by
    /// slot) set to `None`, so that no plaintext goes out.
    pub fn finish(
        &mut self,
        shared: &Shared,
        buf: &mut [u8],
        sealed: &mut [Option<(usize, PeerAddr)>],
    ) {
        self.tally.flush();
        self.seen = None;
        for (count, kp) in self.runs.drain(..) {
            let slots = self.slots.drain(..count);
            if let Err(e) = kp.seal_prepared(buf, self.pending.drain(..count)) {
                for slot in slots {
                    sealed[slot] = None;
                    shared.drop_packet(DropReason::TooBig, || format!("sealing a batch: {e}"));
                }
            }
        }
    }

    /// [`Sealer::seal`] or [`Sealer::prepare`], as `to` says.
    fn seal_or_prepare(
        &mut self,
        shared: &Shared,
        to: Sealing<'_>,
        buf: &mut [u8],
        len: usize,
        now: Instant,
        compress: bool,
    ) -> Option<(usize, PeerAddr)> {
        match to {
            Sealing::One(peer) => {
                let keypair = peer.send_keypair.load();
                let found = (peer.endpoint(), keypair.as_ref());
                self.seal_with(shared, to, found, buf, len, now, compress)
            }
            Sealing::Batch(peer, ..) => {
                let mut seen = match self.seen.take() {
                    Some(s) if Arc::ptr_eq(&s.peer, peer) => s,
                    _ => Seen {
                        peer: Arc::clone(peer),
                        endpoint: peer.endpoint(),
                        keypair: peer.send_keypair.load_full(),
                    },
                };
                // What was missing may have come since (a handshake that completed
                // during the batch): looked up again rather than staging or dropping the
                // rest of the batch on an old answer.
                if seen.endpoint.is_none() {
                    seen.endpoint = peer.endpoint();
                }
                if seen.keypair.is_none() {
                    seen.keypair = peer.send_keypair.load_full();
                }
                let found = (seen.endpoint.clone(), seen.keypair.as_ref());
                let r = self.seal_with(shared, to, found, buf, len, now, compress);
                self.seen = Some(seen);
                r
            }
        }
    }

    /// [`Sealer::seal_or_prepare`] with the peer's endpoint and send keypair found.
    #[allow(clippy::too_many_arguments)]
    fn seal_with(
        &mut self,
        shared: &Shared,
        to: Sealing<'_>,
        (endpoint, keypair): (Option<PeerAddr>, Option<&Arc<Keypair>>),
        buf: &mut [u8],
        len: usize,
        now: Instant,
        compress: bool,
    ) -> Option<(usize, PeerAddr)> {
        let (peer, partial): (&Peer, bool) = match to {
            Sealing::One(p) => (p, false),
            Sealing::Batch(p, _, partial) => (p, partial),
        };
        let Some(ep) = endpoint else {
            shared.drop_for(peer, DropReason::NoEndpoint, || {
                format!("peer {} has not connected yet", peer.name())
            });
            return None;
        };
        let mut flags = if shared.mode == Mode::Tap {
            PayloadFlags::ETHERNET
        } else if partial {
            PayloadFlags::PARTIAL_CHECKSUM
        } else {
            PayloadFlags::NONE
        };
        let Some(kp) = keypair.filter(|k| k.usable(now)) else {
            stage(shared, peer, buf, len, partial);
            return None;
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
        let sealed = match to {
            Sealing::One(_) => kp.seal(flags, payload, buf, shared.mtu),
            Sealing::Batch(_, slot, _) => {
                let at = slot * self.stride;
                kp.prepare(flags, payload, buf, shared.mtu, at).map(|p| {
                    let n = p.datagram_len();
                    match self.runs.last_mut() {
                        Some((count, k)) if Arc::ptr_eq(k, kp) => *count += 1,
                        _ => self.runs.push((1, Arc::clone(kp))),
                    }
                    self.pending.push(p);
                    self.slots.push(slot);
                    n
                })
            }
        };
        match sealed {
            Ok(n) => {
                match to {
                    Sealing::One(_) => peer.traffic.sent(len, payload),
                    Sealing::Batch(p, _, _) => self.tally.count(p, len, payload),
                }
                peer.notes.sent.store(shared.stamp(now), Ordering::Relaxed);
                if kp.wants_rekey(now) && !peer.notes.wants_handshake.swap(true, Ordering::AcqRel) {
                    peer.mark();
                    shared.wake.notify_one();
                }
                Some((n, ep))
            }
            Err(TransportError::CounterExhausted) if payload == len => {
                stage(shared, peer, buf, len, partial);
                None
            }
            Err(e) => {
                shared.drop_for(peer, DropReason::TooBig, || {
                    format!("sealing for {}: {e}", peer.name())
                });
                None
            }
        }
    }

    /// Seals and sends at once (for frames the TAP switch passes on).
    pub async fn seal_and_send(
        &mut self,
        shared: &Shared,
        peer: &Peer,
        buf: &mut [u8],
        len: usize,
        now: Instant,
        compress: bool,
    ) {
        if let Some((n, ep)) = self.seal(shared, peer, buf, len, now, compress) {
            shared.transmit(&buf[..n], &ep).await;
        }
    }

    /// Forgets compressors of peers that are gone.
    pub fn retain(&mut self, table: &PeerTable) {
        self.compressors
            .retain(|slot, _| table.get(*slot).is_some());
    }
}

/// Keeps a packet until a handshake completes, and asks for one. A staged packet is sent
/// later as a plain IP packet, so a partial checksum is completed first.
fn stage(shared: &Shared, peer: &Peer, buf: &mut [u8], len: usize, partial: bool) {
    if partial {
        let packet = &mut buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len];
        vnet::complete_checksum(packet, vnet::Layer::Ip);
    }
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
/// With several queues, task `index` reads queue `index` and sends through UDP socket
/// `index`.
pub async fn send_path(shared: Arc<Shared>, index: usize) -> anyhow::Result<()> {
    let frame = shared.frame_len();
    let stride = slot_len(frame);
    let mut arena = vec![0u8; SLOTS * stride];
    let mut lens = [0usize; SLOTS];
    let mut sealed: Vec<Option<(usize, PeerAddr)>> = Vec::with_capacity(SLOTS);
    let mut sealer = Sealer::new(frame);
    let mut flood = vec![0u8; stride];
    let mut reader = shared.device_reader();
    let mut table_seen = 0usize;
    let mut turn = Turn::new(Instant::now());
    loop {
        let n = {
            let mut chunks = arena.chunks_exact_mut(stride);
            let mut slots: [&mut [u8]; SLOTS] =
                std::array::from_fn(|_| chunks.next().expect("the arena holds SLOTS slots"));
            let q = shared.tun.queue(index);
            let r = match reader.as_mut() {
                Some(r) => {
                    turn.wait(r.recv_batch(q, &mut slots, DATA_HEADER_LEN, &mut lens))
                        .await
                }
                None => {
                    turn.wait(q.recv_batch(&mut slots, DATA_HEADER_LEN, &mut lens))
                        .await
                }
            };
            match r {
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
            }
        };
        shared.queue_packets[index].fetch_add(n as u64, Ordering::Relaxed);
        let now = Instant::now();
        let table = shared.table.load_full();
        let addr = Arc::as_ptr(&table) as usize;
        if addr != table_seen {
            sealer.retain(&table);
            table_seen = addr;
        }
        sealed.clear();
        for (i, &len) in lens.iter().enumerate().take(n) {
            let buf = &mut arena[i * stride..(i + 1) * stride];
            let out = if len == 0 {
                None
            } else if len > frame {
                shared.drop_packet(DropReason::TooBig, || {
                    format!("{len}-byte packet from the device exceeds the MTU")
                });
                None
            } else {
                match shared.mode {
                    Mode::Tun => route_ip(&shared, &table, buf, len).and_then(|peer| {
                        let partial = reader
                            .as_ref()
                            .is_some_and(|r| r.partial().get(i) == Some(&true));
                        sealer.prepare(&shared, peer, buf, len, now, i, partial)
                    }),
                    Mode::Tap => {
                        send_frame(&shared, &table, &mut sealer, buf, len, i, &mut flood, now).await
                    }
                }
            };
            sealed.push(out);
        }
        sealer.finish(&shared, &mut arena, &mut sealed);
        transmit_batch(&shared, index, &arena, stride, &sealed).await;
        turn.next_batch().await;
    }
}

/// Sends a batch of sealed datagrams, `sealed[i]` at `arena[i * stride..]`: runs of one
/// size to one UDP address go out in one GSO send.
async fn transmit_batch(
    shared: &Shared,
    index: usize,
    arena: &[u8],
    stride: usize,
    sealed: &[Option<(usize, PeerAddr)>],
) {
    let mut run = [IoSlice::new(&[]); SLOTS];
    let mut i = 0;
    while i < sealed.len() {
        let Some((len, ep)) = &sealed[i] else {
            i += 1;
            continue;
        };
        let (len, start) = (*len, i * stride);
        let dest = match ep {
            PeerAddr::Udp(d) => *d,
            PeerAddr::Tcp(_) => {
                shared.transmit(&arena[start..start + len], ep).await;
                i += 1;
                continue;
            }
        };
        let Some(udp) = shared.udp(index) else {
            shared.drops.count(DropReason::SendFailed);
            i += 1;
            continue;
        };
        let max = udp.segments_for(len).min(SLOTS);
        run[0] = IoSlice::new(&arena[start..start + len]);
        let mut j = i + 1;
        while j < sealed.len() && j - i < max {
            match &sealed[j] {
                Some((l, PeerAddr::Udp(d))) if *d == dest && *l <= len => {
                    run[j - i] = IoSlice::new(&arena[j * stride..j * stride + *l]);
                    j += 1;
                    if *l < len {
                        break; // only the last segment may be shorter
                    }
                }
                _ => break,
            }
        }
        if let Err(e) = udp.send_segments(dest, &run[..j - i], len).await {
            shared.drop_packet(DropReason::SendFailed, || format!("sending to {dest}: {e}"));
        }
        i = j;
    }
}

fn route_ip<'t>(
    shared: &Shared,
    table: &'t PeerTable,
    buf: &[u8],
    len: usize,
) -> Option<&'t Arc<Peer>> {
    let packet = &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len];
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

/// TAP: a client sends everything to its server; a server switches by MAC. Frames that
/// flood are sent from here; a unicast frame is prepared in place (batch slot `slot`) and
/// returned for the batch.
#[allow(clippy::too_many_arguments)]
async fn send_frame(
    shared: &Shared,
    table: &PeerTable,
    sealer: &mut Sealer,
    buf: &mut [u8],
    len: usize,
    slot: usize,
    flood: &mut [u8],
    now: Instant,
) -> Option<(usize, PeerAddr)> {
    let Some((dst, src)) = switch::macs(&buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len]) else {
        shared.drops.count(DropReason::Malformed);
        return None;
    };
    if !shared.server {
        let peer = table.peers().next()?;
        return sealer.prepare(shared, peer, buf, len, now, slot, false);
    }
    shared.switch.learn(src, LOCAL, shared.stamp(now));
    let target = if switch::is_group(&dst) {
        None
    } else {
        shared.switch.lookup(&dst)
    };
    match target.map(|slot| (slot, table.get(slot))) {
        Some((LOCAL, _)) => {
            shared.drops.count(DropReason::Hairpin);
            None
        }
        Some((_, Some(peer))) => sealer.prepare(shared, peer, buf, len, now, slot, false),
        _ => {
            flood_to_peers(shared, table, sealer, buf, len, flood, None, now).await;
            None
        }
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
