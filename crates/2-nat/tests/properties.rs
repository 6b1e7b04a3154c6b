//! Property tests over random sequences of packets (TCP with random flags, UDP, ICMP echo,
//! ICMP errors, hairpins), time advances, freezes, group mode changes and migrations
//! (export + remove + import into a second instance and back):
//!
//! (a) no external (address, port, protocol) is ever bound to two internal endpoints at once,
//!     and every translation agrees with the mapping table;
//! (b) translating out and back restores the original endpoints;
//! (c) `check_invariants` holds after every step, on both instances, and a migrated mapping
//!     translates exactly as before;
//! (d) every rewritten packet's checksums verify with etherparse.

mod common;

use common::*;
use core::time::Duration;
use flowshift_nat::record;
use flowshift_nat::{
    Filtering, GroupId, GroupMode, MappingInfo, Nat, NatConfig, RemoveCause, Verdict,
};
use flowshift_wire::Instant;
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

const SUBS: [[u8; 4]; 7] = [
    [100, 64, 0, 1],
    [100, 64, 0, 2],
    [100, 64, 0, 3],
    [100, 64, 0, 4],
    [100, 64, 0, 5],
    [100, 64, 1, 1],
    [100, 64, 1, 2],
];
const SERVERS: [[u8; 4]; 3] = [SRV_X, SRV_Y, SRV_Z];
const PORTS: [u16; 3] = [1000, 1001, 53];
const RPORTS: [u16; 2] = [53, 80];

fn prop_config(filtering: Filtering) -> NatConfig {
    // 4 blocks of 64 per address, one block per subscriber: blocks run out and ports are
    // reused after expiry.
    NatConfig {
        port_min: 2048,
        port_max: 2048 + 4 * 64 - 1,
        block_size: 64,
        max_blocks_per_subscriber: 1,
        filtering,
        ..config()
    }
}

fn filtering_of(adf: bool) -> Filtering {
    if adf {
        Filtering::AddressDependent
    } else {
        Filtering::EndpointIndependent
    }
}

#[derive(Clone, Copy, Debug)]
enum Proto {
    Tcp(u8),
    Udp,
    Echo,
}

#[derive(Clone, Debug)]
enum Op {
    /// A subscriber sends to a server (and, with `reply`, the server answers the translated
    /// packet), or to an external endpoint of this NAT (hairpin) picked by `target`.
    Out {
        proto: Proto,
        sub: usize,
        port: usize,
        srv: usize,
        rport: usize,
        hairpin: Option<Index>,
        reply: bool,
    },
    /// A server sends to a live mapping (`target`) or to a random external port.
    In {
        proto: Proto,
        srv: usize,
        rport: usize,
        target: Option<Index>,
        port: u16,
    },
    /// A router reports an error about a recently translated outbound packet.
    ErrorIn {
        which: Index,
        quote_all: bool,
    },
    /// A subscriber reports an error about a recently translated inbound packet.
    ErrorOut {
        which: Index,
    },
    Advance(u64),
    Freeze {
        target: Index,
        frozen: bool,
    },
    Mode {
        group: usize,
        mode: u8,
    },
    Migrate {
        target: Index,
    },
}

fn proto() -> impl Strategy<Value = Proto> {
    let flags = prop_oneof![
        4 => Just(SYN),
        3 => Just(ACK),
        1 => Just(FIN | ACK),
        1 => Just(RST),
        1 => Just(SYN | ACK),
        2 => any::<u8>(),
    ];
    prop_oneof![3 => flags.prop_map(Proto::Tcp), 3 => Just(Proto::Udp), 1 => Just(Proto::Echo)]
}

