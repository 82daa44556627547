//! Creating and attaching TUN/TAP devices through `/dev/net/tun`, and reading and writing
//! packets on their queues.
//!
//! Each open of the clone device plus `TUNSETIFF` attaches one queue (one file descriptor)
//! to an interface; with `IFF_MULTI_QUEUE` several queues share one interface and the
//! kernel spreads flows across them, which is what the multi-core data path builds on.
//! Packets never carry the 4-byte packet-information prefix (`IFF_NO_PI` always). A
//! non-persistent interface disappears when its last queue is closed; that is the kernel's
//! behaviour and the reason a crashed daemon leaves no interface behind.
//!
//! This module does not configure addresses or routes: see [`crate::Link`].

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{DeviceError, Result};
use crate::link::Link;
use crate::name;
use crate::netlink::{LinkInfo, Netlink};

/// The clone device every TUN/TAP queue is opened from.
pub const CLONE_DEVICE: &str = "/dev/net/tun";

/// The size of the virtio-net header that precedes every packet when
/// [`DeviceBuilder::vnet_hdr`] is on (`struct virtio_net_hdr`, the kernel's default
/// `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

/// Layer of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Layer 3: each packet is an IPv4 or IPv6 packet.
    Tun,
    /// Layer 2: each packet is an Ethernet frame.
    Tap,
}

impl Mode {
    fn flag(self) -> libc::c_short {
        match self {
            Mode::Tun => libc::IFF_TUN as libc::c_short,
            Mode::Tap => libc::IFF_TAP as libc::c_short,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Tun => "tun",
            Mode::Tap => "tap",
        })
    }
}

/// Offload flags for [`Queue::set_offload`] (`TUN_F_*` in `include/uapi/linux/if_tun.h`).
/// They only make sense on a device opened with [`DeviceBuilder::vnet_hdr`].
pub mod offload {
    /// The kernel may hand us packets with partial checksums.
    pub const CSUM: u32 = libc::TUN_F_CSUM;
    /// TCP segmentation offload for IPv4: we may read TCP super-segments.
    pub const TSO4: u32 = libc::TUN_F_TSO4;
    /// TCP segmentation offload for IPv6.
    pub const TSO6: u32 = libc::TUN_F_TSO6;
    /// TSO with ECN bits.
    pub const TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
    /// UDP segmentation offload for IPv4 (kernel 6.2 and later).
    pub const USO4: u32 = 0x20;
    /// UDP segmentation offload for IPv6 (kernel 6.2 and later).
    pub const USO6: u32 = 0x40;
}

/// `struct ifreq` as used by the TUN ioctls: a name and the flags member of the union,
/// padded to the kernel's 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

impl IfReq {
    fn new(name: &str, flags: libc::c_short) -> Self {
        IfReq {
            name: name::to_ifname(name),
            flags,
            _pad: [0; 22],
        }
    }
}

/// Options for creating or attaching a TUN/TAP device.
#[derive(Debug, Clone)]
pub struct DeviceBuilder {
    name: String,
    mode: Mode,
    queues: usize,
    multi_queue: bool,
    vnet_hdr: bool,
    owner: Option<u32>,
    group: Option<u32>,
    persist: bool,
    exclusive: bool,
    clone_device: PathBuf,
}

impl DeviceBuilder {
    /// A device called `name` (exact, or a pattern such as `ftun%d`) in `mode`, one queue,
    /// not persistent, exclusive.
    pub fn new(name: impl Into<String>, mode: Mode) -> Self {
        DeviceBuilder {
            name: name.into(),
            mode,
            queues: 1,
            multi_queue: false,
            vnet_hdr: false,
            owner: None,
            group: None,
            persist: false,
            exclusive: true,
            clone_device: PathBuf::from(CLONE_DEVICE),
        }
    }

    /// Opens `n` queues (file descriptors) of one interface. More than one implies
    /// [`multi_queue`](Self::multi_queue).
    pub fn queues(mut self, n: usize) -> Self {
        self.queues = n;
        self
    }

