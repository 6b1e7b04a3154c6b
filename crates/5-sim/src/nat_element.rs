//! A NAT instance (the real [`flowshift_migration::Instance`], itself wrapping the real
//! [`flowshift_nat::Nat`]) as a simulator element.
//!
//! Ports: one towards the switch, and per peer instance one daisy-chain port and one
//! state-transfer port. Transfer frames travel as packets of arbitrary bytes. Data packets go
//! through the instance's batched fast path ([`Instance::handle_batch`], as on the Linux node;
//! the simulator delivers one packet per event, so a batch holds one packet) and keep their
//! simulator metadata across it as the instance's per-packet tag: the element hands the
//! packet's [`PacketMeta`] in with its bytes and rebuilds the packet from the bytes and the tag
//! the instance hands back (translated, chained or dropped). A chained packet keeps its
//! metadata on the chain link and the peer's element hands it in again. Packets the instance
//! holds (frozen mappings, prepare buffer, cutover hold) are reported to the ledger from the
//! instance's own list ([`Instance::for_each_held`]).
//!
//! **Capacity** (optional, [`NatElement::with_capacity`]): a node sized for so many packets
//! per second. Data packets (from the switch or a peer's chain; transfer frames are not
//! counted) pass a token bucket in virtual time; one that finds it empty is dropped as
//! `node_overload` and counted in [`NatElementStats::overload_drops`], as a node short of CPU
//! drops at its receive ring. **Per-group counters** (optional,
//! [`NatElement::count_groups`]): data packets offered (before the capacity check) per group,
//! classified by external destination address, else by subscriber source prefix.

use crate::element::{Element, Emit};
use crate::packet::{Packet, PacketId, PacketMeta, Port};
use flowshift_control::orchestrator::StartMigration;
use flowshift_migration::{Driver, Ingress, Instance, InstanceId, MigrationEvent, Output};
use flowshift_nat::GroupConfig;
use flowshift_wire::Instant;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The element's port numbers.
#[derive(Clone, Debug, Default)]
pub struct NatPorts {
    /// Towards the switch.
    pub switch: Port,
    /// Daisy-chain link per peer.
    pub chain: BTreeMap<InstanceId, Port>,
    /// State-transfer link per peer.
    pub transfer: BTreeMap<InstanceId, Port>,
}

impl NatPorts {
    /// The ports of one NAT of a two-instance pair: port 0 to the switch, 1 the daisy chain to
    /// `peer`, 2 the state-transfer link to `peer`.
    pub fn pair_to(peer: InstanceId) -> NatPorts {
        NatPorts {
            switch: 0,
            chain: BTreeMap::from([(peer, 1)]),
            transfer: BTreeMap::from([(peer, 2)]),
        }
    }
}

/// Counters of the element itself (the instance has its own).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NatElementStats {
    /// Packets handed to the instance.
    pub packets_in: u64,
    /// Transfer frames handed to the instance.
    pub frames_in: u64,
    /// Transfer frames the instance could not decode.
    pub frames_bad: u64,
    /// Outputs for a peer with no port configured (dropped).
    pub unrouted: u64,
    /// Data packets dropped for lack of capacity (`node_overload`).
    pub overload_drops: u64,
}

/// A node's packet budget (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Capacity {
    /// Packets per second the node processes.
    pub pps: f64,
    /// Packets it absorbs above that rate (the bucket's depth, >= 1).
    pub burst: f64,
}

