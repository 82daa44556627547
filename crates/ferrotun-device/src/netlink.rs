//! The small part of rtnetlink that a tunnel needs, spoken synchronously over a
//! `NETLINK_ROUTE` socket: link attributes (MTU, up/down, MAC, delete, query including the
//! TUN driver's queue counts), addresses and routes.
//!
//! Why not a crate: `rtnetlink` is async-only and its API broke three times in 2026
//! (see `shared/research/crates.md`), and `netlink-packet-route` brings eleven crates to
//! encode a dozen fixed-layout structs. The messages here are a header, one fixed struct and
//! a few type-length-value attributes; writing them is shorter than adapting to either
//! crate, keeps the device crate synchronous (it is used before any runtime exists), and
//! every request asks for an acknowledgement so no failure goes unnoticed. Extended acks
//! (`NETLINK_EXT_ACK`) are turned on so the kernel's own explanation reaches the operator.
//!
//! Layouts and constants are from `include/uapi/linux/{netlink,rtnetlink,if_link,if_addr,
//! if_tun}.h`; all integers are in host byte order, as netlink requires. This module is not
//! a general netlink library: it parses only the attributes it asks for.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use ipnet::IpNet;

// Message header flags and types (netlink.h).
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_MULTI: u16 = 0x02;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLM_F_CAPPED: u16 = 0x100;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLMSG_HDRLEN: usize = 16;

// rtnetlink.h message types.
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;

// if_link.h attributes.
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_CARRIER: u16 = 33;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
// if_link.h, enum IFLA_TUN_*.
const IFLA_TUN_OWNER: u16 = 1;
const IFLA_TUN_GROUP: u16 = 2;
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_VNET_HDR: u16 = 5;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_MULTI_QUEUE: u16 = 7;
const IFLA_TUN_NUM_QUEUES: u16 = 8;
const IFLA_TUN_NUM_DISABLED_QUEUES: u16 = 9;

// if_addr.h.
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;

// rtnetlink.h, routes.
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_PRIORITY: u16 = 6;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RTN_LOCAL: u8 = 2;

/// The TUN driver's view of a device, from `IFLA_INFO_DATA` of kind "tun".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunInfo {
    /// True for TAP (Ethernet), false for TUN (IP).
    pub tap: bool,
    /// Queues attached and enabled (for a single-queue device: 1 while it is open).
    pub queues: u32,
    /// Queues attached but disabled with `TUNSETQUEUE`.
    pub disabled_queues: u32,
    /// Created with `IFF_MULTI_QUEUE`.
    pub multi_queue: bool,
    /// Survives its last file descriptor (`TUNSETPERSIST`).
    pub persist: bool,
    /// Packets carry a virtio-net header (`IFF_VNET_HDR`).
    pub vnet_hdr: bool,
    /// Owning user, if one was set with `TUNSETOWNER`.
    pub owner: Option<u32>,
    /// Owning group, if one was set with `TUNSETGROUP`.
    pub group: Option<u32>,
}

/// What the kernel reports about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU in bytes.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (for TUN/TAP: at least one queue attached).
    pub carrier: bool,
    /// Hardware address, for links that have one (TAP, veth).
    pub mac: Option<[u8; 6]>,
    /// `IFLA_INFO_KIND` ("tun", "veth", "bridge", ...), if the driver reports one.
    pub kind: Option<String>,
    /// The TUN driver's details when `kind` is "tun".
    pub tun: Option<TunInfo>,
}

/// A netlink error answer: the errno and the kernel's extended-ack message, if any.
#[derive(Debug)]
pub struct NetlinkError {
    /// The positive errno.
    pub errno: i32,
    /// The kernel's explanation (`NLMSGERR_ATTR_MSG`), when it gave one.
    pub message: Option<String>,
}

impl std::fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let os = io::Error::from_raw_os_error(self.errno);
        match &self.message {
            Some(m) => write!(f, "{os} ({m})"),
            None => write!(f, "{os}"),
        }
    }
}

impl std::error::Error for NetlinkError {}

impl From<io::Error> for NetlinkError {
    fn from(e: io::Error) -> Self {
        NetlinkError {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            message: Some(e.to_string()),
        }
    }
}

impl From<NetlinkError> for io::Error {
    fn from(e: NetlinkError) -> Self {
        let kind = io::Error::from_raw_os_error(e.errno).kind();
        io::Error::new(kind, e)
    }
}

type NlResult<T> = Result<T, NetlinkError>;

