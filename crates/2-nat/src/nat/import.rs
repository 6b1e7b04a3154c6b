//! `Nat::import`, all or nothing, in one pass: each record is checked and installed in turn
//! (`import_install.rs`), and what was installed is journalled in [`ImportScratch`]. If a record
//! is refused, the journal undoes the batch ([`Nat::import_undo`]); if all pass, the batch
//! commits ([`Nat::import_commit`]): the changes only a complete batch may make (block events,
//! counts, expiry entries) happen then.
//!
//! One pass rather than a validation pass and an install pass: every check an import needs is
//! made by the install itself (the mapping index finds a mapping present or imported twice,
//! the port bitmaps a port bound or claimed twice, the block owners a block another
//! subscriber holds), so a separate validation repeated that work in scratch tables. Refusals
//! come from a faulty or hostile peer, not in normal operation: their undo may cost more.

use super::{GroupId, ImportSummary, NIL, Nat, NatError, mkey, skey};
use crate::ports::{BlockChange, BlockOwner, PortProto};
use crate::record::records;
use crate::tcp::Dir;
use crate::wheel::WheelEntry;
use flowshift_wire::Instant;

/// How many records ahead an import hashes and prefetches the table lines it will touch.
pub(super) const IMPORT_PREFETCH: usize = 4;

/// Slots of the ring of precomputed hashes (a power of two above [`IMPORT_PREFETCH`]).
pub(super) const AHEAD_RING: usize = (IMPORT_PREFETCH + 1).next_power_of_two();

/// The journal of the import in progress, kept between calls so a batch allocates nothing.
#[derive(Default)]
pub(super) struct ImportScratch {
    /// Slots of the mappings installed, in order (each marked `importing`).
    pub mappings: Vec<u32>,
    /// Slots of the sessions installed, in record order.
    pub sessions: Vec<u32>,
    /// Blocks the batch claimed, with their owner before.
    pub blocks: Vec<(BlockChange, BlockOwner)>,
    /// (subscriber, sessions installed for it), one entry per run of a subscriber's records.
    pub runs: Vec<(u32, u32)>,
    /// Slab lengths and the group's mapping list head before the batch.
    pub sessions_len: usize,
    pub mappings_len: usize,
    pub first_mapping: u32,
}

impl Nat {
    pub(super) fn import_all_or_nothing(
        &mut self,
        g: GroupId,
        now: Instant,
        bytes: &[u8],
    ) -> Result<ImportSummary, NatError> {
        let recs = records(bytes).ok_or(NatError::Import {
            index: 0,
            why: "length is not a multiple of 24",
        })?;
        let first_mapping = self.group(g)?.first_mapping;
        // Every record is a session, and a mapping has at least one: the session bound decides
        // up front, the mapping bound while installing (`import_records`).
        if self.session_count as usize + recs.len() > self.cfg.max_sessions as usize {
            return Err(NatError::Import {
                index: 0,
                why: "batch exceeds the table bounds",
            });
        }
        // No table grows while installing (a no-op after a large enough `reserve`).
        self.reserve(recs.len(), recs.len());
        let mut sc = std::mem::take(&mut self.import_scratch);
        sc.sessions_len = self.sessions.len();
        sc.mappings_len = self.mappings.len();
        sc.first_mapping = first_mapping;
        let result = match self.import_records(g, now, recs, &mut sc) {
            Ok(()) => Ok(self.import_commit(g, now, &sc)),
            Err(e) => {
                self.import_undo(g, &sc);
                Err(e)
            }
        };
        sc.mappings.clear();
        sc.sessions.clear();
        sc.blocks.clear();
        sc.runs.clear();
        // Do not let one huge batch keep its memory.
        if sc.sessions.capacity() > 4 * recs.len().max(4096) {
            sc = ImportScratch::default();
        }
        self.import_scratch = sc;
        self.debug_check_counts();
        result
    }