    /// Creates the interface with `IFF_MULTI_QUEUE` even with one queue, so that it matches
    /// a persistent multiqueue device or can be given more queues later.
    pub fn multi_queue(mut self, on: bool) -> Self {
        self.multi_queue = on;
        self
    }

    /// Prefixes every packet with a virtio-net header (`IFF_VNET_HDR`), the basis of
    /// segmentation and checksum offloads ([`Queue::set_offload`]).
    pub fn vnet_hdr(mut self, on: bool) -> Self {
        self.vnet_hdr = on;
        self
    }

    /// Lets user `uid` attach to the device without `CAP_NET_ADMIN` (`TUNSETOWNER`).
    pub fn owner(mut self, uid: u32) -> Self {
        self.owner = Some(uid);
        self
    }

    /// Lets group `gid` attach to the device without `CAP_NET_ADMIN` (`TUNSETGROUP`).
    pub fn group(mut self, gid: u32) -> Self {
        self.group = Some(gid);
        self
    }

    /// Keeps the interface after the last queue closes (`TUNSETPERSIST`), so that an
    /// operator can create it as root and hand it to an unprivileged process.
    pub fn persist(mut self, on: bool) -> Self {
        self.persist = on;
        self
    }

    /// Refuses (the default) to attach to a device that already has queues attached: the
    /// kernel would let a second process join a multiqueue device and share its traffic.
    /// An existing persistent device with no queues is attached to either way.
    pub fn exclusive(mut self, on: bool) -> Self {
        self.exclusive = on;
        self
    }

    /// Opens this clone device instead of `/dev/net/tun`.
    pub fn clone_device(mut self, path: impl Into<PathBuf>) -> Self {
        self.clone_device = path.into();
        self
    }

    /// Creates the interface (or attaches to an existing persistent one) and opens its
    /// queues. On error nothing is left behind: queues already opened are closed, which
    /// removes an interface this call created.
    pub fn open(self) -> Result<Device> {
        let pattern = name::validate(&self.name)?;
        if self.queues == 0 {
            return Err(DeviceError::Queue {
                name: self.name.clone(),
                queue: 0,
                op: "open",
                source: io::Error::new(io::ErrorKind::InvalidInput, "at least one queue"),
            });
        }
        let multi = self.multi_queue || self.queues > 1;
        if self.exclusive
            && !pattern
            && let Some(info) = query(&self.name)?
        {
            check_attachable(&info, self.mode, multi)?;
        }
        let mut flags = self.mode.flag() | libc::IFF_NO_PI as libc::c_short;
        if multi {
            flags |= libc::IFF_MULTI_QUEUE as libc::c_short;
        }
        if self.vnet_hdr {
            flags |= libc::IFF_VNET_HDR as libc::c_short;
        }

        let (first, real) = attach(&self.clone_device, &self.name, flags, 0)?;
        let name: Arc<str> = Arc::from(real.as_str());
        let mut queues = vec![Queue::new(first, name.clone(), 0, &self)];
        for i in 1..self.queues {
            let (fd, _) = attach(&self.clone_device, &real, flags, i)?;
            queues.push(Queue::new(fd, name.clone(), i, &self));
        }
        if self.exclusive && multi {
            // Two processes may have passed the check above at the same moment; after
            // attaching, any queue beyond ours belongs to someone else.
            if let Some(tun) = query(&real)?.and_then(|i| i.tun) {
                let attached = tun.queues + tun.disabled_queues;
                if attached as usize > queues.len() {
                    return Err(DeviceError::InUse {
                        name: real,
                        detail: format!(
                            "another process attached queues at the same time ({attached} attached, {} ours)",
                            queues.len()
                        ),
                    });
                }
            }
        }
        let q0 = &queues[0];
        if let Some(uid) = self.owner {
            q0.ioctl_value(libc::TUNSETOWNER, uid as libc::c_ulong, "set owner of")?;
        }
        if let Some(gid) = self.group {
            q0.ioctl_value(libc::TUNSETGROUP, gid as libc::c_ulong, "set group of")?;
        }
        if self.persist {
            q0.set_persist(true)?;
        }
        let link = Link::by_name(&real)?;
        Ok(Device {
            link,
            mode: self.mode,
            queues,
        })
    }
}

