//! Transport data: sealing and opening data messages with one keypair.
//!
//! Responsible for a [`Keypair`] (the two transport keys one handshake derives, the sending
//! counter and the receive replay window), for writing and checking the 16-byte data header
//! in the caller's buffer, padding, associated data for the payload flags, and the counter
//! limits of whitepaper §6.1. A `Keypair` is `Sync`: its data methods take `&self`, the
//! sending counter is an `AtomicU64`, and the replay window sits behind its own `Mutex`
//! that only the receive direction touches, so one core can seal while another opens.
//! It also knows its own lifetime ([`KeyLifetime`], from the session's configuration):
//! whether it may still be used ([`Keypair::usable`]) and whether it is due to be
//! replaced ([`Keypair::wants_rekey`]), so that a data path that seals and opens outside
//! the session asks the keypair instead of restating the rules. Not responsible for
//! choosing a keypair, for timers (see [`crate::session`]) or for finding the keypair by
//! receiver index (the caller does).
//!
//! Zero-copy layout of a buffer handed to [`Keypair::seal`]:
//! ```text
//! buf: [ 16 bytes header room | payload (len) | padding room | 16 bytes tag room ]
//!        written by seal        read from TUN   zeroed         written by seal
//! ```
//! At most `DATA_HEADER_LEN + round_up(len, 16) + TAG_LEN` bytes are needed
//! ([`sealed_len`] gives the exact figure).

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::aead::{Aead, AeadBackend, AeadJob, TAG_LEN, TransportAead};
use crate::replay::{REJECT_AFTER_MESSAGES, ReplayWindow};
use crate::wire::{DATA_HEADER_LEN, DataHeader, DataMessage, PayloadFlags, WireError, data};

/// `REKEY_AFTER_MESSAGES = 2^60` (whitepaper §6.1).
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// `REKEY_AFTER_TIME = 120 s` (whitepaper §6.1).
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// `REJECT_AFTER_TIME = 180 s` (whitepaper §6.1).
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);

/// How long a keypair may be used and when it is due to be replaced. The session's
/// configuration sets it ([`crate::SessionConfig::key_lifetime`]); the default is
/// WireGuard's (whitepaper §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLifetime {
    /// The initiator of the handshake asks for a new one once the keypair is this old.
    pub rekey_after_time: Duration,
    /// Nothing is sealed or opened with a keypair this old.
    pub reject_after_time: Duration,
    /// Either side asks for a new handshake once it has sealed more messages than this.
    pub rekey_after_messages: u64,
}

impl Default for KeyLifetime {
    fn default() -> Self {
        KeyLifetime {
            rekey_after_time: REKEY_AFTER_TIME,
            reject_after_time: REJECT_AFTER_TIME,
            rekey_after_messages: REKEY_AFTER_MESSAGES,
        }
    }
}

/// A data message in a receive buffer, its header read once: where it lies in the buffer
/// ([`Keypair::open_many`] opens it there) and what its header says (which keypair, which
/// counter, how to read the payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The whole message in the buffer.
    pub at: Range<usize>,
    /// Its header.
    pub header: DataHeader,
}

impl Received {
    /// Reads the header of the data message `msg`, which starts at `start` in its buffer;
    /// refuses anything that is not a well-formed data message.
    pub fn parse(msg: &[u8], start: usize) -> Result<Received, WireError> {
        let header = DataMessage::new_checked(msg)?.header();
        Ok(Received {
            at: start..start + msg.len(),
            header,
        })
    }

    /// Whether the message lies within a buffer of `len` bytes and holds a header and a
    /// tag: the caller may have built it by hand, so opening checks before it slices.
    fn lies_in(&self, len: usize) -> bool {
        self.at.end <= len && self.at.len() >= DATA_HEADER_LEN + TAG_LEN
    }

    /// Where the encrypted payload lies in the buffer (the tag follows it and ends the
    /// message).
    pub fn payload(&self) -> Range<usize> {
        self.at.start + DATA_HEADER_LEN..self.at.end - TAG_LEN
    }
}

/// WireGuard pads plaintext to a multiple of 16 bytes (whitepaper §5.4.6,
/// `MESSAGE_PADDING_MULTIPLE` in the Linux driver).
pub const PADDING_MULTIPLE: usize = 16;

/// Overhead of a data message over its (padded) payload: header + tag = 32 bytes.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;

