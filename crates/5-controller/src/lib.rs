//! Layer 5: the controller daemon (`flowshift controller`).
//!
//! It drives the control layer's [`Orchestrator`](flowshift_control::orchestrator::Orchestrator)
//! with real I/O:
//!
//! * **Switch** ([`switch`]): listens on `openflow_listen`, speaks OpenFlow 1.3 through
//!   [`flowshift_openflow::Connection`] (hello, features, echo keepalive, flow-mod, barrier,
//!   errors, flow and port statistics every second), installs the whole table on connect
//!   (delete all, add all, barrier) and applies table diffs as flow-mods plus a barrier. A
//!   redirect is confirmed to the orchestrator only by a barrier reply with no error for its
//!   flow-mods ([`flows`] maps rules to flow-mods).
//! * **Nodes**: listen on `node_listen` for mutual TLS (`tls`: the controller's credentials;
//!   a client certificate from the cluster CA is required, handshake within 5 s); a node
//!   opens with a `Hello` whose id its certificate must name and that must match the
//!   configuration (id and MAC), then gets requests and pushes migration events
//!   (`flowshift_control::api`, JSON lines). Status is polled every 500 ms.
//! * **Switch identity**: `openflow_tls` (required on a TCP `openflow_listen`) requires TLS
//!   with a certificate naming `switch.flowshift.internal`; `[switch] datapath_id` pins the
//!   datapath (another one is refused and never displaces the current switch).
//! * **Operator API** ([`http`]): HTTP/1.1 JSON on `api_listen`: TCP with mutual TLS (the
//!   client certificate must name [`flowshift_trust::OPERATOR_NAME`]) or an owner-only unix
//!   socket; axum on [`flowshift_http::serve`] (bounded connections per client and overall,
//!   handshake, head and body timeouts), optionally a bearer token from `api_token_file`
//!   (created with mode 0600 on first start); [`client::ApiClient`] is its client, and
//!   [`client`] also holds the operator tool's logic (choosing the controller, waiting for
//!   a migration, rendering answers as text) so the CLI only parses and prints.
//!
//! * **Elastic policy** ([`autoscale`]): node loads from their status feed
//!   [`Autoscaler`](flowshift_control::autoscale::Autoscaler); its decisions become
//!   migrations and node starts and stops (`[autoscale]` in `cluster.toml`).
//!
//! One task owns all state (`core`); socket tasks only frame bytes. Every queue is bounded
//! and counted ([`ControllerCounters`], [`SwitchCounters`]).

#![deny(missing_docs)]

mod accept;
pub mod autoscale;
pub mod client;
pub mod config;
mod core;
pub mod flows;
pub mod http;
mod net;
pub mod store;
pub mod switch;

pub use crate::core::ControllerCounters;
pub use client::{ApiClient, ClientError};
pub use config::{ClusterConfig, ConfigError, DatapathId, Endpoint, MacAddr};
pub use flowshift_http::Token;
pub use switch::{FlowCounter, PortCounter, SwitchCounters, SwitchStatus};

use crate::core::{Core, INBOX_CAPACITY, Inbox, Shared};
use anyhow::{Context, Result};
use flowshift_http::{Listener, UnixMode};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// A controller with its three listeners bound, ready to [`run`](Controller::run).
pub struct Controller {
    cfg: ClusterConfig,
    tls: TlsAcceptor,
    api_tls: flowshift_http::ServerTls,
    openflow: Listener,
    nodes: Listener,
    api: Listener,
    token: Option<Token>,
}

