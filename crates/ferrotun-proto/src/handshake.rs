//! The handshake: Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s exactly as WireGuard lays it out.
//!
//! Responsible for creating and consuming handshake initiations and responses (whitepaper
//! §5.4.2–§5.4.3), mac1/mac2 and cookie replies (§5.4.4, §5.4.7), TAI64N timestamps and
//! the per-peer initiation flood limit, and for deriving the two transport keys (§5.4.5).
//! The responder is split in two phases so that the caller owns its peer table:
//! [`Identity::begin_initiation`] (local static key only) checks mac1 (and mac2 under
//! load), decrypts the initiator's static key and returns it in a [`PendingInitiation`];
//! the caller looks that key up and hands the pending state to that peer's
//! [`PeerHandshake::accept_initiation`] (via [`crate::Session`]), which checks the
//! timestamp and writes the response. Not responsible for keypair rotation, timers or
//! retries (see [`crate::session`]), nor for per-source-address rate limiting under load
//! (the engine's job; this module only tells it when a cookie is required).
//!
//! ferrotun's flag extension (see the crate docs) enters in two places: the initiation's
//! flag byte is appended to the prologue when non-zero, and the response's flag byte is
//! mixed into the hash just before the encrypted empty payload when non-zero.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, Zeroizing};

use crate::entropy::{Entropy, EntropyError};
use crate::keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
use crate::primitives::{
    HASH_LEN, MAC_LEN, TAG_LEN, aead_open, aead_seal, hash, kdf, mac, mac_verify, xaead_open,
    xaead_seal,
};
use crate::wire::{
    COOKIE_REPLY_LEN, CookieReply, HandshakeFlags, INITIATION_LEN, Initiation, RESPONSE_LEN,
    Response, WireError, cookie, initiation, response,
};

/// The Noise protocol name, hashed into the initial chaining key (whitepaper §5.4.1).
pub const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard's identifier, the Noise prologue (whitepaper §5.4.1).
pub const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// Label of the mac1 key derivation (whitepaper §5.4.4).
pub const LABEL_MAC1: &[u8] = b"mac1----";
/// Label of the cookie key derivation (whitepaper §5.4.7).
pub const LABEL_COOKIE: &[u8] = b"cookie--";
/// The responder's cookie secret changes every two minutes (whitepaper §5.4.7;
/// `COOKIE_SECRET_MAX_AGE` in the Linux driver's `messages.h`).
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
/// A received cookie is used for this much less than the secret's age, to allow for
/// latency (`COOKIE_SECRET_LATENCY` in the Linux driver's `messages.h`).
pub const COOKIE_SECRET_LATENCY: Duration = Duration::from_secs(5);
/// At most this many initiations per second are consumed from one peer
/// (`INITIATIONS_PER_SECOND` in the Linux driver's `messages.h`; the check is in
/// `noise.c: wg_noise_handshake_consume_initiation`).
pub const INITIATIONS_PER_SECOND: u32 = 50;
/// Minimum time between two consumed initiations from one peer: 1/50 s.
pub const MIN_INITIATION_INTERVAL: Duration =
    Duration::from_millis(1000 / INITIATIONS_PER_SECOND as u64);
/// Length of a TAI64N timestamp (whitepaper §5.4.2, after cr.yp.to/libtai/tai64.html).
pub const TAI64N_LEN: usize = 12;

