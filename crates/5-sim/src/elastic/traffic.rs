//! The elastic scenario's traffic, as two elements: [`Subscribers`] (inside: connection
//! arrivals, one TCP connection = SYN, data at a fixed rate, FIN) and [`Servers`] (outside:
//! every packet answered by one reply: SYN-ACK, ACK or FIN-ACK). Packets are the workload
//! module's ([`crate::workload::build_packet`]); both elements count what they send and
//! receive in time bins, so offered load and goodput come from the ends, not from the NATs.

use crate::element::{Element, Emit};
use crate::packet::{Packet, Port};
use crate::workload::{ACK, FIN, K_DATA, K_FIN, K_REPLY, K_SYN, PSH, SYN, TCP, build_packet};
use flowshift_wire::Instant;
use ipnet::Ipv4Net;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;
use std::time::Duration;

/// How the connection arrival rate varies (a factor of the base rate, >= 1 at its peak).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Profile {
    /// Base rate until `rise_at`, a linear ramp to `factor` x over `ramp`, `factor` x for
    /// `hold`, a linear ramp back over `ramp`, then the base rate again.
    Step {
        /// Start of the rise.
        rise_at: Duration,
        /// Length of each ramp.
        ramp: Duration,
        /// Time at the peak.
        hold: Duration,
        /// Peak factor.
        factor: f64,
    },
    /// A day compressed into `period`: the factor follows `1 + (factor - 1) * (1 - cos)/2`,
    /// from 1 at time 0 to `factor` at `period / 2` and back.
    Diurnal {
        /// Length of one "day".
        period: Duration,
        /// Peak factor.
        factor: f64,
    },
}

impl Profile {
    /// The rate factor at `t` (1 = base).
    pub fn factor_at(&self, t: Duration) -> f64 {
        let t = t.as_secs_f64();
        match *self {
            Profile::Step {
                rise_at,
                ramp,
                hold,
                factor,
            } => {
                let (r0, ramp) = (rise_at.as_secs_f64(), ramp.as_secs_f64().max(1e-9));
                let h0 = r0 + ramp;
                let f0 = h0 + hold.as_secs_f64();
                let up = (factor - 1.0).max(0.0);
                if t < r0 {
                    1.0
                } else if t < h0 {
                    1.0 + up * (t - r0) / ramp
                } else if t < f0 {
                    1.0 + up
                } else if t < f0 + ramp {
                    1.0 + up * (1.0 - (t - f0) / ramp)
                } else {
                    1.0
                }
            }
            Profile::Diurnal { period, factor } => {
                let p = period.as_secs_f64().max(1e-9);
                let phase = (t % p) / p * std::f64::consts::TAU;
                1.0 + (factor - 1.0).max(0.0) * (1.0 - phase.cos()) / 2.0
            }
        }
    }

    /// The largest factor.
    pub fn peak(&self) -> f64 {
        match *self {
            Profile::Step { factor, .. } | Profile::Diurnal { factor, .. } => factor.max(1.0),
        }
    }
}

/// What the subscribers do.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrafficConfig {
    /// Connection arrivals per second at factor 1, over all groups.
    pub base_arrivals: f64,
    /// How the arrival rate varies.
    pub profile: Profile,
    /// Mean connection lifetime (Pareto, shape 1.5: most short, a few long).
    pub mean_duration: Duration,
    /// Outbound data packets per second of one connection (each answered by the server).
    pub conn_pps: f64,
    /// Subscriber hosts per group (addresses from the start of its prefix).
    pub subscribers_per_group: u32,
    /// Server addresses (198.19.0.0/16).
    pub servers: u32,
    /// Group `i` (from 0) draws connections with weight `1 / (i + 1)^skew` (0: even).
    pub group_skew: f64,
    /// Most connections open at once (arrivals beyond are refused and counted).
    pub max_connections: usize,
}

/// Counters of one end, with per-bin series.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EndStats {
    /// Packets sent.
    pub sent: u64,
    /// Packets received.
    pub received: u64,
    /// Packets received that were not ours to answer (malformed, not TCP).
    pub malformed: u64,
    /// Packets sent per bin.
    pub sent_bins: Vec<u64>,
    /// Packets received per bin.
    pub received_bins: Vec<u64>,
}

impl EndStats {
    fn bump(bins: &mut Vec<u64>, i: usize) {
        if bins.len() <= i {
            bins.resize(i + 1, 0);
        }
        bins[i] += 1;
    }
}

fn bin_of(now: Instant, bin: Duration) -> usize {
    (now.as_nanos() / bin.as_nanos().max(1) as u64) as usize
}

struct Conn {
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    flow: u32,
    /// Data packets still to send (then the FIN).
    left: u32,
    gap: Duration,
    syn_sent: bool,
}

