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
use super::sys;
use anyhow::{Context, Result, anyhow, bail};
use flowshift_controller::{ApiClient, Endpoint, Token};
use flowshift_openflow::ovs::{self, Netns, Ovs, OvsOptions, OvsRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The testbed's install script, embedded so the binary works outside the source tree.
const INSTALL_SCRIPT: &str = include_str!("../../../../scripts/install-testbed-deps.sh");
/// Programs a testbed needs (the install script provides all of them).
pub const TOOLS: [&str; 16] = [
    "ip",
    "tc",
    "ethtool",
    "ovsdb-tool",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-ofctl",
    "ovs-appctl",
    "iperf3",
    "nft",
    "timeout",
    "ss",
    "ping",
    "stun",
    "stund",
];
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

/// What `up` builds.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// Number of nodes (1..=16).
    pub nodes: u16,
    /// Fictive states pre-loaded on group 1 (node 1).
    pub preload: u32,
    /// Seed of the pre-loaded states.
    pub seed: u64,
    /// `userspace-tso-enable=true` and veth offloads on (`true`), or TSO off and `tx off` on
    /// every veth (`false`, the field notes' plain netdev datapath).
    pub tso: bool,
    /// NAT filtering (`endpoint-independent` or `address-dependent`).
    pub filtering: String,
    /// Rate of the shaped server link, bits per second ([`layout::Shaping`]); `None`: not
    /// shaped (the switch's packet rate is then the bottleneck).
    pub link_rate_bps: Option<u64>,
    /// Print progress on stderr.
    pub verbose: bool,
}

/// One process the run started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// What it is (`controller`, `node1`, ...).
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Its namespace.
    pub netns: String,
    /// Its log file.
    pub log: PathBuf,
    /// A word its command line contains (guards against recycled pids).
    pub marker: String,
}

/// The switch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SwitchRecord {
    /// Namespace of the daemons.
    pub netns: String,
    /// Private directory.
    pub dir: PathBuf,
    /// Bridge.
    pub bridge: String,
    /// Datapath id.
    pub datapath_id: u64,
    /// `userspace-tso-enable`.
    pub userspace_tso: bool,
    /// Where the switch connects (the controller's OpenFlow listener).
    pub controller: String,
    /// OpenFlow port towards the subscribers.
    pub inside_port: u32,
    /// OpenFlow port towards the servers.
    pub outside_port: u32,
}

/// One node as the run configured it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub id: u16,
    /// Namespace.
    pub netns: String,
    /// Interface towards the switch.
    pub interface: String,
    /// MAC.
    pub mac: String,
    /// OpenFlow port.
    pub port: u32,
    /// Management address (transfer on 6800, metrics on 9100).
    pub mgmt: String,
    /// Configuration file.
    pub config: PathBuf,
}

/// One group as the run configured it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupRecord {
    /// External address.
    pub external: String,
    /// Subscriber prefix.
    pub subscribers: String,
    /// Owner at start-up.
    pub owner: u16,
}

/// A change to a global sysctl, undone by the last run's teardown.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct SysctlChange {
    /// Value before.
    pub before: u64,
    /// Value set.
    pub set: u64,
}

/// `state.json`: everything a later `testbed down`, `testbed check`, `flowshift status` (field
/// `api`) or a test needs to know about a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// Run id (four hex digits).
    pub run: String,
    /// The run's directory.
    pub dir: PathBuf,
    /// `building` while `up` runs, `up` once everything is connected.
    pub stage: String,
    /// Creation time (seconds since the Unix epoch).
    pub created_unix_s: u64,
    /// Number of nodes.
    pub nodes: u16,
    /// Pre-loaded states on group 1.
    pub preload: u32,
    /// Seed of the pre-loaded states.
    pub seed: u64,
    /// `off` or `tso`.
    pub offload: String,
    /// NAT filtering.
    pub filtering: String,
    /// The controller's operator API (`unix:<path>`).
    pub api: String,
    /// The API's bearer token file.
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// Subscriber namespace.
    pub ns_sub: String,
    /// Server namespace.
    pub ns_srv: String,
    /// Management namespace (controller).
    pub ns_mgmt: String,
    /// Namespaces created so far (teardown deletes them, and any other `fs<run>-*`).
    pub namespaces: Vec<String>,
    /// The switch, once started.
    pub switch: Option<SwitchRecord>,
    /// Nodes.
    pub node_list: Vec<NodeRecord>,
    /// Groups.
    pub groups: Vec<GroupRecord>,
    /// Subscriber addresses on `sub0` (group 1's hosts first).
    pub subscribers: Vec<String>,
    /// Server addresses on `srv0`.
    pub servers: Vec<String>,
    /// The controller's address on the management bridge (node listener port 6700).
    pub controller: String,
    /// Processes started (controller, nodes).
    pub processes: Vec<ProcessRecord>,
    /// `net.core.rmem_default`, if this run raised it.
    pub rmem_default: Option<SysctlChange>,
    /// `net.core.wmem_default`, if this run raised it (shaped link only).
    #[serde(default)]
    pub wmem_default: Option<SysctlChange>,
    /// The server link's shaping, if any ([`layout::Shaping`]).
    #[serde(default)]
    pub link: Option<layout::Shaping>,
    /// Where the shaping is installed (`<namespace>:<device>`).
    #[serde(default)]
    pub link_devices: Vec<String>,
}

