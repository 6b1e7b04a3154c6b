//! Text views of the operator API's answers, as `flowshift migrate` and `flowshift status`
//! print them. Each view is a [`fmt::Display`] of a typed answer with no I/O; multi-line views
//! end every line, the last included, with `\n` (print them with `print!`).

mod cluster;

pub use cluster::{AutoscaleView, ClusterView};

use flowshift_control::api::MigrateResponse;
use flowshift_control::orchestrator::MigrationStatus;
use serde_json::Value;
use std::fmt;
use std::net::Ipv4Addr;

/// Milliseconds from `from` to `to` (ns timestamps of the controller's clock; 0 if `to` is
/// earlier).
pub fn span_ms(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e6
}

/// A serialized value's JSON form, unquoted if it is a string (enum names), else compact JSON
/// (tagged actions); a serialization error in parentheses.
pub fn json_name(v: serde_json::Result<Value>) -> String {
    match v {
        Ok(Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(e) => format!("({e})"),
    }
}

/// The one-line answer to a migration request for `group` (no line end):
/// `migration #<index> requested: <group> from node <from> to node <to> (<algorithm>)`.
#[derive(Clone, Copy, Debug)]
pub struct Requested<'a> {
    /// The group asked for.
    pub group: Ipv4Addr,
    /// The controller's answer.
    pub response: &'a MigrateResponse,
}

impl fmt::Display for Requested<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.response.status;
        write!(
            f,
            "migration #{} requested: {} from node {} to node {} ({})",
            self.response.index,
            self.group,
            s.from,
            s.to,
            s.algorithm.as_str()
        )
    }
}

/// A finished migration: its controller timeline (ms after the request) and, given the source
/// node's report (`GET /migrations/<index>/report`), its phases, states, bytes, lost packets
/// by cause and freeze figures. A report field that is missing or not a number shows as 0.
#[derive(Clone, Copy, Debug)]
pub struct MigrationSummary<'a> {
    /// The migration's index in the controller's list.
    pub index: usize,
    /// Its last status.
    pub status: &'a MigrationStatus,
    /// The source node's report, if there is one.
    pub report: Option<&'a Value>,
}

impl fmt::Display for MigrationSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.status;
        writeln!(
            f,
            "migration #{}: {} from node {} to node {} ({}): {}",
            self.index,
            m.external,
            m.from,
            m.to,
            m.algorithm.as_str(),
            m.stage.as_str()
        )?;
        let t0 = m.requested_at.as_nanos();
        let mut timeline = Vec::new();
        let marks = [
            ("redirect sent", m.redirect_sent_at),
            ("switch confirmed", m.redirect_confirmed_at),
            ("finished", m.finished_at),
        ];
        for (what, t) in marks {
            if let Some(t) = t {
                timeline.push(format!("{what} {:.1} ms", span_ms(t0, t.as_nanos())));
            }
        }
        if !timeline.is_empty() {
            writeln!(f, "  controller: {} after the request", timeline.join(", "))?;
        }
        match self.report {
            Some(r) => write_report(f, r),
            None => Ok(()),
        }
    }
}

/// The lines of a source node's migration report.
fn write_report(f: &mut fmt::Formatter<'_>, r: &Value) -> fmt::Result {
    let num = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    if let Some(phases) = r.get("phases").and_then(Value::as_array) {
        let shown: Vec<String> = phases
            .iter()
            .map(|p| {
                let name = p.get("name").and_then(Value::as_str).unwrap_or("?");
                let start = p.get("start_ms").and_then(Value::as_f64).unwrap_or(0.0);
                match p.get("end_ms").and_then(Value::as_f64) {
                    Some(end) => format!("{name} {:.1} ms", end - start),
                    None => format!("{name} (open)"),
                }
            })
            .collect();
        writeln!(f, "  phases (source): {}", shown.join(", "))?;
    }
    writeln!(
        f,
        "  states: {} at start, {} transferred, {} expired while idle; {} records in {} batches",
        num("mappings_at_start"),
        num("states_transferred"),
        num("states_expired_idle"),
        num("records"),
        num("batches"),
    )?;
    writeln!(
        f,
        "  bytes: {:.0} sent, {:.0} received by the source",
        num("bytes_transferred"),
        num("bytes_received")
    )?;
    let lost: Vec<(&String, u64)> = r
        .get("packets_lost_by_cause")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_u64().filter(|&n| n > 0).map(|n| (k, n)))
                .collect()
        })
        .unwrap_or_default();
    if lost.is_empty() {
        writeln!(f, "  lost packets: 0")?;
    } else {
        let total: u64 = lost.iter().map(|(_, n)| n).sum();
        let by: Vec<String> = lost.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(f, "  lost packets: {total} ({})", by.join(", "))?;
    }
    writeln!(
        f,
        "  max freeze {:.2} ms, max buffer delay {:.2} ms, halted {:.2} ms; {} packets buffered, {} chained",
        num("max_freeze_ms"),
        num("max_buffer_delay_ms"),
        num("halted_ms"),
        num("packets_buffered"),
        num("packets_chained"),
    )
}

#[cfg(test)]
mod tests;
