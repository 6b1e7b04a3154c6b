//! Virtual time: the next scheduled thing, stepping to it, and advancing to a time or until a
//! condition holds.

use crate::{Harness, HarnessError, MAX_STEPS_AT_ONE_INSTANT, Observer};
use flowshift_migration::Ingress;
use flowshift_wire::Instant;
use std::time::Duration;

impl<O: Observer> Harness<O> {
    /// When the next scheduled thing happens (`Instant::MAX`: nothing scheduled).
    pub fn next_time(&self) -> Instant {
        [
            self.net.next_chain(),
            self.net.next_transfer(),
            self.barriers.keys().next().map(|k| k.0),
            Some(self.a.poll_timeout()),
            Some(self.b.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(Instant::MAX)
    }

    /// Runs the next scheduled thing (the clock moves to its time if that is later) and
    /// everything it causes; false if nothing is scheduled.
    pub fn step(&mut self) -> bool {
        let next = self.next_time();
        if next == Instant::MAX {
            return false;
        }
        self.now = self.now.max(next);
        let now = self.now;
        if self.net.next_chain() == Some(next) {
            if let Some((to, from, pkt)) = self.net.pop_chain() {
                self.inst(to)
                    .handle_packet(now, pkt, (), Ingress::Chain { from });
            }
        } else if self.net.next_transfer() == Some(next) {
            if let Some((to, from, bytes)) = self.net.pop_transfer()
                && self.inst(to).handle_transfer(now, from, &bytes).is_err()
            {
                self.stats.frames_malformed += 1;
            }
        } else if let Some(e) = self.barriers.first_entry().filter(|e| e.key().0 == next) {
            let token = e.remove();
            self.orch.handle_barrier(now, token);
        } else if self.a.poll_timeout() == next {
            self.a.handle_timeout(now);
        } else {
            self.b.handle_timeout(now);
        }
        self.pump();
        self.obs.stepped(self.now, &self.a, &self.b);
        true
    }

    /// Runs everything scheduled up to `to` (inclusive), in time order; the clock ends at
    /// `to`. Fails if a million steps pass at one instant.
    pub fn advance(&mut self, to: Instant) -> Result<(), HarnessError> {
        let mut same = 0;
        loop {
            if self.next_time() > to {
                self.now = self.now.max(to);
                return Ok(());
            }
            let before = self.now;
            self.step();
            same = if self.now == before { same + 1 } else { 0 };
            if same > MAX_STEPS_AT_ONE_INSTANT {
                return Err(HarnessError::Livelock(self.now));
            }
        }
    }

    /// [`advance`](Self::advance) by `d`.
    pub fn advance_by(&mut self, d: Duration) -> Result<(), HarnessError> {
        self.advance(self.now + d)
    }

    /// Advances in steps of `step` until `pred` holds (checked before every step), at most
    /// until `limit`; whether it held.
    pub fn run_until(
        &mut self,
        limit: Instant,
        step: Duration,
        mut pred: impl FnMut(&Self) -> bool,
    ) -> Result<bool, HarnessError> {
        while self.now < limit {
            if pred(self) {
                return Ok(true);
            }
            let to = (self.now + step).min(limit);
            self.advance(to)?;
        }
        Ok(pred(self))
    }
}
