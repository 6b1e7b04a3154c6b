//! The controller's own counters: [`ControllerCounters`] (`GET /counters`), kept by the
//! core task, and [`Shared`], the atomics the socket tasks bump outside it.

use super::*;
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
