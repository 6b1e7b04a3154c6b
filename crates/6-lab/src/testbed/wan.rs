//! A wide-area transfer link in front of one node (`testbed up --wan-rtt-ms R --wan-rate-mbit
//! M`): everything that node sends or receives on the management network (state transfer to
//! and from the other nodes, its control channel to the controller) crosses a path of
//! round-trip time R and rate M in each direction. Its data-plane port on the switch is left
//! alone (the switch reaches every site).
//!
//! ```text
//!  fsR-mgmt:  br0 --- wKa ==veth== wKb  <- delay line ->  mK ==veth== m0 (fsR-nK)
//! ```
//!
//! **Why a userspace delay line.** The kernel way is `tc qdisc ... netem delay R/2 rate M`
//! (or netem + tbf). This machine's kernel has neither `sch_netem` nor `sch_fq` (EDT), so
//! [`install`] first asks the kernel for netem on a scratch device and, where it is missing,
//! uses a delay line instead: `flowshift testbed wan-relay` ([`relay`], hidden), run in the
//! management namespace, moves frames between `wKb` and `mK` through AF_PACKET sockets. Each
//! frame departs after the previous one's serialization at the rate (a FIFO that holds at most
//! [`RelayArgs::queue_bytes`] waiting to be serialized, else dropped and counted) and is sent
//! one one-way delay (R/2) after its departure. Both veths feeding the line have checksum and
//! segmentation offloads off, so it only sees plain frames of at most the MTU. Where netem
//! exists it is used (delay and rate on `mK` and `wKb`, no process).
//!
//! Everything lives in the run's namespaces and goes with them; the relay is a recorded
//! process of the run (killed by the teardown).

use super::bed::Testbed;
use super::sys;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Most frames waiting in one direction of the delay line (on top of the byte bound).
pub const MAX_QUEUED_FRAMES: usize = 200_000;
/// Largest frame the line relays (bytes); larger ones are dropped and counted.
pub const MAX_FRAME: usize = 9_216;

/// The wide-area link of a testbed: in front of which node, how far, how fast.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct WanLink {
    /// The node behind the link (1..=nodes).
    pub node: u16,
    /// Round-trip time added between that node and the rest of the management network (ms).
    pub rtt_ms: f64,
    /// Rate in each direction (Mbit/s of Ethernet frames).
    pub rate_mbit: f64,
}

impl WanLink {
    /// Checks the values: RTT in [0, 10 s], rate in (0, 100 Gbit/s].
    pub fn validate(&self) -> Result<()> {
        if !(self.rtt_ms.is_finite() && (0.0..=10_000.0).contains(&self.rtt_ms)) {
            bail!("--wan-rtt-ms must be in [0, 10000]");
        }
        if !(self.rate_mbit.is_finite() && self.rate_mbit > 0.0 && self.rate_mbit <= 100_000.0) {
            bail!("--wan-rate-mbit must be in (0, 100000]");
        }
        Ok(())
    }

    /// One-way delay (µs).
    pub fn one_way_us(&self) -> u64 {
        (self.rtt_ms * 500.0).round() as u64
    }

    /// Rate (bit/s).
    pub fn rate_bps(&self) -> u64 {
        (self.rate_mbit * 1e6).round() as u64
    }

    /// The line's queue: one bandwidth-delay product of the whole round trip, at least 256 kB
    /// (bytes).
    pub fn queue_bytes(&self) -> u64 {
        ((self.rate_bps() as f64 * self.rtt_ms / 1e3 / 8.0) as u64).max(256_000)
    }

