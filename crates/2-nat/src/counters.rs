//! Drop reasons and counters: every packet the NAT refuses is counted under exactly one reason.

use serde::{Deserialize, Serialize};

macro_rules! drop_reasons {
    ($( $(#[doc = $doc:literal])* $name:ident = $label:literal, )*) => {
        /// Why a packet was dropped. One counter per reason ([`Counters::drops`]). Serialized
        /// by its label.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[repr(u8)]
        pub enum DropReason { $( $(#[doc = $doc])* $name, )* }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// Number of reasons.
            pub const COUNT: usize = DropReason::ALL.len();
            /// Stable snake_case name (metrics labels, JSON keys).
            pub const fn label(self) -> &'static str {
                match self { $(DropReason::$name => $label,)* }
            }
            /// The reason with this label.
            pub fn from_label(label: &str) -> Option<DropReason> {
                match label { $($label => Some(DropReason::$name),)* _ => None }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than an IPv4 header.
    Truncated = "truncated",
    /// Not IP version 4.
    NotIpv4 = "not_ipv4",
    /// IHL below 5 or past the end of the buffer.
    BadHeaderLength = "bad_header_length",
    /// Total length inconsistent with the header or the buffer.
    BadTotalLength = "bad_total_length",
    /// IPv4 header checksum wrong.
    BadIpChecksum = "bad_ip_checksum",
    /// IPv4 options present and the policy is to drop them.
    IpOptions = "ip_options",
    /// TTL would reach zero (arrived with TTL 0 or 1).
    TtlExpired = "ttl_expired",
    /// Transport header shorter than its minimum (including tiny first fragments).
    L4Truncated = "l4_truncated",
    /// Not TCP, UDP or ICMP.
    UnsupportedProtocol = "unsupported_protocol",
    /// ICMP type that is neither a supported query nor an error (RFC 5508 REQ-2 allows drop).
    UnsupportedIcmp = "unsupported_icmp",
    /// ICMP checksum wrong on a message the NAT must rewrite the payload of.
    BadIcmpChecksum = "bad_icmp_checksum",
    /// ICMP error whose embedded packet cannot be parsed.
    IcmpErrorMalformed = "icmp_error_malformed",
    /// ICMP error about a flow the NAT has no session for.
    IcmpErrorNoSession = "icmp_error_no_session",
    /// Non-first fragment with no first fragment seen (out-of-order fragments are not held).
    FragmentNoState = "fragment_no_state",
    /// Fragment-tracking table full.
    FragmentTableFull = "fragment_table_full",
    /// Source is not a subscriber and destination is not an external address of this NAT.
    NotOurs = "not_ours",
    /// Outbound TCP packet without SYN and without session (RFC 5382: only SYN creates).
    TcpNoSessionNonSyn = "tcp_no_session_non_syn",
    /// Inbound packet for an external endpoint with no mapping (includes unsolicited SYNs,
    /// silently dropped as RFC 5382 REQ-4 permits).
    NoMapping = "no_mapping",
    /// Inbound TCP non-SYN from a remote endpoint the mapping has no session with.
    TcpInboundNoSession = "tcp_inbound_no_session",
    /// Refused by address-dependent filtering.
    Filtered = "filtered",
    /// Every port of every block of the subscriber is in use and no further block may be held.
    SubscriberPortLimit = "subscriber_port_limit",
    /// The external address has no free block left.
    PoolExhausted = "pool_exhausted",
    /// Mapping table at its bound.
    MappingTableFull = "mapping_table_full",
    /// Session table at its bound.
    SessionTableFull = "session_table_full",
    /// Mapping at its per-mapping session bound.
    SessionsPerMappingLimit = "sessions_per_mapping_limit",
    /// The subscriber holds `max_sessions_per_subscriber` sessions (RFC 6888 REQ-5).
    SubscriberSessionLimit = "subscriber_session_limit",
    /// The group is halted by a stop-and-copy migration (its downtime).
    GroupHalted = "group_halted",
    /// The group is migrating and the packet needs a new mapping, which this instance may no
    /// longer create, and the caller has no peer to chain it to.
    GroupDraining = "group_draining",
    /// Migration: the buffer for packets of frozen flows is full.
    FreezeBufferFull = "freeze_buffer_full",
    /// Migration: the daisy-chain queue towards the peer instance is full.
    ChainQueueFull = "chain_queue_full",
    /// Migration: a new flow arrived while the source waited for the destination's
    /// acknowledgement of `Prepare`, and the buffer for such packets was full.
    PrepareBufferFull = "prepare_buffer_full",
    /// Migration: the destination's queue of switch packets held until the end of the daisy
    /// chain was full.
    CutoverHoldFull = "cutover_hold_full",
    /// The driver's output queue was full.
    OutputQueueFull = "output_queue_full",
}

/// Packet and table counters of one NAT instance. Plain integers: the owner is single-threaded.
/// Serialized with `drops` as a map from reason label to count; deserializing ignores unknown
/// labels and missing fields (a newer or older peer's status still reads). `Default` is
/// written out (the drops array is longer than derives support).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Packets handed to the NAT.
    pub packets_in: u64,
    /// Packets translated outbound (inside to outside).
    pub translated_out: u64,
    /// Packets translated inbound (outside to inside).
    pub translated_in: u64,
    /// Packets translated both ways (hairpinned).
    pub hairpinned: u64,
    /// Packets translated by the batch fast path (a subset of the two counters above).
    pub fast_path: u64,
    /// Packets handed back unchanged for the peer instance (daisy chain).
    pub chained: u64,
    /// Packets held because their mapping is frozen.
    pub held: u64,
    /// Drops, indexed by `DropReason as usize`.
    #[serde(
        serialize_with = "drops_by_label",
        deserialize_with = "drops_from_labels"
    )]
    pub drops: [u64; DropReason::COUNT],
    /// Mappings created.
    pub mappings_created: u64,
    /// Mappings removed (expired, deleted or exported away).
    pub mappings_removed: u64,
    /// Sessions created.
    pub sessions_created: u64,
    /// Sessions expired by their idle timer.
    pub sessions_expired: u64,
    /// Port blocks allocated.
    pub blocks_allocated: u64,
    /// Port blocks released.
    pub blocks_released: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
    /// State records installed by import.
    pub records_imported: u64,
    /// State records refused by import (every record of a refused batch counts).
    pub records_refused: u64,
    /// Sessions installed while their subscriber already held `max_sessions_per_subscriber`
    /// (only imports do that: the packet path refuses such sessions).
    pub sessions_over_subscriber_limit: u64,
}

impl Default for Counters {
    fn default() -> Self {
        // Written out: `Default` for arrays stops at 32 elements.
        Counters {
            packets_in: 0,
            translated_out: 0,
            translated_in: 0,
            hairpinned: 0,
            fast_path: 0,
            chained: 0,
            held: 0,
            drops: [0; DropReason::COUNT],
            mappings_created: 0,
            mappings_removed: 0,
            sessions_created: 0,
            sessions_expired: 0,
            blocks_allocated: 0,
            blocks_released: 0,
            events_dropped: 0,
            records_imported: 0,
            records_refused: 0,
            sessions_over_subscriber_limit: 0,
        }
    }
}

fn drops_by_label<S: serde::Serializer>(
    d: &[u64; DropReason::COUNT],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(DropReason::COUNT))?;
    for r in DropReason::ALL {
        m.serialize_entry(r.label(), &d[*r as usize])?;
    }
    m.end()
}

fn drops_from_labels<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<[u64; DropReason::COUNT], D::Error> {
    let by_label = std::collections::BTreeMap::<String, u64>::deserialize(d)?;
    let mut drops = [0; DropReason::COUNT];
    for (label, n) in by_label {
        if let Some(r) = DropReason::from_label(&label) {
            drops[r as usize] = n;
        }
    }
    Ok(drops)
}

impl Counters {
    /// Counts one drop.
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }
    /// The counter of one reason.
    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}
