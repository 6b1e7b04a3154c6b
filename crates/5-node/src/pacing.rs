//! The packet loop's decisions without I/O (sans-IO, unit-tested): when to spin and when to
//! block ([`Pacer`]), and how long the receive ring went unattended ([`GapMeter`]).
//!
//! **Spin, then block** ([`PollMode::Adaptive`], the default). After an iteration that did
//! work (frames from the ring, transfer frames, commands) the loop keeps polling; once
//! `spin_us` have passed without work it blocks in poll(2) on the AF_PACKET socket and on the
//! [`crate::sys::Waker`] the side threads signal, until the next deadline (the instance's
//! `poll_timeout()`, the next status publication), at most [`MAX_SLEEP`]. It is woken by a
//! retired ring block (the kernel retires a block at most `tp_retire_blk_tov` =
//! [`crate::afpacket::RETIRE_MS`] ms after its first frame), by a command or transfer frame
//! queued for it, or by the deadline. So an idle node costs ~0 CPU, a loaded one never
//! sleeps, and a lone frame waits at most about one retire timeout plus a wake-up.
//!
//! Why 50 µs of spinning by default: the ring only shows *retired* blocks, so spinning does
//! not see a frame sooner than the retire timeout; it only saves the poll(2) round trip
//! (a few µs of system time, plus the scheduler's wake-up) between blocks that follow each
//! other closely, and on a shared 2-core machine every spun microsecond is taken from Open
//! vSwitch, iperf3 or the other node. 50 µs covers back-to-back blocks under load (a full
//! block is handed over at once) without burning more than 5% of a core at the slowest
//! steady wake-up rate (one retired block per millisecond).
//!
//! [`PollMode::Busy`] never blocks (one core at 100%, the lowest wake-up jitter).

use flowshift_control::status::{PollCounters, PollMax};
use flowshift_wire::Instant;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Longest single block in poll(2) (it also bounds how long a shutdown takes to be noticed).
pub const MAX_SLEEP: Duration = Duration::from_millis(100);

/// How the packet thread waits for work (`poll` in the configuration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollMode {
    /// Spin for `spin_us` after the last work, then block in poll(2) (default).
    #[default]
    Adaptive,
    /// Never block: poll the ring continuously (one core at 100%).
    Busy,
}

/// What the loop does after an iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Go round again at once.
    Spin,
    /// Block in poll(2) for at most this long (never zero).
    Sleep(Duration),
}

/// The spin-then-block decision (see the module documentation).
#[derive(Clone, Debug)]
pub struct Pacer {
    mode: PollMode,
    spin: Duration,
    max_sleep: Duration,
    last_work: Instant,
}

impl Pacer {
    /// A pacer in `mode` that spins `spin` after the last work and blocks at most
    /// `max_sleep` at a time; the loop counts as having worked at time zero.
    pub fn new(mode: PollMode, spin: Duration, max_sleep: Duration) -> Pacer {
        Pacer {
            mode,
            spin,
            max_sleep,
            last_work: Instant::ZERO,
        }
    }

    /// The decision after an iteration that started at `now` and handled `work` items;
    /// `deadline` is when the loop has something to do without any input (timers,
    /// publication).
    pub fn step(&mut self, now: Instant, work: usize, deadline: Instant) -> Step {
        if work > 0 {
            self.last_work = now;
            return Step::Spin;
        }
        if self.mode == PollMode::Busy || now.saturating_since(self.last_work) < self.spin {
            return Step::Spin;
        }
        let sleep = deadline.saturating_since(now).min(self.max_sleep);
        if sleep.is_zero() {
            Step::Spin
        } else {
            Step::Sleep(sleep)
        }
    }
}

/// Upper bounds (µs) of the poll-gap counters: `poll_gaps_over_<b>us` counts gaps above `b`.
pub const GAP_BOUNDS_US: [u64; 4] = [10, 100, 1000, 10_000];

/// How long the ring went unattended: the time from the end of one ring stage (frames read
/// and handed to the instance) to the start of the next, minus time blocked in poll(2) (while
/// blocked the kernel wakes the thread as soon as a block is ready, so that is not a stall).
/// What remains is the other work of an iteration: transfer frames imported, commands,
/// timers, the status publication.
#[derive(Clone, Debug, Default)]
pub struct GapMeter {
    since: Option<Instant>,
    slept: Duration,
    /// Gaps measured.
    pub gaps: u64,
    /// Gaps above each of [`GAP_BOUNDS_US`].
    pub over: [u64; GAP_BOUNDS_US.len()],
    /// Longest gap.
    pub max: Duration,
    /// Longest gap that ended while a migration was running on this node.
    pub max_migrating: Duration,
}

impl GapMeter {
    /// A ring stage ended at `now`.
    pub fn ring_done(&mut self, now: Instant) {
        self.since = Some(now);
        self.slept = Duration::ZERO;
    }

    /// The thread was blocked in poll(2) from `from` to `to`.
    pub fn slept(&mut self, from: Instant, to: Instant) {
        self.slept += to.saturating_since(from);
    }

