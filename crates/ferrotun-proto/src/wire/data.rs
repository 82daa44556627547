//! Transport data (message type 4): 16-byte header, ciphertext, 16-byte tag.
//! Whitepaper §5.4.6.
//!
//! ```text
//!  0       1       2       3       4                               8
//! +-------+-------+-------+-------+-------------------------------+
//! | 4     | flags | 0     | 0     | receiver index (u32 LE)       |
//! +-------+-------+-------+-------+-------------------------------+
//! |  8..16  counter (u64 LE), also the AEAD nonce                 |
//! +---------------------------------------------------------------+
//! |  16..len-16  encrypted payload (zero-padded IP, LZ4, Ethernet)|
//! |  len-16..len Poly1305 tag                                     |
//! +---------------------------------------------------------------+
//! ```
//! `flags` are [`PayloadFlags`]; they are AEAD associated data when non-zero.

use std::ops::Range;

use super::{MessageKind, PayloadFlags, TYPE_DATA, WireError, check_header, le_u32, le_u64};

/// Length of the data header.
pub const DATA_HEADER_LEN: usize = 16;
/// Length of the Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Shortest data message: a keepalive (empty payload).
pub const DATA_MIN_LEN: usize = DATA_HEADER_LEN + TAG_LEN;
/// Receiver index field.
pub const RECEIVER: Range<usize> = 4..8;
/// Counter field.
pub const COUNTER: Range<usize> = 8..16;

/// The header fields of a data message, read once ([`DataMessage::header`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// How to read the payload.
    pub flags: PayloadFlags,
    /// The receiver's index.
    pub receiver: u32,
    /// The counter (nonce).
    pub counter: u64,
}

/// A view of a transport data message.
#[derive(Debug, Clone, Copy)]
pub struct DataMessage<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> DataMessage<T> {
    /// Validates type, minimum length, reserved bytes and flags.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        match b.first() {
            None => return Err(WireError::Empty),
            Some(&TYPE_DATA) => {}
            Some(&t) => return Err(WireError::UnknownType(t)),
        }
        if b.len() < DATA_MIN_LEN {
            return Err(WireError::TooShort {
                kind: MessageKind::Data,
                got: b.len(),
                min: DATA_MIN_LEN,
            });
        }
        check_header(b, MessageKind::Data, PayloadFlags::KNOWN)?;
        Ok(DataMessage { buffer })
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// How to read the payload.
    pub fn flags(&self) -> PayloadFlags {
        PayloadFlags(self.bytes()[super::FLAGS] & PayloadFlags::KNOWN)
    }
    /// The receiver's index (the caller's lookup key).
    pub fn receiver(&self) -> u32 {
        le_u32(self.bytes(), RECEIVER.start)
    }
    /// The counter (nonce).
    pub fn counter(&self) -> u64 {
        le_u64(self.bytes(), COUNTER.start)
    }
    /// Every header field.
    pub fn header(&self) -> DataHeader {
        DataHeader {
            flags: self.flags(),
            receiver: self.receiver(),
            counter: self.counter(),
        }
    }
    /// Where the encrypted payload lies in the buffer.
    pub fn payload_range(&self) -> Range<usize> {
        DATA_HEADER_LEN..self.bytes().len() - TAG_LEN
    }
    /// The tag.
    pub fn tag(&self) -> &[u8; TAG_LEN] {
        let b = self.bytes();
        b[b.len() - TAG_LEN..]
            .try_into()
            .expect("new_checked guarantees at least DATA_MIN_LEN bytes")
    }
    /// The whole message.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes()
    }
}

/// Writes a data header into `buf[..16]` (`buf.len() >= 16`, checked by the caller).
pub(crate) fn write_header(buf: &mut [u8], flags: PayloadFlags, receiver: u32, counter: u64) {
    buf[super::TYPE] = TYPE_DATA;
    buf[super::FLAGS] = flags.bits();
    buf[super::RESERVED].fill(0);
    buf[RECEIVER].copy_from_slice(&receiver.to_le_bytes());
    buf[COUNTER].copy_from_slice(&counter.to_le_bytes());
}
