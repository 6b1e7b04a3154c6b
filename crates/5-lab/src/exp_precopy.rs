//! `flowshift experiment precopy`: the poster's open question. How effective is pre-copy on
//! realistic flow mixes, compared with idle + freeze-and-copy?
//!
//! # Set-up
//!
//! Two [`flowshift_migration::Instance`]s, A and B, are driven in virtual time by a small
//! event loop (no network simulator): the "switch" hands every packet of the migrated group
//! straight to A's `handle_packet` (to B once the controller has redirected it), translated
//! packets are parsed and counted, packets A chains are delivered to B after the one-way delay,
//! and transfer frames travel through a FIFO link per direction with a fixed one-way delay plus
//! a serialization delay per byte (`--bandwidth-mbps`, 0 for none). On `ReadyForCutover` the
//! controller redirects the switch at once and calls `cutover_done` one barrier delay later.
//! Time jumps from event to event, so minutes of virtual time cost little. Nothing is ever
//! sent anywhere: everything happens in-process.
//!
//! The group: external address 198.18.0.1, subscribers 100.64.0.1 .. 100.64.3.254
//! (`--subscribers` of them), servers in 198.19.0.0/16. Port blocks of 64 ports, at most 8 per
//! subscriber. Timeouts are the RFC minimums that `NatConfig::validate` accepts: UDP 120 s,
//! TCP transitory 4 min, TCP established 2 h 4 min.
//!
//! # Workloads
//!
//! * **synthetic** (seeded): flows arrive as a Poisson process (`--rate` flows/s), each UDP
//!   (`--udp-share`) or TCP, from a random subscriber (fresh source port) to a random server.
//!   Sizes in data packets are heavy-tailed: Pareto (`--alpha`, scale `--min-packets`) or Zipf
//!   (`--zipf-s`, size = rank x `--min-packets`), capped at `--max-packets`. A flow sends its
//!   data packets with exponential gaps at `--flow-pps`; TCP flows open with a SYN and close
//!   with a FIN. The server answers every outbound packet after `--server-rtt-ms` (SYN-ACK,
//!   ACK, FIN-ACK, or a UDP reply), addressed to the external port it was seen from. So a TCP
//!   flow ends closed both ways and its mapping then **lingers 4 min** (RFC 5382 transitory
//!   timeout), a UDP mapping 2 min after its last packet. Plus a **pre-existing population** of
//!   `--persistent` long-lived TCP connections (opened in the first 10 s, then a keepalive every
//!   `--keepalive-s` on average: messaging and push connections), and a warm-up of
//!   `--warmup-s` (default 300 s, longer than the 4-min linger) before the migration, so the
//!   table is in steady state when migration starts: most of its mappings are closed flows
//!   waiting to expire.
//! * **replay** (`--pcap FILE`): 5-tuples, TCP flags and timestamps from a pcap file (Ethernet,
//!   raw-IP or IPv4 link types; other packets skipped and counted). A flow's initiator is the
//!   sender of its first packet (the receiver, if that packet is a SYN-ACK); initiators are
//!   mapped, deterministically in order of appearance, to subscriber addresses (keeping the port
//!   unless two endpoints would collide) and responders to servers in 198.19.0.0/16. A TCP flow
//!   whose capture starts mid-stream gets a synthesized SYN before its first packet (counted),
//!   since only an outbound SYN creates a TCP mapping. No replies are invented: the trace's own
//!   packets in both directions are replayed at their timestamps. The migration starts at
//!   `--pcap-migrate-at-s` (default: half the trace).
//!
//! # What is measured
//!
//! Per workload, a fresh run (same workload, same seed, same warm-up) per algorithm
//! (`--algorithms`):
//!
//! * `pre-copy`: per round the mappings copied, dirty, new and dead, when the round was
//!   acknowledged, the final (halted) stop-and-copy's size, the downtime `halted_ms` and the
//!   packets lost in it.
//! * `freeze-copy`: the idle rule of `--idle-mode`/`--idle-threshold`, by default the engine's
//!   (a death rate below 0.5 % of the remaining mappings per second over a 10-s window).
//! * `freeze-copy-wait`: an idle rule that waits for the lingering states: fewer than
//!   `--wait-threshold` deaths per second (absolute). Both report the states that expired in
//!   the idle phase versus those transferred, the idle phase's length, the longest freeze and
//!   the migration's duration.
//! * `stop-copy`: the baseline, everything copied while halted.
//!
//! Plus pre-copy again at each `--sweep-mbps` transfer rate: pre-copy converges only while the
//! channel copies mappings faster than traffic touches them. Everything goes to
//! `DIR/precopy.json` (deterministic for a seed: no wall-clock figures), plots to
//! `DIR/precopy.{svg,png}` (pre-copy's rounds, log scale), `DIR/precopy-sweep.{svg,png}`
//! (copied per round at each transfer rate) and `DIR/precopy-idle.{svg,png}` (mappings left on
//! the source during the idle phases), and a table to stdout.
//!
//! Dirty means what the engine says (see `flowshift_migration`): a mapping whose most recent
//! packet is at or after its last copy, or whose session count changed.
//!
//! # The idle phase and the 4-minute linger
//!
//! In steady state most of the table (over 90 % with the defaults) is flows that have ended and
//! whose mappings only wait for their timeout: the RFCs forbid shorter ones. Such a table loses
//! about 1/240 of its TCP and 1/120 of its UDP mappings per second whatever happens (about
//! 0.45 %/s with the default mix), which is already *below* the engine's default relative
//! threshold (0.5 %/s): the default idle phase ends after
//! its first 10-s window, having let only a few percent expire. Waiting for the closed flows
//! to expire (`freeze-copy-wait`) takes the whole transitory timeout, about 4 min, and then
//! leaves little more than the long-lived connections to freeze and copy. Closed-but-lingering
//! TCP mappings count as alive (they still hold their port) until the NAT expires them.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use flowshift_migration::{
    Algorithm, Direction, Ingress, Instance, InstanceId, MigrationConfig, MigrationEvent,
    MigrationId, MigrationReport, Output, Params, Phase, RateMode,
};
use flowshift_nat::{GroupConfig, Nat, NatConfig, Timeouts};
use flowshift_wire::Instant;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

const A: InstanceId = InstanceId(1);
const B: InstanceId = InstanceId(2);
/// External address of the migrated group.
const EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// B's own group (unused by traffic; B must serve something).
const B_EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The migrated group's subscriber prefix: 100.64.0.0/22.
const SUB_NET: [u8; 4] = [100, 64, 0, 0];
const SUB_LEN: u8 = 22;
/// Usable subscriber addresses in the /22.
const MAX_SUBSCRIBERS: u32 = (1 << (32 - SUB_LEN)) - 2;
/// Servers: 198.19.0.0/16 (inside 198.18.0.0/15, clear of the external addresses).
const SERVER_NET: u32 = u32::from_be_bytes([198, 19, 0, 0]);
const MAX_SERVERS: u32 = 65_534;
const TCP: u8 = 6;
const UDP: u8 = 17;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
/// Packet kinds carried in the payload (byte 4) so replies and port learning need no lookup.
const K_SYN: u8 = 0;
const K_DATA: u8 = 1;
const K_FIN: u8 = 2;
const K_KEEPALIVE: u8 = 3;
const K_REPLY: u8 = 4;
const K_REPLAY: u8 = 5;
/// Bounds on one run: flows created, loop steps.
const MAX_FLOWS: usize = 4_000_000;
const MAX_STEPS: u64 = 400_000_000;
/// Steps at one instant before the loop is declared stuck.
const MAX_STEPS_AT_ONE_TIME: u64 = 1_000_000;
/// Bound on the Zipf table.
const MAX_ZIPF_RANKS: u32 = 1_000_000;
/// Persistent connections open within this long from the start.
const PERSISTENT_OPEN_S: f64 = 10.0;
/// The sample pcap's fixed seed (the shipped `testdata/precopy-sample.pcap`).
const SAMPLE_SEED: u64 = 7;

/// Flow-size distribution of the synthetic workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SizeDist {
    /// Pareto with shape `--alpha` and scale `--min-packets`.
    Pareto,
    /// Zipf ranks with exponent `--zipf-s`, times `--min-packets`.
    Zipf,
}

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
    fn algorithm(self) -> Algorithm {
        match self {
            AlgoChoice::PreCopy => Algorithm::PreCopy,
            AlgoChoice::FreezeCopy | AlgoChoice::FreezeCopyWait => Algorithm::FreezeCopy,
            AlgoChoice::StopCopy => Algorithm::StopCopy,
        }
    }
    fn name(self) -> &'static str {
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

