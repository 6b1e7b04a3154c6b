//! The per-packet tag comes back unchanged with its packet, and drop reports respect their
//! bound.

use flowshift_migration::{Direction, Ingress, Instance, InstanceId, MigrationConfig, Output};
use flowshift_nat::{DropReason, GroupConfig, Nat, NatConfig};
use flowshift_wire::Instant;
use std::net::Ipv4Addr;

fn nat() -> Nat {
    Nat::new(NatConfig {
        groups: vec![GroupConfig {
            external: Ipv4Addr::new(198, 18, 0, 1),
            subscribers: flowshift_nat::prefix(Ipv4Addr::new(100, 64, 0, 0), 24).unwrap(),
        }],
        ..NatConfig::default()
    })
    .unwrap()
}

fn udp(sport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4([100, 64, 0, 1], [203, 0, 113, 9], 64)
        .udp(sport, 53)
        .write(&mut out, &[1, 2, 3, 4])
        .unwrap();
    out
}

#[test]
fn tags_come_back_with_their_packets_in_order() {
    let cfg = MigrationConfig {
        report_drops: true,
        ..MigrationConfig::default()
    };
    let mut inst: Instance<(u32, bool)> = Instance::with_meta(InstanceId(1), nat(), cfg).unwrap();
    let now = Instant::from_secs(1);
    // Translatable packets, with garbage between them (dropped, reported with its tag).
    let mut batch: Vec<(Vec<u8>, (u32, bool))> = (0..40u32)
        .map(|i| {
            if i % 5 == 4 {
                (vec![0x45, 0, 0, 3], (i, false))
            } else {
                (udp(10_000 + i as u16), (i, true))
            }
        })
        .collect();
    inst.handle_batch(now, &mut batch, Ingress::Switch);
    assert!(batch.is_empty());
    // Once more, now that the flows exist: the fast path.
    let mut again: Vec<_> = (0..40u32)
        .filter(|i| i % 5 != 4)
        .map(|i| (udp(10_000 + i as u16), (100 + i, true)))
        .collect();
    inst.handle_batch(now, &mut again, Ingress::Switch);
    let mut seen = Vec::new();
    while let Some(o) = inst.poll_output() {
        match o {
            Output::Send { pkt, meta, dir } => {
                assert!(meta.1, "a translated packet with a garbage tag");
                assert_eq!(dir, Direction::ToOutside);
                assert_eq!(pkt[12..16], [198, 18, 0, 1], "translated");
                assert_eq!(u16::from_be_bytes([pkt[22], pkt[23]]), 53);
                seen.push(meta.0);
            }
            Output::Dropped { meta, reason, .. } => {
                assert!(!meta.1, "a good packet dropped: {reason:?}");
                seen.push(meta.0);
            }
            Output::Chain { .. } => panic!("nothing to chain"),
        }
    }
    let want: Vec<u32> = (0..40)
        .chain((0..40).filter(|i| i % 5 != 4).map(|i| 100 + i))
        .collect();
    assert_eq!(seen, want, "every packet once, in order, with its own tag");
    assert!(
        inst.nat().counters().fast_path >= 32,
        "the batch took the fast path"
    );
    let mut held = 0;
    inst.for_each_held(|_, _| held += 1);
    assert_eq!(held, 0, "nothing kept after the outputs were polled");
}

#[test]
fn drop_reports_are_bounded_and_refusals_counted() {
    let cfg = MigrationConfig {
        report_drops: true,
        max_outputs: 8,
        freeze_buffer_packets: 4,
        cutover_hold_packets: 4,
        ..MigrationConfig::default()
    };
    let mut inst = Instance::new(InstanceId(1), nat(), cfg).unwrap();
    let now = Instant::from_secs(1);
    for _ in 0..20 {
        inst.handle_packet(now, vec![0x45, 0, 0, 3], (), Ingress::Switch);
    }
    // Good packets still find room: drop reports have their own allowance.
    for i in 0..8 {
        inst.handle_packet(now, udp(20_000 + i), (), Ingress::Switch);
    }
    inst.handle_packet(now, udp(21_000), (), Ingress::Switch);
    let mut queued = 0;
    inst.for_each_held(|_, _| queued += 1);
    assert_eq!(queued, 16, "8 drop reports and 8 packets to send");
    let c = inst.counters();
    assert_eq!(
        c.drop_reports_refused,
        12 + 1,
        "12 malformed, 1 output-queue drop"
    );
    assert_eq!(c.outputs_dropped, 1);
    let drops = inst.nat().counters().total_drops();
    assert_eq!(drops, 21, "every drop is counted, reported or not");
    let (mut sent, mut reported) = (0, 0);
    while let Some(o) = inst.poll_output() {
        match o {
            Output::Send { .. } => sent += 1,
            Output::Dropped { reason, .. } => {
                assert_eq!(reason, DropReason::Truncated);
                reported += 1;
            }
            Output::Chain { .. } => unreachable!(),
        }
    }
    assert_eq!((sent, reported), (8, 8));
}
