//! The short testbed test (root; CI runs it): `flowshift testbed up` with two nodes, real TCP
//! (iperf3) from the subscriber namespace through node 1, a freeze-copy migration of the group
//! to node 2 under that load through `flowshift migrate`, then checks from outside:
//!
//! * every iperf3 connection lived to the end and kept carrying data after the cutover;
//! * a UDP probe stream (1000/s, `flowshift probe send|echo`) from a subscriber of the group
//!   to an echo on the server side, running across the migration, lost no probe and none came
//!   back out of order (nor reached the echo out of order);
//! * the server link is shaped (`testbed up`'s default `--link-rate 1gbit`);
//! * the controller names node 2 as the group's owner and both nodes count no migration loss
//!   (`counters.losses`) and no NAT drop caused by the move;
//! * the switch reached the controller over mutual TLS (`testbed up --switch-tls`: an `ssl:`
//!   controller with the run's switch certificate, `openflow_tls` on the controller; the
//!   datapath id pinned), and the nodes over mutual TLS on 6700;
//! * `flowshift testbed down` leaves no namespace, process or state directory of the run.
//!
//! Skips with a message when not root.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// iperf3 port (distinct from the experiments' 5201.. range).
const PORT: &str = "5391";
/// Streams of the iperf3 client.
const STREAMS: usize = 4;
/// Seconds of iperf3 traffic; the migration starts after [`MIGRATE_AFTER`].
const SECONDS: u64 = 8;
const MIGRATE_AFTER: Duration = Duration::from_secs(2);
/// Probes per second, and the echo's port (the testbed's probe class).
const PROBE_RATE: u64 = 1000;
const PROBE_PORT: &str = "7001";

fn spawn_json(mut c: Command, out: &Path) -> Child {
    let f = std::fs::File::create(out).expect("output file");
    c.stdout(f).stderr(Stdio::null()).spawn().expect("spawns")
}

