//! The UDP socket, batched: `recvmmsg` with UDP GRO on receive and `sendmsg` with UDP GSO
//! (`UDP_SEGMENT`) on send, through `quinn-udp`, with a plain one-datagram path when
//! offloads are off or the kernel lacks them.
//!
//! GSO is probed when the socket is set up; a send that fails with EIO or EINVAL (a driver
//! or kernel that advertises GSO but cannot do it; DESIGN.md notes Linux 7.0–7.1.4) turns
//! segmentation off for the socket, and the batch that failed is sent again one datagram at
//! a time, so nothing is lost to the fallback. Operators can turn offloads off entirely
//! (`offload = false`).

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The largest UDP payload one GSO send may carry (the IP total length field is 16 bits).
const MAX_GSO_BYTES: usize = 65000;

/// A UDP socket with batched I/O where the kernel allows it.
pub struct UdpIo {
    sock: UdpSocket,
    state: Option<UdpSocketState>,
    v6: bool,
}

impl UdpIo {
    /// Wraps a bound socket; with `offload`, GSO and GRO are used when supported. Must run
    /// inside a tokio runtime.
    pub fn new(sock: std::net::UdpSocket, offload: bool) -> io::Result<UdpIo> {
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
        })
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// How many datagrams one send may carry (1 without GSO).
    pub fn max_segments(&self) -> usize {
        self.state.as_ref().map_or(1, |s| s.max_gso_segments())
    }

    /// How many datagrams one received buffer may hold (1 without GRO).
    pub fn gro_segments(&self) -> usize {
        self.state.as_ref().map_or(1, |s| s.gro_segments())
    }

    /// The most datagrams of `size` bytes one send may carry.
    pub fn segments_for(&self, size: usize) -> usize {
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

    /// Sends `contents` to `dest`: one datagram, or with `segment` several of that size
    /// (the last may be shorter) in one system call.
    pub async fn send(
        &self,
        dest: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let destination = self.wire_addr(dest);
        let Some(state) = &self.state else {
            self.sock.send_to(contents, destination).await?;
            return Ok(());
        };
        let segment_size = segment.filter(|s| *s < contents.len());
        let t = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        let r = self
            .sock
            .async_io(Interest::WRITABLE, || {
                state.try_send(UdpSockRef::from(&self.sock), &t)
            })
            .await;
        match (r, segment_size) {
            (Err(e), Some(size)) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                // quinn-udp has turned GSO off for this socket; send this batch singly.
                tracing::warn!(
                    "UDP segmentation offload failed ({e}); sending without it from now on"
                );
                for chunk in contents.chunks(size) {
                    let one = Transmit {
                        destination,
                        ecn: None,
                        contents: chunk,
                        segment_size: None,
                        src_ip: None,
                    };
                    self.sock
                        .async_io(Interest::WRITABLE, || {
                            state.try_send(UdpSockRef::from(&self.sock), &one)
                        })
                        .await?;
                }
                Ok(())
            }
            (r, _) => r,
        }
    }

    /// Receives up to `bufs.len()` buffers of datagrams; `metas[i]` says how many bytes
    /// `bufs[i]` holds, from whom, and the stride between coalesced datagrams.
    pub async fn recv(
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
