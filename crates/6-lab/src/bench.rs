//! `flowshift bench dataplane`: NAT fast-path throughput against a bare hash lookup.
//!
//! Set-up: `flows` established flows (half TCP, half UDP) spread over as many external
//! addresses as needed, created through the NAT's slow path (timed: `cps`). A trace of
//! 64-byte Ethernet frames (random flow, random direction per frame) is laid out sequentially
//! in memory like a NIC receive ring. Timed: translating the whole trace in place (`mpps`), and,
//! over the same trace, a loop that extracts the same 5-tuple keys and looks them up in a plain
//! `hashbrown` map of the same size (`lookup_mpps`). `ratio = mpps / lookup_mpps` says how close
//! the NAT comes to the cost of the lookup it cannot avoid.

use anyhow::{Context, Result, bail};
use clap::Args;
use flowshift_nat::{GroupConfig, Nat, NatConfig, Verdict};
use flowshift_wire::Instant;
use hashbrown::HashMap;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant as WallClock;

const FRAME: usize = 64;
const ETH: usize = 14;
const SUBSCRIBERS_PER_GROUP: u32 = 32;
/// Flows per subscriber per protocol: 1500 ports fit in 3 blocks of 512.
const FLOWS_PER_SUB_PROTO: u32 = 1500;

/// Arguments of `bench dataplane`.
#[derive(Args, Debug)]
pub struct DataplaneArgs {
    /// Established flows (each flow is one mapping and one session).
    #[arg(long, default_value_t = 1_000_000)]
    flows: u32,
    /// Frames in the trace (each timed pass translates all of them).
    #[arg(long, default_value_t = 4_000_000)]
    packets: u32,
    /// Timed passes over the trace; the best pass is reported.
    #[arg(long, default_value_t = 3)]
    passes: u32,
    /// Frames per `process_batch` call (1: one `process` call per frame).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Seed for flow layout and trace order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy)]
struct Flow {
    proto: u8,
    int: (Ipv4Addr, u16),
    ext: (Ipv4Addr, u16),
    remote: (Ipv4Addr, u16),
}

fn frame(
    proto: u8,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    tcp_flags: u8,
) -> Result<[u8; FRAME]> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(
        src.0.octets(),
        dst.0.octets(),
        64,
    );
    let mut out = Vec::with_capacity(FRAME);
    if proto == 6 {
        let mut t = b.tcp(src.1, dst.1, 1000, 65535);
        if tcp_flags & 0x02 != 0 {
            t = t.syn();
        }
        if tcp_flags & 0x10 != 0 {
            t = t.ack(1);
        }
        let payload = FRAME - ETH - 20 - 20;
        t.write(&mut out, &vec![0u8; payload])?;
    } else {
        b.udp(src.1, dst.1)
            .write(&mut out, &[0u8; FRAME - ETH - 20 - 8])?;
    }
    out.try_into()
        .map_err(|v: Vec<u8>| anyhow::anyhow!("frame of {} bytes", v.len()))
}

fn key_of(frame: &[u8]) -> (u64, u64) {
    let ip = &frame[ETH..];
    let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let sport = u16::from_be_bytes([ip[20], ip[21]]);
    let dport = u16::from_be_bytes([ip[22], ip[23]]);
    (
        (ip[9] as u64) << 48 | (sport as u64) << 32 | src as u64,
        (dport as u64) << 32 | dst as u64,
    )
}

