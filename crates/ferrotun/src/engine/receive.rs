//! The receive path: messages from the network to the device (or, for a TAP server, on to
//! another peer).
//!
//! One function, [`receive_one`], handles a message whatever carried it (a UDP datagram,
//! a TCP frame). Data is opened in place with the keypair its receiver index names;
//! handshake messages go to the control task. Only an authenticated message changes
//! anything: the peer's address (roaming), its timers, the MAC table.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use ferrotun_device::Mode;
use ferrotun_device::vnet::{self, Layer};
use ferrotun_proto::transport::TransportError;
use ferrotun_proto::wire::{
    DATA_HEADER_LEN, DataMessage, TYPE_COOKIE_REPLY, TYPE_DATA, TYPE_INITIATION, TYPE_RESPONSE,
};
use ferrotun_proto::{Keypair, Message, Opened, PayloadFlags, Received, SessionIndex};

use super::control::Inbound;
use super::send::{Sealer, flood_to_peers};
use super::switch::{self, LOCAL};
use super::{PeerTable, Shared, Source, Turn, canonical};
use crate::peer::Peer;
use crate::routing::ip_source;
use crate::stats::{DropReason, Tally};

/// Scratch a receiving task needs: the packets of the current batch that wait to be
/// written to the device, room to decompress, and to re-seal frames it switches.
pub struct ReceiveScratch {
    /// The time to stamp this batch's messages with (one clock read per batch).
    pub now: Instant,
    /// The device queue this task writes to.
    queue: usize,
    /// Packets for the device, in the order their messages arrived: in place in the
    /// caller's buffers, or decompressed into `arena`. Written in that order, so a
    /// compressed packet cannot overtake an uncompressed one sent before it.
    deliveries: Vec<Delivery>,
    /// This batch's decompressed packets, each behind [`HEADROOM`] bytes, in
    /// `arena[..used]`. The vector only grows (to its high-water mark), so decompressing
    /// into it never zeroes memory again.
    arena: Vec<u8>,
    used: usize,
    /// The most one decompressed packet takes in `arena`, headroom included.
    slot: usize,
    lens: Vec<usize>,
    /// Whether each packet of a batch for the writer has a partial checksum.
    partial: Vec<bool>,
    fwd: Forwarder,
    /// What this batch's data messages found so far, so that a batch of one peer's
    /// datagrams loads the peer table, the peer's keypairs and its endpoint once, not once
    /// per message. Emptied when the batch ends ([`flush`](Self::flush)): a new table or
    /// keypair is seen from the next batch on, and nothing is kept alive between batches.
    seen: Seen,
    /// What opening the message now being handled gave, when it was opened ahead with the
    /// other data messages of its buffer (its payload range in the message); taken by
    /// `receive_data`.
    ahead: Option<Opened>,
    /// The outcomes of a buffer's messages opened ahead, by where each starts in the
    /// buffer, in order; and the message ranges of one run, for `Keypair::open_many`.
    opened: VecDeque<(usize, Opened)>,
    run: Vec<Received>,
    outcomes: Vec<Opened>,
    /// The traffic of this batch's packets for the device, added to their peers' counters
    /// when the batch is flushed.
    tally: Tally,
}

/// See [`ReceiveScratch::seen`].
#[derive(Default)]
struct Seen {
    /// The peer table.
    table: Option<Arc<PeerTable>>,
    /// The last keypair a data message named, with its index.
    keypair: Option<(u32, Arc<Keypair>)>,
    /// The peer (slot) whose endpoint an authenticated message set, and where it came from.
    endpoint: Option<(u32, Path)>,
}

/// A path a message came by, as [`PeerAddr::same`](super::PeerAddr::same) compares them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Udp(std::net::SocketAddr),
    Tcp(u64),
}

impl Path {
    fn of(src: &Source<'_>) -> Path {
        match src {
            Source::Udp(a) => Path::Udp(*a),
            Source::Tcp(c) => Path::Tcp(c.id),
        }
    }
}

/// What switching a frame on to other peers needs.
struct Forwarder {
    forward: Vec<u8>,
    flood: Vec<u8>,
    sealer: Sealer,
}

/// Bytes of decompressed packets one batch may hold before they are written out early: a
/// burst of small compressed messages must not grow a task's memory without bound.
const ARENA_LIMIT: usize = 256 * 1024;

