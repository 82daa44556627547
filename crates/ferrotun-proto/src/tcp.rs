//! TCP stream codec: 2-byte big-endian length prefix per message.
//!
//! Responsible for framing messages on a TCP connection (each message preceded by its
//! length as a big-endian `u16`: docs/protocol.md, "TCP transport") and for splitting a
//! byte stream back into messages from reads of any size, without allocating per frame: a
//! [`StreamDecoder`] owns one buffer, allocated once, that the caller reads the socket
//! into and that frames are returned from (mutable, so they can be opened in place). A
//! zero length or a length above the configured maximum (MTU + overhead) is a
//! [`FrameError`] that ends the connection; the decoder stays failed. Not responsible for
//! the socket, timeouts or connection limits (the engine).

use std::ops::Range;

use thiserror::Error;

/// Length of the prefix.
pub const PREFIX_LEN: usize = 2;

/// Why a TCP stream is broken; the connection must be closed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A frame announced a length of zero.
    #[error("zero-length frame on the TCP stream")]
    ZeroLength,
    /// A frame announced more than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLong {
        /// The announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A message to encode is empty, longer than 65535 bytes, or the buffer lacks room.
    #[error("cannot frame a message of {len} bytes in a buffer of {buf} bytes")]
    CannotEncode {
        /// The message length.
        len: usize,
        /// The buffer length.
        buf: usize,
    },
}

/// Writes the prefix for a message of `msg_len` bytes that the caller placed (or sealed)
/// at `buf[2..2 + msg_len]`; returns the frame length `2 + msg_len`.
pub fn encode_prefix(buf: &mut [u8], msg_len: usize) -> Result<usize, FrameError> {
    let frame = PREFIX_LEN + msg_len;
    let len16 = u16::try_from(msg_len).map_err(|_| FrameError::CannotEncode {
        len: msg_len,
        buf: buf.len(),
    })?;
    if msg_len == 0 || buf.len() < frame {
        return Err(FrameError::CannotEncode {
            len: msg_len,
            buf: buf.len(),
        });
    }
    buf[..PREFIX_LEN].copy_from_slice(&len16.to_be_bytes());
    Ok(frame)
}

/// An incremental decoder of length-prefixed frames.
pub struct StreamDecoder {
    buf: Box<[u8]>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    max_frame: usize,
    failed: Option<FrameError>,
}

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("buffered", &(self.end - self.start))
            .field("max_frame", &self.max_frame)
            .field("failed", &self.failed)
            .finish()
    }
}

impl StreamDecoder {
    /// A decoder accepting frames of 1..=`max_frame` bytes (clamped to 65535). Allocates
    /// its buffer (room for two maximal frames) once.
    pub fn new(max_frame: usize) -> Self {
        let max_frame = max_frame.clamp(1, usize::from(u16::MAX));
        StreamDecoder {
            buf: vec![0u8; 2 * (PREFIX_LEN + max_frame)].into_boxed_slice(),
            start: 0,
            end: 0,
            max_frame,
            failed: None,
        }
    }

    /// A decoder whose buffer holds `capacity` bytes (at least room for two maximal
    /// frames), so that one read from the socket can bring many frames: a bulk transfer
    /// then costs one system call per buffer, not per two frames.
    pub fn with_capacity(max_frame: usize, capacity: usize) -> Self {
        let mut d = Self::new(max_frame);
        if capacity > d.buf.len() {
            d.buf = vec![0u8; capacity].into_boxed_slice();
        }
        d
    }