/// Why a data message could not be sealed or opened.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// The bytes are not a well-formed data message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The caller's buffer cannot hold header, payload, padding and tag.
    #[error("buffer of {have} bytes is too small: {need} needed")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// This keypair has used up its counters (REJECT_AFTER_MESSAGES, whitepaper §6.1).
    #[error(
        "sending counter exhausted (REJECT_AFTER_MESSAGES reached); a new handshake is required"
    )]
    CounterExhausted,
    /// The counter was already received, is too old for the window, or at the limit.
    #[error("replayed or too old counter {counter}")]
    Replay {
        /// The rejected counter.
        counter: u64,
    },
    /// The message is addressed to another keypair.
    #[error("receiver index {got:#010x} is not this keypair's {want:#010x}")]
    WrongIndex {
        /// The index in the message.
        got: u32,
        /// This keypair's local index.
        want: u32,
    },
    /// Authentication failed: forged, corrupted, wrong key or flags changed in transit.
    #[error("data message failed authentication (counter {counter})")]
    Authentication {
        /// The counter of the rejected message.
        counter: u64,
    },
    /// No keypair has the index of the message (it expired, or never existed).
    #[error("no keypair with receiver index {index:#010x}")]
    UnknownIndex {
        /// The index in the message.
        index: u32,
    },
    /// The keypair is older than REJECT_AFTER_TIME (whitepaper §6.1).
    #[error("keypair expired (older than REJECT_AFTER_TIME)")]
    Expired,
    /// A message of a batch (see [`Keypair::open_many`]) does not lie in the buffer, or
    /// overlaps one before it: the caller's mistake, refused rather than opened twice.
    #[error("message range outside the buffer or overlapping an earlier one")]
    Overlap,
    /// An uncompressed IP payload whose IP header does not describe a packet that fits.
    #[error("decrypted payload of {len} bytes is not an IPv4/IPv6 packet that fits")]
    MalformedInnerPacket {
        /// The plaintext length (with padding).
        len: usize,
    },
}

/// The datagram length [`Keypair::seal`] produces for `len` payload bytes with `flags`
/// under `mtu`: header + payload + padding + tag.
pub fn sealed_len(flags: PayloadFlags, len: usize, mtu: usize) -> usize {
    DATA_HEADER_LEN + padded_len(flags, len, mtu) + TAG_LEN
}

/// The payload length after padding: uncompressed IP payloads (neither
/// [`PayloadFlags::COMPRESSED`] nor [`PayloadFlags::ETHERNET`]) round up to a multiple of
/// 16 but never beyond `max(len, mtu)`; other payloads are never padded (their length
/// could not be recovered).
pub fn padded_len(flags: PayloadFlags, len: usize, mtu: usize) -> usize {
    if !flags.is_ip_packet() || len >= mtu {
        return len;
    }
    len.next_multiple_of(PADDING_MULTIPLE).min(mtu)
}

/// A message [`Keypair::prepare`]d for sealing: header written, counter taken, padding
/// zeroed; its payload (still plaintext) and tag room lie at `text` and `tag` in the
/// buffer it was prepared for. Not `Clone`: [`Keypair::seal_prepared`] takes it, so that
/// its counter seals one message once.
#[derive(Debug)]
pub struct Prepared {
    counter: u64,
    flags: PayloadFlags,
    text: Range<usize>,
    tag: usize,
    len: usize,
}

impl Prepared {
    /// The length of the datagram it becomes (header, padded payload, tag).
    pub fn datagram_len(&self) -> usize {
        self.len
    }
}

/// What opening one data message gave: its payload flags and where its (padded) plaintext
/// lies, or why it was refused.
pub type Opened = Result<(PayloadFlags, Range<usize>), TransportError>;

/// Messages [`Keypair::seal_prepared`] and [`Keypair::open_many`] hand to the AEAD at once:
/// as many as `ferrotun-chacha` works on together.
const SEAL_BATCH: usize = 16;

/// Every byte value, so that a one-byte aad can be a `'static` slice.
static BYTES: [u8; 256] = {
    let mut b = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        b[i] = i as u8;
        i += 1;
    }
    b
};

/// The associated data of a payload with `flags`: none for plain WireGuard (flags empty),
/// else the flags byte.
fn aad_of(flags: PayloadFlags) -> &'static [u8] {
    if flags.is_empty() {
        &[]
    } else {
        std::slice::from_ref(&BYTES[usize::from(flags.bits())])
    }
}

/// The two transport keys of one handshake, with their counter and replay window.
pub struct Keypair {
    send: TransportAead,
    send_counter: AtomicU64,
    receive: TransportAead,
    replay: Mutex<ReplayWindow>,
    local_index: u32,
    remote_index: u32,
    created: Instant,
    initiator: bool,
    lifetime: KeyLifetime,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keypair")
            .field("local_index", &format_args!("{:#010x}", self.local_index))
            .field("remote_index", &format_args!("{:#010x}", self.remote_index))
            .field("initiator", &self.initiator)
            .field("backend", &self.send.backend())
            .finish_non_exhaustive()
    }
}

impl Keypair {
    /// A keypair from raw transport keys (`send` seals, `receive` opens), with WireGuard's
    /// lifetime (see [`Keypair::with_lifetime`]). The handshake creates these; this
    /// constructor exists for tests, benchmarks and fuzzing.
    pub fn new(
        backend: AeadBackend,
        send: &[u8; 32],
        receive: &[u8; 32],
        local_index: u32,
        remote_index: u32,
        created: Instant,
        initiator: bool,
    ) -> Self {
        Keypair {
            send: backend.key(send),
            send_counter: AtomicU64::new(0),
            receive: backend.key(receive),
            replay: Mutex::new(ReplayWindow::new()),
            local_index,
            remote_index,
            created,
            initiator,
            lifetime: KeyLifetime::default(),
        }
    }

