//! Elastic scale-out and scale-in on the testbed (root; CI runs it): `testbed up --nodes 1
//! --standby 1 --pool-groups 4` (node 2 prepared, not running; `[autoscale]` on, node
//! capacity [`CAPACITY_PPS`]). Load: one UDP probe stream per pool group from its subscriber
//! to an echo on the server side (base load, 0.2 of a node), plus a second stream per group
//! for a while (5x in all). Checks, on outcomes and counters only:
//!
//! * the surge makes the policy start node 2 (`testbed node start`, its process recorded) and
//!   move a group to it with freeze-copy; the fall makes it move the group back and stop
//!   node 2 (its process gone, the policy counts one scale-out and one scale-in);
//! * every policy migration is freeze-copy and done, its source's report counts no packet
//!   lost, and the nodes' loss counters stay at 0;
//! * every probe of every stream came back, none out of order (measured outside the NAT);
//! * `testbed down` removes the run (the standby node's namespace included).
//!
//! Skips with a message when not root or when Open vSwitch is not installed.

mod common;

use common::*;
use flowshift_lab::testbed::probe;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

/// Packets/s node capacity: the base load (4 groups x 50 probes/s x 2 packets) is 0.2 of it.
const CAPACITY_PPS: &str = "2000";
/// Probes/s per group at base load, and of the surge stream (4x: 5x in all).
const BASE_RATE: u64 = 50;
const SURGE_RATE: u64 = 200;
/// Groups of the pool.
const GROUPS: usize = 4;
/// Seconds of base load (covers the surge, the scale-out and the scale-in).
const BASE_SECONDS: u64 = 40;
/// Seconds of surge.
const SURGE_SECONDS: u64 = 10;
/// Probe echo (its own port: other tests use 7001/7002).
const ECHO: &str = "203.0.113.11:7003";
/// Subscriber host of pool group `i` (100.96.0.0/16 in `GROUPS` slices).
fn host(i: usize) -> String {
    format!("100.96.{}.1", i * (256 / GROUPS))
}

fn sender(sub: &str, dir: &str, name: &str, i: usize, rate: u64, secs: u64) -> (Child, PathBuf) {
    let out = Path::new(dir).join(format!("ci-elastic-{name}-{i}.json"));
    let c = probe_sender(sub, &host(i), ECHO, rate, rate * secs, &out);
    (c, out)
}

fn policy(s: &Value, counter: &str) -> u64 {
    s["autoscale"]["counters"][counter].as_u64().unwrap_or(0)
}

/// The sum of a node's loss counters in a status (0 when it does not report).
fn losses(s: &Value, node: u16) -> u64 {
    s["nodes"][node.to_string()]["status"]["counters"]["losses"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
}

fn node2_recorded(dir: &str) -> bool {
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/state.json")).expect("state.json"),
    )
    .expect("state.json is JSON");
    state["processes"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["name"] == "node2"))
}

