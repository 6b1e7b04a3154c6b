//! Hosts: a smoltcp [`Interface`] (`Medium::Ip`) over a virtual device, polled in virtual time,
//! with simple applications (bulk/short TCP flows, TCP sinks, UDP CBR sources and sinks).
//!
//! smoltcp pitfalls handled here:
//! * `connect` needs an explicit local port: hosts allocate ephemeral ports from
//!   49152..=65535 (seeded start, skipping ports in use).
//! * `poll` is repeated together with the applications until neither makes progress.
//! * Egress backpressure: the device refuses transmit tokens when the host's link queue has no
//!   room for another MTU-sized datagram; smoltcp keeps the data and the host is woken when the
//!   link queue drains (so a host never drops its own packets, like a qdisc with TSQ).
//! * When the device refused a token, smoltcp's `poll_at` says "now": the host then waits for
//!   the link wake-up instead of spinning.
//! * smoltcp time has microsecond resolution: virtual nanoseconds are truncated for smoltcp,
//!   and its deadlines are converted back exactly.
//! * On `Medium::Ip` there is no neighbour cache; a default route via the host's own address
//!   only satisfies smoltcp's route lookup.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use flowshift_wire::Instant;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket,
};

use crate::packet::{ElementId, FiveTuple, FlowId};

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
type HashSet<T> = std::collections::HashSet<T, foldhash::fast::FixedState>;

/// Largest number of recycled packet buffers kept for reuse.
pub(crate) const POOL_LIMIT: usize = 4096;
/// Bound on poll/app rounds per wake-up (each round makes progress; a counter records hits).
const MAX_ROUNDS: usize = 64;
static ZEROS: [u8; 65536] = [0; 65536];

/// Configuration of a host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostConfig {
    /// Name used in reports.
    pub name: String,
    /// The host's IPv4 address. Must lie in 100.64.0.0/10 (subscribers), 198.18.0.0/15 or
    /// 203.0.113.0/24 (servers).
    pub addr: Ipv4Addr,
    /// IP MTU in bytes (1500 gives a TCP MSS of 1460).
    pub mtu: usize,
    /// Bound of the device receive queue in packets; overflow is a counted drop
    /// ([`crate::DropCause::HostRxFull`]).
    pub rx_queue_packets: usize,
    /// Compute checksums on transmit and verify IPv4/TCP/UDP checksums on receive (a datagram
    /// that fails is dropped as [`crate::DropCause::HostRejected`]). If false, checksums are
    /// neither computed nor checked.
    pub checksums: bool,
}

impl HostConfig {
    /// A host with MTU 1500, a 1024-packet receive queue and checksums on.
    pub fn new(name: impl Into<String>, addr: Ipv4Addr) -> Self {
        HostConfig {
            name: name.into(),
            addr,
            mtu: 1500,
            rx_queue_packets: 1024,
            checksums: true,
        }
    }
}

/// TCP congestion control algorithm (smoltcp's implementations).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Congestion {
    /// CUBIC (RFC 9438).
    #[default]
    Cubic,
    /// NewReno-style AIMD.
    Reno,
    /// No congestion control (window limited only by the peer).
    None,
}

/// TCP socket parameters used by TCP applications.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TcpConfig {
    /// Congestion control algorithm.
    pub congestion: Congestion,
    /// Receive buffer in bytes (≤ 1 GiB); the window scale follows from it.
    pub rx_buffer: usize,
    /// Send buffer in bytes.
    pub tx_buffer: usize,
    /// Nagle's algorithm.
    pub nagle: bool,
    /// Delayed-ACK timeout (`None` acks every segment at once).
    pub ack_delay: Option<Duration>,
}

impl Default for TcpConfig {
    /// Cubic, 256 KiB buffers (2 BDP at 1 Gbit/s and 1 ms RTT), Nagle off, 10 ms delayed ACK.
    fn default() -> Self {
        TcpConfig {
            congestion: Congestion::Cubic,
            rx_buffer: 256 * 1024,
            tx_buffer: 256 * 1024,
            nagle: false,
            ack_delay: Some(Duration::from_millis(10)),
        }
    }
}