    /// A ring stage starts at `now`: records the gap since the previous one (if any);
    /// `migrating`: a migration is running. Returns the gap.
    pub fn ring_start(&mut self, now: Instant, migrating: bool) -> Option<Duration> {
        let since = self.since.take()?;
        let gap = now.saturating_since(since).saturating_sub(self.slept);
        self.gaps += 1;
        let us = gap.as_micros();
        for (n, &b) in self.over.iter_mut().zip(&GAP_BOUNDS_US) {
            if us > u128::from(b) {
                *n += 1;
            }
        }
        self.max = self.max.max(gap);
        if migrating {
            self.max_migrating = self.max_migrating.max(gap);
        }
        Some(gap)
    }

    /// The gap counters and the high-water marks, as the status reports them.
    pub fn counters(&self) -> (PollCounters, PollMax) {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let [o10, o100, o1000, o10000] = self.over;
        (
            PollCounters {
                poll_gaps: self.gaps,
                poll_gaps_over_10us: o10,
                poll_gaps_over_100us: o100,
                poll_gaps_over_1000us: o1000,
                poll_gaps_over_10000us: o10000,
            },
            PollMax {
                max_poll_gap_us: us(self.max),
                max_poll_gap_migrating_us: us(self.max_migrating),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;
    fn at(us: u64) -> Instant {
        Instant::from_nanos(us * US)
    }

    fn adaptive(spin_us: u64) -> Pacer {
        Pacer::new(
            PollMode::Adaptive,
            Duration::from_micros(spin_us),
            MAX_SLEEP,
        )
    }

    #[test]
    fn spins_while_work_comes_then_blocks_after_the_spin_budget() {
        let mut p = adaptive(50);
        let far = at(1_000_000);
        assert_eq!(p.step(at(100), 3, far), Step::Spin);
        // Idle, but within 50 µs of the last work: keep spinning.
        assert_eq!(p.step(at(120), 0, far), Step::Spin);
        assert_eq!(p.step(at(149), 0, far), Step::Spin);
        // 50 µs without work: block, until the deadline at most MAX_SLEEP.
        assert_eq!(p.step(at(150), 0, far), Step::Sleep(MAX_SLEEP));
        // Work again restarts the budget.
        assert_eq!(p.step(at(200), 1, far), Step::Spin);
        assert_eq!(p.step(at(230), 0, far), Step::Spin);
        assert_eq!(p.step(at(260), 0, far), Step::Sleep(MAX_SLEEP));
    }

    #[test]
    fn the_sleep_ends_at_the_next_deadline_and_a_due_deadline_spins() {
        let mut p = adaptive(50);
        assert_eq!(p.step(at(0), 1, Instant::MAX), Step::Spin);
        // A timer 300 µs ahead bounds the sleep.
        assert_eq!(
            p.step(at(1000), 0, at(1300)),
            Step::Sleep(Duration::from_micros(300))
        );
        // A deadline due now (or past): go round to serve it instead of sleeping 0.
        assert_eq!(p.step(at(1300), 0, at(1300)), Step::Spin);
        assert_eq!(p.step(at(1400), 0, at(1300)), Step::Spin);
        // After a timeout with no work the budget is still spent: block again at once.
        assert_eq!(p.step(at(1500), 0, Instant::MAX), Step::Sleep(MAX_SLEEP));
    }

    #[test]
    fn a_zero_budget_blocks_at_once_and_busy_mode_never_blocks() {
        let mut p = adaptive(0);
        assert_eq!(p.step(at(10), 5, Instant::MAX), Step::Spin);
        assert_eq!(p.step(at(10), 0, Instant::MAX), Step::Sleep(MAX_SLEEP));
        let mut b = Pacer::new(PollMode::Busy, Duration::ZERO, MAX_SLEEP);
        for t in [0, 10, 1_000_000, 100_000_000] {
            assert_eq!(b.step(at(t), 0, Instant::MAX), Step::Spin);
        }
    }

    #[test]
    fn gaps_exclude_sleep_and_are_bucketed() {
        let mut g = GapMeter::default();
        // The first ring stage has nothing before it.
        assert_eq!(g.ring_start(at(0), false), None);
        g.ring_done(at(10));
        assert_eq!(g.ring_start(at(15), false), Some(Duration::from_micros(5)));
        // 2 ms between the stages of which 1.9 ms asleep: a 100 µs gap.
        g.ring_done(at(100));
        g.slept(at(150), at(2050));
        assert_eq!(
            g.ring_start(at(2100), true),
            Some(Duration::from_micros(100))
        );
        // A 3 ms stall while migrating.
        g.ring_done(at(3000));
        assert_eq!(
            g.ring_start(at(6000), true),
            Some(Duration::from_micros(3000))
        );
        // A 20 ms stall with no migration.
        g.ring_done(at(7000));
        g.ring_start(at(27_000), false);
        assert_eq!(g.gaps, 4);
        assert_eq!(g.over, [3, 2, 2, 1]);
        assert_eq!(g.max, Duration::from_millis(20));
        assert_eq!(g.max_migrating, Duration::from_millis(3));
        let (c, m) = g.counters();
        assert_eq!(m.max_poll_gap_us, 20_000);
        assert_eq!(m.max_poll_gap_migrating_us, 3000);
        assert_eq!(c.poll_gaps, 4);
        assert_eq!(c.poll_gaps_over_10us, 3);
        assert_eq!(c.poll_gaps_over_100us, 2);
        assert_eq!(c.poll_gaps_over_10000us, 1);
        // A ring stage without a preceding end (after start-up) measures nothing.
        assert_eq!(g.ring_start(at(30_000), false), None);
    }
}
