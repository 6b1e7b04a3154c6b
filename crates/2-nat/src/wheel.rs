//! A hashed timer wheel for idle expiry with lazy refresh.
//!
//! The packet path never touches the wheel: it only stores the session's last-seen time. An
//! entry is pushed when a session is created or changes timeout class; when its bucket comes
//! due, the owner checks the session's real deadline and either expires it or pushes it again.
//! Push and pop are O(1); an entry fires at most one granularity late.

use flowshift_wire::Instant;

/// One scheduled check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WheelEntry {
    pub slot: u32,
    pub generation: u32,
    pub class: u8,
}

pub(crate) struct Wheel {
    granularity_ns: u64,
    /// `u64::MAX / granularity_ns`: divides by the granularity with a multiplication.
    recip: u64,
    /// Per bucket: the first node of its list (`NIL`: empty). Lists are LIFO. A power of two
    /// of them, so a bucket is an absolute index masked.
    heads: Vec<u32>,
    /// Every entry lives in a node of this slab (one allocation, grown ahead by `reserve`, so
    /// pushes write sequential memory instead of growing one vector per bucket).
    nodes: Vec<Node>,
    /// First free node (`NIL`: none), linked through `next`.
    free: u32,
    free_count: usize,
    /// Absolute index of the next bucket to process.
    cursor: u64,
    len: usize,
}

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Node {
    entry: WheelEntry,
    next: u32,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            entry: WheelEntry {
                slot: NIL,
                generation: 0,
                class: 0,
            },
            next: NIL,
        }
    }
}

