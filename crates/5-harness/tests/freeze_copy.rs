//! Idle + freeze-and-copy end to end: every mapping moves, no packet is lost, order holds.

mod common;

use common::*;
use core::time::Duration;
use flowshift_migration::{Algorithm, Direction, LossCause, MigrationEvent, Params, Phase};

/// Sends one outbound packet of `flow` and, if its external port is known, one inbound reply.
fn traffic(cl: &mut Cluster, flow: u32, seq_out: &mut [u32], seq_in: &mut [u32]) -> u32 {
    let f = flow as usize;
    cl.inject(out_pkt(flow, seq_out[f]));
    seq_out[f] += 1;
    match cl.port_of(flow) {
        Some(p) => {
            cl.inject(in_pkt(p, flow, seq_in[f]));
            seq_in[f] += 1;
            2
        }
        None => 1,
    }
}

#[test]
fn freeze_copy_moves_every_mapping_without_loss_and_in_order() {
    let mut cl = cluster(7);
    cl.obs.check_every_step = true;
    let n = 200u32;
    let extra = 20u32;
    let mut seq_out = vec![0u32; (n + extra) as usize];
    let mut seq_in = vec![0u32; (n + extra) as usize];
    let mut sent = 0u32;
    for f in 0..n {
        sent += traffic(&mut cl, f, &mut seq_out, &mut seq_in);
    }
    let before = ext_ports(&cl.obs.delivered);
    assert_eq!(before.len(), n as usize);
    cl.advance_by(Duration::from_millis(10)).unwrap();

    let params = Params {
        batch_size: 16,
        idle_max: Duration::ZERO,
        drain: Duration::from_millis(2),
        ..Params::default()
    };
    let id = cl.start(Algorithm::FreezeCopy, params);
    let limit = cl.now + Duration::from_secs(2);
    let mut step = 0u32;
    while !(cl.completed(id, A) && cl.completed(id, B)) && cl.now < limit {
        for k in 0..4 {
            // Old flows 0..100 and, from step 10 on, 20 new ones (created on B via the chain).
            let i = (step * 4 + k) % 120;
            let flow = if i < 100 {
                i
            } else if step >= 10 {
                n + i - 100
            } else {
                i
            };
            sent += traffic(&mut cl, flow, &mut seq_out, &mut seq_in);
        }
        step += 1;
        cl.advance_by(Duration::from_micros(50)).unwrap();
    }
    cl.advance_by(Duration::from_millis(5)).unwrap();
    assert!(cl.completed(id, A), "source did not complete");
    assert!(cl.completed(id, B), "destination did not complete");

    // No loss: everything injected was delivered, and neither NAT dropped anything.
    assert_eq!(cl.obs.delivered.len() as u32, sent, "packets lost");
    assert_eq!(cl.a.nat().counters().total_drops(), 0);
    assert_eq!(cl.b.nat().counters().total_drops(), 0);
    // State moved before the packets that needed it: no flow changed its external port.
    let after = ext_ports(&cl.obs.delivered);
    for (f, p) in &before {
        assert_eq!(after.get(f), Some(p));
    }
    assert_in_order(&cl.obs.delivered);
    // Inbound packets reached the right subscriber.
    for s in cl
        .obs
        .delivered
        .iter()
        .filter(|s| s.dir == Direction::ToInside)
    {
        assert_eq!((s.dst, s.dport), sub(s.flow));
    }
    // Both instances served the group, each at its time.
    assert!(cl.obs.delivered.iter().any(|s| s.by == A));
    assert!(cl.obs.delivered.iter().any(|s| s.by == B));

    let (on_a, on_b) = cl.check_exactly_one_owner();
    assert_eq!(on_a, 0);
    assert_eq!(on_b, (n + extra) as usize);
    assert!(cl.group_on(A).is_none(), "source still has the group");

    let ra = cl.a.report(id).unwrap();
    assert_eq!(ra.states_transferred, n);
    assert_eq!(ra.states_expired_idle, 0);
    assert_eq!(ra.records, n as u64);
    // A port block travels whole: 7 subscribers with 32 flows each hold one block apiece,
    // each larger than batch_size (16), so one batch per block.
    assert_eq!(ra.batches, 7);
    assert!(ra.packets_buffered > 0, "no packet hit a frozen mapping");
    assert!(ra.packets_chained > 0);
    assert!(
        ra.max_freeze_ms > 0.0 && ra.max_freeze_ms < 20.0,
        "{}",
        ra.max_freeze_ms
    );
    assert!(ra.packets_lost_by_cause.values().all(|&v| v == 0));
    assert!(ra.bytes_transferred > n as u64 * 24);
    let names: Vec<Phase> = ra.phases.iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        vec![
            Phase::Prepare,
            Phase::FreezeCopy,
            Phase::AwaitCutover,
            Phase::Drain,
            Phase::Done
        ]
    );
    let rb = cl.b.report(id).unwrap();
    assert_eq!(rb.states_transferred, n);
    assert!(rb.completed);
    assert!(
        rb.packets_buffered > 0,
        "destination held no switch packet around cutover"
    );
    assert_eq!(
        rb.packets_lost_by_cause[LossCause::CutoverHoldFull.label()],
        0
    );
    // The port handoff: B got A's blocks back at Done.
    let gb = cl.group_on(B).unwrap();
    assert_eq!(cl.b.nat().group_stats(gb).unwrap().blocks_reserved, 0);
    let json = serde_json::to_string(&ra).unwrap();
    assert!(json.contains("\"states_transferred\":200"));
}

