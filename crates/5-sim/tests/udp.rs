//! UDP constant-bit-rate flows through a router and a 1 Gbit/s bottleneck.

mod common;

use std::net::SocketAddrV4;
use std::time::Duration;

use common::*;
use flowshift_sim::*;

/// One client/server pair over the dumbbell with a CBR flow of `rate_bps` (IP bytes) for
/// 100 ms, then 100 ms to drain. Returns (sim, source app, sink app, bottleneck).
fn cbr(rate_bps: u64, bottleneck: LinkConfig) -> (Sim, AppId, AppId, LinkId) {
    let mut d = dumbbell_topology(5, 1, bottleneck);
    let payload = 1000usize;
    let interval = Duration::from_nanos(((payload as u64 + 28) * 8 * 1_000_000_000) / rate_bps);
    let sink = d
        .sim
        .add_app(d.servers[0], AppSpec::UdpSink { port: 9000 })
        .unwrap();
    let src = d
        .sim
        .add_app(
            d.clients[0],
            AppSpec::UdpCbr {
                dst: SocketAddrV4::new(server_addr(0), 9000),
                payload_len: payload,
                interval,
                start: Instant::from_millis(1),
                stop: Instant::from_millis(101),
            },
        )
        .unwrap();
    d.sim.run_until(Instant::from_millis(200));
    (d.sim, src, sink, d.bottleneck)
}

#[test]
fn cbr_below_rate_delivers_every_datagram_in_order() {
    let bn = LinkConfig::new(1_000_000_000, Duration::from_micros(250), 150_000);
    let (sim, src, sink, link) = cbr(500_000_000, bn);
    // 1028 B every 16.448 µs from 1 ms (inclusive) to 101 ms (exclusive).
    let interval_ns = 1028 * 8 * 1_000_000_000 / 500_000_000u64;
    let expected = (100_000_000u64).div_ceil(interval_ns);
    let s = sim.app_stats(src).unwrap();
    let r = sim.app_stats(sink).unwrap();
    assert_eq!(s.packets_sent, expected);
    assert_eq!(s.refused, 0);
    assert_eq!(r.packets_received, expected);
    assert_eq!(r.bytes_received, expected * 1000);
    let st = sim.link_stats(link).unwrap();
    assert_eq!(
        st.dropped_queue_full + st.dropped_injected_loss + st.dropped_link_down,
        0
    );
    let rep = sim.report();
    rep.check().unwrap();
    assert!(rep.ledger.dropped.is_empty(), "{:?}", rep.ledger.dropped);
    assert_eq!(rep.flows.reordered_packets, 0);
    // Unloaded path: 3 links of propagation (450 µs) + serialization, no queueing beyond
    // one packet at the 1 Gbit/s hop.
    assert!(
        rep.delay.max_ns < 450_000 + 30_000,
        "max delay {}",
        rep.delay.max_ns
    );
    // Goodput bins: 500 Mbit/s of IP is 486 Mbit/s of payload.
    let g = sim.goodput(&[sink]);
    let mid = g[5].1;
    assert!((480.0..492.0).contains(&mid), "goodput bin {mid}");
}

#[test]
fn cbr_above_rate_loses_the_excess_at_the_bottleneck_queue() {
    let bn = LinkConfig::new(1_000_000_000, Duration::from_micros(250), 150_000);
    let (sim, src, sink, link) = cbr(1_500_000_000, bn);
    let s = sim.app_stats(src).unwrap().clone();
    let r = sim.app_stats(sink).unwrap().clone();
    let st = sim.link_stats(link).unwrap();
    assert!(st.dropped_queue_full > 0);
    // Nothing is lost at the sending host (backpressure), and every datagram is accounted.
    assert_eq!(s.refused, 0);
    assert_eq!(r.packets_received + st.dropped_queue_full, s.packets_sent);
    // The bottleneck carried ~1 Gbit/s for the 100 ms burst plus the queue drain.
    let carried = r.packets_received * 1028 * 8;
    assert!(
        (99_000_000..=101_000_000 + 150_000 * 8).contains(&carried),
        "bits carried {carried}"
    );
    let rep = sim.report();
    rep.check().unwrap();
    assert_eq!(
        rep.ledger.dropped.get("queue_full"),
        Some(&st.dropped_queue_full)
    );
    assert_eq!(rep.ledger.in_flight_at_end, 0);
}

#[test]
fn reordering_on_the_path_is_detected_per_flow() {
    let bn = LinkConfig::new(1_000_000_000, Duration::from_micros(250), 150_000)
        .with_reorder(0.02, Duration::from_micros(200));
    let (sim, _src, sink, link) = cbr(300_000_000, bn);
    let rep = sim.report();
    rep.check().unwrap();
    let delayed = sim.link_stats(link).unwrap().reorder_delayed;
    assert!(delayed > 0);
    // Each delayed datagram is overtaken (packets are 27 µs apart, delay is 200 µs).
    assert_eq!(rep.flows.reordered_packets, delayed);
    assert_eq!(rep.flows.flows_with_reordering, 1);
    assert!(sim.app_stats(sink).unwrap().packets_received > 0);
}

/// Flips one payload byte of every 10th datagram (by metadata sequence number), so the UDP
/// checksum fails at the receiving host; forwards port 0 <-> port 1.
struct Corrupter;
impl Element for Corrupter {
    fn on_packet(&mut self, _now: Instant, port: Port, mut pkt: Packet, out: &mut Emit<'_>) {
        if pkt.seq() % 10 == 9 {
            let n = pkt.len();
            pkt.bytes_mut()[n - 1] ^= 0x5a;
        }
        out.send(1 - port, pkt);
    }
}

#[test]
fn hosts_reject_corrupted_datagrams_with_a_named_cause() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let mut sim = Sim::new(SimConfig::new(9));
    let c = sim.add_host(HostConfig::new("c", client_addr(0))).unwrap();
    let s = sim.add_host(HostConfig::new("s", server_addr(0))).unwrap();
    let x = sim.add_element("x", Corrupter);
    let l = LinkConfig::new(1_000_000_000, Duration::from_micros(10), 100_000);
    sim.connect((c, 0), (x, 0), l.clone()).unwrap();
    sim.connect((x, 1), (s, 0), l).unwrap();
    let drops = Rc::new(RefCell::new(Vec::new()));
    let d2 = drops.clone();
    sim.set_drop_observer(move |d| d2.borrow_mut().push((d.cause, d.element, d.packet.seq())));
    let sink = sim.add_app(s, AppSpec::UdpSink { port: 7 }).unwrap();
    sim.add_app(
        c,
        AppSpec::UdpCbr {
            dst: SocketAddrV4::new(server_addr(0), 7),
            payload_len: 100,
            interval: Duration::from_micros(100),
            start: Instant::ZERO,
            stop: Instant::from_millis(10),
        },
    )
    .unwrap();
    sim.run_until(Instant::from_millis(20));
    assert_eq!(sim.app_stats(sink).unwrap().packets_received, 90);
    let rep = sim.report();
    rep.check().unwrap();
    assert_eq!(rep.ledger.dropped.get("host_rejected"), Some(&10));
    let drops = drops.borrow();
    assert_eq!(drops.len(), 10);
    assert!(
        drops
            .iter()
            .all(|(c, n, q)| *c == DropCause::HostRejected && *n == Some(s) && q % 10 == 9)
    );
}
