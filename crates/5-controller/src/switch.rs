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

/// Counters of the switch side; all monotonic over the controller's lifetime.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SwitchCounters {
    /// Switch connections accepted.
    pub accepted: u64,
    /// Handshakes completed.
    pub connects: u64,
    /// Connections lost or closed.
    pub disconnects: u64,
    /// Full table installs (on connect and resyncs).
    pub full_installs: u64,
    /// Flow-mods queued.
    pub flow_mods_sent: u64,
    /// Barriers queued.
    pub barriers_sent: u64,
    /// Batches confirmed by a barrier reply without errors.
    pub batches_confirmed: u64,
    /// Batches whose flow-mods drew errors.
    pub batches_failed: u64,
    /// Resyncs sent after a failed batch.
    pub resyncs: u64,
    /// Barrier tokens given up after [`MAX_ATTEMPTS`].
    pub tokens_given_up: u64,
    /// OFPT_ERROR messages received.
    pub errors: u64,
    /// Barrier replies matching no batch.
    pub unknown_barriers: u64,
    /// Requests the connection refused to queue (not connected, queue full, encoding).
    pub send_refused: u64,
    /// Writes refused because the writer's queue was full (the connection is then closed).
    pub writer_queue_full: u64,
    /// Flow/port statistics replies taken.
    pub stats_replies: u64,
    /// Statistics requests that went unanswered for 5 s.
    pub stats_timeouts: u64,
    /// PACKET_IN messages (none are expected: no rule sends to the controller).
    pub packet_ins: u64,
    /// PORT_STATUS messages.
    pub port_status: u64,
    /// Other messages from the switch (unsolicited replies, unknown types).
    pub other_messages: u64,
    /// Messages from the switch that did not decode.
    pub decode_errors: u64,
    /// Messages received on all connections.
    pub messages_received: u64,
    /// Messages sent on all connections.
    pub messages_sent: u64,
    /// ECHO requests sent as keepalive probes.
    pub echo_requests_sent: u64,
    /// Events the connection dropped because its queue was full.
    pub events_dropped: u64,
    /// Connections refused because their FEATURES_REPLY named a datapath id other than the
    /// pinned one (`[switch] datapath_id`); they never replaced the current switch.
    pub refused_datapath_id: u64,
    /// Connections refused because [`MAX_CANDIDATES`] were already in their handshake.
    pub refused_busy: u64,
}

/// Per-entry counters from the last flow-statistics reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowCounter {
    /// Table.
    pub table_id: u8,
    /// Priority.
    pub priority: u16,
    /// Cookie (the control layer's rule tag).
    pub cookie: u64,
    /// The match, e.g. `in_port=1,eth_type=0x0800,ipv4_src=100.64.0.0/16`.
    #[serde(rename = "match")]
    pub match_: String,
    /// Packets matched.
    pub packets: u64,
    /// Bytes matched.
    pub bytes: u64,
    /// Seconds the entry has existed.
    pub duration_s: f64,
}

/// Per-port counters from the last port-statistics reply (all-ones: not kept by the switch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // the fields mirror ofp_port_stats
pub struct PortCounter {
    pub port_no: u32,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
}