/// Long flows (refreshed every 20 s) plus short flows born one per second and then silent, so
/// that when the migration starts short flows are dying at a steady rate (UDP timeout 300 s).
fn idle_scenario(idle_max: Duration) -> (Cluster, flowshift_migration::MigrationReport, u32) {
    let mut cl = cluster(11);
    let n_long = 40u32;
    let n_short = 400u32;
    let n_new = 5u32;
    let mut seq = vec![0u32; (n_long + n_short + n_new) as usize];
    let mut refresh = |cl: &mut Cluster, flows: std::ops::Range<u32>| {
        for f in flows {
            cl.inject(out_pkt(f, seq[f as usize]));
            seq[f as usize] += 1;
        }
    };
    let t0 = cl.now;
    for s in 0..350u32 {
        if s.is_multiple_of(20) {
            refresh(&mut cl, 0..n_long);
        }
        refresh(&mut cl, n_long + s..n_long + s + 1);
        cl.advance(t0 + Duration::from_secs(s as u64 + 1)).unwrap();
    }
    let params = Params {
        batch_size: 16,
        idle_sample_interval: Duration::from_secs(1),
        idle_window_samples: 10,
        idle_rate_threshold: 0.001,
        idle_max,
        drain: Duration::from_millis(2),
        ..Params::default()
    };
    let id = cl.start(Algorithm::FreezeCopy, params);
    let mut s = 350u32;
    while !cl.completed(id, B) && s < 1200 {
        if s.is_multiple_of(20) {
            refresh(&mut cl, 0..n_long);
            // New subscribers' flows: chained by A, created and served by B.
            refresh(&mut cl, n_long + n_short..n_long + n_short + n_new);
        }
        s += 1;
        cl.advance(t0 + Duration::from_secs(s as u64)).unwrap();
    }
    cl.advance_by(Duration::from_millis(100)).unwrap();
    assert!(cl.completed(id, A) && cl.completed(id, B), "not completed");
    let r = cl.a.report(id).unwrap();
    (cl, r, n_long)
}

#[test]
fn idle_phase_lets_short_flows_expire_on_the_source() {
    let (cl, r, n_long) = idle_scenario(Duration::from_secs(900));
    let idle = r
        .phases
        .iter()
        .find(|p| p.name == Phase::Idle)
        .expect("idle phase");
    let idle_s = (idle.end_ms.unwrap() - idle.start_ms) / 1000.0;
    // Every short flow alive at the start died on A during the idle phase; only the long ones
    // were transferred.
    assert!(
        r.mappings_at_start > n_long + 250,
        "{}",
        r.mappings_at_start
    );
    assert_eq!(r.states_expired_idle, r.mappings_at_start - n_long);
    assert_eq!(r.states_transferred, n_long);
    // The last short flow was born just before the start and died 300 s later; the phase ended
    // after a window (10 s) without deaths.
    assert!((305.0..=315.0).contains(&idle_s), "idle lasted {idle_s} s");
    let samples = cl
        .obs
        .events
        .iter()
        .filter(|(_, e)| matches!(e, MigrationEvent::IdleProgress { .. }))
        .count();
    assert!(samples as f64 >= idle_s - 1.0, "{samples} samples");
    // Nothing lost, no flow changed port, both NATs consistent, B holds long + new flows.
    assert_eq!(cl.a.nat().counters().total_drops(), 0);
    assert_eq!(cl.b.nat().counters().total_drops(), 0);
    ext_ports(&cl.obs.delivered);
    assert_in_order(&cl.obs.delivered);
    let (on_a, on_b) = cl.check_exactly_one_owner();
    assert_eq!((on_a, on_b), (0, n_long as usize + 5));
}

