//! The controller over loopback with a fake switch and fake nodes speaking the real
//! protocols: table install, a migration end to end (the cutover waits for the barrier),
//! OpenFlow errors, switch reconnection, refused and misbehaving nodes, the operator API.

mod common;

use common::*;
use flowshift_control::api::MigrateRequest;
use flowshift_control::orchestrator::Stage;
use flowshift_controller::ClientError;
use flowshift_migration::{Algorithm, InstanceId};
use flowshift_trust::pki::Party;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

fn migrate(to: u16) -> MigrateRequest {
    MigrateRequest {
        group: GROUP,
        to: InstanceId(to),
        algorithm: Algorithm::FreezeCopy,
        params: None,
    }
}

/// Waits for the switch to hold the whole table and both nodes to report a status.
fn wait_ready(c: &Running) {
    wait_until("switch synced and nodes up", WAIT, || {
        let s = c.api.status().ok()?;
        let ready =
            s.switch_rules == 8 && s.nodes.values().all(|n| n.connected && n.status.is_some());
        ready.then_some(())
    });
}

fn wait_stage(c: &Running, index: usize, stage: Stage) {
    wait_until(&format!("migration #{index} {stage:?}"), WAIT, || {
        let m = c.api.migrations().ok()?;
        (m.get(index)?.stage == stage).then_some(())
    });
}

fn api_status(e: ClientError) -> u16 {
    match e {
        ClientError::Api { status, .. } => status,
        other => panic!("expected an API error, got {other}"),
    }
}

#[test]
fn a_migration_installs_redirects_and_cuts_over_only_after_the_barrier() {
    let dir = TempDir::new("mig");
    let c = start_controller(config(&dir.sock("of.sock"), "127.0.0.1:0", "127.0.0.1:0"));
    let log = Log::default();
    let delay = Duration::from_millis(300);
    let switch = FakeSwitch::connect(
        &c.openflow,
        SwitchOptions {
            barrier_delay: delay,
            ..SwitchOptions::default()
        },
        log.clone(),
    );
    let _n1 = FakeNode::spawn(&c, 1, MAC1, NodeOptions::default(), log.clone());
    let _n2 = FakeNode::spawn(&c, 2, MAC2, NodeOptions::default(), log.clone());
    wait_ready(&c);
    assert_eq!(switch.table.lock().unwrap().len(), 8);
    assert_eq!(switch.steering_outputs(), vec![(3, MAC1), (3, MAC1)]);
    assert_eq!(
        log.entries()[0],
        "switch Delete",
        "a fresh switch is wiped first"
    );

    // Refusals.
    let bad_group = MigrateRequest {
        group: [198, 18, 0, 9].into(),
        ..migrate(2)
    };
    assert_eq!(api_status(c.api.migrate(&bad_group).unwrap_err()), 400);
    assert_eq!(api_status(c.api.migrate(&migrate(7)).unwrap_err()), 400);
    assert_eq!(api_status(c.api.migrate(&migrate(1)).unwrap_err()), 409);

    let resp = c.api.migrate(&migrate(2)).unwrap();
    assert_eq!((resp.index, resp.status.stage), (0, Stage::Requested));
    assert_eq!(
        api_status(c.api.migrate(&migrate(2)).unwrap_err()),
        409,
        "busy"
    );
    wait_stage(&c, 0, Stage::Done);
    assert_eq!(switch.steering_outputs(), vec![(4, MAC2), (4, MAC2)]);

    // Order: modifies, barrier reply, then the node hears CutoverDone.
    let modify = log.find("switch ModifyStrict", 0).expect("modify sent");
    let barrier = log.find("switch barrier reply", modify).expect("barrier");
    let cutover = log.find("node 1 cutover done", 0).expect("cutover");
    assert!(barrier < cutover, "{:?}", log.entries());
    assert!(log.time(cutover) >= log.time(barrier));
    let m = &c.api.migrations().unwrap()[0];
    let (sent, confirmed) = (
        m.redirect_sent_at.unwrap(),
        m.redirect_confirmed_at.unwrap(),
    );
    assert!(
        confirmed - sent >= delay,
        "confirmed {:?} after sending, barrier delay {delay:?}",
        confirmed - sent
    );
    assert!(m.migration.is_some() && m.finished_at.is_some());

    let s = c.api.status().unwrap();
    assert_eq!(s.groups[0].owner, InstanceId(2));
    assert_eq!(s.switch_datapath_id, Some(DPID));
    assert_eq!(
        s.nodes[&InstanceId(1)]
            .status
            .as_ref()
            .unwrap()
            .counters
            .io
            .rx_packets,
        100
    );

    // The report is the source's, proxied.
    let report = c.api.report(0).unwrap();
    assert_eq!(report["max_freeze_ms"], 1.5);
    assert_eq!(api_status(c.api.report(5).unwrap_err()), 404);

    // Switch statistics arrive every second.
    let sw = wait_until("switch statistics", WAIT, || {
        let sw = c.api.switch().ok()?;
        (sw.stats_at_s.is_some() && !sw.flows.is_empty() && !sw.ports.is_empty()).then_some(sw)
    });
    assert!(sw.connected && sw.synced, "{sw:?}");
    assert_eq!(sw.flows.len(), 8);
    assert!(sw.flows.iter().all(|f| f.packets == 7 && f.bytes == 700));
    assert_eq!(sw.flows[0].priority, 300, "highest priority first");
    assert_eq!(sw.ports[0].tx_packets, 20);
    assert_eq!((sw.counters.errors, sw.counters.batches_failed), (0, 0));
    assert_eq!(sw.counters.batches_confirmed, 2, "install + redirect");

    // It can move back.
    c.api.migrate(&migrate(1)).unwrap();
    wait_stage(&c, 1, Stage::Done);
    assert_eq!(switch.steering_outputs(), vec![(3, MAC1), (3, MAC1)]);
    let counters = c.api.counters().unwrap();
    assert_eq!(counters.requests_timed_out, 0);
    assert_eq!(counters.nodes_accepted, 2);
}

