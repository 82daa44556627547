//! Per-peer sessions: keypair rotation and WireGuard's timers, driven by `now`.
//!
//! Responsible for one peer's [`Session`]: its handshake state, its keypairs (`current`,
//! an unconfirmed `next`, and up to two retired ones still accepted for receiving), and
//! the timer state machine of whitepaper §6 and the Linux driver's `timers.c`, which tells
//! the caller what to send and when ([`Session::poll_transmit`], [`Session::next_timeout`]).
//! Data passes through [`Session::encapsulate`] and [`Session::decapsulate`], which also
//! feed the timers. Not responsible for I/O, endpoints, queues (the caller owns the queue
//! of packets waiting for a handshake and is told when to flush or drop it), the peer
//! table (see [`SessionIndex`] for how receiver indexes map to sessions), or clocks (every
//! call takes `now`; initiations also take the wall-clock time for their TAI64N stamp).
//!
//! Usage: after *any* call, call [`Session::poll_transmit`] until it returns `None`, then
//! wake up at [`Session::next_timeout`].
//!
//! Deviations from the Linux driver, all for robustness and all documented here:
//! * A session keeps its own outstanding initiation while it answers the peer's; when both
//!   peers initiate at once both handshakes complete (the driver drops one and retries
//!   after REKEY_TIMEOUT).
//! * Two retired keypairs (the driver keeps one `previous`, and the responder drops it
//!   when a new `next` arrives) keep opening packets until they expire, so packets in
//!   flight across a rekey, or across that race, are not lost. Every keypair still dies
//!   at REJECT_AFTER_TIME, and all are zeroed after 3 × REJECT_AFTER_TIME without a
//!   handshake.
//! * An initiation requested while one was sent less than REKEY_TIMEOUT ago is deferred
//!   until REKEY_TIMEOUT has passed (the driver drops the request).

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::aead::AeadBackend;
use crate::entropy::Entropy;
use crate::handshake::{
    DerivedKeys, HandshakeError, Identity, PeerHandshake, PendingInitiation, ResponseVerdict,
    Tai64N,
};
use crate::ip::ip_packet_len;
use crate::keys::{KeyError, PresharedKey, PublicKey};
use crate::transport::{KeyLifetime, Keypair, TransportError};
use crate::wire::{DataMessage, HandshakeFlags, PayloadFlags, RESPONSE_LEN};

pub use crate::transport::{REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME};
/// `REKEY_ATTEMPT_TIME = 90 s` (whitepaper §6.1).
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// `REKEY_TIMEOUT = 5 s` (whitepaper §6.1).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Up to 333 ms of jitter added to REKEY_TIMEOUT (whitepaper §6.1; the Linux driver's
/// `REKEY_TIMEOUT_JITTER_MAX_JIFFIES = HZ / 3`).
pub const REKEY_TIMEOUT_JITTER: Duration = Duration::from_millis(333);
/// `KEEPALIVE_TIMEOUT = 10 s` (whitepaper §6.1).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Timer constants and per-peer options. Defaults are WireGuard's.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// When keypairs are replaced and when they may no longer be used (120 s, 180 s and
    /// 2^60 messages). Every keypair the session makes carries it, so the data paths that
    /// ask the keypair ([`Keypair::usable`], [`Keypair::wants_rekey`]) follow it too.
    pub key_lifetime: KeyLifetime,
    /// Give up retrying a handshake after this long (90 s).
    pub rekey_attempt_time: Duration,
    /// Retry an unanswered initiation after this (5 s) plus jitter.
    pub rekey_timeout: Duration,
    /// Maximum jitter added to `rekey_timeout` (333 ms).
    pub rekey_timeout_jitter: Duration,
    /// Send a keepalive after this long of receiving without sending (10 s).
    pub keepalive_timeout: Duration,
    /// Send a keepalive whenever nothing was sent for this long (off by default).
    pub persistent_keepalive: Option<Duration>,
    /// Our capability flags, sent in every handshake message.
    pub local_flags: HandshakeFlags,
    /// The AEAD backend for transport data.
    pub backend: AeadBackend,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            key_lifetime: KeyLifetime::default(),
            rekey_attempt_time: REKEY_ATTEMPT_TIME,
            rekey_timeout: REKEY_TIMEOUT,
            rekey_timeout_jitter: REKEY_TIMEOUT_JITTER,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
            persistent_keepalive: None,
            local_flags: HandshakeFlags::NONE,
            backend: AeadBackend::default(),
        }
    }
}