impl State {
    /// Reads `state.json` of run `run`.
    pub fn load(run: &str) -> Result<State> {
        let path = run_dir(run).join("state.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// A client of the run's controller (with the API token, once `up` has written it).
    pub fn api_client(&self) -> Result<ApiClient> {
        let ep: Endpoint = self
            .api
            .parse()
            .map_err(|e| anyhow!("state.json api {:?}: {e}", self.api))?;
        let token = self
            .api_token_file
            .as_deref()
            .map(Token::load)
            .transpose()?;
        Ok(ApiClient::new(ep).with_token(token))
    }
}

/// The directory of run `run`.
pub fn run_dir(run: &str) -> PathBuf {
    Path::new(layout::STATE_BASE).join(format!("testbed-{run}"))
}

/// Runs that exist: state directories and namespaces of any run, sorted.
pub fn existing_runs() -> Vec<String> {
    let mut runs = BTreeSet::new();
    if let Ok(entries) = fs::read_dir(layout::STATE_BASE) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(r) = name.strip_prefix("testbed-")
                && layout::is_run_id(r)
            {
                runs.insert(r.to_owned());
            }
        }
    }
    for ns in sys::netns_list() {
        if let Some(r) = Layout::run_of_namespace(&ns) {
            runs.insert(r.to_owned());
        }
    }
    runs.into_iter().collect()
}

/// Fails with a clear message unless running as root.
pub fn require_root(what: &str) -> Result<()> {
    if !ovs::is_root() {
        bail!(
            "{what} needs root (network namespaces, veths, Open vSwitch); run it with sudo or as root"
        );
    }
    Ok(())
}