/// Which workloads to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadChoice {
    /// Synthetic only.
    Synthetic,
    /// Replay of `--pcap` only.
    Replay,
    /// Both (needs `--pcap`).
    Both,
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
    /// Workloads to run (default: synthetic, or both when --pcap is given).
    #[arg(long, value_enum)]
    pub workload: Option<WorkloadChoice>,
    /// Algorithms to run, each in a fresh run on the same workload.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [AlgoChoice::PreCopy, AlgoChoice::FreezeCopy, AlgoChoice::FreezeCopyWait, AlgoChoice::StopCopy])]
    pub algorithms: Vec<AlgoChoice>,
    /// Synthetic: flow arrival rate (flows/s, Poisson).
    #[arg(long, default_value_t = 150.0)]
    pub rate: f64,
    /// Synthetic: flow-size distribution.
    #[arg(long, value_enum, default_value_t = SizeDist::Pareto)]
    pub dist: SizeDist,
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
    fn validate(&self) -> Result<()> {
        let pos = |x: f64| x.is_finite() && x > 0.0;
        let nonneg = |x: f64| x.is_finite() && x >= 0.0;
        if !pos(self.rate) || self.rate > 1e6 {
            bail!("--rate must be in (0, 1e6]");
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

    fn workloads(&self) -> Result<Vec<WorkloadChoice>> {
        let w = self.workload.unwrap_or(if self.pcap.is_some() {
            WorkloadChoice::Both
        } else {
            WorkloadChoice::Synthetic
        });
        if w != WorkloadChoice::Synthetic && self.pcap.is_none() {
            bail!("--workload {w:?} needs --pcap FILE");
        }
        Ok(match w {
            WorkloadChoice::Both => vec![WorkloadChoice::Synthetic, WorkloadChoice::Replay],
            w => vec![w],
        })
    }

    fn params(&self, algo: AlgoChoice) -> Params {
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

    fn mig_config(&self) -> MigrationConfig {
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

/// A duration from seconds, clamped to [0, 1e9 s] (never panics).
fn secs(x: f64) -> Duration {
    if x.is_finite() && x > 0.0 {
        Duration::from_secs_f64(x.min(1e9))
    } else {
        Duration::ZERO
    }
}

fn ms_between(later: Instant, earlier: Instant) -> f64 {
    later.saturating_since(earlier).as_secs_f64() * 1e3
}

// ------------------------------------------------------------------------------ packets

/// Builds an IPv4 packet (TCP or UDP) carrying `[flow (4 bytes), kind]`.
#[allow(clippy::too_many_arguments)]
fn build_packet(
    proto: u8,
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    flow: u32,
    kind: u8,
) -> Result<Vec<u8>> {
    let mut payload = [0u8; 5];
    payload[..4].copy_from_slice(&flow.to_be_bytes());
    payload[4] = kind;
    let b = etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64);
    let mut out = Vec::with_capacity(64);
    if proto == TCP {
        let mut t = b.tcp(sport, dport, 1, 65535);
        if flags & SYN != 0 {
            t = t.syn();
        }
        if flags & FIN != 0 {
            t = t.fin();
        }
        if flags & RST != 0 {
            t = t.rst();
        }
        if flags & PSH != 0 {
            t = t.psh();
        }
        if flags & ACK != 0 {
            t = t.ack(1);
        }
        t.write(&mut out, &payload)?;
    } else {
        b.udp(sport, dport).write(&mut out, &payload)?;
    }
    Ok(out)
}

/// What a translated packet tells the driver: protocol, source address and port, flow, kind.
fn parse_output(pkt: &[u8]) -> Option<(u8, Ipv4Addr, u16, u32, u8)> {
    let ihl = (*pkt.first()? as usize & 0x0f) * 4;
    let proto = *pkt.get(9)?;
    let src = Ipv4Addr::new(*pkt.get(12)?, *pkt.get(13)?, *pkt.get(14)?, *pkt.get(15)?);
    let sport = u16::from_be_bytes([*pkt.get(ihl)?, *pkt.get(ihl + 1)?]);
    let off = match proto {
        TCP => ihl + (*pkt.get(ihl + 12)? as usize >> 4) * 4,
        UDP => ihl + 8,
        _ => return None,
    };
    let p = pkt.get(off..off + 5)?;
    Some((
        proto,
        src,
        sport,
        u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
        p[4],
    ))
}

fn subscriber_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be_bytes(SUB_NET) + 1 + i % MAX_SUBSCRIBERS)
}

fn server_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(SERVER_NET + 1 + i % MAX_SERVERS)
}

// ------------------------------------------------------------------------------- flows

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Syn,
    Data,
    Fin,
    Keepalive,
    Done,
    /// Driven by the trace.
    Replay,
}

#[derive(Clone, Debug)]
struct Flow {
    proto: u8,
    sub: Ipv4Addr,
    sport: u16,
    server: Ipv4Addr,
    dport: u16,
    ext_port: Option<u16>,
    stage: Stage,
    /// Data packets still to send.
    left: u32,
    persistent: bool,
    /// The synthetic server answers this flow's packets.
    respond: bool,
    /// Replay: times of the flow's first and last packets, from the trace's start.
    first: Duration,
    last: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Next synthetic flow arrival.
    Arrival,
    /// A flow's next outbound packet (synthetic).
    Out(u32),
    /// A server's reply to a flow (flags).
    In(u32, u8),
    /// The next packet of the trace.
    Replay,
}

/// The synthetic workload's parameters and random stream.
struct Synth {
    rng: ChaCha8Rng,
    rate: f64,
    dist: SizeDist,
    alpha: f64,
    min_packets: u32,
    max_packets: u32,
    zipf_cdf: Vec<f64>,
    flow_pps: f64,
    udp_share: f64,
    keepalive_s: f64,
    subscribers: u32,
    next_port: Vec<u16>,
}

impl Synth {
    fn new(a: &PrecopyArgs) -> Synth {
        let zipf_cdf = if a.dist == SizeDist::Zipf {
            let ranks = (a.max_packets / a.min_packets).clamp(1, MAX_ZIPF_RANKS);
            let mut acc = 0.0;
            let mut cdf: Vec<f64> = (1..=ranks)
                .map(|k| {
                    acc += (k as f64).powf(-a.zipf_s);
                    acc
                })
                .collect();
            for c in &mut cdf {
                *c /= acc;
            }
            cdf
        } else {
            Vec::new()
        };
        Synth {
            rng: ChaCha8Rng::seed_from_u64(a.seed ^ 0x5157_4e54),
            rate: a.rate,
            dist: a.dist,
            alpha: a.alpha,
            min_packets: a.min_packets,
            max_packets: a.max_packets,
            zipf_cdf,
            flow_pps: a.flow_pps,
            udp_share: a.udp_share,
            keepalive_s: a.keepalive_s,
            subscribers: a.subscribers,
            next_port: vec![20_000; a.subscribers as usize],
        }
    }

    fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    fn exp(&mut self, mean_s: f64) -> Duration {
        secs(-(1.0 - self.uniform()).ln() * mean_s)
    }

    fn size(&mut self) -> u32 {
        let u = self.uniform();
        let x = match self.dist {
            SizeDist::Pareto => (self.min_packets as f64 / (1.0 - u).powf(1.0 / self.alpha)).ceil(),
            SizeDist::Zipf => {
                let k = self.zipf_cdf.partition_point(|&c| c < u) + 1;
                k as f64 * self.min_packets as f64
            }
        };
        if x.is_finite() {
            (x as u64).clamp(1, self.max_packets as u64) as u32
        } else {
            self.max_packets
        }
    }

    /// A new flow from a random subscriber (fresh source port) to a random server.
    fn flow(&mut self, persistent: bool) -> Flow {
        let s = self.rng.random_range(0..self.subscribers);
        let port = &mut self.next_port[s as usize];
        let sport = *port;
        *port = if *port >= 60_999 { 20_000 } else { *port + 1 };
        let udp = !persistent && self.rng.random_bool(self.udp_share);
        let server = server_addr(self.rng.random_range(0..4096));
        let (proto, dport, stage) = if udp {
            (
                UDP,
                if self.rng.random_bool(0.5) { 443 } else { 53 },
                Stage::Data,
            )
        } else {
            (
                TCP,
                if self.rng.random_bool(0.8) { 443 } else { 80 },
                Stage::Syn,
            )
        };
        Flow {
            proto,
            sub: subscriber_addr(s),
            sport,
            server,
            dport,
            ext_port: None,
            stage,
            left: if persistent { 0 } else { self.size() },
            persistent,
            respond: true,
            first: Duration::ZERO,
            last: Duration::ZERO,
        }
    }
}

// ------------------------------------------------------------------------------ replay

/// One packet read from a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TracePacket {
    /// Time since the trace's first packet.
    ts: Duration,
    proto: u8,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
}

/// Counters of reading a trace.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct TraceStats {
    /// Packet records read.
    pub records: u64,
    /// TCP or UDP over IPv4, used.
    pub used: u64,
    /// Not IPv4 TCP/UDP (other protocols, IPv6, ARP, non-first fragments).
    pub skipped_other: u64,
    /// Could not be parsed (truncated headers).
    pub skipped_malformed: u64,
    /// Stopped at `--pcap-max-packets`.
    pub truncated: bool,
    /// Trace duration (s).
    pub duration_s: f64,
}