#[test]
fn a_flow_mod_error_is_not_taken_as_confirmation() {
    let of = TempDir::new("of");
    let c = start_controller(config(&of.sock("of.sock"), "127.0.0.1:0", "127.0.0.1:0"));
    let log = Log::default();
    let switch = FakeSwitch::connect(
        &c.openflow,
        SwitchOptions {
            fail_modifies: 1,
            ..SwitchOptions::default()
        },
        log.clone(),
    );
    let _n1 = FakeNode::spawn(&c, 1, MAC1, NodeOptions::default(), log.clone());
    let _n2 = FakeNode::spawn(&c, 2, MAC2, NodeOptions::default(), log.clone());
    wait_ready(&c);
    c.api.migrate(&migrate(2)).unwrap();
    wait_stage(&c, 0, Stage::Done);
    // The error came back before the barrier reply; the controller re-sent the table and
    // only that barrier let the cutover through.
    let error = log.find("switch error", 0).expect("error sent");
    let first_barrier = log.find("switch barrier reply", error).unwrap();
    let resync = log
        .find("switch Add", first_barrier)
        .expect("table re-sent");
    let second_barrier = log.find("switch barrier reply", resync).unwrap();
    let cutover = log.find("node 1 cutover done", 0).unwrap();
    assert!(second_barrier < cutover, "{:?}", log.entries());
    assert_eq!(switch.steering_outputs(), vec![(4, MAC2), (4, MAC2)]);
    let sw = c.api.switch().unwrap();
    assert_eq!(
        (
            sw.counters.errors,
            sw.counters.batches_failed,
            sw.counters.resyncs
        ),
        (1, 1, 1)
    );
    assert_eq!(sw.recent_errors.len(), 1);
    assert!(
        sw.recent_errors[0].contains("ModifyStrict prio=200"),
        "{:?}",
        sw.recent_errors
    );
}

#[test]
fn a_switch_that_reconnects_gets_the_whole_table_and_confirms_the_redirect() {
    let of = TempDir::new("of");
    let c = start_controller(config(&of.sock("of.sock"), "127.0.0.1:0", "127.0.0.1:0"));
    let log = Log::default();
    let first = FakeSwitch::connect(
        &c.openflow,
        SwitchOptions {
            hang_up_on_modify: true,
            ..SwitchOptions::default()
        },
        log.clone(),
    );
    let _n1 = FakeNode::spawn(&c, 1, MAC1, NodeOptions::default(), log.clone());
    let _n2 = FakeNode::spawn(&c, 2, MAC2, NodeOptions::default(), log.clone());
    wait_ready(&c);
    c.api.migrate(&migrate(2)).unwrap();
    wait_stage(&c, 0, Stage::Redirecting);
    wait_until("switch gone", WAIT, || {
        (!c.api.switch().ok()?.connected).then_some(())
    });
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        c.api.migrations().unwrap()[0].stage,
        Stage::Redirecting,
        "no switch, no cutover"
    );
    assert!(log.find("node 1 cutover done", 0).is_none());
    let second = FakeSwitch::connect(&c.openflow, SwitchOptions::default(), log.clone());
    wait_stage(&c, 0, Stage::Done);
    assert_eq!(second.steering_outputs(), vec![(4, MAC2), (4, MAC2)]);
    let sw = c.api.switch().unwrap();
    assert_eq!((sw.counters.connects, sw.counters.disconnects), (2, 1));
}

