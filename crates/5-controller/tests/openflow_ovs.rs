//! Live test against a private Open vSwitch (userspace datapath) started by [`flowshift_ovs::Ovs`].
//!
//! Prints `SKIP: <reason>` and passes when not root or Open vSwitch is not installed
//! (`scripts/install-testbed-deps.sh` installs it). Everything it creates (namespaces, daemons,
//! directories) is removed by drop guards, also when an assertion fails.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use flowshift_openflow::*;
use flowshift_ovs::{Netns, Ovs, OvsError, OvsOptions};
use flowshift_wire::Instant;

const DPID: u64 = 0x0000_0000_00fa_0001;
const WAIT: Duration = Duration::from_secs(5);

/// Drives a [`Connection`] over a blocking unix stream with a short read timeout.
struct Driver {
    conn: Connection,
    stream: UnixStream,
    t0: std::time::Instant,
    /// Events that arrived while waiting for something else.
    backlog: VecDeque<Event>,
}

impl Driver {
    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn flush(&mut self) {
        while let Some(bytes) = self.conn.poll_transmit() {
            match self.stream.write_all(&bytes) {
                Ok(()) => {}
                // The switch may hang up first after a failed handshake; reads report that.
                Err(e)
                    if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) =>
                {
                    return;
                }
                Err(e) => panic!("write to switch: {e}"),
            }
        }
    }

    /// Pumps I/O until an event satisfying `pred` arrives (or was already in the backlog).
    fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Event) -> bool) -> Event {
        if let Some(i) = self.backlog.iter().position(&mut pred) {
            return self.backlog.remove(i).unwrap();
        }
        let deadline = std::time::Instant::now() + WAIT;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            self.flush();
            while let Some(ev) = self.conn.poll_event() {
                if pred(&ev) {
                    return ev;
                }
                assert!(
                    !matches!(ev, Event::Closed(_)),
                    "closed while waiting for {what}: {ev:?}"
                );
                self.backlog.push_back(ev);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; other events: {:?}",
                self.backlog
            );
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("switch closed the connection while waiting for {what}"),
                Ok(n) => {
                    let now = self.now();
                    self.conn.handle_input(now, &buf[..n]);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read from switch: {e}"),
            }
            let now = self.now();
            self.conn.handle_timeout(now);
        }
    }

    fn barrier(&mut self) {
        let xid = self.conn.send_barrier().unwrap();
        self.wait_for("barrier reply", |e| *e == Event::BarrierReply { xid });
    }

    fn flow_stats(&mut self) -> Vec<FlowStats> {
        let xid = self
            .conn
            .request_flow_stats(&FlowStatsRequest::all())
            .unwrap();
        match self.wait_for(
            "flow stats",
            |e| matches!(e, Event::FlowStats { xid: x, .. } if *x == xid),
        ) {
            Event::FlowStats {
                entries, truncated, ..
            } => {
                assert!(!truncated);
                entries
            }
            _ => unreachable!(),
        }
    }

    /// Errors that arrived unasked.
    fn stray_errors(&self) -> Vec<&Event> {
        self.backlog
            .iter()
            .filter(|e| matches!(e, Event::Error { .. }))
            .collect()
    }
}

/// Starts OVS, or returns `None` after printing why the test is skipped.
fn start_ovs(options: &OvsOptions) -> Option<Ovs> {
    match Ovs::start_with(options) {
        Ok(ovs) => Some(ovs),
        Err(OvsError::Unavailable(reason)) => {
            println!("SKIP: {reason}");
            None
        }
        Err(e) => panic!("starting Open vSwitch: {e}"),
    }
}

/// Binds the controller socket, points the bridge at it and drives the accepted connection.
fn connect(ovs: &Ovs) -> Driver {
    // Listen before pointing the bridge at us, so the first connection attempt succeeds.
    let path = ovs.controller_socket_path();
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    ovs.set_controller(&format!("unix:{}", path.display()))
        .unwrap();
    let stream = accept(&listener);
    Driver {
        conn: Connection::new(Config::default(), Instant::ZERO),
        stream,
        t0: std::time::Instant::now(),
        backlog: VecDeque::new(),
    }
}

