//! [`Instance`]: one NAT with its migrations; the packet path, the transfer path, timers and
//! controller commands. The algorithms live in `source.rs` and `dest.rs`.

use crate::channel::Channel;
use crate::config::{MigrationConfig, Params};
use crate::dest::Dst;
use crate::proto::{self, Algorithm, Kind, Message};
use crate::recovery::Replay;
use crate::report::{InstanceCounters, LossCause, MigrationReport, Stats};
use crate::source::Src;
use crate::{
    AbortOutcome, AbortReason, Direction, Error, Ingress, InstanceId, MigrationEvent, MigrationId,
    Output, Phase, Role,
};
use flowshift_nat::record::RECORD_LEN;
use flowshift_nat::{DropReason, GroupConfig, GroupId, MappingId, Nat, Verdict};
use flowshift_wire::Instant;
use flowshift_wire::packet::{field, get_addr};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Most acknowledgements for forgotten migrations waiting for `poll_transmit`.
const MAX_LOOSE_ACKS: usize = 256;

/// Matches the packets of one group by address: destination = the external address (inbound),
/// or source inside the subscriber prefix (outbound).
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupMatch {
    ext: u32,
    net: u32,
    mask: u32,
}

impl GroupMatch {
    pub const NONE: GroupMatch = GroupMatch {
        ext: 0,
        net: 1,
        mask: 0,
    };

    pub fn new(cfg: &GroupConfig) -> Self {
        let len = cfg.subscribers.prefix_len();
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        GroupMatch {
            ext: u32::from(cfg.external),
            net: u32::from(cfg.subscribers.network()) & mask,
            mask,
        }
    }

    #[inline]
    pub fn matches(&self, pkt: &[u8]) -> bool {
        let (Some(src), Some(dst)) = (
            get_addr(pkt, field::IPV4_SRC),
            get_addr(pkt, field::IPV4_DST),
        ) else {
            return false;
        };
        u32::from_be_bytes(dst) == self.ext || u32::from_be_bytes(src) & self.mask == self.net
    }
}

/// A group being chained to a peer (from `Draining` until the source forgets it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Route {
    pub group: GroupId,
    pub peer: InstanceId,
    pub mig: MigrationId,
    /// Freeze-copy before `PrepareAck`: misses are buffered, not chained yet.
    pub buffering: bool,
}

/// A data packet an instance keeps for later, with the driver's tag and when it arrived.
pub(crate) struct Held<M> {
    pub at: Instant,
    pub pkt: Vec<u8>,
    pub meta: M,
}

/// State shared by all migrations of an instance.
pub(crate) struct Core<M> {
    pub id: InstanceId,
    pub nat: Nat,
    pub cfg: MigrationConfig,
    pub outputs: VecDeque<Output<M>>,
    /// Drop reports (`Output::Dropped`) in `outputs`.
    pub reports: usize,
    pub events: VecDeque<MigrationEvent>,
    /// Frozen mappings: which migration and batch.
    pub frozen: HashMap<MappingId, (MigrationId, u32)>,
    pub routes: Vec<Route>,
    pub chain_tx: HashMap<InstanceId, u64>,
    pub chain_rx: HashMap<InstanceId, u64>,
    /// When the last chained packet from each peer arrived.
    pub chain_rx_at: HashMap<InstanceId, Instant>,
    pub counters: InstanceCounters,
    /// Buffered packets to run through the NAT again at the end of the current call.
    pub reprocess: Vec<(Vec<u8>, M)>,
    pub loose: VecDeque<(InstanceId, Vec<u8>)>,
}

impl<M: Copy> Core<M> {
    pub fn event(&mut self, e: MigrationEvent) {
        if self.events.len() >= self.cfg.max_events as usize {
            self.counters.events_dropped += 1;
        } else {
            self.events.push_back(e);
        }
        debug_assert!(self.events.len() <= self.cfg.max_events as usize);
    }

