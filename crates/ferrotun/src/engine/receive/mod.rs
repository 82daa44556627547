//! The receive path: messages from the network to the device, or, for a TAP server, on to
//! other peers.
//!
//! One pipeline, [`Batch`], serves every transport: the UDP path ([`udp_path`]) hands it
//! the datagrams of each buffer a `recvmmsg` (with GRO) filled, the TCP path
//! ([`super::tcp`]) the frames of each read. Each message passes these steps once, in
//! order, each a function of its own:
//!
//! 1. classify ([`Batch::receive`]): the header is read once; data messages gather in
//!    runs of one receiver index, handshake messages go to the control task typed
//!    ([`to_control`]), anything else is dropped (and closes a TCP connection);
//! 2. look up ([`lookup`]) the run's peer and keypair, once per run;
//! 3. open ([`open`]) the run in place, in one batch of the AEAD where that pays;
//! 4. authenticate ([`Batch::authenticated`]): only now may a message change anything:
//!    the peer's endpoint (roaming), its timers, a TCP connection's standing;
//! 5. admit the payload ([`Batch::admit`]): its flags must fit the peer's configuration,
//!    and a compressed one is decompressed (bounded by the MTU);
//! 6. route it: in TUN mode its inner source must be within the peer's allowed IPs
//!    ([`check_ip`]); in TAP mode the learning switch picks the port ([`Batch::switch`]);
//! 7. deliver: packets for the device are queued in one place ([`Deliveries`]) and written
//!    when the batch ends ([`Batch::finish`]); frames for other peers go through the
//!    batch's [`Outbox`], like all data that is sealed.
//!
//! Every message is hostile until step 3 authenticated it: anything malformed, unknown,
//! replayed or wrongly keyed is dropped, counted by reason and logged at a limited rate,
//! and touches no peer's state.

pub(crate) mod deliver;

use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context;
use ferrotun_device::Mode;
use ferrotun_device::vnet::{self, Layer};
use ferrotun_proto::transport::TransportError;
use ferrotun_proto::{HandshakeMessage, Keypair, Message, Opened, PayloadFlags, Received};

use crate::routing::ip_source;
use crate::stats::DropReason;

use super::addr::{Path, Source, canonical};
use super::conn::MAX_UNAUTHENTICATED_HANDSHAKES;
use super::outbox::{Outbox, SLOTS};
use super::peer::{Peer, Tally};
use super::shared::{Inbound, Shared};
use super::switch::{self, LOCAL, Switch};
use super::table::PeerTable;
use super::turn::Turn;
use deliver::{Deliveries, Place};

/// Runs of fewer messages are opened one by one: they would gain nothing from
/// `ferrotun-chacha`'s batch code (see its `worth_batching`: short messages pay from four,
/// full-size ones from about ten of one length) and would pay the batch's bookkeeping.
const MIN_BATCH_OPEN: usize = 4;
/// Receive buffers per system call; with GRO each holds up to 64 coalesced datagrams.
const RX_BUFFERS: usize = 8;
/// Size of one receive buffer: the largest GRO batch the kernel hands over.
const RX_BUFFER_LEN: usize = 65536;

/// What the transport does after a buffer of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Outcome {
    /// Go on reading.
    Continue,
    /// A message was not a message at all, or one more than the sender may send: a TCP
    /// connection that brought it is closed (UDP has nothing to close).
    Close,
}

/// A decrypted payload and where it lies.
#[derive(Debug, Clone, Copy)]
struct Payload {
    place: Place,
    start: usize,
    len: usize,
    /// Its length on the wire (less than `len` if it came compressed).
    wire_len: usize,
    compressed: bool,
    partial: bool,
}

impl Payload {
    /// Its bytes: in a receive buffer, or in the deliveries' arena.
    fn bytes<'a, B: AsMut<[u8]>>(&self, deliveries: &'a Deliveries, bufs: &'a mut [B]) -> &'a [u8] {
        let range = self.start..self.start + self.len;
        match self.place {
            Place::Buffer(k) => &bufs[k].as_mut()[range],
            Place::Arena => deliveries.arena(range),
        }
    }
}

