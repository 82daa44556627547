//! The virtio-net header, `struct virtio_net_hdr` of `include/uapi/linux/virtio_net.h`,
//! as a view over bytes ([`Header`]) and as plain values ([`HeaderRepr`]).
//!
//! ```text
//!  0        1        2                 4                 6                 8                10
//! +--------+--------+-----------------+-----------------+-----------------+-----------------+
//! | flags  |gso_type|     hdr_len     |    gso_size     |   csum_start    |   csum_offset   |
//! +--------+--------+-----------------+-----------------+-----------------+-----------------+
//! ```
//! The 16-bit fields are little-endian (see the byte-order note in [`crate::vnet`]).
//! `csum_start` and `hdr_len` count from the first byte after this header: the IP packet
//! on a TUN device, the Ethernet header on a TAP device. `csum_offset` counts from
//! `csum_start`.

use crate::tun::VNET_HDR_LEN;
use crate::vnet::Error;

/// Byte offsets of the header's fields.
pub mod field {
    use std::ops::Range;

    /// `flags`: [`super::flags`].
    pub const FLAGS: usize = 0;
    /// `gso_type`: one of [`super::gso`], possibly with [`super::gso::ECN`].
    pub const GSO_TYPE: usize = 1;
    /// `hdr_len`: length of the packet's headers (Ethernet on TAP, IP, TCP or UDP).
    pub const HDR_LEN: Range<usize> = 2..4;
    /// `gso_size`: payload bytes per segment.
    pub const GSO_SIZE: Range<usize> = 4..6;
    /// `csum_start`: where the checksummed range (the transport header) starts.
    pub const CSUM_START: Range<usize> = 6..8;
    /// `csum_offset`: where, counted from `csum_start`, the checksum goes.
    pub const CSUM_OFFSET: Range<usize> = 8..10;
}

/// Values of the `flags` field (`VIRTIO_NET_HDR_F_*`).
pub mod flags {
    /// The checksum at `csum_start + csum_offset` holds only the pseudo-header sum; the
    /// rest is to be computed (the kernel's `CHECKSUM_PARTIAL`).
    pub const NEEDS_CSUM: u8 = 1;
    /// The checksum has been verified (the kernel's `CHECKSUM_UNNECESSARY`).
    pub const DATA_VALID: u8 = 2;
}

/// Values of the `gso_type` field (`VIRTIO_NET_HDR_GSO_*`).
pub mod gso {
    /// Not a super-segment.
    pub const NONE: u8 = 0;
    /// TCP over IPv4.
    pub const TCPV4: u8 = 1;
    /// UDP fragmentation offload (UFO); long deprecated, never produced or accepted here.
    pub const UDP: u8 = 3;
    /// TCP over IPv6.
    pub const TCPV6: u8 = 4;
    /// UDP segmentation (USO) over IPv4 or IPv6.
    pub const UDP_L4: u8 = 5;
    /// Bit set with TCPV4/TCPV6 when the super-segment carries ECN's CWR (only with
    /// `TUN_F_TSO_ECN`).
    pub const ECN: u8 = 0x80;
}

/// The segmentation a frame asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GsoType {
    /// A single packet.
    None,
    /// A TCP super-segment over IPv4.
    TcpV4,
    /// A TCP super-segment over IPv6.
    TcpV6,
    /// A UDP super-segment (IPv4 or IPv6).
    UdpL4,
}

impl GsoType {
    fn to_raw(self) -> u8 {
        match self {
            GsoType::None => gso::NONE,
            GsoType::TcpV4 => gso::TCPV4,
            GsoType::TcpV6 => gso::TCPV6,
            GsoType::UdpL4 => gso::UDP_L4,
        }
    }
}

/// A read/write view of a virtio-net header at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// A view without a length check; accessors panic if the buffer is shorter than
    /// [`VNET_HDR_LEN`]. Use [`Header::new_checked`] on anything from outside.
    pub fn new_unchecked(buffer: T) -> Header<T> {
        Header { buffer }
    }

    /// A view of a buffer that holds at least a whole header.
    pub fn new_checked(buffer: T) -> Result<Header<T>, Error> {
        let len = buffer.as_ref().len();
        if len < VNET_HDR_LEN {
            return Err(Error::ShortFrame { len });
        }
        Ok(Header { buffer })
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, r: std::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_le_bytes([b[0], b[1]])
    }

    /// The `flags` field.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The raw `gso_type` field, ECN bit included.
    pub fn gso_type(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    /// The `hdr_len` field.
    pub fn hdr_len(&self) -> u16 {
        self.u16_at(field::HDR_LEN)
    }

    /// The `gso_size` field.
    pub fn gso_size(&self) -> u16 {
        self.u16_at(field::GSO_SIZE)
    }

    /// The `csum_start` field.
    pub fn csum_start(&self) -> u16 {
        self.u16_at(field::CSUM_START)
    }

    /// The `csum_offset` field.
    pub fn csum_offset(&self) -> u16 {
        self.u16_at(field::CSUM_OFFSET)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    fn set_u16_at(&mut self, r: std::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_le_bytes());
    }

    /// Sets the `flags` field.
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    /// Sets the raw `gso_type` field.
    pub fn set_gso_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::GSO_TYPE] = v;
    }

    /// Sets the `hdr_len` field.
    pub fn set_hdr_len(&mut self, v: u16) {
        self.set_u16_at(field::HDR_LEN, v);
    }

    /// Sets the `gso_size` field.
    pub fn set_gso_size(&mut self, v: u16) {
        self.set_u16_at(field::GSO_SIZE, v);
    }

    /// Sets the `csum_start` field.
    pub fn set_csum_start(&mut self, v: u16) {
        self.set_u16_at(field::CSUM_START, v);
    }

    /// Sets the `csum_offset` field.
    pub fn set_csum_offset(&mut self, v: u16) {
        self.set_u16_at(field::CSUM_OFFSET, v);
    }
}

