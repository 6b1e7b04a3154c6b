//! The probe stream's two ends: `probe send` (sequence-numbered datagrams at a fixed rate,
//! echoes collected with the kernel's receive time) and `probe echo`, with their socket helpers.

use super::{EchoArgs, EchoSummary, MAGIC, PAYLOAD, ProbeRecord, SendArgs, allowed_destination};
use anyhow::{Context, Result, bail};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

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

fn word(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

pub(super) fn send(a: &SendArgs) -> Result<ProbeRecord> {
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

pub(super) fn echo(a: &EchoArgs) -> Result<EchoSummary> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::probe::analyse;

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
