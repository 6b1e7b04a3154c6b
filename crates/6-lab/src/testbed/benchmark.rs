//! `flowshift bench testbed`: iperf3 TCP throughput through one flowshift node and through
//! Linux nftables NAT, on one testbed, in the same run.
//!
//! Both paths share everything but the NAT: the subscriber and server namespaces, the switch
//! (same bridge, same datapath, same offloads), one veth port each with the same `ethtool`
//! settings, and the same iperf3 server. The node path is group 1 (100.64.0.1 -> 198.18.0.1,
//! the controller's steering rules). The kernel path is a namespace `fsR-knat` with
//! `ip_forward=1` and one nftables `snat` rule (100.127.0.0/16 -> 198.18.1.1), one-armed like
//! the node; four extra flow entries steer 100.127.0.1 and 198.18.1.1 to it (added with
//! `ovs-ofctl` at priorities above the controller's, which only ever touches its own entries).
//!
//! The two paths are measured alternately (node, kernel, node, kernel, ...) so that drift of
//! the machine affects both alike; the figure per path is the median of its rounds, and
//! `ratio` = node / kernel.

use super::bed::{Testbed, UpOptions};
use super::iperf::{self, IperfRun};
use super::layout;
use super::sys;
use super::{BenchArgs, Offload};
use anyhow::{Context, Result, bail};
use flowshift_migration::InstanceId;
use flowshift_migration::LossCause;
use flowshift_nat::DropReason;
use flowshift_ovs::Netns;
use serde::Serialize;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The kernel NAT's subscriber address (in the subscriber namespace).
const KNAT_SUBSCRIBER: Ipv4Addr = Ipv4Addr::new(100, 127, 0, 1);
/// The kernel NAT's subscriber prefix.
const KNAT_SUBSCRIBERS: &str = "100.127.0.0/16";
/// The kernel NAT's external address.
const KNAT_EXTERNAL: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Next hops the kernel NAT routes through (permanent neighbours; nobody has these addresses,
/// the MACs are the subscriber's and the server's).
const KNAT_INSIDE_HOP: Ipv4Addr = Ipv4Addr::new(100, 127, 255, 254);
const KNAT_OUTSIDE_HOP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 253);
/// Priority of the kernel path's flow entries (the controller's are below 1000).
const KNAT_PRIORITY: u16 = 1000;

/// One measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Round {
    /// `flowshift` or `nftables`.
    pub path: &'static str,
    /// Receiver goodput, bits per second.
    pub received_bps: f64,
    /// Sender retransmissions.
    pub retransmits: u64,
    /// CPU seconds the NAT process used (flowshift only; the kernel's NAT runs in softirq
    /// context and is not attributable).
    pub nat_cpu_s: Option<f64>,
    /// CPU seconds `ovs-vswitchd` used.
    pub switch_cpu_s: Option<f64>,
    /// The NAT process's CPU over the round, % of one core (`/proc/<pid>/stat` utime+stime).
    pub nat_cpu_pct: Option<f64>,
    /// `ovs-vswitchd`'s CPU over the round, % of one core.
    pub switch_cpu_pct: Option<f64>,
    /// Wall time of the round (s), the denominator of the percentages.
    pub wall_s: f64,
}

/// The benchmark's result (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Offloads of the switch and every veth.
    pub offload: &'static str,
    /// Parallel TCP flows per measurement.
    pub flows: usize,
    /// Seconds per measurement.
    pub seconds: u64,
    /// Every measurement in the order taken.
    pub rounds: Vec<Round>,
    /// Median goodput through the flowshift node, bits per second.
    pub flowshift_bps: f64,
    /// Median goodput through nftables NAT, bits per second.
    pub nftables_bps: f64,
    /// `flowshift_bps / nftables_bps`.
    pub ratio: f64,
    /// Drops and migration losses the node counted during the run, by counter (none expected).
    pub node_drops: std::collections::BTreeMap<String, u64>,
    /// The server link's shaping (`--link-rate`), if any.
    pub link: Option<layout::Shaping>,
}

