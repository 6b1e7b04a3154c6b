//! `flowshift status`: the cluster as tables (groups, nodes, the elastic policy, migrations).

use super::{json_name, span_ms};
use flowshift_control::api::ClusterStatus;
use flowshift_control::autoscale::AutoscaleStatus;
use std::fmt;

/// The controller's view: uptime and switch, then tables of groups (owner), nodes (uptime,
/// groups, mappings, packets, drops, migration losses), the elastic policy if the controller
/// reports one ([`AutoscaleView`]), and every migration with its elapsed time (to its end, or
/// to the controller's `uptime_s` while it runs).
#[derive(Clone, Copy, Debug)]
pub struct ClusterView<'a>(pub &'a ClusterStatus);

impl fmt::Display for ClusterView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let switch = match s.switch_datapath_id {
            Some(dp) => format!(
                "switch {dp:#018x} connected, {} rules installed",
                s.switch_rules
            ),
            None => "switch not connected".to_owned(),
        };
        writeln!(f, "controller up {:.1} s; {switch}", s.uptime_s)?;
        writeln!(f)?;
        writeln!(f, "{:<16} {:<20} {:>5}", "GROUP", "SUBSCRIBERS", "OWNER")?;
        for g in &s.groups {
            writeln!(
                f,
                "{:<16} {:<20} {:>5}",
                g.external,
                g.subscribers.to_string(),
                g.owner
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<5} {:<9} {:>9} {:>6} {:>9} {:>12} {:>12} {:>9} {:>9}",
            "NODE",
            "CONNECTED",
            "UPTIME_S",
            "GROUPS",
            "MAPPINGS",
            "RX_PACKETS",
            "TX_PACKETS",
            "DROPS",
            "MIG_LOSS"
        )?;
        for (id, n) in &s.nodes {
            let connected = if n.connected { "yes" } else { "no" };
            let Some(st) = &n.status else {
                writeln!(f, "{id:<5} {connected:<9} (no status yet)")?;
                continue;
            };
            let c = &st.counters;
            let mappings: u64 = st.groups.iter().map(|g| u64::from(g.mappings)).sum();
            writeln!(
                f,
                "{:<5} {:<9} {:>9.1} {:>6} {:>9} {:>12} {:>12} {:>9} {:>9}",
                id,
                connected,
                st.uptime_s,
                st.groups.len(),
                mappings,
                c.io.rx_packets,
                c.io.tx_packets,
                c.total_drops(),
                c.total_losses(),
            )?;
        }
        if let Some(a) = &s.autoscale {
            write!(f, "{}", AutoscaleView(a))?;
        }
        writeln!(f)?;
        if s.migrations.is_empty() {
            return writeln!(f, "no migrations");
        }
        writeln!(
            f,
            "{:<4} {:<16} {:>4} {:>4} {:<11} {:<12} {:>18} {:>11}",
            "#", "GROUP", "FROM", "TO", "ALGORITHM", "STAGE", "ID", "ELAPSED_MS"
        )?;
        let now_ns = (s.uptime_s * 1e9) as u64;
        for (i, m) in s.migrations.iter().enumerate() {
            let end = m.finished_at.map_or(now_ns, |t| t.as_nanos());
            let id = m
                .migration
                .map_or_else(|| "-".to_owned(), |id| format!("{id:#x}"));
            writeln!(
                f,
                "{:<4} {:<16} {:>4} {:>4} {:<11} {:<12} {:>18} {:>11.1}",
                i,
                m.external,
                m.from,
                m.to,
                m.algorithm.as_str(),
                m.stage.as_str(),
                id,
                span_ms(m.requested_at.as_nanos(), end)
            )?;
        }
        Ok(())
    }
}

/// The elastic policy, after a blank line: on or off with its counters, each node's
/// `id:state@load`, the action in flight, and the last five decisions, newest first
/// (seconds on the controller's clock, reason, action).
#[derive(Clone, Copy, Debug)]
pub struct AutoscaleView<'a>(pub &'a AutoscaleStatus);

impl fmt::Display for AutoscaleView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.0;
        let c = &a.counters;
        writeln!(f)?;
        writeln!(
            f,
            "autoscale {}: {} migrations ({} failed), {} scale-outs, {} scale-ins, {} unrelieved, {} rate-limited",
            if a.enabled { "on" } else { "off" },
            c.migrations,
            c.migrations_failed,
            c.scale_outs,
            c.scale_ins,
            c.overload_unrelieved,
            c.rate_limited
        )?;
        let nodes: Vec<String> = a
            .nodes
            .iter()
            .map(|(id, st, load)| {
                format!("{id}:{}@{:.2}", json_name(serde_json::to_value(st)), load)
            })
            .collect();
        writeln!(f, "  nodes (state@load): {}", nodes.join(" "))?;
        if let Some(action) = &a.in_flight {
            writeln!(
                f,
                "  in flight: {}",
                json_name(serde_json::to_value(action))
            )?;
        }
        for d in a.recent.iter().rev().take(5) {
            writeln!(
                f,
                "  {:>10.1} s {:<9} {}",
                d.at_ns as f64 / 1e9,
                json_name(serde_json::to_value(d.reason)),
                json_name(serde_json::to_value(&d.action))
            )?;
        }
        Ok(())
    }
}
