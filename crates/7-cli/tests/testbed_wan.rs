//! The testbed's wide-area link (root; CI runs it): `testbed up --wan-rtt-ms 20` puts node 2's
//! management interface behind a 20 ms round trip. Checked without timing the machine: no
//! ping from node 1 to node 2 across the management network comes back in less than the added
//! round trip (a lower bound the delay line guarantees), pings to the controller do not cross
//! it, the delay line counts the frames it relayed, and a freeze-copy migration to node 2
//! completes across it without loss.
//!
//! Skips with a message when not root.

mod common;

use common::*;

#[test]
fn a_node_behind_the_wide_area_link_is_20_ms_away_and_still_migrates() {
    if !is_root() {
        eprintln!(
            "SKIP testbed wide-area test: needs root (network namespaces, Open vSwitch); CI runs it as root"
        );
        return;
    }
    let up = flowshift(&[
        "testbed",
        "up",
        "--nodes",
        "2",
        "--preload",
        "1000",
        "--link-rate",
        "off",
        "--wan-rtt-ms",
        "20",
        "--wan-rate-mbit",
        "50",
    ]);
    let mut run = Run {
        id: run_id(&up),
        down: false,
    };
    let n1 = format!("fs{}-n1", run.id);
    let ping = |to: &str| {
        let o = in_ns(&n1, "ping", &["-c", "5", "-i", "0.2", "-W", "3", to])
            .output()
            .expect("ping runs");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "ping {to}: {}", text(&o));
        // "rtt min/avg/max/mdev = 20.4/…": the minimum.
        out.lines()
            .find_map(|l| {
                l.split(" = ")
                    .nth(1)?
                    .split('/')
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no rtt line: {out}"))
    };
    let far = ping("198.19.0.12");
    assert!(
        far >= 20.0,
        "node 2 answered in {far} ms, under the 20 ms added"
    );
    let near = ping("198.19.0.1");
    assert!(
        near < 20.0,
        "the controller is {near} ms away: not behind the link"
    );

    let dir = format!("/run/flowshift/testbed-{}", run.id);
    let mig = flowshift(&[
        "migrate",
        "--controller",
        &format!("unix:{dir}/api.sock"),
        "--token-file",
        &format!("{dir}/api.token"),
        "--group",
        "198.18.0.1",
        "--to",
        "2",
        "--algorithm",
        "freeze-copy",
        "--wait",
    ]);
    let m = text(&mig);
    assert!(mig.status.success(), "migrate: {m}");
    assert!(m.contains("lost packets: 0"), "{m}");
    let stats: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{dir}/wan-relay2.json")).expect("the delay line's counters"),
    )
    .expect("counters are JSON");
    for d in ["a_to_b", "b_to_a"] {
        assert!(stats[d]["frames"].as_u64().unwrap_or(0) > 10, "{stats}");
        assert_eq!(stats[d]["send_errors"], 0, "{stats}");
    }
    let down = run.down();
    assert!(down.status.success(), "down: {}", text(&down));
}
