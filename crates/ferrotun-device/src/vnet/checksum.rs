//! The Internet checksum (RFC 1071) and the TCP/UDP pseudo-headers (RFC 9293 §3.1,
//! RFC 768, RFC 8200 §8.1).
//!
//! Sums are kept as `u32` values below `0x1_0000` ("folded" but not complemented), so
//! partial sums of separate ranges combine with [`add`]. The bulk sum reads the data as
//! native-endian 32-bit words into a 64-bit accumulator, which the compiler vectorises,
//! and swaps bytes once at the end: one's-complement sums do not depend on byte order
//! (RFC 1071 §2(B)).

/// The folded one's-complement sum of `data` taken as big-endian 16-bit words, an odd
/// last byte padded with zero.
pub(crate) fn sum(data: &[u8]) -> u32 {
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_ne_bytes(tail));
    // Folded in the host's byte order; turned into network order by one swap (a no-op on
    // big-endian hosts).
    u32::from(u16::from_be(fold64(acc)))
}

fn fold64(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// One's-complement addition of two folded sums.
pub(crate) fn add(a: u32, b: u32) -> u32 {
    let s = a + b;
    (s & 0xffff) + (s >> 16)
}

/// The checksum field value for a range whose folded sum (checksum field zeroed, or
/// holding the pseudo-header sum) is `s`.
pub(crate) fn finish(s: u32) -> u16 {
    !(fold64(u64::from(s)))
}

/// The folded sum of a TCP/UDP pseudo-header: source and destination address (4 or 16
/// bytes each), protocol, and the transport length (header plus payload).
pub(crate) fn pseudo_header(src: &[u8], dst: &[u8], protocol: u8, len: usize) -> u32 {
    let len = len as u64;
    let s = u64::from(sum(src))
        + u64::from(sum(dst))
        + u64::from(protocol)
        + (len & 0xffff)
        + (len >> 16);
    u32::from(fold64(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(data: &[u8]) -> u32 {
        let mut s: u64 = 0;
        for (i, b) in data.iter().enumerate() {
            s += if i % 2 == 0 {
                u64::from(*b) << 8
            } else {
                u64::from(*b)
            };
        }
        u32::from(fold64(s))
    }

    #[test]
    fn matches_a_byte_at_a_time_sum() {
        let data: Vec<u8> = (0..4099u32).map(|i| (i * 7919 % 251) as u8).collect();
        for len in [0, 1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 65, 1500, 4099] {
            for start in [0, 1, 2, 3] {
                let d = &data[start..len.max(start)];
                assert_eq!(sum(d), naive(d), "len {len} start {start}");
            }
        }
        assert_eq!(sum(&[0xff; 65535]), naive(&[0xff; 65535]));
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        assert_eq!(
            sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
        assert_eq!(finish(0xddf2), 0x220d);
        assert_eq!(add(0xffff, 0x0001), 0x0001);
    }
}
