//! The switch side: one OpenFlow 1.3 connection ([`flowshift_openflow::Connection`]), the
//! flow table kept in sync with the orchestrator's, barrier tracking for redirects, and
//! periodic flow and port statistics.
//!
//! Every change goes out as a *batch*: flow-mods followed by a barrier. A batch carries the
//! orchestrator's barrier tokens it confirms. When the barrier reply arrives and no flow-mod
//! of the batch drew an OpenFlow error, its tokens are confirmed. A batch with errors confirms
//! nothing: the whole table is re-sent as ADDs (which overwrite entries with the same priority
//! and match) with a fresh barrier, up to [`MAX_ATTEMPTS`] times; after that its tokens stay
//! unconfirmed and the failure is reported in [`SwitchStatus`]. On (re)connection the table
//! is installed from scratch (delete all, add all, barrier) and that batch confirms every
//! token whose update was never confirmed on an earlier connection.
//!
//! **Who is the switch.** A new connection is a *candidate* until its OpenFlow handshake
//! completes (at most [`MAX_CANDIDATES`] at once; more are refused and counted). Then, if the
//! configuration pins a datapath id and the FEATURES_REPLY names another, the candidate is
//! refused (`refused_datapath_id`) and closed; otherwise it replaces the current switch (the
//! newest wins, as a switch reconnects after losing a connection). A connection that never
//! completes a handshake, or names the wrong datapath, never disturbs the current switch.

use crate::flows;
use flowshift_control::rules::{Rule, RuleDiff};
use flowshift_openflow::{
    CloseReason, Config, Connection, Event, FlowMod, FlowModCommand, FlowStatsRequest, SendError,
    State, port,
};
use flowshift_wire::Instant;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

/// Attempts per batch (the first send included) before its tokens are given up.
pub const MAX_ATTEMPTS: u32 = 3;
/// How often flow and port statistics are requested while connected.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// A statistics request unanswered this long is forgotten (and a new one may be sent).
const STATS_TIMEOUT: Duration = Duration::from_secs(5);
/// OpenFlow errors kept for the status.
const RECENT_ERRORS: usize = 16;
/// Switch connections still in their OpenFlow handshake at once; more are refused.
pub const MAX_CANDIDATES: usize = 4;

mod batch;
mod events;
mod status;

pub use status::{FlowCounter, PortCounter, SwitchCounters, SwitchStatus};

/// One flow-mod sent in a batch: its xid and what it was, for error messages.
struct Sent {
    xid: u32,
    what: String,
}

/// Flow-mods followed by a barrier.
struct Batch {
    barrier: u32,
    sent: Vec<Sent>,
    tokens: Vec<u64>,
    errors: u32,
    attempt: u32,
    full: bool,
}

/// Statistics requests awaiting their replies (xids; `None` once answered).
struct StatsPending {
    since: Instant,
    flows: Option<u32>,
    ports: Option<u32>,
}

/// The current switch connection.
struct Link {
    id: u64,
    conn: Connection,
    tx: mpsc::Sender<Vec<u8>>,
    peer: String,
}

/// The switch side of the controller. Methods take the orchestrator's current table where
/// they may need to (re)install it, and return the barrier tokens that became confirmed.
pub(crate) struct Switch {
    config: Config,
    /// The pinned datapath id, if any.
    pin: Option<u64>,
    link: Option<Link>,
    /// Connections in their OpenFlow handshake (not yet the switch).
    candidates: Vec<Link>,
    batches: VecDeque<Batch>,
    waiting: Vec<u64>,
    installed: bool,
    counters: SwitchCounters,
    recent_errors: VecDeque<String>,
    next_stats: Instant,
    stats_pending: Option<StatsPending>,
    stats_at: Option<Instant>,
    flows: Vec<FlowCounter>,
    ports: Vec<PortCounter>,
}

impl Switch {
    /// No switch yet; connections use `config`; `pin`: the only datapath id accepted.
    pub(crate) fn new(config: Config, pin: Option<u64>) -> Self {
        Switch {
            config,
            pin,
            link: None,
            candidates: Vec::new(),
            batches: VecDeque::new(),
            waiting: Vec::new(),
            installed: false,
            counters: SwitchCounters::default(),
            recent_errors: VecDeque::new(),
            next_stats: Instant::ZERO,
            stats_pending: None,
            stats_at: None,
            flows: Vec::new(),
            ports: Vec::new(),
        }
    }

    /// A switch connected (connection `id`, writer queue `tx`): a candidate until its
    /// handshake completes (see the module documentation). Refused (counted; dropping `tx`
    /// closes it) when [`MAX_CANDIDATES`] are pending.
    pub(crate) fn accept(
        &mut self,
        now: Instant,
        id: u64,
        tx: mpsc::Sender<Vec<u8>>,
        peer: String,
    ) {
        self.counters.accepted += 1;
        if self.candidates.len() >= MAX_CANDIDATES {
            self.counters.refused_busy += 1;
            warn!(%peer, "too many switch connections in their handshake; refusing one");
            return;
        }
        info!(%peer, "switch connection; OpenFlow handshake");
        let mut l = Link {
            id,
            conn: Connection::new(self.config.clone(), now),
            tx,
            peer,
        };
        // A candidate's writer queue is fresh and its first bytes (a HELLO) small.
        drain_into_writer(&mut l, &mut self.counters);
        self.candidates.push(l);
    }