/// [`Delivery::buf`] of a packet in the scratch's arena.
const ARENA: usize = usize::MAX;

impl ReceiveScratch {
    /// Scratch for `shared`'s frame size, for a task that writes to device queue `queue`
    /// (a UDP receive task's own queue, so that all of a flow's packets enter the device
    /// through one queue).
    pub fn new(shared: &Shared, queue: usize) -> ReceiveScratch {
        let frame = shared.frame_len();
        let sealed = super::send::slot_len(frame);
        ReceiveScratch {
            now: Instant::now(),
            queue,
            deliveries: Vec::with_capacity(RX_BUFFERS * 64),
            arena: Vec::new(),
            used: 0,
            slot: HEADROOM + shared.plain_len(),
            lens: Vec::with_capacity(RX_BUFFERS * 64),
            partial: Vec::with_capacity(RX_BUFFERS * 64),
            fwd: Forwarder {
                forward: vec![0u8; sealed],
                flood: vec![0u8; sealed],
                sealer: Sealer::new(frame),
            },
            seen: Seen::default(),
            ahead: None,
            tally: Tally::received(),
            opened: VecDeque::with_capacity(64),
            run: Vec::with_capacity(64),
            outcomes: Vec::with_capacity(64),
        }
    }

    /// The peer table this batch uses (loaded once per batch).
    fn table(&mut self, shared: &Shared) -> Arc<PeerTable> {
        Arc::clone(
            self.seen
                .table
                .get_or_insert_with(|| shared.table.load_full()),
        )
    }

    /// `peer`'s receiving keypair with index `receiver` (the last one looked up is kept for
    /// the batch).
    fn keypair(&mut self, peer: &Peer, receiver: u32) -> Option<Arc<Keypair>> {
        find_keypair(&mut self.seen.keypair, peer, receiver).cloned()
    }

    /// Opens the data messages among the messages `ranges` of `buf` (the datagrams of a
    /// GRO read, or the frames of a TCP read; in order, apart) ahead of handling them,
    /// each run of one keypair in one [`Keypair::open_many`] call: the AEAD then works on
    /// many messages at once. Only messages whose keypair is known and unexpired are
    /// opened; `receive_data` finds the outcome of each through
    /// [`ReceiveScratch::take_ahead`] and handles the rest (and every drop) itself, as it
    /// would without this.
    pub fn open_ahead(
        &mut self,
        shared: &Shared,
        buf: &mut [u8],
        ranges: impl IntoIterator<Item = Range<usize>>,
    ) {
        self.opened.clear();
        let mut current: Option<(u32, Arc<Keypair>)> = None;
        for Range { start: at, end } in ranges {
            let Some(msg) = buf.get(at..end) else {
                continue;
            };
            let parsed = Received::parse(msg, at).ok();
            let receiver = parsed.as_ref().map(|m| m.header.receiver);
            let same = matches!((receiver, &current), (Some(r), Some((i, _))) if r == *i);
            if !same {
                let kp = receiver.and_then(|receiver| {
                    let table = self.table(shared);
                    let peer = table.get(SessionIndex::of_receiver(receiver).slot())?;
                    let kp = self.keypair(peer, receiver)?;
                    kp.usable(self.now).then_some((receiver, kp))
                });
                self.open_run(buf, current.take());
                current = kp;
            }
            if let (Some(_), Some(m)) = (&current, parsed) {
                self.run.push(m);
            }
        }
        self.open_run(buf, current);
    }

    /// Opens the run of messages gathered by `open_ahead` with `kp`, and queues their
    /// outcomes. A run of fewer than [`MIN_AHEAD`] is left to `receive_data`.
    fn open_run(&mut self, buf: &mut [u8], kp: Option<(u32, Arc<Keypair>)>) {
        if let Some((_, kp)) = kp
            && self.run.len() >= MIN_AHEAD
        {
            kp.open_many(buf, &self.run, &mut self.outcomes);
            for (m, o) in self.run.iter().zip(self.outcomes.drain(..)) {
                let r = &m.at;
                let relative = o.map(|(f, p)| (f, p.start - r.start..p.end - r.start));
                self.opened.push_back((r.start, relative));
            }
        }
        self.run.clear();
    }

