//! The migration scenario tests' helpers: packets built and parsed with etherparse,
//! independently of the workspace's own parser, and what the tests record of a run of the
//! two-instance harness ([`flowshift_harness::Harness`]: a switch that steers by the
//! controller's rules, a state-transfer link with seeded loss, duplication and reordering, a
//! FIFO chain path, virtual time, migrations driven through the orchestrator).
#![allow(dead_code)]

use core::time::Duration;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
pub use flowshift_harness::{A, B, Harness, HarnessConfig, Observer};
use flowshift_migration::{
    Algorithm, Direction, Instance, InstanceId, MigrationConfig, MigrationEvent, MigrationId,
    Params, Phase,
};
use flowshift_nat::{GroupConfig, GroupId, GroupMode, Nat, NatConfig};
use flowshift_wire::Instant;
use std::collections::HashMap;
use std::net::Ipv4Addr;

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

/// What the tests record of a run.
#[derive(Default)]
pub struct Log {
    /// Translated packets, parsed.
    pub delivered: Vec<Seen>,
    /// Packets handed back as dropped, with the reason.
    pub dropped: Vec<(InstanceId, flowshift_nat::DropReason)>,
    /// Outbound translations seen: flow -> external port.
    pub ports: HashMap<u32, u16>,
    pub events: Vec<(InstanceId, MigrationEvent)>,
    /// Transfer frames sent (before faults).
    pub frames: u64,
    /// Check the ownership invariant after every step.
    pub check_every_step: bool,
}

impl Observer for Log {
    fn sent(&mut self, at: Instant, by: InstanceId, dir: Direction, pkt: Vec<u8>) {
        let s = parse(at, by, dir, &pkt);
        if dir == Direction::ToOutside {
            self.ports.entry(s.flow).or_insert(s.sport);
        }
        self.delivered.push(s);
    }

    fn dropped(
        &mut self,
        _: Instant,
        by: InstanceId,
        reason: flowshift_nat::DropReason,
        _: Vec<u8>,
    ) {
        self.dropped.push((by, reason));
    }

    fn frame(&mut self, _: Instant, _: InstanceId, _: InstanceId, _: usize) {
        self.frames += 1;
    }

    fn event(&mut self, _: Instant, on: InstanceId, event: &MigrationEvent) {
        self.events.push((on, event.clone()));
    }

    fn stepped(&mut self, now: Instant, a: &Instance, b: &Instance) {
        if self.check_every_step {
            check_serving_owners(a, b, now);
        }
    }
}

/// Two instances behind the harness's switch, driven through the orchestrator.
pub type Cluster = Harness<Log>;

/// A serves EXT0 (migrated) and EXT1; B serves EXT2.
pub fn cluster(seed: u64) -> Cluster {
    cluster_with(seed, mig_config(), |_| {})
}

pub fn cluster_with(seed: u64, mcfg: MigrationConfig, tweak: impl Fn(&mut NatConfig)) -> Cluster {
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
    cluster_of(seed, a, b)
}

/// The harness around two given instances (default links, fault seed `seed`).
pub fn cluster_of(seed: u64, a: Instance, b: Instance) -> Cluster {
    let cfg = HarnessConfig {
        seed,
        ..HarnessConfig::default()
    };
    Harness::new(a, b, Instant::from_secs(1), cfg, Log::default()).expect("harness")
}

