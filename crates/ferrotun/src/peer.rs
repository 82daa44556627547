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
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};
use ferrotun_proto::{HandshakeFlags, Keypair, Session};

use crate::config::PeerConfig;
use crate::stats::Traffic;

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

/// One peer.
pub struct Peer {
    /// Its slot: the session index, and its place in the peer table.
    pub slot: u32,
    /// As configured.
    pub config: PeerConfig,
    /// The capability flags we send this peer (compression, Ethernet).
    pub local_flags: HandshakeFlags,
    /// Where to send: the configured endpoint (client) or the source of the peer's last
    /// authenticated packet (roaming).
    pub endpoint: ArcSwapOption<SocketAddr>,
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
}

impl Peer {
    /// A peer with no endpoint and no keypair yet.
    pub fn new(
        slot: u32,
        config: PeerConfig,
        local_flags: HandshakeFlags,
        session: Session,
    ) -> Peer {
        Peer {
            slot,
            config,
            local_flags,
            endpoint: ArcSwapOption::empty(),
            send_keypair: ArcSwapOption::empty(),
            recv_keypairs: ArcSwap::from_pointee(Vec::new()),
            next_index: AtomicU32::new(0),
            session: Mutex::new(session),
            staged: Mutex::new(VecDeque::new()),
            notes: Notes::default(),
            traffic: Traffic::default(),
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
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint.load().as_deref().copied()
    }

    /// Records the peer's address (from an authenticated packet) and logs a change.
    pub fn set_endpoint(&self, addr: SocketAddr) {
        let old = self.endpoint();
        if old == Some(addr) {
            return;
        }
        self.endpoint.store(Some(Arc::new(addr)));
        match old {
            None => tracing::info!(peer = self.name(), endpoint = %addr, "peer address learned"),
            Some(old) => tracing::info!(peer = self.name(), endpoint = %addr, %old, "peer roamed"),
        }
    }

    /// Marks the peer for the control task's attention.
    pub fn mark(&self) {
        self.notes.dirty.store(true, Ordering::Release);
    }
}
