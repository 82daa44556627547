//! Segmentation and checksum offloads on a TUN or TAP device opened with `IFF_VNET_HDR`.
//!
//! With a virtio-net header in front of every packet and `TUNSETOFFLOAD` enabling
//! `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6` (and `TUN_F_USO4 | TUN_F_USO6` on kernels since
//! 6.2), the kernel hands us TCP (and UDP) *super-segments* of up to 64 KiB with a partial
//! checksum, and accepts the same from us. One system call then moves some 45 packets
//! instead of one, which is what takes a userspace tunnel past a gigabit.
//!
//! The same works on both kinds of device; the [`Layer`] says which one a [`Reader`] or
//! [`Writer`] serves. A TUN device ([`Layer::Ip`]) carries bare IP packets. A TAP device
//! ([`Layer::Ethernet`]) carries Ethernet frames: a 14-byte header, 18 with an 802.1Q
//! VLAN tag, more with QinQ, then the IP packet; the header's `csum_start` and `hdr_len`
//! then count from the first byte of the frame (the kernel builds the skb from the frame,
//! `tun_get_user()` in `drivers/net/tun.c`, and `virtio_net_hdr_to_skb()` in
//! `include/linux/virtio_net.h` takes `csum_start` from `skb->data`, the MAC header; on
//! the way out `virtio_net_hdr_from_skb()` adds 4 to `csum_start` when it inserts an
//! offloaded VLAN tag into the frame).
//!
//! This module is responsible for:
//! - [`Reader`]: reading frames from the device and turning each into plain IP packets
//!   (TUN) or Ethernet frames (TAP) the rest of the data path can encrypt: a packet whose
//!   checksum the kernel left partial (`NEEDS_CSUM`) gets it completed; a super-segment
//!   is cut at `gso_size` into full packets with their own lengths, IPv4 ids and header
//!   checksums, TCP sequence numbers, flags and checksums, as the kernel's own
//!   segmentation would (`net/ipv4/tcp_offload.c`, `net/ipv4/udp_offload.c`,
//!   `net/ipv4/af_inet.c`); on TAP every segment gets a copy of the super-segment's
//!   link-layer header, VLAN tags included (`skb_segment()` copies the MAC header the
//!   same way). Frames that are not IP (ARP, other EtherTypes) pass through unchanged.
//! - [`Writer`]: taking a batch of plain IP packets or Ethernet frames (decrypted from the
//!   network, in arrival order) and writing them with as few system calls as possible,
//!   merging consecutive TCP (and, with USO, UDP) segments of one flow into one
//!   super-segment under the rules of the kernel's GRO (`tcp_gro_receive` in
//!   `net/ipv4/tcp_offload.c`, `inet_gro_receive`, `ipv6_gro_receive`, and for frames
//!   `eth_gro_receive` and `vlan_gro_receive`, which only hold frames together whose
//!   Ethernet and VLAN headers are equal), and writing everything else with an empty
//!   header.
//! - [`Header`] / [`HeaderRepr`]: the 10-byte `struct virtio_net_hdr`
//!   (`include/uapi/linux/virtio_net.h`).
//! - [`enable_offloads`]: asking the kernel for the offloads it supports, falling back
//!   step by step, so the engine knows what it got and can switch offloads off. TUN and
//!   TAP devices take the same flags (`set_offload()` in `drivers/net/tun.c` does not
//!   look at the device type).
//!
//! It is not responsible for opening or configuring the device ([`crate::DeviceBuilder`]
//! with [`vnet_hdr(true)`](crate::DeviceBuilder::vnet_hdr)), for switching or MAC
//! learning on TAP, or for anything past the packet: routing, encryption and batching
//! towards the network are the engine's.
//!
//! Neither side allocates per packet: a [`Reader`] owns one 64 KiB frame buffer, a
//! [`Writer`] one 64 KiB scratch area for merged packets and a few small tables whose
//! capacity grows to the largest batch seen and then stays.
//!
//! # Byte order of the header
//! The kernel writes and reads the virtio-net header of a TUN device in little-endian
//! order when the device is set to little-endian (`TUNSETVNETLE`) *or* when the host is
//! little-endian (`tun_is_little_endian()` in `drivers/net/tun.c`: legacy virtio headers
//! are in the host's order). This module always uses little-endian and never calls
//! `TUNSETVNETLE`, so it is right on every little-endian host (x86-64, little-endian
//! Arm) and would need that ioctl on a big-endian one.
//!
//! # What we trust from the kernel
//! Nothing without checking it: every length and offset in a frame is bounds-checked,
//! and a frame that does not add up is an [`Error`] (wrapped in an `io::Error` of kind
//! `InvalidData`), never a panic. One field is not used at all: `hdr_len` of a frame the
//! kernel forwarded is the length of the skb's linear part, which may be the whole first
//! packet (wireguard-go found this: `tun/offload_linux.go`), so the header length is taken
//! from `csum_start` and the TCP data offset instead.
//!
//! # Using it from the engine
//! ```no_run
//! use ferrotun_device::vnet::{self, Layer, Offloads, Reader, Writer};
//! use ferrotun_device::{DeviceBuilder, Mode};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # let mode = Mode::Tap;
//! // Mode::Tun or Mode::Tap: everything below is the same for both.
//! let dev = DeviceBuilder::new("ftun%d", mode).vnet_hdr(true).open()?;
//! // ... configure and bring the link up ...
//! let queue = dev.into_queues().pop().unwrap();
//! let offloads = vnet::enable_offloads(&queue, Offloads::ALL)?; // or Offloads::NONE from config
//! let layer = Layer::from(queue.mode());
//! let queue = std::sync::Arc::new(queue.into_async()?);
//!
//! // The task that reads the device:
//! const HEADROOM: usize = 16; // room for the transport header, filled in place
//! // A packet of at most the MTU, plus on TAP its Ethernet header and VLAN tags.
//! let room = 1500 + layer.max_header_len();
//! let mut reader = Reader::with_layer(layer); // Reader::new() is Reader::with_layer(Layer::Ip)
//! let mut bufs = vec![vec![0u8; HEADROOM + room + 16]; 64];
//! let mut lens = [0usize; 64];
//! loop {
//!     match reader.recv_batch(&queue, &mut bufs, HEADROOM, &mut lens).await {
//!         Ok(n) => { /* encrypt and send bufs[..n], lens[..n] */ }
//!         Err(e) if e.kind() == std::io::ErrorKind::InvalidData => { /* count, go on */ }
//!         Err(e) => return Err(e.into()),
//!     }
//! #   break;
//! }
//!
//! // The task that writes the device:
//! let mut writer = Writer::with_layer(offloads, layer); // Writer::new(o) is the Layer::Ip one
//! # let mut packets = vec![vec![0u8; 2048]; 64]; let plens = [0usize; 64]; let n = 0;
//! // packets[i][HEADROOM..HEADROOM + plens[i]] hold decrypted IP packets (TUN) or Ethernet
//! // frames (TAP), in arrival order; the 10 bytes before HEADROOM get the virtio-net header.
//! writer.send_batch(&queue, &mut packets[..n], HEADROOM, &plens[..n]).await?;
//! # Ok(()) }
//! ```

