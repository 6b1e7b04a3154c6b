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

use crate::element::{Element, Emit};
use crate::packet::{Packet, PacketId, PacketMeta, Port};
use flowshift_migration::{Driver, Ingress, Instance, InstanceId, MigrationEvent, Output};
use flowshift_wire::Instant;
use std::collections::BTreeMap;

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
}

/// See the module documentation.
pub struct NatElement {
    inst: Instance<PacketMeta>,
    ports: NatPorts,
    /// The batch handed to the instance (kept for its capacity).
    batch: Vec<(Vec<u8>, PacketMeta)>,
    events: Vec<(Instant, MigrationEvent)>,
    stats: NatElementStats,
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
        }
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
