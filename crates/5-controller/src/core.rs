//! The controller's state and event loop: one task owns the [`Orchestrator`], the switch
//! side and the node table; socket tasks feed it [`Input`]s through one bounded inbox and it
//! answers through bounded per-connection writer queues.
//!
//! Orchestrator commands are executed as in the simulator's driver: `StartMigration` becomes
//! a `NodeRequest::StartMigration` to the source (its reply reports the id with
//! `migration_started`), `UpdateSwitch` becomes flow-mods and a barrier (its reply calls
//! `handle_barrier`), `CutoverDone` becomes a `NodeRequest::CutoverDone` (re-sent on timeout
//! or reconnection, a few times). Node events go to `handle_instance_event`. Time is the
//! controller's monotonic clock in ns since start.

use crate::autoscale::{AutoscaleDriverCounters, Elastic};
use crate::config::ClusterConfig;
use crate::store::{PersistedMigration, PersistedStage, PersistedState, STATE_VERSION, Store};
use crate::switch::{Switch, SwitchStatus};
use flowshift_control::api::{
    ClusterStatus, ControllerToNode, GroupOwner, MigrateRequest, MigrateResponse, NodeEntry,
    NodeRequest, NodeStatus, NodeToController, ReplyBody, encode_line,
};
use flowshift_control::orchestrator::{
    Command, ControlError, Intervention, Orchestrator, Stage, StartMigration,
};
use flowshift_http::{HttpCounters, ServerCounters};
use flowshift_migration::{InstanceId, MigrationEvent, MigrationId, Params};
use flowshift_wire::Instant;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

/// Inputs the inbox holds at most; senders wait (and count the wait) when it is full.
pub(crate) const INBOX_CAPACITY: usize = 1024;
/// How often timers run (request timeouts, OpenFlow keepalive, polls).
const TICK: Duration = Duration::from_millis(100);
/// How often each connected node's status is requested.
const STATUS_INTERVAL: Duration = Duration::from_millis(500);
/// Time allowed for a node to answer a request, by kind.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const CUTOVER_TIMEOUT: Duration = Duration::from_secs(5);
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
const ABORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Sends of one `CutoverDone` (the first included) before the controller gives up.
const MAX_CUTOVER_ATTEMPTS: u32 = 5;

mod counters;
mod inbox;
mod nodes;
mod operator;
mod recovery;
mod requests;

pub use counters::ControllerCounters;
pub(crate) use counters::Shared;
pub(crate) use inbox::{ApiRequest, Inbox, Input, Reply};

/// A node's control connection.
struct NodeLink {
    conn: u64,
    tx: mpsc::Sender<Vec<u8>>,
}

/// A configured node.
#[derive(Default)]
struct Node {
    link: Option<NodeLink>,
    status: Option<NodeStatus>,
    status_pending: bool,
    /// `CutoverDone` requests to (re)send: migration id and attempt number.
    cutovers: Vec<(u64, u32)>,
}

/// What an outstanding request is for.
enum Purpose {
    Start {
        external: Ipv4Addr,
    },
    Cutover {
        migration: u64,
        attempt: u32,
    },
    Abort {
        migration: u64,
    },
    /// A recovery step the orchestrator asked for (adopt or release a group).
    Recovery {
        what: String,
    },
    Status,
    Report {
        reply: oneshot::Sender<Reply>,
    },
}

struct Pending {
    node: InstanceId,
    conn: u64,
    deadline: Instant,
    purpose: Purpose,
}

/// The controller's state. See the module documentation.
pub(crate) struct Core {
    cfg: ClusterConfig,
    t0: std::time::Instant,
    orch: Orchestrator,
    switch: Switch,
    nodes: BTreeMap<InstanceId, Node>,
    requests: BTreeMap<u64, Pending>,
    next_req: u64,
    next_status_poll: Instant,
    /// Parameters for the `StartMigration` command the orchestrator will emit, by group.
    start_params: BTreeMap<Ipv4Addr, Option<Params>>,
    counters: ControllerCounters,
    shared: Arc<Shared>,
    /// The state file, if configured.
    store: Option<Store>,
    /// Redirected migrations taken over from the state file whose source has not
    /// acknowledged its cutover yet (kept in the file until then).
    resumed: Vec<PersistedMigration>,
    /// Stray migrations whose abort request is outstanding (not sent twice).
    aborting: std::collections::BTreeSet<u64>,
    /// Switch updates held back until the state file holds the ownership they install.
    held_updates: Vec<(flowshift_control::rules::RuleDiff, u64)>,
    /// The elastic policy and its next run.
    elastic: Elastic,
    next_autoscale: Instant,
}

