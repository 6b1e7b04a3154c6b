use super::*;

/// A small synthetic workload: a few seconds of warm-up, UDP-heavy short flows.
fn small(seed: u64) -> PrecopyArgs {
    PrecopyArgs {
        seed,
        rate: 40.0,
        min_packets: 2,
        max_packets: 2000,
        flow_pps: 50.0,
        persistent: 50,
        keepalive_s: 5.0,
        subscribers: 32,
        warmup_s: 20.0,
        no_plot: true,
        ..PrecopyArgs::default()
    }
}

fn run_of<'a>(r: &'a Report, algo: &str) -> &'a RunOut {
    r.workloads[0]
        .runs
        .iter()
        .find(|x| x.algorithm == algo)
        .expect("run present")
}

#[test]
fn precopy_reports_dirty_rounds_when_flows_are_active() {
    // A slow channel (2 Mbit/s) makes round 0 take long enough for active flows to touch
    // mappings that were already copied.
    let args = PrecopyArgs {
        algorithms: vec![AlgoChoice::PreCopy],
        bandwidth_mbps: 2.0,
        ..small(3)
    };
    let r = experiment(&args, false).unwrap();
    let x = run_of(&r, "pre-copy");
    assert!(x.completed, "pre-copy did not complete: {x:?}");
    assert!(x.rounds.len() >= 2, "rounds: {:?}", x.rounds);
    assert!(
        x.rounds.last().unwrap().last,
        "the final round is the halted one"
    );
    assert!(
        x.rounds[1..].iter().any(|r| r.dirty > 0),
        "no dirty mapping after round 0: {:?}",
        x.rounds
    );
    assert_eq!(
        x.rounds[0].copied, x.table_at_start.mappings,
        "round 0 copies the whole table"
    );
    // Everything copied and alive at the commit moved.
    let rep = x.source_report.as_ref().unwrap();
    assert_eq!(rep.states_transferred, x.states_transferred);
    assert!(x.states_transferred > 0);
    assert_eq!(x.traffic_total.unparsed, 0);
}

#[test]
fn freeze_copy_expires_short_flows_in_the_idle_phase_without_loss() {
    // Short UDP flows dominate; the idle phase lasts its maximum, 150 s (a zero rate
    // threshold never triggers), so the 2-minute UDP timeout of the flows that ended
    // during the 30-s warm-up runs out before freeze-and-copy.
    let args = PrecopyArgs {
        algorithms: vec![AlgoChoice::FreezeCopy],
        udp_share: 0.9,
        persistent: 20,
        rate: 20.0,
        warmup_s: 30.0,
        idle_mode: IdleMode::Absolute,
        idle_threshold: 0.0,
        idle_max_s: 150.0,
        ..small(5)
    };
    let r = experiment(&args, false).unwrap();
    let x = run_of(&r, "freeze-copy");
    assert!(x.completed, "freeze-copy did not complete");
    assert!(x.idle_ms.unwrap() >= 150_000.0, "idle {:?} ms", x.idle_ms);
    assert!(
        x.states_expired_idle > x.states_transferred,
        "expired {} vs transferred {}",
        x.states_expired_idle,
        x.states_transferred
    );
    assert!(x.states_transferred >= 20, "the long-lived ones move");
    assert_eq!(x.packets_lost, 0, "freeze-copy must be loss-free");
    assert!(!x.idle_samples.is_empty());
}

#[test]
fn stop_copy_halts_for_the_whole_table() {
    let args = PrecopyArgs {
        algorithms: vec![AlgoChoice::StopCopy, AlgoChoice::PreCopy],
        ..small(9)
    };
    let r = experiment(&args, false).unwrap();
    let (s, p) = (run_of(&r, "stop-copy"), run_of(&r, "pre-copy"));
    assert!(s.completed && p.completed);
    assert_eq!(s.final_copy, Some(s.states_transferred));
    assert!(
        p.final_copy.unwrap() < s.final_copy.unwrap(),
        "pre-copy's final copy {:?} is not smaller than stop-copy's {:?}",
        p.final_copy,
        s.final_copy
    );
}

#[test]
fn same_seed_gives_identical_json_and_another_seed_does_not() {
    let args = PrecopyArgs {
        algorithms: vec![AlgoChoice::PreCopy, AlgoChoice::StopCopy],
        warmup_s: 8.0,
        ..small(11)
    };
    let j1 = serde_json::to_string(&experiment(&args, false).unwrap()).unwrap();
    let j2 = serde_json::to_string(&experiment(&args, false).unwrap()).unwrap();
    assert_eq!(j1, j2);
    let other = PrecopyArgs { seed: 12, ..args };
    let j3 = serde_json::to_string(&experiment(&other, false).unwrap()).unwrap();
    assert_ne!(j1, j3);
}

fn sample_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/precopy-sample.pcap")
}

#[test]
fn shipped_sample_pcap_is_reproducible_and_small() {
    let shipped = std::fs::read(sample_file()).expect("testdata/precopy-sample.pcap");
    assert!(shipped.len() < 200_000);
    let (bytes, _) = sample_pcap(SAMPLE_SEED).unwrap();
    assert!(
        shipped == bytes,
        "regenerate with `flowshift experiment precopy --write-sample-pcap crates/6-lab/testdata/precopy-sample.pcap`"
    );
}