/// Reads a pcap file's TCP/UDP packets (5-tuple, flags, relative timestamp), in time order.
pub(crate) fn read_pcap(path: &Path, max: u64) -> Result<(Vec<TracePacket>, TraceStats)> {
    use pcap_file::DataLink;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut r = pcap_file::pcap::PcapReader::new(std::io::BufReader::new(f))
        .with_context(|| format!("{}: not a pcap file", path.display()))?;
    let link = r.header().datalink;
    let ip_only = match link {
        DataLink::ETHERNET => false,
        DataLink::RAW | DataLink::IPV4 => true,
        other => bail!(
            "{}: unsupported link type {other:?} (Ethernet, RAW or IPV4)",
            path.display()
        ),
    };
    let mut st = TraceStats::default();
    let mut out = Vec::new();
    let mut first: Option<Duration> = None;
    while let Some(p) = r.next_packet() {
        let p = p.with_context(|| format!("{}: bad packet record", path.display()))?;
        if st.records >= max {
            st.truncated = true;
            break;
        }
        st.records += 1;
        let parsed = if ip_only {
            etherparse::LaxSlicedPacket::from_ip(&p.data).ok()
        } else {
            etherparse::LaxSlicedPacket::from_ethernet(&p.data).ok()
        };
        let Some(sp) = parsed else {
            st.skipped_malformed += 1;
            continue;
        };
        let Some(etherparse::LaxNetSlice::Ipv4(ip)) = sp.net else {
            st.skipped_other += 1;
            continue;
        };
        let h = ip.header();
        let pl = ip.payload();
        let proto = pl.ip_number.0;
        if (proto != TCP && proto != UDP) || h.fragments_offset().value() != 0 {
            st.skipped_other += 1;
            continue;
        }
        let b = pl.payload;
        let need = if proto == TCP { 14 } else { 4 };
        if b.len() < need {
            st.skipped_malformed += 1;
            continue;
        }
        let sport = u16::from_be_bytes([b[0], b[1]]);
        let dport = u16::from_be_bytes([b[2], b[3]]);
        let flags = if proto == TCP { b[13] } else { 0 };
        let t0 = *first.get_or_insert(p.timestamp);
        out.push(TracePacket {
            ts: p.timestamp.saturating_sub(t0),
            proto,
            src: SocketAddrV4::new(h.source_addr(), sport),
            dst: SocketAddrV4::new(h.destination_addr(), dport),
            flags,
        });
        st.used += 1;
    }
    // Captures can be slightly out of order; keep arrival order among equal times.
    out.sort_by_key(|p| p.ts);
    st.duration_s = out.last().map_or(0.0, |p| p.ts.as_secs_f64());
    Ok((out, st))
}

/// A flow's protocol, initiator and responder.
pub(crate) type FlowTuple = (u8, SocketAddrV4, SocketAddrV4);

/// A trace turned into flows of the migrated group.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReplayPlan {
    flows: Vec<Flow>,
    /// The trace's original (initiator, responder) per flow.
    orig: Vec<FlowTuple>,
    /// (time, flow, outbound, TCP flags), in time order.
    events: Vec<(Duration, u32, bool, u8)>,
    stats: ReplayStats,
}

/// What the mapping of a trace to the group did.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ReplayStats {
    pub flows: u64,
    pub tcp_flows: u64,
    pub udp_flows: u64,
    /// TCP flows whose capture began mid-stream (a SYN was synthesized).
    pub synthesized_syn: u64,
    /// Distinct initiator addresses (mapped onto `--subscribers` addresses).
    pub initiators: u64,
    /// Distinct responder addresses.
    pub responders: u64,
    /// Initiator endpoints whose port was moved to avoid a collision.
    pub ports_moved: u64,
    /// Flows dropped because no port was free (never in practice).
    pub flows_unmapped: u64,
}

/// Maps a trace's flows onto the group, deterministically (see the module docs).
pub(crate) fn plan_replay(pkts: &[TracePacket], subscribers: u32) -> ReplayPlan {
    let subscribers = subscribers.clamp(1, MAX_SUBSCRIBERS);
    let mut plan = ReplayPlan::default();
    // Canonical 5-tuple -> (flow, initiator); `None` for a flow that could not be mapped.
    let mut by_key: HashMap<(u8, SocketAddrV4, SocketAddrV4), Option<(u32, SocketAddrV4)>> =
        HashMap::new();
    let mut clients: HashMap<Ipv4Addr, u32> = HashMap::new();
    let mut servers: HashMap<Ipv4Addr, u32> = HashMap::new();
    let mut endpoints: HashMap<(u8, SocketAddrV4), (Ipv4Addr, u16)> = HashMap::new();
    let mut taken: HashSet<(u8, Ipv4Addr, u16)> = HashSet::new();
    for p in pkts {
        let key = (p.proto, p.src.min(p.dst), p.src.max(p.dst));
        let entry = match by_key.get(&key) {
            Some(e) => *e,
            None => {
                let synack = p.proto == TCP && p.flags & (SYN | ACK) == SYN | ACK;
                let (init, resp) = if synack {
                    (p.dst, p.src)
                } else {
                    (p.src, p.dst)
                };
                let n = clients.len() as u32;
                let ci = *clients.entry(*init.ip()).or_insert(n);
                let n = servers.len() as u32;
                let si = *servers.entry(*resp.ip()).or_insert(n);
                let sub = subscriber_addr(ci % subscribers);
                let mapped = match endpoints.get(&(p.proto, init)) {
                    Some(m) => Some(*m),
                    None => {
                        let mut port = init.port().max(1024);
                        let mut found = None;
                        for _ in 0..=(65_535 - 1024) {
                            if taken.insert((p.proto, sub, port)) {
                                found = Some(port);
                                break;
                            }
                            port = if port == 65_535 { 1024 } else { port + 1 };
                        }
                        found.map(|port| {
                            if port != init.port() {
                                plan.stats.ports_moved += 1;
                            }
                            endpoints.insert((p.proto, init), (sub, port));
                            (sub, port)
                        })
                    }
                };
                let e = match mapped {
                    Some((sub, sport)) if plan.flows.len() < MAX_FLOWS => {
                        let id = plan.flows.len() as u32;
                        plan.flows.push(Flow {
                            proto: p.proto,
                            sub,
                            sport,
                            server: server_addr(si),
                            dport: resp.port(),
                            ext_port: None,
                            stage: Stage::Replay,
                            left: 0,
                            persistent: false,
                            respond: false,
                            first: p.ts,
                            last: Duration::ZERO,
                        });
                        plan.orig.push((p.proto, init, resp));
                        plan.stats.flows += 1;
                        if p.proto == TCP {
                            plan.stats.tcp_flows += 1;
                            if p.flags & SYN == 0 || synack {
                                plan.stats.synthesized_syn += 1;
                                plan.events.push((p.ts, id, true, SYN));
                            }
                        } else {
                            plan.stats.udp_flows += 1;
                        }
                        Some((id, init))
                    }
                    _ => {
                        plan.stats.flows_unmapped += 1;
                        None
                    }
                };
                by_key.insert(key, e);
                e
            }
        };
        if let Some((id, init)) = entry {
            plan.events.push((p.ts, id, p.src == init, p.flags));
            if let Some(f) = plan.flows.get_mut(id as usize) {
                f.last = p.ts;
            }
        }
    }
    plan.stats.initiators = clients.len() as u64;
    plan.stats.responders = servers.len() as u64;
    plan
}

// --------------------------------------------------------------------------- the driver

/// Driver-side counters of a run.
#[derive(Clone, Debug, Default, Serialize)]
struct DriverStats {
    /// Packets the switch handed to an instance.
    offered: u64,
    /// Translated packets towards the outside.
    to_outside: u64,
    /// Translated packets towards the subscribers.
    to_inside: u64,
    /// Packets dropped by an instance, by NAT drop reason.
    dropped: BTreeMap<&'static str, u64>,
    /// Server replies not sent because the flow's external port was unknown (its outbound
    /// packets never got out), and replayed inbound packets likewise.
    inbound_unaddressable: u64,
    /// Translated packets the driver could not parse (0 expected).
    unparsed: u64,
    /// Packets chained between instances.
    chained: u64,
    /// Transfer frames and their bytes (both directions).
    frames: u64,
    frame_bytes: u64,
}

impl DriverStats {
    fn minus(&self, o: &DriverStats) -> DriverStats {
        let mut dropped = self.dropped.clone();
        for (k, v) in &o.dropped {
            if let Some(x) = dropped.get_mut(k) {
                *x -= *v;
            }
        }
        dropped.retain(|_, v| *v > 0);
        DriverStats {
            offered: self.offered - o.offered,
            to_outside: self.to_outside - o.to_outside,
            to_inside: self.to_inside - o.to_inside,
            dropped,
            inbound_unaddressable: self.inbound_unaddressable - o.inbound_unaddressable,
            unparsed: self.unparsed - o.unparsed,
            chained: self.chained - o.chained,
            frames: self.frames - o.frames,
            frame_bytes: self.frame_bytes - o.frame_bytes,
        }
    }
}

/// What the driver saw of the migration.
#[derive(Default)]
struct MigLog {
    start: Instant,
    rounds: Vec<(Instant, RoundOut)>,
    idle: Vec<(Instant, u32, u32)>,
    phases: Vec<(Instant, InstanceId, Phase)>,
    ready: Option<Instant>,
    src_done: Option<Instant>,
    dst_done: Option<Instant>,
    aborted: bool,
}

