//! `flowshift bench stall`: how long a migration can keep a packet thread from its packets.
//!
//! A node's packet thread owns its [`Instance`] and runs every call into it (packet batches,
//! transfer frames, timers, controller commands) one after the other; while one call runs, no
//! packet batch is read. This bench runs a whole migration of a group holding `--states`
//! pre-loaded states between two in-process instances, delivering transfer frames and chained
//! packets directly (no sockets), on the wall clock, with the testbed's migration parameters and the loop a node runs: one packet
//! batch (a bystander group's UDP packet), then at most one transfer frame per instance, due
//! timers and commands. It prints, per algorithm and instance, the longest gap between two
//! packet batches and the call that made it, plus the p99 gap, against the time one packet
//! batch takes in the same run (the ratio says how many batches' worth the thread was away).
//! Figures only; nothing is asserted.

use anyhow::{Context, Result, bail};
use clap::Args;
use etherparse::PacketBuilder;
use flowshift_migration::{
    AbortReason, Algorithm, Driver, Ingress, Instance, InstanceId, MigrationConfig, MigrationEvent,
    Output,
};
use flowshift_nat::{GroupConfig, Nat, NatConfig};
use flowshift_wire::Instant;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant as WallClock};

const A: InstanceId = InstanceId(1);
const B: InstanceId = InstanceId(2);
const MIGRATING: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const BYSTANDER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Build profile, printed beside the figures.
const PROFILE: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};
/// Any migration still running after this fails the run (so it always stops by itself).
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Arguments of `bench stall`.
#[derive(Args, Debug, Clone)]
pub struct StallArgs {
    /// States pre-loaded on the migrated group (24-byte records).
    #[arg(long, default_value_t = 1_000_000)]
    pub states: u32,
    /// freeze-copy, stop-copy, pre-copy or all.
    #[arg(long, default_value = "all")]
    pub algorithm: String,
    /// Print one JSON object per algorithm instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The longest gaps one instance's packet loop saw.
#[derive(Clone, Debug, Default, serde::Serialize)]
struct Gaps {
    max_gap_us: f64,
    /// The call that made the longest gap.
    max_gap_call: &'static str,
    p99_gap_us: f64,
    /// Median time of one packet batch call (the bystander packet), for scale.
    packet_call_us: f64,
    /// `max_gap_us / packet_call_us`.
    ratio: f64,
    iterations: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
struct Report {
    algorithm: Algorithm,
    states: u32,
    migration_ms: f64,
    states_transferred: u32,
    source: Gaps,
    destination: Gaps,
    profile: &'static str,
}

/// What one drain of an instance produced (chained packets, transfer frames, the events the
/// loop acts on); translated and dropped packets are discarded.
#[derive(Default)]
struct Mailbox {
    chained: Vec<(Vec<u8>, ())>,
    frames: Vec<Vec<u8>>,
    ready: bool,
    completed: bool,
    aborted: Option<AbortReason>,
}

impl Driver<()> for Mailbox {
    fn output(&mut self, o: Output) {
        if let Output::Chain { pkt, meta, .. } = o {
            self.chained.push((pkt, meta));
        }
    }

    fn transmit(&mut self, _: InstanceId, frame: Vec<u8>) {
        self.frames.push(frame);
    }