/// The switch as the controller sees it (`GET /switch`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchStatus {
    /// The OpenFlow handshake has completed on the current connection.
    pub connected: bool,
    /// The current connection's peer, if any.
    pub peer: Option<String>,
    /// Datapath id while connected.
    pub datapath_id: Option<u64>,
    /// The controller's table is installed, confirmed, and no change is in flight.
    pub synced: bool,
    /// Entries in the controller's table.
    pub rules: usize,
    /// Batches sent whose barrier reply is outstanding.
    pub batches_in_flight: usize,
    /// Barrier tokens waiting for the next connection's full install.
    pub tokens_waiting: usize,
    /// Counters.
    pub counters: SwitchCounters,
    /// The last OpenFlow errors (and refused sends), oldest first.
    pub recent_errors: Vec<String>,
    /// Controller uptime (s) when the statistics below were taken; `None`: never.
    pub stats_at_s: Option<f64>,
    /// Flow entries and their counters.
    pub flows: Vec<FlowCounter>,
    /// Ports and their counters.
    pub ports: Vec<PortCounter>,
}

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

    /// Queues a batch on the connected switch; without one, its tokens wait.
    fn send_batch(
        &mut self,
        mods: Vec<(FlowMod, String)>,
        tokens: Vec<u64>,
        full: bool,
        attempt: u32,
    ) {
        let Some(l) = self
            .link
            .as_mut()
            .filter(|l| l.conn.state() == State::Connected)
        else {
            self.waiting.extend(tokens);
            return;
        };
        let mut batch = Batch {
            barrier: 0,
            sent: Vec::with_capacity(mods.len()),
            tokens,
            errors: 0,
            attempt,
            full,
        };
        let mut refused = Vec::new();
        let mut writer_full = false;
        for (fm, what) in mods {
            let mut sent = l.conn.send_flow_mod(&fm);
            if sent == Err(SendError::QueueFull) {
                // The connection's own queue is bounded: move its bytes to the writer.
                writer_full = !drain_into_writer(l, &mut self.counters);
                if writer_full {
                    break;
                }
                sent = l.conn.send_flow_mod(&fm);
            }
            match sent {
                Ok(xid) => batch.sent.push(Sent { xid, what }),
                Err(e) => {
                    batch.errors += 1;
                    refused.push(format!("flow-mod not sent ({e}): {what}"));
                }
            }
        }
        self.counters.flow_mods_sent += batch.sent.len() as u64;
        match (writer_full, l.conn.send_barrier()) {
            (false, Ok(xid)) => {
                batch.barrier = xid;
                self.counters.barriers_sent += 1;
                self.batches.push_back(batch);
            }
            (_, Err(e)) => {
                refused.push(format!("barrier not sent ({e})"));
                self.waiting.extend(batch.tokens);
            }
            (true, Ok(_)) => self.waiting.extend(batch.tokens),
        }
        self.counters.send_refused += refused.len() as u64;
        for r in refused {
            error!("{r}");
            self.note_error(r);
        }
        if writer_full {
            error!("switch writer queue full; closing the connection");
            self.drop_link("writer queue full");
        }
    }

    /// Delete all flows (on a fresh connection), then add the whole table, then a barrier.
    fn install(&mut self, table: &[Rule], tokens: Vec<u64>, from_scratch: bool, attempt: u32) {
        let mut mods = Vec::with_capacity(table.len() + 1);
        if from_scratch {
            mods.push((flows::delete_all(), "delete all flows".to_owned()));
        }
        mods.extend(table.iter().map(|r| {
            (
                flows::flow_mod(r, FlowModCommand::Add),
                format!("Add {}", flows::describe(r)),
            )
        }));
        self.counters.full_installs += 1;
        info!(
            rules = table.len(),
            from_scratch, "installing the flow table"
        );
        self.send_batch(mods, tokens, true, attempt);
    }

    fn process_events(&mut self, now: Instant, table: &[Rule]) -> Vec<u64> {
        let mut confirmed = Vec::new();
        while let Some(ev) = self.link.as_mut().and_then(|l| l.conn.poll_event()) {
            match ev {
                Event::Connected {
                    datapath_id,
                    features,
                } => {
                    // Links are promoted from candidates once connected: not expected here.
                    self.handshake_done(now, datapath_id, features.n_tables, table);
                }
                Event::BarrierReply { xid } => {
                    let Some(i) = self.batches.iter().position(|b| b.barrier == xid) else {
                        self.counters.unknown_barriers += 1;
                        debug!(xid, "barrier reply for no batch");
                        continue;
                    };
                    if let Some(b) = self.batches.remove(i) {
                        confirmed.extend(self.finish_batch(b, table));
                    }
                }
                Event::Error { xid, error } => {
                    self.counters.errors += 1;
                    let batch = self
                        .batches
                        .iter_mut()
                        .find(|b| b.sent.iter().any(|s| s.xid == xid));
                    let what = match batch {
                        Some(b) => {
                            b.errors += 1;
                            b.sent
                                .iter()
                                .find(|s| s.xid == xid)
                                .map_or_else(String::new, |s| s.what.clone())
                        }
                        None => "a request outside any batch".to_owned(),
                    };
                    let msg = format!(
                        "OpenFlow error type {} code {} for xid {xid} ({what})",
                        error.err_type, error.code
                    );
                    error!("{msg}");
                    self.note_error(msg);
                }
                Event::FlowStats { xid, entries, .. } => {
                    if let Some(p) = &mut self.stats_pending
                        && p.flows == Some(xid)
                    {
                        p.flows = None;
                        self.counters.stats_replies += 1;
                        self.stats_at = Some(now);
                        let mut flows: Vec<FlowCounter> = entries
                            .iter()
                            .map(|e| FlowCounter {
                                table_id: e.table_id,
                                priority: e.priority,
                                cookie: e.cookie,
                                match_: flows::describe_match(&e.match_),
                                packets: e.packet_count,
                                bytes: e.byte_count,
                                duration_s: f64::from(e.duration_sec)
                                    + f64::from(e.duration_nsec) / 1e9,
                            })
                            .collect();
                        flows.sort_by(|a, b| (b.priority, &a.match_).cmp(&(a.priority, &b.match_)));
                        self.flows = flows;
                    }
                }
                Event::PortStats { xid, entries, .. } => {
                    if let Some(p) = &mut self.stats_pending
                        && p.ports == Some(xid)
                    {
                        p.ports = None;
                        self.counters.stats_replies += 1;
                        self.stats_at = Some(now);
                        let mut ports: Vec<PortCounter> = entries
                            .iter()
                            .map(|e| PortCounter {
                                port_no: e.port_no,
                                rx_packets: e.rx_packets,
                                tx_packets: e.tx_packets,
                                rx_bytes: e.rx_bytes,
                                tx_bytes: e.tx_bytes,
                                rx_dropped: e.rx_dropped,
                                tx_dropped: e.tx_dropped,
                                rx_errors: e.rx_errors,
                                tx_errors: e.tx_errors,
                            })
                            .collect();
                        ports.sort_by_key(|p| p.port_no);
                        self.ports = ports;
                    }
                }
                Event::PortStatus(p) => {
                    self.counters.port_status += 1;
                    info!(port = p.port.port_no, name = %p.port.name, reason = p.reason, "switch port status");
                }
                Event::PacketIn(_) => self.counters.packet_ins += 1,
                Event::FlowRemoved(_) | Event::PortDesc { .. } | Event::Message { .. } => {
                    self.counters.other_messages += 1;
                }
                Event::Malformed {
                    xid,
                    msg_type,
                    error,
                } => {
                    warn!(xid, msg_type, %error, "undecodable message from the switch");
                }
                Event::Closed(reason) => {
                    let why = close_reason(&reason);
                    warn!(%why, "switch connection closed");
                    self.drop_link(&why);
                }
            }
            if self
                .stats_pending
                .as_ref()
                .is_some_and(|p| p.flows.is_none() && p.ports.is_none())
            {
                self.stats_pending = None;
            }
        }
        confirmed
    }

    /// The current link's handshake completed: install the whole table.
    fn handshake_done(&mut self, now: Instant, datapath_id: u64, n_tables: u8, table: &[Rule]) {
        info!(
            datapath_id = format_args!("{datapath_id:#018x}"),
            tables = n_tables,
            "switch handshake complete"
        );
        self.counters.connects += 1;
        self.next_stats = now + STATS_INTERVAL;
        let tokens = std::mem::take(&mut self.waiting);
        self.install(table, tokens, true, 1);
    }

    /// A batch's barrier reply arrived: its tokens if it went through, else a resync.
    fn finish_batch(&mut self, b: Batch, table: &[Rule]) -> Vec<u64> {
        if b.errors == 0 {
            self.counters.batches_confirmed += 1;
            if b.full {
                self.installed = true;
            }
            return b.tokens;
        }
        self.counters.batches_failed += 1;
        if b.attempt < MAX_ATTEMPTS {
            self.counters.resyncs += 1;
            warn!(
                errors = b.errors,
                attempt = b.attempt,
                "flow-mods failed; re-sending the whole table before confirming"
            );
            self.install(table, b.tokens, false, b.attempt + 1);
        } else {
            self.counters.tokens_given_up += b.tokens.len() as u64;
            let msg = format!(
                "switch table update failed {MAX_ATTEMPTS} times; {} redirect(s) stay unconfirmed",
                b.tokens.len()
            );
            error!("{msg}");
            self.note_error(msg);
        }
        Vec::new()
    }

    fn poll_stats(&mut self, now: Instant) {
        if let Some(p) = &self.stats_pending {
            if now < p.since + STATS_TIMEOUT {
                return;
            }
            self.counters.stats_timeouts += 1;
            self.stats_pending = None;
        }
        if now < self.next_stats || !self.connected() {
            return;
        }
        self.next_stats = now + STATS_INTERVAL;
        let Some(l) = &mut self.link else { return };
        let flows = l.conn.request_flow_stats(&FlowStatsRequest::all()).ok();
        let ports = l.conn.request_port_stats(port::ANY).ok();
        if flows.is_none() || ports.is_none() {
            self.counters.send_refused += 1;
        }
        if flows.is_some() || ports.is_some() {
            self.stats_pending = Some(StatsPending {
                since: now,
                flows,
                ports,
            });
        }
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
