//! Counters of the node's drivers and the status snapshot the packet thread publishes.
//!
//! Counter names in [`NodeStatus::counters`] (stable; the controller, the testbed and
//! `/metrics` use them):
//! * `nat_<field>`: every field of [`flowshift_nat::Counters`] except `drops`;
//! * `drop_<reason>`: NAT drops per [`flowshift_nat::DropReason`] label;
//! * `loss_<cause>`: packets lost because of migrations per
//!   [`flowshift_migration::LossCause`] label (each cause is counted by the NAT under the
//!   drop reason of the same label, over the node's whole life);
//! * `migration_<field>`: every field of [`flowshift_migration::InstanceCounters`];
//! * the packet thread's [`IoCounters`] (`rx_*`, `tx_*`, ...), the transfer service's
//!   [`TransferCounters`] (`transfer_*`) and the control client's [`ControlCounters`]
//!   (`control_*`);
//! * the packet loop's poll gaps ([`crate::pacing::GapMeter`]): `poll_gaps` (gaps measured),
//!   `poll_gaps_over_<b>us` for b in 10, 100, 1000, 10000 (gaps longer than b µs),
//!   `max_poll_gap_us` (longest gap since start) and `max_poll_gap_migrating_us` (longest
//!   gap that ended while a migration was running here);
//! * CPU time, µs: `cpu_packet_thread_us` (the packet thread, `CLOCK_THREAD_CPUTIME_ID`) and
//!   `cpu_process_us` (the whole node process, `CLOCK_PROCESS_CPUTIME_ID`), and
//!   `cpu_packet_thread_preemptions` (involuntary context switches of the packet thread: on
//!   a shared machine they, not the node's own work, are often behind a long poll gap).

use flowshift_control::api::NodeStatus;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of the packet thread (plain integers: one owner).
#[derive(Clone, Debug, Default, Serialize)]
pub struct IoCounters {
    /// Frames taken from the receive ring.
    pub rx_packets: u64,
    /// Their bytes (Ethernet header included).
    pub rx_bytes: u64,
    /// Frames the kernel dropped because the ring was full (`PACKET_STATISTICS` `tp_drops`).
    pub rx_ring_drops: u64,
    /// Times the kernel froze the ring because no block was free (`tp_freeze_q_cnt`).
    pub rx_ring_freezes: u64,
    /// Frames of another ethertype than IPv4 or the chain's (dropped).
    pub rx_not_ipv4: u64,
    /// Chain frames from a MAC that is no peer's (dropped).
    pub rx_chain_unknown_peer: u64,
    /// Chain frames accepted.
    pub rx_chained: u64,
    /// Frames shorter than an Ethernet header, or cut by the ring's frame limit (dropped).
    pub rx_truncated: u64,
    /// Frames with a VLAN tag (dropped: the switch port is untagged).
    pub rx_vlan: u64,
    /// Frames whose virtio-net header points the checksum outside the packet (dropped).
    pub rx_bad_vnet_hdr: u64,
    /// Frames the node sent that the ring showed anyway (skipped).
    pub rx_outgoing: u64,
    /// Without `vnet_hdr`: frames whose checksum the kernel had not completed (passed on).
    pub rx_csum_not_ready: u64,
    /// Frames handed to the kernel.
    pub tx_packets: u64,
    /// Their bytes (Ethernet header included).
    pub tx_bytes: u64,
    /// Frames the kernel refused with an error (dropped).
    pub tx_errors: u64,
    /// Frames dropped because the socket stayed full.
    pub tx_queue_full: u64,
    /// Translated packets sent towards the subscribers.
    pub tx_to_inside: u64,
    /// Translated packets sent towards the outside.
    pub tx_to_outside: u64,
    /// Packets chained to a peer.
    pub tx_chained: u64,
    /// Packets to chain to a peer with no configured MAC (dropped).
    pub tx_chain_unknown_peer: u64,
    /// Packets the instance handed back as dropped (`report_drops`; already counted by the
    /// NAT).
    pub dropped_reported: u64,
    /// Transfer frames the instance produced that the transfer queue refused.
    pub transfer_out_refused: u64,
    /// Transfer frames the instance refused as malformed.
    pub transfer_in_malformed: u64,
    /// Migration events the control queue refused.
    pub control_events_dropped: u64,
    /// Controller commands served.
    pub commands: u64,
    /// Times the packet loop blocked in poll(2).
    pub idle_sleeps: u64,
}