fn accept(listener: &UnixListener) -> UnixStream {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_millis(10)))
                    .unwrap();
                return stream;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "switch did not connect"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn mac(last: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, last]
}

/// An Ethernet/IPv4/UDP frame 100.64.1.7:1234 -> 198.18.0.1:53 (checksums left zero).
fn test_frame() -> Vec<u8> {
    let payload = b"flowshift";
    let udp_len = 8 + payload.len() as u16;
    let ip_len = 20 + udp_len;
    let mut f = Vec::new();
    f.extend(mac(2));
    f.extend(mac(1));
    f.extend([0x08, 0x00]);
    f.extend([
        0x45,
        0,
        (ip_len >> 8) as u8,
        ip_len as u8,
        0,
        1,
        0,
        0,
        64,
        17,
        0,
        0,
    ]);
    f.extend([100, 64, 1, 7, 198, 18, 0, 1]);
    f.extend([0x04, 0xd2, 0, 53, (udp_len >> 8) as u8, udp_len as u8, 0, 0]);
    f.extend(payload);
    f
}

#[test]
fn program_real_open_vswitch() {
    let options = OvsOptions {
        datapath_id: Some(DPID),
        ..OvsOptions::default()
    };
    let Some(ovs) = start_ovs(&options) else {
        return;
    };
    let started = std::time::Instant::now();
    let run = || -> Result<(), OvsError> {
        // Two host namespaces, one veth port each.
        let host_a = Netns::create("fsofa")?;
        let host_b = Netns::create("fsofb")?;
        let p1 = ovs.add_veth_port("p1", &host_a, "veth-a", None)?;
        let p2 = ovs.add_veth_port("p2", &host_b, "veth-b", Some(7))?;
        assert!((1..=port::MAX).contains(&p1), "p1 = {p1}");
        assert_eq!(p2, 7, "ofport_request honoured");
        assert_eq!(ovs.ofport("p1")?, p1);
        assert_eq!(ovs.datapath_id()?, DPID);
        body(&ovs, p1, p2);
        Ok(())
    };
    let result = run();
    if let Err(e) = result {
        panic!("{e}\nvswitchd log:\n{}", ovs.vswitchd_log_tail(20));
    }
    println!("live test took {:?} after OVS start", started.elapsed());
}

