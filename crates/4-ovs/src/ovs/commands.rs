//! Configuring a running [`Ovs`]: `ovs-vsctl` and `ovs-ofctl` commands, the controller,
//! SSL, veth ports, and queries of port numbers and the datapath id.

use super::IFNAMSIZ_MAX;
use super::Ovs;
use crate::OvsError;
use crate::netns::Netns;
use crate::process::{COMMAND_TIMEOUT, run};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

impl Ovs {
    /// Runs `ovs-vsctl` against this instance's database; returns stdout.
    pub fn vsctl(&self, args: &[&str]) -> Result<String, OvsError> {
        self.vsctl_opts(&[], args)
    }

    pub(super) fn vsctl_opts(&self, opts: &[&str], args: &[&str]) -> Result<String, OvsError> {
        run(
            self.env(Command::new(&self.tools.vsctl))
                .arg(format!("--db=unix:{}", self.db_socket().display()))
                .arg("--timeout=10")
                .args(opts)
                .args(args),
            COMMAND_TIMEOUT + Duration::from_secs(1),
        )
    }

    /// Runs `ovs-ofctl -O OpenFlow13 --no-names <command> <mgmt target> args...`; returns
    /// stdout.
    pub fn ofctl(&self, command: &str, args: &[&str]) -> Result<String, OvsError> {
        run(
            self.env(Command::new(&self.tools.ofctl))
                .args(["-O", "OpenFlow13", "--no-names", "--timeout=10", command])
                .arg(self.mgmt_target())
                .args(args),
            COMMAND_TIMEOUT + Duration::from_secs(1),
        )
    }

    /// `ovs-ofctl dump-flows` output, one flow per line after the reply header line.
    pub fn dump_flows(&self) -> Result<String, OvsError> {
        self.ofctl("dump-flows", &[])
    }

    /// `ovs-ofctl dump-ports` output (per-port packet, byte, drop and error counters).
    pub fn dump_ports(&self) -> Result<String, OvsError> {
        self.ofctl("dump-ports", &[])
    }

    /// Whether veths keep their TX offloads ([`OvsOptions::userspace_tso`](super::OvsOptions::userspace_tso)).
    pub fn userspace_tso(&self) -> bool {
        self.userspace_tso
    }

    /// The switch's TLS credentials for `ssl:` controllers (`ovs-vsctl set-ssl`): its private
    /// key, its certificate and the CA certificate the controller's must chain to (Open vSwitch
    /// does not check the controller's name). Absolute paths: the daemons read them.
    pub fn set_ssl(&self, key: &Path, cert: &Path, ca: &Path) -> Result<(), OvsError> {
        let (key, cert, ca) = (key.display(), cert.display(), ca.display());
        self.vsctl(&[
            "set-ssl",
            &key.to_string(),
            &cert.to_string(),
            &ca.to_string(),
        ])
        .map(|_| ())
    }

    /// Points the bridge at a controller (`unix:<path>`, `tcp:<ip>:<port>` or, after
    /// [`Ovs::set_ssl`], `ssl:<ip>:<port>`; addresses as seen from inside the namespace), out
    /// of band, retrying at least every second. This flushes all flows.
    pub fn set_controller(&self, target: &str) -> Result<(), OvsError> {
        let br = self.bridge.as_str();
        self.vsctl(&[
            "set-controller",
            br,
            target,
            "--",
            "set",
            "controller",
            br,
            "max_backoff=1000",
            "connection_mode=out-of-band",
        ])
        .map(|_| ())
    }

    /// Creates a veth pair with `port` inside the switch namespace and `peer` inside
    /// `peer_ns`, brings both up, turns off TX checksum offload on both (needed for TCP through
    /// the userspace datapath; skipped when `ethtool` is absent, and with
    /// [`OvsOptions::userspace_tso`](super::OvsOptions::userspace_tso), which keeps the offloads), adds `port` to the bridge
    /// (with OpenFlow port number `ofport` if given) and returns its OpenFlow port number.
    /// Both ends steer received packets by flow hash ([`Netns::steer_by_flow`]; skipped
    /// where the kernel lacks it), so the pair never reorders a flow.
    pub fn add_veth_port(
        &self,
        port: &str,
        peer_ns: &Netns,
        peer: &str,
        ofport: Option<u32>,
    ) -> Result<u32, OvsError> {
        for name in [port, peer] {
            if name.is_empty() || name.len() > IFNAMSIZ_MAX {
                return Err(OvsError::Invalid(format!("bad interface name {name:?}")));
            }
        }
        self.netns.ip_cmd(&[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            peer_ns.name(),
        ])?;
        self.netns.ip_cmd(&["link", "set", port, "up"])?;
        peer_ns.ip_cmd(&["link", "set", peer, "up"])?;
        self.netns.steer_by_flow(port)?;
        peer_ns.steer_by_flow(peer)?;
        if let Some(ethtool) = self.tools.ethtool.as_ref().filter(|_| !self.userspace_tso) {
            run(
                self.netns.command(ethtool).args(["-K", port, "tx", "off"]),
                COMMAND_TIMEOUT,
            )?;
            run(
                peer_ns.command(ethtool).args(["-K", peer, "tx", "off"]),
                COMMAND_TIMEOUT,
            )?;
        }
        let request = ofport.map(|n| format!("ofport_request={n}"));
        let mut args = vec!["add-port", self.bridge.as_str(), port];
        if let Some(r) = &request {
            args.extend(["--", "set", "interface", port, r.as_str()]);
        }
        self.vsctl(&args)?;
        self.ofport(port)
    }

    /// The OpenFlow port number of interface `iface` (`ovs-vsctl get Interface <iface> ofport`).
    pub fn ofport(&self, iface: &str) -> Result<u32, OvsError> {
        let out = self.vsctl(&["get", "interface", iface, "ofport"])?;
        let n: i64 = out.trim().parse().map_err(|_| {
            OvsError::Invalid(format!("ofport of {iface}: unexpected {:?}", out.trim()))
        })?;
        u32::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| {
            OvsError::Invalid(format!("interface {iface} has no OpenFlow port ({n})"))
        })
    }

    /// The bridge's datapath id as reported by OVSDB.
    pub fn datapath_id(&self) -> Result<u64, OvsError> {
        let out = self.vsctl(&["get", "bridge", &self.bridge, "datapath_id"])?;
        let hex = out.trim().trim_matches('"');
        u64::from_str_radix(hex, 16)
            .map_err(|_| OvsError::Invalid(format!("unexpected datapath_id {hex:?}")))
    }
}