use std::io;

use crate::error::DeviceError;
use crate::tun::{Mode, Queue, VNET_HDR_LEN, offload};

pub(crate) mod checksum;
mod coalesce;
pub(crate) mod ethernet;
mod header;
pub(crate) mod packet;
mod partial;
mod split;

pub use coalesce::{Writer, WriterStats};
pub use header::{GsoType, Header, HeaderRepr, field, flags, gso};
pub use partial::{PartialChecksum, complete_checksum, partial_checksum};
pub use split::{Reader, ReaderStats};

/// The largest IP packet either side handles: the IPv4 total length is 16 bits, and the
/// kernel's TUN device advertises `GSO_LEGACY_MAX_SIZE` (65536) unless an operator
/// raises `gso_max_size` for BIG TCP, which this module does not support.
pub const MAX_PACKET: usize = 65535;

/// The most VLAN tags (802.1Q or 802.1ad) in front of the IP packet of a TAP frame that
/// the [`Reader`] and [`Writer`] look through: the kernel's `VLAN_MAX_DEPTH`
/// (`include/linux/if_vlan.h`). One tag is common, two are QinQ; a frame with more is not
/// segmented (an error) nor merged (written alone).
pub const MAX_VLAN_TAGS: usize = 8;

/// The longest link-layer header of a TAP frame: 14 bytes of Ethernet header and
/// [`MAX_VLAN_TAGS`] tags of 4 bytes.
pub const MAX_ETHERNET_HEADER: usize = 14 + 4 * MAX_VLAN_TAGS;