fn body(ovs: &Ovs, p1: u32, p2: u32) {
    // Listen before pointing the bridge at us, so the first connection attempt succeeds.
    let path = ovs.controller_socket_path();
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    ovs.set_controller(&format!("unix:{}", path.display()))
        .unwrap();
    let stream = accept(&listener);
    let t0 = std::time::Instant::now();
    let mut d = Driver {
        conn: Connection::new(Config::default(), Instant::ZERO),
        stream,
        t0,
        backlog: VecDeque::new(),
    };

    // Handshake.
    let connected = d.wait_for("handshake", |e| matches!(e, Event::Connected { .. }));
    let Event::Connected {
        datapath_id,
        features,
    } = connected
    else {
        unreachable!()
    };
    assert_eq!(datapath_id, DPID);
    assert!(features.n_tables >= 1);
    println!("handshake completed in {:?}", d.t0.elapsed());

    // Port numbers as the switch reports them.
    let xid = d.conn.request_port_desc().unwrap();
    let Event::PortDesc { ports, .. } = d.wait_for(
        "port desc",
        |e| matches!(e, Event::PortDesc { xid: x, .. } if *x == xid),
    ) else {
        unreachable!()
    };
    let number = |name: &str| ports.iter().find(|p| p.name == name).map(|p| p.port_no);
    assert_eq!(
        (number("p1"), number("p2")),
        (Some(p1), Some(p2)),
        "{ports:?}"
    );

    // Three overlapping rules with distinct priorities.
    let rule = |priority: u16, cookie: u64, m: Match, dst: u8, out: u32| FlowMod {
        cookie,
        flags: FlowModFlags::SEND_FLOW_REM,
        ..FlowMod::add(
            m.with_prerequisites(),
            priority,
            vec![Instruction::ApplyActions(vec![
                Action::SetField(SetField::EthDst(mac(dst))),
                Action::output(out),
            ])],
        )
    };
    let rules = [
        rule(
            100,
            0xa1,
            Match {
                in_port: Some(p1),
                ipv4_src: Some(Masked::ipv4_prefix(Ipv4Addr::new(100, 64, 0, 0), 16)),
                ..Match::default()
            },
            0x0a,
            p2,
        ),
        rule(
            200,
            0xb2,
            Match {
                in_port: Some(p1),
                ipv4_src: Some(Masked::ipv4_prefix(Ipv4Addr::new(100, 64, 1, 0), 24)),
                ipv4_dst: Some(Masked::ipv4_prefix(Ipv4Addr::new(198, 18, 0, 0), 15)),
                ..Match::default()
            },
            0x0b,
            p2,
        ),
        rule(
            300,
            0xc3,
            Match {
                in_port: Some(p2),
                ipv4_dst: Some(Masked::ipv4_prefix(Ipv4Addr::new(100, 64, 1, 7), 32)),
                ..Match::default()
            },
            0x0c,
            p1,
        ),
    ];
    let t_install = std::time::Instant::now();
    for r in &rules {
        d.conn.send_flow_mod(r).unwrap();
    }
    d.barrier();
    println!(
        "3 flow mods + barrier acknowledged in {:?}",
        t_install.elapsed()
    );
    assert!(d.stray_errors().is_empty(), "{:?}", d.stray_errors());

    // Verified by ovs-ofctl ...
    let dump = ovs.dump_flows().unwrap();
    let flows: Vec<&str> = dump.lines().filter(|l| l.contains("priority=")).collect();
    assert_eq!(flows.len(), 3, "{dump}");
    for (prio, needles) in [
        (
            100,
            vec![
                format!("in_port={p1}"),
                "nw_src=100.64.0.0/16".into(),
                format!("output:{p2}"),
            ],
        ),
        (
            200,
            vec![
                "nw_src=100.64.1.0/24".into(),
                "nw_dst=198.18.0.0/15".into(),
                "set_field:02:00:00:00:00:0b->eth_dst".into(),
            ],
        ),
        (
            300,
            vec![
                format!("in_port={p2}"),
                "nw_dst=100.64.1.7 ".into(),
                format!("output:{p1}"),
            ],
        ),
    ] {
        let line = flows
            .iter()
            .find(|l| l.contains(&format!("priority={prio},")))
            .unwrap_or_else(|| panic!("no flow with priority {prio}:\n{dump}"));
        for n in needles {
            assert!(line.contains(&n), "{n:?} missing from {line:?}");
        }
        assert!(line.contains("send_flow_rem"), "{line}");
    }

    // ... and by a flow-stats multipart request: the switch reports back what we installed.
    let mut stats = d.flow_stats();
    stats.sort_by_key(|s| s.priority);
    assert_eq!(stats.len(), 3, "{stats:?}");
    for (s, r) in stats.iter().zip(&rules) {
        assert_eq!(
            (s.priority, s.cookie, s.table_id),
            (r.priority, r.cookie, 0)
        );
        assert_eq!(s.match_, r.match_, "match of priority {}", r.priority);
        assert_eq!(s.instructions, r.instructions);
        assert_eq!((s.packet_count, s.byte_count), (0, 0));
    }

    // Errors carry the xid of the failing request.
    let bad_table = FlowMod {
        table_id: TABLE_ALL,
        ..rules[0].clone()
    };
    let x_table = d.conn.send_flow_mod(&bad_table).unwrap();
    let bad_port = FlowMod {
        instructions: vec![Instruction::ApplyActions(vec![Action::output(port::ANY)])],
        priority: 400,
        ..rules[0].clone()
    };
    let x_port = d.conn.send_flow_mod(&bad_port).unwrap();
    d.barrier();
    for (xid, what, expected) in [
        (
            x_table,
            "table 255",
            (
                error_type::FLOW_MOD_FAILED,
                error_code::flow_mod_failed::BAD_TABLE_ID,
            ),
        ),
        (
            x_port,
            "output to OFPP_ANY",
            (error_type::BAD_ACTION, error_code::bad_action::BAD_OUT_PORT),
        ),
    ] {
        let Event::Error { error, .. } = d.wait_for(
            what,
            |e| matches!(e, Event::Error { xid: x, .. } if *x == xid),
        ) else {
            unreachable!()
        };
        assert_eq!((error.err_type, error.code), expected, "{what}: {error:?}");
        let failed = error
            .failed_request()
            .expect("error data echoes the request");
        assert_eq!((failed.msg_type, failed.xid), (msg_type::FLOW_MOD, xid));
    }
    assert_eq!(d.flow_stats().len(), 3, "failed flow mods changed nothing");

    // PACKET_OUT to the controller comes back as a PACKET_IN.
    let frame = test_frame();
    let po = PacketOut::new(
        vec![Action::to_controller(CONTROLLER_MAX_LEN_NO_BUFFER)],
        frame.clone(),
    );
    d.conn.send_packet_out(&po).unwrap();
    let Event::PacketIn(pin) = d.wait_for("packet in", |e| matches!(e, Event::PacketIn(_))) else {
        unreachable!()
    };
    assert_eq!(pin.data, frame);
    assert_eq!(usize::from(pin.total_len), frame.len());
    assert_eq!(pin.reason, packet_in_reason::ACTION);
    assert_eq!(pin.match_.in_port, Some(port::CONTROLLER));

    // Port counters exist for both ports.
    let xid = d.conn.request_port_stats(port::ANY).unwrap();
    let Event::PortStats { entries, .. } = d.wait_for(
        "port stats",
        |e| matches!(e, Event::PortStats { xid: x, .. } if *x == xid),
    ) else {
        unreachable!()
    };
    for p in [p1, p2] {
        assert!(
            entries.iter().any(|e| e.port_no == p),
            "port {p} missing: {entries:?}"
        );
    }

    // Delete everything: one FLOW_REMOVED per rule, then nothing is left.
    d.conn
        .send_flow_mod(&FlowMod::delete(Match::default()))
        .unwrap();
    d.barrier();
    let mut cookies: Vec<u64> = (0..3)
        .map(
            |_| match d.wait_for("flow removed", |e| matches!(e, Event::FlowRemoved(_))) {
                Event::FlowRemoved(f) => {
                    assert_eq!(f.reason, flow_removed_reason::DELETE);
                    f.cookie
                }
                _ => unreachable!(),
            },
        )
        .collect();
    cookies.sort_unstable();
    assert_eq!(cookies, [0xa1, 0xb2, 0xc3]);
    assert_eq!(d.flow_stats(), vec![]);
    let dump = ovs.dump_flows().unwrap();
    assert!(!dump.contains("priority="), "{dump}");

    let stats = *d.conn.stats();
    assert_eq!(
        (stats.decode_errors, stats.events_dropped, stats.tx_refused),
        (0, 0, 0)
    );
    println!("connection stats: {stats:?}");
}

#[test]
fn version_mismatch_with_an_openflow10_bridge() {
    let Some(ovs) = start_ovs(&OvsOptions::default()) else {
        return;
    };
    ovs.vsctl(&["set", "bridge", ovs.bridge(), "protocols=OpenFlow10"])
        .unwrap();
    let mut d = connect(&ovs);
    let closed = d.wait_for("close", |e| matches!(e, Event::Closed(_)));
    let Event::Closed(CloseReason::VersionMismatch {
        peer_version,
        peer_bitmap,
    }) = closed
    else {
        panic!("unexpected {closed:?}")
    };
    assert_eq!(peer_version, 1);
    assert!(
        peer_bitmap.is_none_or(|b| b & (1 << OFP_VERSION) == 0),
        "{peer_bitmap:?}"
    );
    assert_eq!(d.conn.state(), State::Closed);
}