    /// True if the output queue has room for one more packet to send or chain: at most
    /// `max_outputs` of them (drop reports have their own allowance, see [`discard`]); a
    /// refusal is counted in `outputs_dropped`.
    ///
    /// [`discard`]: Self::discard
    #[inline]
    fn room(&mut self) -> bool {
        debug_assert!(self.reports <= self.outputs.len());
        if self.outputs.len() - self.reports >= self.cfg.max_outputs as usize {
            self.counters.outputs_dropped += 1;
            false
        } else {
            true
        }
    }

    /// Queues a translated packet; a full queue drops it (`OutputQueueFull`).
    #[inline]
    pub fn send(&mut self, pkt: Vec<u8>, meta: M, dir: Direction) {
        if self.room() {
            self.outputs.push_back(Output::Send { pkt, meta, dir });
        } else {
            self.nat.counters_mut().drop(DropReason::OutputQueueFull);
            self.discard(pkt, meta, DropReason::OutputQueueFull);
        }
    }

    /// Hands a dropped packet back to the driver if it asked for them (the drop is already
    /// counted). Drop reports are bounded apart from the packets to send: at most
    /// `max_outputs` of them wait in the queue; one more is refused and counted in
    /// `drop_reports_refused`.
    pub fn discard(&mut self, pkt: Vec<u8>, meta: M, reason: DropReason) {
        if !self.cfg.report_drops {
            return;
        }
        if self.reports >= self.cfg.max_outputs as usize {
            self.counters.drop_reports_refused += 1;
            return;
        }
        self.reports += 1;
        self.outputs
            .push_back(Output::Dropped { pkt, meta, reason });
    }

    /// Queues a packet for the peer; false (counted as a `ChainQueueFull` drop) if the output
    /// queue is full.
    pub fn chain(&mut self, to: InstanceId, pkt: Vec<u8>, meta: M) -> bool {
        if self.room() {
            self.outputs.push_back(Output::Chain { to, pkt, meta });
            *self.chain_tx.entry(to).or_default() += 1;
            self.counters.chained_out += 1;
            true
        } else {
            self.nat.counters_mut().drop(DropReason::ChainQueueFull);
            self.discard(pkt, meta, DropReason::ChainQueueFull);
            false
        }
    }

    /// Next output for the driver.
    #[inline]
    pub fn pop_output(&mut self) -> Option<Output<M>> {
        let o = self.outputs.pop_front()?;
        if let Output::Dropped { .. } = o {
            debug_assert!(self.reports > 0, "a drop report not counted");
            self.reports -= 1;
        }
        Some(o)
    }

    /// Sets a group's mode; the group is ours, so a failure is an internal error (counted).
    pub fn set_mode(&mut self, g: GroupId, mode: flowshift_nat::GroupMode) {
        if self.nat.set_group_mode(g, mode).is_err() {
            self.counters.internal_errors += 1;
        }
    }

    /// Unfreezes a mapping; a stale handle is an internal error (counted).
    pub fn unfreeze(&mut self, id: MappingId) {
        if self.nat.set_frozen(id, false).is_err() {
            self.counters.internal_errors += 1;
        }
    }