struct Link {
    q: VecDeque<(Instant, Vec<u8>)>,
    free_at: Instant,
}

struct Sim {
    a: Instance,
    b: Instance,
    now: Instant,
    /// The switch sends the group to B.
    to_b: bool,
    /// Transfer links: [A->B, B->A].
    links: [Link; 2],
    /// Chain paths: [A->B, B->A].
    chains: [VecDeque<(Instant, Vec<u8>)>; 2],
    cutover: Option<(Instant, MigrationId)>,
    delay: Duration,
    ns_per_byte: f64,
    barrier: Duration,
    server_rtt: Duration,
    synth: Option<Synth>,
    replay: Option<Rc<ReplayPlan>>,
    cursor: usize,
    flows: Vec<Flow>,
    heap: BinaryHeap<Reverse<(Instant, u64, Ev)>>,
    seq: u64,
    stats: DriverStats,
    log: MigLog,
}

/// Time origin of every run (virtual).
const T0: Instant = Instant::from_secs(1);

fn nat_config(groups: Vec<GroupConfig>, seed: u64) -> NatConfig {
    NatConfig {
        groups,
        block_size: 64,
        max_blocks_per_subscriber: 8,
        timeouts: Timeouts {
            tcp_established: Duration::from_secs(2 * 3600 + 4 * 60),
            tcp_transitory: Duration::from_secs(240),
            udp: Duration::from_secs(120),
            icmp: Duration::from_secs(60),
        },
        rng_seed: seed,
        hash_seed: seed ^ 0x9e37_79b9_7f4a_7c15,
        ..NatConfig::default()
    }
}

