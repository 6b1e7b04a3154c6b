//! `flowshift experiment fig1c --testbed`: the poster's experiment on real packets.
//!
//! Per algorithm, on a fresh testbed (2 nodes, `--states` pre-loaded on group 198.18.0.1 of
//! node 1, plain userspace datapath, about 1 Gbit/s):
//!
//! 1. one iperf3 server per port in the server namespace; `--flows` TCP flows from the
//!    subscriber namespace in clients of at most 25 streams, each from its own subscriber
//!    address of the group, with 100 ms JSON intervals; a 100 Hz ping (ICMP through the same
//!    group) measures the round-trip time;
//! 2. at `--migrate-at` the group moves to node 2 through the controller's API (`POST
//!    /migrate`, then `GET /migrations` until done);
//! 3. collected: goodput per 100 ms from the servers' (receivers') intervals, retransmissions
//!    from the clients, node counters before and after (drops by reason, migration losses),
//!    the source's report (`GET /migrations/<i>/report`: phases, freeze times, bytes), the
//!    switch's flow and port counters (`GET /switch`, from OpenFlow statistics);
//! 4. the testbed is removed.
//!
//! Times in the report are milliseconds since the clients started. The source's phase times
//! (node clock) are aligned by taking the start of its first phase as the moment of the
//! request (the control round trip, well under a millisecond here, is the error); the
//! controller's milestones (controller clock) by its `requested_at`.

use super::bed::{Testbed, UpOptions};
use super::iperf::{self, IperfRun, JsonProcess, Ping};
use super::layout;
use super::sys;
use crate::experiment::{
    Fig1cArgs, GoodputCurve, algorithm_name, print_fig1c_table, write_goodput_plot,
};
use anyhow::{Context, Result, bail};
use flowshift_control::api::{ClusterStatus, MigrateRequest};
use flowshift_control::orchestrator::Stage;
use flowshift_migration::{Algorithm, Params};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

/// Streams per iperf3 client (one client per subscriber address).
const STREAMS_PER_CLIENT: usize = 25;
/// Ping interval.
const PING_INTERVAL: Duration = Duration::from_millis(10);
/// Testbed defaults when the simulator's defaults (3 s, migration at 1 s) are left alone.
const TESTBED_DURATION_S: f64 = 10.0;
const TESTBED_MIGRATE_AT_S: f64 = 4.0;

/// The migration parameters: the simulator's poster scenario (`ClusterConfig::poster`), with
/// the default 50 ms drain (real switch and socket delays instead of simulated ones).
pub fn params(a: Algorithm) -> Params {
    let mut p = Params {
        batch_size: 512,
        batch_max_bytes: 60 << 10,
        idle_sample_interval: Duration::from_millis(50),
        idle_window_samples: 4,
        idle_max: Duration::from_millis(500),
        ..Params::default()
    };
    if a != Algorithm::FreezeCopy {
        p.batches_in_flight = 8;
    }
    p
}

