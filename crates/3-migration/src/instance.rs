//! [`Instance`]: one NAT with its migrations; the packet path, the transfer path, timers and
//! controller commands. The algorithms live in `source.rs` and `dest.rs`.
//!
//! This module holds [`Instance`] itself, its accessors and the end-of-call upkeep; the state
//! shared by all migrations is in `shared`, one migration in `mig`, the packet path in
//! `packet`, the transfer path and timers in `transfer`, the controller's commands in
//! `commands`.

use crate::config::MigrationConfig;
use crate::proto::{self};
use crate::recovery::Replay;
use crate::report::InstanceCounters;
use crate::{Error, InstanceId, MigrationId, Phase, Role};
use flowshift_nat::record::RECORD_LEN;
use flowshift_nat::{GroupId, Nat, Verdict};
use flowshift_wire::Instant;
use std::collections::{BTreeMap, HashMap, VecDeque};

mod commands;
mod mig;
mod packet;
mod shared;
mod transfer;

pub(crate) use mig::{Mig, Side};
pub(crate) use shared::{Core, FrozenFor, GroupMatch, Held, Route};

/// Most acknowledgements for forgotten migrations waiting for `poll_transmit`.
const MAX_LOOSE_ACKS: usize = 256;

/// One NAT instance and the migrations it takes part in. See the crate documentation for the
/// driver contract, the per-packet tag `M` and the algorithms.
pub struct Instance<M = ()> {
    pub(crate) core: Core<M>,
    pub(crate) migs: BTreeMap<MigrationId, Mig<M>>,
    finished: VecDeque<MigrationId>,
    /// This process's id epoch and the next counter in it (see [`MigrationId`]).
    epoch: u32,
    next_counter: u16,
    /// Replay protection for incoming migrations.
    replay: Replay,
    /// Migrations not yet finished.
    running: usize,
    /// Destination migrations holding switch packets.
    holding: usize,
    /// Destination migrations that got `Done` and wait for chained packets.
    awaiting_chain: usize,
    verdicts: Vec<Verdict>,
}

impl Instance {
    /// An instance whose packets carry no tag (`M = ()`); see [`with_meta`](Self::with_meta).
    pub fn new(id: InstanceId, nat: Nat, cfg: MigrationConfig) -> Result<Instance, Error> {
        Instance::with_meta(id, nat, cfg)
    }
}

impl<M: Copy> Instance<M> {
    /// Wraps `nat` as instance `id`, its packets tagged with the driver's `M`. Fails if `cfg`
    /// is invalid, or if the NAT's per-mapping session bound lets one mapping exceed a frame.
    pub fn with_meta(id: InstanceId, nat: Nat, cfg: MigrationConfig) -> Result<Instance<M>, Error> {
        cfg.validate().map_err(Error::Config)?;
        let cfg_epoch = cfg.epoch;
        if nat.config().max_sessions_per_mapping as usize * RECORD_LEN + 4 > proto::MAX_BODY {
            return Err(Error::Config(
                "max_sessions_per_mapping too large: one mapping would not fit in a frame",
            ));
        }
        Ok(Instance {
            core: Core {
                id,
                nat,
                cfg,
                outputs: VecDeque::new(),
                reports: 0,
                events: VecDeque::new(),
                frozen: HashMap::new(),
                routes: Vec::new(),
                chain_tx: HashMap::new(),
                chain_rx: HashMap::new(),
                chain_rx_at: HashMap::new(),
                counters: InstanceCounters::default(),
                reprocess: Vec::new(),
                loose: VecDeque::new(),
            },
            migs: BTreeMap::new(),
            finished: VecDeque::new(),
            epoch: cfg_epoch,
            next_counter: 1,
            replay: Replay::default(),
            running: 0,
            holding: 0,
            awaiting_chain: 0,
            verdicts: Vec::new(),
        })
    }

    /// This instance's id.
    pub fn id(&self) -> InstanceId {
        self.core.id
    }

    /// The driver carried one chained packet to `to` as `frames` packets: several if it
    /// segmented a GSO packet the chain link cannot carry whole, 0 if it could not send it at
    /// all. The end-of-chain marker and `Done` count what the peer receives, so the count sent
    /// to `to` is corrected by `frames - 1`; call it before the next `handle_*` call, as the
    /// packet loop does after each drain.
    pub fn chain_split(&mut self, to: InstanceId, frames: u64) {
        let sent = self.core.chain_tx.entry(to).or_default();
        *sent = (*sent + frames).saturating_sub(1);
        let out = &mut self.core.counters.chained_out;
        *out = (*out + frames).saturating_sub(1);
    }

    /// The NAT (counters, `check_invariants`, tables).
    pub fn nat(&self) -> &Nat {
        &self.core.nat
    }

    /// Next mapping-log event of the NAT ([`Nat::poll_event`]: port-block allocations and
    /// releases). A driver drains it like the other queues; the NAT counts what overflows.
    pub fn poll_nat_event(&mut self) -> Option<flowshift_nat::Event> {
        self.core.nat.poll_event()
    }

    /// Engine counters.
    pub fn counters(&self) -> &InstanceCounters {
        &self.core.counters
    }

    /// Migrations this instance knows (running, then finished ones kept for reports): id, role,
    /// phase.
    pub fn migrations(&self) -> Vec<(MigrationId, Role, Phase)> {
        self.migs
            .values()
            .map(|m| (m.id, m.role(), m.phase))
            .collect()
    }

    /// True while a migration of `group` runs here, or the group is left split and chained.
    pub fn group_busy(&self, group: GroupId) -> bool {
        self.migs
            .values()
            .any(|m| !m.terminal && m.group == group && m.gcfg.is_some())
            || self.core.routes.iter().any(|r| r.group == group)
    }

    // ---------------------------------------------------------------------------- helpers

    /// End of every control-path call: re-run buffered packets, refresh the cached counts,
    /// forget the oldest finished migrations.
    pub(crate) fn after_call(&mut self, now: Instant) {
        while !self.core.reprocess.is_empty() {
            let batch = std::mem::take(&mut self.core.reprocess);
            for (mut p, meta) in batch {
                self.core.counters.reprocessed += 1;
                let v = self.core.nat.process(now, &mut p);
                self.dispatch(now, p, meta, v);
            }
        }
        let (mut running, mut holding, mut awaiting) = (0, 0, 0);
        for m in self.migs.values_mut() {
            if !m.terminal {
                running += 1;
            } else if !m.listed {
                m.listed = true;
                self.finished.push_back(m.id);
            }
            if let Side::Dst(d) = &m.side {
                if d.holding {
                    holding += 1;
                }
                if !m.terminal && d.awaits_chain() {
                    awaiting += 1;
                }
            }
        }
        debug_assert!(holding <= self.migs.len() && awaiting <= running);
        self.running = running;
        self.holding = holding;
        self.awaiting_chain = awaiting;
        while self.finished.len() > self.core.cfg.max_finished as usize {
            if let Some(id) = self.finished.pop_front() {
                self.migs.remove(&id);
            }
        }
        debug_assert!(self.core.reprocess.is_empty(), "re-processing done");
        debug_assert!(
            self.core.outputs.len() - self.core.reports <= self.core.cfg.max_outputs as usize
                && self.core.reports <= self.core.cfg.max_outputs as usize,
            "output queue bounds"
        );
    }
}
