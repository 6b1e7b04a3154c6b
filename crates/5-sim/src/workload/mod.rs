//! Workloads for migration experiments outside the packet-level simulator: synthetic flows
//! (Poisson arrivals, Pareto, Zipf or published empirical sizes ([`cdf`]), long-lived
//! connections) and pcap replay
//! ([`replay`]). A driver (the precopy experiment on the two-instance harness) owns the
//! [`Flow`]s, asks [`Synth`] for new ones and for gaps and sizes, and builds each packet with
//! [`build_packet`]; translated packets tell it their flow back ([`parse_output`]).
//!
//! Addresses: subscribers in [`SUBSCRIBER_NET`]/[`SUBSCRIBER_LEN`] (100.64.0.0/22), servers
//! in 198.19.0.0/16 (inside 198.18.0.0/15). Every packet carries `[flow (4 bytes), kind]` as
//! its payload (kinds `K_*`), so replies and port learning need no lookup.

pub mod cdf;
pub mod replay;

use etherparse::err::packet::BuildWriteError;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

/// The subscribers' prefix: 100.64.0.0/22.
pub const SUBSCRIBER_NET: [u8; 4] = [100, 64, 0, 0];
/// Its length.
pub const SUBSCRIBER_LEN: u8 = 22;
/// Usable subscriber addresses in the prefix.
pub const MAX_SUBSCRIBERS: u32 = (1 << (32 - SUBSCRIBER_LEN)) - 2;
/// Servers: 198.19.0.0/16 (inside 198.18.0.0/15).
const SERVER_NET: u32 = u32::from_be_bytes([198, 19, 0, 0]);
const MAX_SERVERS: u32 = 65_534;
/// Most flows a workload creates (synthetic) or maps (replay).
pub const MAX_FLOWS: usize = 4_000_000;
/// Most Zipf ranks ([`SynthConfig::max_packets`] / [`SynthConfig::min_packets`]).
pub const MAX_ZIPF_RANKS: u32 = 1_000_000;

/// IP protocol numbers.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;
/// TCP flags.
pub const FIN: u8 = 0x01;
/// SYN.
pub const SYN: u8 = 0x02;
/// RST.
pub const RST: u8 = 0x04;
/// PSH.
pub const PSH: u8 = 0x08;
/// ACK.
pub const ACK: u8 = 0x10;
/// Packet kinds carried in the payload (byte 4): an outbound SYN.
pub const K_SYN: u8 = 0;
/// Outbound data.
pub const K_DATA: u8 = 1;
/// Outbound FIN.
pub const K_FIN: u8 = 2;
/// A long-lived connection's keepalive.
pub const K_KEEPALIVE: u8 = 3;
/// A server's reply.
pub const K_REPLY: u8 = 4;
/// A replayed trace packet.
pub const K_REPLAY: u8 = 5;

/// A duration from seconds, clamped to [0, 1e9 s] (never panics).
fn secs(x: f64) -> Duration {
    if x.is_finite() && x > 0.0 {
        Duration::from_secs_f64(x.min(1e9))
    } else {
        Duration::ZERO
    }
}

// ------------------------------------------------------------------------------ packets

/// Builds an IPv4 packet (TCP or UDP) carrying `[flow (4 bytes), kind]`.
#[allow(clippy::too_many_arguments)]
pub fn build_packet(
    proto: u8,
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    flow: u32,
    kind: u8,
) -> Result<Vec<u8>, BuildWriteError> {
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
pub fn parse_output(pkt: &[u8]) -> Option<(u8, Ipv4Addr, u16, u32, u8)> {
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

/// The `i`-th subscriber address (wrapping inside the prefix).
pub fn subscriber_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be_bytes(SUBSCRIBER_NET) + 1 + i % MAX_SUBSCRIBERS)
}

/// The `i`-th server address (wrapping inside 198.19.0.0/16).
pub fn server_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(SERVER_NET + 1 + i % MAX_SERVERS)
}

// ------------------------------------------------------------------------------- flows

/// Where a flow is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// TCP: the SYN is next.
    Syn,
    /// Data packets are next.
    Data,
    /// TCP: the FIN is next.
    Fin,
    /// A long-lived connection: keepalives.
    Keepalive,
    /// Finished.
    Done,
    /// Driven by the trace.
    Replay,
}

/// One flow of a workload (subscriber side first).
#[derive(Clone, Debug)]
pub struct Flow {
    /// [`TCP`] or [`UDP`].
    pub proto: u8,
    /// Subscriber address and port.
    pub sub: Ipv4Addr,
    /// Subscriber port.
    pub sport: u16,
    /// Server address.
    pub server: Ipv4Addr,
    /// Server port.
    pub dport: u16,
    /// The external port its outbound packets were seen leaving with (the driver learns it).
    pub ext_port: Option<u16>,
    /// Its stage.
    pub stage: Stage,
    /// Data packets still to send.
    pub left: u32,
    /// A long-lived connection.
    pub persistent: bool,
    /// The synthetic server answers this flow's packets.
    pub respond: bool,
    /// Replay: times of the flow's first and last packets, from the trace's start.
    pub first: Duration,
    /// See `first`.
    pub last: Duration,
}