    /// Makes the outcome of the message at `at` in its buffer, if it was opened ahead, the
    /// one `receive_data` uses.
    pub fn take_ahead(&mut self, at: usize) {
        self.ahead = None;
        while let Some((start, _)) = self.opened.front() {
            if *start > at {
                break;
            }
            let (start, o) = self.opened.pop_front().expect("front() was Some");
            if start == at {
                self.ahead = Some(o);
            }
        }
    }

    /// The device queue this task writes to.
    pub fn queue(&self) -> usize {
        self.queue
    }

    /// Starts a batch: one clock read for all its messages.
    pub fn begin_batch(&mut self) {
        self.now = Instant::now();
    }

    /// Queues the packet that [`Verdict::Deliver`] left at `bufs[buf][start..start + len]`.
    pub fn deliver(&mut self, buf: usize, start: usize, len: usize, partial: bool) {
        self.deliveries.push(Delivery {
            buf,
            start,
            len,
            partial,
        });
    }

    /// Whether the arena might not hold the next message's packet: the caller then
    /// [`flush`](Self::flush)es before handing over that message.
    pub fn must_flush(&self) -> bool {
        self.used + self.slot > ARENA_LIMIT.max(self.slot)
    }

    /// Writes the queued packets to the device in the order they arrived, all in one
    /// [`vnet::Writer`](ferrotun_device::vnet::Writer) batch (merged into super-segments
    /// where possible) when the device has offloads, else one by one. Those in place are
    /// at `bufs[d.buf][d.start..]`, each with 16 bytes of headroom before it.
    pub async fn flush<B: AsMut<[u8]>>(
        &mut self,
        shared: &Shared,
        writer: Option<&mut ferrotun_device::vnet::Writer>,
        bufs: &mut [B],
    ) {
        self.seen = Seen::default();
        self.tally.flush();
        let partial = self.deliveries.iter().filter(|d| d.partial).count() as u64;
        if partial > 0 {
            shared
                .partial_checksums
                .fetch_add(partial, Ordering::Relaxed);
        }
        if self.deliveries.is_empty() {
            return;
        }
        match writer {
            Some(w) => {
                // Disjoint slices, one per packet, each with its headroom. Packets in place
                // were queued buffer by buffer, and within a buffer (or the arena) in the
                // order they lie, so one cursor per source walks forward.
                let mut rest = bufs.iter_mut().enumerate();
                let mut cur: Option<(usize, &mut [u8], usize)> = None;
                let mut arena: (&mut [u8], usize) = (&mut self.arena[..self.used], 0);
                let mut packets: Vec<&mut [u8]> = Vec::with_capacity(self.deliveries.len());
                self.lens.clear();
                self.partial.clear();
                for d in &self.deliveries {
                    let (tail, taken) = if d.buf == ARENA {
                        (&mut arena.0, &mut arena.1)
                    } else {
                        while cur.as_ref().is_none_or(|c| c.0 != d.buf) {
                            let (k, b) = rest.next().expect("in-place packets in buffer order");
                            cur = Some((k, b.as_mut(), 0));
                        }
                        let (_, tail, taken) = cur.as_mut().expect("set just above");
                        (tail, taken)
                    };
                    let (_, from) = std::mem::take(tail).split_at_mut(d.start - HEADROOM - *taken);
                    let (pkt, after) = from.split_at_mut(HEADROOM + d.len);
                    *taken = d.start + d.len;
                    *tail = after;
                    packets.push(pkt);
                    self.lens.push(d.len);
                    self.partial.push(d.partial);
                }
                if let Err(e) = w
                    .send_batch_partial(
                        shared.tun.queue(self.queue),
                        &mut packets,
                        HEADROOM,
                        &self.lens,
                        &self.partial,
                    )
                    .await
                {
                    shared.drop_packet(DropReason::SendFailed, || {
                        format!("writing to the device: {e}")
                    });
                }
            }
            None => {
                for d in &self.deliveries {
                    let src = if d.buf == ARENA {
                        self.arena.as_mut_slice()
                    } else {
                        bufs[d.buf].as_mut()
                    };
                    let buf = &mut src[d.start - HEADROOM..d.start + d.len];
                    if d.partial {
                        // No kernel to hand a partial checksum to: completed here. The
                        // receive path checked that the packet can have one.
                        vnet::complete_checksum(&mut buf[HEADROOM..], vnet::Layer::Ip);
                    }
                    if let Err(e) = shared.tun.write(self.queue, buf, HEADROOM, d.len).await {
                        shared.drop_packet(DropReason::SendFailed, || {
                            format!("writing to the device: {e}")
                        });
                    }
                }
                // Every partial one was completed above.
                if partial > 0 {
                    shared
                        .checksums_completed
                        .fetch_add(partial, Ordering::Relaxed);
                }
            }
        }
        self.deliveries.clear();
        self.used = 0;
    }

