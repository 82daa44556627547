//! Handshake initiation (message type 1), 148 bytes. Whitepaper §5.4.2.
//!
//! ```text
//!  0       1       2       3       4                               8
//! +-------+-------+-------+-------+-------------------------------+
//! | 1     | flags | 0     | 0     | sender index (u32 LE)         |
//! +-------+-------+-------+-------+-------------------------------+
//! |  8..40   unencrypted ephemeral public key (32)                |
//! |  40..88  encrypted static public key (32 + 16 tag)            |
//! |  88..116 encrypted TAI64N timestamp (12 + 16 tag)             |
//! |  116..132 mac1 (16)                                           |
//! |  132..148 mac2 (16)                                           |
//! +---------------------------------------------------------------+
//! ```

use std::ops::Range;

use super::{HandshakeFlags, MessageKind, TYPE_INITIATION, WireError, check_fixed, le_u32};

/// Total length of an initiation.
pub const INITIATION_LEN: usize = 148;
/// Sender index field.
pub const SENDER: Range<usize> = 4..8;
/// Ephemeral public key field.
pub const EPHEMERAL: Range<usize> = 8..40;
/// Encrypted static key field (AEAD ciphertext of 32 bytes plus tag).
pub const STATIC: Range<usize> = 40..88;
/// Encrypted timestamp field (AEAD ciphertext of 12 bytes plus tag).
pub const TIMESTAMP: Range<usize> = 88..116;
/// mac1 field.
pub const MAC1: Range<usize> = 116..132;
/// mac2 field.
pub const MAC2: Range<usize> = 132..148;

/// A view of a handshake initiation.
#[derive(Debug, Clone, Copy)]
pub struct Initiation<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Initiation<T> {
    /// Validates type, exact length, reserved bytes and flags.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_fixed(
            buffer.as_ref(),
            MessageKind::Initiation,
            TYPE_INITIATION,
            INITIATION_LEN,
            HandshakeFlags::KNOWN,
        )?;
        Ok(Initiation { buffer })
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The message copied into a buffer of its own (it was validated already).
    pub fn to_owned(&self) -> Initiation<[u8; INITIATION_LEN]> {
        Initiation {
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

    /// The initiator's capability flags.
    pub fn flags(&self) -> HandshakeFlags {
        HandshakeFlags(self.bytes()[super::FLAGS] & HandshakeFlags::KNOWN)
    }
    /// The initiator's index for this handshake.
    pub fn sender(&self) -> u32 {
        le_u32(self.bytes(), SENDER.start)
    }
    /// The initiator's ephemeral public key.
    pub fn ephemeral(&self) -> &[u8; 32] {
        self.field(EPHEMERAL)
    }
    /// The initiator's static key, encrypted.
    pub fn encrypted_static(&self) -> &[u8; 48] {
        self.field(STATIC)
    }
    /// The timestamp, encrypted.
    pub fn encrypted_timestamp(&self) -> &[u8; 28] {
        self.field(TIMESTAMP)
    }
    /// mac1.
    pub fn mac1(&self) -> &[u8; 16] {
        self.field(MAC1)
    }
    /// mac2 (all zero when the initiator had no cookie).
    pub fn mac2(&self) -> &[u8; 16] {
        self.field(MAC2)
    }
    /// The bytes mac1 covers: everything before it.
    pub fn mac1_input(&self) -> &[u8] {
        &self.bytes()[..MAC1.start]
    }
    /// The bytes mac2 covers: everything before it.
    pub fn mac2_input(&self) -> &[u8] {
        &self.bytes()[..MAC2.start]
    }
    /// The whole message.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes()
    }
}

impl<'a> Initiation<&'a mut [u8]> {
    /// Takes the first 148 bytes of `buf` for writing and sets type, flags and reserved
    /// bytes; `None` when `buf` is too short.
    pub fn emit(buf: &'a mut [u8], flags: HandshakeFlags) -> Option<Self> {
        let buffer = buf.get_mut(..INITIATION_LEN)?;
        buffer.fill(0);
        buffer[super::TYPE] = TYPE_INITIATION;
        buffer[super::FLAGS] = flags.bits();
        Some(Initiation { buffer })
    }

    /// Sets the sender index.
    pub fn set_sender(&mut self, index: u32) {
        self.buffer[SENDER].copy_from_slice(&index.to_le_bytes());
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