#[test]
fn a_surge_scales_out_onto_the_standby_node_and_the_fall_scales_back_in() {
    if !is_root() {
        eprintln!(
            "SKIP elastic testbed test: needs root (network namespaces, Open vSwitch); CI runs it as root"
        );
        return;
    }
    let has = |p: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).exists()))
    };
    if !has("ovs-vswitchd") && !has("apt-get") {
        eprintln!("SKIP elastic testbed test: Open vSwitch is not installed (nor apt-get)");
        return;
    }
    let groups = GROUPS.to_string();
    let (mut run, n) = up_run(&[
        "--nodes",
        "1",
        "--standby",
        "1",
        "--pool-groups",
        &groups,
        "--capacity-pps",
        CAPACITY_PPS,
        "--preload",
        "0",
        "--link-rate",
        "off",
    ]);
    let (dir, sub, srv) = (&n.dir, &n.sub, &n.srv);
    let (controller, token_file) = (&n.controller, &n.token_file);
    let st = || status(controller, token_file);

    let before = st().expect("status");
    assert_eq!(
        before["nodes"]["2"]["connected"], false,
        "node 2 is standby"
    );
    assert!(!node2_recorded(dir), "node 2's process does not run");
    assert_eq!(before["autoscale"]["enabled"], true, "{before}");

    let mut echo = probe_echo(srv, ECHO, 120, None);
    wait_for("the echo", Duration::from_secs(10), || {
        let o = in_ns(srv, "ss", &["-Hlun"]).output().ok()?;
        String::from_utf8_lossy(&o.stdout)
            .contains(":7003 ")
            .then_some(())
    });
    let mut streams: Vec<(Child, PathBuf)> = (0..GROUPS)
        .map(|i| sender(sub, dir, "base", i, BASE_RATE, BASE_SECONDS))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    streams.extend((0..GROUPS).map(|i| sender(sub, dir, "surge", i, SURGE_RATE, SURGE_SECONDS)));

    // Scale-out: node 2 started, a group moved to it.
    let mut node2_losses = 0;
    let out = wait_for("the scale-out", Duration::from_secs(30), || {
        let s = st()?;
        node2_losses = node2_losses.max(losses(&s, 2));
        let on2 = s["groups"].as_array()?.iter().any(|g| g["owner"] == 2);
        (policy(&s, "scale_outs") == 1 && on2).then_some(s)
    });
    assert!(node2_recorded(dir), "node 2 runs as a recorded process");
    assert_eq!(out["nodes"]["2"]["connected"], true);
    // Scale-in after the fall: the group back on node 1, node 2 stopped.
    let fin = wait_for("the scale-in", Duration::from_secs(40), || {
        let s = st()?;
        node2_losses = node2_losses.max(losses(&s, 2));
        (policy(&s, "scale_ins") == 1 && !node2_recorded(dir)).then_some(s)
    });
    let groups = fin["groups"].as_array().expect("groups");
    assert!(groups.iter().all(|g| g["owner"] == 1), "{groups:?}");
    wait_for("node 2 to disconnect", Duration::from_secs(10), || {
        (st()?["nodes"]["2"]["connected"] == false).then_some(())
    });

    // Every stream ran to its end: every probe back, in order.
    let (mut sent, mut lost, mut reordered) = (0, 0, 0);
    for (c, out) in &mut streams {
        let e = c.wait().expect("sender exits");
        assert!(e.success(), "probe sender exited with {e}");
        let a = probe::analyse(&probe::read_record(out).expect("probe record"), 0);
        sent += a.sent;
        lost += a.lost;
        reordered += a.reordered;
    }
    let _ = echo.kill();
    let _ = echo.wait();
    let expected = GROUPS as u64 * (BASE_RATE * BASE_SECONDS + SURGE_RATE * SURGE_SECONDS);
    assert_eq!(sent, expected, "every probe sent");
    assert_eq!(
        lost, 0,
        "probes lost (of {sent}) across scale-out and scale-in"
    );
    assert_eq!(reordered, 0, "probes came back out of order");

    // The policy's migrations: freeze-copy, done, nothing lost.
    let end = st().expect("status");
    let ms = end["migrations"].as_array().expect("migrations");
    let token = flowshift_controller::Token::load(Path::new(&token_file)).expect("token");
    let api = flowshift_controller::ApiClient::new(controller.parse().expect("endpoint"))
        .with_token(Some(token));
    assert!(ms.len() >= 2, "a migration out and one back: {ms:?}");
    let mut reports = 0;
    for (i, m) in ms.iter().enumerate() {
        assert_eq!(m["algorithm"], "freeze-copy", "{m}");
        assert_eq!(m["stage"], "done", "{m}");
        // The source's report, while the source runs (node 2's final counters below).
        if m["from"] == 1 {
            let rep = api.report(i).expect("the source's report");
            let lost: u64 = rep["packets_lost_by_cause"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
            assert_eq!(lost, 0, "migration {i} lost packets: {rep}");
            reports += 1;
        }
    }
    assert!(reports >= 1, "the scale-out's report");
    // The controller keeps a stopped node's last status: the policy stops a node only after
    // its final one arrived.
    assert!(
        end["nodes"]["2"]["status"].is_object(),
        "node 2's last status"
    );
    assert_eq!(losses(&end, 1), 0, "node 1 counted migration losses");
    let node2_losses = node2_losses.max(losses(&end, 2));
    assert_eq!(node2_losses, 0, "node 2 counted migration losses");
    assert_eq!(policy(&end, "migrations_failed"), 0, "{}", end["autoscale"]);
    eprintln!(
        "testbed {}: {} migrations, {sent} probes none lost or reordered, policy {}",
        run.id,
        ms.len(),
        end["autoscale"]["counters"]
    );

    let d = run.down();
    assert!(d.status.success(), "testbed down: {}", text(&d));
    assert!(!Path::new(dir).exists(), "{dir} left behind");
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&n.prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
