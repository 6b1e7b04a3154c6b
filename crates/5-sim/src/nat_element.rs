//! A NAT instance (the real [`flowshift_migration::Instance`], itself wrapping the real
//! [`flowshift_nat::Nat`]) as a simulator element.
//!
//! Ports: one towards the switch, and per peer instance one daisy-chain port and one
//! state-transfer port. Transfer frames travel as packets of arbitrary bytes. Data packets keep
//! their simulator metadata across the instance: the element appends an 8-byte tag after the
//! IPv4 packet (the NAT never reads or writes bytes past the IPv4 total length), keeps the
//! packet's shell under that tag, and puts the bytes back into the shell when the instance
//! emits the packet (translated, chained or dropped). Packets the instance holds (frozen
//! mappings, cutover hold) are reported to the ledger as held.

use crate::element::{Element, Emit};
use crate::packet::{Packet, Port};
use flowshift_migration::{Ingress, Instance, InstanceId, MigrationEvent, Output};
use flowshift_wire::Instant;
use std::collections::BTreeMap;

const TAG_LEN: usize = 8;

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
    /// Outputs without a recognisable tag (would be a bug).
    pub untagged_outputs: u64,
    /// Outputs for a peer with no port configured (dropped).
    pub unrouted: u64,
}

/// See the module documentation.
pub struct NatElement {
    inst: Instance,
    ports: NatPorts,
    shells: BTreeMap<u64, Packet>,
    next_tag: u64,
    events: Vec<(Instant, MigrationEvent)>,
    stats: NatElementStats,
}

impl NatElement {
    /// Wraps an instance. The instance must have been built with
    /// `MigrationConfig::report_drops = true`, so that every dropped packet can be accounted.
    pub fn new(inst: Instance, ports: NatPorts) -> Self {
        NatElement {
            inst,
            ports,
            shells: BTreeMap::new(),
            next_tag: 1,
            events: Vec::new(),
            stats: NatElementStats::default(),
        }
    }

    /// The instance.
    pub fn instance(&self) -> &Instance {
        &self.inst
    }

    /// The instance, for commands; call [`flush`](Self::flush) afterwards.
    pub fn instance_mut(&mut self) -> &mut Instance {
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

    fn restore(&mut self, mut bytes: Vec<u8>) -> Option<Packet> {
        let cut = bytes.len().checked_sub(TAG_LEN)?;
        let tag = u64::from_le_bytes(bytes[cut..].try_into().ok()?);
        let mut shell = self.shells.remove(&tag)?;
        bytes.truncate(cut);
        *shell.bytes_mut() = bytes;
        Some(shell)
    }

    /// Moves everything the instance produced into the network.
    pub fn flush(&mut self, out: &mut Emit<'_>) {
        let now = out.now();
        while let Some(o) = self.inst.poll_output() {
            let (bytes, port, dropped) = match o {
                Output::Send { pkt, .. } => (pkt, Some(self.ports.switch), None),
                Output::Chain { to, pkt } => (pkt, self.ports.chain.get(&to).copied(), None),
                Output::Dropped { pkt, reason } => (pkt, None, Some(reason.label())),
            };
            let Some(pkt) = self.restore(bytes) else {
                self.stats.untagged_outputs += 1;
                continue;
            };
            match (port, dropped) {
                (_, Some(reason)) => out.drop_packet(pkt, reason),
                (Some(p), None) => out.send(p, pkt),
                (None, None) => {
                    self.stats.unrouted += 1;
                    out.drop_packet(pkt, "nat_element_unrouted");
                }
            }
        }
        while let Some((to, bytes)) = self.inst.poll_transmit() {
            match self.ports.transfer.get(&to) {
                Some(&p) => {
                    let pkt = out.new_packet(bytes);
                    out.send(p, pkt);
                }
                None => self.stats.unrouted += 1,
            }
        }
        while let Some(e) = self.inst.poll_event() {
            self.events.push((now, e));
        }
    }
}

impl Element for NatElement {
    fn on_packet(&mut self, now: Instant, port: Port, mut pkt: Packet, out: &mut Emit<'_>) {
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
            let tag = self.next_tag;
            self.next_tag += 1;
            let mut bytes = std::mem::take(pkt.bytes_mut());
            bytes.extend_from_slice(&tag.to_le_bytes());
            self.shells.insert(tag, pkt);
            self.inst.handle_packet(now, bytes, ingress);
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

    fn held_packets(&self, visit: &mut dyn FnMut(&Packet)) {
        for p in self.shells.values() {
            visit(p);
        }
    }
}