/// What follows the virtio-net header in each frame of a device: which kind of device a
/// [`Reader`] or [`Writer`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layer {
    /// An IPv4 or IPv6 packet: a TUN device ([`Mode::Tun`]).
    #[default]
    Ip,
    /// An Ethernet frame, possibly with VLAN tags: a TAP device ([`Mode::Tap`]).
    Ethernet,
}

impl Layer {
    /// The device mode whose frames this layer describes.
    pub fn mode(self) -> Mode {
        match self {
            Layer::Ip => Mode::Tun,
            Layer::Ethernet => Mode::Tap,
        }
    }

    /// Where the IP packet starts in `packet`: at 0, or on [`Layer::Ethernet`] after the
    /// link-layer header, if its EtherType announces IPv4 or IPv6 and the packet's version
    /// agrees. `None` for any other frame: the kernel will not take it for IP either
    /// (`ip_rcv()` checks the version).
    pub(crate) fn ip_start(self, packet: &[u8]) -> Option<usize> {
        match self {
            Layer::Ip => Some(0),
            Layer::Ethernet => {
                let link = ethernet::parse(packet).ok()?;
                (packet.get(link.len)? >> 4 == link.ip_version()?).then_some(link.len)
            }
        }
    }

    /// The most bytes in front of the IP packet: 0, or [`MAX_ETHERNET_HEADER`]. A
    /// [`Reader`]'s buffers hold the MTU plus the link-layer header after their offset;
    /// this much always suffices (14 bytes plus 4 per VLAN tag in use is enough when the
    /// tags are known).
    pub fn max_header_len(self) -> usize {
        match self {
            Layer::Ip => 0,
            Layer::Ethernet => MAX_ETHERNET_HEADER,
        }
    }
}

impl From<Mode> for Layer {
    fn from(mode: Mode) -> Layer {
        match mode {
            Mode::Tun => Layer::Ip,
            Mode::Tap => Layer::Ethernet,
        }
    }
}

/// The most segments the [`Writer`] merges into one super-segment. With a 1420-byte MTU
/// the 64 KiB limit is reached after 47 full segments; the count only matters for flows
/// of small segments, whose merging gains little and would make one lost write costly.
pub const MAX_SEGMENTS: usize = 64;

