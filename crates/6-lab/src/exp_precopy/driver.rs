//! The run: the two-instance harness ([`flowshift_harness`]: the switch steering by the
//! controller's rules, the orchestrator, the transfer link and the chain path) driven by the
//! workload's events in virtual time. [`World`] is what the experiment keeps of a run: the
//! flows, the workload's pending events, and what it saw (the harness's observer).

use super::*;

/// Driver-side counters of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct DriverStats {
    /// Packets the switch handed to an instance.
    pub(super) offered: u64,
    /// Translated packets towards the outside.
    pub(super) to_outside: u64,
    /// Translated packets towards the subscribers.
    pub(super) to_inside: u64,
    /// Packets dropped by an instance, by NAT drop reason.
    pub(super) dropped: BTreeMap<&'static str, u64>,
    /// Server replies not sent because the flow's external port was unknown (its outbound
    /// packets never got out), and replayed inbound packets likewise.
    pub(super) inbound_unaddressable: u64,
    /// Translated packets the driver could not parse (0 expected).
    pub(super) unparsed: u64,
    /// Packets chained between instances.
    pub(super) chained: u64,
    /// Transfer frames and their bytes (both directions).
    pub(super) frames: u64,
    pub(super) frame_bytes: u64,
}

impl DriverStats {
    pub(super) fn minus(&self, o: &DriverStats) -> DriverStats {
        let mut dropped = self.dropped.clone();
        for (k, v) in &o.dropped {
            if let Some(x) = dropped.get_mut(k) {
                *x -= *v;
            }
        }
        dropped.retain(|_, v| *v > 0);
        DriverStats {
            offered: self.offered - o.offered,
            to_outside: self.to_outside - o.to_outside,
            to_inside: self.to_inside - o.to_inside,
            dropped,
            inbound_unaddressable: self.inbound_unaddressable - o.inbound_unaddressable,
            unparsed: self.unparsed - o.unparsed,
            chained: self.chained - o.chained,
            frames: self.frames - o.frames,
            frame_bytes: self.frame_bytes - o.frame_bytes,
        }
    }
}

/// What the driver saw of the migration.
#[derive(Default)]
pub(super) struct MigLog {
    pub(super) start: Instant,
    pub(super) rounds: Vec<(Instant, RoundOut)>,
    pub(super) idle: Vec<(Instant, u32, u32)>,
    pub(super) phases: Vec<(Instant, InstanceId, Phase)>,
    pub(super) ready: Option<Instant>,
    pub(super) src_done: Option<Instant>,
    pub(super) dst_done: Option<Instant>,
    pub(super) aborted: bool,
}

/// The workload's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Ev {
    /// Next synthetic flow arrival.
    Arrival,
    /// A flow's next outbound packet (synthetic).
    Out(u32),
    /// A server's reply to a flow (flags).
    In(u32, u8),
    /// The next packet of the trace.
    Replay,
}

/// The experiment's side of a run (the harness's observer).
pub(super) struct World {
    pub(super) server_rtt: Duration,
    pub(super) synth: Option<Synth>,
    pub(super) replay: Option<Rc<ReplayPlan>>,
    pub(super) cursor: usize,
    pub(super) flows: Vec<Flow>,
    pub(super) heap: BinaryHeap<Reverse<(Instant, u64, Ev)>>,
    pub(super) seq: u64,
    pub(super) stats: DriverStats,
    pub(super) log: MigLog,
}

impl World {
    pub(super) fn schedule(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    fn next_event(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, ..))| *t)
    }
}

impl Observer for World {
    fn sent(&mut self, at: Instant, _: InstanceId, dir: Direction, pkt: Vec<u8>) {
        match dir {
            Direction::ToOutside => self.stats.to_outside += 1,
            Direction::ToInside => {
                self.stats.to_inside += 1;
                return;
            }
        }
        let Some((proto, src, sport, flow, kind)) = parse_output(&pkt) else {
            self.stats.unparsed += 1;
            return;
        };
        let Some(fl) = self.flows.get_mut(flow as usize) else {
            self.stats.unparsed += 1;
            return;
        };
        if src != EXT || fl.proto != proto {
            self.stats.unparsed += 1;
            return;
        }
        fl.ext_port = Some(sport);
        if fl.respond && kind < K_REPLY {
            let flags = match (proto, kind) {
                (UDP, _) => 0,
                (_, K_SYN) => SYN | ACK,
                (_, K_FIN) => FIN | ACK,
                _ => ACK,
            };
            self.schedule(at + self.server_rtt, Ev::In(flow, flags));
        }
    }

    fn dropped(&mut self, _: Instant, _: InstanceId, reason: DropReason, _: Vec<u8>) {
        *self.stats.dropped.entry(reason.label()).or_default() += 1;
    }

    fn chained(&mut self, _: Instant, _: InstanceId, _: InstanceId, _: &[u8]) {
        self.stats.chained += 1;
    }

    fn frame(&mut self, _: Instant, _: InstanceId, _: InstanceId, len: usize) {
        self.stats.frames += 1;
        self.stats.frame_bytes += len as u64;
    }

