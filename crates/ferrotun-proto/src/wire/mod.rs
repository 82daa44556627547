//! Wire formats: zero-copy views of WireGuard's four message types.
//!
//! Responsible for the byte layout of handshake initiations, responses, cookie replies and
//! transport data messages, the flags of ferrotun's native extension (see the crate docs),
//! and for refusing malformed input with a typed [`WireError`] without ever panicking. Each
//! message family has a view type over a buffer (`T: AsRef<[u8]>`) in the style of
//! smoltcp's `wire` module: `new_checked` validates length, type, reserved bytes and flags
//! once; accessors then read fixed offsets that cannot go out of bounds; setters exist for
//! `T: AsMut<[u8]>`. Not responsible for cryptography (views expose the encrypted fields
//! as bytes) or for deciding what to do with a message.
//!
//! Every message starts with the same 4-byte header (whitepaper §5.4.2–§5.4.7):
//! ```text
//!  0        1        2        3
//! +--------+--------+--------+--------+
//! |  type  | flags  |  0x00  |  0x00  |   type: 1 initiation, 2 response,
//! +--------+--------+--------+--------+         3 cookie reply, 4 transport data
//! ```
//! WireGuard reads these 4 bytes as a little-endian `u32` type whose upper three bytes are
//! reserved zero; ferrotun uses byte 1 for flags (zero in WireGuard) and keeps 2..4 zero.

pub mod cookie;
pub mod data;
pub mod initiation;
pub mod response;

pub use cookie::{COOKIE_REPLY_LEN, CookieReply};
pub use data::{DATA_HEADER_LEN, DATA_MIN_LEN, DataHeader, DataMessage};
pub use initiation::{INITIATION_LEN, Initiation};
pub use response::{RESPONSE_LEN, Response};

use std::fmt;

use thiserror::Error;

/// Message type of a handshake initiation (whitepaper §5.4.2).
pub const TYPE_INITIATION: u8 = 1;
/// Message type of a handshake response (whitepaper §5.4.3).
pub const TYPE_RESPONSE: u8 = 2;
/// Message type of a cookie reply (whitepaper §5.4.7).
pub const TYPE_COOKIE_REPLY: u8 = 3;
/// Message type of transport data (whitepaper §5.4.6).
pub const TYPE_DATA: u8 = 4;

/// Offset of the message type byte.
pub const TYPE: usize = 0;
/// Offset of the flags byte (WireGuard's first reserved byte).
pub const FLAGS: usize = 1;
/// The two reserved bytes that must stay zero.
pub const RESERVED: std::ops::Range<usize> = 2..4;

/// Which of the four messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Handshake initiation, 148 bytes.
    Initiation,
    /// Handshake response, 92 bytes.
    Response,
    /// Cookie reply, 64 bytes.
    CookieReply,
    /// Transport data, at least 32 bytes.
    Data,
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageKind::Initiation => "handshake initiation",
            MessageKind::Response => "handshake response",
            MessageKind::CookieReply => "cookie reply",
            MessageKind::Data => "transport data",
        })
    }
}

/// Why bytes are not a valid message.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// No bytes at all.
    #[error("empty message")]
    Empty,
    /// The type byte is not 1..=4.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A fixed-size message with the wrong length.
    #[error("{kind} of {got} bytes, want exactly {want}")]
    WrongLength {
        /// The message the type byte announced.
        kind: MessageKind,
        /// Length received.
        got: usize,
        /// Length required.
        want: usize,
    },
    /// A data message shorter than its header and tag.
    #[error("{kind} of {got} bytes, want at least {min}")]
    TooShort {
        /// The message the type byte announced.
        kind: MessageKind,
        /// Length received.
        got: usize,
        /// Minimum length.
        min: usize,
    },
    /// A byte that must be zero is not.
    #[error("{kind}: reserved byte {offset} is {value:#04x}, must be 0")]
    ReservedNonZero {
        /// The message.
        kind: MessageKind,
        /// Offset of the byte.
        offset: usize,
        /// Its value.
        value: u8,
    },
    /// Flag bits this version does not know.
    #[error("{kind}: unknown flag bits {bits:#04x}")]
    UnknownFlags {
        /// The message.
        kind: MessageKind,
        /// The whole flag byte.
        bits: u8,
    },
}