/// Rounds per path.
const ROUNDS: usize = 2;

/// Runs the benchmark (root).
pub fn run(a: &BenchArgs) -> Result<()> {
    super::bed::require_root("`flowshift bench testbed`")?;
    if a.flows == 0 || a.flows > iperf::MAX_STREAMS {
        bail!("--flows must be 1..={}", iperf::MAX_STREAMS);
    }
    if a.seconds == 0 || a.seconds > 600 {
        bail!("--seconds must be 1..=600");
    }
    sys::catch_interrupts();
    let mut tb = Testbed::up(&UpOptions {
        nodes: 1,
        preload: 0,
        seed: 1,
        tso: a.offload == Offload::Tso,
        filtering: "endpoint-independent".into(),
        link_rate_bps: a.link_rate.0,
        switch_tls: false,
        verbose: !a.json,
        wan: None,
        elastic: None,
    })?;
    let result = measure(&mut tb, a);
    let run = tb.state.run.clone();
    let down = tb.down();
    let report = result?;
    down.with_context(|| format!("removing testbed {run}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &BenchReport) {
    println!(
        "bench testbed: iperf3 TCP, {} flows x {} s per round, offload {}, one switch, same veth settings",
        r.flows, r.seconds, r.offload
    );
    println!(
        "  {:<10} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "path", "Gbit/s", "retransmits", "NAT cpu s", "NAT cpu%", "OVS cpu s", "OVS cpu%"
    );
    let opt = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |x| format!("{x:.d$}"));
    for x in &r.rounds {
        println!(
            "  {:<10} {:>12.3} {:>12} {:>10} {:>10} {:>10} {:>10}",
            x.path,
            x.received_bps / 1e9,
            x.retransmits,
            opt(x.nat_cpu_s, 2),
            opt(x.nat_cpu_pct, 1),
            opt(x.switch_cpu_s, 2),
            opt(x.switch_cpu_pct, 1)
        );
    }
    println!(
        "  median: flowshift {:.3} Gbit/s, nftables {:.3} Gbit/s, ratio {:.3}",
        r.flowshift_bps / 1e9,
        r.nftables_bps / 1e9,
        r.ratio
    );
    match &r.link {
        Some(l) => println!(
            "  server link shaped to {} bit/s (HTB, bulk queue {} B)",
            l.rate_bps, l.limit_bytes
        ),
        None => println!("  server link not shaped (--link-rate off)"),
    }
    println!(
        "  cpu%: utime+stime from /proc/<pid>/stat over the round, % of one core; nftables NAT runs in softirq (not attributable)"
    );
    if r.node_drops.is_empty() {
        println!("  node drops: none");
    } else {
        let d: Vec<String> = r
            .node_drops
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("  node drops: {}", d.join(", "));
    }
}

/// Adds the kernel NAT namespace and its flow entries to a running testbed.
fn add_kernel_nat(tb: &mut Testbed) -> Result<u32> {
    let l = tb.layout.clone();
    let ns = l.ns_knat();
    tb.create_ns(&ns)?;
    let ofport = l.knat_ofport();
    {
        let ovs = tb.ovs()?;
        let peer = Netns::adopt(&ns)?;
        let r = ovs.add_veth_port(&l.port_knat(), &peer, layout::KNAT_IF, Some(ofport));
        peer.detach();
        let got = r?;
        if got != ofport {
            bail!("kernel NAT port got OpenFlow port {got}, wanted {ofport}");
        }
    }
    let ifc = layout::KNAT_IF;
    sys::ip_in(&ns, &["link", "set", ifc, "address", layout::KNAT_MAC])?;
    sys::ip_in(
        &ns,
        &["addr", "add", &format!("{KNAT_EXTERNAL}/32"), "dev", ifc],
    )?;
    for (hop, mac) in [
        (KNAT_INSIDE_HOP, layout::SUB_MAC),
        (KNAT_OUTSIDE_HOP, layout::SRV_MAC),
    ] {
        let hop = hop.to_string();
        sys::ip_in(
            &ns,
            &[
                "neigh",
                "replace",
                &hop,
                "lladdr",
                mac,
                "dev",
                ifc,
                "nud",
                "permanent",
            ],
        )?;
    }
    let in_hop = KNAT_INSIDE_HOP.to_string();
    let out_hop = KNAT_OUTSIDE_HOP.to_string();
    sys::ip_in(
        &ns,
        &[
            "route",
            "add",
            KNAT_SUBSCRIBERS,
            "via",
            &in_hop,
            "dev",
            ifc,
            "onlink",
        ],
    )?;
    sys::ip_in(
        &ns,
        &[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            &out_hop,
            "dev",
            ifc,
            "onlink",
        ],
    )?;
    sys::sysctl_in(&ns, "net.ipv4.ip_forward", "1")?;
    // One-armed: forwarding out of the arrival interface must not trigger ICMP redirects.
    for key in [
        "net.ipv4.conf.all.send_redirects",
        &format!("net.ipv4.conf.{ifc}.send_redirects"),
    ] {
        sys::sysctl_in(&ns, key, "0")?;
    }
    let rules = format!(
        "table ip fsbench {{\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {KNAT_SUBSCRIBERS} oifname \"{ifc}\" snat to {KNAT_EXTERNAL}\n  }}\n}}\n"
    );
    let file = tb.state.dir.join("knat.nft");
    std::fs::write(&file, rules).with_context(|| format!("writing {}", file.display()))?;
    sys::in_ns(&ns, "nft", &["-f", &file.display().to_string()])?;

    // The subscriber address and the switch's entries.
    sys::ip_in(
        &tb.state.ns_sub,
        &[
            "addr",
            "add",
            &format!("{KNAT_SUBSCRIBER}/16"),
            "dev",
            layout::SUB_IF,
        ],
    )?;
    let (inside, outside) = (layout::INSIDE_PORT, layout::OUTSIDE_PORT);
    let mac = layout::KNAT_MAC;
    let p = KNAT_PRIORITY;
    let flows = [
        format!(
            "priority={p},in_port={inside},ip,nw_src={KNAT_SUBSCRIBERS},actions=set_field:{mac}->eth_dst,output:{ofport}"
        ),
        format!(
            "priority={p},in_port={outside},ip,nw_dst={KNAT_EXTERNAL},actions=set_field:{mac}->eth_dst,output:{ofport}"
        ),
        format!(
            "priority={p},in_port={ofport},ip,nw_dst={KNAT_SUBSCRIBERS},actions=output:{inside}"
        ),
        format!(
            "priority={},in_port={ofport},actions=output:{outside}",
            p - 1
        ),
    ];
    let ovs = tb.ovs()?;
    for f in &flows {
        ovs.ofctl("add-flow", &[f])
            .with_context(|| format!("adding flow {f}"))?;
    }
    Ok(ofport)
}

fn measure(tb: &mut Testbed, a: &BenchArgs) -> Result<BenchReport> {
    add_kernel_nat(tb).context("setting up the nftables NAT path")?;
    tb.save()?;
    let tb = &*tb;
    let api = tb.state.api_client()?;
    let before = api.status()?;
    let srv = &tb.state.ns_srv;
    let sub = &tb.state.ns_sub;
    let dir = tb.state.dir.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let node_pid = tb.pid_of("node1");
    let switch_pid = tb.vswitchd_pid();
    let mut rounds = Vec::new();
    for i in 0..ROUNDS * 2 {
        let kernel = i % 2 == 1;
        let bind = if kernel {
            KNAT_SUBSCRIBER
        } else {
            layout::subscriber(1, 1)
        };
        let port = iperf::BASE_PORT + i as u16;
        let cpu = |pid: Option<u32>| pid.and_then(sys::cpu_seconds);
        let (n0, s0) = (cpu(node_pid), cpu(switch_pid));
        let started = Instant::now();
        let r = one_run(tb, sub, srv, bind, port, a, &dir)
            .with_context(|| format!("round {} ({})", i + 1, path_name(kernel)))?;
        let (n1, s1) = (cpu(node_pid), cpu(switch_pid));
        let wall = started.elapsed().as_secs_f64();
        let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        let pct = |d: Option<f64>| d.map(|d| (d / wall * 1000.0).round() / 10.0);
        let nat_cpu_s = if kernel { None } else { diff(n0, n1) };
        let switch_cpu_s = diff(s0, s1);
        rounds.push(Round {
            path: path_name(kernel),
            received_bps: r.received_bps,
            retransmits: r.retransmits,
            nat_cpu_s,
            switch_cpu_s,
            nat_cpu_pct: pct(nat_cpu_s),
            switch_cpu_pct: pct(switch_cpu_s),
            wall_s: wall,
        });
    }
    sys::sleep(Duration::from_millis(1200))?;
    let after = api.status()?;
    let drops = |s: &flowshift_control::api::ClusterStatus| {
        s.nodes
            .get(&InstanceId(1))
            .and_then(|n| n.status.as_ref())
            .map(|st| {
                let c = &st.counters;
                let drops = DropReason::ALL
                    .iter()
                    .map(|&r| (format!("drop_{}", r.label()), c.nat.drops_of(r)));
                let losses = LossCause::ALL
                    .iter()
                    .map(|&l| (format!("loss_{}", l.label()), c.loss(l)));
                drops
                    .chain(losses)
                    .collect::<std::collections::BTreeMap<_, _>>()
            })
            .unwrap_or_default()
    };
    let (d0, d1) = (drops(&before), drops(&after));
    let node_drops = d1
        .iter()
        .filter_map(|(k, &v)| {
            let dv = v.saturating_sub(d0.get(k).copied().unwrap_or(0));
            (dv > 0).then(|| (k.clone(), dv))
        })
        .collect();
    let median = |kernel: bool| {
        let mut v: Vec<f64> = rounds
            .iter()
            .filter(|r| r.path == path_name(kernel))
            .map(|r| r.received_bps)
            .collect();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    let (fs_bps, nft_bps) = (median(false), median(true));
    if nft_bps <= 0.0 {
        bail!("the nftables path carried nothing");
    }
    Ok(BenchReport {
        offload: match a.offload {
            Offload::Off => "off",
            Offload::Tso => "tso",
        },
        flows: a.flows,
        seconds: a.seconds,
        rounds,
        flowshift_bps: fs_bps,
        nftables_bps: nft_bps,
        ratio: fs_bps / nft_bps,
        node_drops,
        link: tb.state.link.clone(),
    })
}

fn path_name(kernel: bool) -> &'static str {
    if kernel { "nftables" } else { "flowshift" }
}

fn one_run(
    tb: &Testbed,
    sub: &str,
    srv: &str,
    bind: Ipv4Addr,
    port: u16,
    a: &BenchArgs,
    dir: &std::path::Path,
) -> Result<IperfRun> {
    let limit = Duration::from_secs(a.seconds + 40);
    let mut servers = iperf::start_servers(srv, layout::SERVERS[0], &[port], limit, dir)?;
    let mut client = iperf::start_client(
        sub,
        layout::SERVERS[0],
        port,
        bind,
        a.flows,
        a.seconds as f64,
        dir,
    )?;
    let deadline = Instant::now() + Duration::from_secs(a.seconds + 30);
    let st = client.wait(deadline)?;
    tb.check_processes()?;
    let r = client.result()?;
    if let Err(e) = r.ok(a.flows) {
        bail!("{}: {e}", client.what);
    }
    if !st.success() {
        bail!("{} exited with {st}", client.what);
    }
    for s in &mut servers {
        let _ = s.wait(Instant::now() + Duration::from_secs(10));
    }
    // The receiver's figure (the server's end summary) where the client lacks it.
    if r.received_bps > 0.0 {
        return Ok(r);
    }
    let server = servers.first().context("no iperf3 server")?.result()?;
    Ok(IperfRun {
        received_bps: server.received_bps,
        ..r
    })
}
