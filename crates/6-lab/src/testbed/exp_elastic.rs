//! `flowshift experiment elastic --testbed`: the autoscale policy on the real cluster.
//!
//! A testbed with one active node and `nodes - 1` standby nodes ([`super::standby`]), the pool
//! split into `groups` groups, the controller's `[autoscale]` policy with freeze-copy, and
//! `testbed node start|stop` as its commands. **Load**: one sequence-numbered UDP probe
//! stream per group (`flowshift probe send`, from the group's subscriber host to one echo in
//! the server namespace) at `base_rate` probes/s for the whole run, plus, during the surge
//! ([`SURGE_FROM`]..[`SURGE_TO`] of the run), many short flows per group at `(factor - 1) x
//! base_rate`: one after the other, each `flow_s` long from a new source port (a new
//! session); the offered load steps up `factor` times and falls back. Every load packet is a
//! probe, so loss and reordering are measured from outside the NAT on all of it. A node's
//! capacity is scaled to the load: the base load is [`BASE_LOAD`] of one node.
//!
//! **Samples** every [`INTERVAL`] from `GET /status`: nodes in service and each node's
//! policy state and load, packets/s from its `io.rx_packets`, sessions and groups, its loss
//! counters (`lost_migration`) and ring drops (`lost_overload`); probes sent, answered and
//! lost by send time (`offered_pps`, `goodput_pps` in packets through the NAT: two per probe
//! round trip; `lost_other`: probes lost). **Migrations** from the controller's list and each
//! source's report (states moved, expired in idle, longest freeze), fetched as soon as the
//! migration ends (the policy stops a drained source soon after). **CPU** of every node (its own counter), the controller and
//! `ovs-vswitchd`, and the machine, beside the throughput. The report has the simulator's
//! shape ([`flowshift_sim::elastic`] samples and migration records, the same plots).

use super::bed::{Testbed, UpOptions};
use super::exp_measure::unix_now_ns;
use super::layout::Elastic;
use super::probe::{self, ProbeProcess};
use super::sys;
use crate::exp_elastic::{PlotRun, print_migrations, write_plots_of};
use crate::report::{round, write_json};
use anyhow::{Context, Result, bail};
use flowshift_control::api::ClusterStatus;
use flowshift_control::autoscale::NodeState;
use flowshift_control::orchestrator::Stage;
use flowshift_migration::InstanceId;
use flowshift_sim::elastic::{MigrationRecord, NodeEvent, NodeSample, Sample};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod measure;
mod records;

use measure::measure;
use records::{migration_records, node_events, samples};

/// Seconds between samples.
pub const INTERVAL: Duration = Duration::from_millis(500);
/// The base load, as a fraction of one node's capacity.
pub const BASE_LOAD: f64 = 0.35;
/// The surge starts at this fraction of the run...
pub const SURGE_FROM: f64 = 0.15;
/// ... and ends at this one.
pub const SURGE_TO: f64 = 0.5;
/// The probe echo (second server address, the probe port).
const ECHO: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 11), 7001);

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Nodes in all (node 1 active, the others standby), 2..=16.
    pub nodes: u16,
    /// Groups of the pool (a power of two <= 64).
    pub groups: u32,
    /// Peak factor of the offered load (>= 1).
    pub factor: f64,
    /// Length of the run (s).
    pub duration_s: f64,
    /// Probes/s per group at base load.
    pub base_rate: u32,
    /// Seconds of each surge flow (0: one flow per group for the whole surge).
    pub flow_s: f64,
    /// Packets/s one node is sized for; `None`: the base load is [`BASE_LOAD`] of it.
    pub capacity_pps: Option<f64>,
    /// Output directory.
    pub out: PathBuf,
}

/// One controller status and when it was taken (s since the start).
struct Snap {
    t_s: f64,
    status: ClusterStatus,
}

/// Runs the experiment (root).
pub fn run(o: &Options) -> Result<()> {
    super::bed::require_root("`flowshift experiment elastic --testbed`")?;
    if o.nodes < 2 || o.factor < 1.0 || o.duration_s < 10.0 || o.base_rate == 0 {
        bail!("need --nodes >= 2, --factor >= 1, --duration-s >= 10 and a positive base rate");
    }
    sys::catch_interrupts();
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    // Round trips are two packets through the node.
    let base_pps = 2.0 * f64::from(o.base_rate) * f64::from(o.groups);
    let capacity = o.capacity_pps.unwrap_or(base_pps / BASE_LOAD);
    let exe = std::env::current_exe().context("locating the flowshift executable")?;
    let elastic = Elastic {
        active: 1,
        pool_groups: o.groups,
        capacity_pps: capacity.round().max(1.0) as u64,
        exe: exe.display().to_string(),
    };
    let tb = Testbed::up(&UpOptions {
        nodes: o.nodes,
        preload: 0,
        seed: 1,
        tso: false,
        filtering: "endpoint-independent".into(),
        link_rate_bps: None,
        switch_tls: false,
        verbose: true,
        elastic: Some(elastic.clone()),
        wan: None,
    })?;
    let out = measure(&tb, o, &elastic);
    let run = tb.state.run.clone();
    let down = tb.down();
    let report = out?;
    down?;
    eprintln!("testbed {run} removed");
    write_json(&o.out.join("elastic-testbed.json"), &report)?;
    println!(
        "wrote {0}/elastic-testbed.json and elastic-{{nodes,load,goodput}}.{{svg,png}}",
        o.out.display()
    );
    Ok(())
}

fn capacity_of(e: &Elastic) -> f64 {
    e.capacity_pps as f64
}

/// Whether the policy is back to one node in service with nothing in flight.
fn settled(s: Option<&Snap>) -> bool {
    let Some(a) = s.and_then(|s| s.status.autoscale.as_ref()) else {
        return true;
    };
    let serving = a.nodes.iter().filter(|n| n.1 != NodeState::Standby).count();
    a.in_flight.is_none() && serving <= 1
}

/// The policy's state of node `k` at a snapshot.
fn state_of(s: &ClusterStatus, k: InstanceId) -> Option<NodeState> {
    let a = s.autoscale.as_ref()?;
    a.nodes.iter().find(|n| n.0 == k).map(|n| n.1)
}
