//! The engine: the tokio driver that joins the device, the protocol sessions and the UDP
//! socket.
//!
//! Three tasks:
//! - the **send path** reads batches of packets from the device, routes each to a peer by
//!   its allowed IPs, seals it in place with the peer's current keypair and sends it;
//! - the **receive path** reads datagrams, opens data messages in place with the keypair
//!   their receiver index names, checks the inner source against the sending peer's
//!   allowed IPs and writes the packet to the device; handshake messages it hands to
//! - the **control task**, which owns every peer's [`Session`]: it answers and completes
//!   handshakes, runs the timers (retries, keepalives, rekeys, expiry), publishes keypairs
//!   to the data paths and flushes packets that waited for a handshake.
//!
//! The two data paths share no lock (see [`crate::peer`]) and allocate nothing per
//! packet: buffers are allocated once per task, keypairs and the peer table are read
//! through `ArcSwap`. Every datagram is hostile until authenticated: anything malformed,
//! unknown, replayed or wrongly keyed is dropped, counted by reason and logged at a
//! limited rate, and touches no peer's state.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use ferrotun_device::{AsyncQueue, Mode};
use ferrotun_proto::handshake::HandshakeError;
use ferrotun_proto::session::{REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME};
use ferrotun_proto::transport::TransportError;
use ferrotun_proto::wire::{
    DATA_HEADER_LEN, DataMessage, TYPE_COOKIE_REPLY, TYPE_DATA, TYPE_INITIATION, TYPE_RESPONSE,
};
use ferrotun_proto::{
    AeadBackend, HandshakeFlags, Identity, Keypair, Message, OsEntropy, PayloadFlags, Phase1,
    PublicKey, ResponseOutcome, Session, SessionConfig, SessionIndex, Transmit,
};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{PeerConfig, Transport};
use crate::peer::{MAX_STAGED, Peer, stamp, unstamp};
use crate::routing::{AllowedIps, ip_destination, ip_source};
use crate::stats::{DropReason, Drops};

/// Room after the payload for padding (to 16) and the tag.
const TRAILER: usize = 16 + 16;
/// Packets read from the device per wakeup.
const BATCH: usize = 32;
/// Handshake messages waiting for the control task; beyond this they are dropped (a flood
/// must not grow memory) and the responder considers itself under load.
const INBOUND_QUEUE: usize = 256;
/// Above this many queued handshake messages the responder asks for cookies (mac2).
const UNDER_LOAD: usize = 32;
/// The control task looks at every peer at least this often.
const MAX_IDLE: Duration = Duration::from_secs(1);

/// The peers, their routes and their keys, replaced whole on reload.
pub struct PeerTable {
    /// Peers by slot (= session index).
    pub slots: Vec<Option<Arc<Peer>>>,
    /// Slot by static public key.
    pub by_key: HashMap<PublicKey, u32>,
    /// Slot by inner address.
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

/// A handshake message for the control task.
struct Inbound {
    bytes: Vec<u8>,
    src: SocketAddr,
}

/// What the tasks share.
pub struct Shared {
    /// TUN or TAP.
    pub mode: Mode,
    /// The device MTU.
    pub mtu: usize,
    /// The engine's start; notes are stamped relative to it.
    pub epoch: Instant,
    /// Our static identity.
    pub identity: Arc<Identity>,
    /// The peers.
    pub table: ArcSwap<PeerTable>,
    /// The UDP socket.
    pub socket: UdpSocket,
    /// Whether the socket is IPv6 (IPv4 peers are then addressed as v4-mapped).
    socket_v6: bool,
    /// The device queue.
    pub tun: AsyncQueue,
    /// Drop counters.
    pub drops: Drops,
    /// Wakes the control task.
    wake: Notify,
    inbound: mpsc::Sender<Inbound>,
}

impl Shared {
    fn now_stamp(&self, now: Instant) -> u64 {
        stamp(self.epoch, now)
    }

    /// Counts a drop and logs it at a limited rate.
    fn drop_packet(&self, reason: DropReason, detail: impl FnOnce() -> String) {
        if let Some(suppressed) = self.drops.count_and_should_log(reason) {
            tracing::warn!(reason = reason.name(), suppressed, "dropped: {}", detail());
        }
    }

