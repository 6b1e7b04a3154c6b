//! The probe stream: the subscriber's view of a migration, measured from outside the NAT.
//!
//! `flowshift probe echo` (hidden subcommand, run with `ip netns exec` in the server
//! namespace) echoes every probe datagram to its sender, writing into it the kernel's receive
//! time and its own arrival counter. `flowshift probe send` (in the subscriber namespace, from
//! a subscriber address of the migrated group) sends `--count` sequence-numbered datagrams at
//! `--rate` per second, collects the echoes with the kernel's receive time, waits `--grace`
//! after the last send and writes one JSON file ([`ProbeRecord`]). Both exit by themselves:
//! the sender after `count / rate + grace` seconds, the echo after `--duration` seconds or
//! `--count` echoes. Times are `CLOCK_REALTIME` nanoseconds (one clock: same machine), so each
//! round trip splits into its forward (subscriber -> echo) and return legs.
//!
//! [`analyse`] turns a record into losses, reordering (end to end, and per direction: at the
//! echo by sequence number, at the sender by the echo's arrival counter) and the RTT timeline.
//!
//! Network safety: the sender refuses destinations outside loopback and the testbed's ranges
//! (100.64.0.0/10, 198.18.0.0/15, 203.0.113.0/24).

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// First bytes of every probe datagram.
pub const MAGIC: [u8; 4] = *b"FSPB";
/// Probe payload size (bytes): magic, seq, send time, echo receive time, echo counter, pad.
pub const PAYLOAD: usize = 64;

/// `flowshift probe ...` (hidden; the testbed runs it inside namespaces).
#[derive(Subcommand, Debug)]
pub enum ProbeCommand {
    /// Send a sequence-numbered UDP probe stream and collect the echoes.
    Send(SendArgs),
    /// Echo probe datagrams back to their sender.
    Echo(EchoArgs),
}