/// Which session a receiver index belongs to.
///
/// Every local index a session hands out is `(slot << 8) | n` with `n` a rolling 8-bit
/// counter, so the caller finds the session of a response, cookie reply or data message by
/// `index >> 8` ([`SessionIndex::of_receiver`]) in a plain vector or map of slots. The
/// trade-off against WireGuard's random indexes: an observer can link successive sessions
/// of the same peer by their index (it can already link them by endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionIndex(u32);

impl SessionIndex {
    /// Number of distinct slots (24 bits).
    pub const SLOTS: u32 = 1 << 24;

    /// Slot `slot`, if it is below 2^24.
    pub fn new(slot: u32) -> Option<Self> {
        (slot < Self::SLOTS).then_some(SessionIndex(slot))
    }
    /// The slot that issued `receiver_index`.
    pub fn of_receiver(receiver_index: u32) -> Self {
        SessionIndex(receiver_index >> 8)
    }
    /// The slot number.
    pub fn slot(self) -> u32 {
        self.0
    }
}

/// What [`Session::poll_transmit`] wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// Send the handshake initiation in `out[..len]` to the peer's endpoint.
    Initiation(usize),
    /// Send the keepalive (an empty data message) in `out[..len]`.
    Keepalive(usize),
    /// A keypair became usable: encapsulate and send the packets you queued, before
    /// polling again.
    FlushQueue,
    /// The handshake was given up (REKEY_ATTEMPT_TIME passed): drop the queued packets.
    DropQueue,
}

/// What [`Session::encapsulate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encapsulated {
    /// Sealed: send `buf[..len]`.
    Send(usize),
    /// No usable keypair: queue the packet (the caller owns the queue, and should bound
    /// it). A handshake has been requested: call [`Session::poll_transmit`].
    Queue,
}

/// What [`Session::decapsulate`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decapsulated {
    /// A payload at `buf[range]`. For an IP packet ([`PayloadFlags::is_ip_packet`]) the
    /// range is already trimmed to the IP header's length (padding removed); otherwise it
    /// is the whole plaintext (decompress it if [`PayloadFlags::COMPRESSED`]).
    Data {
        /// How to read the payload.
        flags: PayloadFlags,
        /// Where it is in the buffer.
        range: Range<usize>,
    },
    /// An authenticated keepalive; nothing to deliver.
    Keepalive,
}

/// What [`Session::on_response`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseOutcome {
    /// The handshake completed; poll for what to send.
    Established,
    /// Under load: send the cookie reply in `reply[..len]` back to the source.
    CookieReply(usize),
}

/// Which keypair slot a receiver index matched.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Next,
    Retired(usize),
}

/// One peer's protocol state.
pub struct Session {
    handshake: PeerHandshake,
    config: SessionConfig,
    index: SessionIndex,
    index_counter: u8,
    current: Option<Arc<Keypair>>,
    next: Option<Arc<Keypair>>,
    retired: [Option<Arc<Keypair>>; 2],
    peer_flags: Option<HandshakeFlags>,

    last_handshake: Option<Instant>,
    last_sent_handshake: Option<Instant>,
    handshake_attempts: u32,
    retransmit_at: Option<Instant>,
    new_handshake_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    need_another_keepalive: bool,
    persistent_at: Option<Instant>,
    zero_keys_at: Option<Instant>,
    sent_lastminute_handshake: bool,
    /// Jitter for the next timer that needs it, drawn in `poll_transmit`.
    jitter: Duration,

