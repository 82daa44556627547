//! A peer as the engine keeps it: its configuration, its protocol [`Session`] (owned by
//! the control task), and what the two data-path directions share with the control task
//! without sharing a lock with each other.
//!
//! The split: the send path (device to network) reads `send_keypair` and `endpoint`
//! and writes the `sent` note; the receive path (network to device) reads `recv_keypairs`,
//! writes `endpoint` when the peer roams and writes the `received` notes. Both are
//! lock-free (`ArcSwap` loads, relaxed atomics). The control task owns the session: it
//! folds the notes into the session's timers, runs handshakes, and publishes keypairs.
//! The only lock a data path takes is the staging queue (send path and control task),
//! used while no keypair exists.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use ferrotun_proto::{HandshakeFlags, Keypair, Session};
use ipnet::IpNet;

use crate::config::PeerConfig;
use crate::engine::PeerAddr;
use crate::stats::{DropCounts, Traffic};

/// Packets kept while a handshake is under way (the Linux driver's MAX_STAGED_PACKETS).
pub const MAX_STAGED: usize = 128;

/// Event times the data path leaves for the control task, as nanoseconds since the
/// engine's epoch plus one (0 = nothing new).
#[derive(Debug, Default)]
pub struct Notes {
    /// Last data packet sealed and sent by the send path.
    pub sent: AtomicU64,
    /// Last authenticated message (data or keepalive) opened by the receive path.
    pub received: AtomicU64,
    /// Last authenticated data message (not a keepalive) opened by the receive path.
    pub received_data: AtomicU64,
    /// Local index of a `next` keypair the peer has started using (0 = none).
    pub confirm: AtomicU32,
    /// The send path had no usable keypair (packets are staged) or wants a rekey.
    pub wants_handshake: AtomicBool,
    /// The path changed completely (a client's new TCP connection): start a new session.
    pub restart: AtomicBool,
    /// Set with any of the above; cleared by the control task when it looks.
    pub dirty: AtomicBool,
}

/// Nanoseconds since `epoch`, plus one so that 0 means "never".
pub fn stamp(epoch: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_nanos() as u64 + 1
}

/// The instant a stamp stands for.
pub fn unstamp(epoch: Instant, s: u64) -> Option<Instant> {
    (s != 0).then(|| epoch + std::time::Duration::from_nanos(s - 1))
}

/// What `show` and the client's connector read about a session, published by the
/// control task.
#[derive(Debug, Default)]
pub struct Status {
    /// A keypair can send.
    pub established: AtomicBool,
    /// A handshake of ours is waiting for its response.
    pub in_progress: AtomicBool,
    /// When the last handshake completed (a stamp; 0 = never).
    pub handshake_at: AtomicU64,
    /// When data was last sent to the peer (a stamp; 0 = never).
    pub sent_at: AtomicU64,
    /// When an authenticated message last came from the peer (a stamp; 0 = never).
    pub received_at: AtomicU64,
}

/// One peer.
pub struct Peer {
    /// Its slot: the session index, and its place in the peer table.
    pub slot: u32,
    /// As configured.
    pub config: PeerConfig,
    /// The capability flags we send this peer (compression, Ethernet).
    pub local_flags: HandshakeFlags,
    /// Where to send: the configured endpoint (client) or the source of the peer's last
    /// authenticated packet (roaming), a UDP address or a TCP connection.
    pub endpoint: ArcSwapOption<PeerAddr>,
    /// The inner prefixes the peer may use (reload may change them).
    allowed_ips: ArcSwap<Vec<IpNet>>,
    /// Session state for `show` and the connector.
    pub status: Status,
    /// Set when the peer was removed or replaced by a reload.
    pub removed: AtomicBool,
    /// The keypair the send path seals with.
    pub send_keypair: ArcSwapOption<Keypair>,
    /// Every keypair the receive path may open with.
    pub recv_keypairs: ArcSwap<Vec<Arc<Keypair>>>,
    /// Local index of the unconfirmed `next` keypair (0 = none).
    pub next_index: AtomicU32,
    /// The protocol state; only the control task locks it.
    pub session: Mutex<Session>,
    /// Packets from the device waiting for a handshake, each with room for the data
    /// header in front and padding and tag behind.
    pub staged: Mutex<VecDeque<Vec<u8>>>,
    /// Events for the control task.
    pub notes: Notes,
    /// Counters.
    pub traffic: Traffic,
    /// Packets from or for this peer that were dropped, by reason.
    pub drops: DropCounts,
}