/// A counter shared between threads.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Counter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

/// Counters of the state-transfer service.
#[derive(Debug, Default, Serialize)]
pub struct TransferCounters {
    /// Frames written to peers.
    pub transfer_frames_out: Counter,
    /// Their bytes.
    pub transfer_bytes_out: Counter,
    /// Frames lost because the connection failed or could not be made (the migration
    /// protocol retransmits).
    pub transfer_frames_lost: Counter,
    /// Frames for an instance that is not a configured peer (dropped).
    pub transfer_unknown_peer: Counter,
    /// Outgoing connections made.
    pub transfer_connects: Counter,
    /// Outgoing connection attempts that failed.
    pub transfer_connect_failures: Counter,
    /// Frames received from peers.
    pub transfer_frames_in: Counter,
    /// Their bytes.
    pub transfer_bytes_in: Counter,
    /// Incoming connections accepted (hello valid).
    pub transfer_accepts: Counter,
    /// Incoming connections refused (bad hello, unknown peer, too many connections).
    pub transfer_refused: Counter,
    /// Incoming connections refused for their TLS: failed or slow handshake, a certificate
    /// not from the cluster CA, or one that does not name the peer the hello states.
    pub transfer_auth_refused: Counter,
    /// Incoming connections closed after [`crate::transfer::IDLE_TIMEOUT`] without a frame.
    pub transfer_idle_closed: Counter,
    /// Incoming streams closed because a frame header was invalid.
    pub transfer_stream_errors: Counter,
    /// Times a reader waited because the packet thread's queue was full (backpressure).
    pub transfer_in_waits: Counter,
}

/// Counters of the control client.
#[derive(Debug, Default, Serialize)]
pub struct ControlCounters {
    /// Connections to the controller made.
    pub control_connects: Counter,
    /// Connection attempts that failed.
    pub control_connect_failures: Counter,
    /// Requests received.
    pub control_requests: Counter,
    /// Lines that did not decode, or were too long.
    pub control_bad_lines: Counter,
    /// Requests the packet thread did not answer in time, or could not queue.
    pub control_request_failures: Counter,
    /// Migration events written to the controller.
    pub control_events_sent: Counter,
}

/// Adds every integer field of a serializable counter struct to `out` as `prefix + name`
/// (other fields, such as the NAT's per-reason drop array, are left to the caller).
pub fn add_counters<T: Serialize>(out: &mut BTreeMap<String, u64>, prefix: &str, value: &T) {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(value) else {
        return;
    };
    for (name, v) in fields {
        if let Some(n) = v.as_u64() {
            out.insert(format!("{prefix}{name}"), n);
        }
    }
}

/// The latest status the packet thread published (for `/metrics` and the control client's
/// hello). The packet thread replaces it with `try_lock`, so it never waits on a reader.
#[derive(Debug, Default)]
pub struct SnapshotCell(Mutex<Arc<NodeStatus>>);

impl SnapshotCell {
    /// Publishes a status unless a reader holds the lock right now; true if published.
    pub fn try_publish(&self, status: NodeStatus) -> bool {
        match self.0.try_lock() {
            Ok(mut g) => {
                *g = Arc::new(status);
                true
            }
            Err(_) => false,
        }
    }

    /// The latest status.
    pub fn get(&self) -> Arc<NodeStatus> {
        match self.0.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}