    fn event(&mut self, e: MigrationEvent) {
        match e {
            MigrationEvent::ReadyForCutover { .. } => self.ready = true,
            MigrationEvent::Completed { .. } => self.completed = true,
            MigrationEvent::Aborted { reason, .. } => self.aborted = Some(reason),
            _ => {}
        }
    }
}

/// One instance with its gap bookkeeping.
struct Side {
    inst: Instance,
    gaps: Vec<(f64, &'static str)>,
    packet_calls: Vec<f64>,
    /// Work done since the last packet batch: (duration us, longest call name).
    pending: (f64, &'static str, f64),
}

impl Side {
    fn new(inst: Instance) -> Self {
        Side {
            inst,
            gaps: Vec::new(),
            packet_calls: Vec::new(),
            pending: (0.0, "packet", 0.0),
        }
    }

    /// Runs one non-packet call, timing it.
    fn call<T>(&mut self, name: &'static str, f: impl FnOnce(&mut Instance) -> T) -> T {
        let t = WallClock::now();
        let r = f(&mut self.inst);
        let us = t.elapsed().as_secs_f64() * 1e6;
        self.pending.0 += us;
        if us > self.pending.2 {
            self.pending.1 = name;
            self.pending.2 = us;
        }
        r
    }

    /// One packet batch: closes the gap since the previous one.
    fn packet(&mut self, now: Instant, pkt: &[u8]) {
        if self.pending.0 > 0.0 {
            self.gaps.push((self.pending.0, self.pending.1));
        }
        self.pending = (0.0, "packet", 0.0);
        let t = WallClock::now();
        let mut batch = vec![(pkt.to_vec(), ())];
        self.inst.handle_batch(now, &mut batch, Ingress::Switch);
        self.packet_calls.push(t.elapsed().as_secs_f64() * 1e6);
    }

    fn gaps(&mut self) -> Gaps {
        let mut g: Vec<f64> = self.gaps.iter().map(|x| x.0).collect();
        g.sort_by(f64::total_cmp);
        let max = self
            .gaps
            .iter()
            .copied()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or((0.0, "none"));
        self.packet_calls.sort_by(f64::total_cmp);
        let packet = self
            .packet_calls
            .get(self.packet_calls.len() / 2)
            .copied()
            .unwrap_or(0.0);
        Gaps {
            max_gap_us: max.0,
            max_gap_call: max.1,
            p99_gap_us: g.get(g.len() * 99 / 100).copied().unwrap_or(0.0),
            packet_call_us: packet,
            ratio: if packet > 0.0 { max.0 / packet } else { 0.0 },
            iterations: self.packet_calls.len() as u64,
        }
    }
}

/// Runs the bench and prints the figures.
pub fn stall(args: &StallArgs) -> Result<()> {
    let algorithms = match args.algorithm.as_str() {
        "all" => vec![
            Algorithm::FreezeCopy,
            Algorithm::StopCopy,
            Algorithm::PreCopy,
        ],
        "freeze-copy" => vec![Algorithm::FreezeCopy],
        "stop-copy" => vec![Algorithm::StopCopy],
        "pre-copy" => vec![Algorithm::PreCopy],
        other => bail!("unknown algorithm {other:?} (freeze-copy, stop-copy, pre-copy, all)"),
    };
    if args.states == 0 || args.states > 8_000_000 {
        bail!("--states must be 1..=8000000");
    }
    if !args.json {
        println!(
            "flowshift bench stall ({} build): longest gap between two packet batches during a migration of {} states",
            PROFILE, args.states
        );
        println!(
            "{:<12} {:>9} {:>11} | {:>10} {:>9} {:>8} {:<16} | {:>10} {:>9} {:>8} {:<16}",
            "algorithm",
            "mig_ms",
            "transferred",
            "src_max_us",
            "src_p99",
            "ratio",
            "src_call",
            "dst_max_us",
            "dst_p99",
            "ratio",
            "dst_call"
        );
    }
    for a in algorithms {
        let r = run(args.states, a)?;
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "{:<12} {:>9.1} {:>11} | {:>10.0} {:>9.0} {:>8.0} {:<16} | {:>10.0} {:>9.0} {:>8.0} {:<16}",
                crate::report::algorithm_name(a),
                r.migration_ms,
                r.states_transferred,
                r.source.max_gap_us,
                r.source.p99_gap_us,
                r.source.ratio,
                r.source.max_gap_call,
                r.destination.max_gap_us,
                r.destination.p99_gap_us,
                r.destination.ratio,
                r.destination.max_gap_call,
            );
        }
    }
    Ok(())
}

/// A NAT as a node builds it: tables sized for their bounds at start-up (`preallocate`).
fn nat(groups: Vec<GroupConfig>, states: u32) -> Result<Nat> {
    let max = states + 65_536;
    let mut nat = Nat::new(NatConfig {
        groups,
        max_sessions: max,
        max_mappings: max,
        max_sessions_per_mapping: 4096,
        ..NatConfig::default()
    })
    .context("NAT configuration")?;
    nat.reserve(max as usize, max as usize);
    Ok(nat)
}

fn run(states: u32, algorithm: Algorithm) -> Result<Report> {
    let migrating = GroupConfig {
        external: MIGRATING,
        subscribers: "100.64.0.0/16".parse()?,
    };
    let bystander = GroupConfig {
        external: BYSTANDER,
        subscribers: "100.65.0.0/16".parse()?,
    };
    let mut nat_a = nat(vec![migrating, bystander.clone()], states)?;
    let g = nat_a.group_id(MIGRATING).context("group")?;
    for chunk in flowshift_nat::record::fictive_records(states, 7) {
        nat_a
            .import(g, Instant::ZERO, &chunk)
            .map_err(|e| anyhow::anyhow!("pre-load: {e}"))?;
    }
    while nat_a.poll_event().is_some() {}
    let nat_b = nat(vec![bystander], states)?;
    let cfg = MigrationConfig::default();
    let mut a = Side::new(Instance::new(A, nat_a, cfg.clone())?);
    let mut b = Side::new(Instance::new(B, nat_b, cfg)?);
    let mut pkt = Vec::new();
    PacketBuilder::ipv4([100, 65, 0, 1], [203, 0, 113, 9], 64)
        .udp(40_000, 53)
        .write(&mut pkt, &[0u8; 32])?;

    let start = WallClock::now();
    let now = || Instant::from_nanos(start.elapsed().as_nanos() as u64 + 1_000_000_000);
    let id = a.call("start_migration", |i| {
        i.start_migration(
            now(),
            g,
            B,
            algorithm,
            crate::testbed::exp::params(algorithm),
        )
    })?;
    let (mut src_done, mut dst_done) = (false, false);
    let mut to_b: Vec<Vec<u8>> = Vec::new();
    let mut to_a: Vec<Vec<u8>> = Vec::new();
    let mut chained: Vec<(Vec<u8>, ())> = Vec::new();
    while !(src_done && dst_done) {
        if start.elapsed() > RUN_LIMIT {
            bail!("{algorithm:?}: migration still running after {RUN_LIMIT:?}");
        }
        a.packet(now(), &pkt);
        b.packet(now(), &pkt);
        for (side, inbox, from) in [(&mut a, &mut to_a, B), (&mut b, &mut to_b, A)] {
            if !inbox.is_empty() {
                let f = inbox.remove(0);
                let _ = side.call("handle_transfer", |i| i.handle_transfer(now(), from, &f));
            }
            if now() >= side.inst.poll_timeout() {
                side.call("handle_timeout", |i| i.handle_timeout(now()));
            }
        }
        if !chained.is_empty() {
            let mut batch = std::mem::take(&mut chained);
            b.call("chained_batch", |i| {
                i.handle_batch(now(), &mut batch, Ingress::Chain { from: A })
            });
        }
        let mut ma = Mailbox::default();
        a.inst.drain(&mut ma);
        chained.append(&mut ma.chained);
        to_b.append(&mut ma.frames);
        let mut mb = Mailbox::default();
        b.inst.drain(&mut mb);
        to_a.append(&mut mb.frames);
        if let Some(reason) = mb.aborted {
            bail!("destination aborted: {reason:?}");
        }
        if let Some(reason) = ma.aborted {
            bail!("source aborted: {reason:?}");
        }
        dst_done |= mb.completed;
        src_done |= ma.completed;
        let ready = ma.ready;
        if ready {
            a.call("cutover_done", |i| i.cutover_done(now(), id))?;
        }
    }
    let migration_ms = start.elapsed().as_secs_f64() * 1e3;
    let transferred = a.inst.report(id).map_or(0, |r| r.states_transferred);
    Ok(Report {
        algorithm,
        states,
        migration_ms,
        states_transferred: transferred,
        source: a.gaps(),
        destination: b.gaps(),
        profile: PROFILE,
    })
}
