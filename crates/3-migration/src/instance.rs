//! [`Instance`]: one NAT with its migrations; the packet path, the transfer path, timers and
//! controller commands. The algorithms live in `source.rs` and `dest.rs`.

use crate::channel::Channel;
use crate::config::{MigrationConfig, Params};
use crate::dest::Dst;
use crate::proto::{self, Algorithm, Kind, Message};
use crate::report::{BatchSpan, InstanceCounters, LossCause, MigrationReport, PhaseSpan};
use crate::source::Src;
use crate::{
    AbortOutcome, AbortReason, Direction, Error, Ingress, InstanceId, MigrationEvent, MigrationId,
    Output, Phase, Role,
};
use core::time::Duration;
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

/// State shared by all migrations of an instance.
pub(crate) struct Core {
    pub id: InstanceId,
    pub nat: Nat,
    pub cfg: MigrationConfig,
    pub outputs: VecDeque<Output>,
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
    pub reprocess: Vec<Vec<u8>>,
    pub loose: VecDeque<(InstanceId, Vec<u8>)>,
}

impl Core {
    pub fn event(&mut self, e: MigrationEvent) {
        if self.events.len() >= self.cfg.max_events as usize {
            self.counters.events_dropped += 1;
        } else {
            self.events.push_back(e);
        }
    }

    /// Queues an output; gives it back if the queue is full (counted in `outputs_dropped`).
    #[inline]
    fn out(&mut self, o: Output) -> Result<(), Output> {
        if self.outputs.len() >= self.cfg.max_outputs as usize {
            self.counters.outputs_dropped += 1;
            Err(o)
        } else {
            self.outputs.push_back(o);
            Ok(())
        }
    }

    /// Queues a translated packet; a full queue drops it (`OutputQueueFull`).
    pub fn send(&mut self, pkt: Vec<u8>, dir: Direction) {
        if let Err(Output::Send { pkt, .. }) = self.out(Output::Send { pkt, dir }) {
            self.nat.counters_mut().drop(DropReason::OutputQueueFull);
            self.discard(pkt, DropReason::OutputQueueFull);
        }
    }

    /// Hands a dropped packet back to the driver if it asked for them (already counted).
    pub fn discard(&mut self, pkt: Vec<u8>, reason: DropReason) {
        if self.cfg.report_drops {
            self.outputs.push_back(Output::Dropped { pkt, reason });
        }
    }

    /// Queues a packet for the peer; false (counted as a `ChainQueueFull` drop) if the output
    /// queue is full.
    pub fn chain(&mut self, to: InstanceId, pkt: Vec<u8>) -> bool {
        match self.out(Output::Chain { to, pkt }) {
            Ok(()) => {
                *self.chain_tx.entry(to).or_default() += 1;
                self.counters.chained_out += 1;
                true
            }
            Err(o) => {
                self.nat.counters_mut().drop(DropReason::ChainQueueFull);
                if let Output::Chain { pkt, .. } = o {
                    self.discard(pkt, DropReason::ChainQueueFull);
                }
                false
            }
        }
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
    pub fn nat_drop(&mut self, cause: LossCause, pkt: Vec<u8>) {
        let r = match cause {
            LossCause::GroupHalted => DropReason::GroupHalted,
            LossCause::GroupDraining => DropReason::GroupDraining,
            LossCause::FreezeBufferFull => DropReason::FreezeBufferFull,
            LossCause::PrepareBufferFull => DropReason::PrepareBufferFull,
            LossCause::ChainQueueFull => DropReason::ChainQueueFull,
            LossCause::CutoverHoldFull => DropReason::CutoverHoldFull,
        };
        self.nat.counters_mut().drop(r);
        self.discard(pkt, r);
    }
}

/// Per-migration figures (see [`MigrationReport`]).
#[derive(Default)]
pub(crate) struct Stats {
    pub mappings_at_start: u32,
    pub expired_idle: u32,
    pub transferred: u32,
    pub records: u64,
    pub batches: u32,
    pub batches_refused: u32,
    pub buffered: u64,
    pub chained: u64,
    pub lost: [u64; LossCause::COUNT],
    pub max_freeze: Duration,
    pub max_buffer_delay: Duration,
    pub halted: Duration,
    pub rounds: Vec<crate::RoundReport>,
    pub in_doubt: u32,
    pub blocks_split: u32,
    /// Freeze-copy: held packets released, their summed and longest wait (the freeze the
    /// subscriber's packets saw).
    pub held_released: u64,
    pub held_delay_sum: Duration,
    pub max_held_delay: Duration,
    /// The freeze budget after the last acknowledged batch (record bytes).
    pub freeze_budget: u64,
    /// Freeze-copy batches, first `MAX_BATCH_SPANS` of them; the rest are only counted.
    pub batch_spans: Vec<BatchSpan>,
    /// Source: time from the cutover to the end-of-chain marker, and packets chained after it.
    pub chain_end_after: Duration,
    pub chained_after_marker: u64,
}

/// Most freeze batches listed in a report.
pub(crate) const MAX_BATCH_SPANS: usize = 4096;

impl Stats {
    /// Records an acknowledged freeze batch.
    pub fn note_batch(
        &mut self,
        sent: Instant,
        acked: Instant,
        mappings: usize,
        bytes: u64,
        held: &[(Instant, Vec<u8>)],
    ) {
        if self.batch_spans.len() < MAX_BATCH_SPANS {
            let ms = |t: Instant| t.as_nanos() as f64 / 1e6;
            self.batch_spans.push(BatchSpan {
                start_ms: ms(sent),
                end_ms: ms(acked),
                mappings: mappings as u32,
                bytes,
                held_packets: held.len() as u32,
            });
        }
    }

