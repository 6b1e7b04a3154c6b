//! `flowshift-lab` (layer 5): everything the `flowshift` binary runs that is not a driver —
//! simulator experiments ([`experiment`], [`exp_precopy`], [`exp_elastic`], [`exp_wan`]), benchmarks ([`bench`],
//! [`bench_transfer`], [`bench_stall`]), the one-machine testbed ([`testbed`]), their reports
//! ([`report`], [`plot`]).
//!
//! The command-line crate (`crates/7-cli`) parses arguments and calls the entry points here;
//! it decides between the simulator and the testbed. Nothing here parses `std::env::args`.

pub mod bench;
pub mod bench_stall;
pub mod bench_transfer;
pub mod exp_elastic;
pub mod exp_precopy;
pub mod exp_swarm;
pub mod exp_wan;
pub mod experiment;
pub mod options;
pub mod plot;
pub mod report;
pub mod testbed;
