//! The packet thread's work, without the socket: [`Engine`] owns the migration
//! [`Instance`] and follows its driver contract.
//!
//! * [`Engine::rx_frame`] classifies a received frame ([`crate::frame::classify`]), copies
//!   its packet into a recycled buffer and takes its offload tag ([`crate::frame::ingest`]),
//!   and collects consecutive packets of one ingress, with their tags, into a batch of at most
//!   `batch`; [`Engine::flush_rx`] hands the batch to [`Instance::handle_batch`].
//! * After every call into the instance the engine drains it ([`Instance::drain`] into the
//!   engine's [`Driver`]): outputs become Ethernet frames
//!   (translated packets to the inside or outside next hop, chained packets as 0x88B5 frames to
//!   the peer's MAC) queued for the [`FrameSink`] and sent `batch` at a time; transfer frames go
//!   to the [`TransferLink`]; migration events are logged and queued for the controller;
//!   the NAT's port-block events are written as mapping-log lines (target
//!   `flowshift::mapping`).
//! * [`Engine::poll_side`] takes what the side threads queued (controller commands first,
//!   then received transfer frames), at most `side_budget` items per call so the ring is read
//!   again soon; [`Engine::handle_timeout`] runs due timers; [`Engine::publish`] replaces the
//!   shared status snapshot.
//! * The loop reports where its ring stages start and end ([`Engine::ring_start`],
//!   [`Engine::ring_done`], [`Engine::note_sleep`]); the engine keeps the poll-gap counters
//!   ([`crate::pacing::GapMeter`]) and notes whether a migration is running.
//!
//! Time is the caller's: a [`flowshift_wire::Instant`] (ns since the node started).

use crate::config::{MacAddr, NodeConfig};
use crate::control::{Command, ControlLink, Outgoing};
use crate::frame::{
    self, Class, ETH_HLEN, ETHERTYPE_CHAIN, ETHERTYPE_IPV4, FrameSink, Offload, Peers, RxFrame,
    TxFrame, VnetHdr,
};
use crate::pacing::GapMeter;
use crate::segment;
use crate::stats::{ControlCounters, Counter, IoCounters, SnapshotCell, TransferCounters};
use crate::transfer::TransferLink;
use flowshift_control::api::{GroupStatus, NodeMigration, NodeRequest, NodeStatus, ReplyBody};
use flowshift_control::status::{CpuCounters, NodeCounters};
use flowshift_migration::{
    AbortOutcome, Direction, Driver, Ingress, Instance, InstanceId, MigrationEvent, MigrationId,
    Output, Params, Phase,
};
use flowshift_nat::BlockAction;
use flowshift_wire::Instant;
use std::sync::Arc;
use std::sync::mpsc::TrySendError;
use std::time::Duration;
use tracing::{info, warn};

/// Most recycled packet buffers kept (with [`POOL_BUF_MAX`]: at most 128 MiB).
const POOL_MAX: usize = 1024;
/// Largest buffer kept for reuse (a GSO frame's).
const POOL_BUF_MAX: usize = 128 << 10;
/// Capacity of a fresh packet buffer (an MTU-sized packet).
const BUF_INITIAL: usize = 2048;
/// Times a full socket is waited for (1 ms each) before the rest of a batch is dropped.
const TX_WAITS: u32 = 2;

/// The engine's connections to the other threads.
pub struct Links {
    /// Transfer queues.
    pub transfer: TransferLink,
    /// Control queues.
    pub control: ControlLink,
    /// Where the status is published.
    pub snapshot: Arc<SnapshotCell>,
    /// The transfer service's counters (read for the status).
    pub transfer_counters: Arc<TransferCounters>,
    /// The control client's counters (read for the status).
    pub control_counters: Arc<ControlCounters>,
}

/// The sending side of the packet thread: addresses, the frames waiting for the socket and
/// the recycled buffers.
struct Egress {
    mac: MacAddr,
    inside: MacAddr,
    outside: MacAddr,
    peers: Peers,
    vnet: bool,
    batch: usize,
    tx: Vec<TxFrame>,
    pool: Vec<Vec<u8>>,
}

/// See the module documentation.
pub struct Engine {
    inst: Instance<Offload>,
    id: InstanceId,
    eg: Egress,
    params: Params,
    pending: Vec<(Vec<u8>, Offload)>,
    pending_ingress: Ingress,
    io: IoCounters,
    /// Scratch of [`Drain::split`], kept between drains.
    split: Vec<(InstanceId, u64)>,
    links: Links,
    next_timeout: Instant,
    side_budget: usize,
    gaps: GapMeter,
    migrating: bool,
}

