//! One algorithm's run of `fig1c --testbed`: a fresh testbed, the traffic, the migration, and
//! everything collected before the testbed is removed ([`Collected`], analysed in
//! [`super::analyse`]).

use super::analyse::analyse;
use super::*;
use crate::testbed::bed::UpOptions;
use crate::testbed::iperf::{IperfRun, JsonProcess, Ping, PingResult};
use flowshift_migration::InstanceId;
use std::net::SocketAddrV4;

/// What a run collected, in the experiment clock (ms since the clients started) where it says
/// `_ms`; the testbed is already removed.
pub(super) struct Collected {
    /// The migration parameters requested.
    pub(super) p: Params,
    /// The migration's last status at the controller.
    pub(super) status: MigrationStatus,
    /// The source's report (`GET /migrations/<i>/report`), `null` without a migration.
    pub(super) report: Value,
    /// Cluster status before the clients started and after the probe stream ended.
    pub(super) before: ClusterStatus,
    pub(super) after: ClusterStatus,
    /// `GET /switch` before and after (`null` when it failed).
    pub(super) switch_before: Value,
    pub(super) switch_after: Value,
    /// The iperf3 clients' and servers' results.
    pub(super) client_runs: Vec<IperfRun>,
    pub(super) server_runs: Vec<IperfRun>,
    /// TCP streams over all clients.
    pub(super) streams: usize,
    /// What went wrong with iperf3 (clients or servers).
    pub(super) tcp_problems: Vec<String>,
    /// CPU of both nodes and `ovs-vswitchd` over the clients' run ([`cpu_pct`]).
    pub(super) cpu: Value,
    pub(super) ping: PingResult,
    pub(super) probe_rec: probe::ProbeRecord,
    /// The probe stream's echo.
    pub(super) probe_to: SocketAddrV4,
    /// The shaper's `tc -s qdisc` output per device (with a shaped link), its plan, its devices.
    pub(super) link_stats: Option<Result<Vec<(String, String)>>>,
    pub(super) link_plan: Option<layout::Shaping>,
    pub(super) link_devices: Vec<String>,
    /// Wall clock (`CLOCK_REALTIME`, ns since the epoch) at the experiment clock's origin.
    pub(super) wall0_ns: u64,
    pub(super) clients_started_ms: f64,
    /// The migration's request and its observed end (the poll saw it done or aborted).
    pub(super) req_ms: f64,
    pub(super) done_ms: f64,
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

/// One algorithm on a fresh testbed, removed before the analysis.
pub(super) fn run_one(
    args: &Fig1cArgs,
    alg: Algorithm,
    duration: f64,
    migrate_at: f64,
) -> Result<RunOut> {
    let tb = Testbed::up(&UpOptions {
        nodes: 2,
        preload: args.states,
        seed: args.seed,
        tso: args.offload == crate::testbed::Offload::Tso,
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

    let collected = Collected {
        p,
        status,
        report,
        before,
        after,
        switch_before,
        switch_after,
        client_runs,
        server_runs,
        streams: clients.iter().map(|(s, _)| s).sum::<usize>(),
        tcp_problems,
        cpu,
        ping,
        probe_rec,
        probe_to,
        link_stats,
        link_plan,
        link_devices,
        wall0_ns,
        clients_started_ms,
        req_ms: ms(t_req),
        done_ms: ms(t_done),
    };
    Ok(analyse(args, alg, collected))
}
