//! The options of `flowshift experiment precopy` and the migration parameters they imply.

use super::*;

/// Algorithms the experiment can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlgoChoice {
    /// Pre-copy rounds, then a final stop-and-copy.
    PreCopy,
    /// Idle phase, then iterated freeze-and-copy (the poster's), idle rule from
    /// `--idle-mode`/`--idle-threshold` (default: the engine's, 0.5 % of the remaining
    /// mappings per second).
    FreezeCopy,
    /// Freeze-copy whose idle phase waits until fewer than `--wait-threshold` mappings die per
    /// second (absolute), i.e. until the lingering closed flows have expired.
    FreezeCopyWait,
    /// Stop-and-copy (baseline).
    StopCopy,
}

impl AlgoChoice {
    pub(super) fn algorithm(self) -> Algorithm {
        match self {
            AlgoChoice::PreCopy => Algorithm::PreCopy,
            AlgoChoice::FreezeCopy | AlgoChoice::FreezeCopyWait => Algorithm::FreezeCopy,
            AlgoChoice::StopCopy => Algorithm::StopCopy,
        }
    }
    pub(super) fn name(self) -> &'static str {
        match self {
            AlgoChoice::PreCopy => "pre-copy",
            AlgoChoice::FreezeCopy => "freeze-copy",
            AlgoChoice::FreezeCopyWait => "freeze-copy-wait",
            AlgoChoice::StopCopy => "stop-copy",
        }
    }
}

/// How the freeze-copy idle phase measures the death rate (mirrors [`RateMode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdleMode {
    /// Deaths per second over the mappings remaining (a fraction per second).
    Relative,
    /// Deaths per second.
    Absolute,
}

/// Which workloads to run (a comma-separated list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadChoice {
    /// Synthetic with the `--dist` sizes only.
    Synthetic,
    /// Replay of `--pcap` only.
    Replay,
    /// Synthetic and replay (needs `--pcap`).
    Both,
    /// Published web-search flow sizes (DCTCP), Poisson arrivals at `--load` of `--link-mbps`.
    Websearch,
    /// Published data-mining flow sizes (VL2), likewise.
    Datamining,
    /// Published Internet border-link flow sizes (AGH, arXiv:1809.03486), likewise.
    #[value(alias = "backbone")]
    Internet,
    /// websearch, datamining and internet.
    Published,
    /// synthetic, the three published distributions, and replay when `--pcap` is given.
    All,
}

/// One workload of a run: its name and, for synthetic ones, the size distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WorkloadSpec {
    pub(super) name: &'static str,
    /// `None`: the `--pcap` replay.
    pub(super) dist: Option<SizeDist>,
}