    /// A complete batch: block events, expiry entries, counts; the mappings stop being
    /// `importing`.
    fn import_commit(&mut self, g: GroupId, now: Instant, sc: &ImportScratch) -> ImportSummary {
        let (n_maps, n) = (sc.mappings.len(), sc.sessions.len());
        for &(change, _) in &sc.blocks {
            self.log_block(now, g.0, change, true);
        }
        for &m in &sc.mappings {
            self.mappings[m as usize].importing = false;
        }
        // What `schedule` does for a new session: one entry, for its class.
        let limit_ns = [0u8, 1, 2, 3].map(|c| self.idle_limit_ns(c));
        for &slot in &sc.sessions {
            let s = &self.sessions[slot as usize];
            let deadline = s
                .last_seen
                .as_nanos()
                .saturating_add(limit_ns[s.class as usize]);
            let entry = WheelEntry {
                slot,
                generation: s.generation,
                class: s.class,
            };
            self.wheel.push(now, Instant::from_nanos(deadline), entry);
        }
        for &(sub, added) in &sc.runs {
            self.subscriber_sessions_added(sub, added);
        }
        let group = self.groups[g.0 as usize].as_mut().expect("checked");
        group.mappings += n_maps as u32;
        group.sessions += n as u32;
        self.mapping_count += n_maps as u32;
        self.session_count += n as u32;
        self.counters.mappings_created += n_maps as u64;
        self.counters.sessions_created += n as u64;
        self.counters.records_imported += n as u64;
        ImportSummary {
            mappings: n_maps as u32,
            sessions: n as u32,
        }
    }

    /// Undoes what [`import_records`](Self::import_records) journalled before a refusal: the
    /// tables, slabs (free lists in their order), port bitmaps and tables and block owners are
    /// as before the batch. Nothing else was changed (events, counts and expiry entries wait
    /// for the commit).
    #[cold]
    fn import_undo(&mut self, g: GroupId, sc: &ImportScratch) {
        let ext = self.groups[g.0 as usize].as_ref().expect("checked").ext;
        for &slot in sc.sessions.iter().rev() {
            let s = &mut self.sessions[slot as usize];
            let (proto, int_addr, int_port, ext_port, rem, rport) = (
                s.proto, s.int_addr, s.int_port, s.ext_port, s.rem_addr, s.rem_port,
            );
            s.flags = 0;
            s.queued = 0;
            s.next = NIL;
            s.prev = NIL;
            let out = skey(Dir::Out, proto, int_addr, int_port, rem, rport);
            let inn = skey(Dir::In, proto, ext, ext_port, rem, rport);
            let removed = (
                self.session_index.remove(&out),
                self.session_index.remove(&inn),
            );
            debug_assert!(
                removed.0.is_some() && removed.1.is_some(),
                "both entries undone"
            );
            // A slot taken from the free list goes back to it (in reverse: the same order);
            // one pushed at the end goes with the truncation below. Its generation was kept.
            if (slot as usize) < sc.sessions_len {
                self.session_free.push(slot);
            }
        }
        self.sessions.truncate(sc.sessions_len);
        for &slot in sc.mappings.iter().rev() {
            let m = &mut self.mappings[slot as usize];
            let (proto, int_addr, int_port, ext_port) =
                (m.proto, m.int_addr, m.int_port, m.ext_port);
            m.live = false;
            m.importing = false;
            m.first_session = NIL;
            m.sessions = 0;
            m.next = NIL;
            m.prev = NIL;
            let removed = self
                .mapping_index
                .remove(&mkey(Dir::Out, proto, int_addr, int_port));
            debug_assert_eq!(removed, Some(slot), "mapping entry undone");
            let pp = PortProto::from_ip_proto(proto).expect("installed");
            let ports = &mut self.groups[g.0 as usize].as_mut().expect("checked").ports;
            ports.set_mapping(ext_port, pp, None);
            // A block it emptied returns to the pool; reserved ones are restored below.
            let _ = ports.release(ext_port, pp);
            if (slot as usize) < sc.mappings_len {
                self.mapping_free.push(slot);
            }
        }
        self.mappings.truncate(sc.mappings_len);
        let group = self.groups[g.0 as usize].as_mut().expect("checked");
        for &(change, before) in sc.blocks.iter().rev() {
            group.ports.unclaim_block(change.block, before);
        }
        group.first_mapping = sc.first_mapping;
        if sc.first_mapping != NIL {
            self.mappings[sc.first_mapping as usize].prev = NIL;
        }
    }
}
