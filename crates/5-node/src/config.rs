//! The node configuration ([`NodeConfig`], TOML) and the NAT instance it describes.
//!
//! ```toml
//! id = 1                                   # instance id (0..=65535), unique in the cluster
//! interface = "fsn1"                       # interface towards the switch (AF_PACKET)
//! mac = "02:f5:00:00:00:01"                # this node's MAC as the switch/controller know it
//! inside_next_hop = "02:f5:00:00:01:00"    # eth_dst of frames towards subscribers
//! outside_next_hop = "02:f5:00:00:02:00"   # eth_dst of frames towards the outside
//! controller = "198.19.0.1:6700"           # controller's node listener (the node connects)
//! transfer_listen = "198.19.0.11:6800"     # state-transfer TCP listener
//! metrics_listen = "198.19.0.11:9100"      # Prometheus GET /metrics over mutual TLS (`tls`;
//!                                          # admits monitor. and operator.flowshift.internal;
//!                                          # optional; omit = off)
//! metrics_token_file = "/etc/flowshift/metrics.token"  # optional bearer token: a second factor
//! vnet_hdr = true                          # PACKET_VNET_HDR (GSO frames pass); default true
//! tls = { ca = "pki/ca.pem", cert = "pki/node-1.pem", key = "pki/node-1.key" }
//!                                          # mutual TLS (`flowshift pki init`); relative to this file
//! # optional I/O tuning: ring_block_kib, ring_blocks, batch, cpu, qdisc_bypass, and the
//! # packet loop: poll = "adaptive" | "busy", spin_us (alias busy_poll), side_budget
//! [[peers]]                                # every other node
//! id = 2
//! mac = "02:f5:00:00:00:02"
//! transfer = "198.19.0.12:6800"
//! [nat]                                    # flowshift_nat::NatConfig (all fields default)
//! groups = [{ external = "198.18.0.1", subscribers = "100.64.0.0/16" }]
//! max_sessions_per_subscriber = 4096       # RFC 6888 REQ-5 (default 4096)
//! # hash_seed, rng_seed: leave them out: each start draws secret ones from the OS
//! [migration]                              # flowshift_migration::MigrationConfig
//! [params]                                 # default flowshift_migration::Params
//! [[preload]]                              # fictive states (flowshift_nat::record::fictive_records)
//! external = "198.18.0.1"
//! states = 65000
//! seed = 1
//! ```

use crate::frame::Offload;
use crate::pacing::PollMode;
use flowshift_migration::{Instance, InstanceId, MigrationConfig, Params};
use flowshift_nat::{Nat, NatConfig};
use flowshift_wire::Instant;
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub use flowshift_wire::MacAddr;

/// Another node of the cluster.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its instance id.
    pub id: InstanceId,
    /// Its MAC on the switch (chained frames come from and go to it).
    pub mac: MacAddr,
    /// Its state-transfer listener.
    pub transfer: SocketAddr,
}

/// Fictive states to import into a group at start-up (the poster's pre-loaded mappings).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreloadConfig {
    /// The group's external address; its subscriber prefix must cover 100.64.1.0/27.
    pub external: Ipv4Addr,
    /// Number of states (sessions).
    pub states: u32,
    /// Seed of the idle times.
    #[serde(default)]
    pub seed: u64,
}