    /// The longest frame accepted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Free space to read the socket into (never empty while the decoder is healthy: a
    /// partial frame is moved to the front first). Then call [`commit`](Self::commit).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < PREFIX_LEN + self.max_frame {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written into [`spare`](Self::spare).
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Copies as much of `bytes` as fits and returns how many were taken (for callers that
    /// already hold the bytes elsewhere; call [`next_frame`](Self::next_frame) and push the
    /// rest again).
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let spare = self.spare();
        let n = spare.len().min(bytes.len());
        spare[..n].copy_from_slice(&bytes[..n]);
        self.commit(n);
        n
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the error that
    /// ends the connection (returned again on every later call).
    pub fn next_frame(&mut self) -> Result<Option<&mut [u8]>, FrameError> {
        match self.next_range()? {
            Some(r) => Ok(Some(&mut self.buf[r])),
            None => Ok(None),
        }
    }

    /// Like [`next_frame`](Self::next_frame), but returns where the frame lies in
    /// [`buffer_mut`](Self::buffer_mut), so that a caller can take several frames and then
    /// work on all of them in place. The ranges stay valid until the next
    /// [`spare`](Self::spare) or [`push`](Self::push), which may move unconsumed bytes.
    pub fn next_frame_range(&mut self) -> Result<Option<Range<usize>>, FrameError> {
        self.next_range()
    }

    /// The decoder's buffer, in which [`next_frame_range`](Self::next_frame_range) points.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    fn next_range(&mut self) -> Result<Option<Range<usize>>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let avail = self.end - self.start;
        if avail < PREFIX_LEN {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([
            self.buf[self.start],
            self.buf[self.start + 1],
        ]));
        let err = if len == 0 {
            Some(FrameError::ZeroLength)
        } else if len > self.max_frame {
            Some(FrameError::TooLong {
                len,
                max: self.max_frame,
            })
        } else {
            None
        };
        if let Some(e) = err {
            self.failed = Some(e);
            return Err(e);
        }
        if avail < PREFIX_LEN + len {
            return Ok(None);
        }
        let body = self.start + PREFIX_LEN..self.start + PREFIX_LEN + len;
        self.start = body.end;
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 2 + msg.len()];
        b[2..].copy_from_slice(msg);
        let n = encode_prefix(&mut b, msg.len()).unwrap();
        assert_eq!(n, b.len());
        b
    }

    #[test]
    fn ranges_from_a_large_buffer_match_the_frames() {
        let msgs: Vec<Vec<u8>> = (1..200u8).map(|i| vec![i; usize::from(i) * 3]).collect();
        let stream: Vec<u8> = msgs.iter().flat_map(|m| frame(m)).collect();
        let mut d = StreamDecoder::with_capacity(600, 64 * 1024);
        assert!(d.spare().len() >= 64 * 1024 - 1);
        let mut fed = 0;
        let mut got = Vec::new();
        while fed < stream.len() {
            fed += d.push(&stream[fed..]);
            let mut ranges = Vec::new();
            while let Some(r) = d.next_frame_range().unwrap() {
                ranges.push(r);
            }
            let buf = d.buffer_mut();
            for r in ranges {
                got.push(buf[r].to_vec());
            }
        }
        assert_eq!(got, msgs);
        // A small capacity still leaves room for two maximal frames.
        let small = StreamDecoder::with_capacity(600, 10);
        assert_eq!(small.buf.len(), 2 * (PREFIX_LEN + 600));
    }

    #[test]
    fn byte_by_byte() {
        let mut d = StreamDecoder::new(100);
        let stream: Vec<u8> = [frame(b"hello"), frame(b"w"), frame(&[9; 100])].concat();
        let mut got = Vec::new();
        for b in &stream {
            assert_eq!(d.push(std::slice::from_ref(b)), 1);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f.to_vec());
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), b"w".to_vec(), vec![9; 100]]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn errors_end_the_stream() {
        let mut d = StreamDecoder::new(100);
        d.push(&[0, 0, 1]);
        assert_eq!(d.next_frame().unwrap_err(), FrameError::ZeroLength);
        assert_eq!(d.next_frame().unwrap_err(), FrameError::ZeroLength);
        let mut d = StreamDecoder::new(100);
        d.push(&[0, 101]);
        assert_eq!(
            d.next_frame().unwrap_err(),
            FrameError::TooLong { len: 101, max: 100 }
        );
        let mut d = StreamDecoder::new(100);
        d.push(&[0, 100]);
        assert_eq!(d.next_frame().unwrap(), None);
    }

    #[test]
    fn encode_errors() {
        assert!(encode_prefix(&mut [0u8; 10], 0).is_err());
        assert!(encode_prefix(&mut [0u8; 10], 9).is_err());
        assert!(encode_prefix(&mut vec![0u8; 70000], 65536).is_err());
        assert_eq!(encode_prefix(&mut vec![0u8; 70000], 65535), Ok(65537));
    }

    #[test]
    fn read_into_spare_and_open_in_place() {
        let mut d = StreamDecoder::new(64);
        let stream: Vec<u8> = (0..50).flat_map(|i| frame(&[i as u8; 40])).collect();
        let mut pos = 0;
        let mut n = 0;
        while pos < stream.len() {
            let spare = d.spare();
            assert!(!spare.is_empty());
            let k = spare.len().min(37).min(stream.len() - pos);
            spare[..k].copy_from_slice(&stream[pos..pos + k]);
            d.commit(k);
            pos += k;
            while let Some(f) = d.next_frame().unwrap() {
                assert_eq!(f, &[n as u8; 40][..]);
                f[0] ^= 1; // frames are mutable in place
                n += 1;
            }
        }
        assert_eq!(n, 50);
    }

    proptest! {
        /// Any split of a valid stream gives back the same frames.
        #[test]
        fn any_split(msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..20),
                     cuts in proptest::collection::vec(1usize..700, 1..50)) {
            let stream: Vec<u8> = msgs.iter().flat_map(|m| frame(m)).collect();
            let mut d = StreamDecoder::new(300);
            let mut got = Vec::new();
            let mut pos = 0;
            let mut ci = 0;
            while pos < stream.len() {
                let k = cuts[ci % cuts.len()].min(stream.len() - pos);
                ci += 1;
                let mut off = 0;
                while off < k {
                    off += d.push(&stream[pos + off..pos + k]);
                    while let Some(f) = d.next_frame().unwrap() {
                        got.push(f.to_vec());
                    }
                }
                pos += k;
            }
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000), max in 0usize..70000) {
            let mut d = StreamDecoder::new(max);
            let mut off = 0;
            while off < bytes.len() {
                let k = d.push(&bytes[off..]);
                off += k;
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => prop_assert!(!f.is_empty() && f.len() <= d.max_frame.max(1)),
                        Ok(None) => break,
                        Err(_) => return Ok(()),
                    }
                }
                prop_assert!(k > 0 || off == bytes.len());
            }
        }
    }
}