impl Sim {
    fn new(args: &PrecopyArgs, replay: Option<Rc<ReplayPlan>>) -> Result<Sim> {
        let subs = flowshift_nat::prefix(Ipv4Addr::from(SUB_NET), SUB_LEN)
            .ok_or_else(|| anyhow!("bad subscriber prefix"))?;
        let b_subs = flowshift_nat::prefix(Ipv4Addr::new(100, 65, 0, 0), 24)
            .ok_or_else(|| anyhow!("bad prefix"))?;
        let ca = nat_config(
            vec![GroupConfig {
                external: EXT,
                subscribers: subs,
            }],
            args.seed,
        );
        let cb = nat_config(
            vec![GroupConfig {
                external: B_EXT,
                subscribers: b_subs,
            }],
            args.seed ^ 0x55,
        );
        let mcfg = args.mig_config();
        let a = Instance::new(A, Nat::new(ca)?, mcfg.clone())?;
        let b = Instance::new(B, Nat::new(cb)?, mcfg)?;
        let link = || Link {
            q: VecDeque::new(),
            free_at: T0,
        };
        let mut sim = Sim {
            a,
            b,
            now: T0,
            to_b: false,
            links: [link(), link()],
            chains: [VecDeque::new(), VecDeque::new()],
            cutover: None,
            delay: Duration::from_micros(args.delay_us),
            ns_per_byte: if args.bandwidth_mbps > 0.0 {
                8e3 / args.bandwidth_mbps
            } else {
                0.0
            },
            barrier: Duration::from_micros(args.barrier_us),
            server_rtt: secs(args.server_rtt_ms / 1e3),
            synth: None,
            replay: None,
            cursor: 0,
            flows: Vec::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            stats: DriverStats::default(),
            log: MigLog::default(),
        };
        match replay {
            Some(plan) => {
                sim.flows = plan.flows.clone();
                if let Some(&(t, ..)) = plan.events.first() {
                    sim.schedule(T0 + t, Ev::Replay);
                }
                sim.replay = Some(plan);
            }
            None => {
                let mut s = Synth::new(args);
                let open = secs(PERSISTENT_OPEN_S.min(args.warmup_s.max(0.001)));
                for _ in 0..args.persistent {
                    let f = s.flow(true);
                    let at = T0 + secs(s.uniform() * open.as_secs_f64());
                    sim.flows.push(f);
                    let id = (sim.flows.len() - 1) as u32;
                    sim.schedule(at, Ev::Out(id));
                }
                let first = T0 + s.exp(1.0 / s.rate);
                sim.synth = Some(s);
                sim.schedule(first, Ev::Arrival);
            }
        }
        Ok(sim)
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    fn inst(&mut self, id: InstanceId) -> &mut Instance {
        if id == A { &mut self.a } else { &mut self.b }
    }

    /// The switch delivers a packet of the group.
    fn inject(&mut self, pkt: Vec<u8>) {
        self.stats.offered += 1;
        let now = self.now;
        let t = if self.to_b { B } else { A };
        self.inst(t).handle_packet(now, pkt, Ingress::Switch);
        self.pump();
    }

    fn send_flow(&mut self, f: u32, out: bool, flags: u8, kind: u8) -> Result<()> {
        let Some(fl) = self.flows.get(f as usize) else {
            return Ok(());
        };
        let pkt = if out {
            build_packet(
                fl.proto, fl.sub, fl.sport, fl.server, fl.dport, flags, f, kind,
            )?
        } else {
            let Some(ext_port) = fl.ext_port else {
                self.stats.inbound_unaddressable += 1;
                return Ok(());
            };
            build_packet(fl.proto, fl.server, fl.dport, EXT, ext_port, flags, f, kind)?
        };
        self.inject(pkt);
        Ok(())
    }

    /// Drains every instance's outputs, frames and events (the driver contract).
    fn pump(&mut self) {
        loop {
            let mut progress = false;
            for id in [A, B] {
                while let Some(o) = self.inst(id).poll_output() {
                    progress = true;
                    self.on_output(id, o);
                }
                while let Some((to, bytes)) = self.inst(id).poll_transmit() {
                    progress = true;
                    self.on_frame(id, to, bytes);
                }
                while let Some(e) = self.inst(id).poll_event() {
                    progress = true;
                    self.on_event(id, e);
                }
            }
            if !progress {
                break;
            }
        }
    }

    fn on_output(&mut self, from: InstanceId, o: Output) {
        match o {
            Output::Send { pkt, dir } => {
                match dir {
                    Direction::ToOutside => self.stats.to_outside += 1,
                    Direction::ToInside => {
                        self.stats.to_inside += 1;
                        return;
                    }
                }
                let Some((proto, src, sport, flow, kind)) = parse_output(&pkt) else {
                    self.stats.unparsed += 1;
                    return;
                };
                let Some(fl) = self.flows.get_mut(flow as usize) else {
                    self.stats.unparsed += 1;
                    return;
                };
                if src != EXT || fl.proto != proto {
                    self.stats.unparsed += 1;
                    return;
                }
                fl.ext_port = Some(sport);
                if fl.respond && kind < K_REPLY {
                    let flags = match (proto, kind) {
                        (UDP, _) => 0,
                        (_, K_SYN) => SYN | ACK,
                        (_, K_FIN) => FIN | ACK,
                        _ => ACK,
                    };
                    let at = self.now + self.server_rtt;
                    self.schedule(at, Ev::In(flow, flags));
                }
            }
            Output::Chain { to, pkt } => {
                self.stats.chained += 1;
                if to == from {
                    return;
                }
                // Chain paths: [A->B, B->A].
                let i = usize::from(from == B);
                let at = self.now + self.delay;
                self.chains[i].push_back((at, pkt));
            }
            Output::Dropped { reason, .. } => {
                *self.stats.dropped.entry(reason.label()).or_default() += 1;
            }
        }
    }

    fn on_frame(&mut self, from: InstanceId, to: InstanceId, bytes: Vec<u8>) {
        if from == to {
            return;
        }
        self.stats.frames += 1;
        self.stats.frame_bytes += bytes.len() as u64;
        let i = usize::from(from == B);
        let ser = Duration::from_nanos((bytes.len() as f64 * self.ns_per_byte) as u64);
        let link = &mut self.links[i];
        let done = link.free_at.max(self.now) + ser;
        link.free_at = done;
        link.q.push_back((done + self.delay, bytes));
    }

    fn on_event(&mut self, on: InstanceId, e: MigrationEvent) {
        let now = self.now;
        match e {
            MigrationEvent::PrecopyRound {
                round,
                copied,
                dirty,
                new,
                dead,
                last,
                ..
            } => self.log.rounds.push((
                now,
                RoundOut {
                    round,
                    at_ms: 0.0,
                    copied,
                    dirty,
                    new,
                    dead,
                    last,
                },
            )),
            MigrationEvent::IdleProgress {
                remaining, expired, ..
            } => self.log.idle.push((now, remaining, expired)),
            MigrationEvent::Phase { phase, .. } => self.log.phases.push((now, on, phase)),
            MigrationEvent::ReadyForCutover { migration, .. } => {
                self.log.ready = Some(now);
                // The controller redirects the switch now and confirms after the barrier.
                self.to_b = true;
                self.cutover = Some((now + self.barrier, migration));
            }
            MigrationEvent::Completed { .. } => {
                if on == A {
                    self.log.src_done = Some(now);
                } else {
                    self.log.dst_done = Some(now);
                }
            }
            MigrationEvent::Aborted { .. } => self.log.aborted = true,
            MigrationEvent::Incoming { .. } => {}
        }
    }

    fn fire(&mut self, ev: Ev) -> Result<()> {
        match ev {
            Ev::Arrival => {
                let Some(s) = self.synth.as_mut() else {
                    return Ok(());
                };
                let f = s.flow(false);
                let next = s.exp(1.0 / s.rate);
                if self.flows.len() >= MAX_FLOWS {
                    bail!("more than {MAX_FLOWS} flows: lower --rate or the run length");
                }
                self.flows.push(f);
                let id = (self.flows.len() - 1) as u32;
                let now = self.now;
                self.schedule(now, Ev::Out(id));
                self.schedule(now + next, Ev::Arrival);
            }
            Ev::Out(id) => self.fire_out(id)?,
            Ev::In(id, flags) => self.send_flow(id, false, flags, K_REPLY)?,
            Ev::Replay => {
                let Some(plan) = self.replay.clone() else {
                    return Ok(());
                };
                if let Some(&(_, flow, out, flags)) = plan.events.get(self.cursor) {
                    self.cursor += 1;
                    self.send_flow(flow, out, flags, K_REPLAY)?;
                }
                if let Some(&(t, ..)) = plan.events.get(self.cursor) {
                    self.schedule(T0 + t, Ev::Replay);
                }
            }
        }
        Ok(())
    }

    /// A synthetic flow's next outbound packet, and the one after it scheduled.
    fn fire_out(&mut self, id: u32) -> Result<()> {
        let Some(fl) = self.flows.get(id as usize) else {
            return Ok(());
        };
        let (stage, persistent, tcp) = (fl.stage, fl.persistent, fl.proto == TCP);
        let Some(s) = self.synth.as_mut() else {
            return Ok(());
        };
        let gap = s.exp(1.0 / s.flow_pps);
        let keep = s.exp(s.keepalive_s);
        let now = self.now;
        let (flags, kind, next_stage, next_at) = match stage {
            Stage::Syn => (
                SYN,
                K_SYN,
                if persistent {
                    Stage::Keepalive
                } else {
                    Stage::Data
                },
                Some(now + self.server_rtt + if persistent { keep } else { gap }),
            ),
            Stage::Data => {
                let fl = &mut self.flows[id as usize];
                fl.left = fl.left.saturating_sub(1);
                let next = match (fl.left, tcp) {
                    (0, true) => Stage::Fin,
                    (0, false) => Stage::Done,
                    _ => Stage::Data,
                };
                let at = (next != Stage::Done).then_some(now + gap);
                (if tcp { ACK | PSH } else { 0 }, K_DATA, next, at)
            }
            Stage::Fin => (FIN | ACK, K_FIN, Stage::Done, None),
            Stage::Keepalive => (ACK | PSH, K_KEEPALIVE, Stage::Keepalive, Some(now + keep)),
            Stage::Done | Stage::Replay => return Ok(()),
        };
        self.flows[id as usize].stage = next_stage;
        if let Some(at) = next_at {
            self.schedule(at, Ev::Out(id));
        }
        self.send_flow(id, true, flags, kind)
    }

    /// Runs events in time order up to `until`, or until `stop` holds (checked after every
    /// step).
    fn run_until(&mut self, until: Instant, stop: impl Fn(&Sim) -> bool) -> Result<()> {
        let mut same_time = 0u64;
        for _ in 0..MAX_STEPS {
            if stop(self) {
                return Ok(());
            }
            let t_wl = self.heap.peek().map(|Reverse((t, ..))| *t);
            let t_chain = [
                self.chains[0].front().map(|x| x.0),
                self.chains[1].front().map(|x| x.0),
            ];
            let t_link = [
                self.links[0].q.front().map(|x| x.0),
                self.links[1].q.front().map(|x| x.0),
            ];
            let t_cut = self.cutover.map(|c| c.0);
            let ta = self.a.poll_timeout();
            let tb = self.b.poll_timeout();
            let next = [
                t_chain[0],
                t_chain[1],
                t_link[0],
                t_link[1],
                t_cut,
                Some(ta),
                Some(tb),
                t_wl,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Instant::MAX);
            if next > until {
                self.now = self.now.max(until);
                return Ok(());
            }
            if next <= self.now {
                same_time += 1;
                if same_time > MAX_STEPS_AT_ONE_TIME {
                    bail!("no progress of time at {:?} (livelock)", self.now);
                }
            } else {
                same_time = 0;
            }
            self.now = self.now.max(next);
            let now = self.now;
            if let Some(i) = (0..2).find(|&i| t_chain[i] == Some(next)) {
                if let Some((_, pkt)) = self.chains[i].pop_front() {
                    let (to, from) = if i == 0 { (B, A) } else { (A, B) };
                    self.inst(to)
                        .handle_packet(now, pkt, Ingress::Chain { from });
                }
            } else if let Some(i) = (0..2).find(|&i| t_link[i] == Some(next)) {
                if let Some((_, bytes)) = self.links[i].q.pop_front() {
                    let (to, from) = if i == 0 { (B, A) } else { (A, B) };
                    // A malformed frame is refused and counted by the instance.
                    let _ = self.inst(to).handle_transfer(now, from, &bytes);
                }
            } else if t_cut == Some(next) {
                if let Some((_, mig)) = self.cutover.take() {
                    self.a
                        .cutover_done(now, mig)
                        .context("cutover_done refused")?;
                }
            } else if ta == next {
                self.a.handle_timeout(now);
            } else if tb == next {
                self.b.handle_timeout(now);
            } else if let Some(Reverse((_, _, ev))) = self.heap.pop() {
                self.fire(ev)?;
            }
            self.pump();
        }
        bail!("step bound {MAX_STEPS} exceeded at {:?}", self.now)
    }

    fn finished(&self) -> bool {
        self.log.aborted || (self.log.src_done.is_some() && self.log.dst_done.is_some())
    }
}

// ------------------------------------------------------------------------------ results

/// One pre-copy round.
#[derive(Clone, Copy, Debug, Serialize)]
struct RoundOut {
    round: u32,
    /// When the round was acknowledged (ms after the migration started).
    at_ms: f64,
    copied: u32,
    dirty: u32,
    new: u32,
    dead: u32,
    last: bool,
}

/// The table's make-up when the migration starts.
#[derive(Clone, Debug, Default, Serialize)]
struct TableMix {
    /// Mappings of the group on A.
    mappings: u32,
    /// Sessions of the group on A.
    sessions: u32,
    /// Flows that will still send (synthetic: started, not finished; replay: packets before
    /// and after the start), long-lived ones excluded.
    active_flows: u64,
    /// Long-lived (persistent) connections.
    persistent_flows: u64,
    /// Flows that sent their last packet within the last 4 min (TCP) or 2 min (UDP): their
    /// mappings linger and only wait to expire.
    finished_lingering: u64,
}

/// The results of one algorithm on one workload.
#[derive(Clone, Debug, Serialize)]
struct RunOut {
    algorithm: &'static str,
    /// The migration's parameters.
    params: Params,
    completed: bool,
    aborted: bool,
    /// Migration start (s of virtual time since the run began).
    start_s: f64,
    table_at_start: TableMix,
    /// Start to the source's `Completed` (ms).
    duration_ms: Option<f64>,
    /// Start to `ReadyForCutover` (ms): the source holds nothing more.
    ready_ms: Option<f64>,
    /// Phase changes on the source: (ms after start, phase).
    phases: Vec<(f64, Phase)>,
    /// Pre-copy rounds, the final halted round last.
    rounds: Vec<RoundOut>,
    /// Mappings sent: over all rounds (pre-copy), or moved (the others).
    copied_total: u64,
    /// Size of the final stop-and-copy (pre-copy's halted round; stop-copy: everything).
    final_copy: Option<u32>,
    /// Time the group was halted (stop-copy, pre-copy's final round), ms.
    downtime_ms: f64,
    /// Freeze-copy: idle phase length (ms).
    idle_ms: Option<f64>,
    /// Freeze-copy: mappings that expired on the source during prepare and idle.
    states_expired_idle: u32,
    /// Mappings moved to B.
    states_transferred: u32,
    /// Longest freeze of a mapping or halt of the group (ms).
    max_freeze_ms: f64,
    /// Packets lost because of the migration.
    packets_lost: u64,
    /// Packets buffered at the source (freeze) or held at the destination (cutover).
    packets_buffered: u64,
    /// Protocol bytes the source sent.
    bytes_transferred: u64,
    /// Freeze-copy idle samples: (s after start, mappings remaining on A, expired so far).
    idle_samples: Vec<(f64, u32, u32)>,
    /// Driver counters from the migration's start to its end.
    traffic_during_migration: DriverStats,
    /// Driver counters of the whole run.
    traffic_total: DriverStats,
    /// The source's full report.
    source_report: Option<MigrationReport>,
}

/// The results of one workload.
#[derive(Clone, Debug, Serialize)]
struct WorkloadOut {
    name: &'static str,
    description: String,
    flows_created: u64,
    trace: Option<TraceStats>,
    replay: Option<ReplayStats>,
    runs: Vec<RunOut>,
    /// Pre-copy at other transfer-link rates.
    sweep: Vec<SweepPoint>,
}

/// Pre-copy at one transfer-link rate.
#[derive(Clone, Debug, Serialize)]
struct SweepPoint {
    bandwidth_mbps: f64,
    completed: bool,
    rounds: Vec<RoundOut>,
    copied_total: u64,
    final_copy: Option<u32>,
    downtime_ms: f64,
    packets_lost: u64,
    duration_ms: Option<f64>,
    bytes_transferred: u64,
}

/// The whole report (`precopy.json`).
#[derive(Clone, Debug, Serialize)]
struct Report {
    experiment: &'static str,
    seed: u64,
    args: PrecopyArgs,
    /// Defaults of the transfer engine in force, as used.
    migration_config: MigrationConfig,
    workloads: Vec<WorkloadOut>,
}

fn table_mix(sim: &Sim) -> TableMix {
    let now = sim.now;
    let mut m = TableMix::default();
    if let Some(g) = sim.a.nat().group_id(EXT)
        && let Ok(s) = sim.a.nat().group_stats(g)
    {
        m.mappings = s.mappings;
        m.sessions = s.sessions;
    }
    let replay = sim.replay.is_some();
    for f in &sim.flows {
        if f.persistent {
            m.persistent_flows += 1;
            continue;
        }
        let active = if replay {
            let t = now.saturating_since(T0);
            f.first <= t && f.last > t
        } else {
            !matches!(f.stage, Stage::Done) && f.ext_port.is_some()
        };
        if active {
            m.active_flows += 1;
        }
    }
    m.finished_lingering = u64::from(m.mappings)
        .saturating_sub(m.active_flows)
        .saturating_sub(m.persistent_flows);
    m
}

/// Runs one algorithm on one workload: warm up to `start`, migrate, run until both sides
/// completed (or `start + limit`).
fn run_one(
    args: &PrecopyArgs,
    replay: Option<Rc<ReplayPlan>>,
    start: Duration,
    limit: Duration,
    algo: AlgoChoice,
) -> Result<(RunOut, u64)> {
    let mut sim = Sim::new(args, replay)?;
    let t_start = T0 + start;
    sim.run_until(t_start, |_| false)?;
    let mix = table_mix(&sim);
    let before = sim.stats.clone();
    let g = sim
        .a
        .nat()
        .group_id(EXT)
        .ok_or_else(|| anyhow!("group missing on A"))?;
    let now = sim.now;
    sim.log.start = now;
    let id = sim
        .a
        .start_migration(now, g, B, algo.algorithm(), args.params(algo))
        .context("start_migration")?;
    sim.pump();
    sim.run_until(t_start + limit, Sim::finished)?;
    let during = sim.stats.minus(&before);
    let rep = sim.a.report(id);
    let start_i = sim.log.start;
    let rounds: Vec<RoundOut> = sim
        .log
        .rounds
        .iter()
        .map(|(t, r)| RoundOut {
            at_ms: ms_between(*t, start_i),
            ..*r
        })
        .collect();
    let phases: Vec<(f64, Phase)> = sim
        .log
        .phases
        .iter()
        .filter(|(_, on, _)| *on == A)
        .map(|(t, _, p)| (ms_between(*t, start_i), *p))
        .collect();
    let idle_ms = rep.as_ref().and_then(|r| {
        r.phases
            .iter()
            .find(|p| p.name == Phase::Idle)
            .map(|p| p.end_ms.unwrap_or(p.start_ms) - p.start_ms)
    });
    let final_copy = match algo {
        AlgoChoice::StopCopy => rep.as_ref().map(|r| r.states_transferred),
        _ => rounds.iter().find(|r| r.last).map(|r| r.copied),
    };
    let out = RunOut {
        algorithm: algo.name(),
        params: args.params(algo),
        completed: sim.log.src_done.is_some() && sim.log.dst_done.is_some(),
        aborted: sim.log.aborted,
        start_s: start.as_secs_f64(),
        table_at_start: mix,
        duration_ms: sim.log.src_done.map(|t| ms_between(t, start_i)),
        ready_ms: sim.log.ready.map(|t| ms_between(t, start_i)),
        phases,
        copied_total: match algo {
            AlgoChoice::PreCopy => rounds.iter().map(|r| u64::from(r.copied)).sum(),
            _ => rep.as_ref().map_or(0, |r| u64::from(r.states_transferred)),
        },
        rounds,
        final_copy,
        downtime_ms: rep.as_ref().map_or(0.0, |r| r.halted_ms),
        idle_ms,
        states_expired_idle: rep.as_ref().map_or(0, |r| r.states_expired_idle),
        states_transferred: rep.as_ref().map_or(0, |r| r.states_transferred),
        max_freeze_ms: rep.as_ref().map_or(0.0, |r| r.max_freeze_ms),
        packets_lost: rep
            .as_ref()
            .map_or(0, |r| r.packets_lost_by_cause.values().sum()),
        packets_buffered: rep.as_ref().map_or(0, |r| r.packets_buffered),
        bytes_transferred: rep.as_ref().map_or(0, |r| r.bytes_transferred),
        idle_samples: sim
            .log
            .idle
            .iter()
            .map(|(t, rem, exp)| (ms_between(*t, start_i) / 1e3, *rem, *exp))
            .collect(),
        traffic_during_migration: during,
        traffic_total: sim.stats.clone(),
        source_report: rep,
    };
    Ok((out, sim.flows.len() as u64))
}

/// Runs the whole experiment and returns the report (no files written).
fn experiment(args: &PrecopyArgs, progress: bool) -> Result<Report> {
    args.validate()?;
    let mut workloads = Vec::new();
    let limit = secs(args.idle_max_s) + Duration::from_secs(120);
    for w in args.workloads()? {
        let (name, description, plan, trace, start) = match w {
            WorkloadChoice::Replay => {
                let path = args
                    .pcap
                    .as_ref()
                    .ok_or_else(|| anyhow!("--pcap missing"))?;
                let (pkts, tstats) = read_pcap(path, args.pcap_max_packets)?;
                if pkts.is_empty() {
                    bail!("{}: no TCP/UDP packet in the trace", path.display());
                }
                let plan = plan_replay(&pkts, args.subscribers);
                let start = args.pcap_migrate_at_s.unwrap_or(tstats.duration_s / 2.0);
                let d = format!(
                    "replay of {} ({} packets, {:.1} s), migration at {:.1} s",
                    path.display(),
                    tstats.used,
                    tstats.duration_s,
                    start
                );
                ("replay", d, Some(Rc::new(plan)), Some(tstats), secs(start))
            }
            _ => {
                let d = format!(
                    "synthetic: Poisson {} flows/s, {:?} sizes (min {} max {} packets), {} pkt/s per flow, {:.0}% UDP, {} long-lived, warm-up {} s",
                    args.rate,
                    args.dist,
                    args.min_packets,
                    args.max_packets,
                    args.flow_pps,
                    args.udp_share * 100.0,
                    args.persistent,
                    args.warmup_s
                );
                ("synthetic", d, None, None, secs(args.warmup_s))
            }
        };
        let mut runs = Vec::new();
        let mut flows_created = 0;
        for &algo in &args.algorithms {
            let wall = std::time::Instant::now();
            let (r, n) = run_one(args, plan.clone(), start, limit, algo)?;
            if progress {
                eprintln!(
                    "precopy: {name} {} done in {:.1} s (wall)",
                    algo.name(),
                    wall.elapsed().as_secs_f64()
                );
            }
            flows_created = flows_created.max(n);
            runs.push(r);
        }
        let mut sweep = Vec::new();
        for &bw in args.sweep_mbps.iter().filter(|_| !args.no_sweep) {
            let a = PrecopyArgs {
                bandwidth_mbps: bw,
                ..args.clone()
            };
            let wall = std::time::Instant::now();
            let (r, _) = run_one(&a, plan.clone(), start, limit, AlgoChoice::PreCopy)?;
            if progress {
                eprintln!(
                    "precopy: {name} pre-copy at {bw} Mbit/s done in {:.1} s (wall)",
                    wall.elapsed().as_secs_f64()
                );
            }
            sweep.push(SweepPoint {
                bandwidth_mbps: bw,
                completed: r.completed,
                copied_total: r.copied_total,
                final_copy: r.final_copy,
                downtime_ms: r.downtime_ms,
                packets_lost: r.packets_lost,
                duration_ms: r.duration_ms,
                bytes_transferred: r.bytes_transferred,
                rounds: r.rounds,
            });
        }
        workloads.push(WorkloadOut {
            name,
            description,
            flows_created,
            trace,
            replay: plan.as_ref().map(|p| p.stats.clone()),
            runs,
            sweep,
        });
    }
    Ok(Report {
        experiment: "precopy",
        seed: args.seed,
        args: args.clone(),
        migration_config: args.mig_config(),
        workloads,
    })
}

/// `flowshift experiment precopy`: runs the experiment, writes `DIR/precopy.json` and the
/// plots, prints a table. With `--write-sample-pcap FILE` it only writes the sample trace.
pub fn run(args: &PrecopyArgs) -> Result<()> {
    if let Some(path) = &args.write_sample_pcap {
        let (bytes, flows) = sample_pcap(SAMPLE_SEED)?;
        std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "wrote {} ({} bytes, {} flows)",
            path.display(),
            bytes.len(),
            flows.len()
        );
        return Ok(());
    }
    let report = experiment(args, true)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json_path = args.out.join("precopy.json");
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    if !args.no_plot {
        plot(&report, &args.out)?;
    }
    print!("{}", table(&report));
    println!("wrote {}", json_path.display());
    Ok(())
}