#[test]
fn nodes_are_checked_and_misbehaving_ones_disconnected() {
    let of = TempDir::new("of");
    let c = start_controller(config(&of.sock("of.sock"), "127.0.0.1:0", "127.0.0.1:0"));
    let log = Log::default();
    let _switch = FakeSwitch::connect(&c.openflow, SwitchOptions::default(), log.clone());

    // Unknown id and wrong MAC: refused (the controller closes the connection).
    let _stranger = FakeNode::spawn(&c, 9, MAC1, NodeOptions::default(), log.clone());
    let _impostor = FakeNode::spawn(&c, 2, MAC1, NodeOptions::default(), log.clone());
    wait_until("refusals", WAIT, || {
        let e = log.entries();
        (e.contains(&"node 9 closed by controller".to_owned())
            && e.contains(&"node 2 closed by controller".to_owned()))
        .then_some(())
    });
    assert_eq!(c.api.counters().unwrap().nodes_refused, 2);

    // A migration to a node that is not connected is refused up front.
    let n1 = FakeNode::spawn(&c, 1, MAC1, NodeOptions::default(), log.clone());
    wait_until("node 1 up", WAIT, || {
        c.api.status().ok()?.nodes[&InstanceId(1)]
            .connected
            .then_some(())
    });
    let e = c.api.migrate(&migrate(2)).unwrap_err();
    assert!(
        e.to_string()
            .contains("destination node 2 is not connected"),
        "{e}"
    );

    // A malformed line closes that connection only.
    let mut raw = connect_tls(&c.nodes, Party::Node(2));
    raw.write_all(br#"{"type":"hello","id":2,"mac":[2,245,0,0,0,2],"groups":[]}"#)
        .unwrap();
    raw.write_all(b"\n").unwrap();
    wait_until("node 2 up", WAIT, || {
        c.api.status().ok()?.nodes[&InstanceId(2)]
            .connected
            .then_some(())
    });
    raw.write_all(b"{not json\n").unwrap();
    wait_until("node 2 dropped", WAIT, || {
        (!c.api.status().ok()?.nodes[&InstanceId(2)].connected).then_some(())
    });
    let mut rest = Vec::new();
    let closed = wait_until("connection closed", WAIT, || {
        match raw.read_to_end(&mut rest) {
            Ok(_) => Some(true),
            Err(e) if would_block(&e) => None,
            Err(_) => Some(true), // reset, or a TLS stream cut without close_notify
        }
    });
    assert!(closed);
    let counters = c.api.counters().unwrap();
    assert_eq!(counters.node_lines_malformed, 1);
    assert!(
        c.api.status().unwrap().nodes[&InstanceId(1)].connected,
        "others unaffected"
    );

    // A node that refuses to start: the migration is abandoned, the group stays.
    drop(n1);
    let _n1 = FakeNode::spawn(
        &c,
        1,
        MAC1,
        NodeOptions {
            fail_start: true,
            ..NodeOptions::default()
        },
        log.clone(),
    );
    let _n2 = FakeNode::spawn(&c, 2, MAC2, NodeOptions::default(), log.clone());
    wait_ready(&c);
    c.api.migrate(&migrate(2)).unwrap();
    wait_stage(&c, 0, Stage::Aborted);
    let s = c.api.status().unwrap();
    assert_eq!(s.groups[0].owner, InstanceId(1));
    assert_eq!(
        api_status(c.api.report(0).unwrap_err()),
        409,
        "never started: no report"
    );
    assert_eq!(c.api.counters().unwrap().requests_failed, 1);
}

/// Waits for `what` in the log.
fn wait_log(log: &Log, what: &str) {
    wait_until(what, WAIT, || log.find(what, 0).map(|_| ()));
}

#[test]
fn a_node_is_the_id_its_certificate_names_and_impostors_never_displace_it() {
    let of = TempDir::new("of");
    let c = start_controller(config(&of.sock("of.sock"), "127.0.0.1:0", "127.0.0.1:0"));
    let log = Log::default();
    let _switch = FakeSwitch::connect(&c.openflow, SwitchOptions::default(), log.clone());
    let _n1 = FakeNode::spawn(&c, 1, MAC1, NodeOptions::default(), log.clone());
    wait_until("node 1 up", WAIT, || {
        c.api.status().ok()?.nodes[&InstanceId(1)]
            .connected
            .then_some(())
    });

    // Node 2's valid certificate claiming id 1 (with node 1's MAC): refused before the core
    // sees it, counted, closed; node 1 keeps its connection.
    let _impostor = FakeNode::spawn(
        &c,
        1,
        MAC1,
        NodeOptions {
            cert_of: Some(2),
            ..NodeOptions::default()
        },
        log.clone(),
    );
    wait_log(&log, "node 1 closed by controller");
    // Node 9's certificate is valid and names node 9, but node 9 is not in cluster.toml.
    let _stranger = FakeNode::spawn(&c, 9, MAC2, NodeOptions::default(), log.clone());
    wait_log(&log, "node 9 closed by controller");
    let counters = c.api.counters().unwrap();
    assert_eq!(counters.nodes_refused_auth, 1, "{counters:?}");
    assert_eq!(counters.nodes_refused, 1, "{counters:?}");
    assert_eq!(counters.nodes_accepted, 1, "{counters:?}");
    assert_eq!(
        (
            counters.node_disconnects,
            counters.node_connections_replaced
        ),
        (0, 0),
        "the live node was not displaced: {counters:?}"
    );
    assert!(c.api.status().unwrap().nodes[&InstanceId(1)].connected);

    // No client certificate; a client that does not speak TLS; another CA's certificate.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        let pem = std::fs::read(pki().files(Party::Controller).ca).unwrap();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            r.add(cert.unwrap()).unwrap();
        }
        r
    };
    #[allow(deprecated)]
    let no_cert = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let flowshift_controller::Endpoint::Tcp(addr) = &c.nodes else {
        unreachable!()
    };
    let tcp = std::net::TcpStream::connect(addr.as_str()).unwrap();
    // TLS 1.3: the client finishes first; the server's refusal shows on the first read.
    let refused = flowshift_trust::split::connect(
        tcp,
        Arc::new(no_cert),
        flowshift_trust::server_name(flowshift_trust::CONTROLLER_NAME).unwrap(),
        WAIT,
    )
    .and_then(|(conn, tcp)| {
        let mut s = rustls::StreamOwned::new(conn, tcp);
        s.write_all(b"{\"type\":\"hello\",\"id\":1,\"mac\":[2,245,0,0,0,1],\"groups\":[]}\n")?;
        s.flush()?;
        let mut b = [0u8; 64];
        s.sock.set_read_timeout(Some(WAIT))?;
        match s.read(&mut b)? {
            0 => Err(std::io::Error::other("closed")),
            _ => Ok(()),
        }
    });
    assert!(
        refused.is_err(),
        "a connection without a client certificate"
    );
    let mut plain = connect(&c.nodes);
    plain
        .write_all(b"{\"type\":\"hello\",\"id\":1,\"mac\":[2,245,0,0,0,1],\"groups\":[]}\n")
        .unwrap();
    let other_ca = flowshift_trust::pki::ScratchPki::new(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")),
        &[Party::Node(1)],
    )
    .unwrap();
    let foreign = flowshift_trust::Credentials::load(&other_ca.files(Party::Node(1))).unwrap();
    assert!(
        try_connect_tls(&c.nodes, &foreign).is_err(),
        "another CA's node 1 (the controller's certificate is unknown to it, too)"
    );
    let counters = wait_until("TLS refusals counted", WAIT, || {
        let k = c.api.counters().ok()?;
        (k.nodes_refused_tls >= 3).then_some(k)
    });
    assert_eq!(counters.nodes_refused_tls, 3, "{counters:?}");
    assert_eq!(counters.node_disconnects, 0, "{counters:?}");
    let s = c.api.status().unwrap();
    assert!(s.nodes[&InstanceId(1)].connected && !s.nodes[&InstanceId(2)].connected);

    // A second authenticated connection for node 1 (only its key can make one, e.g. a
    // restarted node) replaces the first.
    let _n1_again = FakeNode::spawn(&c, 1, MAC1, NodeOptions::default(), log.clone());
    let counters = wait_until("node 1 replaced", WAIT, || {
        let k = c.api.counters().ok()?;
        (k.node_connections_replaced == 1).then_some(k)
    });
    assert_eq!(
        (counters.nodes_accepted, counters.node_disconnects),
        (2, 1),
        "{counters:?}"
    );
    wait_until("node 1 up again", WAIT, || {
        c.api.status().ok()?.nodes[&InstanceId(1)]
            .connected
            .then_some(())
    });
}

