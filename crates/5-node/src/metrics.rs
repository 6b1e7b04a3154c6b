//! Prometheus endpoint: `GET /metrics` in the Prometheus text format (version 0.0.4, encoded
//! by `prometheus-client`), from the status snapshot the packet thread publishes (at most
//! 100 ms old).
//!
//! Families (typed by the status's components, see [`flowshift_control::status`]):
//! * counters `flowshift_<name>_total` for every field of the NAT's counters (`nat_<field>`),
//!   the migration engine's (`migration_<field>`), the packet thread's I/O counters (by field
//!   name: `rx_packets`, ...), the transfer service's (`transfer_<field>`), the control
//!   client's (`control_<field>`) and the poll gaps (`poll_gaps`, `poll_gaps_over_<b>us`);
//! * `flowshift_nat_drops_total{reason}` per [`flowshift_nat::DropReason`] label and
//!   `flowshift_migration_losses_total{cause}` per [`flowshift_migration::LossCause`] label;
//! * gauges `flowshift_max_poll_gap_us`, `flowshift_max_poll_gap_migrating_us`;
//! * CPU: `flowshift_cpu_packet_thread_seconds_total`, `flowshift_cpu_process_seconds_total`,
//!   `flowshift_cpu_packet_thread_preemptions_total`;
//! * gauges `flowshift_uptime_seconds{node}`, `flowshift_mappings`, `flowshift_sessions`,
//!   `flowshift_group_mappings{external}`, `flowshift_group_sessions{external}`,
//!   `flowshift_group_mode{external,mode}` (1 for the current mode) and
//!   `flowshift_migration_info{migration,role,phase}` (1 per migration the node knows);
//! * the endpoint's own HTTP counters, `flowshift_metrics_http_<field>_total` (connections,
//!   evicted, refused, timeouts, bad_requests, unauthorized, handshake_failures,
//!   handshake_timeouts, forbidden).
//!
//! Served by [`flowshift_http::serve`] (axum) on a single-threaded tokio runtime in its own
//! thread, off the packet thread and idle between scrapes. Bounded: [`LIMITS`] (a slow or
//! half-sent scrape holds only its own connection, and the longest-idle one is closed when a
//! new scrape needs room). Every scrape is mutual TLS with the node's credentials
//! ([`server_tls`]): the scraper's certificate must come from the cluster CA (otherwise the
//! handshake fails, counted) and name [`flowshift_trust::MONITOR_NAME`] or
//! [`flowshift_trust::OPERATOR_NAME`] (otherwise 403, counted as `forbidden`). With
//! `metrics_token_file`, scrapes also need `Authorization: Bearer <token>` (401 otherwise,
//! counted): a second factor.

use crate::stats::SnapshotCell;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flowshift_control::api::{GroupStatus, NodeStatus};
use flowshift_control::status::integer_fields;
use flowshift_http::{Auth, Limits, Listener, ServerCounters, ServerTls, Token};
use flowshift_migration::LossCause;
use flowshift_nat::DropReason;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// Bounds of the endpoint: scrapes are small and rare.
pub const LIMITS: Limits = Limits {
    max_connections: 16,
    max_per_client: 8,
    header_timeout: Duration::from_secs(5),
    body_timeout: Duration::from_secs(5),
    handshake_timeout: Duration::from_secs(5),
    max_head: 16 * 1024,
    max_body: 0,
};

/// What the collector reads on each scrape.
#[derive(Debug)]
enum Source {
    /// The packet thread's latest snapshot.
    Live(Arc<SnapshotCell>),
    /// One status (tests, [`render`]).
    Fixed(Box<NodeStatus>),
}

/// Encodes the node's status (and the endpoint's own counters) on each scrape.
#[derive(Debug)]
struct StatusCollector {
    source: Source,
    http: Arc<ServerCounters>,
}

