//! The testbed's names, addresses and configuration files, as pure functions of the run id
//! and the node count (no I/O; unit-tested against the node and controller parsers).
//!
//! ```text
//!  fsR-sub (sub0 100.64.0.1-8/16, gw 100.64.255.254)      fsR-srv (srv0 203.0.113.10,.11/24)
//!        |  port 1                                                  |  port 2
//!  +-----+---------------- fsR-ovs: bridge fsR-br (netdev) ---------+------+  port 3+N: fsR-knat
//!        |  port 2+K (K = 1..N)                                            |  (bench: nftables)
//!  fsR-nK (fsnK, MAC 02:f5:00:00:00:0K, no IP; m0 198.19.0.(10+K)/24) -----+
//!        |  m0 <-> mK
//!  fsR-mgmt (bridge br0 198.19.0.1/24: the controller)
//! ```
//!
//! Group K (owned by node K at start): external 198.18.0.K, subscribers 100.(63+K).0.0/16.
//! Only group 1 gets the pre-loaded states. Elastic runs ([`Elastic`]) add standby nodes
//! (no group, `standby = true`) and a pool 198.18.1.0/26 split into groups with subscribers
//! in 100.96.0.0/16, dealt over the active nodes.

pub use super::standby::Elastic;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

/// OpenFlow port towards the subscribers.
pub const INSIDE_PORT: u32 = 1;
/// The run's PKI folder (`flowshift pki init` layout), relative to the run folder.
pub const PKI_DIR: &str = "pki";
/// OpenFlow port towards the servers.
pub const OUTSIDE_PORT: u32 = 2;
/// Subscriber interface (in the subscriber namespace).
pub const SUB_IF: &str = "sub0";
/// Server interface (in the server namespace).
pub const SRV_IF: &str = "srv0";
/// MAC of `sub0`: the nodes' `inside_next_hop`.
pub const SUB_MAC: &str = "02:f5:00:00:01:00";
/// MAC of `srv0`: the nodes' `outside_next_hop`.
pub const SRV_MAC: &str = "02:f5:00:00:02:00";
/// The subscribers' default gateway (a permanent neighbour entry; no host has it).
pub const SUB_GW: Ipv4Addr = Ipv4Addr::new(100, 64, 255, 254);
/// MAC of the subscribers' gateway (the switch rewrites it).
pub const SUB_GW_MAC: &str = "02:f5:00:00:01:fe";
/// The servers' gateway towards 198.18.0.0/15.
pub const SRV_GW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
/// MAC of the servers' gateway (the switch rewrites it).
pub const SRV_GW_MAC: &str = "02:f5:00:00:02:fe";
/// Server addresses on `srv0` (two, for the STUN server's alternate address).
pub const SERVERS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(203, 0, 113, 10),
    Ipv4Addr::new(203, 0, 113, 11),
];
/// The controller's address on the management bridge.
pub const CONTROLLER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// The controller's node listener port.
pub const NODE_LISTEN_PORT: u16 = 6700;
/// The controller's OpenFlow port on the management bridge (`--switch-tls`; otherwise the
/// switch connects through a unix socket).
pub const OPENFLOW_PORT: u16 = 6653;
/// The switch's address on the management bridge (`--switch-tls`: its `ssl:` connection).
pub const SWITCH_MGMT_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
/// The nodes' state-transfer port.
pub const TRANSFER_PORT: u16 = 6800;
/// The nodes' Prometheus port.
pub const METRICS_PORT: u16 = 9100;
/// Interface of the kernel NAT namespace towards the switch (`bench testbed`).
pub const KNAT_IF: &str = "nat0";
/// MAC of the kernel NAT's interface.
pub const KNAT_MAC: &str = "02:f5:00:00:03:00";
/// Most nodes a testbed may have.
pub const MAX_NODES: u16 = 16;
/// Subscriber host addresses per group on `sub0` (100.(63+K).0.1 ..= .SUBSCRIBER_HOSTS).
pub const SUBSCRIBER_HOSTS: u8 = 8;
/// Directory that holds every run's state directory.
pub const STATE_BASE: &str = "/run/flowshift";
/// UDP port of the probe echo (`flowshift probe echo`, on `SERVERS[1]` in the server
/// namespace); the link shaper gives this port its own class (see [`Shaping`]).
pub const PROBE_PORT: u16 = 7001;
/// Largest Ethernet frame on the testbed (MTU 1500 + 14-byte header).
const FRAME: u64 = 1514;
/// Flows the bulk queue is sized for (the poster's 100 iperf flows).
const SIZED_FOR_FLOWS: u64 = 100;

