//! Migration hooks: enumerate, freeze, export, remove; `import` and `reserve`.

use super::table::{entry_flags, grow_slab};
use super::{
    GroupId, ImportSummary, MappingId, MappingInfo, NIL, Nat, NatError, RemoveCause, S_FROZEN,
    S_INBOUND_OPENED, S_LIVE, skey,
};
use crate::index::STAMP_NONE;
use crate::record::{FLAG_INBOUND_OPENED, RECORD_VERSION, StateRecord};
use crate::tcp::Dir;
use flowshift_wire::Instant;
use std::net::{Ipv4Addr, SocketAddrV4};
use zerocopy::IntoBytes;
use zerocopy::network_endian::{U16, U32};

/// Sessions whose index lines a walk over a mapping's sessions prefetches ahead of the one it
/// works on (two lines each).
const SESSION_LOOKAHEAD: usize = 4;

impl Nat {
    /// The mappings of a group, most recently created first.
    pub fn group_mappings(&self, g: GroupId) -> Result<Vec<MappingId>, NatError> {
        let mut out = Vec::with_capacity(self.group(g)?.mappings as usize);
        let mut m = self.group(g)?.first_mapping;
        while m != NIL {
            out.push(self.mapping_id(m));
            m = self.mappings[m as usize].next;
        }
        Ok(out)
    }

    /// The group's most recently created mapping, if it has any: removing it and asking again
    /// empties a group in slices, without listing its mappings first.
    pub fn group_newest_mapping(&self, g: GroupId) -> Result<Option<MappingId>, NatError> {
        let m = self.group(g)?.first_mapping;
        Ok((m != NIL).then(|| self.mapping_id(m)))
    }

    /// A mapping's number of sessions (what [`mapping_info`](Self::mapping_info) says, without
    /// walking the sessions for their last packet).
    pub fn mapping_sessions(&self, id: MappingId) -> Result<u32, NatError> {
        Ok(self.live_mapping(id)?.sessions)
    }

    /// A mapping's summary.
    pub fn mapping_info(&self, id: MappingId) -> Result<MappingInfo, NatError> {
        let m = self.live_mapping(id)?;
        let mut last_seen = Instant::ZERO;
        let mut s = m.first_session;
        while s != NIL {
            last_seen = last_seen.max(self.sessions[s as usize].last_seen);
            s = self.sessions[s as usize].next;
        }
        Ok(MappingInfo {
            id,
            proto: m.proto,
            internal: SocketAddrV4::new(Ipv4Addr::from(m.int_addr), m.int_port),
            external_port: m.ext_port,
            sessions: m.sessions,
            last_seen,
            frozen: m.frozen,
        })
    }

    /// Freezes or unfreezes a mapping: while frozen its packets return [`Verdict::Hold`](crate::Verdict::Hold) and
    /// its sessions do not expire.
    pub fn set_frozen(&mut self, id: MappingId, frozen: bool) -> Result<(), NatError> {
        self.live_mapping(id)?;
        let m = &mut self.mappings[id.slot as usize];
        m.frozen = frozen;
        let ext = self.groups[m.group as usize].as_ref().map_or(0, |g| g.ext);
        let mut s = m.first_session;
        let mut ahead = self.prefetch_sessions_ahead(s, ext);
        while s != NIL {
            ahead = self.prefetch_next_session(ahead, ext);
            let sess = &mut self.sessions[s as usize];
            debug_assert!(
                sess.flags & S_LIVE != 0 && sess.mapping == id.slot,
                "a mapping's session list holds its live sessions"
            );
            if frozen {
                sess.flags |= S_FROZEN;
            } else {
                sess.flags &= !S_FROZEN;
            }
            // The index entries carry the flag for the fast path; their refresh stamps start
            // over (a frozen session may stay idle for longer than the stamps' wrap-around).
            let ef = entry_flags(sess.flags);
            let keys = [
                skey(
                    Dir::Out,
                    sess.proto,
                    sess.int_addr,
                    sess.int_port,
                    sess.rem_addr,
                    sess.rem_port,
                ),
                skey(
                    Dir::In,
                    sess.proto,
                    ext,
                    sess.ext_port,
                    sess.rem_addr,
                    sess.rem_port,
                ),
            ];
            let next = sess.next;
            for key in keys {
                match self.session_index.get_mut(&key) {
                    Some(e) => {
                        debug_assert_eq!(e.slot, s, "index entry points at its session");
                        e.flags = ef;
                        e.set_stamp(STAMP_NONE);
                    }
                    None => debug_assert!(false, "a live session is indexed under both keys"),
                }
            }
            s = next;
        }
        Ok(())
    }

