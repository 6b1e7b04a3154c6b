//! The analysis of one run of `fig1c --testbed` ([`Collected`]): goodput bins, the phases and
//! controller milestones on the experiment clock, the probe stream, counters, delay, the
//! invariants, and the run's JSON record.

use super::run::Collected;
use super::*;
use crate::report::goodput_min_bin_ratio;
use crate::testbed::iperf::IperfRun;
use flowshift_migration::InstanceId;
use std::collections::BTreeMap;

/// Turns what [`super::run::run_one`] collected into the run's record and plot data.
pub(super) fn analyse(args: &Fig1cArgs, alg: Algorithm, c: Collected) -> RunOut {
    let Collected {
        p,
        status,
        report,
        before,
        after,
        switch_before,
        switch_after,
        client_runs,
        server_runs,
        streams,
        tcp_problems,
        cpu,
        ping,
        probe_rec,
        probe_to,
        link_stats,
        link_plan,
        link_devices,
        wall0_ns,
        clients_started_ms,
        req_ms,
        done_ms,
    } = c;
    let wall0 = wall0_ns as f64 / 1e9;
    // Goodput: the receivers' intervals, summed per 100 ms bin, on the experiment clock.
    let refs: Vec<&IperfRun> = server_runs.iter().collect();
    let goodput: Vec<(f64, f64)> = iperf::goodput_bins(&refs)
        .into_iter()
        .map(|(t, m)| (round(clients_started_ms + t * 1e3, 1), m))
        .collect();
    // Controller milestones: controller clock -> experiment clock.
    let c0 = status.requested_at.as_nanos();
    let cms = |t: Option<flowshift_wire::Instant>| {
        t.map(|t| round(req_ms + t.as_nanos().saturating_sub(c0) as f64 / 1e6, 3))
    };
    // Phases: node clock -> experiment clock. The source's `Completed` ends the migration at
    // the controller one control hop (well under a millisecond) after the source entered
    // `done`: that anchors the node clock at the cutover's end. Without it (aborted), the start
    // of the first phase is taken as the request. (Not the drain start: stop-copy's source
    // enters its drain before the switch update.)
    let rep_phases: Vec<Value> = report["phases"].as_array().cloned().unwrap_or_default();
    let node_origin = rep_phases
        .first()
        .and_then(|p| p["start_ms"].as_f64())
        .unwrap_or(0.0);
    let done_node = rep_phases
        .iter()
        .find(|p| p["name"] == "done")
        .and_then(|p| p["start_ms"].as_f64());
    let (offset, alignment) = match (done_node, cms(status.finished_at)) {
        (Some(d), Some(c)) => (c - d, "source done = controller done"),
        _ => (req_ms - node_origin, "source first phase start = request"),
    };
    let shift = |t: f64| round(t + offset, 3);
    let phases: Vec<Value> = rep_phases
        .iter()
        .filter(|p| p["name"] != "done")
        .map(|p| {
            json!({
                "name": p["name"],
                "start_ms": shift(p["start_ms"].as_f64().unwrap_or(0.0)),
                "end_ms": p["end_ms"].as_f64().map(shift),
            })
        })
        .collect();
    let plot_phases: Vec<(String, f64, f64)> = phases
        .iter()
        .filter(|p| p["name"] != "prepare")
        .map(|p| {
            let s = p["start_ms"].as_f64().unwrap_or(0.0);
            (
                p["name"].as_str().unwrap_or("?").replace('_', "-"),
                s,
                p["end_ms"].as_f64().unwrap_or(s),
            )
        })
        .collect();
    let mut controller = BTreeMap::new();
    controller.insert("requested_ms", Some(round(req_ms, 3)));
    controller.insert("redirect_sent_ms", cms(status.redirect_sent_at));
    controller.insert("redirect_confirmed_ms", cms(status.redirect_confirmed_at));
    controller.insert("done_ms", cms(status.finished_at));
    controller.insert("observed_done_ms", Some(round(done_ms, 3)));
    // The migration starts at the request as the outside sees it (a source that starts late
    // only makes its phases later).
    let mig_start = phases
        .first()
        .and_then(|p| p["start_ms"].as_f64())
        .unwrap_or(req_ms)
        .min(req_ms);
    let mig_end = controller
        .get("done_ms")
        .copied()
        .flatten()
        .unwrap_or(done_ms);
    let timeline = timeline(&phases, &report, shift, &controller, req_ms);

    // The probe stream (wall clock -> experiment clock).
    let pa = probe::analyse(&probe_rec, wall0_ns);
    let (p_base, p_p99, p_max) = probe::added_delay(&pa.answers, req_ms, f64::INFINITY);
    // Losses and reorders counted against the migration: probes sent from the request to
    // done + 1 s.
    let in_migration = |t: &&f64| **t >= req_ms && **t <= mig_end + 1000.0;
    let lost_migration = pa.lost_ms.iter().filter(in_migration).count();
    let reordered_migration = pa.reordered_ms.iter().filter(in_migration).count();
    let window = (req_ms - 1000.0, mig_end + 2000.0);
    let in_window = |t: f64| t >= window.0 && t <= window.1;
    let rtt_plot: Vec<(f64, f64)> = pa
        .answers
        .iter()
        .filter(|a| in_window(a.sent_ms))
        .map(|a| (a.sent_ms, a.rtt_ms))
        .collect();
    let probe_json = json!({
        "rate_per_s": probe_rec.rate_per_s,
        "from": layout::subscriber(1, layout::SUBSCRIBER_HOSTS).to_string(),
        "to": probe_to.to_string(),
        "sent": pa.sent,
        "received": pa.received,
        "lost": pa.lost,
        "lost_during_migration": lost_migration,
        "lost_at_ms": pa.lost_ms.iter().take(200).map(|&t| round(t, 1)).collect::<Vec<_>>(),
        "reordered": pa.reordered,
        "reordered_during_migration": reordered_migration,
        "reordered_forward": pa.reordered_forward,
        "reordered_return": pa.reordered_return,
        "reordered_at_ms": {
            "end_to_end": pa.reordered_ms.iter().take(200).map(|&t| round(t, 1)).collect::<Vec<_>>(),
            "forward": pa.reordered_forward_ms.iter().take(200).map(|&t| round(t, 1)).collect::<Vec<_>>(),
            "return": pa.reordered_return_ms.iter().take(200).map(|&t| round(t, 1)).collect::<Vec<_>>(),
        },
        "duplicates": pa.duplicates,
        "send_errors": probe_rec.send_errors,
        "baseline_rtt_ms": round(p_base, 3),
        "added_delay_ms_p99": round(p_p99, 3),
        "added_delay_ms_max": round(p_max, 3),
        "rtt_timeline_fields": ["sent_ms", "rtt_ms", "forward_ms", "return_ms"],
        "rtt_timeline_window_ms": [round(window.0, 1), round(window.1, 1)],
        "rtt_timeline": pa.answers.iter().filter(|a| in_window(a.sent_ms)).map(|a| {
            [round(a.sent_ms, 3), round(a.rtt_ms, 3), round(a.forward_ms, 3), round(a.return_ms, 3)]
        }).collect::<Vec<_>>(),
    });
    let (link_json, link_problem) = match (&link_plan, link_stats) {
        (Some(plan), Some(Ok(stats))) => {
            let drops: BTreeMap<String, BTreeMap<String, u64>> = stats
                .iter()
                .map(|(d, text)| (d.clone(), qdisc_drops(text)))
                .collect();
            (
                json!({"shaping": plan, "devices": link_devices, "qdisc_drops": drops}),
                None,
            )
        }
        (Some(plan), Some(Err(e))) => (
            json!({"shaping": plan, "devices": link_devices}),
            Some(format!("{e:#}")),
        ),
        _ => (Value::Null, None),
    };

    // Counters.
    let (c0, c1) = (counters_of(&before), counters_of(&after));
    let d = flat_deltas(&c0, &c1);
    let NodeDeltas {
        lost_by_cause,
        mut drops,
        internal_errors,
    } = node_deltas(&c0, &c1);
    let (switch_flows, switch_ports) = switch_deltas(&switch_before, &switch_after);
    for p in &switch_ports {
        for k in ["rx_dropped", "tx_dropped", "rx_errors", "tx_errors"] {
            let n = p[k].as_u64().unwrap_or(0);
            if n > 0 {
                *drops
                    .entry(format!("switch_port{}_{k}", p["port_no"]))
                    .or_default() += n;
            }
        }
    }
    let lost: u64 = lost_by_cause.values().sum();

    // Delay (ping round trip).
    let rtt: Vec<(f64, f64)> = ping
        .samples
        .iter()
        .map(|&(ts, rtt)| ((ts - wall0) * 1e3, rtt))
        .collect();
    let mut base: Vec<f64> = rtt
        .iter()
        .filter(|(t, _)| *t >= mig_start - 500.0 && *t < mig_start)
        .map(|(_, r)| *r)
        .collect();
    base.sort_by(f64::total_cmp);
    let baseline = percentile(&base, 0.5);
    let mut added: Vec<f64> = rtt
        .iter()
        .filter(|(t, _)| *t >= mig_start && *t <= mig_end + 50.0)
        .map(|(_, r)| (r - baseline).max(0.0))
        .collect();
    added.sort_by(f64::total_cmp);

    // Checks that must hold for every algorithm.
    let owners_after: Vec<InstanceId> = after
        .nodes
        .iter()
        .filter(|(_, e)| {
            e.status.as_ref().is_some_and(|s| {
                s.groups
                    .iter()
                    .any(|g| g.external == layout::group_external(1))
            })
        })
        .map(|(id, _)| *id)
        .collect();
    let controller_owner = after
        .groups
        .iter()
        .find(|g| g.external == layout::group_external(1))
        .map(|g| g.owner);
    let ok_or = |bad: Option<String>| Value::from(bad.unwrap_or_else(|| "ok".into()));
    let invariants = json!({
        "completed": ok_or((status.stage != Stage::Done).then(|| format!("migration ended {:?}", status.stage))),
        "tcp_connections": ok_or((!tcp_problems.is_empty()).then(|| tcp_problems.join("; "))),
        "link_shaping": ok_or(link_problem),
        "single_owner": ok_or((owners_after != [InstanceId(2)] || controller_owner != Some(InstanceId(2))).then(|| {
            format!("group on nodes {owners_after:?}, controller owner {controller_owner:?}")
        })),
        "internal_errors": ok_or((internal_errors > 0).then(|| format!("{internal_errors} internal errors"))),
    });

    let retransmits: u64 = client_runs.iter().map(|r| r.retransmits).sum();
    let sent: u64 = client_runs.iter().map(|r| r.bytes_sent).sum();
    let received: u64 = server_runs.iter().map(|r| r.bytes_received).sum();
    let r = &report;
    let n = |k: &str| r[k].as_u64().unwrap_or(0);
    let f = |k: &str| round(r[k].as_f64().unwrap_or(0.0), 3);
    let min_bin_ratio = goodput_min_bin_ratio(
        &goodput,
        iperf::INTERVAL_S * 1e3,
        mig_start / 2.0,
        req_ms,
        mig_end,
    );
    let ping_json = json!({
        "sent": ping.sent,
        "received": ping.received,
        "interval_ms": PING_INTERVAL.as_secs_f64() * 1e3,
        "baseline_rtt_ms": round(baseline, 3),
        "added_delay_ms_p99": round(percentile(&added, 0.99), 3),
        "added_delay_ms_max": round(added.last().copied().unwrap_or(0.0), 3),
    });
    let json = json!({
        "algorithm": algorithm_name(alg),
        "seed": args.seed,
        "backend": "testbed",
        "completed": r["completed"].as_bool().unwrap_or(false) && status.stage == Stage::Done,
        "packets_lost": lost,
        "packets_lost_by_cause": lost_by_cause,
        "network_drops_by_cause": drops,
        "packets_buffered": n("packets_buffered"),
        "packets_chained": n("packets_chained"),
        "reordered_packets": pa.reordered,
        "probes_sent": pa.sent,
        "probes_lost": pa.lost,
        "retransmits": retransmits,
        "max_freeze_ms": f("max_freeze_ms"),
        "max_buffer_delay_ms": f("max_buffer_delay_ms"),
        "halted_ms": f("halted_ms"),
        "added_delay_ms_max": round(p_max, 3),
        "added_delay_ms_p99": round(p_p99, 3),
        "baseline_delay_ms": round(p_base, 3),
        "migration_ms": round(mig_end - req_ms, 3),
        "phases": phases,
        "controller": controller,
        "states_at_start": n("mappings_at_start"),
        "states_expired_idle": n("states_expired_idle"),
        "states_transferred": n("states_transferred"),
        "records_transferred": n("records"),
        "bytes_transferred": n("bytes_transferred"),
        "batches": n("batches"),
        "precopy_rounds": r.get("precopy_rounds").cloned().unwrap_or(Value::Null),
        "goodput_before_mbps": round(mean_between(&goodput, mig_start / 2.0, mig_start), 1),
        "goodput_during_mbps": round(mean_between(&goodput, mig_start, mig_end + 1000.0), 1),
        "goodput_min_bin_ratio": min_bin_ratio,
        "goodput": goodput.iter().map(|&(t, m)| [round(t, 1), round(m, 2)]).collect::<Vec<_>>(),
        "invariants": invariants,
    });
    let iperf_json = json!({
        "clients": client_runs.len(),
        "streams": streams,
        "bytes_sent": sent,
        "bytes_received": received,
        "sender_mbps": round(client_runs.iter().map(|r| r.sent_bps).sum::<f64>() / 1e6, 1),
        "receiver_mbps": round(server_runs.iter().map(|r| r.received_bps).sum::<f64>() / 1e6, 1),
        "errors": tcp_problems,
    });
    let switch_json = json!({
        "flows": switch_flows,
        "ports": switch_ports,
        "source": "controller GET /switch (OpenFlow flow and port statistics, polled every second)",
    });
    let mut json = json;
    for (k, v) in [
        ("timeline", Value::from(timeline)),
        ("clock_alignment", Value::from(alignment)),
        ("cpu_pct", cpu),
        ("link", link_json),
        ("probe", probe_json),
        ("iperf", iperf_json),
        ("ping", ping_json),
        ("node_counters_delta", json!(d)),
        ("switch", switch_json),
        ("source_report", report),
    ] {
        json[k] = v;
    }
    RunOut {
        json,
        goodput,
        rtt: rtt_plot,
        phases: plot_phases,
        params: serde_json::to_value(&p).unwrap_or(Value::Null),
    }
}