/// MAC of node `k`.
pub fn node_mac(k: u16) -> String {
    format!("02:f5:00:00:{:02x}:{:02x}", k >> 8, k & 0xff)
}

/// Address of node `k` on the management bridge.
pub fn node_mgmt_ip(k: u16) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 0, 10 + k as u8)
}

/// The external address of group `k`.
pub fn group_external(k: u16) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, k as u8)
}

/// The subscriber prefix of group `k` (a /16 inside 100.64.0.0/10).
pub fn group_subscribers(k: u16) -> String {
    format!("100.{}.0.0/16", 63 + k)
}

/// Subscriber host `host` (1-based) of group `k`.
pub fn subscriber(k: u16, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 63 + k as u8, 0, host)
}

/// Names of one run: every namespace and OVS-side interface starts with `fs<run>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Run id: four lowercase hex digits.
    pub run: String,
    /// Number of nodes (1..=[`MAX_NODES`]).
    pub nodes: u16,
}

impl Layout {
    /// The layout of run `run` with `nodes` nodes.
    pub fn new(run: &str, nodes: u16) -> Layout {
        Layout {
            run: run.to_owned(),
            nodes,
        }
    }

    /// `fs<run>`: the prefix of every name of the run.
    pub fn prefix(&self) -> String {
        format!("fs{}", self.run)
    }

    fn name(&self, suffix: &str) -> String {
        format!("fs{}-{suffix}", self.run)
    }

    /// The switch's namespace.
    pub fn ns_ovs(&self) -> String {
        self.name("ovs")
    }
    /// The subscribers' namespace.
    pub fn ns_sub(&self) -> String {
        self.name("sub")
    }
    /// The servers' namespace.
    pub fn ns_srv(&self) -> String {
        self.name("srv")
    }
    /// The management namespace (bridge and controller).
    pub fn ns_mgmt(&self) -> String {
        self.name("mgmt")
    }
    /// The kernel NAT's namespace (`bench testbed`).
    pub fn ns_knat(&self) -> String {
        self.name("knat")
    }
    /// Node `k`'s namespace.
    pub fn ns_node(&self, k: u16) -> String {
        self.name(&format!("n{k}"))
    }

    /// The bridge.
    pub fn bridge(&self) -> String {
        self.name("br")
    }
    /// Switch-side interface towards the subscribers.
    pub fn port_in(&self) -> String {
        self.name("in")
    }
    /// Switch-side interface towards the servers.
    pub fn port_out(&self) -> String {
        self.name("out")
    }
    /// Switch-side interface towards node `k`.
    pub fn port_node(&self, k: u16) -> String {
        self.name(&format!("n{k}"))
    }
    /// Switch-side interface towards the kernel NAT.
    pub fn port_knat(&self) -> String {
        self.name("nat")
    }
    /// Node `k`'s interface towards the switch.
    pub fn node_if(k: u16) -> String {
        format!("fsn{k}")
    }
    /// OpenFlow port of node `k`.
    pub fn node_ofport(k: u16) -> u32 {
        OUTSIDE_PORT + u32::from(k)
    }
    /// OpenFlow port of the kernel NAT.
    pub fn knat_ofport(&self) -> u32 {
        OUTSIDE_PORT + u32::from(self.nodes) + 1
    }
    /// Datapath id of the bridge: 0xf5 followed by the run id.
    pub fn datapath_id(&self) -> u64 {
        0xf5_0000 | u64::from(u16::from_str_radix(&self.run, 16).unwrap_or(0))
    }

