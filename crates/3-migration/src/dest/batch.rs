//! The destination's batches: imported at once (freeze-copy, stop-copy) or staged by mapping
//! until a pre-copy commit installs them slice by slice.

use super::{CommitJob, IMPORT_SLICE_RECORDS, Staged};
use crate::Phase;
use crate::instance::{Core, Mig};
use crate::proto::{self, Algorithm, MappingKey, Message};
use flowshift_nat::GroupMode;
use flowshift_nat::record::RECORD_LEN;
use flowshift_wire::Instant;
use std::collections::BTreeMap;

fn key_of(rec: &[u8]) -> MappingKey {
    MappingKey {
        proto: rec[0],
        addr: [rec[4], rec[5], rec[6], rec[7]],
        port: u16::from_be_bytes([rec[8], rec[9]]),
    }
}

impl<M: Copy> Mig<M> {
    pub(super) fn dst_batch(
        &mut self,
        core: &mut Core<M>,
        now: Instant,
        batch: u32,
        records: Vec<u8>,
    ) {
        debug_assert_eq!(
            records.len() % RECORD_LEN,
            0,
            "decoded batches hold whole records"
        );
        let n = (records.len() / RECORD_LEN) as u32;
        self.st.batches += 1;
        self.st.records += n as u64;
        let g = self.group;
        let (installed, ok) = match self.algorithm {
            Algorithm::FreezeCopy | Algorithm::StopCopy => {
                match core.nat.import(g, now, &records) {
                    Ok(s) => {
                        let d = self.dst();
                        d.imported_mappings += s.mappings;
                        d.imported_records += s.sessions;
                        if self.algorithm == Algorithm::FreezeCopy {
                            self.st.transferred += s.mappings;
                        }
                        (s.sessions, true)
                    }
                    Err(_) => (0, false),
                }
            }
            Algorithm::PreCopy => {
                let max = core.nat.config().max_sessions as u64;
                let d = self.dst();
                let mut by_key: BTreeMap<MappingKey, Vec<u8>> = BTreeMap::new();
                for rec in records.chunks_exact(RECORD_LEN) {
                    by_key
                        .entry(key_of(rec))
                        .or_default()
                        .extend_from_slice(rec);
                }
                let replaced: u64 = by_key
                    .keys()
                    .filter_map(|k| d.staged.get(k))
                    .map(|s| (s.records.len() / RECORD_LEN) as u64)
                    .sum();
                debug_assert!(replaced <= d.staged_records, "staged record count");
                let total = d.staged_records - replaced + n as u64;
                if total > max {
                    (0, false)
                } else {
                    for (k, recs) in by_key {
                        d.staged.insert(
                            k,
                            Staged {
                                at: now,
                                records: recs,
                            },
                        );
                    }
                    d.staged_records = total;
                    (n, true)
                }
            }
        };
        if !ok {
            self.st.batches_refused += 1;
        }
        self.chan.send(
            now,
            &Message::BatchAck(proto::BatchAck {
                batch,
                installed,
                ok,
            }),
            &core.cfg,
        );
    }

    pub(super) fn dst_commit(&mut self, core: &mut Core<M>, now: Instant, c: proto::Commit) {
        match self.algorithm {
            Algorithm::StopCopy => {
                let d = self.dst();
                let ok = d.imported_mappings == c.mappings && d.imported_records == c.records;
                self.dst_commit_answer(core, now, ok);
            }
            Algorithm::PreCopy => {
                let d = self.dst();
                if d.commit_job.is_some() {
                    return; // a retransmitted Commit while installing
                }
                if d.staged.len() as u64 != c.mappings as u64
                    || d.staged_records != c.records as u64
                {
                    self.dst_commit_answer(core, now, false);
                    return;
                }
                let staged = std::mem::take(&mut d.staged);
                d.staged_records = 0;
                d.imported_mappings = 0;
                d.imported_records = 0;
                d.commit_job = Some(CommitJob { staged });
                self.dst_commit_step(core, now);
            }
            Algorithm::FreezeCopy => self.dst_commit_answer(core, now, false),
        }
    }

    /// Imports the next slice (whole mappings, about [`IMPORT_SLICE_RECORDS`] records) of a
    /// pre-copy commit; answers the commit after the last one, or at the first refusal (what
    /// was imported goes when the source's `Abort` comes).
    pub(super) fn dst_commit_step(&mut self, core: &mut Core<M>, now: Instant) {
        let g = self.group;
        let d = self.dst();
        let Some(job) = d.commit_job.as_mut() else {
            return;
        };
        // Records carry their idle time at export; add the time they waited here.
        let mut slice = Vec::with_capacity(IMPORT_SLICE_RECORDS * RECORD_LEN);
        while slice.len() < IMPORT_SLICE_RECORDS * RECORD_LEN {
            let Some((_, st)) = job.staged.pop_first() else {
                break;
            };
            let extra = u32::try_from(now.saturating_since(st.at).as_millis()).unwrap_or(u32::MAX);
            for rec in st.records.chunks_exact(RECORD_LEN) {
                let start = slice.len();
                slice.extend_from_slice(rec);
                let idle = &mut slice[start + 20..start + 24];
                let v =
                    u32::from_be_bytes([idle[0], idle[1], idle[2], idle[3]]).saturating_add(extra);
                idle.copy_from_slice(&v.to_be_bytes());
            }
        }
        let last = job.staged.is_empty();
        debug_assert_eq!(slice.len() % RECORD_LEN, 0, "whole records");
        let ok = slice.is_empty()
            || match core.nat.import(g, now, &slice) {
                Ok(st) => {
                    d.imported_mappings += st.mappings;
                    d.imported_records += st.sessions;
                    true
                }
                Err(_) => false,
            };
        if last || !ok {
            d.commit_job = None;
            self.dst_commit_answer(core, now, ok);
        }
    }

    fn dst_commit_answer(&mut self, core: &mut Core<M>, now: Instant, ok: bool) {
        let g = self.group;
        let d = self.dst();
        let (mappings, records) = (d.imported_mappings, d.imported_records);
        if ok {
            d.committed = true;
            core.set_mode(g, GroupMode::Active);
            self.st.transferred = mappings;
            self.set_phase(core, now, Phase::AwaitCutover);
        }
        self.chan.send(
            now,
            &Message::CommitAck(proto::CommitAck {
                ok,
                mappings,
                records,
            }),
            &core.cfg,
        );
    }
}
