//! Turns: how long one data path may keep the thread while its input stays ready.
//!
//! Both directions of the tunnel run as tasks on the same threads. tokio makes a task
//! yield only when its budget (128 ready I/O operations) is spent, and a data path spends
//! one or two per batch of up to 64 KiB: a bulk transfer in one direction could hold the
//! thread for milliseconds while the other direction (its ACKs, any interactive packet)
//! waited. So a path whose input stays ready gives the thread up after a [`TURN`] of work.
//! The price is smaller batches for the other direction (more system calls per GB); the
//! measurements that chose the length are in docs/benchmarks.md ("Turns").

use std::time::{Duration, Instant};

/// How long a data path may keep the thread while its input stays ready.
pub(crate) const TURN: Duration = Duration::from_micros(500);

/// The time a data path has held the thread since it last gave it up.
#[derive(Debug)]
pub(crate) struct Turn {
    since: Instant,
}

impl Turn {
    /// A turn that starts at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Turn { since: now }
    }

    /// Whether the turn has lasted [`TURN`] by `now`; if so the next one starts at `now`.
    fn is_over(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.since) < TURN {
            return false;
        }
        self.since = now;
        true
    }

    /// Called after each batch: yields to the other tasks when the turn is over.
    pub(crate) async fn next_batch(&mut self) {
        if self.is_over(Instant::now()) {
            tokio::task::yield_now().await;
        }
    }

    /// Awaits the path's next input. If it had to wait, the task gave the thread up
    /// meanwhile, so a new turn starts when the input arrives: a path woken after a pause
    /// does not yield after its first batch, which would cost a trip through the reactor.
    pub(crate) async fn wait<F: Future>(&mut self, input: F) -> F::Output {
        let mut input = std::pin::pin!(input);
        let mut waited = false;
        let out = std::future::poll_fn(|cx| {
            let r = input.as_mut().poll(cx);
            waited |= r.is_pending();
            r
        })
        .await;
        if waited {
            self.since = Instant::now();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_ends_after_its_length_and_the_next_starts_there() {
        let start = Instant::now();
        let mut turn = Turn::new(start);
        assert!(!turn.is_over(start));
        assert!(!turn.is_over(start + TURN - Duration::from_micros(1)));
        assert!(turn.is_over(start + TURN));
        // The next turn is measured from the moment the last one ended.
        let second = start + TURN;
        assert!(!turn.is_over(second + TURN / 2));
        assert!(turn.is_over(second + TURN + Duration::from_micros(3)));
        // A clock reading older than the turn's start (another task's `now`) is no overrun.
        assert!(!turn.is_over(start));
    }

    #[test]
    fn a_turn_restarts_when_the_input_had_to_be_waited_for() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let old = Instant::now() - 4 * TURN;
        let mut turn = Turn::new(old);
        // Input that is ready at once: the task kept the thread, the turn goes on.
        assert_eq!(rt.block_on(turn.wait(std::future::ready(7))), 7);
        assert_eq!(turn.since, old);
        // Input that was pending once: the thread was given up, a new turn began.
        let before = Instant::now();
        rt.block_on(turn.wait(tokio::task::yield_now()));
        assert!(turn.since >= before, "the turn did not restart");
        assert!(!turn.is_over(turn.since + TURN / 2));
    }
}