/// An application to run on a host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AppSpec {
    /// A TCP client: connects to `dst` at `start`, sends `bytes` (forever if `None`), then
    /// closes. Completion is the time the connection reaches TIME-WAIT or CLOSED after our FIN.
    TcpSource {
        /// Server address and port.
        dst: SocketAddrV4,
        /// Bytes to send; `None` sends forever (iperf-like).
        bytes: Option<u64>,
        /// When to connect.
        start: Instant,
        /// Socket parameters.
        tcp: TcpConfig,
    },
    /// A TCP server that accepts up to `backlog` concurrent connections on `port`, reads and
    /// counts every byte (goodput), closes when the peer closes, and listens again.
    TcpSink {
        /// Listening port.
        port: u16,
        /// Number of listening sockets (concurrent connections), ≥ 1.
        backlog: usize,
        /// Socket parameters.
        tcp: TcpConfig,
    },
    /// A constant-bit-rate UDP source: one datagram of `payload_len` bytes every `interval`
    /// from `start` (inclusive) to `stop` (exclusive).
    UdpCbr {
        /// Destination address and port.
        dst: SocketAddrV4,
        /// UDP payload bytes per datagram (≤ MTU − 28).
        payload_len: usize,
        /// Time between datagrams (> 0).
        interval: Duration,
        /// First send time.
        start: Instant,
        /// No datagram is sent at or after this time.
        stop: Instant,
    },
    /// A UDP receiver counting datagrams and bytes on `port`.
    UdpSink {
        /// Bound port.
        port: u16,
    },
}

/// Counters of one application.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AppStats {
    /// `tcp_source`, `tcp_sink`, `udp_cbr` or `udp_sink`.
    pub kind: &'static str,
    /// Payload bytes handed to the socket (sources).
    pub bytes_sent: u64,
    /// Payload bytes read from the socket (sinks): the goodput numerator.
    pub bytes_received: u64,
    /// Datagrams handed to the socket (UDP sources).
    pub packets_sent: u64,
    /// Datagrams read (UDP sinks).
    pub packets_received: u64,
    /// Datagrams refused because the socket send buffer was full (UDP sources).
    pub refused: u64,
    /// TCP connections established (sources: 0 or 1; sinks: accepted).
    pub connections: u64,
    /// Connections that finished normally.
    pub completed: u64,
    /// Connections that failed (reset, refused, no ephemeral port).
    pub failed: u64,
    /// Virtual time (ns) the application started sending / accepted its first connection.
    pub started_ns: Option<u64>,
    /// Virtual time (ns) a source finished (for sinks: the last completed connection).
    pub finished_ns: Option<u64>,
}

/// Counters of one host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostStats {
    /// Datagrams handed to smoltcp.
    pub rx_packets: u64,
    /// Datagrams emitted by smoltcp.
    pub tx_packets: u64,
    /// Wake-ups (polls).
    pub polls: u64,
    /// Times the device refused a transmit token because the link queue was full.
    pub tx_blocked: u64,
    /// Times a poll needed the round bound (`MAX_ROUNDS`).
    pub round_limit_hits: u64,
    /// Times smoltcp asked to be polled again immediately without being blocked (re-polled
    /// 1 µs later instead of spinning).
    pub spin_guards: u64,
    /// Datagrams refused at ingress (malformed, wrong address, bad checksum).
    pub rejected: u64,
}

enum AppState {
    TcpSource {
        dst: SocketAddrV4,
        remaining: Option<u64>,
        start: Instant,
        tcp: TcpConfig,
        sock: Option<(SocketHandle, u16)>,
        closing: bool,
        done: bool,
    },
    TcpSink {
        port: u16,
        socks: Vec<(SocketHandle, bool)>,
    },
    UdpCbr {
        dst: SocketAddrV4,
        payload_len: usize,
        interval: Duration,
        next: Instant,
        stop: Instant,
        sock: Option<(SocketHandle, u16)>,
    },
    UdpSink {
        sock: SocketHandle,
    },
}

pub(crate) struct App {
    state: AppState,
    pub stats: AppStats,
    /// Bytes received per goodput bin (sinks).
    pub bins: Vec<u64>,
}