/// Why a handshake message was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// Malformed bytes.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// mac1 does not match our public key: not for us, or corrupted.
    #[error("invalid mac1")]
    InvalidMac1,
    /// A field did not decrypt (wrong keys, corrupted, or forged).
    #[error("could not decrypt the {field} of a handshake {message}")]
    Decryption {
        /// "initiation" or "response" or "cookie reply".
        message: &'static str,
        /// Which field.
        field: &'static str,
    },
    /// The initiator's static key is not one of our peers (returned by the caller, which
    /// owns the peer table).
    #[error("unknown initiator {key}")]
    UnknownInitiator {
        /// The key it authenticated with.
        key: PublicKey,
    },
    /// Phase 2 was given the pending state of another peer's initiation.
    #[error("initiation is from {got}, not from this peer {want}")]
    PeerMismatch {
        /// The initiator's key.
        got: PublicKey,
        /// This peer's key.
        want: PublicKey,
    },
    /// The timestamp is not newer than the last accepted one from this peer: a replay.
    #[error("replayed initiation: timestamp {got:?} is not after {latest:?}")]
    ReplayedInitiation {
        /// Timestamp in the message.
        got: Tai64N,
        /// Latest accepted.
        latest: Tai64N,
    },
    /// Initiations from this peer arrive faster than 50 per second.
    #[error("initiation flood: {since:?} since the last one, minimum {MIN_INITIATION_INTERVAL:?}")]
    InitiationFlood {
        /// Time since the previous consumed initiation.
        since: Duration,
    },
    /// A Diffie-Hellman result was all zero (a low-order point was sent).
    #[error("Diffie-Hellman with a low-order point")]
    LowOrderPoint,
    /// A response that answers no outstanding initiation of ours.
    #[error("response to index {index:#010x} matches no outstanding initiation")]
    UnexpectedResponse {
        /// The receiver index in the response.
        index: u32,
    },
    /// A cookie reply when we have no message it could answer.
    #[error("cookie reply without an outstanding message")]
    UnexpectedCookieReply,
    /// The output buffer is too short.
    #[error("buffer of {have} bytes too small, need {need}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// Randomness was unavailable.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
    /// The peer's key is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A TAI64N timestamp: 8 bytes of TAI seconds (label 2^62 + 10 s, as WireGuard's
/// `tai64n_now`), 4 bytes of nanoseconds, both big endian, so byte order is time order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tai64N(pub [u8; TAI64N_LEN]);

impl Tai64N {
    /// The timestamp of a wall-clock time. Nanoseconds are rounded down to a multiple of
    /// 2^24 ns (≈16.8 ms, the power of two below 1 s / 50) as the Linux driver does, so the
    /// timestamp does not leak a precise clock.
    pub fn from_system_time(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Self::from_unix(d.as_secs(), d.subsec_nanos())
    }

    /// The timestamp of `secs` + `nanos` since the Unix epoch (same rounding).
    pub fn from_unix(secs: u64, nanos: u32) -> Self {
        const ROUND: u32 = (1_000_000_000 / INITIATIONS_PER_SECOND).next_power_of_two() / 2;
        let mut b = [0u8; TAI64N_LEN];
        b[..8].copy_from_slice(&(0x4000_0000_0000_000a_u64.saturating_add(secs)).to_be_bytes());
        b[8..].copy_from_slice(&(nanos.min(999_999_999) / ROUND * ROUND).to_be_bytes());
        Tai64N(b)
    }
}

impl std::fmt::Debug for Tai64N {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = u64::from_be_bytes(self.0[..8].try_into().map_err(|_| std::fmt::Error)?);
        let nanos = u32::from_be_bytes(self.0[8..].try_into().map_err(|_| std::fmt::Error)?);
        write!(f, "Tai64N({secs:#x}.{nanos:09})")
    }
}

/// `Hash(CONSTRUCTION)`: the initial chaining key (whitepaper §5.4.2).
fn initial_chaining_key() -> [u8; HASH_LEN] {
    hash(&[CONSTRUCTION])
}

/// `Hash(Hash(CONSTRUCTION) || IDENTIFIER [|| flags])`, then mixed with the responder's
/// static key: the hash at the start of every initiation.
fn initial_hash(flags: HandshakeFlags, responder: &PublicKey) -> [u8; HASH_LEN] {
    let ck = initial_chaining_key();
    let h = if flags.is_empty() {
        hash(&[&ck, IDENTIFIER])
    } else {
        hash(&[&ck, IDENTIFIER, &[flags.bits()]])
    };
    hash(&[&h, responder.as_bytes()])
}

