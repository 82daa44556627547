//! Cookie reply (message type 3), 64 bytes. Whitepaper §5.4.7.
//!
//! ```text
//!  0       1       2       3       4                               8
//! +-------+-------+-------+-------+-------------------------------+
//! | 3     | 0     | 0     | 0     | receiver index (u32 LE)       |
//! +-------+-------+-------+-------+-------------------------------+
//! |  8..32   nonce (24, XChaCha20)                                |
//! |  32..64  encrypted cookie (16 + 16 tag)                       |
//! +---------------------------------------------------------------+
//! ```
//! ferrotun defines no flag for cookie replies: byte 1 must be zero too.

use std::ops::Range;

use super::{MessageKind, TYPE_COOKIE_REPLY, WireError, check_fixed, le_u32};

/// Total length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 64;
/// Receiver index field (the sender index of the message being answered).
pub const RECEIVER: Range<usize> = 4..8;
/// XChaCha20-Poly1305 nonce field.
pub const NONCE: Range<usize> = 8..32;
/// Encrypted cookie field.
pub const COOKIE: Range<usize> = 32..64;

/// A view of a cookie reply.
#[derive(Debug, Clone, Copy)]
pub struct CookieReply<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> CookieReply<T> {
    /// Validates type, exact length and that bytes 1..4 are zero.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        check_fixed(
            buffer.as_ref(),
            MessageKind::CookieReply,
            TYPE_COOKIE_REPLY,
            COOKIE_REPLY_LEN,
            0,
        )?;
        Ok(CookieReply { buffer })
    }

    fn bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The message copied into a buffer of its own (it was validated already).
    pub fn to_owned(&self) -> CookieReply<[u8; COOKIE_REPLY_LEN]> {
        CookieReply {
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

    /// The index of the session this reply is for.
    pub fn receiver(&self) -> u32 {
        le_u32(self.bytes(), RECEIVER.start)
    }
    /// The nonce.
    pub fn nonce(&self) -> &[u8; 24] {
        self.field(NONCE)
    }
    /// The encrypted cookie and its tag.
    pub fn encrypted_cookie(&self) -> &[u8; 32] {
        self.field(COOKIE)
    }
    /// The whole message.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes()
    }
}

impl<'a> CookieReply<&'a mut [u8]> {
    /// Takes the first 64 bytes of `buf` for writing and sets the header; `None` when
    /// `buf` is too short.
    pub fn emit(buf: &'a mut [u8]) -> Option<Self> {
        let buffer = buf.get_mut(..COOKIE_REPLY_LEN)?;
        buffer.fill(0);
        buffer[super::TYPE] = TYPE_COOKIE_REPLY;
        Some(CookieReply { buffer })
    }
    /// Sets the receiver index.
    pub fn set_receiver(&mut self, index: u32) {
        self.buffer[RECEIVER].copy_from_slice(&index.to_le_bytes());
    }
    /// A field for writing.
    pub fn field_mut(&mut self, r: Range<usize>) -> &mut [u8] {
        &mut self.buffer[r]
    }
}
