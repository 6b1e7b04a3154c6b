//! `flowshift experiment fig1c --testbed`: the poster's experiment on real packets.
//!
//! Per algorithm, on a fresh testbed (2 nodes, `--states` pre-loaded on group 198.18.0.1 of
//! node 1, plain userspace datapath, about 1 Gbit/s):
//!
//! 1. the server link shaped to `--link-rate` (default 1 Gbit/s, [`layout::Shaping`]: the
//!    fixed bottleneck); one iperf3 server per port in the server namespace; `--flows` TCP
//!    flows from the subscriber namespace in clients of at most 25 streams, each from its own
//!    subscriber address of the group, with 100 ms JSON intervals; a sequence-numbered UDP
//!    probe stream (`--probe-rate`, default 1000/s, [`probe`]) from a subscriber address of
//!    the group to an echo on the server side: loss, reordering and added round-trip time as
//!    a subscriber sees them; a 100 Hz ping (ICMP through the same group) for comparison;
//! 2. at `--migrate-at` the group moves to node 2 through the controller's API (`POST
//!    /migrate`, then `GET /migrations` until done);
//! 3. collected: goodput per 100 ms from the servers' (receivers') intervals, retransmissions
//!    from the clients, the probe stream's record, CPU of both node processes and
//!    `ovs-vswitchd` over the clients' run (`/proc/<pid>/stat`), the shaper's queue drops,
//!    node counters before and after (drops by reason, migration losses),
//!    the source's report (`GET /migrations/<i>/report`: phases, freeze times, bytes), the
//!    switch's flow and port counters (`GET /switch`, from OpenFlow statistics);
//! 4. the testbed is removed.
//!
//! Times in the report are milliseconds since the clients started. The controller's milestones
//! (controller clock) are aligned by its `requested_at`; the source's phase times (node clock)
//! by taking its `done` as the controller's done (the source's `Completed` is one control hop;
//! `clock_alignment` says which anchor a run used). The probe stream and
//! ping use the wall clock (`CLOCK_REALTIME`, one machine), aligned at the clients' start.
//! `timeline` lists every milestone in ms after the request.

