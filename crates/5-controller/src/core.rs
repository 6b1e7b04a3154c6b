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

/// Counters of the controller itself (`GET /counters`); all monotonic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ControllerCounters {
    /// Times the state file was replaced.
    pub state_saves: u64,
    /// Failed replacements of the state file (the redirect waits; retried every tick).
    pub state_save_failures: u64,
    /// Redirected migrations taken over from the state file at start (cutover re-sent).
    pub migrations_resumed: u64,
    /// Migrations found waiting for a cutover the controller did not know of (after a
    /// restart before the redirect was persisted) and finished forward.
    pub migrations_adopted: u64,
    /// Recovery steps (abort, adopt, release a group) a node refused or never answered.
    pub recovery_failures: u64,
    /// Groups re-homed from a dead node (`POST /rehome`).
    pub groups_rehomed: u64,
    /// Times a socket task found the inbox full and had to wait.
    pub inbox_full_waits: u64,
    /// Node hellos accepted.
    pub nodes_accepted: u64,
    /// Node hellos refused (unknown id, MAC mismatch).
    pub nodes_refused: u64,
    /// Node connections refused because the TLS handshake failed or took too long (no client
    /// certificate, one from another CA, a client that does not speak TLS or stalls).
    pub nodes_refused_tls: u64,
    /// Node hellos refused because the (valid) certificate does not name the hello's id: an
    /// impostor, e.g. node 2's key claiming to be node 1. It never reaches the node table.
    pub nodes_refused_auth: u64,
    /// Node connections refused because too many were open at once.
    pub nodes_refused_busy: u64,
    /// Live node connections closed because an authenticated connection for the same node
    /// arrived (the newest wins: only the holder of the node's key can make one).
    pub node_connections_replaced: u64,
    /// Node control connections lost or closed.
    pub node_disconnects: u64,
    /// Lines from nodes that were too long or not valid JSON messages (connection closed).
    pub node_lines_malformed: u64,
    /// Requests refused because a node's writer queue was full (connection closed).
    pub node_queue_full: u64,
    /// Migration events received from nodes.
    pub node_events: u64,
    /// `Completed`/`Aborted` events ignored because the node that sent them is not the
    /// migration's source.
    pub node_events_not_from_source: u64,
    /// Requests sent to nodes.
    pub requests_sent: u64,
    /// Requests a node answered with an error.
    pub requests_failed: u64,
    /// Requests unanswered in time.
    pub requests_timed_out: u64,
    /// Replies matching no outstanding request.
    pub replies_unmatched: u64,
    /// Migrations the controller does not track (late start replies) that it aborted.
    pub stray_migrations_aborted: u64,
    /// `CutoverDone` requests given up after the last attempt.
    pub cutovers_given_up: u64,
    /// Operator API requests handled by the core.
    pub api_requests: u64,
    /// API requests refused because the inbox was full (HTTP 503).
    pub api_refused_busy: u64,
    /// Switch connections refused (`openflow_tls`): TLS handshake failed or took too long,
    /// or the certificate does not name `switch.flowshift.internal`.
    pub switch_refused_tls: u64,
    /// Switch connections refused because too many TLS handshakes were in progress.
    pub switch_refused_busy: u64,
    /// The operator API's HTTP server: connections accepted, evicted and refused, head
    /// timeouts, bad requests, 401s.
    pub http: HttpCounters,
    /// The elastic policy's driver (load reports, refused migrations, commands).
    pub autoscale: AutoscaleDriverCounters,
}

/// Counters bumped outside the core task.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) inbox_full_waits: AtomicU64,
    pub(crate) node_lines_malformed: AtomicU64,
    pub(crate) nodes_refused_tls: AtomicU64,
    pub(crate) nodes_refused_auth: AtomicU64,
    pub(crate) nodes_refused_busy: AtomicU64,
    pub(crate) switch_refused_tls: AtomicU64,
    pub(crate) switch_refused_busy: AtomicU64,
    pub(crate) api_refused_busy: AtomicU64,
    pub(crate) http: Arc<ServerCounters>,
}

impl Shared {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The sending side of the core's inbox, shared by the socket tasks.
#[derive(Clone)]
pub(crate) struct Inbox {
    tx: mpsc::Sender<Input>,
    pub(crate) shared: Arc<Shared>,
}

impl Inbox {
    pub(crate) fn new(tx: mpsc::Sender<Input>, shared: Arc<Shared>) -> Self {
        Inbox { tx, shared }
    }