/// How to read a transport data payload (byte 1 of a data message; authenticated as AAD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PayloadFlags(u8);

impl PayloadFlags {
    /// No flag: an uncompressed IP packet, possibly zero-padded to a multiple of 16.
    pub const NONE: PayloadFlags = PayloadFlags(0);
    /// Bit 0: the payload is one LZ4 block (decompress it, bounded by the MTU).
    pub const COMPRESSED: PayloadFlags = PayloadFlags(1);
    /// Bit 1: the (decompressed) payload is an Ethernet frame (TAP mode).
    pub const ETHERNET: PayloadFlags = PayloadFlags(2);
    /// Bit 2: the (decompressed) IP packet's TCP or UDP checksum field holds only its
    /// pseudo-header sum, as the kernel leaves it for `CHECKSUM_PARTIAL`: the receiver
    /// completes it, or has its kernel do so. Only on packets whose checksum field a
    /// receiver finds without walking extension headers (IPv4 that is not a fragment,
    /// IPv6 without extension headers).
    pub const PARTIAL_CHECKSUM: PayloadFlags = PayloadFlags(4);
    const KNOWN: u8 = 0b111;

    /// The flags if every set bit is known.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        if bits & !Self::KNOWN == 0 {
            Some(PayloadFlags(bits))
        } else {
            None
        }
    }
    /// The flag byte.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Whether all of `other`'s flags are set.
    pub const fn contains(self, other: PayloadFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Both sets of flags.
    pub const fn union(self, other: PayloadFlags) -> PayloadFlags {
        PayloadFlags(self.0 | other.0)
    }
    /// Whether the payload is a plain IP packet: neither compressed nor an Ethernet frame
    /// (other flags say how to read the packet, not how to find it). Only such a payload
    /// is padded, its length recovered from its IP header.
    pub const fn is_ip_packet(self) -> bool {
        self.0 & (Self::COMPRESSED.0 | Self::ETHERNET.0) == 0
    }
}

/// Capabilities a peer announces in its handshake message (byte 1; authenticated through
/// the prologue for initiations and an extra MixHash for responses: see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HandshakeFlags(u8);

impl HandshakeFlags {
    /// No flag: plain WireGuard behaviour.
    pub const NONE: HandshakeFlags = HandshakeFlags(0);
    /// Bit 0: this side wants LZ4 compression.
    pub const COMPRESSION: HandshakeFlags = HandshakeFlags(1);
    /// Bit 1: this side runs in TAP (Ethernet) mode.
    pub const ETHERNET: HandshakeFlags = HandshakeFlags(2);
    const KNOWN: u8 = 0b11;

    /// The flags if every set bit is known.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        if bits & !Self::KNOWN == 0 {
            Some(HandshakeFlags(bits))
        } else {
            None
        }
    }
    /// The flag byte.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Whether all of `other`'s flags are set.
    pub const fn contains(self, other: HandshakeFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Both sets of flags.
    pub const fn union(self, other: HandshakeFlags) -> HandshakeFlags {
        HandshakeFlags(self.0 | other.0)
    }
}

/// Checks the common header: reserved bytes zero, flags known. `bytes.len() >= 4`.
fn check_header(bytes: &[u8], kind: MessageKind, flags_known: u8) -> Result<(), WireError> {
    for offset in RESERVED {
        let value = bytes[offset];
        if value != 0 {
            return Err(WireError::ReservedNonZero {
                kind,
                offset,
                value,
            });
        }
    }
    let bits = bytes[FLAGS];
    if bits & !flags_known != 0 {
        return Err(WireError::UnknownFlags { kind, bits });
    }
    Ok(())
}

/// Checks the header of a fixed-size handshake message.
fn check_fixed(
    bytes: &[u8],
    kind: MessageKind,
    ty: u8,
    len: usize,
    flags_known: u8,
) -> Result<(), WireError> {
    if bytes.is_empty() {
        return Err(WireError::Empty);
    }
    if bytes[TYPE] != ty {
        return Err(WireError::UnknownType(bytes[TYPE]));
    }
    if bytes.len() != len {
        return Err(WireError::WrongLength {
            kind,
            got: bytes.len(),
            want: len,
        });
    }
    check_header(bytes, kind, flags_known)
}

