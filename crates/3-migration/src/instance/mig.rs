//! One migration from this instance's side ([`Mig`]): its common state and phase changes,
//! completion and abort, and dispatching frames and timeouts to the source or destination
//! side ([`Side`]).

use super::{Core, GroupMatch};
use crate::channel::Channel;
use crate::config::Params;
use crate::dest::Dst;
use crate::proto::{self, Algorithm};
use crate::report::{LossCause, Stats};
use crate::source::Src;
use crate::{AbortReason, InstanceId, MigrationEvent, MigrationId, Phase, Role};
use flowshift_nat::{GroupConfig, GroupId};
use flowshift_wire::Instant;

pub(crate) enum Side<M> {
    Src(Box<Src<M>>),
    Dst(Box<Dst<M>>),
}

/// One migration, from this instance's side.
pub(crate) struct Mig<M> {
    pub id: MigrationId,
    pub peer: InstanceId,
    pub group: GroupId,
    pub gcfg: Option<GroupConfig>,
    pub gm: GroupMatch,
    pub algorithm: Algorithm,
    pub params: Params,
    pub chan: Channel,
    pub phase: Phase,
    pub phases: Vec<(Phase, Instant)>,
    pub terminal: bool,
    pub completed: bool,
    pub aborted: Option<AbortReason>,
    pub split: bool,
    pub forced_forward: bool,
    /// Counted in the finished list.
    pub listed: bool,
    pub st: Stats,
    pub side: Side<M>,
}

impl<M: Copy> Mig<M> {
    /// A migration in phase `Prepare` with `peer` over a fresh channel; the group is not
    /// known yet (a destination learns it from `Prepare`).
    pub fn new(
        id: MigrationId,
        peer: InstanceId,
        now: Instant,
        algorithm: Algorithm,
        side: Side<M>,
    ) -> Mig<M> {
        Mig {
            id,
            peer,
            group: GroupId(u16::MAX),
            gcfg: None,
            gm: GroupMatch::NONE,
            algorithm,
            params: Params::default(),
            chan: Channel::new(id, now),
            phase: Phase::Prepare,
            phases: Vec::new(),
            terminal: false,
            completed: false,
            aborted: None,
            split: false,
            forced_forward: false,
            listed: false,
            st: Stats::default(),
            side,
        }
    }

    pub fn role(&self) -> Role {
        match self.side {
            Side::Src(_) => Role::Source,
            Side::Dst(_) => Role::Destination,
        }
    }

    pub fn set_phase(&mut self, core: &mut Core<M>, now: Instant, phase: Phase) {
        if self.phase == phase && !self.phases.is_empty() {
            return;
        }
        self.phase = phase;
        self.phases.push((phase, now));
        core.event(MigrationEvent::Phase {
            migration: self.id,
            role: self.role(),
            phase,
            at: now,
        });
    }

    pub fn complete(&mut self, core: &mut Core<M>, now: Instant) {
        if self.terminal {
            return;
        }
        self.set_phase(core, now, Phase::Done);
        self.terminal = true;
        self.completed = true;
        core.event(MigrationEvent::Completed {
            migration: self.id,
            role: self.role(),
        });
    }

    pub fn abort_final(
        &mut self,
        core: &mut Core<M>,
        now: Instant,
        reason: AbortReason,
        split: bool,
    ) {
        if self.terminal {
            return;
        }
        self.set_phase(core, now, Phase::Aborted);
        self.terminal = true;
        self.aborted = Some(reason);
        self.split = split;
        core.event(MigrationEvent::Aborted {
            migration: self.id,
            role: self.role(),
            reason,
            split,
        });
    }

    pub fn lose(&mut self, core: &mut Core<M>, cause: LossCause, pkt: Vec<u8>, meta: M) {
        self.st.lost[cause as usize] += 1;
        core.nat_drop(cause, pkt, meta);
    }

    pub(super) fn on_frame(
        &mut self,
        core: &mut Core<M>,
        now: Instant,
        frame: proto::Frame,
        len: usize,
    ) {
        let mut msgs = Vec::new();
        self.chan.on_frame(now, frame, &core.cfg, len, &mut msgs);
        for msg in msgs {
            match self.side {
                Side::Src(_) => self.src_msg(core, now, msg),
                Side::Dst(_) => self.dst_msg(core, now, msg),
            }
        }
        if let Side::Src(_) = self.side {
            self.src_after_frame(core, now);
        }
    }

    pub(super) fn on_timeout(&mut self, core: &mut Core<M>, now: Instant) {
        match self.side {
            Side::Src(_) => self.src_timeout(core, now),
            Side::Dst(_) => self.dst_timeout(core, now),
        }
    }

    pub(super) fn next_timeout(&self, core: &Core<M>) -> Instant {
        match &self.side {
            Side::Src(s) => self.src_next_timeout(s, &core.cfg),
            Side::Dst(d) => {
                let rx_at = core.chain_rx_at.get(&self.peer).copied();
                self.dst_next_timeout(d, &core.cfg, rx_at.unwrap_or(Instant::ZERO))
            }
        }
    }
}
