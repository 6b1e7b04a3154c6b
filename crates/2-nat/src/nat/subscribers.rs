//! Per-subscriber session accounting (RFC 6888 REQ-5): how many sessions each subscriber
//! holds, and the limit `max_sessions_per_subscriber` that the packet path enforces.
//!
//! The count is kept by `install_session` / `remove_session` (the only places a session is
//! born or dies, whatever the cause: packet, expiry, removal, import, export), so it is exact;
//! `check_invariants` recounts it from the session slab. Every session counts, including the
//! ones a remote host opened on a subscriber's mapping (they use the subscriber's state just
//! the same; address-dependent filtering keeps strangers from opening them).
//!
//! Imports are not refused by the limit: a batch carries many subscribers' sessions, all or
//! nothing, and the source admitted each of them under its own limit, so refusing it would
//! drop live flows of every subscriber in the batch for one subscriber's excess. The sessions
//! are installed, the excess is counted (`Counters::sessions_over_subscriber_limit`), and the
//! subscriber opens no new session until it is back under its limit. The table bounds
//! (`max_sessions`, `max_mappings`) still refuse a batch.

use super::{Nat, Session};
use hashbrown::HashMap;
use std::net::Ipv4Addr;

impl Nat {
    /// Sessions the subscriber with internal address `addr` holds.
    pub fn subscriber_sessions(&self, addr: Ipv4Addr) -> u32 {
        self.sub_sessions
            .get(&u32::from(addr))
            .copied()
            .unwrap_or(0)
    }

    /// Subscribers holding at least one session.
    pub fn subscriber_count(&self) -> u32 {
        self.sub_sessions.len() as u32
    }

    /// True if `sub` may open one more session.
    #[inline]
    pub(super) fn subscriber_has_room(&self, sub: u32) -> bool {
        self.sub_sessions.get(&sub).copied().unwrap_or(0) < self.cfg.max_sessions_per_subscriber
    }

    /// Counts `added` sessions of `sub` that are being installed (past the limit only on
    /// import: each one past it is counted in `sessions_over_subscriber_limit`).
    #[inline]
    pub(super) fn subscriber_sessions_added(&mut self, sub: u32, added: u32) {
        if added == 0 {
            return;
        }
        let limit = self.cfg.max_sessions_per_subscriber;
        let n = self.sub_sessions.entry(sub).or_insert(0);
        let before = *n;
        *n += added;
        self.counters.sessions_over_subscriber_limit +=
            u64::from(n.saturating_sub(before.max(limit)));
    }

    /// Counts a session of `sub` that is being removed (no entry is kept at zero).
    #[inline]
    pub(super) fn subscriber_session_removed(&mut self, sub: u32) {
        match self.sub_sessions.get_mut(&sub) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.sub_sessions.remove(&sub);
            }
            None => debug_assert!(false, "removing a session of an uncounted subscriber"),
        }
    }

    /// Makes room for `additional` more subscribers in the count table (bounded by the number
    /// of subscriber addresses the groups have).
    pub(super) fn reserve_subscribers(&mut self, additional: usize) {
        let addresses: u64 = self
            .groups
            .iter()
            .flatten()
            .map(|g| u64::from(!g.mask) + 1)
            .sum();
        let room = addresses.saturating_sub(self.sub_sessions.len() as u64);
        let n = (additional as u64).min(room) as usize;
        self.sub_sessions.reserve(n);
    }

    /// The per-subscriber counts agree with the live sessions in `sessions` (no zero entry).
    pub(super) fn check_subscriber_counts(&self, sessions: &[Session]) -> Result<(), String> {
        let mut want: HashMap<u32, u32> = HashMap::new();
        for s in sessions.iter().filter(|s| s.flags & super::S_LIVE != 0) {
            *want.entry(s.int_addr).or_default() += 1;
        }
        if want.len() != self.sub_sessions.len() {
            return Err(format!(
                "{} subscribers hold sessions, {} counted",
                want.len(),
                self.sub_sessions.len()
            ));
        }
        for (sub, n) in &want {
            let got = self.sub_sessions.get(sub).copied().unwrap_or(0);
            if got != *n {
                return Err(format!(
                    "subscriber {} holds {n} sessions, counted {got}",
                    Ipv4Addr::from(*sub)
                ));
            }
        }
        Ok(())
    }
}