#[test]
fn a_pinned_controller_refuses_a_rogue_switch_and_keeps_the_legitimate_one() {
    let dpid = format!("datapath_id = \"{DPID:#x}\"");
    let of = TempDir::new("of");
    let c = start_controller(config_with(
        &of.sock("of.sock"),
        "127.0.0.1:0",
        "127.0.0.1:0",
        "",
        &dpid,
    ));
    let log = Log::default();
    let switch = FakeSwitch::connect(&c.openflow, SwitchOptions::default(), log.clone());
    let _n1 = FakeNode::spawn(&c, 1, MAC1, NodeOptions::default(), log.clone());
    let _n2 = FakeNode::spawn(&c, 2, MAC2, NodeOptions::default(), log.clone());
    wait_ready(&c);
    let before = c.api.switch().unwrap();
    assert!(before.connected && before.synced);

    // A rogue OpenFlow client on the socket: the real codec, another datapath id.
    let rogue = FakeSwitch::connect(
        &c.openflow,
        SwitchOptions {
            datapath_id: Some(0xbad),
            ..SwitchOptions::default()
        },
        log.clone(),
    );
    wait_log(&log, "switch 0xbad closed by controller");
    let sw = c.api.switch().unwrap();
    assert_eq!(sw.counters.refused_datapath_id, 1, "{sw:?}");
    assert_eq!((sw.counters.connects, sw.counters.disconnects), (1, 0));
    assert!(sw.connected && sw.synced, "{sw:?}");
    assert_eq!(sw.peer, before.peer, "the legitimate switch keeps its role");
    assert_eq!(sw.datapath_id, Some(DPID));
    assert!(
        rogue.table.lock().unwrap().is_empty(),
        "the rogue switch got no flow"
    );
    assert!(
        sw.recent_errors
            .iter()
            .any(|e| e.contains("0x0000000000000bad"))
    );

    // The legitimate switch still carries a migration.
    c.api.migrate(&migrate(2)).unwrap();
    wait_stage(&c, 0, Stage::Done);
    assert_eq!(switch.steering_outputs(), vec![(4, MAC2), (4, MAC2)]);
    assert!(log.find("switch 0xfa0002 closed", 0).is_none());
}

