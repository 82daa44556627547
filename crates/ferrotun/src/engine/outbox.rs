//! The outbox: the one way data is sealed and sent to peers.
//!
//! Packets lie in slots of one arena, each slot with room for the data header in front and
//! for padding and the tag behind ([`slot_len`]). The send path reads device packets
//! straight into the first [`SLOTS`] slots; frames the TAP switch passes on, flood copies
//! and packets that waited for a handshake are copied into the slots after them. Each
//! packet is [`Outbox::prepare`]d for its peer where it lies: compressed if the peer asked
//! for it and it shrinks, its counter taken and its header written. [`Outbox::flush`] then
//! seals all prepared messages, in runs of one keypair, with the AEAD's batch code, and
//! sends them in the order they were prepared: consecutive datagrams of one size to one
//! UDP address leave in one `sendmsg` with UDP GSO, TCP messages are appended to their
//! connection. A packet for a peer without a usable keypair is staged (bounded) and the
//! control task is asked for a handshake.

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ferrotun_device::Mode;
use ferrotun_device::vnet;
use ferrotun_proto::transport::TransportError;
use ferrotun_proto::wire::DATA_HEADER_LEN;
use ferrotun_proto::{Compressor, Keypair, PayloadFlags, Prepared};

use crate::stats::DropReason;

use super::addr::PeerAddr;
use super::peer::{MAX_STAGED, Peer, Tally};
use super::shared::{Shared, TRAILER};
use super::table::PeerTable;

/// Packets read from the device per wakeup: a 64 KiB super-segment is at most 46 packets
/// of 1420 bytes, so one fits whole. Also the most datagrams one GSO send carries here.
pub(crate) const SLOTS: usize = 64;

/// Bytes a sealed frame of up to `frame` bytes takes: header, frame, padding and tag.
pub(crate) fn slot_len(frame: usize) -> usize {
    DATA_HEADER_LEN + frame + TRAILER
}

/// A prepared message waiting for [`Outbox::flush`].
struct Queued {
    slot: usize,
    /// The datagram's length.
    len: usize,
    to: PeerAddr,
    /// False if its run could not be sealed: it is not sent.
    sealed: bool,
}

impl Queued {
    fn new(slot: usize, len: usize, to: PeerAddr) -> Queued {
        Queued {
            slot,
            len,
            to,
            sealed: true,
        }
    }
}

/// Per-peer LZ4 compressors (each adapts to its peer's traffic) and their output buffer.
#[derive(Default)]
struct Lz4 {
    compressors: HashMap<u32, Compressor>,
    scratch: Vec<u8>,
}

impl Lz4 {
    /// Compresses the packet of `len` bytes behind the header room of `buf` in place, if
    /// that makes it smaller; returns its new length.
    fn shrink(&mut self, peer: u32, buf: &mut [u8], len: usize) -> Option<usize> {
        if self.scratch.is_empty() {
            self.scratch = vec![0u8; ferrotun_proto::compress::compress_bound(buf.len()) + 64];
        }
        let c = self.compressors.entry(peer).or_default();
        let n = c.compress(
            &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len],
            &mut self.scratch,
        )?;
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + n].copy_from_slice(&self.scratch[..n]);
        Some(n)
    }
}

/// See the module docs. One per task that sends data.
pub(crate) struct Outbox {
    /// The slots, allocated on first use.
    arena: Vec<u8>,
    /// [`slot_len`] of the frame size.
    stride: usize,
    /// Slots `0..input` are filled in place by the owner; copies take the rest.
    input: usize,
    slots: usize,
    next_free: usize,
    /// The UDP socket (by task index) datagrams leave by.
    socket: usize,
    /// Prepared messages in order, and their AEAD work (the same order), in runs of one
    /// keypair: how many messages each run has.
    queue: Vec<Queued>,
    pending: Vec<Prepared>,
    runs: Vec<(usize, Arc<Keypair>)>,
    lz4: Lz4,
    /// The traffic of this batch's messages, added to their peers' counters at the flush.
    tally: Tally,
    /// The endpoint and keypair of the peer the last message went to: a batch for one
    /// peer loads them once, not per message (the two `ArcSwap` loads were about 3 % of
    /// the sending process's perf samples). Forgotten at the flush, so a new endpoint or
    /// keypair is used from the next batch on.
    seen: Option<Seen>,
}

struct Seen {
    peer: Arc<Peer>,
    endpoint: Option<PeerAddr>,
    keypair: Option<Arc<Keypair>>,
}

