//! The UDP socket, batched: `recvmmsg` with UDP GRO on receive (through `quinn-udp`) and
//! `sendmsg` with UDP GSO (`UDP_SEGMENT`) on send, with a plain one-datagram path when
//! offloads are off or the kernel lacks them.
//!
//! A GSO send gathers its datagrams from where they were sealed, one `iovec` each, so
//! nothing is copied to make them contiguous; the kernel cuts the payload at the segment
//! size, not at the `iovec` boundaries.
//!
//! GSO is probed when the socket is set up; a send that fails with EIO or EINVAL (a driver
//! or kernel that advertises GSO but cannot do it: docs/architecture.md, "Linux
//! pitfalls", names Linux 7.0–7.1.4) turns segmentation off for the socket, and the batch
//! that failed is sent again one datagram at a time, so nothing is lost to the fallback.
//! Operators can turn offloads off entirely (`offload = false`).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use socket2::{MsgHdr, SockAddr, SockRef};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The largest UDP payload one GSO send may carry (the IP total length field is 16 bits).
const MAX_GSO_BYTES: usize = 65000;

/// A UDP socket with batched I/O where the kernel allows it.
pub(crate) struct UdpIo {
    sock: UdpSocket,
    state: Option<UdpSocketState>,
    v6: bool,
    /// Set when a GSO send failed in a way that says the path cannot segment.
    gso_failed: AtomicBool,
}

// libc's CMSG_* are `unsafe` only because the C macros are: given a length they do size
// arithmetic and touch no memory.
/// `CMSG_LEN(2)`: a control message header and the `u16` of `UDP_SEGMENT`.
// SAFETY: size arithmetic only.
const SEGMENT_CMSG_LEN: usize = unsafe { libc::CMSG_LEN(2) } as usize;
/// `CMSG_SPACE(2)`: the control buffer one `UDP_SEGMENT` message takes.
// SAFETY: size arithmetic only.
const SEGMENT_CMSG_SPACE: usize = unsafe { libc::CMSG_SPACE(2) } as usize;
/// Where a control message's data begins (`CMSG_LEN(0)`).
// SAFETY: size arithmetic only.
const CMSG_DATA_AT: usize = unsafe { libc::CMSG_LEN(0) } as usize;

