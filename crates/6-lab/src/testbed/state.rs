//! A testbed run's record (`state.json`: [`State`] and its parts), its directory, what `up`
//! is asked to build ([`UpOptions`]) and the checks before it (root, installed tools).

use super::layout::{self, Layout};
use super::sys;
use anyhow::{Context, Result, anyhow, bail};
use flowshift_controller::{ApiClient, Endpoint, Token};
use flowshift_ovs::{self as ovs};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    /// The switch connects to the controller over mutual TLS (`ssl:` across the management
    /// bridge, a certificate from the run's CA) instead of a unix socket.
    pub switch_tls: bool,
    /// Print progress on stderr.
    pub verbose: bool,
    /// A wide-area link in front of one node's management interface ([`super::wan`]).
    pub wan: Option<super::wan::WanLink>,
    /// Standby nodes, a pool split into groups and the autoscale policy
    /// ([`layout::Elastic`]); `None`: every node runs and owns one group.
    pub elastic: Option<layout::Elastic>,
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
    /// Program and arguments it was started with (`testbed kill --restart` starts it again).
    #[serde(default)]
    pub command: Vec<String>,
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
    /// Standby nodes (not started by `up`; `testbed node start|stop` runs them).
    #[serde(default)]
    pub standby: Vec<u16>,
    /// Subscriber hosts of the pool's groups on `sub0`, in group order (elastic runs).
    #[serde(default)]
    pub pool_subscribers: Vec<String>,
}

impl State {
    /// Writes `state.json` (atomically: write, then rename).
    pub fn save(&self) -> Result<()> {
        let path = self.dir.join("state.json");
        let tmp = self.dir.join("state.json.tmp");
        fs::write(&tmp, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

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
