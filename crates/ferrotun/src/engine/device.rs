//! The tunnel device as the engine uses it: its queues, and whether packets carry a
//! virtio-net header (TUN offloads on).
//!
//! With several queues (`[interface] queues`), queue `i` is read by send task `i` and
//! written by UDP receive task `i`; the kernel keeps each flow on one queue, so no flow's
//! packets are handled by two tasks at once.
//!
//! With offloads on, the send path reads through a [`vnet::Reader`] (TCP super-segments
//! cut back into packets) and the UDP receive path writes through a [`vnet::Writer`]
//! (segments of one flow merged into super-segments); every other write goes through
//! [`Tun::write`], which puts an empty header in front. Without offloads packets are plain.

use std::io;

use ferrotun_device::AsyncQueue;
use ferrotun_device::vnet::Offloads;

/// The device queues and their offload state.
pub(crate) struct Tun {
    queues: Vec<AsyncQueue>,
    offloads: Option<Offloads>,
}

impl Tun {
    /// At least one queue; `offloads` is `Some` when the device was opened with a
    /// virtio-net header.
    pub(crate) fn new(queues: Vec<AsyncQueue>, offloads: Option<Offloads>) -> Tun {
        assert!(!queues.is_empty(), "a device has at least one queue");
        Tun { queues, offloads }
    }

    /// How many queues there are.
    pub(crate) fn count(&self) -> usize {
        self.queues.len()
    }

    /// Queue `i` (modulo the number of queues).
    pub(crate) fn queue(&self, i: usize) -> &AsyncQueue {
        &self.queues[i % self.queues.len()]
    }

    /// The offloads on, if the device has a virtio-net header.
    pub(crate) fn offloads(&self) -> Option<Offloads> {
        self.offloads
    }

    /// Writes the decrypted packet at `buf[start..start + len]` through queue `queue`.
    /// With a virtio-net header the [`ferrotun_device::VNET_HDR_LEN`] bytes before `start`
    /// are overwritten with an empty header, so `start` must leave room for it (every
    /// buffer here has 16 bytes of headroom).
    pub(crate) async fn write(
        &self,
        queue: usize,
        buf: &mut [u8],
        start: usize,
        len: usize,
    ) -> io::Result<()> {
        let q = self.queue(queue);
        match self.offloads {
            Some(_) => {
                let h = start
                    .checked_sub(ferrotun_device::VNET_HDR_LEN)
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "no headroom for the virtio-net header",
                        )
                    })?;
                buf[h..start].fill(0);
                q.send(&buf[h..start + len]).await?;
            }
            None => {
                q.send(&buf[start..start + len]).await?;
            }
        }
        Ok(())
    }
}
