//! Elastic testbeds: standby nodes, a pool split into many groups, the autoscale policy, and
//! `flowshift testbed node start|stop ID` (the policy's `start_command`/`stop_command`).
//!
//! With [`Elastic`] in `up`'s options, nodes `active+1..=nodes` are **standby**: their
//! namespaces, veths, switch ports, management links, certificates and configurations exist,
//! their processes do not run, and `cluster.toml` marks them `standby = true`. The pool
//! [`pool_external`] is split into `pool_groups` groups (subscribers: slices of
//! [`pool_subscribers`]), dealt round-robin over the active nodes, so load moves in small
//! units; the per-node groups 198.18.0.K of the active nodes stay as they were.
//! `cluster.toml` gets `[autoscale]` (enabled, the testbed's short timings) whose commands run
//! `flowshift testbed node start|stop {node} --run R`: those start the node's process in its
//! namespace (recorded in `state.json`, so `testbed down` kills it) or stop it (SIGTERM, then
//! SIGKILL) and drop the record. Updates of `state.json` by these commands hold an exclusive
//! `flock` on the run's `state.lock`.

use super::bed::{self, State};
use super::sys;
use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use flowshift_nat::GroupConfig;
use ipnet::Ipv4Net;
use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// The pool split into groups: 198.18.1.0/26 (up to 64 groups).
pub fn pool_external() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(198, 18, 1, 0), 26).expect("valid prefix")
}
/// The pool's subscribers: 100.96.0.0/16 (inside 100.64.0.0/10, apart from the per-node
/// groups' 100.64-79).
pub fn pool_subscribers() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(100, 96, 0, 0), 16).expect("valid prefix")
}
/// Most groups of the pool.
pub const MAX_POOL_GROUPS: u32 = 64;
/// How long `testbed node stop` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The elastic part of a testbed (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elastic {
    /// Nodes in service at start (1..=nodes); nodes above are standby.
    pub active: u16,
    /// Groups of the pool (a power of two, 1..=[`MAX_POOL_GROUPS`]).
    pub pool_groups: u32,
    /// Packets/s one node is sized for (`[autoscale] capacity_pps`).
    pub capacity_pps: u64,
    /// The `flowshift` executable the controller runs for the start/stop commands.
    pub exe: String,
}

impl Elastic {
    /// Checks the set-up against the run's node count.
    pub fn validate(&self, nodes: u16) -> Result<()> {
        if self.active == 0 || self.active > nodes {
            bail!("need 1..={nodes} active nodes, not {}", self.active);
        }
        let g = self.pool_groups;
        if g == 0 || g > MAX_POOL_GROUPS || !g.is_power_of_two() {
            bail!("--pool-groups must be a power of two in 1..={MAX_POOL_GROUPS}, not {g}");
        }
        if self.capacity_pps == 0 {
            bail!("--capacity-pps must be positive");
        }
        Ok(())
    }

    /// Whether node `k` is standby.
    pub fn is_standby(&self, k: u16) -> bool {
        k > self.active
    }

    /// The pool's groups, in order (group `i`: the pool's `i`-th address).
    pub fn groups(&self) -> Vec<GroupConfig> {
        flowshift_nat::group_layout(pool_external(), pool_subscribers(), self.pool_groups)
            .unwrap_or_default()
    }

    /// Owner at start of pool group `i` (round-robin over the active nodes).
    pub fn owner(&self, i: usize) -> u16 {
        (i % usize::from(self.active)) as u16 + 1
    }

    /// The subscriber host of pool group `i` on `sub0` (its slice's first host).
    pub fn subscriber(&self, i: usize) -> Option<Ipv4Addr> {
        let g = self.groups().into_iter().nth(i)?;
        Some(Ipv4Addr::from(u32::from(g.subscribers.network()) + 1))
    }

    /// The pool groups node `k` owns at start, as `[nat] groups` entries.
    pub fn node_groups(&self, k: u16) -> Vec<String> {
        self.groups()
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.is_standby(k) && self.owner(*i) == k)
            .map(|(_, g)| {
                format!(
                    "{{ external = \"{}\", subscribers = \"{}\" }}",
                    g.external, g.subscribers
                )
            })
            .collect()
    }

    /// The `[[pools]]`, `[params]` and `[autoscale]` sections of run `run`'s `cluster.toml`.
    ///
    /// Timings suit a run of a few minutes: act after 1 s of a condition, 1 s quiet after
    /// each action, a moved group rests 5 s, at most 20 migrations a minute; freeze-copy with
    /// a short idle phase (100 ms samples, 4 per window, at most 1 s).
    pub fn cluster_sections(&self, run: &str) -> String {
        let mut s = String::new();
        let owners: Vec<String> = (1..=self.active).map(|k| k.to_string()).collect();
        let _ = writeln!(s, "\n[[pools]]");
        let _ = writeln!(s, "external = \"{}\"", pool_external());
        let _ = writeln!(s, "subscribers = \"{}\"", pool_subscribers());
        let _ = writeln!(s, "groups = {}", self.pool_groups);
        let _ = writeln!(s, "owners = [{}]", owners.join(", "));
        let _ = writeln!(s, "\n[params]");
        let _ = writeln!(s, "idle_sample_interval = 100");
        let _ = writeln!(s, "idle_window_samples = 4");
        let _ = writeln!(s, "idle_max = 1000");
        let cmd = |verb: &str| {
            format!(
                "[\"{}\", \"testbed\", \"node\", \"{verb}\", \"{{node}}\", \"--run\", \"{run}\"]",
                self.exe
            )
        };
        let _ = writeln!(s, "\n[autoscale]");
        let _ = writeln!(s, "enabled = true");
        let _ = writeln!(s, "capacity_pps = {}.0", self.capacity_pps);
        let _ = writeln!(s, "capacity_sessions = 1000000");
        let _ = writeln!(s, "sustain_ms = 1000");
        let _ = writeln!(s, "cooldown_ms = 1000");
        let _ = writeln!(s, "group_rest_ms = 5000");
        let _ = writeln!(s, "max_migrations_per_minute = 20");
        let _ = writeln!(s, "min_nodes = 1");
        let _ = writeln!(s, "algorithm = \"freeze-copy\"");
        let _ = writeln!(s, "start_command = {}", cmd("start"));
        let _ = writeln!(s, "stop_command = {}", cmd("stop"));
        s
    }
}