/// Reads a little-endian `u32` at a fixed offset (caller validated the length).
fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Reads a little-endian `u64` at a fixed offset (caller validated the length).
fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// A validated view of one received datagram (or TCP frame).
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// A handshake initiation.
    Initiation(Initiation<&'a [u8]>),
    /// A handshake response.
    Response(Response<&'a [u8]>),
    /// A cookie reply.
    CookieReply(CookieReply<&'a [u8]>),
    /// Transport data.
    Data(DataMessage<&'a [u8]>),
}

impl<'a> Message<'a> {
    /// Says which message `bytes` is, after checking its length, reserved bytes and flags.
    /// Never panics, whatever the input.
    pub fn classify(bytes: &'a [u8]) -> Result<Message<'a>, WireError> {
        match bytes.first() {
            None => Err(WireError::Empty),
            Some(&TYPE_INITIATION) => Initiation::new_checked(bytes).map(Message::Initiation),
            Some(&TYPE_RESPONSE) => Response::new_checked(bytes).map(Message::Response),
            Some(&TYPE_COOKIE_REPLY) => CookieReply::new_checked(bytes).map(Message::CookieReply),
            Some(&TYPE_DATA) => DataMessage::new_checked(bytes).map(Message::Data),
            Some(&t) => Err(WireError::UnknownType(t)),
        }
    }

    /// Which message this is.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Initiation(_) => MessageKind::Initiation,
            Message::Response(_) => MessageKind::Response,
            Message::CookieReply(_) => MessageKind::CookieReply,
            Message::Data(_) => MessageKind::Data,
        }
    }

    /// A handshake message copied out of the receive buffer; `None` for data.
    pub fn to_handshake(&self) -> Option<HandshakeMessage> {
        match self {
            Message::Initiation(m) => Some(HandshakeMessage::Initiation(m.to_owned())),
            Message::Response(m) => Some(HandshakeMessage::Response(m.to_owned())),
            Message::CookieReply(m) => Some(HandshakeMessage::CookieReply(m.to_owned())),
            Message::Data(_) => None,
        }
    }

    /// The receiver index the caller looks its session up by (`None` for initiations,
    /// which are matched by the initiator's static key instead).
    pub fn receiver_index(&self) -> Option<u32> {
        match self {
            Message::Initiation(_) => None,
            Message::Response(r) => Some(r.receiver()),
            Message::CookieReply(c) => Some(c.receiver()),
            Message::Data(d) => Some(d.receiver()),
        }
    }
}

/// A validated handshake message in a buffer of its own: what a receive path hands to the
/// task that runs handshakes, typed, so that nobody reads its bytes by offset again. Fixed
/// arrays, so that handing one over allocates nothing.
#[derive(Debug, Clone)]
pub enum HandshakeMessage {
    /// A handshake initiation.
    Initiation(Initiation<[u8; INITIATION_LEN]>),
    /// A handshake response.
    Response(Response<[u8; RESPONSE_LEN]>),
    /// A cookie reply.
    CookieReply(CookieReply<[u8; COOKIE_REPLY_LEN]>),
}

impl HandshakeMessage {
    /// Which message this is.
    pub fn kind(&self) -> MessageKind {
        match self {
            HandshakeMessage::Initiation(_) => MessageKind::Initiation,
            HandshakeMessage::Response(_) => MessageKind::Response,
            HandshakeMessage::CookieReply(_) => MessageKind::CookieReply,
        }
    }

    /// The receiver index a response or cookie reply names (initiations are matched by
    /// the initiator's static key instead).
    pub fn receiver_index(&self) -> Option<u32> {
        match self {
            HandshakeMessage::Initiation(_) => None,
            HandshakeMessage::Response(r) => Some(r.receiver()),
            HandshakeMessage::CookieReply(c) => Some(c.receiver()),
        }
    }

    /// The message's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HandshakeMessage::Initiation(m) => m.as_bytes(),
            HandshakeMessage::Response(m) => m.as_bytes(),
            HandshakeMessage::CookieReply(m) => m.as_bytes(),
        }
    }
}

#[cfg(test)]
mod tests;