/// The subscribers (see the module documentation). Port 0 faces the switch.
pub struct Subscribers {
    cfg: TrafficConfig,
    /// (subscriber prefix, cumulative weight).
    groups: Vec<(Ipv4Net, f64)>,
    rng: ChaCha8Rng,
    bin: Duration,
    next_arrival: Instant,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    due: BinaryHeap<Reverse<(Instant, u32)>>,
    next_port: Vec<u16>,
    next_flow: u32,
    /// Connections opened.
    pub opened: u64,
    /// Arrivals refused (`max_connections` open).
    pub refused: u64,
    /// Packets.
    pub stats: EndStats,
}

impl Subscribers {
    /// Subscribers of `groups` (prefixes, in group order), bins of `bin`, randomness `rng`.
    pub fn new(cfg: TrafficConfig, groups: &[Ipv4Net], bin: Duration, rng: ChaCha8Rng) -> Self {
        let mut acc = 0.0;
        let groups = groups
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                acc += 1.0 / ((i + 1) as f64).powf(cfg.group_skew);
                (p, acc)
            })
            .collect::<Vec<_>>();
        let hosts = groups.len() * cfg.subscribers_per_group.max(1) as usize;
        let mut s = Subscribers {
            cfg,
            groups,
            rng,
            bin,
            next_arrival: Instant::ZERO,
            conns: Vec::new(),
            free: Vec::new(),
            due: BinaryHeap::new(),
            next_port: vec![1024; hosts],
            next_flow: 0,
            opened: 0,
            refused: 0,
            stats: EndStats::default(),
        };
        s.next_arrival = s.gap_after(Instant::ZERO);
        s
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.conns.len() - self.free.len()
    }

    fn peak_rate(&self) -> f64 {
        (self.cfg.base_arrivals * self.cfg.profile.peak()).max(1e-9)
    }

    /// The next candidate arrival after `t` (thinning: candidates at the peak rate).
    fn gap_after(&mut self, t: Instant) -> Instant {
        let u: f64 = self.rng.random_range(f64::MIN_POSITIVE..1.0);
        t + Duration::from_secs_f64((-u.ln() / self.peak_rate()).min(1e6))
    }

    fn arrive(&mut self, now: Instant) {
        let f = self
            .cfg
            .profile
            .factor_at(now.saturating_since(Instant::ZERO));
        let accept: f64 = self.rng.random_range(0.0..1.0);
        if accept * self.cfg.profile.peak() >= f {
            return;
        }
        if self.open_connections() >= self.cfg.max_connections {
            self.refused += 1;
            return;
        }
        let total = self.groups.last().map_or(0.0, |g| g.1);
        let pick: f64 = self.rng.random_range(0.0..total.max(1e-9));
        let gi = self
            .groups
            .iter()
            .position(|g| pick < g.1)
            .unwrap_or(self.groups.len().saturating_sub(1));
        let Some(&(prefix, _)) = self.groups.get(gi) else {
            return;
        };
        let per = self.cfg.subscribers_per_group.max(1);
        let hi = self.rng.random_range(0..per);
        let src = Ipv4Addr::from(u32::from(prefix.network()) + 1 + hi);
        let host = gi * per as usize + hi as usize;
        let sport = self.next_port[host];
        self.next_port[host] = if sport == u16::MAX { 1024 } else { sport + 1 };
        let server = self.rng.random_range(0..self.cfg.servers.max(1));
        let dst = Ipv4Addr::from(u32::from_be_bytes([198, 19, 0, 1]) + server);
        // Pareto, shape 1.5: minimum = mean / 3.
        let u: f64 = self.rng.random_range(f64::MIN_POSITIVE..1.0);
        let life = self.cfg.mean_duration.as_secs_f64() / 3.0 / u.powf(1.0 / 1.5);
        let pps = self.cfg.conn_pps.max(1e-3);
        let left = (life * pps).clamp(1.0, 1e7) as u32;
        let flow = self.next_flow;
        self.next_flow = self.next_flow.wrapping_add(1);
        let c = Conn {
            src,
            sport,
            dst,
            flow,
            left,
            gap: Duration::from_secs_f64(1.0 / pps),
            syn_sent: false,
        };
        let slot = match self.free.pop() {
            Some(i) => {
                self.conns[i as usize] = Some(c);
                i
            }
            None => {
                self.conns.push(Some(c));
                (self.conns.len() - 1) as u32
            }
        };
        self.opened += 1;
        self.due.push(Reverse((now, slot)));
    }

    /// Sends the next packet of connection `slot`; schedules the one after.
    fn step(&mut self, now: Instant, slot: u32, out: &mut Emit<'_>) {
        let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) else {
            return;
        };
        let (flags, kind, done) = if !c.syn_sent {
            c.syn_sent = true;
            (SYN, K_SYN, false)
        } else if c.left > 0 {
            c.left -= 1;
            (ACK | PSH, K_DATA, false)
        } else {
            (FIN | ACK, K_FIN, true)
        };
        let bytes = build_packet(TCP, c.src, c.sport, c.dst, 80, flags, c.flow, kind);
        let next = now + c.gap;
        if done {
            self.conns[slot as usize] = None;
            self.free.push(slot);
        } else {
            self.due.push(Reverse((next, slot)));
        }
        if let Ok(b) = bytes {
            let p = out.new_packet(b);
            self.stats.sent += 1;
            EndStats::bump(&mut self.stats.sent_bins, bin_of(now, self.bin));
            out.send(0, p);
        }
    }
}

