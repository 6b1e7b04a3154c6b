//! The event loop: two NAT instances, the switch, the links and the flows, in virtual time.

use super::*;

// --------------------------------------------------------------------------- the driver

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

pub(super) struct Link {
    pub(super) q: VecDeque<(Instant, Vec<u8>)>,
    pub(super) free_at: Instant,
}

pub(super) struct Sim {
    pub(super) a: Instance,
    pub(super) b: Instance,
    pub(super) now: Instant,
    /// The switch sends the group to B.
    pub(super) to_b: bool,
    /// Transfer links: [A->B, B->A].
    pub(super) links: [Link; 2],
    /// Chain paths: [A->B, B->A].
    pub(super) chains: [VecDeque<(Instant, Vec<u8>)>; 2],
    pub(super) cutover: Option<(Instant, MigrationId)>,
    pub(super) delay: Duration,
    pub(super) ns_per_byte: f64,
    pub(super) barrier: Duration,
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

impl Sim {
    pub(super) fn new(args: &PrecopyArgs, replay: Option<Rc<ReplayPlan>>) -> Result<Sim> {
        let subs = flowshift_nat::prefix(Ipv4Addr::from(SUB_NET), SUB_LEN)
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
        let link = || Link {
            q: VecDeque::new(),
            free_at: T0,
        };
        let mut sim = Sim {
            a,
            b,
            now: T0,
            to_b: false,
            links: [link(), link()],
            chains: [VecDeque::new(), VecDeque::new()],
            cutover: None,
            delay: Duration::from_micros(args.delay_us),
            ns_per_byte: if args.bandwidth_mbps > 0.0 {
                8e3 / args.bandwidth_mbps
            } else {
                0.0
            },
            barrier: Duration::from_micros(args.barrier_us),
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
                sim.flows = plan.flows.clone();
                if let Some(&(t, ..)) = plan.events.first() {
                    sim.schedule(T0 + t, Ev::Replay);
                }
                sim.replay = Some(plan);
            }
            None => {
                let mut s = Synth::new(args);
                let open = secs(PERSISTENT_OPEN_S.min(args.warmup_s.max(0.001)));
                for _ in 0..args.persistent {
                    let f = s.flow(true);
                    let at = T0 + secs(s.uniform() * open.as_secs_f64());
                    sim.flows.push(f);
                    let id = (sim.flows.len() - 1) as u32;
                    sim.schedule(at, Ev::Out(id));
                }
                let first = T0 + s.exp(1.0 / s.rate);
                sim.synth = Some(s);
                sim.schedule(first, Ev::Arrival);
            }
        }
        Ok(sim)
    }

    pub(super) fn schedule(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    pub(super) fn inst(&mut self, id: InstanceId) -> &mut Instance {
        if id == A { &mut self.a } else { &mut self.b }
    }

    /// The switch delivers a packet of the group.
    pub(super) fn inject(&mut self, pkt: Vec<u8>) {
        self.stats.offered += 1;
        let now = self.now;
        let t = if self.to_b { B } else { A };
        self.inst(t).handle_packet(now, pkt, Ingress::Switch);
        self.pump();
    }

    pub(super) fn send_flow(&mut self, f: u32, out: bool, flags: u8, kind: u8) -> Result<()> {
        let Some(fl) = self.flows.get(f as usize) else {
            return Ok(());
        };
        let pkt = if out {
            build_packet(
                fl.proto, fl.sub, fl.sport, fl.server, fl.dport, flags, f, kind,
            )?
        } else {
            let Some(ext_port) = fl.ext_port else {
                self.stats.inbound_unaddressable += 1;
                return Ok(());
            };
            build_packet(fl.proto, fl.server, fl.dport, EXT, ext_port, flags, f, kind)?
        };
        self.inject(pkt);
        Ok(())
    }

    /// Drains every instance's outputs, frames and events (the driver contract).
    pub(super) fn pump(&mut self) {
        loop {
            let mut progress = false;
            for id in [A, B] {
                while let Some(o) = self.inst(id).poll_output() {
                    progress = true;
                    self.on_output(id, o);
                }
                while let Some((to, bytes)) = self.inst(id).poll_transmit() {
                    progress = true;
                    self.on_frame(id, to, bytes);
                }
                while let Some(e) = self.inst(id).poll_event() {
                    progress = true;
                    self.on_event(id, e);
                }
            }
            if !progress {
                break;
            }
        }
    }

    pub(super) fn on_output(&mut self, from: InstanceId, o: Output) {
        match o {
            Output::Send { pkt, dir } => {
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
                    let at = self.now + self.server_rtt;
                    self.schedule(at, Ev::In(flow, flags));
                }
            }
            Output::Chain { to, pkt } => {
                self.stats.chained += 1;
                if to == from {
                    return;
                }
                // Chain paths: [A->B, B->A].
                let i = usize::from(from == B);
                let at = self.now + self.delay;
                self.chains[i].push_back((at, pkt));
            }
            Output::Dropped { reason, .. } => {
                *self.stats.dropped.entry(reason.label()).or_default() += 1;
            }
        }
    }