/// The state of one receiving task across the messages of a batch: what a batch loads
/// once (the clock, the peer table), the current run of data messages, and where the
/// batch's packets go. See the module docs.
pub(crate) struct Batch {
    now: Instant,
    /// This batch's peer table: loaded by [`Batch::begin`], let go by [`Batch::finish`],
    /// so that nothing (a removed peer's keys, say) is kept alive between batches.
    table: Option<Arc<PeerTable>>,
    /// The keypair the last run used, with its receiver index: a batch of one peer's
    /// datagrams in several buffers looks it up once. Let go by [`Batch::finish`].
    keypair: Option<(u32, Arc<Keypair>)>,
    deliveries: Deliveries,
    /// Frames a TAP server switches on to other peers.
    forward: Outbox,
    /// Consecutive data messages of one buffer for one receiver index, not yet opened.
    run: Vec<Received>,
    opened: Vec<Opened>,
    /// The traffic of this batch's packets, added to their peers' counters at the end.
    tally: Tally,
    /// The peer (slot) whose endpoint an authenticated message set this batch, and the
    /// path it came by: a batch of one peer's datagrams sets it once.
    roamed: Option<(u32, Path)>,
}

impl Batch {
    /// A batch for a task that writes to device queue `queue` (a UDP receive task's own
    /// queue, so that all of a flow's packets enter the device through one queue) and
    /// forwards through UDP socket `queue`, with room for `forwards` frames switched on to
    /// other peers before the forwarding outbox is flushed (allocated on first use: only
    /// a TAP server forwards).
    pub(crate) fn new(shared: &Shared, queue: usize, forwards: usize) -> Batch {
        Batch {
            now: Instant::now(),
            table: None,
            keypair: None,
            deliveries: Deliveries::new(shared, queue),
            forward: Outbox::new(shared, queue, 0, forwards),
            run: Vec::with_capacity(64),
            opened: Vec::with_capacity(64),
            tally: Tally::received(),
            roamed: None,
        }
    }

    /// Starts a batch: one clock read and one load of the peer table for all its
    /// messages (a new table is seen from the next batch on).
    pub(crate) fn begin(&mut self, shared: &Shared) {
        self.now = Instant::now();
        self.table = Some(shared.peers.load_full());
    }

    /// Step 1: handles the messages at `msgs` (in order, apart) of buffer `bufs[k]`, which
    /// came from `src`. From a TCP connection, the first message that closes it ends the
    /// buffer; what came before it still goes to the device at [`Batch::finish`].
    pub(crate) async fn receive<B: AsMut<[u8]>>(
        &mut self,
        shared: &Shared,
        bufs: &mut [B],
        k: usize,
        msgs: impl IntoIterator<Item = Range<usize>>,
        src: Source<'_>,
    ) -> Outcome {
        let mut outcome = Outcome::Continue;
        for at in msgs {
            let Some(bytes) = bufs[k].as_mut().get(at.clone()) else {
                continue; // the transport's ranges lie in its buffer
            };
            let handshake = match Message::classify(bytes) {
                Ok(Message::Data(d)) => {
                    let msg = Received {
                        at,
                        header: d.header(),
                    };
                    if self
                        .run
                        .last()
                        .is_some_and(|r| r.header.receiver != msg.header.receiver)
                    {
                        self.open_run(shared, bufs, k, src).await;
                    }
                    self.run.push(msg);
                    continue;
                }
                Ok(m) => m.to_handshake().ok_or(None),
                Err(e) => Err(Some(e)),
            };
            // Data before the message goes first.
            self.open_run(shared, bufs, k, src).await;
            let this = match handshake {
                Ok(message) => to_control(shared, message, src),
                Err(e) => {
                    shared.drop_packet(DropReason::Malformed, || {
                        let why = e.map_or_else(|| "not a message".into(), |e| e.to_string());
                        format!("from {src}: {why}")
                    });
                    Outcome::Close
                }
            };
            if this == Outcome::Close {
                outcome = Outcome::Close;
                if src.tcp().is_some() {
                    return outcome;
                }
            }
        }
        self.open_run(shared, bufs, k, src).await;
        outcome
    }