#[test]
fn replay_workload_migrates_with_both_algorithms() {
    let args = PrecopyArgs {
        pcap: Some(sample_file()),
        workload: vec![WorkloadChoice::Replay],
        algorithms: vec![AlgoChoice::PreCopy, AlgoChoice::FreezeCopy],
        pcap_migrate_at_s: Some(30.0),
        idle_max_s: 20.0,
        subscribers: 16,
        no_plot: true,
        ..PrecopyArgs::default()
    };
    let r = experiment(&args, false).unwrap();
    let w = &r.workloads[0];
    assert_eq!(w.name, "replay");
    for x in &w.runs {
        assert!(x.completed, "{} did not complete", x.algorithm);
        assert!(x.table_at_start.mappings > 10, "{:?}", x.table_at_start);
        assert_eq!(x.traffic_total.unparsed, 0);
    }
    let p = run_of(&r, "pre-copy");
    assert!(!p.rounds.is_empty() && p.rounds.last().unwrap().last);
    assert!(p.traffic_total.to_outside > 100 && p.traffic_total.to_inside > 100);
}

#[test]
fn run_writes_the_json_and_the_plots() {
    let dir = std::env::temp_dir().join(format!("flowshift-precopy-run-{}", std::process::id()));
    let args = PrecopyArgs {
        out: dir.clone(),
        algorithms: vec![AlgoChoice::PreCopy, AlgoChoice::FreezeCopy],
        sweep_mbps: vec![10.0],
        idle_max_s: 5.0,
        no_plot: false,
        ..small(2)
    };
    run(&args).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("precopy.json")).unwrap()).unwrap();
    assert_eq!(json["seed"], 2);
    let runs = json["workloads"][0]["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs[0]["rounds"].as_array().unwrap().len() >= 2);
    assert_eq!(json["workloads"][0]["sweep"][0]["bandwidth_mbps"], 10.0);
    for f in ["precopy", "precopy-sweep", "precopy-idle"] {
        let svg = std::fs::read_to_string(dir.join(format!("{f}.svg"))).unwrap();
        assert!(svg.contains("<svg"), "{f}.svg");
        assert!(dir.join(format!("{f}.png")).exists(), "{f}.png");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_are_refused() {
    for bad in [
        PrecopyArgs {
            rate: 0.0,
            ..small(1)
        },
        PrecopyArgs {
            subscribers: 5000,
            ..small(1)
        },
        PrecopyArgs {
            alpha: f64::NAN,
            ..small(1)
        },
        PrecopyArgs {
            workload: vec![WorkloadChoice::Replay],
            ..small(1)
        },
    ] {
        assert!(experiment(&bad, false).is_err());
    }
}

#[test]
fn published_distributions_run_at_a_small_scale() {
    // Each published flow-size CDF as its own workload, at a small scale: a 20-s warm-up,
    // a 20 Mbit/s offered load, pre-copy and freeze-copy with a short idle phase.
    let args = PrecopyArgs {
        workload: vec![WorkloadChoice::Published],
        algorithms: vec![AlgoChoice::PreCopy, AlgoChoice::FreezeCopy],
        link_mbps: 40.0,
        load: 0.5,
        flow_pps: 20.0,
        idle_max_s: 10.0,
        no_sweep: true,
        ..small(4)
    };
    let r = experiment(&args, false).unwrap();
    let names: Vec<&str> = r.workloads.iter().map(|w| w.name).collect();
    assert_eq!(names, ["websearch", "datamining", "internet"]);
    for w in &r.workloads {
        assert!(
            w.flows_created > 50,
            "{}: {} flows",
            w.name,
            w.flows_created
        );
        for x in &w.runs {
            assert!(x.completed, "{} {} did not complete", w.name, x.algorithm);
            assert_eq!(x.traffic_total.unparsed, 0);
            assert!(
                x.table_at_start.mappings >= 50,
                "{}: {:?}",
                w.name,
                x.table_at_start
            );
        }
        let p = w.runs.iter().find(|x| x.algorithm == "pre-copy").unwrap();
        assert!(p.rounds.last().is_some_and(|r| r.last));
        assert!(
            p.rounds
                .iter()
                .all(|r| r.dirty_fraction.is_finite() && r.dirty_fraction >= 0.0)
        );
        let f = w
            .runs
            .iter()
            .find(|x| x.algorithm == "freeze-copy")
            .unwrap();
        assert_eq!(f.packets_lost, 0, "{}: freeze-copy lost packets", w.name);
    }
    let t = table(&r);
    assert!(t.contains("per workload"), "{t}");
}

#[test]
fn workload_lists_expand_and_need_a_pcap_for_replay() {
    let a = PrecopyArgs {
        workload: vec![WorkloadChoice::All, WorkloadChoice::Websearch],
        ..small(1)
    };
    let names: Vec<&str> = a.workloads().unwrap().iter().map(|w| w.name).collect();
    assert_eq!(names, ["synthetic", "websearch", "datamining", "internet"]);
    let rate = a.for_dist(SizeDist::Websearch).rate;
    let want = 0.5 * 100e6 / (8.0 * flowshift_sim::workload::cdf::WEBSEARCH.mean_bytes());
    assert!((rate - want).abs() < 1e-9, "{rate} vs {want}");
    assert_eq!(a.for_dist(SizeDist::Pareto).rate, a.rate);
    let b = PrecopyArgs {
        workload: vec![WorkloadChoice::Both],
        ..small(1)
    };
    assert!(b.workloads().is_err());
}
