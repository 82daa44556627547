//! Packets for the offload tests, built and checked independently of the code under test:
//! a byte-at-a-time RFC 1071 checksum, TCP and UDP packets over IPv4 and IPv6, frames
//! shaped like the ones the kernel reads out of a TUN device with TSO/USO on, and a
//! parser that checks every length and checksum of a packet it reads.

use std::net::IpAddr;

pub const VNET: usize = 10;
pub const ACK: u8 = 0x10;
pub const PSH: u8 = 0x08;
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const CWR: u8 = 0x80;

/// One's-complement sum of big-endian 16-bit words, one byte at a time, folded.
pub fn ones_sum(data: &[u8]) -> u32 {
    let mut s: u64 = 0;
    for (i, &b) in data.iter().enumerate() {
        s += if i % 2 == 0 {
            u64::from(b) << 8
        } else {
            u64::from(b)
        };
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u32
}

fn fold(mut s: u32) -> u32 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s
}

pub fn pseudo_sum(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    if src.len() == 4 {
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
    }
    ones_sum(&p)
}

/// Addresses and ports of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl Flow {
    pub fn v4(n: u8) -> Flow {
        Flow {
            src: IpAddr::from([10, 99, 1, n]),
            dst: IpAddr::from([10, 99, 2, 1]),
            sport: 40000 + u16::from(n),
            dport: 5201,
        }
    }

    pub fn v6(n: u8) -> Flow {
        Flow {
            src: IpAddr::from([0xfd, 0x99, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n]),
            dst: IpAddr::from([0xfd, 0x99, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            sport: 40000 + u16::from(n),
            dport: 5201,
        }
    }

    pub fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Fields of a TCP segment to build.
#[derive(Debug, Clone)]
pub struct Tcp {
    pub flow: Flow,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub options: Vec<u8>,
    pub ttl: u8,
    pub tos: u8,
    pub id: u16,
}

impl Tcp {
    pub fn new(flow: Flow, seq: u32) -> Tcp {
        Tcp {
            flow,
            seq,
            ack: 0x1000_0000,
            flags: ACK,
            window: 500,
            options: Vec::new(),
            ttl: 64,
            tos: 0,
            id: 0x4000,
        }
    }

    /// A timestamp option (NOP NOP TS), as Linux sends on every segment.
    pub fn timestamps(mut self, tsval: u32) -> Tcp {
        self.options = vec![1, 1, 8, 10];
        self.options.extend_from_slice(&tsval.to_be_bytes());
        self.options.extend_from_slice(&7u32.to_be_bytes());
        self
    }

    fn tcp_header(&self) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0);
        let doff = (20 + self.options.len()) / 4;
        let mut t = Vec::new();
        t.extend_from_slice(&self.flow.sport.to_be_bytes());
        t.extend_from_slice(&self.flow.dport.to_be_bytes());
        t.extend_from_slice(&self.seq.to_be_bytes());
        t.extend_from_slice(&self.ack.to_be_bytes());
        t.push((doff as u8) << 4);
        t.push(self.flags);
        t.extend_from_slice(&self.window.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(&self.options);
        t
    }

    /// A complete segment with valid checksums.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut l4 = self.tcp_header();
        l4.extend_from_slice(payload);
        let c = !fold(
            pseudo_sum(&octets(self.flow.src), &octets(self.flow.dst), 6, l4.len()) + ones_sum(&l4),
        ) as u16;
        l4[16..18].copy_from_slice(&c.to_be_bytes());
        ip_packet(&self.flow, 6, self.ttl, self.tos, self.id, &l4)
    }

    /// The frame the kernel would hand us for this super-segment: virtio-net header with
    /// NEEDS_CSUM and GSO_TCPV4/6, IP lengths of the whole, and the TCP checksum field
    /// holding the pseudo-header sum. `hdr_len` is set to `claimed_hdr_len` (the kernel's
    /// value is not to be trusted).
    pub fn super_frame(&self, payload: &[u8], mss: u16, claimed_hdr_len: u16) -> Vec<u8> {
        let mut l4 = self.tcp_header();
        l4.extend_from_slice(payload);
        let ps = fold(pseudo_sum(
            &octets(self.flow.src),
            &octets(self.flow.dst),
            6,
            l4.len(),
        )) as u16;
        l4[16..18].copy_from_slice(&ps.to_be_bytes());
        let ip = ip_packet(&self.flow, 6, self.ttl, self.tos, self.id, &l4);
        let l3 = if self.flow.is_v6() { 40 } else { 20 };
        let gso = if self.flow.is_v6() { 4 } else { 1 };
        let mut f = vnet_header(1, gso, claimed_hdr_len, mss, l3 as u16, 16);
        f.extend_from_slice(&ip);
        f
    }
}