    /// Steps 2–7 for the run gathered so far.
    async fn open_run<B: AsMut<[u8]>>(
        &mut self,
        shared: &Shared,
        bufs: &mut [B],
        k: usize,
        src: Source<'_>,
    ) {
        if self.run.is_empty() {
            return;
        }
        // Taken out of the batch for the run, so that they are borrowed, not cloned.
        let mut run = std::mem::take(&mut self.run);
        let mut opened = std::mem::take(&mut self.opened);
        let table = self
            .table
            .take()
            .unwrap_or_else(|| shared.peers.load_full());
        let mut keypair = self.keypair.take();
        let receiver = run[0].header.receiver;
        match lookup(&table, &mut keypair, receiver, self.now) {
            Ok((peer, kp)) => {
                open(kp, bufs[k].as_mut(), &run, &mut opened);
                self.authenticated(shared, peer, kp, src, &opened);
                for o in &opened {
                    match o {
                        Ok((flags, range)) => {
                            self.admit(shared, &table, bufs, k, peer, *flags, range.clone())
                                .await
                        }
                        Err(e) => refused(shared, peer, src, e),
                    }
                }
            }
            Err(why) => unopened(shared, why, receiver, run.len(), src),
        }
        run.clear();
        self.run = run;
        self.opened = opened;
        self.table = Some(table);
        self.keypair = keypair;
    }

    /// Step 4: what an authenticated run from `peer` changes. The peer is at `src` now
    /// (roaming), a TCP connection has proved itself, the control task learns that the
    /// peer spoke (and that it used a new keypair, which confirms it).
    fn authenticated(
        &mut self,
        shared: &Shared,
        peer: &Peer,
        kp: &Keypair,
        src: Source<'_>,
        opened: &[Opened],
    ) {
        let mut ok = opened.iter().filter_map(|o| o.as_ref().ok());
        let Some(first) = ok.next() else {
            return;
        };
        let data = !first.1.is_empty() || ok.any(|(_, r)| !r.is_empty());
        let stamp = shared.stamp(self.now);
        peer.notes.received.store(stamp, Ordering::Relaxed);
        if data {
            peer.notes.received_data.store(stamp, Ordering::Relaxed);
        }
        if let Some(c) = src.tcp() {
            c.authenticate(peer.slot);
        }
        let path = (peer.slot, src.path());
        if self.roamed != Some(path) {
            peer.set_endpoint(src.to_peer_addr());
            self.roamed = Some(path);
        }
        let index = kp.local_index();
        if index == peer.next_index.load(Ordering::Relaxed)
            && peer.notes.confirm.swap(index, Ordering::AcqRel) != index
        {
            peer.mark();
            shared.wake.notify_one();
        }
    }

    /// Step 5: a payload the peer's configuration allows, decompressed if it came
    /// compressed; then step 6.
    #[allow(clippy::too_many_arguments)]
    async fn admit<B: AsMut<[u8]>>(
        &mut self,
        shared: &Shared,
        table: &PeerTable,
        bufs: &mut [B],
        k: usize,
        peer: &Arc<Peer>,
        flags: PayloadFlags,
        range: Range<usize>,
    ) {
        if range.is_empty() {
            return; // a keepalive
        }
        if !flags_fit(shared.settings.mode, peer.config.compress, flags) {
            shared.drop_for(peer, DropReason::FlagsRefused, || {
                format!(
                    "payload flags {:#04x} from peer {} do not fit its configuration",
                    flags.bits(),
                    peer.name()
                )
            });
            return;
        }
        let compressed = flags.contains(PayloadFlags::COMPRESSED);
        if compressed && self.deliveries.arena_full() {
            self.deliveries.flush(shared, bufs).await;
        }
        let wire_len = range.len();
        let (place, start, len) = if compressed {
            match self.deliveries.decompress(&bufs[k].as_mut()[range]) {
                Ok((start, n)) => (Place::Arena, start, n),
                Err(e) => {
                    shared.drop_for(peer, DropReason::Decompress, || {
                        format!("from peer {}: {e}", peer.name())
                    });
                    return;
                }
            }
        } else {
            (Place::Buffer(k), range.start, range.len())
        };
        let p = Payload {
            place,
            start,
            len,
            wire_len,
            compressed,
            partial: flags.contains(PayloadFlags::PARTIAL_CHECKSUM),
        };
        match shared.settings.mode {
            Mode::Tun => self.route_ip(shared, table, bufs, peer, p),
            Mode::Tap => self.switch(shared, table, bufs, peer, p).await,
        }
    }