    /// The delay line's arguments between `a` and `b` (devices in the management namespace).
    pub fn relay_args(&self, a: &str, b: &str, stats: &std::path::Path) -> Vec<String> {
        [
            "testbed",
            "wan-relay",
            "--a",
            a,
            "--b",
            b,
            "--delay-us",
            &self.one_way_us().to_string(),
            "--rate-bps",
            &self.rate_bps().to_string(),
            "--queue-bytes",
            &self.queue_bytes().to_string(),
            "--stats",
            &stats.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `tc` commands for netem delay + rate on `dev`, where the kernel has netem.
    pub fn netem_commands(&self, dev: &str) -> Vec<String> {
        [
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "netem",
            "delay",
            &format!("{}us", self.one_way_us()),
            "rate",
            &format!("{}bit", self.rate_bps()),
            "limit",
            &(self.queue_bytes() / 1500 + 100).to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// Whether the kernel offers netem: a netem qdisc on a scratch dummy device in `ns`.
fn has_netem(ns: &str) -> bool {
    let dev = "fswanprobe";
    if sys::ip_in(ns, &["link", "add", dev, "type", "dummy"]).is_err() {
        return false;
    }
    let ok = sys::in_ns(ns, "tc", &["qdisc", "add", "dev", dev, "root", "netem"]).is_ok();
    let _ = sys::ip_in(ns, &["link", "del", dev]);
    ok
}

fn offloads_off(ns: &str, dev: &str) -> Result<()> {
    sys::in_ns(
        ns,
        "ethtool",
        &[
            "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
        ],
    )
    .map(drop)
    .with_context(|| format!("turning the offloads of {dev} in {ns} off"))
}

/// Puts node `w.node`'s management veth (`mK` in `mgmt`, `m0` in `node_ns`, `mK` not yet on
/// the bridge) behind the wide-area link: a veth pair `wKa` (on `br0`) / `wKb` and, between
/// `wKb` and `mK`, netem or the delay line. The caller created `mK`/`m0` and brings `m0` up.
pub fn install(tb: &mut Testbed, w: &WanLink, mgmt: &str, node_ns: &str) -> Result<()> {
    w.validate()?;
    let k = w.node;
    if !(1..=tb.layout.nodes).contains(&k) {
        bail!(
            "--wan-node {k}: the testbed has nodes 1..={}",
            tb.layout.nodes
        );
    }
    let (m, wa, wb) = (format!("m{k}"), format!("w{k}a"), format!("w{k}b"));
    sys::ip_in(
        mgmt,
        &["link", "add", &wa, "type", "veth", "peer", "name", &wb],
    )?;
    sys::ip_in(mgmt, &["link", "set", &wa, "master", "br0", "up"])?;
    for dev in [&wb, &m] {
        sys::ip_in(mgmt, &["link", "set", dev, "promisc", "on", "up"])?;
    }
    if has_netem(mgmt) {
        // Kernel path: bridge wKb and mK with a second bridge, netem on both egresses.
        sys::ip_in(mgmt, &["link", "add", "wanbr", "type", "bridge"])?;
        for dev in [&wb, &m] {
            sys::ip_in(mgmt, &["link", "set", dev, "master", "wanbr"])?;
            let cmd = w.netem_commands(dev);
            let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
            sys::in_ns(mgmt, "tc", &refs)?;
        }
        sys::ip_in(mgmt, &["link", "set", "wanbr", "up"])?;
        return Ok(());
    }
    // Delay line: plain frames only, so a frame on one side fits the other's MTU.
    offloads_off(mgmt, &wa)?;
    offloads_off(node_ns, "m0")?;
    let stats = tb.state.dir.join(format!("wan-relay{k}.json"));
    let exe = std::env::current_exe().context("locating the flowshift executable")?;
    tb.spawn(
        &format!("wan-relay{k}"),
        mgmt,
        &exe,
        &w.relay_args(&wb, &m, &stats),
    )
}

/// Reads the delay line's counters of node `k` (`None` without a delay line or file).
pub fn relay_stats(tb: &Testbed, k: u16) -> Option<RelayStats> {
    let p = tb.state.dir.join(format!("wan-relay{k}.json"));
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

// ------------------------------------------------------------------------ the delay line

/// Arguments of the hidden `flowshift testbed wan-relay`.
#[derive(Args, Debug, Clone)]
pub struct RelayArgs {
    /// One side's device (in the current namespace).
    #[arg(long)]
    pub a: String,
    /// The other side's device.
    #[arg(long)]
    pub b: String,
    /// One-way delay (µs).
    #[arg(long)]
    pub delay_us: u64,
    /// Rate per direction (bit/s of frames).
    #[arg(long)]
    pub rate_bps: u64,
    /// Bytes a direction may hold waiting for serialization (more are dropped).
    #[arg(long)]
    pub queue_bytes: u64,
    /// Counters are written here once a second (JSON).
    #[arg(long)]
    pub stats: PathBuf,
}

/// Counters of one direction of the delay line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct DirStats {
    /// Frames sent on.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Frames refused because the queue was full (bytes or [`MAX_QUEUED_FRAMES`]).
    pub queue_drops: u64,
    /// Frames above [`MAX_FRAME`].
    pub too_big: u64,
    /// `sendto` failures.
    pub send_errors: u64,
}

/// The delay line's counters: `a_to_b` and `b_to_a`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct RelayStats {
    /// Frames from the `--a` device to the `--b` device.
    pub a_to_b: DirStats,
    /// And back.
    pub b_to_a: DirStats,
}

/// One direction's timing: a FIFO served at the rate, then a fixed delay. Pure (times in, no
/// I/O): [`Line::offer`] says when a frame of `len` bytes offered at `now` is to be sent on,
/// or `None` when the queue is full.
#[derive(Clone, Debug)]
pub struct Line {
    delay: Duration,
    ns_per_byte: f64,
    queue_bytes: u64,
    /// When the serializer is free again.
    free_at: Option<Instant>,
}

impl Line {
    /// A line of one-way `delay`, `rate_bps` and a queue of `queue_bytes`.
    pub fn new(delay: Duration, rate_bps: u64, queue_bytes: u64) -> Line {
        Line {
            delay,
            ns_per_byte: 8e9 / rate_bps.max(1) as f64,
            queue_bytes,
            free_at: None,
        }
    }

    /// The time to send a frame of `len` bytes offered at `now`: after the frames before it
    /// and its own serialization, plus the delay; `None` (dropped) when the bytes still waiting
    /// to be serialized exceed the queue.
    pub fn offer(&mut self, now: Instant, len: usize) -> Option<Instant> {
        let start = self.free_at.map_or(now, |f| f.max(now));
        let backlog_ns = start.saturating_duration_since(now).as_nanos() as f64;
        if backlog_ns / self.ns_per_byte > self.queue_bytes as f64 {
            return None;
        }
        let done = start + Duration::from_nanos((len as f64 * self.ns_per_byte) as u64);
        self.free_at = Some(done);
        Some(done + self.delay)
    }
}

/// An AF_PACKET socket bound to one device (all protocols, own sends ignored).
struct PacketSock {
    fd: libc::c_int,
    ifindex: libc::c_int,
}

impl PacketSock {
    fn open(dev: &str) -> Result<PacketSock> {
        let name = std::ffi::CString::new(dev)?;
        // SAFETY: plain libc calls on a fresh descriptor; `name` outlives the call.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr()) as libc::c_int;
            if ifindex == 0 {
                bail!("no device {dev}");
            }
            let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto,
            );
            if fd < 0 {
                bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
            }
            let s = PacketSock { fd, ifindex };
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto as u16;
            sll.sll_ifindex = ifindex;
            let r = libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            if r != 0 {
                bail!("bind to {dev}: {}", std::io::Error::last_os_error());
            }
            Ok(s)
        }
    }

    /// One frame into `buf`: its length, or `None` when nothing waits.
    fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe {
            libc::recv(
                self.fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        (n >= 0).then_some(n as usize)
    }

    fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: `frame` and `sll` are valid for the call.
        unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = self.ifindex;
            sll.sll_halen = 6;
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            ) == frame.len() as isize
        }
    }
}