impl Wheel {
    /// A wheel that can hold deadlines up to `horizon_ns` ahead.
    pub fn new(granularity_ns: u64, horizon_ns: u64) -> Self {
        let n = (horizon_ns / granularity_ns + 2).next_power_of_two() as usize;
        Wheel {
            granularity_ns,
            recip: u64::MAX / granularity_ns,
            heads: vec![NIL; n],
            nodes: Vec::new(),
            free: NIL,
            free_count: 0,
            cursor: 0,
            len: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Room for `additional` more entries without growing; new memory is written here.
    pub fn reserve(&mut self, additional: usize) {
        let new_nodes = additional.saturating_sub(self.free_count);
        if self.nodes.capacity() - self.nodes.len() >= new_nodes {
            return;
        }
        let want = self.nodes.len() + new_nodes;
        self.nodes
            .reserve_exact(want.max(2 * self.nodes.capacity()) - self.nodes.len());
        crate::memory::advise_huge(self.nodes.spare_capacity_mut());
        for n in self.nodes.spare_capacity_mut() {
            n.write(Node::default());
        }
    }

    /// `ns / granularity_ns`, without a division instruction: the reciprocal's quotient is at
    /// most two below the exact one, and the loop corrects it.
    #[inline(always)]
    fn ticks(&self, ns: u64) -> u64 {
        let g = self.granularity_ns;
        let mut q = ((ns as u128 * self.recip as u128) >> 64) as u64;
        while ns - q * g >= g {
            q += 1;
        }
        debug_assert_eq!(q, ns / g);
        q
    }

    /// Schedules `entry` to be looked at once `deadline` has passed (`now` is the present).
    #[inline]
    pub fn push(&mut self, now: Instant, deadline: Instant, entry: WheelEntry) {
        if self.len == 0 {
            self.cursor = self.cursor.max(self.ticks(now.as_nanos()));
        }
        let n = self.heads.len() as u64;
        let idx = self
            .ticks(deadline.as_nanos())
            .clamp(self.cursor, self.cursor + n - 1);
        let b = (idx & (n - 1)) as usize;
        let node = Node {
            entry,
            next: self.heads[b],
        };
        let at = if self.free != NIL {
            let at = self.free;
            debug_assert!((at as usize) < self.nodes.len(), "free node in range");
            self.free = self.nodes[at as usize].next;
            self.free_count -= 1;
            self.nodes[at as usize] = node;
            at
        } else {
            debug_assert!(self.nodes.len() < NIL as usize, "wheel node index fits");
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        };
        self.heads[b] = at;
        self.len += 1;
    }

    /// Moves up to `budget` due entries into `out`; true if due entries remain.
    pub fn pop_due(&mut self, now: Instant, budget: usize, out: &mut Vec<WheelEntry>) -> bool {
        let mask = self.heads.len() as u64 - 1;
        let mut taken = 0;
        while self.len > 0 && (self.cursor + 1) * self.granularity_ns <= now.as_nanos() {
            let b = (self.cursor & mask) as usize;
            while self.heads[b] != NIL {
                let at = self.heads[b];
                let node = self.nodes[at as usize];
                self.heads[b] = node.next;
                self.nodes[at as usize].next = self.free;
                self.free = at;
                self.free_count += 1;
                out.push(node.entry);
                self.len -= 1;
                taken += 1;
                if taken == budget {
                    return self.heads[b] != NIL || self.len > 0 && self.next_due_at() <= now;
                }
            }
            self.cursor += 1;
        }
        if self.len == 0 {
            self.cursor = self.cursor.max(now.as_nanos() / self.granularity_ns);
        }
        debug_assert_eq!(
            self.len + self.free_count,
            self.nodes.len(),
            "nodes accounted"
        );
        false
    }

    /// When the next bucket comes due (`Instant::MAX` if empty).
    pub fn next_due_at(&self) -> Instant {
        if self.len == 0 {
            return Instant::MAX;
        }
        Instant::from_nanos((self.cursor + 1).saturating_mul(self.granularity_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(slot: u32) -> WheelEntry {
        WheelEntry {
            slot,
            generation: 0,
            class: 0,
        }
    }

    #[test]
    fn entries_fire_after_their_deadline_and_within_one_granularity() {
        let g = 1_000_000_000;
        let mut w = Wheel::new(g, 300 * g);
        let t0 = Instant::from_secs(1000);
        w.push(t0, Instant::from_secs(1060), e(1));
        w.push(t0, Instant::from_secs(1030), e(2));
        let mut out = Vec::new();
        assert!(!w.pop_due(Instant::from_millis(1_030_500), 10, &mut out));
        assert!(
            out.is_empty(),
            "nothing is due before its deadline's bucket ends"
        );
        w.pop_due(Instant::from_secs(1031), 10, &mut out);
        assert_eq!(out, vec![e(2)]);
        out.clear();
        w.pop_due(Instant::from_secs(1061), 10, &mut out);
        assert_eq!(out, vec![e(1)]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn reciprocal_division_is_exact() {
        for g in [
            1,
            3,
            1_000,
            1_000_000_000,
            999_999_937,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let w = Wheel::new(g, g.saturating_mul(4));
            for ns in [
                0,
                1,
                g - 1,
                g,
                g.wrapping_add(1),
                u64::MAX / 2,
                u64::MAX - 1,
                u64::MAX,
            ] {
                assert_eq!(w.ticks(ns), ns / g, "{ns} / {g}");
            }
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for _ in 0..10_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                assert_eq!(w.ticks(x), x / g, "{x} / {g}");
            }
        }
    }

    #[test]
    fn budget_limits_work_per_call() {
        let g = 1_000;
        let mut w = Wheel::new(g, 100 * g);
        for i in 0..10 {
            w.push(Instant::ZERO, Instant::from_nanos(5 * g), e(i));
        }
        let mut out = Vec::new();
        assert!(w.pop_due(Instant::from_nanos(10 * g), 4, &mut out));
        assert_eq!(out.len(), 4);
        while w.pop_due(Instant::from_nanos(10 * g), 4, &mut out) {}
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn far_deadlines_are_clamped_not_lost() {
        let g = 1_000;
        let mut w = Wheel::new(g, 10 * g);
        w.push(Instant::ZERO, Instant::from_nanos(1_000 * g), e(7));
        let mut out = Vec::new();
        w.pop_due(Instant::from_nanos(20 * g), 10, &mut out);
        assert_eq!(
            out,
            vec![e(7)],
            "clamped entry fires early; the owner re-checks and re-pushes"
        );
    }

    #[test]
    fn nodes_are_reused_and_reserve_keeps_order() {
        let g = 1_000;
        let mut w = Wheel::new(g, 100 * g);
        w.reserve(8);
        for i in 0..4 {
            w.push(Instant::ZERO, Instant::from_nanos(5 * g), e(i));
        }
        let mut out = Vec::new();
        w.pop_due(Instant::from_nanos(10 * g), 100, &mut out);
        assert_eq!(out, vec![e(3), e(2), e(1), e(0)], "LIFO within a bucket");
        let nodes = w.nodes.len();
        for i in 0..4 {
            w.push(
                Instant::from_nanos(10 * g),
                Instant::from_nanos(20 * g),
                e(10 + i),
            );
        }
        assert_eq!(w.nodes.len(), nodes, "freed nodes reused");
        out.clear();
        w.pop_due(Instant::from_nanos(30 * g), 100, &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(w.len(), 0);
    }
}
