//! Layer 2 of flowshift: the carrier-grade NAT core, sans-IO.
//!
//! [`Nat`] owns the translation state of one instance. It never reads a clock, a socket or a
//! random source of its own: the driver passes the time and the packet to
//! [`Nat::process`], which rewrites the packet in place and returns a [`Verdict`]; it calls
//! [`Nat::handle_timeout`] when [`Nat::poll_timeout`] says so, and drains mapping-log events
//! with [`Nat::poll_event`]. Randomness (port choice) comes from a ChaCha stream seeded by the
//! configuration.
//!
//! Behaviour, by RFC:
//! * RFC 4787 (UDP): endpoint-independent mapping (REQ-1), paired pooling (REQ-2: a
//!   subscriber prefix is tied to one external address, a *group*), no port preservation,
//!   UDP timeout >= 2 min (REQ-5, default 5 min), outbound refresh (REQ-6), configurable
//!   endpoint-independent / address-dependent filtering (REQ-8, default independent),
//!   hairpinning with the external source (REQ-9).
//! * RFC 5382 (TCP): endpoint-independent mapping; only an outbound SYN creates a mapping;
//!   unsolicited inbound SYNs are silently dropped (REQ-4 permits); established timeout
//!   >= 2 h 4 min and transitory >= 4 min (REQ-5); simultaneous open; FIN/RST tracking.
//! * RFC 5508 (ICMP): query identifiers mapped like ports, 60 s timeout; errors translated
//!   with their embedded headers, inner checksums updated and the ICMP checksum recomputed.
//! * RFC 6888: port-block allocation (REQ-3/4) with a per-subscriber block limit, a
//!   per-subscriber session limit (REQ-5, `max_sessions_per_subscriber`), block allocation
//!   and release logged as [`Event`]s (REQ-12).
//!
//! Data-plane details: TTL decremented (expired packets dropped), IPv4 header checksum
//! verified, IP options passed or dropped by policy, fragments translated through a bounded
//! fragment table (first fragment first; out-of-order non-first fragments are dropped and
//! counted), every drop counted under one [`DropReason`]. The fast path is one hash lookup
//! and a precomputed rewrite (incremental checksums, RFC 1624) held in the index entry itself,
//! so a hit reads one 32-byte entry; the slow path allocates. Expiry is a timer wheel with
//! lazy refresh: the packet path only stores a timestamp, and only on the first hit of an
//! entry in a refresh tick (about 2 ms, at most the timer granularity); expiry allows one
//! tick of slack so it never comes before the timeout. [`Nat::reserve`] pre-sizes the tables
//! for an import.
//!
//! For migration the state is exported per mapping as fixed 24-byte [`record::StateRecord`]s
//! and imported atomically per batch; groups can be put in [`GroupMode::Draining`] (hits are
//! served, misses are handed to the peer), [`GroupMode::Halted`] or [`GroupMode::Moved`] (every
//! packet is handed to the peer), and single mappings can be
//! frozen (their packets come back as [`Verdict::Hold`]).

#![deny(missing_docs)]

pub mod config;
pub mod counters;
mod index;
mod linetable;
mod memory;
mod nat;
mod ports;
pub mod record;
pub mod tcp;
mod wheel;

pub use config::{
    ConfigError, Filtering, GroupConfig, IpOptionsPolicy, NatConfig, Timeouts, group_layout,
};
pub use counters::{Counters, DropReason};
pub use nat::*;
pub use ports::BlockOwner;