fn table(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for w in &r.workloads {
        let _ = writeln!(s, "\n== {} (seed {}): {}", w.name, r.seed, w.description);
        if let Some(m) = w.runs.first().map(|r| &r.table_at_start) {
            let _ = writeln!(
                s,
                "table at start: {} mappings ({} sessions): ~{} active flows, {} long-lived, ~{} finished and lingering",
                m.mappings, m.sessions, m.active_flows, m.persistent_flows, m.finished_lingering
            );
        }
        let _ = writeln!(
            s,
            "{:<16} {:>4} {:>9} {:>9} {:>10} {:>9} {:>6} {:>9} {:>9} {:>10} {:>11} {:>10}",
            "algorithm",
            "done",
            "at start",
            "copied",
            "final copy",
            "downtime",
            "lost",
            "expired",
            "moved",
            "max freeze",
            "duration",
            "bytes"
        );
        for x in &w.runs {
            let _ = writeln!(
                s,
                "{:<16} {:>4} {:>9} {:>9} {:>10} {:>7.2}ms {:>6} {:>9} {:>9} {:>8.2}ms {:>10.3}s {:>10}",
                x.algorithm,
                if x.completed { "yes" } else { "NO" },
                x.source_report.as_ref().map_or(0, |r| r.mappings_at_start),
                x.copied_total,
                x.final_copy.map_or("-".to_string(), |c| c.to_string()),
                x.downtime_ms,
                x.packets_lost,
                x.states_expired_idle,
                x.states_transferred,
                x.max_freeze_ms,
                x.duration_ms.unwrap_or(f64::NAN) / 1e3,
                x.bytes_transferred
            );
            if !x.rounds.is_empty() && x.algorithm == "pre-copy" {
                let _ = writeln!(
                    s,
                    "  {:>5} {:>9} {:>8} {:>6} {:>6} {:>10}",
                    "round", "copied", "dirty", "new", "dead", "acked at"
                );
                for r in &x.rounds {
                    let _ = writeln!(
                        s,
                        "  {:>5} {:>9} {:>8} {:>6} {:>6} {:>8.2}ms{}",
                        r.round,
                        r.copied,
                        r.dirty,
                        r.new,
                        r.dead,
                        r.at_ms,
                        if r.last { "  (halted)" } else { "" }
                    );
                }
            }
            if let Some(i) = x.idle_ms {
                let left = x.idle_samples.last().map_or(String::new(), |l| {
                    format!(" ({} left at the last sample)", l.1)
                });
                let _ = writeln!(
                    s,
                    "  idle phase {:.1} s: {} of {} mappings expired, {} transferred{}",
                    i / 1e3,
                    x.states_expired_idle,
                    x.source_report.as_ref().map_or(0, |r| r.mappings_at_start),
                    x.states_transferred,
                    left
                );
            }
        }
        if !w.sweep.is_empty() {
            let _ = writeln!(
                s,
                "pre-copy versus transfer rate:\n{:>10} {:>4} {:>6} {:>9} {:>10} {:>10} {:>6} {:>10}  copied per round",
                "Mbit/s", "done", "rounds", "copied", "final copy", "downtime", "lost", "duration"
            );
            for p in &w.sweep {
                let per_round: Vec<String> =
                    p.rounds.iter().map(|r| r.copied.to_string()).collect();
                let _ = writeln!(
                    s,
                    "{:>10} {:>4} {:>6} {:>9} {:>10} {:>8.2}ms {:>6} {:>9.3}s  {}",
                    p.bandwidth_mbps,
                    if p.completed { "yes" } else { "NO" },
                    p.rounds.len(),
                    p.copied_total,
                    p.final_copy.map_or("-".to_string(), |c| c.to_string()),
                    p.downtime_ms,
                    p.packets_lost,
                    p.duration_ms.unwrap_or(f64::NAN) / 1e3,
                    per_round.join(" ")
                );
            }
        }
    }
    s
}