/// Arguments of `probe send`.
#[derive(Args, Debug)]
pub struct SendArgs {
    /// Source address (a subscriber address).
    #[arg(long)]
    pub bind: Ipv4Addr,
    /// The echo (address:port).
    #[arg(long)]
    pub to: SocketAddrV4,
    /// Probes per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Probes to send.
    #[arg(long)]
    pub count: u64,
    /// Seconds to wait for echoes after the last send.
    #[arg(long, default_value_t = 1.0)]
    pub grace: f64,
    /// Where to write the record (JSON).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `probe echo`.
#[derive(Args, Debug)]
pub struct EchoArgs {
    /// Address and port to listen on.
    #[arg(long)]
    pub bind: SocketAddrV4,
    /// Exit after this many seconds.
    #[arg(long)]
    pub duration: f64,
    /// Exit after this many echoes.
    #[arg(long, default_value_t = u64::MAX)]
    pub count: u64,
    /// Where to write a summary (JSON).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs a probe subcommand.
pub fn run(cmd: &ProbeCommand) -> Result<()> {
    match cmd {
        ProbeCommand::Send(a) => {
            let rec = send(a)?;
            let text = serde_json::to_string(&rec)? + "\n";
            std::fs::write(&a.out, text).with_context(|| format!("writing {}", a.out.display()))
        }
        ProbeCommand::Echo(a) => {
            let s = echo(a)?;
            if let Some(out) = &a.out {
                std::fs::write(out, serde_json::to_string(&s)? + "\n")
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            Ok(())
        }
    }
}

/// What `probe send` writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// Probes per second asked for.
    pub rate_per_s: u32,
    /// Probes sent (attempted).
    pub sent: u64,
    /// `send` calls that failed (those probes count as lost).
    pub send_errors: u64,
    /// `recv` calls that failed (other than time-outs).
    pub recv_errors: u64,
    /// Send time of probe `seq` at index `seq` (Unix ns).
    pub send_ns: Vec<u64>,
    /// Echoes in arrival order: `[seq, echo receive time (Unix ns), receive time back at the
    /// sender (Unix ns), the echo's arrival counter]`.
    pub replies: Vec<[u64; 4]>,
    /// Datagrams that were not probe echoes of this stream.
    pub foreign: u64,
}

/// What `probe echo` writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EchoSummary {
    /// Datagrams echoed.
    pub echoed: u64,
    /// Datagrams ignored (not probes).
    pub ignored: u64,
}

fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_REALTIME always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Asks the kernel to time-stamp received datagrams (`SO_TIMESTAMPNS`, `CLOCK_REALTIME`).
fn enable_timestamps(sock: &UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a valid pointer with its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one datagram: (length, source, kernel receive time in Unix ns; the current time
/// if the kernel gave none). Honours the socket's read time-out.
fn recv_ts(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4, u64)> {
    // SAFETY: all-zero is a valid sockaddr_in and msghdr.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: see above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` points at live buffers of the sizes given.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ts = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within
    // `msg_controllen`; the timestamp is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t: libc::timespec =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                ts = Some(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let from = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    );
    Ok((n as usize, from, ts.unwrap_or_else(realtime_ns)))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Whether the probe may be sent to `a` (loopback or the testbed's ranges).
pub fn allowed_destination(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_loopback()
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
        || (o[0], o[1], o[2]) == (203, 0, 113)
}

fn word(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

fn send(a: &SendArgs) -> Result<ProbeRecord> {
    if !allowed_destination(*a.to.ip()) {
        bail!(
            "refusing to probe {}: only loopback and the testbed's ranges",
            a.to
        );
    }
    if a.rate == 0 || a.rate > 100_000 || a.count == 0 || a.count > 10_000_000 {
        bail!("--rate must be 1..=100000 and --count 1..=10000000");
    }
    let total = a.count as f64 / f64::from(a.rate) + a.grace;
    if !(0.0..=3600.0).contains(&a.grace) || total > 3600.0 {
        bail!("a probe stream lasts at most an hour");
    }
    let sock = UdpSocket::bind((a.bind, 0)).with_context(|| format!("binding {}", a.bind))?;
    sock.connect(a.to)
        .with_context(|| format!("connecting to {}", a.to))?;
    enable_timestamps(&sock).context("SO_TIMESTAMPNS")?;
    let period = Duration::from_secs_f64(1.0 / f64::from(a.rate));
    let mut rec = ProbeRecord {
        rate_per_s: a.rate,
        send_ns: Vec::with_capacity(a.count as usize),
        ..ProbeRecord::default()
    };
    let mut got = vec![false; a.count as usize];
    let mut unique = 0u64;
    let mut pkt = [0u8; PAYLOAD];
    pkt[..4].copy_from_slice(&MAGIC);
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    let mut last_send = start;
    loop {
        let now = Instant::now();
        let next = start + period.mul_f64(rec.sent as f64);
        if rec.sent < a.count && now >= next {
            let t = realtime_ns();
            pkt[4..12].copy_from_slice(&rec.sent.to_be_bytes());
            pkt[12..20].copy_from_slice(&t.to_be_bytes());
            if sock.send(&pkt).is_err() {
                rec.send_errors += 1;
            }
            rec.send_ns.push(t);
            rec.sent += 1;
            last_send = now;
            continue;
        }
        let wake = if rec.sent < a.count {
            next
        } else {
            if unique == a.count || now >= last_send + Duration::from_secs_f64(a.grace) {
                break;
            }
            last_send + Duration::from_secs_f64(a.grace)
        };
        let wait = wake
            .saturating_duration_since(now)
            .max(Duration::from_micros(20));
        sock.set_read_timeout(Some(wait))?;
        match recv_ts(&sock, &mut buf) {
            Ok((n, _, t)) => {
                if n < 36 || buf[..4] != MAGIC {
                    rec.foreign += 1;
                    continue;
                }
                let seq = word(&buf, 4);
                if seq >= rec.sent {
                    rec.foreign += 1;
                    continue;
                }
                if !got[seq as usize] {
                    got[seq as usize] = true;
                    unique += 1;
                }
                rec.replies.push([seq, word(&buf, 20), t, word(&buf, 28)]);
            }
            Err(e) if is_timeout(&e) => {}
            // ECONNREFUSED after an ICMP error, and the like: counted, not fatal.
            Err(_) => rec.recv_errors += 1,
        }
    }
    Ok(rec)
}

fn echo(a: &EchoArgs) -> Result<EchoSummary> {
    if !(0.0..=3600.0).contains(&a.duration) {
        bail!("--duration must be 0..=3600 seconds");
    }
    let sock = UdpSocket::bind(a.bind).with_context(|| format!("binding {}", a.bind))?;
    enable_timestamps(&sock).context("SO_TIMESTAMPNS")?;
    let deadline = Instant::now() + Duration::from_secs_f64(a.duration);
    let mut s = EchoSummary::default();
    let mut buf = [0u8; 2048];
    while s.echoed < a.count {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        sock.set_read_timeout(Some(
            (deadline - now)
                .min(Duration::from_millis(100))
                .max(Duration::from_micros(100)),
        ))?;
        match recv_ts(&sock, &mut buf) {
            Ok((n, from, t)) => {
                if n < 36 || buf[..4] != MAGIC {
                    s.ignored += 1;
                    continue;
                }
                buf[20..28].copy_from_slice(&t.to_be_bytes());
                buf[28..36].copy_from_slice(&s.echoed.to_be_bytes());
                // A failed send is a lost echo; the sender sees it.
                let _ = sock.send_to(&buf[..n], from);
                s.echoed += 1;
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e).context("receiving probes"),
        }
    }
    Ok(s)
}

/// One answered probe, times in ms relative to an origin.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Answer {
    /// Sequence number.
    pub seq: u64,
    /// Send time (ms).
    pub sent_ms: f64,
    /// Round trip (ms).
    pub rtt_ms: f64,
    /// Subscriber -> echo (ms).
    pub forward_ms: f64,
    /// Echo -> subscriber (ms).
    pub return_ms: f64,
}

/// A probe record, analysed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Analysis {
    /// Probes sent.
    pub sent: u64,
    /// Probes answered (each counted once).
    pub received: u64,
    /// Probes never answered.
    pub lost: u64,
    /// Echoes that arrived back with a lower sequence number than one already received.
    pub reordered: u64,
    /// Of the probes the echo saw, those it saw after a higher sequence number.
    pub reordered_forward: u64,
    /// Echoes that arrived back after one the echo had sent later.
    pub reordered_return: u64,
    /// Echoes received more than once.
    pub duplicates: u64,
    /// Answered probes by sequence number.
    pub answers: Vec<Answer>,
    /// Send times (ms) of the lost probes.
    pub lost_ms: Vec<f64>,
}

/// Analyses `rec` with times relative to `origin_ns` (Unix ns).
pub fn analyse(rec: &ProbeRecord, origin_ns: u64) -> Analysis {
    let ms = |t: u64| (t as f64 - origin_ns as f64) / 1e6;
    let mut first: Vec<Option<[u64; 4]>> = vec![None; rec.send_ns.len()];
    let mut a = Analysis {
        sent: rec.sent,
        ..Analysis::default()
    };
    let mut max_seq = None;
    let mut max_idx = None;
    for r in &rec.replies {
        let Some(slot) = first.get_mut(r[0] as usize) else {
            continue;
        };
        if slot.is_some() {
            a.duplicates += 1;
            continue;
        }
        *slot = Some(*r);
        if max_seq.is_some_and(|m| r[0] < m) {
            a.reordered += 1;
        }
        max_seq = max_seq.max(Some(r[0]));
        if max_idx.is_some_and(|m| r[3] < m) {
            a.reordered_return += 1;
        }
        max_idx = max_idx.max(Some(r[3]));
    }
    // The echo's view: first arrivals in the echo's order.
    let mut at_echo: Vec<[u64; 4]> = first.iter().flatten().copied().collect();
    at_echo.sort_by_key(|r| r[3]);
    let mut m = None;
    for r in &at_echo {
        if m.is_some_and(|m| r[0] < m) {
            a.reordered_forward += 1;
        }
        m = m.max(Some(r[0]));
    }
    for (seq, (slot, &sent)) in first.iter().zip(&rec.send_ns).enumerate() {
        match slot {
            Some(r) => a.answers.push(Answer {
                seq: seq as u64,
                sent_ms: ms(sent),
                rtt_ms: (r[2] as f64 - sent as f64) / 1e6,
                forward_ms: (r[1] as f64 - sent as f64) / 1e6,
                return_ms: (r[2] as f64 - r[1] as f64) / 1e6,
            }),
            None => a.lost_ms.push(ms(sent)),
        }
    }
    a.received = a.answers.len() as u64;
    a.lost = a.sent - a.received;
    a
}

/// The `q` quantile of sorted values (nearest rank); 0 when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Added delay: (pre-migration median RTT, p99 and max of RTT minus that median over probes
/// sent in `[from_ms, to_ms]`). The baseline is the probes sent in the second before
/// `from_ms`.
pub fn added_delay(answers: &[Answer], from_ms: f64, to_ms: f64) -> (f64, f64, f64) {
    let mut base: Vec<f64> = answers
        .iter()
        .filter(|a| a.sent_ms >= from_ms - 1000.0 && a.sent_ms < from_ms)
        .map(|a| a.rtt_ms)
        .collect();
    base.sort_by(f64::total_cmp);
    let baseline = quantile(&base, 0.5);
    let mut added: Vec<f64> = answers
        .iter()
        .filter(|a| a.sent_ms >= from_ms && a.sent_ms <= to_ms)
        .map(|a| a.rtt_ms - baseline)
        .collect();
    added.sort_by(f64::total_cmp);
    (
        baseline,
        quantile(&added, 0.99),
        added.last().copied().unwrap_or(0.0),
    )
}

/// A probe process (sender or echo) running inside a namespace.
pub struct ProbeProcess {
    child: Child,
    /// Its output file.
    pub out: PathBuf,
    err: PathBuf,
    what: String,
}

impl ProbeProcess {
    fn spawn(ns: &str, args: &[String], out: PathBuf, what: &str) -> Result<ProbeProcess> {
        let exe = std::env::current_exe().context("locating the flowshift executable")?;
        let err = out.with_extension("stderr");
        let stderr =
            std::fs::File::create(&err).with_context(|| format!("creating {}", err.display()))?;
        let mut cmd = super::sys::ns_cmd(ns, exe)?;
        cmd.arg("probe")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(ProbeProcess {
            child,
            out,
            err,
            what: what.to_owned(),
        })
    }

    /// Waits for the process to exit by itself (killing it at `deadline`, an error).
    pub fn finish(&mut self, deadline: Instant) -> Result<()> {
        loop {
            if let Some(st) = self.child.try_wait()? {
                if !st.success() {
                    bail!(
                        "{} exited with {st}: {}",
                        self.what,
                        super::sys::tail(&self.err, 5)
                    );
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not finish in time", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProbeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts an echo in `ns` on `bind` for `seconds`, and waits until it listens.
pub fn start_echo(ns: &str, bind: SocketAddrV4, seconds: f64, dir: &Path) -> Result<ProbeProcess> {
    let out = dir.join("probe-echo.json");
    let p = ProbeProcess::spawn(
        ns,
        &[
            "echo".into(),
            "--bind".into(),
            bind.to_string(),
            "--duration".into(),
            format!("{seconds:.3}"),
            "--out".into(),
            out.display().to_string(),
        ],
        out,
        "probe echo",
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let suffix = format!(":{}", bind.port());
    loop {
        let o = super::sys::in_ns(ns, "ss", &["-Hlun"])?;
        if o.lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .any(|l| l.ends_with(&suffix))
        {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("the probe echo in {ns} is not listening on {bind}");
        }
        super::sys::sleep(Duration::from_millis(20))?;
    }
}

/// Starts a sender in `ns`: `count` probes at `rate` per second from `bind` to `to`, its
/// record in `dir/probe-send.json`.
pub fn start_sender(
    ns: &str,
    bind: Ipv4Addr,
    to: SocketAddrV4,
    rate: u32,
    count: u64,
    dir: &Path,
) -> Result<ProbeProcess> {
    start_sender_to(ns, bind, to, rate, count, dir.join("probe-send.json"))
}

/// Like [`start_sender`], the record written to `out` (several senders at once).
pub fn start_sender_to(
    ns: &str,
    bind: Ipv4Addr,
    to: SocketAddrV4,
    rate: u32,
    count: u64,
    out: PathBuf,
) -> Result<ProbeProcess> {
    ProbeProcess::spawn(
        ns,
        &[
            "send".into(),
            "--bind".into(),
            bind.to_string(),
            "--to".into(),
            to.to_string(),
            "--rate".into(),
            rate.to_string(),
            "--count".into(),
            count.to_string(),
            "--out".into(),
            out.display().to_string(),
        ],
        out,
        "probe sender",
    )
}

/// Reads a sender's record.
pub fn read_record(path: &Path) -> Result<ProbeRecord> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_limited_to_the_testbed() {
        for ok in [
            "127.0.0.1",
            "100.64.0.1",
            "100.127.255.1",
            "198.18.0.1",
            "198.19.0.1",
        ] {
            assert!(allowed_destination(ok.parse().unwrap()), "{ok}");
        }
        assert!(allowed_destination(Ipv4Addr::new(203, 0, 113, 11)));
        for bad in [
            "8.8.8.8",
            "100.128.0.1",
            "198.20.0.1",
            "203.0.114.1",
            "10.0.0.1",
        ] {
            assert!(!allowed_destination(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn analysis_counts_loss_reordering_per_direction_and_delay() {
        let ms = 1_000_000u64;
        let origin = 1_000 * ms;
        let send_ns: Vec<u64> = (0..6).map(|i| origin + i * ms).collect();
        // Probe 2 lost; the echo sees 4 before 3 (forward reordering), and the echo of 1
        // (the echo's second) arrives back after the echo's third and fourth (return
        // reordering; its times are not consistent with that, the analysis goes by order).
        let rec = ProbeRecord {
            rate_per_s: 1000,
            sent: 6,
            send_ns: send_ns.clone(),
            replies: vec![
                [0, send_ns[0] + ms / 4, send_ns[0] + ms / 2, 0],
                [4, send_ns[4] + ms / 4, send_ns[4] + ms / 2, 2],
                [3, send_ns[3] + 2 * ms, send_ns[3] + 3 * ms, 3],
                [1, send_ns[1] + ms / 4, send_ns[1] + ms / 2, 1],
                [5, send_ns[5] + ms / 4, send_ns[5] + ms / 2, 4],
                [5, send_ns[5] + ms / 4, send_ns[5] + ms / 2, 4],
            ],
            ..ProbeRecord::default()
        };
        let a = analyse(&rec, origin);
        assert_eq!((a.sent, a.received, a.lost, a.duplicates), (6, 5, 1, 1));
        assert_eq!(a.reordered, 2, "3 after 4, 1 after 3");
        assert_eq!(a.reordered_forward, 1, "the echo saw 3 after 4");
        assert_eq!(
            a.reordered_return, 1,
            "1 (echoed 2nd) came back after later echoes"
        );
        assert_eq!(a.lost_ms, vec![2.0]);
        let three = a.answers.iter().find(|x| x.seq == 3).unwrap();
        assert!((three.rtt_ms - 3.0).abs() < 1e-9);
        assert!((three.forward_ms - 2.0).abs() < 1e-9);
        assert!((three.return_ms - 1.0).abs() < 1e-9);
        assert!((three.sent_ms - 3.0).abs() < 1e-9);
        let (base, p99, max) = added_delay(&a.answers, 3.0, 10.0);
        assert!((base - 0.5).abs() < 1e-9, "{base}");
        assert!((max - 2.5).abs() < 1e-9);
        assert!((p99 - 2.5).abs() < 1e-9);
    }

    #[test]
    fn probes_cross_loopback() {
        let dir = std::env::temp_dir().join(format!("flowshift-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        drop(sock);
        let bind = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let echo_thread = std::thread::spawn(move || {
            echo(&EchoArgs {
                bind,
                duration: 5.0,
                count: 200,
                out: None,
            })
        });
        std::thread::sleep(Duration::from_millis(100));
        let rec = send(&SendArgs {
            bind: Ipv4Addr::LOCALHOST,
            to: bind,
            rate: 2000,
            count: 200,
            grace: 1.0,
            out: dir.join("unused"),
        })
        .unwrap();
        let s = echo_thread.join().unwrap().unwrap();
        assert_eq!(s.echoed, 200);
        let a = analyse(&rec, rec.send_ns[0]);
        assert_eq!((a.sent, a.lost, a.reordered), (200, 0, 0));
        assert!(
            a.answers
                .iter()
                .all(|x| x.rtt_ms >= 0.0 && x.rtt_ms < 1000.0)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
