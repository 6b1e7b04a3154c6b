//! A host's applications: their state, creating them ([`Host::add_app`]) and servicing them
//! on every poll round (bulk/short TCP flows, TCP sinks, UDP CBR sources and sinks).

use super::*;
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

impl Host {
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

    pub(super) fn apps_next_deadline(&self, now: Instant) -> Option<Instant> {
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

    pub(super) fn service_apps(&mut self, now: Instant, bin: Duration) -> bool {
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