    pub(super) fn on_frame(&mut self, from: InstanceId, to: InstanceId, bytes: Vec<u8>) {
        if from == to {
            return;
        }
        self.stats.frames += 1;
        self.stats.frame_bytes += bytes.len() as u64;
        let i = usize::from(from == B);
        let ser = Duration::from_nanos((bytes.len() as f64 * self.ns_per_byte) as u64);
        let link = &mut self.links[i];
        let done = link.free_at.max(self.now) + ser;
        link.free_at = done;
        link.q.push_back((done + self.delay, bytes));
    }

    pub(super) fn on_event(&mut self, on: InstanceId, e: MigrationEvent) {
        let now = self.now;
        match e {
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
                },
            )),
            MigrationEvent::IdleProgress {
                remaining, expired, ..
            } => self.log.idle.push((now, remaining, expired)),
            MigrationEvent::Phase { phase, .. } => self.log.phases.push((now, on, phase)),
            MigrationEvent::ReadyForCutover { migration, .. } => {
                self.log.ready = Some(now);
                // The controller redirects the switch now and confirms after the barrier.
                self.to_b = true;
                self.cutover = Some((now + self.barrier, migration));
            }
            MigrationEvent::Completed { .. } => {
                if on == A {
                    self.log.src_done = Some(now);
                } else {
                    self.log.dst_done = Some(now);
                }
            }
            MigrationEvent::Aborted { .. } => self.log.aborted = true,
            MigrationEvent::Incoming { .. } => {}
        }
    }

    pub(super) fn fire(&mut self, ev: Ev) -> Result<()> {
        match ev {
            Ev::Arrival => {
                let Some(s) = self.synth.as_mut() else {
                    return Ok(());
                };
                let f = s.flow(false);
                let next = s.exp(1.0 / s.rate);
                if self.flows.len() >= MAX_FLOWS {
                    bail!("more than {MAX_FLOWS} flows: lower --rate or the run length");
                }
                self.flows.push(f);
                let id = (self.flows.len() - 1) as u32;
                let now = self.now;
                self.schedule(now, Ev::Out(id));
                self.schedule(now + next, Ev::Arrival);
            }
            Ev::Out(id) => self.fire_out(id)?,
            Ev::In(id, flags) => self.send_flow(id, false, flags, K_REPLY)?,
            Ev::Replay => {
                let Some(plan) = self.replay.clone() else {
                    return Ok(());
                };
                if let Some(&(_, flow, out, flags)) = plan.events.get(self.cursor) {
                    self.cursor += 1;
                    self.send_flow(flow, out, flags, K_REPLAY)?;
                }
                if let Some(&(t, ..)) = plan.events.get(self.cursor) {
                    self.schedule(T0 + t, Ev::Replay);
                }
            }
        }
        Ok(())
    }

    /// A synthetic flow's next outbound packet, and the one after it scheduled.
    pub(super) fn fire_out(&mut self, id: u32) -> Result<()> {
        let Some(fl) = self.flows.get(id as usize) else {
            return Ok(());
        };
        let (stage, persistent, tcp) = (fl.stage, fl.persistent, fl.proto == TCP);
        let Some(s) = self.synth.as_mut() else {
            return Ok(());
        };
        let gap = s.exp(1.0 / s.flow_pps);
        let keep = s.exp(s.keepalive_s);
        let now = self.now;
        let (flags, kind, next_stage, next_at) = match stage {
            Stage::Syn => (
                SYN,
                K_SYN,
                if persistent {
                    Stage::Keepalive
                } else {
                    Stage::Data
                },
                Some(now + self.server_rtt + if persistent { keep } else { gap }),
            ),
            Stage::Data => {
                let fl = &mut self.flows[id as usize];
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
        self.flows[id as usize].stage = next_stage;
        if let Some(at) = next_at {
            self.schedule(at, Ev::Out(id));
        }
        self.send_flow(id, true, flags, kind)
    }

    /// Runs events in time order up to `until`, or until `stop` holds (checked after every
    /// step).
    pub(super) fn run_until(&mut self, until: Instant, stop: impl Fn(&Sim) -> bool) -> Result<()> {
        let mut same_time = 0u64;
        for _ in 0..MAX_STEPS {
            if stop(self) {
                return Ok(());
            }
            let t_wl = self.heap.peek().map(|Reverse((t, ..))| *t);
            let t_chain = [
                self.chains[0].front().map(|x| x.0),
                self.chains[1].front().map(|x| x.0),
            ];
            let t_link = [
                self.links[0].q.front().map(|x| x.0),
                self.links[1].q.front().map(|x| x.0),
            ];
            let t_cut = self.cutover.map(|c| c.0);
            let ta = self.a.poll_timeout();
            let tb = self.b.poll_timeout();
            let next = [
                t_chain[0],
                t_chain[1],
                t_link[0],
                t_link[1],
                t_cut,
                Some(ta),
                Some(tb),
                t_wl,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Instant::MAX);
            if next > until {
                self.now = self.now.max(until);
                return Ok(());
            }
            if next <= self.now {
                same_time += 1;
                if same_time > MAX_STEPS_AT_ONE_TIME {
                    bail!("no progress of time at {:?} (livelock)", self.now);
                }
            } else {
                same_time = 0;
            }
            self.now = self.now.max(next);
            let now = self.now;
            if let Some(i) = (0..2).find(|&i| t_chain[i] == Some(next)) {
                if let Some((_, pkt)) = self.chains[i].pop_front() {
                    let (to, from) = if i == 0 { (B, A) } else { (A, B) };
                    self.inst(to)
                        .handle_packet(now, pkt, Ingress::Chain { from });
                }
            } else if let Some(i) = (0..2).find(|&i| t_link[i] == Some(next)) {
                if let Some((_, bytes)) = self.links[i].q.pop_front() {
                    let (to, from) = if i == 0 { (B, A) } else { (A, B) };
                    // A malformed frame is refused and counted by the instance.
                    let _ = self.inst(to).handle_transfer(now, from, &bytes);
                }
            } else if t_cut == Some(next) {
                if let Some((_, mig)) = self.cutover.take() {
                    self.a
                        .cutover_done(now, mig)
                        .context("cutover_done refused")?;
                }
            } else if ta == next {
                self.a.handle_timeout(now);
            } else if tb == next {
                self.b.handle_timeout(now);
            } else if let Some(Reverse((_, _, ev))) = self.heap.pop() {
                self.fire(ev)?;
            }
            self.pump();
        }
        bail!("step bound {MAX_STEPS} exceeded at {:?}", self.now)
    }

    pub(super) fn finished(&self) -> bool {
        self.log.aborted || (self.log.src_done.is_some() && self.log.dst_done.is_some())
    }
}