    fn wire_addr(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) if self.socket_v6 => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            a => a,
        }
    }

    async fn send_to(&self, bytes: &[u8], addr: SocketAddr) {
        if let Err(e) = self.socket.send_to(bytes, self.wire_addr(addr)).await {
            self.drop_packet(DropReason::SendFailed, || format!("sending to {addr}: {e}"));
        }
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

/// The bytes a cookie is bound to: the source address and port.
fn addr_bytes(addr: SocketAddr) -> ([u8; 18], usize) {
    let mut b = [0u8; 18];
    match addr {
        SocketAddr::V4(a) => {
            b[..4].copy_from_slice(&a.ip().octets());
            b[4..6].copy_from_slice(&a.port().to_be_bytes());
            (b, 6)
        }
        SocketAddr::V6(a) => {
            b[..16].copy_from_slice(&a.ip().octets());
            b[16..18].copy_from_slice(&a.port().to_be_bytes());
            (b, 18)
        }
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

/// Builds the peer table from configs; `endpoints` gives known endpoints by position.
pub fn build_table(
    identity: &Arc<Identity>,
    mode: Mode,
    peers: &[PeerConfig],
    backend: AeadBackend,
) -> anyhow::Result<PeerTable> {
    let mut table = PeerTable {
        slots: Vec::with_capacity(peers.len()),
        by_key: HashMap::with_capacity(peers.len()),
        routes: AllowedIps::new(),
    };
    for (i, pc) in peers.iter().enumerate() {
        let slot = i as u32;
        let index = SessionIndex::new(slot).context("too many peers")?;
        let flags = local_flags(mode, pc);
        let config = SessionConfig {
            persistent_keepalive: pc.keepalive,
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
        for net in &pc.allowed_ips {
            table.routes.insert(*net, slot);
        }
        table.by_key.insert(pc.public_key, slot);
        table
            .slots
            .push(Some(Arc::new(Peer::new(slot, pc.clone(), flags, session))));
    }
    Ok(table)
}

/// A running engine.
pub struct Engine {
    /// What the tasks share (for `show` and tests).
    pub shared: Arc<Shared>,
    tasks: JoinSet<anyhow::Result<()>>,
    stop: watch::Sender<bool>,
}

/// How the engine is set up.
pub struct EngineConfig {
    /// TUN or TAP.
    pub mode: Mode,
    /// Device MTU.
    pub mtu: u32,
    /// Our key.
    pub identity: Arc<Identity>,
    /// The peers.
    pub table: PeerTable,
    /// The bound UDP socket.
    pub socket: std::net::UdpSocket,
    /// The device queue.
    pub tun: ferrotun_device::Queue,
    /// Peers to start a handshake with right away (a client's server).
    pub connect: Vec<u32>,
}

impl Engine {
    /// Starts the three tasks. Must run inside a tokio runtime.
    pub fn start(cfg: EngineConfig) -> anyhow::Result<Engine> {
        cfg.socket.set_nonblocking(true)?;
        let socket_v6 = cfg.socket.local_addr()?.is_ipv6();
        let socket = UdpSocket::from_std(cfg.socket)?;
        let tun = cfg
            .tun
            .into_async()
            .context("registering the device with the runtime")?;
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let shared = Arc::new(Shared {
            mode: cfg.mode,
            mtu: cfg.mtu as usize,
            epoch: Instant::now(),
            identity: cfg.identity,
            table: ArcSwap::from_pointee(cfg.table),
            socket,
            socket_v6,
            tun,
            drops: Drops::default(),
            wake: Notify::new(),
            inbound: tx,
        });
        for slot in &cfg.connect {
            if let Some(p) = shared.table.load().get(*slot) {
                p.session().request_handshake();
                p.mark();
            }
        }
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(send_path(shared.clone()));
        tasks.spawn(receive_path(shared.clone()));
        tasks.spawn(control(shared.clone(), rx, stopped));
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
            Some(Ok(Ok(()))) => anyhow::anyhow!("a data path task ended"),
            Some(Err(e)) => anyhow::anyhow!("a task panicked: {e}"),
            None => anyhow::anyhow!("no tasks"),
        }
    }

    /// Stops every task and waits for them, releasing the device queue and the socket.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

// ---- send path ---------------------------------------------------------------------

async fn send_path(shared: Arc<Shared>) -> anyhow::Result<()> {
    let frame = shared.mtu + if shared.mode == Mode::Tap { 18 } else { 0 };
    let buf_len = DATA_HEADER_LEN + frame + TRAILER;
    let mut bufs = vec![vec![0u8; buf_len]; BATCH];
    let mut lens = [0usize; BATCH];
    loop {
        let n = shared
            .tun
            .recv_batch(&mut bufs, DATA_HEADER_LEN, &mut lens)
            .await
            .context("reading from the device")?;
        let now = Instant::now();
        let table = shared.table.load();
        for (buf, &len) in bufs.iter_mut().zip(&lens).take(n) {
            send_one(&shared, &table, buf, len, frame, now).await;
        }
    }
}

async fn send_one(
    shared: &Shared,
    table: &PeerTable,
    buf: &mut [u8],
    len: usize,
    frame: usize,
    now: Instant,
) {
    if len == 0 {
        return;
    }
    if len > frame {
        shared.drop_packet(DropReason::TooBig, || {
            format!("{len}-byte packet from the device exceeds the MTU")
        });
        return;
    }
    let packet = &buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len];
    let (slot, flags) = match shared.mode {
        Mode::Tun => {
            let Some(dst) = ip_destination(packet) else {
                shared.drops.count(DropReason::NoRoute);
                return;
            };
            match table.routes.lookup(dst) {
                Some(s) => (*s, PayloadFlags::NONE),
                // The host's own multicast (router solicitations, MLD) is routine: count it
                // without a warning.
                None if dst.is_multicast() => {
                    shared.drops.count(DropReason::NoRoute);
                    return;
                }
                None => {
                    shared.drop_packet(DropReason::NoRoute, || {
                        format!("no peer's allowed_ips covers {dst}")
                    });
                    return;
                }
            }
        }
        Mode::Tap => match table.peers().next() {
            // Point to point until the learning switch arrives: the one peer gets it all.
            Some(p) if table.slots.len() == 1 => (p.slot, PayloadFlags::ETHERNET),
            _ => {
                shared.drops.count(DropReason::NoRoute);
                return;
            }
        },
    };
    let Some(peer) = table.get(slot) else {
        shared.drops.count(DropReason::NoRoute);
        return;
    };
    let Some(ep) = peer.endpoint() else {
        shared.drop_packet(DropReason::NoEndpoint, || {
            format!("peer {} has not connected yet", peer.name())
        });
        return;
    };
    let keypair = peer.send_keypair.load();
    if let Some(kp) = keypair
        .as_deref()
        .filter(|k| now < k.created() + REJECT_AFTER_TIME)
    {
        match kp.seal(flags, len, buf, shared.mtu) {
            Ok(n) => {
                shared.send_to(&buf[..n], ep).await;
                peer.traffic.sent(len);
                peer.notes
                    .sent
                    .store(shared.now_stamp(now), Ordering::Relaxed);
                let stale = (kp.is_initiator() && now >= kp.created() + REKEY_AFTER_TIME)
                    || kp.send_counter() > REKEY_AFTER_MESSAGES;
                if stale && !peer.notes.wants_handshake.swap(true, Ordering::AcqRel) {
                    peer.mark();
                    shared.wake.notify_one();
                }
                return;
            }
            Err(TransportError::CounterExhausted) => {}
            Err(e) => {
                shared.drop_packet(DropReason::TooBig, || {
                    format!("sealing for {}: {e}", peer.name())
                });
                return;
            }
        }
    }
    // No usable keypair: keep the packet until a handshake completes.
    {
        let mut staged = peer.staged();
        if staged.len() >= MAX_STAGED {
            staged.pop_front();
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

// ---- receive path ------------------------------------------------------------------

async fn receive_path(shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 65536];
    let mut plain = vec![0u8; shared.mtu + 64];
    loop {
        let (n, src) = match shared.socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors surface as errors on an unconnected UDP socket; they are not ours
            // to act on.
            Err(e) if is_transient(&e) => continue,
            Err(e) => return Err(e).context("receiving from the UDP socket"),
        };
        receive_one(&shared, &mut buf[..n], canonical(src), &mut plain).await;
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

async fn receive_one(shared: &Shared, buf: &mut [u8], src: SocketAddr, plain: &mut [u8]) {
    match buf.first() {
        Some(&TYPE_DATA) => receive_data(shared, buf, src, plain).await,
        Some(&(TYPE_INITIATION | TYPE_RESPONSE | TYPE_COOKIE_REPLY)) => {
            if let Err(e) = Message::classify(buf) {
                shared.drop_packet(DropReason::Malformed, || format!("from {src}: {e}"));
                return;
            }
            let msg = Inbound {
                bytes: buf.to_vec(),
                src,
            };
            if shared.inbound.try_send(msg).is_err() {
                shared.drop_packet(DropReason::Cookie, || {
                    format!("handshake queue full, dropping one from {src}")
                });
            } else {
                shared.wake.notify_one();
            }
        }
        _ => shared.drop_packet(DropReason::Malformed, || {
            format!("{}-byte datagram of unknown type from {src}", buf.len())
        }),
    }
}

async fn receive_data(shared: &Shared, buf: &mut [u8], src: SocketAddr, plain: &mut [u8]) {
    let receiver = match DataMessage::new_checked(&buf[..]) {
        Ok(m) => m.receiver(),
        Err(e) => {
            shared.drop_packet(DropReason::Malformed, || format!("from {src}: {e}"));
            return;
        }
    };
    let now = Instant::now();
    let table = shared.table.load();
    let Some(peer) = table.get(SessionIndex::of_receiver(receiver).slot()) else {
        shared.drop_packet(DropReason::UnknownIndex, || {
            format!("index {receiver:#010x} from {src}")
        });
        return;
    };
    let keypairs = peer.recv_keypairs.load();
    let Some(kp) = keypairs.iter().find(|k| k.local_index() == receiver) else {
        shared.drop_packet(DropReason::UnknownIndex, || {
            format!("index {receiver:#010x} from {src}")
        });
        return;
    };
    if now >= kp.created() + REJECT_AFTER_TIME {
        shared.drops.count(DropReason::KeyExpired);
        return;
    }
    let (flags, range) = match kp.open(buf) {
        Ok(r) => r,
        Err(TransportError::Replay { .. }) => {
            shared.drop_packet(DropReason::Replay, || {
                format!("replayed or too old, from {src}")
            });
            return;
        }
        Err(e) => {
            shared.drop_packet(DropReason::Decrypt, || {
                format!("from {src} for peer {}: {e}", peer.name())
            });
            return;
        }
    };
    // Authenticated: the peer is at `src` now, and the control task learns of the packet.
    let stamp = shared.now_stamp(now);
    peer.notes.received.store(stamp, Ordering::Relaxed);
    peer.set_endpoint(src);
    if kp.local_index() == peer.next_index.load(Ordering::Relaxed)
        && peer.notes.confirm.swap(kp.local_index(), Ordering::AcqRel) != kp.local_index()
    {
        peer.mark();
        shared.wake.notify_one();
    }
    if range.is_empty() {
        return; // keepalive
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
        shared.drop_packet(DropReason::FlagsRefused, || {
            format!(
                "payload flags {:#04x} from peer {} do not fit its configuration",
                flags.bits(),
                peer.name()
            )
        });
        return;
    }
    let payload: &[u8] = if flags.contains(PayloadFlags::COMPRESSED) {
        match ferrotun_proto::decompress(&buf[range.clone()], plain) {
            Ok(n) => {
                peer.traffic
                    .rx_compressed_bytes
                    .fetch_add(range.len() as u64, Ordering::Relaxed);
                peer.traffic
                    .rx_decompressed_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
                &plain[..n]
            }
            Err(e) => {
                shared.drop_packet(DropReason::Decompress, || {
                    format!("from peer {}: {e}", peer.name())
                });
                return;
            }
        }
    } else {
        &buf[range.clone()]
    };
    let payload = if shared.mode == Mode::Tun {
        // Padding was added to 16; the IP header says where the packet ends.
        match ferrotun_proto::ip::ip_packet_len(payload) {
            Some(n) => &payload[..n],
            None => {
                shared.drop_packet(DropReason::Malformed, || {
                    format!("non-IP payload from peer {}", peer.name())
                });
                return;
            }
        }
    } else {
        payload
    };
    if shared.mode == Mode::Tun {
        let owner = ip_source(payload).and_then(|a| table.routes.lookup(a).copied());
        if owner != Some(peer.slot) {
            shared.drop_packet(DropReason::SourceNotAllowed, || {
                format!(
                    "peer {} sent a packet from {}, outside its allowed_ips",
                    peer.name(),
                    ip_source(payload).map_or("?".into(), |a| a.to_string())
                )
            });
            return;
        }
    }
    match shared.tun.send(payload).await {
        Ok(_) => peer.traffic.received(payload.len()),
        Err(e) => shared.drop_packet(DropReason::SendFailed, || {
            format!("writing to the device: {e}")
        }),
    }
}

// ---- control -----------------------------------------------------------------------

async fn control(
    shared: Arc<Shared>,
    mut inbound: mpsc::Receiver<Inbound>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut ctl = Control {
        shared: shared.clone(),
        rng: OsEntropy,
        out: vec![0u8; 256],
        deadlines: HashMap::new(),
    };
    let mut next = Instant::now();
    loop {
        let sleep = tokio::time::sleep_until(next.into());
        tokio::select! {
            msg = inbound.recv() => {
                if let Some(msg) = msg {
                    let under_load = inbound.len() >= UNDER_LOAD;
                    ctl.handle(msg, under_load).await;
                }
            }
            () = shared.wake.notified() => {}
            () = sleep => {}
            _ = stop.changed() => return Ok(()),
        }
        next = ctl.service_all().await;
    }
}

struct Control {
    shared: Arc<Shared>,
    rng: OsEntropy,
    out: Vec<u8>,
    /// When each peer's session next wants attention.
    deadlines: HashMap<u32, Instant>,
}

impl Control {
    /// Looks at every peer that has news or a due timer; returns when to look again.
    async fn service_all(&mut self) -> Instant {
        let now = Instant::now();
        let table = self.shared.table.load_full();
        let mut next = now + MAX_IDLE;
        for peer in table.peers() {
            let due = self.deadlines.get(&peer.slot).is_some_and(|d| *d <= now);
            if peer.notes.dirty.swap(false, Ordering::AcqRel) || due {
                self.service(peer).await;
            }
            if let Some(d) = self.deadlines.get(&peer.slot) {
                next = next.min(*d);
            }
        }
        next.max(now + Duration::from_millis(1))
    }

    /// Folds the data paths' notes into the session, runs its timers and sends what it asks.
    async fn service(&mut self, peer: &Arc<Peer>) {
        let now = Instant::now();
        let epoch = self.shared.epoch;
        let mut transmits: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
        let mut dropped_queue = false;
        {
            let mut s = peer.session();
            let n = &peer.notes;
            let sent = unstamp(epoch, n.sent.swap(0, Ordering::AcqRel));
            let received = unstamp(epoch, n.received.swap(0, Ordering::AcqRel));
            let received_data = unstamp(epoch, n.received_data.swap(0, Ordering::AcqRel));
            let confirm = n.confirm.swap(0, Ordering::AcqRel);
            // Apply in the order they happened, so the keepalive timer ends up as WireGuard's.
            let mut events: Vec<(Instant, u8)> = Vec::with_capacity(3);
            if let Some(t) = received {
                events.push((t, 0));
            }
            if let Some(t) = received_data {
                events.push((t, 1));
            }
            if let Some(t) = sent {
                events.push((t, 2));
            }
            events.sort();
            if confirm != 0 {
                s.note_received(received.unwrap_or(now), Some(confirm), false);
            }
            for (t, kind) in events {
                match kind {
                    0 => s.note_received(t, None, false),
                    1 => s.note_received(t, None, true),
                    _ => s.note_sent(t),
                }
            }
            if n.wants_handshake.swap(false, Ordering::AcqRel) {
                s.note_queued();
            }
            let endpoint = peer.endpoint();
            loop {
                match s.poll_transmit(now, SystemTime::now(), &mut self.rng, &mut self.out) {
                    Ok(Some(Transmit::Initiation(len))) => match endpoint {
                        Some(ep) => {
                            tracing::debug!(peer = peer.name(), endpoint = %ep, "sending handshake initiation");
                            transmits.push((self.out[..len].to_vec(), ep));
                        }
                        None => tracing::debug!(
                            peer = peer.name(),
                            "handshake due, but no endpoint known"
                        ),
                    },
                    Ok(Some(Transmit::Keepalive(len))) => {
                        if let Some(ep) = endpoint {
                            transmits.push((self.out[..len].to_vec(), ep));
                        }
                    }
                    Ok(Some(Transmit::FlushQueue)) => {
                        let staged: Vec<Vec<u8>> = peer.staged().drain(..).collect();
                        let flags = if self.shared.mode == Mode::Tap {
                            PayloadFlags::ETHERNET
                        } else {
                            PayloadFlags::NONE
                        };
                        for mut v in staged {
                            let len = v.len() - DATA_HEADER_LEN - TRAILER;
                            match s.encapsulate(now, flags, len, &mut v, self.shared.mtu) {
                                Ok(ferrotun_proto::Encapsulated::Send(n)) => {
                                    if let Some(ep) = endpoint {
                                        v.truncate(n);
                                        peer.traffic.sent(len);
                                        transmits.push((v, ep));
                                    }
                                }
                                Ok(ferrotun_proto::Encapsulated::Queue) => {
                                    peer.staged().push_back(v);
                                }
                                Err(e) => tracing::debug!(
                                    peer = peer.name(),
                                    "sealing a staged packet: {e}"
                                ),
                            }
                        }
                    }
                    Ok(Some(Transmit::DropQueue)) => {
                        let n = {
                            let mut q = peer.staged();
                            let n = q.len();
                            q.clear();
                            n
                        };
                        for _ in 0..n {
                            self.shared.drops.count(DropReason::QueueFull);
                        }
                        dropped_queue = true;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(peer = peer.name(), "session: {e}");
                        break;
                    }
                }
            }
            publish(peer, &s);
            match s.next_timeout() {
                Some(t) => self.deadlines.insert(peer.slot, t),
                None => self.deadlines.remove(&peer.slot),
            };
        }
        if dropped_queue {
            tracing::info!(
                peer = peer.name(),
                "no handshake for 90 s; giving up until there is traffic again"
            );
        }
        for (bytes, ep) in transmits {
            self.shared.send_to(&bytes, ep).await;
        }
    }

    async fn handle(&mut self, msg: Inbound, under_load: bool) {
        let now = Instant::now();
        let (src_bytes, src_len) = addr_bytes(msg.src);
        let src_bytes = &src_bytes[..src_len];
        let mut reply = [0u8; 64];
        let shared = self.shared.clone();
        let table = shared.table.load_full();
        match msg.bytes[0] {
            TYPE_INITIATION => {
                let pending = match shared.identity.begin_initiation(
                    &msg.bytes,
                    src_bytes,
                    under_load,
                    now,
                    &mut self.rng,
                    &mut reply,
                ) {
                    Ok(Phase1::Pending(p)) => p,
                    Ok(Phase1::CookieReply(n)) => {
                        shared.drops.count(DropReason::Cookie);
                        shared.send_to(&reply[..n], msg.src).await;
                        return;
                    }
                    Err(e) => {
                        shared.drop_packet(DropReason::HandshakeInvalid, || {
                            format!("initiation from {}: {e}", msg.src)
                        });
                        return;
                    }
                };
                let Some(peer) = table
                    .by_key
                    .get(&pending.initiator())
                    .and_then(|s| table.get(*s))
                else {
                    shared.drop_packet(DropReason::HandshakeUnknownPeer, || {
                        format!(
                            "initiation from {} with unknown key {}",
                            msg.src,
                            pending.initiator()
                        )
                    });
                    return;
                };
                let theirs = pending.flags();
                let accepted = {
                    let mut s = peer.session();
                    let r = s.accept_initiation(pending, now, &mut self.rng, &mut self.out);
                    if r.is_ok() {
                        publish(peer, &s);
                    }
                    r
                };
                match accepted {
                    Ok(n) => {
                        if let Some(why) =
                            flags_mismatch(peer.local_flags, theirs, "this server", "the peer")
                        {
                            shared.drop_packet(DropReason::HandshakeRefused, || {
                                format!("peer {}: settings differ ({why}); the peer will refuse the session", peer.name())
                            });
                        }
                        peer.set_endpoint(msg.src);
                        tracing::debug!(peer = peer.name(), endpoint = %msg.src, "answered handshake initiation");
                        shared.send_to(&self.out[..n], msg.src).await;
                    }
                    Err(e) => {
                        let reason = if matches!(
                            e,
                            HandshakeError::ReplayedInitiation { .. }
                                | HandshakeError::InitiationFlood { .. }
                        ) {
                            DropReason::HandshakeReplay
                        } else {
                            DropReason::HandshakeInvalid
                        };
                        shared.drop_packet(reason, || {
                            format!("initiation from peer {} at {}: {e}", peer.name(), msg.src)
                        });
                    }
                }
            }
            TYPE_RESPONSE | TYPE_COOKIE_REPLY => {
                // A response names our index in bytes 8..12, a cookie reply in 4..8.
                let at = if msg.bytes[0] == TYPE_RESPONSE { 8 } else { 4 };
                let index = u32::from_le_bytes(
                    msg.bytes[at..at + 4]
                        .try_into()
                        .expect("classified message"),
                );
                let Some(peer) = table.get(SessionIndex::of_receiver(index).slot()).cloned() else {
                    shared.drop_packet(DropReason::UnknownIndex, || {
                        format!("handshake reply for index {index:#010x} from {}", msg.src)
                    });
                    return;
                };
                if msg.bytes[0] == TYPE_COOKIE_REPLY {
                    if let Err(e) = peer.session().on_cookie_reply(&msg.bytes, now) {
                        shared.drop_packet(DropReason::HandshakeInvalid, || {
                            format!("cookie reply from {}: {e}", msg.src)
                        });
                    }
                    return;
                }
                let outcome = {
                    let mut s = peer.session();
                    let r = s.on_response(
                        &msg.bytes,
                        src_bytes,
                        under_load,
                        now,
                        &mut self.rng,
                        &mut reply,
                    );
                    if let Ok(ResponseOutcome::Established) = r {
                        let theirs = s.peer_flags().unwrap_or_default();
                        if let Some(why) =
                            flags_mismatch(peer.local_flags, theirs, "this side", "the server")
                        {
                            s.reset();
                            publish(&peer, &s);
                            shared.drop_packet(DropReason::HandshakeRefused, || {
                                format!("peer {} refused: settings differ ({why})", peer.name())
                            });
                            return;
                        }
                        publish(&peer, &s);
                    }
                    r
                };
                match outcome {
                    Ok(ResponseOutcome::Established) => {
                        peer.traffic.handshakes.fetch_add(1, Ordering::Relaxed);
                        peer.set_endpoint(msg.src);
                        let first = peer.traffic.handshakes.load(Ordering::Relaxed) == 1;
                        if first {
                            tracing::info!(peer = peer.name(), endpoint = %msg.src, "handshake complete: tunnel up");
                        } else {
                            tracing::debug!(peer = peer.name(), endpoint = %msg.src, "rekeyed");
                        }
                        self.service(&peer).await;
                    }
                    Ok(ResponseOutcome::CookieReply(n)) => {
                        shared.drops.count(DropReason::Cookie);
                        shared.send_to(&reply[..n], msg.src).await;
                    }
                    Err(e) => shared.drop_packet(DropReason::HandshakeInvalid, || {
                        format!("response from {}: {e}", msg.src)
                    }),
                }
            }
            _ => shared.drops.count(DropReason::Malformed),
        }
    }
}

/// Publishes a session's keypairs to the data paths.
fn publish(peer: &Peer, s: &Session) {
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
}

/// The transport a config asks for; only UDP runs in this engine so far.
pub fn check_transport(t: Transport) -> anyhow::Result<()> {
    match t {
        Transport::Udp => Ok(()),
        Transport::Tcp => anyhow::bail!("transport = \"tcp\" is not implemented yet; use \"udp\""),
    }
}