pub fn vnet_header(
    flags: u8,
    gso: u8,
    hdr_len: u16,
    gso_size: u16,
    start: u16,
    off: u16,
) -> Vec<u8> {
    let mut h = vec![flags, gso];
    for v in [hdr_len, gso_size, start, off] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

/// An IP packet around the transport bytes `l4`.
pub fn ip_packet(flow: &Flow, proto: u8, ttl: u8, tos: u8, id: u16, l4: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    match (flow.src, flow.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&[0x45, tos]);
            p.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&[0x40, 0, ttl, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let c = !(ones_sum(&p) as u16);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x60 | (tos >> 4), tos << 4, 0x12, 0x34]);
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, ttl]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed address families"),
    }
    p.extend_from_slice(l4);
    p
}

/// A UDP datagram with a valid checksum.
pub fn udp_packet(flow: &Flow, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = udp_header(flow, payload.len());
    l4.extend_from_slice(payload);
    let mut c =
        !fold(pseudo_sum(&octets(flow.src), &octets(flow.dst), 17, l4.len()) + ones_sum(&l4))
            as u16;
    if c == 0 {
        c = 0xffff;
    }
    l4[6..8].copy_from_slice(&c.to_be_bytes());
    ip_packet(flow, 17, 64, 0, id, &l4)
}

fn udp_header(flow: &Flow, payload: usize) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&flow.sport.to_be_bytes());
    u.extend_from_slice(&flow.dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u
}

/// The frame of a UDP super-segment (USO) as the kernel hands it out.
pub fn udp_super_frame(flow: &Flow, id: u16, payload: &[u8], gso_size: u16) -> Vec<u8> {
    let mut l4 = udp_header(flow, payload.len());
    l4.extend_from_slice(payload);
    let ps = fold(pseudo_sum(
        &octets(flow.src),
        &octets(flow.dst),
        17,
        l4.len(),
    )) as u16;
    l4[6..8].copy_from_slice(&ps.to_be_bytes());
    let ip = ip_packet(flow, 17, 64, 0, id, &l4);
    let l3 = if flow.is_v6() { 40 } else { 20 };
    let mut f = vnet_header(1, 5, l3 + 8, gso_size, l3, 6);
    f.extend_from_slice(&ip);
    f
}

/// What a checked packet contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub flow: Flow,
    pub proto: u8,
    pub id: u16,
    pub ttl: u8,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Parses an IPv4/IPv6 TCP or UDP packet and checks its IP lengths, IPv4 header checksum
/// and transport checksum, with `pseudo_only` meaning the transport checksum field must
/// hold the pseudo-header sum instead (a partial checksum, as in a GSO frame).
pub fn parse_checked(p: &[u8], pseudo_only: bool) -> Result<Parsed, String> {
    let v = p.first().ok_or("empty")? >> 4;
    let (l3, proto, src, dst, id, ttl) = match v {
        4 => {
            if p.len() < 20 {
                return Err("short ipv4".into());
            }
            let ihl = usize::from(p[0] & 15) * 4;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            if total != p.len() {
                return Err(format!("ipv4 total length {total} != {}", p.len()));
            }
            if ones_sum(&p[..ihl]) != 0xffff {
                return Err("ipv4 header checksum".into());
            }
            let s: [u8; 4] = p[12..16].try_into().unwrap();
            let d: [u8; 4] = p[16..20].try_into().unwrap();
            (
                ihl,
                p[9],
                IpAddr::from(s),
                IpAddr::from(d),
                u16::from_be_bytes([p[4], p[5]]),
                p[8],
            )
        }
        6 => {
            if p.len() < 40 {
                return Err("short ipv6".into());
            }
            let plen = usize::from(u16::from_be_bytes([p[4], p[5]]));
            if plen + 40 != p.len() {
                return Err(format!("ipv6 payload length {plen} != {}", p.len() - 40));
            }
            let s: [u8; 16] = p[8..24].try_into().unwrap();
            let d: [u8; 16] = p[24..40].try_into().unwrap();
            (40, p[6], IpAddr::from(s), IpAddr::from(d), 0, p[7])
        }
        v => return Err(format!("ip version {v}")),
    };
    let l4 = &p[l3..];
    let ps = pseudo_sum(
        &p[if v == 4 { 12 } else { 8 }..][..if v == 4 { 4 } else { 16 }],
        &p[if v == 4 { 16 } else { 24 }..][..if v == 4 { 4 } else { 16 }],
        proto,
        l4.len(),
    );
    let (csum_at, hl) = match proto {
        6 => {
            if l4.len() < 20 {
                return Err("short tcp".into());
            }
            (16, usize::from(l4[12] >> 4) * 4)
        }
        17 => {
            if l4.len() < 8 {
                return Err("short udp".into());
            }
            let ulen = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
            if ulen != l4.len() {
                return Err(format!("udp length {ulen} != {}", l4.len()));
            }
            (6, 8)
        }
        p => return Err(format!("protocol {p}")),
    };
    if pseudo_only {
        let field = u32::from(u16::from_be_bytes([l4[csum_at], l4[csum_at + 1]]));
        if fold(field) != fold(ps) {
            return Err(format!("partial checksum {field:#x} != pseudo {ps:#x}"));
        }
    } else if fold(ps + ones_sum(l4)) != 0xffff {
        return Err("transport checksum".into());
    }
    let (sport, dport) = (
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    );
    let tcp = proto == 6;
    Ok(Parsed {
        flow: Flow {
            src,
            dst,
            sport,
            dport,
        },
        proto,
        id,
        ttl,
        seq: if tcp {
            u32::from_be_bytes(l4[4..8].try_into().unwrap())
        } else {
            0
        },
        ack: if tcp {
            u32::from_be_bytes(l4[8..12].try_into().unwrap())
        } else {
            0
        },
        flags: if tcp { l4[13] } else { 0 },
        options: if tcp { l4[20..hl].to_vec() } else { Vec::new() },
        payload: l4[hl..].to_vec(),
    })
}

