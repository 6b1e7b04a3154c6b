//! Link model: exact serialization and propagation delays, drop-tail overflow, seeded loss,
//! reordering, link down/up, and the ledger around them.

mod common;

use std::time::Duration;

use common::*;
use flowshift_sim::*;

fn inject(sim: &mut Sim, inj: ElementId, sizes: &[usize]) -> Vec<PacketId> {
    sim.poke(inj, |i: &mut Injector, out| i.inject(out, sizes))
        .unwrap()
}

#[test]
fn serialization_and_propagation_are_exact() {
    let cfg = LinkConfig::new(1_000_000_000, Duration::from_micros(100), 100_000);
    let (mut sim, inj, rec, link) = injector_to_recorder(1, cfg);
    let ids = inject(&mut sim, inj, &[1500, 1500, 1000, 40]);
    sim.run_until(Instant::from_millis(1));
    let got = &sim.element::<Recorder>(rec).unwrap().got;
    let times: Vec<u64> = got.iter().map(|g| g.0.as_nanos()).collect();
    // 1500 B at 1 Gbit/s = 12 µs; 1000 B = 8 µs; 40 B = 320 ns; then 100 µs propagation.
    assert_eq!(times, [112_000, 124_000, 132_000, 132_320]);
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), ids);
    // A second burst later starts from an idle link.
    sim.run_until(Instant::from_millis(2));
    inject(&mut sim, inj, &[125]);
    sim.run_until(Instant::from_millis(3));
    let got = &sim.element::<Recorder>(rec).unwrap().got;
    assert_eq!(got[4].0.as_nanos(), 2_000_000 + 1_000 + 100_000);
    let st = sim.link_stats(link).unwrap();
    assert_eq!(
        (
            st.offered_packets,
            st.transmitted_packets,
            st.delivered_packets
        ),
        (5, 5, 5)
    );
    assert_eq!(st.delivered_bytes, 1500 + 1500 + 1000 + 40 + 125);
    sim.report().check().unwrap();
}

#[test]
fn serialization_rounds_up_to_whole_nanoseconds() {
    let cfg = LinkConfig::new(3, Duration::ZERO, 10);
    assert_eq!(cfg.serialization(1), Duration::from_nanos(2_666_666_667));
    let (mut sim, inj, rec, _) = injector_to_recorder(1, cfg);
    inject(&mut sim, inj, &[1]);
    sim.run_until(Instant::from_secs(3));
    let got = &sim.element::<Recorder>(rec).unwrap().got;
    assert_eq!(got[0].0.as_nanos(), 2_666_666_667);
}

#[test]
fn queue_overflow_is_counted_exactly() {
    // 3000 B of queue: one packet in service, two waiting, seven refused.
    let cfg = LinkConfig::new(1_000_000_000, Duration::from_micros(10), 3000);
    let (mut sim, inj, rec, link) = injector_to_recorder(1, cfg);
    inject(&mut sim, inj, &[1500; 10]);
    let st = sim.link_stats(link).unwrap();
    assert_eq!(st.dropped_queue_full, 7);
    assert_eq!(st.max_queue_bytes, 3000);
    sim.run_until(Instant::from_millis(1));
    assert_eq!(sim.element::<Recorder>(rec).unwrap().got.len(), 3);
    let r = sim.report();
    r.check().unwrap();
    assert_eq!(r.ledger.created, 10);
    assert_eq!(r.ledger.consumed_by_elements, 3);
    assert_eq!(r.ledger.dropped.get("queue_full"), Some(&7));
}

#[test]
fn injected_loss_is_counted_and_seeded() {
    let run = |seed| {
        let cfg =
            LinkConfig::new(10_000_000_000, Duration::from_micros(1), 100_000_000).with_loss(0.1);
        let (mut sim, inj, rec, link) = injector_to_recorder(seed, cfg);
        inject(&mut sim, inj, &[100; 20_000]);
        sim.run_until(Instant::from_millis(100));
        let got = sim.element::<Recorder>(rec).unwrap().got.len() as u64;
        let lost = sim.link_stats(link).unwrap().dropped_injected_loss;
        let r = sim.report();
        r.check().unwrap();
        assert_eq!(got + lost, 20_000);
        assert_eq!(r.ledger.dropped.get("injected_loss"), Some(&lost));
        lost
    };
    let a = run(11);
    assert!(
        (1_700..2_300).contains(&a),
        "10% of 20000 expected, got {a}"
    );
    assert_eq!(run(11), a, "same seed, same losses");
    assert_ne!(run(12), a, "different seed, different losses");
}

