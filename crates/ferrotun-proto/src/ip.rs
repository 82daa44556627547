//! IP packet length recovery.
//!
//! Responsible for telling the true length of an IP packet that arrived zero-padded inside
//! a data message (uncompressed IP payloads are padded to a multiple of 16: whitepaper
//! §5.4.6), from the IPv4 total length (RFC 791 §3.1) or the IPv6 payload length plus the
//! 40-byte fixed header (RFC 8200 §3). Not responsible for validating the rest of the IP
//! header or for routing (the engine checks the source against the peer's allowed IPs).

/// The length of the IPv4 or IPv6 packet at the start of `plaintext`, or `None` if the
/// bytes do not start with an IP header whose packet fits in `plaintext`.
pub fn ip_packet_len(plaintext: &[u8]) -> Option<usize> {
    let first = *plaintext.first()?;
    match first >> 4 {
        4 => {
            // Total length: bytes 2..4 big endian; at least the 20-byte minimum header.
            let total = usize::from(u16::from_be_bytes([*plaintext.get(2)?, *plaintext.get(3)?]));
            let ihl = usize::from(first & 0x0f) * 4;
            (total >= 20 && ihl >= 20 && ihl <= total && total <= plaintext.len()).then_some(total)
        }
        6 => {
            // Payload length: bytes 4..6 big endian, after the 40-byte fixed header.
            let payload = usize::from(u16::from_be_bytes([*plaintext.get(4)?, *plaintext.get(5)?]));
            let total = 40 + payload;
            (plaintext.len() >= 40 && total <= plaintext.len()).then_some(total)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn v4_and_v6() {
        let mut v4 = [0u8; 48];
        v4[0] = 0x45;
        v4[2..4].copy_from_slice(&45u16.to_be_bytes());
        assert_eq!(ip_packet_len(&v4), Some(45));
        v4[2..4].copy_from_slice(&49u16.to_be_bytes());
        assert_eq!(ip_packet_len(&v4), None);
        v4[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(ip_packet_len(&v4), None);
        v4[0] = 0x4f; // IHL 60 > total 19
        assert_eq!(ip_packet_len(&v4), None);

        let mut v6 = [0u8; 64];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&8u16.to_be_bytes());
        assert_eq!(ip_packet_len(&v6), Some(48));
        v6[4..6].copy_from_slice(&25u16.to_be_bytes());
        assert_eq!(ip_packet_len(&v6), None);
        assert_eq!(ip_packet_len(&v6[..39]), None);

        assert_eq!(ip_packet_len(&[]), None);
        assert_eq!(ip_packet_len(&[0x45]), None);
        assert_eq!(ip_packet_len(&[0x55; 40]), None);
    }

    proptest! {
        #[test]
        fn never_panics_and_fits(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Some(n) = ip_packet_len(&bytes) {
                prop_assert!(n <= bytes.len());
            }
        }
    }
}
