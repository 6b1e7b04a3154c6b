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
//! Time is the caller's: a [`flowshift_wire::Instant`] (ns since the node started). Given the
//! realtime clock at each iteration ([`Engine::stamp_clock`]), a received batch reaches the
//! instance at its first frame's kernel receive stamp instead (`engine/arrival.rs`), so the
//! time a packet waited in the ring counts in the waits the migration reports.

mod arrival;
mod commands;
mod drain;
mod egress;
mod status;

use crate::config::NodeConfig;
use crate::control::{Command, ControlLink};
use crate::frame::{self, Class, ETH_HLEN, FrameSink, Offload, Peers, RxFrame};
use crate::pacing::GapMeter;
use crate::stats::{ControlCounters, IoCounters, SnapshotCell, TransferCounters};
use crate::transfer::TransferLink;
use arrival::ArrivalClock;
use egress::Egress;
use flowshift_migration::{Ingress, Instance, InstanceId, Params, Phase};
use flowshift_wire::Instant;
use std::sync::Arc;
use std::time::Duration;

/// Capacity of a fresh packet buffer (an MTU-sized packet).
const BUF_INITIAL: usize = 2048;

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

/// See the module documentation.
pub struct Engine {
    inst: Instance<Offload>,
    id: InstanceId,
    eg: Egress,
    params: Params,
    pending: Vec<(Vec<u8>, Offload)>,
    pending_ingress: Ingress,
    /// Arrival of the pending batch's first frame.
    pending_at: Option<Instant>,
    arrival: ArrivalClock,
    io: IoCounters,
    /// Scratch of [`drain::Drain::split`], kept between drains.
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
            pending_at: None,
            arrival: ArrivalClock::default(),
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

    /// The loop iteration of time `now` began when the realtime clock read `realtime_ns`:
    /// frames stamped by the kernel are handed to the instance at their arrival from now on.
    pub fn stamp_clock(&mut self, now: Instant, realtime_ns: u64) {
        self.arrival.start(now, realtime_ns);
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
        if self.pending.is_empty() {
            self.pending_at = Some(self.arrival.arrival(now, f.stamp_ns));
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

    /// Hands the collected batch to the instance, at its first frame's arrival (at most
    /// `now`), and drains it.
    pub fn flush_rx<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        if self.pending.is_empty() {
            return;
        }
        let at = self.pending_at.take().map_or(now, |t| t.min(now));
        self.arrival.handed(at);
        self.inst
            .handle_batch(at, &mut self.pending, self.pending_ingress);
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
}