/// The header's fields as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeaderRepr {
    /// [`flags::NEEDS_CSUM`]: the checksum is partial, `csum_start`/`csum_offset` say where.
    pub needs_csum: bool,
    /// [`flags::DATA_VALID`]: the checksum is known to be good.
    pub data_valid: bool,
    /// The segmentation asked for.
    pub gso: GsoType,
    /// [`gso::ECN`]: the super-segment carries CWR (first segment only).
    pub ecn: bool,
    /// Length of the link-layer (TAP), IP and transport headers, as the sender claims it.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Offset of the transport header from the start of the packet or frame, where
    /// checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start` (16 for TCP, 6 for UDP).
    pub csum_offset: u16,
}

impl HeaderRepr {
    /// An all-zero header: a single packet whose checksum is complete (what the
    /// [`crate::vnet::Writer`] puts in front of every packet it does not merge).
    pub const NONE: HeaderRepr = HeaderRepr {
        needs_csum: false,
        data_valid: false,
        gso: GsoType::None,
        ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Reads a header. Unknown flag bits are ignored (the kernel may add some, such as
    /// `RSC_INFO`, that change nothing for a TUN reader); an unknown GSO type, or UFO, is
    /// an error.
    pub fn parse<T: AsRef<[u8]>>(h: &Header<T>) -> Result<HeaderRepr, Error> {
        let raw = h.gso_type();
        let ecn = raw & gso::ECN != 0;
        let gso = match raw & !gso::ECN {
            gso::NONE if !ecn => GsoType::None,
            gso::TCPV4 => GsoType::TcpV4,
            gso::TCPV6 => GsoType::TcpV6,
            gso::UDP_L4 if !ecn => GsoType::UdpL4,
            _ => return Err(Error::UnsupportedGso(raw)),
        };
        Ok(HeaderRepr {
            needs_csum: h.flags() & flags::NEEDS_CSUM != 0,
            data_valid: h.flags() & flags::DATA_VALID != 0,
            gso,
            ecn,
            hdr_len: h.hdr_len(),
            gso_size: h.gso_size(),
            csum_start: h.csum_start(),
            csum_offset: h.csum_offset(),
        })
    }

    /// Writes this header into `h`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, h: &mut Header<T>) {
        let mut f = 0;
        if self.needs_csum {
            f |= flags::NEEDS_CSUM;
        }
        if self.data_valid {
            f |= flags::DATA_VALID;
        }
        h.set_flags(f);
        h.set_gso_type(self.gso.to_raw() | if self.ecn { gso::ECN } else { 0 });
        h.set_hdr_len(self.hdr_len);
        h.set_gso_size(self.gso_size);
        h.set_csum_start(self.csum_start);
        h.set_csum_offset(self.csum_offset);
    }

    /// Writes this header into the first [`VNET_HDR_LEN`] bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`VNET_HDR_LEN`].
    pub fn emit_into(&self, buf: &mut [u8]) {
        self.emit(&mut Header::new_unchecked(&mut buf[..VNET_HDR_LEN]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let repr = HeaderRepr {
            needs_csum: true,
            data_valid: false,
            gso: GsoType::TcpV6,
            ecn: true,
            hdr_len: 0x0102,
            gso_size: 1368,
            csum_start: 40,
            csum_offset: 16,
        };
        let mut buf = [0xffu8; VNET_HDR_LEN];
        repr.emit_into(&mut buf);
        assert_eq!(buf, [1, 0x84, 0x02, 0x01, 0x58, 0x05, 40, 0, 16, 0]);
        let parsed = HeaderRepr::parse(&Header::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(parsed, repr);
    }

    #[test]
    fn rejects_short_and_unknown() {
        assert_eq!(
            Header::new_checked(&[0u8; 9][..]).unwrap_err(),
            Error::ShortFrame { len: 9 }
        );
        for bad in [gso::UDP, 2, 6, 0x20, 0x40, gso::ECN, gso::UDP_L4 | gso::ECN] {
            let mut buf = [0u8; VNET_HDR_LEN];
            buf[field::GSO_TYPE] = bad;
            assert_eq!(
                HeaderRepr::parse(&Header::new_unchecked(&buf[..])).unwrap_err(),
                Error::UnsupportedGso(bad)
            );
        }
    }
}
