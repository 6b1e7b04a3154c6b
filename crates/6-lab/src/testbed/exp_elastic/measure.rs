//! The run of `experiment elastic --testbed` on a built testbed: the probe load, the
//! controller snapshots, CPU and the machine's load, the report, its table and plots.

use super::*;

/// Drives the load on `tb`, samples it, and returns the report (also printed and plotted).
pub(super) fn measure(tb: &Testbed, o: &Options, e: &Elastic) -> Result<Value> {
    let s = &tb.state;
    let api = s.api_client()?.with_timeout(Duration::from_secs(2));
    let dir = s.dir.clone();
    let d = o.duration_s;
    let mut echo = probe::start_echo(&s.ns_srv, ECHO, d + 15.0, &dir)?;
    let origin_ns = unix_now_ns();
    let t0 = Instant::now();
    let hosts: Vec<Ipv4Addr> = (0..o.groups as usize)
        .filter_map(|i| e.subscriber(i))
        .collect();
    let mut senders: Vec<(ProbeProcess, PathBuf)> = Vec::new();
    let mut start = |name: &str, i: usize, rate: u32, secs: f64| -> Result<()> {
        let out = dir.join(format!("probe-{name}-{i}.json"));
        let count = (f64::from(rate) * secs).round().max(1.0) as u64;
        let p = probe::start_sender_to(&s.ns_sub, hosts[i], ECHO, rate, count, out.clone())?;
        senders.push((p, out));
        Ok(())
    };
    for i in 0..hosts.len() {
        start("base", i, o.base_rate, d)?;
    }
    let surge_rate = ((o.factor - 1.0) * f64::from(o.base_rate)).round() as u32;
    let (surge_from, surge_to) = (SURGE_FROM * d, SURGE_TO * d);
    let flow_s = if o.flow_s > 0.0 {
        o.flow_s
    } else {
        surge_to - surge_from
    };
    // Start time of the next surge flow (of every group).
    let mut next_flow = if surge_rate == 0 {
        f64::INFINITY
    } else {
        surge_from
    };
    let mut flows = 0;
    let (vswitchd, controller) = (tb.vswitchd_pid(), tb.pid_of("controller"));
    let cpu0 = (
        vswitchd.and_then(sys::cpu_seconds),
        controller.and_then(sys::cpu_seconds),
        machine_busy(),
    );
    let mut snaps = Vec::new();
    let mut reports = BTreeMap::new();
    let mut next = t0;
    while t0.elapsed().as_secs_f64() < d + 2.0 {
        sys::check_interrupt()?;
        let t = t0.elapsed().as_secs_f64();
        if t >= next_flow && next_flow < surge_to {
            let secs = flow_s.min(surge_to - next_flow);
            for i in 0..hosts.len() {
                start(&format!("surge{flows}"), i, surge_rate, secs)?;
            }
            flows += 1;
            next_flow += flow_s;
        }
        if let Ok(status) = api.status() {
            fetch_reports(&api, &status, &mut reports);
            snaps.push(Snap { t_s: t, status });
        }
        next += INTERVAL;
        sys::sleep(next.saturating_duration_since(Instant::now()))?;
    }
    // Let the policy finish scaling in (at most another half run), sampling on.
    let settle = Instant::now() + Duration::from_secs_f64(d / 2.0);
    while Instant::now() < settle && !settled(snaps.last()) {
        sys::check_interrupt()?;
        if let Ok(status) = api.status() {
            fetch_reports(&api, &status, &mut reports);
            snaps.push(Snap {
                t_s: t0.elapsed().as_secs_f64(),
                status,
            });
        }
        sys::sleep(INTERVAL)?;
    }
    let wall = t0.elapsed();
    let cpu1 = (
        vswitchd.and_then(sys::cpu_seconds),
        controller.and_then(sys::cpu_seconds),
        machine_busy(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut records = Vec::new();
    for (p, out) in &mut senders {
        p.finish(deadline)?;
        records.push(probe::analyse(&probe::read_record(out)?, origin_ns));
    }
    let _ = echo.finish(Instant::now() + Duration::from_secs(1));
    if let Some(last) = snaps.last() {
        fetch_reports(&api, &last.status, &mut reports);
    }
    let migrations = migration_records(&snaps, &reports);
    let unreported = migrations.len() - reports.len().min(migrations.len());
    let samples = samples(&snaps, &records, capacity_of(e));
    let events = node_events(&snaps);
    let sent: u64 = records.iter().map(|r| r.sent).sum();
    let lost: u64 = records.iter().map(|r| r.lost).sum();
    let reordered: u64 = records.iter().map(|r| r.reordered).sum();
    let last = snaps.last().map(|s| &s.status);
    let node_cpu: BTreeMap<String, Value> = snaps
        .iter()
        .flat_map(|s| {
            s.status.nodes.iter().filter_map(|(k, n)| {
                let c = &n.status.as_ref()?.counters.cpu;
                Some((*k, c.process_us))
            })
        })
        .fold(BTreeMap::new(), |mut m, (k, us)| {
            m.insert(k, us);
            m
        })
        .into_iter()
        .map(|(k, us)| {
            let pct = us as f64 / 1e6 / wall.as_secs_f64() * 100.0;
            (format!("node{k}"), json!(round(pct, 1)))
        })
        .collect();
    let pct = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => json!(round((b - a) / wall.as_secs_f64() * 100.0, 1)),
        _ => Value::Null,
    };
    let lost_migration: u64 = samples.iter().map(|s| s.lost_migration).sum();
    let max_in_service = samples.iter().map(|s| s.in_service).max().unwrap_or(0);
    let node_seconds: f64 = samples
        .iter()
        .map(|s| f64::from(s.in_service) * INTERVAL.as_secs_f64())
        .sum();
    let max_freeze = migrations
        .iter()
        .map(|m| m.max_freeze_ms)
        .fold(0.0, f64::max);
    let summary = json!({
        "scaling": "freeze-copy",
        "max_nodes_in_service": max_in_service,
        "nodes_in_service_at_end": samples.last().map_or(0, |s| s.in_service),
        "node_seconds": round(node_seconds, 1),
        "migrations": migrations.len(),
        "migrations_completed": migrations.iter().filter(|m| m.completed).count(),
        "states_moved": migrations.iter().map(|m| u64::from(m.states_moved)).sum::<u64>(),
        "states_expired_idle": migrations.iter().map(|m| u64::from(m.states_expired_idle)).sum::<u64>(),
        "max_freeze_ms": round(max_freeze, 3),
        "migrations_without_report": unreported,
        "lost_migration": lost_migration,
        "lost_overload": samples.iter().map(|s| s.lost_overload).sum::<u64>(),
        "probes_sent": sent,
        "probes_lost": lost,
        "probes_reordered": reordered,
        "capacity_pps": capacity_of(e),
        "cpu_pct": {
            "nodes": node_cpu,
            "ovs_vswitchd": pct(cpu0.0, cpu1.0),
            "controller": pct(cpu0.1, cpu1.1),
            "machine": machine_pct(cpu0.2, cpu1.2),
            "window_s": round(wall.as_secs_f64(), 1),
        },
    });
    print_table(&summary, &migrations, &samples);
    let plot = PlotRun {
        name: "freeze-copy (testbed)",
        samples: &samples,
        migrations: &migrations,
        interval_s: INTERVAL.as_secs_f64(),
        capacity_pps: capacity_of(e),
    };
    write_plots_of(&o.out, &[plot], "packets/s (2 per probe round trip)")?;
    Ok(json!({
        "experiment": "elastic",
        "backend": "testbed",
        "run": tb.state.run,
        "nodes": o.nodes,
        "groups": o.groups,
        "factor": o.factor,
        "duration_s": o.duration_s,
        "base_rate_per_group": o.base_rate,
        "surge_s": [round(SURGE_FROM * d, 1), round(SURGE_TO * d, 1)],
        "surge_flows_per_group": flows,
        "surge_flow_s": round(flow_s, 2),
        "summary": [summary],
        "runs": [{
            "samples": samples,
            "migrations": migrations,
            "node_events": events,
            "decisions": last.and_then(|s| s.autoscale.as_ref()).map(|a| &a.recent),
            "policy": last.and_then(|s| s.autoscale.as_ref()).map(|a| &a.counters),
        }],
    }))
}

/// Fetches the source's report of every migration of `s` that ended and has none in
/// `reports` yet (by index in the controller's list).
fn fetch_reports(
    api: &flowshift_controller::ApiClient,
    s: &ClusterStatus,
    reports: &mut BTreeMap<usize, Value>,
) {
    for (i, m) in s.migrations.iter().enumerate() {
        let ended = matches!(m.stage, Stage::Done | Stage::Aborted);
        if ended
            && !reports.contains_key(&i)
            && let Ok(r) = api.report(i)
        {
            reports.insert(i, r);
        }
    }
}

/// Busy and total jiffies of the whole machine (`/proc/stat`).
fn machine_busy() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Busy % of all cores between two [`machine_busy`] readings.
fn machine_pct(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) if b.1 > a.1 => {
            json!(round((b.0 - a.0) as f64 / (b.1 - a.1) as f64 * 100.0, 1))
        }
        _ => Value::Null,
    }
}

fn print_table(summary: &Value, migrations: &[MigrationRecord], samples: &[Sample]) {
    println!(
        "{}",
        serde_json::to_string_pretty(summary).unwrap_or_default()
    );
    print_migrations(migrations);
    println!(
        "{:>7} {:>6} {:>10} {:>10}  per-node load",
        "t_s", "nodes", "offered", "goodput"
    );
    for s in samples.iter().step_by(4) {
        let loads: Vec<String> = s
            .nodes
            .iter()
            .filter(|n| n.in_service)
            .map(|n| format!("n{}={:.2}", n.node, n.load))
            .collect();
        println!(
            "{:>7.1} {:>6} {:>10.0} {:>10.0}  {}",
            s.t_s,
            s.in_service,
            s.offered_pps,
            s.goodput_pps,
            loads.join(" ")
        );
    }
}
