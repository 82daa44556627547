//! The control task: owner of every peer's [`Session`](ferrotun_proto::Session).
//!
//! It answers handshake initiations (two-phase: the protocol crate decrypts the
//! initiator's key, we find the peer, its session checks freshness and answers), completes
//! our own handshakes, folds the data paths' notes into each session's timers, sends what
//! the sessions ask for (initiations, keepalives, packets that waited for a handshake),
//! publishes keypairs, and ages the TAP switch's MAC table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use ferrotun_device::Mode;
use ferrotun_proto::handshake::HandshakeError;
use ferrotun_proto::wire::{CookieReply, INITIATION_LEN, Initiation, RESPONSE_LEN, Response};
use ferrotun_proto::{HandshakeMessage, OsEntropy, Phase1, ResponseOutcome, Transmit};
use tokio::sync::{mpsc, watch};

use crate::stats::DropReason;

use super::addr::PeerAddr;
use super::outbox::Outbox;
use super::peer::{MAX_STAGED, Peer, stamp, unstamp};
use super::shared::{Inbound, Shared};
use super::switch::LOCAL;
use super::table::flags_mismatch;

/// From this many queued handshake messages on, the responder is under load: it asks for
/// cookies (mac2) instead of doing a handshake's Diffie-Hellman work.
const UNDER_LOAD: usize = 32;
/// The load lasts this long after the queue was last that full (WireGuard's
/// `UNDER_LOAD_AFTER_TIME`, one second). Without it, a dip of the queue below the mark
/// (another task took the CPU for a moment) sends the responder back to a Diffie-Hellman
/// per junk initiation, which takes the CPU from whatever fills the queue: a flood that
/// is just a little slower than the responder then gets full handshake work for every
/// message, and the load never shows again.
const UNDER_LOAD_FOR: Duration = Duration::from_secs(1);

/// Whether the responder is under load, with hysteresis ([`UNDER_LOAD_FOR`]).
#[derive(Debug, Default)]
struct Load {
    until: Option<Instant>,
}

impl Load {
    /// Notes that `queued` messages wait at `now`; returns whether the responder is
    /// under load.
    fn update(&mut self, queued: usize, now: Instant) -> bool {
        if queued >= UNDER_LOAD {
            self.until = Some(now + UNDER_LOAD_FOR);
        }
        self.until.is_some_and(|t| now < t)
    }
}
/// The control task looks at every peer at least this often.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// While the data paths leave notes (traffic flows), they are folded into the sessions
/// this often. The data paths never wake the control task for a note: at packet rates that
/// would keep it spinning; WireGuard's timers only need this resolution.
const NOTES_EVERY: Duration = Duration::from_millis(100);
/// How often the MAC table is aged.
const AGE_EVERY: Duration = Duration::from_secs(10);

/// Runs the control task until told to stop.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut inbound: mpsc::Receiver<Inbound>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut ctl = Control {
        out: Outbox::new(&shared, 0, 0, MAX_STAGED),
        shared,
        rng: OsEntropy,
        buf: vec![0u8; 256],
        deadlines: HashMap::new(),
        aged_at: Instant::now(),
    };
    let mut next = Instant::now();
    let mut load = Load::default();
    loop {
        let sleep = tokio::time::sleep_until(next.into());
        tokio::select! {
            msg = inbound.recv() => {
                if let Some(msg) = msg {
                    let under_load = load.update(inbound.len(), Instant::now());
                    ctl.handle(msg, under_load).await;
                }
            }
            () = ctl.shared.wake.notified() => {}
            () = sleep => {}
            _ = stop.changed() => return Ok(()),
        }
        next = ctl.service_all().await;
    }
}

struct Control {
    shared: Arc<Shared>,
    rng: OsEntropy,
    /// Room for a handshake message or keepalive the session writes.
    buf: Vec<u8>,
    /// Seals the packets that waited for a handshake.
    out: Outbox,
    /// When each peer's session next wants attention.
    deadlines: HashMap<u32, Instant>,
    aged_at: Instant,
}