/// The `UDP_SEGMENT` control message asking the kernel to cut the payload every `size`
/// bytes. The kernel's `struct cmsghdr` is a `size_t` length and two `int`s.
fn segment_cmsg(size: u16) -> [u8; SEGMENT_CMSG_SPACE] {
    let mut b = [0u8; SEGMENT_CMSG_SPACE];
    let w = size_of::<usize>();
    b[..w].copy_from_slice(&SEGMENT_CMSG_LEN.to_ne_bytes());
    b[w..w + 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    b[w + 4..w + 8].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
    b[CMSG_DATA_AT..CMSG_DATA_AT + 2].copy_from_slice(&size.to_ne_bytes());
    b
}

impl UdpIo {
    /// Wraps a bound socket; with `offload`, GSO and GRO are used when supported. Must run
    /// inside a tokio runtime.
    pub(crate) fn new(sock: std::net::UdpSocket, offload: bool) -> io::Result<UdpIo> {
        sock.set_nonblocking(true)?;
        let v6 = sock.local_addr()?.is_ipv6();
        let state = if offload {
            Some(UdpSocketState::new(UdpSockRef::from(&sock))?)
        } else {
            None
        };
        Ok(UdpIo {
            sock: UdpSocket::from_std(sock)?,
            state,
            v6,
            gso_failed: AtomicBool::new(false),
        })
    }

    /// The local address.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// How many datagrams one send may carry (1 without GSO).
    pub(crate) fn max_segments(&self) -> usize {
        if self.gso_failed.load(Ordering::Relaxed) {
            return 1;
        }
        self.state.as_ref().map_or(1, |s| s.max_gso_segments())
    }

    /// How many datagrams one received buffer may hold (1 without GRO).
    pub(crate) fn gro_segments(&self) -> usize {
        self.state.as_ref().map_or(1, |s| s.gro_segments())
    }

    /// The most datagrams of `size` bytes one send may carry.
    pub(crate) fn segments_for(&self, size: usize) -> usize {
        self.max_segments().min(MAX_GSO_BYTES / size.max(1)).max(1)
    }

    fn wire_addr(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) if self.v6 => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            a => a,
        }
    }

    /// Sends one datagram to `dest`.
    pub(crate) async fn send(&self, dest: SocketAddr, contents: &[u8]) -> io::Result<()> {
        let destination = self.wire_addr(dest);
        let Some(state) = &self.state else {
            self.sock.send_to(contents, destination).await?;
            return Ok(());
        };
        let t = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: None,
            src_ip: None,
        };
        self.sock
            .async_io(Interest::WRITABLE, || {
                state.try_send(UdpSockRef::from(&self.sock), &t)
            })
            .await
    }

    /// Sends `datagrams` to `dest` in one system call with UDP GSO: all but the last must
    /// be `segment` bytes long, the last may be shorter. With one datagram, or when GSO
    /// failed before, they go one at a time.
    pub(crate) async fn send_segments(
        &self,
        dest: SocketAddr,
        datagrams: &[IoSlice<'_>],
        segment: usize,
    ) -> io::Result<()> {
        let segment = u16::try_from(segment).ok().filter(|_| datagrams.len() > 1);
        let Some(size) = segment.filter(|_| self.max_segments() > 1) else {
            return self.send_each(dest, datagrams).await;
        };
        let addr = SockAddr::from(self.wire_addr(dest));
        let cmsg = segment_cmsg(size);
        let r = self
            .sock
            .async_io(Interest::WRITABLE, || {
                let msg = MsgHdr::new()
                    .with_addr(&addr)
                    .with_buffers(datagrams)
                    .with_control(&cmsg);
                SockRef::from(&self.sock).sendmsg(&msg, 0).map(drop)
            })
            .await;
        match r {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                tracing::warn!(
                    "UDP segmentation offload failed ({e}); sending without it from now on"
                );
                self.gso_failed.store(true, Ordering::Relaxed);
                self.send_each(dest, datagrams).await
            }
            r => r,
        }
    }

    async fn send_each(&self, dest: SocketAddr, datagrams: &[IoSlice<'_>]) -> io::Result<()> {
        for d in datagrams {
            self.send(dest, d).await?;
        }
        Ok(())
    }

    /// Receives up to `bufs.len()` buffers of datagrams; `metas[i]` says how many bytes
    /// `bufs[i]` holds, from whom, and the stride between coalesced datagrams.
    pub(crate) async fn recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        metas: &mut [RecvMeta],
    ) -> io::Result<usize> {
        match &self.state {
            Some(state) => {
                self.sock
                    .async_io(Interest::READABLE, || {
                        state.recv(UdpSockRef::from(&self.sock), bufs, metas)
                    })
                    .await
            }
            None => {
                let (n, addr) = self.sock.recv_from(&mut bufs[0]).await?;
                let mut meta = RecvMeta::default();
                meta.addr = addr;
                meta.len = n;
                meta.stride = n;
                metas[0] = meta;
                Ok(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::*;

    /// Runs `test` on a current-thread runtime in a new namespace whose loopback is up.
    fn in_namespace<F: Future<Output = ()>>(tag: &str, test: impl FnOnce() -> F + Send) {
        let ns = ferrotun_lab::Netns::new(tag).expect("create a namespace (run as root)");
        ns.ip(["link", "set", "lo", "up"]).unwrap();
        ns.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(test())
        })
        .unwrap();
    }

    /// A sender with offloads and a plain receiver, on loopback; call inside a runtime.
    fn pair() -> (UdpIo, std::net::UdpSocket) {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tx = UdpIo::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), true).unwrap();
        (tx, rx)
    }

    /// Three datagrams lying apart in memory, the last one shorter.
    fn scattered() -> Vec<Vec<u8>> {
        vec![vec![1u8; 300], vec![2u8; 300], vec![3u8; 120]]
    }

    fn received(rx: &std::net::UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 2048];
        (0..n)
            .map(|_| {
                let (len, _) = rx.recv_from(&mut buf).expect("a datagram");
                buf[..len].to_vec()
            })
            .collect()
    }

    #[test]
    fn scattered_datagrams_leave_in_one_gso_send_and_arrive_whole() {
        in_namespace("udpgso", || async {
            let (tx, rx) = pair();
            assert!(tx.max_segments() > 1, "this kernel has UDP GSO on loopback");
            let data = scattered();
            let slices: Vec<IoSlice> = data.iter().map(|d| IoSlice::new(d)).collect();
            let dest = rx.local_addr().unwrap();
            tx.send_segments(dest, &slices, 300).await.unwrap();
            assert_eq!(received(&rx, 3), data);
            assert!(tx.max_segments() > 1, "GSO is still on");
        });
    }

    #[test]
    fn a_failed_gso_send_goes_out_singly_and_turns_gso_off() {
        in_namespace("udpgsofail", || async {
            let (tx, rx) = pair();
            assert!(tx.max_segments() > 1, "this kernel has UDP GSO on loopback");
            // With SO_NO_CHECK every GSO send fails with EINVAL (the kernel does not
            // segment without checksums), as on a path that cannot segment.
            let on: libc::c_int = 1;
            // SAFETY: a valid socket, and a pointer and length that describe `on`.
            let rc = unsafe {
                libc::setsockopt(
                    tx.sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_NO_CHECK,
                    (&on as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            let data = scattered();
            let slices: Vec<IoSlice> = data.iter().map(|d| IoSlice::new(d)).collect();
            let dest = rx.local_addr().unwrap();
            tx.send_segments(dest, &slices, 300).await.unwrap();
            assert_eq!(received(&rx, 3), data, "every datagram, in order");
            assert_eq!(tx.max_segments(), 1, "GSO is off for this socket");
            tx.send_segments(dest, &slices, 300).await.unwrap();
            assert_eq!(received(&rx, 3), data);
        });
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn the_segment_message_has_the_kernel_layout() {
        // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; }, data at 16.
        let b = segment_cmsg(1452);
        assert_eq!(b.len(), 24);
        assert_eq!(u64::from_ne_bytes(b[..8].try_into().unwrap()), 18);
        assert_eq!(
            i32::from_ne_bytes(b[8..12].try_into().unwrap()),
            libc::SOL_UDP
        );
        assert_eq!(i32::from_ne_bytes(b[12..16].try_into().unwrap()), 103);
        assert_eq!(u16::from_ne_bytes(b[16..18].try_into().unwrap()), 1452);
    }
}