    fn event(&mut self, now: Instant, on: InstanceId, e: &MigrationEvent) {
        match *e {
            MigrationEvent::PrecopyRound {
                round,
                copied,
                dirty,
                new,
                dead,
                last,
                ..
            } => self.log.rounds.push((
                now,
                RoundOut {
                    round,
                    at_ms: 0.0,
                    copied,
                    dirty,
                    new,
                    dead,
                    last,
                    dirty_fraction: 0.0,
                },
            )),
            MigrationEvent::IdleProgress {
                remaining, expired, ..
            } => self.log.idle.push((now, remaining, expired)),
            MigrationEvent::Phase { phase, .. } => self.log.phases.push((now, on, phase)),
            // The orchestrator redirects the switch now and confirms after the barrier.
            MigrationEvent::ReadyForCutover { .. } => self.log.ready = Some(now),
            MigrationEvent::Completed { .. } => {
                if on == A {
                    self.log.src_done = Some(now);
                } else {
                    self.log.dst_done = Some(now);
                }
            }
            MigrationEvent::Aborted { .. } => self.log.aborted = true,
            MigrationEvent::Incoming { .. } | MigrationEvent::AwaitingCutover { .. } => {}
        }
    }
}

/// A run: the harness with the experiment as its observer.
pub(super) type Sim = Harness<World>;

/// Time origin of every run (virtual).
pub(super) const T0: Instant = Instant::from_secs(1);

pub(super) fn nat_config(groups: Vec<GroupConfig>, seed: u64) -> NatConfig {
    NatConfig {
        groups,
        block_size: 64,
        max_blocks_per_subscriber: 8,
        timeouts: Timeouts {
            tcp_established: Duration::from_secs(2 * 3600 + 4 * 60),
            tcp_transitory: Duration::from_secs(240),
            udp: Duration::from_secs(120),
            icmp: Duration::from_secs(60),
        },
        rng_seed: seed,
        hash_seed: seed ^ 0x9e37_79b9_7f4a_7c15,
        ..NatConfig::default()
    }
}

/// A fresh run: A serves the group, B its own; the workload's first events scheduled.
pub(super) fn new_sim(args: &PrecopyArgs, replay: Option<Rc<ReplayPlan>>) -> Result<Sim> {
    let subs = flowshift_nat::prefix(Ipv4Addr::from(SUBSCRIBER_NET), SUBSCRIBER_LEN)
        .ok_or_else(|| anyhow!("bad subscriber prefix"))?;
    let b_subs = flowshift_nat::prefix(Ipv4Addr::new(100, 65, 0, 0), 24)
        .ok_or_else(|| anyhow!("bad prefix"))?;
    let ca = nat_config(
        vec![GroupConfig {
            external: EXT,
            subscribers: subs,
        }],
        args.seed,
    );
    let cb = nat_config(
        vec![GroupConfig {
            external: B_EXT,
            subscribers: b_subs,
        }],
        args.seed ^ 0x55,
    );
    let mcfg = args.mig_config();
    let a = Instance::new(A, Nat::new(ca)?, mcfg.clone())?;
    let b = Instance::new(B, Nat::new(cb)?, mcfg)?;
    let delay = Duration::from_micros(args.delay_us);
    let cfg = HarnessConfig {
        seed: args.seed,
        transfer_delay: delay,
        transfer_ns_per_byte: if args.bandwidth_mbps > 0.0 {
            8e3 / args.bandwidth_mbps
        } else {
            0.0
        },
        chain_delay: delay,
        barrier_delay: Duration::from_micros(args.barrier_us),
        faults: Faults::default(),
    };
    let mut world = World {
        server_rtt: secs(args.server_rtt_ms / 1e3),
        synth: None,
        replay: None,
        cursor: 0,
        flows: Vec::new(),
        heap: BinaryHeap::new(),
        seq: 0,
        stats: DriverStats::default(),
        log: MigLog::default(),
    };
    match replay {
        Some(plan) => {
            world.flows = plan.flows.clone();
            if let Some(&(t, ..)) = plan.events.first() {
                world.schedule(T0 + t, Ev::Replay);
            }
            world.replay = Some(plan);
        }
        None => {
            let mut s = Synth::new(&args.synth());
            let open = secs(PERSISTENT_OPEN_S.min(args.warmup_s.max(0.001)));
            for _ in 0..args.persistent {
                let f = s.flow(true);
                let at = T0 + secs(s.uniform() * open.as_secs_f64());
                world.flows.push(f);
                let id = (world.flows.len() - 1) as u32;
                world.schedule(at, Ev::Out(id));
            }
            let first = T0 + s.exp(1.0 / s.rate);
            world.synth = Some(s);
            world.schedule(first, Ev::Arrival);
        }
    }
    Ok(Harness::new(a, b, T0, cfg, world)?)
}