impl Control {
    /// Looks at every peer that has news or a due timer; returns when to look again.
    async fn service_all(&mut self) -> Instant {
        let now = Instant::now();
        let table = self.shared.peers.load_full();
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
        let shared = &self.shared;
        if shared.settings.mode == Mode::Tap
            && shared.settings.server
            && now >= self.aged_at + AGE_EVERY
        {
            self.aged_at = now;
            let n = shared.switch.age(shared.stamp(now), |port| {
                port != LOCAL && table.get(port).is_none()
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
                peer.publish(&s, now, epoch);
            }
            let sent = unstamp(epoch, n.sent.swap(0, Ordering::AcqRel));
            let received = unstamp(epoch, n.received.swap(0, Ordering::AcqRel));
            let received_data = unstamp(epoch, n.received_data.swap(0, Ordering::AcqRel));
            for (t, at) in [
                (sent, &peer.status.sent_at),
                (received, &peer.status.received_at),
            ] {
                if let Some(t) = t {
                    at.fetch_max(stamp(epoch, t), Ordering::Relaxed);
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
                match s.poll_transmit(now, SystemTime::now(), &mut self.rng, &mut self.buf) {
                    Ok(Some(Transmit::Initiation(len))) => match &endpoint {
                        Some(ep) => {
                            tracing::debug!(peer = peer.name(), endpoint = %ep, "sending handshake initiation");
                            transmits.push((self.buf[..len].to_vec(), ep.clone()));
                        }
                        None => tracing::debug!(
                            peer = peer.name(),
                            "handshake due, but no endpoint known"
                        ),
                    },
                    Ok(Some(Transmit::Keepalive(len))) => {
                        if let Some(ep) = &endpoint {
                            transmits.push((self.buf[..len].to_vec(), ep.clone()));
                        }
                    }
                    Ok(Some(Transmit::FlushQueue)) => {
                        // The packets that waited are prepared now, with the keypair the
                        // session just made current, ahead of anything sent below; what
                        // went counts as data sent (so no confirming keepalive follows).
                        peer.publish(&s, now, epoch);
                        if self.flush_staged(peer, now) {
                            s.note_sent(now);
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
            peer.publish(&s, now, epoch);
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
        // Staged packets first, as they were prepared first.
        self.out.flush(&self.shared).await;
        for (bytes, ep) in transmits {
            self.shared.transmit(&bytes, &ep).await;
        }
    }

    /// Prepares every packet that waited for `peer`'s handshake in the control task's
    /// outbox (sent at the end of [`Control::service`]); true if any was prepared. The
    /// outbox holds a whole staging queue; a packet that finds no room (which cannot
    /// happen while each service flushes it) stays staged.
    fn flush_staged(&mut self, peer: &Arc<Peer>, now: Instant) -> bool {
        let mut staged = std::mem::take(&mut *peer.staged());
        let mut any = false;
        while self.out.has_room()
            && let Some(packet) = staged.pop_front()
        {
            let slot = self.out.copy_in(&packet);
            any |= self
                .out
                .prepare(&self.shared, peer, slot, packet.len(), now, false, false);
        }
        if !staged.is_empty() {
            let mut queue = peer.staged();
            staged.append(&mut queue);
            *queue = staged;
        }
        any
    }

    async fn handle(&mut self, msg: Inbound, under_load: bool) {
        // A cookie proves that the sender receives at its source address (WireGuard
        // whitepaper §5.4.7). A TCP connection's handshake proved that already, and a cookie
        // bound to its port would die with it: a client asked for one would retry only
        // after the server has closed the connection that never authenticated, then start
        // over on a new port, and never get in while the load lasts.
        let under_load = under_load && matches!(msg.src, PeerAddr::Udp(_));
        match &msg.message {
            HandshakeMessage::Initiation(m) => self.initiation(m, &msg.src, under_load).await,
            HandshakeMessage::Response(m) => self.response(m, &msg.src, under_load).await,
            HandshakeMessage::CookieReply(m) => self.cookie_reply(m, &msg.src),
        }
    }

    /// A peer's handshake initiation: answered with a response (or, under load, a cookie
    /// reply).
    async fn initiation(
        &mut self,
        m: &Initiation<[u8; INITIATION_LEN]>,
        src: &PeerAddr,
        under_load: bool,
    ) {
        let shared = Arc::clone(&self.shared);
        let now = Instant::now();
        let mut reply = [0u8; 64];
        let (addr, addr_len) = addr_bytes(src.addr());
        let pending = match shared.settings.identity.begin_initiation(
            m.as_bytes(),
            &addr[..addr_len],
            under_load,
            now,
            &mut self.rng,
            &mut reply,
        ) {
            Ok(Phase1::Pending(p)) => p,
            Ok(Phase1::CookieReply(n)) => {
                shared.drops.count(DropReason::Cookie);
                shared.transmit(&reply[..n], src).await;
                return;
            }
            Err(e) => {
                shared.drop_packet(DropReason::HandshakeInvalid, || {
                    format!("initiation from {src}: {e}")
                });
                return;
            }
        };
        let table = shared.peers.load_full();
        let Some(peer) = table.by_key(&pending.initiator()) else {
            shared.drop_packet(DropReason::HandshakeUnknownPeer, || {
                format!(
                    "initiation from {src} with unknown key {}",
                    pending.initiator()
                )
            });
            return;
        };
        let theirs = pending.flags();
        let accepted = {
            let mut s = peer.session();
            let r = s.accept_initiation(pending, now, &mut self.rng, &mut self.buf);
            if r.is_ok() {
                peer.publish(&s, now, shared.epoch);
            }
            r
        };
        match accepted {
            Ok(n) => {
                if let Some(why) =
                    flags_mismatch(peer.local_flags, theirs, "this server", "the peer")
                {
                    shared.drop_packet(DropReason::HandshakeRefused, || {
                        format!(
                            "peer {}: settings differ ({why}); the peer will refuse the session",
                            peer.name()
                        )
                    });
                }
                if let PeerAddr::Tcp(c) = src {
                    c.authenticate(peer.slot);
                }
                peer.set_endpoint(src.clone());
                tracing::debug!(peer = peer.name(), endpoint = %src, "answered handshake initiation");
                shared.transmit(&self.buf[..n], src).await;
            }
            Err(e) => {
                let reason = match e {
                    HandshakeError::ReplayedInitiation { .. }
                    | HandshakeError::InitiationFlood { .. } => DropReason::HandshakeReplay,
                    _ => DropReason::HandshakeInvalid,
                };
                shared.drop_packet(reason, || {
                    format!("initiation from peer {} at {src}: {e}", peer.name())
                });
            }
        }
    }

    /// The response to our initiation: the session is up (or, under load, the responder
    /// gets a cookie reply).
    async fn response(
        &mut self,
        m: &Response<[u8; RESPONSE_LEN]>,
        src: &PeerAddr,
        under_load: bool,
    ) {
        let shared = Arc::clone(&self.shared);
        let now = Instant::now();
        let index = m.receiver();
        let table = shared.peers.load_full();
        let Some(peer) = table.by_receiver(index) else {
            shared.drop_packet(DropReason::UnknownIndex, || {
                format!("handshake response for index {index:#010x} from {src}")
            });
            return;
        };
        let mut reply = [0u8; 64];
        let (addr, addr_len) = addr_bytes(src.addr());
        let outcome = {
            let mut s = peer.session();
            let r = s.on_response(
                m.as_bytes(),
                &addr[..addr_len],
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
                    peer.publish(&s, now, shared.epoch);
                    drop(s);
                    shared.drop_packet(DropReason::HandshakeRefused, || {
                        format!("peer {} refused: settings differ ({why})", peer.name())
                    });
                    return;
                }
                peer.publish(&s, now, shared.epoch);
            }
            r
        };
        match outcome {
            Ok(ResponseOutcome::Established) => {
                peer.traffic.handshakes.fetch_add(1, Ordering::Relaxed);
                if let PeerAddr::Tcp(c) = src {
                    c.authenticate(peer.slot);
                }
                peer.set_endpoint(src.clone());
                log_handshake(peer, Some(src));
                self.service(peer).await;
            }
            Ok(ResponseOutcome::CookieReply(n)) => {
                shared.drops.count(DropReason::Cookie);
                shared.transmit(&reply[..n], src).await;
            }
            Err(e) => shared.drop_packet(DropReason::HandshakeInvalid, || {
                format!("response from {src}: {e}")
            }),
        }
    }

    /// A cookie reply to our initiation: the next initiation carries mac2.
    fn cookie_reply(&mut self, m: &CookieReply<[u8; 64]>, src: &PeerAddr) {
        let shared = &self.shared;
        let index = m.receiver();
        let table = shared.peers.load();
        let Some(peer) = table.by_receiver(index) else {
            shared.drop_packet(DropReason::UnknownIndex, || {
                format!("cookie reply for index {index:#010x} from {src}")
            });
            return;
        };
        if let Err(e) = peer.session().on_cookie_reply(m.as_bytes(), Instant::now()) {
            shared.drop_packet(DropReason::HandshakeInvalid, || {
                format!("cookie reply from {src}: {e}")
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_lasts_a_second_after_the_queue_was_last_full() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut load = Load::default();
        assert!(!load.update(UNDER_LOAD - 1, t0), "below the mark: no load");
        assert!(load.update(UNDER_LOAD, ms(10)));
        // The queue drains: still under load for a second after it was last full.
        assert!(load.update(0, ms(500)));
        assert!(load.update(3, ms(1009)));
        assert!(!load.update(3, ms(1010)));
        // Full again: another second from then.
        assert!(load.update(UNDER_LOAD + 10, ms(2000)));
        assert!(load.update(0, ms(2999)));
        assert!(!load.update(0, ms(3000)));
    }
}
