//! Root only: a node on one end of a veth pair in its own network namespace, frames injected
//! and captured on the other end (in a second namespace) with an AF_PACKET socket. Checks
//! translation, addressing, checksums (GSO super-frames with partial checksums included),
//! counters and `/metrics`, and prints the packet rate and GSO throughput seen. Both
//! namespaces (and with them the veth pair) are removed even when the test fails.

mod common;

use common::*;
use flowshift_node::afpacket::{AfPacket, SocketConfig};
use flowshift_node::frame::{ETH_HLEN, RxFrame, TxFrame, VnetHdr};
use flowshift_node::{Node, NodeConfig};
use std::io::Write;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

const SUB: [u8; 4] = [100, 64, 0, 7];

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Deletes the namespaces (and so the veth pair) when dropped.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread that has entered namespace `ns` (sockets keep their namespace).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("namespace file");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, with a valid namespace descriptor.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Injector {
    sock: AfPacket,
}

/// Frames (virtio-net header, Ethernet frame) as the socket sends them.
fn tx_frames(frames: &[(VnetHdr, Vec<u8>)]) -> Vec<TxFrame> {
    frames
        .iter()
        .map(|(v, f)| {
            TxFrame::new(
                Some(*v),
                f[..ETH_HLEN].try_into().unwrap(),
                f[ETH_HLEN..].to_vec(),
            )
        })
        .collect()
}

impl Injector {
    fn send(&mut self, frames: &[(VnetHdr, Vec<u8>)]) {
        let txf = tx_frames(frames);
        let (_, tx) = self.sock.split();
        let mut off = 0;
        let t = Instant::now();
        while off < txf.len() {
            use flowshift_node::frame::FrameSink;
            match tx.send(&txf[off..]) {
                Ok(n) => off += n,
                Err(e) => panic!("inject: {e}"),
            }
            assert!(t.elapsed() < Duration::from_secs(5), "injection stalled");
        }
    }

    /// IPv4 frames received until `want` arrived or `timeout` passed.
    fn recv(&mut self, want: usize, timeout: Duration) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut got = Vec::new();
        let end = Instant::now() + timeout;
        while got.len() < want && Instant::now() < end {
            let (rx, _) = self.sock.split();
            rx.poll(64, |f: RxFrame<'_>| {
                if f.data.len() >= ETH_HLEN && f.data[12..14] == [8, 0] {
                    got.push((f.vnet.unwrap_or_default(), f.data.to_vec()));
                }
            });
            rx.wait(Duration::from_millis(1), None);
        }
        got
    }

    /// Sends `batch` over and over for `d` on one thread while another counts the IPv4
    /// frames (and bytes) coming back; returns (sent, received, bytes received, seconds).
    fn blast(&mut self, batch: &[(VnetHdr, Vec<u8>)], d: Duration) -> (u64, u64, u64, f64) {
        use flowshift_node::frame::FrameSink;
        let txf = tx_frames(batch);
        let (rx, tx) = self.sock.split();
        let done = std::sync::atomic::AtomicBool::new(false);
        let t = Instant::now();
        let (sent, (n, bytes)) = std::thread::scope(|s| {
            let counter = s.spawn(|| {
                let (mut n, mut bytes) = (0u64, 0u64);
                let mut quiet_since = None;
                loop {
                    let got = rx.poll(64, |f: RxFrame<'_>| {
                        if f.data.len() >= ETH_HLEN && f.data[12..14] == [8, 0] {
                            n += 1;
                            bytes += f.data.len() as u64;
                        }
                    });
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        let q = *quiet_since.get_or_insert_with(Instant::now);
                        if got > 0 {
                            quiet_since = Some(Instant::now());
                        } else if q.elapsed() > Duration::from_millis(100) {
                            return (n, bytes);
                        }
                    }
                    rx.wait(Duration::from_millis(1), None);
                }
            });
            let mut sent = 0u64;
            while t.elapsed() < d {
                match tx.send(&txf) {
                    Ok(0) => tx.wait_writable(Duration::from_millis(1)),
                    Ok(k) => sent += k as u64,
                    Err(e) => panic!("inject: {e}"),
                }
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            (sent, counter.join().unwrap())
        });
        (sent, n, bytes, t.elapsed().as_secs_f64())
    }
}

