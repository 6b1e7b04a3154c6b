//! Freeze-and-copy at the source: an acknowledged batch's mappings are removed in bounded
//! slices between packet batches (never all in the call that handles the acknowledgement),
//! and a packet of a mapping acknowledged but not removed yet goes to the destination at
//! once, where it is translated with the mapping's external port. Two instances driven by
//! hand: frames are moved one at a time.

use core::time::Duration;
use flowshift_migration::proto::{self, Message};
use flowshift_migration::{
    Algorithm, Ingress, Instance, InstanceId, MigrationConfig, MigrationEvent, Output, Params,
};
use flowshift_nat::{GroupConfig, GroupId, Nat, NatConfig};
use flowshift_wire::Instant;
use std::net::Ipv4Addr;

const A: InstanceId = InstanceId(1);
const B: InstanceId = InstanceId(2);
const EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Subscribers, and mappings (one UDP session each) per subscriber.
const SUBS: u8 = 6;
const PER_SUB: u16 = 500;
/// The source's removal slice (`REMOVE_SLICE_SESSIONS`, crate-private).
const SLICE: u32 = 1024;

fn nat(groups: Vec<GroupConfig>) -> Nat {
    Nat::new(NatConfig {
        groups,
        ..NatConfig::default()
    })
    .unwrap()
}

fn udp(sub: u8, sport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4([100, 64, 0, sub], [203, 0, 113, 9], 64)
        .udp(sport, 53)
        .write(&mut out, &[1, 2, 3, 4])
        .unwrap();
    out
}

fn mappings(i: &Instance, g: GroupId) -> u32 {
    i.nat().group_stats(g).map_or(0, |s| s.mappings)
}

/// The source port a translated packet left with.
fn sport(pkt: &[u8]) -> u16 {
    u16::from_be_bytes([pkt[20], pkt[21]])
}

#[test]
fn acknowledged_mappings_are_removed_in_slices_and_their_packets_chained() {
    let cfg = MigrationConfig {
        max_retries: 30,
        ..MigrationConfig::default()
    };
    let group = GroupConfig {
        external: EXT,
        subscribers: "100.64.0.0/24".parse().unwrap(),
    };
    let mut a = Instance::new(A, nat(vec![group]), cfg.clone()).unwrap();
    let mut b = Instance::new(B, nat(vec![]), cfg).unwrap();
    let mut now = Instant::from_secs(1);
    let g = a.nat().group_id(EXT).unwrap();
    // 3,000 mappings, 500 per subscriber (one port block of 512 each).
    let mut ext_port = std::collections::HashMap::new();
    for sub in 1..=SUBS {
        let mut batch: Vec<(Vec<u8>, ())> =
            (0..PER_SUB).map(|p| (udp(sub, 10_000 + p), ())).collect();
        a.handle_batch(now, &mut batch, Ingress::Switch);
        for p in 0..PER_SUB {
            match a.poll_output() {
                Some(Output::Send { pkt, .. }) => {
                    ext_port.insert((sub, 10_000 + p), sport(&pkt));
                }
                other => panic!("translated at the source: {:?}", other.is_some()),
            }
        }
    }
    let total = u32::from(SUBS) * u32::from(PER_SUB);
    assert_eq!(mappings(&a, g), total);
    // Batches of whole subscribers' blocks, 2,500 records at most: the first batch carries
    // five subscribers, the second the sixth.
    let params = Params {
        idle_max: Duration::ZERO,
        freeze_target: Duration::ZERO,
        batch_size: 4096,
        batch_max_bytes: 2500 * 24,
        drain: Duration::from_millis(5),
        chain_quiet: Duration::from_millis(1),
        ..Params::default()
    };
    let id = a
        .start_migration(now, g, B, Algorithm::FreezeCopy, params)
        .unwrap();
    let mut first_ack_seen = false;
    let mut chained_probe = None;
    let mut ready = false;
    let mut sent_by_b = Vec::new();
    for _ in 0..2_000 {
        now = now + Duration::from_micros(100);
        if a.poll_timeout() <= now {
            let before = mappings(&a, g);
            a.handle_timeout(now);
            let removed = before - mappings(&a, g);
            // One session per mapping: a slice removes at most SLICE of them.
            assert!(removed <= SLICE, "one call removed {removed} mappings");
        }
        if b.poll_timeout() <= now {
            b.handle_timeout(now);
        }
        while let Some((_, f)) = a.poll_transmit() {
            b.handle_transfer(now, A, &f).unwrap();
        }
        while let Some((_, f)) = b.poll_transmit() {
            let is_ack = matches!(
                proto::decode(&f).map(|fr| fr.msg),
                Ok(Message::BatchAck(ref x)) if x.ok
            );
            let before = mappings(&a, g);
            a.handle_transfer(now, B, &f).unwrap();
            assert_eq!(
                mappings(&a, g),
                before,
                "the call that handles a frame removes nothing"
            );
            if is_ack && !first_ack_seen {
                first_ack_seen = true;
                // Subscriber 1's mappings are in the first batch: acknowledged, still here.
                a.handle_packet(now, udp(1, 10_007), (), Ingress::Switch);
                let mut chained = None;
                while let Some(o) = a.poll_output() {
                    match o {
                        Output::Chain { to, pkt, .. } => {
                            assert_eq!(to, B);
                            if pkt == udp(1, 10_007) {
                                chained = Some(pkt);
                            }
                        }
                        Output::Send { .. } => panic!("translated at the source after the ack"),
                        Output::Dropped { reason, .. } => panic!("dropped: {reason:?}"),
                    }
                }
                chained_probe = Some(chained.expect("chained at once, not held"));
            }
        }
        // Chained packets reach the destination (held there until the cutover).
        let mut to_b = Vec::new();
        while let Some(o) = a.poll_output() {
            if let Output::Chain { pkt, .. } = o {
                to_b.push((pkt, ()));
            }
        }
        if let Some(p) = chained_probe.take() {
            to_b.insert(0, (p, ()));
        }
        if !to_b.is_empty() {
            b.handle_batch(now, &mut to_b, Ingress::Chain { from: A });
        }
        while let Some(e) = a.poll_event() {
            if matches!(e, MigrationEvent::ReadyForCutover { .. }) && !ready {
                ready = true;
                assert_eq!(mappings(&a, g), 0, "ready once every mapping is removed");
                a.cutover_done(now, id).unwrap();
            }
        }
        while b.poll_event().is_some() {}
        while let Some(o) = b.poll_output() {
            if let Output::Send { pkt, .. } = o {
                sent_by_b.push(pkt);
            }
        }
        let done = |i: &Instance| i.report(id).is_some_and(|r| r.completed);
        if done(&a) && done(&b) {
            break;
        }
    }
    assert!(first_ack_seen && ready, "the migration reached the cutover");
    // The probe, translated by the destination with the port it had at the source.
    assert_eq!(
        sent_by_b.len(),
        1,
        "the probe is sent once, by the destination"
    );
    assert_eq!(sport(&sent_by_b[0]), ext_port[&(1, 10_007)]);
    assert_eq!(sent_by_b[0][12..16], EXT.octets());
    let r = a.report(id).unwrap();
    assert!(r.completed, "source completed: {r:?}");
    assert_eq!(r.states_transferred, total);
    assert_eq!(r.packets_chained, 1, "the probe");
    let gb = b.nat().group_id(EXT).unwrap();
    assert_eq!(mappings(&b, gb), total);
    assert_eq!(a.counters().internal_errors, 0);
}
