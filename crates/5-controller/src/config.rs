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

//!
//! This module holds the configuration's types, loading and derived views; the consistency
//! checks are in `validate`.
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

mod validate;

#[cfg(test)]
pub(crate) mod tests;
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
