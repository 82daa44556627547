//! Just enough of Ethernet II (IEEE 802.3 clause 3.2.6) and of VLAN tags (IEEE 802.1Q
//! customer tags, 802.1ad service tags for QinQ) to find the IP packet inside a frame
//! from a TAP device.
//!
//! ```text
//!  0                 6                 12        14                  (18 ...)
//! +-----------------+-----------------+---------+------------------+----------
//! |  destination    |     source      |  type   | (TCI, next type) |  payload
//! +-----------------+-----------------+---------+------------------+----------
//! ```
//! A type of 0x8100 or 0x88a8 announces a 4-byte tag (2 bytes of TCI, then the next
//! type); the type after the last tag says what the payload is. The kernel walks tags the
//! same way (`eth_type_vlan()` and `__vlan_get_protocol()` in `include/linux/if_vlan.h`),
//! never past [`MAX_VLAN_TAGS`](crate::vnet::MAX_VLAN_TAGS) of them.
//!
//! This module only finds where the network header starts. It does not look at MAC
//! addresses (a TAP device may carry any, a bridge's or a VM's) and does not care about
//! the tag's priority or VLAN id: the segmenter copies the whole link-layer header into
//! every segment, and the coalescer only merges frames whose link-layer headers are
//! equal byte for byte.

use std::ops::Range;

use crate::vnet::packet::get16;
use crate::vnet::{Error, MAX_VLAN_TAGS};

/// Destination and source MAC addresses, and the first EtherType.
pub(crate) const HEADER_LEN: usize = 14;
/// The EtherType field of an untagged frame, or the first tag's TPID.
pub(crate) const ETHERTYPE: Range<usize> = 12..14;
/// A VLAN tag: TPID (the EtherType that announced it) is counted before it; the tag adds
/// the 2-byte TCI and the next EtherType.
pub(crate) const VLAN_TAG_LEN: usize = 4;

/// IPv4 (RFC 894).
pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
/// IPv6 (RFC 2464).
pub(crate) const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IEEE 802.1Q customer VLAN tag (`ETH_P_8021Q`).
pub(crate) const ETHERTYPE_VLAN: u16 = 0x8100;
/// IEEE 802.1ad service VLAN tag, the outer tag of QinQ (`ETH_P_8021AD`).
pub(crate) const ETHERTYPE_QINQ: u16 = 0x88a8;

/// Where a frame's network header starts and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkHeader {
    /// Length of the link-layer header, tags included: the offset of the network header.
    pub(crate) len: usize,
    /// The EtherType after the last tag.
    pub(crate) ethertype: u16,
}

impl LinkHeader {
    /// The IP version the EtherType announces, if it is IPv4 or IPv6.
    pub(crate) fn ip_version(&self) -> Option<u8> {
        match self.ethertype {
            ETHERTYPE_IPV4 => Some(4),
            ETHERTYPE_IPV6 => Some(6),
            _ => None,
        }
    }
}

/// Walks the link-layer header of `frame`. Fails if the frame ends inside it, or if it
/// carries more than [`MAX_VLAN_TAGS`] tags.
pub(crate) fn parse(frame: &[u8]) -> Result<LinkHeader, Error> {
    let truncated = |need| Error::Truncated {
        what: "the Ethernet header",
        need,
        have: frame.len(),
    };
    if frame.len() < HEADER_LEN {
        return Err(truncated(HEADER_LEN));
    }
    let mut len = HEADER_LEN;
    let mut ethertype = get16(frame, ETHERTYPE);
    let mut tags = 0;
    while ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        if tags == MAX_VLAN_TAGS {
            return Err(Error::TooManyVlanTags);
        }
        let next = len + VLAN_TAG_LEN;
        if frame.len() < next {
            return Err(truncated(next));
        }
        // The tag's last two bytes are the next EtherType.
        ethertype = get16(frame, next - 2..next);
        len = next;
        tags += 1;
    }
    Ok(LinkHeader { len, ethertype })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(types: &[u16]) -> Vec<u8> {
        let mut f = vec![0xaa; 12];
        for (i, t) in types.iter().enumerate() {
            if i > 0 {
                f.extend_from_slice(&[0x00, 0x0a]); // TCI: VLAN 10
            }
            f.extend_from_slice(&t.to_be_bytes());
        }
        f.extend_from_slice(&[0x45; 20]);
        f
    }

    #[test]
    fn untagged_tagged_and_qinq() {
        assert_eq!(
            parse(&frame(&[ETHERTYPE_IPV4])),
            Ok(LinkHeader {
                len: 14,
                ethertype: ETHERTYPE_IPV4
            })
        );
        assert_eq!(
            parse(&frame(&[ETHERTYPE_VLAN, ETHERTYPE_IPV6])),
            Ok(LinkHeader {
                len: 18,
                ethertype: ETHERTYPE_IPV6
            })
        );
        let qinq = parse(&frame(&[ETHERTYPE_QINQ, ETHERTYPE_VLAN, ETHERTYPE_IPV4])).unwrap();
        assert_eq!((qinq.len, qinq.ip_version()), (22, Some(4)));
        let arp = parse(&frame(&[0x0806])).unwrap();
        assert_eq!((arp.len, arp.ip_version()), (14, None));
    }

    #[test]
    fn truncated_and_too_deep() {
        assert_eq!(
            parse(&[0u8; 13]),
            Err(Error::Truncated {
                what: "the Ethernet header",
                need: 14,
                have: 13
            })
        );
        let f = frame(&[ETHERTYPE_VLAN, ETHERTYPE_IPV4]);
        assert_eq!(
            parse(&f[..16]),
            Err(Error::Truncated {
                what: "the Ethernet header",
                need: 18,
                have: 16
            })
        );
        let mut types = vec![ETHERTYPE_VLAN; MAX_VLAN_TAGS + 1];
        types.push(ETHERTYPE_IPV4);
        assert_eq!(parse(&frame(&types)), Err(Error::TooManyVlanTags));
        types.remove(0);
        assert_eq!(parse(&frame(&types)).unwrap().len, 14 + 4 * MAX_VLAN_TAGS);
    }
}
