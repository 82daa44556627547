//! The engine: the tokio driver that joins the device, the protocol sessions and the
//! transports (UDP, TCP).
//!
//! Tasks:
//! - the **send path** ([`send`]) reads batches of packets from the device, picks the peer
//!   (cryptokey routing in TUN mode, the learning switch in TAP mode), compresses if the
//!   peer wants it, seals in place with the peer's current keypair and sends;
//! - the **receive path** ([`receive`]) reads datagrams (and TCP frames, on each
//!   connection's task), opens data messages in place with the keypair their receiver
//!   index names, checks the inner source (TUN) or learns the source MAC (TAP), and writes
//!   the packet to the device or, in TAP mode, switches it on to another peer;
//! - the **control task** ([`control`]) owns every peer's session: it answers and
//!   completes handshakes, runs the timers (retries, keepalives, rekeys, expiry),
//!   publishes keypairs to the data paths and flushes packets that waited for a handshake;
//! - a client's **connector** ([`client`]) keeps the server reachable: it resolves the
//!   endpoint, (re)connects over TCP, and retries with backoff when handshakes fail.
//!
//! Both data paths run on one thread. A path whose input stays ready gives the thread up
//! after a [`Turn`] (0.5 ms) of work, so that the other direction, which carries the
//! ACKs of a bulk stream and any interactive packet, is not held up behind it.
//!
//! The two data paths share no lock (see [`crate::peer`]) and allocate nothing per packet
//! in steady state: buffers are allocated once per task; keypairs, endpoints, the peer
//! table and the MAC table are read through `ArcSwap`. Every datagram is hostile until
//! authenticated: anything malformed, unknown, replayed or wrongly keyed is dropped,
//! counted by reason and logged at a limited rate, and touches no peer's state.

pub mod client;
pub mod control;
pub mod device;
pub mod receive;
pub mod send;
pub mod switch;
pub mod tcp;
pub mod udp;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use ferrotun_device::Mode;
use ferrotun_device::vnet::Offloads;
use ferrotun_proto::{
    AeadBackend, HandshakeFlags, Identity, Keypair, PublicKey, Session, SessionConfig, SessionIndex,
};
use ipnet::IpNet;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

pub use receive::{Verdict, receive_one};

use crate::config::{PeerConfig, Transport};
use crate::peer::{Peer, stamp};
use crate::routing::AllowedIps;
use crate::stats::{DropReason, Drops};
use control::Inbound;
use switch::Switch;
use tcp::{TcpConn, Unauthenticated};
use udp::UdpIo;

/// Room after the payload for padding (to 16) and the tag.
pub const TRAILER: usize = 16 + 16;
/// What a TAP frame may add to the MTU: an Ethernet header with up to eight VLAN tags
/// (the kernel's VLAN_MAX_DEPTH; the offload reader accepts as many).
pub const ETHERNET_OVERHEAD: usize = ferrotun_device::vnet::MAX_ETHERNET_HEADER;
/// When received data has gone unanswered this long, a keepalive is sent (WireGuard: 10 s).
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a data path may keep the thread while its input stays ready.
///
/// tokio makes a task yield only when its budget (128 ready I/O operations) is spent, and a
/// data path spends one or two per batch: with batches of 64 KiB, one direction could run
/// for milliseconds while packets for the other waited (tcpdump on both tunnel devices saw
/// ping replies take 2–3 ms from the server's device to the client's, on a path that
/// carried only ACKs). Measured with `bench.sh --only udp` (one saturating stream, median
/// ping through the loaded tunnel), alternating builds: 4.9–5.9 ms without turns (six
/// rounds), 3.7–4.3 ms with 2 ms turns (three), 2.5–3.1 ms with 0.5 ms turns (six).
///
/// The price is batching: the other direction is served more often, in smaller batches
/// (the client's `recvmmsg` calls per GB, which bring it the ACKs, went from about 1,300 to
/// 3,500–4,200), so 0.5 ms turns add 4–17 % system calls per GB. CPU per GB moved by −14 %
/// to +15 % in nine alternating pairs, +5 % on average; the one-stream rate did not change,
/// and the four-stream rate was 3–15 % lower in each of six pairs.
pub const TURN: std::time::Duration = std::time::Duration::from_micros(500);