impl Engine {
    /// An engine for `inst` configured by `cfg`; publishes a first status at time zero.
    pub fn new(cfg: &NodeConfig, inst: Instance<Offload>, links: Links) -> Engine {
        let batch = cfg.batch.clamp(1, 1024) as usize;
        let mut e = Engine {
            next_timeout: inst.poll_timeout(),
            inst,
            id: cfg.id,
            eg: Egress {
                mac: cfg.mac,
                inside: cfg.inside_next_hop,
                outside: cfg.outside_next_hop,
                peers: Peers::new(cfg.peers.iter().map(|p| (p.mac, p.id)).collect()),
                vnet: cfg.vnet_hdr,
                batch,
                tx: Vec::with_capacity(batch),
                pool: Vec::new(),
            },
            params: cfg.params.clone(),
            pending: Vec::with_capacity(batch),
            pending_ingress: Ingress::Switch,
            io: IoCounters::default(),
            split: Vec::new(),
            links,
            side_budget: cfg.side_budget.clamp(1, 1024) as usize,
            gaps: GapMeter::default(),
            migrating: false,
        };
        e.note_migrations();
        e.publish(Instant::ZERO);
        e
    }

    /// The instance (tests, status).
    pub fn instance(&self) -> &Instance<Offload> {
        &self.inst
    }

