//! Measurements for `experiment fig1c --testbed` ([`super::exp`]): node counter deltas,
//! CPU shares, shaper drops, switch counter deltas, the per-phase timeline, and the plots.

use super::exp::RunOut;
use crate::options::Fig1cArgs;
use crate::report::{GoodputCurve, write_goodput_plot};
use anyhow::Result;
use flowshift_control::api::ClusterStatus;
use flowshift_control::status::NodeCounters;
use flowshift_migration::{InstanceId, LossCause};
use flowshift_nat::DropReason;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Every node's counters in a cluster status.
pub(super) fn counters_of(s: &ClusterStatus) -> BTreeMap<InstanceId, NodeCounters> {
    s.nodes
        .iter()
        .filter_map(|(id, e)| e.status.as_ref().map(|st| (*id, st.counters.clone())))
        .collect()
}

/// Per-node deltas (after - before) of every counter by its flat name, non-zero ones only
/// (for the report).
pub(super) fn flat_deltas(
    before: &BTreeMap<InstanceId, NodeCounters>,
    after: &BTreeMap<InstanceId, NodeCounters>,
) -> BTreeMap<InstanceId, BTreeMap<String, u64>> {
    after
        .iter()
        .map(|(id, a)| {
            let b = before.get(id).map(NodeCounters::flat).unwrap_or_default();
            let d = a
                .flat()
                .into_iter()
                .filter_map(|(k, v)| {
                    let d = v.saturating_sub(b.get(&k).copied().unwrap_or(0));
                    (d > 0).then_some((k, d))
                })
                .collect();
            (*id, d)
        })
        .collect()
}

/// What the nodes counted between two statuses, summed over the nodes: migration losses by
/// cause label, network drops (`node_drop_<reason>` and the node's I/O drops, `node_<field>`)
/// and internal errors of the migration engine. Only non-zero entries.
pub(super) struct NodeDeltas {
    pub(super) lost_by_cause: BTreeMap<String, u64>,
    pub(super) drops: BTreeMap<String, u64>,
    pub(super) internal_errors: u64,
}

pub(super) fn node_deltas(
    before: &BTreeMap<InstanceId, NodeCounters>,
    after: &BTreeMap<InstanceId, NodeCounters>,
) -> NodeDeltas {
    let mut d = NodeDeltas {
        lost_by_cause: BTreeMap::new(),
        drops: BTreeMap::new(),
        internal_errors: 0,
    };
    let add = |map: &mut BTreeMap<String, u64>, key: String, n: u64| {
        if n > 0 {
            *map.entry(key).or_default() += n;
        }
    };
    for (id, a) in after {
        let b = before.get(id).cloned().unwrap_or_default();
        for &cause in LossCause::ALL {
            let n = a.loss(cause).saturating_sub(b.loss(cause));
            add(&mut d.lost_by_cause, cause.label().to_owned(), n);
        }
        for &r in DropReason::ALL {
            let n = a.nat.drops_of(r).saturating_sub(b.nat.drops_of(r));
            add(&mut d.drops, format!("node_drop_{}", r.label()), n);
        }
        let io = [
            ("rx_ring_drops", a.io.rx_ring_drops, b.io.rx_ring_drops),
            ("tx_errors", a.io.tx_errors, b.io.tx_errors),
            ("tx_queue_full", a.io.tx_queue_full, b.io.tx_queue_full),
            ("rx_truncated", a.io.rx_truncated, b.io.rx_truncated),
        ];
        for (name, after, before) in io {
            let n = after.saturating_sub(before);
            add(&mut d.drops, format!("node_{name}"), n);
        }
        d.internal_errors += a
            .migration
            .internal_errors
            .saturating_sub(b.migration.internal_errors);
    }
    d
}

pub(super) fn mean_between(points: &[(f64, f64)], from: f64, to: f64) -> f64 {
    let v: Vec<f64> = points
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, y)| *y)
        .collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub(super) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(super) fn round(x: f64, d: i32) -> f64 {
    let p = 10f64.powi(d);
    (x * p).round() / p
}

pub(super) fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// CPU of `pids` between two samples of `sys::cpu_seconds`, as % of one core.
pub(super) fn cpu_pct(
    names: &[&str],
    before: &[Option<f64>],
    after: &[Option<f64>],
    wall: Duration,
) -> Value {
    let mut o = serde_json::Map::new();
    for ((n, b), a) in names.iter().zip(before).zip(after) {
        let v = match (b, a) {
            (Some(b), Some(a)) if wall > Duration::ZERO => {
                Value::from(round((a - b) / wall.as_secs_f64() * 100.0, 1))
            }
            _ => Value::Null,
        };
        o.insert((*n).to_owned(), v);
    }
    o.insert(
        "window_ms".into(),
        Value::from(round(wall.as_secs_f64() * 1e3, 1)),
    );
    Value::Object(o)
}

/// Packets each qdisc of `tc -s qdisc show` output dropped: `"<kind> <handle>" -> n`.
pub(super) fn qdisc_drops(text: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("qdisc ") {
            let mut w = rest.split_whitespace();
            current = Some(format!(
                "{} {}",
                w.next().unwrap_or("?"),
                w.next().unwrap_or("?")
            ));
        } else if let (Some(c), Some(d)) = (&current, t.split("(dropped ").nth(1)) {
            let n = d
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            m.insert(c.clone(), n);
        }
    }
    m
}