    /// Runs candidate `i`'s events: promotes it on a handshake with an accepted datapath id,
    /// drops it on a refused one or a close. Returns the tokens confirmed by a promotion's
    /// events (none, normally).
    fn candidate_events(&mut self, now: Instant, i: usize, table: &[Rule]) -> Vec<u64> {
        while let Some(ev) = self.candidates[i].conn.poll_event() {
            match ev {
                Event::Connected {
                    datapath_id,
                    features,
                } => {
                    let mut l = self.candidates.swap_remove(i);
                    if let Some(pin) = self.pin
                        && pin != datapath_id
                    {
                        self.counters.refused_datapath_id += 1;
                        add_connection_stats(&mut self.counters, l.conn.stats());
                        let msg = format!(
                            "switch connection from {} refused: datapath id {datapath_id:#018x}, \
                             pinned {pin:#018x}",
                            l.peer
                        );
                        error!("{msg}");
                        self.note_error(msg);
                        l.conn.close();
                        drain_into_writer(&mut l, &mut self.counters);
                        return Vec::new(); // dropping `l.tx` closes the connection
                    }
                    if let Some(old) = &self.link {
                        warn!(old = %old.peer, new = %l.peer, "a new switch connection replaces the current one");
                        self.drop_link("replaced by a new connection");
                    }
                    self.link = Some(l);
                    self.handshake_done(now, datapath_id, features.n_tables, table);
                    return self.process_events(now, table);
                }
                Event::Closed(reason) => {
                    let l = self.candidates.swap_remove(i);
                    add_connection_stats(&mut self.counters, l.conn.stats());
                    warn!(peer = %l.peer, why = %close_reason(&reason), "switch connection closed in its handshake");
                    return Vec::new();
                }
                other => debug!(?other, "switch event before the handshake completed"),
            }
        }
        let l = &mut self.candidates[i];
        if !drain_into_writer(l, &mut self.counters) {
            let l = self.candidates.swap_remove(i);
            add_connection_stats(&mut self.counters, l.conn.stats());
        }
        Vec::new()
    }

    /// Bytes from connection `id`.
    pub(crate) fn input(
        &mut self,
        now: Instant,
        id: u64,
        bytes: &[u8],
        table: &[Rule],
    ) -> Vec<u64> {
        match &mut self.link {
            Some(l) if l.id == id => l.conn.handle_input(now, bytes),
            _ => {
                let Some(i) = self.candidates.iter().position(|c| c.id == id) else {
                    return Vec::new();
                };
                self.candidates[i].conn.handle_input(now, bytes);
                let confirmed = self.candidate_events(now, i, table);
                self.flush();
                return confirmed;
            }
        }
        let confirmed = self.process_events(now, table);
        self.flush();
        confirmed
    }

    /// Connection `id` ended (read error, end of stream, write failure).
    pub(crate) fn closed(&mut self, id: u64, why: &str) {
        if let Some(i) = self.candidates.iter().position(|c| c.id == id) {
            let l = self.candidates.swap_remove(i);
            add_connection_stats(&mut self.counters, l.conn.stats());
            debug!(why, peer = %l.peer, "switch connection closed in its handshake");
            return;
        }
        if self.link.as_ref().is_some_and(|l| l.id == id) {
            warn!(why, "switch connection lost");
            self.drop_link(why);
        }
    }

    /// Timers: OpenFlow handshake timeout and echo keepalive, statistics polling.
    pub(crate) fn tick(&mut self, now: Instant, table: &[Rule]) -> Vec<u64> {
        let mut confirmed = Vec::new();
        // Handshake timeouts of candidates (each may close or, unlikely, complete).
        for i in (0..self.candidates.len()).rev() {
            self.candidates[i].conn.handle_timeout(now);
            confirmed.extend(self.candidate_events(now, i, table));
        }
        let Some(l) = &mut self.link else {
            return confirmed;
        };
        l.conn.handle_timeout(now);
        confirmed.extend(self.process_events(now, table));
        self.poll_stats(now);
        self.flush();
        confirmed
    }

    /// Sends the flow-mods of `diff` (ADD, MODIFY_STRICT, DELETE_STRICT) and a barrier whose
    /// reply confirms `token`. Without a connected switch the token waits for the next full
    /// install (the orchestrator's table already includes the change).
    pub(crate) fn update(&mut self, diff: &RuleDiff, token: u64) {
        let mods = diff
            .add
            .iter()
            .map(|r| (r, FlowModCommand::Add))
            .chain(
                diff.modify
                    .iter()
                    .map(|r| (r, FlowModCommand::ModifyStrict)),
            )
            .chain(
                diff.delete
                    .iter()
                    .map(|r| (r, FlowModCommand::DeleteStrict)),
            )
            .map(|(r, c)| {
                (
                    flows::flow_mod(r, c),
                    format!("{c:?} {}", flows::describe(r)),
                )
            })
            .collect();
        self.send_batch(mods, vec![token], false, 1);
        self.flush();
    }