#[test]
fn with_openflow_tls_only_the_switch_certificate_may_connect() {
    let c = start_controller(config_with(
        "127.0.0.1:0",
        "127.0.0.1:0",
        "127.0.0.1:0",
        "openflow_tls = true",
        "",
    ));
    let log = Log::default();
    // Plain OpenFlow and a node's certificate are refused.
    let plain = FakeSwitch::connect(&c.openflow, SwitchOptions::default(), log.clone());
    let node_cert = FakeSwitch::connect(
        &c.openflow,
        SwitchOptions {
            datapath_id: Some(0xbad),
            tls: Some(Party::Node(1)),
            ..SwitchOptions::default()
        },
        log.clone(),
    );
    wait_log(&log, "switch 0xfa0002 closed by controller");
    wait_log(&log, "switch 0xbad closed by controller");
    drop((plain, node_cert));
    let counters = c.api.counters().unwrap();
    assert_eq!(counters.switch_refused_tls, 2, "{counters:?}");
    assert!(!c.api.switch().unwrap().connected);
    let switch = FakeSwitch::connect(
        &c.openflow,
        SwitchOptions {
            tls: Some(Party::Switch),
            ..SwitchOptions::default()
        },
        log.clone(),
    );
    let _n1 = FakeNode::spawn(&c, 1, MAC1, NodeOptions::default(), log.clone());
    let _n2 = FakeNode::spawn(&c, 2, MAC2, NodeOptions::default(), log.clone());
    wait_ready(&c);
    c.api.migrate(&migrate(2)).unwrap();
    wait_stage(&c, 0, Stage::Done);
    assert_eq!(switch.steering_outputs(), vec![(4, MAC2), (4, MAC2)]);
    assert_eq!(c.api.counters().unwrap().switch_refused_tls, 2);
}