impl Element for Subscribers {
    fn on_packet(&mut self, now: Instant, _port: Port, pkt: Packet, out: &mut Emit<'_>) {
        self.stats.received += 1;
        EndStats::bump(&mut self.stats.received_bins, bin_of(now, self.bin));
        out.consume(pkt);
    }

    fn on_timer(&mut self, now: Instant, out: &mut Emit<'_>) {
        while self.next_arrival <= now {
            let t = self.next_arrival;
            self.arrive(t);
            self.next_arrival = self.gap_after(t);
        }
        while let Some(&Reverse((t, slot))) = self.due.peek() {
            if t > now {
                break;
            }
            self.due.pop();
            self.step(now, slot, out);
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        let d = self.due.peek().map_or(Instant::MAX, |r| r.0.0);
        Some(d.min(self.next_arrival))
    }
}

/// The servers (see the module documentation). Port 0 faces the switch.
pub struct Servers {
    bin: Duration,
    /// Packets.
    pub stats: EndStats,
}

impl Servers {
    /// Servers counting in bins of `bin`.
    pub fn new(bin: Duration) -> Self {
        Servers {
            bin,
            stats: EndStats::default(),
        }
    }
}

/// (src, sport, dst, dport, flags, flow, kind) of a TCP packet built by `build_packet`.
fn tcp_fields(b: &[u8]) -> Option<(Ipv4Addr, u16, Ipv4Addr, u16, u8, u32, u8)> {
    let ihl = (*b.first()? as usize & 0x0f) * 4;
    if *b.get(9)? != TCP {
        return None;
    }
    let src = Ipv4Addr::new(*b.get(12)?, *b.get(13)?, *b.get(14)?, *b.get(15)?);
    let dst = Ipv4Addr::new(*b.get(16)?, *b.get(17)?, *b.get(18)?, *b.get(19)?);
    let t = b.get(ihl..ihl + 20)?;
    let off = ihl + (t[12] as usize >> 4) * 4;
    let p = b.get(off..off + 5)?;
    Some((
        src,
        u16::from_be_bytes([t[0], t[1]]),
        dst,
        u16::from_be_bytes([t[2], t[3]]),
        t[13],
        u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
        p[4],
    ))
}

impl Element for Servers {
    fn on_packet(&mut self, now: Instant, _port: Port, pkt: Packet, out: &mut Emit<'_>) {
        self.stats.received += 1;
        EndStats::bump(&mut self.stats.received_bins, bin_of(now, self.bin));
        let reply = tcp_fields(pkt.bytes()).and_then(|(src, sport, dst, dport, fl, flow, _)| {
            let flags = if fl & SYN != 0 {
                SYN | ACK
            } else if fl & FIN != 0 {
                FIN | ACK
            } else {
                ACK
            };
            build_packet(TCP, dst, dport, src, sport, flags, flow, K_REPLY).ok()
        });
        out.consume(pkt);
        match reply {
            Some(b) => {
                let p = out.new_packet(b);
                self.stats.sent += 1;
                EndStats::bump(&mut self.stats.sent_bins, bin_of(now, self.bin));
                out.send(0, p);
            }
            None => self.stats.malformed += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_rise_hold_and_fall() {
        let s = Profile::Step {
            rise_at: Duration::from_secs(10),
            ramp: Duration::from_secs(10),
            hold: Duration::from_secs(20),
            factor: 5.0,
        };
        let f = |t| s.factor_at(Duration::from_secs(t));
        assert_eq!(
            (f(0), f(15), f(25), f(45), f(60)),
            (1.0, 3.0, 5.0, 3.0, 1.0)
        );
        let d = Profile::Diurnal {
            period: Duration::from_secs(100),
            factor: 5.0,
        };
        assert!((d.factor_at(Duration::ZERO) - 1.0).abs() < 1e-9);
        assert!((d.factor_at(Duration::from_secs(50)) - 5.0).abs() < 1e-9);
        assert_eq!(d.peak(), 5.0);
    }

    #[test]
    fn a_reply_swaps_the_endpoints_and_keeps_the_flow() {
        let b = build_packet(
            TCP,
            Ipv4Addr::new(203, 0, 113, 4),
            4000,
            Ipv4Addr::new(198, 19, 0, 1),
            80,
            SYN,
            7,
            K_SYN,
        )
        .unwrap();
        let (src, sport, dst, dport, fl, flow, kind) = tcp_fields(&b).unwrap();
        assert_eq!(
            (src, sport, dst, dport),
            (
                Ipv4Addr::new(203, 0, 113, 4),
                4000,
                Ipv4Addr::new(198, 19, 0, 1),
                80
            )
        );
        assert_eq!((fl & SYN, flow, kind), (SYN, 7, K_SYN));
    }
}