impl Core {
    /// A controller for `cfg` (validated), with no connections yet.
    /// `store`: the state file and what it held at start (`None`: first start).
    pub(crate) fn new(
        cfg: ClusterConfig,
        of_config: flowshift_openflow::Config,
        shared: Arc<Shared>,
        store: Option<(Store, Option<PersistedState>)>,
    ) -> anyhow::Result<Core> {
        let (store, restored) = match store {
            Some((s, r)) => (Some(s), r),
            None => (None, None),
        };
        let mut routes = cfg.group_routes();
        let mut nodes: BTreeMap<InstanceId, Node> =
            cfg.nodes.iter().map(|n| (n.id, Node::default())).collect();
        let mut resumed = Vec::new();
        if let Some(state) = restored {
            for r in &mut routes {
                match state.owners.get(&r.external) {
                    Some(&owner) if nodes.contains_key(&owner) => {
                        if owner != r.owner {
                            info!(group = %r.external, %owner, configured = %r.owner,
                                "ownership from the state file");
                        }
                        r.owner = owner;
                    }
                    Some(&owner) => warn!(group = %r.external, %owner,
                        "the state file names an unconfigured owner; using the configured one"),
                    None => {
                        info!(group = %r.external, "group not in the state file: configured owner")
                    }
                }
            }
            for m in state.migrations {
                let routed_to_dest = routes
                    .iter()
                    .any(|r| r.external == m.external && r.owner == m.to);
                match nodes.get_mut(&m.from) {
                    Some(n) if routed_to_dest => {
                        info!(migration = m.migration, group = %m.external, from = %m.from,
                            to = %m.to, "resuming a redirected migration: cutover re-sent");
                        n.cutovers.push((m.migration, 1));
                        resumed.push(m);
                    }
                    _ => warn!(migration = m.migration, group = %m.external,
                        "dropping a persisted migration that no longer matches the configuration"),
                }
            }
        }
        let orch = Orchestrator::new(cfg.topology(), routes)?;
        let counters = ControllerCounters {
            migrations_resumed: resumed.len() as u64,
            ..ControllerCounters::default()
        };
        let pin = cfg.switch.datapath_id.map(|d| d.0);
        let elastic = Elastic::new(&cfg).map_err(anyhow::Error::msg)?;
        let core = Core {
            cfg,
            t0: std::time::Instant::now(),
            orch,
            switch: Switch::new(of_config, pin),
            nodes,
            requests: BTreeMap::new(),
            next_req: 1,
            next_status_poll: Instant::ZERO,
            start_params: BTreeMap::new(),
            counters,
            shared,
            store,
            resumed,
            aborting: Default::default(),
            held_updates: Vec::new(),
            elastic,
            next_autoscale: Instant::ZERO,
        };
        Ok(core)
    }

