//! The cluster configuration (`cluster.toml`) and the addresses the controller listens on.
//!
//! ```toml
//! openflow_listen = "unix:/run/x/of.sock"   # or "tcp:0.0.0.0:6653" (needs openflow_tls);
//!                                            # the switch connects here
//! node_listen = "198.19.0.1:6700"           # nodes connect here
//! api_listen = "unix:/run/x/api.sock"       # or "127.0.0.1:6780": mutual TLS with `tls`,
//!                                            # admitting operator.flowshift.internal only
//! api_token_file = "/etc/flowshift/api.token" # optional bearer token of the operator API
//!                                            # (created with mode 0600 if missing): a second
//!                                            # factor on TCP
//! state_file = "/var/lib/flowshift/controller-state.json" # ownership across restarts
//! # The controller's credentials (paths relative to this file): nodes connect over mutual
//! # TLS and must present certificates naming their ids; a TCP api_listen uses them too.
//! tls = { ca = "pki/ca.pem", cert = "pki/controller.pem", key = "pki/controller.key" }
//! openflow_tls = false                       # true: the switch must connect with TLS and a
//!                                            # certificate naming switch.flowshift.internal
//!                                            # (required when openflow_listen is TCP)
//! [switch]
//! inside_port = 1                            # OpenFlow port towards subscribers
//! outside_port = 2                           # OpenFlow port towards servers
//! datapath_id = "0x00000000000000fa"         # optional: refuse any other switch (pinning)
//! [[nodes]]
//! id = 1
//! port = 3                                   # OpenFlow port of the node's interface
//! mac = "02:f5:00:00:00:01"
//! [[groups]]
//! external = "198.18.0.1"
//! subscribers = "100.64.0.0/16"
//! owner = 1
//! [[pools]]                                  # many groups at once (flowshift_nat::group_layout)
//! external = "203.0.113.0/26"                # group i: the pool's i-th address ...
//! subscribers = "100.80.0.0/16"              # ... with the i-th of `groups` equal slices
//! groups = 32                                # a power of two (default: the pool's size)
//! owners = [1]                               # dealt round-robin
//! [params]                                   # default migration Params (optional)
//! [autoscale]                                # the elastic policy (optional, off by default)
//! ```
//!
//! A node with `standby = true` starts out of service: no group may be owned by it at start,
//! and the autoscale policy brings it into service when it needs room.

use flowshift_control::rules::{GroupRoute, InstancePort, Topology};
use flowshift_migration::{InstanceId, Params};
use flowshift_openflow::port;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use flowshift_http::Endpoint;

pub use flowshift_wire::MacAddr;

/// An OpenFlow datapath id, written as an integer or a hex string (`"0x00000000000000fa"`,
/// `"fa"`; the form `ovs-vsctl get bridge br0 datapath_id` prints) in configurations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "DatapathIdRepr", into = "String")]
pub struct DatapathId(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum DatapathIdRepr {
    Int(u64),
    Text(String),
}

impl TryFrom<DatapathIdRepr> for DatapathId {
    type Error = String;
    fn try_from(r: DatapathIdRepr) -> Result<Self, String> {
        match r {
            DatapathIdRepr::Int(v) => Ok(DatapathId(v)),
            DatapathIdRepr::Text(s) => s.parse(),
        }
    }
}

impl FromStr for DatapathId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let digits = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        if digits.is_empty() || digits.len() > 16 {
            return Err(format!(
                "{s:?}: expected a datapath id of 1 to 16 hex digits"
            ));
        }
        u64::from_str_radix(digits, 16)
            .map(DatapathId)
            .map_err(|_| format!("{s:?}: expected a datapath id of 1 to 16 hex digits"))
    }
}

impl From<DatapathId> for String {
    fn from(d: DatapathId) -> String {
        d.to_string()
    }
}

impl fmt::Display for DatapathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// The switch's wiring: the two non-node ports, and optionally the one datapath the
/// controller accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    /// OpenFlow port towards the subscribers.
    pub inside_port: u32,
    /// OpenFlow port towards the servers (the Internet).
    pub outside_port: u32,
    /// Pinning: a switch whose FEATURES_REPLY names another datapath id is refused (counted
    /// in `refused_datapath_id`) and never replaces the current switch. `None`: any OpenFlow
    /// client reaching `openflow_listen` may take the switch role (a warning at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath_id: Option<DatapathId>,
}

