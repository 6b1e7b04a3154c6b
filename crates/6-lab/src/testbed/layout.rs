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
use std::net::Ipv4Addr;
use std::path::Path;

mod config;
mod shaping;

pub use config::ConfigOptions;
pub use shaping::Shaping;

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
}

/// The switch's private directory inside the run directory `dir`.
pub fn ovs_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("ovs")
}

/// The operator API's bearer token file (written by `testbed up` before the controller
/// starts).
pub fn api_token_file(dir: &Path) -> std::path::PathBuf {
    dir.join("api.token")
}

/// The controller's OpenFlow socket: inside the switch's directory, because `ovs-vswitchd`
/// only connects to unix sockets under its run directory.
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

/// Whether `s` is a run id (four lowercase hex digits).
pub fn is_run_id(s: &str) -> bool {
    s.len() == 4
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
