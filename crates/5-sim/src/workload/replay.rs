//! pcap replay: reading a trace's TCP/UDP packets, mapping its flows onto the subscriber and
//! server ranges of [`super`], and a synthetic sample trace.
//!
//! A flow's initiator is the sender of its first packet (the receiver, if that packet is a
//! SYN-ACK); initiators are mapped, deterministically in order of appearance, to subscriber
//! addresses (keeping the port unless two endpoints would collide) and responders to servers.
//! A TCP flow whose capture starts mid-stream gets a synthesized SYN before its first packet
//! (counted), since only an outbound SYN creates a TCP mapping.

use super::{
    ACK, FIN, Flow, MAX_FLOWS, MAX_SUBSCRIBERS, PSH, SYN, Stage, TCP, UDP, server_addr,
    subscriber_addr,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

/// One packet read from a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracePacket {
    /// Time since the trace's first packet.
    pub ts: Duration,
    /// IP protocol ([`TCP`] or [`UDP`]).
    pub proto: u8,
    /// Source endpoint.
    pub src: SocketAddrV4,
    /// Destination endpoint.
    pub dst: SocketAddrV4,
    /// TCP flags (0 for UDP).
    pub flags: u8,
}

/// Counters of reading a trace.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TraceStats {
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

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be opened.
    #[error("opening {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a pcap file, or a record that does not parse (e.g. cut short).
    #[error("{path}: {what}: {source}")]
    Pcap {
        /// The file.
        path: String,
        /// Where.
        what: &'static str,
        /// Why.
        source: pcap_file::PcapError,
    },
    /// A link type other than Ethernet, RAW or IPV4.
    #[error("{path}: unsupported link type {link} (Ethernet, RAW or IPV4)")]
    LinkType {
        /// The file.
        path: String,
        /// The link type found.
        link: String,
    },
}

/// Reads a pcap file's TCP/UDP packets (5-tuple, flags, relative timestamp), in time order;
/// at most `max` records.
pub fn read_pcap(path: &Path, max: u64) -> Result<(Vec<TracePacket>, TraceStats), TraceError> {
    use pcap_file::DataLink;
    let name = || path.display().to_string();
    let f = std::fs::File::open(path).map_err(|source| TraceError::Open {
        path: name(),
        source,
    })?;
    let mut r = pcap_file::pcap::PcapReader::new(std::io::BufReader::new(f)).map_err(|source| {
        TraceError::Pcap {
            path: name(),
            what: "not a pcap file",
            source,
        }
    })?;
    let link = r.header().datalink;
    let ip_only = match link {
        DataLink::ETHERNET => false,
        DataLink::RAW | DataLink::IPV4 => true,
        other => {
            return Err(TraceError::LinkType {
                path: name(),
                link: format!("{other:?}"),
            });
        }
    };
    let mut st = TraceStats::default();
    let mut out = Vec::new();
    let mut first: Option<Duration> = None;
    while let Some(p) = r.next_packet() {
        let p = p.map_err(|source| TraceError::Pcap {
            path: name(),
            what: "bad packet record",
            source,
        })?;
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
pub type FlowTuple = (u8, SocketAddrV4, SocketAddrV4);

/// A trace turned into flows of the migrated group.
#[derive(Clone, Debug, Default)]
pub struct ReplayPlan {
    /// The flows, as the workload's [`Flow`]s.
    pub flows: Vec<Flow>,
    /// The trace's original (initiator, responder) per flow.
    pub orig: Vec<FlowTuple>,
    /// (time, flow, outbound, TCP flags), in time order.
    pub events: Vec<(Duration, u32, bool, u8)>,
    /// What the mapping did.
    pub stats: ReplayStats,
}

/// What the mapping of a trace to the group did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayStats {
    /// Flows mapped.
    pub flows: u64,
    /// Of which TCP.
    pub tcp_flows: u64,
    /// Of which UDP.
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

/// Maps a trace's flows onto `subscribers` subscriber addresses and the servers,
/// deterministically (see the module docs).
pub fn plan_replay(pkts: &[TracePacket], subscribers: u32) -> ReplayPlan {
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

// ---------------------------------------------------------------------- sample trace

/// Why the sample trace could not be written (cannot happen with the built-in flows).
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// A packet could not be built.
    #[error("building a packet: {0}")]
    Build(etherparse::err::packet::BuildWriteError),
    /// The pcap writer refused.
    #[error("writing pcap: {0}")]
    Pcap(pcap_file::PcapError),
}

/// A synthetic trace as a pcap file (Ethernet, microsecond timestamps): about 100 flows over
/// 60 s between "real-world" addresses (clients in 10.1.0.0/16, servers in 198.51.100.0/24;
/// the replay maps them into the group), TCP with handshake, data and FIN both ways (a tenth
/// captured mid-stream), UDP request/reply, and a few long-lived TCP connections with
/// keepalives. Returns the file's bytes and each flow's (protocol, client, server).
pub fn sample_pcap(seed: u64) -> Result<(Vec<u8>, Vec<FlowTuple>), SampleError> {
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
                .map_err(SampleError::Build)
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
    let mut w = PcapWriter::with_header(Vec::new(), header).map_err(SampleError::Pcap)?;
    let base = Duration::from_secs(1_700_000_000);
    for (us, _, frame) in &pkts {
        let p = PcapPacket::new(base + Duration::from_micros(*us), frame.len() as u32, frame);
        w.write_packet(&p).map_err(SampleError::Pcap)?;
    }
    Ok((w.into_writer(), flows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcap_replay_reads_the_flows_it_wrote() {
        let (bytes, flows) = sample_pcap(7).unwrap();
        let dir = std::env::temp_dir().join(format!("flowshift-replay-{}", std::process::id()));
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
        let subs = flowshift_nat::prefix(Ipv4Addr::new(100, 64, 0, 0), 22).unwrap();
        let servers = flowshift_nat::prefix(Ipv4Addr::new(198, 19, 0, 0), 16).unwrap();
        for f in &plan.flows {
            assert!(subs.contains(&f.sub), "{}", f.sub);
            assert!(servers.contains(&f.server), "{}", f.server);
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
    fn garbage_and_truncated_pcaps_are_errors_not_panics() {
        let dir = std::env::temp_dir().join(format!("flowshift-replay-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.pcap");
        std::fs::write(&p, b"definitely not a pcap file").unwrap();
        assert!(read_pcap(&p, 10).is_err());
        let (bytes, _) = sample_pcap(7).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 7]).unwrap();
        assert!(read_pcap(&p, u64::MAX).is_err(), "a cut record is an error");
        assert!(read_pcap(&dir.join("missing.pcap"), 10).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