/// A frame's virtio-net header fields: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset.
pub fn vnet_fields(f: &[u8]) -> (u8, u8, u16, u16, u16, u16) {
    let le = |i: usize| u16::from_le_bytes([f[i], f[i + 1]]);
    (f[0], f[1], le(2), le(4), le(6), le(8))
}

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

/// The link-layer header of a TAP frame: MAC addresses and VLAN tags (TPID, TCI), outer
/// first. The EtherType follows from what is wrapped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Link {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub tags: Vec<(u16, u16)>,
}

impl Link {
    /// An untagged link between two made-up hosts.
    pub fn plain() -> Link {
        Link {
            dst: [0x02, 0, 0, 0, 0, 0x0b],
            src: [0x02, 0, 0, 0, 0, 0x0a],
            tags: Vec::new(),
        }
    }

    /// The same with one 802.1Q tag of VLAN `vid`.
    pub fn vlan(vid: u16) -> Link {
        Link {
            tags: vec![(TPID_8021Q, vid)],
            ..Link::plain()
        }
    }

    /// QinQ: an 802.1ad service tag around an 802.1Q customer tag.
    pub fn qinq(outer: u16, inner: u16) -> Link {
        Link {
            tags: vec![(TPID_8021AD, outer), (TPID_8021Q, inner)],
            ..Link::plain()
        }
    }

    pub fn len(&self) -> usize {
        14 + 4 * self.tags.len()
    }

    /// The header bytes in front of a payload of `ethertype`.
    pub fn header(&self, ethertype: u16) -> Vec<u8> {
        let mut h = Vec::with_capacity(self.len());
        h.extend_from_slice(&self.dst);
        h.extend_from_slice(&self.src);
        for &(tpid, tci) in &self.tags {
            h.extend_from_slice(&tpid.to_be_bytes());
            h.extend_from_slice(&tci.to_be_bytes());
        }
        h.extend_from_slice(&ethertype.to_be_bytes());
        h
    }

    /// An IP packet in a frame, the EtherType from its version.
    pub fn frame(&self, ip: &[u8]) -> Vec<u8> {
        let ethertype = if ip[0] >> 4 == 6 { ETH_IPV6 } else { ETH_IPV4 };
        let mut f = self.header(ethertype);
        f.extend_from_slice(ip);
        f
    }

    /// A TUN-style frame (virtio-net header, IP super-segment or packet) made a TAP frame:
    /// the link-layer header goes between the two, and `csum_start` (and `hdr_len`, when
    /// it is the real header length) grow by its length, as the kernel counts them from
    /// the start of the frame.
    pub fn vnet_frame(&self, tun_frame: &[u8]) -> Vec<u8> {
        let (flags, gso, hdr_len, gso_size, start, off) = vnet_fields(tun_frame);
        let l2 = self.len() as u16;
        let hdr_len = if hdr_len == 0 || hdr_len == 0xffff {
            hdr_len
        } else {
            hdr_len + l2
        };
        let start = if flags & 1 != 0 { start + l2 } else { start };
        let mut f = vnet_header(flags, gso, hdr_len, gso_size, start, off);
        f.extend_from_slice(&self.frame(&tun_frame[VNET..]));
        f
    }