/// One request under construction: a header placeholder, a fixed struct, attributes.
struct Request {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Request {
    fn new(msg_type: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence, set by the socket
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        Request {
            buf,
            nests: Vec::new(),
        }
    }

    /// `struct ifinfomsg`: family, pad, type, index, flags, change.
    fn ifinfomsg(mut self, index: u32, flags: u32, change: u32) -> Self {
        self.buf.push(libc::AF_UNSPEC as u8);
        self.buf.push(0);
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(index as i32).to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&change.to_ne_bytes());
        self
    }

    /// `struct ifaddrmsg`: family, prefix length, flags, scope, index.
    fn ifaddrmsg(mut self, family: u8, prefix: u8, flags: u8, index: u32) -> Self {
        self.buf
            .extend_from_slice(&[family, prefix, flags, RT_SCOPE_UNIVERSE]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self
    }

    /// `struct rtmsg`: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    fn rtmsg(mut self, family: u8, dst_len: u8, scope: u8) -> Self {
        self.buf.extend_from_slice(&[
            family,
            dst_len,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_STATIC,
            scope,
            RTN_UNICAST,
        ]);
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self
    }

    fn attr(mut self, ty: u16, data: &[u8]) -> Self {
        self.push_attr(ty, data);
        self
    }

    fn push_attr(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.align();
    }

    fn align(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        debug_assert!(self.nests.is_empty(), "unclosed nested attribute");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

fn ip_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn family(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

/// Iterates over the type-length-value attributes in `buf`, stopping at the first
/// malformed one (the kernel never sends one; a bound check is still cheaper than trust).
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff; // strip NLA_F_NESTED etc.
        if len < 4 || len > rest.len() {
            return None;
        }
        let data = &rest[4..len];
        let next = (len + 3) & !3;
        rest = rest.get(next..).unwrap_or(&[]);
        Some((ty, data))
    })
}

fn u32_of(data: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?))
}

fn str_of(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

fn ip_of(data: &[u8]) -> Option<IpAddr> {
    match data.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
        _ => None,
    }
}

