//! Live: the controller programs a private Open vSwitch (userspace datapath, started by
//! `flowshift_ovs::Ovs`) over a unix socket, and a migration between fake nodes
//! moves the steering rules before the source hears `CutoverDone`. A switch reconnection
//! gets the whole table again. Open vSwitch also connects over mutual TLS (`set-ssl`, an
//! `ssl:` controller, `openflow_tls`) to a pinned controller.
//!
//! Prints `SKIP: <reason>` and passes when not root or Open vSwitch is not installed
//! (`scripts/install-testbed-deps.sh` installs it). The Open vSwitch instance, its namespace
//! and directory are removed on drop, also when an assertion fails.

mod common;

use common::*;
use flowshift_control::api::MigrateRequest;
use flowshift_control::orchestrator::Stage;
use flowshift_migration::{Algorithm, InstanceId};
use flowshift_ovs::{Ovs, OvsError, OvsOptions};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// The flow lines of `ovs-ofctl dump-flows`.
fn flows(dump: &str) -> Vec<&str> {
    dump.lines().filter(|l| l.contains("priority=")).collect()
}

/// The one flow line containing `matcher`; panics with the dump otherwise.
fn flow<'a>(dump: &'a str, matcher: &str) -> &'a str {
    let found: Vec<&str> = flows(dump)
        .into_iter()
        .filter(|l| l.contains(matcher))
        .collect();
    assert_eq!(found.len(), 1, "{matcher:?} in\n{dump}");
    found[0]
}

/// Asserts both steering rules send group traffic to the node on `port` with `mac`.
fn assert_steering(dump: &str, mac: &str, port: u32) {
    let actions = format!("actions=set_field:{mac}->eth_dst,output:{port}");
    for m in [
        "priority=200,ip,in_port=1,nw_src=100.64.0.0/16 ",
        "priority=200,ip,in_port=2,nw_dst=198.18.0.1 ",
    ] {
        let line = flow(dump, m);
        assert!(line.contains(&actions), "{line:?} lacks {actions:?}");
    }
}

#[test]
fn the_controller_programs_open_vswitch_and_redirects_a_migration() {
    let options = OvsOptions {
        datapath_id: Some(DPID),
        name_prefix: "fsct".into(),
        ..OvsOptions::default()
    };
    let ovs = match Ovs::start_with(&options) {
        Ok(o) => Arc::new(o),
        Err(OvsError::Unavailable(reason)) => {
            println!("SKIP: {reason}");
            return;
        }
        Err(e) => panic!("starting Open vSwitch: {e}"),
    };
    let started = std::time::Instant::now();
    let of_sock = format!("unix:{}", ovs.controller_socket_path().display());
    let api_sock = format!("unix:{}", ovs.dir().join("api.sock").display());
    let c = start_controller(config(&of_sock, "127.0.0.1:0", &api_sock));
    ovs.set_controller(&of_sock).unwrap();

    let log = Log::default();
    let at_cutover = Arc::new(Mutex::new(None));
    let (o, seen) = (ovs.clone(), at_cutover.clone());
    let on_cutover = move || *seen.lock().unwrap() = Some(o.dump_flows().unwrap());
    let _n1 = FakeNode::spawn(
        &c,
        1,
        MAC1,
        NodeOptions {
            on_cutover: Some(Box::new(on_cutover)),
            ..NodeOptions::default()
        },
        log.clone(),
    );
    let _n2 = FakeNode::spawn(&c, 2, MAC2, NodeOptions::default(), log.clone());
    let status = wait_until("table installed and nodes up", WAIT, || {
        let s = c.api.status().ok()?;
        (s.switch_rules == 8 && s.nodes.values().all(|n| n.connected)).then_some(s)
    });
    assert_eq!(status.switch_datapath_id, Some(DPID));
    println!("table installed {:?} after OVS start", started.elapsed());

    let dump = ovs.dump_flows().unwrap();
    assert_eq!(flows(&dump).len(), 8, "{dump}");
    assert_steering(&dump, "02:f5:00:00:00:01", 3);
    for (m, actions) in [
        (
            "priority=150,ip,in_port=3,nw_dst=100.64.0.0/16 ",
            "actions=output:1",
        ),
        (
            "priority=150,ip,in_port=4,nw_dst=100.64.0.0/16 ",
            "actions=output:1",
        ),
        ("priority=100,in_port=3 ", "actions=output:2"),
        ("priority=100,in_port=4 ", "actions=output:2"),
        (
            "priority=300,in_port=3,dl_dst=02:f5:00:00:00:02 ",
            "actions=output:4",
        ),
        (
            "priority=300,in_port=4,dl_dst=02:f5:00:00:00:01 ",
            "actions=output:3",
        ),
    ] {
        let line = flow(&dump, m);
        assert!(line.contains(actions), "{line:?} lacks {actions:?}");
    }
    let steering = flow(&dump, "priority=200,ip,in_port=1,");
    assert!(
        steering.contains("cookie=0x1000000c6120001,"),
        "the control layer's cookie: {steering}"
    );

    // Migrate: when the source hears CutoverDone, OVS already steers to node 2.
    let t = std::time::Instant::now();
    let resp = c
        .api
        .migrate(&MigrateRequest {
            group: GROUP,
            to: InstanceId(2),
            algorithm: Algorithm::FreezeCopy,
            params: None,
        })
        .unwrap();
    let m = wait_until("migration done", WAIT, || {
        let m = c.api.migrations().ok()?.into_iter().nth(resp.index)?;
        (m.stage == Stage::Done).then_some(m)
    });
    println!("migration done in {:?}", t.elapsed());
    let dump_at_cutover = at_cutover
        .lock()
        .unwrap()
        .take()
        .expect("node 1 heard CutoverDone");
    assert_steering(&dump_at_cutover, "02:f5:00:00:00:02", 4);
    let (sent, confirmed) = (
        m.redirect_sent_at.unwrap(),
        m.redirect_confirmed_at.unwrap(),
    );
    println!(
        "redirect: flow-mods to barrier reply {:?}",
        confirmed - sent
    );
    let dump = ovs.dump_flows().unwrap();
    assert_eq!(flows(&dump).len(), 8, "{dump}");
    assert_steering(&dump, "02:f5:00:00:00:02", 4);

    // Statistics from the switch itself.
    let sw = wait_until("switch statistics", WAIT, || {
        let sw = c.api.switch().ok()?;
        (sw.stats_at_s.is_some() && sw.flows.len() == 8).then_some(sw)
    });
    assert!(sw.synced, "{sw:?}");
    assert_eq!(sw.counters.errors, 0, "{:?}", sw.recent_errors);
    assert!(
        sw.flows
            .iter()
            .any(|f| f.match_ == "in_port=1,eth_type=0x0800,ipv4_src=100.64.0.0/16"),
        "{:?}",
        sw.flows
    );

    // Reconnection: removing and setting the controller flushes the switch's flows; the
    // controller installs the current table (group on node 2) again.
    ovs.vsctl(&["del-controller", ovs.bridge()]).unwrap();
    wait_until("switch disconnected", WAIT, || {
        (!c.api.switch().ok()?.connected).then_some(())
    });
    ovs.set_controller(&of_sock).unwrap();
    wait_until("table re-installed", WAIT, || {
        let sw = c.api.switch().ok()?;
        (sw.synced && sw.counters.connects == 2).then_some(())
    });
    let dump = ovs.dump_flows().unwrap();
    assert_eq!(flows(&dump).len(), 8, "{dump}");
    assert_steering(&dump, "02:f5:00:00:00:02", 4);
    let sw = c.api.switch().unwrap();
    assert_eq!(sw.counters.errors, 0, "{:?}", sw.recent_errors);
    println!("live test took {:?} after OVS start", started.elapsed());
}

