//! Just enough of IPv4 (RFC 791), IPv6 (RFC 8200), TCP (RFC 9293) and UDP (RFC 768) to
//! cut and join segments: field offsets and a few accessors. Callers check lengths before
//! using an offset; nothing here reads past a slice without a bounds check (an out-of-range
//! index would panic, so every caller validates the lengths first).

use std::ops::Range;

use super::checksum;

pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;

pub(crate) const IPV4_HEADER_MIN: usize = 20;
pub(crate) const IPV4_TOTAL_LEN: Range<usize> = 2..4;
pub(crate) const IPV4_ID: Range<usize> = 4..6;
/// Flags (reserved, DF, MF) and the fragment offset.
pub(crate) const IPV4_FRAG: Range<usize> = 6..8;
pub(crate) const IPV4_TTL: usize = 8;
pub(crate) const IPV4_PROTOCOL: usize = 9;
pub(crate) const IPV4_CHECKSUM: Range<usize> = 10..12;
pub(crate) const IPV4_SRC: Range<usize> = 12..16;
pub(crate) const IPV4_DST: Range<usize> = 16..20;
/// Don't Fragment, in the flags-and-offset field.
pub(crate) const IPV4_DF: u16 = 0x4000;
/// MF and the 13-bit fragment offset: non-zero on any fragment.
pub(crate) const IPV4_FRAG_MASK: u16 = 0x3fff;

pub(crate) const IPV6_HEADER_LEN: usize = 40;
pub(crate) const IPV6_PAYLOAD_LEN: Range<usize> = 4..6;
pub(crate) const IPV6_NEXT_HEADER: usize = 6;
pub(crate) const IPV6_HOP_LIMIT: usize = 7;
pub(crate) const IPV6_SRC: Range<usize> = 8..24;
pub(crate) const IPV6_DST: Range<usize> = 24..40;

pub(crate) const TCP_HEADER_MIN: usize = 20;
pub(crate) const TCP_HEADER_MAX: usize = 60;
pub(crate) const TCP_SEQ: Range<usize> = 4..8;
pub(crate) const TCP_ACK: Range<usize> = 8..12;
pub(crate) const TCP_DATA_OFFSET: usize = 12;
pub(crate) const TCP_FLAGS: usize = 13;
pub(crate) const TCP_WINDOW: Range<usize> = 14..16;
pub(crate) const TCP_CHECKSUM: Range<usize> = 16..18;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_PSH: u8 = 0x08;
pub(crate) const TCP_ACK_FLAG: u8 = 0x10;
pub(crate) const TCP_CWR: u8 = 0x80;
#[cfg(feature = "fuzzing")]
pub(crate) const TCP_URG: u8 = 0x20;
#[cfg(feature = "fuzzing")]
pub(crate) const TCP_URGENT: Range<usize> = 18..20;

pub(crate) const UDP_HEADER_LEN: usize = 8;
pub(crate) const UDP_LEN: Range<usize> = 4..6;
pub(crate) const UDP_CHECKSUM: Range<usize> = 6..8;

pub(crate) fn get16(b: &[u8], r: Range<usize>) -> u16 {
    let s = &b[r];
    u16::from_be_bytes([s[0], s[1]])
}

pub(crate) fn put16(b: &mut [u8], r: Range<usize>, v: u16) {
    b[r].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn get32(b: &[u8], r: Range<usize>) -> u32 {
    let s = &b[r];
    u32::from_be_bytes([s[0], s[1], s[2], s[3]])
}

pub(crate) fn put32(b: &mut [u8], r: Range<usize>, v: u32) {
    b[r].copy_from_slice(&v.to_be_bytes());
}

/// Shifts a range inside a packet by `by` bytes (to address a field of the transport
/// header that starts at `by`).
pub(crate) fn at(by: usize, r: Range<usize>) -> Range<usize> {
    r.start + by..r.end + by
}

/// Recomputes the IPv4 header checksum of `header` (exactly the header, options
/// included).
pub(crate) fn set_ipv4_checksum(header: &mut [u8]) {
    put16(header, IPV4_CHECKSUM, 0);
    let c = checksum::finish(checksum::sum(header));
    put16(header, IPV4_CHECKSUM, c);
}

/// The pseudo-header sum of `packet` (an IPv4 or IPv6 packet, at least its fixed header)
/// for a transport segment of `len` bytes.
pub(crate) fn pseudo_header(packet: &[u8], v6: bool, protocol: u8, len: usize) -> u32 {
    if v6 {
        checksum::pseudo_header(&packet[IPV6_SRC], &packet[IPV6_DST], protocol, len)
    } else {
        checksum::pseudo_header(&packet[IPV4_SRC], &packet[IPV4_DST], protocol, len)
    }
}