#[test]
fn idle_max_bounds_the_idle_phase() {
    let (_cl, r, n_long) = idle_scenario(Duration::from_secs(30));
    let idle = r
        .phases
        .iter()
        .find(|p| p.name == Phase::Idle)
        .expect("idle phase");
    let idle_s = (idle.end_ms.unwrap() - idle.start_ms) / 1000.0;
    assert!((29.0..=31.5).contains(&idle_s), "idle lasted {idle_s} s");
    // About 30 short flows died; the rest moved.
    assert!(
        (25..=35).contains(&r.states_expired_idle),
        "{}",
        r.states_expired_idle
    );
    assert_eq!(
        r.states_expired_idle + r.states_transferred,
        r.mappings_at_start
    );
    assert!(r.states_transferred > n_long);
}

/// A few hot flows (a packet each every 50 µs, both directions) over a slow chain link: frozen
/// batches buffer several packets per flow, and at cutover packets sent straight to B would
/// overtake those still on the chain link if B did not hold them.
#[test]
fn hot_flows_keep_their_order_through_freeze_and_cutover() {
    for seed in 0..4u64 {
        let mut cl = cluster(100 + seed);
        cl.obs.check_every_step = true;
        cl.cfg.chain_delay = Duration::from_millis(2);
        cl.cfg.transfer_delay = Duration::from_millis(1);
        let (hot, cold) = (6u32, 120u32);
        let mut seq_out = vec![0u32; cold as usize];
        let mut seq_in = vec![0u32; cold as usize];
        let mut sent = 0;
        for f in 0..cold {
            sent += traffic(&mut cl, f, &mut seq_out, &mut seq_in);
        }
        let params = Params {
            batch_size: 4,
            idle_max: Duration::ZERO,
            drain: Duration::from_millis(5),
            ..Params::default()
        };
        let id = cl.start(Algorithm::FreezeCopy, params);
        let limit = cl.now + Duration::from_secs(2);
        while !(cl.completed(id, A) && cl.completed(id, B)) && cl.now < limit {
            for f in 0..hot {
                sent += traffic(&mut cl, f, &mut seq_out, &mut seq_in);
            }
            cl.advance_by(Duration::from_micros(50)).unwrap();
        }
        cl.advance_by(Duration::from_millis(10)).unwrap();
        assert!(cl.completed(id, A) && cl.completed(id, B));
        assert_eq!(cl.obs.delivered.len() as u32, sent, "packets lost");
        assert_in_order(&cl.obs.delivered);
        ext_ports(&cl.obs.delivered);
        let (ra, rb) = (cl.a.report(id).unwrap(), cl.b.report(id).unwrap());
        assert!(ra.packets_buffered > 20, "{}", ra.packets_buffered);
        assert!(rb.packets_buffered > 20, "{}", rb.packets_buffered);
        assert_eq!(cl.check_exactly_one_owner(), (0, cold as usize));
    }
}