    /// Delivers `input`, waiting while the inbox is full (the wait is counted). False once
    /// the core has stopped.
    pub(crate) async fn send(&self, input: Input) -> bool {
        match self.tx.try_send(input) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(input)) => {
                Shared::bump(&self.shared.inbox_full_waits);
                self.tx.send(input).await.is_ok()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Delivers `input` only if there is room (operator requests: refused when busy).
    pub(crate) fn try_send(&self, input: Input) -> bool {
        self.tx.try_send(input).is_ok()
    }
}

/// What the socket tasks tell the core.
pub(crate) enum Input {
    /// A switch connected; its writer queue is `tx`.
    SwitchUp {
        conn: u64,
        tx: mpsc::Sender<Vec<u8>>,
        peer: String,
    },
    /// Bytes from a switch connection.
    SwitchBytes { conn: u64, bytes: Vec<u8> },
    /// A switch connection ended.
    SwitchDown { conn: u64, why: String },
    /// A node connection opened with this hello; its writer queue is `tx`.
    NodeHello {
        conn: u64,
        id: InstanceId,
        mac: [u8; 6],
        groups: Vec<Ipv4Addr>,
        tx: mpsc::Sender<Vec<u8>>,
        peer: String,
    },
    /// A message after the hello.
    NodeMessage { conn: u64, msg: NodeToController },
    /// A node connection ended.
    NodeDown { conn: u64, why: String },
    /// An operator API request and where to send the answer.
    Api {
        req: ApiRequest,
        reply: oneshot::Sender<Reply>,
    },
}

/// Operator API requests the core answers.
pub(crate) enum ApiRequest {
    Status,
    Migrate(MigrateRequest),
    Abort(flowshift_control::api::AbortRequest),
    Rehome(flowshift_control::api::RehomeRequest),
    Migrations,
    Report(usize),
    Switch,
    Counters,
}

/// An HTTP answer: status code and JSON body.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        match serde_json::to_vec(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Reply { status, body }
            }
            Err(e) => Reply::error(500, &format!("encoding the answer: {e}")),
        }
    }

    pub(crate) fn error(status: u16, message: &str) -> Reply {
        let mut body = serde_json::json!({ "error": message })
            .to_string()
            .into_bytes();
        body.push(b'\n');
        Reply { status, body }
    }
}

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