/// `flowshift testbed node ...`.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: NodeCommand,
}

/// Starting or stopping one node's process.
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Start node ID's process in its namespace (no effect when it runs).
    Start(NodeTarget),
    /// Stop node ID's process (SIGTERM, then SIGKILL; no effect when it does not run).
    Stop(NodeTarget),
}

/// A node of a run.
#[derive(Args, Debug)]
pub struct NodeTarget {
    /// The node id.
    pub id: u16,
    /// Run id; default: the only run.
    #[arg(long)]
    pub run: Option<String>,
}

/// Runs `testbed node start|stop`.
pub fn node(a: &NodeArgs) -> Result<()> {
    bed::require_root("`flowshift testbed node`")?;
    let (t, start) = match &a.command {
        NodeCommand::Start(t) => (t, true),
        NodeCommand::Stop(t) => (t, false),
    };
    let run = super::pick_run(t.run.as_deref())?;
    let _lock = lock(&run)?;
    let mut state = State::load(&run)?;
    let name = format!("node{}", t.id);
    let Some(n) = state.node_list.iter().find(|n| n.id == t.id).cloned() else {
        bail!("testbed {run} has no node {}", t.id);
    };
    let running = state
        .processes
        .iter()
        .position(|p| p.name == name && sys::cmdline(p.pid).is_some_and(|c| c.contains(&p.marker)));
    if start {
        if let Some(i) = running {
            println!("{name} already runs (pid {})", state.processes[i].pid);
            return Ok(());
        }
        let exe = std::env::current_exe().context("locating the flowshift executable")?;
        let args = vec![
            "node".to_owned(),
            "--config".to_owned(),
            n.config.display().to_string(),
        ];
        let log = state.dir.join(format!("{name}.log"));
        let child = sys::spawn_in_ns(&n.netns, &exe, &args, &log, &[])?;
        let pid = child.id();
        state.processes.retain(|p| p.name != name);
        state.processes.push(bed::ProcessRecord {
            name: name.clone(),
            pid,
            netns: n.netns.clone(),
            log,
            marker: "flowshift".into(),
            command: std::iter::once(exe.display().to_string())
                .chain(args)
                .collect(),
        });
        fs::write(state.dir.join(format!("{name}.pid")), format!("{pid}\n"))
            .with_context(|| format!("writing {name}.pid"))?;
        state.save()?;
        println!("started {name} (pid {pid})");
    } else {
        let Some(i) = running else {
            state.processes.retain(|p| p.name != name);
            state.save()?;
            println!("{name} does not run");
            return Ok(());
        };
        let pid = state.processes[i].pid;
        let left = sys::terminate(&[pid], STOP_GRACE);
        if !left.is_empty() {
            bail!("{name} (pid {pid}) survived SIGKILL");
        }
        state.processes.remove(i);
        let _ = fs::remove_file(state.dir.join(format!("{name}.pid")));
        state.save()?;
        println!("stopped {name} (pid {pid})");
    }
    Ok(())
}

/// An exclusive lock on run `run`'s `state.lock`, held until the file is dropped.
fn lock(run: &str) -> Result<fs::File> {
    let path = bed::run_dir(run).join("state.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: plain syscall on an fd we own; blocks until the lock is free.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(anyhow!(std::io::Error::last_os_error()))
            .with_context(|| format!("locking {}", path.display()));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_groups_are_dealt_over_active_nodes_and_standby_owns_none() {
        let e = Elastic {
            active: 2,
            pool_groups: 8,
            capacity_pps: 3000,
            exe: "/x/flowshift".into(),
        };
        e.validate(3).unwrap();
        assert!(e.validate(1).is_err());
        assert_eq!(e.node_groups(1).len(), 4);
        assert_eq!(e.node_groups(3).len(), 0);
        assert!(e.is_standby(3) && !e.is_standby(2));
        assert_eq!(e.subscriber(0), Some(Ipv4Addr::new(100, 96, 0, 1)));
        assert_eq!(e.subscriber(1), Some(Ipv4Addr::new(100, 96, 32, 1)));
        assert_eq!(e.groups()[7].external, Ipv4Addr::new(198, 18, 1, 7));
        let s = e.cluster_sections("beef");
        assert!(
            s.contains("\"node\", \"stop\", \"{node}\", \"--run\", \"beef\"]"),
            "{s}"
        );
    }
}
