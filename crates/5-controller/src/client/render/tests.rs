//! Tests of the text views: exact output for typed answers (the expected text is what the CLI
//! printed before these views moved here), and the fallbacks for sparse reports.

use super::*;
use flowshift_control::api::{ClusterStatus, GroupOwner, MigrateResponse, NodeEntry};
use flowshift_control::autoscale::{
    Action, AutoscaleCounters, AutoscaleStatus, Decision, NodeState, Reason,
};
use flowshift_control::orchestrator::Stage;
use flowshift_control::status::{GroupStatus, NodeStatus};
use flowshift_migration::{Algorithm, InstanceId, LossCause};
use flowshift_nat::{DropReason, GroupMode};
use flowshift_wire::Instant as At;
use std::collections::BTreeMap;

fn ms(n: u64) -> At {
    At::from_nanos(n * 1_000_000)
}

fn migration(external: &str, algorithm: Algorithm, stage: Stage) -> MigrationStatus {
    let mut m = MigrationStatus::requested(
        ms(1_000),
        external.parse().unwrap(),
        InstanceId(1),
        InstanceId(2),
        algorithm,
    );
    m.stage = stage;
    m
}

fn finished() -> MigrationStatus {
    let mut m = migration("198.18.0.1", Algorithm::FreezeCopy, Stage::Done);
    m.migration = Some(0x5eed_0001);
    m.redirect_sent_at = Some(At::from_nanos(1_250_000_000));
    m.redirect_confirmed_at = Some(At::from_nanos(1_262_540_000));
    m.finished_at = Some(ms(2_000));
    m
}

fn report() -> Value {
    serde_json::json!({
        "phases": [
            {"name": "idle", "start_ms": 0.0, "end_ms": 120.5},
            {"name": "freeze", "start_ms": 120.5}
        ],
        "mappings_at_start": 65000,
        "states_transferred": 64990,
        "states_expired_idle": 10,
        "records": 65010,
        "batches": 509,
        "bytes_transferred": 1560240.4,
        "bytes_received": 4096,
        "packets_lost_by_cause": {"group_halted": 0, "late": 2, "transfer": 3},
        "max_freeze_ms": 0.123,
        "max_buffer_delay_ms": 1.5,
        "halted_ms": 0,
        "packets_buffered": 17,
        "packets_chained": 250
    })
}

fn node(uptime_s: f64, mappings: [u32; 2]) -> NodeStatus {
    let mut st = NodeStatus {
        id: InstanceId(1),
        uptime_s,
        ..NodeStatus::default()
    };
    for (i, m) in mappings.into_iter().enumerate() {
        st.groups.push(GroupStatus {
            external: format!("198.18.0.{}", i + 1).parse().unwrap(),
            mode: GroupMode::Active,
            mappings: m,
            sessions: 2 * m,
        });
    }
    st.counters.io.rx_packets = 123_456_789;
    st.counters.io.tx_packets = 123_456_700;
    st.counters.nat.drops[DropReason::ALL[0] as usize] = 40;
    st.counters.nat.drops[DropReason::ALL[1] as usize] = 2;
    st.counters.losses.insert(LossCause::ALL[0], 5);
    st.counters.losses.insert(LossCause::ALL[1], 1);
    st
}

fn cluster() -> ClusterStatus {
    let mut running = migration("198.18.0.2", Algorithm::PreCopy, Stage::Running);
    running.migration = Some(0xabc);
    let mut nodes = BTreeMap::new();
    nodes.insert(
        InstanceId(1),
        NodeEntry {
            connected: true,
            status: Some(node(3600.04, [65_000, 12])),
        },
    );
    nodes.insert(
        InstanceId(2),
        NodeEntry {
            connected: false,
            status: None,
        },
    );
    ClusterStatus {
        uptime_s: 12.34,
        switch_datapath_id: Some(0xfa),
        switch_rules: 9,
        groups: vec![
            GroupOwner {
                external: "198.18.0.1".parse().unwrap(),
                subscribers: "100.64.0.0/16".parse().unwrap(),
                owner: InstanceId(2),
            },
            GroupOwner {
                external: "198.18.0.2".parse().unwrap(),
                subscribers: "100.65.0.0/16".parse().unwrap(),
                owner: InstanceId(1),
            },
        ],
        nodes,
        migrations: vec![finished(), running],
        autoscale: None,
    }
}