fn query(name: &str) -> Result<Option<LinkInfo>> {
    Netlink::open()
        .map_err(|e| DeviceError::io("query", name, e))?
        .link_by_name(name)
        .map_err(|e| DeviceError::Netlink {
            op: "query",
            name: name.to_owned(),
            source: e.into(),
        })
}

/// Decides whether an existing interface may be attached to.
fn check_attachable(info: &LinkInfo, mode: Mode, multi: bool) -> Result<()> {
    let in_use = |detail: String| {
        Err(DeviceError::InUse {
            name: info.name.clone(),
            detail,
        })
    };
    let Some(tun) = &info.tun else {
        let kind = info.kind.as_deref().unwrap_or("non-virtual");
        return in_use(format!(
            "the name belongs to a {kind} interface, not a TUN/TAP device"
        ));
    };
    let existing = if tun.tap { Mode::Tap } else { Mode::Tun };
    if existing != mode {
        return in_use(format!("it exists as a {existing} device, not {mode}"));
    }
    let attached = tun.queues + tun.disabled_queues;
    if attached > 0 {
        return in_use(format!(
            "another process has {attached} queue(s) of it open (stop that process, or pick another name)"
        ));
    }
    if tun.multi_queue != multi {
        return in_use(format!(
            "it exists as a persistent device {} IFF_MULTI_QUEUE; delete it (`ip link del {}`) or match its setting",
            if tun.multi_queue { "with" } else { "without" },
            info.name
        ));
    }
    Ok(())
}

/// Opens the clone device and attaches one queue; returns it and the interface's name.
fn attach(
    clone: &Path,
    name: &str,
    flags: libc::c_short,
    queue: usize,
) -> Result<(OwnedFd, String)> {
    let path = clone.display().to_string();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(clone)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                DeviceError::NoTunDevice { path: path.clone() }
            }
            Some(libc::EACCES) | Some(libc::EPERM) => {
                DeviceError::TunDeviceDenied { path: path.clone() }
            }
            _ => DeviceError::io("open", &path, e),
        })?;
    let fd = OwnedFd::from(file);
    let mut req = IfReq::new(name, flags);
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a properly sized and
    // aligned one that lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        let op = if queue == 0 {
            "create"
        } else {
            "attach a queue to"
        };
        return Err(match err.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => DeviceError::NotPermitted {
                op,
                name: name.to_owned(),
            },
            Some(libc::EBUSY) => DeviceError::InUse {
                name: name.to_owned(),
                detail: "another process has it open".into(),
            },
            Some(libc::EINVAL) => match query(name) {
                // The kernel says EINVAL when the name is taken by another kind of link,
                // when TUN/TAP or multiqueue settings differ from an existing device.
                Ok(Some(info)) => match check_attachable(&info, mode_of(flags), multi_of(flags)) {
                    Err(e) => e,
                    Ok(()) => DeviceError::io(op, name, err),
                },
                _ => DeviceError::io(op, name, err),
            },
            _ if queue > 0 => DeviceError::Queue {
                name: name.to_owned(),
                queue,
                op: "attach",
                source: err,
            },
            _ => DeviceError::io(op, name, err),
        });
    }
    Ok((fd, name::from_ifname(&req.name)))
}

fn mode_of(flags: libc::c_short) -> Mode {
    if flags & libc::IFF_TAP as libc::c_short != 0 {
        Mode::Tap
    } else {
        Mode::Tun
    }
}

fn multi_of(flags: libc::c_short) -> bool {
    flags & libc::IFF_MULTI_QUEUE as libc::c_short != 0
}

/// A TUN/TAP interface and the queues this process holds on it.
#[derive(Debug)]
pub struct Device {
    link: Link,
    mode: Mode,
    queues: Vec<Queue>,
}

impl Device {
    /// The interface name the kernel gave (a pattern is resolved).
    pub fn name(&self) -> &str {
        self.link.name()
    }