/// Arguments of `experiment precopy`. Times in the names' units; all randomness from `--seed`.
#[derive(Args, Debug, Clone, Serialize)]
pub struct PrecopyArgs {
    /// Seed of the workload and of the NATs' port choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output directory for precopy.json and the plots.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Workloads to run, comma-separated (default: synthetic, or both when --pcap is given).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workload: Vec<WorkloadChoice>,
    /// Algorithms to run, each in a fresh run on the same workload.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [AlgoChoice::PreCopy, AlgoChoice::FreezeCopy, AlgoChoice::FreezeCopyWait, AlgoChoice::StopCopy])]
    pub algorithms: Vec<AlgoChoice>,
    /// Synthetic with Pareto or Zipf sizes: flow arrival rate (flows/s, Poisson).
    #[arg(long, default_value_t = 150.0)]
    pub rate: f64,
    /// Synthetic: flow-size distribution: `pareto` (shape `--alpha`, scale `--min-packets`),
    /// `zipf` (ranks with exponent `--zipf-s`, times `--min-packets`), or a published one
    /// (`websearch`, `datamining`, `internet`: arrivals from `--load`, sizes uncapped).
    #[arg(long, default_value_t = SizeDist::Pareto)]
    pub dist: SizeDist,
    /// Published distributions: offered load, a fraction of `--link-mbps`; the Poisson
    /// arrival rate is load x link rate / (8 x mean flow size in bytes).
    #[arg(long, default_value_t = 0.5)]
    pub load: f64,
    /// Published distributions: the rate the load refers to (Mbit/s of flow payload).
    #[arg(long, default_value_t = 100.0)]
    pub link_mbps: f64,
    /// Synthetic: Pareto shape (> 0; heavy-tailed below 2).
    #[arg(long, default_value_t = 1.2)]
    pub alpha: f64,
    /// Synthetic: Zipf exponent (> 0).
    #[arg(long, default_value_t = 2.0)]
    pub zipf_s: f64,
    /// Synthetic: smallest flow (data packets; Pareto scale, Zipf unit).
    #[arg(long, default_value_t = 4)]
    pub min_packets: u32,
    /// Synthetic: largest flow (data packets).
    #[arg(long, default_value_t = 100_000)]
    pub max_packets: u32,
    /// Synthetic: data packets per second of one flow (exponential gaps).
    #[arg(long, default_value_t = 20.0)]
    pub flow_pps: f64,
    /// Synthetic: share of UDP flows (the rest are TCP).
    #[arg(long, default_value_t = 0.3)]
    pub udp_share: f64,
    /// Synthetic: long-lived TCP connections open from the start (the pre-existing population).
    #[arg(long, default_value_t = 2000)]
    pub persistent: u32,
    /// Synthetic: mean time between a long-lived connection's keepalives (s).
    #[arg(long, default_value_t = 60.0)]
    pub keepalive_s: f64,
    /// Subscriber addresses in use (at most 1022).
    #[arg(long, default_value_t = 256)]
    pub subscribers: u32,
    /// Synthetic: virtual time before the migration starts (s).
    #[arg(long, default_value_t = 300.0)]
    pub warmup_s: f64,
    /// Server reply delay (ms).
    #[arg(long, default_value_t = 20.0)]
    pub server_rtt_ms: f64,
    /// One-way delay of the transfer link and of the chain path (us).
    #[arg(long, default_value_t = 500)]
    pub delay_us: u64,
    /// Transfer link rate (Mbit/s; 0: no serialization delay).
    #[arg(long, default_value_t = 1000.0)]
    pub bandwidth_mbps: f64,
    /// Switch reprogramming (barrier) delay before `cutover_done` (us).
    #[arg(long, default_value_t = 1000)]
    pub barrier_us: u64,
    /// Mappings per batch (all algorithms).
    #[arg(long, default_value_t = 256)]
    pub batch_size: u32,
    /// Pre-copy and stop-copy: batches in flight.
    #[arg(long, default_value_t = 8)]
    pub precopy_in_flight: u32,
    /// Pre-copy: a round that copied at most this many mappings is the last before the halt.
    #[arg(long, default_value_t = 64)]
    pub precopy_stop: u32,
    /// Pre-copy: most rounds, round 0 included.
    #[arg(long, default_value_t = 30)]
    pub precopy_max_rounds: u32,
    /// Freeze-copy: batches in flight.
    #[arg(long, default_value_t = 1)]
    pub freeze_in_flight: u32,
    /// Freeze-copy: idle-phase rate mode.
    #[arg(long, value_enum, default_value_t = IdleMode::Relative)]
    pub idle_mode: IdleMode,
    /// Freeze-copy: leave the idle phase when the death rate falls below this (per second;
    /// a fraction of the remaining mappings in relative mode).
    #[arg(long, default_value_t = 0.005)]
    pub idle_threshold: f64,
    /// Freeze-copy-wait: leave the idle phase when fewer mappings than this die per second.
    #[arg(long, default_value_t = 1.0)]
    pub wait_threshold: f64,
    /// Freeze-copy: death-rate window (samples of 1 s).
    #[arg(long, default_value_t = 10)]
    pub idle_window: u32,
    /// Freeze-copy: longest idle phase (s).
    #[arg(long, default_value_t = 300.0)]
    pub idle_max_s: f64,
    /// Extra pre-copy runs at these transfer-link rates (Mbit/s), to show how convergence
    /// depends on copy speed versus the rate mappings are touched.
    #[arg(long, value_delimiter = ',', default_values_t = [100.0, 10.0, 1.0])]
    pub sweep_mbps: Vec<f64>,
    /// Skip the bandwidth sweep.
    #[arg(long)]
    pub no_sweep: bool,
    /// Replay: pcap file to read 5-tuples and timestamps from.
    #[arg(long)]
    pub pcap: Option<PathBuf>,
    /// Replay: migration start, seconds into the trace (default: half the trace).
    #[arg(long)]
    pub pcap_migrate_at_s: Option<f64>,
    /// Replay: most packets read from the file.
    #[arg(long, default_value_t = 5_000_000)]
    pub pcap_max_packets: u64,
    /// Write the sample pcap (a synthetic flow mix, fixed seed) to this file and exit.
    #[arg(long)]
    pub write_sample_pcap: Option<PathBuf>,
    /// Skip the plots.
    #[arg(long)]
    pub no_plot: bool,
}