/// `experiment fig1c --testbed`.
pub fn fig1c(args: &Fig1cArgs) -> Result<()> {
    super::bed::require_root("`flowshift experiment fig1c --testbed`")?;
    sys::catch_interrupts();
    let (duration, migrate_at) = if args.duration == 3.0 && args.migrate_at == 1.0 {
        eprintln!(
            "fig1c on the testbed: {TESTBED_DURATION_S} s per algorithm, migration at {TESTBED_MIGRATE_AT_S} s (set --duration and --migrate-at to change)"
        );
        (TESTBED_DURATION_S, TESTBED_MIGRATE_AT_S)
    } else {
        (args.duration, args.migrate_at)
    };
    if !(0.0..1.0).contains(&args.transfer_loss)
        || migrate_at <= 0.0
        || duration <= migrate_at
        || duration > 600.0
    {
        bail!("need 0 <= --transfer-loss < 1 and 0 < --migrate-at < --duration <= 600");
    }
    let max_flows =
        iperf::MAX_STREAMS.min(STREAMS_PER_CLIENT) * usize::from(layout::SUBSCRIBER_HOSTS - 1);
    if args.flows == 0 || args.flows > max_flows {
        bail!("--flows must be 1..={max_flows} on the testbed");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let algorithms = args.algorithm.list();
    let mut runs = Vec::new();
    for &a in &algorithms {
        eprintln!("fig1c on the testbed: {} ...", algorithm_name(a));
        let r = run_one(args, a, duration, migrate_at)
            .with_context(|| format!("{} on the testbed", algorithm_name(a)))?;
        runs.push(r);
    }
    let report = json!({
        "experiment": "fig1c",
        "backend": "testbed",
        "scenario": {
            "flows": args.flows, "states": args.states, "seed": args.seed,
            "migrate_at_ms": migrate_at * 1e3, "duration_ms": duration * 1e3,
            "goodput_bin_ms": iperf::INTERVAL_S * 1e3, "transfer_loss": args.transfer_loss,
            "nodes": 2, "switch": "Open vSwitch userspace datapath (netdev), tx offload off",
            "clients": args.flows.div_ceil(STREAMS_PER_CLIENT),
            "params": runs.first().map(|r: &RunOut| r.params.clone()),
            "algorithms": algorithms.iter().map(|&a| algorithm_name(a)).collect::<Vec<_>>(),
            "time_origin": "start of the iperf3 clients",
            "delay": "ping round-trip time through the migrated group (100 Hz)",
        },
        "runs": runs.iter().map(|r| r.json.clone()).collect::<Vec<_>>(),
    });
    let path = args.out.join("fig1c.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    plot_runs(args, &runs)?;
    print_fig1c_table(&report["runs"], ("retrans", "retransmits"));
    println!(
        "wrote {}/fig1c.json, fig1c.svg, fig1c.png (backend: testbed)",
        args.out.display()
    );
    let bad: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            let inv = r.json["invariants"].as_object()?;
            let failed: Vec<String> = inv
                .iter()
                .filter(|(_, v)| v.as_str() != Some("ok"))
                .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or("?")))
                .collect();
            (!failed.is_empty()).then(|| {
                format!(
                    "{}: {}",
                    r.json["algorithm"].as_str().unwrap_or("?"),
                    failed.join(", ")
                )
            })
        })
        .collect();
    if !bad.is_empty() {
        bail!("checks failed: {}", bad.join("; "));
    }
    Ok(())
}

/// One algorithm's results.
struct RunOut {
    json: Value,
    goodput: Vec<(f64, f64)>,
    phases: Vec<(String, f64, f64)>,
    params: Value,
}

fn counters_of(s: &ClusterStatus) -> BTreeMap<u16, BTreeMap<String, u64>> {
    s.nodes
        .iter()
        .filter_map(|(id, e)| e.status.as_ref().map(|st| (*id, st.counters.clone())))
        .collect()
}

/// Per-node counter deltas (after - before), non-zero ones only.
fn deltas(
    before: &BTreeMap<u16, BTreeMap<String, u64>>,
    after: &BTreeMap<u16, BTreeMap<String, u64>>,
) -> BTreeMap<u16, BTreeMap<String, u64>> {
    after
        .iter()
        .map(|(id, a)| {
            let b = before.get(id);
            let d = a
                .iter()
                .filter_map(|(k, v)| {
                    let d = v.saturating_sub(b.and_then(|b| b.get(k)).copied().unwrap_or(0));
                    (d > 0).then(|| (k.clone(), d))
                })
                .collect();
            (*id, d)
        })
        .collect()
}

