//! A tiny deterministic driver for two instances: a switch that steers one group to A or B, a
//! state-transfer link with optional loss, duplication and reordering (seeded), a FIFO chain
//! link, and virtual time. Packets are built and parsed with etherparse, independently of the
//! workspace's own parser.
#![allow(dead_code)]

use core::time::Duration;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use flowshift_migration::{
    Algorithm, Direction, Ingress, Instance, InstanceId, MigrationConfig, MigrationEvent,
    MigrationId, Output, Params, Phase,
};
use flowshift_nat::{GroupConfig, GroupId, GroupMode, Nat, NatConfig};
use flowshift_wire::Instant;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

pub const A: InstanceId = InstanceId(1);
pub const B: InstanceId = InstanceId(2);
/// The migrated group: EXT0 <- 100.64.0.0/22.
pub const EXT0: [u8; 4] = [198, 18, 0, 1];
/// A group that stays on A: EXT1 <- 100.64.8.0/24.
pub const EXT1: [u8; 4] = [198, 18, 0, 2];
/// B's own group: EXT2 <- 100.64.16.0/24.
pub const EXT2: [u8; 4] = [198, 18, 0, 3];
pub const SERVER: [u8; 4] = [203, 0, 113, 10];

pub fn group(ext: [u8; 4], net: [u8; 4], len: u8) -> GroupConfig {
    GroupConfig {
        external: Ipv4Addr::from(ext),
        subscribers: flowshift_nat::prefix(Ipv4Addr::from(net), len).expect("prefix"),
    }
}

/// Small port pools (32 blocks of 64 ports) so `check_invariants` stays cheap.
pub fn nat_config(groups: Vec<GroupConfig>, seed: u64) -> NatConfig {
    NatConfig {
        groups,
        port_min: 1024,
        port_max: 1024 + 32 * 64 - 1,
        block_size: 64,
        max_blocks_per_subscriber: 4,
        rng_seed: seed,
        ..NatConfig::default()
    }
}

pub fn mig_config() -> MigrationConfig {
    MigrationConfig {
        max_retries: 14,
        report_drops: true,
        ..MigrationConfig::default()
    }
}

/// The i-th subscriber endpoint of the migrated group: 100.64.0.0/22, 32 flows per address
/// (one port block each).
pub fn sub(i: u32) -> ([u8; 4], u16) {
    let host = 1 + i / 32;
    (
        [100, 64, (host >> 8) as u8, host as u8],
        10_000 + (i % 32) as u16,
    )
}

/// An outbound UDP packet of flow `flow` carrying `(flow, seq)`.
pub fn out_pkt(flow: u32, seq: u32) -> Vec<u8> {
    let (addr, port) = sub(flow);
    udp(addr, port, SERVER, 53, flow, seq)
}

/// An inbound UDP packet to external port `ext_port` of EXT0 carrying `(flow, seq)`.
pub fn in_pkt(ext_port: u16, flow: u32, seq: u32) -> Vec<u8> {
    udp(SERVER, 53, EXT0, ext_port, flow, seq)
}

pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flow: u32, seq: u32) -> Vec<u8> {
    let mut payload = flow.to_be_bytes().to_vec();
    payload.extend_from_slice(&seq.to_be_bytes());
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, &payload)
        .expect("build");
    out
}

/// (proto, internal addr, internal port) -> (external port, frozen, group halted).
pub type MappingTable = HashMap<(u8, [u8; 4], u16), (u16, bool, bool)>;

/// A delivered packet, parsed.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub by: InstanceId,
    pub dir: Direction,
    pub src: [u8; 4],
    pub sport: u16,
    pub dst: [u8; 4],
    pub dport: u16,
    pub flow: u32,
    pub seq: u32,
}

fn parse(at: Instant, by: InstanceId, dir: Direction, pkt: &[u8]) -> Seen {
    let s = SlicedPacket::from_ip(pkt).expect("delivered packet parses");
    let Some(etherparse::NetSlice::Ipv4(ip)) = s.net else {
        panic!("not ipv4")
    };
    let h = ip.header();
    let Some(TransportSlice::Udp(u)) = s.transport else {
        panic!("not udp")
    };
    let p = u.payload();
    Seen {
        at,
        by,
        dir,
        src: h.source(),
        sport: u.source_port(),
        dst: h.destination(),
        dport: u.destination_port(),
        flow: u32::from_be_bytes(p[0..4].try_into().unwrap()),
        seq: u32::from_be_bytes(p[4..8].try_into().unwrap()),
    }
}

/// Fault injection on the transfer link.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub loss: f64,
    pub dup: f64,
    /// Extra uniformly random delay in [0, jitter) per frame (reorders).
    pub jitter: Duration,
    /// Every frame from this time on is lost (channel failure).
    pub cut_at: Option<Instant>,
}

