//! Counters: bytes and packets per peer, and every dropped packet by reason, plus
//! rate-limited warnings for drops caused by remote input.
//!
//! Counters are relaxed atomics written from the data path without locks; `show` and the
//! tests read them. A drop is always counted; it is logged at most once per
//! [`LOG_INTERVAL`] per reason, with the number suppressed since, so a flood of garbage
//! cannot flood the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::peer::Peer;

/// How often one drop reason may log a warning.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why a packet was dropped.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum DropReason {
            $(#[doc = $doc] $variant,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];

            /// The reason's name in logs and `show`.
            pub fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    Malformed => "malformed", "A datagram too short, too long or of an unknown type.";
    UnknownIndex => "unknown_index", "Data for a receiver index we do not have (stale or forged).";
    Decrypt => "decrypt", "Data that failed authentication.";
    Replay => "replay", "Data whose counter was seen before or is too old.";
    KeyExpired => "key_expired", "Data under a keypair that is too old to use.";
    SourceNotAllowed => "source_not_allowed", "A decrypted packet whose inner source is outside the peer's allowed_ips.";
    FlagsRefused => "flags_refused", "Data with payload flags this peer may not use (compression, Ethernet).";
    Decompress => "decompress", "A compressed payload that did not decompress within the MTU.";
    HandshakeInvalid => "handshake_invalid", "A handshake message that failed mac1 or decryption.";
    HandshakeUnknownPeer => "handshake_unknown_peer", "A handshake from a static key not in the peer list.";
    HandshakeReplay => "handshake_replay", "A handshake initiation with an old timestamp, or too soon after the last.";
    HandshakeRefused => "handshake_refused", "A handshake whose capabilities (compression, TAP) do not match ours.";
    Cookie => "cookie", "A handshake answered with a cookie because we are under load.";
    NoRoute => "no_route", "A packet from the device to an address no peer's allowed_ips covers.";
    NoEndpoint => "no_endpoint", "A packet for a peer whose address we do not know yet.";
    QueueFull => "queue_full", "A packet waiting for a handshake, dropped because the queue was full.";
    TooBig => "too_big", "A packet from the device, or a TAP frame from a peer, larger than the MTU.";
    SendFailed => "send_failed", "A datagram the socket would not send.";
    Hairpin => "hairpin", "A TAP frame for the peer it came from (a switch never sends it back).";
    TcpClosed => "tcp_closed", "A TCP connection closed for garbage, too many handshake messages, an oversized frame, no handshake in time, or eviction.";
    HandshakeFlood => "handshake_flood", "A handshake message dropped because the handshake queue was full, or because its TCP connection brought more than it may before one completed (the connection is then closed).";
}

const N: usize = DropReason::ALL.len();

/// Drop counters by reason, without logging (one per peer).
#[derive(Debug)]
pub struct DropCounts([AtomicU64; N]);

impl Default for DropCounts {
    fn default() -> Self {
        DropCounts(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl DropCounts {
    /// Counts one drop.
    pub fn count(&self, reason: DropReason) {
        self.0[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize].load(Ordering::Relaxed)
    }

    /// Every non-zero count, by reason name.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.get(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Drop counters by reason, with the log rate limit.
#[derive(Debug)]
pub struct Drops {
    counts: DropCounts,
    logged_at: [AtomicU64; N],
    suppressed: [AtomicU64; N],
    epoch: Instant,
}

impl Default for Drops {
    fn default() -> Self {
        Drops {
            counts: DropCounts::default(),
            logged_at: std::array::from_fn(|_| AtomicU64::new(0)),
            suppressed: std::array::from_fn(|_| AtomicU64::new(0)),
            epoch: Instant::now(),
        }
    }
}

impl Drops {
    /// Counts one drop.
    pub fn count(&self, reason: DropReason) {
        self.counts.count(reason);
    }

    /// Counts one drop and returns, at most once per [`LOG_INTERVAL`] per reason, how many
    /// drops of this reason went unlogged before it (the caller then logs).
    pub fn count_and_should_log(&self, reason: DropReason) -> Option<u64> {
        self.count(reason);
        let i = reason as usize;
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.logged_at[i].load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < LOG_INTERVAL.as_millis() as u64 {
            self.suppressed[i].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self.logged_at[i]
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed[i].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed[i].swap(0, Ordering::Relaxed))
    }

    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts.get(reason)
    }

    /// Every non-zero count, by reason name.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        self.counts.nonzero()
    }
}

/// Traffic counters of one peer.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Inner bytes received from the peer and written to the device.
    pub rx_bytes: AtomicU64,
    /// Packets received from the peer and written to the device.
    pub rx_packets: AtomicU64,
    /// Inner bytes read from the device and sent to the peer.
    pub tx_bytes: AtomicU64,
    /// Packets sent to the peer.
    pub tx_packets: AtomicU64,
    /// Payload bytes sent after compression (equal to `tx_bytes` when nothing
    /// compressed).
    pub tx_payload_bytes: AtomicU64,
    /// Payload bytes received before decompression.
    pub rx_payload_bytes: AtomicU64,
    /// Completed handshakes.
    pub handshakes: AtomicU64,
}

impl Traffic {
    /// Adds one received packet of `len` inner bytes that took `payload` bytes on the
    /// wire (less when it came compressed).
    pub fn received(&self, len: usize, payload: usize) {
        self.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.rx_payload_bytes
            .fetch_add(payload as u64, Ordering::Relaxed);
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds one sent packet of `len` inner bytes that took `payload` bytes on the wire.
    pub fn sent(&self, len: usize, payload: usize) {
        self.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.tx_payload_bytes
            .fetch_add(payload as u64, Ordering::Relaxed);
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
    }

    fn add(&self, sent: bool, t: &Tally) {
        let (bytes, payload, packets) = if sent {
            (&self.tx_bytes, &self.tx_payload_bytes, &self.tx_packets)
        } else {
            (&self.rx_bytes, &self.rx_payload_bytes, &self.rx_packets)
        };
        bytes.fetch_add(t.bytes, Ordering::Relaxed);
        payload.fetch_add(t.payload, Ordering::Relaxed);
        packets.fetch_add(t.packets, Ordering::Relaxed);
    }
}

/// One direction of one peer's [`Traffic`], counted over a batch of packets and added to
/// the peer's counters when the peer changes or the batch ends ([`Tally::flush`]): three
/// atomic additions per batch rather than per packet. (Per packet they were about 1 % of
/// the sending process's perf samples, each a locked instruction.)
pub struct Tally {
    sent: bool,
    peer: Option<Arc<Peer>>,
    packets: u64,
    bytes: u64,
    payload: u64,
}

impl Tally {
    /// A tally of packets sent to peers.
    pub fn sent() -> Tally {
        Tally::new(true)
    }

