//! The packet ledger ("every packet accounted") and the run report.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::host::{AppStats, FlowRecord, HostStats};
use crate::link::{LinkConfig, LinkStats};
use crate::packet::{DropCause, ElementId, PacketId};

/// Tracks which packets are alive and how each one left the network.
///
/// Every packet gets an id at creation; it is retired exactly once: delivered to a host,
/// consumed by an element, or dropped with a [`DropCause`]. At the end, each live packet must
/// be found in flight (link queue, serializer, on the wire) or held by an element; anything
/// else is "unaccounted" and an invariant violation.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    live: Vec<u64>,
    next_id: u64,
    pub created: u64,
    pub delivered_to_hosts: u64,
    pub consumed_by_elements: u64,
    pub drops: BTreeMap<DropCause, u64>,
    /// Element drops by (element, reason).
    pub element_drops: BTreeMap<(ElementId, &'static str), u64>,
    pub violations: Vec<String>,
}

impl Ledger {
    pub fn create(&mut self) -> PacketId {
        let id = self.next_id;
        self.next_id += 1;
        self.created += 1;
        let (w, b) = ((id / 64) as usize, id % 64);
        if self.live.len() <= w {
            self.live.resize(w + 1, 0);
        }
        self.live[w] |= 1 << b;
        PacketId(id)
    }

    fn retire(&mut self, id: PacketId) -> bool {
        let (w, b) = ((id.0 / 64) as usize, id.0 % 64);
        match self.live.get_mut(w) {
            Some(word) if *word & (1 << b) != 0 => {
                *word &= !(1 << b);
                true
            }
            _ => {
                if self.violations.len() < 100 {
                    self.violations
                        .push(format!("packet {} accounted twice or never created", id.0));
                }
                false
            }
        }
    }

    pub fn delivered(&mut self, id: PacketId) {
        if self.retire(id) {
            self.delivered_to_hosts += 1;
        }
    }

    pub fn consumed(&mut self, id: PacketId) {
        if self.retire(id) {
            self.consumed_by_elements += 1;
        }
    }

    pub fn dropped(&mut self, id: PacketId, cause: DropCause, element: Option<ElementId>) {
        if self.retire(id) {
            *self.drops.entry(cause).or_default() += 1;
            if let (DropCause::Element(r), Some(n)) = (cause, element) {
                *self.element_drops.entry((n, r)).or_default() += 1;
            }
        }
    }

    pub fn dropped_total(&self) -> u64 {
        self.drops.values().sum()
    }

    /// A copy of the live set, for the end-of-run scan.
    pub fn live_snapshot(&self) -> LiveSet {
        LiveSet {
            bits: self.live.clone(),
        }
    }
}

/// A copy of the live-packet set being ticked off during the end-of-run scan.
pub(crate) struct LiveSet {
    bits: Vec<u64>,
}

impl LiveSet {
    /// Ticks `id` off; false if it was not live (reported twice or already retired).
    pub fn tick(&mut self, id: PacketId) -> bool {
        let (w, b) = ((id.0 / 64) as usize, id.0 % 64);
        match self.bits.get_mut(w) {
            Some(word) if *word & (1 << b) != 0 => {
                *word &= !(1 << b);
                true
            }
            _ => false,
        }
    }
    /// Ids still not ticked off.
    pub fn remaining(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &word)| {
            (0..64u64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w as u64 * 64 + b)
        })
    }
}

/// How every packet created during the run ended up.
///
/// Invariant (checked by [`Report::check`]): `created == delivered_to_hosts +
/// consumed_by_elements + sum(dropped) + in_flight_at_end + held_by_elements_at_end` and
/// `unaccounted == 0`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LedgerReport {
    /// Packets created (host egress and element-created).
    pub created: u64,
    /// Packets delivered to a host's stack.
    pub delivered_to_hosts: u64,
    /// Packets consumed by elements (e.g. control messages).
    pub consumed_by_elements: u64,
    /// Drops by cause name (see [`DropCause::name`]).
    pub dropped: BTreeMap<String, u64>,
    /// Element drops by `"<element name>:<reason>"`.
    pub element_drops: BTreeMap<String, u64>,
    /// Packets in link queues, serializers or on the wire when the report was taken.
    pub in_flight_at_end: u64,
    /// Packets held by elements (reported through `Element::held_packets`).
    pub held_by_elements_at_end: u64,
    /// Live packets found nowhere: lost silently (a bug).
    pub unaccounted: u64,
    /// Up to 10 unaccounted packet ids.
    pub unaccounted_ids: Vec<u64>,
}

