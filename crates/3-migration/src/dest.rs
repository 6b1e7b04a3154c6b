//! The destination side of a migration: passive, it reacts to the source's messages.
//!
//! This module holds the destination's state ([`Dst`]), the message dispatch and `Prepare`;
//! batches and the pre-copy commit are in `batch`, the cutover hold and completion in `hold`,
//! reverting, failure, abort and rehoming in `abort`, the timers in `timers`.

use crate::instance::{Core, GroupMatch, Held, Mig, Side};
use crate::proto::{self, Algorithm, MappingKey, Message};
use crate::{AbortReason, MigrationEvent, Phase};
use flowshift_nat::record::RECORD_LEN;
use flowshift_nat::{GroupConfig, GroupMode};
use flowshift_wire::Instant;
use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

mod abort;
mod batch;
mod hold;
mod timers;

/// Pre-copy: the staged records of one mapping and when they arrived.
struct Staged {
    at: Instant,
    records: Vec<u8>,
}

/// Records a pre-copy commit imports per call: the rest goes on in `handle_timeout` calls,
/// between the driver's packet batches (the group stays halted until the last one).
pub(crate) const IMPORT_SLICE_RECORDS: usize = 8192;

/// A pre-copy commit being installed slice by slice.
struct CommitJob {
    /// The staged mappings not installed yet.
    staged: BTreeMap<MappingKey, Staged>,
}

pub(crate) struct Dst<M> {
    commit_job: Option<CommitJob>,
    staged: BTreeMap<MappingKey, Staged>,
    staged_records: u64,
    imported_mappings: u32,
    imported_records: u32,
    group_added: bool,
    committed: bool,
    /// Switch packets of the group held until the end-of-chain marker (at most
    /// `cutover_hold_packets` and `cutover_hold_bytes`; `held_bytes` counts them).
    held: VecDeque<Held<M>>,
    held_bytes: u64,
    pub holding: bool,
    /// From `ChainEnd`: chained packets to receive before the holding stops.
    chain_end_target: Option<u64>,
    chain_end_at: Instant,
    /// From `Done`: chained packets to wait for.
    pub done_target: Option<u64>,
    done_at: Instant,
    /// The source's blocks are reserved in our group (from `Prepare` to `Done`, a drop of the
    /// group, or a release when the source is known gone).
    reserved: bool,
}

impl<M> Default for Dst<M> {
    fn default() -> Self {
        Dst {
            commit_job: None,
            staged: BTreeMap::new(),
            staged_records: 0,
            imported_mappings: 0,
            imported_records: 0,
            group_added: false,
            committed: false,
            held: VecDeque::new(),
            held_bytes: 0,
            holding: false,
            chain_end_target: None,
            chain_end_at: Instant::ZERO,
            done_target: None,
            done_at: Instant::ZERO,
            reserved: false,
        }
    }
}

impl<M> Dst<M> {
    /// The switch packets held until the end-of-chain marker, in arrival order.
    pub fn held(&self) -> impl Iterator<Item = &Held<M>> {
        self.held.iter()
    }

    /// Waiting for chained packets: before releasing the hold (`ChainEnd`) or completing
    /// (`Done`).
    pub fn awaits_chain(&self) -> bool {
        self.done_target.is_some() || (self.holding && self.chain_end_target.is_some())
    }
}

impl<M: Copy> Mig<M> {
    fn dst(&mut self) -> &mut Dst<M> {
        match &mut self.side {
            Side::Dst(d) => d,
            Side::Src(_) => unreachable!("destination method on a source"),
        }
    }

    pub(crate) fn dst_msg(&mut self, core: &mut Core<M>, now: Instant, msg: Message) {
        if self.terminal {
            return;
        }
        match msg {
            Message::Prepare(p) if !self.dst().group_added => self.dst_prepare(core, now, p),
            Message::Batch { batch, records } if self.dst().group_added => {
                self.dst_batch(core, now, batch, records)
            }
            Message::Delete(keys) => {
                let d = self.dst();
                for k in keys {
                    if let Some(s) = d.staged.remove(&k) {
                        let n = (s.records.len() / RECORD_LEN) as u64;
                        debug_assert!(d.staged_records >= n, "staged record count");
                        d.staged_records -= n;
                    }
                }
            }
            Message::Commit(c) if self.dst().group_added => self.dst_commit(core, now, c),
            Message::Cutover => self.set_phase(core, now, Phase::Drain),
            Message::ChainEnd(c) => {
                let d = self.dst();
                if d.chain_end_target.is_none() {
                    d.chain_end_target = Some(c.chained);
                    d.chain_end_at = now;
                }
                self.dst_try_complete(core, now);
            }
            Message::Done(d) => {
                if core.nat.release_reserved_blocks(self.group).is_err() {
                    core.counters.internal_errors += 1;
                }
                self.dst().reserved = false;
                let dd = self.dst();
                dd.done_target = Some(d.chained);
                dd.done_at = now;
                self.set_phase(core, now, Phase::Drain);
                self.dst_try_complete(core, now);
            }
            Message::Abort(reason) => self.dst_revert(core, now, reason),
            Message::Ping | Message::Ack => {}
            _ => core.counters.frames_unknown += 1,
        }
    }

    fn dst_refuse(&mut self, core: &mut Core<M>, now: Instant, reason: AbortReason) {
        self.chan.send(now, &Message::Abort(reason), &core.cfg);
        self.abort_final(core, now, reason, false);
    }

    fn dst_prepare(&mut self, core: &mut Core<M>, now: Instant, p: proto::Prepare) {
        self.set_phase(core, now, Phase::Prepare);
        let nc = core.nat.config();
        if (p.port_min, p.port_max, p.block_size) != (nc.port_min, nc.port_max, nc.block_size) {
            self.dst_refuse(core, now, AbortReason::ConfigMismatch);
            return;
        }
        let Some(subscribers) = flowshift_nat::prefix(Ipv4Addr::from(p.prefix_addr), p.prefix_len)
        else {
            self.dst_refuse(core, now, AbortReason::Protocol);
            return;
        };
        let gcfg = GroupConfig {
            external: Ipv4Addr::from(p.external),
            subscribers,
        };
        // Freeze-copy serves chained new flows at once; the others install at commit.
        let mode = match p.algorithm {
            Algorithm::FreezeCopy => GroupMode::Active,
            Algorithm::StopCopy | Algorithm::PreCopy => GroupMode::Halted,
        };
        let Ok(g) = core.nat.add_group(gcfg.clone(), mode) else {
            self.dst_refuse(core, now, AbortReason::PrepareRefused);
            return;
        };
        // Sized once for what the source announced (a hint, clamped by the NAT to its bounds),
        // so the batches' imports never grow a table.
        core.nat
            .reserve(p.mappings_hint as usize, p.records_hint as usize);
        let blocks: Vec<u32> = p.held_blocks.iter().map(|b| b.0).collect();
        if core.nat.reserve_blocks(g, &blocks).is_err() {
            let _ = core.nat.remove_group(g);
            self.dst_refuse(core, now, AbortReason::PrepareRefused);
            return;
        }
        self.group = g;
        self.dst().reserved = true;
        self.gm = GroupMatch::new(&gcfg);
        self.gcfg = Some(gcfg);
        self.algorithm = p.algorithm;
        let d = self.dst();
        d.group_added = true;
        d.holding = true;
        self.chan.send(now, &Message::PrepareAck, &core.cfg);
        core.event(MigrationEvent::Incoming {
            migration: self.id,
            group: g.0,
            from: self.peer,
        });
        self.set_phase(core, now, Phase::Transfer);
    }
}