fn autoscale() -> AutoscaleStatus {
    let migrate = |at_ns, external: &str| Decision {
        at_ns,
        reason: Reason::Overload,
        action: Action::Migrate {
            external: external.parse().unwrap(),
            from: InstanceId(1),
            to: InstanceId(2),
            algorithm: Algorithm::FreezeCopy,
        },
    };
    let mut recent: Vec<Decision> = (1..=5)
        .map(|i| migrate(i * 1_000_000_000, &format!("198.18.0.{i}")))
        .collect();
    recent.push(Decision {
        at_ns: 7_250_000_000,
        reason: Reason::ScaleOut,
        action: Action::StartNode {
            node: InstanceId(3),
        },
    });
    AutoscaleStatus {
        enabled: true,
        nodes: vec![
            (InstanceId(1), NodeState::Active, 0.914),
            (InstanceId(3), NodeState::Starting, 0.0),
        ],
        in_flight: Some(Action::StartNode {
            node: InstanceId(3),
        }),
        counters: AutoscaleCounters {
            migrations: 5,
            migrations_failed: 1,
            scale_outs: 1,
            scale_ins: 0,
            overload_unrelieved: 2,
            rate_limited: 3,
            timeouts: 0,
        },
        recent,
    }
}

/// Lines of `text`, as written in the goldens below (each ends in `\n`).
fn lines(text: &str) -> String {
    text.lines().map(|l| format!("{l}\n")).collect()
}

#[test]
fn algorithm_names_are_their_json_names() {
    for a in [
        Algorithm::StopCopy,
        Algorithm::PreCopy,
        Algorithm::FreezeCopy,
    ] {
        assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
    }
}

#[test]
fn a_requested_migration_is_one_line() {
    let response = MigrateResponse {
        index: 7,
        status: migration("198.18.0.9", Algorithm::PreCopy, Stage::Requested),
    };
    let group = "198.18.0.1".parse().unwrap();
    assert_eq!(
        Requested {
            group,
            response: &response
        }
        .to_string(),
        "migration #7 requested: 198.18.0.1 from node 1 to node 2 (pre-copy)"
    );
}

#[test]
fn a_finished_migration_summarizes_timeline_and_report() {
    let m = finished();
    let r = report();
    let view = MigrationSummary {
        index: 7,
        status: &m,
        report: Some(&r),
    };
    let want = r#"migration #7: 198.18.0.1 from node 1 to node 2 (freeze-copy): done
  controller: redirect sent 250.0 ms, switch confirmed 262.5 ms, finished 1000.0 ms after the request
  phases (source): idle 120.5 ms, freeze (open)
  states: 65000 at start, 64990 transferred, 10 expired while idle; 65010 records in 509 batches
  bytes: 1560240 sent, 4096 received by the source
  lost packets: 5 (late 2, transfer 3)
  max freeze 0.12 ms, max buffer delay 1.50 ms, halted 0.00 ms; 17 packets buffered, 250 chained
"#;
    assert_eq!(view.to_string(), want);
}

#[test]
fn a_sparse_report_shows_zeros_and_no_timeline_shows_nothing() {
    let m = migration("198.18.0.1", Algorithm::StopCopy, Stage::Aborted);
    let bare = MigrationSummary {
        index: 0,
        status: &m,
        report: None,
    };
    assert_eq!(
        bare.to_string(),
        "migration #0: 198.18.0.1 from node 1 to node 2 (stop-copy): aborted\n"
    );
    let r = serde_json::json!({"records": "many", "packets_lost_by_cause": {"late": 0}});
    let sparse = MigrationSummary {
        report: Some(&r),
        ..bare
    };
    let want = lines(
        "migration #0: 198.18.0.1 from node 1 to node 2 (stop-copy): aborted
  states: 0 at start, 0 transferred, 0 expired while idle; 0 records in 0 batches
  bytes: 0 sent, 0 received by the source
  lost packets: 0
  max freeze 0.00 ms, max buffer delay 0.00 ms, halted 0.00 ms; 0 packets buffered, 0 chained",
    );
    assert_eq!(sparse.to_string(), want);
}