/// The time a data path has held the thread since it last gave it up.
#[derive(Debug)]
pub struct Turn {
    since: Instant,
}

impl Turn {
    /// A turn that starts at `now`.
    pub fn new(now: Instant) -> Self {
        Turn { since: now }
    }

    /// Whether the turn has lasted [`TURN`] by `now`; if so the next one starts at `now`.
    pub fn is_over(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.since) < TURN {
            return false;
        }
        self.since = now;
        true
    }

    /// Called after each batch: yields to the other tasks when the turn is over.
    pub async fn next_batch(&mut self) {
        if self.is_over(Instant::now()) {
            tokio::task::yield_now().await;
        }
    }

    /// Awaits the path's next input. If it had to wait, the task gave the thread up
    /// meanwhile, so a new turn starts when the input arrives: a path woken after a pause
    /// does not yield after its first batch, which would cost a trip through the reactor.
    pub async fn wait<F: Future>(&mut self, input: F) -> F::Output {
        let mut input = std::pin::pin!(input);
        let mut waited = false;
        let out = std::future::poll_fn(|cx| {
            let r = input.as_mut().poll(cx);
            waited |= r.is_pending();
            r
        })
        .await;
        if waited {
            self.since = Instant::now();
        }
        out
    }
}

/// Handshake messages waiting for the control task; beyond this they are dropped (a flood
/// must not grow memory) and the responder asks for cookies.
const INBOUND_QUEUE: usize = 256;

/// Where a peer is: a UDP address or a TCP connection.
#[derive(Clone)]
pub enum PeerAddr {
    /// A UDP address.
    Udp(SocketAddr),
    /// A TCP connection.
    Tcp(Arc<TcpConn>),
}

impl PeerAddr {
    /// The remote address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            PeerAddr::Udp(a) => *a,
            PeerAddr::Tcp(c) => c.remote,
        }
    }

    /// UDP or TCP.
    pub fn transport(&self) -> Transport {
        match self {
            PeerAddr::Udp(_) => Transport::Udp,
            PeerAddr::Tcp(_) => Transport::Tcp,
        }
    }

    /// Whether two addresses are the same path.
    pub fn same(&self, other: &PeerAddr) -> bool {
        match (self, other) {
            (PeerAddr::Udp(a), PeerAddr::Udp(b)) => a == b,
            (PeerAddr::Tcp(a), PeerAddr::Tcp(b)) => a.id == b.id,
            _ => false,
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Udp(a) => write!(f, "{a}"),
            PeerAddr::Tcp(c) => write!(f, "{} (tcp)", c.remote),
        }
    }
}

/// Where a message came from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// A UDP datagram from this address.
    Udp(SocketAddr),
    /// A frame on this TCP connection.
    Tcp(&'a Arc<TcpConn>),
}

impl Source<'_> {
    /// The remote address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Source::Udp(a) => *a,
            Source::Tcp(c) => c.remote,
        }
    }

    /// As a peer address (to answer or to roam to).
    pub fn to_peer_addr(&self) -> PeerAddr {
        match self {
            Source::Udp(a) => PeerAddr::Udp(*a),
            Source::Tcp(c) => PeerAddr::Tcp(Arc::clone(c)),
        }
    }
}

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Udp(a) => write!(f, "{a}"),
            Source::Tcp(c) => write!(f, "{} (tcp)", c.remote),
        }
    }
}

