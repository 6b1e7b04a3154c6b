//! Expiry: the timer wheel, TCP state changes that change a session's timeout class.

use super::{EXPIRY_BUDGET, Nat, RemoveCause, S_FROZEN, S_LIVE};
use crate::tcp::{Dir, TcpState};
use crate::wheel::WheelEntry;
use flowshift_wire::Instant;

impl Nat {
    /// When [`handle_timeout`](Self::handle_timeout) has work next (`Instant::MAX`: none).
    pub fn poll_timeout(&self) -> Instant {
        let frag = self.frag_fifo.front().map_or(Instant::MAX, |&(_, d)| d);
        self.wheel.next_due_at().min(frag)
    }

    /// Expires idle sessions (and mappings left without sessions) and stale fragment state.
    /// Examines at most [`EXPIRY_BUDGET`] timer entries; returns true if due work remains
    /// (call again). Frozen sessions never expire.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        self.expire_fragments(now);
        let mut due = std::mem::take(&mut self.wheel_scratch);
        due.clear();
        let more = self.wheel.pop_due(now, EXPIRY_BUDGET, &mut due);
        let limits: [core::time::Duration; 4] = core::array::from_fn(|c| self.idle_limit(c as u8));
        for e in &due {
            debug_assert!(
                (e.slot as usize) < self.sessions.len(),
                "wheel slot in range"
            );
            let s = &mut self.sessions[e.slot as usize];
            if s.flags & S_LIVE == 0 || s.generation != e.generation {
                continue;
            }
            s.queued &= !(1 << e.class);
            if s.class != e.class {
                continue; // the session has an entry for its current class
            }
            let deadline = s.last_seen + limits[e.class as usize];
            if deadline > now || s.flags & S_FROZEN != 0 {
                self.schedule(now, e.slot);
                continue;
            }
            self.counters.sessions_expired += 1;
            self.remove_session(now, e.slot, RemoveCause::Deleted);
        }
        self.wheel_scratch = due;
        more
    }

    pub(super) fn tcp_update(&mut self, now: Instant, slot: u32, dir: Dir, flags: u8) {
        debug_assert!(
            self.sessions
                .get(slot as usize)
                .is_some_and(|s| s.flags & S_LIVE != 0),
            "TCP update of a live session"
        );
        let s = &mut self.sessions[slot as usize];
        let Some(old) = TcpState::from_u8(s.tcp) else {
            return;
        };
        let new = old.next(dir, flags);
        if new == old {
            return;
        }
        s.tcp = new as u8;
        let class = new.class() as u8;
        if class != s.class {
            s.class = class;
            self.schedule(now, slot);
        }
    }

    /// Ensures the session has a wheel entry for its current class.
    pub(super) fn schedule(&mut self, now: Instant, slot: u32) {
        debug_assert!(
            (slot as usize) < self.sessions.len(),
            "session slot in range"
        );
        let limit = self.idle_limit(self.sessions[slot as usize].class);
        let s = &mut self.sessions[slot as usize];
        debug_assert!(s.flags & S_LIVE != 0, "only live sessions are scheduled");
        let bit = 1u8 << s.class;
        if s.queued & bit != 0 {
            return;
        }
        s.queued |= bit;
        // The real deadline (the wheel fires past ones at once), so a refreshed or imported
        // session expires one timeout after its last packet, not one timeout after the check.
        // Frozen sessions are only re-checked a timeout from now.
        let base = if s.flags & S_FROZEN != 0 {
            s.last_seen.max(now)
        } else {
            s.last_seen
        };
        let deadline = base + limit;
        let e = WheelEntry {
            slot,
            generation: s.generation,
            class: s.class,
        };
        self.wheel.push(now, deadline, e);
    }

    /// How long a session of timeout class `class` lives after its `last_seen`: the timeout,
    /// plus one refresh tick under lazy refresh (`last_seen` may then be up to a tick older
    /// than the last packet; the slack keeps expiry from ever coming before the timeout).
    #[inline]
    fn idle_limit(&self, class: u8) -> core::time::Duration {
        core::time::Duration::from_nanos(self.idle_limit_ns(class))
    }

    /// [`idle_limit`](Self::idle_limit) in nanoseconds.
    #[inline]
    pub(super) fn idle_limit_ns(&self, class: u8) -> u64 {
        let slack = if self.lazy {
            1u64 << self.tick_shift
        } else {
            0
        };
        self.timeout_ns[class as usize].saturating_add(slack)
    }
}