    /// Whether `name` is a namespace of some run; returns the run id.
    pub fn run_of_namespace(name: &str) -> Option<&str> {
        let rest = name.strip_prefix("fs")?;
        let (run, suffix) = rest.split_once('-')?;
        if !is_run_id(run) {
            return None;
        }
        let known = matches!(suffix, "ovs" | "sub" | "srv" | "mgmt" | "knat")
            || suffix
                .strip_prefix('n')
                .is_some_and(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_digit()));
        known.then_some(run)
    }

    /// The node configuration of node `k` (TOML, `flowshift_node::NodeConfig`).
    pub fn node_config(&self, k: u16, opts: &ConfigOptions) -> String {
        let mut s = String::new();
        let me = node_mgmt_ip(k);
        let _ = writeln!(s, "# flowshift testbed run {}: node {k}", self.run);
        let _ = writeln!(s, "id = {k}");
        let _ = writeln!(s, "interface = \"{}\"", Layout::node_if(k));
        let _ = writeln!(s, "mac = \"{}\"", node_mac(k));
        let _ = writeln!(s, "inside_next_hop = \"{SUB_MAC}\"");
        let _ = writeln!(s, "outside_next_hop = \"{SRV_MAC}\"");
        let _ = writeln!(s, "controller = \"{CONTROLLER_IP}:{NODE_LISTEN_PORT}\"");
        let _ = writeln!(s, "transfer_listen = \"{me}:{TRANSFER_PORT}\"");
        let _ = writeln!(s, "metrics_listen = \"{me}:{METRICS_PORT}\"");
        let _ = writeln!(
            s,
            "tls = {{ ca = \"{PKI_DIR}/ca.pem\", cert = \"{PKI_DIR}/node-{k}.pem\", key = \"{PKI_DIR}/node-{k}.key\" }}"
        );
        let _ = writeln!(s, "vnet_hdr = {}", opts.vnet_hdr);
        for p in (1..=self.nodes).filter(|&p| p != k) {
            let _ = writeln!(s, "\n[[peers]]");
            let _ = writeln!(s, "id = {p}");
            let _ = writeln!(s, "mac = \"{}\"", node_mac(p));
            let _ = writeln!(s, "transfer = \"{}:{TRANSFER_PORT}\"", node_mgmt_ip(p));
        }
        let _ = writeln!(s, "\n[nat]");
        let _ = writeln!(s, "filtering = \"{}\"", opts.filtering);
        let mut groups = Vec::new();
        if opts.elastic.as_ref().is_none_or(|e| !e.is_standby(k)) {
            groups.push(format!(
                "{{ external = \"{}\", subscribers = \"{}\" }}",
                group_external(k),
                group_subscribers(k)
            ));
        }
        groups.extend(opts.elastic.iter().flat_map(|e| e.node_groups(k)));
        let _ = writeln!(s, "groups = [{}]", groups.join(", "));
        if k == 1 && opts.preload > 0 {
            let _ = writeln!(s, "\n[[preload]]");
            let _ = writeln!(s, "external = \"{}\"", group_external(1));
            let _ = writeln!(s, "states = {}", opts.preload);
            let _ = writeln!(s, "seed = {}", opts.seed);
        }
        s
    }

    /// The cluster configuration (TOML, `flowshift_controller::ClusterConfig`); the
    /// controller's sockets live in `dir`. `switch_tls`: the switch connects over TLS to
    /// [`CONTROLLER_IP`]:[`OPENFLOW_PORT`] (see [`switch_target`]).
    /// With `elastic`: standby nodes, the pool and `[autoscale]` ([`Elastic`]).
    pub fn cluster_config(
        &self,
        dir: &Path,
        switch_tls: bool,
        elastic: Option<&Elastic>,
    ) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# flowshift testbed run {}: controller", self.run);
        if switch_tls {
            let _ = writeln!(
                s,
                "openflow_listen = \"tcp:{CONTROLLER_IP}:{OPENFLOW_PORT}\""
            );
            let _ = writeln!(s, "openflow_tls = true");
        } else {
            let _ = writeln!(
                s,
                "openflow_listen = \"unix:{}\"",
                openflow_socket(dir).display()
            );
        }
        let _ = writeln!(s, "node_listen = \"{CONTROLLER_IP}:{NODE_LISTEN_PORT}\"");
        let _ = writeln!(
            s,
            "api_listen = \"unix:{}\"",
            dir.join("api.sock").display()
        );
        let _ = writeln!(s, "api_token_file = \"{}\"", api_token_file(dir).display());
        let _ = writeln!(
            s,
            "tls = {{ ca = \"{PKI_DIR}/ca.pem\", cert = \"{PKI_DIR}/controller.pem\", key = \"{PKI_DIR}/controller.key\" }}"
        );
        let _ = writeln!(
            s,
            "state_file = \"{}\"",
            dir.join("controller-state.json").display()
        );
        let _ = writeln!(s, "\n[switch]");
        let _ = writeln!(s, "inside_port = {INSIDE_PORT}");
        let _ = writeln!(s, "outside_port = {OUTSIDE_PORT}");
        // The bridge's datapath id is set by `up` (other-config:datapath-id): pin it.
        let _ = writeln!(s, "datapath_id = \"{:#018x}\"", self.datapath_id());
        for k in 1..=self.nodes {
            let _ = writeln!(s, "\n[[nodes]]");
            let _ = writeln!(s, "id = {k}");
            let _ = writeln!(s, "port = {}", Layout::node_ofport(k));
            let _ = writeln!(s, "mac = \"{}\"", node_mac(k));
            if elastic.is_some_and(|e| e.is_standby(k)) {
                let _ = writeln!(s, "standby = true");
            }
        }
        for k in (1..=self.nodes).filter(|&k| elastic.is_none_or(|e| !e.is_standby(k))) {
            let _ = writeln!(s, "\n[[groups]]");
            let _ = writeln!(s, "external = \"{}\"", group_external(k));
            let _ = writeln!(s, "subscribers = \"{}\"", group_subscribers(k));
            let _ = writeln!(s, "owner = {k}");
        }
        if let Some(e) = elastic {
            s.push_str(&e.cluster_sections(&self.run));
        }
        s
    }
}

