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
//!
//! [`Tally`] adds a batch's packets to a peer's traffic counters once per batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use ferrotun_proto::{HandshakeFlags, Keypair, Session};
use ipnet::IpNet;

use crate::config::PeerConfig;
use crate::stats::{DropCounts, Traffic};

use super::addr::PeerAddr;

/// Packets kept while a handshake is under way (the Linux driver's MAX_STAGED_PACKETS).
pub(crate) const MAX_STAGED: usize = 128;

/// Event times the data path leaves for the control task, as nanoseconds since the
/// engine's epoch plus one (0 = nothing new).
#[derive(Debug, Default)]
pub(crate) struct Notes {
    /// Last data packet sealed and sent by the send path.
    pub(crate) sent: AtomicU64,
    /// Last authenticated message (data or keepalive) opened by the receive path.
    pub(crate) received: AtomicU64,
    /// Last authenticated data message (not a keepalive) opened by the receive path.
    pub(crate) received_data: AtomicU64,
    /// Local index of a `next` keypair the peer has started using (0 = none).
    pub(crate) confirm: AtomicU32,
    /// The send path had no usable keypair (packets are staged) or wants a rekey.
    pub(crate) wants_handshake: AtomicBool,
    /// The path changed completely (a client's new TCP connection): start a new session.
    pub(crate) restart: AtomicBool,
    /// Set with any of the above; cleared by the control task when it looks.
    pub(crate) dirty: AtomicBool,
}

/// Nanoseconds since `epoch`, plus one so that 0 means "never".
pub(crate) fn stamp(epoch: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_nanos() as u64 + 1
}

/// The instant a stamp stands for.
pub(crate) fn unstamp(epoch: Instant, s: u64) -> Option<Instant> {
    (s != 0).then(|| epoch + std::time::Duration::from_nanos(s - 1))
}

/// What `show` and the client's connector read about a session, published by the
/// control task.
#[derive(Debug, Default)]
pub(crate) struct Status {
    /// A keypair can send.
    pub(crate) established: AtomicBool,
    /// A handshake of ours is waiting for its response.
    pub(crate) in_progress: AtomicBool,
    /// When the last handshake completed (a stamp; 0 = never).
    pub(crate) handshake_at: AtomicU64,
    /// When data was last sent to the peer (a stamp; 0 = never).
    pub(crate) sent_at: AtomicU64,
    /// When an authenticated message last came from the peer (a stamp; 0 = never).
    pub(crate) received_at: AtomicU64,
}

/// One peer.
pub(crate) struct Peer {
    /// Its slot: the session index, and its place in the peer table.
    pub(crate) slot: u32,
    /// As configured.
    pub(crate) config: PeerConfig,
    /// The capability flags we send this peer (compression, Ethernet).
    pub(crate) local_flags: HandshakeFlags,
    /// Where to send: the configured endpoint (client) or the source of the peer's last
    /// authenticated packet (roaming), a UDP address or a TCP connection.
    pub(crate) endpoint: ArcSwapOption<PeerAddr>,
    /// The inner prefixes the peer may use (reload may change them).
    allowed_ips: ArcSwap<Vec<IpNet>>,
    /// Session state for `show` and the connector.
    pub(crate) status: Status,
    /// The keypair the send path seals with.
    pub(crate) send_keypair: ArcSwapOption<Keypair>,
    /// Every keypair the receive path may open with.
    pub(crate) recv_keypairs: ArcSwap<Vec<Arc<Keypair>>>,
    /// Local index of the unconfirmed `next` keypair (0 = none).
    pub(crate) next_index: AtomicU32,
    /// The protocol state; only the control task locks it.
    pub(crate) session: Mutex<Session>,
    /// Packets from the device waiting for a handshake (plain packets, sent through the
    /// control task's outbox once a keypair exists).
    pub(crate) staged: Mutex<VecDeque<Vec<u8>>>,
    /// Events for the control task.
    pub(crate) notes: Notes,
    /// Counters.
    pub(crate) traffic: Traffic,
    /// Packets from or for this peer that were dropped, by reason.
    pub(crate) drops: DropCounts,
}