/// Checks that every tool in [`TOOLS`] is installed; if not, runs the embedded
/// `scripts/install-testbed-deps.sh` (Debian packages), then checks again.
pub fn ensure_tools(verbose: bool) -> Result<()> {
    let missing = || -> Vec<&str> {
        TOOLS
            .iter()
            .copied()
            .filter(|t| ovs::find_program(t).is_none())
            .collect()
    };
    let before = missing();
    if before.is_empty() {
        return Ok(());
    }
    if verbose {
        eprintln!(
            "testbed: missing {}; installing packages (scripts/install-testbed-deps.sh)",
            before.join(", ")
        );
    }
    let mut child = Command::new(sys::prog("bash")?)
        .arg("-s")
        .stdin(Stdio::piped())
        .stdout(if verbose {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::inherit())
        .spawn()
        .context("running the install script")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(INSTALL_SCRIPT.as_bytes())
            .context("feeding the install script")?;
    }
    let status = child.wait().context("waiting for the install script")?;
    let after = missing();
    if !status.success() || !after.is_empty() {
        bail!(
            "installing the testbed packages failed ({status}); still missing: {}",
            after.join(", ")
        );
    }
    Ok(())
}

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
        let path = self.state.dir.join("state.json");
        let tmp = self.state.dir.join("state.json.tmp");
        fs::write(&tmp, serde_json::to_string_pretty(&self.state)? + "\n")
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
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
            controller: format!("unix:{}", layout::openflow_socket(&dir).display()),
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
            sys::ip_in(&mgmt, &["link", "set", &m, "master", "br0", "up"])?;
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

        self.progress("configurations");
        // A fresh CA and certificates for this run's nodes and controller (mutual TLS).
        let mut parties: Vec<flowshift_trust::pki::Party> = (1..=l.nodes)
            .map(flowshift_trust::pki::Party::Node)
            .collect();
        parties.push(flowshift_trust::pki::Party::Controller);
        flowshift_trust::pki::init(&dir.join(layout::PKI_DIR), &parties, true)
            .context("creating the run's PKI")?;
        let copts = ConfigOptions {
            preload: opts.preload,
            seed: opts.seed,
            filtering: opts.filtering.clone(),
            vnet_hdr: true,
        };
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
            self.state.groups.push(GroupRecord {
                external: layout::group_external(k).to_string(),
                subscribers: layout::group_subscribers(k),
                owner: k,
            });
        }
        let cluster = dir.join("cluster.toml");
        fs::write(&cluster, l.cluster_config(&dir))
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
        ovs.set_controller(&format!("unix:{}", layout::openflow_socket(&dir).display()))?;

        self.progress("nodes");
        for k in 1..=l.nodes {
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
    fn spawn(&mut self, name: &str, ns: &str, program: &Path, args: &[String]) -> Result<()> {
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
        let n = usize::from(self.layout.nodes);
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

/// Runs `f` with a handle on the existing namespace `name` that does not delete it.
fn with_ns<T>(name: &str, f: impl FnOnce(&Netns) -> Result<T, ovs::OvsError>) -> Result<T> {
    let ns = Netns::adopt(name)?;
    let r = f(&ns);
    ns.detach();
    Ok(r?)
}

/// Removes run `run`: its processes (recorded ones and everything running in its
/// namespaces), the switch (gracefully, then by force), its namespaces (and with them every
/// veth and bridge: none of them ever lives in the root namespace), the global sysctl it
/// changed (when no other run remains) and its directory. Works from a partial `state` or
/// none. Fails listing what is left behind.
pub fn teardown(
    run: &str,
    state: Option<&State>,
    ovs: Option<Ovs>,
    children: Vec<Child>,
    verbose: bool,
) -> Result<()> {
    if !layout::is_run_id(run) {
        bail!("{run:?} is not a run id (four hex digits)");
    }
    let say = |m: &str| {
        if verbose {
            eprintln!("testbed {run}: {m}");
        }
    };
    let ovs_ns = format!("fs{run}-ovs");
    let mut namespaces: BTreeSet<String> = sys::netns_list()
        .into_iter()
        .filter(|ns| Layout::run_of_namespace(ns) == Some(run))
        .collect();
    if let Some(s) = state {
        namespaces.extend(s.namespaces.iter().cloned());
    }
    // 1. The processes this run started, then everything else in its namespaces but the
    //    switch's (iperf3, stund, ping, ...).
    say("stopping processes");
    let recorded: Vec<u32> = state
        .map(|s| {
            s.processes
                .iter()
                .filter(|p| {
                    sys::alive(p.pid) && sys::cmdline(p.pid).is_some_and(|c| c.contains(&p.marker))
                })
                .map(|p| p.pid)
                .collect()
        })
        .unwrap_or_default();
    let mut stuck = sys::terminate(&recorded, Duration::from_secs(5));
    let others: Vec<u32> = namespaces
        .iter()
        .filter(|ns| **ns != ovs_ns)
        .flat_map(|ns| sys::netns_pids(ns))
        .collect();
    stuck.extend(sys::terminate(&others, Duration::from_secs(3)));
    for mut c in children {
        // Reap our own children (they were signalled above).
        let _ = c.try_wait();
    }
    // 2. The switch: `ovs-appctl exit --cleanup`, pid files, namespace, directory.
    say("stopping Open vSwitch");
    match ovs {
        Some(o) => drop(o),
        None => {
            if let Some(rec) = state.and_then(|s| s.switch.as_ref())
                && let Ok(o) = Ovs::adopt(&OvsRecord {
                    netns: rec.netns.clone(),
                    dir: rec.dir.clone(),
                    bridge: rec.bridge.clone(),
                    userspace_tso: rec.userspace_tso,
                })
            {
                drop(o);
            }
        }
    }
    // 3. Whatever still runs in any of the namespaces.
    let rest: Vec<u32> = namespaces
        .iter()
        .flat_map(|ns| sys::netns_pids(ns))
        .collect();
    stuck.extend(sys::terminate(&rest, Duration::from_secs(2)));
    // 4. Namespaces.
    say("deleting namespaces");
    let mut problems = Vec::new();
    for ns in &namespaces {
        if let Err(e) = sys::netns_delete(ns) {
            problems.push(format!("{e:#}"));
        }
    }
    // 5. The global sysctls, if no other run needs them.
    let changes = [
        ("rmem_default", state.and_then(|s| s.rmem_default)),
        ("wmem_default", state.and_then(|s| s.wmem_default)),
    ];
    for (key, ch) in changes {
        let Some(ch) = ch else { continue };
        let others = existing_runs().into_iter().any(|r| r != run);
        let path = Path::new("/proc/sys/net/core").join(key);
        let now: Option<u64> = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if !others && now == Some(ch.set) {
            // Best effort: a failure leaves a larger default buffer, harmless.
            let _ = fs::write(&path, ch.before.to_string());
        }
    }
    // 6. The directory.
    let dir = run_dir(run);
    if dir.exists()
        && let Err(e) = fs::remove_dir_all(&dir)
    {
        problems.push(format!("removing {}: {e}", dir.display()));
    }
    // 7. Verify.
    let left_ns: Vec<String> = sys::netns_list()
        .into_iter()
        .filter(|ns| Layout::run_of_namespace(ns) == Some(run))
        .collect();
    if !left_ns.is_empty() {
        problems.push(format!("namespaces left: {}", left_ns.join(", ")));
    }
    let prefix = format!("fs{run}");
    if let Ok(links) = sys::ip(&["-o", "link", "show"]) {
        let left: Vec<&str> = links
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(str::trim))
            .filter(|name| name.starts_with(&prefix))
            .collect();
        if !left.is_empty() {
            problems.push(format!(
                "interfaces left in the root namespace: {}",
                left.join(", ")
            ));
        }
    }
    stuck.retain(|&p| sys::alive(p));
    if !stuck.is_empty() {
        problems.push(format!("processes still running: {stuck:?}"));
    }
    if dir.exists() {
        problems.push(format!("{} still exists", dir.display()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "testbed {run}: incomplete teardown: {}",
            problems.join("; ")
        )
    }
}