/// X25519 refusing an all-zero result (a low-order point).
fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, HandshakeError> {
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(HandshakeError::LowOrderPoint);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

fn random_secret(rng: &mut (impl Entropy + ?Sized)) -> Result<StaticSecret, HandshakeError> {
    let mut b = Zeroizing::new([0u8; 32]);
    rng.fill(&mut b[..])?;
    Ok(StaticSecret::from(*b))
}

/// The local static identity: our private key, the keys derived from our public key, and
/// the rotating cookie secret. Shared (in an `Arc`) by every [`crate::Session`].
pub struct Identity {
    private: PrivateKey,
    public: PublicKey,
    /// `Hash(LABEL_MAC1 || our public key)`: checks mac1 of messages sent to us.
    mac1_key: [u8; HASH_LEN],
    /// `Hash(LABEL_COOKIE || our public key)`: encrypts the cookies we hand out.
    cookie_key: [u8; HASH_LEN],
    /// The cookie secret `Rm` and when it was made; touched only under load.
    cookie_secret: Mutex<Option<(Zeroizing<[u8; 32]>, Instant)>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// What the mac check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacVerdict {
    /// Process the message.
    Valid,
    /// Under load and mac2 is missing or stale: send the cookie reply written to the reply
    /// buffer (`usize` bytes) and drop the message.
    CookieReply(usize),
}

/// The outcome of responder phase 1.
#[derive(Debug)]
pub enum Phase1 {
    /// mac1 (and mac2) valid and the static key decrypted: look the key up
    /// ([`PendingInitiation::initiator`]) and hand this to that peer's session.
    Pending(PendingInitiation),
    /// Under load: send the cookie reply (the first `usize` bytes of the reply buffer).
    CookieReply(usize),
}

/// An initiation that passed phase 1, waiting for its peer's phase 2. Secrets zeroized on
/// drop.
pub struct PendingInitiation {
    initiator: PublicKey,
    sender: u32,
    flags: HandshakeFlags,
    ephemeral: [u8; 32],
    chaining_key: Zeroizing<[u8; HASH_LEN]>,
    hash: [u8; HASH_LEN],
    encrypted_timestamp: [u8; TAI64N_LEN + TAG_LEN],
}

impl std::fmt::Debug for PendingInitiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingInitiation")
            .field("initiator", &self.initiator)
            .field("sender", &format_args!("{:#010x}", self.sender))
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

impl PendingInitiation {
    /// The initiator's static public key. It decrypted under our static key, but nothing
    /// is proven yet: ownership of the key and freshness are checked in phase 2.
    pub fn initiator(&self) -> PublicKey {
        self.initiator
    }
    /// The initiator's capability flags (authenticated through the prologue).
    pub fn flags(&self) -> HandshakeFlags {
        self.flags
    }
    /// The initiator's sender index.
    pub fn sender(&self) -> u32 {
        self.sender
    }
    /// The error to count when the caller's peer table has no such key (the pending
    /// state, with its secrets, is dropped).
    pub fn unknown_initiator(self) -> HandshakeError {
        HandshakeError::UnknownInitiator {
            key: self.initiator,
        }
    }
}

impl Drop for PendingInitiation {
    fn drop(&mut self) {
        self.hash.zeroize();
        self.ephemeral.zeroize();
    }
}

impl Identity {
    /// Our identity; precomputes the mac1 and cookie keys.
    pub fn new(private: PrivateKey) -> Self {
        let public = private.public_key();
        Identity {
            mac1_key: hash(&[LABEL_MAC1, public.as_bytes()]),
            cookie_key: hash(&[LABEL_COOKIE, public.as_bytes()]),
            private,
            public,
            cookie_secret: Mutex::new(None),
        }
    }

    /// Our public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Our private key.
    pub fn private_key(&self) -> &PrivateKey {
        &self.private
    }

    /// Checks mac1 (always) and, when `under_load`, mac2 against a cookie for `src`
    /// (the sender's address bytes as the caller serializes them: IP then port). Writes a
    /// cookie reply into `reply` when a cookie is required.
    #[allow(clippy::too_many_arguments)]
    fn verify_macs(
        &self,
        mac1_input: &[u8],
        mac1: &[u8; MAC_LEN],
        mac2_input: &[u8],
        mac2: &[u8; MAC_LEN],
        sender: u32,
        src: &[u8],
        under_load: bool,
        now: Instant,
        rng: &mut (impl Entropy + ?Sized),
        reply: &mut [u8],
    ) -> Result<MacVerdict, HandshakeError> {
        if !mac_verify(&self.mac1_key, mac1_input, mac1) {
            return Err(HandshakeError::InvalidMac1);
        }
        if !under_load {
            return Ok(MacVerdict::Valid);
        }
        let cookie = self.cookie_for(src, now, rng)?;
        if mac_verify(&cookie[..], mac2_input, mac2) {
            return Ok(MacVerdict::Valid);
        }
        // Cookie reply (whitepaper §5.4.7): XAEAD(Hash(LABEL_COOKIE || our key), nonce,
        // cookie, mac1 of the message being answered).
        let mut msg = CookieReply::emit(reply).ok_or(HandshakeError::BufferTooSmall {
            need: COOKIE_REPLY_LEN,
            have: 0,
        })?;
        msg.set_receiver(sender);
        let mut nonce = [0u8; 24];
        rng.fill(&mut nonce)?;
        msg.field_mut(cookie::NONCE).copy_from_slice(&nonce);
        let field = msg.field_mut(cookie::COOKIE);
        field[..MAC_LEN].copy_from_slice(&cookie[..]);
        let tag = xaead_seal(&self.cookie_key, &nonce, mac1, &mut field[..MAC_LEN]);
        field[MAC_LEN..].copy_from_slice(&tag);
        Ok(MacVerdict::CookieReply(COOKIE_REPLY_LEN))
    }

    /// `τ = Mac(Rm, src)` with `Rm` renewed when older than two minutes.
    fn cookie_for(
        &self,
        src: &[u8],
        now: Instant,
        rng: &mut (impl Entropy + ?Sized),
    ) -> Result<Zeroizing<[u8; MAC_LEN]>, HandshakeError> {
        let mut guard = self
            .cookie_secret
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = matches!(&*guard, Some((_, born)) if now.saturating_duration_since(*born) < COOKIE_SECRET_MAX_AGE);
        if !fresh {
            let mut secret = Zeroizing::new([0u8; 32]);
            rng.fill(&mut secret[..])?;
            *guard = Some((secret, now));
        }
        let (secret, _) = guard
            .as_ref()
            .expect("the cookie secret was set just above");
        Ok(Zeroizing::new(mac(&secret[..], src)))
    }

    /// Checks the macs of a handshake response addressed to us (the session calls this).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn verify_response_macs(
        &self,
        msg: &Response<&[u8]>,
        src: &[u8],
        under_load: bool,
        now: Instant,
        rng: &mut (impl Entropy + ?Sized),
        reply: &mut [u8],
    ) -> Result<MacVerdict, HandshakeError> {
        self.verify_macs(
            msg.mac1_input(),
            msg.mac1(),
            msg.mac2_input(),
            msg.mac2(),
            msg.sender(),
            src,
            under_load,
            now,
            rng,
            reply,
        )
    }

    /// Responder phase 1: validates the initiation `msg` (mac1 always, mac2 when
    /// `under_load`, writing a cookie reply into `reply` if needed) and decrypts the
    /// initiator's static key. Costs one X25519. `src` is the sender's address as bytes
    /// (what the cookie is bound to).
    pub fn begin_initiation(
        &self,
        msg: &[u8],
        src: &[u8],
        under_load: bool,
        now: Instant,
        rng: &mut (impl Entropy + ?Sized),
        reply: &mut [u8],
    ) -> Result<Phase1, HandshakeError> {
        let m = Initiation::new_checked(msg)?;
        if let MacVerdict::CookieReply(n) = self.verify_macs(
            m.mac1_input(),
            m.mac1(),
            m.mac2_input(),
            m.mac2(),
            m.sender(),
            src,
            under_load,
            now,
            rng,
            reply,
        )? {
            return Ok(Phase1::CookieReply(n));
        }
        let flags = m.flags();
        let ephemeral = *m.ephemeral();
        // e: MixHash(e), and MixKey(e) because of the psk modifier.
        let mut h = initial_hash(flags, &self.public);
        let [ck] = kdf::<1>(&initial_chaining_key(), &ephemeral);
        h = hash(&[&h, &ephemeral]);
        // es
        let es = dh(self.private.secret(), &ephemeral)?;
        let [ck, k] = kdf::<2>(&ck, &es[..]);
        // s: DecryptAndHash
        let enc = m.encrypted_static();
        let mut static_key = Zeroizing::new([0u8; 32]);
        static_key.copy_from_slice(&enc[..32]);
        let tag: [u8; TAG_LEN] = enc[32..].try_into().expect("48-byte field holds 32 + 16");
        if !aead_open(&k, 0, &h, &mut static_key[..], &tag) {
            return Err(HandshakeError::Decryption {
                message: "initiation",
                field: "static key",
            });
        }
        h = hash(&[&h, enc]);
        Ok(Phase1::Pending(PendingInitiation {
            initiator: PublicKey::from_bytes(*static_key),
            sender: m.sender(),
            flags,
            ephemeral,
            chaining_key: ck,
            hash: h,
            encrypted_timestamp: *m.encrypted_timestamp(),
        }))
    }
}

