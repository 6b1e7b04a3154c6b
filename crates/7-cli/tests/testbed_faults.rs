//! Process faults on the testbed (root; CI runs it): a UDP probe stream through group
//! 198.18.0.1 runs throughout while
//!
//! 1. a migration of the group to node 2 is requested with a long idle phase and the
//!    controller is killed with SIGKILL and restarted (`flowshift testbed kill controller
//!    --restart`) before the redirect: the restarted controller starts with the group on
//!    node 1 (its state file says so); when the source, having handed its state over, waits
//!    for a cutover, the controller adopts the migration and finishes it forward (the group
//!    ends on node 2, `migrations_adopted` counts it);
//! 2. node 2, the group's owner now, is killed: the controller refuses migrations away from
//!    it (409, not connected); `flowshift migrate --rehome --to 1` gives the group to node 1
//!    without a transfer (the sessions node 2 held are lost and reported);
//! 3. node 2 is restarted and the group migrates to it again;
//!
//! and every probe sent from 3 s after the re-homing on comes back.
//!
//! Skips with a message when not root.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

const PROBE_PORT: &str = "7002";
const PROBE_RATE: u64 = 200;
const PROBE_SECONDS: u64 = 40;

fn ok(args: &[&str]) -> Output {
    let o = flowshift(args);
    assert!(
        o.status.success(),
        "flowshift {}: {}",
        args.join(" "),
        text(&o)
    );
    o
}

struct Cluster {
    controller: String,
    token_file: String,
}

impl Cluster {
    fn status(&self) -> Option<Value> {
        status(&self.controller, &self.token_file)
    }

    fn owner(s: &Value) -> Option<u64> {
        s["groups"]
            .as_array()?
            .iter()
            .find(|g| g["external"] == "198.18.0.1")?["owner"]
            .as_u64()
    }

    fn connected(s: &Value, node: u16) -> bool {
        s["nodes"][node.to_string()]["connected"] == true
    }

    fn migrate(&self, to: &str, params: &str, wait: bool) -> Output {
        let mut args = vec![
            "migrate",
            "--group",
            "198.18.0.1",
            "--to",
            to,
            "--algorithm",
            "freeze-copy",
            "--params",
            params,
            "--json",
            "--controller",
            &self.controller,
            "--token-file",
            &self.token_file,
        ];
        if wait {
            args.extend(["--wait", "--wait-timeout", "30"]);
        }
        flowshift(&args)
    }
}

const QUICK: &str = r#"{"idle_sample_interval": 100, "idle_window_samples": 2, "idle_max": 400}"#;
/// An idle phase that lasts `idle_max` (a zero rate threshold is never undercut).
const SLOW_IDLE: &str = r#"{"idle_sample_interval": 500, "idle_window_samples": 2, "idle_rate_threshold": 0.0, "idle_max": 8000}"#;