    /// Drops a packet for a migration reason: counted under the NAT's reason, and handed
    /// back if the driver asked for dropped packets.
    pub fn nat_drop(&mut self, cause: LossCause, pkt: Vec<u8>, meta: M) {
        let r = match cause {
            LossCause::GroupHalted => DropReason::GroupHalted,
            LossCause::GroupDraining => DropReason::GroupDraining,
            LossCause::FreezeBufferFull => DropReason::FreezeBufferFull,
            LossCause::PrepareBufferFull => DropReason::PrepareBufferFull,
            LossCause::ChainQueueFull => DropReason::ChainQueueFull,
            LossCause::CutoverHoldFull => DropReason::CutoverHoldFull,
        };
        self.nat.counters_mut().drop(r);
        self.discard(pkt, meta, r);
    }
}

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

    fn on_frame(&mut self, core: &mut Core<M>, now: Instant, frame: proto::Frame, len: usize) {
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

    fn on_timeout(&mut self, core: &mut Core<M>, now: Instant) {
        match self.side {
            Side::Src(_) => self.src_timeout(core, now),
            Side::Dst(_) => self.dst_timeout(core, now),
        }
    }

    fn next_timeout(&self, core: &Core<M>) -> Instant {
        match &self.side {
            Side::Src(s) => self.src_next_timeout(s, &core.cfg),
            Side::Dst(d) => {
                let rx_at = core.chain_rx_at.get(&self.peer).copied();
                self.dst_next_timeout(d, &core.cfg, rx_at.unwrap_or(Instant::ZERO))
            }
        }
    }
}

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

    // ------------------------------------------------------------------------ packet path

    /// Processes one data packet (`pkt` starts at the IPv4 header) with the driver's tag
    /// `meta`. Results appear in [`poll_output`](Self::poll_output), the packet with its tag;
    /// drops are counted. With no migration running this is [`Nat::process`] plus one queue
    /// push.
    pub fn handle_packet(&mut self, now: Instant, mut pkt: Vec<u8>, meta: M, ingress: Ingress) {
        match ingress {
            Ingress::Switch if self.holding > 0 => match self.try_hold(now, pkt, meta) {
                Some(p) => pkt = p,
                None => return,
            },
            Ingress::Chain { from } => self.note_chained(now, from, 1),
            Ingress::Switch => {}
        }
        let v = self.core.nat.process(now, &mut pkt);
        self.dispatch(now, pkt, meta, v);
        if let Ingress::Chain { from } = ingress
            && self.awaiting_chain > 0
        {
            self.chain_progress(now, from);
        }
    }

    /// Processes a batch of packets with their tags from one ingress, in order, exactly as
    /// calling [`handle_packet`](Self::handle_packet) on each would; uses the NAT's batched
    /// fast path ([`Nat::process_batch_with`]). `pkts` is left empty (its capacity can be
    /// reused).
    pub fn handle_batch(&mut self, now: Instant, pkts: &mut Vec<(Vec<u8>, M)>, ingress: Ingress) {
        if ingress == Ingress::Switch && self.holding > 0 {
            for (p, meta) in pkts.drain(..) {
                self.handle_packet(now, p, meta, ingress);
            }
            return;
        }
        if let Ingress::Chain { from } = ingress {
            self.note_chained(now, from, pkts.len() as u64);
        }
        let mut verdicts = std::mem::take(&mut self.verdicts);
        self.core
            .nat
            .process_batch_with(now, pkts, |p| p.0.as_mut_slice(), &mut verdicts);
        debug_assert_eq!(verdicts.len(), pkts.len(), "one verdict per packet");
        for ((p, meta), v) in pkts.drain(..).zip(verdicts.iter()) {
            self.dispatch(now, p, meta, *v);
        }
        self.verdicts = verdicts;
        if let Ingress::Chain { from } = ingress
            && self.awaiting_chain > 0
        {
            self.chain_progress(now, from);
        }
    }

    fn note_chained(&mut self, now: Instant, from: InstanceId, n: u64) {
        *self.core.chain_rx.entry(from).or_default() += n;
        self.core.chain_rx_at.insert(from, now);
        self.core.counters.chained_in += n;
    }

    fn chain_progress(&mut self, now: Instant, from: InstanceId) {
        for m in self.migs.values_mut() {
            if m.peer == from && !m.terminal && matches!(m.side, Side::Dst(_)) {
                m.dst_try_complete(&mut self.core, now);
            }
        }
        self.after_call(now);
    }

    /// Destination: holds a switch packet of an incoming group; gives it back if no hold
    /// applies.
    fn try_hold(&mut self, now: Instant, pkt: Vec<u8>, meta: M) -> Option<Vec<u8>> {
        for m in self.migs.values_mut() {
            if let Side::Dst(d) = &m.side
                && d.holding
                && m.gm.matches(&pkt)
            {
                m.dst_hold(&mut self.core, now, pkt, meta);
                return None;
            }
        }
        Some(pkt)
    }

    #[inline]
    fn dispatch(&mut self, now: Instant, pkt: Vec<u8>, meta: M, v: Verdict) {
        match v {
            Verdict::ToOutside => self.core.send(pkt, meta, Direction::ToOutside),
            Verdict::ToInside => self.core.send(pkt, meta, Direction::ToInside),
            Verdict::Drop(r) => {
                if self.running > 0 {
                    self.attribute_drop(r, &pkt);
                }
                self.core.discard(pkt, meta, r);
            }
            Verdict::ToPeer(g) => self.chain_miss(now, g, pkt, meta),
            Verdict::Hold(m) => self.hold(now, m, pkt, meta),
        }
    }

    fn attribute_drop(&mut self, r: DropReason, pkt: &[u8]) {
        let cause = match r {
            DropReason::GroupHalted => LossCause::GroupHalted,
            DropReason::GroupDraining => LossCause::GroupDraining,
            _ => return,
        };
        if let Some(m) = self
            .migs
            .values_mut()
            .find(|m| !m.terminal && matches!(m.side, Side::Src(_)) && m.gm.matches(pkt))
        {
            // The NAT counted it already.
            m.st.lost[cause as usize] += 1;
        }
    }

    fn chain_miss(&mut self, now: Instant, g: GroupId, pkt: Vec<u8>, meta: M) {
        let Some(route) = self.core.routes.iter().find(|r| r.group == g).copied() else {
            // Draining without a peer: cannot happen unless the NAT was driven around us.
            self.core.counters.internal_errors += 1;
            self.core.nat_drop(LossCause::GroupDraining, pkt, meta);
            return;
        };
        let mig = self.migs.get_mut(&route.mig);
        if route.buffering {
            match mig {
                Some(m) => m.src_prepare_buffer(&mut self.core, now, pkt, meta),
                None => self.core.nat_drop(LossCause::PrepareBufferFull, pkt, meta),
            }
            return;
        }
        let ok = self.core.chain(route.peer, pkt, meta);
        if let Some(m) = mig {
            m.src_note_chained(now, ok);
        }
    }

    fn hold(&mut self, now: Instant, id: MappingId, pkt: Vec<u8>, meta: M) {
        let Some(&(mig, batch)) = self.core.frozen.get(&id) else {
            self.core.counters.internal_errors += 1;
            self.core.nat_drop(LossCause::FreezeBufferFull, pkt, meta);
            return;
        };
        match self.migs.get_mut(&mig) {
            Some(m) => m.src_hold(&mut self.core, now, batch, pkt, meta),
            None => {
                self.core.counters.internal_errors += 1;
                self.core.nat_drop(LossCause::FreezeBufferFull, pkt, meta);
            }
        }
    }

    /// Next action for the driver, if any.
    pub fn poll_output(&mut self) -> Option<Output<M>> {
        self.core.pop_output()
    }

    /// Visits every data packet the instance keeps between calls, with its tag: packets
    /// buffered or held by migrations (prepare buffer, frozen mappings' packets, destination
    /// hold) and outputs not yet polled. For a driver's accounting (the simulator's ledger).
    pub fn for_each_held(&self, mut visit: impl FnMut(&[u8], &M)) {
        for o in &self.core.outputs {
            let (Output::Send { pkt, meta, .. }
            | Output::Chain { pkt, meta, .. }
            | Output::Dropped { pkt, meta, .. }) = o;
            visit(pkt, meta);
        }
        for (pkt, meta) in &self.core.reprocess {
            visit(pkt, meta);
        }
        for m in self.migs.values() {
            match &m.side {
                Side::Src(s) => s.held().for_each(|h| visit(&h.pkt, &h.meta)),
                Side::Dst(d) => d.held().for_each(|h| visit(&h.pkt, &h.meta)),
            }
        }
    }

    // ---------------------------------------------------------------------- transfer path

    /// Next frame for the state-transfer channel: (destination instance, bytes).
    pub fn poll_transmit(&mut self) -> Option<(InstanceId, Vec<u8>)> {
        if let Some(x) = self.core.loose.pop_front() {
            return Some(x);
        }
        for m in self.migs.values_mut() {
            if let Some(f) = m.chan.poll_transmit() {
                return Some((m.peer, f));
            }
        }
        None
    }

    /// Handles one frame received from instance `from`. Malformed frames are refused with an
    /// error and counted; frames for unknown migrations are counted and dropped (frames of
    /// migrations finished and forgotten are acknowledged, so a late retransmission ends).
    pub fn handle_transfer(
        &mut self,
        now: Instant,
        from: InstanceId,
        bytes: &[u8],
    ) -> Result<(), proto::DecodeError> {
        self.core.counters.frames_in += 1;
        let frame = match proto::decode(bytes) {
            Ok(f) => f,
            Err(e) => {
                self.core.counters.frames_malformed += 1;
                return Err(e);
            }
        };
        let id = frame.migration;
        if let Some(m) = self.migs.get_mut(&id) {
            if m.terminal && frame.msg != Message::Ack {
                self.core.counters.frames_finished += 1;
            }
            if m.peer == from {
                m.on_frame(&mut self.core, now, frame, bytes.len());
            } else {
                self.core.counters.frames_unknown += 1;
            }
            self.after_call(now);
            return Ok(());
        }
        // A migration we do not know: new (Prepare), stale or replayed, or premature.
        if id.source() != from || from == self.core.id {
            self.core.counters.frames_unknown += 1;
            return Ok(());
        }
        if self.replay.is_stale(id) {
            self.core.counters.frames_stale += 1;
            // A late retransmission of a forgotten migration is acknowledged so it ends; a
            // replayed `Prepare` is not (it must not look delivered to anyone).
            if frame.msg != Message::Ack && !matches!(frame.msg, Message::Prepare(_)) {
                if self.core.loose.len() < MAX_LOOSE_ACKS {
                    let f = proto::write_frame(Kind::Ack, id, 0, frame.seq, &[]);
                    self.core.loose.push_back((from, f));
                    self.core.counters.stale_acks += 1;
                } else {
                    self.core.counters.stale_acks_dropped += 1;
                }
            }
            return Ok(());
        }
        let algorithm = match &frame.msg {
            Message::Prepare(p) if frame.seq == 1 => p.algorithm,
            _ => {
                self.core.counters.frames_unknown += 1;
                return Ok(());
            }
        };
        if self.running >= self.core.cfg.max_migrations as usize {
            // Not answered: the source retransmits and, if we stay busy, fails and reverts.
            self.core.counters.frames_unknown += 1;
            return Ok(());
        }
        if self.replay.accept(id) {
            self.core.counters.replay_forgotten += 1;
        }
        self.source_restarted(now, from, id.epoch());
        let mut m = Mig::new(id, from, now, algorithm, Side::Dst(Box::default()));
        m.on_frame(&mut self.core, now, frame, bytes.len());
        self.migs.insert(id, m);
        self.after_call(now);
        Ok(())
    }

    // ----------------------------------------------------------------------------- timers

    /// When [`handle_timeout`](Self::handle_timeout) has work next (`Instant::MAX`: none).
    pub fn poll_timeout(&self) -> Instant {
        self.migs
            .values()
            .map(|m| m.next_timeout(&self.core))
            .fold(self.core.nat.poll_timeout(), Instant::min)
    }

    /// Runs due timers: NAT expiry, retransmissions, keepalives, idle sampling, round pacing,
    /// drain and hold deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.nat.handle_timeout(now);
        for m in self.migs.values_mut() {
            m.on_timeout(&mut self.core, now);
        }
        self.after_call(now);
    }

    /// Next event for the controller, if any.
    pub fn poll_event(&mut self) -> Option<MigrationEvent> {
        self.core.events.pop_front()
    }

    // --------------------------------------------------------------------------- commands

    /// [`Instance::start_migration`] for the group whose external address is `external` (the
    /// form a controller's command names it in).
    pub fn start_migration_at(
        &mut self,
        now: Instant,
        external: std::net::Ipv4Addr,
        to: InstanceId,
        algorithm: Algorithm,
        params: Params,
    ) -> Result<MigrationId, Error> {
        let group = self
            .core
            .nat
            .group_id(external)
            .ok_or(Error::NoGroupAt(external))?;
        self.start_migration(now, group, to, algorithm, params)
    }

    /// Starts migrating `group` to instance `to` (this instance is the source). The
    /// destination learns of it from the `Prepare` frame this queues.
    pub fn start_migration(
        &mut self,
        now: Instant,
        group: GroupId,
        to: InstanceId,
        algorithm: Algorithm,
        params: Params,
    ) -> Result<MigrationId, Error> {
        params.validate(&self.core.cfg).map_err(Error::Config)?;
        if to == self.core.id {
            return Err(Error::SelfTarget);
        }
        if self.core.nat.group_config(group).is_err() {
            return Err(Error::NoGroup(group));
        }
        if self.group_busy(group) {
            return Err(Error::GroupBusy(group));
        }
        if self.running >= self.core.cfg.max_migrations as usize {
            return Err(Error::TooMany);
        }
        let id = MigrationId::with_epoch(self.core.id, self.epoch, self.next_counter);
        let m = Mig::start_source(&mut self.core, now, id, group, to, algorithm, params)?;
        self.next_counter = self.next_counter.wrapping_add(1);
        if self.next_counter == 0 {
            self.epoch = MigrationId::next_epoch(self.epoch);
            self.next_counter = 1;
        }
        self.migs.insert(id, m);
        self.after_call(now);
        Ok(id)
    }

    /// The switch now sends the group to the destination (barrier confirmed): start draining.
    /// Only for a source in [`Phase::AwaitCutover`].
    pub fn cutover_done(&mut self, now: Instant, migration: MigrationId) -> Result<(), Error> {
        let m = self
            .migs
            .get_mut(&migration)
            .ok_or(Error::UnknownMigration(migration))?;
        if m.role() != Role::Source || m.phase != Phase::AwaitCutover {
            return Err(Error::WrongPhase(m.phase));
        }
        m.src_cutover(&mut self.core, now);
        self.after_call(now);
        Ok(())
    }

    /// Abandons a running migration. On its source: reverts if nothing has moved, otherwise
    /// completes forward (see the crate documentation). On its destination: drops it (and
    /// tells the source) only while this instance holds no mapping of the group and no
    /// commit; otherwise leaves the decision to the source and returns `CompletingForward`.
    pub fn abort(&mut self, now: Instant, migration: MigrationId) -> Result<AbortOutcome, Error> {
        let m = self
            .migs
            .get_mut(&migration)
            .ok_or(Error::UnknownMigration(migration))?;
        if m.terminal {
            return Err(Error::WrongPhase(m.phase));
        }
        let outcome = match m.role() {
            Role::Source => m.src_abort(&mut self.core, now),
            Role::Destination => m.dst_abort(&mut self.core, now),
        };
        self.after_call(now);
        Ok(outcome)
    }

    /// The report of a migration this instance knows.
    pub fn report(&self, migration: MigrationId) -> Option<MigrationReport> {
        self.migs.get(&migration).map(Mig::report)
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
