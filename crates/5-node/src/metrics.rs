//! Prometheus endpoint: `GET /metrics` in the text exposition format (version 0.0.4), from
//! the status snapshot the packet thread publishes (at most 100 ms old).
//!
//! Families:
//! * every status counter `<name>` as `flowshift_<name>_total` (counter), except
//! * `drop_<reason>` as `flowshift_nat_drops_total{reason="<reason>"}` and `loss_<cause>` as
//!   `flowshift_migration_losses_total{cause="<cause>"}`;
//! * high-water marks `max_<name>` as gauges `flowshift_max_<name>` (`flowshift_max_poll_gap_us`,
//!   `flowshift_max_poll_gap_migrating_us`);
//! * CPU times `cpu_<what>_us` in seconds, as `flowshift_cpu_<what>_seconds_total`
//!   (`flowshift_cpu_packet_thread_seconds_total`, `flowshift_cpu_process_seconds_total`);
//! * gauges `flowshift_uptime_seconds`, `flowshift_mappings`, `flowshift_sessions`,
//!   `flowshift_group_mappings{external}`, `flowshift_group_sessions{external}`,
//!   `flowshift_group_mode{external,mode}` (1 for the current mode) and
//!   `flowshift_migration_info{migration,role,phase}` (1 per migration the node knows).
//!
//! The server is one thread serving one connection at a time (scrapes are rare and small);
//! requests are read with a timeout and a size bound.

use crate::stats::SnapshotCell;
use flowshift_control::api::NodeStatus;
use std::fmt::{self, Write as _};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest request head read.
const MAX_REQUEST: usize = 8 << 10;

fn help_for(name: &str) -> String {
    let family = if name.starts_with("nat_") {
        "NAT counter (flowshift_nat::Counters)"
    } else if name.starts_with("migration_") {
        "migration engine counter (flowshift_migration::InstanceCounters)"
    } else if name.starts_with("transfer_") {
        "state-transfer service counter"
    } else if name.starts_with("control_") {
        "controller connection counter"
    } else if name.starts_with("cpu_") {
        "CPU accounting of the node process"
    } else if name.starts_with("max_poll_gap") || name.starts_with("poll_gaps") {
        "packet loop: time from one ring read to the next, spent on other work (not asleep)"
    } else {
        "packet I/O counter"
    };
    format!("{name}: {family}.")
}

fn json_label<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".into(),
    }
}

/// Appends one metric family: its HELP and TYPE lines, then one sample per (labels, value);
/// `labels` is the text inside the braces (empty: none).
fn family<V: fmt::Display>(
    o: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, V)>,
) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(o, "{name} {v}");
        } else {
            let _ = writeln!(o, "{name}{{{labels}}} {v}");
        }
    }
}

/// Renders a status in the text exposition format.
pub fn render(s: &NodeStatus) -> String {
    let mut o = String::with_capacity(16 << 10);
    family(
        &mut o,
        "flowshift_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        [(format!("node=\"{}\"", s.id), s.uptime_s)],
    );
    let mut drops = Vec::new();
    let mut losses = Vec::new();
    for (name, &v) in &s.counters {
        if let Some(r) = name.strip_prefix("drop_") {
            drops.push((format!("reason=\"{r}\""), v));
        } else if let Some(c) = name.strip_prefix("loss_") {
            losses.push((format!("cause=\"{c}\""), v));
        } else if name.starts_with("max_") {
            family(
                &mut o,
                &format!("flowshift_{name}"),
                "gauge",
                &help_for(name),
                [(String::new(), v)],
            );
        } else if let Some(what) = name
            .strip_prefix("cpu_")
            .and_then(|n| n.strip_suffix("_us"))
        {
            family(
                &mut o,
                &format!("flowshift_cpu_{what}_seconds_total"),
                "counter",
                &format!(
                    "CPU time (user + system) of the {}, seconds.",
                    what.replace('_', " ")
                ),
                [(String::new(), v as f64 / 1e6)],
            );
        } else {
            family(
                &mut o,
                &format!("flowshift_{name}_total"),
                "counter",
                &help_for(name),
                [(String::new(), v)],
            );
        }
    }
    family(
        &mut o,
        "flowshift_nat_drops_total",
        "counter",
        "Packets the NAT dropped, by reason.",
        drops,
    );
    family(
        &mut o,
        "flowshift_migration_losses_total",
        "counter",
        "Packets lost because of migrations, by cause.",
        losses,
    );
    let mappings: u64 = s.groups.iter().map(|g| u64::from(g.mappings)).sum();
    let sessions: u64 = s.groups.iter().map(|g| u64::from(g.sessions)).sum();
    family(
        &mut o,
        "flowshift_mappings",
        "gauge",
        "Mappings held.",
        [(String::new(), mappings)],
    );
    family(
        &mut o,
        "flowshift_sessions",
        "gauge",
        "Sessions held.",
        [(String::new(), sessions)],
    );
    let per_group = |f: fn(&flowshift_control::api::GroupStatus) -> u32| {
        s.groups
            .iter()
            .map(move |g| (format!("external=\"{}\"", g.external), f(g)))
    };
    family(
        &mut o,
        "flowshift_group_mappings",
        "gauge",
        "Mappings held, per group.",
        per_group(|g| g.mappings),
    );
    family(
        &mut o,
        "flowshift_group_sessions",
        "gauge",
        "Sessions held, per group.",
        per_group(|g| g.sessions),
    );
    family(
        &mut o,
        "flowshift_group_mode",
        "gauge",
        "The group's mode (1 for the current one).",
        s.groups.iter().map(|g| {
            (
                format!("external=\"{}\",mode=\"{}\"", g.external, g.mode),
                1,
            )
        }),
    );
    family(
        &mut o,
        "flowshift_migration_info",
        "gauge",
        "Migrations the node knows, with role and current phase.",
        s.migrations.iter().map(|m| {
            (
                format!(
                    "migration=\"{}\",role=\"{}\",phase=\"{}\"",
                    m.migration,
                    json_label(&m.role),
                    json_label(&m.phase)
                ),
                1,
            )
        }),
    );
    o
}

