//! `flowshift experiment wan`: the poster's scenario with the destination at a distance: the
//! state-transfer link and the daisy chain cross a wide-area path of configurable rate and
//! round-trip time (the switch still reaches both instances). Per algorithm and RTT: longest
//! freeze or downtime, packets lost, migration duration. Writes `wan.json` and prints a table.
//!
//! `--testbed` runs the same sweep on real packets ([`crate::testbed::wan_experiment`]: node 2
//! behind a wide-area link on its management network, which carries the state transfer; the
//! daisy chain stays on the switch), default RTTs 1, 20, 50 ms, with the probe stream's loss
//! and reordering as extra columns.

use crate::experiment::{run_all, run_json};
use crate::options::AlgorithmChoice;
use crate::report::write_json;
use anyhow::{Context, Result, bail};
use clap::Args;
use flowshift_sim::cluster::ClusterConfig;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `experiment wan`.
#[derive(Args, Debug)]
pub struct WanArgs {
    /// Round-trip times of the wide-area path (ms; default 1,10,50,100, with --testbed
    /// 1,20,50).
    #[arg(long, value_delimiter = ',')]
    rtt_ms: Vec<f64>,
    /// Rate of the wide-area path (Mbit/s).
    #[arg(long, default_value_t = 100.0)]
    rate_mbps: f64,
    /// States on the source.
    #[arg(long, default_value_t = 10_000)]
    states: u32,
    /// Long-lived TCP flows during the migration.
    #[arg(long, default_value_t = 20)]
    flows: usize,
    /// Algorithm(s).
    #[arg(long, value_enum, default_value = "all")]
    algorithm: AlgorithmChoice,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory for wan.json.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// On the testbed (root): namespaces, Open vSwitch, real nodes, a delay line.
    #[arg(long)]
    testbed: bool,
    /// Testbed: probes per second through the migrated group.
    #[arg(long, default_value_t = 1000)]
    probe_rate: u32,
}

/// Runs the sweep.
pub fn run(a: &WanArgs) -> Result<()> {
    let rtts: Vec<f64> = match (a.rtt_ms.is_empty(), a.testbed) {
        (false, _) => a.rtt_ms.clone(),
        (true, false) => vec![1.0, 10.0, 50.0, 100.0],
        (true, true) => vec![1.0, 20.0, 50.0],
    };
    if rtts.iter().any(|r| !(r.is_finite() && *r >= 0.0)) {
        bail!("--rtt-ms needs non-negative round-trip times");
    }
    if !(a.rate_mbps.is_finite() && a.rate_mbps > 0.0) {
        bail!("--rate-mbps must be positive");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    if a.testbed {
        return testbed(a, rtts);
    }
    let bps = (a.rate_mbps * 1e6) as u64;
    let mut configs = Vec::new();
    for &rtt in &rtts {
        for alg in a.algorithm.list() {
            let mut c = ClusterConfig::poster(alg, a.seed);
            c.fictive_states = a.states;
            c.flows = a.flows;
            c.transfer_bps = bps;
            c.transfer_delay = Duration::from_secs_f64(rtt / 2e3);
            c.chain_over_transfer_path = true;
            c.migrate_at = Duration::from_millis(600);
            // Serialization of every record, plus (freeze-copy) one round trip per batch of
            // the smallest freeze budget (4 KiB), plus recovery.
            let bytes = f64::from(a.states) * 30.0;
            let batches = bytes / 4096.0 + 10.0;
            let est = bytes * 8.0 / bps as f64 + batches * rtt / 1e3;
            c.duration = c.migrate_at + Duration::from_secs_f64(1.5 + 1.5 * est);
            configs.push((rtt, c));
        }
    }
    let rtts: Vec<f64> = configs.iter().map(|c| c.0).collect();
    let runs = run_all(configs.into_iter().map(|c| c.1).collect(), "wan")?;
    let rows: Vec<Value> = runs
        .iter()
        .zip(&rtts)
        .map(|(r, rtt)| {
            let mut v = run_json(r);
            if let Some(o) = v.as_object_mut() {
                o.remove("goodput");
                o.insert("rtt_ms".into(), json!(rtt));
                o.insert("rate_mbps".into(), json!(a.rate_mbps));
            }
            v
        })
        .collect();
    let report = json!({"experiment": "wan", "backend": "simulator", "seed": a.seed,
        "states": a.states, "flows": a.flows, "rate_mbps": a.rate_mbps, "runs": rows});
    write_json(&a.out.join("wan.json"), &report)?;
    print_table(&rows, false);
    println!("wrote {}/wan.json", a.out.display());
    Ok(())
}

/// The testbed sweep: same rows and table, plus the probe stream's columns.
fn testbed(a: &WanArgs, rtt_ms: Vec<f64>) -> Result<()> {
    let rows = crate::testbed::wan_experiment(&crate::testbed::WanTestbedArgs {
        rtt_ms,
        rate_mbps: a.rate_mbps,
        states: a.states,
        algorithms: a.algorithm.list(),
        seed: a.seed,
        probe_rate: a.probe_rate,
    })?;
    let report = json!({"experiment": "wan", "backend": "testbed", "seed": a.seed,
        "states": a.states, "rate_mbps": a.rate_mbps, "runs": rows});
    write_json(&a.out.join("wan.json"), &report)?;
    print_table(&rows, true);
    println!("wrote {}/wan.json", a.out.display());
    Ok(())
}

/// One line per run; `probes` adds the probe stream's lost (of them during the migration)
/// and reordered.
fn print_table(rows: &[Value], probes: bool) {
    print!(
        "{:>7} {:<12} {:>10} {:>10} {:>7} {:>12} {:>9} {:>10}",
        "rtt_ms",
        "algorithm",
        "freeze_ms",
        "halted_ms",
        "lost",
        "migration_ms",
        "batches",
        "completed"
    );
    println!(
        "{}",
        if probes {
            "  probes_lost (in migration) reordered"
        } else {
            ""
        }
    );
    for r in rows {
        print!(
            "{:>7} {:<12} {:>10.2} {:>10.2} {:>7} {:>12.1} {:>9} {:>10}",
            r["rtt_ms"].as_f64().unwrap_or(f64::NAN),
            r["algorithm"].as_str().unwrap_or("?"),
            r["max_freeze_ms"].as_f64().unwrap_or(0.0),
            r["halted_ms"].as_f64().unwrap_or(0.0),
            r["packets_lost"].as_u64().unwrap_or(0),
            r["migration_ms"].as_f64().unwrap_or(f64::NAN),
            r["batches"].as_u64().unwrap_or(0),
            r["completed"].as_bool().unwrap_or(false),
        );
        if probes {
            let p = &r["probe"];
            print!(
                "  {:>11} ({}) {}",
                p["lost"].as_u64().unwrap_or(0),
                p["lost_during_migration"].as_u64().unwrap_or(0),
                p["reordered"].as_u64().unwrap_or(0)
            );
        }
        println!();
    }
}