/// Runs the benchmark and prints the figures.
pub fn dataplane(args: &DataplaneArgs) -> Result<()> {
    if args.flows == 0 || args.packets == 0 || args.passes == 0 {
        bail!("--flows, --packets and --passes must be positive");
    }
    let per_group = SUBSCRIBERS_PER_GROUP * FLOWS_PER_SUB_PROTO * 2;
    let n_groups = args.flows.div_ceil(per_group);
    if n_groups > 250 {
        bail!("at most {} flows", 250 * per_group);
    }
    let groups: Vec<GroupConfig> = (0..n_groups)
        .map(|g| GroupConfig {
            external: Ipv4Addr::new(203, 0, 113, 1 + g as u8),
            subscribers: format!("100.{}.{}.0/24", 64 + g / 256, g % 256)
                .parse()
                .expect("valid prefix"),
        })
        .collect();
    let cfg = NatConfig {
        max_sessions: args.flows.max(1024),
        max_mappings: args.flows.max(1024),
        hash_seed: args.seed ^ 0x9e37_79b9_7f4a_7c15,
        rng_seed: args.seed,
        ..NatConfig::with_groups(groups.clone())
    };
    let mut nat = Nat::new(cfg).context("NAT configuration")?;
    let now = Instant::from_secs(1);

    // Create the flows through the slow path (outbound SYN or first UDP datagram).
    let mut flows = Vec::with_capacity(args.flows as usize);
    let mut creators = Vec::with_capacity(args.flows as usize);
    for i in 0..args.flows {
        let g = i / per_group;
        let within = i % per_group;
        let sub = within / (FLOWS_PER_SUB_PROTO * 2);
        let k = within % (FLOWS_PER_SUB_PROTO * 2);
        let proto = if k.is_multiple_of(2) { 6 } else { 17 };
        let int = (
            Ipv4Addr::new(100, 64 + (g / 256) as u8, (g % 256) as u8, 1 + sub as u8),
            10_000 + (k / 2) as u16,
        );
        let remote = (
            Ipv4Addr::new(198, 18 + (i >> 16 & 1) as u8, (i >> 8) as u8, i as u8),
            if proto == 6 { 443 } else { 53 },
        );
        let f = Flow {
            proto,
            int,
            ext: (groups[g as usize].external, 0),
            remote,
        };
        creators.push(frame(proto, int, remote, 0x02)?);
        flows.push(f);
    }
    let t = WallClock::now();
    for c in creators.iter_mut() {
        let v = nat.process(now, &mut c[ETH..]);
        if v != Verdict::ToOutside {
            bail!("flow creation failed: {v:?}");
        }
    }
    let create_secs = t.elapsed().as_secs_f64();
    for (f, c) in flows.iter_mut().zip(&creators) {
        f.ext.1 = u16::from_be_bytes([c[ETH + 20], c[ETH + 21]]);
    }
    drop(creators);
    // Establish the TCP flows (SYN-ACK in).
    for f in flows.iter().filter(|f| f.proto == 6) {
        let mut synack = frame(6, f.remote, f.ext, 0x12)?;
        let v = nat.process(now, &mut synack[ETH..]);
        if v != Verdict::ToInside {
            bail!("SYN-ACK not translated: {v:?}");
        }
    }

    // The trace: random flow and direction per frame, laid out like a receive ring.
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut pristine = vec![0u8; args.packets as usize * FRAME];
    let mut lookup: HashMap<(u64, u64), u32, foldhash::fast::FixedState> =
        HashMap::with_capacity_and_hasher(
            flows.len() * 2,
            foldhash::fast::FixedState::with_seed(args.seed),
        );
    for (i, f) in flows.iter().enumerate() {
        lookup.insert(key_of(&frame(f.proto, f.int, f.remote, 0x10)?), i as u32);
        lookup.insert(key_of(&frame(f.proto, f.remote, f.ext, 0x10)?), i as u32);
    }
    for slot in pristine.chunks_exact_mut(FRAME) {
        let f = flows[rng.random_range(0..flows.len())];
        let fr = if rng.random_bool(0.5) {
            frame(f.proto, f.int, f.remote, 0x10)?
        } else {
            frame(f.proto, f.remote, f.ext, 0x10)?
        };
        slot.copy_from_slice(&fr);
    }
    let mut trace = pristine.clone();

    let mut best_nat = f64::MAX;
    let mut best_lookup = f64::MAX;
    let before = nat.counters().clone();
    for _ in 0..args.passes {
        trace.copy_from_slice(&pristine);
        let t = WallClock::now();
        let mut translated = 0u64;
        if args.batch <= 1 {
            for fr in trace.chunks_exact_mut(FRAME) {
                let v = nat.process(now, &mut fr[ETH..]);
                translated += matches!(v, Verdict::ToInside | Verdict::ToOutside) as u64;
            }
        } else {
            let mut verdicts = Vec::with_capacity(args.batch);
            for burst in trace.chunks_mut(FRAME * args.batch) {
                let mut pkts: Vec<&mut [u8]> = burst
                    .chunks_exact_mut(FRAME)
                    .map(|f| &mut f[ETH..])
                    .collect();
                nat.process_batch(now, &mut pkts, &mut verdicts);
                translated += verdicts
                    .iter()
                    .filter(|v| matches!(v, Verdict::ToInside | Verdict::ToOutside))
                    .count() as u64;
            }
        }
        best_nat = best_nat.min(t.elapsed().as_secs_f64());
        if translated != args.packets as u64 {
            bail!(
                "only {translated} of {} frames translated: {:?}",
                args.packets,
                nat.counters()
            );
        }
        trace.copy_from_slice(&pristine);
        let t = WallClock::now();
        let mut acc = 0u64;
        for fr in trace.chunks_exact(FRAME) {
            acc = acc.wrapping_add(*lookup.get(&key_of(fr)).unwrap_or(&0) as u64);
        }
        black_box(acc);
        best_lookup = best_lookup.min(t.elapsed().as_secs_f64());
    }
    let dropped = nat.counters().total_drops() - before.total_drops();
    let mpps = args.packets as f64 / best_nat / 1e6;
    let lookup_mpps = args.packets as f64 / best_lookup / 1e6;
    let cps = args.flows as f64 / create_secs;
    let report = serde_json::json!({
        "flows": args.flows,
        "packets": args.packets,
        "frame_bytes": FRAME,
        "groups": n_groups,
        "mpps": round(mpps, 3),
        "lookup_mpps": round(lookup_mpps, 3),
        "ratio": round(mpps / lookup_mpps, 3),
        "cps": round(cps, 0),
        "gbps_64b": round(mpps * 1e6 * (FRAME as f64 + 20.0) * 8.0 / 1e9, 2),
        "ns_per_packet": round(best_nat * 1e9 / args.packets as f64, 1),
        "drops": dropped,
        "batch": args.batch,
        "fast_path_share": round((nat.counters().fast_path - before.fast_path) as f64 / (args.packets as f64 * args.passes as f64), 3),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "flowshift bench dataplane ({} build, one core)",
            report["profile"].as_str().unwrap_or("?")
        );
        println!("  flows            {:>12}", args.flows);
        println!("  frames per pass  {:>12}", args.packets);
        println!(
            "  NAT              {:>12.3} Mpps  ({:.1} ns/frame, {:.2} Gbit/s of 64-byte frames on the wire)",
            mpps,
            best_nat * 1e9 / args.packets as f64,
            report["gbps_64b"].as_f64().unwrap_or(0.0)
        );
        println!("  bare hash lookup {:>12.3} Mpps", lookup_mpps);
        println!("  ratio            {:>12.3}", mpps / lookup_mpps);
        println!("  new mappings/s   {:>12.0}", cps);
    }
    Ok(())
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}
