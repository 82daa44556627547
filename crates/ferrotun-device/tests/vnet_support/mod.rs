//! Shared by the offload tests and the offload benchmark.

#![allow(dead_code)]

pub mod forwarder;
pub mod packets;

use std::net::UdpSocket;
use std::os::fd::AsRawFd;

/// Asks the kernel to cut every send into datagrams of `size` bytes (UDP GSO, `UDP_SEGMENT`
/// in `include/uapi/linux/udp.h`).
pub fn set_udp_segment(socket: &UdpSocket, size: u16) {
    let v = libc::c_int::from(size);
    // SAFETY: the descriptor is an open UDP socket; the option value is a c_int and its
    // size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
}