    /// Step 6 in TUN mode: an IP packet from within the peer's allowed IPs (its padding
    /// trimmed by its IP header's length), with a partial checksum only where it can have
    /// one; then step 7.
    fn route_ip<B: AsMut<[u8]>>(
        &mut self,
        shared: &Shared,
        table: &PeerTable,
        bufs: &mut [B],
        peer: &Arc<Peer>,
        p: Payload,
    ) {
        let packet = p.bytes(&self.deliveries, bufs);
        let n = match check_ip(table, peer.slot, packet, p.partial) {
            Ok(n) => n,
            Err(why) => return refused_ip(shared, peer, why),
        };
        // An uncompressed packet's padding is not counted.
        let wire = if p.compressed { p.wire_len } else { n };
        self.tally.count(peer, n, wire);
        self.deliveries.push(p.place, p.start, n, p.partial);
    }

    /// Step 6 in TAP mode: the switch learns the frame's source and picks its ports (a
    /// client has one, its device); then step 7.
    async fn switch<B: AsMut<[u8]>>(
        &mut self,
        shared: &Shared,
        table: &PeerTable,
        bufs: &mut [B],
        peer: &Arc<Peer>,
        p: Payload,
    ) {
        // A switch port drops frames over its MTU, and the slots that forward frames to
        // other peers hold no more: a peer configured with a larger MTU than ours gets its
        // big frames counted, not switched.
        if p.len > shared.frame_len() {
            shared.drop_for(peer, DropReason::TooBig, || {
                format!(
                    "{}-byte frame from peer {} exceeds the MTU",
                    p.len,
                    peer.name()
                )
            });
            return;
        }
        let frame = p.bytes(&self.deliveries, bufs);
        let stamp = shared.stamp(self.now);
        let server = shared.settings.server;
        let Some(port) = switch_port(&shared.switch, server, peer.slot, frame, stamp) else {
            shared.drop_for(peer, DropReason::Malformed, || {
                format!("short frame from peer {}", peer.name())
            });
            return;
        };
        match port {
            Port::Device => {}
            Port::Hairpin => return shared.count_for(peer, DropReason::Hairpin),
            Port::Peer(slot) => {
                self.tally.count(peer, p.len, p.wire_len);
                if let Some(other) = table.get(slot) {
                    self.forward_to(shared, bufs, other, &p).await;
                }
                return;
            }
            Port::Flood => {
                for other in table.peers() {
                    if other.slot != peer.slot && other.endpoint().is_some() {
                        self.forward_to(shared, bufs, other, &p).await;
                    }
                }
            }
        }
        self.tally.count(peer, p.len, p.wire_len);
        self.deliveries.push(p.place, p.start, p.len, p.partial);
    }

    /// Step 7 for a frame that goes on to another peer: a copy, as it came (uncompressed),
    /// sealed with the batch's other forwards at its end.
    async fn forward_to<B: AsMut<[u8]>>(
        &mut self,
        shared: &Shared,
        bufs: &mut [B],
        to: &Arc<Peer>,
        p: &Payload,
    ) {
        if !self.forward.has_room() {
            self.forward.flush(shared).await;
        }
        let slot = self.forward.copy_in(p.bytes(&self.deliveries, bufs));
        self.forward
            .prepare(shared, to, slot, p.len, self.now, false, false);
    }

    /// Ends the batch: packets go to the device, forwarded frames to their peers, the
    /// traffic to the peers' counters.
    pub(crate) async fn finish<B: AsMut<[u8]>>(&mut self, shared: &Shared, bufs: &mut [B]) {
        self.tally.flush();
        self.roamed = None;
        self.table = None;
        self.keypair = None;
        self.deliveries.flush(shared, bufs).await;
        self.forward.flush(shared).await;
    }
}

