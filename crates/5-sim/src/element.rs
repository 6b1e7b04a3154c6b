//! Network elements: anything that receives packets on numbered ports and emits packets on
//! ports, with a timer (switches, NAT instances, routers). The simulator owns the elements and
//! calls them in virtual time; elements never see a clock or a socket.

use std::any::Any;
use std::net::Ipv4Addr;

use flowshift_wire::Instant;
use serde::Serialize;

/// Deterministic, fast hash map (iteration order never affects results here).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

use crate::packet::{DropCause, ElementId, LinkId, Packet, PacketId, Port};
use crate::sim::Net;

/// A network element driven by the simulator.
///
/// Contract:
/// * Every packet passed in must leave through exactly one of [`Emit::send`],
///   [`Emit::drop_packet`], [`Emit::consume`], or be kept by the element and then reported by
///   [`Element::held_packets`] until it is sent, dropped or consumed later. A packet that just
///   goes out of scope is reported as "unaccounted" (an invariant violation).
/// * [`Element::on_timer`] is called at (or after) the instant returned by
///   [`Element::next_timer`]; the simulator asks for `next_timer` after every call into the
///   element, so a change of deadline takes effect immediately.
/// * Randomness must come from a stream obtained with [`crate::Sim::rng`].
pub trait Element: Any {
    /// A packet arrived on `port` at `now`.
    fn on_packet(&mut self, now: Instant, port: Port, pkt: Packet, out: &mut Emit<'_>);

    /// The timer fired (`now >= next_timer()`).
    fn on_timer(&mut self, now: Instant, out: &mut Emit<'_>) {
        let _ = (now, out);
    }

    /// The next instant at which [`Element::on_timer`] should run, if any.
    fn next_timer(&self) -> Option<Instant> {
        None
    }

    /// Visits the id of every packet the element currently holds (buffers, delay lines), for
    /// the end-of-run ledger check.
    fn held_packets(&self, visit: &mut dyn FnMut(PacketId)) {
        let _ = visit;
    }
}

/// The element's handle on the network during one call: send, drop, consume, create packets.
/// Sends take effect immediately, in call order.
pub struct Emit<'a> {
    pub(crate) net: &'a mut Net,
    pub(crate) element: ElementId,
    pub(crate) out: &'a [Option<LinkId>],
}

impl Emit<'_> {
    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.net.now
    }
    /// The element's id.
    pub fn element(&self) -> ElementId {
        self.element
    }
    /// Sends `pkt` out of `port`. A port without a link drops it as
    /// [`DropCause::Unconnected`]; a full link queue drops it as [`DropCause::QueueFull`].
    pub fn send(&mut self, port: Port, pkt: Packet) {
        let link = self.out.get(port as usize).copied().flatten();
        self.net.send_on(link, pkt, Some(self.element));
    }
    /// Drops `pkt`, counted under [`DropCause::Element`] with `reason`.
    pub fn drop_packet(&mut self, pkt: Packet, reason: &'static str) {
        self.net
            .drop_pkt(pkt, DropCause::Element(reason), Some(self.element));
    }
    /// Marks `pkt` as delivered to this element (it was addressed to it, e.g. a control
    /// message), ending its life in the ledger.
    pub fn consume(&mut self, pkt: Packet) {
        self.net.ledger.consumed(pkt.meta.id);
        self.net.recycle(pkt.bytes);
    }
    /// Creates a new packet originating at this element (no flow, sequence 0, sent now).
    pub fn new_packet(&mut self, bytes: Vec<u8>) -> Packet {
        self.net.new_packet(bytes, None, 0, self.element)
    }
    /// A copy of `pkt` with a new ledger id and the same flow, sequence number and send time
    /// (receivers do not count an equal sequence number as reordering).
    pub fn duplicate(&mut self, pkt: &Packet) -> Packet {
        let mut buf = self.buffer();
        buf.extend_from_slice(&pkt.bytes);
        let mut p = self
            .net
            .new_packet(buf, pkt.meta.flow, pkt.meta.seq, pkt.meta.origin);
        p.meta.sent_at = pkt.meta.sent_at;
        p.meta.seen = pkt.meta.seen;
        p
    }
    /// An empty byte buffer, recycled when possible (for [`Emit::new_packet`]).
    pub fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.net.pool.pop().unwrap_or_default();
        b.clear();
        b
    }
    /// True if `port` has an outgoing link.
    pub fn port_connected(&self, port: Port) -> bool {
        self.out.get(port as usize).copied().flatten().is_some()
    }
    /// Free bytes in the queue of `port`'s outgoing link, if connected (a packet of `n` bytes
    /// is accepted if the link is idle or `n <=` this value).
    pub fn queue_free_bytes(&self, port: Port) -> Option<usize> {
        let link = self.out.get(port as usize).copied().flatten()?;
        Some(self.net.links[link.0 as usize].free_bytes())
    }
    /// Bytes waiting in the queue of `port`'s outgoing link, if connected.
    pub fn queued_bytes(&self, port: Port) -> Option<usize> {
        let link = self.out.get(port as usize).copied().flatten()?;
        Some(self.net.links[link.0 as usize].queued_bytes())
    }
}

