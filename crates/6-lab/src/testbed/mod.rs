//! The one-machine testbed (root): network namespaces, a private Open vSwitch with the
//! userspace datapath, `flowshift node` processes, `flowshift controller`, iperf3.
//!
//! * `flowshift testbed up|down|check` ([`run`]): build a testbed ([`bed::Testbed::up`], the
//!   layout in [`layout`]), remove one ([`bed::teardown`]), check the NAT's behaviour from the
//!   subscriber side with an independent STUN client ([`check`]).
//! * `flowshift experiment fig1c --testbed` ([`fig1c`]): the poster's experiment on real
//!   packets ([`exp`]).
//! * `flowshift testbed kill PROCESS [--restart]` ([`faults`]): a crash of the controller or
//!   a node, and its restart.
//! * `flowshift testbed up --standby N`, `flowshift testbed node start|stop ID` ([`standby`]):
//!   standby nodes, a pool of many groups and the autoscale policy that starts and stops them.
//! * `flowshift bench testbed` ([`bench`]): iperf3 through a node and through Linux nftables
//!   NAT on the same switch ([`benchmark`]).
//!
//! Network safety: traffic only flows between namespaces the run created, with subscribers in
//! 100.64.0.0/10, servers and external addresses in 203.0.113.0/24 and 198.18.0.0/15, and the
//! management network in 198.19.0.0/24. Nothing is added to the root namespace except the
//! state directory and, while a run exists, larger `net.core.rmem_default` and (shaped link) `wmem_default`.

pub mod bed;
mod benchmark;
pub mod check;
pub(crate) mod exp;
pub mod exp_elastic;
mod exp_measure;
pub mod faults;
pub mod iperf;
pub mod layout;
pub mod probe;
pub mod standby;
mod state;
pub mod sys;
mod teardown;
pub mod wan;
mod wan_exp;

use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};

/// `flowshift testbed ...`.
#[derive(Subcommand, Debug)]
pub enum TestbedCommand {
    /// Build a testbed: switch, subscriber and server namespaces, nodes, controller.
    Up(UpArgs),
    /// Remove a testbed (also a half-built one): processes, namespaces, switch, directory.
    Down(DownArgs),
    /// Behaviour check from the subscriber side with an independent STUN client (RFC 3489
    /// classification): mapping and filtering.
    Check(CheckArgs),
    /// Kill one of the run's processes with SIGKILL (a crash), optionally starting it again.
    Kill(faults::KillArgs),
    /// The wide-area link's delay line between two devices (run by `up --wan-rtt-ms`).
    #[command(hide = true)]
    WanRelay(wan::RelayArgs),
    /// Start or stop a node's process (the autoscale policy's commands on standby nodes).
    Node(standby::NodeArgs),
}

pub use crate::options::{LinkRate, Offload};

/// NAT filtering of the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FilteringArg {
    /// Any remote endpoint may send to an existing mapping (the default).
    EndpointIndependent,
    /// Only remote addresses the mapping has sent to.
    AddressDependent,
}

impl FilteringArg {
    /// As the NAT configuration spells it.
    pub fn as_config(self) -> &'static str {
        match self {
            FilteringArg::EndpointIndependent => "endpoint-independent",
            FilteringArg::AddressDependent => "address-dependent",
        }
    }
}

/// Arguments of `testbed up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Number of NAT nodes (node K owns group 198.18.0.K with subscribers 100.(63+K).0.0/16).
    #[arg(long, default_value_t = 2)]
    pub nodes: u16,
    /// Fictive long-lived states pre-loaded on group 198.18.0.1 (node 1).
    #[arg(long, default_value_t = 65_000)]
    pub preload: u32,
    /// Seed of the pre-loaded states.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Offloads of the switch and the veths.
    #[arg(long, value_enum, default_value = "off")]
    pub offload: Offload,
    /// NAT filtering.
    #[arg(long, value_enum, default_value = "endpoint-independent")]
    pub filtering: FilteringArg,
    /// Rate of the server link, shaped in both directions with HTB (a drop-tail bulk queue
    /// sized for 100 TCP flows, a priority class for the probe stream): `1gbit`, `500mbit`, ...,
    /// or `off`.
    #[arg(long, default_value = "1gbit")]
    pub link_rate: LinkRate,
    /// Stay in the foreground and remove the testbed on Ctrl-C / SIGTERM.
    #[arg(long)]
    pub foreground: bool,
    /// The switch connects to the controller over mutual TLS (`ovs-vsctl set-ssl`, an
    /// `ssl:` controller across the management bridge, `openflow_tls` on the controller)
    /// instead of a unix socket.
    #[arg(long)]
    pub switch_tls: bool,
    /// Put node `--wan-node` behind a wide-area link of this round-trip time (ms) on the
    /// management network (state transfer, control channel); see `--wan-rate-mbit`.
    #[arg(long)]
    pub wan_rtt_ms: Option<f64>,
    /// Rate of the wide-area link, each direction (Mbit/s).
    #[arg(long, default_value_t = 100.0)]
    pub wan_rate_mbit: f64,
    /// The node behind the wide-area link.
    #[arg(long, default_value_t = 2)]
    pub wan_node: u16,
    /// Standby nodes (ids after `--nodes`): prepared, not started; the autoscale policy
    /// starts and stops them (`testbed node start|stop`). Turns on the pool and `[autoscale]`.
    #[arg(long, default_value_t = 0)]
    pub standby: u16,
    /// Groups of the pool 198.18.1.0/26 (subscribers 100.96.0.0/16), dealt over the nodes
    /// (a power of two <= 64); 0: none, or 8 with `--standby`.
    #[arg(long, default_value_t = 0)]
    pub pool_groups: u32,
    /// Packets/s one node is sized for (`[autoscale] capacity_pps`; elastic runs).
    #[arg(long, default_value_t = 20_000)]
    pub capacity_pps: u64,
}