/// One subscriber with many mappings in one port block on A keeps opening new flows on B
/// while its block migrates: B must never allocate, in a block it received from A, a port A
/// still holds for another mapping of that block.
#[test]
fn a_subscriber_migrating_mid_block_never_gets_a_port_bound_twice() {
    let host = [100, 64, 0, 200];
    let pkt = |port: u16, seq: u32| udp(host, port, SERVER, 53, port as u32, seq);
    for seed in 0..6u64 {
        let mut cl = cluster(200 + seed);
        cl.obs.check_every_step = true;
        // 40 mappings on A: block X full-ish (and a few in a second block).
        for p in 0..40u16 {
            cl.inject(pkt(20_000 + p, 0));
        }
        let params = Params {
            batch_size: 4,
            idle_max: Duration::from_millis(27),
            idle_sample_interval: Duration::from_millis(1),
            idle_rate_threshold: 0.0,
            drain: Duration::from_millis(2),
            ..Params::default()
        };
        let id = cl.start(Algorithm::FreezeCopy, params);
        // New flows of the same subscriber: fill B's own blocks (4 of 64 ports, the
        // per-subscriber limit) during idle, then keep going while A's block moves in small
        // batches: B may then only allocate in blocks received from A.
        let mut next = 21_000u16;
        let limit = cl.now + Duration::from_secs(2);
        while !(cl.completed(id, A) && cl.completed(id, B)) && cl.now < limit {
            if next < 21_000 + 400 {
                cl.inject(pkt(next, 0));
                next += 1;
            }
            cl.advance_by(Duration::from_micros(100)).unwrap();
        }
        assert!(cl.completed(id, B), "not completed");
        cl.check_exactly_one_owner();
        ext_ports(&cl.obs.delivered);
        // The scenario did reach B's limit and allocations in received blocks.
        assert!(
            cl.b.nat()
                .counters()
                .drops_of(flowshift_nat::DropReason::SubscriberPortLimit)
                > 0
        );
    }
}

#[test]
fn end_of_chain_marker_releases_the_destination_long_before_the_drain_ends() {
    // A 300 ms drain: without the marker the destination would hold the group's switch
    // packets until `Done`, 300 ms after the cutover. With it, they go out once the chain is
    // quiet for `chain_quiet` and the marker's count of chained packets has arrived.
    let mut cl = cluster(21);
    cl.obs.check_every_step = true;
    let n = 40u32;
    let mut seq_out = vec![0u32; n as usize];
    let mut seq_in = vec![0u32; n as usize];
    let mut sent = 0u32;
    for f in 0..n {
        sent += traffic(&mut cl, f, &mut seq_out, &mut seq_in);
    }
    let params = Params {
        idle_max: Duration::ZERO,
        drain: Duration::from_millis(300),
        ..Params::default()
    };
    let quiet = params.chain_quiet;
    let id = cl.start(Algorithm::FreezeCopy, params);
    let limit = cl.now + Duration::from_secs(1);
    // Traffic until the source drains (the switch already sends to B).
    while !cl.phase_reached(id, A, Phase::Drain) && cl.now < limit {
        let flow = (cl.now.as_nanos() / 100_000) as u32 % n;
        sent += traffic(&mut cl, flow, &mut seq_out, &mut seq_in);
        cl.advance_by(Duration::from_micros(100)).unwrap();
    }
    assert!(cl.phase_reached(id, A, Phase::Drain), "no cutover");
    let cutover = cl.now;
    // Packets of the group now reach B from the switch; each must leave within the quiet
    // time, the transfer delay and the chain delay (a few ms), not at the drain's end.
    let mut waits = Vec::new();
    for k in 0..20u32 {
        let before = cl.obs.delivered.len();
        sent += traffic(&mut cl, k % n, &mut seq_out, &mut seq_in);
        let injected = cl.now;
        let deadline = injected + Duration::from_millis(100);
        while cl.obs.delivered.len() == before && cl.now < deadline {
            cl.advance_by(Duration::from_micros(50)).unwrap();
        }
        assert!(
            cl.obs.delivered.len() > before,
            "packet {k} still held 100 ms after it arrived"
        );
        waits.push(cl.obs.delivered[before].at - injected);
    }
    assert!(
        !cl.completed(id, A),
        "the source must still be draining: the release came from the marker, not from Done"
    );
    let bound = quiet + cl.cfg.transfer_delay + cl.cfg.chain_delay + Duration::from_millis(1);
    let worst = waits.iter().max().copied().unwrap_or_default();
    assert!(
        worst <= bound,
        "held {worst:?} after the cutover at {cutover:?}, bound {bound:?}"
    );
    cl.advance_by(Duration::from_millis(400)).unwrap();
    assert!(cl.completed(id, A) && cl.completed(id, B));
    let r = cl.a.report(id).unwrap();
    assert_eq!(r.chained_after_marker, 0);
    assert!(r.chain_end_after_ms < 300.0);
    assert_eq!(cl.obs.delivered.len() as u32, sent, "packets lost");
    assert_in_order(&cl.obs.delivered);
    assert_eq!(
        cl.a.counters().hold_timeouts + cl.b.counters().hold_timeouts,
        0
    );
}

