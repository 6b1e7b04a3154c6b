//! The node's status: built from the instance and every counter, published as a snapshot.

use super::Engine;
use crate::stats::Counter;
use flowshift_control::api::{GroupStatus, NodeMigration, NodeStatus};
use flowshift_control::status::{CpuCounters, NodeCounters};
use flowshift_wire::Instant;
use std::time::Duration;

impl Engine {
    /// The node's status (every counter; see [`crate::stats`] for the names). The counters
    /// `cpu_packet_thread_*` are the calling thread's: call it on the packet thread.
    pub fn status(&self, now: Instant) -> NodeStatus {
        let nat = self.inst.nat();
        let groups = nat
            .group_ids()
            .into_iter()
            .filter_map(|g| {
                let cfg = nat.group_config(g).ok()?;
                let st = nat.group_stats(g).ok()?;
                let mode = nat.group_mode(g).ok()?;
                Some(GroupStatus {
                    external: cfg.external,
                    mode,
                    mappings: st.mappings,
                    sessions: st.sessions,
                })
            })
            .collect();
        let migrations = self
            .inst
            .migrations()
            .into_iter()
            .map(|(id, role, phase)| NodeMigration {
                migration: id.0,
                role,
                phase,
            })
            .collect();
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let (poll, poll_max) = self.gaps.counters();
        let counters = NodeCounters {
            nat: nat.counters().clone(),
            losses: NodeCounters::losses_from(nat.counters()),
            migration: self.inst.counters().clone(),
            io: self.io.clone(),
            transfer: self.links.transfer_counters.map(Counter::get),
            control: self.links.control_counters.map(Counter::get),
            poll,
            poll_max,
            cpu: CpuCounters {
                packet_thread_us: us(crate::sys::thread_cpu_time()),
                process_us: us(crate::sys::process_cpu_time()),
                packet_thread_preemptions: crate::sys::thread_preemptions(),
            },
        };
        NodeStatus {
            id: self.id,
            uptime_s: now.as_secs_f64(),
            groups,
            migrations,
            counters,
        }
    }

    /// Replaces the shared snapshot (skipped if a reader holds it right now).
    pub fn publish(&mut self, now: Instant) {
        self.links.snapshot.try_publish(self.status(now));
    }
}
