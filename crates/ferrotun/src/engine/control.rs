//! The control task: owner of every peer's [`Session`].
//!
//! It answers handshake initiations (two-phase: the protocol crate decrypts the
//! initiator's key, we find the peer, its session checks freshness and answers), completes
//! our own handshakes, folds the data paths' notes into each session's timers, sends what
//! the sessions ask for (initiations, keepalives, packets that waited for a handshake),
//! publishes keypairs, and ages the TAP switch's MAC table.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use ferrotun_device::Mode;
use ferrotun_proto::handshake::HandshakeError;
use ferrotun_proto::wire::{DATA_HEADER_LEN, TYPE_COOKIE_REPLY, TYPE_INITIATION, TYPE_RESPONSE};
use ferrotun_proto::{
    Encapsulated, OsEntropy, PayloadFlags, Phase1, ResponseOutcome, SessionIndex, Transmit,
};
use tokio::sync::{mpsc, watch};

use super::{PeerAddr, Shared, TRAILER, flags_mismatch, publish};
use crate::peer::{Peer, unstamp};
use crate::stats::DropReason;

/// Above this many queued handshake messages the responder asks for cookies (mac2).
const UNDER_LOAD: usize = 32;
/// The control task looks at every peer at least this often.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// While the data paths leave notes (traffic flows), they are folded into the sessions
/// this often. The data paths never wake the control task for a note: at packet rates that
/// would keep it spinning; WireGuard's timers only need this resolution.
const NOTES_EVERY: Duration = Duration::from_millis(100);
/// How often the MAC table is aged.
const AGE_EVERY: Duration = Duration::from_secs(10);

/// A handshake message for the control task.
pub struct Inbound {
    /// The message.
    pub bytes: Vec<u8>,
    /// Where it came from (and where an answer goes).
    pub src: PeerAddr,
}