fn op() -> impl Strategy<Value = Op> {
    let advance = prop::sample::select(vec![
        0u64, 500, 10_000, 59_000, 61_000, 130_000, 250_000, 301_000, 7_500_000,
    ]);
    let out = (
        proto(),
        0..SUBS.len(),
        0..PORTS.len(),
        0..SERVERS.len(),
        0..RPORTS.len(),
        prop::option::weighted(0.15, any::<Index>()),
        any::<bool>(),
    )
        .prop_map(|(proto, sub, port, srv, rport, hairpin, reply)| Op::Out {
            proto,
            sub,
            port,
            srv,
            rport,
            hairpin,
            reply,
        });
    let inb = (
        proto(),
        0..SERVERS.len(),
        0..RPORTS.len(),
        prop::option::weighted(0.8, any::<Index>()),
        2040u16..2320,
    )
        .prop_map(|(proto, srv, rport, target, port)| Op::In {
            proto,
            srv,
            rport,
            target,
            port,
        });
    let mode = (
        0..2usize,
        prop_oneof![3 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
    );
    prop_oneof![
        12 => out,
        5 => inb,
        1 => (any::<Index>(), any::<bool>())
            .prop_map(|(which, quote_all)| Op::ErrorIn { which, quote_all }),
        1 => any::<Index>().prop_map(|which| Op::ErrorOut { which }),
        3 => advance.prop_map(Op::Advance),
        1 => (any::<Index>(), any::<bool>())
            .prop_map(|(target, frozen)| Op::Freeze { target, frozen }),
        1 => mode.prop_map(|(group, mode)| Op::Mode { group, mode }),
        2 => any::<Index>().prop_map(|target| Op::Migrate { target }),
    ]
}

fn packet(proto: Proto, s: [u8; 4], sp: u16, d: [u8; 4], dp: u16, payload: &[u8]) -> Vec<u8> {
    match proto {
        Proto::Tcp(flags) => tcp_with(s, sp, d, dp, flags, 64, payload),
        Proto::Udp => udp(s, sp, d, dp, payload),
        Proto::Echo => echo_request(s, d, sp, 1),
    }
}

fn proto_num(p: Proto) -> u8 {
    match p {
        Proto::Tcp(_) => TCP,
        Proto::Udp => UDP,
        Proto::Echo => ICMP,
    }
}

/// Every live mapping: (external address, info).
fn live(nat: &Nat) -> Vec<(Ipv4Addr, MappingInfo)> {
    let mut v = Vec::new();
    for g in nat.group_ids() {
        let ext = nat.group_config(g).unwrap().external;
        for id in nat.group_mappings(g).unwrap() {
            v.push((ext, nat.mapping_info(id).unwrap()));
        }
    }
    v
}

struct World {
    a: Nat,
    b: Nat,
    now: Instant,
    /// Recent outbound translations (original, translated), for ICMP errors.
    sent: Vec<(Vec<u8>, Vec<u8>)>,
    /// Recent inbound translations (original, translated), for ICMP errors.
    received: Vec<(Vec<u8>, Vec<u8>)>,
    stats: HashMap<&'static str, u32>,
}

impl World {
    fn new(filtering: Filtering) -> World {
        World {
            a: Nat::new(prop_config(filtering)).unwrap(),
            b: Nat::new(prop_config(filtering)).unwrap(),
            now: secs(1_000),
            sent: Vec::new(),
            received: Vec::new(),
            stats: HashMap::new(),
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn group0(&self) -> GroupId {
        self.a.group_id(Ipv4Addr::from(EXT0)).unwrap()
    }

    /// The live mapping holding external (ext, proto, port), if any.
    fn by_external(&self, ext: [u8; 4], proto: u8, port: u16) -> Option<MappingInfo> {
        live(&self.a)
            .into_iter()
            .find(|(e, m)| e.octets() == ext && m.proto == proto && m.external_port == port)
            .map(|(_, m)| m)
    }

    /// The live mapping of internal (addr, proto, port), with its external address.
    fn by_internal(&self, addr: [u8; 4], proto: u8, port: u16) -> Option<(Ipv4Addr, MappingInfo)> {
        live(&self.a).into_iter().find(|(_, m)| {
            m.proto == proto && m.internal.ip().octets() == addr && m.internal.port() == port
        })
    }

    /// Processes `p` on instance A; checks checksums of translations and untouched bytes
    /// otherwise (d), and the table invariants (c).
    fn process(&mut self, p: &[u8]) -> (Verdict, Vec<u8>) {
        let (v, out) = run(&mut self.a, self.now, p);
        match v {
            Verdict::ToInside | Verdict::ToOutside => {
                assert_checksums_valid(&out);
                self.count("translated");
            }
            Verdict::Drop(_) => {
                assert_eq!(out, p, "dropped packet modified");
                self.count("dropped");
            }
            _ => {
                assert_eq!(out, p, "held or chained packet modified");
                self.count("held/chained");
            }
        }
        (v, out)
    }

    /// (a): mapping table consistency through the public API, on both instances.
    fn check_tables(&self) {
        for nat in [&self.a, &self.b] {
            if let Err(e) = nat.check_invariants() {
                panic!("invariants: {e}");
            }
            let mut ext = HashSet::new();
            let mut int = HashSet::new();
            for (e, m) in live(nat) {
                assert!(
                    ext.insert((e, m.proto, m.external_port)),
                    "external {e}:{} ({}) bound twice",
                    m.external_port,
                    m.proto
                );
                assert!(
                    int.insert((m.proto, m.internal)),
                    "internal {} ({}) mapped twice",
                    m.internal,
                    m.proto
                );
                assert!((2048..2048 + 256).contains(&m.external_port));
            }
        }
        assert_eq!(
            self.b.mapping_count(),
            0,
            "B keeps nothing between migrations"
        );
    }

    /// Outbound translation agrees with the table.
    fn check_out(&self, orig: &[u8], out: &[u8]) {
        let proto = orig[9];
        let (ext, m) = self
            .by_internal(src(orig), proto, sport(orig))
            .expect("translated without a mapping");
        assert_eq!(
            (src(out), sport(out)),
            (ext.octets(), m.external_port),
            "translation disagrees with the table"
        );
        assert_eq!(dst(out), dst(orig));
        if proto != ICMP {
            assert_eq!(dport(out), dport(orig));
        }
    }

    /// Inbound translation agrees with the table.
    fn check_in(&self, orig: &[u8], out: &[u8]) {
        let proto = orig[9];
        let m = self
            .by_external(dst(orig), proto, dport(orig))
            .expect("delivered without a mapping");
        assert_eq!(
            (dst(out), dport(out)),
            (m.internal.ip().octets(), m.internal.port())
        );
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Out {
                proto,
                sub,
                port,
                srv,
                rport,
                ref hairpin,
                reply,
            } => {
                let s = SUBS[sub];
                let sp = PORTS[port];
                let (d, dp) = match hairpin {
                    Some(i) => {
                        let l = live(&self.a);
                        if l.is_empty() {
                            return;
                        }
                        let (e, m) = i.get(&l);
                        (e.octets(), m.external_port)
                    }
                    None => (SERVERS[srv], RPORTS[rport]),
                };
                let p = packet(proto, s, sp, d, dp, b"payload");
                let (v, out) = self.process(&p);
                match v {
                    Verdict::ToOutside => {
                        assert!(hairpin.is_none());
                        self.check_out(&p, &out);
                        self.sent.push((p.clone(), out.clone()));
                        self.count("out");
                    }
                    Verdict::ToInside => {
                        // Hairpin: the source is the sender's external endpoint, the destination
                        // the target's internal one.
                        assert!(hairpin.is_some());
                        let (ext, m) = self
                            .by_internal(s, p[9], sp)
                            .expect("hairpin without a source mapping");
                        assert_eq!((src(&out), sport(&out)), (ext.octets(), m.external_port));
                        let t = self
                            .by_external(d, p[9], dp)
                            .expect("hairpin without a target mapping");
                        assert_eq!(
                            (dst(&out), dport(&out)),
                            (t.internal.ip().octets(), t.internal.port())
                        );
                        self.received.push((p.clone(), out.clone()));
                        self.count("hairpin");
                    }
                    _ => {}
                }
                // (b) out and back.
                if v == Verdict::ToOutside && reply {
                    let back = match proto {
                        Proto::Tcp(f) => tcp(
                            dst(&out),
                            dport(&out),
                            src(&out),
                            sport(&out),
                            if f & SYN != 0 { SYN | ACK } else { ACK },
                        ),
                        Proto::Udp => udp(dst(&out), dport(&out), src(&out), sport(&out), b"reply"),
                        Proto::Echo => echo_reply(dst(&out), src(&out), icmp_ident(&out), 1),
                    };
                    let (v2, r) = self.process(&back);
                    assert_eq!(
                        v2,
                        Verdict::ToInside,
                        "reply to a translated packet refused"
                    );
                    assert_eq!(
                        (dst(&r), ports(&r).1),
                        (s, sp),
                        "reply not restored to the original endpoint"
                    );
                    assert_eq!(src(&r), src(&back));
                    if !matches!(proto, Proto::Echo) {
                        assert_eq!(sport(&r), sport(&back), "remote port altered");
                    }
                    self.received.push((back, r));
                    self.count("out and back");
                }
            }
            Op::In {
                proto,
                srv,
                rport,
                ref target,
                port,
            } => {
                let l: Vec<_> = live(&self.a)
                    .into_iter()
                    .filter(|(_, m)| m.proto == proto_num(proto))
                    .collect();
                let (ext, dp) = match target {
                    Some(i) if !l.is_empty() => {
                        let (e, m) = i.get(&l);
                        (e.octets(), m.external_port)
                    }
                    _ => (if port % 2 == 0 { EXT0 } else { EXT1 }, port),
                };
                let p = match proto {
                    Proto::Echo => echo_reply(SERVERS[srv], ext, dp, 1),
                    _ => packet(proto, SERVERS[srv], RPORTS[rport], ext, dp, b"inbound"),
                };
                let (v, out) = self.process(&p);
                if v == Verdict::ToInside {
                    self.check_in(&p, &out);
                    self.received.push((p, out));
                    self.count("in");
                }
            }
            Op::ErrorIn {
                ref which,
                quote_all,
            } => {
                if self.sent.is_empty() {
                    return;
                }
                let (_, o) = which.get(&self.sent).clone();
                let quote = if quote_all { o.len() } else { 28 };
                let e = icmp_error(ROUTER, src(&o), 3, 1, &o[..quote]);
                let (v, out) = self.process(&e);
                if v == Verdict::ToInside {
                    let inner = icmp_inner(&out);
                    let m = self
                        .by_external(src(&o), o[9], sport(&o))
                        .expect("error delivered without a mapping");
                    let internal = (m.internal.ip().octets(), m.internal.port());
                    assert_eq!(dst(&out), internal.0);
                    assert_eq!((src(inner), sport(inner)), internal);
                    assert_eq!(dst(inner), dst(&o), "remote side of the quote altered");
                    if o[9] != ICMP {
                        assert_eq!(dport(inner), dport(&o), "remote side of the quote altered");
                    }
                    self.count("error in");
                }
            }
            Op::ErrorOut { ref which } => {
                if self.received.is_empty() {
                    return;
                }
                let (orig, r) = which.get(&self.received).clone();
                let e = icmp_error(dst(&r), src(&r), 3, 3, &r);
                let (v, out) = self.process(&e);
                if v == Verdict::ToOutside {
                    let inner = icmp_inner(&out);
                    let (ext, m) = self
                        .by_internal(dst(&r), r[9], ports(&r).1)
                        .expect("error sent without a mapping");
                    assert_eq!(src(&out), ext.octets());
                    assert_eq!(
                        (dst(inner), ports(inner).1),
                        (ext.octets(), m.external_port)
                    );
                    assert_eq!(src(inner), src(&orig));
                    self.count("error out");
                }
                if v == Verdict::ToInside {
                    // About a hairpinned packet (RFC 5508 REQ-7): back to the subscriber that
                    // sent it, from the reporter's external address, quoting the packet as sent.
                    let inner = icmp_inner(&out);
                    let (ext, m) = self
                        .by_internal(dst(&r), r[9], ports(&r).1)
                        .expect("error hairpinned without the reporter's mapping");
                    assert_eq!(src(&out), ext.octets());
                    assert_eq!((dst(&out), src(inner)), (src(&orig), src(&orig)));
                    assert_eq!(ports(inner), ports(&orig));
                    assert_eq!(
                        (dst(inner), ports(inner).1),
                        (ext.octets(), m.external_port)
                    );
                    assert_eq!(ttl(&out), ttl(&e) - 1);
                    self.count("error hairpin");
                }
            }
            Op::Advance(ms) => {
                self.now = self.now + Duration::from_millis(ms);
                let now = self.now;
                advance(&mut self.a, now);
                advance(&mut self.b, now);
            }
            Op::Freeze { ref target, frozen } => {
                let l = live(&self.a);
                if !l.is_empty() {
                    let (_, m) = target.get(&l);
                    self.a.set_frozen(m.id, frozen).unwrap();
                    assert_eq!(self.a.mapping_info(m.id).unwrap().frozen, frozen);
                }
            }
            Op::Mode { group, mode } => {
                let g = self.a.group_ids()[group];
                let mode =
                    [GroupMode::Active, GroupMode::Draining, GroupMode::Halted][mode as usize];
                self.a.set_group_mode(g, mode).unwrap();
            }
            Op::Migrate { ref target } => self.migrate(target),
        }
    }

    /// Moves one mapping of group 0 to B and back; both times the mapping and its translation
    /// must be unchanged.
    fn migrate(&mut self, target: &Index) {
        let g = self.group0();
        let ids = self.a.group_mappings(g).unwrap();
        if ids.is_empty() {
            return;
        }
        let id = *target.get(&ids);
        let mode = self.a.group_mode(g).unwrap();
        self.a.set_group_mode(g, GroupMode::Active).unwrap();
        self.a.set_frozen(id, false).unwrap();
        let info = self.a.mapping_info(id).unwrap();
        let mut bytes = Vec::new();
        self.a.export_mapping(id, self.now, &mut bytes).unwrap();
        // A probe that hits a session without changing its state (not a hairpin session:
        // its other end stays on A).
        let probe = record::records(&bytes)
            .unwrap()
            .iter()
            .find(|r| r.rem_addr != EXT0 && r.rem_addr != EXT1)
            .map(|r| match r.proto {
                TCP => tcp(
                    r.int_addr,
                    r.int_port.get(),
                    r.rem_addr,
                    r.rem_port.get(),
                    ACK,
                ),
                UDP => udp(
                    r.int_addr,
                    r.int_port.get(),
                    r.rem_addr,
                    r.rem_port.get(),
                    b"probe",
                ),
                _ => echo_request(r.int_addr, r.rem_addr, r.int_port.get(), 9),
            });
        let want = probe.as_ref().map(|probe| {
            let (v, want) = self.process(probe);
            assert_eq!(
                v,
                Verdict::ToOutside,
                "probe of an existing session refused"
            );
            want
        });
        self.a.set_frozen(id, true).unwrap();
        if let Some(probe) = &probe {
            assert_eq!(run(&mut self.a, self.now, probe).0, Verdict::Hold(id));
        }
        let mut bytes = Vec::new();
        let n = self.a.export_mapping(id, self.now, &mut bytes).unwrap();
        assert_eq!(
            (n, bytes.len()),
            (info.sessions, info.sessions as usize * record::RECORD_LEN)
        );
        assert_eq!(
            self.a
                .remove_mapping(id, self.now, RemoveCause::Migrated)
                .unwrap(),
            n
        );
        self.a.check_invariants().unwrap();
        let same = |m: &MappingInfo| (m.proto, m.internal, m.external_port, m.sessions);
        // To B.
        let gb = self.b.group_id(Ipv4Addr::from(EXT0)).unwrap();
        let s = self.b.import(gb, self.now, &bytes).expect("import into B");
        assert_eq!((s.mappings, s.sessions), (1, n));
        let idb = self.b.group_mappings(gb).unwrap()[0];
        assert_eq!(same(&self.b.mapping_info(idb).unwrap()), same(&info));
        if let (Some(probe), Some(want)) = (&probe, &want) {
            let (vb, outb) = run(&mut self.b, self.now, probe);
            assert_eq!(
                (vb, &outb),
                (Verdict::ToOutside, want),
                "B translates differently"
            );
        }
        self.b.check_invariants().unwrap();
        // And back to A.
        let mut back = Vec::new();
        self.b.export_mapping(idb, self.now, &mut back).unwrap();
        self.b
            .remove_mapping(idb, self.now, RemoveCause::Migrated)
            .unwrap();
        let s = self
            .a
            .import(g, self.now, &back)
            .expect("import back into A");
        assert_eq!((s.mappings, s.sessions), (1, n));
        let (_, m) = self
            .by_internal(
                info.internal.ip().octets(),
                info.proto,
                info.internal.port(),
            )
            .unwrap();
        assert_eq!(same(&m), same(&info));
        if let (Some(probe), Some(want)) = (&probe, &want) {
            let (va, outa) = self.process(probe);
            assert_eq!(
                (va, &outa),
                (Verdict::ToOutside, want),
                "A translates differently after the round trip"
            );
        }
        self.a.set_group_mode(g, mode).unwrap();
        self.count("migrated");
    }
}

fn run_ops(filtering: Filtering, ops: &[Op]) -> HashMap<&'static str, u32> {
    let mut w = World::new(filtering);
    for op in ops {
        w.step(op);
        w.check_tables();
        if w.sent.len() > 8 {
            w.sent.remove(0);
        }
        if w.received.len() > 8 {
            w.received.remove(0);
        }
    }
    std::mem::take(&mut w.stats)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// (a)-(d) over random sequences.
    #[test]
    fn random_sequences_keep_every_property(
        adf in any::<bool>(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let filtering = filtering_of(adf);
        run_ops(filtering, &ops);
    }

    /// (b) alone, on a fresh NAT: any subscriber endpoint, any server endpoint, any protocol.
    #[test]
    fn out_and_back_restores_the_endpoints(
        sub in 0u32..(1 << 8), sp in any::<u16>(), srv in prop::sample::select(SERVERS.to_vec()),
        dp in any::<u16>(), proto in proto(), payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut nat = Nat::new(config()).unwrap();
        let s = [100, 64, 0, sub as u8];
        let proto = match proto { Proto::Tcp(_) => Proto::Tcp(SYN), p => p };
        let p = packet(proto, s, sp, srv, dp, &payload);
        let (v, out) = run(&mut nat, secs(1), &p);
        prop_assert_eq!(v, Verdict::ToOutside);
        assert_checksums_valid(&out);
        prop_assert_eq!(src(&out), EXT0);
        prop_assert_eq!(dst(&out), srv);
        let l4_len = if p[9] == TCP { 20 } else { 8 };
        prop_assert_eq!(&out[ihl(&out) + l4_len..], &p[ihl(&p) + l4_len..], "payload altered");
        let back = match proto {
            Proto::Tcp(_) => tcp_with(srv, dport(&out), EXT0, sport(&out), SYN | ACK, 64, &payload),
            Proto::Udp => udp(srv, dport(&out), EXT0, sport(&out), &payload),
            Proto::Echo => echo_reply(srv, EXT0, icmp_ident(&out), 1),
        };
        let (v, r) = run(&mut nat, secs(2), &back);
        prop_assert_eq!(v, Verdict::ToInside);
        assert_checksums_valid(&r);
        prop_assert_eq!((src(&r), dst(&r)), (srv, s));
        prop_assert_eq!(ports(&r).1, ports(&p).0);
        if !matches!(proto, Proto::Echo) {
            prop_assert_eq!(ports(&r).0, dp);
        }
    }
}

/// A fixed long sequence that exercises every operation, as a smoke test of the generator
/// (the random cases above must actually reach translations, hairpins and migrations).
#[test]
fn the_generator_reaches_every_kind_of_step() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut total: HashMap<&'static str, u32> = HashMap::new();
    for _ in 0..20 {
        let ops = prop::collection::vec(op(), 80)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        for (k, v) in run_ops(Filtering::EndpointIndependent, &ops) {
            *total.entry(k).or_default() += v;
        }
    }
    for k in [
        "out",
        "in",
        "out and back",
        "hairpin",
        "error hairpin",
        "error in",
        "error out",
        "migrated",
        "held/chained",
        "dropped",
    ] {
        assert!(
            total.get(k).copied().unwrap_or(0) > 0,
            "no `{k}` step in 1600 random steps: {total:?}"
        );
    }
}

/// One packet of a batch, built from the flows translated in earlier batches.
#[derive(Clone, Debug)]
enum Spec {
    Out {
        proto: Proto,
        sub: usize,
        port: usize,
        srv: usize,
        rport: usize,
    },
    /// The server's answer to an earlier translated outbound packet.
    Reply { which: Index, flags: u8 },
    /// A subscriber to the external endpoint of an earlier translated outbound packet.
    Hairpin {
        proto: Proto,
        sub: usize,
        which: Index,
    },
    /// An earlier packet (original or answer) with one bit flipped.
    Corrupt { which: Index, bit: Index },
    /// An ICMP error about an earlier translated outbound packet.
    Error { which: Index },
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        6 => (proto(), 0..SUBS.len(), 0..PORTS.len(), 0..SERVERS.len(), 0..RPORTS.len())
            .prop_map(|(proto, sub, port, srv, rport)| Spec::Out { proto, sub, port, srv, rport }),
        6 => (
            any::<Index>(),
            prop_oneof![Just(ACK), Just(SYN | ACK), Just(FIN | ACK), Just(RST), any::<u8>()],
        )
            .prop_map(|(which, flags)| Spec::Reply { which, flags }),
        1 => (proto(), 0..SUBS.len(), any::<Index>())
            .prop_map(|(proto, sub, which)| Spec::Hairpin { proto, sub, which }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(which, bit)| Spec::Corrupt { which, bit }),
        1 => any::<Index>().prop_map(|which| Spec::Error { which }),
    ]
}