    initiation_due: bool,
    initiation_is_retry: bool,
    keepalive_due: bool,
    confirm_keepalive: bool,
    queue_pending: bool,
    flush_due: bool,
    drop_due: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.handshake.remote())
            .field("index", &self.index)
            .field("current", &self.current)
            .field("next", &self.next)
            .field("last_handshake", &self.last_handshake)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session with peer `remote` (optional `psk`, all-zero when none), issuing local
    /// indexes from `index`. Refuses a low-order peer key.
    pub fn new(
        identity: Arc<Identity>,
        remote: PublicKey,
        psk: Option<PresharedKey>,
        index: SessionIndex,
        config: SessionConfig,
    ) -> Result<Self, KeyError> {
        let handshake = PeerHandshake::new(identity, remote, psk.unwrap_or_default())?;
        let keepalive_due = config.persistent_keepalive.is_some();
        Ok(Session {
            handshake,
            config,
            index,
            index_counter: 0,
            current: None,
            next: None,
            retired: [None, None],
            peer_flags: None,
            last_handshake: None,
            last_sent_handshake: None,
            handshake_attempts: 0,
            retransmit_at: None,
            new_handshake_at: None,
            keepalive_at: None,
            need_another_keepalive: false,
            persistent_at: None,
            zero_keys_at: None,
            sent_lastminute_handshake: false,
            jitter: Duration::ZERO,
            initiation_due: false,
            initiation_is_retry: false,
            // WireGuard sends a keepalive when a peer with persistent keepalive comes up.
            keepalive_due,
            confirm_keepalive: false,
            queue_pending: false,
            flush_due: false,
            drop_due: false,
        })
    }

    /// The peer's static key.
    pub fn remote_key(&self) -> PublicKey {
        self.handshake.remote()
    }
    /// This session's index slot.
    pub fn index(&self) -> SessionIndex {
        self.index
    }
    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }
    /// When the last handshake completed (for `show`).
    pub fn latest_handshake(&self) -> Option<Instant> {
        self.last_handshake
    }
    /// Whether a keypair can send now.
    pub fn is_established(&self, now: Instant) -> bool {
        self.current
            .as_deref()
            .is_some_and(|k| self.sendable(k, now))
    }
    /// The capability flags the peer sent in the last completed handshake.
    pub fn peer_flags(&self) -> Option<HandshakeFlags> {
        self.peer_flags
    }
    /// The keypair data is sent with. A data path outside the session may seal and open
    /// with it directly (its methods take `&self`), but then the session's timers do not
    /// see those packets: such a path reports them through [`Session::note_sent`] and
    /// [`Session::note_received`] (see `session/split.rs`) often enough (at least once per
    /// KEEPALIVE_TIMEOUT) for keepalives and rekeys to happen on time.
    pub fn current_keypair(&self) -> Option<Arc<Keypair>> {
        self.current.clone()
    }
    /// Whether an initiation of ours is waiting for its response.
    pub fn is_handshake_in_progress(&self) -> bool {
        self.handshake.pending_index().is_some()
    }

    /// Forgets every keypair, the outstanding handshake and all timers (e.g. when the peer
    /// is removed or reconfigured). The last accepted initiation timestamp is kept, so old
    /// initiations stay refused.
    pub fn reset(&mut self) {
        self.current = None;
        self.next = None;
        self.retired = [None, None];
        self.handshake.reset();
        self.retransmit_at = None;
        self.new_handshake_at = None;
        self.keepalive_at = None;
        self.persistent_at = None;
        self.zero_keys_at = None;
        self.need_another_keepalive = false;
        self.handshake_attempts = 0;
        self.sent_lastminute_handshake = false;
        self.initiation_due = false;
        self.keepalive_due = false;
        self.confirm_keepalive = false;
        self.queue_pending = false;
        self.flush_due = false;
        self.drop_due = false;
        self.peer_flags = None;
    }

    fn sendable(&self, k: &Keypair, now: Instant) -> bool {
        k.usable(now) && k.send_counter() < crate::replay::REJECT_AFTER_MESSAGES
    }

    /// A fresh local index, distinct from every live one.
    fn allocate_index(&mut self) -> u32 {
        loop {
            self.index_counter = self.index_counter.wrapping_add(1);
            let candidate = (self.index.0 << 8) | u32::from(self.index_counter);
            let live = self.keypairs().any(|k| k.local_index() == candidate)
                || self.handshake.pending_index() == Some(candidate);
            if !live {
                return candidate;
            }
        }
    }

    fn keypairs(&self) -> impl Iterator<Item = &Arc<Keypair>> {
        self.current
            .iter()
            .chain(self.next.iter())
            .chain(self.retired.iter().flatten())
    }

    fn request_initiation(&mut self, retry: bool) {
        if !self.initiation_due {
            self.initiation_is_retry = retry;
        } else if !retry {
            self.initiation_is_retry = false;
        }
        self.initiation_due = true;
    }

    // Timer hooks, named after the Linux driver's `wg_timers_*` functions.

    fn on_any_authenticated_packet_sent(&mut self) {
        self.keepalive_at = None;
    }
    fn on_any_authenticated_packet_received(&mut self) {
        self.new_handshake_at = None;
    }
    fn on_any_authenticated_packet_traversal(&mut self, now: Instant) {
        if let Some(p) = self.config.persistent_keepalive {
            self.persistent_at = Some(now + p);
        }
    }
    fn on_data_sent(&mut self, now: Instant) {
        if self.new_handshake_at.is_none() {
            self.new_handshake_at =
                Some(now + self.config.keepalive_timeout + self.config.rekey_timeout + self.jitter);
        }
    }
    fn on_data_received(&mut self, now: Instant) {
        if self.keepalive_at.is_none() {
            self.keepalive_at = Some(now + self.config.keepalive_timeout);
        } else {
            self.need_another_keepalive = true;
        }
    }
    fn on_handshake_complete(&mut self, now: Instant) {
        self.retransmit_at = None;
        self.handshake_attempts = 0;
        self.sent_lastminute_handshake = false;
        self.last_handshake = Some(now);
        self.initiation_due = false;
        if self.queue_pending {
            self.flush_due = true;
        }
    }
    fn on_session_derived(&mut self, now: Instant) {
        self.zero_keys_at = Some(now + 3 * self.config.key_lifetime.reject_after_time);
    }

    /// Send-side `keep_key_fresh`: a handshake when the current keypair, which just
    /// sealed, wants one ([`Keypair::wants_rekey`]).
    fn keep_key_fresh_send(&mut self, now: Instant) {
        if self.current.as_deref().is_some_and(|k| k.wants_rekey(now)) {
            self.request_initiation(false);
        }
    }

    /// Receive-side `keep_key_fresh`: an initiator whose keypair is about to be rejected
    /// (REJECT_AFTER_TIME − KEEPALIVE_TIMEOUT − REKEY_TIMEOUT) rekeys once.
    fn keep_key_fresh_receive(&mut self, now: Instant) {
        let Some(k) = self.current.as_deref() else {
            return;
        };
        let limit = self
            .config
            .key_lifetime
            .reject_after_time
            .saturating_sub(self.config.keepalive_timeout + self.config.rekey_timeout);
        if k.is_initiator() && now >= k.created() + limit && !self.sent_lastminute_handshake {
            self.sent_lastminute_handshake = true;
            self.request_initiation(false);
        }
    }

    /// Seals the packet at `buf[16..16 + len]` with the current keypair (see
    /// [`Keypair::seal`] for the buffer layout and padding under `mtu`), or says to queue
    /// it while a handshake is requested.
    pub fn encapsulate(
        &mut self,
        now: Instant,
        flags: PayloadFlags,
        len: usize,
        buf: &mut [u8],
        mtu: usize,
    ) -> Result<Encapsulated, TransportError> {
        let sealed = match self.current.as_deref() {
            Some(k) if k.usable(now) => match k.seal(flags, len, buf, mtu) {
                Ok(n) => Some(n),
                Err(TransportError::CounterExhausted) => None,
                Err(e) => return Err(e),
            },
            _ => None,
        };
        let Some(n) = sealed else {
            self.queue_pending = true;
            self.request_initiation(false);
            return Ok(Encapsulated::Queue);
        };
        self.on_any_authenticated_packet_traversal(now);
        self.on_any_authenticated_packet_sent();
        self.on_data_sent(now);
        self.confirm_keepalive = false;
        self.keep_key_fresh_send(now);
        Ok(Encapsulated::Send(n))
    }

    /// Opens the data message `buf` (exactly one datagram) in place with whichever of
    /// this session's keypairs its receiver index names, promoting a confirmed `next`.
    pub fn decapsulate(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<Decapsulated, TransportError> {
        let receiver = DataMessage::new_checked(&buf[..])?.receiver();
        let slot = self
            .find(receiver)
            .ok_or(TransportError::UnknownIndex { index: receiver })?;
        let kp = match slot {
            Slot::Current => self.current.as_deref(),
            Slot::Next => self.next.as_deref(),
            Slot::Retired(i) => self.retired[i].as_deref(),
        }
        .expect("find returned an occupied slot");
        if !kp.usable(now) {
            return Err(TransportError::Expired);
        }
        let (flags, range) = kp.open(buf)?;
        if slot == Slot::Next {
            // The peer used the keypair we answered with: it is confirmed (whitepaper §6.1).
            let old = self.current.take();
            self.current = self.next.take();
            self.retire(old);
            self.on_handshake_complete(now);
        }
        self.keep_key_fresh_receive(now);
        self.on_any_authenticated_packet_received();
        self.on_any_authenticated_packet_traversal(now);
        if range.is_empty() {
            return Ok(Decapsulated::Keepalive);
        }
        self.on_data_received(now);
        if flags.is_ip_packet() {
            let n = ip_packet_len(&buf[range.clone()])
                .ok_or(TransportError::MalformedInnerPacket { len: range.len() })?;
            return Ok(Decapsulated::Data {
                flags,
                range: range.start..range.start + n,
            });
        }
        Ok(Decapsulated::Data { flags, range })
    }

    fn find(&self, index: u32) -> Option<Slot> {
        let is = |k: &Option<Arc<Keypair>>| k.as_deref().is_some_and(|k| k.local_index() == index);
        if is(&self.current) {
            Some(Slot::Current)
        } else if is(&self.next) {
            Some(Slot::Next)
        } else {
            (0..self.retired.len())
                .find(|&i| is(&self.retired[i]))
                .map(Slot::Retired)
        }
    }

    fn retire(&mut self, k: Option<Arc<Keypair>>) {
        if k.is_some() {
            self.retired[1] = self.retired[0].take();
            self.retired[0] = k;
        }
    }

    /// Responder phase 2: the caller found this session for
    /// [`PendingInitiation::initiator`]. Checks the timestamp and flood limit, writes the
    /// response into `out` and returns its length; the new keypair waits as `next` until
    /// the peer's first data message confirms it.
    pub fn accept_initiation(
        &mut self,
        pending: PendingInitiation,
        now: Instant,
        rng: &mut (impl Entropy + ?Sized),
        out: &mut [u8],
    ) -> Result<usize, HandshakeError> {
        let local_index = self.allocate_index();
        let keys = self.handshake.accept_initiation(
            pending,
            local_index,
            self.config.local_flags,
            now,
            rng,
            out,
        )?;
        self.peer_flags = Some(keys.peer_flags);
        // The driver drops an unconfirmed `next`: it was never used by the peer.
        self.next = Some(self.keypair(keys, now));
        self.on_any_authenticated_packet_received();
        self.on_any_authenticated_packet_traversal(now);
        self.on_any_authenticated_packet_sent();
        self.last_sent_handshake = Some(now);
        self.on_session_derived(now);
        Ok(RESPONSE_LEN)
    }

    /// Consumes a handshake response addressed to this session (the caller found it by
    /// [`SessionIndex::of_receiver`]). `src` and `under_load` as for
    /// [`Identity::begin_initiation`]; a cookie reply, if needed, goes into `reply`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_response(
        &mut self,
        msg: &[u8],
        src: &[u8],
        under_load: bool,
        now: Instant,
        rng: &mut (impl Entropy + ?Sized),
        reply: &mut [u8],
    ) -> Result<ResponseOutcome, HandshakeError> {
        let keys = match self
            .handshake
            .consume_response(msg, src, under_load, now, rng, reply)?
        {
            ResponseVerdict::CookieReply(n) => return Ok(ResponseOutcome::CookieReply(n)),
            ResponseVerdict::Complete(keys) => keys,
        };
        self.peer_flags = Some(keys.peer_flags);
        let new = self.keypair(keys, now);
        // An unconfirmed `next` (we also answered the peer's initiation) may be what the
        // peer sends with: keep it for receiving, like the old current.
        let old_current = self.current.take();
        let old_next = self.next.take();
        self.retire(old_current);
        self.retire(old_next);
        self.current = Some(new);
        self.on_any_authenticated_packet_received();
        self.on_any_authenticated_packet_traversal(now);
        self.on_session_derived(now);
        self.on_handshake_complete(now);
        // Confirm the keypair at once unless queued data does it (the driver's
        // `wg_packet_send_keepalive` after a completed handshake).
        self.confirm_keepalive = true;
        Ok(ResponseOutcome::Established)
    }

    /// Consumes a cookie reply for this session; the next initiation carries mac2.
    pub fn on_cookie_reply(&mut self, msg: &[u8], now: Instant) -> Result<(), HandshakeError> {
        self.handshake.consume_cookie_reply(msg, now)
    }

    fn keypair(&self, keys: DerivedKeys, now: Instant) -> Arc<Keypair> {
        Arc::new(
            Keypair::new(
                self.config.backend,
                &keys.send,
                &keys.receive,
                keys.local_index,
                keys.remote_index,
                now,
                keys.initiator,
            )
            .with_lifetime(self.config.key_lifetime),
        )
    }

    fn due(t: Option<Instant>, now: Instant) -> bool {
        t.is_some_and(|t| t <= now)
    }

    fn fire_timers(&mut self, now: Instant) {
        if Self::due(self.zero_keys_at, now) {
            // 3 × REJECT_AFTER_TIME without a new session: forget all key material.
            self.zero_keys_at = None;
            self.current = None;
            self.next = None;
            self.retired = [None, None];
            self.handshake.reset();
        }
        // Keypairs past REJECT_AFTER_TIME can neither send nor receive: drop them early.
        for slot in self.retired.iter_mut() {
            if slot.as_deref().is_some_and(|k| !k.usable(now)) {
                *slot = None;
            }
        }
        if Self::due(self.retransmit_at, now) {
            self.retransmit_at = None;
            let max_attempts = (self.config.rekey_attempt_time.as_millis()
                / self.config.rekey_timeout.as_millis().max(1))
                as u32;
            if self.handshake_attempts > max_attempts {
                // Give up (the driver's `wg_expired_retransmit_handshake`).
                self.keepalive_at = None;
                self.initiation_due = false;
                if self.queue_pending {
                    self.queue_pending = false;
                    self.drop_due = true;
                }
                if self.zero_keys_at.is_none() {
                    self.zero_keys_at = Some(now + 3 * self.config.key_lifetime.reject_after_time);
                }
            } else {
                self.handshake_attempts += 1;
                self.request_initiation(true);
            }
        }
        if Self::due(self.keepalive_at, now) {
            self.keepalive_at = None;
            self.keepalive_due = true;
        }
        if Self::due(self.new_handshake_at, now) {
            // Data sent, nothing heard for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT.
            self.new_handshake_at = None;
            self.request_initiation(false);
        }
        if Self::due(self.persistent_at, now) {
            self.persistent_at = None;
            self.keepalive_due = true;
        }
    }

    fn initiation_allowed_at(&self) -> Option<Instant> {
        self.last_sent_handshake
            .map(|t| t + self.config.rekey_timeout)
    }

    /// Runs expired timers and returns the next thing to do, writing any message into
    /// `out` (at least 148 bytes). `wall` is the current wall-clock time, used only for
    /// an initiation's TAI64N timestamp. Call until it returns `None`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        wall: SystemTime,
        rng: &mut (impl Entropy + ?Sized),
        out: &mut [u8],
    ) -> Result<Option<Transmit>, HandshakeError> {
        self.fire_timers(now);
        if self.drop_due {
            self.drop_due = false;
            return Ok(Some(Transmit::DropQueue));
        }
        if self.flush_due {
            self.flush_due = false;
            self.queue_pending = false;
            return Ok(Some(Transmit::FlushQueue));
        }
        if self.keepalive_due || self.confirm_keepalive {
            self.keepalive_due = false;
            self.confirm_keepalive = false;
            let sendable = self
                .current
                .as_deref()
                .is_some_and(|k| self.sendable(k, now));
            if sendable {
                let k = self.current.as_deref().expect("checked just above");
                let n = k.seal(PayloadFlags::NONE, 0, out, 0).map_err(|_| {
                    HandshakeError::BufferTooSmall {
                        need: 32,
                        have: out.len(),
                    }
                })?;
                self.on_any_authenticated_packet_traversal(now);
                self.on_any_authenticated_packet_sent();
                // Data arrived while the keepalive timer ran: arm it again after this
                // keepalive (the intent of the driver's `timer_need_another_keepalive`;
                // there the asynchronous send completion usually cancels the re-arm).
                if self.need_another_keepalive {
                    self.need_another_keepalive = false;
                    self.keepalive_at = Some(now + self.config.keepalive_timeout);
                }
                self.keep_key_fresh_send(now);
                return Ok(Some(Transmit::Keepalive(n)));
            }
            // No keypair: a keepalive, like data, asks for a handshake.
            self.request_initiation(false);
        }
        if self.initiation_due && self.initiation_allowed_at().is_none_or(|t| now >= t) {
            let local_index = self.allocate_index();
            // On error (buffer too small, no entropy) the request stays due.
            let n = self.handshake.create_initiation(
                local_index,
                self.config.local_flags,
                Tai64N::from_system_time(wall),
                now,
                rng,
                out,
            )?;
            self.initiation_due = false;
            if !self.initiation_is_retry {
                self.handshake_attempts = 0;
            }
            self.last_sent_handshake = Some(now);
            self.on_any_authenticated_packet_traversal(now);
            self.on_any_authenticated_packet_sent();
            // Fresh jitter for this retransmission and for the next data-sent timer; drawn
            // only here so the per-packet path never touches the entropy source.
            let jitter_ms = self.config.rekey_timeout_jitter.as_millis() as u64;
            self.jitter = Duration::from_millis(rng.next_u64()? % (jitter_ms + 1));
            self.retransmit_at = Some(now + self.config.rekey_timeout + self.jitter);
            return Ok(Some(Transmit::Initiation(n)));
        }
        Ok(None)
    }

    /// When [`Session::poll_transmit`] next needs to run (if nothing else happens first).
    pub fn next_timeout(&self) -> Option<Instant> {
        let deferred = if self.initiation_due {
            self.initiation_allowed_at()
        } else {
            None
        };
        [
            self.retransmit_at,
            self.new_handshake_at,
            self.keepalive_at,
            self.persistent_at,
            self.zero_keys_at,
            deferred,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

mod split;

#[cfg(test)]
mod tests;