/// Step 1 for a handshake message: to the control task, typed. A TCP connection that has
/// not authenticated may bring only a few.
fn to_control(shared: &Shared, message: HandshakeMessage, src: Source<'_>) -> Outcome {
    if let Some(c) = src.tcp()
        && !c.admit_handshake()
    {
        shared.drop_packet(DropReason::HandshakeFlood, || {
            format!(
                "{} sent more than {MAX_UNAUTHENTICATED_HANDSHAKES} handshake messages without completing one; closing it",
                c.remote
            )
        });
        return Outcome::Close;
    }
    let msg = Inbound {
        message,
        src: src.to_peer_addr(),
    };
    if !shared.to_control(msg) {
        shared.drop_packet(DropReason::HandshakeFlood, || {
            format!("handshake queue full; dropped one from {src}")
        });
    }
    Outcome::Continue
}

/// Why a run of data messages found no keypair to open it with.
enum NoKeypair<'t> {
    /// No peer has the receiver index, or its peer has no such keypair (any more).
    Unknown,
    /// The peer's keypair is past its `reject_after_time`.
    Expired(&'t Arc<Peer>),
}

/// Step 2: the peer and keypair receiver index `receiver` names, if that keypair may
/// still open at `now`. `last` keeps the keypair found, for the batch's next run.
fn lookup<'t, 'k>(
    table: &'t PeerTable,
    last: &'k mut Option<(u32, Arc<Keypair>)>,
    receiver: u32,
    now: Instant,
) -> Result<(&'t Arc<Peer>, &'k Keypair), NoKeypair<'t>> {
    let peer = table.by_receiver(receiver).ok_or(NoKeypair::Unknown)?;
    if last.as_ref().is_none_or(|(index, _)| *index != receiver) {
        *last = peer.recv_keypair(receiver).map(|kp| (receiver, kp));
    }
    match last {
        Some((_, kp)) if kp.usable(now) => Ok((peer, &**kp)),
        Some(_) => Err(NoKeypair::Expired(peer)),
        None => Err(NoKeypair::Unknown),
    }
}

/// Counts the `n` messages of a run that found no keypair.
fn unopened(shared: &Shared, why: NoKeypair<'_>, receiver: u32, n: usize, src: Source<'_>) {
    for _ in 0..n {
        match why {
            NoKeypair::Expired(peer) => shared.drop_for(peer, DropReason::KeyExpired, || {
                format!("from {src}: keypair past its reject_after_time")
            }),
            NoKeypair::Unknown => shared.drop_packet(DropReason::UnknownIndex, || {
                format!("index {receiver:#010x} from {src}")
            }),
        }
    }
}

/// Step 3: opens the run in place, in one batch of the AEAD if it is long enough to pay.
fn open(kp: &Keypair, buf: &mut [u8], run: &[Received], out: &mut Vec<Opened>) {
    if run.len() >= MIN_BATCH_OPEN {
        kp.open_many(buf, run, out);
    } else {
        out.clear();
        out.extend(run.iter().map(|m| kp.open_one(buf, m)));
    }
}

/// Counts a message that did not open.
fn refused(shared: &Shared, peer: &Peer, src: Source<'_>, e: &TransportError) {
    match e {
        TransportError::Replay { .. } => shared.drop_for(peer, DropReason::Replay, || {
            format!("replayed or too old, from {src}")
        }),
        e => shared.drop_for(peer, DropReason::Decrypt, || {
            format!("from {src} for peer {}: {e}", peer.name())
        }),
    }
}

/// Step 5's rule: payload flags a side in `mode` allows from a peer (`compress`: the peer
/// compresses). TUN takes IP packets (whose checksum may be partial), TAP Ethernet
/// frames; compressed only from a peer that compresses.
fn flags_fit(mode: Mode, compress: bool, flags: PayloadFlags) -> bool {
    let (want, mut allowed) = match mode {
        Mode::Tap => (PayloadFlags::ETHERNET, PayloadFlags::ETHERNET),
        Mode::Tun => (PayloadFlags::NONE, PayloadFlags::PARTIAL_CHECKSUM),
    };
    if compress {
        allowed = allowed.union(PayloadFlags::COMPRESSED);
    }
    flags.contains(want) && allowed.contains(flags)
}

