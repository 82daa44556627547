//! Deliveries: the packets of a receive batch on their way into the device, queued in
//! one place and written together.
//!
//! A packet either stays where it was decrypted, in the caller's receive buffer, or was
//! decompressed into this queue's arena. Either way it has [`HEADROOM`] bytes before it,
//! room for a virtio-net header. [`Deliveries::flush`] writes them in the order they were
//! queued, so a compressed packet cannot overtake an uncompressed one sent before it: in
//! one [`vnet::Writer`] batch (merged into super-segments where possible) when the device
//! has offloads, else one by one, completing partial checksums itself.

use std::sync::atomic::Ordering;

use ferrotun_device::vnet;
use ferrotun_proto::wire::DATA_HEADER_LEN;

use crate::stats::DropReason;

use super::super::shared::Shared;

/// Bytes before every packet written to the device: room for a virtio-net header.
pub(crate) const HEADROOM: usize = DATA_HEADER_LEN;

/// Bytes of decompressed packets one batch may hold before they are written out early: a
/// burst of small compressed messages must not grow a task's memory without bound.
const ARENA_LIMIT: usize = 256 * 1024;

/// Where a queued packet lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// In the caller's receive buffer with this index.
    Buffer(usize),
    /// In the arena.
    Arena,
}

#[derive(Debug, Clone, Copy)]
struct Delivery {
    place: Place,
    /// Where the packet starts (at least [`HEADROOM`] bytes in).
    start: usize,
    len: usize,
    /// Its TCP or UDP checksum is partial.
    partial: bool,
}

/// See the module docs. One per receiving task.
pub(crate) struct Deliveries {
    /// The device queue this task writes to.
    queue: usize,
    writer: Option<vnet::Writer>,
    queued: Vec<Delivery>,
    /// Decompressed packets, each behind [`HEADROOM`] bytes, in `arena[..used]`. The
    /// vector only grows (to its high-water mark), so decompressing into it never zeroes
    /// memory again.
    arena: Vec<u8>,
    used: usize,
    /// The most one decompressed packet takes in the arena, headroom included.
    slot: usize,
    lens: Vec<usize>,
    partial: Vec<bool>,
}

impl Deliveries {
    /// Deliveries into device queue `queue` of `shared`'s device.
    pub(crate) fn new(shared: &Shared, queue: usize) -> Deliveries {
        Deliveries {
            queue,
            writer: shared.device_writer(),
            queued: Vec::with_capacity(512),
            arena: Vec::new(),
            used: 0,
            slot: HEADROOM + shared.plain_len(),
            lens: Vec::with_capacity(512),
            partial: Vec::with_capacity(512),
        }
    }

    /// Whether the arena might not hold one more packet: the caller flushes first.
    pub(crate) fn arena_full(&self) -> bool {
        self.used + self.slot > ARENA_LIMIT.max(self.slot)
    }

    /// Decompresses `compressed` into the arena behind [`HEADROOM`] bytes; returns where
    /// the packet starts and its length. It stays there only if it is queued
    /// ([`Deliveries::push`] with [`Place::Arena`]) before the next decompression.
    pub(crate) fn decompress(
        &mut self,
        compressed: &[u8],
    ) -> Result<(usize, usize), ferrotun_proto::CompressError> {
        let start = self.used + HEADROOM;
        if self.arena.len() < self.used + self.slot {
            self.arena.resize(self.used + self.slot, 0);
        }
        let n =
            ferrotun_proto::decompress(compressed, &mut self.arena[start..self.used + self.slot])?;
        Ok((start, n))
    }

    /// The arena's bytes at `range` (a decompressed packet).
    pub(crate) fn arena(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.arena[range]
    }

    /// Queues the packet of `len` bytes at `start` in `place` for the device.
    pub(crate) fn push(&mut self, place: Place, start: usize, len: usize, partial: bool) {
        if place == Place::Arena {
            self.used = start + len;
        }
        self.queued.push(Delivery {
            place,
            start,
            len,
            partial,
        });
    }

    /// Writes the queued packets to the device in the order they were queued. `bufs` are
    /// the receive buffers that [`Place::Buffer`] indexes.
    pub(crate) async fn flush<B: AsMut<[u8]>>(&mut self, shared: &Shared, bufs: &mut [B]) {
        let partial = self.queued.iter().filter(|d| d.partial).count() as u64;
        if partial > 0 {
            shared
                .partial_checksums
                .fetch_add(partial, Ordering::Relaxed);
        }
        if self.queued.is_empty() {
            return;
        }
        if self.writer.is_some() {
            self.write_merged(shared, bufs).await;
        } else {
            self.write_each(shared, bufs).await;
            // Every partial one was completed.
            if partial > 0 {
                shared
                    .checksums_completed
                    .fetch_add(partial, Ordering::Relaxed);
            }
        }
        self.queued.clear();
        self.used = 0;
    }

    /// All queued packets in one [`vnet::Writer`] batch.
    async fn write_merged<B: AsMut<[u8]>>(&mut self, shared: &Shared, bufs: &mut [B]) {
        // Disjoint slices, one per packet, each with its headroom. Packets in buffers
        // were queued buffer by buffer, and within a buffer (or the arena) in the order
        // they lie, so one cursor per source walks forward.
        let mut rest = bufs.iter_mut().enumerate();
        let mut cur: Option<(usize, &mut [u8], usize)> = None;
        let mut arena: (&mut [u8], usize) = (&mut self.arena[..self.used], 0);
        let mut packets: Vec<&mut [u8]> = Vec::with_capacity(self.queued.len());
        self.lens.clear();
        self.partial.clear();
        for d in &self.queued {
            let (tail, taken) = match d.place {
                Place::Arena => (&mut arena.0, &mut arena.1),
                Place::Buffer(k) => {
                    while cur.as_ref().is_none_or(|c| c.0 != k) {
                        let (i, b) = rest.next().expect("packets in buffers in buffer order");
                        cur = Some((i, b.as_mut(), 0));
                    }
                    let (_, tail, taken) = cur.as_mut().expect("set just above");
                    (tail, taken)
                }
            };
            let (_, from) = std::mem::take(tail).split_at_mut(d.start - HEADROOM - *taken);
            let (pkt, after) = from.split_at_mut(HEADROOM + d.len);
            *taken = d.start + d.len;
            *tail = after;
            packets.push(pkt);
            self.lens.push(d.len);
            self.partial.push(d.partial);
        }
        let w = self.writer.as_mut().expect("write_merged has a writer");
        let q = shared.tun.queue(self.queue);
        if let Err(e) = w
            .send_batch_partial(q, &mut packets, HEADROOM, &self.lens, &self.partial)
            .await
        {
            shared.drop_packet(DropReason::SendFailed, || {
                format!("writing to the device: {e}")
            });
        }
    }

    /// Each queued packet on its own, partial checksums completed first (there is no
    /// kernel to hand them to without a virtio-net header).
    async fn write_each<B: AsMut<[u8]>>(&mut self, shared: &Shared, bufs: &mut [B]) {
        for d in &self.queued {
            let src = match d.place {
                Place::Arena => self.arena.as_mut_slice(),
                Place::Buffer(k) => bufs[k].as_mut(),
            };
            let buf = &mut src[d.start - HEADROOM..d.start + d.len];
            if d.partial {
                vnet::complete_checksum(&mut buf[HEADROOM..], vnet::Layer::Ip);
            }
            if let Err(e) = shared.tun.write(self.queue, buf, HEADROOM, d.len).await {
                shared.drop_packet(DropReason::SendFailed, || {
                    format!("writing to the device: {e}")
                });
            }
        }
    }
}
