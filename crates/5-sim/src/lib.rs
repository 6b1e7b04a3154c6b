//! Layer 5 of flowshift: a deterministic discrete-event network simulator.
//!
//! * Virtual time only ([`Instant`], nanoseconds). Events are ordered by (time, insertion
//!   sequence), so ties resolve deterministically; one `u64` seed decides every random choice
//!   (independent ChaCha8 streams per component, see [`rng`]). Same seed and same calls give
//!   byte-identical [`Report`]s.
//! * [`Packet`]s carry IPv4 bytes plus metadata elements cannot forge: a ledger id, the flow
//!   and per-flow sequence number stamped at the sending host's egress, and the send time.
//!   Receiving hosts check per-flow order and record one-way delay.
//! * [`LinkConfig`]: unidirectional links with rate, propagation delay, a byte-bounded
//!   drop-tail queue, seeded loss and reordering, and down/up events.
//! * [`Element`]: anything with numbered ports and a timer (switch, NAT instance, router);
//!   [`StaticRouter`] is a longest-prefix-match forwarder for tests.
//! * Hosts run smoltcp TCP/UDP stacks in virtual time with applications ([`AppSpec`]):
//!   bulk and short TCP flows, TCP sinks, UDP CBR sources and sinks.
//! * Measurement: goodput bins, per-flow reordering, one-way delay histogram, and a ledger in
//!   which every packet ends delivered, consumed, dropped with a [`DropCause`], or in flight.
//!
//! # Plugging in NAT instances, switches and controllers
//!
//! Implement [`Element`] and add it with [`Sim::add_element`]. Ports are plain numbers chosen
//! by the element (e.g. a NAT instance: 0 = switch side, 1 = state-transfer link to its peer).
//! A state-transfer channel is just another link between two element ports; messages are
//! packets of arbitrary bytes made with [`Emit::new_packet`] and ended with [`Emit::consume`]
//! at the receiver (links are FIFO and lossless unless configured otherwise). Delayed actions
//! (switch rule updates with an update delay, idle-phase deadlines, freeze batches) use the
//! element timer ([`Element::next_timer`]). A driver (e.g. the controller's scenario) runs
//! [`Sim::run_until`] to a time, acts on elements with [`Sim::poke`], and continues.
//!
//! # TCP caveat (smoltcp 0.14)
//!
//! smoltcp has no SACK, NewReno partial-ACK or RACK/TLP recovery and a 1 s minimum RTO. A flow
//! with fewer than ~4 segments in flight cannot fast-retransmit, so with many flows and little
//! buffering most losses become 1 s stalls. For 100 flows at 1 Gbit/s the network needs about
//! 500 kB of BDP plus queue (e.g. 1 ms RTT with a 3-BDP queue) to keep the link full; with
//! 1-2 BDP at 1 ms the aggregate varies between 150 and 950 Mbit/s from seed to seed.
//!
//! ```
//! use std::time::Duration;
//! use std::net::{Ipv4Addr, SocketAddrV4};
//! use flowshift_sim::*;
//! use flowshift_wire::Instant;
//!
//! let mut sim = Sim::new(SimConfig::new(7));
//! let c = sim.add_host(HostConfig::new("client", Ipv4Addr::new(100, 64, 0, 1))).unwrap();
//! let s = sim.add_host(HostConfig::new("server", Ipv4Addr::new(198, 18, 0, 1))).unwrap();
//! let link = LinkConfig::new(100_000_000, Duration::from_micros(100), 64_000);
//! sim.connect((c, 0), (s, 0), link).unwrap();
//! let sink = sim.add_app(s, AppSpec::TcpSink { port: 5001, backlog: 1, tcp: TcpConfig::default() }).unwrap();
//! sim.add_app(c, AppSpec::TcpSource {
//!     dst: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 5001),
//!     bytes: Some(100_000), start: Instant::ZERO, tcp: TcpConfig::default(),
//! }).unwrap();
//! sim.run_until(Instant::from_millis(100));
//! assert_eq!(sim.app_stats(sink).unwrap().bytes_received, 100_000);
//! sim.report().check().unwrap();
//! ```

#![deny(missing_docs)]

pub mod cluster;
pub mod elastic;
pub mod element;
pub mod event;
pub mod faults;
pub mod host;
pub mod link;
pub mod measure;
pub mod nat_element;
pub mod packet;
pub mod rng;
pub mod sim;
pub mod swarm;
pub mod switch;
pub mod workload;

pub use element::{Element, Emit, RouterStats, StaticRouter};
pub use flowshift_wire::Instant;
pub use host::{
    AppSpec, AppStats, Congestion, FlowRecord, HostConfig, HostStats, TcpConfig, address_allowed,
};
pub use link::{LinkConfig, LinkStats};
pub use measure::{DelaySummary, InvariantError, LedgerReport, Report};
pub use nat_element::{Capacity, NatElement, NatElementStats, NatPorts};
pub use packet::{
    DropCause, ElementId, FiveTuple, FlowId, LinkId, Packet, PacketId, PacketMeta, Port,
};
pub use sim::{AppId, Arrival, DropInfo, Sim, SimConfig, SimError};
pub use switch::{RuleSwitch, SwitchStats};