impl Peer {
    /// A peer with no endpoint and no keypair yet.
    pub(crate) fn new(
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
    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// Locks the session (control task only).
    pub(crate) fn session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the staging queue.
    pub(crate) fn staged(&self) -> MutexGuard<'_, VecDeque<Vec<u8>>> {
        self.staged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current endpoint.
    pub(crate) fn endpoint(&self) -> Option<PeerAddr> {
        self.endpoint.load().as_deref().cloned()
    }

    /// Records the peer's address (from an authenticated packet) and logs a change.
    ///
    /// A TCP connection the peer has left is closed: a peer whose old connection went
    /// half-open (a NAT forgot it, the host vanished) and who came back on a new one would
    /// otherwise leave the old one, and its buffers, open for good. A closed connection
    /// cannot take the endpoint back with a packet it read before it closed.
    pub(crate) fn set_endpoint(&self, addr: PeerAddr) {
        if let PeerAddr::Tcp(c) = &addr
            && c.is_closed()
        {
            return;
        }
        let old = self.endpoint.load();
        if old.as_deref().is_some_and(|o| o.path() == addr.path()) {
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
    pub(crate) fn clear_tcp(&self, conn_id: u64) {
        let cur = self.endpoint.load();
        if let Some(PeerAddr::Tcp(c)) = cur.as_deref()
            && c.id == conn_id
        {
            self.endpoint.compare_and_swap(&cur, None);
        }
    }

    /// Cuts the peer off: closes its TCP connection, forgets its address.
    pub(crate) fn disconnect(&self) {
        if let Some(PeerAddr::Tcp(c)) = self.endpoint.swap(None).as_deref() {
            c.close();
        }
    }

    /// The inner prefixes the peer may use.
    pub(crate) fn allowed_ips(&self) -> Guard<Arc<Vec<IpNet>>> {
        self.allowed_ips.load()
    }

    /// Replaces the peer's allowed IPs (reload).
    pub(crate) fn set_allowed_ips(&self, nets: Vec<IpNet>) {
        if self.allowed_ips.load().as_slice() != nets.as_slice() {
            self.allowed_ips.store(Arc::new(nets));
        }
    }

    /// Marks the peer for the control task's attention.
    pub(crate) fn mark(&self) {
        self.notes.dirty.store(true, Ordering::Release);
    }

    /// Asks the control task for a handshake (once until it looks), waking it through
    /// `wake`.
    pub(crate) fn want_handshake(&self, wake: &tokio::sync::Notify) {
        if !self.notes.wants_handshake.swap(true, Ordering::AcqRel) {
            self.mark();
            wake.notify_one();
        }
    }

    /// Publishes the session's keypairs and status to the data paths and `show` (control
    /// task, with the session locked).
    pub(crate) fn publish(&self, s: &Session, now: Instant, epoch: Instant) {
        let current = s.current_keypair();
        let same = match (self.send_keypair.load().as_ref(), current.as_ref()) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.send_keypair.store(current);
        }
        let live: Vec<Arc<Keypair>> = s.live_keypairs();
        let old = self.recv_keypairs.load();
        if old.len() != live.len() || old.iter().zip(&live).any(|(a, b)| !Arc::ptr_eq(a, b)) {
            self.recv_keypairs.store(Arc::new(live));
        }
        self.next_index
            .store(s.next_keypair_index().unwrap_or(0), Ordering::Relaxed);
        let st = &self.status;
        st.established
            .store(s.is_established(now), Ordering::Relaxed);
        st.handshake_at.store(
            s.latest_handshake().map_or(0, |t| stamp(epoch, t)),
            Ordering::Relaxed,
        );
        st.in_progress
            .store(s.is_handshake_in_progress(), Ordering::Relaxed);
    }

    /// The receiving keypair with local index `index`.
    pub(crate) fn recv_keypair(&self, index: u32) -> Option<Arc<Keypair>> {
        self.recv_keypairs
            .load()
            .iter()
            .find(|k| k.local_index() == index)
            .cloned()
    }
}

/// One direction of one peer's [`Traffic`], counted over a batch of packets and added to
/// the peer's counters when the peer changes or the batch ends ([`Tally::flush`]): three
/// atomic additions per batch rather than per packet. (Per packet they were about 1 % of
/// the sending process's perf samples, each a locked instruction.)
pub(crate) struct Tally {
    sent: bool,
    peer: Option<Arc<Peer>>,
    packets: u64,
    bytes: u64,
    payload: u64,
}

impl Tally {
    /// A tally of packets sent to peers.
    pub(crate) fn sent() -> Tally {
        Tally::new(true)
    }

    /// A tally of packets received from peers.
    pub(crate) fn received() -> Tally {
        Tally::new(false)
    }

    fn new(sent: bool) -> Tally {
        Tally {
            sent,
            peer: None,
            packets: 0,
            bytes: 0,
            payload: 0,
        }
    }

    /// Counts one packet of `len` inner bytes that took `payload` bytes on the wire.
    pub(crate) fn count(&mut self, peer: &Arc<Peer>, len: usize, payload: usize) {
        if !self.peer.as_ref().is_some_and(|p| Arc::ptr_eq(p, peer)) {
            self.flush();
            self.peer = Some(Arc::clone(peer));
        }
        self.packets += 1;
        self.bytes += len as u64;
        self.payload += payload as u64;
    }

    /// Adds what was counted to the peer's counters, and lets the peer go. Dropping the
    /// tally does the same.
    pub(crate) fn flush(&mut self) {
        if let Some(peer) = self.peer.take() {
            let t = &peer.traffic;
            let n = (self.packets, self.bytes, self.payload);
            if self.sent {
                t.add_sent(n);
            } else {
                t.add_received(n);
            }
        }
        self.packets = 0;
        self.bytes = 0;
        self.payload = 0;
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrotun_proto::{Identity, PrivateKey, SessionIndex};

    fn peer(slot: u32) -> Arc<Peer> {
        let identity = Arc::new(Identity::new(PrivateKey::from_bytes([0x11; 32])));
        let pc = crate::config::PeerConfig {
            name: format!("p{slot}"),
            public_key: PrivateKey::from_bytes([0x22 + slot as u8; 32]).public_key(),
            allowed_ips: Vec::new(),
            preshared_key: None,
            compress: false,
            keepalive: None,
        };
        let index = SessionIndex::new(slot).unwrap();
        let session = Session::new(identity, pc.public_key, None, index, Default::default());
        Arc::new(Peer::new(slot, pc, HandshakeFlags::NONE, session.unwrap()))
    }

    fn tx(p: &Peer) -> [u64; 3] {
        let t = &p.traffic;
        [&t.tx_packets, &t.tx_bytes, &t.tx_payload_bytes].map(|c| c.load(Ordering::Relaxed))
    }

    fn rx(p: &Peer) -> [u64; 3] {
        let t = &p.traffic;
        [&t.rx_packets, &t.rx_bytes, &t.rx_payload_bytes].map(|c| c.load(Ordering::Relaxed))
    }

    #[test]
    fn a_tally_adds_to_each_peer_what_it_counted_for_it() {
        let (a, b) = (peer(0), peer(1));
        let mut t = Tally::sent();
        t.count(&a, 100, 60);
        t.count(&a, 50, 50);
        assert_eq!(
            tx(&a),
            [0; 3],
            "nothing added before the peer changes or a flush"
        );
        t.count(&b, 10, 10);
        assert_eq!(tx(&a), [2, 150, 110]);
        t.count(&a, 1, 1);
        t.flush();
        t.flush();
        assert_eq!(tx(&a), [3, 151, 111]);
        assert_eq!(tx(&b), [1, 10, 10]);
        let mut r = Tally::received();
        r.count(&b, 7, 3);
        r.flush();
        assert_eq!(rx(&b), [1, 7, 3]);
        assert_eq!((rx(&a), tx(&b)), ([0; 3], [1, 10, 10]));
        let mut dropped = Tally::received();
        dropped.count(&a, 5, 5);
        drop(dropped);
        assert_eq!(rx(&a), [1, 5, 5], "a dropped tally adds what it counted");
        assert_eq!(
            Arc::strong_count(&a),
            1,
            "a flushed tally keeps no peer alive"
        );
    }
}