/// The token bucket of a [`Capacity`].
#[derive(Clone, Debug)]
struct Bucket {
    cap: Capacity,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn admit(&mut self, now: Instant) -> bool {
        let dt = now.saturating_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.cap.pps).min(self.cap.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-group offered-packet counters.
#[derive(Clone, Debug, Default)]
struct GroupCounts {
    groups: Vec<GroupConfig>,
    by_external: BTreeMap<Ipv4Addr, usize>,
    packets: Vec<u64>,
}

impl GroupCounts {
    fn count(&mut self, bytes: &[u8]) {
        let Some(h) = bytes.get(12..20) else {
            return;
        };
        let src = Ipv4Addr::new(h[0], h[1], h[2], h[3]);
        let dst = Ipv4Addr::new(h[4], h[5], h[6], h[7]);
        let i = self.by_external.get(&dst).copied().or_else(|| {
            self.groups
                .iter()
                .position(|g| g.subscribers.contains(&src))
        });
        if let Some(i) = i {
            self.packets[i] += 1;
        }
    }
}

/// See the module documentation.
pub struct NatElement {
    inst: Instance<PacketMeta>,
    ports: NatPorts,
    /// The batch handed to the instance (kept for its capacity).
    batch: Vec<(Vec<u8>, PacketMeta)>,
    events: Vec<(Instant, MigrationEvent)>,
    stats: NatElementStats,
    bucket: Option<Bucket>,
    groups: Option<GroupCounts>,
}

impl NatElement {
    /// Wraps an instance whose packets carry the simulator's metadata (build it with
    /// [`Instance::with_meta`]). It must have been built with
    /// `MigrationConfig::report_drops = true`, so that every dropped packet can be accounted.
    pub fn new(inst: Instance<PacketMeta>, ports: NatPorts) -> Self {
        NatElement {
            inst,
            ports,
            batch: Vec::with_capacity(1),
            events: Vec::new(),
            stats: NatElementStats::default(),
            bucket: None,
            groups: None,
        }
    }

    /// Limits the node to `cap` (see the module documentation); the bucket starts full.
    pub fn with_capacity(mut self, cap: Capacity) -> Self {
        let cap = Capacity {
            pps: cap.pps.max(0.0),
            burst: cap.burst.max(1.0),
        };
        self.bucket = Some(Bucket {
            cap,
            tokens: cap.burst,
            at: Instant::ZERO,
        });
        self
    }

    /// Counts data packets offered per group of `groups` ([`group_packets`](Self::group_packets)).
    pub fn count_groups(mut self, groups: Vec<GroupConfig>) -> Self {
        let by_external = groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.external, i))
            .collect();
        let packets = vec![0; groups.len()];
        self.groups = Some(GroupCounts {
            groups,
            by_external,
            packets,
        });
        self
    }

    /// Data packets offered so far per group (external address), if counted.
    pub fn group_packets(&self) -> impl Iterator<Item = (Ipv4Addr, u64)> + '_ {
        self.groups.iter().flat_map(|c| {
            c.groups
                .iter()
                .map(|g| g.external)
                .zip(c.packets.iter().copied())
        })
    }

    /// The instance.
    pub fn instance(&self) -> &Instance<PacketMeta> {
        &self.inst
    }

    /// The instance, for commands; call [`flush`](Self::flush) afterwards.
    pub fn instance_mut(&mut self) -> &mut Instance<PacketMeta> {
        &mut self.inst
    }

    /// Events the instance emitted since the last call, with their times.
    pub fn take_events(&mut self) -> Vec<(Instant, MigrationEvent)> {
        std::mem::take(&mut self.events)
    }

    /// Element counters.
    pub fn stats(&self) -> &NatElementStats {
        &self.stats
    }

    /// The process restarts: every packet the old instance held is dropped (`nat_restart`),
    /// its events and counters are gone, and `inst` (a fresh instance, typically with a new
    /// epoch) takes its place.
    pub fn restart(&mut self, inst: Instance<PacketMeta>, out: &mut Emit<'_>) {
        let mut held = Vec::new();
        self.inst.for_each_held(|bytes, meta| {
            held.push(Packet {
                bytes: bytes.to_vec(),
                meta: *meta,
            })
        });
        for p in held {
            out.drop_packet(p, "nat_restart");
        }
        self.inst = inst;
        self.events.clear();
        self.flush(out);
    }

    /// Starts a migration of the group of `external` to `to` (what an orchestrator's
    /// `StartMigration` asks of this node) and sends what it produced; `None` if this node has
    /// no such group or refuses.
    pub fn start_migration(
        &mut self,
        out: &mut Emit<'_>,
        s: &StartMigration,
        params: flowshift_migration::Params,
    ) -> Option<flowshift_migration::MigrationId> {
        let now = out.now();
        let r = self
            .inst
            .start_migration_at(now, s.external, s.to, s.algorithm, params)
            .ok();
        self.flush(out);
        r
    }

    /// Moves everything the instance produced into the network.
    pub fn flush(&mut self, out: &mut Emit<'_>) {
        let mut d = ElementDrain {
            now: out.now(),
            out,
            ports: &self.ports,
            events: &mut self.events,
            stats: &mut self.stats,
        };
        self.inst.drain(&mut d);
    }
}

