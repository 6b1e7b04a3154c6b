//! Arrival times of received frames. The kernel stamps every frame it puts in the receive
//! ring (`CLOCK_REALTIME`, ns); the engine maps the stamp to the loop's clock, so a batch
//! that waited in the ring while the packet thread was descheduled reaches the instance at
//! its first frame's arrival. The waits the migration reports (held-packet delay, buffer
//! delay) then include the time packets spent in the ring, and sessions are stamped when
//! their packet came, not when it was read.

use flowshift_wire::Instant;

/// Maps ring stamps to the loop's clock; see the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ArrivalClock {
    /// Loop clock minus realtime, ns, read at the start of the current iteration (`None`
    /// until the loop gives one: frames are then handed over at the caller's time).
    offset: Option<i128>,
    /// No arrival is earlier than this: the previous iteration's time, or a later batch
    /// already handed over (the instance's time never goes back).
    floor: Instant,
    /// The current iteration's time.
    now: Instant,
}

impl ArrivalClock {
    /// A loop iteration starts at `now`, when the realtime clock reads `realtime_ns`.
    pub fn start(&mut self, now: Instant, realtime_ns: u64) {
        self.floor = self.floor.max(self.now);
        self.now = now;
        self.offset = Some(i128::from(now.as_nanos()) - i128::from(realtime_ns));
    }

    /// When a frame stamped `stamp_ns` (realtime; 0: not stamped) arrived, on the loop's
    /// clock: at or after the floor, at or before `now` (the caller's time).
    pub fn arrival(&self, now: Instant, stamp_ns: u64) -> Instant {
        let Some(offset) = self.offset.filter(|_| stamp_ns != 0) else {
            return now;
        };
        let t = (i128::from(stamp_ns) + offset).clamp(0, i128::from(u64::MAX));
        Instant::from_nanos(t as u64).max(self.floor).min(now)
    }

    /// A batch was handed to the instance at `t`: later ones are not earlier.
    pub fn handed(&mut self, t: Instant) {
        self.floor = self.floor.max(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: u64 = 1_800_000_000_000_000_000;

    #[test]
    fn unstamped_frames_or_no_clock_take_the_callers_time() {
        let mut c = ArrivalClock::default();
        let now = Instant::from_millis(7);
        assert_eq!(c.arrival(now, REAL), now, "no clock yet");
        c.start(now, REAL);
        assert_eq!(c.arrival(now, 0), now, "no stamp");
    }

    #[test]
    fn a_stamp_maps_to_the_loop_clock_within_floor_and_now() {
        let mut c = ArrivalClock::default();
        c.start(Instant::from_millis(10), REAL);
        let now = Instant::from_millis(20);
        c.start(now, REAL + 10_000_000);
        // 4 ms before this iteration began: after the previous iteration (10 ms).
        assert_eq!(c.arrival(now, REAL + 6_000_000), Instant::from_millis(16));
        // Before the previous iteration: the floor (it was read then, or is a stale stamp).
        assert_eq!(c.arrival(now, REAL - 1_000_000), Instant::from_millis(10));
        // After `now` (clock steps): `now`.
        assert_eq!(c.arrival(now, REAL + 50_000_000), now);
        // A batch handed at 17 ms raises the floor for the next ones.
        c.handed(Instant::from_millis(17));
        assert_eq!(c.arrival(now, REAL + 6_000_000), Instant::from_millis(17));
    }
}