/// Two namespaces joined by a veth pair: the node's end and the injector's end. Removed (with
/// the pair) when dropped.
struct Bed {
    ns_node: String,
    ns_inj: String,
    if_node: String,
    if_inj: String,
    _cleanup: Namespaces,
}

impl Bed {
    /// A new bed with names unique to this process and test; `None` (after saying why) when
    /// the test cannot run here.
    fn new(test: &str) -> Option<Bed> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED {test}: needs root (network namespaces, AF_PACKET)");
            return None;
        }
        if Command::new("ip").arg("-V").output().is_err() {
            eprintln!("SKIPPED {test}: iproute2 (`ip`) not installed");
            return None;
        }
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!(
            "{:04x}",
            (std::process::id() ^ nanos ^ (seq << 12)) & 0xffff
        );
        let (ns_node, ns_inj) = (format!("fsT{tag}-n"), format!("fsT{tag}-i"));
        let (if_node, if_inj) = (format!("fst{tag}n"), format!("fst{tag}i"));
        let cleanup = Namespaces(vec![ns_node.clone(), ns_inj.clone()]);
        for ns in [&ns_node, &ns_inj] {
            assert!(ip(&["netns", "add", ns]), "ip netns add {ns}");
            // Keep the link quiet (no IPv6 neighbour discovery on it).
            let _ = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ])
                .status();
        }
        assert!(ip(&[
            "link", "add", &if_node, "netns", &ns_node, "type", "veth", "peer", "name", &if_inj,
            "netns", &ns_inj
        ]));
        assert!(ip(&["-n", &ns_node, "link", "set", &if_node, "up"]));
        assert!(ip(&["-n", &ns_inj, "link", "set", &if_inj, "up"]));
        Some(Bed {
            ns_node,
            ns_inj,
            if_node,
            if_inj,
            _cleanup: cleanup,
        })
    }

    /// Starts a node on the bed (`extra`: more top-level configuration keys); with its
    /// metrics port.
    fn node(&self, extra: &str) -> (Node, u16) {
        self.node_with_controller(extra, free_port())
    }

    /// As [`Bed::node`], the node's controller at 127.0.0.1:`controller`.
    fn node_with_controller(&self, extra: &str, controller: u16) -> (Node, u16) {
        let metrics_port = free_port();
        let tls = pki().toml(flowshift_trust::pki::Party::Node(1));
        let cfg = NodeConfig::parse(&format!(
            r#"
id = 1
interface = "{}"
mac = "02:f5:00:00:00:01"
inside_next_hop = "02:f5:00:00:01:00"
outside_next_hop = "02:f5:00:00:02:00"
controller = "127.0.0.1:{controller}"
transfer_listen = "127.0.0.1:{}"
metrics_listen = "127.0.0.1:{metrics_port}"
tls = {tls}
{extra}
[[peers]]
id = 2
mac = "02:f5:00:00:00:02"
transfer = "127.0.0.1:{}"
[nat]
groups = [{{ external = "198.18.0.1", subscribers = "100.64.0.0/16" }}]
"#,
            self.if_node,
            free_port(),
            free_port()
        ))
        .unwrap();
        let sock = in_netns(&self.ns_node, || {
            AfPacket::open(&SocketConfig::from_node(&cfg))
        })
        .unwrap();
        (Node::start_with_socket(cfg, sock).unwrap(), metrics_port)
    }

    /// The injector's socket on the other end.
    fn injector(&self) -> Injector {
        let sock = in_netns(&self.ns_inj, || {
            AfPacket::open(&SocketConfig {
                interface: self.if_inj.clone(),
                vnet_hdr: true,
                block_size: 1 << 20,
                blocks: 32,
                qdisc_bypass: false,
            })
        })
        .unwrap();
        Injector { sock }
    }
}