/// The two transport keys and indexes one completed handshake yields.
pub struct DerivedKeys {
    /// Key we seal with.
    pub send: Zeroizing<[u8; 32]>,
    /// Key we open with.
    pub receive: Zeroizing<[u8; 32]>,
    /// Our index for this session.
    pub local_index: u32,
    /// The peer's index for this session.
    pub remote_index: u32,
    /// Whether we initiated.
    pub initiator: bool,
    /// The peer's capability flags.
    pub peer_flags: HandshakeFlags,
}

impl std::fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DerivedKeys")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("initiator", &self.initiator)
            .finish_non_exhaustive()
    }
}

/// Our outstanding initiation.
struct InitiatorState {
    local_index: u32,
    chaining_key: Zeroizing<[u8; HASH_LEN]>,
    hash: Zeroizing<[u8; HASH_LEN]>,
    ephemeral: StaticSecret,
}

/// The outcome of consuming a response.
#[derive(Debug)]
pub enum ResponseVerdict {
    /// The handshake completed.
    Complete(DerivedKeys),
    /// Under load: send the cookie reply written to the reply buffer.
    CookieReply(usize),
}

/// The handshake state of one peer: its static key and PSK with precomputed values, the
/// replay and flood state of its initiations, our outstanding initiation, and the cookie
/// it gave us.
pub struct PeerHandshake {
    identity: Arc<Identity>,
    remote: PublicKey,
    psk: PresharedKey,
    /// `DH(our static, their static)`, computed once.
    static_static: Zeroizing<[u8; 32]>,
    /// `Hash(LABEL_MAC1 || their key)`: mac1 of messages we send them.
    mac1_key: [u8; HASH_LEN],
    /// `Hash(LABEL_COOKIE || their key)`: decrypts cookie replies they send us.
    cookie_key: [u8; HASH_LEN],
    latest_timestamp: Option<Tai64N>,
    last_initiation_consumed: Option<Instant>,
    initiation: Option<InitiatorState>,
    cookie: Option<(Zeroizing<[u8; MAC_LEN]>, Instant)>,
    /// mac1 of the last handshake message we sent, and that message's sender index: the
    /// only message a cookie reply may answer.
    last_mac1: Option<(u32, [u8; MAC_LEN])>,
}

