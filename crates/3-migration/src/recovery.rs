//! Trust and recovery: replay protection of incoming migrations (per source epoch), source
//! restarts, and the controller's commands for a group whose owner died
//! ([`Instance::adopt_group`], [`Instance::release_group`]).
//!
//! **Replay protection.** A migration id carries its source process's random epoch and a
//! counter ([`MigrationId`]), so a process never reuses an id and an outsider cannot guess
//! one. A destination remembers the ids of the last [`MAX_REMEMBERED`] migrations it accepted
//! (beyond those it still keeps for reports): a frame for one of them is stale or replayed,
//! counted in `frames_stale` and dropped (acknowledged, so a late retransmission ends, unless
//! it is a `Prepare`). Old sequence numbers within a migration are the channel's duplicates.
//! There is no high-water mark per source or epoch: a forged or stale frame can only occupy
//! its own id, so nothing a peer sends blocks a later migration (a forged `Prepare` creates
//! a migration that nobody continues: it ends after `peer_timeout` and frees the group). The
//! transport authenticates `from` (mutual TLS binds instance ids); a frame whose id names
//! another source is refused (`frames_unknown`).
//!
//! **Source restarts.** A `Prepare` from a source under a new epoch (not the successor of a
//! wrapped counter, [`MigrationId::next_epoch`]) means that source's earlier process is gone:
//! its running incoming migrations end (`SourceRestarted`, counted in `sources_restarted`):
//! one that got `Cutover` (the switch sends the group here) keeps its state as if the source had
//! fallen silent; one before it drops what it received, since the switch still sends the group
//! to the restarted source, which serves it afresh. The port blocks reserved for the old
//! process are returned to the pool (`reservations_released`): no process holds them any more.

use crate::instance::Side;
use crate::{AbortReason, Error, Instance, InstanceId, MigrationId, Phase};
use flowshift_nat::{GroupConfig, GroupId, GroupMode, RemoveCause};
use flowshift_wire::Instant;
use std::collections::{HashSet, VecDeque};

/// Ids of accepted migrations a destination remembers for replay protection.
pub const MAX_REMEMBERED: usize = 4096;

/// The ids of the last [`MAX_REMEMBERED`] migrations accepted, oldest first.
#[derive(Default)]
pub(crate) struct Replay {
    ids: HashSet<MigrationId>,
    order: VecDeque<MigrationId>,
}

impl Replay {
    /// True if `id` was accepted before.
    pub fn is_stale(&self, id: MigrationId) -> bool {
        self.ids.contains(&id)
    }

    /// Records an accepted `Prepare`; true if the oldest id had to be forgotten.
    pub fn accept(&mut self, id: MigrationId) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() <= MAX_REMEMBERED {
            return false;
        }
        if let Some(old) = self.order.pop_front() {
            self.ids.remove(&old);
        }
        true
    }
}

impl<M: Copy> Instance<M> {
    /// A `Prepare` from `from` under `epoch`: ends what an earlier process of that source left
    /// here (see the module documentation).
    pub(crate) fn source_restarted(&mut self, now: Instant, from: InstanceId, epoch: u32) {
        for m in self.migs.values_mut() {
            if m.peer != from || m.id.source() != from || !matches!(m.side, Side::Dst(_)) {
                continue;
            }
            let old = m.id.epoch();
            if old == epoch || MigrationId::next_epoch(old) == epoch {
                continue;
            }
            if !m.terminal {
                self.core.counters.sources_restarted += 1;
                if m.phase == Phase::Drain {
                    // Past the cutover: the switch sends the group here; keep it.
                    m.dst_peer_failed(&mut self.core, now, AbortReason::SourceRestarted);
                } else {
                    // Before it the switch sends the group to the restarted source, which
                    // serves it afresh: what was moved here is obsolete (lost in the crash).
                    m.dst_revert(&mut self.core, now, AbortReason::SourceRestarted);
                }
            }
            if self.core.nat.group_config(m.group).is_ok() {
                m.dst_release_reservations(&mut self.core);
            }
        }
    }

    /// The controller makes this instance the owner of the group `cfg` because its owner (or
    /// the migration's other end) died. Every migration of the group here ends (`Rehomed`):
    /// an incoming one keeps all it received and returns the reserved blocks to the pool; an
    /// outgoing one keeps what is still here and stops chaining. The group is added if this
    /// instance does not have it, and serves (`Active`). Counted in `groups_adopted`.
    /// State that only the dead instance held is lost; the controller reports it.
    pub fn adopt_group(&mut self, now: Instant, cfg: GroupConfig) -> Result<GroupId, Error> {
        let ext = cfg.external;
        for m in self.migs.values_mut() {
            let same = m.gcfg.as_ref().is_some_and(|g| g.external == ext)
                && self
                    .core
                    .nat
                    .group_config(m.group)
                    .is_ok_and(|g| g.external == ext);
            if !same {
                continue;
            }
            match m.side {
                Side::Dst(_) => {
                    if m.terminal {
                        m.dst_release_reservations(&mut self.core);
                    } else {
                        m.dst_adopt(&mut self.core, now);
                    }
                }
                Side::Src(_) => m.src_adopt(&mut self.core, now),
            }
        }
        let g = match self.core.nat.group_id(ext) {
            Some(g) => g,
            None => self.core.nat.add_group(cfg, GroupMode::Active)?,
        };
        self.core.nat.set_group_mode(g, GroupMode::Active)?;
        self.core.routes.retain(|r| r.group != g);
        self.core.counters.groups_adopted += 1;
        self.after_call(now);
        Ok(g)
    }

    /// The controller gave the group with this external address to another instance: every
    /// migration of it here ends (`Rehomed`), and the group and all its mappings are removed
    /// (their packets now go elsewhere; buffered ones are processed and dropped as `NoGroup`).
    /// Returns the mappings dropped (0 if the group is not here). Counted in
    /// `groups_released` and `mappings_released`.
    pub fn release_group(&mut self, now: Instant, external: std::net::Ipv4Addr) -> u32 {
        let Some(g) = self.core.nat.group_id(external) else {
            return 0;
        };
        let n = self.core.nat.group_stats(g).map_or(0, |s| s.mappings);
        self.core.counters.mappings_released += n as u64;
        for m in self.migs.values_mut() {
            if m.terminal || m.group != g || m.gcfg.as_ref().is_none_or(|c| c.external != external)
            {
                continue;
            }
            match m.side {
                Side::Dst(_) => m.dst_release_group(&mut self.core, now),
                Side::Src(_) => m.src_give_up(&mut self.core, now, AbortReason::Rehomed),
            }
        }
        self.core.routes.retain(|r| r.group != g);
        self.core.counters.groups_released += 1;
        // An incoming migration's revert may have removed the group already.
        if self.core.nat.group_id(external) != Some(g) {
            self.after_call(now);
            return n;
        }
        // What the migrations gave back is processed while the group is halted: dropped and
        // counted (`GroupHalted`), like every later packet of the group here.
        if self.core.nat.set_group_mode(g, GroupMode::Halted).is_err() {
            self.core.counters.internal_errors += 1;
        }
        self.after_call(now);
        for id in self.core.nat.group_mappings(g).unwrap_or_default() {
            self.core.frozen.remove(&id);
            if self
                .core
                .nat
                .remove_mapping(id, now, RemoveCause::Deleted)
                .is_err()
            {
                self.core.counters.internal_errors += 1;
            }
        }
        if self.core.nat.remove_group(g).is_err() {
            self.core.counters.internal_errors += 1;
        }
        self.after_call(now);
        n
    }
}