mod operator;
mod recovery;

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

    fn node_of_conn(&self, conn: u64) -> Option<InstanceId> {
        self.nodes
            .iter()
            .find(|(_, n)| n.link.as_ref().is_some_and(|l| l.conn == conn))
            .map(|(&id, _)| id)
    }

    #[allow(clippy::too_many_arguments)]
    fn node_hello(
        &mut self,
        now: Instant,
        conn: u64,
        id: InstanceId,
        mac: [u8; 6],
        groups: &[Ipv4Addr],
        tx: mpsc::Sender<Vec<u8>>,
        peer: &str,
    ) {
        let refuse = match self.cfg.node(id) {
            None => Some(format!("node id {id} is not in the cluster configuration")),
            Some(n) if n.mac.0 != mac => Some(format!(
                "node {id} says its MAC is {}, the configuration says {}",
                crate::config::MacAddr(mac),
                n.mac
            )),
            Some(_) => None,
        };
        if let Some(why) = refuse {
            self.counters.nodes_refused += 1;
            warn!(%peer, "refusing node connection: {why}");
            return; // dropping `tx` closes the connection
        }
        // The hello's id is the one its certificate names (checked before it gets here), so
        // a second connection for a live node comes from the holder of that node's key: a
        // restarted node whose old connection is not yet known to be dead. The newest wins.
        if self.nodes.get(&id).is_some_and(|n| n.link.is_some()) {
            warn!(
                node = %id,
                "node reconnected; dropping its previous connection"
            );
            self.counters.node_connections_replaced += 1;
            self.node_down(now, id, "replaced by a new connection");
        }
        let owned: Vec<Ipv4Addr> = self
            .orch
            .groups()
            .iter()
            .filter(|g| g.owner == id)
            .map(|g| g.external)
            .filter(|e| !groups.contains(e))
            .collect();
        if !owned.is_empty() {
            warn!(node = %id, missing = ?owned, "node lacks groups the controller routes to it");
        }
        info!(node = %id, %peer, ?groups, "node connected");
        self.counters.nodes_accepted += 1;
        let node = self.nodes.entry(id).or_default();
        node.link = Some(NodeLink { conn, tx });
        node.status_pending = false;
        self.next_status_poll = now; // fresh status soon
    }

    /// Closes node `id`'s connection and settles its outstanding requests.
    fn node_down(&mut self, now: Instant, id: InstanceId, why: &str) {
        let Some(link) = self.nodes.get_mut(&id).and_then(|n| n.link.take()) else {
            return;
        };
        self.counters.node_disconnects += 1;
        warn!(node = %id, why, "node disconnected");
        if let Some(n) = self.nodes.get_mut(&id) {
            n.status_pending = false;
        }
        let lost: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, p)| p.conn == link.conn)
            .map(|(&r, _)| r)
            .collect();
        for req in lost {
            if let Some(p) = self.requests.remove(&req) {
                self.request_failed(now, p, "node disconnected");
            }
        }
    }

    fn node_message(&mut self, now: Instant, id: InstanceId, msg: NodeToController) {
        match msg {
            NodeToController::Hello { .. } => {
                self.counters.node_lines_malformed += 1;
                self.node_down(now, id, "second hello on one connection");
            }
            NodeToController::Reply { req, result } => match self.requests.remove(&req) {
                Some(p) if p.node == id => self.request_done(now, p, result),
                other => {
                    if let Some(p) = other {
                        // Not this node's request: put it back, it may still be answered.
                        self.requests.insert(req, p);
                    }
                    self.counters.replies_unmatched += 1;
                    if let Ok(ReplyBody::Started { migration }) = result {
                        self.abort_stray(now, id, migration, "late start reply");
                    } else {
                        debug!(node = %id, req, "reply to no outstanding request");
                    }
                }
            },
            NodeToController::Event { at_ns, event } => {
                self.counters.node_events += 1;
                info!(node = %id, node_ns = at_ns, ?event, "migration event");
                // A source waiting for a cutover this controller does not know of (it restarted
                // before persisting the redirect) re-reports `AwaitingCutover`; the orchestrator
                // adopts that migration and finishes it (`orchestrator/recovery.rs`).
                let adopting = match &event {
                    MigrationEvent::AwaitingCutover { migration, .. } => {
                        (!self.knows(*migration)).then_some(*migration)
                    }
                    _ => None,
                };
                self.orch.handle_instance_event(now, id, &event);
                if let Some(m) = adopting.filter(|m| self.knows(*m)) {
                    self.counters.migrations_adopted += 1;
                    warn!(
                        node = %id,
                        migration = m.0,
                        "adopted a migration waiting for its cutover (controller restart): finishing it"
                    );
                }
            }
        }
    }

    fn knows(&self, migration: MigrationId) -> bool {
        self.orch
            .migrations()
            .iter()
            .any(|m| m.migration == Some(migration.0))
    }

    /// A migration runs on node `id` that the controller does not track (its start reply came
    /// after the controller gave up on it): abort it so the node does not wait forever.
    fn abort_stray(&mut self, now: Instant, id: InstanceId, migration: u64, why: &str) {
        if self.knows(MigrationId(migration)) || !self.aborting.insert(migration) {
            return;
        }
        warn!(
            node = %id,
            migration, why, "aborting a migration the controller does not track"
        );
        self.counters.stray_migrations_aborted += 1;
        // A failure is logged by `request`; nothing more can be done.
        let _ = self.request(
            now,
            id,
            NodeRequest::Abort { migration },
            Purpose::Abort { migration },
            ABORT_TIMEOUT,
        );
    }

    fn send_cutover(&mut self, now: Instant, node: InstanceId, migration: u64, attempt: u32) {
        let connected = self.nodes.get(&node).is_some_and(|n| n.link.is_some());
        if !connected {
            if let Some(n) = self.nodes.get_mut(&node) {
                warn!(
                    %node,
                    migration, "node not connected; cutover queued until it reconnects"
                );
                n.cutovers.push((migration, attempt));
            }
            return;
        }
        // A failed send closed the connection and re-queued the cutover (`request_failed`).
        let _ = self.request(
            now,
            node,
            NodeRequest::CutoverDone { migration },
            Purpose::Cutover { migration, attempt },
            CUTOVER_TIMEOUT,
        );
    }

    /// Sends a request; the answer arrives through `request_done` or `request_failed`.
    fn request(
        &mut self,
        now: Instant,
        node: InstanceId,
        body: NodeRequest,
        purpose: Purpose,
        timeout: Duration,
    ) -> Result<u64, String> {
        let Some(link) = self.nodes.get(&node).and_then(|n| n.link.as_ref()) else {
            let why = format!("node {node} is not connected");
            self.request_failed(
                now,
                Pending {
                    node,
                    conn: 0,
                    deadline: now,
                    purpose,
                },
                &why,
            );
            return Err(why);
        };
        let req = self.next_req;
        self.next_req += 1;
        let line = encode_line(&ControllerToNode::Request { req, body });
        let conn = link.conn;
        match link.tx.try_send(line) {
            Ok(()) => {
                self.counters.requests_sent += 1;
                self.requests.insert(
                    req,
                    Pending {
                        node,
                        conn,
                        deadline: now + timeout,
                        purpose,
                    },
                );
                Ok(req)
            }
            Err(e) => {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => {
                        self.counters.node_queue_full += 1;
                        "outgoing queue full"
                    }
                    mpsc::error::TrySendError::Closed(_) => "connection closed",
                };
                self.node_down(now, node, why);
                let why = format!("node {node}: {why}");
                self.request_failed(
                    now,
                    Pending {
                        node,
                        conn,
                        deadline: now,
                        purpose,
                    },
                    &why,
                );
                Err(why)
            }
        }
    }

    fn request_done(&mut self, now: Instant, p: Pending, result: Result<ReplyBody, String>) {
        let result = match result {
            Ok(body) => body,
            Err(e) => {
                self.counters.requests_failed += 1;
                warn!(node = %p.node, "node refused a request: {e}");
                match p.purpose {
                    Purpose::Start { external } => {
                        self.orch.migration_started(now, external, None);
                    }
                    Purpose::Status => {
                        if let Some(n) = self.nodes.get_mut(&p.node) {
                            n.status_pending = false;
                        }
                    }
                    Purpose::Report { reply } => {
                        // The receiver may have given up; nothing to do then.
                        let _ = reply.send(Reply::error(502, &format!("node {}: {e}", p.node)));
                    }
                    Purpose::Cutover { migration, .. } => self.cutover_settled(migration),
                    Purpose::Abort { migration } => {
                        self.aborting.remove(&migration);
                    }
                    Purpose::Recovery { what } => {
                        self.counters.recovery_failures += 1;
                        error!(node = %p.node, what, "recovery step refused: {e}");
                    }
                }
                return;
            }
        };
        match (p.purpose, result) {
            (Purpose::Start { external }, ReplyBody::Started { migration }) => {
                info!(%external, migration, "migration started");
                self.orch
                    .migration_started(now, external, Some(MigrationId(migration)));
            }
            (Purpose::Status, ReplyBody::Status(s)) => {
                if let Some((at, flows)) = self.switch.flow_snapshot() {
                    self.elastic.switch_flows(at, flows);
                }
                self.elastic.node_status(now, p.node, &s, &self.orch);
                if let Some(n) = self.nodes.get_mut(&p.node) {
                    n.status = Some(*s);
                    n.status_pending = false;
                }
            }
            (Purpose::Report { reply }, ReplyBody::Report(v)) => {
                let _ = reply.send(Reply::json(200, &v));
            }
            (Purpose::Cutover { migration, .. }, _) => {
                debug!(node = %p.node, migration, "cutover acknowledged");
                self.cutover_settled(migration);
            }
            (Purpose::Recovery { what }, body) => {
                info!(node = %p.node, what, ?body, "recovery step done");
            }
            (Purpose::Abort { migration }, body) => {
                self.aborting.remove(&migration);
                info!(node = %p.node, migration, ?body, "stray migration aborted");
            }
            (purpose, body) => {
                warn!(node = %p.node, ?body, "unexpected reply kind");
                // Settle what waits on it.
                self.request_failed(now, Pending { purpose, ..p }, "unexpected reply kind");
            }
        }
    }

    fn request_failed(&mut self, now: Instant, p: Pending, why: &str) {
        match p.purpose {
            Purpose::Start { external } => {
                warn!(%external, node = %p.node, why, "migration start failed");
                self.orch.migration_started(now, external, None);
            }
            Purpose::Cutover { migration, attempt } => {
                let Some(n) = self.nodes.get_mut(&p.node) else {
                    return;
                };
                if attempt < MAX_CUTOVER_ATTEMPTS {
                    warn!(
                        node = %p.node,
                        migration, attempt, why, "cutover not acknowledged; will resend"
                    );
                    n.cutovers.push((migration, attempt + 1));
                } else {
                    self.counters.cutovers_given_up += 1;
                    warn!(
                        node = %p.node,
                        migration, why, "cutover not acknowledged; giving up"
                    );
                    self.cutover_settled(migration);
                }
            }
            Purpose::Status => {
                if let Some(n) = self.nodes.get_mut(&p.node) {
                    n.status_pending = false;
                }
            }
            Purpose::Report { reply } => {
                let _ = reply.send(Reply::error(503, &format!("node {}: {why}", p.node)));
            }
            Purpose::Recovery { what } => {
                self.counters.recovery_failures += 1;
                error!(node = %p.node, what, why, "recovery step failed");
            }
            Purpose::Abort { migration } => {
                self.aborting.remove(&migration);
                warn!(
                    node = %p.node,
                    migration, why, "abort of a stray migration failed"
                );
            }
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