fn plot(r: &Report, dir: &Path) -> Result<()> {
    use crate::plot::{Figure, Series, Span, write};
    // (label, points, end of the idle phase in s).
    type IdleLine = (String, Vec<(f64, f64)>, Option<f64>);
    let mut idle_series: Vec<IdleLine> = Vec::new();
    for (wi, w) in r.workloads.iter().enumerate() {
        for x in &w.runs {
            if x.algorithm == "pre-copy" && !x.rounds.is_empty() {
                // Log scale: zero counts are drawn at 0.5.
                let pts = |f: fn(&RoundOut) -> u32| -> Vec<(f64, f64)> {
                    x.rounds
                        .iter()
                        .map(|r| (r.round as f64, f64::from(f(r)).max(0.5)))
                        .collect()
                };
                let (c, d, n, k) = (
                    pts(|r| r.copied),
                    pts(|r| r.dirty),
                    pts(|r| r.new),
                    pts(|r| r.dead),
                );
                let title = format!(
                    "pre-copy rounds, {} workload (last round: halted stop-and-copy)",
                    w.name
                );
                let fig = Figure {
                    title: &title,
                    x_label: "round",
                    y_label: "mappings (log; 0 drawn at 0.5)",
                    series: vec![
                        Series {
                            label: "copied",
                            points: &c,
                        },
                        Series {
                            label: "dirty",
                            points: &d,
                        },
                        Series {
                            label: "new",
                            points: &n,
                        },
                        Series {
                            label: "dead",
                            points: &k,
                        },
                    ],
                    spans: vec![],
                    log_y: true,
                    log_x: false,
                };
                let stem = if wi == 0 {
                    dir.join("precopy")
                } else {
                    dir.join(format!("precopy-{}", w.name))
                };
                write(&fig, &stem)?;
            }
            if !x.idle_samples.is_empty() {
                let pts = x
                    .idle_samples
                    .iter()
                    .map(|(t, rem, _)| (*t, f64::from(*rem)))
                    .collect();
                idle_series.push((
                    format!("{} {}", w.name, x.algorithm),
                    pts,
                    x.idle_ms.map(|ms| ms / 1e3),
                ));
            }
        }
        // Pre-copy's copied-per-round at each transfer rate (the main run included).
        let mut sweep: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        let rounds_pts = |rounds: &[RoundOut]| -> Vec<(f64, f64)> {
            rounds
                .iter()
                .map(|r| (r.round as f64, f64::from(r.copied).max(0.5)))
                .collect()
        };
        if let Some(x) = w.runs.iter().find(|x| x.algorithm == "pre-copy") {
            sweep.push((
                format!("{} Mbit/s", r.args.bandwidth_mbps),
                rounds_pts(&x.rounds),
            ));
        }
        for p in &w.sweep {
            sweep.push((
                format!("{} Mbit/s", p.bandwidth_mbps),
                rounds_pts(&p.rounds),
            ));
        }
        if sweep.len() > 1 {
            let title = format!(
                "pre-copy: mappings copied per round by transfer rate, {} workload",
                w.name
            );
            let fig = Figure {
                title: &title,
                x_label: "round (the last one of each line is the halted stop-and-copy)",
                y_label: "mappings copied (log)",
                series: sweep
                    .iter()
                    .map(|(l, p)| Series {
                        label: l,
                        points: p,
                    })
                    .collect(),
                spans: vec![],
                log_y: true,
                log_x: false,
            };
            let stem = if wi == 0 {
                dir.join("precopy-sweep")
            } else {
                dir.join(format!("precopy-sweep-{}", w.name))
            };
            write(&fig, &stem)?;
        }
    }
    if !idle_series.is_empty() {
        let x_max = idle_series
            .iter()
            .flat_map(|(_, p, _)| p.iter().map(|q| q.0))
            .fold(1.0, f64::max);
        // Longest first, so shorter idle phases are drawn on top of the longer ones.
        idle_series.sort_by_key(|(_, p, _)| Reverse(p.len()));
        let end_labels: Vec<String> = idle_series
            .iter()
            .map(|(l, ..)| format!("{l}: idle ends"))
            .collect();
        let fig = Figure {
            title: "freeze-copy idle phase: mappings left on the source",
            x_label: "time since migration start (s)",
            y_label: "mappings on the source",
            series: idle_series
                .iter()
                .map(|(l, p, _)| Series {
                    label: l,
                    points: p,
                })
                .collect(),
            // A thin band where each idle phase ended, unless at the right edge (no room for
            // its label).
            spans: idle_series
                .iter()
                .enumerate()
                .filter_map(|(i, (_, _, end))| {
                    let t = (*end)?;
                    (t < 0.85 * x_max).then(|| Span {
                        label: &end_labels[i],
                        start: t,
                        end: t + x_max / 200.0,
                        series: i,
                    })
                })
                .collect(),
            log_y: false,
            log_x: false,
        };
        write(&fig, &dir.join("precopy-idle"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------- sample trace

/// A synthetic trace as a pcap file (Ethernet, microsecond timestamps): about 100 flows over
/// 60 s between "real-world" addresses (clients in 10.1.0.0/16, servers in 198.51.100.0/24;
/// the replay maps them into the group), TCP with handshake, data and FIN both ways (a tenth
/// captured mid-stream), UDP request/reply, and a few long-lived TCP connections with
/// keepalives. Returns the file's bytes and each flow's (protocol, client, server).
pub(crate) fn sample_pcap(seed: u64) -> Result<(Vec<u8>, Vec<FlowTuple>)> {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pkts: Vec<(u64, u64, Vec<u8>)> = Vec::new(); // (us, order, frame)
    let mut flows = Vec::new();
    let dur_us: u64 = 60_000_000;
    let mut push =
        |at: u64, proto: u8, src: SocketAddrV4, dst: SocketAddrV4, flags: u8| {
            let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4(src.ip().octets(), dst.ip().octets(), 64);
            let mut frame = Vec::new();
            let r = if proto == TCP {
                let mut t = b.tcp(src.port(), dst.port(), 1, 65535);
                if flags & SYN != 0 {
                    t = t.syn();
                }
                if flags & FIN != 0 {
                    t = t.fin();
                }
                if flags & PSH != 0 {
                    t = t.psh();
                }
                if flags & ACK != 0 {
                    t = t.ack(1);
                }
                t.write(&mut frame, &[])
            } else {
                b.udp(src.port(), dst.port()).write(&mut frame, &[0u8; 8])
            };
            let n = pkts.len() as u64;
            r.map(|_| pkts.push((at, n, frame)))
        };
    let n_flows = 100u32;
    for i in 0..n_flows + 5 {
        let long = i >= n_flows;
        let client = SocketAddrV4::new(
            Ipv4Addr::new(10, 1, rng.random_range(0..2), rng.random_range(1..=20)),
            rng.random_range(32_768..61_000),
        );
        let udp = !long && rng.random_bool(0.3);
        let server = SocketAddrV4::new(
            Ipv4Addr::new(198, 51, 100, rng.random_range(1..=40)),
            if udp { 53 } else { 443 },
        );
        let proto = if udp { UDP } else { TCP };
        flows.push((proto, client, server));
        let rtt = rng.random_range(5_000..40_000u64);
        let mut t = if long {
            rng.random_range(0..2_000_000u64)
        } else {
            rng.random_range(0..dur_us - 5_000_000)
        };
        let u: f64 = rng.random::<f64>();
        let n = if long {
            0
        } else {
            ((1.0 / (1.0 - u).powf(1.0 / 1.2)).ceil() as u32).min(30)
        };
        let gap = |rng: &mut ChaCha8Rng| rng.random_range(1_000..200_000u64);
        if udp {
            for _ in 0..n {
                push(t, UDP, client, server, 0)?;
                push(t + rtt, UDP, server, client, 0)?;
                t += rtt + gap(&mut rng);
            }
            continue;
        }
        let midstream = !long && rng.random_bool(0.1);
        if !midstream {
            push(t, TCP, client, server, SYN)?;
            push(t + rtt, TCP, server, client, SYN | ACK)?;
            push(t + rtt + 100, TCP, client, server, ACK)?;
            t += rtt + 200;
        }
        if long {
            while t < dur_us {
                push(t, TCP, client, server, ACK | PSH)?;
                push(t + rtt, TCP, server, client, ACK)?;
                t += rng.random_range(2_000_000..8_000_000u64);
            }
            continue;
        }
        for _ in 0..n {
            push(t, TCP, client, server, ACK | PSH)?;
            push(t + rtt, TCP, server, client, ACK)?;
            t += gap(&mut rng);
        }
        push(t, TCP, client, server, FIN | ACK)?;
        push(t + rtt, TCP, server, client, FIN | ACK)?;
        push(t + rtt + 100, TCP, client, server, ACK)?;
    }
    pkts.sort_by_key(|p| (p.0, p.1));
    let header = PcapHeader {
        snaplen: 262_144,
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(Vec::new(), header)?;
    let base = Duration::from_secs(1_700_000_000);
    for (us, _, frame) in &pkts {
        let p = PcapPacket::new(base + Duration::from_micros(*us), frame.len() as u32, frame);
        w.write_packet(&p)?;
    }
    Ok((w.into_writer(), flows))
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn zipf_sizes_are_heavy_tailed_and_bounded() {
        let args = PrecopyArgs {
            dist: SizeDist::Zipf,
            zipf_s: 1.5,
            min_packets: 2,
            max_packets: 10_000,
            ..small(1)
        };
        let mut s = Synth::new(&args);
        let sizes: Vec<u32> = (0..20_000).map(|_| s.size()).collect();
        let small_share = sizes.iter().filter(|&&x| x <= 4).count() as f64 / 20_000.0;
        assert!(small_share > 0.5, "most flows are short: {small_share}");
        assert!(sizes.iter().any(|&x| x >= 200), "some are long");
        assert!(sizes.iter().all(|&x| (2..=10_000).contains(&x)));
    }

    fn sample_file() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/precopy-sample.pcap")
    }

    #[test]
    fn pcap_replay_reads_the_flows_it_wrote() {
        let (bytes, flows) = sample_pcap(SAMPLE_SEED).unwrap();
        let dir = std::env::temp_dir().join(format!("flowshift-precopy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcap");
        std::fs::write(&path, &bytes).unwrap();
        let (pkts, st) = read_pcap(&path, u64::MAX).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(st.records, st.used, "every packet is TCP/UDP over IPv4");
        assert!(st.duration_s > 50.0 && st.duration_s < 61.0, "{st:?}");
        assert!(pkts.windows(2).all(|w| w[0].ts <= w[1].ts));
        let plan = plan_replay(&pkts, 16);
        // Same flows, same initiators, in first-appearance order (compare as sets).
        let mut wrote: Vec<_> = flows.clone();
        let mut read: Vec<_> = plan.orig.clone();
        wrote.sort();
        read.sort();
        assert_eq!(read, wrote);
        // Mid-stream TCP flows got a synthesized SYN; UDP and TCP are both there.
        assert!(plan.stats.synthesized_syn > 0 && plan.stats.udp_flows > 0);
        // Every mapped address is inside the allowed ranges.
        let subs = flowshift_nat::prefix(Ipv4Addr::new(100, 64, 0, 0), 10).unwrap();
        let servers = flowshift_nat::prefix(Ipv4Addr::new(198, 18, 0, 0), 15).unwrap();
        for f in &plan.flows {
            assert!(subs.contains(&f.sub), "{}", f.sub);
            assert!(
                servers.contains(&f.server) && f.server != EXT,
                "{}",
                f.server
            );
        }
        // Deterministic: the same trace maps the same way.
        let again = plan_replay(&pkts, 16);
        let key = |p: &ReplayPlan| {
            p.flows
                .iter()
                .map(|f| (f.sub, f.sport, f.server, f.dport))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&plan), key(&again));
        assert_eq!(plan.events.len(), again.events.len());
    }

    #[test]
    fn shipped_sample_pcap_is_reproducible_and_small() {
        let shipped = std::fs::read(sample_file()).expect("testdata/precopy-sample.pcap");
        assert!(shipped.len() < 200_000);
        let (bytes, _) = sample_pcap(SAMPLE_SEED).unwrap();
        assert!(
            shipped == bytes,
            "regenerate with `flowshift experiment precopy --write-sample-pcap crates/5-lab/testdata/precopy-sample.pcap`"
        );
    }

    #[test]
    fn replay_workload_migrates_with_both_algorithms() {
        let args = PrecopyArgs {
            pcap: Some(sample_file()),
            workload: Some(WorkloadChoice::Replay),
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
    fn garbage_and_truncated_pcaps_are_errors_not_panics() {
        let dir =
            std::env::temp_dir().join(format!("flowshift-precopy-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.pcap");
        std::fs::write(&p, b"definitely not a pcap file").unwrap();
        assert!(read_pcap(&p, 10).is_err());
        let (bytes, _) = sample_pcap(SAMPLE_SEED).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 7]).unwrap();
        assert!(read_pcap(&p, u64::MAX).is_err(), "a cut record is an error");
        assert!(read_pcap(&dir.join("missing.pcap"), 10).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_writes_the_json_and_the_plots() {
        let dir =
            std::env::temp_dir().join(format!("flowshift-precopy-run-{}", std::process::id()));
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
            serde_json::from_str(&std::fs::read_to_string(dir.join("precopy.json")).unwrap())
                .unwrap();
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
                workload: Some(WorkloadChoice::Replay),
                ..small(1)
            },
        ] {
            assert!(experiment(&bad, false).is_err());
        }
    }
}