    /// An ARP request from `src` (RFC 826), 28 bytes after the header.
    pub fn arp(&self) -> Vec<u8> {
        let mut f = self.header(ETH_ARP);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&self.src);
        f.extend_from_slice(&[10, 99, 3, 1]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 99, 3, 2]);
        f
    }
}

/// Splits an Ethernet frame into its link-layer header (walking 802.1Q and 802.1ad tags)
/// and checks the IP packet behind it like `parse_checked`, and that the EtherType fits
/// the IP version.
pub fn parse_frame_checked(f: &[u8], pseudo_only: bool) -> Result<(Link, Parsed), String> {
    if f.len() < 14 {
        return Err("short ethernet header".into());
    }
    let mut link = Link {
        dst: f[..6].try_into().unwrap(),
        src: f[6..12].try_into().unwrap(),
        tags: Vec::new(),
    };
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([f[at], f[at + 1]]);
    while ethertype == TPID_8021Q || ethertype == TPID_8021AD {
        if f.len() < at + 6 {
            return Err("short vlan tag".into());
        }
        link.tags
            .push((ethertype, u16::from_be_bytes([f[at + 2], f[at + 3]])));
        at += 4;
        ethertype = u16::from_be_bytes([f[at], f[at + 1]]);
    }
    let ip = &f[at + 2..];
    let p = parse_checked(ip, pseudo_only)?;
    let want = if p.flow.is_v6() { ETH_IPV6 } else { ETH_IPV4 };
    if ethertype != want {
        return Err(format!("ethertype {ethertype:#06x} on an IP packet"));
    }
    Ok((link, p))
}

/// `p` with the fields that merging may legitimately change made equal:
/// - the IPv4 id of a packet with DF: a run of such packets with one id may merge and comes
///   back with ids that go up (the id of an atomic datagram means nothing, RFC 6864);
/// - the urgent pointer of a TCP segment without URG: the receiver ignores it, and neither
///   the kernel's GRO nor the writer compares it;
/// - with `checksums`, the TCP checksum, and a UDP checksum other than zero (it becomes
///   0xffff): a trusting writer does not verify transport checksums, and the kernel
///   computes fresh ones for a merged frame; but a datagram without a checksum (zero)
///   must never be merged.
///
/// A zeroed field's checksum is adjusted to match (RFC 1624, eqn. 3), so that it holds
/// afterwards exactly if it held before. The IPv4 header checksum is never zeroed: the
/// writer verifies it even when it trusts the transport checksums.
pub fn canonical_ip(p: &[u8], checksums: bool) -> Vec<u8> {
    let mut p = p.to_vec();
    let Some((l4, proto)) = transport(&p) else {
        return p;
    };
    if p[0] >> 4 == 4 && p[6] & 0x40 != 0 {
        zero_field(&mut p, 4, 10);
    }
    match proto {
        6 if p.len() >= l4 + 20 => {
            if p[l4 + 13] & 0x20 == 0 {
                zero_field(&mut p, l4 + 18, l4 + 16);
            }
            if checksums {
                p[l4 + 16..l4 + 18].fill(0);
            }
        }
        17 if checksums && p.get(l4 + 6..l4 + 8).is_some_and(|c| c != [0, 0]) => {
            p[l4 + 6..l4 + 8].fill(0xff);
        }
        _ => {}
    }
    p
}

/// Zeroes the 16-bit field at `at` and adjusts the checksum at `sum` for the change.
fn zero_field(p: &mut [u8], at: usize, sum: usize) {
    let get = |p: &[u8], i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
    let (old, hc) = (get(p, at), get(p, sum));
    let adjusted = !fold(u32::from(!hc) + u32::from(!old)) as u16;
    p[sum..sum + 2].copy_from_slice(&adjusted.to_be_bytes());
    p[at..at + 2].fill(0);
}

/// Where the transport header of the IP packet `p` starts (by its IPv4 header length, or
/// behind the fixed IPv6 header) and its protocol number.
fn transport(p: &[u8]) -> Option<(usize, u8)> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some((usize::from(p[0] & 15) * 4, p[9])),
        6 if p.len() >= 40 => Some((40, p[6])),
        _ => None,
    }
}