/// The peers, their routes and their keys, replaced whole on reload.
pub struct PeerTable {
    /// Peers by slot (= session index).
    pub slots: Vec<Option<Arc<Peer>>>,
    /// Slot by static public key.
    pub by_key: HashMap<PublicKey, u32>,
    /// Slot by inner address (TUN mode).
    pub routes: AllowedIps<u32>,
}

impl PeerTable {
    /// The peer in `slot`.
    pub fn get(&self, slot: u32) -> Option<&Arc<Peer>> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// Every peer.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.slots.iter().flatten()
    }
}

/// The capability flags a peer config asks for.
pub fn local_flags(mode: Mode, peer: &PeerConfig) -> HandshakeFlags {
    let mut f = HandshakeFlags::NONE;
    if peer.compress {
        f = f.union(HandshakeFlags::COMPRESSION);
    }
    if mode == Mode::Tap {
        f = f.union(HandshakeFlags::ETHERNET);
    }
    f
}

/// Why the peer's flags do not match ours, for an operator.
pub fn flags_mismatch(
    ours: HandshakeFlags,
    theirs: HandshakeFlags,
    we: &str,
    they: &str,
) -> Option<String> {
    let mut why = Vec::new();
    let c = HandshakeFlags::COMPRESSION;
    if ours.contains(c) != theirs.contains(c) {
        why.push(format!(
            "{we} has compress = {}, {they} has compress = {}",
            ours.contains(c),
            theirs.contains(c)
        ));
    }
    let e = HandshakeFlags::ETHERNET;
    if ours.contains(e) != theirs.contains(e) {
        let m = |f: HandshakeFlags| if f.contains(e) { "tap" } else { "tun" };
        why.push(format!(
            "{we} has mode = \"{}\", {they} has mode = \"{}\"",
            m(ours),
            m(theirs)
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Makes a peer for `pc` in `slot`.
pub fn make_peer(
    identity: &Arc<Identity>,
    mode: Mode,
    slot: u32,
    pc: &PeerConfig,
    backend: AeadBackend,
) -> anyhow::Result<Arc<Peer>> {
    let index = SessionIndex::new(slot).context("too many peers")?;
    let flags = local_flags(mode, pc);
    let config = SessionConfig {
        persistent_keepalive: pc.keepalive,
        // WireGuard answers received data with a keepalive after 10 s of silence and
        // declares the peer dead after 10 + 5 s of unanswered data. A tunnel that must heal
        // within seconds of a server restart uses 2 s (a 32-byte keepalive every 2 s
        // during one-way traffic), so a dead path is noticed after 7 s.
        keepalive_timeout: KEEPALIVE_TIMEOUT,
        local_flags: flags,
        backend,
        ..SessionConfig::default()
    };
    let session = Session::new(
        identity.clone(),
        pc.public_key,
        pc.preshared_key.clone(),
        index,
        config,
    )
    .with_context(|| format!("peer {}", pc.name))?;
    Ok(Arc::new(Peer::new(slot, pc.clone(), flags, session)))
}

/// Assembles a table from peers (by slot).
pub fn assemble(peers: Vec<Arc<Peer>>) -> PeerTable {
    let len = peers.iter().map(|p| p.slot as usize + 1).max().unwrap_or(0);
    let mut table = PeerTable {
        slots: vec![None; len],
        by_key: HashMap::with_capacity(peers.len()),
        routes: AllowedIps::new(),
    };
    for p in peers {
        for net in p.allowed_ips().iter() {
            table.routes.insert(*net, p.slot);
        }
        table.by_key.insert(p.config.public_key, p.slot);
        let slot = p.slot as usize;
        table.slots[slot] = Some(p);
    }
    table
}

/// Builds the peer table from configs, in slots 0, 1, 2, ...
pub fn build_table(
    identity: &Arc<Identity>,
    mode: Mode,
    peers: &[PeerConfig],
    backend: AeadBackend,
) -> anyhow::Result<PeerTable> {
    let peers = peers
        .iter()
        .enumerate()
        .map(|(i, pc)| make_peer(identity, mode, i as u32, pc, backend))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(assemble(peers))
}

/// What the tasks share.
pub struct Shared {
    /// TUN or TAP.
    pub mode: Mode,
    /// Whether this is a server (several peers; a TAP server switches between them).
    pub server: bool,
    /// The device MTU.
    pub mtu: usize,
    /// The engine's start; notes are stamped relative to it.
    pub epoch: Instant,
    /// Our static identity.
    pub identity: Arc<Identity>,
    /// The AEAD backend for new sessions.
    pub backend: AeadBackend,
    /// The peers.
    pub table: ArcSwap<PeerTable>,
    /// The next slot a new peer gets (slots are never reused while the process runs, so a
    /// stale receiver index can never name a newer peer).
    pub next_slot: AtomicU32,
    /// The UDP sockets (one per device queue, all on one port), or none.
    pub udp: Vec<UdpIo>,
    /// The device.
    pub tun: device::Tun,
    /// The MAC table of a TAP server.
    pub switch: Switch,
    /// Drop counters.
    pub drops: Drops,
    /// Packets read from each device queue.
    pub queue_packets: Box<[std::sync::atomic::AtomicU64]>,
    /// Packets received with a partial checksum
    /// ([`PayloadFlags::PARTIAL_CHECKSUM`](ferrotun_proto::PayloadFlags::PARTIAL_CHECKSUM)).
    pub partial_checksums: std::sync::atomic::AtomicU64,
    /// Partial checksums this side completed itself (its device has no virtio-net header,
    /// `offload = false`, to hand them to the kernel with).
    pub checksums_completed: std::sync::atomic::AtomicU64,
    /// TCP connections waiting for a handshake.
    pub unauthenticated: Unauthenticated,
    /// Wakes the control task.
    pub wake: Notify,
    inbound: mpsc::Sender<Inbound>,
    /// Addresses we listen on, for `show`.
    pub listening: Vec<(Transport, SocketAddr)>,
    /// The interface name, for `show`.
    pub interface: String,
}

impl Shared {
    /// Nanoseconds since the epoch, plus one.
    pub fn stamp(&self, now: Instant) -> u64 {
        stamp(self.epoch, now)
    }

    /// Counts a drop and logs it at a limited rate.
    pub fn drop_packet(&self, reason: DropReason, detail: impl FnOnce() -> String) {
        if let Some(suppressed) = self.drops.count_and_should_log(reason) {
            tracing::warn!(reason = reason.name(), suppressed, "dropped: {}", detail());
        }
    }

    /// Counts a drop that concerns `peer` (globally and for the peer) and logs it at a
    /// limited rate.
    pub fn drop_for(&self, peer: &Peer, reason: DropReason, detail: impl FnOnce() -> String) {
        peer.drops.count(reason);
        self.drop_packet(reason, detail);
    }

    /// The longest message on the wire: a full frame sealed, or a handshake initiation.
    pub fn max_message(&self) -> usize {
        (ferrotun_proto::wire::DATA_HEADER_LEN + self.frame_len() + TRAILER)
            .max(ferrotun_proto::wire::INITIATION_LEN)
    }

    /// The offload reader of a send path, if the device has a virtio-net header.
    pub fn device_reader(&self) -> Option<ferrotun_device::vnet::Reader> {
        let layer = ferrotun_device::vnet::Layer::from(self.mode);
        // In TUN mode the packets cut from super-segments keep partial checksums, which
        // the receiving side completes (or has its kernel complete): the sum over every
        // byte was about 5 % of the sending process's perf samples. TAP frames may be
        // switched on to other peers, so they travel with full checksums.
        self.tun.offloads().map(|_| {
            ferrotun_device::vnet::Reader::with_layer(layer)
                .leave_checksums_partial(self.mode == Mode::Tun)
        })
    }

    /// The offload writer of a receive path, if the device has a virtio-net header. What
    /// it writes was decrypted, so it merges without verifying checksums (the AEAD tag
    /// already proved the packets intact).
    pub fn device_writer(&self) -> Option<ferrotun_device::vnet::Writer> {
        let layer = ferrotun_device::vnet::Layer::from(self.mode);
        self.tun
            .offloads()
            .map(|o| ferrotun_device::vnet::Writer::with_layer(o, layer).trust_checksums(true))
    }

    /// The longest packet the device hands us: the MTU, plus the Ethernet header in TAP
    /// mode.
    pub fn frame_len(&self) -> usize {
        self.mtu
            + if self.mode == Mode::Tap {
                ETHERNET_OVERHEAD
            } else {
                0
            }
    }

    /// Room for a decompressed payload.
    pub fn plain_len(&self) -> usize {
        self.frame_len() + 64
    }

    /// Sends one message to a peer address.
    pub async fn transmit(&self, bytes: &[u8], to: &PeerAddr) {
        match to {
            PeerAddr::Udp(addr) => {
                let Some(sock) = self.udp(0) else {
                    self.drops.count(DropReason::SendFailed);
                    return;
                };
                if let Err(e) = sock.send(*addr, bytes).await {
                    self.drop_packet(DropReason::SendFailed, || format!("sending to {addr}: {e}"));
                }
            }
            PeerAddr::Tcp(conn) => {
                if !conn.send_frame(bytes) {
                    self.drop_packet(DropReason::QueueFull, || {
                        format!("TCP connection to {} is closed or backed up", conn.remote)
                    });
                }
            }
        }
    }

    /// The UDP socket task `i` uses, if there are any.
    pub fn udp(&self, i: usize) -> Option<&UdpIo> {
        match self.udp.len() {
            0 => None,
            n => Some(&self.udp[i % n]),
        }
    }

    /// Hands a handshake message to the control task; false if its queue is full.
    fn to_control(&self, msg: Inbound) -> bool {
        if self.inbound.try_send(msg).is_err() {
            return false;
        }
        self.wake.notify_one();
        true
    }
}

/// The address as a peer is shown and compared: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        a => a,
    }
}

/// Publishes a session's keypairs and status to the data paths and `show`.
pub fn publish(peer: &Peer, s: &Session, now: Instant, epoch: Instant) {
    let current = s.current_keypair();
    let same = match (peer.send_keypair.load().as_ref(), current.as_ref()) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    };
    if !same {
        peer.send_keypair.store(current);
    }
    let live: Vec<Arc<Keypair>> = s.live_keypairs();
    let old = peer.recv_keypairs.load();
    if old.len() != live.len() || old.iter().zip(&live).any(|(a, b)| !Arc::ptr_eq(a, b)) {
        peer.recv_keypairs.store(Arc::new(live));
    }
    peer.next_index
        .store(s.next_keypair_index().unwrap_or(0), Ordering::Relaxed);
    peer.status
        .established
        .store(s.is_established(now), Ordering::Relaxed);
    peer.status.handshake_at.store(
        s.latest_handshake().map_or(0, |t| stamp(epoch, t)),
        Ordering::Relaxed,
    );
    peer.status
        .in_progress
        .store(s.is_handshake_in_progress(), Ordering::Relaxed);
}

/// A running engine.
pub struct Engine {
    /// What the tasks share (for `show`, reload and tests).
    pub shared: Arc<Shared>,
    tasks: JoinSet<anyhow::Result<()>>,
    stop: watch::Sender<bool>,
}

/// How the engine is set up.
pub struct EngineConfig {
    /// TUN or TAP.
    pub mode: Mode,
    /// A server (several peers) or a client (one).
    pub server: bool,
    /// Device MTU.
    pub mtu: u32,
    /// The interface's name.
    pub interface: String,
    /// Our key.
    pub identity: Arc<Identity>,
    /// The AEAD backend.
    pub backend: AeadBackend,
    /// The peers.
    pub table: PeerTable,
    /// The bound UDP sockets (one per queue, sharing a port), or none.
    pub udp: Vec<std::net::UdpSocket>,
    /// The bound TCP listener, if any (servers).
    pub tcp: Option<std::net::TcpListener>,
    /// The device queues (at least one).
    pub tun: Vec<ferrotun_device::Queue>,
    /// The offloads enabled on the device, if it has a virtio-net header.
    pub tun_offloads: Option<Offloads>,
    /// Whether UDP GSO/GRO may be used.
    pub udp_offload: bool,
    /// A client's connector settings.
    pub client: Option<client::ClientSettings>,
}

impl Engine {
    /// Starts the tasks. Must run inside a tokio runtime.
    pub fn start(cfg: EngineConfig) -> anyhow::Result<Engine> {
        let mut listening = Vec::new();
        let mut udp = Vec::with_capacity(cfg.udp.len());
        for s in cfg.udp {
            let io = UdpIo::new(s, cfg.udp_offload)?;
            if udp.is_empty() {
                listening.push((Transport::Udp, io.local_addr()?));
                tracing::debug!(
                    gso = io.max_segments(),
                    gro = io.gro_segments(),
                    "UDP socket"
                );
            }
            udp.push(io);
        }
        let tcp = match cfg.tcp {
            Some(l) => {
                l.set_nonblocking(true)?;
                listening.push((Transport::Tcp, l.local_addr()?));
                Some(tokio::net::TcpListener::from_std(l)?)
            }
            None => None,
        };
        anyhow::ensure!(!cfg.tun.is_empty(), "the device has no queue");
        let tun = cfg
            .tun
            .into_iter()
            .map(|q| q.into_async())
            .collect::<Result<Vec<_>, _>>()
            .context("registering the device with the runtime")?;
        let queue_count = tun.len();
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let next_slot = cfg.table.slots.len() as u32;
        let shared = Arc::new(Shared {
            mode: cfg.mode,
            server: cfg.server,
            mtu: cfg.mtu as usize,
            epoch: Instant::now(),
            identity: cfg.identity,
            backend: cfg.backend,
            table: ArcSwap::from_pointee(cfg.table),
            next_slot: AtomicU32::new(next_slot),
            udp,
            tun: device::Tun::new(tun, cfg.tun_offloads),
            switch: Switch::default(),
            drops: Drops::default(),
            queue_packets: (0..queue_count).map(|_| Default::default()).collect(),
            partial_checksums: Default::default(),
            checksums_completed: Default::default(),
            unauthenticated: Unauthenticated::default(),
            wake: Notify::new(),
            inbound: tx,
            listening,
            interface: cfg.interface,
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for i in 0..shared.tun.count() {
            tasks.spawn(send::send_path(shared.clone(), i));
        }
        for i in 0..shared.udp.len() {
            tasks.spawn(receive::udp_receive_path(shared.clone(), i));
        }
        if let Some(l) = tcp {
            tasks.spawn(tcp::accept_loop(shared.clone(), l));
        }
        tasks.spawn(control::run(shared.clone(), rx, stopped));
        if let Some(c) = cfg.client {
            tasks.spawn(client::run(shared.clone(), c));
        }
        Ok(Engine {
            shared,
            tasks,
            stop,
        })
    }

    /// Waits until a task fails (the engine cannot go on) and returns its error.
    pub async fn failed(&mut self) -> anyhow::Error {
        match self.tasks.join_next().await {
            Some(Ok(Err(e))) => e,
            Some(Ok(Ok(()))) => anyhow::anyhow!("a task ended"),
            Some(Err(e)) => anyhow::anyhow!("a task panicked: {e}"),
            None => anyhow::anyhow!("no tasks"),
        }
    }

    /// Stops every task and waits for them, releasing the device queue and the sockets.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for p in self.shared.table.load().peers() {
            p.disconnect();
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Replaces the peers: peers whose key and settings are unchanged keep their slot,
/// session and traffic (their allowed IPs may change); changed peers start a new
/// session; removed peers are cut off. Returns (added, removed, changed) names. Safe
/// while the data paths run (the table is swapped whole); it takes a while for many new
/// peers (a key agreement each), so the runner calls it off the runtime's thread.
pub fn reload_peers(s: &Shared, peers: &[PeerConfig]) -> anyhow::Result<ReloadSummary> {
    let old = s.table.load_full();
    let mut summary = ReloadSummary::default();
    let mut next: Vec<Arc<Peer>> = Vec::with_capacity(peers.len());
    for pc in peers {
        let existing = old
            .by_key
            .get(&pc.public_key)
            .and_then(|slot| old.get(*slot));
        match existing {
            Some(p) if p.config.same_session(pc) => {
                if p.allowed_ips().as_slice() != pc.allowed_ips.as_slice() || p.name() != pc.name {
                    summary.changed.push(pc.name.clone());
                }
                p.set_allowed_ips(pc.allowed_ips.clone());
                next.push(p.clone());
            }
            Some(p) => {
                summary.changed.push(pc.name.clone());
                p.disconnect();
                let slot = s.next_slot.fetch_add(1, Ordering::Relaxed);
                next.push(make_peer(&s.identity, s.mode, slot, pc, s.backend)?);
            }
            None => {
                summary.added.push(pc.name.clone());
                let slot = s.next_slot.fetch_add(1, Ordering::Relaxed);
                next.push(make_peer(&s.identity, s.mode, slot, pc, s.backend)?);
            }
        }
    }
    let kept: std::collections::HashSet<u32> = next.iter().map(|p| p.slot).collect();
    for p in old.peers().filter(|p| !kept.contains(&p.slot)) {
        if !summary.changed.contains(&p.config.name) {
            summary.removed.push(p.config.name.clone());
        }
        p.disconnect();
    }
    s.table.store(Arc::new(assemble(next)));
    s.wake.notify_one();
    Ok(summary)
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// New peers.
    pub added: Vec<String>,
    /// Peers no longer configured.
    pub removed: Vec<String>,
    /// Peers whose settings changed.
    pub changed: Vec<String>,
}

/// All prefixes of all peers in a table (for the interface's routes).
pub fn all_routes(t: &PeerTable) -> Vec<IpNet> {
    t.peers()
        .flat_map(|p| p.allowed_ips().iter().copied().collect::<Vec<_>>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_turn_ends_after_its_length_and_the_next_starts_there() {
        let start = Instant::now();
        let mut turn = Turn::new(start);
        assert!(!turn.is_over(start));
        assert!(!turn.is_over(start + TURN - Duration::from_micros(1)));
        assert!(turn.is_over(start + TURN));
        // The next turn is measured from the moment the last one ended.
        let second = start + TURN;
        assert!(!turn.is_over(second + TURN / 2));
        assert!(turn.is_over(second + TURN + Duration::from_micros(3)));
        // A clock reading older than the turn's start (another task's `now`) is no overrun.
        assert!(!turn.is_over(start));
    }

    #[test]
    fn a_turn_restarts_when_the_input_had_to_be_waited_for() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let old = Instant::now() - 4 * TURN;
        let mut turn = Turn::new(old);
        // Input that is ready at once: the task kept the thread, the turn goes on.
        assert_eq!(rt.block_on(turn.wait(std::future::ready(7))), 7);
        assert_eq!(turn.since, old);
        // Input that was pending once: the thread was given up, a new turn began.
        let before = Instant::now();
        rt.block_on(turn.wait(tokio::task::yield_now()));
        assert!(turn.since >= before, "the turn did not restart");
        assert!(!turn.is_over(turn.since + TURN / 2));
    }
}