#[test]
fn reordering_delays_a_fraction_and_keeps_every_packet() {
    let cfg = LinkConfig::new(1_000_000_000, Duration::from_micros(50), 10_000_000)
        .with_reorder(0.05, Duration::from_micros(100));
    let (mut sim, inj, rec, link) = injector_to_recorder(3, cfg);
    let ids = inject(&mut sim, inj, &[1000; 2000]);
    sim.run_until(Instant::from_millis(100));
    let got: Vec<PacketId> = sim
        .element::<Recorder>(rec)
        .unwrap()
        .got
        .iter()
        .map(|g| g.1)
        .collect();
    let delayed = sim.link_stats(link).unwrap().reorder_delayed;
    assert!(
        (50..150).contains(&delayed),
        "~5% of 2000 expected, got {delayed}"
    );
    assert_eq!(got.len(), ids.len());
    assert_ne!(got, ids, "some packets must arrive out of order");
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, ids);
}

#[test]
fn link_down_drops_queue_wire_and_offers_until_up() {
    // 1 Mbit/s: 1000 B take 8 ms; propagation 5 ms.
    let cfg = LinkConfig::new(1_000_000, Duration::from_millis(5), 100_000);
    let (mut sim, inj, rec, link) = injector_to_recorder(1, cfg);
    inject(&mut sim, inj, &[1000; 4]);
    // At 10 ms: packet 0 is on the wire (arrives at 13 ms), packet 1 in service, 2-3 queued.
    sim.schedule_link_state(link, Instant::from_millis(10), false)
        .unwrap();
    sim.schedule_link_state(link, Instant::from_millis(20), true)
        .unwrap();
    sim.run_until(Instant::from_millis(15));
    inject(&mut sim, inj, &[1000]); // offered while down
    sim.run_until(Instant::from_millis(25));
    inject(&mut sim, inj, &[1000]); // after up: delivered at 25 + 8 + 5 ms
    sim.run_until(Instant::from_millis(100));
    let got = &sim.element::<Recorder>(rec).unwrap().got;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, Instant::from_millis(38));
    let r = sim.report();
    r.check().unwrap();
    assert_eq!(r.ledger.dropped.get("link_down"), Some(&5));
    assert_eq!(sim.link_stats(link).unwrap().dropped_link_down, 5);
}

/// An element that loses packets silently: the ledger must catch it.
struct Leaky;
impl Element for Leaky {
    fn on_packet(&mut self, _now: Instant, _port: Port, pkt: Packet, out: &mut Emit<'_>) {
        if pkt.len() == 999 {
            drop(pkt); // the bug under test
        } else {
            out.consume(pkt);
        }
    }
}

/// An element that holds packets and reports them honestly.
#[derive(Default)]
struct Holder {
    held: Vec<Packet>,
}
impl Element for Holder {
    fn on_packet(&mut self, _now: Instant, _port: Port, pkt: Packet, _out: &mut Emit<'_>) {
        self.held.push(pkt);
    }
    fn held_packets(&self, visit: &mut dyn FnMut(PacketId)) {
        self.held.iter().for_each(|p| visit(p.id()));
    }
}

#[test]
fn ledger_catches_silently_lost_packets_and_names_the_seed() {
    let mut sim = Sim::new(SimConfig::new(4242));
    let inj = sim.add_element("inj", Injector::default());
    let leak = sim.add_element("leak", Leaky);
    sim.add_link(
        (inj, 0),
        (leak, 0),
        LinkConfig::new(1_000_000_000, Duration::ZERO, 10_000),
    )
    .unwrap();
    inject(&mut sim, inj, &[100, 999, 100]);
    sim.run_until(Instant::from_millis(1));
    let r = sim.report();
    assert_eq!(r.ledger.unaccounted, 1);
    assert_eq!(r.ledger.unaccounted_ids, vec![1]);
    let err = r.check().unwrap_err();
    assert_eq!(err.seed, 4242);
    assert!(err.to_string().contains("seed 4242"), "{err}");
}