/// Between batches: time passes, a group changes mode, a mapping is frozen or thawed.
#[derive(Clone, Debug)]
struct Between {
    advance_ms: u64,
    mode: Option<(usize, u8)>,
    freeze: Option<(Index, bool)>,
}

fn between() -> impl Strategy<Value = Between> {
    (
        prop::sample::select(vec![0u64, 1_000, 61_000, 250_000, 301_000]),
        prop::option::weighted(0.2, (0..2usize, 0..3u8)),
        prop::option::weighted(0.2, (any::<Index>(), any::<bool>())),
    )
        .prop_map(|(advance_ms, mode, freeze)| Between {
            advance_ms,
            mode,
            freeze,
        })
}

/// Counters without the fast-path statistic, for comparison.
fn counters_view(nat: &Nat) -> String {
    let mut c = nat.counters().clone();
    c.fast_path = 0;
    format!("{c:?}")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// `process_batch` is `process` on each packet in order: same verdicts, same bytes, same
    /// tables and counters, including when packets of one batch create, hit, hairpin and
    /// corrupt each other's flows.
    #[test]
    fn process_batch_equals_process_in_order(
        adf in any::<bool>(),
        inbound_refresh in any::<bool>(),
        rounds in prop::collection::vec((prop::collection::vec(spec(), 0..100), between()), 1..8),
    ) {
        let filtering = filtering_of(adf);
        let cfg = NatConfig { inbound_refresh, ..prop_config(filtering) };
        let mut batched = Nat::new(cfg.clone()).unwrap();
        let mut single = Nat::new(cfg).unwrap();
        let mut now = secs(10);
        let mut sent: Vec<Vec<u8>> = Vec::new();
        let mut all: Vec<Vec<u8>> = Vec::new();
        let mut verdicts = Vec::new();
        for (specs, b) in &rounds {
            let mut packets: Vec<Vec<u8>> = Vec::new();
            for s in specs {
                let p = match *s {
                    Spec::Out { proto, sub, port, srv, rport } => {
                        let (s, sp) = (SUBS[sub], PORTS[port]);
                        Some(packet(proto, s, sp, SERVERS[srv], RPORTS[rport], b"batch"))
                    }
                    Spec::Reply { ref which, flags } if !sent.is_empty() => {
                        let o = which.get(&sent);
                        Some(match o[9] {
                            TCP => tcp(dst(o), dport(o), src(o), sport(o), flags),
                            UDP => udp(dst(o), dport(o), src(o), sport(o), b"answer"),
                            _ => echo_reply(dst(o), src(o), icmp_ident(o), 1),
                        })
                    }
                    Spec::Hairpin { proto, sub, ref which } if !sent.is_empty() => {
                        let o = which.get(&sent);
                        Some(packet(proto, SUBS[sub], 1000, src(o), ports(o).0, b"hairpin"))
                    }
                    Spec::Corrupt { ref which, ref bit } if !all.is_empty() => {
                        let mut p = which.get(&all).clone();
                        let i = bit.index(p.len() * 8);
                        p[i / 8] ^= 1 << (i % 8);
                        Some(p)
                    }
                    Spec::Error { ref which } if !sent.is_empty() => {
                        let o = which.get(&sent);
                        Some(icmp_error(ROUTER, src(o), 3, 1, o))
                    }
                    _ => None,
                };
                packets.extend(p);
            }
            let mut batch = packets.clone();
            batched.process_batch(now, &mut batch, &mut verdicts);
            prop_assert_eq!(verdicts.len(), packets.len());
            for (i, p) in packets.iter().enumerate() {
                let (v, out) = run(&mut single, now, p);
                prop_assert_eq!(verdicts[i], v, "verdict of packet {} of the batch: {:02x?}", i, p);
                prop_assert_eq!(&batch[i], &out, "bytes of packet {} of the batch", i);
                // Translated outbound TCP, UDP and echo requests: the flows later specs use.
                if v == Verdict::ToOutside && (p[9] != ICMP || p[20] == 8) {
                    sent.push(out.clone());
                }
                all.push(p.clone());
            }
            if sent.len() > 32 {
                sent.drain(..sent.len() - 32);
            }
            if all.len() > 32 {
                all.drain(..all.len() - 32);
            }
            prop_assert_eq!(counters_view(&batched), counters_view(&single));
            prop_assert_eq!(batched.session_count(), single.session_count());
            batched.check_invariants().unwrap();
            // Between batches, the same control actions on both.
            now = now + Duration::from_millis(b.advance_ms);
            advance(&mut batched, now);
            advance(&mut single, now);
            if let Some((g, m)) = b.mode {
                let mode = [GroupMode::Active, GroupMode::Draining, GroupMode::Halted][m as usize];
                for nat in [&mut batched, &mut single] {
                    let gid = nat.group_ids()[g];
                    nat.set_group_mode(gid, mode).unwrap();
                }
            }
            if let Some((ref which, frozen)) = b.freeze {
                for nat in [&mut batched, &mut single] {
                    let l = live(nat);
                    if !l.is_empty() {
                        let id = which.get(&l).1.id;
                        nat.set_frozen(id, frozen).unwrap();
                    }
                }
            }
            let snapshot = |nat: &Nat| {
                let mut v: Vec<_> = live(nat)
                    .into_iter()
                    .map(|(e, m)| {
                        (e, m.proto, m.internal, m.external_port, m.sessions, m.frozen, m.last_seen)
                    })
                    .collect();
                v.sort_unstable();
                v
            };
            prop_assert_eq!(snapshot(&batched), snapshot(&single));
        }
    }
}