pub(crate) struct SimDevice {
    rx: VecDeque<Vec<u8>>,
    spent: Vec<Vec<u8>>,
    pub tx: Vec<Vec<u8>>,
    pub free: Vec<Vec<u8>>,
    budget: usize,
    exhausted: bool,
    caps: DeviceCapabilities,
}

pub(crate) struct SimRx<'a> {
    buf: Vec<u8>,
    spent: &'a mut Vec<Vec<u8>>,
}

pub(crate) struct SimTx<'a> {
    tx: &'a mut Vec<Vec<u8>>,
    free: &'a mut Vec<Vec<u8>>,
    budget: &'a mut usize,
    mtu: usize,
}

impl phy::RxToken for SimRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let SimRx { buf, spent } = self;
        let r = f(&buf);
        spent.push(buf);
        r
    }
}

impl phy::TxToken for SimTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.mtu.max(len)));
        buf.clear();
        buf.resize(len, 0);
        let r = f(&mut buf);
        self.tx.push(buf);
        *self.budget = self.budget.saturating_sub(1);
        r
    }
}

impl phy::Device for SimDevice {
    type RxToken<'a> = SimRx<'a>;
    type TxToken<'a> = SimTx<'a>;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let buf = self.rx.pop_front()?;
        // Replies generated while receiving (RST, immediate ACK) are not budgeted: refusing
        // them would stall ingress. They may overflow the link queue (a counted drop).
        Some((
            SimRx {
                buf,
                spent: &mut self.spent,
            },
            SimTx {
                tx: &mut self.tx,
                free: &mut self.free,
                budget: &mut self.budget,
                mtu: self.caps.max_transmission_unit,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        if self.budget == 0 {
            self.exhausted = true;
            return None;
        }
        Some(SimTx {
            tx: &mut self.tx,
            free: &mut self.free,
            budget: &mut self.budget,
            mtu: self.caps.max_transmission_unit,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

/// Result of one host poll.
pub(crate) struct PollOutcome {
    /// When the host wants to be polled again (timers), if ever.
    pub next_wake: Option<Instant>,
    /// The device refused a transmit token: wake the host when the link queue drains.
    pub blocked: bool,
}

pub(crate) fn to_smol(t: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros((t.as_nanos() / 1000) as i64)
}

fn from_smol(t: smoltcp::time::Instant) -> Instant {
    Instant::from_nanos((t.total_micros().max(0) as u64).saturating_mul(1000))
}

pub(crate) struct Host {
    pub cfg: HostConfig,
    iface: Interface,
    sockets: SocketSet<'static>,
    pub dev: SimDevice,
    pub apps: Vec<App>,
    /// Flow ids of this host's egress 5-tuples.
    pub flows: HashMap<FiveTuple, FlowId>,
    next_port: u16,
    ports_in_use: HashSet<u16>,
    pub stats: HostStats,
}

/// Checks that `addr` is in one of the address ranges the project allows.
pub fn address_allowed(addr: Ipv4Addr) -> bool {
    let a = u32::from(addr);
    let in_net = |net: u32, len: u32| (a ^ net) >> (32 - len) == 0;
    in_net(u32::from(Ipv4Addr::new(100, 64, 0, 0)), 10)
        || in_net(u32::from(Ipv4Addr::new(198, 18, 0, 0)), 15)
        || in_net(u32::from(Ipv4Addr::new(203, 0, 113, 0)), 24)
}

impl Host {
    pub fn new(cfg: HostConfig, mut rng: ChaCha8Rng, now: Instant) -> Result<Host, String> {
        if !address_allowed(cfg.addr) {
            return Err(format!(
                "address {} outside 100.64.0.0/10, 198.18.0.0/15 and 203.0.113.0/24",
                cfg.addr
            ));
        }
        if !(576..=65535).contains(&cfg.mtu) {
            return Err(format!("host MTU {} not in 576..=65535", cfg.mtu));
        }
        if cfg.rx_queue_packets == 0 {
            return Err("host rx queue must hold at least one packet".into());
        }
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = cfg.mtu;
        caps.checksum = if cfg.checksums {
            // smoltcp computes on transmit; the host verifies on receive itself (so it can
            // count failures), hence Tx only.
            let mut c = ChecksumCapabilities::default();
            c.ipv4 = Checksum::Tx;
            c.tcp = Checksum::Tx;
            c.udp = Checksum::Tx;
            c.icmpv4 = Checksum::Tx;
            c
        } else {
            ChecksumCapabilities::ignored()
        };
        let mut dev = SimDevice {
            rx: VecDeque::new(),
            spent: Vec::new(),
            tx: Vec::new(),
            free: Vec::new(),
            budget: 0,
            exhausted: false,
            caps,
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = rng.random();
        let mut iface = Interface::new(config, &mut dev, to_smol(now));
        let mut pushed = Ok(());
        iface.update_ip_addrs(|addrs| {
            pushed = addrs.push(IpCidr::new(IpAddress::Ipv4(cfg.addr), 32));
        });
        pushed.map_err(|_| "smoltcp address table full".to_string())?;
        iface
            .routes_mut()
            .add_default_ipv4_route(cfg.addr)
            .map_err(|_| "smoltcp route table full".to_string())?;
        let next_port = 49152 + rng.random_range(0..16384u16);
        Ok(Host {
            cfg,
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            apps: Vec::new(),
            flows: HashMap::default(),
            next_port,
            ports_in_use: HashSet::default(),
            stats: HostStats::default(),
        })
    }

    /// Checks a received datagram before delivery: `Err(true)` if the receive queue is full,
    /// `Err(false)` if it is malformed, not addressed to this host or fails its checksums.
    pub fn check_ingress(&mut self, bytes: &[u8]) -> Result<(), bool> {
        if !self.valid_for_me(bytes) {
            self.stats.rejected += 1;
            return Err(false);
        }
        if self.dev.rx.len() >= self.cfg.rx_queue_packets {
            return Err(true);
        }
        Ok(())
    }

    /// Queues a datagram accepted by [`Host::check_ingress`] for smoltcp.
    pub fn push_ingress(&mut self, bytes: Vec<u8>) {
        self.stats.rx_packets += 1;
        self.dev.rx.push_back(bytes);
    }

    fn valid_for_me(&self, bytes: &[u8]) -> bool {
        let Ok(ip) = Ipv4Packet::new_checked(bytes) else {
            return false;
        };
        if ip.dst_addr() != self.cfg.addr {
            return false;
        }
        if !self.cfg.checksums {
            return true;
        }
        if !ip.verify_checksum() {
            return false;
        }
        if ip.frag_offset() != 0 || ip.more_frags() {
            return true;
        }
        let (src, dst) = (
            IpAddress::Ipv4(ip.src_addr()),
            IpAddress::Ipv4(ip.dst_addr()),
        );
        match ip.next_header() {
            IpProtocol::Tcp => {
                TcpPacket::new_checked(ip.payload()).is_ok_and(|t| t.verify_checksum(&src, &dst))
            }
            IpProtocol::Udp => {
                UdpPacket::new_checked(ip.payload()).is_ok_and(|u| u.verify_checksum(&src, &dst))
            }
            _ => true,
        }
    }

    fn alloc_port(&mut self) -> Option<u16> {
        for _ in 0..16384 {
            let p = self.next_port;
            self.next_port = if p == 65535 { 49152 } else { p + 1 };
            if self.ports_in_use.insert(p) {
                return Some(p);
            }
        }
        None
    }

    pub fn add_app(&mut self, spec: AppSpec) -> Result<usize, String> {
        let (state, kind) = match spec {
            AppSpec::TcpSource {
                dst,
                bytes,
                start,
                tcp,
            } => {
                check_tcp(&tcp)?;
                (
                    AppState::TcpSource {
                        dst,
                        remaining: bytes,
                        start,
                        tcp,
                        sock: None,
                        closing: false,
                        done: false,
                    },
                    "tcp_source",
                )
            }
            AppSpec::TcpSink { port, backlog, tcp } => {
                check_tcp(&tcp)?;
                if backlog == 0 || port == 0 {
                    return Err("tcp sink needs a port and backlog ≥ 1".into());
                }
                let mut socks = Vec::with_capacity(backlog);
                for _ in 0..backlog {
                    let mut s = new_tcp_socket(&tcp);
                    s.listen(port).map_err(|e| format!("listen: {e:?}"))?;
                    socks.push((self.sockets.add(s), false));
                }
                (AppState::TcpSink { port, socks }, "tcp_sink")
            }
            AppSpec::UdpCbr {
                dst,
                payload_len,
                interval,
                start,
                stop,
            } => {
                if payload_len + 28 > self.cfg.mtu {
                    return Err(format!(
                        "udp payload {payload_len} exceeds MTU {} - 28",
                        self.cfg.mtu
                    ));
                }
                if interval.is_zero() {
                    return Err("udp cbr interval must be > 0".into());
                }
                (
                    AppState::UdpCbr {
                        dst,
                        payload_len,
                        interval,
                        next: start,
                        stop,
                        sock: None,
                    },
                    "udp_cbr",
                )
            }
            AppSpec::UdpSink { port } => {
                let mut s = udp::Socket::new(
                    udp::PacketBuffer::new(
                        vec![udp::PacketMetadata::EMPTY; 256],
                        vec![0u8; 256 * self.cfg.mtu],
                    ),
                    udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 1], vec![0u8; 16]),
                );
                s.bind(port).map_err(|e| format!("udp bind: {e:?}"))?;
                (
                    AppState::UdpSink {
                        sock: self.sockets.add(s),
                    },
                    "udp_sink",
                )
            }
        };
        self.apps.push(App {
            state,
            stats: AppStats {
                kind,
                ..AppStats::default()
            },
            bins: Vec::new(),
        });
        Ok(self.apps.len() - 1)
    }

    /// Polls smoltcp and the applications to a fixpoint at `now` with a transmit budget of
    /// `budget` datagrams. Produced datagrams are left in `dev.tx`.
    pub fn poll(&mut self, now: Instant, budget: usize, bin: Duration) -> PollOutcome {
        self.stats.polls += 1;
        self.dev.budget = budget;
        self.dev.exhausted = false;
        let ts = to_smol(now);
        let mut rounds = 0;
        loop {
            rounds += 1;
            self.iface.poll(ts, &mut self.dev, &mut self.sockets);
            let progress = self.service_apps(now, bin);
            if !progress && self.dev.rx.is_empty() {
                break;
            }
            if rounds >= MAX_ROUNDS {
                self.stats.round_limit_hits += 1;
                break;
            }
        }
        self.stats.tx_packets += self.dev.tx.len() as u64;
        let spent = std::mem::take(&mut self.dev.spent);
        for b in spent {
            if self.dev.free.len() < POOL_LIMIT {
                self.dev.free.push(b);
            }
        }
        if self.dev.exhausted {
            self.stats.tx_blocked += 1;
        }
        let mut next = self.apps_next_deadline(now);
        if let Some(at) = self.iface.poll_at(ts, &self.sockets) {
            let at = from_smol(at);
            if at > now {
                next = Some(next.map_or(at, |n| n.min(at)));
            } else if !self.dev.exhausted {
                self.stats.spin_guards += 1;
                let at = now + Duration::from_micros(1);
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        PollOutcome {
            next_wake: next,
            blocked: self.dev.exhausted,
        }
    }

    fn apps_next_deadline(&self, now: Instant) -> Option<Instant> {
        self.apps
            .iter()
            .filter_map(|a| match &a.state {
                AppState::TcpSource {
                    start,
                    sock: None,
                    done: false,
                    ..
                } => Some(*start),
                AppState::UdpCbr { next, stop, .. } if next < stop => Some(*next),
                _ => None,
            })
            .map(|t| t.max(now))
            .filter(|t| *t > now)
            .min()
    }

    fn service_apps(&mut self, now: Instant, bin: Duration) -> bool {
        let mut progress = false;
        let bin_idx = (now.as_nanos() / (bin.as_nanos().max(1) as u64)) as usize;
        for i in 0..self.apps.len() {
            progress |= self.service_app(i, now, bin_idx);
        }
        progress
    }

    fn service_app(&mut self, i: usize, now: Instant, bin_idx: usize) -> bool {
        let mut progress = false;
        // Split borrows: the app, the socket set and the port allocator.
        let mut new_port = None;
        let needs_port = match &self.apps[i].state {
            AppState::TcpSource {
                sock: None,
                done: false,
                start,
                ..
            } => *start <= now,
            AppState::UdpCbr {
                sock: None,
                next,
                stop,
                ..
            } => next <= &now && next < stop,
            _ => false,
        };
        if needs_port {
            new_port = Some(self.alloc_port());
        }
        let app = &mut self.apps[i];
        let stats = &mut app.stats;
        match &mut app.state {
            AppState::TcpSource {
                dst,
                remaining,
                tcp: cfg,
                sock,
                closing,
                done,
                ..
            } => {
                if *done {
                    return false;
                }
                if sock.is_none() {
                    let Some(port) = new_port else {
                        return false;
                    };
                    progress = true;
                    stats.started_ns = Some(now.as_nanos());
                    let Some(port) = port else {
                        stats.failed += 1;
                        *done = true;
                        return true;
                    };
                    let mut s = new_tcp_socket(cfg);
                    if s.connect(
                        self.iface.context(),
                        (IpAddress::Ipv4(*dst.ip()), dst.port()),
                        port,
                    )
                    .is_err()
                    {
                        stats.failed += 1;
                        *done = true;
                        self.ports_in_use.remove(&port);
                        return true;
                    }
                    *sock = Some((self.sockets.add(s), port));
                }
                let Some((h, port)) = *sock else {
                    return progress;
                };
                let s = self.sockets.get_mut::<tcp::Socket>(h);
                if s.is_active() && s.state() != tcp::State::SynSent && stats.connections == 0 {
                    stats.connections = 1;
                }
                if s.may_send() && !*closing {
                    let limit = remaining.map_or(usize::MAX, |r| r.min(usize::MAX as u64) as usize);
                    if limit > 0 {
                        // The payload content is irrelevant: enqueue without copying.
                        let n = s
                            .send(|buf| {
                                let n = buf.len().min(limit);
                                (n, n)
                            })
                            .unwrap_or(0);
                        if n > 0 {
                            progress = true;
                            stats.bytes_sent += n as u64;
                            if let Some(r) = remaining {
                                *r -= n as u64;
                            }
                        }
                    }
                    if *remaining == Some(0) {
                        s.close();
                        *closing = true;
                        progress = true;
                    }
                }
                let state = s.state();
                let finished = matches!(state, tcp::State::TimeWait | tcp::State::Closed);
                if finished {
                    if *closing && (state == tcp::State::TimeWait || s.send_queue() == 0) {
                        stats.completed += 1;
                    } else {
                        stats.failed += 1;
                    }
                    stats.finished_ns = Some(now.as_nanos());
                    self.sockets.remove(h);
                    self.ports_in_use.remove(&port);
                    *sock = None;
                    *done = true;
                    progress = true;
                }
            }
            AppState::TcpSink { port, socks } => {
                for (h, active) in socks.iter_mut() {
                    let s = self.sockets.get_mut::<tcp::Socket>(*h);
                    if !*active && s.is_active() && s.state() != tcp::State::SynReceived {
                        *active = true;
                        stats.connections += 1;
                        stats.started_ns.get_or_insert(now.as_nanos());
                    }
                    while s.can_recv() {
                        let n = s.recv(|b| (b.len(), b.len())).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        progress = true;
                        stats.bytes_received += n as u64;
                        add_bin(&mut app.bins, bin_idx, n as u64);
                    }
                    match s.state() {
                        tcp::State::CloseWait => {
                            s.close();
                            progress = true;
                        }
                        tcp::State::Closed | tcp::State::TimeWait => {
                            if *active {
                                stats.completed += 1;
                                stats.finished_ns = Some(now.as_nanos());
                            }
                            s.abort();
                            if s.listen(*port).is_ok() {
                                progress = true;
                            }
                            *active = false;
                        }
                        _ => {}
                    }
                }
            }
            AppState::UdpCbr {
                dst,
                payload_len,
                interval,
                next,
                stop,
                sock,
            } => {
                if sock.is_none() {
                    let Some(port) = new_port else {
                        return false;
                    };
                    stats.started_ns = Some(now.as_nanos());
                    let Some(port) = port else {
                        stats.failed += 1;
                        *next = *stop;
                        return true;
                    };
                    let mut s = udp::Socket::new(
                        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 1], vec![0u8; 16]),
                        udp::PacketBuffer::new(
                            vec![udp::PacketMetadata::EMPTY; 256],
                            vec![0u8; 256 * (*payload_len).max(1)],
                        ),
                    );
                    if s.bind(port).is_err() {
                        stats.failed += 1;
                        *next = *stop;
                        return true;
                    }
                    *sock = Some((self.sockets.add(s), port));
                }
                let Some((h, _)) = *sock else {
                    return progress;
                };
                let s = self.sockets.get_mut::<udp::Socket>(h);
                let ep = (IpAddress::Ipv4(*dst.ip()), dst.port());
                while *next <= now && *next < *stop {
                    match s.send_slice(&ZEROS[..*payload_len], ep) {
                        Ok(()) => {
                            stats.packets_sent += 1;
                            stats.bytes_sent += *payload_len as u64;
                        }
                        Err(_) => stats.refused += 1,
                    }
                    *next = *next + *interval;
                    progress = true;
                }
                if *next >= *stop && stats.finished_ns.is_none() && s.send_queue() == 0 {
                    stats.finished_ns = Some(now.as_nanos());
                }
            }
            AppState::UdpSink { sock } => {
                let s = self.sockets.get_mut::<udp::Socket>(*sock);
                while let Ok((data, _)) = s.recv() {
                    let n = data.len() as u64;
                    stats.packets_received += 1;
                    stats.bytes_received += n;
                    stats.started_ns.get_or_insert(now.as_nanos());
                    add_bin(&mut app.bins, bin_idx, n);
                    progress = true;
                }
            }
        }
        progress
    }
}

fn add_bin(bins: &mut Vec<u64>, idx: usize, n: u64) {
    if bins.len() <= idx {
        bins.resize(idx + 1, 0);
    }
    bins[idx] += n;
}

fn check_tcp(tcp: &TcpConfig) -> Result<(), String> {
    if tcp.rx_buffer == 0 || tcp.tx_buffer == 0 || tcp.rx_buffer > (1 << 30) {
        return Err("tcp buffers must be in 1..=1 GiB".into());
    }
    Ok(())
}

fn new_tcp_socket(cfg: &TcpConfig) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; cfg.rx_buffer]),
        tcp::SocketBuffer::new(vec![0u8; cfg.tx_buffer]),
    );
    s.set_congestion_control(match cfg.congestion {
        Congestion::Cubic => tcp::CongestionControl::Cubic,
        Congestion::Reno => tcp::CongestionControl::Reno,
        Congestion::None => tcp::CongestionControl::None,
    });
    s.set_nagle_enabled(cfg.nagle);
    s.set_ack_delay(
        cfg.ack_delay
            .map(|d| smoltcp::time::Duration::from_micros(d.as_micros() as u64)),
    );
    s
}

/// The 5-tuple, origin and counters of one flow (one direction of a 5-tuple at its sender).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    /// The 5-tuple at the sending host's egress.
    pub tuple: FiveTuple,
    /// The sending host.
    pub src: ElementId,
    /// Packets stamped at egress (the next sequence number).
    pub sent: u64,
    /// Packets delivered to a host.
    pub delivered: u64,
    /// Packets dropped anywhere (any cause).
    pub dropped: u64,
    /// Delivered packets whose sequence number was below the highest already delivered.
    pub reordered: u64,
    /// Highest sequence number delivered so far.
    pub max_seq_delivered: Option<u64>,
    /// Largest one-way delay of a delivered packet (ns).
    pub max_delay_ns: u64,
    /// Sum of one-way delays of delivered packets (ns), for means.
    pub delay_sum_ns: u64,
}