    /// The I/O counters.
    pub fn io(&self) -> &IoCounters {
        &self.io
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work next.
    pub fn next_timeout(&self) -> Instant {
        self.next_timeout
    }

    /// Adds the kernel's ring counters (read periodically by the loop).
    pub fn note_ring(&mut self, drops: u64, freezes: u64) {
        self.io.rx_ring_drops += drops;
        self.io.rx_ring_freezes += freezes;
    }

    /// The packet loop blocked in poll(2) from `from` to `to` (counted; excluded from the
    /// poll gap).
    pub fn note_sleep(&mut self, from: Instant, to: Instant) {
        self.io.idle_sleeps += 1;
        self.gaps.slept(from, to);
    }

    /// This iteration's timers wait: the receive ring still holds frames (counted).
    pub fn note_timer_deferred(&mut self) {
        self.io.timers_deferred += 1;
    }

    /// A ring stage (frames read and handed to the instance) starts at `now`: records the
    /// gap since the previous one ended, if any.
    pub fn ring_start(&mut self, now: Instant) -> Option<Duration> {
        self.gaps.ring_start(now, self.migrating)
    }

    /// A ring stage ended at `now`.
    pub fn ring_done(&mut self, now: Instant) {
        self.gaps.ring_done(now);
    }

    /// The poll-gap counters.
    pub fn gaps(&self) -> &GapMeter {
        &self.gaps
    }

    /// True while a migration this node takes part in has not finished.
    pub fn migrating(&self) -> bool {
        self.migrating
    }

    fn note_migrations(&mut self) {
        self.migrating = self
            .inst
            .migrations()
            .iter()
            .any(|(_, _, p)| !matches!(p, Phase::Done | Phase::Aborted));
    }

    // ------------------------------------------------------------------------------ receive

    /// Takes one received frame (see the module docs). Frames that are not for the NAT are
    /// counted and dropped here.
    pub fn rx_frame<S: FrameSink>(&mut self, now: Instant, f: RxFrame<'_>, sink: &mut S) {
        self.io.rx_packets += 1;
        self.io.rx_bytes += f.data.len() as u64;
        if f.outgoing {
            self.io.rx_outgoing += 1;
            return;
        }
        if f.truncated {
            self.io.rx_truncated += 1;
            return;
        }
        if f.vlan {
            self.io.rx_vlan += 1;
            return;
        }
        let ingress = match frame::classify(f.data, &self.eg.peers) {
            Class::Switch => Ingress::Switch,
            Class::Chain(from) => {
                self.io.rx_chained += 1;
                Ingress::Chain { from }
            }
            Class::UnknownPeer => {
                self.io.rx_chain_unknown_peer += 1;
                return;
            }
            Class::NotIpv4 => {
                self.io.rx_not_ipv4 += 1;
                return;
            }
            Class::Runt => {
                self.io.rx_truncated += 1;
                return;
            }
        };
        if f.csum_not_ready {
            self.io.rx_csum_not_ready += 1;
        }
        if ingress != self.pending_ingress {
            self.flush_rx(now, sink);
            self.pending_ingress = ingress;
        }
        let mut buf = self
            .eg
            .pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_INITIAL));
        match frame::ingest(&f.data[ETH_HLEN..], f.vnet.unwrap_or_default(), &mut buf) {
            Ok(tag) => self.pending.push((buf, tag)),
            Err(_) => {
                self.io.rx_bad_vnet_hdr += 1;
                self.eg.recycle(buf);
            }
        }
        if self.pending.len() >= self.eg.batch {
            self.flush_rx(now, sink);
        }
    }

    /// Hands the collected batch to the instance and drains it.
    pub fn flush_rx<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        if self.pending.is_empty() {
            return;
        }
        self.inst
            .handle_batch(now, &mut self.pending, self.pending_ingress);
        self.drain(now, sink);
    }

    /// The side threads' work for one loop iteration: queued controller commands first
    /// (rare, and a cutover waits on them), then received transfer frames, at most
    /// `side_budget` items together; how many were handled. What is left waits for the next
    /// iteration, after the ring has been read again.
    pub fn poll_side<S: FrameSink>(&mut self, now: Instant, sink: &mut S) -> usize {
        let n = self.poll_commands(now, self.side_budget, sink);
        n + self.poll_transfer_in(now, self.side_budget - n, sink)
    }

    /// Feeds up to `max` received transfer frames to the instance; how many.
    pub fn poll_transfer_in<S: FrameSink>(
        &mut self,
        now: Instant,
        max: usize,
        sink: &mut S,
    ) -> usize {
        let mut n = 0;
        while n < max {
            let Some((from, bytes)) = self.links.transfer.try_recv() else {
                break;
            };
            n += 1;
            if self.inst.handle_transfer(now, from, &bytes).is_err() {
                self.io.transfer_in_malformed += 1;
            }
            self.drain(now, sink);
        }
        if n > 0 {
            // A `Prepare` starts a migration here without an event.
            self.note_migrations();
        }
        n
    }

    /// Serves up to `max` queued controller commands; how many.
    pub fn poll_commands<S: FrameSink>(&mut self, now: Instant, max: usize, sink: &mut S) -> usize {
        let mut n = 0;
        while n < max {
            let Ok(Command { body, reply }) = self.links.control.commands.try_recv() else {
                break;
            };
            n += 1;
            self.io.commands += 1;
            let result = self.command(now, body);
            // The client waits with a timeout; if it gave up, the answer is not needed.
            let _ = reply.try_send(result);
            self.drain(now, sink);
        }
        n
    }

    /// Runs the instance's timers if due.
    pub fn handle_timeout<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        if now >= self.next_timeout {
            self.inst.handle_timeout(now);
            self.drain(now, sink);
        }
    }

    // ------------------------------------------------------------------------------ commands

    /// Executes one controller request.
    pub fn command(&mut self, now: Instant, body: NodeRequest) -> Result<ReplyBody, String> {
        let r = self.execute(now, body);
        self.note_migrations();
        r
    }

    fn execute(&mut self, now: Instant, body: NodeRequest) -> Result<ReplyBody, String> {
        match body {
            NodeRequest::StartMigration {
                external,
                to,
                algorithm,
                params,
            } => {
                if self.eg.peers.mac_of(to).is_none() {
                    return Err(format!(
                        "node {to} is not a configured peer of node {}",
                        self.id
                    ));
                }
                let params = params.unwrap_or_else(|| self.params.clone());
                let id = self
                    .inst
                    .start_migration_at(now, external, to, algorithm, params)
                    .map_err(|e| format!("node {}: {e}", self.id))?;
                info!(migration = id.0, %external, %to, ?algorithm, "migration started");
                Ok(ReplyBody::Started { migration: id.0 })
            }
            NodeRequest::CutoverDone { migration } => self
                .inst
                .cutover_done(now, MigrationId(migration))
                .map(|()| ReplyBody::Ok)
                .map_err(|e| e.to_string()),
            NodeRequest::Abort { migration } => self
                .inst
                .abort(now, MigrationId(migration))
                .map(|o| ReplyBody::Aborted {
                    reverted: o == AbortOutcome::Reverted,
                })
                .map_err(|e| e.to_string()),
            NodeRequest::AdoptGroup {
                external,
                subscribers,
            } => {
                let cfg = flowshift_nat::GroupConfig {
                    external,
                    subscribers,
                };
                self.inst.adopt_group(now, cfg).map_err(|e| e.to_string())?;
                warn!(%external, %subscribers, "adopted group (its owner was re-homed here)");
                Ok(ReplyBody::Ok)
            }
            NodeRequest::ReleaseGroup { external } => {
                let sessions = self.inst.release_group(now, external);
                warn!(%external, sessions, "released group (re-homed elsewhere)");
                Ok(ReplyBody::Released { sessions })
            }
            NodeRequest::Status => Ok(ReplyBody::Status(Box::new(self.status(now)))),
            NodeRequest::Report { migration } => {
                let r = self
                    .inst
                    .report(MigrationId(migration))
                    .ok_or_else(|| format!("node {} knows no migration {migration}", self.id))?;
                serde_json::to_value(r)
                    .map(ReplyBody::Report)
                    .map_err(|e| e.to_string())
            }
        }
    }

    // --------------------------------------------------------------------------- draining

    /// Drains the instance (outputs, transfer frames, events, mapping-log events), sends the
    /// queued frames, and re-reads the next timeout.
    pub fn drain<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        let mut d = Drain {
            now,
            eg: &mut self.eg,
            io: &mut self.io,
            links: &self.links,
            sink,
            events: false,
            split: std::mem::take(&mut self.split),
        };
        self.next_timeout = self.inst.drain(&mut d);
        d.eg.flush_tx(d.io, d.sink);
        let (events, mut split) = (d.events, d.split);
        for &(to, frames) in &split {
            self.inst.chain_split(to, frames);
        }
        split.clear();
        self.split = split;
        if events {
            self.note_migrations();
        }
    }

    // ------------------------------------------------------------------------------ status

    /// The node's status (every counter; see [`crate::stats`] for the names). The counters
    /// `cpu_packet_thread_*` are the calling thread's: call it on the packet thread.
    pub fn status(&self, now: Instant) -> NodeStatus {
        let nat = self.inst.nat();
        let groups = nat
            .group_ids()
            .into_iter()
            .filter_map(|g| {
                let cfg = nat.group_config(g).ok()?;
                let st = nat.group_stats(g).ok()?;
                let mode = nat.group_mode(g).ok()?;
                Some(GroupStatus {
                    external: cfg.external,
                    mode,
                    mappings: st.mappings,
                    sessions: st.sessions,
                })
            })
            .collect();
        let migrations = self
            .inst
            .migrations()
            .into_iter()
            .map(|(id, role, phase)| NodeMigration {
                migration: id.0,
                role,
                phase,
            })
            .collect();
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let (poll, poll_max) = self.gaps.counters();
        let counters = NodeCounters {
            nat: nat.counters().clone(),
            losses: NodeCounters::losses_from(nat.counters()),
            migration: self.inst.counters().clone(),
            io: self.io.clone(),
            transfer: self.links.transfer_counters.map(Counter::get),
            control: self.links.control_counters.map(Counter::get),
            poll,
            poll_max,
            cpu: CpuCounters {
                packet_thread_us: us(crate::sys::thread_cpu_time()),
                process_us: us(crate::sys::process_cpu_time()),
                packet_thread_preemptions: crate::sys::thread_preemptions(),
            },
        };
        NodeStatus {
            id: self.id,
            uptime_s: now.as_secs_f64(),
            groups,
            migrations,
            counters,
        }
    }

    /// Replaces the shared snapshot (skipped if a reader holds it right now).
    pub fn publish(&mut self, now: Instant) {
        self.links.snapshot.try_publish(self.status(now));
    }
}

