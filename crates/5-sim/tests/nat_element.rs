//! The NAT element runs the instance's batched fast path, and every packet it is handed comes
//! back out of it (translated or dropped) with its simulator metadata: the ledger balances.

use flowshift_migration::{Instance, InstanceId, MigrationConfig};
use flowshift_nat::{GroupConfig, Nat, NatConfig};
use flowshift_sim::workload::{UDP, build_packet};
use flowshift_sim::*;
use flowshift_wire::Instant;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Counts what arrives and consumes it.
#[derive(Default)]
struct Sink {
    got: Vec<(PacketId, Vec<u8>)>,
}

impl Element for Sink {
    fn on_packet(&mut self, _now: Instant, _port: Port, pkt: Packet, out: &mut Emit<'_>) {
        self.got.push((pkt.id(), pkt.bytes().to_vec()));
        out.consume(pkt);
    }
}

#[test]
fn the_element_takes_the_fast_path_and_keeps_packet_identity() {
    let mut sim = Sim::new(SimConfig::new(5));
    let nat = Nat::new(NatConfig {
        groups: vec![GroupConfig {
            external: Ipv4Addr::new(198, 18, 0, 1),
            subscribers: flowshift_nat::prefix(Ipv4Addr::new(100, 64, 0, 0), 24).unwrap(),
        }],
        ..NatConfig::default()
    })
    .unwrap();
    let cfg = MigrationConfig {
        report_drops: true,
        ..MigrationConfig::default()
    };
    let inst = Instance::with_meta(InstanceId(1), nat, cfg).unwrap();
    let nat_el = sim.add_element("nat", NatElement::new(inst, NatPorts::default()));
    let sink = sim.add_element("sink", Sink::default());
    let link = LinkConfig::new(10_000_000_000, Duration::from_micros(10), 1_000_000);
    sim.connect((nat_el, 0), (sink, 0), link).unwrap();
    let mut sent = Vec::new();
    for i in 0..50u32 {
        let bytes = build_packet(
            UDP,
            Ipv4Addr::new(100, 64, 0, 1),
            20_000,
            Ipv4Addr::new(198, 19, 0, 1),
            53,
            0,
            i,
            0,
        )
        .unwrap();
        let bad = i % 10 == 9;
        let id = sim
            .poke::<NatElement, _>(nat_el, |el, out| {
                let pkt = out.new_packet(if bad { vec![0x45, 0, 0] } else { bytes });
                let id = pkt.id();
                el.on_packet(out.now(), 0, pkt, out);
                id
            })
            .unwrap();
        sent.push((id, bad));
    }
    sim.run_until(Instant::from_millis(10));
    let el: &NatElement = sim.element(nat_el).unwrap();
    let c = el.instance().nat().counters();
    assert!(c.fast_path >= 40, "fast path taken {} times", c.fast_path);
    let got = &sim.element::<Sink>(sink).unwrap().got;
    let want: Vec<PacketId> = sent.iter().filter(|s| !s.1).map(|s| s.0).collect();
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        want,
        "each translated packet keeps its ledger id, in order"
    );
    assert!(got.iter().all(|g| g.1[12..16] == [198, 18, 0, 1]));
    let r = sim.report();
    r.check().unwrap();
    assert_eq!(r.ledger.element_drops.values().sum::<u64>(), 5);
}
