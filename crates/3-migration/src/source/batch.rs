//! Building and sending the source's batches: the export of whole port-block runs, and the
//! window that paces them (batches in flight, the freeze budget).

use super::{Copied, Flight, PUMP_SLICE_BYTES, ScanGoal};
use crate::Phase;
use crate::instance::{Core, FrozenFor, Mig, Side};
use crate::proto::{self, Algorithm, MappingKey, Message};
use flowshift_nat::MappingId;
use flowshift_wire::Instant;
use std::collections::BTreeMap;

impl<M: Copy> Mig<M> {
    /// Exports the next batch from the queue; `None` if the queue holds no live mapping.
    ///
    /// The queue holds (run key, mapping): freeze-copy keys by port block, and a batch takes
    /// whole runs only, so a block's mappings always travel together (a run longer than
    /// `batch_size` or `batch_max_bytes` travels alone). Reason: once the destination imports a
    /// mapping of a block, the block belongs to that subscriber there and the destination may
    /// allocate its free ports; had the source kept other mappings of the block, one external
    /// port could end up bound to two different mappings. Only a block whose records exceed a
    /// frame is split (counted in `blocks_split`).
    pub(super) fn src_build_batch(
        &mut self,
        core: &mut Core<M>,
        now: Instant,
        max_bytes: usize,
    ) -> Option<(u32, Vec<u8>)> {
        const FRAME_ROOM: usize = proto::MAX_BODY - 4;
        const REC: usize = flowshift_nat::record::RECORD_LEN;
        let freeze = self.algorithm == Algorithm::FreezeCopy;
        let max_n = self.params.batch_size as usize;
        let id_self = self.id;
        let s = match &mut self.side {
            Side::Src(s) => s,
            Side::Dst(_) => return None,
        };
        let batch = s.next_batch;
        let round = s.round.map_or(0, |r| r.round);
        let mut records = Vec::new();
        let mut ids: Vec<(u32, MappingId)> = Vec::new();
        let mut n_records = 0u32;
        'runs: while ids.len() < max_n {
            let Some(&(key, _)) = s.queue.front() else {
                break;
            };
            let run_len = s.queue.iter().take_while(|(k, _)| *k == key).count();
            let run_bytes: usize = s
                .queue
                .iter()
                .take(run_len)
                .filter_map(|(_, id)| core.nat.mapping_sessions(*id).ok())
                .map(|n| n as usize * REC)
                .sum();
            if !ids.is_empty()
                && (ids.len() + run_len > max_n
                    || records.len() + run_bytes > max_bytes.min(FRAME_ROOM))
            {
                break;
            }
            for _ in 0..run_len {
                let Some(&(k, id)) = s.queue.front() else {
                    break 'runs;
                };
                let Ok(sessions) = core.nat.mapping_sessions(id) else {
                    s.queue.pop_front(); // died meanwhile
                    continue;
                };
                if records.len() + sessions as usize * REC > FRAME_ROOM {
                    self.st.blocks_split += 1;
                    break 'runs;
                }
                s.queue.pop_front();
                let Ok(n) = core.nat.export_mapping(id, now, &mut records) else {
                    continue;
                };
                n_records += n;
                if freeze {
                    if core.nat.set_frozen(id, true).is_err() {
                        core.counters.internal_errors += 1;
                    }
                    core.frozen.insert(id, (id_self, FrozenFor::Batch(batch)));
                } else if let Ok(info) = core.nat.mapping_info(id) {
                    let key = MappingKey {
                        proto: info.proto,
                        addr: info.internal.ip().octets(),
                        port: info.internal.port(),
                    };
                    s.copied.insert(
                        id,
                        Copied {
                            key,
                            at: now,
                            sessions: n,
                            round,
                        },
                    );
                }
                ids.push((k, id));
            }
        }
        if ids.is_empty() {
            return None;
        }
        debug_assert_eq!(records.len() % REC, 0, "whole records");
        debug_assert!(records.len() <= FRAME_ROOM, "a batch fits in a frame");
        debug_assert!(
            ids.len() <= max_n || ids.iter().all(|(k, _)| *k == ids[0].0),
            "only a single run may exceed batch_size"
        );
        debug_assert!(!s.flights.contains_key(&batch), "batch numbers are unique");
        s.next_batch = s.next_batch.wrapping_add(1);
        if let Some(r) = s.round.as_mut() {
            r.copied += ids.len() as u32;
            r.records += n_records;
        }
        s.inflight_bytes += records.len() as u64;
        s.flights.insert(
            batch,
            Flight {
                ids,
                sent_at: now,
                bytes: records.len() as u64,
                held: Vec::new(),
            },
        );
        self.st.batches += 1;
        self.st.records += n_records as u64;
        Some((batch, records))
    }

    /// Sends batches while the window allows; moves the algorithm on when a round (or the
    /// freeze-and-copy) is complete.
    ///
    /// The window: `batches_in_flight` batches of at most `batch_max_bytes`; freeze-copy with a
    /// `freeze_target` also keeps at most the freeze budget of record bytes in flight (a port
    /// block larger than the budget still travels, alone).
    pub(super) fn src_pump(&mut self, core: &mut Core<M>, now: Instant) {
        if self.terminal {
            return;
        }
        let budgeted =
            self.algorithm == Algorithm::FreezeCopy && !self.params.freeze_target.is_zero();
        let max_unacked = core.cfg.max_unacked as usize;
        let in_flight = self.params.batches_in_flight as usize;
        let batch_max = self.params.batch_max_bytes as usize;
        if self.src_ref().scan.is_some() {
            return;
        }
        self.src().pump_due = false;
        let mut exported = 0usize;
        loop {
            if exported >= PUMP_SLICE_BYTES {
                // The window has room for more: the next call sends it.
                self.src().pump_due = true;
                return;
            }
            let unacked = self.chan.unacked();
            let s = self.src();
            if s.retry_at.is_some_and(|t| t > now) {
                return;
            }
            s.retry_at = None;
            if s.flights.len() >= in_flight || unacked >= max_unacked {
                return;
            }
            let max_bytes = if budgeted {
                if !s.flights.is_empty() && s.inflight_bytes >= s.budget {
                    return;
                }
                // A batch never goes below one record; a port block larger than the room left
                // travels alone (see `src_build_batch`).
                (s.budget.saturating_sub(s.inflight_bytes) as usize).clamp(24, batch_max)
            } else {
                batch_max
            };
            let Some((batch, records)) = self.src_build_batch(core, now, max_bytes) else {
                break;
            };
            exported += records.len();
            self.chan
                .send(now, &Message::Batch { batch, records }, &core.cfg);
        }
        if !self.src().flights.is_empty() || !self.src().retiring.is_empty() {
            return;
        }
        match self.phase {
            Phase::FreezeCopy => {
                let left = core.nat.group_stats(self.group).map_or(0, |s| s.mappings);
                if left == 0 {
                    self.src_ready(core, now);
                } else {
                    // Mappings not in the order (cannot happen while draining): take them too.
                    self.src_begin_scan(core, ScanGoal::FreezeOrder(BTreeMap::new()));
                }
            }
            Phase::Rounds | Phase::StopCopy if self.src_ref().round.is_some() => {
                self.src_round_done(core, now);
            }
            _ => {}
        }
    }
}
