//! The elastic policy in the daemon, over loopback with a fake switch and fake nodes: a
//! standby node is started when the active one is overloaded (its start command runs), a
//! group moves to it through the orchestrator, and when load falls the node is drained and
//! stopped (its stop command runs); `GET /status` shows the policy and its decisions.

mod common;

use common::*;
use flowshift_control::autoscale::{Action, NodeState, Reason};
use flowshift_control::orchestrator::Stage;
use flowshift_controller::ClusterConfig;
use flowshift_migration::InstanceId;
use flowshift_trust::pki::Party;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// Node 1 owns a pool of 4 groups (203.0.113.0/30), node 2 is standby; the policy sees 1,000
/// packets/s as a node's capacity and acts after 300 ms.
fn elastic_config(dir: &TempDir, log_file: &std::path::Path) -> ClusterConfig {
    let token = token_path();
    let cmd = |what: &str| {
        format!(
            "[\"sh\", \"-c\", \"echo {what} {{node}} >> {}\"]",
            log_file.display()
        )
    };
    ClusterConfig::from_toml(&format!(
        r#"
openflow_listen = "{}"
node_listen = "127.0.0.1:0"
api_listen = "127.0.0.1:0"
api_token_file = "{}"
tls = {}
[switch]
inside_port = 1
outside_port = 2
[[nodes]]
id = 1
port = 3
mac = "02:f5:00:00:00:01"
[[nodes]]
id = 2
port = 4
mac = "02:f5:00:00:00:02"
standby = true
[[pools]]
external = "203.0.113.0/30"
subscribers = "100.64.0.0/16"
owners = [1]
[autoscale]
enabled = true
capacity_pps = 1000.0
sustain_ms = 300
cooldown_ms = 200
group_rest_ms = 1000
max_migrations_per_minute = 30
start_command = {}
stop_command = {}
"#,
        dir.sock("of.sock"),
        token.display(),
        pki().toml(Party::Controller),
        cmd("start"),
        cmd("stop"),
    ))
    .expect("test configuration is valid")
}

fn pool() -> Vec<Ipv4Addr> {
    (0..4).map(|i| Ipv4Addr::new(203, 0, 113, i)).collect()
}

#[test]
fn overload_starts_the_standby_node_and_a_fall_drains_and_stops_it() {
    let dir = TempDir::new("autoscale");
    let log_file = dir.0.join("commands.log");
    let c = start_controller(elastic_config(&dir, &log_file));
    let log = Log::default();
    let _switch = FakeSwitch::connect(&c.openflow, SwitchOptions::default(), log.clone());
    let (pps1, pps2) = (Arc::new(AtomicU64::new(300)), Arc::new(AtomicU64::new(0)));
    let node = |id, mac, pps: &Arc<AtomicU64>| {
        let opts = NodeOptions {
            pps: Some(pps.clone()),
            groups: pool(),
            ..NodeOptions::default()
        };
        FakeNode::spawn(&c, id, mac, opts, log.clone())
    };
    let _n1 = node(1, MAC1, &pps1);
    let _n2 = node(2, MAC2, &pps2);
    // Both nodes connected; node 2 stays out of service while node 1 copes.
    wait_until("nodes up and the policy fed", WAIT, || {
        let s = c.api.status().ok()?;
        let a = s.autoscale?;
        let load1 = a.nodes.iter().find(|n| n.0 == InstanceId(1))?.2;
        (s.nodes.values().all(|n| n.connected) && load1 > 0.2).then_some(())
    });
    let s = c.api.status().unwrap();
    let a = s.autoscale.unwrap();
    assert!(a.enabled);
    assert_eq!(
        a.nodes.iter().find(|n| n.0 == InstanceId(2)).unwrap().1,
        NodeState::Standby
    );
    assert!(s.migrations.is_empty());

    // Overload: 1,500 packets/s on node 1 (1.5 x capacity), 4 groups of 0.375 each.
    pps1.store(1500, Ordering::Relaxed);
    wait_until("a policy migration to node 2 done", WAIT, || {
        let m = c.api.migrations().ok()?;
        m.iter()
            .any(|m| m.to == InstanceId(2) && m.stage == Stage::Done)
            .then_some(())
    });
    let s = c.api.status().unwrap();
    let a = s.autoscale.clone().unwrap();
    assert_eq!(a.counters.scale_outs, 1);
    assert_eq!(
        a.nodes.iter().find(|n| n.0 == InstanceId(2)).unwrap().1,
        NodeState::Active
    );
    let first = &a.recent[0];
    assert_eq!(
        (first.reason, &first.action),
        (
            Reason::ScaleOut,
            &Action::StartNode {
                node: InstanceId(2)
            }
        )
    );
    assert!(a.recent.iter().any(|d| matches!(
        d.action,
        Action::Migrate {
            from: InstanceId(1),
            to: InstanceId(2),
            ..
        }
    )));
    assert!(s.groups.iter().any(|g| g.owner == InstanceId(2)));

    // The load falls everywhere.
    pps1.store(100, Ordering::Relaxed);
    pps2.store(50, Ordering::Relaxed);
    wait_until("node 2 drained and stopped", WAIT, || {
        let a = c.api.status().ok()?.autoscale?;
        (a.counters.scale_ins == 1).then_some(())
    });
    let s = c.api.status().unwrap();
    let a = s.autoscale.unwrap();
    assert_eq!(
        a.nodes.iter().find(|n| n.0 == InstanceId(2)).unwrap().1,
        NodeState::Standby
    );
    assert!(
        s.groups.iter().all(|g| g.owner == InstanceId(1)),
        "{:?}",
        s.groups
    );
    assert!(matches!(
        a.recent.last().unwrap().action,
        Action::StopNode {
            node: InstanceId(2)
        }
    ));
    assert!(s.migrations.iter().all(|m| m.stage == Stage::Done));
    // The configured commands ran with the node's id.
    let ran = wait_until("stop command ran", WAIT, || {
        let t = std::fs::read_to_string(&log_file).ok()?;
        t.contains("stop 2").then_some(t)
    });
    assert_eq!(ran, "start 2\nstop 2\n");
    let counters = c.api.counters().unwrap();
    assert_eq!(counters.autoscale.commands_run, 2);
    assert_eq!(counters.autoscale.commands_failed, 0);
    assert!(counters.autoscale.load_reports > 0);
}
