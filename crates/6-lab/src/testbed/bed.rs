//! Bringing a testbed up ([`Testbed::up`]) and down ([`teardown`]).
//!
//! **State.** Every run has a directory `/run/flowshift/testbed-<run>/` with the node and
//! cluster configurations, logs, pid files, the controller's sockets, the switch's private
//! directory (`ovs/`) and `state.json` ([`State`]). `state.json` is rewritten after every step
//! of `up`, so a crash leaves a record of what exists; [`teardown`] also discovers the run's
//! namespaces by name (`fs<run>-*`) and every process inside them, so it works from any
//! point of a failed `up`, with or without the record.
//!
//! **Ownership.** A [`Testbed`] value tears its run down when dropped (errors, panics,
//! interrupts), unless [`Testbed::keep`] hands it over to a later `testbed down`.

use super::layout::{self, ConfigOptions, Layout};
pub use super::state::*;
use super::sys;
pub use super::teardown::teardown;
use super::teardown::with_ns;
use anyhow::{Context, Result, anyhow, bail};
use flowshift_controller::{ApiClient, Token};
use flowshift_ovs::{Netns, Ovs, OvsOptions};
use std::fs;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant, SystemTime};

mod cluster;
mod network;

/// `net.core.rmem_default` while a testbed runs (global; field notes: small socket buffers in
/// `ovs-vswitchd` cause heavy retransmissions). 16 MiB: with userspace TSO a node's batch of
/// 64 GSO frames is 4 MiB at once, which overflowed `ovs-vswitchd`'s packet socket at 4 MiB
/// (frames lost without any counter; thousands of retransmissions per 5 s run).
const RMEM_DEFAULT: u64 = 16 << 20;
/// `net.core.wmem_default` while a shaped testbed runs (global). A packet socket's frames stay
/// charged to its send buffer while they wait in a qdisc: with the default 208 kB,
/// `ovs-vswitchd`'s socket on the shaped port filled before the 454-500 kB bulk queue did, and
/// the switch dropped frames on `send` (EAGAIN) without any counter, the probes' priority class
/// included (39% of the probes lost at 100 Mbit/s). 4 MiB covers the bulk queue at any rate up
/// to 8 Gbit/s (4 ms) with the kernel's per-frame overhead.
const WMEM_DEFAULT: u64 = 4 << 20;
/// How long `up` waits for the controller, the switch and the nodes.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running testbed (see the module documentation).
pub struct Testbed {
    /// The run's record (also in `state.json`).
    pub state: State,
    /// The run's names.
    pub layout: Layout,
    ovs: Option<Ovs>,
    children: Vec<Child>,
    keep: bool,
    verbose: bool,
}

impl Testbed {
    /// Builds a testbed (root). On failure everything built so far is removed again.
    pub fn up(opts: &UpOptions) -> Result<Testbed> {
        require_root("the testbed")?;
        if opts.nodes == 0 || opts.nodes > layout::MAX_NODES {
            bail!("--nodes must be 1..={}", layout::MAX_NODES);
        }
        if let Some(e) = &opts.elastic {
            e.validate(opts.nodes)?;
        }
        ensure_tools(opts.verbose)?;
        fs::create_dir_all(layout::STATE_BASE)
            .with_context(|| format!("creating {}", layout::STATE_BASE))?;
        // A run id nobody uses: neither a directory nor a namespace of that name exists.
        let mut run = None;
        for _ in 0..64 {
            let r = sys::random_hex4()?;
            let taken = sys::netns_list()
                .iter()
                .any(|ns| Layout::run_of_namespace(ns) == Some(r.as_str()));
            if !taken && fs::create_dir(run_dir(&r)).is_ok() {
                run = Some(r);
                break;
            }
        }
        let run = run.ok_or_else(|| anyhow!("no free run id under {}", layout::STATE_BASE))?;
        let l = Layout::new(&run, opts.nodes);
        let dir = run_dir(&run);
        let state = State {
            run: run.clone(),
            dir: dir.clone(),
            stage: "building".into(),
            created_unix_s: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            nodes: opts.nodes,
            preload: opts.preload,
            seed: opts.seed,
            offload: if opts.tso { "tso" } else { "off" }.into(),
            filtering: opts.filtering.clone(),
            api: format!("unix:{}", dir.join("api.sock").display()),
            api_token_file: Some(layout::api_token_file(&dir)),
            ns_sub: l.ns_sub(),
            ns_srv: l.ns_srv(),
            ns_mgmt: l.ns_mgmt(),
            controller: layout::CONTROLLER_IP.to_string(),
            ..State::default()
        };
        let mut tb = Testbed {
            state,
            layout: l,
            ovs: None,
            children: Vec::new(),
            keep: false,
            verbose: opts.verbose,
        };
        // From here on, dropping `tb` (an error below) tears the run down.
        tb.save()?;
        tb.build(opts)
            .with_context(|| format!("building testbed {run} (removed again)"))?;
        tb.state.stage = "up".into();
        tb.save()?;
        Ok(tb)
    }