#[test]
fn controller_and_node_crashes_have_defined_outcomes() {
    if !is_root() {
        eprintln!(
            "SKIP testbed fault test: needs root (network namespaces, Open vSwitch); CI runs it as root"
        );
        return;
    }
    let up = flowshift(&["testbed", "up", "--nodes", "2", "--preload", "0"]);
    let run = Run {
        id: run_id(&up),
        down: false,
    };
    let dir = format!("/run/flowshift/testbed-{}", run.id);
    let prefix = format!("fs{}-", run.id);
    let c = Cluster {
        controller: format!("unix:{dir}/api.sock"),
        token_file: format!("{dir}/api.token"),
    };
    let (sub, srv) = (format!("{prefix}sub"), format!("{prefix}srv"));
    let probes = PROBE_RATE * PROBE_SECONDS;
    let probe_out = Path::new(&dir).join("ci-fault-probe.json");
    let mut echo = probe_echo(
        &srv,
        &format!("203.0.113.11:{PROBE_PORT}"),
        PROBE_SECONDS + 20,
        Some(probes),
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut prober = probe_sender(
        &sub,
        "100.64.0.7",
        &format!("203.0.113.11:{PROBE_PORT}"),
        PROBE_RATE,
        probes,
        &probe_out,
    );
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();

    // 1. The controller crashes during the idle phase of a migration.
    let m = c.migrate("2", SLOW_IDLE, false);
    assert!(m.status.success(), "migrate: {}", text(&m));
    std::thread::sleep(Duration::from_millis(500));
    let k = ok(&[
        "testbed",
        "kill",
        "controller",
        "--restart",
        "--run",
        &run.id,
    ]);
    eprintln!("{}", String::from_utf8_lossy(&k.stdout).trim());
    let s = wait_for(
        "the restarted controller with both nodes",
        Duration::from_secs(30),
        || {
            c.status()
                .filter(|s| Cluster::connected(s, 1) && Cluster::connected(s, 2))
        },
    );
    assert_eq!(
        Cluster::owner(&s),
        Some(1),
        "the restarted controller starts from its state file: {s}"
    );
    wait_for(
        "the orphaned migration finished forward",
        Duration::from_secs(30),
        || c.status().filter(|s| Cluster::owner(s) == Some(2)),
    );
    let counters = ok(&[
        "status",
        "--json",
        "--counters",
        "--controller",
        &c.controller,
        "--token-file",
        &c.token_file,
    ]);
    let counters: Value = serde_json::from_slice(&counters.stdout).expect("counters JSON");
    assert_eq!(counters["migrations_adopted"], 1, "{counters}");
    wait_for(
        "the adopted migration done",
        Duration::from_secs(20),
        || {
            let s = c.status()?;
            let done = s["migrations"]
                .as_array()?
                .iter()
                .all(|m| m["stage"] == "done" || m["stage"] == "aborted");
            done.then_some(())
        },
    );

    // 2. Node 2, the group's owner now, dies: migrations to it are refused; the operator
    //    re-homes its group to node 1 (the sessions it held are lost and reported).
    ok(&["testbed", "kill", "node2", "--run", &run.id]);
    wait_for(
        "the controller sees node 2 gone",
        Duration::from_secs(10),
        || c.status().filter(|s| !Cluster::connected(s, 2)),
    );
    let refused = c.migrate("1", QUICK, false);
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("not connected"),
        "a migration away from a dead node is refused: {}",
        text(&refused)
    );
    let rehome = ok(&[
        "migrate",
        "--group",
        "198.18.0.1",
        "--to",
        "1",
        "--rehome",
        "--controller",
        &c.controller,
        "--token-file",
        &c.token_file,
    ]);
    let rehome: Value = serde_json::from_slice(&rehome.stdout).expect("rehome JSON");
    assert_eq!(
        (rehome["from"].as_u64(), rehome["to"].as_u64()),
        (Some(2), Some(1)),
        "{rehome}"
    );
    eprintln!("re-homed: {rehome}");
    let s = c.status().expect("status");
    assert_eq!(Cluster::owner(&s), Some(1));
    let after_rehome = t0.elapsed();

    // 3. Node 2 comes back and the group moves to it again, loss-free.
    ok(&["testbed", "kill", "node2", "--restart", "--run", &run.id]);
    wait_for("node 2 back", Duration::from_secs(20), || {
        c.status().filter(|s| Cluster::connected(s, 2))
    });
    let again = wait_for(
        "a migration to the restarted node 2",
        Duration::from_secs(30),
        || {
            let m = c.migrate("2", QUICK, true);
            if !m.status.success() {
                let err = String::from_utf8_lossy(&m.stderr).into_owned();
                eprintln!("not yet: {}", err.lines().next().unwrap_or(""));
                std::thread::sleep(Duration::from_secs(1));
            }
            m.status.success().then_some(m)
        },
    );
    let again: Value = serde_json::from_slice(&again.stdout).expect("migrate --json");
    assert_eq!(again["status"]["stage"], "done", "{again}");

    // The probe stream: the subscriber's flow survived both crashes.
    let _ = prober.wait();
    let _ = echo.kill();
    let _ = echo.wait();
    let probe: Value =
        serde_json::from_str(&std::fs::read_to_string(&probe_out).expect("probe record"))
            .expect("probe record is JSON");
    let replies = probe["replies"].as_array().expect("replies");
    let mut seen = vec![false; probes as usize];
    for r in replies {
        if let Some(seq) = r[0].as_u64() {
            seen[seq as usize] = true;
        }
    }
    let lost = seen.iter().filter(|&&s| !s).count();
    // Probes sent from 3 s after the re-homing on (the migration to the restarted node 2
    // included) all came back.
    let last = ((after_rehome.as_secs() + 3) * PROBE_RATE) as usize;
    let lost_late = seen[last.min(seen.len())..].iter().filter(|&&s| !s).count();
    eprintln!(
        "testbed {}: {probes} probes, {lost} lost in all, {lost_late} lost after the recoveries",
        run.id
    );
    assert_eq!(lost_late, 0, "the subscriber's flow did not recover");
}