/// The migration's milestones in ms after the request: the source's phases (and batches, if
/// its report has `batch_spans`), the controller's switch update and barrier reply, the end of
/// the drain, done. `phases` are on the experiment clock already; `shift` maps node-clock ms
/// to it.
pub(super) fn timeline(
    phases: &[Value],
    report: &Value,
    shift: impl Fn(f64) -> f64,
    controller: &BTreeMap<&str, Option<f64>>,
    req_ms: f64,
) -> Vec<Value> {
    let rel = |t: f64| round(t - req_ms, 3);
    let mut v = Vec::new();
    for p in phases {
        let name = p["name"].as_str().unwrap_or("?").replace('_', "-");
        let start = p["start_ms"].as_f64().unwrap_or(0.0);
        let end = p["end_ms"].as_f64();
        v.push(json!({"event": name, "start_ms": rel(start), "end_ms": end.map(rel)}));
        if name == "drain"
            && let Some(e) = end
        {
            v.push(json!({"event": "drain-end", "at_ms": rel(e)}));
        }
    }
    for (i, b) in report["batch_spans"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(s) = b["start_ms"].as_f64() {
            v.push(json!({
                "event": format!("batch-{}", i + 1),
                "start_ms": rel(shift(s)),
                "end_ms": b["end_ms"].as_f64().map(|e| rel(shift(e))),
            }));
        }
    }
    for (key, name) in [
        ("redirect_sent_ms", "switch-update-sent"),
        ("redirect_confirmed_ms", "barrier-reply"),
        ("done_ms", "done"),
    ] {
        if let Some(Some(t)) = controller.get(key) {
            v.push(json!({"event": name, "at_ms": rel(*t)}));
        }
    }
    let key = |e: &Value| {
        e["start_ms"]
            .as_f64()
            .or(e["at_ms"].as_f64())
            .unwrap_or(0.0)
    };
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v
}

/// One line of a [`timeline`]: `prepare 0.0-0.4 | idle 0.4-500.2 | ... | done 563.0`.
pub(super) fn timeline_line(t: &Value) -> String {
    let parts: Vec<String> = t
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let name = e["event"].as_str().unwrap_or("?");
            match (e["at_ms"].as_f64(), e["start_ms"].as_f64()) {
                (Some(at), _) => format!("{name} {at:.1}"),
                (None, Some(s)) => match e["end_ms"].as_f64() {
                    Some(end) => format!("{name} {s:.1}-{end:.1}"),
                    None => format!("{name} {s:.1}-"),
                },
                _ => name.to_owned(),
            }
        })
        .collect();
    parts.join(" | ")
}

/// Flow and port counter deltas between two `GET /switch` answers.
pub(super) fn switch_deltas(before: &Value, after: &Value) -> (Vec<Value>, Vec<Value>) {
    let key = |f: &Value| format!("{}|{}|{}", f["table_id"], f["priority"], f["match"]);
    let flows_before: BTreeMap<String, &Value> = before["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| (key(f), f))
        .collect();
    let sub = |a: &Value, b: Option<&Value>, k: &str| {
        a[k].as_u64()
            .unwrap_or(0)
            .saturating_sub(b.and_then(|b| b[k].as_u64()).unwrap_or(0))
    };
    let flows = after["flows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let b = flows_before.get(&key(f)).copied();
            json!({
                "priority": f["priority"], "match": f["match"], "cookie": f["cookie"],
                "packets": sub(f, b, "packets"), "bytes": sub(f, b, "bytes"),
            })
        })
        .collect();
    let ports_before: BTreeMap<u64, &Value> = before["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["port_no"].as_u64()?, p)))
        .collect();
    let ports = after["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let b = p["port_no"]
                .as_u64()
                .and_then(|n| ports_before.get(&n).copied());
            let mut o = serde_json::Map::new();
            o.insert("port_no".into(), p["port_no"].clone());
            for k in [
                "rx_packets",
                "tx_packets",
                "rx_bytes",
                "tx_bytes",
                "rx_dropped",
                "tx_dropped",
                "rx_errors",
                "tx_errors",
            ] {
                // All-ones: the switch does not keep this counter.
                let v = if p[k].as_u64() == Some(u64::MAX) {
                    Value::Null
                } else {
                    Value::from(sub(p, b, k))
                };
                o.insert(k.into(), v);
            }
            Value::Object(o)
        })
        .collect();
    (flows, ports)
}

pub(super) fn plot_runs(args: &Fig1cArgs, runs: &[RunOut]) -> Result<()> {
    let labels: Vec<String> = runs
        .iter()
        .map(|r| r.json["algorithm"].as_str().unwrap_or("?").to_owned())
        .collect();
    let curves: Vec<GoodputCurve> = runs
        .iter()
        .zip(&labels)
        .map(|(r, l)| GoodputCurve {
            label: l,
            points: &r.goodput,
            phases: &r.phases,
        })
        .collect();
    write_goodput_plot(
        &format!(
            "Testbed: goodput of {} iperf3 TCP flows during a migration of {} states",
            args.flows, args.states
        ),
        "goodput (Mbit/s, 100 ms bins)",
        &curves,
        &args.out.join("fig1c"),
    )?;
    let delay: Vec<GoodputCurve> = runs
        .iter()
        .zip(&labels)
        .map(|(r, l)| GoodputCurve {
            label: l,
            points: &r.rtt,
            phases: &r.phases,
        })
        .collect();
    write_goodput_plot(
        &format!(
            "Testbed: round-trip time of {} UDP probes/s from a subscriber of the migrated group",
            args.probe_rate
        ),
        "probe RTT (ms)",
        &delay,
        &args.out.join("fig1c-delay"),
    )
}
