//! Payload compression: LZ4 block format, adaptive, bounded by the MTU.
//!
//! Responsible for compressing a payload only when that makes it strictly smaller, for
//! backing off after a run of payloads that did not shrink (compressing an incompressible
//! 1420-byte packet still costs ~0.5 µs: shared/research/crates.md §2.5), and for
//! decompressing into a caller buffer whose length (the MTU, or MTU + 14 in TAP mode) is
//! the hard limit: an LZ4 block that claims more is an error, never an allocation. No
//! allocation per packet: the LZ4 hash table is allocated once per [`Compressor`] and
//! reused (`lz4_flex::block::compress_into_with_table`), decompression writes only into
//! the caller's buffer. Not responsible for the flag that says a payload is compressed
//! (see [`crate::wire::PayloadFlags`]) nor for deciding whether a peer may compress.
//!
//! The compressed payload is one raw LZ4 block with no length prefix: the decompressed
//! length is whatever the block decodes to.

use lz4_flex::block::{
    CompressTable, compress_into_with_table, decompress_into, get_maximum_output_size,
};
use thiserror::Error;

/// After this many payloads in a row that did not shrink, stop trying for a while.
/// Sixteen consecutive failures are strong evidence of encrypted or already-compressed
/// traffic (TLS, media), while one compressible packet resets the count.
pub const BACKOFF_AFTER_FAILURES: u32 = 16;
/// How many payloads to send uncompressed without trying, once backed off. 256 payloads
/// is ~0.3 ms of a 10 Gbit/s stream of 1420-byte packets: trying costs 16/(16+256) ≈ 6 %
/// of the work an always-on compressor would waste, and a switch to compressible traffic is
/// noticed within 272 packets.
pub const BACKOFF_PACKETS: u32 = 256;

/// Inputs this long would make lz4_flex replace the 16-bit table by a 32-bit one.
const MAX_INPUT: usize = u16::MAX as usize;

/// The largest output LZ4 may need for `len` input bytes; `compress` needs a destination at
/// least this long.
pub const fn compress_bound(len: usize) -> usize {
    get_maximum_output_size(len)
}

/// Why a compressed payload could not be decompressed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum CompressError {
    /// The block decodes to more than the limit (the destination's length, the MTU).
    #[error("compressed payload expands beyond the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The block is not valid LZ4.
    #[error("malformed LZ4 block: {reason}")]
    Malformed {
        /// What lz4_flex found wrong.
        reason: &'static str,
    },
    /// A compressed payload must decode to at least one byte.
    #[error("compressed payload is empty")]
    Empty,
}

/// Decompresses the LZ4 block `src` into `dst`; `dst.len()` is the limit (pass the MTU).
/// Returns the decompressed length.
pub fn decompress(src: &[u8], dst: &mut [u8]) -> Result<usize, CompressError> {
    if src.is_empty() {
        return Err(CompressError::Empty);
    }
    match decompress_into(src, dst) {
        Ok(0) => Err(CompressError::Empty),
        Ok(n) => Ok(n),
        Err(lz4_flex::block::DecompressError::OutputTooSmall { .. }) => {
            Err(CompressError::TooLarge { limit: dst.len() })
        }
        Err(lz4_flex::block::DecompressError::LiteralOutOfBounds) => {
            Err(CompressError::Malformed {
                reason: "literal out of bounds",
            })
        }
        Err(lz4_flex::block::DecompressError::ExpectedAnotherByte) => {
            Err(CompressError::Malformed {
                reason: "truncated block",
            })
        }
        Err(lz4_flex::block::DecompressError::OffsetOutOfBounds) => Err(CompressError::Malformed {
            reason: "match offset out of bounds",
        }),
        Err(_) => Err(CompressError::Malformed {
            reason: "invalid block",
        }),
    }
}

/// An adaptive LZ4 compressor for one direction of one peer.
pub struct Compressor {
    table: CompressTable,
    failures: u32,
    skip: u32,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("failures", &self.failures)
            .field("skip", &self.skip)
            .finish_non_exhaustive()
    }
}

impl Default for Compressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Compressor {
    /// A compressor (allocates its 8 KiB hash table of 16-bit positions once).
    pub fn new() -> Self {
        Compressor {
            table: CompressTable::small(),
            failures: 0,
            skip: 0,
        }
    }

    /// Compresses `src` into `dst` if that makes it strictly smaller and returns the
    /// compressed length; `None` means "send it uncompressed". Also `None`, without trying
    /// or counting, while backed off, when `dst` is shorter than
    /// [`compress_bound`]`(src.len())`, and for inputs of 65535 bytes or more (lz4_flex
    /// would replace the 16-bit table by a 32-bit one, which allocates; no tunnel MTU
    /// reaches that).
    pub fn compress(&mut self, src: &[u8], dst: &mut [u8]) -> Option<usize> {
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        if src.is_empty() || src.len() >= MAX_INPUT || dst.len() < compress_bound(src.len()) {
            return None;
        }
        match self.attempt(src, dst) {
            Some(n) => {
                self.failures = 0;
                Some(n)
            }
            None => {
                self.failures += 1;
                if self.failures >= BACKOFF_AFTER_FAILURES {
                    self.failures = 0;
                    self.skip = BACKOFF_PACKETS;
                }
                None
            }
        }
    }

