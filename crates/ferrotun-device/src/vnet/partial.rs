//! Partial checksums: a TCP or UDP packet whose checksum field holds only the sum of its
//! pseudo-header, folded and not complemented, as the kernel leaves it for
//! `CHECKSUM_PARTIAL` and as a virtio-net header with `NEEDS_CSUM` describes it. Summing
//! the transport header and payload over that field, and complementing, completes it.
//!
//! A [`Reader`](crate::vnet::Reader) can leave the packets it cuts from a super-segment
//! with partial checksums ([`Reader::leave_checksums_partial`]), which saves summing every
//! byte; whoever receives such a packet completes the checksum ([`complete_checksum`]) or
//! hands the packet to a kernel that will (a [`Writer`](crate::vnet::Writer) given it as
//! partial writes it with `NEEDS_CSUM`).
//!
//! Only packets whose transport header is easy to find may be partial: IPv4 that is not a
//! fragment, or IPv6 without extension headers, carrying TCP or UDP, the transport
//! header whole ([`partial_checksum`]).
//!
//! [`Reader::leave_checksums_partial`]: crate::vnet::Reader::leave_checksums_partial

use super::packet::*;
use super::{Layer, checksum};

/// Where a packet's transport checksum lies: `start` is the offset of the transport
/// header from the first byte of the packet (of the frame, on TAP), `offset` that of the
/// checksum field within it (the virtio-net header's `csum_start` and `csum_offset`), and
/// `end` where the IP packet ends by its own header, which is where the sum ends (bytes
/// after it, an Ethernet frame's padding, are not summed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialChecksum {
    /// Offset of the transport header.
    pub start: usize,
    /// Offset of the checksum field from `start`: 16 for TCP, 6 for UDP.
    pub offset: usize,
    /// Offset of the end of the IP packet.
    pub end: usize,
}

/// Where the transport checksum of `packet` (an IP packet, or on [`Layer::Ethernet`] an
/// Ethernet frame) lies, if the packet may carry a partial checksum: IPv4 that is not a
/// fragment, or IPv6 without extension headers, carrying TCP or UDP whose header lies
/// whole in the packet, and the packet whole in `packet`. `None` for any other packet.
pub fn partial_checksum(packet: &[u8], layer: Layer) -> Option<PartialChecksum> {
    let l3 = layer.ip_start(packet)?;
    let ip = &packet[l3..];
    let (l4, protocol, len) = match ip.first()? >> 4 {
        4 if ip.len() >= IPV4_HEADER_MIN && get16(ip, IPV4_FRAG) & IPV4_FRAG_MASK == 0 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let len = usize::from(get16(ip, IPV4_TOTAL_LEN));
            (ihl >= IPV4_HEADER_MIN).then_some((ihl, ip[IPV4_PROTOCOL], len))?
        }
        6 if ip.len() >= IPV6_HEADER_LEN => {
            let len = IPV6_HEADER_LEN + usize::from(get16(ip, IPV6_PAYLOAD_LEN));
            (IPV6_HEADER_LEN, ip[IPV6_NEXT_HEADER], len)
        }
        _ => return None,
    };
    let (header, offset) = match protocol {
        PROTO_TCP => (TCP_HEADER_MIN, TCP_CHECKSUM.start),
        PROTO_UDP => (UDP_HEADER_LEN, UDP_CHECKSUM.start),
        _ => return None,
    };
    (l4 + header <= len && len <= ip.len()).then_some(PartialChecksum {
        start: l3 + l4,
        offset,
        end: l3 + len,
    })
}

