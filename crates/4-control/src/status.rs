//! A node's status as it reports it to the controller (and the controller to operators): its
//! groups, its migrations and every counter, typed by component.
//!
//! Every value has a stable snake_case name in JSON: group modes, roles and phases by their
//! serde names, counters by field name, drops and losses as maps from reason (cause) label to
//! count. [`NodeCounters::flat`] lists every counter under one stable flat name
//! (`nat_<field>`, `drop_<reason>`, `loss_<cause>`, `rx_packets`, `transfer_<field>`, ...)
//! for tables, logs and differences; code that needs one counter reads its field.

use flowshift_migration::{InstanceCounters, InstanceId, LossCause, Phase, Role};
use flowshift_nat::{DropReason, GroupMode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Defines a struct of counters generic over the counter cell (`u64` in a status, an atomic
/// in the driver that counts) and its `map` to another cell type.
macro_rules! counter_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct $name<C = u64> {
            $( $(#[$fmeta])* pub $field: C, )*
        }

        impl<C> $name<C> {
            /// The same counters, each cell mapped by `f` (e.g. atomics to their values).
            pub fn map<D>(&self, mut f: impl FnMut(&C) -> D) -> $name<D> {
                $name { $( $field: f(&self.$field), )* }
            }
        }
    };
}

/// One node as it reports itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Instance id.
    pub id: InstanceId,
    /// Seconds since the node started.
    pub uptime_s: f64,
    /// Groups configured on the node (including ones being received).
    pub groups: Vec<GroupStatus>,
    /// Migrations the node knows (running and recently finished).
    pub migrations: Vec<NodeMigration>,
    /// Every counter, by component.
    pub counters: NodeCounters,
}

/// A group on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// External address.
    pub external: Ipv4Addr,
    /// Mode (`active`, `draining`, `halted`, `moved`).
    pub mode: GroupMode,
    /// Mappings held.
    pub mappings: u32,
    /// Sessions held.
    pub sessions: u32,
}

/// A migration as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMigration {
    /// Migration id.
    pub migration: u64,
    /// This node's role.
    pub role: Role,
    /// Current phase.
    pub phase: Phase,
}

/// Every counter of a node. All are monotonic except [`PollMax`]'s high-water marks (which
/// only grow too, but are maxima, not sums).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeCounters {
    /// The NAT's counters; `nat.drops` holds its drops per [`DropReason`].
    pub nat: flowshift_nat::Counters,
    /// Packets lost because of migrations, per cause: each cause's NAT drop reason
    /// ([`LossCause::drop_reason`]) over the node's whole life. Unknown causes are skipped
    /// when reading.
    #[serde(deserialize_with = "losses_by_label")]
    pub losses: BTreeMap<LossCause, u64>,
    /// The migration engine's counters.
    pub migration: InstanceCounters,
    /// The packet thread's I/O counters.
    pub io: IoCounters,
    /// The state-transfer service.
    pub transfer: TransferCounters,
    /// The control client.
    pub control: ControlCounters,
    /// The packet loop's poll gaps.
    pub poll: PollCounters,
    /// The packet loop's longest poll gaps.
    pub poll_max: PollMax,
    /// CPU accounting.
    pub cpu: CpuCounters,
}

impl NodeCounters {
    /// The losses of every cause, derived from the NAT's drops.
    pub fn losses_from(nat: &flowshift_nat::Counters) -> BTreeMap<LossCause, u64> {
        LossCause::ALL
            .iter()
            .map(|&c| (c, nat.drops_of(c.drop_reason())))
            .collect()
    }

    /// Packets lost because of migrations, of one cause.
    pub fn loss(&self, cause: LossCause) -> u64 {
        self.losses.get(&cause).copied().unwrap_or(0)
    }

    /// Packets lost because of migrations, all causes.
    pub fn total_losses(&self) -> u64 {
        self.losses.values().sum()
    }

    /// Packets the NAT dropped, all reasons.
    pub fn total_drops(&self) -> u64 {
        self.nat.total_drops()
    }

