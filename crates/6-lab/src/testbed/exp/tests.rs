//! Tests of `fig1c --testbed`'s parameters and of the counter and switch deltas it reports.

use super::*;
use flowshift_control::status::NodeCounters;
use flowshift_migration::InstanceId;
use flowshift_nat::DropReason;
use std::collections::BTreeMap;

#[test]
fn params_follow_the_poster_scenario() {
    let f = params(Algorithm::FreezeCopy);
    assert_eq!(f.batches_in_flight, 1);
    assert_eq!(f.idle_max, Duration::from_millis(500));
    assert_eq!(params(Algorithm::StopCopy).batches_in_flight, 8);
    f.validate(&flowshift_migration::MigrationConfig::default())
        .unwrap();
}

#[test]
fn counter_deltas_and_switch_deltas() {
    let mut b = NodeCounters::default();
    for _ in 0..5 {
        b.nat.drop(DropReason::GroupHalted);
    }
    b.losses = NodeCounters::losses_from(&b.nat);
    let mut a = b.clone();
    for _ in 0..4 {
        a.nat.drop(DropReason::GroupHalted);
    }
    a.nat.drop(DropReason::NoMapping);
    a.losses = NodeCounters::losses_from(&a.nat);
    a.io.rx_packets = 3;
    a.io.tx_errors = 2;
    a.migration.internal_errors = 1;
    let (b, a) = (
        BTreeMap::from([(InstanceId(1), b)]),
        BTreeMap::from([(InstanceId(1), a)]),
    );
    let d = node_deltas(&b, &a);
    assert_eq!(
        d.lost_by_cause,
        BTreeMap::from([("group_halted".to_owned(), 4)])
    );
    assert_eq!(
        d.drops,
        BTreeMap::from([
            ("node_drop_group_halted".to_owned(), 4),
            ("node_drop_no_mapping".to_owned(), 1),
            ("node_tx_errors".to_owned(), 2),
        ])
    );
    assert_eq!(d.internal_errors, 1);
    let flat = flat_deltas(&b, &a);
    assert_eq!(flat[&InstanceId(1)]["loss_group_halted"], 4);
    assert_eq!(flat[&InstanceId(1)]["rx_packets"], 3);
    assert!(
        !flat[&InstanceId(1)].contains_key("tx_packets"),
        "zero deltas are left out"
    );
    let before = json!({"flows": [{"table_id": 0, "priority": 100, "match": "m", "cookie": 1, "packets": 10, "bytes": 100}],
                        "ports": [{"port_no": 1, "rx_packets": 5, "tx_packets": 5, "rx_bytes": 1, "tx_bytes": 1, "rx_dropped": 0, "tx_dropped": 0, "rx_errors": 0, "tx_errors": u64::MAX}]});
    let after = json!({"flows": [{"table_id": 0, "priority": 100, "match": "m", "cookie": 1, "packets": 15, "bytes": 160}],
                       "ports": [{"port_no": 1, "rx_packets": 9, "tx_packets": 5, "rx_bytes": 1, "tx_bytes": 1, "rx_dropped": 2, "tx_dropped": 0, "rx_errors": 0, "tx_errors": u64::MAX}]});
    let (f, p) = switch_deltas(&before, &after);
    assert_eq!(f[0]["packets"], 5);
    assert_eq!(f[0]["bytes"], 60);
    assert_eq!(p[0]["rx_packets"], 4);
    assert_eq!(p[0]["rx_dropped"], 2);
    assert_eq!(p[0]["tx_errors"], Value::Null);
    assert!((mean_between(&[(0.0, 1.0), (100.0, 3.0)], 0.0, 200.0) - 2.0).abs() < 1e-9);
    assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.5), 2.0);
}