/// Counters of a [`StaticRouter`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RouterStats {
    /// Packets forwarded.
    pub forwarded: u64,
    /// Packets dropped for lack of a route.
    pub no_route: u64,
    /// Packets dropped because they are not IPv4.
    pub malformed: u64,
}

/// A forwarding element: longest-prefix match on the IPv4 destination, out of the route's port.
/// Does not touch the packet (no TTL decrement, so checksums stay valid).
#[derive(Clone, Debug, Default)]
pub struct StaticRouter {
    /// One exact-match table per prefix length, longest first.
    tables: Vec<(u8, HashMap<u32, Port>)>,
    /// Counters.
    pub stats: RouterStats,
}

impl StaticRouter {
    /// A router without routes.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a route: destinations in `prefix/len` leave through `port`. `len` is clamped to 32.
    pub fn route(mut self, prefix: Ipv4Addr, len: u8, port: Port) -> Self {
        self.add_route(prefix, len, port);
        self
    }
    /// Adds a route (see [`StaticRouter::route`]). A second route for the same prefix is
    /// ignored (the first one added wins).
    pub fn add_route(&mut self, prefix: Ipv4Addr, len: u8, port: Port) {
        let len = len.min(32);
        let net = u32::from(prefix) & prefix_mask(len);
        let pos = match self.tables.iter().position(|(l, _)| *l <= len) {
            Some(i) if self.tables[i].0 == len => i,
            Some(i) => {
                self.tables.insert(i, (len, HashMap::default()));
                i
            }
            None => {
                self.tables.push((len, HashMap::default()));
                self.tables.len() - 1
            }
        };
        self.tables[pos].1.entry(net).or_insert(port);
    }
    /// The port for `dst`, by longest prefix match.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<Port> {
        let d = u32::from(dst);
        self.tables
            .iter()
            .find_map(|(len, t)| t.get(&(d & prefix_mask(*len))).copied())
    }
}

fn prefix_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len.min(32) as u32)
    }
}

impl Element for StaticRouter {
    fn on_packet(&mut self, _now: Instant, _port: Port, pkt: Packet, out: &mut Emit<'_>) {
        let b = pkt.bytes();
        if b.len() < 20 || b[0] >> 4 != 4 {
            self.stats.malformed += 1;
            out.drop_packet(pkt, "malformed");
            return;
        }
        let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
        match self.lookup(dst) {
            Some(port) => {
                self.stats.forwarded += 1;
                out.send(port, pkt);
            }
            None => {
                self.stats.no_route += 1;
                out.drop_packet(pkt, "no_route");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let r = StaticRouter::new()
            .route(Ipv4Addr::new(0, 0, 0, 0), 0, 9)
            .route(Ipv4Addr::new(198, 18, 0, 0), 15, 1)
            .route(Ipv4Addr::new(198, 18, 3, 0), 24, 2);
        assert_eq!(r.lookup(Ipv4Addr::new(198, 18, 3, 7)), Some(2));
        assert_eq!(r.lookup(Ipv4Addr::new(198, 19, 0, 1)), Some(1));
        assert_eq!(r.lookup(Ipv4Addr::new(100, 64, 0, 1)), Some(9));
        let r = StaticRouter::new().route(Ipv4Addr::new(100, 64, 0, 0), 10, 0);
        assert_eq!(r.lookup(Ipv4Addr::new(100, 128, 0, 1)), None);
        assert_eq!(r.lookup(Ipv4Addr::new(100, 127, 255, 255)), Some(0));
    }
}
