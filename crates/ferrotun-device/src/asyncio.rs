//! Packet I/O on a TUN/TAP queue from tokio: the descriptor is made non-blocking and
//! registered with the reactor through [`tokio::io::unix::AsyncFd`].
//!
//! All methods take `&self`, so one task may read while another writes on the same queue
//! (share it in an `Arc`). Buffers are the caller's; nothing here allocates per packet.

use std::io::{self, IoSlice};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::tun::Queue;

/// A [`Queue`] driven by tokio.
#[derive(Debug)]
pub struct AsyncQueue {
    inner: AsyncFd<Queue>,
}

impl AsyncQueue {
    pub(crate) fn new(queue: Queue) -> io::Result<Self> {
        queue.set_nonblocking(true)?;
        // SAFETY: a `Queue` owns its descriptor (an `OwnedFd` that is never replaced or
        // closed before the queue drops), so the descriptor stays valid and the same for
        // the whole life of the `AsyncFd`.
        let inner = unsafe {
            AsyncFd::register_with_interest(queue, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(AsyncQueue { inner })
    }

    /// The underlying queue.
    pub fn get_ref(&self) -> &Queue {
        self.inner.get_ref()
    }

    /// Deregisters from the reactor and returns the (still non-blocking) queue.
    pub fn into_inner(self) -> Queue {
        self.inner.into_inner()
    }

    /// Waits for one packet and reads it into `buf`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .async_io(Interest::READABLE, |q| q.recv(buf))
            .await
    }

    /// Reads one packet if the queue has one, without waiting. An empty queue is
    /// `WouldBlock`, and the reactor learns of it, so the next [`recv`](Self::recv) waits
    /// for the device rather than trying a read that would fail the same way.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.try_io(Interest::READABLE, |q| q.recv(buf))
    }

    /// Waits for at least one packet, then reads as many as are ready, up to `bufs.len()`,
    /// each into `bufs[i][offset..]` with its length in `lens[i]`. Returns the count.
    pub async fn recv_batch<B: AsMut<[u8]>>(
        &self,
        bufs: &mut [B],
        offset: usize,
        lens: &mut [usize],
    ) -> io::Result<usize> {
        let max = bufs.len().min(lens.len());
        loop {
            let mut ready = self.inner.readable().await?;
            match ready.try_io(|q| q.get_ref().recv_batch(&mut *bufs, offset, &mut *lens)) {
                Ok(Ok(n)) => {
                    // Fewer than asked means the last read found the queue empty: say so
                    // to the reactor, or the next call would try a read that fails alike.
                    if n < max {
                        ready.clear_ready();
                    }
                    return Ok(n);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes one packet, waiting if the kernel pushes back.
    pub async fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.inner
            .async_io(Interest::WRITABLE, |q| q.send(packet))
            .await
    }

    /// Writes one packet given in parts ([`Queue::send_vectored`]), waiting if the kernel
    /// pushes back.
    pub async fn send_vectored(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        self.inner
            .async_io(Interest::WRITABLE, |q| q.send_vectored(parts))
            .await
    }

    /// Writes every `bufs[i][offset..]`, waiting whenever the kernel pushes back. Returns
    /// the first error other than `WouldBlock`, with the packets before it written.
    pub async fn send_batch<B: AsRef<[u8]>>(&self, bufs: &[B], offset: usize) -> io::Result<()> {
        let mut done = 0;
        while done < bufs.len() {
            done += self
                .inner
                .async_io(Interest::WRITABLE, |q| q.send_batch(&bufs[done..], offset))
                .await?;
        }
        Ok(())
    }
}