impl Controller {
    /// Validates `cfg`, loads its TLS credentials (the certificate must name
    /// [`flowshift_trust::CONTROLLER_NAME`]), reads the API token (creating its file, mode
    /// 0600, if it does not exist) and binds the listeners (inside a tokio runtime). TCP port
    /// 0 binds an ephemeral port; the `*_endpoint` methods tell which.
    pub async fn bind(cfg: ClusterConfig) -> Result<Controller> {
        cfg.validate()?;
        let creds = flowshift_trust::Credentials::load(&cfg.tls).context("loading tls")?;
        if !creds.is(flowshift_trust::CONTROLLER_NAME) {
            anyhow::bail!(
                "tls cert {} is not the controller's (it must name {})",
                cfg.tls.cert.display(),
                flowshift_trust::CONTROLLER_NAME
            );
        }
        let server_config = creds.server_config().context("tls")?;
        let tls = TlsAcceptor::from(server_config.clone());
        // The operator API admits the operator only (on TCP; a unix socket has no TLS).
        let api_tls = flowshift_http::ServerTls {
            config: server_config,
            admit: Arc::new(|certs| {
                flowshift_trust::admit_one_of(certs, &[flowshift_trust::OPERATOR_NAME])
            }),
        };
        let token = match &cfg.api_token_file {
            None => None,
            Some(path) => {
                let (token, created) = Token::load_or_create(path).context("api_token_file")?;
                if created {
                    info!(path = %path.display(), "created the API token file");
                }
                Some(token)
            }
        };
        let openflow = Listener::bind(&cfg.openflow_listen, UnixMode::Umask)
            .await
            .context("openflow_listen")?;
        let nodes = Listener::bind(&cfg.node_listen, UnixMode::Umask)
            .await
            .context("node_listen")?;
        let api = Listener::bind(&cfg.api_listen, UnixMode::OwnerOnly)
            .await
            .context("api_listen")?;
        Ok(Controller {
            cfg,
            tls,
            api_tls,
            openflow,
            nodes,
            api,
            token,
        })
    }

    /// Where the switch should connect.
    pub fn openflow_endpoint(&self) -> Endpoint {
        self.openflow.local()
    }

    /// Where nodes should connect.
    pub fn node_endpoint(&self) -> Endpoint {
        self.nodes.local()
    }

    /// Where the operator API listens.
    pub fn api_endpoint(&self) -> Endpoint {
        self.api.local()
    }

    /// Runs until `shutdown` completes. Then every connection is closed and unix socket
    /// files are removed; the switch keeps its flows (fail-secure mode forwards by them).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        match self.cfg.switch.datapath_id {
            Some(dpid) => info!(datapath_id = %dpid, "switch pinned to one datapath"),
            None => warn!(
                "[switch] datapath_id is not set: any OpenFlow client that reaches \
                 openflow_listen can take the switch role (pin it, and/or set openflow_tls)"
            ),
        }
        let switch_tls = self.cfg.openflow_tls.then(|| self.tls.clone());
        let openflow_tls = self.cfg.openflow_tls;
        let shared = Arc::new(Shared::default());
        let store = match &self.cfg.state_file {
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                let mut store = store::Store::new(path.clone());
                let restored = store.load()?;
                Some((store, restored))
            }
            None => {
                warn!("no state_file: a restarted controller starts from the configured owners");
                None
            }
        };
        let mut core = Core::new(
            self.cfg,
            flowshift_openflow::Config::default(),
            shared.clone(),
            store,
        )
        .context("computing the switch table")?;
        core.save_state()?;
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        let inbox = Inbox::new(tx, shared);
        info!(
            openflow = %self.openflow.local(),
            openflow_tls,
            nodes = %self.nodes.local(),
            api = %self.api.local(),
            "controller listening"
        );
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(accept::switches(self.openflow, switch_tls, inbox.clone()));
        tasks.spawn(accept::nodes(self.nodes, self.tls, inbox.clone()));
        tasks.spawn(http::serve(self.api, inbox, self.token, Some(self.api_tls)));
        core.run(rx, shutdown).await;
        // Dropping the accept loops drops the listeners (and removes unix socket files).
        tasks.shutdown().await;
        Ok(())
    }
}

/// Runs a controller for `cfg` on a fresh runtime until SIGINT or SIGTERM.
pub fn run_until_signal(cfg: ClusterConfig) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let controller = Controller::bind(cfg).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        controller
            .run(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
                    _ = term.recv() => info!("SIGTERM received"),
                }
            })
            .await
    })
}

/// Sends log lines to standard error at the level named by `FLOWSHIFT_LOG` (`error`, `warn`,
/// `info` (default), `debug`, `trace`). Does nothing if a logger is already installed.
pub fn init_logging() {
    let level = std::env::var("FLOWSHIFT_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    // Err: a subscriber is already installed (e.g. by a test harness); keep it.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(level)
        .try_init();
}