/// The switch delivers a packet of flow `f` (outbound, or inbound to its external port).
fn send_flow(sim: &mut Sim, f: u32, out: bool, flags: u8, kind: u8) -> Result<()> {
    let Some(fl) = sim.obs.flows.get(f as usize) else {
        return Ok(());
    };
    let pkt = if out {
        build_packet(
            fl.proto, fl.sub, fl.sport, fl.server, fl.dport, flags, f, kind,
        )?
    } else {
        let Some(ext_port) = fl.ext_port else {
            sim.obs.stats.inbound_unaddressable += 1;
            return Ok(());
        };
        build_packet(fl.proto, fl.server, fl.dport, EXT, ext_port, flags, f, kind)?
    };
    sim.obs.stats.offered += 1;
    if !sim.inject(pkt) {
        bail!("the switch has no rule for flow {f}");
    }
    Ok(())
}

/// Runs one workload event.
fn fire(sim: &mut Sim, ev: Ev) -> Result<()> {
    match ev {
        Ev::Arrival => {
            let now = sim.now;
            let w = &mut sim.obs;
            let Some(s) = w.synth.as_mut() else {
                return Ok(());
            };
            let f = s.flow(false);
            let next = s.exp(1.0 / s.rate);
            if w.flows.len() >= MAX_FLOWS {
                bail!("more than {MAX_FLOWS} flows: lower --rate or the run length");
            }
            w.flows.push(f);
            let id = (w.flows.len() - 1) as u32;
            w.schedule(now, Ev::Out(id));
            w.schedule(now + next, Ev::Arrival);
        }
        Ev::Out(id) => fire_out(sim, id)?,
        Ev::In(id, flags) => send_flow(sim, id, false, flags, K_REPLY)?,
        Ev::Replay => {
            let Some(plan) = sim.obs.replay.clone() else {
                return Ok(());
            };
            if let Some(&(_, flow, out, flags)) = plan.events.get(sim.obs.cursor) {
                sim.obs.cursor += 1;
                send_flow(sim, flow, out, flags, K_REPLAY)?;
            }
            if let Some(&(t, ..)) = plan.events.get(sim.obs.cursor) {
                sim.obs.schedule(T0 + t, Ev::Replay);
            }
        }
    }
    Ok(())
}

/// A synthetic flow's next outbound packet, and the one after it scheduled.
fn fire_out(sim: &mut Sim, id: u32) -> Result<()> {
    let now = sim.now;
    let w = &mut sim.obs;
    let Some(fl) = w.flows.get(id as usize) else {
        return Ok(());
    };
    let (stage, persistent, tcp) = (fl.stage, fl.persistent, fl.proto == TCP);
    let Some(s) = w.synth.as_mut() else {
        return Ok(());
    };
    let gap = s.exp(1.0 / s.flow_pps);
    let keep = s.exp(s.keepalive_s);
    let (flags, kind, next_stage, next_at) = match stage {
        Stage::Syn => (
            SYN,
            K_SYN,
            if persistent {
                Stage::Keepalive
            } else {
                Stage::Data
            },
            Some(now + w.server_rtt + if persistent { keep } else { gap }),
        ),
        Stage::Data => {
            let fl = &mut w.flows[id as usize];
            fl.left = fl.left.saturating_sub(1);
            let next = match (fl.left, tcp) {
                (0, true) => Stage::Fin,
                (0, false) => Stage::Done,
                _ => Stage::Data,
            };
            let at = (next != Stage::Done).then_some(now + gap);
            (if tcp { ACK | PSH } else { 0 }, K_DATA, next, at)
        }
        Stage::Fin => (FIN | ACK, K_FIN, Stage::Done, None),
        Stage::Keepalive => (ACK | PSH, K_KEEPALIVE, Stage::Keepalive, Some(now + keep)),
        Stage::Done | Stage::Replay => return Ok(()),
    };
    w.flows[id as usize].stage = next_stage;
    if let Some(at) = next_at {
        w.schedule(at, Ev::Out(id));
    }
    send_flow(sim, id, true, flags, kind)
}

/// Runs the harness's and the workload's events in time order (the harness's first at equal
/// times) up to `until`, or until `stop` holds (checked after every step).
pub(super) fn run_until(sim: &mut Sim, until: Instant, stop: impl Fn(&Sim) -> bool) -> Result<()> {
    let mut same_time = 0u64;
    for _ in 0..MAX_STEPS {
        if stop(sim) {
            return Ok(());
        }
        let t_h = sim.next_time();
        let t_wl = sim.obs.next_event().unwrap_or(Instant::MAX);
        let next = t_h.min(t_wl);
        if next > until {
            sim.now = sim.now.max(until);
            return Ok(());
        }
        if next <= sim.now {
            same_time += 1;
            if same_time > MAX_STEPS_AT_ONE_TIME {
                bail!("no progress of time at {:?} (livelock)", sim.now);
            }
        } else {
            same_time = 0;
        }
        if t_h <= t_wl {
            sim.step();
        } else if let Some(Reverse((_, _, ev))) = sim.obs.heap.pop() {
            sim.now = sim.now.max(next);
            fire(sim, ev)?;
        }
    }
    bail!("step bound {MAX_STEPS} exceeded at {:?}", sim.now)
}

/// Both sides completed, or the migration was abandoned.
pub(super) fn finished(sim: &Sim) -> bool {
    let log = &sim.obs.log;
    log.aborted || (log.src_done.is_some() && log.dst_done.is_some())
}