/// The switch's private directory inside the run directory `dir`.
pub fn ovs_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("ovs")
}

/// The controller's OpenFlow socket: inside the switch's directory, because `ovs-vswitchd`
/// only connects to unix sockets under its run directory.
/// The operator API's bearer token file (written by `testbed up` before the controller
/// starts).
pub fn api_token_file(dir: &Path) -> std::path::PathBuf {
    dir.join("api.token")
}

/// The controller's OpenFlow socket.
pub fn openflow_socket(dir: &Path) -> std::path::PathBuf {
    ovs_dir(dir).join("of.sock")
}

/// The switch's controller target: the unix socket, or with `switch_tls` an `ssl:`
/// connection to the controller across the management bridge.
pub fn switch_target(dir: &Path, switch_tls: bool) -> String {
    if switch_tls {
        format!("ssl:{CONTROLLER_IP}:{OPENFLOW_PORT}")
    } else {
        format!("unix:{}", openflow_socket(dir).display())
    }
}

/// The controlled bottleneck: the server link (switch port `fsR-out` <-> `srv0`) shaped in both
/// directions by an HTB tree on the egress side of each end (`fsR-out` in the switch's
/// namespace: subscribers -> servers, the iperf3 data; `srv0` in the server namespace: servers
/// -> subscribers, ACKs and probe echoes). Pure: [`Shaping::tc_commands`] are the `tc`
/// argument lists, `bed.rs` runs them.
///
/// ```text
/// 1:   htb, default class 1:20
/// 1:1  rate R ceil R                       (the link)
/// 1:10 rate P ceil R prio 0 -> pfifo       UDP to/from PROBE_PORT (u32 filter)
/// 1:20 rate R-P ceil R prio 1 -> bfifo L   everything else (drop-tail)
/// ```
///
/// * **Queue (`limit_bytes`, L).** The bulk class ends in a byte-bounded drop-tail FIFO of
///   `max(4 ms at R, 100 flows x 3 full frames)`: 500 kB at 1 Gbit/s (about 330 frames, 3.3 per
///   flow). With 100 TCP flows sharing one drop-tail queue, a few packets per flow keep most
///   windows at 4+ segments, so a loss is repaired by fast retransmit rather than a timeout
///   (Morris, "TCP behavior with many flows", ICNP'97); the BDP/sqrt(N) rule would give only a
///   few kB here, since the base RTT is below 1 ms. The queueing delay it can add stays <= 4 ms
///   at 1 Gbit/s.
/// * **Burst (`burst_bytes`).** `max(0.5 ms at R, 16 kB)`: 62.5 kB at 1 Gbit/s. The switch and
///   the nodes send in batches of up to 32-64 frames; a smaller bucket makes the shaper's timer
///   (on a loaded 2-core machine) cost throughput below R. Half a millisecond at line rate is
///   invisible in 100 ms goodput bins.
/// * **Probe class (P).** `min(10 Mbit/s, R/10)` guaranteed, priority 0: the probe stream
///   (about 1 Mbit/s) shares the link but not the bulk queue, so it measures what the migration
///   does to a subscriber's packets (loss, reordering, delay in the switch and the nodes), not
///   the drop-tail losses the 100 TCP flows cause by design.
///
/// The rate counts whole Ethernet frames: at 1 Gbit/s TCP goodput tops out near 956 Mbit/s
/// (1448 payload bytes per 1514-byte frame).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shaping {
    /// Link rate, bits per second.
    pub rate_bps: u64,
    /// Bucket size of every class, bytes.
    pub burst_bytes: u64,
    /// Bulk queue bound, bytes.
    pub limit_bytes: u64,
    /// Rate guaranteed to the probe class, bits per second.
    pub probe_rate_bps: u64,
}