impl std::fmt::Debug for PeerHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerHandshake")
            .field("remote", &self.remote)
            .field("initiating", &self.initiation.is_some())
            .finish_non_exhaustive()
    }
}

impl PeerHandshake {
    /// The handshake state for peer `remote`; refuses a low-order key.
    pub fn new(
        identity: Arc<Identity>,
        remote: PublicKey,
        psk: PresharedKey,
    ) -> Result<Self, KeyError> {
        let ss = remote.check_contributory(identity.private_key())?;
        Ok(PeerHandshake {
            static_static: Zeroizing::new(ss),
            mac1_key: hash(&[LABEL_MAC1, remote.as_bytes()]),
            cookie_key: hash(&[LABEL_COOKIE, remote.as_bytes()]),
            identity,
            remote,
            psk,
            latest_timestamp: None,
            last_initiation_consumed: None,
            initiation: None,
            cookie: None,
            last_mac1: None,
        })
    }

    /// The peer's static key.
    pub fn remote(&self) -> PublicKey {
        self.remote
    }

    /// Our identity.
    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// The local index of our outstanding initiation, if any.
    pub fn pending_index(&self) -> Option<u32> {
        self.initiation.as_ref().map(|i| i.local_index)
    }

    /// Forgets our outstanding initiation and any cookie (the replay state survives: an
    /// old initiation must stay refused).
    pub fn reset(&mut self) {
        self.initiation = None;
        self.cookie = None;
        self.last_mac1 = None;
    }