    fn progress(&self, what: &str) {
        if self.verbose {
            eprintln!("testbed {}: {what}", self.state.run);
        }
    }

    /// Writes `state.json` (atomically: write, then rename).
    pub fn save(&self) -> Result<()> {
        self.state.save()
    }

    /// Creates namespace `name` (recorded before it exists, so a crash cannot lose it) with
    /// IPv6 off; the teardown deletes it.
    pub fn create_ns(&mut self, name: &str) -> Result<()> {
        self.state.namespaces.push(name.to_owned());
        self.save()?;
        let ns = Netns::create_named(name)?;
        ns.detach();
        for key in [
            "net.ipv6.conf.all.disable_ipv6",
            "net.ipv6.conf.default.disable_ipv6",
        ] {
            sys::sysctl_in(name, key, "1")?;
        }
        Ok(())
    }

    fn build(&mut self, opts: &UpOptions) -> Result<()> {
        self.build_network(opts)?;
        self.start_cluster(opts)
    }

    /// Checks that the link shaping is still installed (the switch must not have replaced
    /// the qdisc of its port); returns the `tc -s qdisc` statistics of every shaped device.
    pub fn link_stats(&self) -> Result<Vec<(String, String)>> {
        let mut v = Vec::new();
        for d in &self.state.link_devices {
            let (ns, dev) = d.split_once(':').unwrap_or(("", d));
            let out = sys::in_ns(ns, "tc", &["-s", "qdisc", "show", "dev", dev])?;
            if !out.contains("qdisc htb 1:") {
                bail!("the shaping of {dev} in {ns} is gone: {out}");
            }
            v.push((d.clone(), out));
        }
        Ok(v)
    }

    /// Starts `program args` in `ns` as a detached process with a log, records it.
    pub(super) fn spawn(
        &mut self,
        name: &str,
        ns: &str,
        program: &Path,
        args: &[String],
    ) -> Result<()> {
        let log = self.state.dir.join(format!("{name}.log"));
        let child = sys::spawn_in_ns(ns, program, args, &log, &[])?;
        let pid = child.id();
        fs::write(
            self.state.dir.join(format!("{name}.pid")),
            format!("{pid}\n"),
        )
        .with_context(|| format!("writing {name}.pid"))?;
        self.state.processes.push(ProcessRecord {
            name: name.to_owned(),
            pid,
            netns: ns.to_owned(),
            log,
            marker: "flowshift".into(),
            command: std::iter::once(program.display().to_string())
                .chain(args.iter().cloned())
                .collect(),
        });
        self.children.push(child);
        self.save()
    }

    /// Fails if a recorded process has exited, with the end of its log.
    pub fn check_processes(&self) -> Result<()> {
        for p in &self.state.processes {
            if !sys::alive(p.pid) {
                bail!(
                    "{} (pid {}) exited; end of {}:\n{}",
                    p.name,
                    p.pid,
                    p.log.display(),
                    sys::tail(&p.log, 15)
                );
            }
        }
        Ok(())
    }

    /// The switch of a running testbed.
    pub fn ovs(&self) -> Result<&Ovs> {
        self.ovs
            .as_ref()
            .ok_or_else(|| anyhow!("the switch is not running"))
    }

    /// The pid of the switch's `ovs-vswitchd` (from its pid file).
    pub fn vswitchd_pid(&self) -> Option<u32> {
        let dir = &self.state.switch.as_ref()?.dir;
        fs::read_to_string(dir.join("ovs-vswitchd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The pid of a recorded process (`controller`, `node1`, ...).
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.state
            .processes
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.pid)
    }

    /// Hands the run over to a later `testbed down`: nothing is removed when the value drops.
    pub fn keep(mut self) -> State {
        self.keep = true;
        if let Some(o) = self.ovs.take() {
            o.detach();
        }
        std::mem::take(&mut self.state)
    }

    /// Removes the run now; the error lists anything left behind.
    pub fn down(mut self) -> Result<()> {
        self.keep = true;
        let ovs = self.ovs.take();
        let children = std::mem::take(&mut self.children);
        teardown(
            &self.state.run,
            Some(&self.state),
            ovs,
            children,
            self.verbose,
        )
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let ovs = self.ovs.take();
        let children = std::mem::take(&mut self.children);
        if let Err(e) = teardown(
            &self.state.run,
            Some(&self.state),
            ovs,
            children,
            self.verbose,
        ) {
            eprintln!("testbed {}: {e:#}", self.state.run);
        }
    }
}