    /// Runs until `shutdown` completes, then drops every connection.
    pub(crate) async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Input>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                input = inbox.recv() => match input {
                    Some(input) => self.handle(input),
                    None => break,
                },
                _ = tick.tick() => self.tick(),
            }
            self.drive();
            self.release_updates();
            self.persist();
        }
        info!("controller stopping");
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::SwitchUp { conn, tx, peer } => self.switch.accept(now, conn, tx, peer),
            Input::SwitchBytes { conn, bytes } => {
                let confirmed = self.switch.input(now, conn, &bytes, self.orch.table());
                self.confirm(now, confirmed);
            }
            Input::SwitchDown { conn, why } => self.switch.closed(conn, &why),
            Input::NodeHello {
                conn,
                id,
                mac,
                groups,
                tx,
                peer,
            } => self.node_hello(now, conn, id, mac, &groups, tx, &peer),
            Input::NodeMessage { conn, msg } => {
                if let Some(id) = self.node_of_conn(conn) {
                    self.node_message(now, id, msg);
                }
            }
            Input::NodeDown { conn, why } => {
                if let Some(id) = self.node_of_conn(conn) {
                    self.node_down(now, id, &why);
                }
            }
            Input::Api { req, reply } => {
                self.counters.api_requests += 1;
                if let Some(answer) = self.api(now, req, reply) {
                    answer.send();
                }
            }
        }
    }

    fn tick(&mut self) {
        let now = self.now();
        self.orch.handle_timeout(now);
        let confirmed = self.switch.tick(now, self.orch.table());
        self.confirm(now, confirmed);
        let expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(&req, _)| req)
            .collect();
        for req in expired {
            if let Some(p) = self.requests.remove(&req) {
                self.counters.requests_timed_out += 1;
                warn!(node = %p.node, req, "node request timed out");
                self.request_failed(now, p, "timed out");
            }
        }
        let ids: Vec<InstanceId> = self.nodes.keys().copied().collect();
        for id in &ids {
            let queued = match self.nodes.get_mut(id) {
                Some(n) if n.link.is_some() => std::mem::take(&mut n.cutovers),
                _ => Vec::new(),
            };
            for (migration, attempt) in queued {
                self.send_cutover(now, *id, migration, attempt);
            }
        }
        if now >= self.next_status_poll {
            self.next_status_poll = now + STATUS_INTERVAL;
            for id in ids {
                let due = self
                    .nodes
                    .get(&id)
                    .is_some_and(|n| n.link.is_some() && !n.status_pending);
                if due
                    && self
                        .request(
                            now,
                            id,
                            NodeRequest::Status,
                            Purpose::Status,
                            STATUS_TIMEOUT,
                        )
                        .is_ok()
                    && let Some(n) = self.nodes.get_mut(&id)
                {
                    n.status_pending = true;
                }
            }
        }
        if now >= self.next_autoscale {
            self.next_autoscale = now + STATUS_INTERVAL;
            let nodes = &self.nodes;
            let connected = |id: InstanceId| nodes.get(&id).is_some_and(|n| n.link.is_some());
            let params = self.cfg.params.clone();
            let start_params = &mut self.start_params;
            self.elastic
                .tick(now, &mut self.orch, &connected, &mut |group| {
                    start_params.insert(group, params.clone());
                });
        }
    }

    /// Executes the orchestrator's commands.
    fn drive(&mut self) {
        let now = self.now();
        self.intervene(now);
        while let Some(cmd) = self.orch.poll_command() {
            let now = self.now();
            match cmd {
                Command::StartMigration(StartMigration {
                    on,
                    external,
                    to,
                    algorithm,
                }) => {
                    let params = self
                        .start_params
                        .remove(&external)
                        .unwrap_or_else(|| self.cfg.params.clone());
                    let body = NodeRequest::StartMigration {
                        external,
                        to,
                        algorithm,
                        params,
                    };
                    // On failure `request` has abandoned the migration (`request_failed`).
                    if let Ok(req) =
                        self.request(now, on, body, Purpose::Start { external }, START_TIMEOUT)
                    {
                        info!(%external, from = %on, to = %to, ?algorithm, req, "starting migration");
                    }
                }
                Command::UpdateSwitch { diff, token } => {
                    info!(
                        token,
                        add = diff.add.len(),
                        modify = diff.modify.len(),
                        delete = diff.delete.len(),
                        "redirecting: switch update"
                    );
                    // Write-ahead: the switch never points where the state file does not.
                    self.held_updates.push((diff, token));
                    self.release_updates();
                }
                Command::CutoverDone { on, migration } => {
                    info!(
                        migration = migration.0,
                        node = %on,
                        "switch confirmed; cutover done"
                    );
                    self.send_cutover(now, on, migration.0, 1);
                }
            }
        }
    }

    fn confirm(&mut self, now: Instant, tokens: Vec<u64>) {
        for token in tokens {
            debug!(token, "barrier confirmed");
            self.orch.handle_barrier(now, token);
        }
    }
}

/// An API answer ready to send.
struct Answer {
    reply: oneshot::Sender<Reply>,
    r: Reply,
}

impl Answer {
    fn send(self) {
        // The HTTP task may have timed out and gone; then nobody wants the answer.
        let _ = self.reply.send(self.r);
    }
}