fn wait_listening(ns: &str, port: &str, flags: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = in_ns(ns, "ss", &[flags]).output().expect("ss runs");
        if String::from_utf8_lossy(&o.stdout).contains(&format!(":{port} ")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {port} in {ns}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One component of a node's counters (`losses`, `io`, `nat`, ...) in `status --json`.
fn counters(status: &Value, node: u16, component: &str) -> serde_json::Map<String, Value> {
    status["nodes"][node.to_string()]["status"]["counters"][component]
        .as_object()
        .cloned()
        .unwrap_or_else(|| panic!("no {component} counters of node {node} in {status}"))
}

fn counter(c: &serde_json::Map<String, Value>, name: &str) -> u64 {
    c.get(name).and_then(Value::as_u64).unwrap_or(0)
}

/// `flowshift status --json` with the token file named explicitly (`migrate` below finds it
/// through the testbed's state instead).
fn status_json(controller: &str, token_file: &str) -> Value {
    status(controller, token_file).expect("flowshift status --json")
}

#[test]
fn freeze_copy_under_iperf3_load_breaks_no_connection_and_leaves_nothing_behind() {
    if !is_root() {
        eprintln!(
            "SKIP testbed test: needs root (network namespaces, Open vSwitch); CI runs it as root"
        );
        return;
    }
    let up = flowshift(&[
        "testbed",
        "up",
        "--nodes",
        "2",
        "--preload",
        "2000",
        "--switch-tls",
    ]);
    let id = run_id(&up);
    let mut run = Run { id, down: false };
    let Names {
        prefix,
        dir,
        controller,
        token_file,
        sub,
        srv,
    } = Names::of(&run.id);

    let before = status_json(&controller, &token_file);
    let owner = |s: &Value| {
        s["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["external"] == "198.18.0.1"))
            .and_then(|g| g["owner"].as_u64())
    };
    assert_eq!(owner(&before), Some(1), "group 198.18.0.1 starts on node 1");
    // The switch is connected, and with this configuration only TLS with the switch's
    // certificate and the pinned datapath id could connect it.
    let cluster = std::fs::read_to_string(format!("{dir}/cluster.toml")).unwrap();
    assert!(
        cluster.contains("openflow_tls = true") && cluster.contains("datapath_id = "),
        "{cluster}"
    );
    assert!(before["switch_datapath_id"].as_u64().is_some(), "{before}");
    assert!(
        before["nodes"]
            .as_object()
            .is_some_and(|n| n.values().all(|n| n["connected"] == true)),
        "nodes connected over TLS: {before}"
    );

    // Real TCP through node 1.
    let server_out = Path::new(&dir).join("ci-iperf-server.json");
    let client_out = Path::new(&dir).join("ci-iperf-client.json");
    let mut server = spawn_json(
        in_ns(
            &srv,
            "timeout",
            &[
                "60",
                "iperf3",
                "-s",
                "-1",
                "-J",
                "-p",
                PORT,
                "-B",
                "203.0.113.10",
            ],
        ),
        &server_out,
    );
    wait_listening(&srv, PORT, "-Hltn");
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/state.json")).expect("state.json"),
    )
    .expect("state.json is JSON");
    assert!(
        state["link"]["rate_bps"].as_u64() == Some(1_000_000_000),
        "the server link is shaped to 1 Gbit/s: {}",
        state["link"]
    );
    // The probe stream: echo on the second server address, sender from a subscriber of the
    // migrated group (not one iperf3 uses), running as long as iperf3.
    let probes = PROBE_RATE * SECONDS;
    let probe_out = Path::new(&dir).join("ci-probe.json");
    let mut echo = probe_echo(
        &srv,
        &format!("203.0.113.11:{PROBE_PORT}"),
        40,
        Some(probes),
    );
    wait_listening(&srv, PROBE_PORT, "-Hlun");
    let mut prober = probe_sender(
        &sub,
        "100.64.0.8",
        &format!("203.0.113.11:{PROBE_PORT}"),
        PROBE_RATE,
        probes,
        &probe_out,
    );
    let (streams, seconds) = (STREAMS.to_string(), SECONDS.to_string());
    let mut client = spawn_json(
        in_ns(
            &sub,
            "timeout",
            &[
                "60",
                "iperf3",
                "-c",
                "203.0.113.10",
                "-p",
                PORT,
                "-B",
                "100.64.0.1",
                "-P",
                &streams,
                "-t",
                &seconds,
                "-i",
                "0.5",
                "-J",
                "--connect-timeout",
                "5000",
            ],
        ),
        &client_out,
    );
    std::thread::sleep(MIGRATE_AFTER);

    // The migration, under load.
    let m = flowshift(&[
        "migrate",
        "--group",
        "198.18.0.1",
        "--to",
        "2",
        "--algorithm",
        "freeze-copy",
        "--wait",
        "--wait-timeout",
        "60",
        "--params",
        r#"{"idle_sample_interval": 100, "idle_window_samples": 4, "idle_max": 1000}"#,
        "--json",
        "--controller",
        &controller,
    ]);
    assert!(m.status.success(), "flowshift migrate: {}", text(&m));
    let mig: Value = serde_json::from_slice(&m.stdout).expect("migrate --json is JSON");
    assert_eq!(mig["status"]["stage"], "done", "migration: {mig}");

    let st = client.wait().expect("client exits");
    let _ = server.wait();
    let ps = prober.wait().expect("probe sender exits");
    assert!(ps.success(), "probe sender exited with {ps}");
    let _ = echo.wait();
    let probe: Value =
        serde_json::from_str(&std::fs::read_to_string(&probe_out).expect("probe record"))
            .expect("probe record is JSON");
    let replies = probe["replies"].as_array().expect("replies");
    let mut seen = vec![false; probes as usize];
    let (mut unique, mut reordered, mut reordered_at_echo) = (0u64, 0u64, 0u64);
    let (mut max_seq, mut by_echo) = (None, Vec::new());
    for r in replies {
        let seq = r[0].as_u64().expect("seq");
        if std::mem::replace(&mut seen[seq as usize], true) {
            continue;
        }
        unique += 1;
        if max_seq.is_some_and(|m| seq < m) {
            reordered += 1;
        }
        max_seq = max_seq.max(Some(seq));
        by_echo.push((r[3].as_u64().expect("echo index"), seq));
    }
    by_echo.sort_unstable();
    let mut m = None;
    for &(_, seq) in &by_echo {
        if m.is_some_and(|m| seq < m) {
            reordered_at_echo += 1;
        }
        m = m.max(Some(seq));
    }
    assert_eq!(probe["sent"].as_u64(), Some(probes), "every probe sent");
    assert_eq!(
        probes - unique,
        0,
        "probes lost across the freeze-copy migration"
    );
    assert_eq!(reordered, 0, "probes came back out of order");
    assert_eq!(reordered_at_echo, 0, "probes reached the echo out of order");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&client_out).expect("client JSON"))
            .unwrap_or_else(|e| panic!("iperf3 client JSON: {e}"));
    assert!(
        report.get("error").is_none(),
        "an iperf3 connection failed: {}",
        report["error"]
    );
    assert!(st.success(), "iperf3 client exited with {st}");
    let ends = report["end"]["streams"].as_array().expect("end.streams");
    assert_eq!(ends.len(), STREAMS, "every stream reported");
    for s in ends {
        assert!(
            s["receiver"]["bytes"].as_u64().unwrap_or(0) > 0,
            "a stream carried nothing: {s}"
        );
    }
    // Data kept flowing after the cutover: the last intervals carried bytes on every stream.
    let intervals = report["intervals"].as_array().expect("intervals");
    assert!(
        intervals.len() >= 4,
        "too few intervals: {}",
        intervals.len()
    );
    for iv in &intervals[intervals.len() - 2..] {
        for s in iv["streams"].as_array().expect("interval streams") {
            assert!(
                s["bytes"].as_u64().unwrap_or(0) > 0,
                "a stream stalled after the migration: {iv}"
            );
        }
    }

    // Node statuses reach the controller every 500 ms.
    std::thread::sleep(Duration::from_millis(1300));
    let after = status_json(&controller, &token_file);
    assert_eq!(owner(&after), Some(2), "group 198.18.0.1 moved to node 2");
    for node in [1u16, 2] {
        let (c0, c1) = (
            counters(&before, node, "losses"),
            counters(&after, node, "losses"),
        );
        assert!(!c1.is_empty(), "node {node} reports its loss causes");
        for (cause, v) in &c1 {
            let delta = v.as_u64().unwrap_or(0).saturating_sub(counter(&c0, cause));
            assert_eq!(delta, 0, "node {node} counted migration loss {cause}");
        }
    }
    assert!(
        counter(&counters(&after, 2, "io"), "tx_packets")
            > counter(&counters(&before, 2, "io"), "tx_packets"),
        "node 2 forwarded nothing after the cutover"
    );
    eprintln!(
        "testbed {}: migration {}, {probes} probes none lost or reordered, iperf3 {:.0} Mbit/s received, {} retransmits",
        run.id,
        mig["status"]["stage"],
        report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e6,
        report["end"]["sum_sent"]["retransmits"]
    );

    // Down, and nothing left behind.
    let d = run.down();
    assert!(d.status.success(), "testbed down: {}", text(&d));
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let left: Vec<String> = String::from_utf8_lossy(&ns.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(!Path::new(&dir).exists(), "{dir} left behind");
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&dir) || c.contains(&prefix))
        .collect();
    assert!(procs.is_empty(), "processes left behind: {procs:?}");
}
