//! What a host measures: counters of one application ([`AppStats`]) and of the host
//! ([`HostStats`]), and the record of one flow ([`FlowRecord`]).

use super::*;
/// Counters of one application.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AppStats {
    /// `tcp_source`, `tcp_sink`, `udp_cbr` or `udp_sink`.
    pub kind: &'static str,
    /// Payload bytes handed to the socket (sources).
    pub bytes_sent: u64,
    /// Payload bytes read from the socket (sinks): the goodput numerator.
    pub bytes_received: u64,
    /// Datagrams handed to the socket (UDP sources).
    pub packets_sent: u64,
    /// Datagrams read (UDP sinks).
    pub packets_received: u64,
    /// Datagrams refused because the socket send buffer was full (UDP sources).
    pub refused: u64,
    /// TCP connections established (sources: 0 or 1; sinks: accepted).
    pub connections: u64,
    /// Connections that finished normally.
    pub completed: u64,
    /// Connections that failed (reset, refused, no ephemeral port).
    pub failed: u64,
    /// Virtual time (ns) the application started sending / accepted its first connection.
    pub started_ns: Option<u64>,
    /// Virtual time (ns) a source finished (for sinks: the last completed connection).
    pub finished_ns: Option<u64>,
}

/// Counters of one host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostStats {
    /// Datagrams handed to smoltcp.
    pub rx_packets: u64,
    /// Datagrams emitted by smoltcp.
    pub tx_packets: u64,
    /// Wake-ups (polls).
    pub polls: u64,
    /// Times the device refused a transmit token because the link queue was full.
    pub tx_blocked: u64,
    /// Times a poll needed the round bound (`MAX_ROUNDS`).
    pub round_limit_hits: u64,
    /// Times smoltcp asked to be polled again immediately without being blocked (re-polled
    /// 1 µs later instead of spinning).
    pub spin_guards: u64,
    /// Datagrams refused at ingress (malformed, wrong address, bad checksum).
    pub rejected: u64,
}

/// The 5-tuple, origin and counters of one flow (one direction of a 5-tuple at its sender).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    /// The 5-tuple at the sending host's egress.
    pub tuple: FiveTuple,
    /// The sending host.
    pub src: ElementId,
    /// Packets stamped at egress (the next sequence number).
    pub sent: u64,
    /// Packets delivered to a host.
    pub delivered: u64,
    /// Packets dropped anywhere (any cause).
    pub dropped: u64,
    /// Delivered packets whose sequence number was below the highest already delivered.
    pub reordered: u64,
    /// Highest sequence number delivered so far.
    pub max_seq_delivered: Option<u64>,
    /// Largest one-way delay of a delivered packet (ns).
    pub max_delay_ns: u64,
    /// Sum of one-way delays of delivered packets (ns), for means.
    pub delay_sum_ns: u64,
}