#[test]
fn node_translates_frames_on_a_veth_between_namespaces() {
    let Some(bed) = Bed::new("node_translates_frames_on_a_veth_between_namespaces") else {
        return;
    };
    let (node, metrics_port) = bed.node("");
    let mut inj = bed.injector();
    let plain = VnetHdr::default();

    // 1. Outbound SYN: translated, sent to the outside next hop from the node's MAC.
    let syn = tcp_frame(INSIDE, NODE1, SUB, 40000, SERVER, 80, true, &[]);
    inj.send(&[(plain, syn)]);
    let got = inj.recv(1, Duration::from_secs(3));
    assert_eq!(got.len(), 1, "translated SYN came back");
    let s = inspect(&got[0].1);
    assert_eq!((s.eth_dst, s.eth_src), (OUTSIDE, NODE1));
    assert_eq!((s.src, s.dst, s.dport), (EXT, SERVER, 80));
    assert!(s.ip_ok && s.l4_ok);
    let ext_port = s.sport;

    // 2. A 40 kB TSO super-frame with a partial checksum passes whole, offload kept.
    let payload: Vec<u8> = (0..40_000u32).map(|i| (i * 13) as u8).collect();
    let mut big = tcp_frame(INSIDE, NODE1, SUB, 40000, SERVER, 80, false, &payload);
    let vnet = make_partial(&mut big, 1448);
    inj.send(&[(vnet, big.clone())]);
    let mut got = inj.recv(1, Duration::from_secs(3));
    assert_eq!(got.len(), 1, "GSO frame came back");
    let (v, f) = &mut got[0];
    assert_eq!(f.len(), big.len(), "not segmented");
    assert_eq!(
        (v.gso_type, v.gso_size),
        (1, 1448),
        "GSO metadata kept: {v:?}"
    );
    if v.needs_csum() {
        complete_partial(f, *v);
    }
    let s = inspect(f);
    assert_eq!(
        (s.src, s.sport, s.payload_len),
        (EXT, ext_port, payload.len())
    );
    assert!(s.ip_ok && s.l4_ok, "checksums right after completion");

    // 3. Inbound reply: translated back, sent to the inside next hop.
    let reply = tcp_frame(OUTSIDE, NODE1, SERVER, 80, EXT, ext_port, false, b"pong");
    inj.send(&[(plain, reply)]);
    let got = inj.recv(1, Duration::from_secs(3));
    assert_eq!(got.len(), 1);
    let s = inspect(&got[0].1);
    assert_eq!(
        (s.eth_dst, s.src, s.dst, s.dport),
        (INSIDE, SERVER, SUB, 40000)
    );
    assert!(s.ip_ok && s.l4_ok);

    // 4. Not for the NAT: an ARP frame, and an inbound packet for no mapping.
    let mut arp = udp_frame(OUTSIDE, NODE1, SERVER, 1, EXT, 2, b"arp?");
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let stray = udp_frame(OUTSIDE, NODE1, SERVER, 53, EXT, 2000, b"stray");
    inj.send(&[(plain, arp), (plain, stray)]);
    assert!(inj.recv(1, Duration::from_millis(300)).is_empty());

    // 5. Packet rate: 64-byte UDP frames of one established flow, for one second.
    let probe = udp_frame(INSIDE, NODE1, SUB, 7000, SERVER, 9, &[0u8; 18]);
    inj.send(&[(plain, probe.clone())]);
    assert_eq!(inj.recv(1, Duration::from_secs(3)).len(), 1);
    let batch: Vec<(VnetHdr, Vec<u8>)> = (0..64).map(|_| (plain, probe.clone())).collect();
    let (sent, received, _, secs) = inj.blast(&batch, Duration::from_secs(1));
    eprintln!(
        "64-byte frames: sent {sent}, translated and received {received}: {:.0} kpps through the node",
        received as f64 / secs / 1e3
    );
    assert!(received > 0);

    // 6. GSO throughput: 64 kB TSO frames with partial checksums, for one second.
    let payload = vec![0x42u8; 65_000 - 54];
    let mut gso = tcp_frame(INSIDE, NODE1, SUB, 40000, SERVER, 80, false, &payload);
    let vnet = make_partial(&mut gso, 1448);
    let batch: Vec<(VnetHdr, Vec<u8>)> = (0..16).map(|_| (vnet, gso.clone())).collect();
    let (sent, got, bytes, secs) = inj.blast(&batch, Duration::from_secs(1));
    eprintln!(
        "64 kB GSO frames: sent {sent}, received {got}: {:.2} Gbit/s through the node",
        bytes as f64 * 8.0 / secs / 1e9
    );
    assert!(bytes > 0);

    // 7. Counters, in the snapshot and on /metrics.
    std::thread::sleep(Duration::from_millis(250));
    let st = node.status();
    let c = &st.counters;
    assert!(c.io.rx_not_ipv4 >= 1, "ARP counted");
    assert_eq!(
        c.nat.drops_of(flowshift_nat::DropReason::NoMapping),
        1,
        "the stray packet"
    );
    assert!(c.nat.translated_out >= 3 && c.nat.translated_in >= 1);
    assert_eq!(c.io.tx_errors, 0);
    // Scraped as the monitor, over mutual TLS (the node's certificate names node 1).
    let scraper = metrics_client(
        flowshift_http::Endpoint::Tcp(format!("127.0.0.1:{metrics_port}")),
        1,
        flowshift_trust::pki::Party::Monitor,
    );
    let (status, body) = scraper
        .request(axum::http::Method::GET, "/metrics", None)
        .unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("flowshift_nat_drops_total{reason=\"no_mapping\"} 1"));
    assert!(text.contains("# TYPE flowshift_rx_packets_total counter"));
    assert!(text.contains("flowshift_group_mappings{external=\"198.18.0.1\"} 2"));
    for family in [
        "# TYPE flowshift_max_poll_gap_us gauge",
        "# TYPE flowshift_max_poll_gap_migrating_us gauge",
        "# TYPE flowshift_poll_gaps_over_1000us_total counter",
        "# TYPE flowshift_cpu_packet_thread_seconds_total counter",
        "# TYPE flowshift_cpu_process_seconds_total counter",
    ] {
        assert!(text.contains(family), "/metrics lacks {family:?}");
    }

    let fin = node.shutdown().unwrap();
    eprintln!(
        "node: rx {} tx {} ring drops {} tx queue full {} idle sleeps {}; \
         max poll gap {} us, gaps over 1 ms {} of {}; packet thread CPU {:.3} s, preempted {}",
        fin.counters.io.rx_packets,
        fin.counters.io.tx_packets,
        fin.counters.io.rx_ring_drops,
        fin.counters.io.tx_queue_full,
        fin.counters.io.idle_sleeps,
        fin.counters.poll_max.max_poll_gap_us,
        fin.counters.poll.poll_gaps_over_1000us,
        fin.counters.poll.poll_gaps,
        fin.counters.cpu.packet_thread_us as f64 / 1e6,
        fin.counters.cpu.packet_thread_preemptions,
    );
}