/// Why a frame from the device, or a packet handed to the [`Writer`], could not be
/// processed. The I/O methods wrap it in an [`io::Error`] (kind `InvalidData` for a bad
/// frame, `InvalidInput` for a caller's buffer that is too small); get it back with
/// [`Error::from_io`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The frame is shorter than the virtio-net header.
    #[error("frame of {len} bytes is shorter than the {VNET_HDR_LEN}-byte virtio-net header")]
    ShortFrame {
        /// The frame's length.
        len: usize,
    },
    /// The frame is longer than the virtio-net header, [`MAX_PACKET`] and (on TAP)
    /// [`MAX_ETHERNET_HEADER`] together: the kernel truncated it (an operator raised
    /// `gso_max_size` for BIG TCP?).
    #[error(
        "frame of {len} bytes exceeds a 64 KiB packet with its virtio-net and link-layer headers (gso_max_size raised above 65536?)"
    )]
    Oversized {
        /// The length the kernel reported.
        len: usize,
    },
    /// `gso_type` holds a value this module does not know (UFO, tunnel GSO, ...).
    #[error("unsupported virtio-net gso_type {0:#04x}")]
    UnsupportedGso(u8),
    /// The packet does not start with IP version 4 or 6.
    #[error("not an IP packet: version nibble {0}")]
    NotIp(u8),
    /// A TAP super-segment whose EtherType (after any VLAN tags) is not IPv4 or IPv6:
    /// the network header cannot be found, so the frame cannot be cut.
    #[error("GSO frame with EtherType {0:#06x}, not IPv4 or IPv6")]
    NotIpEtherType(u16),
    /// A TAP super-segment whose EtherType and IP version nibble disagree.
    #[error("EtherType {ethertype:#06x} in front of an IP version {version} packet")]
    EtherTypeMismatch {
        /// The EtherType after any VLAN tags.
        ethertype: u16,
        /// The version nibble of the packet.
        version: u8,
    },
    /// A TAP super-segment with more than [`MAX_VLAN_TAGS`] VLAN tags.
    #[error("GSO frame with more than {MAX_VLAN_TAGS} VLAN tags")]
    TooManyVlanTags,
    /// The GSO type does not fit the packet's IP version (TCPV4 on an IPv6 packet).
    #[error("gso_type {gso:?} on an IPv{version} packet")]
    GsoVersionMismatch {
        /// The header's GSO type.
        gso: GsoType,
        /// The packet's IP version.
        version: u8,
    },
    /// The GSO type does not fit the packet's transport protocol (TCPV4 on a UDP packet):
    /// cutting it would write TCP fields into another protocol's bytes.
    #[error("gso_type {gso:?} on a packet of IP protocol {protocol}")]
    GsoProtocolMismatch {
        /// The header's GSO type.
        gso: GsoType,
        /// The IP protocol (IPv4) or next header (IPv6) of the packet.
        protocol: u8,
    },
    /// A super-segment without `NEEDS_CSUM`: the kernel always sets it on GSO frames,
    /// and without `csum_start` the transport header cannot be found.
    #[error("GSO frame without the NEEDS_CSUM flag")]
    GsoWithoutCsum,
    /// A super-segment with `gso_size` 0.
    #[error("GSO frame with gso_size 0")]
    ZeroGsoSize,
    /// `csum_start` does not point at the transport header.
    #[error(
        "csum_start {csum_start} does not match the {ip_header} bytes of link-layer and IP header"
    )]
    BadCsumStart {
        /// The header's `csum_start`.
        csum_start: usize,
        /// The length of the headers in front of the transport header, as the frame says:
        /// the IP header, and on TAP the Ethernet header and VLAN tags before it.
        ip_header: usize,
    },
    /// `csum_offset` is not where the transport protocol keeps its checksum.
    #[error("csum_offset {csum_offset} is not the {protocol} checksum offset")]
    BadCsumOffset {
        /// The header's `csum_offset`.
        csum_offset: usize,
        /// "TCP" or "UDP".
        protocol: &'static str,
    },
    /// The packet ends before a header or field it must contain.
    #[error("truncated packet: {what} needs {need} bytes, the packet has {have}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The TCP data offset is outside 20..=60 bytes.
    #[error("TCP header length {0} outside 20..=60")]
    BadTcpHeaderLen(usize),
    /// A caller's buffer cannot hold the packet that was to go into it.
    #[error("buffer {index} has {have} bytes after the offset, the packet needs {need}")]
    BufferTooSmall {
        /// Which buffer of the batch.
        index: usize,
        /// Bytes needed.
        need: usize,
        /// Bytes available after the offset.
        have: usize,
    },
    /// [`Reader::push_frame`] was called while segments of the previous frame were still
    /// waiting to be taken.
    #[error("segments of the previous frame are still pending")]
    Busy,
    /// A [`Reader`] or [`Writer`] was handed a queue of the other kind of device (an
    /// [`Layer::Ip`] one a TAP queue, or the reverse): its frames would be misread.
    #[error("a {layer:?}-layer reader or writer cannot use a {mode} device")]
    LayerMismatch {
        /// The reader's or writer's layer.
        layer: Layer,
        /// The queue's device mode.
        mode: Mode,
    },
}