pub struct Cluster {
    pub a: Instance,
    pub b: Instance,
    pub now: Instant,
    /// Which instance the switch sends the migrated group to.
    pub target: InstanceId,
    pub transfer_delay: Duration,
    pub chain_delay: Duration,
    /// Switch reprogramming delay before `cutover_done` (when `auto_cutover`).
    pub barrier_delay: Duration,
    pub auto_cutover: bool,
    pub faults: Faults,
    /// The next this many chained packets are lost on the chain path.
    pub chain_drop: u64,
    rng: ChaCha8Rng,
    seq: u64,
    /// (deliver at, order) -> (to, from, bytes)
    transfer: BTreeMap<(Instant, u64), (InstanceId, InstanceId, Vec<u8>)>,
    chain: BTreeMap<(Instant, u64), (InstanceId, InstanceId, Vec<u8>)>,
    cutovers: Vec<(Instant, MigrationId)>,
    pub delivered: Vec<Seen>,
    /// Packets handed back as dropped, with the reason.
    pub dropped: Vec<(InstanceId, flowshift_nat::DropReason)>,
    /// Outbound translations seen: flow -> external port.
    pub ports: HashMap<u32, u16>,
    pub events: Vec<(InstanceId, MigrationEvent)>,
    pub frames: u64,
    /// Check the ownership invariant after every step.
    pub check_every_step: bool,
}

impl Cluster {
    /// A serves EXT0 (migrated) and EXT1; B serves EXT2.
    pub fn new(seed: u64) -> Cluster {
        Self::with_configs(seed, mig_config(), |_| {})
    }

    pub fn with_configs(
        seed: u64,
        mcfg: MigrationConfig,
        tweak: impl Fn(&mut NatConfig),
    ) -> Cluster {
        let mut ca = nat_config(
            vec![
                group(EXT0, [100, 64, 0, 0], 22),
                group(EXT1, [100, 64, 8, 0], 24),
            ],
            seed,
        );
        let mut cb = nat_config(vec![group(EXT2, [100, 64, 16, 0], 24)], seed ^ 0x55);
        tweak(&mut ca);
        tweak(&mut cb);
        let a = Instance::new(A, Nat::new(ca).unwrap(), mcfg.clone()).unwrap();
        let b = Instance::new(B, Nat::new(cb).unwrap(), mcfg).unwrap();
        Cluster {
            a,
            b,
            now: Instant::from_secs(1),
            target: A,
            transfer_delay: Duration::from_micros(500),
            chain_delay: Duration::from_micros(100),
            barrier_delay: Duration::from_millis(2),
            auto_cutover: true,
            faults: Faults::default(),
            chain_drop: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            seq: 0,
            transfer: BTreeMap::new(),
            chain: BTreeMap::new(),
            cutovers: Vec::new(),
            delivered: Vec::new(),
            dropped: Vec::new(),
            ports: HashMap::new(),
            events: Vec::new(),
            frames: 0,
            check_every_step: false,
        }
    }

    /// The external port a flow was first seen leaving with.
    pub fn port_of(&self, flow: u32) -> Option<u16> {
        self.ports.get(&flow).copied()
    }