    /// The same keypair with another lifetime.
    pub fn with_lifetime(mut self, lifetime: KeyLifetime) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Whether the keypair may seal or open at `now`: it is younger than its
    /// `reject_after_time`. (Sealing also ends at REJECT_AFTER_MESSAGES:
    /// [`TransportError::CounterExhausted`].)
    pub fn usable(&self, now: Instant) -> bool {
        now < self.created + self.lifetime.reject_after_time
    }

    /// Whether the keypair is due to be replaced (the send side of WireGuard's
    /// `keep_key_fresh`): it sealed more than `rekey_after_messages`, or we initiated it
    /// and it is `rekey_after_time` old.
    pub fn wants_rekey(&self, now: Instant) -> bool {
        self.send_counter() > self.lifetime.rekey_after_messages
            || (self.initiator && now >= self.created + self.lifetime.rekey_after_time)
    }

    /// Its lifetime.
    pub fn lifetime(&self) -> KeyLifetime {
        self.lifetime
    }

    /// Our index: the receiver index of messages sent to us with this keypair.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }
    /// The peer's index, written into the messages we seal.
    pub fn remote_index(&self) -> u32 {
        self.remote_index
    }
    /// When the handshake that made this keypair completed.
    pub fn created(&self) -> Instant {
        self.created
    }
    /// Whether we initiated the handshake that made this keypair.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }
    /// The next counter `seal` will use (= messages sealed so far).
    pub fn send_counter(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }
    /// Which AEAD implementation this keypair uses.
    pub fn backend(&self) -> AeadBackend {
        self.send.backend()
    }