    /// Decompresses `compressed` into the arena behind [`HEADROOM`] bytes; returns the
    /// packet, which stays there only if [`keep`](Self::keep) follows.
    fn decompress(
        &mut self,
        compressed: &[u8],
    ) -> Result<(usize, usize), ferrotun_proto::CompressError> {
        let start = self.used + HEADROOM;
        if self.arena.len() < self.used + self.slot {
            self.arena.resize(self.used + self.slot, 0);
        }
        let n =
            ferrotun_proto::decompress(compressed, &mut self.arena[start..self.used + self.slot])?;
        Ok((start, n))
    }

    /// Queues the first `len` bytes of the packet [`decompress`](Self::decompress) put at
    /// `start` for the device.
    fn keep(&mut self, start: usize, len: usize, partial: bool) {
        self.used = start + len;
        self.deliveries.push(Delivery {
            buf: ARENA,
            start,
            len,
            partial,
        });
    }
}

/// Messages of one keypair in one buffer that are opened together. Fewer would gain
/// nothing from `ferrotun-chacha`'s batch code (see its `worth_batching`: short messages
/// pay from four, full-size ones from about ten of one length, and below that it opens
/// them one by one itself) and would pay the batch's bookkeeping.
const MIN_AHEAD: usize = 4;

/// Receive buffers per system call; with GRO each holds up to 64 coalesced datagrams.
const RX_BUFFERS: usize = 8;
/// Size of one receive buffer: the largest GRO batch the kernel hands over.
const RX_BUFFER_LEN: usize = 65536;

/// A packet decrypted in place or decompressed, to be written to the device.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    /// Which of the caller's buffers, or [`ARENA`].
    buf: usize,
    /// Where the packet starts in it (at least 16 bytes in).
    start: usize,
    /// Its length.
    len: usize,
    /// Its TCP or UDP checksum is partial.
    partial: bool,
}

/// Reads datagrams from the UDP socket until it fails: several buffers per system call,
/// each holding one datagram or (with GRO) several of one size from one sender. Packets
/// for the device are written together at the end of the batch, in the order they
/// arrived, merged into super-segments when the device has offloads.
///
/// Task `index` reads UDP socket `index` and writes to device queue `index`.
pub async fn udp_receive_path(shared: Arc<Shared>, index: usize) -> anyhow::Result<()> {
    let udp = shared.udp(index).context("no UDP socket")?;
    let mut bufs: Vec<Vec<u8>> = (0..RX_BUFFERS).map(|_| vec![0u8; RX_BUFFER_LEN]).collect();
    let mut metas = [quinn_udp::RecvMeta::default(); RX_BUFFERS];
    let mut scratch = ReceiveScratch::new(&shared, index);
    let mut writer = shared.device_writer();
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
        scratch.begin_batch();
        for (k, meta) in metas.iter().enumerate().take(n) {
            let src = Source::Udp(canonical(meta.addr));
            let stride = meta.stride.max(1);
            let len = meta.len;
            let datagrams = (0..len)
                .step_by(stride)
                .map(|at| at..(at + stride).min(len));
            scratch.open_ahead(&shared, &mut bufs[k][..len], datagrams);
            let mut at = 0;
            while at < meta.len {
                if scratch.must_flush() {
                    scratch.flush(&shared, writer.as_mut(), &mut bufs).await;
                }
                let end = (at + stride).min(meta.len);
                scratch.take_ahead(at);
                let dgram = &mut bufs[k][at..end];
                if let Verdict::Deliver {
                    start,
                    len,
                    partial,
                } = receive_one(&shared, dgram, src, &mut scratch).await
                {
                    scratch.deliver(k, at + start, len, partial);
                }
                at = end;
            }
        }
        scratch.flush(&shared, writer.as_mut(), &mut bufs).await;
        turn.next_batch().await;
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
    /// Switched to other peers, queued in the scratch for the device (a decompressed
    /// packet), or handed to the control task.
    Accepted,
    /// An IP packet for the device, left in place at `buf[start..start + len]` with at
    /// least 16 bytes of headroom: the caller writes it (alone, or merged with others).
    Deliver {
        /// Where the packet starts in the message buffer.
        start: usize,
        /// Its length.
        len: usize,
        /// Its TCP or UDP checksum is partial, for the device's kernel to complete (or
        /// for [`ReceiveScratch::flush`] to, without offloads).
        partial: bool,
    },
    /// Well-formed but not accepted (unknown index, replay, failed authentication, ...).
    Dropped,
    /// Not a message at all, or one more than the sender may send (handshake messages on
    /// a TCP connection that has not authenticated): a TCP connection that sends it is
    /// closed.
    Close,
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
                return Verdict::Close;
            }
            if let Source::Tcp(c) = src
                && !c.admit_handshake()
            {
                shared.drop_packet(DropReason::HandshakeFlood, || {
                    format!(
                        "{} sent more than {} handshake messages without completing one; closing it",
                        c.remote,
                        super::tcp::MAX_UNAUTHENTICATED_HANDSHAKES
                    )
                });
                return Verdict::Close;
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
            Verdict::Close
        }
    }
}