    /// A tally of packets received from peers.
    pub fn received() -> Tally {
        Tally::new(false)
    }

    fn new(sent: bool) -> Tally {
        Tally {
            sent,
            peer: None,
            packets: 0,
            bytes: 0,
            payload: 0,
        }
    }

    /// Counts one packet of `len` inner bytes that took `payload` bytes on the wire.
    pub fn count(&mut self, peer: &Arc<Peer>, len: usize, payload: usize) {
        if !self.peer.as_ref().is_some_and(|p| Arc::ptr_eq(p, peer)) {
            self.flush();
            self.peer = Some(Arc::clone(peer));
        }
        self.packets += 1;
        self.bytes += len as u64;
        self.payload += payload as u64;
    }

    /// Adds what was counted to the peer's counters, and lets the peer go. Dropping the
    /// tally does the same.
    pub fn flush(&mut self) {
        if let Some(peer) = self.peer.take() {
            peer.traffic.add(self.sent, self);
        }
        self.packets = 0;
        self.bytes = 0;
        self.payload = 0;
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrotun_device::Mode;
    use ferrotun_proto::{AeadBackend, Identity, PrivateKey};

    fn peer(slot: u32) -> Arc<Peer> {
        let identity = Arc::new(Identity::new(PrivateKey::from_bytes([0x11; 32])));
        let pc = crate::config::PeerConfig {
            name: format!("p{slot}"),
            public_key: PrivateKey::from_bytes([0x22 + slot as u8; 32]).public_key(),
            allowed_ips: Vec::new(),
            preshared_key: None,
            compress: false,
            keepalive: None,
            file: "peer.toml".into(),
        };
        crate::engine::make_peer(&identity, Mode::Tun, slot, &pc, AeadBackend::Ring).unwrap()
    }

    fn tx(p: &Peer) -> [u64; 3] {
        let t = &p.traffic;
        [&t.tx_packets, &t.tx_bytes, &t.tx_payload_bytes].map(|c| c.load(Ordering::Relaxed))
    }

    fn rx(p: &Peer) -> [u64; 3] {
        let t = &p.traffic;
        [&t.rx_packets, &t.rx_bytes, &t.rx_payload_bytes].map(|c| c.load(Ordering::Relaxed))
    }

    #[test]
    fn a_tally_adds_to_each_peer_what_it_counted_for_it() {
        let (a, b) = (peer(0), peer(1));
        let mut t = Tally::sent();
        t.count(&a, 100, 60);
        t.count(&a, 50, 50);
        assert_eq!(
            tx(&a),
            [0; 3],
            "nothing added before the peer changes or a flush"
        );
        t.count(&b, 10, 10);
        assert_eq!(tx(&a), [2, 150, 110]);
        t.count(&a, 1, 1);
        t.flush();
        t.flush();
        assert_eq!(tx(&a), [3, 151, 111]);
        assert_eq!(tx(&b), [1, 10, 10]);
        let mut r = Tally::received();
        r.count(&b, 7, 3);
        r.flush();
        assert_eq!(rx(&b), [1, 7, 3]);
        assert_eq!((rx(&a), tx(&b)), ([0; 3], [1, 10, 10]));
        let mut dropped = Tally::received();
        dropped.count(&a, 5, 5);
        drop(dropped);
        assert_eq!(rx(&a), [1, 5, 5], "a dropped tally adds what it counted");
        assert_eq!(
            Arc::strong_count(&a),
            1,
            "a flushed tally keeps no peer alive"
        );
    }

    #[test]
    fn every_drop_counts_but_logs_are_limited() {
        let d = Drops::default();
        assert_eq!(d.count_and_should_log(DropReason::Decrypt), Some(0));
        for _ in 0..99 {
            assert_eq!(d.count_and_should_log(DropReason::Decrypt), None);
        }
        assert_eq!(d.get(DropReason::Decrypt), 100);
        assert_eq!(
            d.count_and_should_log(DropReason::Replay),
            Some(0),
            "reasons are separate"
        );
        assert_eq!(d.nonzero(), vec![("decrypt", 100), ("replay", 1)]);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }
}