impl Egress {
    fn queue_tx<S: FrameSink>(&mut self, f: TxFrame, io: &mut IoCounters, sink: &mut S) {
        self.tx.push(f);
        if self.tx.len() >= self.batch {
            self.flush_tx(io, sink);
        }
    }

    /// Sends the queued frames; a socket that stays full drops the rest (counted).
    fn flush_tx<S: FrameSink>(&mut self, io: &mut IoCounters, sink: &mut S) {
        let mut tx = std::mem::take(&mut self.tx);
        let (mut off, mut waits) = (0, 0);
        while off < tx.len() {
            match sink.send(&tx[off..]) {
                Ok(0) if waits < TX_WAITS => {
                    waits += 1;
                    sink.wait_writable(Duration::from_millis(1));
                }
                Ok(0) => {
                    io.tx_queue_full += (tx.len() - off) as u64;
                    break;
                }
                Ok(n) => {
                    for f in &tx[off..off + n] {
                        io.tx_packets += 1;
                        io.tx_bytes += f.wire_len() as u64;
                    }
                    off += n;
                }
                Err(e) => {
                    io.tx_errors += 1;
                    if io.tx_errors.is_power_of_two() {
                        warn!(error = %e, len = tx[off].wire_len(), total = io.tx_errors, "send refused a frame");
                    }
                    off += 1;
                }
            }
        }
        for f in tx.drain(..) {
            self.recycle(f.pkt);
        }
        self.tx = tx;
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < POOL_MAX && buf.capacity() <= POOL_BUF_MAX {
            buf.clear();
            self.pool.push(buf);
        }
    }
}

