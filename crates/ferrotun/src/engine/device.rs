//! The tunnel device as the engine uses it: its queue, and whether packets carry a
//! virtio-net header (TUN offloads on).
//!
//! With offloads on, the send path reads through a [`vnet::Reader`] (TCP super-segments
//! cut back into packets) and the UDP receive path writes through a [`vnet::Writer`]
//! (segments of one flow merged into super-segments); every other write goes through
//! [`Tun::write`], which puts an empty header in front. Without offloads packets are plain.

use std::io;

use ferrotun_device::AsyncQueue;
use ferrotun_device::vnet::Offloads;

/// The device queue and its offload state.
pub struct Tun {
    queue: AsyncQueue,
    offloads: Option<Offloads>,
}

impl Tun {
    /// A queue; `offloads` is `Some` when the device was opened with a virtio-net header.
    pub fn new(queue: AsyncQueue, offloads: Option<Offloads>) -> Tun {
        Tun { queue, offloads }
    }

    /// The queue.
    pub fn queue(&self) -> &AsyncQueue {
        &self.queue
    }

    /// The offloads on, if the device has a virtio-net header.
    pub fn offloads(&self) -> Option<Offloads> {
        self.offloads
    }

    /// Writes the packet at `buf[start..start + len]`. With a virtio-net header the
    /// [`ferrotun_device::VNET_HDR_LEN`] bytes before `start` are overwritten with an empty header, so
    /// `start` must leave room for it (every buffer here has 16 bytes of headroom).
    pub async fn write(&self, buf: &mut [u8], start: usize, len: usize) -> io::Result<()> {
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
                self.queue.send(&buf[h..start + len]).await?;
            }
            None => {
                self.queue.send(&buf[start..start + len]).await?;
            }
        }
        Ok(())
    }
}