    /// Whether the handshake has completed on the current connection.
    pub(crate) fn connected(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.conn.state() == State::Connected)
    }

    /// Whether the whole table has been installed and confirmed on the current connection
    /// (changes may be in flight).
    pub(crate) fn installed(&self) -> bool {
        self.connected() && self.installed
    }

    /// Whether the whole table is installed and confirmed with nothing in flight.
    pub(crate) fn synced(&self) -> bool {
        self.installed() && self.batches.is_empty()
    }

    /// The datapath id while connected.
    pub(crate) fn datapath_id(&self) -> Option<u64> {
        self.link.as_ref().and_then(|l| l.conn.datapath_id())
    }

    /// The status for the operator API; `rules` is the size of the controller's table. Times
    /// are controller time (s since start).
    /// When the last flow-statistics reply came and its entries, if one has.
    pub(crate) fn flow_snapshot(&self) -> Option<(Instant, &[FlowCounter])> {
        self.stats_at.map(|at| (at, self.flows.as_slice()))
    }

    pub(crate) fn status(&self, rules: usize) -> SwitchStatus {
        SwitchStatus {
            connected: self.connected(),
            peer: self.link.as_ref().map(|l| l.peer.clone()),
            datapath_id: self.datapath_id(),
            synced: self.synced(),
            rules,
            batches_in_flight: self.batches.len(),
            tokens_waiting: self.waiting.len(),
            counters: self.counters_now(),
            recent_errors: self.recent_errors.iter().cloned().collect(),
            stats_at_s: self.stats_at.map(Instant::as_secs_f64),
            flows: self.flows.clone(),
            ports: self.ports.clone(),
        }
    }

    /// Counters including those of the current connection.
    fn counters_now(&self) -> SwitchCounters {
        let mut c = self.counters.clone();
        for l in self.link.iter().chain(&self.candidates) {
            add_connection_stats(&mut c, l.conn.stats());
        }
        c
    }

    fn note_error(&mut self, msg: String) {
        if self.recent_errors.len() == RECENT_ERRORS {
            self.recent_errors.pop_front();
        }
        self.recent_errors.push_back(msg);
    }

    fn drop_link(&mut self, why: &str) {
        let Some(mut l) = self.link.take() else {
            return;
        };
        // Whatever the connection still has to say (an ERROR explaining a close) goes out
        // if the writer has room; the connection is going away either way.
        drain_into_writer(&mut l, &mut self.counters);
        add_connection_stats(&mut self.counters, l.conn.stats());
        self.counters.disconnects += 1;
        self.installed = false;
        self.stats_pending = None;
        for b in self.batches.drain(..) {
            self.waiting.extend(b.tokens);
        }
        debug!(why, peer = %l.peer, "switch link dropped");
        // Dropping `l.tx` lets the writer finish the queued bytes and close the socket.
    }

    /// Moves the connection's queued bytes to the writer.
    fn flush(&mut self) {
        let Some(l) = &mut self.link else { return };
        if !drain_into_writer(l, &mut self.counters) {
            error!(peer = %l.peer, "switch writer queue full; closing the connection");
            self.drop_link("writer queue full");
        }
    }
}

/// Moves queued bytes from `l.conn` to its writer as one buffer; false if the writer's queue
/// was full (the bytes are lost: the caller must close the connection).
fn drain_into_writer(l: &mut Link, counters: &mut SwitchCounters) -> bool {
    let mut out = Vec::new();
    while let Some(m) = l.conn.poll_transmit() {
        out.extend_from_slice(&m);
    }
    if out.is_empty() {
        return true;
    }
    match l.tx.try_send(out) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            counters.writer_queue_full += 1;
            false
        }
        // The writer has gone: its failure report is on the way to the core.
        Err(mpsc::error::TrySendError::Closed(_)) => true,
    }
}

fn add_connection_stats(c: &mut SwitchCounters, s: &flowshift_openflow::Stats) {
    c.decode_errors += s.decode_errors;
    c.messages_received += s.messages_received;
    c.messages_sent += s.messages_sent;
    c.echo_requests_sent += s.echo_requests_sent;
    c.events_dropped += s.events_dropped;
    c.send_refused += s.tx_refused;
}

fn close_reason(r: &CloseReason) -> String {
    match r {
        CloseReason::VersionMismatch { peer_version, .. } => {
            format!("switch does not speak OpenFlow 1.3 (its version: {peer_version:#x})")
        }
        CloseReason::PeerHelloFailed { code } => format!("switch refused the hello (code {code})"),
        CloseReason::HandshakeTimeout => "no FEATURES_REPLY in time".into(),
        CloseReason::EchoTimeout => "switch stopped answering echo requests".into(),
        CloseReason::Framing(e) => format!("framing error: {e}"),
        CloseReason::ProtocolViolation(what) => format!("protocol violation: {what}"),
        CloseReason::Local => "closed locally".into(),
    }
}