/// Completes the partial checksum of `packet` (see [`partial_checksum`] for which packets
/// may have one): sums the transport header and payload over the pseudo-header sum in the
/// checksum field and stores the complement. A result of 0 is stored as 0xffff, which
/// means the same in one's complement and is what UDP must send (RFC 768;
/// `skb_checksum_help()` does the same for both). Returns false, changing nothing, for a
/// packet that cannot have a partial checksum.
pub fn complete_checksum(packet: &mut [u8], layer: Layer) -> bool {
    let Some(p) = partial_checksum(packet, layer) else {
        return false;
    };
    let c = checksum::finish(checksum::sum(&packet[p.start..p.end]));
    let c = if c == 0 { 0xffff } else { c };
    put16(packet, at(p.start + p.offset, 0..2), c);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts the pseudo-header sum of the IP packet `packet` for a `len`-byte transport
    /// segment into the field at `field`: what a partial checksum holds.
    fn set_partial(packet: &mut [u8], v6: bool, protocol: u8, len: usize, field: usize) {
        let sum = pseudo_header(packet, v6, protocol, len);
        put16(packet, at(field, 0..2), sum as u16);
    }

    /// A v4 or v6 packet with `protocol` and a transport header of `header` bytes, then
    /// `payload`, its checksum complete.
    fn packet(v6: bool, protocol: u8, payload: &[u8]) -> Vec<u8> {
        let header = if protocol == PROTO_TCP { 20 } else { 8 };
        let l4 = if v6 { 40 } else { 20 };
        let mut p = vec![0u8; l4 + header + payload.len()];
        if v6 {
            p[0] = 0x60;
            put16(&mut p, IPV6_PAYLOAD_LEN, (header + payload.len()) as u16);
            p[IPV6_NEXT_HEADER] = protocol;
            p[8..40]
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = i as u8 * 7);
        } else {
            p[0] = 0x45;
            let total = p.len() as u16;
            put16(&mut p, IPV4_TOTAL_LEN, total);
            p[IPV4_PROTOCOL] = protocol;
            p[12..20].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        }
        p[l4..l4 + 4].copy_from_slice(&[0x12, 0x34, 0x00, 0x50]);
        if protocol == PROTO_TCP {
            p[l4 + TCP_DATA_OFFSET] = 0x50;
        } else {
            put16(&mut p, at(l4, UDP_LEN), (header + payload.len()) as u16);
        }
        p[l4 + header..].copy_from_slice(payload);
        let field = l4 + if protocol == PROTO_TCP { 16 } else { 6 };
        let len = p.len() - l4;
        let s = checksum::add(
            pseudo_header(&p, v6, protocol, len),
            checksum::sum(&p[l4..]),
        );
        let c = checksum::finish(s);
        put16(&mut p, at(field, 0..2), if c == 0 { 0xffff } else { c });
        p
    }

    #[test]
    fn a_partial_checksum_completes_to_the_full_one() {
        for v6 in [false, true] {
            for protocol in [PROTO_TCP, PROTO_UDP] {
                for len in [0, 1, 2, 3, 100, 1379] {
                    let payload: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
                    let full = packet(v6, protocol, &payload);
                    let p = partial_checksum(&full, Layer::Ip).expect("TCP or UDP");
                    assert_eq!(p.start, if v6 { 40 } else { 20 });
                    assert_eq!(p.offset, if protocol == PROTO_TCP { 16 } else { 6 });
                    let mut partial = full.clone();
                    let field = p.start + p.offset;
                    set_partial(&mut partial, v6, protocol, full.len() - p.start, field);
                    assert_ne!(partial, full);
                    let left_partial = partial.clone();
                    assert!(complete_checksum(&mut partial, Layer::Ip));
                    assert_eq!(partial, full, "v6 {v6} protocol {protocol} len {len}");
                    // Behind an Ethernet header with a VLAN tag, counted from the frame.
                    let mut frame = vec![0u8; 12];
                    frame.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
                    frame.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
                    frame.extend_from_slice(&left_partial);
                    let at_frame = partial_checksum(&frame, Layer::Ethernet).unwrap();
                    assert_eq!(at_frame.start, 18 + p.start);
                    // Padding after the IP packet (a short Ethernet frame's) is not
                    // summed.
                    frame.extend_from_slice(&[0xee; 7]);
                    assert!(complete_checksum(&mut frame, Layer::Ethernet));
                    assert_eq!(&frame[18..18 + full.len()], &full[..]);
                }
            }
        }
    }

    #[test]
    fn a_udp_sum_of_zero_is_sent_as_all_ones() {
        // Find a payload whose full UDP checksum computes to 0.
        let mut payload = [0u8; 2];
        let full = (0..=u16::MAX)
            .find_map(|x| {
                payload = x.to_be_bytes();
                let mut p = packet(false, PROTO_UDP, &payload);
                put16(&mut p, at(20, UDP_CHECKSUM), 0);
                let s = checksum::add(
                    pseudo_header(&p, false, PROTO_UDP, p.len() - 20),
                    checksum::sum(&p[20..]),
                );
                (checksum::finish(s) == 0).then_some(p)
            })
            .expect("some payload sums to zero");
        let mut partial = full.clone();
        set_partial(&mut partial, false, PROTO_UDP, full.len() - 20, 26);
        assert!(complete_checksum(&mut partial, Layer::Ip));
        assert_eq!(get16(&partial, at(20, UDP_CHECKSUM)), 0xffff);
    }

    #[test]
    fn packets_without_an_easy_transport_header_cannot_be_partial() {
        let tcp = packet(false, PROTO_TCP, b"data");
        let mut fragment = tcp.clone();
        put16(&mut fragment, IPV4_FRAG, 0x2000); // MF
        let mut icmp = tcp.clone();
        icmp[IPV4_PROTOCOL] = 1;
        let mut v6_ext = packet(true, PROTO_TCP, b"data");
        v6_ext[IPV6_NEXT_HEADER] = 0; // hop-by-hop options
        let cut = &tcp[..20 + 19];
        let mut longer = tcp.clone();
        put16(&mut longer, IPV4_TOTAL_LEN, tcp.len() as u16 + 1);
        let mut short_ihl = tcp.clone();
        short_ihl[0] = 0x44;
        for (what, p) in [
            ("fragment", &fragment[..]),
            ("ICMP", &icmp),
            ("IPv6 extension header", &v6_ext),
            ("cut TCP header", cut),
            ("IP length beyond the buffer", &longer),
            ("IHL below 5", &short_ihl),
            ("empty", &[]),
            ("not IP", &[0x35; 60]),
        ] {
            assert_eq!(partial_checksum(p, Layer::Ip), None, "{what}");
            let mut copy = p.to_vec();
            assert!(!complete_checksum(&mut copy, Layer::Ip), "{what}");
            assert_eq!(copy, p, "{what}: unchanged");
        }
        // An ARP frame on TAP.
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(partial_checksum(&arp, Layer::Ethernet), None);
    }
}