    /// Every counter under its stable flat name: `nat_<field>`, `drop_<reason>`,
    /// `loss_<cause>`, `migration_<field>`, the I/O counters by field name (`rx_packets`, ...),
    /// `transfer_<field>`, `control_<field>`, `poll_gaps*`, `max_poll_gap*_us`, `cpu_<field>`.
    pub fn flat(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let mut add = |prefix: &str, fields: Vec<(String, u64)>| {
            for (name, v) in fields {
                out.insert(format!("{prefix}{name}"), v);
            }
        };
        add("nat_", integer_fields(&self.nat));
        add(
            "drop_",
            DropReason::ALL
                .iter()
                .map(|&r| (r.label().to_owned(), self.nat.drops_of(r)))
                .collect(),
        );
        add(
            "loss_",
            LossCause::ALL
                .iter()
                .map(|&c| (c.label().to_owned(), self.loss(c)))
                .collect(),
        );
        add("migration_", integer_fields(&self.migration));
        add("", integer_fields(&self.io));
        add("transfer_", integer_fields(&self.transfer));
        add("control_", integer_fields(&self.control));
        add("", integer_fields(&self.poll));
        add("", integer_fields(&self.poll_max));
        add("cpu_", integer_fields(&self.cpu));
        out
    }
}

fn losses_by_label<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<LossCause, u64>, D::Error> {
    let by_label = BTreeMap::<String, u64>::deserialize(d)?;
    Ok(LossCause::ALL
        .iter()
        .filter_map(|&c| Some((c, *by_label.get(c.label())?)))
        .collect())
}

/// The integer fields of a serializable struct by field name (in name order); other fields,
/// such as the NAT's per-reason drop map, are skipped.
pub fn integer_fields<T: Serialize>(value: &T) -> Vec<(String, u64)> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(fields)) => fields
            .into_iter()
            .filter_map(|(name, v)| Some((name, v.as_u64()?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Counters of a node's packet thread (plain integers: one owner).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
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
    /// GSO packets to chain cut into segments in software (the kernel cannot segment the
    /// chain ethertype); each segment counts in `tx_chained`.
    pub tx_chain_segmented: u64,
    /// GSO packets to chain that could not be segmented (dropped).
    pub tx_chain_unsegmentable: u64,
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
    /// Loop iterations whose timers waited for a backlogged receive ring to drain first.
    #[serde(default)]
    pub timers_deferred: u64,
}

counter_struct! {
    /// Counters of a node's state-transfer service (flat names `transfer_<field>`).
    pub struct TransferCounters {
        /// Frames written to peers.
        pub frames_out,
        /// Their bytes.
        pub bytes_out,
        /// Frames lost because the connection failed or could not be made (the migration
        /// protocol retransmits).
        pub frames_lost,
        /// Frames for an instance that is not a configured peer (dropped).
        pub unknown_peer,
        /// Outgoing connections made.
        pub connects,
        /// Outgoing connection attempts that failed.
        pub connect_failures,
        /// Frames received from peers.
        pub frames_in,
        /// Their bytes.
        pub bytes_in,
        /// Incoming connections accepted (hello valid).
        pub accepts,
        /// Incoming connections refused (bad hello, unknown peer, too many connections).
        pub refused,
        /// Incoming connections refused for their TLS: failed or slow handshake, a certificate
        /// not from the cluster CA, or one that does not name the peer the hello states.
        pub auth_refused,
        /// Incoming connections closed after 5 minutes without a frame.
        pub idle_closed,
        /// Incoming streams closed because a frame header was invalid.
        pub stream_errors,
        /// Times a reader waited because the packet thread's queue was full (backpressure).
        pub in_waits,
    }
}

counter_struct! {
    /// Counters of a node's control client (flat names `control_<field>`).
    pub struct ControlCounters {
        /// Connections to the controller made.
        pub connects,
        /// Connection attempts that failed (TCP).
        pub connect_failures,
        /// TLS handshakes with the controller that failed (its certificate is not the
        /// controller's or not from the cluster CA, it refused ours, or it was too slow).
        pub tls_failures,
        /// Requests received.
        pub requests,
        /// Lines that did not decode, or were too long.
        pub bad_lines,
        /// Requests the packet thread did not answer in time, or could not queue.
        pub request_failures,
        /// Migration events written to the controller.
        pub events_sent,
    }
}

/// The packet loop's poll gaps: time from the end of one ring read to the start of the
/// next, minus time blocked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PollCounters {
    /// Gaps measured.
    pub poll_gaps: u64,
    /// Gaps longer than 10 µs.
    pub poll_gaps_over_10us: u64,
    /// Gaps longer than 100 µs.
    pub poll_gaps_over_100us: u64,
    /// Gaps longer than 1 ms.
    pub poll_gaps_over_1000us: u64,
    /// Gaps longer than 10 ms.
    pub poll_gaps_over_10000us: u64,
}

/// The packet loop's longest poll gaps since start, µs (high-water marks: gauges).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PollMax {
    /// Longest gap.
    pub max_poll_gap_us: u64,
    /// Longest gap that ended while a migration was running here.
    pub max_poll_gap_migrating_us: u64,
}