/// Why step 6 refused a decrypted IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IpRefused {
    /// Not an IPv4 or IPv6 packet that fits its payload.
    NotIp,
    /// Its source (if it has one) is outside the sender's allowed IPs.
    Outside(Option<IpAddr>),
    /// Marked as carrying a partial checksum, but it has no such field where a receiver
    /// looks for one.
    NoChecksumField,
}

/// Step 6's rule in TUN mode: a decrypted payload from the peer in `slot` is an IP packet
/// (its padding trimmed by its header's length) whose source is the peer's, with a partial
/// checksum (`partial`) only where it can have one; returns its length.
fn check_ip(
    table: &PeerTable,
    slot: u32,
    payload: &[u8],
    partial: bool,
) -> Result<usize, IpRefused> {
    let n = ferrotun_proto::ip::ip_packet_len(payload).ok_or(IpRefused::NotIp)?;
    let packet = &payload[..n];
    let source = ip_source(packet);
    if source.and_then(|a| table.routes.lookup(a).copied()) != Some(slot) {
        return Err(IpRefused::Outside(source));
    }
    if partial && vnet::partial_checksum(packet, Layer::Ip).is_none() {
        return Err(IpRefused::NoChecksumField);
    }
    Ok(n)
}

/// Counts a packet [`check_ip`] refused.
fn refused_ip(shared: &Shared, peer: &Peer, why: IpRefused) {
    let name = peer.name();
    match why {
        IpRefused::NotIp => shared.drop_for(peer, DropReason::Malformed, || {
            format!("non-IP payload from peer {name}")
        }),
        IpRefused::Outside(source) => shared.drop_for(peer, DropReason::SourceNotAllowed, || {
            let from = source.map_or("?".into(), |a| a.to_string());
            format!("peer {name} sent a packet from {from}, outside its allowed_ips")
        }),
        IpRefused::NoChecksumField => shared.drop_for(peer, DropReason::Malformed, || {
            format!("peer {name} marked a checksum partial in a packet that has no such field")
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

/// Step 6's rule in TAP mode: where a frame from the peer in `from` goes, learning its
/// source address (at time `stamp`) on the way; a client (`server` false) has one port, its
/// device. `None` for a frame too short to switch.
fn switch_port(switch: &Switch, server: bool, from: u32, frame: &[u8], stamp: u64) -> Option<Port> {
    let (dst, src) = switch::macs(frame)?;
    if !server {
        return Some(Port::Device);
    }
    switch.learn(src, from, stamp);
    let target = if switch::is_group(&dst) {
        None
    } else {
        switch.lookup(&dst)
    };
    Some(match target {
        None => Port::Flood,
        Some(LOCAL) => Port::Device,
        Some(port) if port == from => Port::Hairpin,
        Some(port) => Port::Peer(port),
    })
}

/// Reads datagrams from UDP socket `index` until it fails, several buffers per system
/// call, each holding one datagram or (with GRO) several of one size from one sender, and
/// passes each buffer through the task's [`Batch`]; writes to device queue `index`.
pub(crate) async fn udp_path(shared: Arc<Shared>, index: usize) -> anyhow::Result<()> {
    let udp = shared.udp(index).context("no UDP socket")?;
    let mut bufs: Vec<Vec<u8>> = (0..RX_BUFFERS).map(|_| vec![0u8; RX_BUFFER_LEN]).collect();
    let mut metas = [quinn_udp::RecvMeta::default(); RX_BUFFERS];
    let mut batch = Batch::new(&shared, index, SLOTS);
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
        batch.begin(&shared);
        for (k, meta) in metas.iter().enumerate().take(n) {
            let (len, stride) = (meta.len, meta.stride.max(1));
            let datagrams = (0..len)
                .step_by(stride)
                .map(|at| at..(at + stride).min(len));
            let src = Source::Udp(canonical(meta.addr));
            // Garbage in a datagram closes nothing: UDP has no connection.
            let _ = batch.receive(&shared, &mut bufs, k, datagrams, src).await;
        }
        batch.finish(&shared, &mut bufs).await;
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

#[cfg(test)]
mod tests;