    /// Writes mac1, and mac2 when we hold a fresh cookie, into the last 32 bytes of `msg`.
    fn add_macs(&mut self, msg: &mut [u8], sender: u32, now: Instant) {
        let n = msg.len();
        let mac1 = mac(&self.mac1_key, &msg[..n - 2 * MAC_LEN]);
        msg[n - 2 * MAC_LEN..n - MAC_LEN].copy_from_slice(&mac1);
        let fresh = match &self.cookie {
            Some((c, at))
                if now.saturating_duration_since(*at)
                    < COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY =>
            {
                Some(mac(&c[..], &msg[..n - MAC_LEN]))
            }
            _ => None,
        };
        msg[n - MAC_LEN..].copy_from_slice(&fresh.unwrap_or([0; MAC_LEN]));
        self.last_mac1 = Some((sender, mac1));
    }

    /// Writes an initiation into `out[..148]` and remembers it as outstanding. The first
    /// 32 bytes drawn from `rng` are the ephemeral private key.
    pub fn create_initiation(
        &mut self,
        local_index: u32,
        flags: HandshakeFlags,
        timestamp: Tai64N,
        now: Instant,
        rng: &mut (impl Entropy + ?Sized),
        out: &mut [u8],
    ) -> Result<usize, HandshakeError> {
        let have = out.len();
        let mut m = Initiation::emit(out, flags).ok_or(HandshakeError::BufferTooSmall {
            need: INITIATION_LEN,
            have,
        })?;
        let ephemeral = random_secret(rng)?;
        let e_pub = x25519_dalek::PublicKey::from(&ephemeral).to_bytes();
        m.set_sender(local_index);
        let mut h = initial_hash(flags, &self.remote);
        // e
        let [ck] = kdf::<1>(&initial_chaining_key(), &e_pub);
        m.field_mut(initiation::EPHEMERAL).copy_from_slice(&e_pub);
        h = hash(&[&h, &e_pub]);
        // es
        let es = dh(&ephemeral, self.remote.as_bytes())?;
        let [ck, k] = kdf::<2>(&ck, &es[..]);
        // s
        let field = m.field_mut(initiation::STATIC);
        field[..32].copy_from_slice(self.identity.public.as_bytes());
        let tag = aead_seal(&k, 0, &h, &mut field[..32]);
        field[32..].copy_from_slice(&tag);
        h = hash(&[&h, field]);
        // ss (precomputed)
        let [ck, k] = kdf::<2>(&ck, &self.static_static[..]);
        // payload: the timestamp
        let field = m.field_mut(initiation::TIMESTAMP);
        field[..TAI64N_LEN].copy_from_slice(&timestamp.0);
        let tag = aead_seal(&k, 0, &h, &mut field[..TAI64N_LEN]);
        field[TAI64N_LEN..].copy_from_slice(&tag);
        h = hash(&[&h, field]);
        self.add_macs(m.bytes_mut(), local_index, now);
        self.initiation = Some(InitiatorState {
            local_index,
            chaining_key: ck,
            hash: Zeroizing::new(h),
            ephemeral,
        });
        Ok(INITIATION_LEN)
    }