/// Flow-size distribution of the synthetic workload: `pareto`, `zipf`, or a published
/// empirical CDF (`websearch`, `datamining`, `internet`, alias `backbone`; see [`cdf`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SizeDist {
    /// Pareto with shape `alpha` and scale `min_packets`.
    Pareto,
    /// Zipf ranks with exponent `zipf_s`, times `min_packets`.
    Zipf,
    /// [`cdf::WEBSEARCH`] (DCTCP), bytes to packets of [`cdf::MSS`].
    Websearch,
    /// [`cdf::DATAMINING`] (VL2).
    Datamining,
    /// [`cdf::INTERNET`] (an Internet border link).
    Internet,
}

impl SizeDist {
    /// The published table of an empirical distribution (`None` for Pareto and Zipf).
    pub fn empirical(self) -> Option<&'static cdf::EmpiricalCdf> {
        match self {
            SizeDist::Pareto | SizeDist::Zipf => None,
            SizeDist::Websearch => Some(&cdf::WEBSEARCH),
            SizeDist::Datamining => Some(&cdf::DATAMINING),
            SizeDist::Internet => Some(&cdf::INTERNET),
        }
    }
}

impl FromStr for SizeDist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pareto" => Ok(SizeDist::Pareto),
            "zipf" => Ok(SizeDist::Zipf),
            "websearch" => Ok(SizeDist::Websearch),
            "datamining" => Ok(SizeDist::Datamining),
            "internet" | "backbone" => Ok(SizeDist::Internet),
            _ => Err(format!(
                "unknown size distribution {s:?} (pareto, zipf, websearch, datamining, internet)"
            )),
        }
    }
}

impl std::fmt::Display for SizeDist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SizeDist::Pareto => "pareto",
            SizeDist::Zipf => "zipf",
            SizeDist::Websearch => "websearch",
            SizeDist::Datamining => "datamining",
            SizeDist::Internet => "internet",
        })
    }
}

/// The synthetic workload's parameters.
#[derive(Clone, Debug)]
pub struct SynthConfig {
    /// Seed of the workload's random stream.
    pub seed: u64,
    /// Flow arrivals per second (Poisson).
    pub rate: f64,
    /// Size distribution.
    pub dist: SizeDist,
    /// Pareto shape.
    pub alpha: f64,
    /// Zipf exponent.
    pub zipf_s: f64,
    /// Smallest flow (data packets).
    pub min_packets: u32,
    /// Largest flow (data packets).
    pub max_packets: u32,
    /// Data packets per second of one flow.
    pub flow_pps: f64,
    /// Share of UDP flows.
    pub udp_share: f64,
    /// Mean time between a long-lived connection's keepalives (s).
    pub keepalive_s: f64,
    /// Subscriber addresses in use (1..=[`MAX_SUBSCRIBERS`]).
    pub subscribers: u32,
}

/// The synthetic workload's random stream and size table.
pub struct Synth {
    rng: ChaCha8Rng,
    /// Flow arrivals per second.
    pub rate: f64,
    dist: SizeDist,
    alpha: f64,
    min_packets: u32,
    max_packets: u32,
    zipf_cdf: Vec<f64>,
    /// Data packets per second of one flow.
    pub flow_pps: f64,
    udp_share: f64,
    /// Mean time between keepalives (s).
    pub keepalive_s: f64,
    subscribers: u32,
    next_port: Vec<u16>,
}

