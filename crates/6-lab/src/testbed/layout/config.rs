//! The node and cluster configuration files of a run (TOML for `flowshift_node::NodeConfig`
//! and `flowshift_controller::ClusterConfig`), as pure functions of its [`Layout`].

use super::*;
use std::fmt::Write as _;

impl Layout {
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