impl Default for PrecopyArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: PrecopyArgs,
        }
        Wrap::parse_from(["precopy"]).a
    }
}

impl PrecopyArgs {
    pub(super) fn validate(&self) -> Result<()> {
        let pos = |x: f64| x.is_finite() && x > 0.0;
        let nonneg = |x: f64| x.is_finite() && x >= 0.0;
        if !pos(self.rate) || self.rate > 1e6 {
            bail!("--rate must be in (0, 1e6]");
        }
        if !pos(self.load) || self.load > 1.0 || !pos(self.link_mbps) || self.link_mbps > 1e5 {
            bail!("--load must be in (0, 1] and --link-mbps in (0, 1e5]");
        }
        if !pos(self.alpha) || !pos(self.zipf_s) {
            bail!("--alpha and --zipf-s must be positive");
        }
        if self.min_packets == 0 || self.max_packets < self.min_packets {
            bail!("need 1 <= --min-packets <= --max-packets");
        }
        if self.dist == SizeDist::Zipf && self.max_packets / self.min_packets > MAX_ZIPF_RANKS {
            bail!("--max-packets / --min-packets must be at most {MAX_ZIPF_RANKS} for zipf");
        }
        if !pos(self.flow_pps) || !pos(self.keepalive_s) {
            bail!("--flow-pps and --keepalive-s must be positive");
        }
        if !(0.0..=1.0).contains(&self.udp_share) {
            bail!("--udp-share must be in [0, 1]");
        }
        if self.subscribers == 0 || self.subscribers > MAX_SUBSCRIBERS {
            bail!("--subscribers must be in 1..={MAX_SUBSCRIBERS}");
        }
        if !nonneg(self.warmup_s) || self.warmup_s > 1e5 {
            bail!("--warmup-s must be in [0, 1e5]");
        }
        if !nonneg(self.server_rtt_ms) || !nonneg(self.bandwidth_mbps) {
            bail!("--server-rtt-ms and --bandwidth-mbps must be non-negative");
        }
        if !nonneg(self.idle_threshold)
            || !nonneg(self.wait_threshold)
            || !nonneg(self.idle_max_s)
            || self.idle_max_s > 1e5
        {
            bail!("--idle-threshold and --idle-max-s must be non-negative (idle at most 1e5 s)");
        }
        if self.sweep_mbps.iter().any(|&b| !nonneg(b)) {
            bail!("--sweep-mbps values must be non-negative");
        }
        if self.algorithms.is_empty() {
            bail!("--algorithms is empty");
        }
        if let Some(t) = self.pcap_migrate_at_s
            && !nonneg(t)
        {
            bail!("--pcap-migrate-at-s must be non-negative");
        }
        Ok(())
    }

