//! What the switch side reports: its counters ([`SwitchCounters`]), the last flow and port
//! statistics ([`FlowCounter`], [`PortCounter`]) and the status (`GET /switch`).

use super::*;
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
