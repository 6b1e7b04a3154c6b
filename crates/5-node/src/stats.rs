//! Counters of the node's drivers and the status snapshot the packet thread publishes.
//!
//! The counters are typed ([`flowshift_control::status::NodeCounters`]): the NAT's
//! [`flowshift_nat::Counters`] (drops per [`flowshift_nat::DropReason`]), migration losses
//! per [`flowshift_migration::LossCause`] (each cause's NAT drop reason,
//! [`flowshift_migration::LossCause::drop_reason`]), the engine's
//! [`flowshift_migration::InstanceCounters`], the packet thread's [`IoCounters`], the
//! transfer service's [`TransferCounters`], the control client's [`ControlCounters`], the
//! packet loop's poll gaps ([`crate::pacing::GapMeter`]) and CPU time. Their stable flat names
//! (`drop_<reason>`, `loss_<cause>`, `rx_*`, `transfer_*`, ...) are
//! [`flowshift_control::status::NodeCounters::flat`]'s.

use flowshift_control::api::NodeStatus;
pub use flowshift_control::status::IoCounters;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A counter shared between threads.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Counter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.get())
    }
}

/// Counters of the state-transfer service (shared by its threads).
pub type TransferCounters = flowshift_control::status::TransferCounters<Counter>;

/// Counters of the control client (shared by its threads).
pub type ControlCounters = flowshift_control::status::ControlCounters<Counter>;

/// The latest status the packet thread published (for `/metrics` and the control client's
/// hello). The packet thread replaces it with `try_lock`, so it never waits on a reader.
#[derive(Debug, Default)]
pub struct SnapshotCell(Mutex<Arc<NodeStatus>>);

impl SnapshotCell {
    /// Publishes a status unless a reader holds the lock right now; true if published.
    pub fn try_publish(&self, status: NodeStatus) -> bool {
        match self.0.try_lock() {
            Ok(mut g) => {
                *g = Arc::new(status);
                true
            }
            Err(_) => false,
        }
    }

    /// The latest status.
    pub fn get(&self) -> Arc<NodeStatus> {
        match self.0.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}