impl Shaping {
    /// The plan for a link of `rate_bps` (at least 1 Mbit/s).
    pub fn for_rate(rate_bps: u64) -> Shaping {
        let bytes_per_ms = rate_bps / 8 / 1000;
        Shaping {
            rate_bps,
            burst_bytes: (bytes_per_ms / 2).max(16 << 10),
            limit_bytes: (bytes_per_ms * 4).max(SIZED_FOR_FLOWS * 3 * FRAME),
            probe_rate_bps: (rate_bps / 10).min(10_000_000),
        }
    }

    /// `tc` argument lists that shape the egress of `dev`; probe packets are recognised by
    /// UDP `port_field` (`dport` towards the echo, `sport` from it) equal to [`PROBE_PORT`].
    pub fn tc_commands(&self, dev: &str, port_field: &str) -> Vec<Vec<String>> {
        let r = format!("{}bit", self.rate_bps);
        let p = format!("{}bit", self.probe_rate_bps);
        let bulk = format!("{}bit", self.rate_bps - self.probe_rate_bps);
        let b = self.burst_bytes.to_string();
        let q = FRAME.to_string();
        let port = PROBE_PORT.to_string();
        let limit = self.limit_bytes.to_string();
        let cmds: [&[&str]; 7] = [
            &[
                "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "20",
            ],
            &[
                "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", &r,
                "ceil", &r, "burst", &b, "cburst", &b, "quantum", &q,
            ],
            &[
                "class", "add", "dev", dev, "parent", "1:1", "classid", "1:10", "htb", "rate", &p,
                "ceil", &r, "burst", &b, "cburst", &b, "prio", "0", "quantum", &q,
            ],
            &[
                "class", "add", "dev", dev, "parent", "1:1", "classid", "1:20", "htb", "rate",
                &bulk, "ceil", &r, "burst", &b, "cburst", &b, "prio", "1", "quantum", &q,
            ],
            &[
                "qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", "pfifo", "limit",
                "1000",
            ],
            &[
                "qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:", "bfifo", "limit",
                &limit,
            ],
            &[
                "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "protocol", "17", "0xff", "match", "ip", port_field, &port,
                "0xffff", "flowid", "1:10",
            ],
        ];
        cmds.iter()
            .map(|c| c.iter().map(|s| (*s).to_owned()).collect())
            .collect()
    }
}

