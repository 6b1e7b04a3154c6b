//! The consistency checks of a [`ClusterConfig`] ([`ClusterConfig::validate`]): nodes, ports,
//! MACs, groups, subscriber prefixes and listen addresses, every problem reported at once.

use super::*;

impl ClusterConfig {
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
}