/// Round trips of single frames sent `spacing` apart through an otherwise idle node.
fn lone_frame_rtts(inj: &mut Injector, n: usize, spacing: Duration) -> Vec<Duration> {
    let plain = VnetHdr::default();
    let probe = udp_frame(INSIDE, NODE1, SUB, 7100, SERVER, 9, &[0u8; 18]);
    inj.send(&[(plain, probe.clone())]);
    assert_eq!(inj.recv(1, Duration::from_secs(3)).len(), 1, "flow set up");
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        std::thread::sleep(spacing);
        let t = Instant::now();
        inj.send(&[(plain, probe.clone())]);
        let got = inj.recv(1, Duration::from_secs(1));
        assert_eq!(got.len(), 1, "lone frame came back");
        rtts.push(t.elapsed());
    }
    rtts.sort();
    rtts
}

/// Round trips of `n` status requests `spacing` apart from a fake controller on `l` (the
/// node connects to it and says hello first).
fn command_round_trips(l: &TcpListener, n: u64, spacing: Duration) -> Vec<Duration> {
    use flowshift_control::api::{
        ControllerToNode, NodeRequest, NodeToController, decode_line, encode_line,
    };
    use std::io::BufRead;
    let (mut r, mut w) =
        accept_control(l, flowshift_trust::pki::Party::Controller).expect("TLS handshake");
    let mut recv = || {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "node closed the connection"
        );
        decode_line::<NodeToController>(line.trim_end().as_bytes()).unwrap()
    };
    assert!(matches!(recv(), NodeToController::Hello { .. }));
    let mut rtts = Vec::new();
    for req in 1..=n {
        std::thread::sleep(spacing);
        let t = Instant::now();
        w.write_all(&encode_line(&ControllerToNode::Request {
            req,
            body: NodeRequest::Status,
        }))
        .unwrap();
        loop {
            if let NodeToController::Reply { req: got, result } = recv() {
                assert_eq!(got, req);
                assert!(result.is_ok());
                break;
            }
        }
        rtts.push(t.elapsed());
    }
    rtts.sort();
    rtts
}

