//! Shared by the offload tests and the offload benchmark.

#![allow(dead_code)]

pub mod forwarder;
pub mod packets;

use std::io::IoSlice;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use ferrotun_device::VNET_HDR_LEN;
use ferrotun_device::vnet::{MAX_SEGMENTS, Writer, WriterStats};

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

/// Runs `packets` (IP packets or Ethernet frames) through a writer and returns the frames
/// it would write, taken both ways: whole (`next_frame`, which must leave the caller's
/// bytes as they were) and in parts (`next_frame_parts`, by a clone of the writer, whose
/// parts, joined, must be the same frames).
pub fn coalesce(writer: &mut Writer, packets: &[Vec<u8>], offset: usize) -> Vec<Vec<u8>> {
    let bufs = || -> Vec<Vec<u8>> {
        packets
            .iter()
            .map(|p| {
                let mut b = vec![0x5au8; offset];
                b.extend_from_slice(p);
                b
            })
            .collect()
    };
    let lens: Vec<usize> = packets.iter().map(|p| p.len()).collect();
    let mut twin = writer.clone();
    let start = writer.stats();
    let mut whole = bufs();
    writer.prepare(&mut whole, offset, &lens).unwrap();
    let mut frames = Vec::new();
    while let Some(f) = writer.next_frame(&mut whole, offset) {
        frames.push(f.to_vec());
    }
    for (b, p) in whole.iter().zip(packets) {
        assert_eq!(&b[offset..], &p[..], "the writer changed a caller's packet");
        if offset >= VNET_HDR_LEN {
            assert!(b[..offset - VNET_HDR_LEN].iter().all(|&x| x == 0x5a));
        }
    }
    let end = writer.stats();
    let mut in_parts = bufs();
    twin.prepare(&mut in_parts, offset, &lens).unwrap();
    let mut joined = Vec::new();
    loop {
        let mut parts = [IoSlice::new(&[]); MAX_SEGMENTS];
        let Some(f) = twin.next_frame_parts(&mut in_parts, offset, &mut parts) else {
            break;
        };
        assert!(!f.is_empty() && f.iter().all(|p| !p.is_empty()));
        joined.push(
            f.iter()
                .flat_map(|p| p.iter().copied())
                .collect::<Vec<u8>>(),
        );
    }
    assert_eq!(joined, frames, "frames in parts differ from whole frames");
    let counts = |a: WriterStats, b: WriterStats| {
        [
            b.packets - a.packets,
            b.frames - a.frames,
            b.merged_frames - a.merged_frames,
            b.merged_packets - a.merged_packets,
            b.bad_checksums - a.bad_checksums,
        ]
    };
    assert_eq!(
        counts(start, twin.stats()),
        counts(start, end),
        "both ways count alike"
    );
    frames
}