fn mean_between(points: &[(f64, f64)], from: f64, to: f64) -> f64 {
    let v: Vec<f64> = points
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, y)| *y)
        .collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn round(x: f64, d: i32) -> f64 {
    let p = 10f64.powi(d);
    (x * p).round() / p
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Drops `loss` of the state-transfer TCP segments in both directions on every node
/// (nftables, input hook).
fn inject_transfer_loss(tb: &Testbed, loss: f64) -> Result<()> {
    let per_10k = (loss * 10_000.0).round() as u32;
    let rules = format!(
        "table inet fsloss {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    tcp dport {p} numgen random mod 10000 < {per_10k} drop\n    tcp sport {p} numgen random mod 10000 < {per_10k} drop\n  }}\n}}\n",
        p = layout::TRANSFER_PORT
    );
    let file = tb.state.dir.join("transfer-loss.nft");
    std::fs::write(&file, rules).with_context(|| format!("writing {}", file.display()))?;
    for n in &tb.state.node_list {
        sys::in_ns(&n.netns, "nft", &["-f", &file.display().to_string()])?;
    }
    Ok(())
}

fn run_one(args: &Fig1cArgs, alg: Algorithm, duration: f64, migrate_at: f64) -> Result<RunOut> {
    let tb = Testbed::up(&UpOptions {
        nodes: 2,
        preload: args.states,
        seed: args.seed,
        tso: false,
        filtering: "endpoint-independent".into(),
        verbose: false,
    })?;
    if args.transfer_loss > 0.0 {
        inject_transfer_loss(&tb, args.transfer_loss)?;
    }
    let api = tb.state.api_client()?;
    let dir = tb.state.dir.clone();
    let (sub, srv) = (tb.state.ns_sub.clone(), tb.state.ns_srv.clone());
    let clients_n = args.flows.div_ceil(STREAMS_PER_CLIENT);
    let ports: Vec<u16> = (0..clients_n)
        .map(|i| iperf::BASE_PORT + i as u16)
        .collect();
    let limit = Duration::from_secs_f64(duration + 90.0);
    let mut servers = iperf::start_servers(&srv, layout::SERVERS[0], &ports, limit, &dir)?;
    let before = api.status()?;
    let switch_before = api.get::<Value>("/switch").unwrap_or(Value::Null);

    let t0 = Instant::now();
    let wall0 = unix_now();
    let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1e3;
    let ping = Ping::start(
        &sub,
        layout::subscriber(1, layout::SUBSCRIBER_HOSTS),
        layout::SERVERS[1],
        PING_INTERVAL,
        duration.ceil() as u64 + 1,
        dir.join("ping.txt"),
    )?;
    let mut clients: Vec<(usize, JsonProcess)> = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let streams = (args.flows - i * STREAMS_PER_CLIENT).min(STREAMS_PER_CLIENT);
        let c = iperf::start_client(
            &sub,
            layout::SERVERS[0],
            port,
            layout::subscriber(1, i as u8 + 1),
            streams,
            duration,
            &dir,
        )?;
        clients.push((streams, c));
    }
    let clients_started_ms = ms(Instant::now());

    // The migration.
    let migrate_deadline = t0 + Duration::from_secs_f64(migrate_at);
    while Instant::now() < migrate_deadline {
        tb.check_processes()?;
        sys::sleep(Duration::from_millis(20).min(migrate_deadline - Instant::now()))?;
    }
    let p = params(alg);
    let req = MigrateRequest {
        group: layout::group_external(1),
        to: 2,
        algorithm: alg,
        params: Some(p.clone()),
    };
    let t_req = Instant::now();
    let resp = api.migrate(&req).context("POST /migrate")?;
    let index = resp.index;
    let poll_deadline = t0 + Duration::from_secs_f64(duration + 60.0);
    let status = loop {
        let all = api.migrations()?;
        let m = all
            .get(index)
            .cloned()
            .with_context(|| format!("migration #{index} not listed"))?;
        if matches!(m.stage, Stage::Done | Stage::Aborted) {
            break m;
        }
        if Instant::now() > poll_deadline {
            bail!("migration #{index} still {:?} after the run", m.stage);
        }
        tb.check_processes()?;
        sys::sleep(Duration::from_millis(10))?;
    };
    let t_done = Instant::now();

    // The end of the traffic.
    let end_deadline = t0 + Duration::from_secs_f64(duration + 30.0);
    let mut client_runs = Vec::new();
    let mut tcp_problems = Vec::new();
    for (streams, c) in &mut clients {
        let st = c.wait(end_deadline)?;
        match c.result() {
            Ok(r) => {
                if let Err(e) = r.ok(*streams) {
                    tcp_problems.push(format!("{}: {e}", c.what));
                } else if !st.success() {
                    tcp_problems.push(format!("{} exited with {st}", c.what));
                }
                client_runs.push(r);
            }
            Err(e) => tcp_problems.push(format!("{e:#}")),
        }
    }
    let mut server_runs = Vec::new();
    for s in &mut servers {
        s.wait(Instant::now() + Duration::from_secs(10))?;
        match s.result() {
            Ok(r) => {
                if let Some(e) = &r.error {
                    tcp_problems.push(format!("{}: {e}", s.what));
                }
                server_runs.push(r);
            }
            Err(e) => tcp_problems.push(format!("{e:#}")),
        }
    }
    let ping = ping.finish(Instant::now() + Duration::from_secs(3))?;
    // Node statuses reach the controller every 500 ms; let the last counters arrive.
    sys::sleep(Duration::from_millis(1300))?;
    let after = api.status()?;
    let switch_after = api.get::<Value>("/switch").unwrap_or(Value::Null);
    let report = if status.migration.is_some() {
        api.report(index).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    tb.down()?;

    // Goodput: the receivers' intervals, summed per 100 ms bin, on the experiment clock.
    let refs: Vec<&IperfRun> = server_runs.iter().collect();
    let goodput: Vec<(f64, f64)> = iperf::goodput_bins(&refs)
        .into_iter()
        .map(|(t, m)| (round(clients_started_ms + t * 1e3, 1), m))
        .collect();
    let req_ms = ms(t_req);
    let done_ms = ms(t_done);
    // Phases: node clock -> experiment clock.
    let rep_phases: Vec<Value> = report["phases"].as_array().cloned().unwrap_or_default();
    let node_origin = rep_phases
        .first()
        .and_then(|p| p["start_ms"].as_f64())
        .unwrap_or(0.0);
    let shift = |t: f64| round(t - node_origin + req_ms, 3);
    let phases: Vec<Value> = rep_phases
        .iter()
        .filter(|p| p["name"] != "done")
        .map(|p| {
            json!({
                "name": p["name"],
                "start_ms": shift(p["start_ms"].as_f64().unwrap_or(0.0)),
                "end_ms": p["end_ms"].as_f64().map(shift),
            })
        })
        .collect();
    let plot_phases: Vec<(String, f64, f64)> = phases
        .iter()
        .filter(|p| p["name"] != "prepare")
        .map(|p| {
            let s = p["start_ms"].as_f64().unwrap_or(0.0);
            (
                p["name"].as_str().unwrap_or("?").replace('_', "-"),
                s,
                p["end_ms"].as_f64().unwrap_or(s),
            )
        })
        .collect();
    // Controller milestones: controller clock -> experiment clock.
    let c0 = status.requested_at.as_nanos();
    let cms = |t: Option<flowshift_wire::Instant>| {
        t.map(|t| round(req_ms + t.as_nanos().saturating_sub(c0) as f64 / 1e6, 3))
    };
    let mut controller = BTreeMap::new();
    controller.insert("requested_ms", Some(round(req_ms, 3)));
    controller.insert("redirect_sent_ms", cms(status.redirect_sent_at));
    controller.insert("redirect_confirmed_ms", cms(status.redirect_confirmed_at));
    controller.insert("done_ms", cms(status.finished_at));
    controller.insert("observed_done_ms", Some(round(done_ms, 3)));
    let mig_start = phases
        .first()
        .and_then(|p| p["start_ms"].as_f64())
        .unwrap_or(req_ms);
    let mig_end = controller
        .get("done_ms")
        .copied()
        .flatten()
        .unwrap_or(done_ms);

    // Counters.
    let d = deltas(&counters_of(&before), &counters_of(&after));
    let mut lost_by_cause: BTreeMap<String, u64> = BTreeMap::new();
    let mut drops: BTreeMap<String, u64> = BTreeMap::new();
    let mut internal_errors = 0;
    for counters in d.values() {
        for (k, v) in counters {
            if let Some(cause) = k.strip_prefix("loss_") {
                *lost_by_cause.entry(cause.to_owned()).or_default() += v;
            } else if k.starts_with("drop_")
                || matches!(
                    k.as_str(),
                    "rx_ring_drops" | "tx_errors" | "tx_queue_full" | "rx_truncated"
                )
            {
                *drops.entry(format!("node_{k}")).or_default() += v;
            }
            if k == "migration_internal_errors" {
                internal_errors += v;
            }
        }
    }
    let (switch_flows, switch_ports) = switch_deltas(&switch_before, &switch_after);
    for p in &switch_ports {
        for k in ["rx_dropped", "tx_dropped", "rx_errors", "tx_errors"] {
            let n = p[k].as_u64().unwrap_or(0);
            if n > 0 {
                *drops
                    .entry(format!("switch_port{}_{k}", p["port_no"]))
                    .or_default() += n;
            }
        }
    }
    let lost: u64 = lost_by_cause.values().sum();

    // Delay (ping round trip).
    let rtt: Vec<(f64, f64)> = ping
        .samples
        .iter()
        .map(|&(ts, rtt)| ((ts - wall0) * 1e3, rtt))
        .collect();
    let mut base: Vec<f64> = rtt
        .iter()
        .filter(|(t, _)| *t >= mig_start - 500.0 && *t < mig_start)
        .map(|(_, r)| *r)
        .collect();
    base.sort_by(f64::total_cmp);
    let baseline = percentile(&base, 0.5);
    let mut added: Vec<f64> = rtt
        .iter()
        .filter(|(t, _)| *t >= mig_start && *t <= mig_end + 50.0)
        .map(|(_, r)| (r - baseline).max(0.0))
        .collect();
    added.sort_by(f64::total_cmp);

    // Checks that must hold for every algorithm.
    let owners_after: Vec<u16> = after
        .nodes
        .iter()
        .filter(|(_, e)| {
            e.status.as_ref().is_some_and(|s| {
                s.groups
                    .iter()
                    .any(|g| g.external == layout::group_external(1))
            })
        })
        .map(|(id, _)| *id)
        .collect();
    let controller_owner = after
        .groups
        .iter()
        .find(|g| g.external == layout::group_external(1))
        .map(|g| g.owner);
    let ok_or = |bad: Option<String>| Value::from(bad.unwrap_or_else(|| "ok".into()));
    let invariants = json!({
        "completed": ok_or((status.stage != Stage::Done).then(|| format!("migration ended {:?}", status.stage))),
        "tcp_connections": ok_or((!tcp_problems.is_empty()).then(|| tcp_problems.join("; "))),
        "single_owner": ok_or((owners_after != [2] || controller_owner != Some(2)).then(|| {
            format!("group on nodes {owners_after:?}, controller owner {controller_owner:?}")
        })),
        "internal_errors": ok_or((internal_errors > 0).then(|| format!("{internal_errors} internal errors"))),
    });

    let retransmits: u64 = client_runs.iter().map(|r| r.retransmits).sum();
    let sent: u64 = client_runs.iter().map(|r| r.bytes_sent).sum();
    let received: u64 = server_runs.iter().map(|r| r.bytes_received).sum();
    let r = &report;
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    let f = |k: &str| round(r[k].as_f64().unwrap_or(0.0), 3);
    let json = json!({
        "algorithm": algorithm_name(alg),
        "seed": args.seed,
        "backend": "testbed",
        "completed": r["completed"].as_bool().unwrap_or(false) && status.stage == Stage::Done,
        "packets_lost": lost,
        "packets_lost_by_cause": lost_by_cause,
        "network_drops_by_cause": drops,
        "packets_buffered": n("packets_buffered"),
        "packets_chained": n("packets_chained"),
        "reordered_packets": Value::Null,
        "retransmits": retransmits,
        "max_freeze_ms": f("max_freeze_ms"),
        "max_buffer_delay_ms": f("max_buffer_delay_ms"),
        "halted_ms": f("halted_ms"),
        "added_delay_ms_max": round(added.last().copied().unwrap_or(0.0), 3),
        "added_delay_ms_p99": round(percentile(&added, 0.99), 3),
        "baseline_delay_ms": round(baseline, 3),
        "migration_ms": round(mig_end - req_ms, 3),
        "phases": phases,
        "controller": controller,
        "states_at_start": n("mappings_at_start"),
        "states_expired_idle": n("states_expired_idle"),
        "states_transferred": n("states_transferred"),
        "records_transferred": n("records"),
        "bytes_transferred": n("bytes_transferred"),
        "batches": n("batches"),
        "precopy_rounds": r.get("precopy_rounds").cloned().unwrap_or(Value::Null),
        "goodput_before_mbps": round(mean_between(&goodput, mig_start / 2.0, mig_start), 1),
        "goodput_during_mbps": round(mean_between(&goodput, mig_start, mig_end + 1000.0), 1),
        "goodput": goodput.iter().map(|&(t, m)| [round(t, 1), round(m, 2)]).collect::<Vec<_>>(),
        "invariants": invariants,
        "iperf": {
            "clients": client_runs.len(),
            "streams": clients.iter().map(|(s, _)| s).sum::<usize>(),
            "bytes_sent": sent,
            "bytes_received": received,
            "sender_mbps": round(client_runs.iter().map(|r| r.sent_bps).sum::<f64>() / 1e6, 1),
            "receiver_mbps": round(server_runs.iter().map(|r| r.received_bps).sum::<f64>() / 1e6, 1),
            "errors": tcp_problems,
        },
        "ping": {
            "sent": ping.sent,
            "received": ping.received,
            "interval_ms": PING_INTERVAL.as_secs_f64() * 1e3,
        },
        "node_counters_delta": d,
        "switch": {
            "flows": switch_flows,
            "ports": switch_ports,
            "source": "controller GET /switch (OpenFlow flow and port statistics, polled every second)",
        },
        "source_report": report,
    });
    Ok(RunOut {
        json,
        goodput,
        phases: plot_phases,
        params: serde_json::to_value(&p).unwrap_or(Value::Null),
    })
}

/// Flow and port counter deltas between two `GET /switch` answers.
fn switch_deltas(before: &Value, after: &Value) -> (Vec<Value>, Vec<Value>) {
    let key = |f: &Value| format!("{}|{}|{}", f["table_id"], f["priority"], f["match"]);
    let flows_before: BTreeMap<String, &Value> = before["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| (key(f), f))
        .collect();
    let sub = |a: &Value, b: Option<&Value>, k: &str| {
        a[k].as_u64()
            .unwrap_or(0)
            .saturating_sub(b.and_then(|b| b[k].as_u64()).unwrap_or(0))
    };
    let flows = after["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let b = flows_before.get(&key(f)).copied();
            json!({
                "priority": f["priority"], "match": f["match"], "cookie": f["cookie"],
                "packets": sub(f, b, "packets"), "bytes": sub(f, b, "bytes"),
            })
        })
        .collect();
    let ports_before: BTreeMap<u64, &Value> = before["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["port_no"].as_u64()?, p)))
        .collect();
    let ports = after["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let b = p["port_no"]
                .as_u64()
                .and_then(|n| ports_before.get(&n).copied());
            let mut o = serde_json::Map::new();
            o.insert("port_no".into(), p["port_no"].clone());
            for k in [
                "rx_packets",
                "tx_packets",
                "rx_bytes",
                "tx_bytes",
                "rx_dropped",
                "tx_dropped",
                "rx_errors",
                "tx_errors",
            ] {
                // All-ones: the switch does not keep this counter.
                let v = if p[k].as_u64() == Some(u64::MAX) {
                    Value::Null
                } else {
                    Value::from(sub(p, b, k))
                };
                o.insert(k.into(), v);
            }
            Value::Object(o)
        })
        .collect();
    (flows, ports)
}

fn plot_runs(args: &Fig1cArgs, runs: &[RunOut]) -> Result<()> {
    let labels: Vec<String> = runs
        .iter()
        .map(|r| r.json["algorithm"].as_str().unwrap_or("?").to_owned())
        .collect();
    let curves: Vec<GoodputCurve> = runs
        .iter()
        .zip(&labels)
        .map(|(r, l)| GoodputCurve {
            label: l,
            points: &r.goodput,
            phases: &r.phases,
        })
        .collect();
    write_goodput_plot(
        &format!(
            "Testbed: goodput of {} iperf3 TCP flows during a migration of {} states",
            args.flows, args.states
        ),
        "goodput (Mbit/s, 100 ms bins)",
        &curves,
        &args.out.join("fig1c"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut b = BTreeMap::new();
        b.insert(
            1u16,
            BTreeMap::from([("loss_group_halted".to_string(), 5u64)]),
        );
        let mut a = BTreeMap::new();
        a.insert(
            1u16,
            BTreeMap::from([
                ("loss_group_halted".to_string(), 9u64),
                ("rx_packets".to_string(), 3u64),
            ]),
        );
        let d = deltas(&b, &a);
        assert_eq!(d[&1]["loss_group_halted"], 4);
        assert_eq!(d[&1]["rx_packets"], 3);
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
}