use super::bed::{Testbed, UpOptions};
use super::exp_measure::*;
use super::iperf::{self, IperfRun, JsonProcess, Ping};
use super::layout;
use super::probe;
use super::sys;
use crate::options::Fig1cArgs;
use crate::report::{algorithm_name, goodput_min_bin_ratio, print_fig1c_table};
use anyhow::{Context, Result, bail};
use flowshift_control::api::{ClusterStatus, MigrateRequest};
use flowshift_control::orchestrator::{MigrationStatus, Stage};
use flowshift_controller::ApiClient;
use flowshift_migration::InstanceId;
use flowshift_migration::{Algorithm, Params};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

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
    if !(0.0..=1000.0).contains(&args.chain_quiet_ms) {
        bail!("--chain-quiet-ms must be 0..=1000");
    }
    if args.probe_rate == 0 || args.probe_rate > 20_000 {
        bail!("--probe-rate must be 1..=20000 per second");
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
            "nodes": 2, "switch": "Open vSwitch userspace datapath (netdev)",
            "offload": match args.offload {
                super::Offload::Off => "off",
                super::Offload::Tso => "tso",
            },
            "link_rate_bps": args.link_rate.0,
            "bottleneck": match args.link_rate.0 {
                Some(_) => "the server link, shaped with HTB in both directions (runs[].link)",
                None => "none fixed (--link-rate off): the switch's packet rate",
            },
            "probe_rate_per_s": args.probe_rate,
            "clients": args.flows.div_ceil(STREAMS_PER_CLIENT),
            "params": runs.first().map(|r: &RunOut| r.params.clone()),
            "algorithms": algorithms.iter().map(|&a| algorithm_name(a)).collect::<Vec<_>>(),
            "time_origin": "start of the iperf3 clients",
            "delay": "UDP probe round-trip time minus its median in the second before the migration; p99 and max over the probes sent from the migration's start to the end of the run",
        },
        "runs": runs.iter().map(|r| r.json.clone()).collect::<Vec<_>>(),
    });
    let path = args.out.join("fig1c.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    plot_runs(args, &runs)?;
    print_fig1c_table(&report["runs"]);
    println!(
        "  testbed: server link {}; probe stream {}/s from {} to {}:{}",
        match args.link_rate.0 {
            Some(_) => format!("shaped to {}", args.link_rate),
            None => "not shaped".into(),
        },
        args.probe_rate,
        layout::subscriber(1, layout::SUBSCRIBER_HOSTS),
        layout::SERVERS[1],
        layout::PROBE_PORT
    );
    println!("timeline (ms after the request):");
    for r in &runs {
        println!(
            "  {:<12} {}",
            r.json["algorithm"].as_str().unwrap_or("?"),
            timeline_line(&r.json["timeline"])
        );
    }
    println!(
        "wrote {}/fig1c.json, fig1c.svg, fig1c.png, fig1c-delay.svg, fig1c-delay.png (backend: testbed)",
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
pub(super) struct RunOut {
    pub(super) json: Value,
    pub(super) goodput: Vec<(f64, f64)>,
    /// Probe round trips around the migration: (send ms, RTT ms).
    pub(super) rtt: Vec<(f64, f64)>,
    pub(super) phases: Vec<(String, f64, f64)>,
    pub(super) params: Value,
}

/// Starts the migration `req` through the controller's API and polls it (every 10 ms) until it
/// is done or aborted: its index and last status. Fails at `deadline` or when a process of the
/// run exits.
pub(super) fn migrate_and_wait(
    tb: &Testbed,
    api: &ApiClient,
    req: &MigrateRequest,
    deadline: Instant,
) -> Result<(usize, MigrationStatus)> {
    let index = api.migrate(req).context("POST /migrate")?.index;
    loop {
        let m = api
            .migrations()?
            .get(index)
            .cloned()
            .with_context(|| format!("migration #{index} not listed"))?;
        if matches!(m.stage, Stage::Done | Stage::Aborted) {
            return Ok((index, m));
        }
        if Instant::now() > deadline {
            bail!("migration #{index} still {:?} at its deadline", m.stage);
        }
        tb.check_processes()?;
        sys::sleep(Duration::from_millis(10))?;
    }
}

/// Waits for the probe sender to finish (by `deadline`), stops the echo, reads the sender's
/// record, and then the cluster's status once the nodes' last counters have arrived (node
/// statuses reach the controller every 500 ms).
pub(super) fn end_probes(
    prober: &mut probe::ProbeProcess,
    echo: &mut probe::ProbeProcess,
    api: &ApiClient,
    deadline: Instant,
) -> Result<(probe::ProbeRecord, ClusterStatus)> {
    prober.finish(deadline).context("the probe stream")?;
    drop(echo.finish(Instant::now()));
    let rec = probe::read_record(&prober.out)?;
    sys::sleep(Duration::from_millis(1300))?;
    Ok((rec, api.status()?))
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
        tso: args.offload == super::Offload::Tso,
        filtering: "endpoint-independent".into(),
        link_rate_bps: args.link_rate.0,
        switch_tls: false,
        verbose: false,
        wan: None,
        elastic: None,
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
    let probe_to = SocketAddrV4::new(layout::SERVERS[1], layout::PROBE_PORT);
    let probe_count = (f64::from(args.probe_rate) * duration).round() as u64;
    let mut echo = probe::start_echo(&srv, probe_to, duration + 30.0, &dir)?;
    let before = api.status()?;
    let switch_before = api.get::<Value>("/switch").unwrap_or(Value::Null);

    let t0 = Instant::now();
    let wall0_ns = unix_now_ns();
    let wall0 = wall0_ns as f64 / 1e9;
    let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1e3;
    let ping = Ping::start(
        &sub,
        layout::subscriber(1, layout::SUBSCRIBER_HOSTS),
        layout::SERVERS[1],
        PING_INTERVAL,
        duration.ceil() as u64 + 1,
        dir.join("ping.txt"),
    )?;
    let mut prober = probe::start_sender(
        &sub,
        layout::subscriber(1, layout::SUBSCRIBER_HOSTS),
        probe_to,
        args.probe_rate,
        probe_count,
        &dir,
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
    let cpu_names = ["node1", "node2", "ovs_vswitchd"];
    let cpu_pids = [tb.pid_of("node1"), tb.pid_of("node2"), tb.vswitchd_pid()];
    let cpu_sample = || -> Vec<Option<f64>> {
        cpu_pids
            .iter()
            .map(|p| p.and_then(sys::cpu_seconds))
            .collect()
    };
    let (cpu0, cpu_t0) = (cpu_sample(), Instant::now());

    // The migration.
    let migrate_deadline = t0 + Duration::from_secs_f64(migrate_at);
    while Instant::now() < migrate_deadline {
        tb.check_processes()?;
        sys::sleep(Duration::from_millis(20).min(migrate_deadline - Instant::now()))?;
    }
    let mut p = params(alg);
    p.chain_quiet = Duration::from_secs_f64(args.chain_quiet_ms / 1e3);
    let req = MigrateRequest {
        group: layout::group_external(1),
        to: InstanceId(2),
        algorithm: alg,
        params: Some(p.clone()),
    };
    let t_req = Instant::now();
    let poll_deadline = t0 + Duration::from_secs_f64(duration + 60.0);
    let (index, status) = migrate_and_wait(&tb, &api, &req, poll_deadline)?;
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
    let cpu = cpu_pct(&cpu_names, &cpu0, &cpu_sample(), cpu_t0.elapsed());
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
    let deadline = t0 + Duration::from_secs_f64(duration + 15.0);
    let (probe_rec, after) = end_probes(&mut prober, &mut echo, &api, deadline)?;
    let switch_after = api.get::<Value>("/switch").unwrap_or(Value::Null);
    let report = if status.migration.is_some() {
        api.report(index).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let link_stats = tb.state.link.as_ref().map(|_| tb.link_stats());
    let link_plan = tb.state.link.clone();
    let link_devices = tb.state.link_devices.clone();
    tb.down()?;

    // Goodput: the receivers' intervals, summed per 100 ms bin, on the experiment clock.
    let refs: Vec<&IperfRun> = server_runs.iter().collect();
    let goodput: Vec<(f64, f64)> = iperf::goodput_bins(&refs)
        .into_iter()
        .map(|(t, m)| (round(clients_started_ms + t * 1e3, 1), m))
        .collect();
    let req_ms = ms(t_req);
    let done_ms = ms(t_done);
    // Controller milestones: controller clock -> experiment clock.
    let c0 = status.requested_at.as_nanos();
    let cms = |t: Option<flowshift_wire::Instant>| {
        t.map(|t| round(req_ms + t.as_nanos().saturating_sub(c0) as f64 / 1e6, 3))
    };
    // Phases: node clock -> experiment clock. The source's `Completed` ends the migration at
    // the controller one control hop (well under a millisecond) after the source entered
    // `done`: that anchors the node clock at the cutover's end. Without it (aborted), the start
    // of the first phase is taken as the request. (Not the drain start: stop-copy's source
    // enters its drain before the switch update.)
    let rep_phases: Vec<Value> = report["phases"].as_array().cloned().unwrap_or_default();
    let node_origin = rep_phases
        .first()
        .and_then(|p| p["start_ms"].as_f64())
        .unwrap_or(0.0);
    let done_node = rep_phases
        .iter()
        .find(|p| p["name"] == "done")
        .and_then(|p| p["start_ms"].as_f64());
    let (offset, alignment) = match (done_node, cms(status.finished_at)) {
        (Some(d), Some(c)) => (c - d, "source done = controller done"),
        _ => (req_ms - node_origin, "source first phase start = request"),
    };
    let shift = |t: f64| round(t + offset, 3);
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
    let mut controller = BTreeMap::new();
    controller.insert("requested_ms", Some(round(req_ms, 3)));
    controller.insert("redirect_sent_ms", cms(status.redirect_sent_at));
    controller.insert("redirect_confirmed_ms", cms(status.redirect_confirmed_at));
    controller.insert("done_ms", cms(status.finished_at));
    controller.insert("observed_done_ms", Some(round(done_ms, 3)));
    // The migration starts at the request as the outside sees it (a source that starts late
    // only makes its phases later).
    let mig_start = phases
        .first()
        .and_then(|p| p["start_ms"].as_f64())
        .unwrap_or(req_ms)
        .min(req_ms);
    let mig_end = controller
        .get("done_ms")
        .copied()
        .flatten()
        .unwrap_or(done_ms);
    let timeline = timeline(&phases, &report, shift, &controller, req_ms);

    // The probe stream (wall clock -> experiment clock).
    let pa = probe::analyse(&probe_rec, wall0_ns);
    let (p_base, p_p99, p_max) = probe::added_delay(&pa.answers, req_ms, f64::INFINITY);
    let lost_migration = pa
        .lost_ms
        .iter()
        .filter(|&&t| t >= req_ms && t <= mig_end + 1000.0)
        .count();
    let window = (req_ms - 1000.0, mig_end + 2000.0);
    let in_window = |t: f64| t >= window.0 && t <= window.1;
    let rtt_plot: Vec<(f64, f64)> = pa
        .answers
        .iter()
        .filter(|a| in_window(a.sent_ms))
        .map(|a| (a.sent_ms, a.rtt_ms))
        .collect();
    let probe_json = json!({
        "rate_per_s": probe_rec.rate_per_s,
        "from": layout::subscriber(1, layout::SUBSCRIBER_HOSTS).to_string(),
        "to": probe_to.to_string(),
        "sent": pa.sent,
        "received": pa.received,
        "lost": pa.lost,
        "lost_during_migration": lost_migration,
        "lost_at_ms": pa.lost_ms.iter().take(200).map(|&t| round(t, 1)).collect::<Vec<_>>(),
        "reordered": pa.reordered,
        "reordered_forward": pa.reordered_forward,
        "reordered_return": pa.reordered_return,
        "duplicates": pa.duplicates,
        "send_errors": probe_rec.send_errors,
        "baseline_rtt_ms": round(p_base, 3),
        "added_delay_ms_p99": round(p_p99, 3),
        "added_delay_ms_max": round(p_max, 3),
        "rtt_timeline_fields": ["sent_ms", "rtt_ms", "forward_ms", "return_ms"],
        "rtt_timeline_window_ms": [round(window.0, 1), round(window.1, 1)],
        "rtt_timeline": pa.answers.iter().filter(|a| in_window(a.sent_ms)).map(|a| {
            [round(a.sent_ms, 3), round(a.rtt_ms, 3), round(a.forward_ms, 3), round(a.return_ms, 3)]
        }).collect::<Vec<_>>(),
    });
    let (link_json, link_problem) = match (&link_plan, link_stats) {
        (Some(plan), Some(Ok(stats))) => {
            let drops: BTreeMap<String, BTreeMap<String, u64>> = stats
                .iter()
                .map(|(d, text)| (d.clone(), qdisc_drops(text)))
                .collect();
            (
                json!({"shaping": plan, "devices": link_devices, "qdisc_drops": drops}),
                None,
            )
        }
        (Some(plan), Some(Err(e))) => (
            json!({"shaping": plan, "devices": link_devices}),
            Some(format!("{e:#}")),
        ),
        _ => (Value::Null, None),
    };

    // Counters.
    let (c0, c1) = (counters_of(&before), counters_of(&after));
    let d = flat_deltas(&c0, &c1);
    let NodeDeltas {
        lost_by_cause,
        mut drops,
        internal_errors,
    } = node_deltas(&c0, &c1);
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
    let owners_after: Vec<InstanceId> = after
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
        "link_shaping": ok_or(link_problem),
        "single_owner": ok_or((owners_after != [InstanceId(2)] || controller_owner != Some(InstanceId(2))).then(|| {
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
    let min_bin_ratio = goodput_min_bin_ratio(
        &goodput,
        iperf::INTERVAL_S * 1e3,
        mig_start / 2.0,
        req_ms,
        mig_end,
    );
    let ping_json = json!({
        "sent": ping.sent,
        "received": ping.received,
        "interval_ms": PING_INTERVAL.as_secs_f64() * 1e3,
        "baseline_rtt_ms": round(baseline, 3),
        "added_delay_ms_p99": round(percentile(&added, 0.99), 3),
        "added_delay_ms_max": round(added.last().copied().unwrap_or(0.0), 3),
    });
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
        "reordered_packets": pa.reordered,
        "probes_sent": pa.sent,
        "probes_lost": pa.lost,
        "retransmits": retransmits,
        "max_freeze_ms": f("max_freeze_ms"),
        "max_buffer_delay_ms": f("max_buffer_delay_ms"),
        "halted_ms": f("halted_ms"),
        "added_delay_ms_max": round(p_max, 3),
        "added_delay_ms_p99": round(p_p99, 3),
        "baseline_delay_ms": round(p_base, 3),
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
        "goodput_min_bin_ratio": min_bin_ratio,
        "goodput": goodput.iter().map(|&(t, m)| [round(t, 1), round(m, 2)]).collect::<Vec<_>>(),
        "invariants": invariants,
    });
    let iperf_json = json!({
        "clients": client_runs.len(),
        "streams": clients.iter().map(|(s, _)| s).sum::<usize>(),
        "bytes_sent": sent,
        "bytes_received": received,
        "sender_mbps": round(client_runs.iter().map(|r| r.sent_bps).sum::<f64>() / 1e6, 1),
        "receiver_mbps": round(server_runs.iter().map(|r| r.received_bps).sum::<f64>() / 1e6, 1),
        "errors": tcp_problems,
    });
    let switch_json = json!({
        "flows": switch_flows,
        "ports": switch_ports,
        "source": "controller GET /switch (OpenFlow flow and port statistics, polled every second)",
    });
    let mut json = json;
    for (k, v) in [
        ("timeline", Value::from(timeline)),
        ("clock_alignment", Value::from(alignment)),
        ("cpu_pct", cpu),
        ("link", link_json),
        ("probe", probe_json),
        ("iperf", iperf_json),
        ("ping", ping_json),
        ("node_counters_delta", json!(d)),
        ("switch", switch_json),
        ("source_report", report),
    ] {
        json[k] = v;
    }
    Ok(RunOut {
        json,
        goodput,
        rtt: rtt_plot,
        phases: plot_phases,
        params: serde_json::to_value(&p).unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowshift_control::status::NodeCounters;
    use flowshift_nat::DropReason;

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
        let mut b = NodeCounters::default();
        for _ in 0..5 {
            b.nat.drop(DropReason::GroupHalted);
        }
        b.losses = NodeCounters::losses_from(&b.nat);
        let mut a = b.clone();
        for _ in 0..4 {
            a.nat.drop(DropReason::GroupHalted);
        }
        a.nat.drop(DropReason::NoMapping);
        a.losses = NodeCounters::losses_from(&a.nat);
        a.io.rx_packets = 3;
        a.io.tx_errors = 2;
        a.migration.internal_errors = 1;
        let (b, a) = (
            BTreeMap::from([(InstanceId(1), b)]),
            BTreeMap::from([(InstanceId(1), a)]),
        );
        let d = node_deltas(&b, &a);
        assert_eq!(
            d.lost_by_cause,
            BTreeMap::from([("group_halted".to_owned(), 4)])
        );
        assert_eq!(
            d.drops,
            BTreeMap::from([
                ("node_drop_group_halted".to_owned(), 4),
                ("node_drop_no_mapping".to_owned(), 1),
                ("node_tx_errors".to_owned(), 2),
            ])
        );
        assert_eq!(d.internal_errors, 1);
        let flat = flat_deltas(&b, &a);
        assert_eq!(flat[&InstanceId(1)]["loss_group_halted"], 4);
        assert_eq!(flat[&InstanceId(1)]["rx_packets"], 3);
        assert!(
            !flat[&InstanceId(1)].contains_key("tx_packets"),
            "zero deltas are left out"
        );
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
