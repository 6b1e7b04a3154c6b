//! The source's timers: the timeout handler (retransmission, pacing, slices of work, give
//! up), the next deadline, and freeze-and-copy's idle sampling that decides when to start
//! freezing.

use super::{ScanGoal, Src};
use crate::config::{MigrationConfig, RateMode};
use crate::instance::{Core, Mig};
use crate::proto::Message;
use crate::{AbortReason, MigrationEvent, Phase};
use flowshift_wire::Instant;
use std::collections::BTreeMap;

impl<M: Copy> Mig<M> {
    fn src_idle_sample(&mut self, core: &mut Core<M>, now: Instant) {
        let remaining = core.nat.group_stats(self.group).map_or(0, |s| s.mappings);
        let p = self.params.clone();
        let start = self.st.mappings_at_start;
        let s = self.src();
        let deaths = s.last_count.saturating_sub(remaining);
        s.window.push_back((deaths, s.last_count));
        while s.window.len() > p.idle_window_samples as usize {
            s.window.pop_front();
        }
        s.last_count = remaining;
        s.next_sample = now + p.idle_sample_interval;
        let full = s.window.len() == p.idle_window_samples as usize;
        let total: u32 = s.window.iter().map(|w| w.0).sum();
        let base = s.window.front().map_or(0, |w| w.1);
        let secs = p.idle_sample_interval.as_secs_f64() * s.window.len() as f64;
        let abs = if secs > 0.0 { total as f64 / secs } else { 0.0 };
        let rate = match p.idle_rate_mode {
            RateMode::Absolute => abs,
            RateMode::Relative if base > 0 => abs / base as f64,
            RateMode::Relative => 0.0,
        };
        let timed_out = now >= s.idle_started + p.idle_max;
        core.event(MigrationEvent::IdleProgress {
            migration: self.id,
            remaining,
            expired: start.saturating_sub(remaining),
        });
        // Nothing died at all so far: there is nothing to wait for (the rate is zero whatever
        // the window), so freeze-and-copy starts at the first sample.
        let none_dying = total == 0 && p.idle_rate_threshold > 0.0;
        if remaining <= p.idle_floor
            || timed_out
            || ((full || none_dying) && rate < p.idle_rate_threshold)
        {
            self.src_start_freeze(core, now);
        }
    }

    pub(super) fn src_start_freeze(&mut self, core: &mut Core<M>, now: Instant) {
        let g = self.group;
        let remaining = core.nat.group_stats(g).map_or(0, |s| s.mappings);
        self.st.expired_idle = self.st.mappings_at_start.saturating_sub(remaining);
        // Every mapping left is frozen, then retired: sized once here rather than grown (and
        // rehashed) in the middle of the batches.
        core.frozen.reserve(remaining as usize);
        self.src().retiring.reserve(remaining as usize);
        self.set_phase(core, now, Phase::FreezeCopy);
        self.src_begin_scan(core, ScanGoal::FreezeOrder(BTreeMap::new()));
    }

    pub(crate) fn src_timeout(&mut self, core: &mut Core<M>, now: Instant) {
        self.chan.on_timeout(now, &core.cfg);
        if self.terminal {
            return;
        }
        if self.src_ref().removing.is_some() {
            // Committed: the destination serves the group whatever the channel does now.
            self.src_remove_step(core, now);
            return;
        }
        if self.chan.failed {
            match self.phase {
                // Nothing of the group is left here: finish without the peer.
                Phase::AwaitCutover | Phase::Drain => {}
                Phase::Done => {
                    self.complete(core, now);
                    return;
                }
                _ => {
                    self.src_revert(core, now, AbortReason::ChannelFailed, false);
                    return;
                }
            }
        }
        if self.chan.unacked() == 0 && now >= self.chan.last_sent + core.cfg.keepalive {
            self.chan.send(now, &Message::Ping, &core.cfg);
        }
        if !self.src_ref().retiring.is_empty() {
            self.src_retire_step(core, now);
            return;
        }
        if self.src_ref().scan.is_some() {
            self.src_scan_step(core, now);
            return;
        }
        match self.phase {
            Phase::Prepare if now >= self.src_ref().prepared_at + core.cfg.prepare_timeout => {
                // No answer to Prepare (lost, or refused as stale by a confused peer): give
                // the group back; the Abort tells a slow destination to drop what it added.
                core.counters.prepare_timeouts += 1;
                self.src_revert(core, now, AbortReason::PrepareTimeout, true);
            }
            Phase::AwaitCutover if now >= self.src_ref().overdue_at => {
                core.counters.cutover_overdue += 1;
                let t = core.cfg.cutover_timeout;
                self.src().overdue_at = now + t;
                if let Some(g) = &self.gcfg {
                    core.event(MigrationEvent::AwaitingCutover {
                        migration: self.id,
                        external: g.external,
                        to: self.peer,
                        algorithm: self.algorithm,
                    });
                }
            }
            Phase::Idle if now >= self.src_ref().next_sample => self.src_idle_sample(core, now),
            _ if self.src_ref().pump_due => self.src_pump(core, now),
            Phase::FreezeCopy if self.src_ref().retry_at.is_some_and(|t| t <= now) => {
                self.src_pump(core, now)
            }
            Phase::Rounds | Phase::StopCopy => {
                if let Some((at, last)) = self.src().next_round
                    && at <= now
                {
                    self.src_start_round(core, now, last);
                }
            }
            Phase::Drain if now >= self.src_ref().drain_until => self.src_drained(core, now),
            Phase::Drain
                if !self.src_ref().chain_end_sent
                    && now >= self.src_chain_end_due(self.src_ref()) =>
            {
                self.src_send_chain_end(core, now)
            }
            _ => {}
        }
    }

    pub(crate) fn src_next_timeout(&self, s: &Src<M>, cfg: &MigrationConfig) -> Instant {
        let mut t = self.chan.next_timeout();
        if self.terminal {
            return t;
        }
        if self.chan.unacked() == 0 && !self.chan.failed {
            t = t.min(self.chan.last_sent + cfg.keepalive);
        }
        let own = match self.phase {
            // A scan, a removal or the sending of a window goes on at the next call.
            _ if s.scan.is_some()
                || s.removing.is_some()
                || !s.retiring.is_empty()
                || s.pump_due =>
            {
                Some(Instant::ZERO)
            }
            Phase::Prepare => Some(s.prepared_at + cfg.prepare_timeout),
            Phase::AwaitCutover => Some(s.overdue_at),
            Phase::Idle => Some(s.next_sample),
            Phase::FreezeCopy => s.retry_at,
            Phase::Rounds | Phase::StopCopy => s.next_round.map(|(at, _)| at),
            Phase::Drain if !s.chain_end_sent => Some(self.src_chain_end_due(s)),
            Phase::Drain => Some(s.drain_until),
            _ => None,
        };
        own.map_or(t, |o| t.min(o))
    }
}