    /// Records the wait of one held packet released to the destination.
    pub fn note_held(&mut self, waited: Duration) {
        self.held_released += 1;
        self.held_delay_sum += waited;
        self.max_held_delay = self.max_held_delay.max(waited);
    }
}

pub(crate) enum Side {
    Src(Box<Src>),
    Dst(Box<Dst>),
}

/// One migration, from this instance's side.
pub(crate) struct Mig {
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
    pub side: Side,
}

impl Mig {
    pub fn role(&self) -> Role {
        match self.side {
            Side::Src(_) => Role::Source,
            Side::Dst(_) => Role::Destination,
        }
    }

    pub fn set_phase(&mut self, core: &mut Core, now: Instant, phase: Phase) {
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

    pub fn complete(&mut self, core: &mut Core, now: Instant) {
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

    pub fn abort_final(&mut self, core: &mut Core, now: Instant, reason: AbortReason, split: bool) {
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

    pub fn lose(&mut self, core: &mut Core, cause: LossCause, pkt: Vec<u8>) {
        self.st.lost[cause as usize] += 1;
        core.nat_drop(cause, pkt);
    }

    fn on_frame(&mut self, core: &mut Core, now: Instant, frame: proto::Frame, len: usize) {
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

    fn on_timeout(&mut self, core: &mut Core, now: Instant) {
        match self.side {
            Side::Src(_) => self.src_timeout(core, now),
            Side::Dst(_) => self.dst_timeout(core, now),
        }
    }

    fn next_timeout(&self, core: &Core) -> Instant {
        match &self.side {
            Side::Src(s) => self.src_next_timeout(s, &core.cfg),
            Side::Dst(d) => {
                let rx_at = core.chain_rx_at.get(&self.peer).copied();
                self.dst_next_timeout(d, &core.cfg, rx_at.unwrap_or(Instant::ZERO))
            }
        }
    }

    fn report(&self) -> MigrationReport {
        let ms = |t: Instant| t.as_nanos() as f64 / 1e6;
        let phases = self
            .phases
            .iter()
            .enumerate()
            .map(|(i, &(name, start))| PhaseSpan {
                name,
                start_ms: ms(start),
                end_ms: self.phases.get(i + 1).map(|&(_, t)| ms(t)).or(
                    if self.terminal && i + 1 == self.phases.len() {
                        Some(ms(start))
                    } else {
                        None
                    },
                ),
            })
            .collect();
        let d = |d: Duration| d.as_nanos() as f64 / 1e6;
        MigrationReport {
            migration: self.id,
            role: self.role(),
            peer: self.peer,
            algorithm: self.algorithm,
            external: self
                .gcfg
                .as_ref()
                .map_or(std::net::Ipv4Addr::UNSPECIFIED, |g| g.external),
            phases,
            completed: self.completed,
            aborted: self.aborted,
            split: self.split,
            forced_forward: self.forced_forward,
            mappings_at_start: self.st.mappings_at_start,
            states_expired_idle: self.st.expired_idle,
            states_transferred: self.st.transferred,
            records: self.st.records,
            batches: self.st.batches,
            batches_refused: self.st.batches_refused,
            bytes_transferred: self.chan.stats.bytes_sent,
            bytes_received: self.chan.stats.bytes_received,
            channel: self.chan.stats,
            packets_buffered: self.st.buffered,
            packets_chained: self.st.chained,
            packets_lost_by_cause: LossCause::ALL
                .iter()
                .map(|c| (c.label(), self.st.lost[*c as usize]))
                .collect(),
            max_freeze_ms: d(self.st.max_freeze),
            max_buffer_delay_ms: d(self.st.max_buffer_delay),
            halted_ms: d(self.st.halted),
            precopy_rounds: self.st.rounds.clone(),
            in_doubt_mappings: self.st.in_doubt,
            blocks_split: self.st.blocks_split,
            max_held_delay_ms: d(self.st.max_held_delay),
            mean_held_delay_ms: if self.st.held_released == 0 {
                0.0
            } else {
                d(self.st.held_delay_sum) / self.st.held_released as f64
            },
            held_packets_released: self.st.held_released,
            freeze_budget_bytes: self.st.freeze_budget,
            freeze_batches: self.st.batch_spans.clone(),
            chain_end_after_ms: d(self.st.chain_end_after),
            chained_after_marker: self.st.chained_after_marker,
        }
    }
}

/// One NAT instance and the migrations it takes part in. See the crate documentation for the
/// driver contract and the algorithms.
pub struct Instance {
    core: Core,
    migs: BTreeMap<MigrationId, Mig>,
    finished: VecDeque<MigrationId>,
    next_counter: u64,
    highest_seen: HashMap<InstanceId, u64>,
    /// Migrations not yet finished.
    running: usize,
    /// Destination migrations holding switch packets.
    holding: usize,
    /// Destination migrations that got `Done` and wait for chained packets.
    awaiting_chain: usize,
    verdicts: Vec<Verdict>,
}

impl Instance {
    /// Wraps `nat` as instance `id`. Fails if `cfg` is invalid, or if the NAT's per-mapping
    /// session bound lets one mapping exceed a frame.
    pub fn new(id: InstanceId, nat: Nat, cfg: MigrationConfig) -> Result<Instance, Error> {
        cfg.validate().map_err(Error::Config)?;
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
            next_counter: 1,
            highest_seen: HashMap::new(),
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

    /// Processes one data packet (`pkt` starts at the IPv4 header). Results appear in
    /// [`poll_output`](Self::poll_output); drops are counted. With no migration running this
    /// is [`Nat::process`] plus one queue push.
    pub fn handle_packet(&mut self, now: Instant, mut pkt: Vec<u8>, ingress: Ingress) {
        match ingress {
            Ingress::Switch if self.holding > 0 => match self.try_hold(now, pkt) {
                Some(p) => pkt = p,
                None => return,
            },
            Ingress::Chain { from } => self.note_chained(now, from, 1),
            Ingress::Switch => {}
        }
        let v = self.core.nat.process(now, &mut pkt);
        self.dispatch(now, pkt, v);
        if let Ingress::Chain { from } = ingress
            && self.awaiting_chain > 0
        {
            self.chain_progress(now, from);
        }
    }

    /// Processes a batch of packets from one ingress, in order, exactly as calling
    /// [`handle_packet`](Self::handle_packet) on each would; uses [`Nat::process_batch`].
    /// `pkts` is left empty (its capacity can be reused).
    pub fn handle_batch(&mut self, now: Instant, pkts: &mut Vec<Vec<u8>>, ingress: Ingress) {
        if ingress == Ingress::Switch && self.holding > 0 {
            for p in pkts.drain(..) {
                self.handle_packet(now, p, ingress);
            }
            return;
        }
        if let Ingress::Chain { from } = ingress {
            self.note_chained(now, from, pkts.len() as u64);
        }
        let mut verdicts = std::mem::take(&mut self.verdicts);
        self.core.nat.process_batch(now, pkts, &mut verdicts);
        for (p, v) in pkts.drain(..).zip(verdicts.iter()) {
            self.dispatch(now, p, *v);
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
    fn try_hold(&mut self, now: Instant, pkt: Vec<u8>) -> Option<Vec<u8>> {
        for m in self.migs.values_mut() {
            if let Side::Dst(d) = &m.side
                && d.holding
                && m.gm.matches(&pkt)
            {
                m.dst_hold(&mut self.core, now, pkt);
                return None;
            }
        }
        Some(pkt)
    }

    #[inline]
    fn dispatch(&mut self, now: Instant, pkt: Vec<u8>, v: Verdict) {
        match v {
            Verdict::ToOutside => self.core.send(pkt, Direction::ToOutside),
            Verdict::ToInside => self.core.send(pkt, Direction::ToInside),
            Verdict::Drop(r) => {
                if self.running > 0 {
                    self.attribute_drop(r, &pkt);
                }
                self.core.discard(pkt, r);
            }
            Verdict::ToPeer(g) => self.chain_miss(now, g, pkt),
            Verdict::Hold(m) => self.hold(now, m, pkt),
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

    fn chain_miss(&mut self, now: Instant, g: GroupId, pkt: Vec<u8>) {
        let Some(route) = self.core.routes.iter().find(|r| r.group == g).copied() else {
            // Draining without a peer: cannot happen unless the NAT was driven around us.
            self.core.counters.internal_errors += 1;
            self.core.nat_drop(LossCause::GroupDraining, pkt);
            return;
        };
        let mig = self.migs.get_mut(&route.mig);
        if route.buffering {
            match mig {
                Some(m) => m.src_prepare_buffer(&mut self.core, now, pkt),
                None => self.core.nat_drop(LossCause::PrepareBufferFull, pkt),
            }
            return;
        }
        let ok = self.core.chain(route.peer, pkt);
        if let Some(m) = mig {
            m.src_note_chained(now, ok);
        }
    }

    fn hold(&mut self, now: Instant, id: MappingId, pkt: Vec<u8>) {
        let Some(&(mig, batch)) = self.core.frozen.get(&id) else {
            self.core.counters.internal_errors += 1;
            self.core.nat_drop(LossCause::FreezeBufferFull, pkt);
            return;
        };
        match self.migs.get_mut(&mig) {
            Some(m) => m.src_hold(&mut self.core, now, batch, pkt),
            None => {
                self.core.counters.internal_errors += 1;
                self.core.nat_drop(LossCause::FreezeBufferFull, pkt);
            }
        }
    }

    /// Next action for the driver, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.core.outputs.pop_front()
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
            if m.peer == from {
                m.on_frame(&mut self.core, now, frame, bytes.len());
            } else {
                self.core.counters.frames_unknown += 1;
            }
            self.after_call(now);
            return Ok(());
        }
        // A migration we do not know: new (Prepare), stale, or premature.
        if id.source() != from || from == self.core.id {
            self.core.counters.frames_unknown += 1;
            return Ok(());
        }
        let seen = self.highest_seen.get(&from).copied().unwrap_or(0);
        if id.counter() <= seen {
            if frame.msg != Message::Ack {
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
        self.highest_seen.insert(from, id.counter());
        let mut m = Mig {
            id,
            peer: from,
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
            side: Side::Dst(Box::default()),
        };
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
        let id = MigrationId::new(self.core.id, self.next_counter);
        let m = Mig::start_source(&mut self.core, now, id, group, to, algorithm, params)?;
        self.next_counter += 1;
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

    /// Abandons a migration this instance is the source of: reverts if nothing has moved,
    /// otherwise completes forward (see the crate documentation).
    pub fn abort(&mut self, now: Instant, migration: MigrationId) -> Result<AbortOutcome, Error> {
        let m = self
            .migs
            .get_mut(&migration)
            .ok_or(Error::UnknownMigration(migration))?;
        if m.role() != Role::Source || m.terminal {
            return Err(Error::WrongPhase(m.phase));
        }
        let outcome = m.src_abort(&mut self.core, now);
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
    fn after_call(&mut self, now: Instant) {
        while !self.core.reprocess.is_empty() {
            let batch = std::mem::take(&mut self.core.reprocess);
            for mut p in batch {
                self.core.counters.reprocessed += 1;
                let v = self.core.nat.process(now, &mut p);
                self.dispatch(now, p, v);
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
        self.running = running;
        self.holding = holding;
        self.awaiting_chain = awaiting;
        while self.finished.len() > self.core.cfg.max_finished as usize {
            if let Some(id) = self.finished.pop_front() {
                self.migs.remove(&id);
            }
        }
    }
}
