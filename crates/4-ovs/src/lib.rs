//! Process harness: a private Open vSwitch for live tests and the testbed.
//!
//! This crate performs I/O (it runs `ip`, `ovsdb-tool`, `ovsdb-server`, `ovs-vswitchd`,
//! `ovs-vsctl`, `ovs-ofctl` and `ovs-appctl`). It needs root
//! and the Open vSwitch binaries (`scripts/install-testbed-deps.sh` installs them).
//!
//! [`Ovs::start`] creates:
//! * a uniquely named network namespace (`<prefix>-<pid>-<counter>`), in which both daemons
//!   run, so the tap devices of the userspace (`netdev`) datapath never collide between runs;
//! * a private directory under the temp dir holding the database, sockets, pid files and logs
//!   (the daemons get `OVS_RUNDIR`, `OVS_DBDIR`, `OVS_LOGDIR` and `OVS_SYSCONFDIR` pointing at
//!   it, and `OVS_PKGDATADIR` pointing at the system schema directory);
//! * one bridge with `datapath_type=netdev`, `protocols=OpenFlow13` and `fail-mode=secure`
//!   (no flows, so nothing is forwarded until a controller installs rules).
//!
//! Dropping the [`Ovs`] stops the daemons (`ovs-appctl exit --cleanup`, then SIGTERM/SIGKILL by
//! pid file as a fallback), deletes the namespace (and with it every veth end inside) and
//! removes the directory. [`Netns`] values delete their namespace on drop too.
//!
//! **Persistent instances.** [`OvsOptions::netns_name`] and [`OvsOptions::dir`] choose exact
//! names (the testbed names everything after its run). [`Ovs::detach`] gives up ownership and
//! returns an [`OvsRecord`]: the daemons, the namespace and the directory then outlive the
//! process. [`Ovs::adopt`] takes such a record (possibly of a half-started or already stopped
//! instance) back, so a later process can drive the switch and stop it by dropping the value.
//! [`Netns::create_named`], [`Netns::adopt`] and [`Netns::detach`] do the same for namespaces.
//!
//! **Offloads.** By default every veth gets `tx off` (TCP through the plain userspace datapath
//! needs it). With [`OvsOptions::userspace_tso`] the bridge runs with
//! `other_config:userspace-tso-enable=true` and veths keep their offloads, so GSO frames pass
//! through the switch. Both ends of every veth port steer received packets by flow hash
//! ([`Netns::steer_by_flow`]): without it, a sender that moves between CPUs can have a veth
//! deliver two packets of one flow out of order (the testbed saw about one reordered probe in
//! three 10-second runs, none with steering).
//!
//! A unix-socket controller target (`unix:<path>`) works across namespaces;
//! [`Ovs::controller_socket_path`] suggests a path inside the private directory. Bind the
//! listener before calling [`Ovs::set_controller`], or the switch backs off before retrying.
//! Setting the controller flushes all flows.

#![deny(missing_docs)]

use std::sync::atomic::AtomicU32;
use std::time::Duration;

mod netns;
mod ovs;
mod process;

pub use netns::Netns;
pub use ovs::{Ovs, OvsOptions, OvsRecord};
pub use process::{check_prerequisites, describe, find_program, is_root, run_status};

/// Why the harness failed.
#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    /// The environment cannot run a private Open vSwitch (not root, binaries missing, network
    /// namespaces unavailable). Tests treat this as "skip".
    #[error("Open vSwitch harness unavailable: {0}")]
    Unavailable(String),
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error (or a pointer to the log).
        stderr: String,
    },
    /// A command did not finish in time and was killed.
    #[error("`{command}` timed out after {after:?}")]
    Timeout {
        /// The command line.
        command: String,
        /// The time limit.
        after: Duration,
    },
    /// An I/O error (spawning a process, creating a directory, ...).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// Output of a command could not be understood, or an argument was invalid.
    #[error("{0}")]
    Invalid(String),
}

/// Numbers namespace and directory names uniquely within the process.
static COUNTER: AtomicU32 = AtomicU32::new(0);