impl Error {
    /// The [`Error`] inside an `io::Error` returned by a [`Reader`] or [`Writer`], if any.
    pub fn from_io(e: &io::Error) -> Option<&Error> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e {
            Error::BufferTooSmall { .. } | Error::Busy | Error::LayerMismatch { .. } => {
                io::ErrorKind::InvalidInput
            }
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// Which offloads are on for a device: what [`enable_offloads`] got from the kernel, and
/// what a [`Writer`] may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Offloads {
    /// Checksum offload plus TCP segmentation offload for IPv4 and IPv6
    /// (`TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`).
    pub tso: bool,
    /// UDP segmentation offload (`TUN_F_USO4 | TUN_F_USO6`, Linux 6.2 and later); only
    /// together with `tso`.
    pub uso: bool,
}

impl Offloads {
    /// No offloads: every packet crosses the device alone, with an empty header.
    pub const NONE: Offloads = Offloads {
        tso: false,
        uso: false,
    };
    /// TCP segmentation and checksum offload.
    pub const TSO: Offloads = Offloads {
        tso: true,
        uso: false,
    };
    /// TCP and UDP segmentation and checksum offload.
    pub const ALL: Offloads = Offloads {
        tso: true,
        uso: true,
    };

    /// The `TUNSETOFFLOAD` argument for this set. USO without TSO is not a set the kernel
    /// accepts (`set_offload()` in `drivers/net/tun.c` only looks at the segmentation
    /// bits together with `TUN_F_CSUM`), so it maps to nothing.
    pub fn flags(self) -> u32 {
        if !self.tso {
            return 0;
        }
        let mut f = offload::CSUM | offload::TSO4 | offload::TSO6;
        if self.uso {
            f |= offload::USO4 | offload::USO6;
        }
        f
    }
}

/// Enables as much of `wanted` as the kernel supports on `queue`'s device and returns
/// what is on: first `wanted` as asked, then TSO without USO (kernels before 6.2 refuse
/// the USO bits with `EINVAL`), then nothing. Pass [`Offloads::NONE`] to switch offloads
/// off (a config switch, or a kernel whose offloads misbehave).
///
/// TUN and TAP devices take the same flags. Offloads belong to the interface, not to one
/// queue: on a multiqueue device call it once, on any queue. A queue without a virtio-net header gets nothing enabled
/// ([`Offloads::NONE`]) and no system call. Fails only if even switching everything off
/// is refused.
pub fn enable_offloads(queue: &Queue, wanted: Offloads) -> Result<Offloads, DeviceError> {
    if !queue.has_vnet_hdr() {
        return Ok(Offloads::NONE);
    }
    let wanted = Offloads {
        tso: wanted.tso,
        uso: wanted.tso && wanted.uso,
    };
    let steps = [wanted, Offloads::TSO, Offloads::NONE];
    let mut last = None;
    for (k, &step) in steps.iter().enumerate() {
        // Only step down, and try each set once.
        if (step.tso && !wanted.tso) || (step.uso && !wanted.uso) || steps[..k].contains(&step) {
            continue;
        }
        match queue.set_offload(step.flags()) {
            Ok(()) => return Ok(step),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("the list of tries always ends with Offloads::NONE"))
}

/// Checks that a [`Reader`] or [`Writer`] of `layer` may use `queue`.
fn check_layer(layer: Layer, queue: &Queue) -> io::Result<()> {
    let mode = queue.mode();
    if Layer::from(mode) == layer {
        Ok(())
    } else {
        Err(Error::LayerMismatch { layer, mode }.into())
    }
}