impl Outbox {
    /// An outbox for `shared`'s frame size that sends through UDP socket `socket`, with
    /// `input` slots its owner fills in place and `copies` slots for copies.
    pub(crate) fn new(shared: &Shared, socket: usize, input: usize, copies: usize) -> Outbox {
        let frame = shared.frame_len();
        let slots = input + copies;
        Outbox {
            arena: Vec::new(),
            stride: slot_len(frame),
            input,
            slots,
            next_free: input,
            socket,
            queue: Vec::with_capacity(slots),
            pending: Vec::with_capacity(slots),
            runs: Vec::new(),
            lz4: Lz4::default(),
            tally: Tally::sent(),
            seen: None,
        }
    }

    /// The arena, grown to hold slots `..=slot`: it grows to the most slots a flush ever
    /// held (an outbox that only forwards a few frames, or one that is never used, stays
    /// small).
    fn arena_to(&mut self, slot: usize) -> &mut [u8] {
        let need = (slot + 1) * self.stride;
        if self.arena.len() < need {
            self.arena.resize(need, 0);
        }
        &mut self.arena
    }

    /// The input slots, for the device to read packets into (each at `DATA_HEADER_LEN`).
    pub(crate) fn input_slots(&mut self) -> [&mut [u8]; SLOTS] {
        assert_eq!(
            self.input, SLOTS,
            "an outbox read into has SLOTS input slots"
        );
        let stride = self.stride;
        let mut chunks = self.arena_to(SLOTS - 1).chunks_exact_mut(stride);
        std::array::from_fn(|_| chunks.next().expect("the arena holds SLOTS input slots"))
    }

    /// The packet (without header room) of `len` bytes in slot `slot`.
    pub(crate) fn packet(&self, slot: usize, len: usize) -> &[u8] {
        let at = slot * self.stride + DATA_HEADER_LEN;
        &self.arena[at..at + len]
    }

    /// Whether a copy fits before the next [`Outbox::flush`].
    pub(crate) fn has_room(&self) -> bool {
        self.next_free < self.slots
    }

    /// Copies `packet` into a free slot and returns it; the caller checked
    /// [`Outbox::has_room`].
    pub(crate) fn copy_in(&mut self, packet: &[u8]) -> usize {
        let slot = self.take_slot();
        let at = slot * self.stride + DATA_HEADER_LEN;
        self.arena_to(slot)[at..at + packet.len()].copy_from_slice(packet);
        slot
    }

    /// Copies the packet of `len` bytes in slot `from` into a free slot and returns it;
    /// the caller checked [`Outbox::has_room`].
    pub(crate) fn copy_slot(&mut self, from: usize, len: usize) -> usize {
        let slot = self.take_slot();
        let (stride, h) = (self.stride, DATA_HEADER_LEN);
        self.arena_to(slot).copy_within(
            from * stride + h..from * stride + h + len,
            slot * stride + h,
        );
        slot
    }

    fn take_slot(&mut self) -> usize {
        assert!(self.has_room(), "the caller flushes a full outbox");
        self.next_free += 1;
        self.next_free - 1
    }

    /// Forgets the compressors of peers that are gone.
    pub(crate) fn forget_gone(&mut self, table: &PeerTable) {
        self.lz4
            .compressors
            .retain(|slot, _| table.get(*slot).is_some());
    }