impl Peer {
    /// A peer with no endpoint and no keypair yet.
    pub fn new(
        slot: u32,
        config: PeerConfig,
        local_flags: HandshakeFlags,
        session: Session,
    ) -> Peer {
        let allowed_ips = ArcSwap::from_pointee(config.allowed_ips.clone());
        Peer {
            slot,
            config,
            local_flags,
            endpoint: ArcSwapOption::empty(),
            allowed_ips,
            status: Status::default(),
            removed: AtomicBool::new(false),
            send_keypair: ArcSwapOption::empty(),
            recv_keypairs: ArcSwap::from_pointee(Vec::new()),
            next_index: AtomicU32::new(0),
            session: Mutex::new(session),
            staged: Mutex::new(VecDeque::new()),
            notes: Notes::default(),
            traffic: Traffic::default(),
            drops: DropCounts::default(),
        }
    }

    /// The peer's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Locks the session (control task only).
    pub fn session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the staging queue.
    pub fn staged(&self) -> MutexGuard<'_, VecDeque<Vec<u8>>> {
        self.staged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current endpoint.
    pub fn endpoint(&self) -> Option<PeerAddr> {
        self.endpoint.load().as_deref().cloned()
    }

    /// Records the peer's address (from an authenticated packet) and logs a change.
    ///
    /// A TCP connection the peer has left is closed: a peer whose old connection went
    /// half-open (a NAT forgot it, the host vanished) and who came back on a new one would
    /// otherwise leave the old one, and its buffers, open for good. A closed connection
    /// cannot take the endpoint back with a packet it read before it closed.
    pub fn set_endpoint(&self, addr: PeerAddr) {
        if let PeerAddr::Tcp(c) = &addr
            && c.is_closed()
        {
            return;
        }
        let old = self.endpoint.load();
        if old.as_deref().is_some_and(|o| o.same(&addr)) {
            return;
        }
        match old.as_deref() {
            None => tracing::info!(peer = self.name(), endpoint = %addr, "peer address learned"),
            Some(o) => {
                tracing::info!(peer = self.name(), endpoint = %addr, old = %o, "peer roamed");
                if let PeerAddr::Tcp(c) = o {
                    c.close();
                }
            }
        }
        self.endpoint.store(Some(Arc::new(addr)));
    }

    /// Forgets a TCP endpoint that closed.
    pub fn clear_tcp(&self, conn_id: u64) {
        let cur = self.endpoint.load();
        if let Some(PeerAddr::Tcp(c)) = cur.as_deref()
            && c.id == conn_id
        {
            self.endpoint.compare_and_swap(&cur, None);
        }
    }

    /// Cuts the peer off: closes its TCP connection, forgets its address.
    pub fn disconnect(&self) {
        self.removed.store(true, Ordering::Relaxed);
        if let Some(PeerAddr::Tcp(c)) = self.endpoint.swap(None).as_deref() {
            c.close();
        }
    }

    /// The inner prefixes the peer may use.
    pub fn allowed_ips(&self) -> Guard<Arc<Vec<IpNet>>> {
        self.allowed_ips.load()
    }

    /// Replaces the peer's allowed IPs (reload).
    pub fn set_allowed_ips(&self, nets: Vec<IpNet>) {
        if self.allowed_ips.load().as_slice() != nets.as_slice() {
            self.allowed_ips.store(Arc::new(nets));
        }
    }

    /// Marks the peer for the control task's attention.
    pub fn mark(&self) {
        self.notes.dirty.store(true, Ordering::Release);
    }
}