/// Starts the server thread on `listener`; it ends once `stop` is set.
pub fn start(
    listener: TcpListener,
    snapshot: Arc<SnapshotCell>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fs-metrics".into())
        .spawn(move || {
            let fd = listener.as_raw_fd();
            while !stop.load(Ordering::Relaxed) {
                if !crate::sys::poll_fd(fd, libc::POLLIN, Duration::from_millis(200)) {
                    continue;
                }
                if let Ok((s, _)) = listener.accept() {
                    serve(s, &snapshot);
                }
            }
        })
}

fn serve(mut s: TcpStream, snapshot: &SnapshotCell) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, ctype, body) = match (method, path) {
        (b"GET", b"/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(&snapshot.get()),
        ),
        (b"GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found; try /metrics\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowshift_control::api::{GroupStatus, NodeMigration};
    use flowshift_migration::{Phase, Role};
    use std::collections::BTreeMap;

    #[test]
    fn the_exposition_has_one_header_per_family_and_well_formed_samples() {
        let s = NodeStatus {
            id: 3,
            uptime_s: 1.5,
            groups: vec![GroupStatus {
                external: "198.18.0.1".parse().unwrap(),
                mode: "draining".into(),
                mappings: 7,
                sessions: 9,
            }],
            migrations: vec![NodeMigration {
                migration: 42,
                role: Role::Source,
                phase: Phase::Idle,
            }],
            counters: BTreeMap::from([
                ("rx_packets".to_string(), 10),
                ("max_poll_gap_us".to_string(), 250),
                ("poll_gaps_over_100us".to_string(), 3),
                ("cpu_packet_thread_us".to_string(), 1_500_000),
                ("drop_no_mapping".to_string(), 2),
                ("loss_group_halted".to_string(), 0),
            ]),
        };
        let text = render(&s);
        for line in [
            "flowshift_uptime_seconds{node=\"3\"} 1.5",
            "flowshift_rx_packets_total 10",
            "flowshift_max_poll_gap_us 250",
            "# TYPE flowshift_max_poll_gap_us gauge",
            "flowshift_poll_gaps_over_100us_total 3",
            "flowshift_cpu_packet_thread_seconds_total 1.5",
            "# TYPE flowshift_cpu_packet_thread_seconds_total counter",
            "flowshift_nat_drops_total{reason=\"no_mapping\"} 2",
            "flowshift_migration_losses_total{cause=\"group_halted\"} 0",
            "flowshift_mappings 7",
            "flowshift_sessions 9",
            "flowshift_group_mappings{external=\"198.18.0.1\"} 7",
            "flowshift_group_sessions{external=\"198.18.0.1\"} 9",
            "flowshift_group_mode{external=\"198.18.0.1\",mode=\"draining\"} 1",
            "flowshift_migration_info{migration=\"42\",role=\"source\",phase=\"idle\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let mut typed = std::collections::HashSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(typed.insert(name.to_owned()), "{name} typed twice");
            } else if !l.starts_with("# HELP ") {
                let (name, value) = l.rsplit_once(' ').expect("sample: name value");
                let base = name.split('{').next().unwrap();
                assert!(typed.contains(base), "{base} sampled before its TYPE");
                assert!(value.parse::<f64>().is_ok(), "value of {l:?}");
            }
        }
    }
}
