use super::*;
use flowshift_control::api::NodeMigration;
use flowshift_control::status::NodeCounters;
use flowshift_migration::{Phase, Role};
use flowshift_nat::GroupMode;

fn status() -> NodeStatus {
    let mut c = NodeCounters::default();
    c.io.rx_packets = 10;
    c.poll_max.max_poll_gap_us = 250;
    c.poll.poll_gaps_over_100us = 3;
    c.cpu.packet_thread_us = 1_500_000;
    c.nat.drop(DropReason::NoMapping);
    c.nat.drop(DropReason::NoMapping);
    c.nat.drop(DropReason::GroupHalted);
    c.losses = NodeCounters::losses_from(&c.nat);
    c.transfer.frames_out = 4;
    c.control.connects = 1;
    c.migration.frames_in = 5;
    NodeStatus {
        id: flowshift_migration::InstanceId(3),
        uptime_s: 1.5,
        groups: vec![GroupStatus {
            external: "198.18.0.1".parse().unwrap(),
            mode: GroupMode::Draining,
            mappings: 7,
            sessions: 9,
        }],
        migrations: vec![NodeMigration {
            migration: 42,
            role: Role::Source,
            phase: Phase::Idle,
        }],
        counters: c,
    }
}

#[test]
fn the_exposition_has_one_header_per_family_and_well_formed_samples() {
    let text = render(&status());
    for line in [
        "flowshift_uptime_seconds{node=\"3\"} 1.5",
        "flowshift_rx_packets_total 10",
        "flowshift_nat_packets_in_total 0",
        "flowshift_migration_frames_in_total 5",
        "flowshift_transfer_frames_out_total 4",
        "flowshift_control_connects_total 1",
        "flowshift_max_poll_gap_us 250",
        "# TYPE flowshift_max_poll_gap_us gauge",
        "flowshift_poll_gaps_over_100us_total 3",
        "flowshift_cpu_packet_thread_seconds_total 1.5",
        "# TYPE flowshift_cpu_packet_thread_seconds_total counter",
        "flowshift_cpu_packet_thread_preemptions_total 0",
        "flowshift_nat_drops_total{reason=\"no_mapping\"} 2",
        "flowshift_migration_losses_total{cause=\"group_halted\"} 1",
        "flowshift_migration_losses_total{cause=\"cutover_hold_full\"} 0",
        "flowshift_mappings 7",
        "flowshift_sessions 9",
        "flowshift_group_mappings{external=\"198.18.0.1\"} 7",
        "flowshift_group_sessions{external=\"198.18.0.1\"} 9",
        "flowshift_group_mode{external=\"198.18.0.1\",mode=\"draining\"} 1",
        "flowshift_migration_info{migration=\"42\",role=\"source\",phase=\"idle\"} 1",
        "flowshift_metrics_http_unauthorized_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let mut typed = std::collections::HashSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(typed.insert(name.to_owned()), "{name} typed twice");
        } else if !l.starts_with("# HELP ") {
            let (name, value) = l.rsplit_once(' ').expect("sample: name value");
            let base = name.split('{').next().unwrap();
            assert!(typed.contains(base), "{base} sampled before its TYPE");
            assert!(value.parse::<f64>().is_ok(), "value of {l:?}");
        }
    }
}