    /// Responder phase 2: checks that `pending` is from this peer, decrypts and checks the
    /// timestamp (must be newer than the last accepted one; at most 50 initiations per
    /// second), writes the response into `out[..92]` and returns the transport keys.
    pub fn accept_initiation(
        &mut self,
        pending: PendingInitiation,
        local_index: u32,
        flags: HandshakeFlags,
        now: Instant,
        rng: &mut (impl Entropy + ?Sized),
        out: &mut [u8],
    ) -> Result<DerivedKeys, HandshakeError> {
        if pending.initiator != self.remote {
            return Err(HandshakeError::PeerMismatch {
                got: pending.initiator,
                want: self.remote,
            });
        }
        if out.len() < RESPONSE_LEN {
            return Err(HandshakeError::BufferTooSmall {
                need: RESPONSE_LEN,
                have: out.len(),
            });
        }
        // ss
        let [ck, k] = kdf::<2>(&pending.chaining_key, &self.static_static[..]);
        let mut ts = [0u8; TAI64N_LEN];
        ts.copy_from_slice(&pending.encrypted_timestamp[..TAI64N_LEN]);
        let tag: [u8; TAG_LEN] = pending.encrypted_timestamp[TAI64N_LEN..]
            .try_into()
            .expect("28-byte field holds 12 + 16");
        if !aead_open(&k, 0, &pending.hash, &mut ts, &tag) {
            return Err(HandshakeError::Decryption {
                message: "initiation",
                field: "timestamp",
            });
        }
        let timestamp = Tai64N(ts);
        let mut h = hash(&[&pending.hash, &pending.encrypted_timestamp]);
        if let Some(latest) = self.latest_timestamp
            && timestamp <= latest
        {
            return Err(HandshakeError::ReplayedInitiation {
                got: timestamp,
                latest,
            });
        }
        if let Some(last) = self.last_initiation_consumed {
            let since = now.saturating_duration_since(last);
            if since < MIN_INITIATION_INTERVAL {
                return Err(HandshakeError::InitiationFlood { since });
            }
        }

        // The response: e, ee, se, psk, then the empty payload.
        let ephemeral = random_secret(rng)?;
        let e_pub = x25519_dalek::PublicKey::from(&ephemeral).to_bytes();
        let [ck] = kdf::<1>(&ck, &e_pub);
        h = hash(&[&h, &e_pub]);
        let ee = dh(&ephemeral, &pending.ephemeral)?;
        let [ck] = kdf::<1>(&ck, &ee[..]);
        let se = dh(&ephemeral, self.remote.as_bytes())?;
        let [ck] = kdf::<1>(&ck, &se[..]);
        let [ck, tau, k] = kdf::<3>(&ck, self.psk.as_bytes());
        h = hash(&[&h, &tau[..]]);
        if !flags.is_empty() {
            h = hash(&[&h, &[flags.bits()]]);
        }
        let tag = aead_seal(&k, 0, &h, &mut [0u8; 0]);
        h = hash(&[&h, &tag]);
        h.zeroize();

        let mut m = Response::emit(out, flags).expect("length checked above");
        m.set_sender(local_index);
        m.set_receiver(pending.sender);
        m.field_mut(response::EPHEMERAL).copy_from_slice(&e_pub);
        m.field_mut(response::EMPTY).copy_from_slice(&tag);
        self.add_macs(m.bytes_mut(), local_index, now);

        // Commit the replay state only now that everything succeeded.
        self.latest_timestamp = Some(timestamp);
        self.last_initiation_consumed = Some(now);
        let [receive, send] = kdf::<2>(&ck, &[]);
        Ok(DerivedKeys {
            send,
            receive,
            local_index,
            remote_index: pending.sender,
            initiator: false,
            peer_flags: pending.flags,
        })
    }