impl UpArgs {
    /// The elastic part of the run, if `--standby` or `--pool-groups` asks for one.
    pub fn elastic(&self) -> Result<Option<layout::Elastic>> {
        if self.standby == 0 && self.pool_groups == 0 {
            return Ok(None);
        }
        let exe = std::env::current_exe()?;
        Ok(Some(layout::Elastic {
            active: self.nodes,
            pool_groups: if self.pool_groups == 0 {
                8
            } else {
                self.pool_groups
            },
            capacity_pps: self.capacity_pps,
            exe: exe.display().to_string(),
        }))
    }
}

/// Arguments of `testbed down`.
#[derive(Args, Debug)]
pub struct DownArgs {
    /// Run id (four hex digits, as `up` printed); default: the only run.
    pub run: Option<String>,
    /// Remove every run found (state directories and `fsXXXX-*` namespaces).
    #[arg(long, conflicts_with = "run")]
    pub all: bool,
}

/// Arguments of `testbed check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Run id; default: the only run.
    pub run: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `bench testbed`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Offloads of the switch and the veths (the same for both paths).
    #[arg(long, value_enum, default_value = "off")]
    pub offload: Offload,
    /// Seconds per iperf3 measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Parallel TCP flows per measurement.
    #[arg(long, default_value_t = 8)]
    pub flows: usize,
    /// Shape the server link to this rate (`1gbit`, ...); off by default, since the benchmark
    /// measures the paths' own limits.
    #[arg(long, default_value = "off")]
    pub link_rate: LinkRate,
}

/// Runs a testbed subcommand.
pub fn run(cmd: &TestbedCommand) -> Result<()> {
    match cmd {
        TestbedCommand::Up(a) => up(a),
        TestbedCommand::Down(a) => down(a),
        TestbedCommand::Check(a) => check::run(a),
        TestbedCommand::Kill(a) => faults::kill(a),
        TestbedCommand::WanRelay(a) => wan::relay(a),
        TestbedCommand::Node(a) => standby::node(a),
    }
}

/// `bench testbed`.
pub fn bench(args: &BenchArgs) -> Result<()> {
    benchmark::run(args)
}

pub use wan_exp::WanTestbedArgs;

/// `experiment wan --testbed`: one JSON row per RTT and algorithm.
pub fn wan_experiment(args: &WanTestbedArgs) -> Result<Vec<serde_json::Value>> {
    wan_exp::run(args)
}

/// `experiment fig1c --testbed`.
pub fn fig1c(args: &crate::options::Fig1cArgs) -> Result<()> {
    exp::fig1c(args)
}