    /// The interface index.
    pub fn index(&self) -> u32 {
        self.link.index()
    }

    /// TUN or TAP.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A handle to configure the link (MTU, addresses, routes, up).
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The queues, in the order they were attached.
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// Takes the queues out, for handing them to workers. The interface lives as long as
    /// any of them (or forever, if persistent).
    pub fn into_queues(self) -> Vec<Queue> {
        self.queues
    }

    /// Turns persistence on or off.
    pub fn set_persist(&self, on: bool) -> Result<()> {
        self.queues[0].set_persist(on)
    }
}

/// One queue (file descriptor) of a TUN/TAP interface. Reads return one packet (a TUN IP
/// packet or a TAP Ethernet frame, preceded by a virtio-net header when the device has
/// one); writes take one. `Queue` is `Sync`: one thread may read while another writes.
#[derive(Debug)]
pub struct Queue {
    fd: OwnedFd,
    name: Arc<str>,
    index: usize,
    mode: Mode,
    vnet_hdr: bool,
    nonblocking: AtomicBool,
}

impl Queue {
    fn new(fd: OwnedFd, name: Arc<str>, index: usize, b: &DeviceBuilder) -> Self {
        Queue {
            fd,
            name,
            index,
            mode: b.mode,
            vnet_hdr: b.vnet_hdr,
            nonblocking: AtomicBool::new(false),
        }
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This queue's position among the queues opened together.
    pub fn index(&self) -> usize {
        self.index
    }

    /// TUN or TAP.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether packets carry a virtio-net header of [`VNET_HDR_LEN`] bytes.
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    fn ioctl_value(&self, req: libc::Ioctl, value: libc::c_ulong, op: &'static str) -> Result<()> {
        // SAFETY: these TUN ioctls take their argument by value, not as a pointer.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), req, value) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) => DeviceError::NotPermitted {
                    op,
                    name: self.name.to_string(),
                },
                _ => DeviceError::io(op, &self.name, e),
            });
        }
        Ok(())
    }

    /// Turns persistence of the interface on or off.
    pub fn set_persist(&self, on: bool) -> Result<()> {
        self.ioctl_value(
            libc::TUNSETPERSIST,
            on as libc::c_ulong,
            "set persistence of",
        )
    }

    /// Enables or disables offloads (see [`offload`]); needs a vnet header.
    pub fn set_offload(&self, flags: u32) -> Result<()> {
        self.ioctl_value(
            libc::TUNSETOFFLOAD,
            flags as libc::c_ulong,
            "set offloads of",
        )
    }

    /// Attaches (`true`) or detaches (`false`) this queue from the interface's set of
    /// active queues (`TUNSETQUEUE`). A detached queue stays open but the kernel sends it
    /// no packets. Only for multiqueue devices.
    pub fn set_enabled(&self, enabled: bool) -> Result<()> {
        let flags = if enabled {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        let mut req = IfReq::new("", flags as libc::c_short);
        // SAFETY: TUNSETQUEUE reads a `struct ifreq`; `req` is one and outlives the call.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETQUEUE,
                &mut req as *mut IfReq,
            )
        };
        if rc < 0 {
            return Err(DeviceError::Queue {
                name: self.name.to_string(),
                queue: self.index,
                op: if enabled { "enable" } else { "disable" },
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Switches the descriptor between blocking and non-blocking reads and writes.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no pointers involved.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            if fl < 0 {
                return Err(io::Error::last_os_error());
            }
            let fl = if on {
                fl | libc::O_NONBLOCK
            } else {
                fl & !libc::O_NONBLOCK
            };
            if libc::fcntl(fd, libc::F_SETFL, fl) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        self.nonblocking.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// Reads one packet into `buf` and returns its length. Blocks unless the queue is
    /// non-blocking, in which case an empty queue is `WouldBlock`. A packet larger than
    /// `buf` is truncated by the kernel, so size buffers for the MTU (plus 14 bytes of
    /// Ethernet header, and 4 per VLAN tag, in TAP mode).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Writes one packet (an IP packet for TUN, an Ethernet frame for TAP).
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `packet` is valid for reads of its length for the whole call.
            let n =
                unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Writes one packet (or frame) given in parts, with one `writev`: the kernel joins
    /// them. At most 1024 parts (`UIO_MAXIOV`).
    pub fn send_vectored(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        let count = libc::c_int::try_from(parts.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many parts"))?;
        loop {
            // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` (std documents it),
            // and every part is valid for reads of its length for the whole call.
            let n = unsafe { libc::writev(self.fd.as_raw_fd(), parts.as_ptr().cast(), count) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Reads up to `bufs.len()` packets, each into `bufs[i][offset..]` (the space before
    /// `offset` is left for the caller's headers), and their lengths into `lens[i]`. Returns
    /// how many were read. On a non-blocking queue it reads until the queue is empty (and
    /// returns `WouldBlock` if it was empty from the start); on a blocking queue it blocks
    /// for the first packet and returns it alone.
    pub fn recv_batch<B: AsMut<[u8]>>(
        &self,
        bufs: &mut [B],
        offset: usize,
        lens: &mut [usize],
    ) -> io::Result<usize> {
        let max = bufs.len().min(lens.len());
        let nonblocking = self.nonblocking.load(Ordering::Relaxed);
        let mut n = 0;
        while n < max {
            let buf = bufs[n].as_mut();
            let Some(dst) = buf.get_mut(offset..) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "offset beyond the buffer",
                ));
            };
            match self.recv(dst) {
                Ok(len) => {
                    lens[n] = len;
                    n += 1;
                    if !nonblocking {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Writes `bufs[i][offset..]` for each buffer in turn and returns how many were
    /// written. Stops at the first error: returns it if nothing was written, else the count
    /// so far (the caller retries the rest).
    pub fn send_batch<B: AsRef<[u8]>>(&self, bufs: &[B], offset: usize) -> io::Result<usize> {
        for (i, b) in bufs.iter().enumerate() {
            let pkt = b.as_ref().get(offset..).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "offset beyond the buffer")
            })?;
            if let Err(e) = self.send(pkt) {
                return if i == 0 { Err(e) } else { Ok(i) };
            }
        }
        Ok(bufs.len())
    }

    /// Wraps the queue for use with tokio (makes it non-blocking). Must be called from
    /// within a tokio runtime.
    pub fn into_async(self) -> io::Result<crate::AsyncQueue> {
        crate::AsyncQueue::new(self)
    }
}

impl AsFd for Queue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Queue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::TunInfo;

    fn tun_info(tap: bool, queues: u32, multi: bool) -> LinkInfo {
        LinkInfo {
            index: 5,
            name: "ft0".into(),
            mtu: 1500,
            up: false,
            carrier: queues > 0,
            mac: None,
            kind: Some("tun".into()),
            tun: Some(TunInfo {
                tap,
                queues,
                disabled_queues: 0,
                multi_queue: multi,
                persist: true,
                vnet_hdr: false,
                owner: None,
                group: None,
            }),
        }
    }

    #[test]
    fn attachable_only_when_idle_and_matching() {
        assert!(check_attachable(&tun_info(false, 0, false), Mode::Tun, false).is_ok());
        let busy = check_attachable(&tun_info(false, 1, true), Mode::Tun, true).unwrap_err();
        assert!(busy.to_string().contains("1 queue(s)"), "{busy}");
        let kind = check_attachable(&tun_info(true, 0, false), Mode::Tun, false).unwrap_err();
        assert!(kind.to_string().contains("as a tap device"), "{kind}");
        let mq = check_attachable(&tun_info(false, 0, false), Mode::Tun, true).unwrap_err();
        assert!(mq.to_string().contains("without IFF_MULTI_QUEUE"), "{mq}");
        let mut veth = tun_info(false, 0, false);
        veth.kind = Some("veth".into());
        veth.tun = None;
        let e = check_attachable(&veth, Mode::Tun, false).unwrap_err();
        assert!(e.to_string().contains("veth interface"), "{e}");
    }
}