    /// Consumes a response to our outstanding initiation: mac1 (and mac2 when
    /// `under_load`) first, then the Noise part. Our outstanding state survives a failure
    /// (a forged response cannot cancel our handshake) and is consumed by a success (a
    /// replayed response finds nothing to complete).
    #[allow(clippy::too_many_arguments)]
    pub fn consume_response(
        &mut self,
        msg: &[u8],
        src: &[u8],
        under_load: bool,
        now: Instant,
        rng: &mut (impl Entropy + ?Sized),
        reply: &mut [u8],
    ) -> Result<ResponseVerdict, HandshakeError> {
        let m = Response::new_checked(msg)?;
        if let MacVerdict::CookieReply(n) = self
            .identity
            .verify_response_macs(&m, src, under_load, now, rng, reply)?
        {
            return Ok(ResponseVerdict::CookieReply(n));
        }
        let state = match &self.initiation {
            Some(s) if s.local_index == m.receiver() => s,
            _ => {
                return Err(HandshakeError::UnexpectedResponse {
                    index: m.receiver(),
                });
            }
        };
        let e_r = m.ephemeral();
        let [ck] = kdf::<1>(&state.chaining_key, e_r);
        let mut h = hash(&[&state.hash[..], e_r]);
        let ee = dh(&state.ephemeral, e_r)?;
        let [ck] = kdf::<1>(&ck, &ee[..]);
        let se = dh(self.identity.private.secret(), e_r)?;
        let [ck] = kdf::<1>(&ck, &se[..]);
        let [ck, tau, k] = kdf::<3>(&ck, self.psk.as_bytes());
        h = hash(&[&h, &tau[..]]);
        let flags = m.flags();
        if !flags.is_empty() {
            h = hash(&[&h, &[flags.bits()]]);
        }
        if !aead_open(&k, 0, &h, &mut [0u8; 0], m.encrypted_empty()) {
            return Err(HandshakeError::Decryption {
                message: "response",
                field: "empty payload",
            });
        }
        h.zeroize();
        let local_index = state.local_index;
        self.initiation = None;
        let [send, receive] = kdf::<2>(&ck, &[]);
        Ok(ResponseVerdict::Complete(DerivedKeys {
            send,
            receive,
            local_index,
            remote_index: m.sender(),
            initiator: true,
            peer_flags: flags,
        }))
    }

    /// Consumes a cookie reply answering the last handshake message we sent; the cookie is
    /// then used for mac2 for two minutes (minus latency). One cookie per message sent.
    pub fn consume_cookie_reply(&mut self, msg: &[u8], now: Instant) -> Result<(), HandshakeError> {
        let m = CookieReply::new_checked(msg)?;
        let mac1 = match self.last_mac1 {
            Some((index, mac1)) if index == m.receiver() => mac1,
            _ => return Err(HandshakeError::UnexpectedCookieReply),
        };
        let enc = m.encrypted_cookie();
        let mut cookie = Zeroizing::new([0u8; MAC_LEN]);
        cookie.copy_from_slice(&enc[..MAC_LEN]);
        let tag: [u8; TAG_LEN] = enc[MAC_LEN..]
            .try_into()
            .expect("32-byte field holds 16 + 16");
        if !xaead_open(&self.cookie_key, m.nonce(), &mac1, &mut cookie[..], &tag) {
            return Err(HandshakeError::Decryption {
                message: "cookie reply",
                field: "cookie",
            });
        }
        self.cookie = Some((cookie, now));
        self.last_mac1 = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
