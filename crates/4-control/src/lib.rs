//! Layer 4 of flowshift: the controller's policy, sans-IO.
//!
//! [`rules`] computes the switch's flow table as plain values ([`rules::Rule`]: priority, match on
//! in-port / destination MAC / IPv4 source or destination prefix, actions set-destination-MAC and
//! output), in a form that maps one-to-one to OpenFlow 1.3 flow-mods, and the difference between
//! two tables as the flow-mods to send. The drivers (simulated switch, Open vSwitch over
//! OpenFlow) apply them.
//!
//! [`orchestrator`] drives migrations step by step (start, redirect, barrier, cutover, done)
//! by emitting commands for the instances and the switch and consuming their events.
//!
//! [`api`] holds the messages of the controller-node channel and of the operator API;
//! [`status`] the node status they carry (typed modes, roles, phases and counters).

#![deny(missing_docs)]

pub mod api;
pub mod autoscale;
pub mod orchestrator;
pub mod rules;
pub mod status;