    /// The workloads to run, in order, each once.
    pub(super) fn workloads(&self) -> Result<Vec<WorkloadSpec>> {
        use WorkloadChoice as W;
        let chosen = if self.workload.is_empty() {
            vec![if self.pcap.is_some() {
                W::Both
            } else {
                W::Synthetic
            }]
        } else {
            self.workload.clone()
        };
        let synthetic = WorkloadSpec {
            name: "synthetic",
            dist: Some(self.dist),
        };
        let published = |d: SizeDist| WorkloadSpec {
            name: d.empirical().map_or("synthetic", |c| c.name),
            dist: Some(d),
        };
        let replay = WorkloadSpec {
            name: "replay",
            dist: None,
        };
        let three = [
            SizeDist::Websearch,
            SizeDist::Datamining,
            SizeDist::Internet,
        ]
        .map(published);
        let mut out: Vec<WorkloadSpec> = Vec::new();
        for w in chosen {
            if matches!(w, W::Replay | W::Both) && self.pcap.is_none() {
                bail!("--workload {w:?} needs --pcap FILE");
            }
            let add: Vec<WorkloadSpec> = match w {
                W::Synthetic => vec![synthetic],
                W::Replay => vec![replay],
                W::Both => vec![synthetic, replay],
                W::Websearch => vec![three[0]],
                W::Datamining => vec![three[1]],
                W::Internet => vec![three[2]],
                W::Published => three.to_vec(),
                W::All => {
                    let mut v = vec![synthetic];
                    v.extend(three);
                    v.extend(self.pcap.is_some().then_some(replay));
                    v
                }
            };
            for a in add {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        Ok(out)
    }

    /// The arguments of one synthetic workload: its size distribution and, for a published
    /// one, the arrival rate that offers `--load` of `--link-mbps`.
    pub(super) fn for_dist(&self, dist: SizeDist) -> PrecopyArgs {
        let rate = dist.empirical().map_or(self.rate, |c| {
            self.load * self.link_mbps * 1e6 / (8.0 * c.mean_bytes())
        });
        PrecopyArgs {
            dist,
            rate,
            ..self.clone()
        }
    }

    /// The synthetic workload's parameters.
    pub(super) fn synth(&self) -> SynthConfig {
        SynthConfig {
            seed: self.seed,
            rate: self.rate,
            dist: self.dist,
            alpha: self.alpha,
            zipf_s: self.zipf_s,
            min_packets: self.min_packets,
            max_packets: self.max_packets,
            flow_pps: self.flow_pps,
            udp_share: self.udp_share,
            keepalive_s: self.keepalive_s,
            subscribers: self.subscribers,
        }
    }

    pub(super) fn params(&self, algo: AlgoChoice) -> Params {
        let one_way = Duration::from_micros(self.delay_us);
        let mut p = Params {
            batch_size: self.batch_size,
            // Our switch hands packets to A without delay: twice the chain delay suffices.
            drain: one_way * 2 + Duration::from_millis(1),
            ..Params::default()
        };
        match algo {
            AlgoChoice::PreCopy | AlgoChoice::StopCopy => {
                p.batches_in_flight = self.precopy_in_flight;
                p.precopy_stop_threshold = self.precopy_stop;
                p.precopy_max_rounds = self.precopy_max_rounds;
            }
            AlgoChoice::FreezeCopy | AlgoChoice::FreezeCopyWait => {
                p.batches_in_flight = self.freeze_in_flight;
                (p.idle_rate_mode, p.idle_rate_threshold) = match (algo, self.idle_mode) {
                    (AlgoChoice::FreezeCopyWait, _) => (RateMode::Absolute, self.wait_threshold),
                    (_, IdleMode::Relative) => (RateMode::Relative, self.idle_threshold),
                    (_, IdleMode::Absolute) => (RateMode::Absolute, self.idle_threshold),
                };
                p.idle_window_samples = self.idle_window;
                p.idle_max = secs(self.idle_max_s);
            }
        }
        p
    }

    pub(super) fn mig_config(&self) -> MigrationConfig {
        // Retransmission timeout above one RTT plus a full window's serialization, so a slow
        // link causes no spurious retransmissions.
        let window_bytes = 32.0 * 66_000.0;
        let ser = if self.bandwidth_mbps > 0.0 {
            window_bytes * 8.0 / (self.bandwidth_mbps * 1e6)
        } else {
            0.0
        };
        let rto = secs(0.02 + 4.0 * self.delay_us as f64 * 1e-6 + 2.0 * ser);
        MigrationConfig {
            rto_initial: rto,
            rto_max: rto.max(Duration::from_secs(1)) * 4,
            peer_timeout: (rto * 40).max(Duration::from_secs(10)),
            report_drops: true,
            ..MigrationConfig::default()
        }
    }
}