#[test]
fn idle_phase_ends_at_the_first_sample_when_nothing_dies() {
    // Established flows that keep sending never expire: the death rate is zero from the first
    // sample on, so waiting out the window (or `idle_max`) would only delay the migration.
    let mut cl = cluster(22);
    let n = 10u32;
    let mut seq_out = vec![0u32; n as usize];
    let mut seq_in = vec![0u32; n as usize];
    for f in 0..n {
        traffic(&mut cl, f, &mut seq_out, &mut seq_in);
    }
    let params = Params {
        idle_sample_interval: Duration::from_millis(100),
        idle_window_samples: 10,
        idle_max: Duration::from_secs(60),
        drain: Duration::from_millis(2),
        ..Params::default()
    };
    let start = cl.now;
    let id = cl.start(Algorithm::FreezeCopy, params);
    while !cl.phase_reached(id, A, Phase::FreezeCopy) && cl.now < start + Duration::from_secs(5) {
        for f in 0..n {
            traffic(&mut cl, f, &mut seq_out, &mut seq_in);
        }
        cl.advance_by(Duration::from_millis(10)).unwrap();
    }
    let waited = cl.now - start;
    assert!(
        waited <= Duration::from_millis(120),
        "freeze-and-copy began only after {waited:?}"
    );
}

#[test]
fn chained_packets_lost_on_the_chain_path_delay_the_release_by_the_idle_bound_only() {
    // Three chained packets vanish between the instances: the marker counts them, they never
    // arrive, and the destination releases its hold `chain_idle_release` after the chain went
    // quiet instead of waiting `cutover_hold_max` (1 s).
    let mut cl = cluster(23);
    let n = 20u32;
    let extra = 5u32;
    let mut seq_out = vec![0u32; (n + extra) as usize];
    let mut seq_in = vec![0u32; (n + extra) as usize];
    for f in 0..n {
        traffic(&mut cl, f, &mut seq_out, &mut seq_in);
    }
    let params = Params {
        idle_max: Duration::ZERO,
        drain: Duration::from_millis(300),
        ..Params::default()
    };
    let id = cl.start(Algorithm::FreezeCopy, params);
    cl.chain_drop = 3;
    let limit = cl.now + Duration::from_secs(1);
    let mut step = 0u32;
    while !cl.phase_reached(id, A, Phase::Drain) && cl.now < limit {
        // New flows: chained to B (the first three chained packets are lost).
        traffic(&mut cl, n + step % extra, &mut seq_out, &mut seq_in);
        traffic(&mut cl, step % n, &mut seq_out, &mut seq_in);
        step += 1;
        cl.advance_by(Duration::from_micros(100)).unwrap();
    }
    assert!(cl.phase_reached(id, A, Phase::Drain), "no cutover");
    assert_eq!(
        cl.chain_drop, 0,
        "the chain lost fewer packets than planned"
    );
    let before = cl.obs.delivered.len();
    traffic(&mut cl, 0, &mut seq_out, &mut seq_in);
    let injected = cl.now;
    while cl.obs.delivered.len() == before && cl.now < injected + Duration::from_millis(500) {
        cl.advance_by(Duration::from_micros(50)).unwrap();
    }
    assert!(cl.obs.delivered.len() > before, "still held");
    let waited = cl.obs.delivered[before].at - injected;
    let cfg = flowshift_migration::MigrationConfig::default();
    let bound = Params::default().chain_quiet
        + cfg.chain_idle_release
        + cl.cfg.transfer_delay
        + cl.cfg.chain_delay
        + Duration::from_millis(1);
    assert!(waited <= bound, "held {waited:?}, bound {bound:?}");
    assert_eq!(cl.b.counters().chain_lost, 3);
    assert_eq!(cl.b.counters().hold_timeouts, 0);
    assert_in_order(&cl.obs.delivered);
}