#[test]
fn the_cluster_shows_groups_nodes_and_migrations() {
    let want = r#"controller up 12.3 s; switch 0x00000000000000fa connected, 9 rules installed

GROUP            SUBSCRIBERS          OWNER
198.18.0.1       100.64.0.0/16            2
198.18.0.2       100.65.0.0/16            1

NODE  CONNECTED  UPTIME_S GROUPS  MAPPINGS   RX_PACKETS   TX_PACKETS     DROPS  MIG_LOSS
1     yes          3600.0      2     65012    123456789    123456700        42         6
2     no        (no status yet)

#    GROUP            FROM   TO ALGORITHM   STAGE                        ID  ELAPSED_MS
0    198.18.0.1          1    2 freeze-copy done                 0x5eed0001      1000.0
1    198.18.0.2          1    2 pre-copy    running                   0xabc     11340.0
"#;
    assert_eq!(ClusterView(&cluster()).to_string(), want);
}

#[test]
fn the_elastic_policy_shows_its_last_five_decisions_newest_first() {
    let mut c = cluster();
    c.autoscale = Some(autoscale());
    let want = r#"controller up 12.3 s; switch 0x00000000000000fa connected, 9 rules installed

GROUP            SUBSCRIBERS          OWNER
198.18.0.1       100.64.0.0/16            2
198.18.0.2       100.65.0.0/16            1

NODE  CONNECTED  UPTIME_S GROUPS  MAPPINGS   RX_PACKETS   TX_PACKETS     DROPS  MIG_LOSS
1     yes          3600.0      2     65012    123456789    123456700        42         6
2     no        (no status yet)

autoscale on: 5 migrations (1 failed), 1 scale-outs, 0 scale-ins, 2 unrelieved, 3 rate-limited
  nodes (state@load): 1:active@0.91 3:starting@0.00
  in flight: {"action":"start_node","node":3}
         7.2 s scale_out {"action":"start_node","node":3}
         5.0 s overload  {"action":"migrate","algorithm":"freeze-copy","external":"198.18.0.5","from":1,"to":2}
         4.0 s overload  {"action":"migrate","algorithm":"freeze-copy","external":"198.18.0.4","from":1,"to":2}
         3.0 s overload  {"action":"migrate","algorithm":"freeze-copy","external":"198.18.0.3","from":1,"to":2}
         2.0 s overload  {"action":"migrate","algorithm":"freeze-copy","external":"198.18.0.2","from":1,"to":2}

#    GROUP            FROM   TO ALGORITHM   STAGE                        ID  ELAPSED_MS
0    198.18.0.1          1    2 freeze-copy done                 0x5eed0001      1000.0
1    198.18.0.2          1    2 pre-copy    running                   0xabc     11340.0
"#;
    assert_eq!(ClusterView(&c).to_string(), want);
}

#[test]
fn an_empty_cluster_says_so() {
    let c = ClusterStatus {
        uptime_s: 0.0,
        switch_datapath_id: None,
        switch_rules: 0,
        groups: Vec::new(),
        nodes: BTreeMap::new(),
        migrations: Vec::new(),
        autoscale: None,
    };
    let want = lines(
        "controller up 0.0 s; switch not connected

GROUP            SUBSCRIBERS          OWNER

NODE  CONNECTED  UPTIME_S GROUPS  MAPPINGS   RX_PACKETS   TX_PACKETS     DROPS  MIG_LOSS

no migrations",
    );
    assert_eq!(ClusterView(&c).to_string(), want);
}
