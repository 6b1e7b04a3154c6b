//! The control client against a fake controller on loopback (mutual TLS): hello, requests
//! executed by a real engine, pushed events, reconnection, a listener that is not the
//! controller refused.

mod common;

use common::*;
use flowshift_control::api::{
    ControllerToNode, NodeRequest, NodeToController, ReplyBody, decode_line, encode_line,
};
use flowshift_migration::{Algorithm, InstanceId, MigrationEvent, Phase, Role};
use flowshift_node::MacAddr;
use flowshift_node::control::{self, Identity};
use flowshift_trust::pki::Party;
use flowshift_trust::split::{TlsReader, TlsWriter};
use flowshift_wire::Instant;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

struct Ctl {
    w: TlsWriter,
    r: BufReader<TlsReader>,
}

impl Ctl {
    fn accept(l: &TcpListener) -> Ctl {
        let (r, w) = accept_control(l, Party::Controller).expect("TLS handshake");
        Ctl { w, r }
    }
    fn recv(&mut self) -> NodeToController {
        let mut line = String::new();
        assert!(
            self.r.read_line(&mut line).unwrap() > 0,
            "connection closed"
        );
        decode_line(line.trim_end().as_bytes()).unwrap()
    }
    fn request(&mut self, req: u64, body: NodeRequest) {
        self.w
            .write_all(&encode_line(&ControllerToNode::Request { req, body }))
            .unwrap();
    }
    /// The reply to `req`, keeping events seen meanwhile.
    fn reply(&mut self, req: u64, events: &mut Vec<MigrationEvent>) -> Result<ReplyBody, String> {
        loop {
            match self.recv() {
                NodeToController::Reply { req: r, result } if r == req => return result,
                NodeToController::Event { event, .. } => events.push(event),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn requests_replies_events_and_reconnection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config(1, true, "127.0.0.1:1", "127.0.0.1:2", "");
    let (mut e, ends) = engine(&cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let client = control::start(
        listener.local_addr().unwrap(),
        Identity {
            id: InstanceId(1),
            mac: MacAddr(NODE1),
        },
        client_tls(1),
        ends.snapshot.clone(),
        ends.control,
        ends.control_counters.clone(),
        stop.clone(),
    )
    .unwrap();
    let _transfer = ends.transfer;
    let stop2 = stop.clone();
    let packet = std::thread::spawn(move || {
        let mut cap = Capture::default();
        let t0 = std::time::Instant::now();
        while !stop2.load(Ordering::Relaxed) {
            let now = Instant::from_nanos(t0.elapsed().as_nanos() as u64);
            e.poll_side(now, &mut cap);
            e.handle_timeout(now, &mut cap);
            std::thread::sleep(Duration::from_millis(1));
        }
    });

    let mut ctl = Ctl::accept(&listener);
    match ctl.recv() {
        NodeToController::Hello { id, mac, groups } => {
            assert_eq!((id, mac), (InstanceId(1), NODE1));
            assert_eq!(groups, vec![std::net::Ipv4Addr::from(EXT)]);
        }
        other => panic!("expected hello, got {other:?}"),
    }
    let mut events = Vec::new();
    ctl.request(1, NodeRequest::Status);
    match ctl.reply(1, &mut events) {
        Ok(ReplyBody::Status(s)) => {
            assert_eq!(s.id, InstanceId(1));
            assert_eq!(s.groups.len(), 1);
            // Every counter crosses the channel under its stable name.
            let flat = s.counters.flat();
            for k in [
                "drop_no_mapping",
                "loss_group_halted",
                "nat_packets_in",
                "migration_frames_in",
                "rx_packets",
                "rx_ring_drops",
                "tx_packets",
                "transfer_frames_out",
                "max_poll_gap_us",
                "cpu_process_us",
            ] {
                assert!(flat.contains_key(k), "status lacks {k}");
            }
            assert_eq!(s.counters.control.connects, 1);
            assert_eq!(s.counters.control.requests, 1);
        }
        other => panic!("{other:?}"),
    }
    let start = |external: [u8; 4], to: u16| NodeRequest::StartMigration {
        external: external.into(),
        to: InstanceId(to),
        algorithm: Algorithm::FreezeCopy,
        params: None,
    };
    ctl.request(2, start([198, 18, 0, 99], 2));
    assert!(
        ctl.reply(2, &mut events)
            .unwrap_err()
            .contains("no group 198.18.0.99")
    );
    ctl.request(3, start(EXT, 3));
    assert!(
        ctl.reply(3, &mut events)
            .unwrap_err()
            .contains("not a configured peer")
    );
    ctl.request(4, start(EXT, 2));
    let mig = match ctl.reply(4, &mut events) {
        Ok(ReplyBody::Started { migration }) => migration,
        other => panic!("{other:?}"),
    };
    ctl.request(5, NodeRequest::Report { migration: mig });
    match ctl.reply(5, &mut events) {
        Ok(ReplyBody::Report(r)) => assert_eq!(r["algorithm"], "freeze-copy"),
        other => panic!("{other:?}"),
    }
    // Garbage is ignored; the connection stays usable.
    ctl.w.write_all(b"{not json}\n\n").unwrap();
    ctl.request(6, NodeRequest::Abort { migration: mig });
    assert_eq!(
        ctl.reply(6, &mut events),
        Ok(ReplyBody::Aborted { reverted: true })
    );
    ctl.request(7, NodeRequest::CutoverDone { migration: mig });
    assert!(ctl.reply(7, &mut events).is_err());
    assert!(
        events.iter().any(|ev| matches!(ev, MigrationEvent::Phase { migration, role: Role::Source, phase: Phase::Prepare, .. } if migration.0 == mig)),
        "the Prepare phase event was pushed: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|ev| matches!(ev, MigrationEvent::Aborted { .. }))
    );
    assert_eq!(ends.control_counters.bad_lines.get(), 1);

    // The controller goes away; an impostor (node 2's certificate, not the controller's)
    // takes its address: the node refuses it and counts the failure; then the real one
    // comes back, and the node says hello again.
    drop(ctl);
    assert!(
        accept_control(&listener, Party::Node(2)).is_err(),
        "the node must refuse a listener whose certificate does not name the controller"
    );
    let t = std::time::Instant::now();
    let mut ctl = Ctl::accept(&listener);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        ctl.recv(),
        NodeToController::Hello {
            id: InstanceId(1),
            ..
        }
    ));
    ctl.request(8, NodeRequest::Status);
    match ctl.reply(8, &mut events) {
        Ok(ReplyBody::Status(s)) => {
            assert_eq!(s.counters.control.connects, 2);
            assert_eq!(s.counters.control.tls_failures, 1);
        }
        other => panic!("{other:?}"),
    }

    stop.store(true, Ordering::SeqCst);
    packet.join().unwrap();
    client.join().unwrap();
}
