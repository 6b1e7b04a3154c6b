//! `flowshift experiment swarm`: the fault swarm ([`flowshift_sim::swarm`]) over a range of
//! seeds. Prints the rate (seeds per second) and every violation with its seed, writes
//! `swarm.json`, and fails (non-zero exit) if any seed violated an invariant. Reproduce one
//! with `--start <seed> --seeds 1`.

use crate::report::write_json;
use anyhow::{Context, Result, bail};
use clap::Args;
use flowshift_sim::swarm;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `experiment swarm`.
#[derive(Args, Debug)]
pub struct SwarmArgs {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 1000)]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Output directory for swarm.json.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
}

/// Runs the swarm; see the module documentation.
pub fn run(args: &SwarmArgs) -> Result<()> {
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let t0 = Instant::now();
    let mut violations = Vec::new();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let (mut crashes, mut lost, mut released, mut events) = (0u64, 0u64, 0u64, 0u64);
    for seed in args.start..args.start + args.seeds {
        let r = swarm::run(seed).map_err(|e| anyhow::anyhow!("seed {seed}: set-up: {e}"))?;
        for v in &r.violations {
            println!("seed {seed}: {v}");
        }
        if !r.violations.is_empty() {
            violations.push(json!({"seed": seed, "plan": r.plan, "violations": r.violations}));
        }
        let last = r.stages.last().cloned().unwrap_or_else(|| "none".into());
        *outcomes
            .entry(format!("owner_{}_{last}", r.owner))
            .or_default() += 1;
        crashes += r.plan.crashes() as u64;
        lost += r.sessions_lost;
        released += r.mappings_released;
        events += r.events;
    }
    let secs = t0.elapsed().as_secs_f64();
    let rate = args.seeds as f64 / secs.max(1e-9);
    println!(
        "swarm: {} seeds from {} in {secs:.1} s ({rate:.1} seeds/s, {:.2} M events/s); {} with a crash; {} violating",
        args.seeds,
        args.start,
        events as f64 / secs.max(1e-9) / 1e6,
        crashes,
        violations.len()
    );
    println!("outcomes (final owner, last migration stage): {outcomes:?}");
    println!("sessions lost with dead owners: {lost}; mappings released: {released}");
    let report = json!({
        "experiment": "swarm",
        "backend": "simulator",
        "start": args.start,
        "seeds": args.seeds,
        "seconds": secs,
        "seeds_per_second": rate,
        "events": events,
        "runs_with_crash": crashes,
        "sessions_lost": lost,
        "mappings_released": released,
        "outcomes": outcomes,
        "violations": violations,
    });
    write_json(&args.out.join("swarm.json"), &report)?;
    if !violations.is_empty() {
        bail!("{} seeds violated invariants", violations.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_seeds_write_a_report_without_violations() {
        let out = std::env::temp_dir().join(format!("flowshift-swarm-{}", std::process::id()));
        run(&SwarmArgs {
            seeds: 3,
            start: 4041,
            out: out.clone(),
        })
        .expect("no violation");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("swarm.json")).unwrap())
                .unwrap();
        assert_eq!(v["seeds"], 3);
        assert_eq!(v["violations"].as_array().map(Vec::len), Some(0));
        let _ = std::fs::remove_dir_all(out);
    }
}
