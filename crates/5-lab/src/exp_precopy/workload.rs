//! Workload generation: packets of the synthetic flows (Poisson arrivals, Pareto/Zipf sizes,
//! persistent connections) and the flow state machine that emits them.

use super::*;

// ------------------------------------------------------------------------------ packets

/// Builds an IPv4 packet (TCP or UDP) carrying `[flow (4 bytes), kind]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn build_packet(
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
pub(super) fn parse_output(pkt: &[u8]) -> Option<(u8, Ipv4Addr, u16, u32, u8)> {
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

pub(super) fn subscriber_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be_bytes(SUB_NET) + 1 + i % MAX_SUBSCRIBERS)
}

pub(super) fn server_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(SERVER_NET + 1 + i % MAX_SERVERS)
}

// ------------------------------------------------------------------------------- flows

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    Syn,
    Data,
    Fin,
    Keepalive,
    Done,
    /// Driven by the trace.
    Replay,
}

#[derive(Clone, Debug)]
pub(super) struct Flow {
    pub(super) proto: u8,
    pub(super) sub: Ipv4Addr,
    pub(super) sport: u16,
    pub(super) server: Ipv4Addr,
    pub(super) dport: u16,
    pub(super) ext_port: Option<u16>,
    pub(super) stage: Stage,
    /// Data packets still to send.
    pub(super) left: u32,
    pub(super) persistent: bool,
    /// The synthetic server answers this flow's packets.
    pub(super) respond: bool,
    /// Replay: times of the flow's first and last packets, from the trace's start.
    pub(super) first: Duration,
    pub(super) last: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Ev {
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
pub(super) struct Synth {
    pub(super) rng: ChaCha8Rng,
    pub(super) rate: f64,
    pub(super) dist: SizeDist,
    pub(super) alpha: f64,
    pub(super) min_packets: u32,
    pub(super) max_packets: u32,
    pub(super) zipf_cdf: Vec<f64>,
    pub(super) flow_pps: f64,
    pub(super) udp_share: f64,
    pub(super) keepalive_s: f64,
    pub(super) subscribers: u32,
    pub(super) next_port: Vec<u16>,
}

impl Synth {
    pub(super) fn new(a: &PrecopyArgs) -> Synth {
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

    pub(super) fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    pub(super) fn exp(&mut self, mean_s: f64) -> Duration {
        secs(-(1.0 - self.uniform()).ln() * mean_s)
    }

    pub(super) fn size(&mut self) -> u32 {
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
    pub(super) fn flow(&mut self, persistent: bool) -> Flow {
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