/// `peer`'s receiving keypair with index `receiver`, kept in `last` for the next message.
fn find_keypair<'k>(
    last: &'k mut Option<(u32, Arc<Keypair>)>,
    peer: &Peer,
    receiver: u32,
) -> Option<&'k Arc<Keypair>> {
    if !matches!(last, Some((index, _)) if *index == receiver) {
        let keypairs = peer.recv_keypairs.load();
        let kp = keypairs.iter().find(|k| k.local_index() == receiver)?;
        *last = Some((receiver, Arc::clone(kp)));
    }
    last.as_ref().map(|(_, kp)| kp)
}

async fn receive_data(
    shared: &Shared,
    buf: &mut [u8],
    src: Source<'_>,
    scratch: &mut ReceiveScratch,
) -> Verdict {
    // The batch's lookups are taken out of the scratch for the message, so that the table
    // and keypair are borrowed from them rather than cloned (an atomic increment and
    // decrement each, per message), and put back after.
    let mut seen = std::mem::take(&mut scratch.seen);
    let verdict = receive_data_seen(shared, buf, src, scratch, &mut seen).await;
    scratch.seen = seen;
    verdict
}

async fn receive_data_seen(
    shared: &Shared,
    buf: &mut [u8],
    src: Source<'_>,
    scratch: &mut ReceiveScratch,
    seen: &mut Seen,
) -> Verdict {
    let receiver = match DataMessage::new_checked(&buf[..]) {
        Ok(m) => m.receiver(),
        Err(e) => {
            shared.drop_packet(DropReason::Malformed, || format!("from {src}: {e}"));
            return Verdict::Close;
        }
    };
    let now = scratch.now;
    let Seen {
        table,
        keypair,
        endpoint,
    } = seen;
    let table: &PeerTable = table.get_or_insert_with(|| shared.table.load_full());
    let Some(peer) = table.get(SessionIndex::of_receiver(receiver).slot()) else {
        shared.drop_packet(DropReason::UnknownIndex, || {
            format!("index {receiver:#010x} from {src}")
        });
        return Verdict::Dropped;
    };
    let Some(kp) = find_keypair(keypair, peer, receiver) else {
        shared.drop_packet(DropReason::UnknownIndex, || {
            format!("index {receiver:#010x} from {src}")
        });
        return Verdict::Dropped;
    };
    if !kp.usable(now) {
        shared.drop_for(peer, DropReason::KeyExpired, || {
            format!("from {src}: keypair older than 180 s")
        });
        return Verdict::Dropped;
    }
    // Opened already with the rest of its buffer (see `ReceiveScratch::open_ahead`), or now.
    let opened = scratch.ahead.take().unwrap_or_else(|| kp.open(buf));
    let (flags, range) = match opened {
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
    let path = (peer.slot, Path::of(&src));
    if *endpoint != Some(path) {
        peer.set_endpoint(src.to_peer_addr());
        *endpoint = Some(path);
    }
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
    let (want, allowed) = if shared.mode == Mode::Tap {
        (PayloadFlags::ETHERNET, PayloadFlags::ETHERNET)
    } else {
        (PayloadFlags::NONE, PayloadFlags::PARTIAL_CHECKSUM)
    };
    let allowed = if peer.config.compress {
        allowed.union(PayloadFlags::COMPRESSED)
    } else {
        allowed
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
    let partial = flags.contains(PayloadFlags::PARTIAL_CHECKSUM);
    let wire_len = range.len();
    // The packet, behind HEADROOM bytes: in place, or decompressed into the arena, where
    // it stays only if it goes to the device.
    let (start, len) = if compressed {
        match scratch.decompress(&buf[range.clone()]) {
            Ok(at) => at,
            Err(e) => {
                shared.drop_for(peer, DropReason::Decompress, || {
                    format!("from peer {}: {e}", peer.name())
                });
                return Verdict::Dropped;
            }
        }
    } else {
        (range.start, range.len())
    };
    let payload: &[u8] = if compressed {
        &scratch.arena[start..start + len]
    } else {
        &buf[range]
    };
    let to = match shared.mode {
        Mode::Tun => match check_ip(shared, table, peer, payload) {
            Some(n) if partial && vnet::partial_checksum(&payload[..n], Layer::Ip).is_none() => {
                shared.drop_for(peer, DropReason::Malformed, || {
                    format!(
                        "peer {} marked a checksum partial in a packet that has no such field",
                        peer.name()
                    )
                });
                Switched::Dropped
            }
            Some(n) => {
                // An uncompressed packet's padding is not counted.
                scratch
                    .tally
                    .count(peer, n, if compressed { wire_len } else { n });
                Switched::Device(n)
            }
            None => Switched::Dropped,
        },
        Mode::Tap => {
            let to = switch_frame(
                shared,
                table,
                peer,
                payload,
                wire_len,
                now,
                &mut scratch.fwd,
            )
            .await;
            if let Switched::Device(n) = to {
                scratch.tally.count(peer, n, wire_len);
            }
            to
        }
    };
    match to {
        Switched::Device(len) if compressed => {
            scratch.keep(start, len, partial);
            Verdict::Accepted
        }
        Switched::Device(len) => Verdict::Deliver {
            start,
            len,
            partial,
        },
        Switched::Elsewhere => Verdict::Accepted,
        Switched::Dropped => Verdict::Dropped,
    }
}

/// Bytes before every packet written to the device: room for a virtio-net header.
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

/// Where a payload from a peer went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switched {
    /// To our device: a packet (or frame) of this many bytes.
    Device(usize),
    /// To other peers only.
    Elsewhere,
    /// Nowhere (counted).
    Dropped,
}

/// Switches a frame that came from `peer` (learning its source address on the way):
/// seals it to the peer its destination is behind, or floods it to every other peer. Says
/// whether our device gets it too; the caller writes it there with the batch.
#[allow(clippy::too_many_arguments)]
async fn switch_frame(
    shared: &Shared,
    table: &PeerTable,
    peer: &Peer,
    frame: &[u8],
    wire_len: usize,
    now: Instant,
    fwd: &mut Forwarder,
) -> Switched {
    // A switch port drops frames over its MTU, and the buffers that forward and flood
    // frames to other peers hold no more: a peer configured with a larger MTU than ours
    // gets its big frames counted, not switched.
    let len = frame.len();
    if len > shared.frame_len() {
        shared.drop_for(peer, DropReason::TooBig, || {
            format!("{len}-byte frame from peer {} exceeds the MTU", peer.name())
        });
        return Switched::Dropped;
    }
    let Some(port) = switch_port(shared, peer, frame, now) else {
        return Switched::Dropped;
    };
    match port {
        // Counted by the caller, in its tally.
        Port::Device => Switched::Device(len),
        Port::Hairpin => {
            peer.drops.count(DropReason::Hairpin);
            shared.drops.count(DropReason::Hairpin);
            Switched::Dropped
        }
        Port::Peer(slot) => {
            peer.traffic.received(len, wire_len);
            if let Some(other) = table.get(slot) {
                let f = &mut fwd.forward;
                f[DATA_HEADER_LEN..DATA_HEADER_LEN + len].copy_from_slice(frame);
                fwd.sealer
                    .seal_and_send(shared, other, f, len, now, false)
                    .await;
            }
            Switched::Elsewhere
        }
        Port::Flood => {
            // Also for the device: counted by the caller, in its tally.
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
            Switched::Device(len)
        }
    }
}