/// Runs the control task until told to stop.
pub async fn run(
    shared: Arc<Shared>,
    mut inbound: mpsc::Receiver<Inbound>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut ctl = Control {
        shared: shared.clone(),
        rng: OsEntropy,
        out: vec![0u8; 256],
        deadlines: HashMap::new(),
        aged_at: Instant::now(),
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
    aged_at: Instant,
}

impl Control {
    /// Looks at every peer that has news or a due timer; returns when to look again.
    async fn service_all(&mut self) -> Instant {
        let now = Instant::now();
        let table = self.shared.table.load_full();
        let mut next = now + MAX_IDLE;
        self.deadlines.retain(|slot, _| table.get(*slot).is_some());
        let mut busy = false;
        for peer in table.peers() {
            let due = self.deadlines.get(&peer.slot).is_some_and(|d| *d <= now);
            let n = &peer.notes;
            let noted =
                n.sent.load(Ordering::Relaxed) != 0 || n.received.load(Ordering::Relaxed) != 0;
            busy |= noted;
            if n.dirty.swap(false, Ordering::AcqRel) || due || noted {
                self.service(peer).await;
            }
            if let Some(d) = self.deadlines.get(&peer.slot) {
                next = next.min(*d);
            }
        }
        if self.shared.mode == Mode::Tap && self.shared.server && now >= self.aged_at + AGE_EVERY {
            self.aged_at = now;
            let n = self.shared.switch.age(self.shared.stamp(now), |slot| {
                slot != super::switch::LOCAL && table.get(slot).is_none()
            });
            if n > 0 {
                tracing::debug!(forgotten = n, "MAC table aged");
            }
        }
        if busy {
            next = next.min(now + NOTES_EVERY);
        }
        next.max(now + Duration::from_millis(1))
    }

    /// Folds the data paths' notes into the session, runs its timers and sends what it asks.
    async fn service(&mut self, peer: &Arc<Peer>) {
        let now = Instant::now();
        let epoch = self.shared.epoch;
        let mut transmits: Vec<(Vec<u8>, PeerAddr)> = Vec::new();
        let mut gave_up = false;
        {
            let mut s = peer.session();
            let n = &peer.notes;
            if n.restart.swap(false, Ordering::AcqRel) {
                s.restart();
                publish(peer, &s, now, epoch);
            }
            let sent = unstamp(epoch, n.sent.swap(0, Ordering::AcqRel));
            let received = unstamp(epoch, n.received.swap(0, Ordering::AcqRel));
            let received_data = unstamp(epoch, n.received_data.swap(0, Ordering::AcqRel));
            for (t, at) in [
                (sent, &peer.status.sent_at),
                (received, &peer.status.received_at),
            ] {
                if let Some(t) = t {
                    at.fetch_max(crate::peer::stamp(epoch, t), Ordering::Relaxed);
                }
            }
            let confirm = n.confirm.swap(0, Ordering::AcqRel);
            if confirm != 0 {
                let was = s.current_keypair().map(|k| k.local_index());
                s.note_received(received.unwrap_or(now), Some(confirm), false);
                if was != Some(confirm)
                    && s.current_keypair()
                        .is_some_and(|k| k.local_index() == confirm)
                {
                    peer.traffic.handshakes.fetch_add(1, Ordering::Relaxed);
                    log_handshake(peer, peer.endpoint().as_ref());
                }
            }
            // Apply in the order they happened, so the keepalive timer ends up as WireGuard's.
            let mut events: Vec<(Instant, u8)> = Vec::with_capacity(3);
            events.extend(received.map(|t| (t, 0)));
            events.extend(received_data.map(|t| (t, 1)));
            events.extend(sent.map(|t| (t, 2)));
            events.sort();
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
                    Ok(Some(Transmit::Initiation(len))) => match &endpoint {
                        Some(ep) => {
                            tracing::debug!(peer = peer.name(), endpoint = %ep, "sending handshake initiation");
                            transmits.push((self.out[..len].to_vec(), ep.clone()));
                        }
                        None => tracing::debug!(
                            peer = peer.name(),
                            "handshake due, but no endpoint known"
                        ),
                    },
                    Ok(Some(Transmit::Keepalive(len))) => {
                        if let Some(ep) = &endpoint {
                            transmits.push((self.out[..len].to_vec(), ep.clone()));
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
                                Ok(Encapsulated::Send(n)) => {
                                    if let Some(ep) = &endpoint {
                                        v.truncate(n);
                                        peer.traffic.sent(len, len);
                                        transmits.push((v, ep.clone()));
                                    }
                                }
                                Ok(Encapsulated::Queue) => peer.staged().push_back(v),
                                Err(e) => tracing::debug!(
                                    peer = peer.name(),
                                    "sealing a staged packet: {e}"
                                ),
                            }
                        }
                    }
                    Ok(Some(Transmit::DropQueue)) => {
                        let n = std::mem::take(&mut *peer.staged()).len();
                        for _ in 0..n {
                            self.shared.drops.count(DropReason::QueueFull);
                        }
                        gave_up = true;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(peer = peer.name(), "session: {e}");
                        break;
                    }
                }
            }
            publish(peer, &s, now, epoch);
            match s.next_timeout() {
                Some(t) => self.deadlines.insert(peer.slot, t),
                None => self.deadlines.remove(&peer.slot),
            };
        }
        if gave_up {
            tracing::info!(
                peer = peer.name(),
                "no handshake for 90 s: giving up until there is traffic again"
            );
        }
        for (bytes, ep) in transmits {
            self.shared.transmit(&bytes, &ep).await;
        }
    }

    async fn handle(&mut self, msg: Inbound, under_load: bool) {
        // A cookie proves that the sender receives at its source address (WireGuard
        // whitepaper §5.4.7). A TCP connection's handshake proved that already, and a cookie
        // bound to its port would die with it: a client asked for one would retry only
        // after the server has closed the connection that never authenticated, then start
        // over on a new port, and never get in while the load lasts.
        let under_load = under_load && matches!(msg.src, PeerAddr::Udp(_));
        let now = Instant::now();
        let src_sock = msg.src.addr();
        let (src_bytes, src_len) = addr_bytes(src_sock);
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
                        shared.transmit(&reply[..n], &msg.src).await;
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
                        publish(peer, &s, now, shared.epoch);
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
                        if let PeerAddr::Tcp(c) = &msg.src {
                            c.authenticate(peer.slot);
                        }
                        peer.set_endpoint(msg.src.clone());
                        tracing::debug!(peer = peer.name(), endpoint = %msg.src, "answered handshake initiation");
                        shared.transmit(&self.out[..n], &msg.src).await;
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
                            publish(&peer, &s, now, shared.epoch);
                            drop(s);
                            shared.drop_packet(DropReason::HandshakeRefused, || {
                                format!("peer {} refused: settings differ ({why})", peer.name())
                            });
                            return;
                        }
                        publish(&peer, &s, now, shared.epoch);
                    }
                    r
                };
                match outcome {
                    Ok(ResponseOutcome::Established) => {
                        peer.traffic.handshakes.fetch_add(1, Ordering::Relaxed);
                        if let PeerAddr::Tcp(c) = &msg.src {
                            c.authenticate(peer.slot);
                        }
                        peer.set_endpoint(msg.src.clone());
                        log_handshake(&peer, Some(&msg.src));
                        self.service(&peer).await;
                    }
                    Ok(ResponseOutcome::CookieReply(n)) => {
                        shared.drops.count(DropReason::Cookie);
                        shared.transmit(&reply[..n], &msg.src).await;
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

fn log_handshake(peer: &Peer, ep: Option<&PeerAddr>) {
    let ep = ep.map(ToString::to_string).unwrap_or_default();
    if peer.traffic.handshakes.load(Ordering::Relaxed) == 1 {
        tracing::info!(peer = peer.name(), endpoint = %ep, "handshake complete: tunnel up");
    } else {
        tracing::debug!(peer = peer.name(), endpoint = %ep, "new session keys");
    }
}

/// The bytes a cookie is bound to: the source address and port.
fn addr_bytes(addr: std::net::SocketAddr) -> ([u8; 18], usize) {
    let mut b = [0u8; 18];
    match addr {
        std::net::SocketAddr::V4(a) => {
            b[..4].copy_from_slice(&a.ip().octets());
            b[4..6].copy_from_slice(&a.port().to_be_bytes());
            (b, 6)
        }
        std::net::SocketAddr::V6(a) => {
            b[..16].copy_from_slice(&a.ip().octets());
            b[16..18].copy_from_slice(&a.port().to_be_bytes());
            (b, 18)
        }
    }
}