    /// One LZ4 attempt without the adaptive back-off (for benchmarks and tests): the
    /// compressed length if strictly smaller. `None` also when `src` is 65535 bytes or
    /// longer or `dst` is shorter than [`compress_bound`]`(src.len())`.
    #[doc(hidden)]
    pub fn attempt(&mut self, src: &[u8], dst: &mut [u8]) -> Option<usize> {
        if src.len() >= MAX_INPUT {
            return None;
        }
        match compress_into_with_table(src, dst, &mut self.table) {
            Ok(n) if n < src.len() => Some(n),
            _ => None,
        }
    }

    /// Whether the compressor is currently backed off (not trying).
    pub fn is_backed_off(&self) -> bool {
        self.skip > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::{Entropy, SeededEntropy};
    use proptest::prelude::*;

    fn text(len: usize) -> Vec<u8> {
        b"<html><body><p>Hello, ferrotun! The quick brown fox jumps over the lazy dog.</p>\n"
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    }

    #[test]
    fn compresses_text_and_round_trips() {
        let mut c = Compressor::new();
        let src = text(1420);
        let mut dst = vec![0u8; compress_bound(1420)];
        let n = c.compress(&src, &mut dst).unwrap();
        assert!(n < 1420);
        let mut out = vec![0u8; 1420];
        assert_eq!(decompress(&dst[..n], &mut out), Ok(1420));
        assert_eq!(out, src);
    }

    #[test]
    fn incompressible_returns_none_and_backs_off_then_resumes() {
        let mut c = Compressor::new();
        let mut rng = SeededEntropy::new(3);
        let mut noise = vec![0u8; 1420];
        rng.fill(&mut noise).unwrap();
        let mut dst = vec![0u8; compress_bound(1420)];
        for i in 0..BACKOFF_AFTER_FAILURES {
            assert!(!c.is_backed_off(), "backed off too early at {i}");
            assert_eq!(c.compress(&noise, &mut dst), None);
        }
        assert!(c.is_backed_off());
        // While backed off even compressible text is sent raw, without trying.
        let t = text(1420);
        for _ in 0..BACKOFF_PACKETS {
            assert_eq!(c.compress(&t, &mut dst), None);
        }
        assert!(!c.is_backed_off());
        assert!(c.compress(&t, &mut dst).is_some());
        // A success resets the failure run.
        for _ in 0..BACKOFF_AFTER_FAILURES - 1 {
            assert_eq!(c.compress(&noise, &mut dst), None);
        }
        assert!(c.compress(&t, &mut dst).is_some());
        assert_eq!(c.compress(&noise, &mut dst), None);
        assert!(!c.is_backed_off());
    }

    #[test]
    fn short_destination_is_refused_without_counting() {
        let mut c = Compressor::new();
        let t = text(100);
        for _ in 0..100 {
            assert_eq!(c.compress(&t, &mut [0u8; 50]), None);
        }
        assert!(!c.is_backed_off());
        assert_eq!(c.compress(&[], &mut [0u8; 50]), None);
        // 65535 bytes would need the 32-bit table (an allocation): not attempted.
        let big = vec![0u8; 65535];
        let mut dst = vec![0u8; compress_bound(65535)];
        assert_eq!(c.compress(&big, &mut dst), None);
        assert!(!c.is_backed_off());
    }

    #[test]
    fn decompression_is_bounded_by_the_destination() {
        // A block that expands 64 KiB of zeros: must fail against a 1420-byte limit.
        let zeros = vec![0u8; 65534];
        let mut c = Compressor::new();
        let mut dst = vec![0u8; compress_bound(zeros.len())];
        let n = c.compress(&zeros, &mut dst).unwrap();
        assert!(n < 400, "{n}");
        let mut out = vec![0u8; 1420];
        assert_eq!(
            decompress(&dst[..n], &mut out),
            Err(CompressError::TooLarge { limit: 1420 })
        );
        assert_eq!(decompress(&[], &mut out), Err(CompressError::Empty));
        assert!(matches!(
            decompress(&[0xf0], &mut out),
            Err(CompressError::Malformed { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(0u8..4, 1..3000)) {
            let mut c = Compressor::new();
            let mut dst = vec![0u8; compress_bound(data.len())];
            if let Some(n) = c.compress(&data, &mut dst) {
                prop_assert!(n < data.len());
                let mut out = vec![0u8; data.len()];
                prop_assert_eq!(decompress(&dst[..n], &mut out), Ok(data.len()));
                prop_assert_eq!(out, data);
            }
        }

        #[test]
        fn decompress_never_panics(src in proptest::collection::vec(any::<u8>(), 0..600), limit in 0usize..2000) {
            let mut out = vec![0u8; limit];
            if let Ok(n) = decompress(&src, &mut out) {
                prop_assert!(n <= limit);
            }
        }
    }
}