    /// Reserves the next sending counter; `None` once REJECT_AFTER_MESSAGES is reached
    /// (the counter then stays there: it can never wrap).
    #[inline]
    fn next_counter(&self) -> Option<u64> {
        self.send_counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c < REJECT_AFTER_MESSAGES).then_some(c + 1)
            })
            .ok()
    }

    /// Seals the `len` payload bytes at `buf[16..16 + len]` in place: pads uncompressed IP
    /// payloads (see [`padded_len`]), writes the header into `buf[..16]` and the tag after
    /// the payload, and returns the datagram length (the message is `buf[..returned]`).
    pub fn seal(
        &self,
        flags: PayloadFlags,
        len: usize,
        buf: &mut [u8],
        mtu: usize,
    ) -> Result<usize, TransportError> {
        let prepared = self.prepare(flags, len, buf, mtu, 0)?;
        let counter = prepared.counter;
        let (_, rest) = buf.split_at_mut(DATA_HEADER_LEN);
        let (payload, rest) = rest.split_at_mut(prepared.text.len());
        let tag = self
            .send
            .seal_in_place(counter, aad_of(prepared.flags), payload)
            .map_err(|_| TransportError::Authentication { counter })?;
        rest[..TAG_LEN].copy_from_slice(&tag);
        Ok(prepared.len)
    }

    /// Everything [`Keypair::seal`] does but the encryption, for a message that is then
    /// sealed with others in one [`Keypair::seal_prepared`] call: reserves the counter,
    /// pads, writes the header. `buf` is the message's slot, which starts at `at` in the
    /// buffer `seal_prepared` will get.
    pub fn prepare(
        &self,
        flags: PayloadFlags,
        len: usize,
        buf: &mut [u8],
        mtu: usize,
        at: usize,
    ) -> Result<Prepared, TransportError> {
        let padded = padded_len(flags, len, mtu);
        let need = DATA_HEADER_LEN + padded + TAG_LEN;
        if buf.len() < need {
            return Err(TransportError::BufferTooSmall {
                need,
                have: buf.len(),
            });
        }
        let counter = self
            .next_counter()
            .ok_or(TransportError::CounterExhausted)?;
        let (header, rest) = buf.split_at_mut(DATA_HEADER_LEN);
        rest[len..padded].fill(0);
        data::write_header(header, flags, self.remote_index, counter);
        let text = at + DATA_HEADER_LEN..at + DATA_HEADER_LEN + padded;
        Ok(Prepared {
            counter,
            flags,
            tag: text.end,
            text,
            len: need,
        })
    }

    /// Seals messages [`Keypair::prepare`]d with this keypair, all in `buf` (each where its
    /// `at` said): the same bytes as sealing them one by one, in fewer passes of the AEAD
    /// (see [`Aead::seal_many`]). It takes the messages, so none can be sealed twice (a
    /// second seal under the same counter would undo the first). An error means a message
    /// did not lie in `buf`; some of the others may then be sealed and some not, so the
    /// caller sends none of them.
    pub fn seal_prepared(
        &self,
        buf: &mut [u8],
        batch: impl IntoIterator<Item = Prepared>,
    ) -> Result<(), TransportError> {
        let mut jobs: [AeadJob<'static>; SEAL_BATCH] = std::array::from_fn(|_| AeadJob {
            counter: 0,
            aad: &[],
            text: 0..0,
            tag: 0,
        });
        let mut n = 0;
        for p in batch {
            jobs[n] = AeadJob {
                counter: p.counter,
                aad: aad_of(p.flags),
                text: p.text,
                tag: p.tag,
            };
            n += 1;
            if n == SEAL_BATCH {
                self.seal_jobs(buf, &jobs[..n])?;
                n = 0;
            }
        }
        self.seal_jobs(buf, &jobs[..n])
    }

    /// Hands `jobs` to the AEAD.
    fn seal_jobs(&self, buf: &mut [u8], jobs: &[AeadJob<'_>]) -> Result<(), TransportError> {
        self.send
            .seal_many(buf, jobs)
            .map_err(|_| TransportError::BufferTooSmall {
                need: jobs.iter().map(|j| j.tag + TAG_LEN).max().unwrap_or(0),
                have: buf.len(),
            })
    }

    /// Opens the data message `buf` (exactly one datagram) in place. Checks the counter
    /// against the replay window before decrypting (a cheap reject) and records it only
    /// after authentication. Returns the payload flags and where the (padded) plaintext
    /// lies in `buf`.
    pub fn open(&self, buf: &mut [u8]) -> Result<(PayloadFlags, Range<usize>), TransportError> {
        let msg = Received::parse(buf, 0)?;
        self.open_one(buf, &msg)
    }

    /// [`Keypair::open`] for a message parsed already, which lies at `msg.at` in `buf`;
    /// the payload range it returns is in `buf`.
    pub fn open_one(&self, buf: &mut [u8], msg: &Received) -> Opened {
        let DataHeader { flags, counter, .. } = msg.header;
        if !msg.lies_in(buf.len()) {
            return Err(TransportError::Overlap);
        }
        let buf = &mut buf[..msg.at.end];
        self.check(&msg.header, &self.lock_replay())?;
        let payload = msg.payload();
        let (text, tag) = buf.split_at_mut(payload.end);
        let tag: &[u8; TAG_LEN] = (&*tag)
            .try_into()
            .expect("a parsed message ends with its tag");
        self.receive
            .open_in_place(counter, aad_of(flags), &mut text[payload.clone()], tag)
            .map_err(|_| TransportError::Authentication { counter })?;
        // Another thread may have accepted the same counter meanwhile: update re-checks.
        if !self.lock_replay().update(counter) {
            return Err(TransportError::Replay { counter });
        }
        Ok((flags, payload))
    }

    /// Opens the data messages `msgs` (parsed from `buf` by [`Received::parse`]) in place:
    /// for each the outcome [`Keypair::open`] gives, in `out` (cleared first; payload
    /// ranges are in `buf`), with the AEAD work of all of them done in few calls (see
    /// [`Aead::open_many`]). As in `open`, counters are checked against the replay window
    /// before anything is decrypted and recorded only after authentication, in message
    /// order, so a counter that comes twice in a batch is accepted once. The messages must
    /// go forward without overlapping; one that does not is refused
    /// ([`TransportError::Overlap`]).
    pub fn open_many(&self, buf: &mut [u8], msgs: &[Received], out: &mut Vec<Opened>) {
        out.clear();
        for chunk in msgs.chunks(SEAL_BATCH) {
            self.open_chunk(buf, chunk, out);
        }
    }

    /// [`Keypair::open_many`] for at most [`SEAL_BATCH`] messages.
    fn open_chunk(&self, buf: &mut [u8], msgs: &[Received], out: &mut Vec<Opened>) {
        let first = out.len();
        let mut jobs: [AeadJob<'static>; SEAL_BATCH] = std::array::from_fn(|_| AeadJob {
            counter: 0,
            aad: &[],
            text: 0..0,
            tag: 0,
        });
        let mut which = [0usize; SEAL_BATCH];
        let mut n = 0;
        {
            let window = self.lock_replay();
            // Opening in place twice would decrypt twice: ranges go forward, apart.
            let mut free_from = 0;
            for m in msgs {
                let r = &m.at;
                let apart = r.start >= free_from;
                free_from = free_from.max(r.end);
                let outcome = if apart && m.lies_in(buf.len()) {
                    self.check(&m.header, &window).map(|()| {
                        let text = m.payload();
                        jobs[n] = AeadJob {
                            counter: m.header.counter,
                            aad: aad_of(m.header.flags),
                            tag: text.end,
                            text: text.clone(),
                        };
                        which[n] = out.len();
                        n += 1;
                        (m.header.flags, text)
                    })
                } else {
                    Err(TransportError::Overlap)
                };
                out.push(outcome);
            }
        }
        let mut opened = [false; SEAL_BATCH];
        if self
            .receive
            .open_many(buf, &jobs[..n], &mut opened[..n])
            .is_err()
        {
            // The ranges came from `buf` itself, so this cannot happen; refuse them all.
            opened = [false; SEAL_BATCH];
        }
        let mut window = self.lock_replay();
        for ((job, &ok), &i) in jobs[..n].iter().zip(&opened).zip(&which) {
            let counter = job.counter;
            if !ok {
                out[i] = Err(TransportError::Authentication { counter });
            } else if !window.update(counter) {
                out[i] = Err(TransportError::Replay { counter });
            }
        }
        debug_assert_eq!(out.len() - first, msgs.len());
    }

    /// The checks of a parsed data message before anything is decrypted: addressed to this
    /// keypair, its counter new to `window`.
    fn check(&self, header: &DataHeader, window: &ReplayWindow) -> Result<(), TransportError> {
        if header.receiver != self.local_index {
            return Err(TransportError::WrongIndex {
                got: header.receiver,
                want: self.local_index,
            });
        }
        if !window.check(header.counter) {
            return Err(TransportError::Replay {
                counter: header.counter,
            });
        }
        Ok(())
    }

    /// The receive window; a poisoned lock is recovered because every window operation
    /// leaves it consistent (plain integer stores, no panics inside).
    fn lock_replay(&self) -> std::sync::MutexGuard<'_, ReplayWindow> {
        self.replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`Keypair::open_many`] over raw message ranges, for tests and fuzzing: each range
    /// is parsed first, and one that does not parse gets the error [`Keypair::open`] gives
    /// it; `out` holds one outcome per range.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn open_ranges(
        &self,
        buf: &mut [u8],
        ranges: &[Range<usize>],
        out: &mut Vec<Opened>,
    ) {
        let mut parsed = Vec::with_capacity(ranges.len());
        let places: Vec<Result<usize, TransportError>> = ranges
            .iter()
            .map(|r| {
                let msg = buf.get(r.clone()).ok_or(TransportError::Overlap)?;
                parsed.push(Received::parse(msg, r.start)?);
                Ok(parsed.len() - 1)
            })
            .collect();
        let mut opened = Vec::with_capacity(parsed.len());
        self.open_many(buf, &parsed, &mut opened);
        out.clear();
        out.extend(
            places
                .into_iter()
                .map(|p| p.and_then(|j| opened[j].clone())),
        );
    }

    #[cfg(test)]
    pub(crate) fn set_send_counter(&self, c: u64) {
        self.send_counter.store(c, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair(backend: AeadBackend) -> (Keypair, Keypair) {
        let now = Instant::now();
        let a = Keypair::new(backend, &[1; 32], &[2; 32], 10, 20, now, true);
        let b = Keypair::new(backend, &[2; 32], &[1; 32], 20, 10, now, false);
        (a, b)
    }

    fn ipv4(len: usize) -> Vec<u8> {
        let mut p = vec![0x45u8; len];
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p
    }

    #[test]
    fn seal_open_round_trip_with_padding() {
        for backend in AeadBackend::ALL {
            let (a, b) = pair(backend);
            let pkt = ipv4(45);
            let mut buf = vec![0u8; 200];
            buf[16..16 + 45].copy_from_slice(&pkt);
            let n = a.seal(PayloadFlags::NONE, 45, &mut buf, 1420).unwrap();
            assert_eq!(n, 16 + 48 + 16);
            let (flags, r) = b.open(&mut buf[..n]).unwrap();
            assert_eq!(flags, PayloadFlags::NONE);
            assert_eq!(r, 16..64);
            assert_eq!(&buf[16..61], &pkt[..]);
            assert_eq!(&buf[61..64], &[0, 0, 0]);
            assert_eq!(crate::ip::ip_packet_len(&buf[r]), Some(45));
        }
    }

    /// A batch of `lens.len()` packets in slots of `stride` bytes (with junk behind each
    /// slot's payload, which padding must overwrite), prepared and sealed together by `a`,
    /// against the same packets sealed one by one by a keypair of the same keys; then
    /// opened by `b`.
    fn check_batch(backend: AeadBackend, lens: &[usize], flags: &[PayloadFlags]) {
        let stride = 1600;
        let (a, b) = pair(backend);
        let (one, _) = pair(backend);
        let mut arena = vec![0xeeu8; lens.len() * stride];
        let mut expected = arena.clone();
        let mut prepared = Vec::new();
        let mut lengths = Vec::new();
        for (i, (&len, &f)) in lens.iter().zip(flags).enumerate() {
            let slot = i * stride..(i + 1) * stride;
            let pkt = ipv4(len.max(20));
            arena[slot.start + 16..][..len].copy_from_slice(&pkt[..len]);
            expected[slot.start + 16..][..len].copy_from_slice(&pkt[..len]);
            let n = one.seal(f, len, &mut expected[slot.clone()], 1420).unwrap();
            let p = a
                .prepare(f, len, &mut arena[slot.clone()], 1420, slot.start)
                .unwrap();
            assert_eq!(p.datagram_len(), n);
            lengths.push(n);
            prepared.push(p);
        }
        a.seal_prepared(&mut arena, prepared).unwrap();
        assert!(
            arena == expected,
            "{backend:?}: batch differs, lens {lens:?}"
        );
        for (i, n) in lengths.into_iter().enumerate() {
            let at = i * stride;
            let (f, r) = b.open(&mut arena[at..at + n]).unwrap();
            assert_eq!(f, flags[i]);
            assert_eq!(r.len(), padded_len(f, lens[i], 1420));
        }
    }

    #[test]
    fn a_prepared_batch_seals_as_one_by_one() {
        let tap = PayloadFlags::ETHERNET;
        let lz = PayloadFlags::COMPRESSED;
        for backend in AeadBackend::ALL {
            // A super-segment's packets and its short last one; every padding remainder;
            // the flags as aad; more than one AEAD batch (SEAL_BATCH) in one call.
            let mut lens = vec![1420; 43];
            lens.push(333);
            check_batch(backend, &lens, &[PayloadFlags::NONE; 44]);
            let lens: Vec<usize> = (20..60).chain([1419, 1421]).collect();
            let flags: Vec<PayloadFlags> = (0..lens.len())
                .map(|i| [PayloadFlags::NONE, tap, lz][i % 3])
                .collect();
            check_batch(backend, &lens, &flags);
            check_batch(backend, &[1400; 150], &[tap; 150]);
            check_batch(backend, &[], &[]);
        }
    }

    #[test]
    fn a_batch_opens_as_one_by_one() {
        for backend in AeadBackend::ALL {
            let (a, b) = pair(backend);
            let (_, one) = pair(backend);
            let stranger = Keypair::new(backend, &[3; 32], &[4; 32], 30, 99, Instant::now(), true);
            // Messages back to back in one buffer, as GRO hands them over: full and short
            // packets, TAP frames (aad), and some that must fail.
            let mut buf = Vec::new();
            let mut msgs = Vec::new();
            let mut push = |buf: &mut Vec<u8>, msg: &[u8]| {
                msgs.push(buf.len()..buf.len() + msg.len());
                buf.extend_from_slice(msg);
            };
            let seal = |kp: &Keypair, len: usize, flags: PayloadFlags| {
                let mut m = vec![0u8; 1600];
                m[16..16 + len].copy_from_slice(&ipv4(len.max(20))[..len]);
                let n = kp.seal(flags, len, &mut m, 1420).unwrap();
                m.truncate(n);
                m
            };
            let mut replay = Vec::new();
            for i in 0..70 {
                let flags = if i % 5 == 0 {
                    PayloadFlags::ETHERNET
                } else {
                    PayloadFlags::NONE
                };
                let m = seal(&a, if i % 7 == 3 { 90 + i } else { 1420 }, flags);
                match i {
                    10 => {
                        let mut bad = m.clone();
                        bad[40] ^= 4; // corrupted in transit
                        push(&mut buf, &bad);
                    }
                    20 => replay = m.clone(),
                    _ => {}
                }
                push(&mut buf, &m);
                if i == 30 {
                    push(&mut buf, &replay); // a replay within the batch
                    push(&mut buf, &seal(&stranger, 100, PayloadFlags::NONE)); // wrong index
                    push(&mut buf, &m[..20]); // too short
                }
                if i == 40 {
                    push(&mut buf, &m); // the same message twice in one AEAD chunk
                }
            }
            let mut expected = buf.clone();
            let want: Vec<Opened> = msgs
                .iter()
                .map(|r| one.open(&mut expected[r.clone()]))
                .collect();
            let mut got = Vec::new();
            b.open_ranges(&mut buf, &msgs, &mut got);
            assert_eq!(got.len(), msgs.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                match (g, w) {
                    (Ok((gf, gr)), Ok((wf, wr))) => {
                        let r = &msgs[i];
                        assert_eq!((gf, gr.clone()), (wf, r.start + wr.start..r.start + wr.end));
                        assert_eq!(
                            buf[gr.clone()],
                            expected[gr.clone()],
                            "{backend:?} message {i}"
                        );
                    }
                    _ => assert_eq!(
                        g.as_ref().err(),
                        w.as_ref().err(),
                        "{backend:?} message {i}"
                    ),
                }
            }
            let refused: Vec<String> = got
                .iter()
                .filter_map(|g| g.as_ref().err())
                .map(|e| {
                    format!("{e:?}")
                        .split([' ', '(', '{'])
                        .next()
                        .unwrap()
                        .to_owned()
                })
                .collect();
            assert_eq!(
                refused,
                ["Authentication", "Replay", "WrongIndex", "Wire", "Replay"],
                "{backend:?}: corrupted, replayed, stranger's, short, doubled"
            );
            // A message that overlaps the one before it, or lies outside the buffer, is
            // refused, and the first message still opens.
            let m = seal(&a, 200, PayloadFlags::NONE);
            let mut buf = m.clone();
            buf.extend_from_slice(&m);
            let n = m.len();
            let header = Received::parse(&m, 0).unwrap().header;
            let msgs = [0..n, n - 1..2 * n - 1, 0..n, n..3 * n, 2 * n..2 * n + 8]
                .map(|at| Received { at, header });
            b.open_many(&mut buf, &msgs, &mut got);
            assert!(got[0].is_ok(), "{backend:?}");
            for g in &got[1..] {
                assert_eq!(
                    g.as_ref().err(),
                    Some(&TransportError::Overlap),
                    "{backend:?}"
                );
            }
        }
    }

    #[test]
    fn a_batch_that_does_not_fit_its_buffer_is_refused() {
        let (a, _) = pair(AeadBackend::default());
        let mut slot = vec![0u8; 200];
        let p = a
            .prepare(PayloadFlags::NONE, 100, &mut slot, 1420, 1000)
            .unwrap();
        let mut buf = vec![0u8; 1100];
        assert!(matches!(
            a.seal_prepared(&mut buf, [p]),
            Err(TransportError::BufferTooSmall { .. })
        ));
        assert_eq!(buf, vec![0u8; 1100]);
    }

    #[test]
    fn padding_rules() {
        assert_eq!(padded_len(PayloadFlags::NONE, 0, 1420), 0);
        assert_eq!(padded_len(PayloadFlags::NONE, 1, 1420), 16);
        assert_eq!(padded_len(PayloadFlags::NONE, 1419, 1420), 1420);
        assert_eq!(padded_len(PayloadFlags::NONE, 1410, 1420), 1420);
        assert_eq!(padded_len(PayloadFlags::NONE, 1409, 1420), 1420);
        assert_eq!(padded_len(PayloadFlags::NONE, 1400, 1420), 1408);
        assert_eq!(padded_len(PayloadFlags::NONE, 1500, 1420), 1500);
        assert_eq!(padded_len(PayloadFlags::COMPRESSED, 33, 1420), 33);
        assert_eq!(padded_len(PayloadFlags::ETHERNET, 60, 1420), 60);
        // A partial checksum leaves an IP packet whose length the receiver recovers.
        assert_eq!(padded_len(PayloadFlags::PARTIAL_CHECKSUM, 1400, 1420), 1408);
        let both = PayloadFlags::PARTIAL_CHECKSUM.union(PayloadFlags::COMPRESSED);
        assert_eq!(padded_len(both, 33, 1420), 33);
        // IPv6 over an IPv6 underlay, MTU 1420: exactly 1500 bytes on the wire.
        assert_eq!(sealed_len(PayloadFlags::NONE, 1420, 1420) + 40 + 8, 1500);
    }

    #[test]
    fn flags_are_authenticated() {
        let (a, b) = pair(AeadBackend::Ring);
        let mut buf = vec![0u8; 100];
        let n = a
            .seal(PayloadFlags::COMPRESSED, 40, &mut buf, 1420)
            .unwrap();
        assert_eq!(n, 72);
        let mut x = buf[..n].to_vec();
        x[1] = PayloadFlags::ETHERNET.bits();
        assert_eq!(
            b.open(&mut x),
            Err(TransportError::Authentication { counter: 0 })
        );
        let mut x = buf[..n].to_vec();
        x[1] = 0;
        assert_eq!(
            b.open(&mut x),
            Err(TransportError::Authentication { counter: 0 })
        );
        let (f, r) = b.open(&mut buf[..n]).unwrap();
        assert_eq!((f, r), (PayloadFlags::COMPRESSED, 16..56));
    }

    #[test]
    fn zero_flags_are_plain_wireguard() {
        // With flags 0 the AAD is empty: the ciphertext equals a raw AEAD over the padded payload.
        let (a, _) = pair(AeadBackend::RustCrypto);
        let mut buf = vec![0u8; 64];
        buf[16..32].copy_from_slice(&[7; 16]);
        let n = a.seal(PayloadFlags::NONE, 16, &mut buf, 1420).unwrap();
        let mut raw = [7u8; 16];
        let tag = AeadBackend::Ring
            .key(&[1; 32])
            .seal_in_place(0, &[], &mut raw)
            .unwrap();
        assert_eq!(&buf[16..32], &raw);
        assert_eq!(&buf[32..n], &tag);
        assert_eq!(&buf[..4], &[4, 0, 0, 0]);
        assert_eq!(&buf[4..8], &20u32.to_le_bytes());
    }

    #[test]
    fn a_parsed_message_opens_where_it_lies() {
        let (a, b) = pair(AeadBackend::Ring);
        // Two messages back to back; the second is opened where it lies in the buffer.
        let mut buf = vec![0u8; 2 * 96];
        let mut one = [0u8; 96];
        one[16..16 + 40].copy_from_slice(&ipv4(40));
        let n = a.seal(PayloadFlags::NONE, 40, &mut one, 1420).unwrap();
        buf[..n].copy_from_slice(&one[..n]);
        let n2 = a.seal(PayloadFlags::ETHERNET, 40, &mut one, 1420).unwrap();
        buf[n..n + n2].copy_from_slice(&one[..n2]);
        let second = Received::parse(&buf[n..n + n2], n).unwrap();
        assert_eq!(second.header.counter, 1);
        assert_eq!(
            b.open_one(&mut buf, &second),
            Ok((PayloadFlags::ETHERNET, n + 16..n + 16 + 40))
        );
        assert_eq!(
            b.open_one(&mut buf, &second),
            Err(TransportError::Replay { counter: 1 })
        );
        // A message that does not lie in the buffer, or is shorter than a header and tag,
        // is refused without touching anything.
        let first = Received::parse(&buf[..n], 0).unwrap();
        let beyond = Received {
            at: buf.len() - 10..buf.len() + n - 10,
            header: first.header,
        };
        assert_eq!(b.open_one(&mut buf, &beyond), Err(TransportError::Overlap));
        let short = Received {
            at: 0..31,
            header: first.header,
        };
        assert_eq!(b.open_one(&mut buf, &short), Err(TransportError::Overlap));
        assert_eq!(b.open_one(&mut buf, &first).unwrap().0, PayloadFlags::NONE);
    }

    #[test]
    fn replayed_data_rejected() {
        let (a, b) = pair(AeadBackend::Ring);
        let mut buf = vec![0u8; 64];
        let n = a.seal(PayloadFlags::NONE, 0, &mut buf, 1420).unwrap();
        let copy = buf[..n].to_vec();
        b.open(&mut buf[..n]).unwrap();
        let mut again = copy.clone();
        assert_eq!(
            b.open(&mut again),
            Err(TransportError::Replay { counter: 0 })
        );
    }

    #[test]
    fn wrong_index_and_short_buffers() {
        let (a, b) = pair(AeadBackend::Ring);
        let mut buf = vec![0u8; 64];
        let n = a.seal(PayloadFlags::NONE, 0, &mut buf, 1420).unwrap();
        assert_eq!(
            a.open(&mut buf[..n]),
            Err(TransportError::WrongIndex { got: 20, want: 10 })
        );
        assert_eq!(
            a.seal(PayloadFlags::NONE, 17, &mut [0u8; 63], 1420),
            Err(TransportError::BufferTooSmall { need: 64, have: 63 })
        );
        let _ = b;
    }

    #[test]
    fn counter_limit() {
        let (a, b) = pair(AeadBackend::Ring);
        a.set_send_counter(REJECT_AFTER_MESSAGES - 1);
        let mut buf = vec![0u8; 64];
        let n = a.seal(PayloadFlags::NONE, 0, &mut buf, 1420).unwrap();
        assert!(b.open(&mut buf[..n]).is_ok());
        assert_eq!(
            a.seal(PayloadFlags::NONE, 0, &mut buf, 1420),
            Err(TransportError::CounterExhausted)
        );
        assert_eq!(
            a.seal(PayloadFlags::NONE, 0, &mut buf, 1420),
            Err(TransportError::CounterExhausted)
        );
        assert_eq!(a.send_counter(), REJECT_AFTER_MESSAGES);
        // A forged message claiming a counter at the limit is refused before decryption.
        let mut forged = vec![0u8; 32];
        data::write_header(&mut forged, PayloadFlags::NONE, 20, REJECT_AFTER_MESSAGES);
        assert_eq!(
            b.open(&mut forged),
            Err(TransportError::Replay {
                counter: REJECT_AFTER_MESSAGES
            })
        );
    }

    #[test]
    fn keypair_is_send_and_sync_and_works_across_threads() {
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<Keypair>();
        let (a, b) = pair(AeadBackend::Ring);
        let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let sealer = {
            let a = a.clone();
            std::thread::spawn(move || {
                for i in 0..2000u32 {
                    let mut buf = vec![0u8; 64];
                    buf[16..20].copy_from_slice(&i.to_le_bytes());
                    let n = a.seal(PayloadFlags::ETHERNET, 4, &mut buf, 1420).unwrap();
                    buf.truncate(n);
                    tx.send(buf).unwrap();
                }
            })
        };
        let mut got = 0u32;
        for mut m in rx {
            let (_, r) = b.open(&mut m).unwrap();
            assert_eq!(&m[r], &got.to_le_bytes());
            got += 1;
        }
        sealer.join().unwrap();
        assert_eq!(got, 2000);
    }

    proptest! {
        /// Flipping any single bit of a transport message makes it rejected.
        #[test]
        fn any_bit_flip_is_rejected(
            len in 0usize..1420,
            flags in 0u8..4,
            bit in any::<proptest::sample::Index>(),
            backend in proptest::sample::select(AeadBackend::ALL.to_vec()),
        ) {
            let (a, b) = pair(backend);
            let flags = PayloadFlags::from_bits(flags).unwrap();
            let mut buf = vec![0x5au8; 16 + 1424 + 16];
            let n = a.seal(flags, len, &mut buf, 1420).unwrap();
            let mut m = buf[..n].to_vec();
            let bit = bit.index(n * 8);
            m[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(b.open(&mut m).is_err());
            // The untouched message still opens (the failed attempt changed no state).
            prop_assert!(b.open(&mut buf[..n]).is_ok());
        }

        #[test]
        fn open_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            backend in proptest::sample::select(AeadBackend::ALL.to_vec()),
        ) {
            let (_, b) = pair(backend);
            let mut m = bytes;
            let _ = b.open(&mut m);
        }
    }
}
