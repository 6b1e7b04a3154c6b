//! Topologies and test elements shared by the integration tests.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use flowshift_sim::*;
use rand::RngExt;

/// Subscriber address number `i` (100.64.0.0/10).
pub fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Server address number `i` (198.18.0.0/15).
pub fn server_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8)
}

pub struct Dumbbell {
    pub sim: Sim,
    pub clients: Vec<ElementId>,
    pub servers: Vec<ElementId>,
    pub r1: ElementId,
    pub r2: ElementId,
    /// r1 -> r2 (client-to-server direction).
    pub bottleneck: LinkId,
}

/// `n` clients -- r1 ==bottleneck== r2 -- `n` servers. Access links: 10 Gbit/s, 100 µs,
/// 1 MB queue. Routes by /32 on each side.
pub fn dumbbell_topology(seed: u64, n: usize, bottleneck: LinkConfig) -> Dumbbell {
    let mut sim = Sim::new(SimConfig::new(seed));
    let mut rt1 = StaticRouter::new().route(Ipv4Addr::new(198, 18, 0, 0), 15, n as u16);
    let mut rt2 = StaticRouter::new().route(Ipv4Addr::new(100, 64, 0, 0), 10, n as u16);
    for i in 0..n {
        rt1.add_route(client_addr(i), 32, i as u16);
        rt2.add_route(server_addr(i), 32, i as u16);
    }
    let r1 = sim.add_element("r1", rt1);
    let r2 = sim.add_element("r2", rt2);
    let access = LinkConfig::new(10_000_000_000, Duration::from_micros(100), 1_000_000);
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for i in 0..n {
        let c = sim
            .add_host(HostConfig::new(format!("c{i}"), client_addr(i)))
            .unwrap();
        let s = sim
            .add_host(HostConfig::new(format!("s{i}"), server_addr(i)))
            .unwrap();
        sim.connect((c, 0), (r1, i as u16), access.clone()).unwrap();
        sim.connect((s, 0), (r2, i as u16), access.clone()).unwrap();
        clients.push(c);
        servers.push(s);
    }
    let (bottleneck, _) = sim
        .connect((r1, n as u16), (r2, n as u16), bottleneck)
        .unwrap();
    Dumbbell {
        sim,
        clients,
        servers,
        r1,
        r2,
        bottleneck,
    }
}

/// Starts one bulk TCP flow per client/server pair (client `i` to server `i`, port 5001),
/// with start times jittered uniformly in `[0, jitter)` from the seeded user stream 1.
/// Returns the sink app ids.
pub fn start_bulk_flows(d: &mut Dumbbell, tcp: TcpConfig, jitter: Duration) -> Vec<AppId> {
    let mut rng = d.sim.rng(1);
    let mut sinks = Vec::new();
    for i in 0..d.clients.len() {
        let sink = d
            .sim
            .add_app(
                d.servers[i],
                AppSpec::TcpSink {
                    port: 5001,
                    backlog: 1,
                    tcp: tcp.clone(),
                },
            )
            .unwrap();
        let start = Instant::from_nanos(rng.random_range(0..jitter.as_nanos() as u64 + 1));
        d.sim
            .add_app(
                d.clients[i],
                AppSpec::TcpSource {
                    dst: SocketAddrV4::new(server_addr(i), 5001),
                    bytes: None,
                    start,
                    tcp: tcp.clone(),
                },
            )
            .unwrap();
        sinks.push(sink);
    }
    sinks
}

/// An element that injects packets on demand (through `Sim::poke`) and consumes whatever it
/// receives.
#[derive(Default)]
pub struct Injector {
    pub received: u64,
}

impl Injector {
    /// Sends packets of the given sizes out of port 0, now.
    pub fn inject(&mut self, out: &mut Emit<'_>, sizes: &[usize]) -> Vec<PacketId> {
        sizes
            .iter()
            .map(|&n| {
                let mut b = out.buffer();
                b.resize(n, 0);
                let p = out.new_packet(b);
                let id = p.id();
                out.send(0, p);
                id
            })
            .collect()
    }
}

impl Element for Injector {
    fn on_packet(&mut self, _now: Instant, _port: Port, pkt: Packet, out: &mut Emit<'_>) {
        self.received += 1;
        out.consume(pkt);
    }
}

/// An element that records every arrival (time, id, length) and consumes the packet.
#[derive(Default)]
pub struct Recorder {
    pub got: Vec<(Instant, PacketId, usize)>,
}

impl Element for Recorder {
    fn on_packet(&mut self, now: Instant, _port: Port, pkt: Packet, out: &mut Emit<'_>) {
        self.got.push((now, pkt.id(), pkt.len()));
        out.consume(pkt);
    }
}

/// An injector wired to a recorder through one link with `cfg`.
pub fn injector_to_recorder(seed: u64, cfg: LinkConfig) -> (Sim, ElementId, ElementId, LinkId) {
    let mut sim = Sim::new(SimConfig::new(seed));
    let inj = sim.add_element("inj", Injector::default());
    let rec = sim.add_element("rec", Recorder::default());
    let link = sim.add_link((inj, 0), (rec, 0), cfg).unwrap();
    (sim, inj, rec, link)
}