impl Synth {
    /// A workload for `c` (subscribers clamped to 1..=[`MAX_SUBSCRIBERS`], Zipf ranks to
    /// [`MAX_ZIPF_RANKS`]).
    pub fn new(c: &SynthConfig) -> Synth {
        let min_packets = c.min_packets.max(1);
        let zipf_cdf = if c.dist == SizeDist::Zipf {
            let ranks = (c.max_packets / min_packets).clamp(1, MAX_ZIPF_RANKS);
            let mut acc = 0.0;
            let mut cdf: Vec<f64> = (1..=ranks)
                .map(|k| {
                    acc += (k as f64).powf(-c.zipf_s);
                    acc
                })
                .collect();
            for x in &mut cdf {
                *x /= acc;
            }
            cdf
        } else {
            Vec::new()
        };
        let subscribers = c.subscribers.clamp(1, MAX_SUBSCRIBERS);
        Synth {
            rng: ChaCha8Rng::seed_from_u64(c.seed ^ 0x5157_4e54),
            rate: c.rate,
            dist: c.dist,
            alpha: c.alpha,
            min_packets,
            max_packets: c.max_packets,
            zipf_cdf,
            flow_pps: c.flow_pps,
            udp_share: c.udp_share,
            keepalive_s: c.keepalive_s,
            subscribers,
            next_port: vec![20_000; subscribers as usize],
        }
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// Exponentially distributed with mean `mean_s` seconds.
    pub fn exp(&mut self, mean_s: f64) -> Duration {
        secs(-(1.0 - self.uniform()).ln() * mean_s)
    }

    /// A flow size in data packets: in `1..=max_packets` for Pareto and Zipf; for an
    /// empirical distribution the table's size by inverse CDF, `ceil(bytes / MSS)`, not capped.
    pub fn size(&mut self) -> u32 {
        let u = self.uniform();
        if let Some(c) = self.dist.empirical() {
            return cdf::EmpiricalCdf::packets(c.bytes_at(u));
        }
        let x = match self.dist {
            SizeDist::Pareto => (self.min_packets as f64 / (1.0 - u).powf(1.0 / self.alpha)).ceil(),
            SizeDist::Zipf => {
                let k = self.zipf_cdf.partition_point(|&c| c < u) + 1;
                k as f64 * self.min_packets as f64
            }
            SizeDist::Websearch | SizeDist::Datamining | SizeDist::Internet => 0.0,
        };
        if x.is_finite() {
            (x as u64).clamp(1, self.max_packets.max(1) as u64) as u32
        } else {
            self.max_packets
        }
    }

    /// A new flow from a random subscriber (fresh source port) to a random server.
    pub fn flow(&mut self, persistent: bool) -> Flow {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_sizes_are_heavy_tailed_and_bounded() {
        let mut s = Synth::new(&SynthConfig {
            seed: 1,
            rate: 40.0,
            dist: SizeDist::Zipf,
            alpha: 1.2,
            zipf_s: 1.5,
            min_packets: 2,
            max_packets: 10_000,
            flow_pps: 50.0,
            udp_share: 0.3,
            keepalive_s: 5.0,
            subscribers: 32,
        });
        let sizes: Vec<u32> = (0..20_000).map(|_| s.size()).collect();
        let small_share = sizes.iter().filter(|&&x| x <= 4).count() as f64 / 20_000.0;
        assert!(small_share > 0.5, "most flows are short: {small_share}");
        assert!(sizes.iter().any(|&x| x >= 200), "some are long");
        assert!(sizes.iter().all(|&x| (2..=10_000).contains(&x)));
    }

    #[test]
    fn empirical_sizes_follow_their_table() {
        // The workload's own seeded stream: the share of flows at or below each tabulated
        // size (in packets) matches the table within 1 percentage point.
        for dist in [
            SizeDist::Websearch,
            SizeDist::Datamining,
            SizeDist::Internet,
        ] {
            let mut s = Synth::new(&SynthConfig {
                seed: 7,
                rate: 1.0,
                dist,
                alpha: 1.2,
                zipf_s: 1.5,
                min_packets: 4,
                max_packets: 100,
                flow_pps: 20.0,
                udp_share: 0.3,
                keepalive_s: 5.0,
                subscribers: 4,
            });
            let n = 100_000;
            let mut sizes: Vec<u32> = (0..n).map(|_| s.size()).collect();
            sizes.sort_unstable();
            let c = dist.empirical().unwrap();
            for &(bytes, _) in &c.points[1..] {
                let pk = cdf::EmpiricalCdf::packets(bytes);
                // Sizes that round to at most `pk` packets: the table's share at pk x MSS bytes.
                let want = cdf_at(c, pk as f64 * cdf::MSS);
                let got = sizes.partition_point(|&x| x <= pk) as f64 / n as f64;
                assert!(
                    (got - want).abs() < 0.01,
                    "{dist}: P[packets <= {pk}] sampled {got}, table {want}"
                );
            }
            assert!(sizes.iter().all(|&x| x >= 1));
        }
    }

    /// The table's P[size <= bytes], interpolated like the sampler.
    fn cdf_at(c: &cdf::EmpiricalCdf, bytes: f64) -> f64 {
        let pts = c.points;
        let i = pts.partition_point(|&(v, _)| v < bytes);
        match (i.checked_sub(1).and_then(|j| pts.get(j)), pts.get(i)) {
            (Some(&(v0, p0)), Some(&(v1, p1))) if v1 > v0 => {
                p0 + (bytes - v0) * (p1 - p0) / (v1 - v0)
            }
            (_, Some(&(_, p1))) => p1,
            _ => 1.0,
        }
    }

    #[test]
    fn packets_carry_their_flow_and_kind() {
        for proto in [TCP, UDP] {
            let p = build_packet(
                proto,
                subscriber_addr(3),
                20_001,
                server_addr(7),
                443,
                SYN | ACK,
                77,
                K_DATA,
            )
            .unwrap();
            assert_eq!(
                parse_output(&p),
                Some((proto, subscriber_addr(3), 20_001, 77, K_DATA))
            );
        }
        assert_eq!(parse_output(&[0x45, 0, 0]), None);
    }

    #[test]
    fn size_distribution_names_round_trip() {
        for d in [
            SizeDist::Pareto,
            SizeDist::Zipf,
            SizeDist::Websearch,
            SizeDist::Datamining,
            SizeDist::Internet,
        ] {
            assert_eq!(d.to_string().parse::<SizeDist>(), Ok(d));
        }
        assert_eq!("backbone".parse::<SizeDist>(), Ok(SizeDist::Internet));
        assert!("normal".parse::<SizeDist>().is_err());
    }
}
