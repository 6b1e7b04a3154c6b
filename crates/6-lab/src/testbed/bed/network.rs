//! Bringing up a testbed's network: the namespaces, the switch and its ports, addresses and
//! routes, the shaped server link, the management bridge (and the wide-area link).

use super::*;

impl Testbed {
    /// The network part of [`Testbed::build`]: global socket buffer defaults, namespaces,
    /// Open vSwitch and its ports, addresses and routes, link shaping, the management bridge.
    pub(super) fn build_network(&mut self, opts: &UpOptions) -> Result<()> {
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
            controller: layout::switch_target(&dir, opts.switch_tls),
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
        if let Some(e) = &opts.elastic {
            for i in 0..e.pool_groups as usize {
                let a = e
                    .subscriber(i)
                    .ok_or_else(|| anyhow!("pool group {i} has no subscriber"))?;
                let p = crate::testbed::standby::pool_subscribers().prefix_len();
                sys::ip_in(
                    &sub,
                    &["addr", "add", &format!("{a}/{p}"), "dev", layout::SUB_IF],
                )?;
                self.state.pool_subscribers.push(a.to_string());
            }
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
            if opts.wan.is_none_or(|w| w.node != k) {
                sys::ip_in(&mgmt, &["link", "set", &m, "master", "br0", "up"])?;
            }
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
        if let Some(w) = opts.wan {
            self.progress("wide-area link");
            crate::testbed::wan::install(self, &w, &mgmt, &l.ns_node(w.node))?;
        }
        if opts.switch_tls {
            // The switch reaches the controller's TCP OpenFlow listener over this bridge.
            let ovs_ns = l.ns_ovs();
            sys::ip_in(
                &mgmt,
                &[
                    "link", "add", "msw", "type", "veth", "peer", "name", "m0", "netns", &ovs_ns,
                ],
            )?;
            sys::ip_in(&mgmt, &["link", "set", "msw", "master", "br0", "up"])?;
            sys::ip_in(
                &ovs_ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", layout::SWITCH_MGMT_IP),
                    "dev",
                    "m0",
                ],
            )?;
            sys::ip_in(&ovs_ns, &["link", "set", "m0", "up"])?;
        }
        Ok(())
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
}
