//! The anti-replay window for transport counters.
//!
//! Responsible for deciding whether a received counter is new: an RFC 6479 style bitmap of
//! 8192 bits held as a ring of 128 `u64` blocks, the same size as the Linux kernel's
//! WireGuard (`COUNTER_BITS_TOTAL = 8192` in `drivers/net/wireguard/messages.h`). One block
//! is always being recycled, so the usable window is 8192 − 64 = 8128 counters behind the
//! highest one seen. Counters at or above `REJECT_AFTER_MESSAGES` (whitepaper §6.1) are
//! refused. Not responsible for locking (the owner, [`crate::transport::Keypair`], wraps
//! it in a mutex used only by the receive direction) or for authentication: callers
//! [`check`](ReplayWindow::check) before decrypting and [`update`](ReplayWindow::update)
//! only after the AEAD accepted the packet.

/// `REJECT_AFTER_MESSAGES = 2^64 − 2^13 − 1` (whitepaper §6.1): no counter at or above this
/// is ever accepted or used.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Total bits in the bitmap (RFC 6479 §2, sized like the Linux kernel's WireGuard).
pub const WINDOW_BITS: u64 = 8192;
const BLOCK_BITS: u64 = u64::BITS as u64;
const BLOCKS: usize = (WINDOW_BITS / BLOCK_BITS) as usize;
/// How far behind the highest counter a packet may arrive: one block is always being
/// recycled (RFC 6479 §2), so 8192 − 64.
pub const WINDOW_SIZE: u64 = WINDOW_BITS - BLOCK_BITS;

/// An RFC 6479 anti-replay window.
#[derive(Clone)]
pub struct ReplayWindow {
    blocks: [u64; BLOCKS],
    /// Highest counter accepted plus one; 0 while nothing was accepted.
    next: u64,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// An empty window.
    pub const fn new() -> Self {
        ReplayWindow {
            blocks: [0; BLOCKS],
            next: 0,
        }
    }

    /// Whether `counter` would be accepted now (no change). Cheap; call it before the AEAD.
    #[inline]
    pub fn check(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if counter >= self.next {
            return true;
        }
        if self.next - 1 - counter > WINDOW_SIZE {
            return false;
        }
        let block = self.blocks[Self::block_index(counter)];
        block & Self::bit(counter) == 0
    }

    /// Marks `counter` as received; `false` (and no change) if it is a replay, too old or
    /// at the limit. Call it only after the packet authenticated.
    #[inline]
    pub fn update(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter >= self.next {
            // Clear the blocks the window slides over (at most all of them).
            let current = if self.next == 0 {
                None
            } else {
                Some((self.next - 1) / BLOCK_BITS)
            };
            let target = counter / BLOCK_BITS;
            match current {
                Some(cur) if target - cur < BLOCKS as u64 => {
                    for b in cur + 1..=target {
                        self.blocks[(b % BLOCKS as u64) as usize] = 0;
                    }
                }
                Some(cur) if target == cur => {}
                _ => self.blocks = [0; BLOCKS],
            }
            self.next = counter + 1;
        }
        self.blocks[Self::block_index(counter)] |= Self::bit(counter);
        true
    }

    /// The highest counter accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    #[inline]
    fn block_index(counter: u64) -> usize {
        ((counter / BLOCK_BITS) % BLOCKS as u64) as usize
    }

    #[inline]
    fn bit(counter: u64) -> u64 {
        1 << (counter % BLOCK_BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order() {
        let mut w = ReplayWindow::new();
        for c in 0..20_000 {
            assert!(w.update(c), "{c}");
        }
        assert_eq!(w.highest(), Some(19_999));
    }

    #[test]
    fn out_of_order_within_window() {
        let mut w = ReplayWindow::new();
        assert!(w.update(10_000));
        assert!(w.update(10_000 - WINDOW_SIZE)); // the oldest still inside
        for c in (10_000 - 100..10_000).rev() {
            assert!(w.update(c));
        }
        assert!(w.update(10_001));
        assert!(w.update(9_000));
    }

    #[test]
    fn duplicates_rejected() {
        let mut w = ReplayWindow::new();
        for c in [0, 5, 3, 64, 63, 8000] {
            assert!(w.update(c));
            assert!(!w.check(c));
            assert!(!w.update(c));
        }
        assert!(!w.update(0));
        assert!(!w.update(5));
    }

    #[test]
    fn too_old_rejected() {
        let mut w = ReplayWindow::new();
        assert!(w.update(100_000));
        assert!(!w.check(100_000 - WINDOW_SIZE - 1));
        assert!(!w.update(100_000 - WINDOW_SIZE - 1));
        assert!(!w.update(0));
        assert!(w.update(100_000 - WINDOW_SIZE));
    }

    #[test]
    fn far_jump_clears_everything() {
        let mut w = ReplayWindow::new();
        for c in 0..300 {
            assert!(w.update(c));
        }
        // Jump by far more than the window: stale bits must not make new counters look seen.
        let base = 1u64 << 40;
        assert!(w.update(base));
        for c in base - WINDOW_SIZE..base {
            assert!(w.check(c), "{c}");
        }
        // A jump of exactly one ring (the stale block aliases the new one).
        let mut w = ReplayWindow::new();
        assert!(w.update(5));
        assert!(w.update(5 + WINDOW_BITS));
        assert!(w.check(5 + WINDOW_BITS - 64));
        assert!(w.update(6 + WINDOW_BITS));
    }

    #[test]
    fn counter_at_the_limit() {
        let mut w = ReplayWindow::new();
        assert!(w.update(REJECT_AFTER_MESSAGES - 1));
        assert!(!w.update(REJECT_AFTER_MESSAGES));
        assert!(!w.check(u64::MAX));
        assert!(!w.update(u64::MAX));
        assert!(!w.update(REJECT_AFTER_MESSAGES - 1));
        assert!(w.update(REJECT_AFTER_MESSAGES - 2));
    }

    proptest! {
        /// Against a model: a set of seen counters and the highest one.
        #[test]
        fn matches_model(ops in proptest::collection::vec((0u64..40_000, any::<bool>()), 1..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = BTreeSet::new();
            let mut highest: Option<u64> = None;
            let mut base = 0u64;
            for (delta, jump) in ops {
                // Mostly near the top, sometimes far ahead.
                let c = if jump { base + delta } else { base.saturating_sub(delta % 9000) + delta % 64 };
                base = base.max(c);
                let expect = !seen.contains(&c) && highest.is_none_or(|h| c > h || h - c <= WINDOW_SIZE);
                prop_assert_eq!(w.check(c), expect);
                prop_assert_eq!(w.update(c), expect);
                if expect {
                    seen.insert(c);
                    highest = Some(highest.map_or(c, |h| h.max(c)));
                }
            }
        }
    }
}