fn up(a: &UpArgs) -> Result<()> {
    bed::require_root("`flowshift testbed up`")?;
    sys::catch_interrupts();
    let tb = bed::Testbed::up(&bed::UpOptions {
        nodes: a.nodes + a.standby,
        preload: a.preload,
        seed: a.seed,
        tso: a.offload == Offload::Tso,
        filtering: a.filtering.as_config().into(),
        link_rate_bps: a.link_rate.0,
        switch_tls: a.switch_tls,
        verbose: true,
        wan: a.wan_rtt_ms.map(|rtt_ms| wan::WanLink {
            node: a.wan_node,
            rtt_ms,
            rate_mbit: a.wan_rate_mbit,
        }),
        elastic: a.elastic()?,
    })?;
    print_summary(&tb.state);
    if let Some(rtt) = a.wan_rtt_ms {
        println!(
            "  wan        node {} behind {rtt} ms RTT, {} Mbit/s each way (management network)",
            a.wan_node, a.wan_rate_mbit
        );
    }
    if !a.foreground {
        let run = tb.keep().run;
        println!("remove it with: flowshift testbed down {run}");
        return Ok(());
    }
    println!("running in the foreground; Ctrl-C removes it");
    loop {
        if sys::interrupted() {
            break;
        }
        if let Err(e) = tb.check_processes() {
            eprintln!("{e:#}");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let run = tb.state.run.clone();
    tb.down()?;
    println!("testbed {run} removed");
    Ok(())
}

fn print_summary(s: &bed::State) {
    println!("testbed {} up ({})", s.run, s.dir.display());
    println!(
        "  switch     {} in {} (userspace datapath, offload {}), controller {}",
        s.switch.as_ref().map_or("?", |w| w.bridge.as_str()),
        s.switch.as_ref().map_or("?", |w| w.netns.as_str()),
        s.offload,
        s.switch.as_ref().map_or("?", |w| w.controller.as_str()),
    );
    println!(
        "  subscribers {} in {} (sub0, port 1)",
        s.subscribers.join(", "),
        s.ns_sub
    );
    println!(
        "  servers    {} in {} (srv0, port 2)",
        s.servers.join(", "),
        s.ns_srv
    );
    println!(
        "  controller {}:6700 in {}, API {}",
        s.controller, s.ns_mgmt, s.api
    );
    println!(
        "  pki        {} (monitor.pem/.key scrape /metrics; operator.pem/.key)",
        s.dir.join(layout::PKI_DIR).display()
    );
    for n in &s.node_list {
        let pid = s
            .processes
            .iter()
            .find(|p| p.name == format!("node{}", n.id))
            .map_or("standby (not running)".to_owned(), |p| {
                format!("pid {}", p.pid)
            });
        println!(
            "  node {}     {} in {} (port {}, MAC {}), mgmt {} (metrics :9100, TLS), {pid}",
            n.id, n.interface, n.netns, n.port, n.mac, n.mgmt
        );
    }
    for g in &s.groups {
        println!(
            "  group      {} <- {} on node {}{}",
            g.external,
            g.subscribers,
            g.owner,
            if g.external == layout::group_external(1).to_string() && s.preload > 0 {
                format!(" ({} pre-loaded states)", s.preload)
            } else {
                String::new()
            }
        );
    }
    println!("  filtering  {}", s.filtering);
    match &s.link {
        Some(l) => println!(
            "  link       server link shaped to {} in both directions (HTB: bulk drop-tail {} kB, burst {} kB; probe class UDP port {})",
            LinkRate(Some(l.rate_bps)),
            l.limit_bytes / 1000,
            l.burst_bytes / 1000,
            layout::PROBE_PORT
        ),
        None => println!("  link       not shaped"),
    }
    println!(
        "try: ip netns exec {} iperf3 -c {} (with a server: ip netns exec {} iperf3 -s)",
        s.ns_sub,
        s.servers.first().map_or("203.0.113.10", String::as_str),
        s.ns_srv
    );
    println!(
        "     flowshift status; flowshift migrate --group 198.18.0.1 --to 2 --algorithm freeze-copy --wait"
    );
}

/// The run a command addresses: the given id, or the only existing run.
pub fn pick_run(run: Option<&str>) -> Result<String> {
    if let Some(r) = run {
        if !layout::is_run_id(r) {
            bail!("{r:?} is not a run id (four lowercase hex digits)");
        }
        return Ok(r.to_owned());
    }
    match bed::existing_runs().as_slice() {
        [] => bail!("no testbed found (none under {})", layout::STATE_BASE),
        [one] => Ok(one.clone()),
        many => bail!(
            "several testbeds found ({}); name one, or use --all",
            many.join(", ")
        ),
    }
}

fn down(a: &DownArgs) -> Result<()> {
    bed::require_root("`flowshift testbed down`")?;
    let runs = if a.all {
        bed::existing_runs()
    } else {
        vec![pick_run(a.run.as_deref())?]
    };
    if runs.is_empty() {
        println!("no testbed found");
        return Ok(());
    }
    let mut failed = Vec::new();
    for run in runs {
        let state = bed::State::load(&run).ok();
        if state.is_none() && !bed::run_dir(&run).exists() && a.run.is_some() {
            let has_ns = sys::netns_list()
                .iter()
                .any(|ns| layout::Layout::run_of_namespace(ns) == Some(run.as_str()));
            if !has_ns {
                bail!("no testbed {run} found");
            }
        }
        match bed::teardown(&run, state.as_ref(), None, Vec::new(), false) {
            Ok(()) => println!("testbed {run} removed"),
            Err(e) => {
                eprintln!("{e:#}");
                failed.push(run);
            }
        }
    }
    if !failed.is_empty() {
        bail!("could not remove everything of {}", failed.join(", "));
    }
    Ok(())
}