#[test]
fn held_packets_and_packets_in_flight_are_accounted() {
    let mut sim = Sim::new(SimConfig::new(1));
    let inj = sim.add_element("inj", Injector::default());
    let hold = sim.add_element("hold", Holder::default());
    sim.add_link(
        (inj, 0),
        (hold, 0),
        LinkConfig::new(1_000_000, Duration::from_millis(1), 100_000),
    )
    .unwrap();
    inject(&mut sim, inj, &[1000; 5]);
    // After 20 ms: 2 delivered (8 ms each + 1 ms), 1 on the wire or in service, 2 queued.
    sim.run_until(Instant::from_millis(20));
    let r = sim.report();
    r.check().unwrap();
    assert_eq!(r.ledger.held_by_elements_at_end, 2);
    assert_eq!(r.ledger.in_flight_at_end, 3);
    assert_eq!(r.ledger.unaccounted, 0);
}

#[test]
fn unconnected_port_drops_are_counted() {
    let mut sim = Sim::new(SimConfig::new(1));
    let inj = sim.add_element("inj", Injector::default());
    inject(&mut sim, inj, &[100, 100]);
    let r = sim.report();
    r.check().unwrap();
    assert_eq!(r.ledger.dropped.get("unconnected_port"), Some(&2));
}

#[test]
fn builder_rejects_bad_topologies() {
    let mut sim = Sim::new(SimConfig::new(1));
    let a = sim.add_element("a", Injector::default());
    let h = sim
        .add_host(HostConfig::new("h", std::net::Ipv4Addr::new(100, 64, 0, 1)))
        .unwrap();
    let cfg = LinkConfig::new(1000, Duration::ZERO, 1000);
    sim.add_link((a, 0), (h, 0), cfg.clone()).unwrap();
    assert!(matches!(
        sim.add_link((a, 0), (h, 0), cfg.clone()),
        Err(SimError::PortInUse(..))
    ));
    assert!(matches!(
        sim.add_link((h, 1), (a, 1), cfg.clone()),
        Err(SimError::BadHostPort(..))
    ));
    assert!(matches!(
        sim.add_link((a, 1), (h, 0), LinkConfig::new(0, Duration::ZERO, 1)),
        Err(SimError::Config(_))
    ));
    assert!(matches!(
        sim.add_link((a, 1), (h, 0), cfg.clone().with_loss(1.5)),
        Err(SimError::Config(_))
    ));
    // Only the project's address ranges are allowed.
    assert!(
        sim.add_host(HostConfig::new("bad", std::net::Ipv4Addr::new(10, 0, 0, 1)))
            .is_err()
    );
    assert!(sim.poke(a, |_: &mut Recorder, _| ()).is_err());
}

/// Two elements exchanging large messages over a dedicated transfer link (as NAT instances
/// will for state transfer): exact serialization of arbitrary-size messages, FIFO order, and
/// consumption at the receiver.
#[test]
fn element_messages_over_a_transfer_link() {
    let cfg = LinkConfig::new(1_000_000_000, Duration::from_micros(50), 10_000_000);
    let (mut sim, inj, rec, _) = injector_to_recorder(1, cfg);
    let ids = inject(&mut sim, inj, &[100_000, 100_000, 24]);
    sim.run_until(Instant::from_millis(10));
    let got = &sim.element::<Recorder>(rec).unwrap().got;
    let t: Vec<u64> = got.iter().map(|g| g.0.as_nanos()).collect();
    // 100 kB at 1 Gbit/s = 800 µs; 24 B = 192 ns.
    assert_eq!(t, [850_000, 1_650_000, 1_600_192 + 50_000]);
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), ids);
    let r = sim.report();
    r.check().unwrap();
    assert_eq!(r.ledger.consumed_by_elements, 3);
}
