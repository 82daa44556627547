//! Counters: bytes and packets per peer, and every dropped packet by reason, plus
//! rate-limited warnings for drops caused by remote input.
//!
//! Counters are relaxed atomics written from the data path without locks; `show` and the
//! tests read them. A drop is always counted; it is logged at most once per
//! [`LOG_INTERVAL`] per reason, with the number suppressed since, so a flood of garbage
//! cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often one drop reason may log a warning.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(5);

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why a packet was dropped.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub(crate) enum DropReason {
            $(#[doc = $doc] $variant,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub(crate) const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];

            /// The reason's name in logs and `show`.
            pub(crate) fn name(self) -> &'static str {
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
pub(crate) struct DropCounts([AtomicU64; N]);

impl Default for DropCounts {
    fn default() -> Self {
        DropCounts(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl DropCounts {
    /// Counts one drop.
    pub(crate) fn count(&self, reason: DropReason) {
        self.0[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The count for one reason.
    pub(crate) fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize].load(Ordering::Relaxed)
    }

    /// Every non-zero count, by reason name.
    pub(crate) fn nonzero(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.get(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Drop counters by reason, with the log rate limit.
#[derive(Debug)]
pub(crate) struct Drops {
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
    pub(crate) fn count(&self, reason: DropReason) {
        self.counts.count(reason);
    }

    /// Counts one drop and returns, at most once per [`LOG_INTERVAL`] per reason, how many
    /// drops of this reason went unlogged before it (the caller then logs).
    pub(crate) fn count_and_should_log(&self, reason: DropReason) -> Option<u64> {
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
    #[cfg(test)]
    fn get(&self, reason: DropReason) -> u64 {
        self.counts.get(reason)
    }

    /// Every non-zero count, by reason name.
    pub(crate) fn nonzero(&self) -> Vec<(&'static str, u64)> {
        self.counts.nonzero()
    }
}

/// Traffic counters of one peer.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    /// Inner bytes received from the peer and written to the device.
    pub(crate) rx_bytes: AtomicU64,
    /// Packets received from the peer and written to the device.
    pub(crate) rx_packets: AtomicU64,
    /// Inner bytes read from the device and sent to the peer.
    pub(crate) tx_bytes: AtomicU64,
    /// Packets sent to the peer.
    pub(crate) tx_packets: AtomicU64,
    /// Payload bytes sent after compression (equal to `tx_bytes` when nothing
    /// compressed).
    pub(crate) tx_payload_bytes: AtomicU64,
    /// Payload bytes received before decompression.
    pub(crate) rx_payload_bytes: AtomicU64,
    /// Completed handshakes.
    pub(crate) handshakes: AtomicU64,
}

impl Traffic {
    /// Adds `(packets, bytes, payload)` sent.
    pub(crate) fn add_sent(&self, (packets, bytes, payload): (u64, u64, u64)) {
        self.tx_packets.fetch_add(packets, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.tx_payload_bytes.fetch_add(payload, Ordering::Relaxed);
    }

    /// Adds `(packets, bytes, payload)` received.
    pub(crate) fn add_received(&self, (packets, bytes, payload): (u64, u64, u64)) {
        self.rx_packets.fetch_add(packets, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.rx_payload_bytes.fetch_add(payload, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