/// A `NETLINK_ROUTE` socket in the calling thread's network namespace.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a route netlink socket with extended acknowledgements.
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2) call; the return value is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        // SAFETY: the option value points to a live c_int of the size passed. Failure is
        // harmless (older kernels): we only lose the kernel's explanatory text.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                NETLINK_EXT_ACK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(Netlink {
            fd,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends `req` and collects the payloads of the data messages the kernel answers with,
    /// until the acknowledgement (or `NLMSG_DONE` for dumps). Each payload starts with the
    /// message's fixed struct.
    fn transact(&mut self, req: Request) -> NlResult<Vec<(u16, Vec<u8>)>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = u16::from_ne_bytes([req.buf[6], req.buf[7]]) & NLM_F_DUMP == NLM_F_DUMP;
        let msg = req.finish(seq);
        // SAFETY: sockaddr_nl is plain data; all-zero is the kernel's address.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `kernel` outlive the call; lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error().into());
        }
        let mut out = Vec::new();
        loop {
            // SAFETY: the buffer is valid for writes of its full length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let mut rest = &self.buf[..n as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let ty = u16::from_ne_bytes([rest[4], rest[5]]);
                let flags = u16::from_ne_bytes([rest[6], rest[7]]);
                let mseq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(NetlinkError {
                        errno: libc::EPROTO,
                        message: Some("truncated netlink message from the kernel".into()),
                    });
                }
                let payload = &rest[NLMSG_HDRLEN..len];
                rest = rest.get((len + 3) & !3..).unwrap_or(&[]);
                if mseq != seq {
                    continue; // a late answer to an earlier request
                }
                match ty {
                    NLMSG_ERROR => return Self::ack(payload, flags).map(|()| out),
                    NLMSG_DONE => return Ok(out),
                    _ => {
                        out.push((ty, payload.to_vec()));
                        if !dump && flags & NLM_F_MULTI == 0 {
                            // A single answer (RTM_GETLINK by index) ends without an ack.
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    /// Interprets an `NLMSG_ERROR` payload: error 0 is the acknowledgement.
    fn ack(payload: &[u8], flags: u16) -> NlResult<()> {
        let code = payload
            .get(..4)
            .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
            .unwrap_or(-libc::EPROTO);
        if code == 0 {
            return Ok(());
        }
        let mut message = None;
        if flags & NLM_F_ACK_TLVS != 0 {
            // After the errno comes the offending request: only its header when capped.
            let orig_len = if flags & NLM_F_CAPPED != 0 {
                NLMSG_HDRLEN
            } else {
                payload
                    .get(4..8)
                    .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")) as usize)
                    .unwrap_or(NLMSG_HDRLEN)
            };
            if let Some(tlvs) = payload.get(4 + ((orig_len + 3) & !3)..) {
                message = attrs(tlvs)
                    .find(|(t, _)| *t == NLMSGERR_ATTR_MSG)
                    .map(|(_, d)| str_of(d));
            }
        }
        Err(NetlinkError {
            errno: -code,
            message,
        })
    }

    fn parse_link(payload: &[u8]) -> Option<LinkInfo> {
        if payload.len() < 16 {
            return None;
        }
        let index = i32::from_ne_bytes(payload[4..8].try_into().ok()?) as u32;
        let flags = u32::from_ne_bytes(payload[8..12].try_into().ok()?);
        let mut info = LinkInfo {
            index,
            name: String::new(),
            mtu: 0,
            up: flags & libc::IFF_UP as u32 != 0,
            carrier: false,
            mac: None,
            kind: None,
            tun: None,
        };
        for (ty, data) in attrs(&payload[16..]) {
            match ty {
                IFLA_IFNAME => info.name = str_of(data),
                IFLA_MTU => info.mtu = u32_of(data).unwrap_or(0),
                IFLA_CARRIER => info.carrier = data.first() == Some(&1),
                IFLA_ADDRESS => info.mac = data.try_into().ok(),
                IFLA_LINKINFO => {
                    for (ity, idata) in attrs(data) {
                        match ity {
                            IFLA_INFO_KIND => info.kind = Some(str_of(idata)),
                            IFLA_INFO_DATA => info.tun = Some(Self::parse_tun(idata)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if info.kind.as_deref() != Some("tun") {
            info.tun = None;
        }
        if let Some(tun) = info.tun.as_mut().filter(|t| !t.multi_queue) {
            // The driver reports queue counts only for multiqueue devices
            // (`tun_fill_info`); a single-queue device has carrier exactly while its one
            // queue is attached (`tun_attach` / `__tun_detach`).
            tun.queues = u32::from(info.carrier);
        }
        Some(info)
    }

    fn parse_tun(data: &[u8]) -> TunInfo {
        let mut t = TunInfo {
            tap: false,
            queues: 0,
            disabled_queues: 0,
            multi_queue: false,
            persist: false,
            vnet_hdr: false,
            owner: None,
            group: None,
        };
        let flag = |d: &[u8]| d.first().is_some_and(|&b| b != 0);
        for (ty, d) in attrs(data) {
            match ty {
                IFLA_TUN_TYPE => t.tap = d.first() == Some(&(libc::IFF_TAP as u8)),
                IFLA_TUN_NUM_QUEUES => t.queues = u32_of(d).unwrap_or(0),
                IFLA_TUN_NUM_DISABLED_QUEUES => t.disabled_queues = u32_of(d).unwrap_or(0),
                IFLA_TUN_MULTI_QUEUE => t.multi_queue = flag(d),
                IFLA_TUN_PERSIST => t.persist = flag(d),
                IFLA_TUN_VNET_HDR => t.vnet_hdr = flag(d),
                // The kernel reports "no owner" by leaving the attribute out.
                IFLA_TUN_OWNER => t.owner = u32_of(d),
                IFLA_TUN_GROUP => t.group = u32_of(d),
                _ => {}
            }
        }
        t
    }

    /// Looks a link up by name; `Ok(None)` when it does not exist.
    pub fn link_by_name(&mut self, name: &str) -> NlResult<Option<LinkInfo>> {
        let mut cname = name.as_bytes().to_vec();
        cname.push(0);
        let req = Request::new(RTM_GETLINK, 0)
            .ifinfomsg(0, 0, 0)
            .attr(IFLA_IFNAME, &cname);
        match self.transact(req) {
            Ok(msgs) => Ok(msgs
                .iter()
                .find(|(t, _)| *t == RTM_NEWLINK)
                .and_then(|(_, p)| Self::parse_link(p))),
            Err(e) if e.errno == libc::ENODEV => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Looks a link up by index; `Ok(None)` when it does not exist.
    pub fn link_by_index(&mut self, index: u32) -> NlResult<Option<LinkInfo>> {
        let req = Request::new(RTM_GETLINK, 0).ifinfomsg(index, 0, 0);
        match self.transact(req) {
            Ok(msgs) => Ok(msgs
                .iter()
                .find(|(t, _)| *t == RTM_NEWLINK)
                .and_then(|(_, p)| Self::parse_link(p))),
            Err(e) if e.errno == libc::ENODEV => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets or clears `IFF_UP`.
    pub fn set_up(&mut self, index: u32, up: bool) -> NlResult<()> {
        let flag = libc::IFF_UP as u32;
        let req =
            Request::new(RTM_NEWLINK, NLM_F_ACK).ifinfomsg(index, if up { flag } else { 0 }, flag);
        self.transact(req).map(drop)
    }

    /// Sets the MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> NlResult<()> {
        let req = Request::new(RTM_NEWLINK, NLM_F_ACK)
            .ifinfomsg(index, 0, 0)
            .attr(IFLA_MTU, &mtu.to_ne_bytes());
        self.transact(req).map(drop)
    }

    /// Sets the hardware address (TAP devices).
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> NlResult<()> {
        let req = Request::new(RTM_NEWLINK, NLM_F_ACK)
            .ifinfomsg(index, 0, 0)
            .attr(IFLA_ADDRESS, &mac);
        self.transact(req).map(drop)
    }

    /// Deletes the link.
    pub fn delete_link(&mut self, index: u32) -> NlResult<()> {
        let req = Request::new(RTM_DELLINK, NLM_F_ACK).ifinfomsg(index, 0, 0);
        self.transact(req).map(drop)
    }

    /// Adds (or refreshes) an address. IPv6 addresses skip duplicate address detection:
    /// an operator assigned them, and a tentative address cannot be bound for seconds.
    pub fn add_address(&mut self, index: u32, net: IpNet) -> NlResult<()> {
        self.address(
            RTM_NEWADDR,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            index,
            net,
        )
    }

    /// Removes an address.
    pub fn del_address(&mut self, index: u32, net: IpNet) -> NlResult<()> {
        self.address(RTM_DELADDR, NLM_F_ACK, index, net)
    }

    fn address(&mut self, ty: u16, flags: u16, index: u32, net: IpNet) -> NlResult<()> {
        let addr = net.addr();
        let bytes = ip_bytes(&addr);
        let v6 = addr.is_ipv6();
        let mut req = Request::new(ty, flags)
            .ifaddrmsg(
                family(&addr),
                net.prefix_len(),
                if v6 { IFA_F_NODAD as u8 } else { 0 },
                index,
            )
            .attr(IFA_LOCAL, &bytes)
            .attr(IFA_ADDRESS, &bytes);
        if v6 {
            req = req.attr(IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
        }
        self.transact(req).map(drop)
    }

    /// Lists the addresses of one link.
    pub fn addresses(&mut self, index: u32) -> NlResult<Vec<IpNet>> {
        let req = Request::new(RTM_GETADDR, NLM_F_DUMP).ifaddrmsg(0, 0, 0, 0);
        let mut out = Vec::new();
        for (ty, p) in self.transact(req)? {
            if ty != RTM_NEWADDR || p.len() < 8 {
                continue;
            }
            let prefix = p[1];
            let ifindex = u32::from_ne_bytes(p[4..8].try_into().expect("4 bytes"));
            if ifindex != index {
                continue;
            }
            let mut local = None;
            let mut address = None;
            for (aty, d) in attrs(&p[8..]) {
                match aty {
                    IFA_LOCAL => local = ip_of(d),
                    IFA_ADDRESS => address = ip_of(d),
                    _ => {}
                }
            }
            if let Some(net) = local.or(address).and_then(|ip| IpNet::new(ip, prefix).ok()) {
                out.push(net);
            }
        }
        Ok(out)
    }

    /// Adds a route to `dest` through the link, in the main table. An existing route to
    /// the same prefix (through any device) is an error: replacing it silently could steal
    /// traffic an operator routed elsewhere.
    pub fn add_route(&mut self, index: u32, dest: IpNet, metric: Option<u32>) -> NlResult<()> {
        self.route(
            RTM_NEWROUTE,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            index,
            dest,
            metric,
        )
    }

    /// Removes a route to `dest` through the link from the main table.
    pub fn del_route(&mut self, index: u32, dest: IpNet, metric: Option<u32>) -> NlResult<()> {
        self.route(RTM_DELROUTE, NLM_F_ACK, index, dest, metric)
    }

    fn route(
        &mut self,
        ty: u16,
        flags: u16,
        index: u32,
        dest: IpNet,
        metric: Option<u32>,
    ) -> NlResult<()> {
        let dest = dest.trunc();
        let addr = dest.addr();
        let mut req = Request::new(ty, flags)
            .rtmsg(family(&addr), dest.prefix_len(), RT_SCOPE_LINK)
            .attr(RTA_TABLE, &u32::from(RT_TABLE_MAIN).to_ne_bytes())
            .attr(RTA_OIF, &index.to_ne_bytes());
        if dest.prefix_len() > 0 {
            req = req.attr(RTA_DST, &ip_bytes(&addr));
        }
        if let Some(m) = metric {
            req = req.attr(RTA_PRIORITY, &m.to_ne_bytes());
        }
        self.transact(req).map(drop)
    }

    /// Whether the kernel would deliver a packet for `addr` locally (`ip route get` says
    /// "local"). An IPv6 address is assigned before its local route exists: addrconf adds
    /// the route from a work queue once the link is up, even with duplicate address
    /// detection off, and until then packets to it are dropped as not ours.
    pub fn is_local(&mut self, addr: IpAddr) -> NlResult<bool> {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let req = Request::new(RTM_GETROUTE, 0)
            .rtmsg(family(&addr), bits, 0)
            .attr(RTA_DST, &ip_bytes(&addr));
        match self.transact(req) {
            Ok(msgs) => Ok(msgs
                .iter()
                .any(|(t, p)| *t == RTM_NEWROUTE && p.get(7) == Some(&RTN_LOCAL))),
            Err(e) if e.errno == libc::ENETUNREACH || e.errno == libc::EHOSTUNREACH => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Lists the main-table routes whose output interface is `index`.
    pub fn routes(&mut self, index: u32) -> NlResult<Vec<IpNet>> {
        let mut out = Vec::new();
        for fam in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let req = Request::new(RTM_GETROUTE, NLM_F_DUMP).rtmsg(fam, 0, 0);
            for (ty, p) in self.transact(req)? {
                if ty != RTM_NEWROUTE || p.len() < 12 {
                    continue;
                }
                let (rfam, dst_len, mut table) = (p[0], p[1], u32::from(p[4]));
                let mut dst = None;
                let mut oif = None;
                for (aty, d) in attrs(&p[12..]) {
                    match aty {
                        RTA_DST => dst = ip_of(d),
                        RTA_OIF => oif = u32_of(d),
                        RTA_TABLE => table = u32_of(d).unwrap_or(table),
                        _ => {}
                    }
                }
                if oif != Some(index) || table != u32::from(RT_TABLE_MAIN) {
                    continue;
                }
                let dst = dst.unwrap_or(if rfam == libc::AF_INET as u8 {
                    IpAddr::from([0u8; 4])
                } else {
                    IpAddr::from([0u8; 16])
                });
                if let Ok(net) = IpNet::new(dst, dst_len) {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_parsed_back() {
        let req = Request::new(RTM_NEWLINK, NLM_F_ACK)
            .ifinfomsg(7, 0, 0)
            .attr(IFLA_IFNAME, b"ab\0")
            .attr(IFLA_MTU, &1420u32.to_ne_bytes());
        let msg = req.finish(9);
        assert_eq!(msg.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize,
            msg.len()
        );
        let found: Vec<_> = attrs(&msg[NLMSG_HDRLEN + 16..]).collect();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0], (IFLA_IFNAME, &b"ab\0"[..]));
        assert_eq!(u32_of(found[1].1), Some(1420));
    }

    #[test]
    fn malformed_attributes_stop_the_walk() {
        // A length below the header size, and one beyond the buffer, end iteration.
        assert_eq!(attrs(&[2, 0, 1, 0]).count(), 0);
        assert_eq!(attrs(&[40, 0, 1, 0, 1, 2]).count(), 0);
        assert_eq!(attrs(&[5, 0, 1, 0, 9]).count(), 1);
    }

    #[test]
    fn error_ack_carries_the_kernel_message() {
        // errno -EEXIST, then a capped copy of the request header, then the message TLV.
        let mut p = (-libc::EEXIST).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        p.extend_from_slice(&(4u16 + 6).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(b"taken\0\0\0");
        let e = Netlink::ack(&p, NLM_F_ACK_TLVS | NLM_F_CAPPED).unwrap_err();
        assert_eq!(e.errno, libc::EEXIST);
        assert_eq!(e.message.as_deref(), Some("taken"));
        assert!(Netlink::ack(&0i32.to_ne_bytes(), 0).is_ok());
    }
}