    pub fn inst(&mut self, id: InstanceId) -> &mut Instance {
        if id == A { &mut self.a } else { &mut self.b }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The switch delivers a packet of the migrated group (or any packet) now.
    pub fn inject(&mut self, pkt: Vec<u8>) {
        let now = self.now;
        let t = self.target;
        self.inst(t).handle_packet(now, pkt, Ingress::Switch);
        self.pump();
    }

    /// Delivers a packet to a given instance now (for groups that do not move).
    pub fn inject_to(&mut self, id: InstanceId, pkt: Vec<u8>) {
        let now = self.now;
        self.inst(id).handle_packet(now, pkt, Ingress::Switch);
        self.pump();
    }

    pub fn start(&mut self, algorithm: Algorithm, params: Params) -> MigrationId {
        let now = self.now;
        let g = self.a.nat().group_id(Ipv4Addr::from(EXT0)).unwrap();
        let id = self
            .a
            .start_migration(now, g, B, algorithm, params)
            .expect("start");
        self.pump();
        id
    }

    /// Drains every instance's outputs, frames and events.
    pub fn pump(&mut self) {
        let now = self.now;
        for id in [A, B] {
            loop {
                let mut progress = false;
                while let Some(o) = self.inst(id).poll_output() {
                    progress = true;
                    match o {
                        Output::Send { pkt, dir } => {
                            let s = parse(now, id, dir, &pkt);
                            if dir == Direction::ToOutside {
                                self.ports.entry(s.flow).or_insert(s.sport);
                            }
                            self.delivered.push(s);
                        }
                        Output::Chain { .. } if self.chain_drop > 0 => self.chain_drop -= 1,
                        Output::Chain { to, pkt } => {
                            let k = (now + self.chain_delay, self.next_seq());
                            self.chain.insert(k, (to, id, pkt));
                        }
                        Output::Dropped { reason, .. } => self.dropped.push((id, reason)),
                    }
                }
                while let Some((to, bytes)) = self.inst(id).poll_transmit() {
                    progress = true;
                    self.frames += 1;
                    if self.faults.cut_at.is_some_and(|t| now >= t) {
                        continue;
                    }
                    if self.rng.random_bool(self.faults.loss) {
                        continue;
                    }
                    let copies = if self.rng.random_bool(self.faults.dup) {
                        2
                    } else {
                        1
                    };
                    for _ in 0..copies {
                        let jitter = if self.faults.jitter.is_zero() {
                            Duration::ZERO
                        } else {
                            Duration::from_nanos(
                                self.rng
                                    .random_range(0..self.faults.jitter.as_nanos() as u64),
                            )
                        };
                        let k = (now + self.transfer_delay + jitter, self.next_seq());
                        self.transfer.insert(k, (to, id, bytes.clone()));
                    }
                }
                while let Some(e) = self.inst(id).poll_event() {
                    progress = true;
                    if let MigrationEvent::ReadyForCutover { migration, .. } = &e
                        && self.auto_cutover
                    {
                        // The controller reprograms the switch and waits for the barrier.
                        self.target = B;
                        self.cutovers.push((now + self.barrier_delay, *migration));
                    }
                    self.events.push((id, e));
                }
                if !progress {
                    break;
                }
            }
        }
    }

    /// Runs every scheduled delivery and timer up to `to` (inclusive), in time order.
    pub fn advance(&mut self, to: Instant) {
        for _ in 0..10_000_000 {
            let t_transfer = self.transfer.keys().next().map(|k| k.0);
            let t_chain = self.chain.keys().next().map(|k| k.0);
            let t_cut = self.cutovers.iter().map(|c| c.0).min();
            let ta = self.a.poll_timeout();
            let tb = self.b.poll_timeout();
            let next = [t_transfer, t_chain, t_cut, Some(ta), Some(tb)]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            if next > to {
                self.now = to;
                return;
            }
            self.now = self.now.max(next);
            let now = self.now;
            if t_chain == Some(next) {
                let (k, (to_id, from, pkt)) = self.chain.pop_first().unwrap();
                let _ = k;
                self.inst(to_id)
                    .handle_packet(now, pkt, Ingress::Chain { from });
            } else if t_transfer == Some(next) {
                let (_, (to_id, from, bytes)) = self.transfer.pop_first().unwrap();
                self.inst(to_id)
                    .handle_transfer(now, from, &bytes)
                    .expect("well-formed frame");
            } else if t_cut == Some(next) {
                let i = self.cutovers.iter().position(|c| c.0 == next).unwrap();
                let (_, mig) = self.cutovers.remove(i);
                self.a.cutover_done(now, mig).expect("cutover_done");
            } else if ta == next {
                self.a.handle_timeout(now);
            } else {
                self.b.handle_timeout(now);
            }
            self.pump();
            if self.check_every_step {
                self.check_serving_owners();
            }
        }
        panic!("no progress: livelock at {:?}", self.now);
    }

    pub fn advance_by(&mut self, d: Duration) {
        let to = self.now + d;
        self.advance(to);
    }

    /// Advances until `pred` holds on the events seen so far (checked after every step), at
    /// most until `limit`.
    pub fn advance_until(
        &mut self,
        limit: Instant,
        mut pred: impl FnMut(&[(InstanceId, MigrationEvent)]) -> bool,
    ) -> bool {
        while self.now < limit {
            if pred(&self.events) {
                return true;
            }
            let step = Duration::from_micros(50);
            let to = (self.now + step).min(limit);
            self.advance(to);
        }
        pred(&self.events)
    }

    /// Advances until `n` pre-copy rounds were reported.
    pub fn advance_until_rounds(&mut self, limit: Instant, n: usize) -> bool {
        self.advance_until(limit, |ev| {
            ev.iter()
                .filter(|(_, e)| matches!(e, MigrationEvent::PrecopyRound { .. }))
                .count()
                >= n
        })
    }

    pub fn completed(&self, id: MigrationId, on: InstanceId) -> bool {
        self.events.iter().any(|(i, e)| {
            *i == on && matches!(e, MigrationEvent::Completed { migration, .. } if *migration == id)
        })
    }

    pub fn phase_reached(&self, id: MigrationId, on: InstanceId, p: Phase) -> bool {
        self.events.iter().any(|(i, e)| {
            *i == on
                && matches!(e, MigrationEvent::Phase { migration, phase, .. } if *migration == id && *phase == p)
        })
    }

    /// Every mapping of group `ext` on one NAT: (proto, internal addr, internal port) ->
    /// (external port, frozen, group halted).
    pub fn mappings(nat: &Nat, ext: [u8; 4]) -> MappingTable {
        let Some(g) = nat.group_id(Ipv4Addr::from(ext)) else {
            return HashMap::new();
        };
        let halted = nat.group_mode(g).unwrap() == GroupMode::Halted;
        nat.group_mappings(g)
            .unwrap()
            .into_iter()
            .map(|id| {
                let i = nat.mapping_info(id).unwrap();
                (
                    (i.proto, i.internal.ip().octets(), i.internal.port()),
                    (i.external_port, i.frozen, halted),
                )
            })
            .collect()
    }

    /// At most one *serving* copy (not frozen, group not halted) of each mapping, and no
    /// external port bound by serving copies on both instances.
    pub fn check_serving_owners(&self) {
        let ma = Self::mappings(self.a.nat(), EXT0);
        let mb = Self::mappings(self.b.nat(), EXT0);
        let serving = |m: &MappingTable| {
            m.iter()
                .filter(|(_, v)| !v.1 && !v.2)
                .map(|(k, v)| (*k, v.0))
                .collect::<HashMap<_, _>>()
        };
        let (sa, sb) = (serving(&ma), serving(&mb));
        for k in sa.keys() {
            assert!(
                !sb.contains_key(k),
                "mapping {k:?} served by both at {:?}",
                self.now
            );
        }
        let pa: std::collections::HashSet<(u8, u16)> = ma.iter().map(|(k, v)| (k.0, v.0)).collect();
        for (k, v) in &sb {
            // B may bind a port A still holds only for the very same mapping (a frozen copy).
            if pa.contains(&(k.0, *v)) {
                assert_eq!(
                    ma.get(k).map(|x| x.0),
                    Some(*v),
                    "external port {v} bound on both for different mappings at {:?}",
                    self.now
                );
            }
        }
    }

    /// Final state: every mapping lives on exactly one instance; both NATs consistent.
    pub fn check_exactly_one_owner(&self) -> (usize, usize) {
        self.a.nat().check_invariants().expect("A invariants");
        self.b.nat().check_invariants().expect("B invariants");
        let ma = Self::mappings(self.a.nat(), EXT0);
        let mb = Self::mappings(self.b.nat(), EXT0);
        for (k, v) in &ma {
            assert!(!mb.contains_key(k), "mapping {k:?} on both instances");
            assert!(!v.1, "mapping {k:?} left frozen on A");
        }
        let ports_a: std::collections::HashSet<(u8, u16)> =
            ma.iter().map(|(k, v)| (k.0, v.0)).collect();
        for (k, v) in &mb {
            assert!(
                !ports_a.contains(&(k.0, v.0)),
                "external port {} bound on both",
                v.0
            );
        }
        (ma.len(), mb.len())
    }

    pub fn group_on(&self, id: InstanceId) -> Option<GroupId> {
        let i = if id == A { &self.a } else { &self.b };
        i.nat().group_id(Ipv4Addr::from(EXT0))
    }
}

/// Outbound translations of each flow seen so far: flow -> external port (asserts a flow always
/// leaves with one external port).
pub fn ext_ports(delivered: &[Seen]) -> HashMap<u32, u16> {
    let mut m = HashMap::new();
    for s in delivered.iter().filter(|s| s.dir == Direction::ToOutside) {
        assert_eq!(s.src, EXT0, "outbound packet not translated to EXT0");
        let p = *m.entry(s.flow).or_insert(s.sport);
        assert_eq!(
            p, s.sport,
            "flow {} changed external port {} -> {} at {:?} (by {:?})",
            s.flow, p, s.sport, s.at, s.by
        );
    }
    m
}

/// Asserts every flow's packets, per direction, were delivered in increasing sequence order.
pub fn assert_in_order(delivered: &[Seen]) {
    let mut last: HashMap<(u32, bool), u32> = HashMap::new();
    for s in delivered {
        let k = (s.flow, s.dir == Direction::ToOutside);
        if let Some(&p) = last.get(&k) {
            assert!(
                s.seq > p,
                "flow {} dir {:?}: seq {} delivered after {} (at {:?} by {:?})",
                s.flow,
                s.dir,
                s.seq,
                p,
                s.at,
                s.by
            );
        }
        last.insert(k, s.seq);
    }
}