/// An idle node, adaptive and busy: the packet thread's CPU time over an idle window (from
/// the node's own counters; `FLOWSHIFT_IDLE_SECS`, default 2 s), then round trips of lone
/// frames 10 ms apart (each round trip includes the node's ring and the injector's ring, each
/// handing a block over at most 1 ms after its first frame), and round trips of controller
/// requests (the control client wakes a blocked packet loop).
#[test]
fn idle_cpu_and_lone_frame_latency() {
    let Some(bed) = Bed::new("idle_cpu_and_lone_frame_latency") else {
        return;
    };
    let secs: f64 = std::env::var("FLOWSHIFT_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    for mode in ["adaptive", "busy"] {
        let ctl_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ctl_port = ctl_listener.local_addr().unwrap().port();
        let (node, _) = bed.node_with_controller(&format!("poll = \"{mode}\""), ctl_port);
        let mut inj = bed.injector();
        // Past start-up, and two publications apart so the snapshot has moved.
        std::thread::sleep(Duration::from_millis(300));
        let cpu = |node: &Node| {
            let st = node.status();
            (
                st.counters.cpu.packet_thread_us as f64 / 1e6,
                st.counters.cpu.process_us as f64 / 1e6,
                st.uptime_s,
            )
        };
        let (t0, p0, u0) = cpu(&node);
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (t1, p1, u1) = cpu(&node);
        let rtts = lone_frame_rtts(&mut inj, 50, Duration::from_millis(10));
        let q = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
        let share = (t1 - t0) / (u1 - u0);
        let cmds = command_round_trips(&ctl_listener, 20, Duration::from_millis(20));
        let c = |p: f64| cmds[((cmds.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
        let st = node.shutdown().unwrap();
        eprintln!(
            "{mode}: idle {:.2} s: packet thread {:.4} s CPU ({:.2}% of a core; process, \
             every test of this binary included: {:.3} s); lone-frame round trip p50 {:.3} ms \
             p90 {:.3} ms max {:.3} ms; controller request round trip p50 {:.3} ms max {:.3} ms; \
             idle sleeps {}, max poll gap {} us",
            u1 - u0,
            t1 - t0,
            share * 100.0,
            p1 - p0,
            q(0.5),
            q(0.9),
            q(1.0),
            c(0.5),
            c(1.0),
            st.counters.io.idle_sleeps,
            st.counters.poll_max.max_poll_gap_us,
        );
        match mode {
            "adaptive" => {
                assert!(
                    share < 0.05,
                    "an idle adaptive node used {share:.3} of a core"
                );
                assert!(q(0.5) < 20.0, "lone frames take {:.1} ms", q(0.5));
                // Queued commands wake a blocked loop (it would otherwise sleep up to 100 ms).
                assert!(c(0.5) < 20.0, "requests take {:.1} ms", c(0.5));
            }
            _ => assert_eq!(st.counters.io.idle_sleeps, 0, "busy mode never sleeps"),
        }
    }
}
