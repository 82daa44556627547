//! Handshake response (message type 2), 92 bytes. Whitepaper §5.4.3.
//!
//! ```text
//!  0       1       2       3       4               8              12
//! +-------+-------+-------+-------+---------------+---------------+
//! | 2     | flags | 0     | 0     | sender (LE)   | receiver (LE) |
//! +-------+-------+-------+-------+---------------+---------------+
//! |  12..44  unencrypted ephemeral public key (32)                |
//! |  44..60  encrypted empty payload (0 + 16 tag)                 |
//! |  60..76  mac1 (16)                                            |
//! |  76..92  mac2 (16)                                            |
//! +---------------------------------------------------------------+
//! ```

use std::ops::Range;

use super::{HandshakeFlags, MessageKind, TYPE_RESPONSE, WireError, check_fixed, le_u32};

/// Total length of a response.
pub const RESPONSE_LEN: usize = 92;
/// Sender index field (the responder's index).
pub const SENDER: Range<usize> = 4..8;
/// Receiver index field (the initiator's sender index).
pub const RECEIVER: Range<usize> = 8..12;
/// Ephemeral public key field.
pub const EPHEMERAL: Range<usize> = 12..44;
/// Encrypted empty payload (the tag only).
pub const EMPTY: Range<usize> = 44..60;
/// mac1 field.
pub const MAC1: Range<usize> = 60..76;
/// mac2 field.
pub const MAC2: Range<usize> = 76..92;

/// A view of a handshake response.
#[derive(Debug, Clone, Copy)]
pub struct Response<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Response<T> {
    /// Validates type, exact length, reserved bytes and flags.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_fixed(
            buffer.as_ref(),
            MessageKind::Response,
            TYPE_RESPONSE,
            RESPONSE_LEN,
            HandshakeFlags::KNOWN,
        )?;
        Ok(Response { buffer })
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The message copied into a buffer of its own (it was validated already).
    pub fn to_owned(&self) -> Response<[u8; RESPONSE_LEN]> {
        Response {
            buffer: self
                .bytes()
                .try_into()
                .expect("new_checked validated the exact length"),
        }
    }

    fn field<const N: usize>(&self, r: Range<usize>) -> &[u8; N] {
        self.bytes()[r]
            .try_into()
            .expect("field ranges lie inside the length new_checked validated")
    }

    /// The responder's capability flags.
    pub fn flags(&self) -> HandshakeFlags {
        HandshakeFlags(self.bytes()[super::FLAGS] & HandshakeFlags::KNOWN)
    }
    /// The responder's index.
    pub fn sender(&self) -> u32 {
        le_u32(self.bytes(), SENDER.start)
    }
    /// The initiator's index (the caller's lookup key).
    pub fn receiver(&self) -> u32 {
        le_u32(self.bytes(), RECEIVER.start)
    }
    /// The responder's ephemeral public key.
    pub fn ephemeral(&self) -> &[u8; 32] {
        self.field(EPHEMERAL)
    }
    /// The encrypted empty payload (its tag).
    pub fn encrypted_empty(&self) -> &[u8; 16] {
        self.field(EMPTY)
    }
    /// mac1.
    pub fn mac1(&self) -> &[u8; 16] {
        self.field(MAC1)
    }
    /// mac2.
    pub fn mac2(&self) -> &[u8; 16] {
        self.field(MAC2)
    }
    /// The bytes mac1 covers.
    pub fn mac1_input(&self) -> &[u8] {
        &self.bytes()[..MAC1.start]
    }
    /// The bytes mac2 covers.
    pub fn mac2_input(&self) -> &[u8] {
        &self.bytes()[..MAC2.start]
    }
    /// The whole message.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes()
    }
}

impl<'a> Response<&'a mut [u8]> {
    /// Takes the first 92 bytes of `buf` for writing and sets type, flags and reserved
    /// bytes; `None` when `buf` is too short.
    pub fn emit(buf: &'a mut [u8], flags: HandshakeFlags) -> Option<Self> {
        let buffer = buf.get_mut(..RESPONSE_LEN)?;
        buffer.fill(0);
        buffer[super::TYPE] = TYPE_RESPONSE;
        buffer[super::FLAGS] = flags.bits();
        Some(Response { buffer })
    }
    /// Sets the sender index.
    pub fn set_sender(&mut self, index: u32) {
        self.buffer[SENDER].copy_from_slice(&index.to_le_bytes());
    }
    /// Sets the receiver index.
    pub fn set_receiver(&mut self, index: u32) {
        self.buffer[RECEIVER].copy_from_slice(&index.to_le_bytes());
    }
    /// A field for writing.
    pub fn field_mut(&mut self, r: Range<usize>) -> &mut [u8] {
        &mut self.buffer[r]
    }
    /// The whole message.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.buffer
    }
}