/// Whether `s` is a run id (four lowercase hex digits).
pub fn is_run_id(s: &str) -> bool {
    s.len() == 4
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// Node configuration choices shared by all nodes of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigOptions {
    /// Fictive states pre-loaded on group 1 (node 1).
    pub preload: u32,
    /// Seed of the pre-loaded states.
    pub seed: u64,
    /// NAT filtering, as the NAT configuration spells it (`endpoint-independent`,
    /// `address-dependent`).
    pub filtering: String,
    /// `PACKET_VNET_HDR` on the nodes' sockets.
    pub vnet_hdr: bool,
    /// Standby nodes and the pool's groups ([`Elastic`]); `None`: every node active, one
    /// group each.
    pub elastic: Option<Elastic>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowshift_migration::InstanceId;

    fn opts(preload: u32) -> ConfigOptions {
        ConfigOptions {
            preload,
            seed: 7,
            filtering: "endpoint-independent".into(),
            vnet_hdr: true,
            elastic: None,
        }
    }

    #[test]
    fn names_fit_and_are_recognised() {
        let l = Layout::new("0a1f", 16);
        for n in [
            l.bridge(),
            l.port_in(),
            l.port_out(),
            l.port_node(16),
            l.port_knat(),
            Layout::node_if(16),
        ] {
            assert!(n.len() <= 15, "{n}");
        }
        for ns in [
            l.ns_ovs(),
            l.ns_sub(),
            l.ns_srv(),
            l.ns_mgmt(),
            l.ns_knat(),
            l.ns_node(3),
        ] {
            assert_eq!(Layout::run_of_namespace(&ns), Some("0a1f"), "{ns}");
        }
        for other in [
            "fsof-12-0",
            "fs0a1f-x",
            "fs0A1F-sub",
            "fs0a1-sub",
            "fs0a1f-n",
            "x",
        ] {
            assert_eq!(Layout::run_of_namespace(other), None, "{other}");
        }
        assert_eq!(l.datapath_id(), 0xf5_0a1f);
        assert_eq!(Layout::node_ofport(1), 3);
        assert_eq!(l.knat_ofport(), 19);
        assert_eq!(node_mac(2), "02:f5:00:00:00:02");
        assert_eq!(node_mgmt_ip(2), Ipv4Addr::new(198, 19, 0, 12));
    }

    #[test]
    fn node_configs_parse_and_validate() {
        let l = Layout::new("beef", 3);
        for k in 1..=3 {
            let text = l.node_config(k, &opts(65_000));
            let cfg = flowshift_node::NodeConfig::parse(&text)
                .unwrap_or_else(|e| panic!("node {k}: {e}\n{text}"));
            assert_eq!(cfg.id.0, k);
            assert_eq!(cfg.peers.len(), 2);
            assert_eq!(cfg.interface, format!("fsn{k}"));
            assert_eq!(cfg.preload.len(), usize::from(k == 1));
            assert_eq!(cfg.nat.groups.len(), 1);
            assert_eq!(cfg.nat.groups[0].external, group_external(k));
        }
        let ad = ConfigOptions {
            filtering: "address-dependent".into(),
            ..opts(0)
        };
        let cfg = flowshift_node::NodeConfig::parse(&l.node_config(1, &ad)).unwrap();
        assert_eq!(
            cfg.nat.filtering,
            flowshift_nat::Filtering::AddressDependent
        );
        assert!(cfg.preload.is_empty());
    }

    #[test]
    fn elastic_configs_parse_with_standby_nodes_pools_and_autoscale() {
        let l = Layout::new("beef", 3);
        let e = Elastic {
            active: 1,
            pool_groups: 8,
            capacity_pps: 3000,
            exe: "/usr/bin/flowshift".into(),
        };
        let o = ConfigOptions {
            elastic: Some(e.clone()),
            ..opts(0)
        };
        let n1 = flowshift_node::NodeConfig::parse(&l.node_config(1, &o)).unwrap();
        assert_eq!(n1.nat.groups.len(), 9);
        assert_eq!(n1.peers.len(), 2);
        let n3 = flowshift_node::NodeConfig::parse(&l.node_config(3, &o)).unwrap();
        assert!(n3.nat.groups.is_empty());
        let dir = Path::new("/run/flowshift/testbed-beef");
        let text = l.cluster_config(dir, false, Some(&e));
        let c = flowshift_controller::ClusterConfig::from_toml(&text)
            .unwrap_or_else(|err| panic!("{err}\n{text}"));
        assert_eq!(c.nodes.len(), 3);
        assert!(c.nodes[1].standby && c.nodes[2].standby && !c.nodes[0].standby);
        assert_eq!(c.groups.len(), 9);
        assert!(c.groups.iter().all(|g| g.owner == InstanceId(1)));
        assert!(c.autoscale.enabled);
        assert_eq!(c.autoscale.capacity_pps, 3000.0);
        assert_eq!(c.autoscale.start_command[2..4], ["node", "start"]);
        assert_eq!(
            c.params.unwrap().idle_max,
            std::time::Duration::from_secs(1)
        );
    }

    #[test]
    fn link_rates_parse_and_shaping_is_sized_for_100_flows() {
        let s = Shaping::for_rate(1_000_000_000);
        assert_eq!(s.limit_bytes, 500_000);
        assert_eq!(s.burst_bytes, 62_500);
        assert_eq!(s.probe_rate_bps, 10_000_000);
        assert!(s.limit_bytes >= 100 * 3 * FRAME);
        let slow = Shaping::for_rate(10_000_000);
        assert_eq!(slow.limit_bytes, 100 * 3 * FRAME);
        assert_eq!(slow.burst_bytes, 16 << 10);
        assert_eq!(slow.probe_rate_bps, 1_000_000);
        let cmds = s.tc_commands("srv0", "sport");
        assert_eq!(cmds.len(), 7);
        assert!(
            cmds[0]
                .join(" ")
                .starts_with("qdisc replace dev srv0 root handle 1: htb")
        );
        assert!(
            cmds[3]
                .join(" ")
                .contains("rate 990000000bit ceil 1000000000bit")
        );
        assert!(
            cmds[6]
                .join(" ")
                .contains("match ip sport 7001 0xffff flowid 1:10")
        );
    }

    #[test]
    fn the_cluster_config_parses_and_validates() {
        let l = Layout::new("beef", 2);
        let text = l.cluster_config(Path::new("/run/flowshift/testbed-beef"), false, None);
        let cfg = flowshift_controller::ClusterConfig::from_toml(&text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(cfg.nodes.len(), 2);
        assert_eq!(cfg.groups.len(), 2);
        assert_eq!(cfg.groups[1].owner, InstanceId(2));
        assert_eq!(cfg.nodes[1].port, 4);
        assert_eq!(
            cfg.api_token_file.as_deref(),
            Some(Path::new("/run/flowshift/testbed-beef/api.token"))
        );
        assert_eq!(cfg.tls.cert, Path::new("pki/controller.pem"));
        assert_eq!(
            cfg.switch.datapath_id,
            Some(flowshift_controller::DatapathId(l.datapath_id()))
        );
        assert!(!cfg.openflow_tls);
        let dir = Path::new("/run/flowshift/testbed-beef");
        let tls =
            flowshift_controller::ClusterConfig::from_toml(&l.cluster_config(dir, true, None))
                .unwrap();
        assert!(tls.openflow_tls);
        assert_eq!(tls.openflow_listen.to_string(), "198.19.0.1:6653");
        assert_eq!(switch_target(dir, true), "ssl:198.19.0.1:6653");
        assert!(switch_target(dir, false).starts_with("unix:/run/flowshift/testbed-beef/"));
    }
}