    /// Appends the mapping's sessions as [`StateRecord`]s to `out`; returns how many.
    pub fn export_mapping(
        &self,
        id: MappingId,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<u32, NatError> {
        let m = self.live_mapping(id)?;
        let mut s = m.first_session;
        let mut n = 0;
        out.reserve(m.sessions as usize * crate::record::RECORD_LEN);
        let now_ns = now.as_nanos();
        while s != NIL {
            let sess = &self.sessions[s as usize];
            debug_assert!(
                sess.flags & S_LIVE != 0 && sess.mapping == id.slot,
                "a mapping's session list holds its live sessions"
            );
            // Whole milliseconds idle (`saturating_since(..).as_millis()` in integer nanoseconds).
            let idle = now_ns.saturating_sub(sess.last_seen.as_nanos()) / 1_000_000;
            let rec = StateRecord {
                proto: m.proto,
                tcp_state: sess.tcp,
                flags: if sess.flags & S_INBOUND_OPENED != 0 {
                    FLAG_INBOUND_OPENED
                } else {
                    0
                },
                version: RECORD_VERSION,
                int_addr: m.int_addr.to_be_bytes(),
                int_port: U16::new(m.int_port),
                ext_port: U16::new(m.ext_port),
                rem_addr: sess.rem_addr.to_be_bytes(),
                rem_port: U16::new(sess.rem_port),
                reserved: U16::ZERO,
                idle_ms: U32::new(u32::try_from(idle).unwrap_or(u32::MAX)),
            };
            out.extend_from_slice(rec.as_bytes());
            n += 1;
            s = sess.next;
        }
        Ok(n)
    }

    /// Removes a mapping and its sessions (after a migration peer acknowledged it, or by an
    /// operator); its port is unbound here. Returns the number of sessions removed.
    pub fn remove_mapping(
        &mut self,
        id: MappingId,
        now: Instant,
        cause: RemoveCause,
    ) -> Result<u32, NatError> {
        let m = self.live_mapping(id)?;
        let n = m.sessions;
        let mut s = m.first_session;
        let ext = self.groups[m.group as usize].as_ref().map_or(0, |g| g.ext);
        let mut ahead = self.prefetch_sessions_ahead(s, ext);
        while s != NIL {
            ahead = self.prefetch_next_session(ahead, ext);
            let next = self.sessions[s as usize].next;
            self.remove_session(now, s, cause);
            s = next;
        }
        Ok(n)
    }

    /// Prefetches the index lines of the first [`SESSION_LOOKAHEAD`] sessions of a mapping's
    /// list from `first`, for a walk that updates or removes both index entries of each
    /// (`ext`: the group's external address); returns the session to prefetch next.
    fn prefetch_sessions_ahead(&self, first: u32, ext: u32) -> u32 {
        let mut ahead = first;
        for _ in 0..SESSION_LOOKAHEAD {
            ahead = self.prefetch_next_session(ahead, ext);
        }
        ahead
    }

    /// Prefetches (for writing) the two index lines of session `s` (none for `NIL`) and
    /// returns the next session of its list. A hint: the walk's misses then overlap.
    #[inline]
    fn prefetch_next_session(&self, s: u32, ext: u32) -> u32 {
        if s == NIL {
            return NIL;
        }
        let sess = &self.sessions[s as usize];
        let pf = self.session_index.prefetcher();
        let (p, ia, ip) = (sess.proto, sess.int_addr, sess.int_port);
        let (ra, rp) = (sess.rem_addr, sess.rem_port);
        pf.prefetch_insert(self.session_index.hash(&skey(Dir::Out, p, ia, ip, ra, rp)));
        pf.prefetch_insert(
            self.session_index
                .hash(&skey(Dir::In, p, ext, sess.ext_port, ra, rp)),
        );
        sess.next
    }

    /// Installs records exported by a peer into group `g`, all or nothing: on error nothing is
    /// installed. Refuses malformed records, records outside the group's subscribers or port
    /// range, mappings or ports already present here, ports in a block another subscriber holds,
    /// duplicates, and batches that would exceed the table bounds. Imported blocks may exceed
    /// the per-subscriber block limit (the peer allocated them), and imported sessions the
    /// per-subscriber session limit: they are installed and the excess is counted in
    /// [`Counters::sessions_over_subscriber_limit`](crate::Counters); such a subscriber opens
    /// no new session until it is back under its limit (why: `nat/subscribers.rs`).
    pub fn import(
        &mut self,
        g: GroupId,
        now: Instant,
        bytes: &[u8],
    ) -> Result<ImportSummary, NatError> {
        let result = self.import_all_or_nothing(g, now, bytes);
        if result.is_err() {
            self.counters.records_refused +=
                (bytes.len() / crate::record::RECORD_LEN).max(1) as u64;
        }
        result
    }

    /// Pre-sizes the tables for `mappings` more mappings and `sessions` more sessions (a
    /// migration destination calls it when `Prepare` announces what will come), so that the
    /// imports that follow do not grow the slabs or the hash indexes while installing.
    /// Clamped to the configured bounds: never reserves room past `max_mappings` /
    /// `max_sessions` (counting what is held already). Changes nothing observable.
    pub fn reserve(&mut self, mappings: usize, sessions: usize) {
        let m = mappings.min(self.cfg.max_mappings.saturating_sub(self.mapping_count) as usize);
        let s = sessions.min(self.cfg.max_sessions.saturating_sub(self.session_count) as usize);
        // Free slots are reused first; the rest are new slots at the end of the slabs.
        let m_new = m.saturating_sub(self.mapping_free.len());
        let s_new = s.saturating_sub(self.session_free.len());
        // A slab never holds more slots than its bound (free slots are reused first).
        grow_slab(
            &mut self.mappings,
            &mut self.mapping_free,
            m_new,
            self.cfg.max_mappings as usize,
        );
        grow_slab(
            &mut self.sessions,
            &mut self.session_free,
            s_new,
            self.cfg.max_sessions as usize,
        );
        // One index entry per mapping (its port table holds the inbound side), two per
        // session.
        self.mapping_index
            .reserve(m, self.cfg.max_mappings as usize);
        self.session_index
            .reserve(2 * s, 2 * self.cfg.max_sessions as usize);
        // One expiry entry per new session (a session has one per timeout class it went
        // through; more are allocated as needed).
        self.wheel.reserve(s);
        self.reserve_subscribers(s);
        debug_assert!(self.mappings.capacity() >= self.mappings.len() + m_new);
        debug_assert!(self.sessions.capacity() >= self.sessions.len() + s_new);
        debug_assert!(self.session_index.capacity() >= self.session_index.len() + 2 * s);
    }
}