    /// Prepares the packet of `len` bytes in slot `slot` for `peer` (see the module docs).
    /// `partial`: its TCP or UDP checksum is partial (the message says so). `compress`:
    /// it may be compressed (false for frames passed on as they came). Returns whether it
    /// was prepared (false: staged, or dropped and counted).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn prepare(
        &mut self,
        shared: &Shared,
        peer: &Arc<Peer>,
        slot: usize,
        len: usize,
        now: Instant,
        partial: bool,
        compress: bool,
    ) -> bool {
        let seen = seen_for(&mut self.seen, peer);
        let Some(to) = seen.endpoint.clone() else {
            shared.drop_for(peer, DropReason::NoEndpoint, || {
                format!("peer {} has not connected yet", peer.name())
            });
            return false;
        };
        let (stride, mtu) = (self.stride, shared.settings.mtu);
        let at = slot * stride;
        let Some(buf) = self.arena.get_mut(at..at + stride) else {
            // A slot nobody filled: the caller's mistake, and nothing to send.
            shared.drop_packet(DropReason::TooBig, || {
                format!("slot {slot} was never filled")
            });
            return false;
        };
        let Some(kp) = seen.keypair.as_ref().filter(|k| k.usable(now)) else {
            stage(shared, peer, buf, len, partial);
            return false;
        };
        let mut flags = match (shared.settings.mode, partial) {
            (Mode::Tap, _) => PayloadFlags::ETHERNET,
            (Mode::Tun, true) => PayloadFlags::PARTIAL_CHECKSUM,
            (Mode::Tun, false) => PayloadFlags::NONE,
        };
        let mut payload = len;
        if compress
            && peer.config.compress
            && let Some(n) = self.lz4.shrink(peer.slot, buf, len)
        {
            payload = n;
            flags = flags.union(PayloadFlags::COMPRESSED);
        }
        match kp.prepare(flags, payload, buf, mtu, at) {
            Ok(p) => {
                match self.runs.last_mut() {
                    Some((count, k)) if Arc::ptr_eq(k, kp) => *count += 1,
                    _ => self.runs.push((1, Arc::clone(kp))),
                }
                let len_out = p.datagram_len();
                self.queue.push(Queued::new(slot, len_out, to));
                self.pending.push(p);
                self.tally.count(peer, len, payload);
                peer.notes.sent.store(shared.stamp(now), Ordering::Relaxed);
                if kp.wants_rekey(now) {
                    peer.want_handshake(&shared.wake);
                }
                return true;
            }
            Err(TransportError::CounterExhausted) if payload == len => {
                stage(shared, peer, buf, len, partial);
            }
            Err(e) => shared.drop_for(peer, DropReason::TooBig, || {
                format!("sealing for {}: {e}", peer.name())
            }),
        }
        false
    }

    /// Seals every prepared message and sends them, in the order they were prepared. A
    /// run that cannot be sealed (it does not lie in the arena: a bug) is dropped, so that
    /// no plaintext goes out.
    pub(crate) async fn flush(&mut self, shared: &Shared) {
        self.tally.flush();
        self.seen = None;
        let mut first = 0;
        for (count, kp) in self.runs.drain(..) {
            if let Err(e) = kp.seal_prepared(&mut self.arena, self.pending.drain(..count)) {
                for q in &mut self.queue[first..first + count] {
                    q.sealed = false;
                    shared.drop_packet(DropReason::TooBig, || format!("sealing a batch: {e}"));
                }
            }
            first += count;
        }
        transmit(shared, self.socket, &self.arena, self.stride, &self.queue).await;
        self.queue.clear();
        self.next_free = self.input;
    }
}

/// `peer`'s endpoint and send keypair, loaded once per batch while the messages go to one
/// peer. What was missing is looked up again (a handshake may have completed during the
/// batch) rather than staging or dropping the rest on an old answer.
fn seen_for<'s>(seen: &'s mut Option<Seen>, peer: &Arc<Peer>) -> &'s Seen {
    if !seen.as_ref().is_some_and(|s| Arc::ptr_eq(&s.peer, peer)) {
        *seen = None;
    }
    let s = seen.get_or_insert_with(|| Seen {
        peer: Arc::clone(peer),
        endpoint: None,
        keypair: None,
    });
    if s.endpoint.is_none() {
        s.endpoint = peer.endpoint();
    }
    if s.keypair.is_none() {
        s.keypair = peer.send_keypair.load_full();
    }
    s
}

/// Sends the sealed messages of `queue` in order: runs of one size to one UDP address go
/// out in one GSO send (only the last of a run may be shorter).
async fn transmit(shared: &Shared, socket: usize, arena: &[u8], stride: usize, queue: &[Queued]) {
    let bytes = |q: &Queued| &arena[q.slot * stride..q.slot * stride + q.len];
    let mut run = [IoSlice::new(&[]); SLOTS];
    let mut i = 0;
    while i < queue.len() {
        let q = &queue[i];
        i += 1;
        if !q.sealed {
            continue;
        }
        let dest = match &q.to {
            PeerAddr::Udp(d) => *d,
            PeerAddr::Tcp(conn) => {
                shared.send_frame(conn, bytes(q));
                continue;
            }
        };
        let Some(udp) = shared.udp(socket) else {
            shared.drops.count(DropReason::SendFailed);
            continue;
        };
        let max = udp.segments_for(q.len).min(SLOTS);
        run[0] = IoSlice::new(bytes(q));
        let mut n = 1;
        while i < queue.len() && n < max {
            match &queue[i] {
                next @ Queued {
                    to: PeerAddr::Udp(d),
                    sealed: true,
                    ..
                } if *d == dest && next.len <= q.len => {
                    run[n] = IoSlice::new(bytes(next));
                    n += 1;
                    i += 1;
                    if next.len < q.len {
                        break;
                    }
                }
                _ => break,
            }
        }
        if let Err(e) = udp.send_segments(dest, &run[..n], q.len).await {
            shared.drop_packet(DropReason::SendFailed, || format!("sending to {dest}: {e}"));
            for _ in 1..n {
                shared.drops.count(DropReason::SendFailed);
            }
        }
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
            shared.count_for(peer, DropReason::QueueFull);
        }
        staged.push_back(buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len].to_vec());
    }
    peer.want_handshake(&shared.wake);
}