/// One NAT node as the switch and the controller know it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Instance id; the node's `Hello` must carry it.
    pub id: InstanceId,
    /// OpenFlow port of the node's interface.
    pub port: u32,
    /// The node's MAC on that port; the node's `Hello` must carry it.
    pub mac: MacAddr,
    /// Out of service at start (the autoscale policy may bring it in).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

/// Many groups at once: an external pool split by [`flowshift_nat::group_layout`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// External addresses (group `i` gets the `i`-th).
    pub external: Ipv4Net,
    /// Subscribers, split in `groups` equal prefixes.
    pub subscribers: Ipv4Net,
    /// How many groups (a power of two; default: the pool's size).
    #[serde(default)]
    pub groups: Option<u32>,
    /// Initial owners, dealt round-robin over the groups.
    pub owners: Vec<InstanceId>,
}

/// A group (external address + subscriber prefix) and its initial owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// External address.
    pub external: Ipv4Addr,
    /// Subscriber prefix (host bits must be zero).
    pub subscribers: Ipv4Net,
    /// Owning node id at start-up.
    pub owner: InstanceId,
}

/// The controller's configuration. See the module documentation for the format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Where the switch connects (OpenFlow 1.3).
    pub openflow_listen: Endpoint,
    /// Where nodes connect (JSON lines, `flowshift_control::api`).
    pub node_listen: Endpoint,
    /// Where the operator API (HTTP/1.1 JSON) listens: TCP with mutual TLS (`tls`; the client
    /// certificate must name `flowshift_trust::OPERATOR_NAME`), or an owner-only unix socket.
    pub api_listen: Endpoint,
    /// The operator API's bearer token (`flowshift_http::Token`'s file format); created with
    /// mode 0600 on start if it does not exist. Optional: on TCP a second factor after the
    /// operator's certificate; without it a unix `api_listen` admits whoever may open its
    /// socket (owner only).
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// The controller's credentials: its certificate (naming
    /// `flowshift_trust::CONTROLLER_NAME`), key and the cluster CA. Nodes connect to
    /// `node_listen` over mutual TLS; with `openflow_tls` the switch too. Relative paths are
    /// taken from the configuration file's folder ([`ClusterConfig::load`]).
    pub tls: flowshift_trust::TlsFiles,
    /// Require TLS on `openflow_listen`, with a client certificate from the cluster CA naming
    /// `flowshift_trust::SWITCH_NAME` (Open vSwitch: `set-ssl` and an `ssl:` controller).
    /// Required when `openflow_listen` is TCP (an unauthenticated switch could take over the
    /// cluster's steering); a unix socket may go without (its permissions admit the peer).
    #[serde(default)]
    pub openflow_tls: bool,
    /// Switch wiring.
    pub switch: SwitchConfig,
    /// The nodes (at least one).
    pub nodes: Vec<NodeConfig>,
    /// The groups (after loading, also those of `pools`).
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
    /// Pools expanded into `groups` by [`ClusterConfig::from_toml`] (empty afterwards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolConfig>,
    /// The elastic policy.
    #[serde(default)]
    pub autoscale: flowshift_control::autoscale::AutoscaleConfig,
    /// Default migration parameters; `None`: each node's own defaults.
    #[serde(default)]
    pub params: Option<Params>,
    /// Where the controller keeps group ownership and redirected migrations across restarts
    /// (`store.rs`; relative to the configuration file's directory when loaded from a file).
    /// Without it a restarted controller starts from the groups' configured owners.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not valid TOML, or not the expected shape.
    #[error("parsing the cluster configuration: {0}")]
    Parse(String),
    /// Well-formed but inconsistent; every problem found is listed.
    #[error("invalid cluster configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl ClusterConfig {
    /// Reads, parses and validates a file; relative `tls` paths are taken from its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::from_toml(&text)?;
        cfg.tls = cfg.tls.resolved(path.parent().unwrap_or(Path::new(".")));
        if let Some(f) = cfg.state_file.as_mut()
            && f.is_relative()
            && let Some(dir) = path.parent()
        {
            *f = dir.join(&*f);
        }
        Ok(cfg)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut cfg: ClusterConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.expand_pools()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks consistency: at least one node; node ids, ports and MACs unique; MACs unicast
    /// and non-zero; ports in 1..=0xffffff00 and distinct from each other; group external
    /// addresses unique, owners configured, subscriber prefixes without host bits and not
    /// overlapping; the three listen addresses distinct (TCP port 0 excepted).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let port_ok = |p: u32| (1..=port::MAX).contains(&p);
        for (what, p) in [
            ("switch.inside_port", self.switch.inside_port),
            ("switch.outside_port", self.switch.outside_port),
        ] {
            if !port_ok(p) {
                problems.push(format!("{what} = {p} is not a valid OpenFlow port"));
            }
        }
        if self.switch.inside_port == self.switch.outside_port {
            problems.push("switch.inside_port and switch.outside_port are equal".into());
        }
        if self.nodes.is_empty() {
            problems.push("no [[nodes]]".into());
        }
        let mut ids = BTreeSet::new();
        let mut ports = BTreeMap::new();
        let mut macs = BTreeMap::new();
        for n in &self.nodes {
            if !ids.insert(n.id) {
                problems.push(format!("node id {} appears twice", n.id));
            }
            if !port_ok(n.port) {
                problems.push(format!("node {}: port {} is not valid", n.id, n.port));
            }
            if n.port == self.switch.inside_port || n.port == self.switch.outside_port {
                problems.push(format!(
                    "node {}: port {} is the switch's inside or outside port",
                    n.id, n.port
                ));
            }
            if let Some(other) = ports.insert(n.port, n.id) {
                problems.push(format!("nodes {other} and {} share port {}", n.id, n.port));
            }
            if n.mac.0[0] & 1 != 0 || n.mac.0 == [0; 6] {
                problems.push(format!(
                    "node {}: MAC {} is not a unicast address",
                    n.id, n.mac
                ));
            }
            if let Some(other) = macs.insert(n.mac, n.id) {
                problems.push(format!("nodes {other} and {} share MAC {}", n.id, n.mac));
            }
        }
        let mut externals = BTreeSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            if !externals.insert(g.external) {
                problems.push(format!("group {} appears twice", g.external));
            }
            if !ids.contains(&g.owner) {
                problems.push(format!(
                    "group {}: owner {} is not a configured node",
                    g.external, g.owner
                ));
            }
            if self.node(g.owner).is_some_and(|n| n.standby) {
                problems.push(format!(
                    "group {}: owner {} is a standby node",
                    g.external, g.owner
                ));
            }
            if g.subscribers.trunc() != g.subscribers {
                problems.push(format!(
                    "group {}: subscribers {} has host bits set (did you mean {}?)",
                    g.external,
                    g.subscribers,
                    g.subscribers.trunc()
                ));
            }
            for h in &self.groups[..i] {
                if g.subscribers.contains(&h.subscribers) || h.subscribers.contains(&g.subscribers)
                {
                    problems.push(format!(
                        "groups {} and {}: subscriber prefixes {} and {} overlap",
                        h.external, g.external, h.subscribers, g.subscribers
                    ));
                }
            }
        }
        let listens = [
            ("openflow_listen", &self.openflow_listen),
            ("node_listen", &self.node_listen),
            ("api_listen", &self.api_listen),
        ];
        for (i, (a, ea)) in listens.iter().enumerate() {
            for (b, eb) in &listens[..i] {
                // Port 0 asks for an ephemeral port each time: never a clash.
                if ea == eb && !ea.is_ephemeral() {
                    problems.push(format!("{b} and {a} are both {ea}"));
                }
            }
        }
        if let Err(e) = self.autoscale.validate() {
            problems.push(e);
        }
        if matches!(self.openflow_listen, Endpoint::Tcp(_)) && !self.openflow_tls {
            problems.push(
                "openflow_listen is TCP without openflow_tls: anyone who reaches it could offer \
                 a switch; set openflow_tls = true (the switch then presents its certificate, \
                 switch.flowshift.internal) or listen on a unix socket (unix:/path)"
                    .to_owned(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Moves every `[[pools]]` entry into `groups`.
    pub fn expand_pools(&mut self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for p in std::mem::take(&mut self.pools) {
            let count = p.groups.unwrap_or(
                1u32.checked_shl(32 - u32::from(p.external.prefix_len()))
                    .unwrap_or(0),
            );
            if p.owners.is_empty() {
                problems.push(format!("pool {}: no owners", p.external));
                continue;
            }
            match flowshift_nat::group_layout(p.external, p.subscribers, count) {
                Ok(gs) => {
                    self.groups
                        .extend(gs.into_iter().enumerate().map(|(i, g)| GroupConfig {
                            external: g.external,
                            subscribers: g.subscribers,
                            owner: p.owners[i % p.owners.len()],
                        }))
                }
                Err(e) => problems.push(format!("pool {}: {e}", p.external)),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The switch wiring as the control layer sees it.
    pub fn topology(&self) -> Topology {
        Topology {
            inside_port: self.switch.inside_port,
            outside_port: self.switch.outside_port,
            instances: self
                .nodes
                .iter()
                .map(|n| {
                    (
                        n.id,
                        InstancePort {
                            port: n.port,
                            mac: n.mac.0,
                        },
                    )
                })
                .collect(),
        }
    }

    /// The groups with their initial owners.
    pub fn group_routes(&self) -> Vec<GroupRoute> {
        self.groups
            .iter()
            .map(|g| GroupRoute {
                external: g.external,
                subscribers: g.subscribers,
                owner: g.owner,
            })
            .collect()
    }

    /// The API token, if `api_token_file` is set (for clients: the file must exist).
    pub fn api_token(&self) -> anyhow::Result<Option<flowshift_http::Token>> {
        self.api_token_file
            .as_deref()
            .map(flowshift_http::Token::load)
            .transpose()
    }

    /// The node with this id.
    pub fn node(&self, id: InstanceId) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const GOOD: &str = r#"
openflow_listen = "unix:/run/x/of.sock"
node_listen = "198.19.0.1:6700"
api_listen = "tcp:127.0.0.1:6780"
api_token_file = "/etc/flowshift/api.token"
tls = { ca = "pki/ca.pem", cert = "pki/controller.pem", key = "pki/controller.key" }
[switch]
inside_port = 1
outside_port = 2
datapath_id = "0x00000000000000fa"
[[nodes]]
id = 1
port = 3
mac = "02:f5:00:00:00:01"
[[nodes]]
id = 2
port = 4
mac = "02:F5:00:00:00:02"
[[groups]]
external = "198.18.0.1"
subscribers = "100.64.0.0/16"
owner = 1
[[groups]]
external = "198.18.0.2"
subscribers = "100.65.0.0/16"
owner = 2
[params]
batch_size = 128
idle_max = 0
"#;

    #[test]
    fn the_plan_format_parses() {
        let c = ClusterConfig::from_toml(GOOD).unwrap();
        assert_eq!(
            c.openflow_listen,
            Endpoint::Unix(PathBuf::from("/run/x/of.sock"))
        );
        assert_eq!(c.node_listen, Endpoint::Tcp("198.19.0.1:6700".into()));
        assert_eq!(c.api_listen, Endpoint::Tcp("127.0.0.1:6780".into()));
        assert_eq!(
            c.api_token_file.as_deref(),
            Some(std::path::Path::new("/etc/flowshift/api.token"))
        );
        assert_eq!(c.nodes[1].mac, MacAddr([2, 0xf5, 0, 0, 0, 2]));
        assert_eq!(c.nodes[1].mac.to_string(), "02:f5:00:00:00:02");
        let p = c.params.as_ref().unwrap();
        assert_eq!(p.batch_size, 128);
        assert_eq!(p.idle_max, std::time::Duration::ZERO);
        let t = c.topology();
        assert_eq!(t.instances[&InstanceId(2)].port, 4);
        assert_eq!(c.group_routes()[1].owner, InstanceId(2));
        assert_eq!(c.tls.cert, PathBuf::from("pki/controller.pem"));
        assert!(!c.openflow_tls);
        assert_eq!(c.switch.datapath_id, Some(DatapathId(0xfa)));
        // Without [params] the nodes' defaults apply.
        let no_params = GOOD.split("[params]").next().unwrap();
        assert_eq!(ClusterConfig::from_toml(no_params).unwrap().params, None);
    }

    #[test]
    fn datapath_ids_parse_as_hex_or_integers_and_pinning_is_optional() {
        for (text, dpid) in [
            ("\"0x00000000000000fa\"", 0xfa),
            ("\"fa\"", 0xfa),
            ("\"FFFFFFFFFFFFFFFF\"", u64::MAX),
            ("250", 0xfa),
        ] {
            let c = ClusterConfig::from_toml(&GOOD.replace("\"0x00000000000000fa\"", text))
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.switch.datapath_id, Some(DatapathId(dpid)), "{text}");
        }
        for bad in ["\"0x\"", "\"xyz\"", "\"0x1234567890abcdef0\"", "-1"] {
            let e = invalid(&GOOD.replace("\"0x00000000000000fa\"", bad));
            assert!(
                e.contains("datapath") || e.contains("untagged"),
                "{bad}: {e}"
            );
        }
        assert_eq!(DatapathId(0xfa).to_string(), "0x00000000000000fa");
        let unpinned = GOOD.replace("datapath_id = \"0x00000000000000fa\"\n", "");
        assert_eq!(
            ClusterConfig::from_toml(&unpinned)
                .unwrap()
                .switch
                .datapath_id,
            None
        );
    }

    #[test]
    fn tls_paths_are_taken_from_the_files_folder() {
        let dir = std::env::temp_dir().join(format!("fsctl-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.toml");
        std::fs::write(
            &path,
            GOOD.replace("\"pki/ca.pem\"", "\"/etc/flowshift/ca.pem\""),
        )
        .unwrap();
        let c = ClusterConfig::load(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(c.tls.ca, PathBuf::from("/etc/flowshift/ca.pem"));
        assert_eq!(c.tls.cert, dir.join("pki/controller.pem"));
        assert_eq!(c.tls.key, dir.join("pki/controller.key"));
        // Credentials are required.
        let e = invalid(&GOOD.replace(
            "tls = { ca = \"pki/ca.pem\", cert = \"pki/controller.pem\", key = \"pki/controller.key\" }\n",
            "",
        ));
        assert!(e.contains("tls"), "{e}");
    }

    #[test]
    fn pools_expand_into_groups_and_standby_nodes_own_none() {
        let text = GOOD.replace(
            "[params]",
            "[[pools]]\nexternal = \"203.0.113.0/26\"\nsubscribers = \"100.80.0.0/16\"\n\
             groups = 32\nowners = [1, 2]\n[autoscale]\nenabled = true\nhigh = 0.9\n[params]",
        );
        let c = ClusterConfig::from_toml(&text).unwrap();
        assert_eq!(c.groups.len(), 34);
        assert!(c.pools.is_empty());
        let g = &c.groups[2 + 5];
        assert_eq!(g.external, Ipv4Addr::new(203, 0, 113, 5));
        assert_eq!(g.subscribers, "100.80.40.0/21".parse::<Ipv4Net>().unwrap());
        assert_eq!(g.owner, InstanceId(2));
        assert!(c.autoscale.enabled);
        assert_eq!(c.autoscale.high, 0.9);
        assert_eq!(c.group_routes().len(), 34);
        // The expanded form reads back the same.
        let again: ClusterConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        let e = invalid(&text.replace("groups = 32", "groups = 48"));
        assert!(e.contains("power of two"), "{e}");
        let e = invalid(&text.replace("id = 2\n", "id = 2\nstandby = true\n"));
        assert!(e.contains("owner 2 is a standby node"), "{e}");
        let e = invalid(&text.replace("high = 0.9", "high = 0.2"));
        assert!(e.contains("autoscale"), "{e}");
        let standby = text
            .replace("owners = [1, 2]", "owners = [1]")
            .replace("owner = 2", "owner = 1")
            .replace("id = 2\n", "id = 2\nstandby = true\n");
        let c = ClusterConfig::from_toml(&standby).unwrap();
        assert!(c.node(InstanceId(2)).unwrap().standby && !c.node(InstanceId(1)).unwrap().standby);
    }

    #[test]
    fn endpoints_parse_and_print() {
        for (s, shown) in [
            ("unix:/a/b.sock", "unix:/a/b.sock"),
            ("tcp:0.0.0.0:6653", "0.0.0.0:6653"),
            ("localhost:80", "localhost:80"),
            ("[::1]:6780", "[::1]:6780"),
        ] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), shown);
        }
        for bad in [
            "unix:",
            "6653",
            ":6653",
            "host:",
            "host:70000",
            "::1:80",
            "tcp:nohost",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
        let long = format!("unix:/{}", "x".repeat(200));
        assert!(long.parse::<Endpoint>().is_err());
    }

    fn invalid(text: &str) -> String {
        match ClusterConfig::from_toml(text) {
            Err(e @ (ConfigError::Invalid(_) | ConfigError::Parse(_))) => e.to_string(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn inconsistencies_are_all_reported() {
        let bad = GOOD
            .replace("port = 4", "port = 3")
            .replace("02:F5:00:00:00:02", "02:f5:00:00:00:01")
            .replace("owner = 2", "owner = 9")
            .replace("100.65.0.0/16", "100.64.1.0/24");
        let e = invalid(&bad);
        for needle in [
            "nodes 1 and 2 share port 3",
            "share MAC 02:f5:00:00:00:01",
            "owner 9 is not a configured node",
            "overlap",
        ] {
            assert!(e.contains(needle), "{needle:?} missing from {e}");
        }
        let e = invalid(&GOOD.replace("id = 2", "id = 1"));
        assert!(e.contains("node id 1 appears twice"), "{e}");
        let e = invalid(&GOOD.replace("100.64.0.0/16", "100.64.0.1/16"));
        assert!(e.contains("did you mean 100.64.0.0/16"), "{e}");
        let e = invalid(&GOOD.replace("port = 3", "port = 2"));
        assert!(e.contains("inside or outside port"), "{e}");
        let e = invalid(&GOOD.replace("02:f5:00:00:00:01", "03:f5:00:00:00:01"));
        assert!(e.contains("not a unicast"), "{e}");
        let e = invalid(&GOOD.replace("198.18.0.2", "198.18.0.1"));
        assert!(e.contains("group 198.18.0.1 appears twice"), "{e}");
        let e = invalid(&GOOD.replace("tcp:127.0.0.1:6780", "unix:/run/x/of.sock"));
        assert!(e.contains("openflow_listen and api_listen"), "{e}");
        // The token is optional: a TCP API authenticates the operator's certificate, a unix
        // one relies on the socket's permissions.
        let no_token = GOOD.replace("api_token_file = \"/etc/flowshift/api.token\"\n", "");
        assert_eq!(
            ClusterConfig::from_toml(&no_token).unwrap().api_token_file,
            None
        );
        let unix = no_token.replace("tcp:127.0.0.1:6780", "unix:/run/x/api.sock");
        assert_eq!(
            ClusterConfig::from_toml(&unix).unwrap().api_token_file,
            None
        );
        // A TCP OpenFlow listener must authenticate the switch.
        let of_tcp = GOOD.replace("unix:/run/x/of.sock", "tcp:0.0.0.0:6653");
        assert!(invalid(&of_tcp).contains("openflow_listen is TCP without openflow_tls"));
        let of_tls = of_tcp.replace("[switch]", "openflow_tls = true\n[switch]");
        assert!(ClusterConfig::from_toml(&of_tls).unwrap().openflow_tls);
    }

    #[test]
    fn malformed_text_gives_a_parse_error_naming_the_problem() {
        let e = invalid(&GOOD.replace("02:f5:00:00:00:01", "02:f5:00:00:01"));
        assert!(e.contains("expected six hex bytes"), "{e}");
        let e = invalid(&GOOD.replace("node_listen", "nodes_listen"));
        assert!(e.contains("nodes_listen"), "{e}");
        let e = invalid(&GOOD.replace("unix:/run/x/of.sock", "of.sock"));
        assert!(e.contains("HOST:PORT"), "{e}");
        let e = invalid("openflow_listen = ");
        assert!(e.starts_with("parsing"), "{e}");
        let only_switch = GOOD.split("[[nodes]]").next().unwrap();
        let e = invalid(only_switch);
        assert!(e.contains("nodes"), "{e}");
    }
}