/// CPU accounting of a node (flat names `cpu_<field>`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuCounters {
    /// CPU time (user + system) of the packet thread, µs (`CLOCK_THREAD_CPUTIME_ID`).
    pub packet_thread_us: u64,
    /// CPU time of the whole node process, µs (`CLOCK_PROCESS_CPUTIME_ID`).
    pub process_us: u64,
    /// Involuntary context switches of the packet thread (on a shared machine they, not the
    /// node's own work, are often behind a long poll gap).
    pub packet_thread_preemptions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name<T: Serialize>(v: &T) -> String {
        serde_json::to_value(v)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn serde_names_are_the_labels() {
        for &r in DropReason::ALL {
            assert_eq!(name(&r), r.label());
            assert_eq!(DropReason::from_label(r.label()), Some(r));
        }
        for &c in LossCause::ALL {
            assert_eq!(name(&c), c.label());
        }
        assert_eq!(name(&GroupMode::Draining), "draining");
        assert_eq!(name(&Role::Source), "source");
        for s in crate::orchestrator::Stage::ALL {
            assert_eq!(name(&s), s.as_str());
        }
    }

    #[test]
    fn counters_round_trip_and_flatten_to_stable_names() {
        let mut c = NodeCounters::default();
        c.nat.packets_in = 7;
        c.nat.drop(DropReason::NoMapping);
        c.nat.drop(DropReason::GroupHalted);
        c.nat.drop(DropReason::GroupHalted);
        c.losses = NodeCounters::losses_from(&c.nat);
        c.io.rx_packets = 3;
        c.transfer.frames_out = 4;
        c.control.connects = 1;
        c.poll.poll_gaps_over_100us = 2;
        c.poll_max.max_poll_gap_us = 250;
        c.cpu.process_us = 9;
        let json = serde_json::to_string(&c).unwrap();
        let back: NodeCounters = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        assert_eq!(c.loss(LossCause::GroupHalted), 2);
        assert_eq!((c.total_losses(), c.total_drops()), (2, 3));
        let flat = c.flat();
        for (k, v) in [
            ("nat_packets_in", 7),
            ("drop_no_mapping", 1),
            ("drop_group_halted", 2),
            ("loss_group_halted", 2),
            ("loss_cutover_hold_full", 0),
            ("rx_packets", 3),
            ("transfer_frames_out", 4),
            ("control_connects", 1),
            ("poll_gaps_over_100us", 2),
            ("max_poll_gap_us", 250),
            ("cpu_process_us", 9),
            ("migration_frames_in", 0),
        ] {
            assert_eq!(flat.get(k), Some(&v), "{k}");
        }
        assert!(!flat.contains_key("nat_drops"));
    }

    #[test]
    fn unknown_labels_and_missing_fields_still_read() {
        let back: NodeCounters = serde_json::from_str(
            r#"{"nat": {"packets_in": 1, "drops": {"no_mapping": 2, "from_the_future": 5}},
                "losses": {"group_halted": 1, "from_the_future": 3},
                "io": {"rx_packets": 4}}"#,
        )
        .unwrap();
        assert_eq!(back.nat.packets_in, 1);
        assert_eq!(back.nat.drops_of(DropReason::NoMapping), 2);
        assert_eq!(back.total_drops(), 2);
        assert_eq!(back.io.rx_packets, 4);
        assert_eq!(
            (back.loss(LossCause::GroupHalted), back.total_losses()),
            (1, 1)
        );
    }

    #[test]
    fn counter_structs_map_cells() {
        let atomics = ControlCounters::<std::sync::atomic::AtomicU64>::default();
        atomics
            .requests
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        let plain = atomics.map(|a| a.load(std::sync::atomic::Ordering::Relaxed));
        assert_eq!(plain.requests, 3);
        assert_eq!(plain.connects, 0);
    }
}
