//! The 100-flow dumbbell at 1 Gbit/s, timed: `cargo run --release -p flowshift-sim --example
//! dumbbell [flows] [seconds] [seed]`. Prints goodput, drops, delay and wall time per
//! simulated second.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use flowshift_sim::*;
use rand::RngExt;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = *args.first().unwrap_or(&100) as usize;
    let secs = *args.get(1).unwrap_or(&2);
    let seed = *args.get(2).unwrap_or(&1);
    let client = |i: usize| Ipv4Addr::new(100, 64, (i / 250) as u8, (i % 250 + 1) as u8);
    let server = |i: usize| Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8);

    let mut sim = Sim::new(SimConfig::new(seed));
    let mut rt1 = StaticRouter::new().route(Ipv4Addr::new(198, 18, 0, 0), 15, n as u16);
    let mut rt2 = StaticRouter::new().route(Ipv4Addr::new(100, 64, 0, 0), 10, n as u16);
    for i in 0..n {
        rt1.add_route(client(i), 32, i as u16);
        rt2.add_route(server(i), 32, i as u16);
    }
    let r1 = sim.add_element("r1", rt1);
    let r2 = sim.add_element("r2", rt2);
    let access = LinkConfig::new(10_000_000_000, Duration::from_micros(100), 1_000_000);
    let mut rng = sim.rng(1);
    let mut sinks = Vec::new();
    for i in 0..n {
        let c = sim
            .add_host(HostConfig::new(format!("c{i}"), client(i)))
            .expect("client");
        let s = sim
            .add_host(HostConfig::new(format!("s{i}"), server(i)))
            .expect("server");
        sim.connect((c, 0), (r1, i as u16), access.clone())
            .expect("link");
        sim.connect((s, 0), (r2, i as u16), access.clone())
            .expect("link");
        let tcp = TcpConfig::default();
        sinks.push(
            sim.add_app(
                s,
                AppSpec::TcpSink {
                    port: 5001,
                    backlog: 1,
                    tcp: tcp.clone(),
                },
            )
            .expect("sink"),
        );
        let start = Instant::from_nanos(rng.random_range(0..50_000_000));
        sim.add_app(
            c,
            AppSpec::TcpSource {
                dst: SocketAddrV4::new(server(i), 5001),
                bytes: None,
                start,
                tcp,
            },
        )
        .expect("source");
    }
    let bn = LinkConfig::new(1_000_000_000, Duration::from_micros(300), 375_000);
    let (link, _) = sim
        .connect((r1, n as u16), (r2, n as u16), bn)
        .expect("bottleneck");

    let wall = std::time::Instant::now();
    sim.run_until(Instant::from_secs(secs));
    let elapsed = wall.elapsed().as_secs_f64();
    let rep = sim.report();
    let mean = sim.mean_goodput_bps(&sinks, Instant::from_millis(500), Instant::from_secs(secs));
    println!(
        "{n} flows, {secs} s simulated, seed {seed}: goodput after 0.5 s {:.1} Mbit/s",
        mean / 1e6
    );
    println!(
        "events {} ({:.2} M/s wall), packets {}, bottleneck drops {}, delay p50 {} µs p99 {} µs max {} µs",
        rep.events,
        rep.events as f64 / elapsed / 1e6,
        rep.ledger.created,
        sim.link_stats(link).map_or(0, |s| s.dropped_queue_full),
        rep.delay.p50_ns / 1000,
        rep.delay.p99_ns / 1000,
        rep.delay.max_ns / 1000
    );
    let polls: u64 = rep.hosts.iter().map(|h| h.stats.polls).sum();
    let spins: u64 = rep.hosts.iter().map(|h| h.stats.spin_guards).sum();
    let blocked: u64 = rep.hosts.iter().map(|h| h.stats.tx_blocked).sum();
    println!("host polls {polls}, spin guards {spins}, tx blocked {blocked}");
    println!(
        "wall {:.3} s = {:.3} s per simulated second",
        elapsed,
        elapsed / secs as f64
    );
    if std::env::var("DUMP").is_ok() {
        debug_dump(&sim, &sinks);
    }
    if let Err(e) = rep.check() {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

#[allow(dead_code)]
fn debug_dump(sim: &Sim, sinks: &[AppId]) {
    let g = sim.goodput(&[]);
    for chunk in g.chunks(10) {
        println!(
            "{}",
            chunk
                .iter()
                .map(|(t, m)| format!("{t:.0}:{m:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let mut per: Vec<u64> = sinks
        .iter()
        .map(|s| sim.app_stats(*s).unwrap().bytes_received)
        .collect();
    per.sort();
    println!(
        "per-flow bytes min {} median {} max {}",
        per[0],
        per[per.len() / 2],
        per[per.len() - 1]
    );
}