/// The element as the instance's [`flowshift_migration::Driver`] for one drain.
struct ElementDrain<'a, 'b> {
    now: Instant,
    out: &'a mut Emit<'b>,
    ports: &'a NatPorts,
    events: &'a mut Vec<(Instant, MigrationEvent)>,
    stats: &'a mut NatElementStats,
}

impl Driver<PacketMeta> for ElementDrain<'_, '_> {
    fn output(&mut self, o: Output<PacketMeta>) {
        match o {
            Output::Send { pkt, meta, .. } => {
                let p = Packet { bytes: pkt, meta };
                self.out.send(self.ports.switch, p);
            }
            Output::Chain { to, pkt, meta } => {
                let p = Packet { bytes: pkt, meta };
                match self.ports.chain.get(&to) {
                    Some(&port) => self.out.send(port, p),
                    None => {
                        self.stats.unrouted += 1;
                        self.out.drop_packet(p, "nat_element_unrouted");
                    }
                }
            }
            Output::Dropped { pkt, meta, reason } => {
                let p = Packet { bytes: pkt, meta };
                self.out.drop_packet(p, reason.label());
            }
        }
    }

    fn transmit(&mut self, to: InstanceId, frame: Vec<u8>) {
        match self.ports.transfer.get(&to) {
            Some(&p) => {
                let pkt = self.out.new_packet(frame);
                self.out.send(p, pkt);
            }
            None => self.stats.unrouted += 1,
        }
    }

    fn event(&mut self, e: MigrationEvent) {
        self.events.push((self.now, e));
    }
}

impl Element for NatElement {
    fn on_packet(&mut self, now: Instant, port: Port, pkt: Packet, out: &mut Emit<'_>) {
        if let Some((&peer, _)) = self.ports.transfer.iter().find(|&(_, &p)| p == port) {
            self.stats.frames_in += 1;
            let bytes = pkt.bytes().to_vec();
            out.consume(pkt);
            if self.inst.handle_transfer(now, peer, &bytes).is_err() {
                self.stats.frames_bad += 1;
            }
        } else {
            let ingress = match self.ports.chain.iter().find(|&(_, &p)| p == port) {
                Some((&from, _)) => Ingress::Chain { from },
                None => Ingress::Switch,
            };
            self.stats.packets_in += 1;
            if let Some(c) = &mut self.groups {
                c.count(pkt.bytes());
            }
            if let Some(b) = &mut self.bucket
                && !b.admit(now)
            {
                self.stats.overload_drops += 1;
                out.drop_packet(pkt, "node_overload");
                return;
            }
            let Packet { bytes, meta } = pkt;
            self.batch.push((bytes, meta));
            self.inst.handle_batch(now, &mut self.batch, ingress);
        }
        self.flush(out);
    }

    fn on_timer(&mut self, now: Instant, out: &mut Emit<'_>) {
        self.inst.handle_timeout(now);
        self.flush(out);
    }

    fn next_timer(&self) -> Option<Instant> {
        let t = self.inst.poll_timeout();
        (t != Instant::MAX).then_some(t)
    }

    fn held_packets(&self, visit: &mut dyn FnMut(PacketId)) {
        self.inst.for_each_held(|_, meta| visit(meta.id));
    }
}
