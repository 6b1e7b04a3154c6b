//! Starting a testbed's cluster on its network: the run's PKI, the node and cluster
//! configurations, the controller, the switch's controller connection, the nodes, readiness.

use super::*;

impl Testbed {
    /// The cluster part of [`Testbed::build`], after [`Testbed::build_network`].
    pub(super) fn start_cluster(&mut self, opts: &UpOptions) -> Result<()> {
        let l = self.layout.clone();
        let dir = self.state.dir.clone();
        let mgmt = l.ns_mgmt();
        self.progress("configurations");
        // A fresh CA and certificates for this run's nodes, controller and switch (mutual
        // TLS), and for the operator and the monitor (clients of the nodes' /metrics).
        let mut parties: Vec<flowshift_trust::pki::Party> = (1..=l.nodes)
            .map(flowshift_trust::pki::Party::Node)
            .collect();
        parties.push(flowshift_trust::pki::Party::Controller);
        parties.push(flowshift_trust::pki::Party::Switch);
        parties.push(flowshift_trust::pki::Party::Operator);
        parties.push(flowshift_trust::pki::Party::Monitor);
        flowshift_trust::pki::init(&dir.join(layout::PKI_DIR), &parties, true)
            .context("creating the run's PKI")?;
        let copts = ConfigOptions {
            preload: opts.preload,
            seed: opts.seed,
            filtering: opts.filtering.clone(),
            vnet_hdr: true,
            elastic: opts.elastic.clone(),
        };
        let standby = |k: u16| opts.elastic.as_ref().is_some_and(|e| e.is_standby(k));
        for k in 1..=l.nodes {
            let path = dir.join(format!("node{k}.toml"));
            fs::write(&path, l.node_config(k, &copts))
                .with_context(|| format!("writing {}", path.display()))?;
            self.state.node_list.push(NodeRecord {
                id: k,
                netns: l.ns_node(k),
                interface: Layout::node_if(k),
                mac: layout::node_mac(k),
                port: Layout::node_ofport(k),
                mgmt: layout::node_mgmt_ip(k).to_string(),
                config: path,
            });
            if standby(k) {
                self.state.standby.push(k);
            } else {
                self.state.groups.push(GroupRecord {
                    external: layout::group_external(k).to_string(),
                    subscribers: layout::group_subscribers(k),
                    owner: k,
                });
            }
        }
        if let Some(e) = &opts.elastic {
            for (i, g) in e.groups().iter().enumerate() {
                self.state.groups.push(GroupRecord {
                    external: g.external.to_string(),
                    subscribers: g.subscribers.to_string(),
                    owner: e.owner(i),
                });
            }
        }
        let cluster = dir.join("cluster.toml");
        fs::write(
            &cluster,
            l.cluster_config(&dir, opts.switch_tls, opts.elastic.as_ref()),
        )
        .with_context(|| format!("writing {}", cluster.display()))?;
        // Before the controller starts, so every client finds it.
        Token::create(&layout::api_token_file(&dir))?;
        self.save()?;

        self.progress("controller");
        let exe = std::env::current_exe().context("locating the flowshift executable")?;
        self.spawn(
            "controller",
            &mgmt,
            &exe,
            &[
                "controller".into(),
                "--config".into(),
                cluster.display().to_string(),
            ],
        )?;
        let client = self
            .state
            .api_client()?
            .with_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_processes()?;
            if client.status().is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the controller's API did not come up{}",
                    self.log_hint("controller")
                );
            }
            sys::sleep(Duration::from_millis(50))?;
        }
        let ovs = self.ovs.as_ref().ok_or_else(|| anyhow!("switch gone"))?;
        if opts.switch_tls {
            // The switch's own certificate from the run's CA; it checks the controller's
            // chains to that CA, the controller checks the switch's name.
            let pki = flowshift_trust::pki::Layout {
                dir: dir.join(layout::PKI_DIR),
            };
            let f = pki.files(flowshift_trust::pki::Party::Switch);
            ovs.set_ssl(&f.key, &f.cert, &f.ca)?;
        }
        ovs.set_controller(&layout::switch_target(&dir, opts.switch_tls))?;

        self.progress("nodes");
        for k in (1..=l.nodes).filter(|&k| !standby(k)) {
            let cfg = dir.join(format!("node{k}.toml"));
            self.spawn(
                &format!("node{k}"),
                &l.ns_node(k),
                &exe,
                &["node".into(), "--config".into(), cfg.display().to_string()],
            )?;
        }
        self.progress("waiting for the switch and the nodes to connect");
        self.wait_ready(&client, deadline)
    }

    fn log_hint(&self, name: &str) -> String {
        let log = self.state.dir.join(format!("{name}.log"));
        format!("; end of {}:\n{}", log.display(), sys::tail(&log, 15))
    }

    fn wait_ready(&self, client: &ApiClient, deadline: Instant) -> Result<()> {
        let n = usize::from(self.layout.nodes) - self.state.standby.len();
        let mut last;
        loop {
            self.check_processes()?;
            match client.status() {
                Ok(s) => {
                    let connected = s
                        .nodes
                        .values()
                        .filter(|e| e.connected && e.status.is_some())
                        .count();
                    let synced = client
                        .get::<serde_json::Value>("/switch")
                        .ok()
                        .and_then(|v| v.get("synced").and_then(serde_json::Value::as_bool))
                        .unwrap_or(s.switch_rules > 0);
                    if s.switch_datapath_id.is_some() && synced && connected == n {
                        return Ok(());
                    }
                    last = format!(
                        "switch {}, {connected} of {n} nodes reporting",
                        if s.switch_datapath_id.is_none() {
                            "not connected"
                        } else if synced {
                            "synced"
                        } else {
                            "connected, table not confirmed"
                        }
                    );
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                bail!(
                    "not ready after {READY_TIMEOUT:?}: {last}{}",
                    self.log_hint("controller")
                );
            }
            sys::sleep(Duration::from_millis(100))?;
        }
    }
}
