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
        let l = self.layout.clone();
        let dir = self.state.dir.clone();
        self.state.rmem_default = self.raise_default("rmem_default", RMEM_DEFAULT)?;
        if opts.link_rate_bps.is_some() {
            self.state.wmem_default = self.raise_default("wmem_default", WMEM_DEFAULT)?;
        }

        self.progress("namespaces");
        for ns in [l.ns_sub(), l.ns_srv(), l.ns_mgmt()]
            .into_iter()
            .chain((1..=l.nodes).map(|k| l.ns_node(k)))
        {
            self.create_ns(&ns)?;
        }

        self.progress("Open vSwitch (userspace datapath)");
        let ovs_dir = layout::ovs_dir(&dir);
        self.state.namespaces.push(l.ns_ovs());
        self.state.switch = Some(SwitchRecord {
            netns: l.ns_ovs(),
            dir: ovs_dir.clone(),
            bridge: l.bridge(),
            datapath_id: l.datapath_id(),
            userspace_tso: opts.tso,
            controller: layout::switch_target(&dir, opts.switch_tls),
            inside_port: layout::INSIDE_PORT,
            outside_port: layout::OUTSIDE_PORT,
        });
        self.save()?;
        let ovs = Ovs::start_with(&OvsOptions {
            bridge: l.bridge(),
            name_prefix: l.prefix(),
            datapath_id: Some(l.datapath_id()),
            netns_name: Some(l.ns_ovs()),
            dir: Some(ovs_dir),
            userspace_tso: opts.tso,
        })?;
        for key in [
            "net.ipv6.conf.all.disable_ipv6",
            "net.ipv6.conf.default.disable_ipv6",
        ] {
            sys::sysctl_in(&l.ns_ovs(), key, "1")?;
        }
        self.progress("switch ports");
        let ovs = self.ovs.insert(ovs);
        let sub = l.ns_sub();
        let srv = l.ns_srv();
        with_ns(&sub, |ns| {
            ovs.add_veth_port(&l.port_in(), ns, layout::SUB_IF, Some(layout::INSIDE_PORT))
        })?;
        with_ns(&srv, |ns| {
            ovs.add_veth_port(
                &l.port_out(),
                ns,
                layout::SRV_IF,
                Some(layout::OUTSIDE_PORT),
            )
        })?;
        for k in 1..=l.nodes {
            with_ns(&l.ns_node(k), |ns| {
                ovs.add_veth_port(
                    &l.port_node(k),
                    ns,
                    &Layout::node_if(k),
                    Some(Layout::node_ofport(k)),
                )
            })?;
        }

        self.progress("addresses and routes");
        sys::ip_in(
            &sub,
            &["link", "set", layout::SUB_IF, "address", layout::SUB_MAC],
        )?;
        let mut subscribers = Vec::new();
        for k in 1..=l.nodes {
            let hosts = if k == 1 { layout::SUBSCRIBER_HOSTS } else { 1 };
            for h in 1..=hosts {
                let a = layout::subscriber(k, h);
                sys::ip_in(
                    &sub,
                    &["addr", "add", &format!("{a}/16"), "dev", layout::SUB_IF],
                )?;
                subscribers.push(a.to_string());
            }
        }
        let gw = layout::SUB_GW.to_string();
        sys::ip_in(
            &sub,
            &[
                "neigh",
                "replace",
                &gw,
                "lladdr",
                layout::SUB_GW_MAC,
                "dev",
                layout::SUB_IF,
                "nud",
                "permanent",
            ],
        )?;
        sys::ip_in(
            &sub,
            &["route", "add", "default", "via", &gw, "dev", layout::SUB_IF],
        )?;
        sys::ip_in(
            &srv,
            &["link", "set", layout::SRV_IF, "address", layout::SRV_MAC],
        )?;
        for a in layout::SERVERS {
            sys::ip_in(
                &srv,
                &["addr", "add", &format!("{a}/24"), "dev", layout::SRV_IF],
            )?;
        }
        let sgw = layout::SRV_GW.to_string();
        sys::ip_in(
            &srv,
            &[
                "neigh",
                "replace",
                &sgw,
                "lladdr",
                layout::SRV_GW_MAC,
                "dev",
                layout::SRV_IF,
                "nud",
                "permanent",
            ],
        )?;
        sys::ip_in(
            &srv,
            &[
                "route",
                "add",
                "198.18.0.0/15",
                "via",
                &sgw,
                "dev",
                layout::SRV_IF,
            ],
        )?;
        for k in 1..=l.nodes {
            sys::ip_in(
                &l.ns_node(k),
                &[
                    "link",
                    "set",
                    &Layout::node_if(k),
                    "address",
                    &layout::node_mac(k),
                ],
            )?;
        }
        if let Some(e) = &opts.elastic {
            for i in 0..e.pool_groups as usize {
                let a = e
                    .subscriber(i)
                    .ok_or_else(|| anyhow!("pool group {i} has no subscriber"))?;
                let p = super::standby::pool_subscribers().prefix_len();
                sys::ip_in(
                    &sub,
                    &["addr", "add", &format!("{a}/{p}"), "dev", layout::SUB_IF],
                )?;
                self.state.pool_subscribers.push(a.to_string());
            }
        }
        self.state.subscribers = subscribers;
        self.state.servers = layout::SERVERS.iter().map(|a| a.to_string()).collect();
        if let Some(rate) = opts.link_rate_bps {
            self.progress("shaping the server link");
            self.shape_link(rate)?;
        }

        self.progress("management bridge");
        let mgmt = l.ns_mgmt();
        sys::ip_in(&mgmt, &["link", "add", "br0", "type", "bridge"])?;
        sys::ip_in(
            &mgmt,
            &[
                "addr",
                "add",
                &format!("{}/24", layout::CONTROLLER_IP),
                "dev",
                "br0",
            ],
        )?;
        sys::ip_in(&mgmt, &["link", "set", "br0", "up"])?;
        for k in 1..=l.nodes {
            let m = format!("m{k}");
            let node_ns = l.ns_node(k);
            sys::ip_in(
                &mgmt,
                &[
                    "link", "add", &m, "type", "veth", "peer", "name", "m0", "netns", &node_ns,
                ],
            )?;
            if opts.wan.is_none_or(|w| w.node != k) {
                sys::ip_in(&mgmt, &["link", "set", &m, "master", "br0", "up"])?;
            }
            sys::ip_in(
                &node_ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", layout::node_mgmt_ip(k)),
                    "dev",
                    "m0",
                ],
            )?;
            sys::ip_in(&node_ns, &["link", "set", "m0", "up"])?;
        }
        if let Some(w) = opts.wan {
            self.progress("wide-area link");
            super::wan::install(self, &w, &mgmt, &l.ns_node(w.node))?;
        }
        if opts.switch_tls {
            // The switch reaches the controller's TCP OpenFlow listener over this bridge.
            let ovs_ns = l.ns_ovs();
            sys::ip_in(
                &mgmt,
                &[
                    "link", "add", "msw", "type", "veth", "peer", "name", "m0", "netns", &ovs_ns,
                ],
            )?;
            sys::ip_in(&mgmt, &["link", "set", "msw", "master", "br0", "up"])?;
            sys::ip_in(
                &ovs_ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", layout::SWITCH_MGMT_IP),
                    "dev",
                    "m0",
                ],
            )?;
            sys::ip_in(&ovs_ns, &["link", "set", "m0", "up"])?;
        }

        self.progress("configurations");
        // A fresh CA and certificates for this run's nodes, controller and switch (mutual
        // TLS), and for the operator and the monitor (clients of the nodes' /metrics).
        let mut parties: Vec<flowshift_trust::pki::Party> = (1..=l.nodes)
            .map(flowshift_trust::pki::Party::Node)
            .collect();
        parties.push(flowshift_trust::pki::Party::Controller);
        parties.push(flowshift_trust::pki::Party::Switch);
        parties.push(flowshift_trust::pki::Party::Operator);
        parties.push(flowshift_trust::pki::Party::Monitor);
        flowshift_trust::pki::init(&dir.join(layout::PKI_DIR), &parties, true)
            .context("creating the run's PKI")?;
        let copts = ConfigOptions {
            preload: opts.preload,
            seed: opts.seed,
            filtering: opts.filtering.clone(),
            vnet_hdr: true,
            elastic: opts.elastic.clone(),
        };
        let standby = |k: u16| opts.elastic.as_ref().is_some_and(|e| e.is_standby(k));
        for k in 1..=l.nodes {
            let path = dir.join(format!("node{k}.toml"));
            fs::write(&path, l.node_config(k, &copts))
                .with_context(|| format!("writing {}", path.display()))?;
            self.state.node_list.push(NodeRecord {
                id: k,
                netns: l.ns_node(k),
                interface: Layout::node_if(k),
                mac: layout::node_mac(k),
                port: Layout::node_ofport(k),
                mgmt: layout::node_mgmt_ip(k).to_string(),
                config: path,
            });
            if standby(k) {
                self.state.standby.push(k);
            } else {
                self.state.groups.push(GroupRecord {
                    external: layout::group_external(k).to_string(),
                    subscribers: layout::group_subscribers(k),
                    owner: k,
                });
            }
        }
        if let Some(e) = &opts.elastic {
            for (i, g) in e.groups().iter().enumerate() {
                self.state.groups.push(GroupRecord {
                    external: g.external.to_string(),
                    subscribers: g.subscribers.to_string(),
                    owner: e.owner(i),
                });
            }
        }
        let cluster = dir.join("cluster.toml");
        fs::write(
            &cluster,
            l.cluster_config(&dir, opts.switch_tls, opts.elastic.as_ref()),
        )
        .with_context(|| format!("writing {}", cluster.display()))?;
        // Before the controller starts, so every client finds it.
        Token::create(&layout::api_token_file(&dir))?;
        self.save()?;

        self.progress("controller");
        let exe = std::env::current_exe().context("locating the flowshift executable")?;
        self.spawn(
            "controller",
            &mgmt,
            &exe,
            &[
                "controller".into(),
                "--config".into(),
                cluster.display().to_string(),
            ],
        )?;
        let client = self
            .state
            .api_client()?
            .with_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_processes()?;
            if client.status().is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the controller's API did not come up{}",
                    self.log_hint("controller")
                );
            }
            sys::sleep(Duration::from_millis(50))?;
        }
        let ovs = self.ovs.as_ref().ok_or_else(|| anyhow!("switch gone"))?;
        if opts.switch_tls {
            // The switch's own certificate from the run's CA; it checks the controller's
            // chains to that CA, the controller checks the switch's name.
            let pki = flowshift_trust::pki::Layout {
                dir: dir.join(layout::PKI_DIR),
            };
            let f = pki.files(flowshift_trust::pki::Party::Switch);
            ovs.set_ssl(&f.key, &f.cert, &f.ca)?;
        }
        ovs.set_controller(&layout::switch_target(&dir, opts.switch_tls))?;

        self.progress("nodes");
        for k in (1..=l.nodes).filter(|&k| !standby(k)) {
            let cfg = dir.join(format!("node{k}.toml"));
            self.spawn(
                &format!("node{k}"),
                &l.ns_node(k),
                &exe,
                &["node".into(), "--config".into(), cfg.display().to_string()],
            )?;
        }
        self.progress("waiting for the switch and the nodes to connect");
        self.wait_ready(&client, deadline)
    }

    /// Shapes the server link to `rate_bps` in both directions ([`layout::Shaping`]): the
    /// switch's port towards the servers (egress: subscribers -> servers) and `srv0` (egress:
    /// servers -> subscribers). Fails with a clear message when the kernel lacks the HTB qdisc
    /// or the u32 classifier.
    fn shape_link(&mut self, rate_bps: u64) -> Result<()> {
        let plan = layout::Shaping::for_rate(rate_bps);
        let ends = [
            (self.layout.ns_srv(), layout::SRV_IF.to_owned(), "sport"),
            (self.layout.ns_ovs(), self.layout.port_out(), "dport"),
        ];
        for (ns, dev, field) in &ends {
            for args in plan.tc_commands(dev, field) {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                sys::in_ns(ns, "tc", &refs).map_err(|e| {
                    anyhow!(
                        "shaping the server link (--link-rate) needs the kernel's HTB qdisc (sch_htb), \
                         bfifo/pfifo and the u32 classifier (cls_u32); this kernel refused `tc {}` \
                         on {dev} in {ns}: {e:#}. Run with --link-rate off to skip shaping",
                        args.join(" ")
                    )
                })?;
            }
            self.state.link_devices.push(format!("{ns}:{dev}"));
        }
        self.state.link = Some(plan);
        self.save()
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

    /// Raises `net.core.<key>` (global, `rmem_default` or `wmem_default`) to `value` if it is
    /// below, recording the old value (in `state.json` before the write) for the teardown.
    fn raise_default(&mut self, key: &str, value: u64) -> Result<Option<SysctlChange>> {
        let path = Path::new("/proc/sys/net/core").join(key);
        let before: u64 = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(value);
        if before >= value {
            return Ok(None);
        }
        let ch = SysctlChange { before, set: value };
        match key {
            "wmem_default" => self.state.wmem_default = Some(ch),
            _ => self.state.rmem_default = Some(ch),
        }
        self.save()?;
        fs::write(&path, value.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Some(ch))
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

    fn log_hint(&self, name: &str) -> String {
        let log = self.state.dir.join(format!("{name}.log"));
        format!("; end of {}:\n{}", log.display(), sys::tail(&log, 15))
    }

    fn wait_ready(&self, client: &ApiClient, deadline: Instant) -> Result<()> {
        let n = usize::from(self.layout.nodes) - self.state.standby.len();
        let mut last;
        loop {
            self.check_processes()?;
            match client.status() {
                Ok(s) => {
                    let connected = s
                        .nodes
                        .values()
                        .filter(|e| e.connected && e.status.is_some())
                        .count();
                    let synced = client
                        .get::<serde_json::Value>("/switch")
                        .ok()
                        .and_then(|v| v.get("synced").and_then(serde_json::Value::as_bool))
                        .unwrap_or(s.switch_rules > 0);
                    if s.switch_datapath_id.is_some() && synced && connected == n {
                        return Ok(());
                    }
                    last = format!(
                        "switch {}, {connected} of {n} nodes reporting",
                        if s.switch_datapath_id.is_none() {
                            "not connected"
                        } else if synced {
                            "synced"
                        } else {
                            "connected, table not confirmed"
                        }
                    );
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                bail!(
                    "not ready after {READY_TIMEOUT:?}: {last}{}",
                    self.log_hint("controller")
                );
            }
            sys::sleep(Duration::from_millis(100))?;
        }
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