/// Recomputes the IPv4 header checksum and the TCP or UDP checksum of `p` (over the bytes
/// it has, whatever its length fields say), so that a packet whose header was changed on
/// purpose still passes the writer's checksum tests and reaches its header comparisons.
pub fn fix_checksums(p: &mut [u8]) {
    let Some((l4, proto)) = transport(p) else {
        return;
    };
    let (src, dst) = if p[0] >> 4 == 4 {
        if !(20..=p.len()).contains(&l4) {
            return;
        }
        p[10..12].fill(0);
        let c = !ones_sum(&p[..l4]) as u16;
        p[10..12].copy_from_slice(&c.to_be_bytes());
        (p[12..16].to_vec(), p[16..20].to_vec())
    } else {
        (p[8..24].to_vec(), p[24..40].to_vec())
    };
    let at = match proto {
        6 => l4 + 16,
        17 => l4 + 6,
        _ => return,
    };
    if p.len() < at + 2 {
        return;
    }
    p[at..at + 2].fill(0);
    let c = !fold(pseudo_sum(&src, &dst, proto, p.len() - l4) + ones_sum(&p[l4..])) as u16;
    let c = if c == 0 && proto == 17 { 0xffff } else { c };
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Where the IP packet in a TAP frame starts, after the MACs and any 802.1Q/802.1ad tags,
/// if the EtherType says IPv4 or IPv6.
pub fn ip_start(f: &[u8]) -> Option<usize> {
    let mut at = 12;
    while let Some(t) = f.get(at..at + 2) {
        match u16::from_be_bytes([t[0], t[1]]) {
            TPID_8021Q | TPID_8021AD => at += 4,
            ETH_IPV4 | ETH_IPV6 => return Some(at + 2),
            _ => return None,
        }
    }
    None
}

/// [`canonical_ip`] for the IP packet inside a TAP frame; frames that are not IP are
/// returned as they are.
pub fn canonical_frame(f: &[u8], checksums: bool) -> Vec<u8> {
    match ip_start(f) {
        Some(l3) => [&f[..l3], &canonical_ip(&f[l3..], checksums)[..]].concat(),
        None => f.to_vec(),
    }
}

/// How many kinds of change [`make_hostile`] knows; kinds at or past it leave the packet
/// alone.
pub const HOSTILE_KINDS: u8 = 8;

/// Makes `p`, a packet of `flow` and the `index`th of its batch, into what a hostile peer
/// might send instead, by `kind`:
/// 0. a header byte (of the first 72: IP, TCP and its options) XORed with `mask`, so its
///    checksums no longer hold;
/// 1. the same, with the checksums made to hold again, so the writer's header
///    comparisons decide;
/// 2. cut short at `at`;
/// 3. bytes of `seed` past its IP length;
/// 4. noise of `seed` that claims to be IP;
/// 5. a UDP datagram between the flow's addresses instead, its length chosen by `at`, its
///    id 0x8000 + `index` (one socket's ids go up: two datagrams with one id and length
///    could merge as a fixed-id run and come back with ids that go up);
/// 6. that datagram without a checksum (zero);
/// 7. that datagram with a header byte changed as in 1.
pub fn make_hostile(p: &mut Vec<u8>, flow: &Flow, index: usize, change: (u8, u16, u8, u64)) {
    let (kind, at, mask, seed) = change;
    let at = usize::from(at);
    let flip = |p: &mut Vec<u8>| {
        let i = at % p.len().min(72);
        p[i] ^= mask;
    };
    if (5..=7).contains(&kind) {
        *p = udp_packet(flow, 0x8000 + index as u16, &payload(600 + at % 4, seed));
    }
    match kind {
        0 => flip(p),
        1 | 7 => {
            flip(p);
            fix_checksums(p);
        }
        2 => p.truncate(at % p.len()),
        3 => p.extend(payload(1 + at % 40, seed)),
        4 => {
            let version = if flow.is_v6() { 0x60 } else { 0x45 };
            *p = [&[version][..], &payload(at % 1600, seed)].concat();
        }
        6 => {
            let l4 = if flow.is_v6() { 40 } else { 20 };
            p[l4 + 6..l4 + 8].fill(0);
        }
        _ => {}
    }
}

/// Deterministic payload bytes from `seed` (xorshift).
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What the frames a writer wrote carry, in the order written: each merged frame (for
/// which `check` asserts coherence and returns true) cut back into its packets by
/// `resplit`, each single one without its virtio-net header.
pub fn carried(
    written: &[Vec<u8>],
    check: impl Fn(&[u8]) -> bool,
    resplit: impl Fn(&[u8]) -> Vec<Vec<u8>>,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in written {
        if check(f) {
            out.extend(resplit(f));
        } else {
            out.push(f[VNET..].to_vec());
        }
    }
    out
}