impl Collector for StatusCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let live;
        let status = match &self.source {
            Source::Live(cell) => {
                live = cell.get();
                &*live
            }
            Source::Fixed(s) => &**s,
        };
        encode_status(status, &mut enc)?;
        for (name, v) in integer_fields(&self.http.snapshot()) {
            counter(
                &mut enc,
                &format!("metrics_http_{name}"),
                "HTTP counter of this /metrics endpoint.",
                v,
            )?;
        }
        Ok(())
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge<V>(enc: &mut DescriptorEncoder, name: &str, help: &str, v: V) -> fmt::Result
where
    ConstGauge<V>: EncodeMetric,
{
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One family of gauges with labels: `(labels, value)` samples.
fn labelled_gauges<const N: usize, V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = ([(&'static str, String); N], V)>,
) -> fmt::Result
where
    ConstGauge<V>: EncodeMetric,
{
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One family of counters with one label.
fn labelled_counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    samples: impl IntoIterator<Item = (&'static str, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, v) in samples {
        ConstCounter::new(v).encode(m.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

/// The serde name of a unit enum value (its JSON spelling), as a label value.
fn label<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".into(),
    }
}

fn encode_status(s: &NodeStatus, enc: &mut DescriptorEncoder) -> fmt::Result {
    let c = &s.counters;
    labelled_gauges(
        enc,
        "uptime_seconds",
        "Seconds since the node started.",
        [([("node", s.id.to_string())], s.uptime_s)],
    )?;
    let components = [
        (
            "nat_",
            "NAT counter (flowshift_nat::Counters)",
            integer_fields(&c.nat),
        ),
        (
            "migration_",
            "migration engine counter (flowshift_migration::InstanceCounters)",
            integer_fields(&c.migration),
        ),
        ("", "packet I/O counter", integer_fields(&c.io)),
        (
            "transfer_",
            "state-transfer service counter",
            integer_fields(&c.transfer),
        ),
        (
            "control_",
            "controller connection counter",
            integer_fields(&c.control),
        ),
        (
            "",
            "packet loop: time from one ring read to the next, spent on other work (not asleep)",
            integer_fields(&c.poll),
        ),
    ];
    for (prefix, help, fields) in components {
        for (field, v) in fields {
            let name = format!("{prefix}{field}");
            counter(enc, &name, &format!("{name}: {help}."), v)?;
        }
    }
    for (name, v) in integer_fields(&c.poll_max) {
        gauge(
            enc,
            &name,
            &format!("{name}: packet loop, longest time from one ring read to the next, µs."),
            v,
        )?;
    }
    for (what, us) in [
        ("packet_thread", c.cpu.packet_thread_us),
        ("process", c.cpu.process_us),
    ] {
        let seconds = ConstCounter::new(us as f64 / 1e6);
        seconds.encode(enc.encode_descriptor(
            &format!("cpu_{what}_seconds"),
            &format!(
                "CPU time (user + system) of the {}, seconds.",
                what.replace('_', " ")
            ),
            None,
            MetricType::Counter,
        )?)?;
    }
    counter(
        enc,
        "cpu_packet_thread_preemptions",
        "Involuntary context switches of the packet thread.",
        c.cpu.packet_thread_preemptions,
    )?;
    labelled_counters(
        enc,
        "nat_drops",
        "Packets the NAT dropped, by reason.",
        "reason",
        DropReason::ALL
            .iter()
            .map(|&r| (r.label(), c.nat.drops_of(r))),
    )?;
    labelled_counters(
        enc,
        "migration_losses",
        "Packets lost because of migrations, by cause.",
        "cause",
        LossCause::ALL.iter().map(|&l| (l.label(), c.loss(l))),
    )?;
    let mappings: u64 = s.groups.iter().map(|g| u64::from(g.mappings)).sum();
    let sessions: u64 = s.groups.iter().map(|g| u64::from(g.sessions)).sum();
    gauge(enc, "mappings", "Mappings held.", mappings)?;
    gauge(enc, "sessions", "Sessions held.", sessions)?;
    let per_group = |f: fn(&GroupStatus) -> u32| {
        s.groups
            .iter()
            .map(move |g| ([("external", g.external.to_string())], f(g)))
    };
    labelled_gauges(
        enc,
        "group_mappings",
        "Mappings held, per group.",
        per_group(|g| g.mappings),
    )?;
    labelled_gauges(
        enc,
        "group_sessions",
        "Sessions held, per group.",
        per_group(|g| g.sessions),
    )?;
    labelled_gauges(
        enc,
        "group_mode",
        "The group's mode (1 for the current one).",
        s.groups.iter().map(|g| {
            (
                [
                    ("external", g.external.to_string()),
                    ("mode", label(&g.mode)),
                ],
                1i64,
            )
        }),
    )?;
    labelled_gauges(
        enc,
        "migration_info",
        "Migrations the node knows, with role and current phase.",
        s.migrations.iter().map(|m| {
            (
                [
                    ("migration", m.migration.to_string()),
                    ("role", label(&m.role)),
                    ("phase", label(&m.phase)),
                ],
                1i64,
            )
        }),
    )
}

/// A registry whose one collector reads `source`.
fn registry(source: Source, http: Arc<ServerCounters>) -> Registry {
    let mut registry = Registry::with_prefix("flowshift");
    registry.register_collector(Box::new(StatusCollector { source, http }));
    registry
}

fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 << 10);
    // Writing to a String cannot fail, and the collector's encoding does not either.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

/// Renders a status (and zero HTTP counters) in the text format.
pub fn render(s: &NodeStatus) -> String {
    encode(&registry(
        Source::Fixed(Box::new(s.clone())),
        Arc::default(),
    ))
}

/// The running endpoint; [`MetricsServer::stop`] ends it.
pub struct MetricsServer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Stops serving (open scrapes are cut) and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The endpoint's TLS: the node's server configuration (client certificate from the cluster
/// CA required), admitting the monitor and the operator.
pub fn server_tls(creds: &flowshift_trust::Credentials) -> anyhow::Result<ServerTls> {
    Ok(ServerTls {
        config: creds.server_config()?,
        admit: Arc::new(|certs| {
            flowshift_trust::admit_one_of(
                certs,
                &[
                    flowshift_trust::MONITOR_NAME,
                    flowshift_trust::OPERATOR_NAME,
                ],
            )
        }),
    })
}

/// Serves `/metrics` on `listener` from `snapshot` in a new thread over mutual TLS (`tls`,
/// see [`server_tls`]), requiring `token` too if given.
pub fn start(
    listener: std::net::TcpListener,
    snapshot: Arc<SnapshotCell>,
    tls: ServerTls,
    token: Option<Token>,
) -> std::io::Result<MetricsServer> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("fs-metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match Listener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "metrics listener unusable; /metrics is off");
                        return;
                    }
                };
                let http = Arc::new(ServerCounters::default());
                let registry = Arc::new(registry(Source::Live(snapshot), http.clone()));
                let app = Router::new().route(
                    "/metrics",
                    get(move || {
                        let registry = registry.clone();
                        async move { metrics_response(&registry) }
                    }),
                );
                let auth = Auth {
                    tls: Some(tls),
                    token,
                    open_paths: Vec::new(),
                };
                flowshift_http::serve(listener, app, LIMITS, auth, http, async {
                    let _ = stopped.await;
                })
                .await;
            });
        })?;
    Ok(MetricsServer {
        stop: Some(stop),
        thread: Some(thread),
    })
}

fn metrics_response(registry: &Registry) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        encode(registry),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