impl Drop for PacketSock {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours.
        unsafe { libc::close(self.fd) };
    }
}

/// One direction: its timing, its queue of (send time, frame), its counters.
struct Dir {
    line: Line,
    queue: VecDeque<(Instant, Vec<u8>)>,
    stats: DirStats,
}

impl Dir {
    fn take_in(&mut self, from: &PacketSock, buf: &mut [u8]) {
        while let Some(n) = from.recv(buf) {
            if n > MAX_FRAME || n > buf.len() {
                self.stats.too_big += 1;
                continue;
            }
            if self.queue.len() >= MAX_QUEUED_FRAMES {
                self.stats.queue_drops += 1;
                continue;
            }
            match self.line.offer(Instant::now(), n) {
                Some(at) => self.queue.push_back((at, buf[..n].to_vec())),
                None => self.stats.queue_drops += 1,
            }
        }
    }

    fn send_due(&mut self, to: &PacketSock, now: Instant) {
        while self.queue.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, f)) = self.queue.pop_front() {
                if to.send(&f) {
                    self.stats.frames += 1;
                    self.stats.bytes += f.len() as u64;
                } else {
                    self.stats.send_errors += 1;
                }
            }
        }
    }
}

/// `flowshift testbed wan-relay`: moves frames both ways between `--a` and `--b` through the
/// delay line until SIGINT/SIGTERM; counters to `--stats` once a second and at the end.
pub fn relay(a: &RelayArgs) -> Result<()> {
    sys::catch_interrupts();
    let (sa, sb) = (PacketSock::open(&a.a)?, PacketSock::open(&a.b)?);
    let delay = Duration::from_micros(a.delay_us);
    let new_dir = || Dir {
        line: Line::new(delay, a.rate_bps, a.queue_bytes),
        queue: VecDeque::new(),
        stats: DirStats::default(),
    };
    let (mut ab, mut ba) = (new_dir(), new_dir());
    let mut buf = vec![0u8; 65_536];
    let mut next_stats = Instant::now();
    let write_stats = |ab: &Dir, ba: &Dir| -> Result<()> {
        let s = RelayStats {
            a_to_b: ab.stats,
            b_to_a: ba.stats,
        };
        let tmp = a.stats.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&s)?)?;
        std::fs::rename(&tmp, &a.stats)?;
        Ok(())
    };
    while !sys::interrupted() {
        let now = Instant::now();
        ab.send_due(&sb, now);
        ba.send_due(&sa, now);
        if now >= next_stats {
            write_stats(&ab, &ba)?;
            next_stats = now + Duration::from_secs(1);
        }
        let next = [ab.queue.front(), ba.queue.front()]
            .into_iter()
            .flatten()
            .map(|(t, _)| *t)
            .min()
            .unwrap_or(now + Duration::from_millis(100))
            .min(next_stats);
        let wait = next.saturating_duration_since(Instant::now());
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        let mut fds = [
            libc::pollfd {
                fd: sa.fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sb.fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` and `ts` are valid for the call.
        unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
        ab.take_in(&sa, &mut buf);
        ba.take_in(&sb, &mut buf);
    }
    write_stats(&ab, &ba)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_serializes_then_delays_and_bounds_its_queue() {
        // 8 Mbit/s: 1 µs per byte; 10 ms one way; a 3,000-byte queue.
        let mut l = Line::new(Duration::from_millis(10), 8_000_000, 3_000);
        let t0 = Instant::now();
        let a = l.offer(t0, 1000).unwrap();
        assert_eq!(a - t0, Duration::from_micros(11_000));
        // Back to back: waits for the first one's serialization.
        let b = l.offer(t0, 1000).unwrap();
        assert_eq!(b - t0, Duration::from_micros(12_000));
        for _ in 0..2 {
            assert!(l.offer(t0, 1000).is_some());
        }
        // 4,000 bytes wait now: above the queue.
        assert_eq!(l.offer(t0, 1000), None);
        // Later the backlog has drained: no queueing delay.
        let later = t0 + Duration::from_millis(50);
        assert_eq!(
            l.offer(later, 500).unwrap() - later,
            Duration::from_micros(10_500)
        );
    }

    #[test]
    fn link_values_are_checked_and_sized() {
        let w = WanLink {
            node: 2,
            rtt_ms: 50.0,
            rate_mbit: 100.0,
        };
        w.validate().unwrap();
        assert_eq!(w.one_way_us(), 25_000);
        assert_eq!(w.rate_bps(), 100_000_000);
        assert_eq!(w.queue_bytes(), 625_000);
        let args = w.relay_args("w2b", "m2", std::path::Path::new("/tmp/x.json"));
        assert_eq!(args[..2], ["testbed", "wan-relay"]);
        assert!(args.windows(2).any(|p| p == ["--delay-us", "25000"]));
        assert!(
            w.netem_commands("m2")
                .join(" ")
                .starts_with("qdisc replace dev m2 root netem delay 25000us rate 100000000bit")
        );
        for bad in [
            (-1.0, 100.0),
            (50.0, 0.0),
            (f64::NAN, 1.0),
            (1.0, f64::INFINITY),
        ] {
            let w = WanLink {
                node: 2,
                rtt_ms: bad.0,
                rate_mbit: bad.1,
            };
            assert!(w.validate().is_err(), "{bad:?}");
        }
    }
}
