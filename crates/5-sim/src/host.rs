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

mod apps;
mod config;
mod device;
mod stats;

use apps::App;
pub use config::{AppSpec, Congestion, HostConfig, TcpConfig};
pub(crate) use device::to_smol;
use device::{SimDevice, from_smol};
pub use stats::{AppStats, FlowRecord, HostStats};

/// Result of one host poll.
pub(crate) struct PollOutcome {
    /// When the host wants to be polled again (timers), if ever.
    pub next_wake: Option<Instant>,
    /// The device refused a transmit token: wake the host when the link queue drains.
    pub blocked: bool,
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
}
