//! Prometheus endpoint: `GET /metrics` in the text exposition format (version 0.0.4), from
//! the status snapshot the packet thread publishes (at most 100 ms old).
//!
//! Families:
//! * every status counter `<name>` as `flowshift_<name>_total` (counter), except
//! * `drop_<reason>` as `flowshift_nat_drops_total{reason="<reason>"}` and `loss_<cause>` as
//!   `flowshift_migration_losses_total{cause="<cause>"}`;
//! * gauges `flowshift_uptime_seconds`, `flowshift_mappings`, `flowshift_sessions`,
//!   `flowshift_group_mappings{external}`, `flowshift_group_sessions{external}`,
//!   `flowshift_group_mode{external,mode}` (1 for the current mode) and
//!   `flowshift_migration_info{migration,role,phase}` (1 per migration the node knows).
//!
//! The server is one thread serving one connection at a time (scrapes are rare and small);
//! requests are read with a timeout and a size bound.

use crate::stats::SnapshotCell;
use flowshift_control::api::NodeStatus;
use std::fmt::Write as _;
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

/// Renders a status in the text exposition format.
pub fn render(s: &NodeStatus) -> String {
    let mut o = String::with_capacity(16 << 10);
    let mut drops = Vec::new();
    let mut losses = Vec::new();
    let _ = writeln!(
        o,
        "# HELP flowshift_uptime_seconds Seconds since the node started.\n\
         # TYPE flowshift_uptime_seconds gauge\nflowshift_uptime_seconds{{node=\"{}\"}} {}",
        s.id, s.uptime_s
    );
    for (name, v) in &s.counters {
        if let Some(r) = name.strip_prefix("drop_") {
            drops.push((r, v));
        } else if let Some(c) = name.strip_prefix("loss_") {
            losses.push((c, v));
        } else {
            let _ = writeln!(
                o,
                "# HELP flowshift_{name}_total {}\n# TYPE flowshift_{name}_total counter\nflowshift_{name}_total {v}",
                help_for(name)
            );
        }
    }
    o.push_str(
        "# HELP flowshift_nat_drops_total Packets the NAT dropped, by reason.\n\
         # TYPE flowshift_nat_drops_total counter\n",
    );
    for (r, v) in drops {
        let _ = writeln!(o, "flowshift_nat_drops_total{{reason=\"{r}\"}} {v}");
    }
    o.push_str(
        "# HELP flowshift_migration_losses_total Packets lost because of migrations, by cause.\n\
         # TYPE flowshift_migration_losses_total counter\n",
    );
    for (c, v) in losses {
        let _ = writeln!(o, "flowshift_migration_losses_total{{cause=\"{c}\"}} {v}");
    }
    let mappings: u64 = s.groups.iter().map(|g| u64::from(g.mappings)).sum();
    let sessions: u64 = s.groups.iter().map(|g| u64::from(g.sessions)).sum();
    let _ = writeln!(
        o,
        "# HELP flowshift_mappings Mappings held.\n# TYPE flowshift_mappings gauge\nflowshift_mappings {mappings}\n\
         # HELP flowshift_sessions Sessions held.\n# TYPE flowshift_sessions gauge\nflowshift_sessions {sessions}"
    );
    o.push_str(
        "# HELP flowshift_group_mappings Mappings held, per group.\n# TYPE flowshift_group_mappings gauge\n",
    );
    for g in &s.groups {
        let _ = writeln!(
            o,
            "flowshift_group_mappings{{external=\"{}\"}} {}",
            g.external, g.mappings
        );
    }
    o.push_str(
        "# HELP flowshift_group_sessions Sessions held, per group.\n# TYPE flowshift_group_sessions gauge\n",
    );
    for g in &s.groups {
        let _ = writeln!(
            o,
            "flowshift_group_sessions{{external=\"{}\"}} {}",
            g.external, g.sessions
        );
    }
    o.push_str(
        "# HELP flowshift_group_mode The group's mode (1 for the current one).\n# TYPE flowshift_group_mode gauge\n",
    );
    for g in &s.groups {
        let _ = writeln!(
            o,
            "flowshift_group_mode{{external=\"{}\",mode=\"{}\"}} 1",
            g.external, g.mode
        );
    }
    o.push_str(
        "# HELP flowshift_migration_info Migrations the node knows, with role and current phase.\n\
         # TYPE flowshift_migration_info gauge\n",
    );
    for m in &s.migrations {
        let _ = writeln!(
            o,
            "flowshift_migration_info{{migration=\"{}\",role=\"{}\",phase=\"{}\"}} 1",
            m.migration,
            json_label(&m.role),
            json_label(&m.phase)
        );
    }
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