/// The engine as the instance's [`Driver`] for one drain: translated and chained packets
/// become frames for the socket (the offload tag gives their virtio-net header), transfer
/// frames go to the transfer threads, events to the log and the controller.
struct Drain<'a, S> {
    now: Instant,
    eg: &'a mut Egress,
    io: &'a mut IoCounters,
    links: &'a Links,
    sink: &'a mut S,
    /// A migration event was seen (the engine re-reads whether a migration runs).
    events: bool,
    /// Chained packets sent as another number of frames (segmented: several; refused: 0).
    split: Vec<(InstanceId, u64)>,
}

impl<S: FrameSink> Driver<Offload> for Drain<'_, S> {
    fn output(&mut self, out: Output<Offload>) {
        let eg = &mut *self.eg;
        match out {
            Output::Send { mut pkt, meta, dir } => {
                let vnet = frame::finish(&mut pkt, meta);
                let dst = match dir {
                    Direction::ToInside => {
                        self.io.tx_to_inside += 1;
                        eg.inside
                    }
                    Direction::ToOutside => {
                        self.io.tx_to_outside += 1;
                        eg.outside
                    }
                };
                let eth = frame::eth_header(dst, eg.mac, ETHERTYPE_IPV4);
                let f = TxFrame::new(eg.vnet.then_some(vnet), eth, pkt);
                eg.queue_tx(f, self.io, self.sink);
            }
            Output::Chain { to, mut pkt, meta } => match eg.peers.mac_of(to) {
                Some(peer) => {
                    let vnet = frame::finish(&mut pkt, meta);
                    let eth = frame::eth_header(peer, eg.mac, ETHERTYPE_CHAIN);
                    if eg.vnet && vnet.gso_type != 0 {
                        // The kernel cannot segment a GSO frame of the chain ethertype.
                        let (io, sink) = (&mut *self.io, &mut *self.sink);
                        let cut = segment::segment(&pkt, vnet, |s| {
                            io.tx_chained += 1;
                            let f = TxFrame::new(Some(VnetHdr::default()), eth, s);
                            eg.queue_tx(f, io, sink);
                        });
                        match cut {
                            Ok(n) => {
                                io.tx_chain_segmented += 1;
                                self.split.push((to, n as u64));
                            }
                            Err(e) => {
                                io.tx_chain_unsegmentable += 1;
                                // Nothing was sent: the peer must not wait for it.
                                self.split.push((to, 0));
                                if io.tx_chain_unsegmentable.is_power_of_two() {
                                    warn!(error = %e, "chained GSO packet dropped");
                                }
                            }
                        }
                        eg.recycle(pkt);
                    } else {
                        self.io.tx_chained += 1;
                        let f = TxFrame::new(eg.vnet.then_some(vnet), eth, pkt);
                        eg.queue_tx(f, self.io, self.sink);
                    }
                }
                None => {
                    self.io.tx_chain_unknown_peer += 1;
                    eg.recycle(pkt);
                }
            },
            Output::Dropped { pkt, .. } => {
                self.io.dropped_reported += 1;
                eg.recycle(pkt);
            }
        }
    }

    fn transmit(&mut self, to: InstanceId, frame: Vec<u8>) {
        // Packets first: what the outputs queued leaves before the transfer frames.
        if !self.eg.tx.is_empty() {
            self.eg.flush_tx(self.io, self.sink);
        }
        if !self.links.transfer.send(to, frame) {
            self.io.transfer_out_refused += 1;
        }
    }

    fn event(&mut self, event: MigrationEvent) {
        self.events = true;
        let now = self.now;
        info!(
            target: "flowshift::migration",
            at_ns = now.as_nanos(),
            event = %serde_json::to_string(&event).unwrap_or_default(),
            "migration event"
        );
        match self.links.control.events.try_send(Outgoing::Event {
            at_ns: now.as_nanos(),
            event,
        }) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => self.io.control_events_dropped += 1,
        }
    }

    fn nat_event(&mut self, ev: flowshift_nat::Event) {
        match ev {
            flowshift_nat::Event::PortBlock(b) => info!(
                target: "flowshift::mapping",
                time_ns = b.time.as_nanos(),
                action = %match b.action {
                    BlockAction::Allocated => "allocated",
                    BlockAction::Released => "released",
                    BlockAction::MigratedIn => "migrated_in",
                    BlockAction::MigratedOut => "migrated_out",
                },
                subscriber = %b.subscriber,
                external = %b.external,
                first_port = b.first_port,
                last_port = b.last_port,
                "port block"
            ),
        }
    }
}