#[test]
fn open_vswitch_connects_over_mutual_tls_to_a_pinned_controller() {
    use flowshift_trust::pki::Party;
    let options = OvsOptions {
        datapath_id: Some(DPID),
        name_prefix: "fsct".into(),
        ..OvsOptions::default()
    };
    let ovs = match Ovs::start_with(&options) {
        Ok(o) => o,
        Err(OvsError::Unavailable(reason)) => {
            println!("SKIP: {reason}");
            return;
        }
        Err(e) => panic!("starting Open vSwitch: {e}"),
    };
    // The controller listens on the switch namespace's loopback (its thread enters the
    // namespace); the API stays on a unix socket reachable from here.
    let api_sock = format!("unix:{}", ovs.dir().join("api.sock").display());
    let pin = format!("datapath_id = \"{DPID:#x}\"");
    let c = start_controller_in(
        config_with(
            "127.0.0.1:0",
            "127.0.0.1:0",
            &api_sock,
            "openflow_tls = true",
            &pin,
        ),
        Some(ovs.netns().name().to_owned()),
    );
    let f = pki().files(Party::Switch);
    ovs.set_ssl(&f.key, &f.cert, &f.ca).unwrap();
    let flowshift_controller::Endpoint::Tcp(of) = &c.openflow else {
        unreachable!()
    };
    ovs.set_controller(&format!("ssl:{of}")).unwrap();
    let sw = wait_until("the switch connected over TLS and synced", WAIT, || {
        let sw = c.api.switch().ok()?;
        (sw.connected && sw.synced).then_some(sw)
    });
    assert_eq!(sw.datapath_id, Some(DPID));
    assert_eq!(sw.counters.refused_datapath_id, 0);
    let counters = c.api.counters().unwrap();
    assert_eq!(counters.switch_refused_tls, 0, "{counters:?}");
    let dump = ovs.dump_flows().unwrap();
    assert_eq!(flows(&dump).len(), 8, "{dump}");
    // The controller's listener speaks TLS 1.3 only: Open vSwitch negotiated it.
    let log = ovs.vswitchd_log_tail(200);
    for line in log.lines().filter(|l| l.contains("<->ssl:")) {
        println!("{line}");
    }
}