/// One link in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinkReport {
    /// Link name (`"<from element>:<port>-><to element>:<port>"` unless given).
    pub name: String,
    /// Configuration.
    pub config: LinkConfig,
    /// Counters.
    pub stats: LinkStats,
    /// Bytes queued when the report was taken.
    pub queued_bytes_at_end: u64,
}

/// One host in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostReport {
    /// Host name.
    pub name: String,
    /// Address.
    pub addr: String,
    /// Counters.
    pub stats: HostStats,
}

/// One application in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppReport {
    /// Name of the host running it.
    pub host: String,
    /// Counters.
    pub stats: AppStats,
}

/// Distribution of one-way delays (host egress to host ingress) of delivered packets.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DelaySummary {
    /// Packets measured.
    pub count: u64,
    /// Mean in ns.
    pub mean_ns: f64,
    /// Median in ns (histogram precision: 3 significant digits).
    pub p50_ns: u64,
    /// 99th percentile in ns.
    pub p99_ns: u64,
    /// Maximum in ns (exact).
    pub max_ns: u64,
}

/// Order statistics over all flows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowSummary {
    /// Flows seen at host egress.
    pub flows: u64,
    /// Packets stamped at host egress.
    pub packets_sent: u64,
    /// Packets delivered to hosts.
    pub packets_delivered: u64,
    /// Delivered packets that arrived after a later packet of their flow.
    pub reordered_packets: u64,
    /// Flows with at least one reordered packet.
    pub flows_with_reordering: u64,
}

/// Everything a run measured. Serializes deterministically (same seed, same bytes).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The seed of the run.
    pub seed: u64,
    /// Virtual time of the report (ns).
    pub now_ns: u64,
    /// Events processed.
    pub events: u64,
    /// Element timer calls that asked to run again at the same instant (re-run 1 ns later).
    pub timer_spins: u64,
    /// The packet ledger.
    pub ledger: LedgerReport,
    /// Links.
    pub links: Vec<LinkReport>,
    /// Hosts.
    pub hosts: Vec<HostReport>,
    /// Applications, in `AppId` order.
    pub apps: Vec<AppReport>,
    /// Per-flow order statistics (totals).
    pub flows: FlowSummary,
    /// One-way delay distribution.
    pub delay: DelaySummary,
    /// Aggregate goodput of all sinks: `(bin start in ms, Mbit/s)`.
    pub goodput_mbps: Vec<(f64, f64)>,
    /// Invariant violations found (empty if all is well).
    pub violations: Vec<String>,
}

/// Invariant violations, with the seed needed to reproduce them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("simulation invariant violated (seed {seed}): {}", violations.join("; "))]
pub struct InvariantError {
    /// The seed of the run.
    pub seed: u64,
    /// Descriptions of each violation.
    pub violations: Vec<String>,
}

impl Report {
    /// `Ok` if no invariant was violated; otherwise the violations and the seed.
    pub fn check(&self) -> Result<(), InvariantError> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(InvariantError {
                seed: self.seed,
                violations: self.violations.clone(),
            })
        }
    }
    /// The report as JSON (deterministic field and map order).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Per-flow view used when building the summary.
pub(crate) fn summarize_flows(flows: &[FlowRecord]) -> FlowSummary {
    FlowSummary {
        flows: flows.len() as u64,
        packets_sent: flows.iter().map(|f| f.sent).sum(),
        packets_delivered: flows.iter().map(|f| f.delivered).sum(),
        reordered_packets: flows.iter().map(|f| f.reordered).sum(),
        flows_with_reordering: flows.iter().filter(|f| f.reordered > 0).count() as u64,
    }
}
