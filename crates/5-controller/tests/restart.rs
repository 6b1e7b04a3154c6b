//! Restart safety with a state file: a restarted controller keeps the ownership that
//! migrations established (it never moves a group back to its configured owner) and finishes
//! a migration whose redirect was decided before the restart (the source gets its cutover).

mod common;

use common::*;
use flowshift_control::api::MigrateRequest;
use flowshift_control::orchestrator::Stage;
use flowshift_controller::ClusterConfig;
use flowshift_controller::store::{
    PersistedMigration, PersistedStage, PersistedState, STATE_VERSION, Store,
};
use flowshift_migration::{Algorithm, InstanceId};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

fn with_state(dir: &TempDir) -> ClusterConfig {
    let mut cfg = config(&dir.sock("of.sock"), "127.0.0.1:0", "127.0.0.1:0");
    cfg.state_file = Some(dir.0.join("controller-state.json"));
    cfg
}

fn read_state(dir: &TempDir) -> PersistedState {
    Store::new(dir.0.join("controller-state.json"))
        .load()
        .unwrap()
        .expect("state file written")
}

fn wait_ready(c: &Running) {
    wait_until("switch synced and nodes up", WAIT, || {
        let s = c.api.status().ok()?;
        let ready =
            s.switch_rules == 8 && s.nodes.values().all(|n| n.connected && n.status.is_some());
        ready.then_some(())
    });
}

#[test]
fn ownership_survives_a_controller_restart() {
    let dir = TempDir::new("restart");
    let log = Log::default();
    {
        let c = start_controller(with_state(&dir));
        let _switch = FakeSwitch::connect(&c.openflow, SwitchOptions::default(), log.clone());
        let _n1 = FakeNode::spawn(&c, 1, MAC1, NodeOptions::default(), log.clone());
        let _n2 = FakeNode::spawn(&c, 2, MAC2, NodeOptions::default(), log.clone());
        wait_ready(&c);
        assert_eq!(
            read_state(&dir).owners[&GROUP],
            InstanceId(1),
            "first start: configured owner"
        );
        c.api
            .migrate(&MigrateRequest {
                group: GROUP,
                to: InstanceId(2),
                algorithm: Algorithm::FreezeCopy,
                params: None,
            })
            .unwrap();
        wait_until("migration done", WAIT, || {
            (c.api.migrations().ok()?.first()?.stage == Stage::Done).then_some(())
        });
        let state = read_state(&dir);
        assert_eq!(state.owners[&GROUP], InstanceId(2));
        assert!(state.migrations.is_empty(), "{state:?}");
        assert!(c.api.counters().unwrap().state_saves >= 2);
    }
    // The same configuration (whose owner is node 1) after a restart.
    let c = start_controller(with_state(&dir));
    let switch = FakeSwitch::connect(&c.openflow, SwitchOptions::default(), log.clone());
    let _n1 = FakeNode::spawn(&c, 1, MAC1, NodeOptions::default(), log.clone());
    let _n2 = FakeNode::spawn(&c, 2, MAC2, NodeOptions::default(), log.clone());
    wait_ready(&c);
    assert_eq!(c.api.status().unwrap().groups[0].owner, InstanceId(2));
    assert_eq!(
        switch.steering_outputs(),
        vec![(4, MAC2), (4, MAC2)],
        "the switch keeps pointing at the group's current owner"
    );
}

#[test]
fn a_redirected_migration_is_finished_after_a_restart() {
    let dir = TempDir::new("resume");
    let migration = 0x5eed_0001_u64;
    let state = PersistedState {
        version: STATE_VERSION,
        owners: [(GROUP, InstanceId(2))].into_iter().collect(),
        migrations: vec![PersistedMigration {
            migration,
            external: GROUP,
            from: InstanceId(1),
            to: InstanceId(2),
            stage: PersistedStage::Redirecting,
        }],
    };
    Store::new(dir.0.join("controller-state.json"))
        .save(&state)
        .unwrap();
    let log = Log::default();
    let c = start_controller(with_state(&dir));
    let switch = FakeSwitch::connect(&c.openflow, SwitchOptions::default(), log.clone());
    let _n1 = FakeNode::spawn(&c, 1, MAC1, NodeOptions::default(), log.clone());
    let _n2 = FakeNode::spawn(&c, 2, MAC2, NodeOptions::default(), log.clone());
    wait_ready(&c);
    assert_eq!(switch.steering_outputs(), vec![(4, MAC2), (4, MAC2)]);
    wait_until("the source hears its cutover again", WAIT, || {
        log.find("node 1 cutover done", 0)
    });
    assert_eq!(c.api.counters().unwrap().migrations_resumed, 1);
    wait_until("the resumed migration leaves the state file", WAIT, || {
        read_state(&dir).migrations.is_empty().then_some(())
    });
    assert_eq!(read_state(&dir).owners[&GROUP], InstanceId(2));
}

#[test]
fn a_corrupt_state_file_stops_the_controller_with_a_clear_error() {
    let dir = TempDir::new("corrupt");
    std::fs::write(dir.0.join("controller-state.json"), "garbage").unwrap();
    let cfg = with_state(&dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt.block_on(async {
        let c = flowshift_controller::Controller::bind(cfg).await.unwrap();
        c.run(async {}).await.unwrap_err()
    });
    let e = format!("{e:#}");
    assert!(
        e.contains("controller-state.json") && e.contains("move it away"),
        "{e}"
    );
}