/// The whole node configuration. Parse with [`NodeConfig::parse`] or [`load_config`]; both
/// validate.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Instance id, unique in the cluster.
    pub id: InstanceId,
    /// Interface towards the switch.
    pub interface: String,
    /// This node's MAC as the switch and the controller know it (source of every frame sent).
    pub mac: MacAddr,
    /// Destination MAC of translated packets towards the subscribers.
    pub inside_next_hop: MacAddr,
    /// Destination MAC of translated packets towards the outside.
    pub outside_next_hop: MacAddr,
    /// The controller's node listener (the node connects, and reconnects every second).
    pub controller: SocketAddr,
    /// Where the node accepts state-transfer connections from its peers.
    pub transfer_listen: SocketAddr,
    /// This node's TLS credentials (`flowshift pki init` writes them): every transfer,
    /// control and `/metrics` connection is mutual TLS, the certificate naming this node's id. Relative
    /// paths are taken from the configuration file's folder ([`load_config`]).
    pub tls: flowshift_trust::TlsFiles,
    /// Prometheus endpoint (`GET /metrics`) over mutual TLS with [`NodeConfig::tls`]: the
    /// scraper presents a certificate naming `flowshift_trust::MONITOR_NAME` (or the
    /// operator's); `None`: off.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer token `/metrics` requires after the certificate (created with mode 0600 if
    /// missing; Prometheus sends it with `authorization: {credentials_file: ...}`); `None`:
    /// the certificate alone admits.
    #[serde(default)]
    pub metrics_token_file: Option<PathBuf>,
    /// Exchange a virtio-net header with the kernel (`PACKET_VNET_HDR`): GSO super-frames and
    /// partial checksums pass through the NAT (default true).
    #[serde(default = "default_true")]
    pub vnet_hdr: bool,
    /// Size of one block of the receive ring, KiB: a power of two, at least 128 with
    /// `vnet_hdr` (a 64 KiB GSO frame must fit), at least 4 otherwise (default 256).
    #[serde(default = "default_ring_block_kib")]
    pub ring_block_kib: u32,
    /// Blocks in the receive ring (default 64: 16 MiB with the default block size).
    #[serde(default = "default_ring_blocks")]
    pub ring_blocks: u32,
    /// Packets per NAT batch and per `sendmmsg` call, 1..=1024 (default 64).
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// How the packet thread waits for work: `"adaptive"` (spin `spin_us`, then block in
    /// poll(2) until a ring block, a queued command or transfer frame, or the next timer) or
    /// `"busy"` (never block; one core at 100%). Default adaptive; see [`crate::pacing`].
    #[serde(default)]
    pub poll: PollMode,
    /// Adaptive polling: microseconds the packet thread keeps spinning after its last work
    /// before it blocks in poll(2), 0..=1000000. 0 blocks at once; large values burn a core
    /// (default 50, which suits a 2-core testbed). Also accepted under its former name
    /// `busy_poll`.
    #[serde(default = "default_spin_us", alias = "busy_poll")]
    pub spin_us: u32,
    /// Transfer frames and controller commands (together) the packet thread handles per loop
    /// iteration before it reads the ring again, 1..=1024 (default 4): bounds how long a burst
    /// of state-transfer batches can keep the ring waiting (`max_poll_gap_us`). One item can
    /// cost about a millisecond (a 512-record batch imported, or the next one exported when
    /// its predecessor is acknowledged), so the default keeps a burst's stall to a few ms.
    #[serde(default = "default_side_budget")]
    pub side_budget: u32,
    /// CPU to pin the packet thread to (default: not pinned).
    #[serde(default)]
    pub cpu: Option<usize>,
    /// Size the NAT's tables for `nat.max_mappings` and `nat.max_sessions` at start-up (default
    /// true), as a carrier NAT does: no table ever grows (a rehash of a large table would keep
    /// the packet thread from its ring for tens of milliseconds, for instance while a migration
    /// installs state). Costs the tables' memory up front (about 0.1 KB per session).
    #[serde(default = "default_true")]
    pub preallocate: bool,
    /// Bypass the interface's qdisc when sending (`PACKET_QDISC_BYPASS`; default false).
    #[serde(default)]
    pub qdisc_bypass: bool,
    /// The other nodes.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// The NAT.
    #[serde(default)]
    pub nat: NatConfig,
    /// The migration engine.
    #[serde(default)]
    pub migration: MigrationConfig,
    /// Default parameters of migrations this node starts (a request may carry its own).
    #[serde(default)]
    pub params: Params,
    /// Fictive states imported at start-up.
    #[serde(default)]
    pub preload: Vec<PreloadConfig>,
    /// Which of the NAT's seeds the file sets (`[nat] hash_seed`, `rng_seed`); set by
    /// [`NodeConfig::parse`]. [`NodeConfig::build_instance`] draws the others from the OS
    /// random source, so every start of a node has its own secret hash and port-choice seeds.
    #[serde(skip)]
    pub nat_seeds: SeedsGiven,
}