/// What the tests ask of a cluster beyond the harness.
pub trait ClusterExt {
    /// Migrates EXT0 from A to B (through the orchestrator).
    fn start(&mut self, algorithm: Algorithm, params: Params) -> MigrationId;
    /// The external port a flow was first seen leaving with.
    fn port_of(&self, flow: u32) -> Option<u16>;
    /// Advances until `pred` holds on the events seen so far (checked every 50 us), at most
    /// until `limit`.
    fn advance_until(
        &mut self,
        limit: Instant,
        pred: impl FnMut(&[(InstanceId, MigrationEvent)]) -> bool,
    ) -> bool;
    /// Advances until `n` pre-copy rounds were reported.
    fn advance_until_rounds(&mut self, limit: Instant, n: usize) -> bool;
    fn completed(&self, id: MigrationId, on: InstanceId) -> bool;
    fn phase_reached(&self, id: MigrationId, on: InstanceId, p: Phase) -> bool;
    /// See [`check_serving_owners`].
    fn check_serving_owners(&self);
    /// Final state: every mapping lives on exactly one instance; both NATs consistent; the
    /// harness steered every packet and every command was accepted.
    fn check_exactly_one_owner(&self) -> (usize, usize);
    fn group_on(&self, id: InstanceId) -> Option<GroupId>;
}

impl ClusterExt for Cluster {
    fn start(&mut self, algorithm: Algorithm, params: Params) -> MigrationId {
        self.migrate(Ipv4Addr::from(EXT0), B, algorithm, params)
            .expect("start")
    }

    fn port_of(&self, flow: u32) -> Option<u16> {
        self.obs.ports.get(&flow).copied()
    }

    fn advance_until(
        &mut self,
        limit: Instant,
        mut pred: impl FnMut(&[(InstanceId, MigrationEvent)]) -> bool,
    ) -> bool {
        self.run_until(limit, Duration::from_micros(50), |h| pred(&h.obs.events))
            .expect("no livelock")
    }

    fn advance_until_rounds(&mut self, limit: Instant, n: usize) -> bool {
        self.advance_until(limit, |ev| {
            ev.iter()
                .filter(|(_, e)| matches!(e, MigrationEvent::PrecopyRound { .. }))
                .count()
                >= n
        })
    }

    fn completed(&self, id: MigrationId, on: InstanceId) -> bool {
        self.obs.events.iter().any(|(i, e)| {
            *i == on && matches!(e, MigrationEvent::Completed { migration, .. } if *migration == id)
        })
    }

    fn phase_reached(&self, id: MigrationId, on: InstanceId, p: Phase) -> bool {
        self.obs.events.iter().any(|(i, e)| {
            *i == on
                && matches!(e, MigrationEvent::Phase { migration, phase, .. } if *migration == id && *phase == p)
        })
    }

    fn check_serving_owners(&self) {
        check_serving_owners(&self.a, &self.b, self.now);
    }

    fn check_exactly_one_owner(&self) -> (usize, usize) {
        let st = self.stats();
        assert_eq!(st.unsteered, 0, "a packet no switch rule steered");
        assert_eq!(
            st.commands_refused, 0,
            "an orchestrator command was refused"
        );
        assert_eq!(st.frames_malformed, 0, "a malformed transfer frame");
        assert_eq!(st.queue_full + st.unrouted, 0, "a link refused a packet");
        self.a.nat().check_invariants().expect("A invariants");
        self.b.nat().check_invariants().expect("B invariants");
        let ma = mappings(self.a.nat(), EXT0);
        let mb = mappings(self.b.nat(), EXT0);
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

    fn group_on(&self, id: InstanceId) -> Option<GroupId> {
        let i = if id == A { &self.a } else { &self.b };
        i.nat().group_id(Ipv4Addr::from(EXT0))
    }
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
pub fn check_serving_owners(a: &Instance, b: &Instance, now: Instant) {
    let ma = mappings(a.nat(), EXT0);
    let mb = mappings(b.nat(), EXT0);
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
            "mapping {k:?} served by both at {now:?}"
        );
    }
    let pa: std::collections::HashSet<(u8, u16)> = ma.iter().map(|(k, v)| (k.0, v.0)).collect();
    for (k, v) in &sb {
        // B may bind a port A still holds only for the very same mapping (a frozen copy).
        if pa.contains(&(k.0, *v)) {
            assert_eq!(
                ma.get(k).map(|x| x.0),
                Some(*v),
                "external port {v} bound on both for different mappings at {now:?}"
            );
        }
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
