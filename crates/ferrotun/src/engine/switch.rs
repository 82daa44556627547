//! The TAP-mode learning switch of a server with several peers.
//!
//! Its ports are the server's own TAP device ([`LOCAL`]) and every peer. It learns which
//! port each source MAC address sits behind, sends unicast frames to the port that owns
//! the destination, floods broadcast, multicast and unknown unicast to every port but the
//! one the frame came from, and never sends a frame back where it came from. Entries age
//! out after [`MAX_AGE`] without a frame from that address (IEEE 802.1D's default).
//!
//! Lookups (send path) and learning (receive path) share no lock: the table is read
//! through an `ArcSwap`; an entry's port and last-seen time are atomics, so a known
//! address only ever costs atomic stores; only a new address (or aging) copies the table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

/// A MAC address.
pub(crate) type Mac = [u8; 6];

/// The port of the server's own TAP device.
pub(crate) const LOCAL: u32 = u32::MAX;
/// How long an address stays learned without traffic (IEEE 802.1D's default aging time).
pub(crate) const MAX_AGE: Duration = Duration::from_secs(300);
/// At most this many addresses are learned; beyond it new ones are flooded to (a full
/// table must not let a peer grow our memory without bound).
pub(crate) const MAX_ENTRIES: usize = 8192;
/// Refresh an entry's last-seen time at most this often (nanoseconds), to keep the hot
/// path free of cache-line writes.
const REFRESH_NS: u64 = 1_000_000_000;

#[derive(Debug)]
struct Entry {
    port: AtomicU32,
    seen: AtomicU64,
}

/// The MAC table.
#[derive(Debug, Default)]
pub(crate) struct Switch {
    table: ArcSwap<HashMap<Mac, Arc<Entry>>>,
    write: Mutex<()>,
}

/// Whether a MAC is a group (broadcast or multicast) address.
pub(crate) fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

/// The destination and source MACs of an Ethernet frame.
pub(crate) fn macs(frame: &[u8]) -> Option<(Mac, Mac)> {
    let dst = frame.get(0..6)?.try_into().ok()?;
    let src = frame.get(6..12)?.try_into().ok()?;
    Some((dst, src))
}

impl Switch {
    /// Learns that `mac` sits behind `port`, at time `now` (any monotonic nanoseconds).
    pub(crate) fn learn(&self, mac: Mac, port: u32, now: u64) {
        if is_group(&mac) {
            return;
        }
        if let Some(e) = self.table.load().get(&mac) {
            if e.port.load(Ordering::Relaxed) != port {
                e.port.store(port, Ordering::Relaxed);
            }
            if now.saturating_sub(e.seen.load(Ordering::Relaxed)) > REFRESH_NS {
                e.seen.store(now, Ordering::Relaxed);
            }
            return;
        }
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.table.load_full();
        if current.contains_key(&mac) || current.len() >= MAX_ENTRIES {
            return;
        }
        let mut next = (*current).clone();
        next.insert(
            mac,
            Arc::new(Entry {
                port: AtomicU32::new(port),
                seen: AtomicU64::new(now),
            }),
        );
        self.table.store(Arc::new(next));
    }

    /// The port behind which `mac` was learned.
    pub(crate) fn lookup(&self, mac: &Mac) -> Option<u32> {
        self.table
            .load()
            .get(mac)
            .map(|e| e.port.load(Ordering::Relaxed))
    }

    /// Forgets addresses not seen since `now - MAX_AGE`, and every address behind a port
    /// for which `gone` says true (a removed peer). Returns how many were forgotten.
    pub(crate) fn age(&self, now: u64, gone: impl Fn(u32) -> bool) -> usize {
        let max = MAX_AGE.as_nanos() as u64;
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.table.load_full();
        let keep = |e: &Arc<Entry>| {
            now.saturating_sub(e.seen.load(Ordering::Relaxed)) <= max
                && !gone(e.port.load(Ordering::Relaxed))
        };
        if current.values().all(keep) {
            return 0;
        }
        let next: HashMap<Mac, Arc<Entry>> = current
            .iter()
            .filter(|(_, e)| keep(e))
            .map(|(k, e)| (*k, e.clone()))
            .collect();
        let n = current.len() - next.len();
        self.table.store(Arc::new(next));
        n
    }

    /// How many addresses are learned.
    pub(crate) fn len(&self) -> usize {
        self.table.load().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 0xa];
    const B: Mac = [2, 0, 0, 0, 0, 0xb];

    #[test]
    fn learns_moves_and_ages_out() {
        let s = Switch::default();
        assert_eq!(s.lookup(&A), None);
        s.learn(A, 1, 10);
        s.learn(B, LOCAL, 10);
        assert_eq!(s.lookup(&A), Some(1));
        assert_eq!(s.lookup(&B), Some(LOCAL));
        s.learn(A, 2, 20); // moved to another peer
        assert_eq!(s.lookup(&A), Some(2));
        let max = MAX_AGE.as_nanos() as u64;
        // B was seen at 10; A refreshed only if REFRESH_NS passed, so refresh it late.
        s.learn(A, 2, 10 + max);
        assert_eq!(s.age(11 + max, |_| false), 1, "B aged out");
        assert_eq!(s.lookup(&B), None);
        assert_eq!(s.lookup(&A), Some(2));
        assert_eq!(s.age(11 + max, |p| p == 2), 1, "A's port went away");
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn group_addresses_are_never_learned_and_the_table_is_bounded() {
        let s = Switch::default();
        s.learn([0xff; 6], 1, 0);
        s.learn([0x01, 0, 0x5e, 0, 0, 1], 1, 0);
        assert_eq!(s.len(), 0);
        assert!(is_group(&[0xff; 6]) && is_group(&[0x33, 0x33, 0, 0, 0, 1]) && !is_group(&A));
        for i in 0..(MAX_ENTRIES + 10) {
            let b = (i as u32).to_be_bytes();
            s.learn([2, 0, b[0], b[1], b[2], b[3]], 1, 0);
        }
        assert_eq!(s.len(), MAX_ENTRIES);
    }

    #[test]
    fn macs_of_a_frame() {
        let mut f = vec![0u8; 14];
        f[..6].copy_from_slice(&B);
        f[6..12].copy_from_slice(&A);
        assert_eq!(macs(&f), Some((B, A)));
        assert_eq!(macs(&f[..11]), None);
    }
}