/// Which NAT seeds a configuration file sets explicitly (the rest are drawn at random).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeedsGiven {
    /// `[nat] hash_seed` is in the file.
    pub hash_seed: bool,
    /// `[nat] rng_seed` is in the file.
    pub rng_seed: bool,
}

impl SeedsGiven {
    /// Which seeds the `[nat]` table of a parsed TOML document sets.
    fn of(doc: &toml::Table) -> SeedsGiven {
        let nat = doc.get("nat").and_then(toml::Value::as_table);
        let has = |k: &str| nat.is_some_and(|t| t.contains_key(k));
        SeedsGiven {
            hash_seed: has("hash_seed"),
            rng_seed: has("rng_seed"),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_ring_block_kib() -> u32 {
    256
}
fn default_ring_blocks() -> u32 {
    64
}
fn default_batch() -> u32 {
    64
}
fn default_spin_us() -> u32 {
    50
}
fn default_side_budget() -> u32 {
    4
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a field has the wrong type or name.
    #[error(transparent)]
    Parse(#[from] toml::de::Error),
    /// Well-formed but inconsistent.
    #[error("invalid node configuration: {0}")]
    Invalid(String),
}

/// Reads, parses and validates a node configuration file.
pub fn load_config(path: impl AsRef<Path>) -> Result<NodeConfig, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut cfg = NodeConfig::parse(&text)?;
    cfg.tls = cfg.tls.resolved(path.parent().unwrap_or(Path::new(".")));
    Ok(cfg)
}

impl NodeConfig {
    /// Parses and validates a configuration.
    pub fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        let mut cfg: NodeConfig = toml::from_str(text)?;
        // Parsed once more as a plain table (errors keep their positions from the first parse).
        cfg.nat_seeds = SeedsGiven::of(&toml::from_str(text)?);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the configuration for consistency (the NAT and migration parts with their own
    /// validators).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.interface.is_empty()
            || self.interface.len() > 15
            || self
                .interface
                .chars()
                .any(|c| c == '/' || c.is_whitespace() || c == ':')
        {
            return bad(format!(
                "interface {:?}: 1 to 15 characters, no '/', ':' or spaces",
                self.interface
            ));
        }
        for (what, mac) in [
            ("mac", self.mac),
            ("inside_next_hop", self.inside_next_hop),
            ("outside_next_hop", self.outside_next_hop),
        ] {
            if mac.is_multicast() || mac.0 == [0; 6] {
                return bad(format!("{what} {mac} is not a unicast MAC address"));
            }
        }
        let mut ids = HashSet::new();
        let mut macs = HashSet::new();
        let mut addrs = HashSet::new();
        for p in &self.peers {
            if p.id == self.id {
                return bad(format!("peer id {} is this node's own id", p.id));
            }
            if !ids.insert(p.id) {
                return bad(format!("peer id {} appears twice", p.id));
            }
            if p.mac == self.mac {
                return bad(format!("peer {} has this node's own MAC {}", p.id, p.mac));
            }
            if p.mac.is_multicast() || p.mac.0 == [0; 6] {
                return bad(format!("peer {} MAC {} is not unicast", p.id, p.mac));
            }
            if !macs.insert(p.mac) {
                return bad(format!("peer MAC {} appears twice", p.mac));
            }
            if p.transfer == self.transfer_listen {
                return bad(format!(
                    "peer {} transfer address {} is this node's transfer_listen",
                    p.id, p.transfer
                ));
            }
            if !addrs.insert(p.transfer) {
                return bad(format!(
                    "peer transfer address {} appears twice",
                    p.transfer
                ));
            }
        }
        let kib = self.ring_block_kib;
        let min_kib = if self.vnet_hdr { 128 } else { 4 };
        if !kib.is_power_of_two() || kib < min_kib || kib > 64 * 1024 {
            return bad(format!(
                "ring_block_kib {kib}: a power of two from {min_kib} to 65536{}",
                if self.vnet_hdr {
                    " (vnet_hdr: a 64 KiB GSO frame must fit in a block)"
                } else {
                    ""
                }
            ));
        }
        if self.ring_blocks < 2 || u64::from(kib) * u64::from(self.ring_blocks) > 1 << 20 {
            return bad(format!(
                "ring_blocks {}: at least 2, and the ring at most 1 GiB",
                self.ring_blocks
            ));
        }
        if self.batch == 0 || self.batch > 1024 {
            return bad(format!("batch {}: 1 to 1024", self.batch));
        }
        if self.spin_us > 1_000_000 {
            return bad(format!(
                "spin_us (busy_poll) {} us: at most 1 s",
                self.spin_us
            ));
        }
        if self.side_budget == 0 || self.side_budget > 1024 {
            return bad(format!("side_budget {}: 1 to 1024", self.side_budget));
        }
        self.nat
            .validate()
            .or_else(|e| bad(format!("[nat]: {e}")))?;
        self.migration
            .validate()
            .or_else(|e| bad(format!("[migration]: {e}")))?;
        self.params
            .validate(&self.migration)
            .or_else(|e| bad(format!("[params]: {e}")))?;
        let fictive = flowshift_nat::prefix(Ipv4Addr::new(100, 64, 1, 0), 27).expect("valid");
        let mut preloaded = HashSet::new();
        let mut states = 0u64;
        for p in &self.preload {
            let Some(g) = self.nat.groups.iter().find(|g| g.external == p.external) else {
                return bad(format!(
                    "[[preload]] external {} is not a group in [nat] groups",
                    p.external
                ));
            };
            if !g.subscribers.contains(&fictive) {
                return bad(format!(
                    "[[preload]] {}: its subscriber prefix {} must cover {fictive} (the fictive subscribers)",
                    p.external, g.subscribers
                ));
            }
            if !preloaded.insert(p.external) {
                return bad(format!("[[preload]] {} appears twice", p.external));
            }
            if p.states == 0 {
                return bad(format!("[[preload]] {}: states must be >= 1", p.external));
            }
            states += u64::from(p.states);
        }
        if states > u64::from(self.nat.max_sessions) {
            return bad(format!(
                "[[preload]] {states} states exceed nat.max_sessions {}",
                self.nat.max_sessions
            ));
        }
        Ok(())
    }

    /// The NAT configuration with the seeds the file leaves out drawn from the OS random
    /// source (see [`NodeConfig::nat_seeds`]).
    pub fn nat_config(&self) -> Result<NatConfig, ConfigError> {
        let random = || {
            getrandom::u64().map_err(|e| {
                ConfigError::Invalid(format!("[nat]: no OS random source for the seeds: {e}"))
            })
        };
        let mut nat = self.nat.clone();
        if !self.nat_seeds.hash_seed {
            nat.hash_seed = random()?;
        }
        if !self.nat_seeds.rng_seed {
            nat.rng_seed = random()?;
        }
        Ok(nat)
    }

    /// Builds the NAT instance: the NAT with its groups (and its seeds, [`Self::nat_config`]),
    /// the pre-loaded fictive states (imported at time zero; their port-block events stay
    /// queued in the NAT for the driver's mapping log), wrapped in a migration [`Instance`] whose packets carry their offload tag.
    pub fn build_instance(&self) -> Result<Instance<Offload>, ConfigError> {
        let err = |what: &str, e: &dyn fmt::Display| ConfigError::Invalid(format!("{what}: {e}"));
        let mut nat = Nat::new(self.nat_config()?).map_err(|e| err("[nat]", &e))?;
        if self.preallocate {
            nat.reserve(
                self.nat.max_mappings as usize,
                self.nat.max_sessions as usize,
            );
        }
        for p in &self.preload {
            let g = nat
                .group_id(p.external)
                .ok_or_else(|| err("[[preload]]", &format!("no group {}", p.external)))?;
            for chunk in flowshift_nat::record::fictive_records(p.states, p.seed) {
                nat.import(g, Instant::ZERO, &chunk)
                    .map_err(|e| err(&format!("[[preload]] {}", p.external), &e))?;
            }
        }
        let epoch = getrandom::u32().map_err(|e| err("[migration] epoch", &e))?;
        Instance::with_meta(self.id, nat, self.migration.clone().with_epoch(epoch))
            .map_err(|e| err("[migration]", &e))
    }
}
