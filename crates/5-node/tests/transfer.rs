//! Two engines (real NAT instances) migrate a group with idle + freeze-and-copy over the
//! node's transfer service on loopback TCP; the chain goes through the node's frame format.

mod common;

use common::*;
use flowshift_control::api::{NodeRequest, ReplyBody};
use flowshift_migration::{Algorithm, InstanceId, Params, Phase};
use flowshift_node::engine::Engine;
use flowshift_node::frame::{ETHERTYPE_CHAIN, ETHERTYPE_IPV4, RxFrame, VnetHdr};
use flowshift_node::transfer;
use flowshift_trust::pki::Party;
use flowshift_wire::Instant;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

const PRELOAD: u32 = 3000;

fn phase_of(e: &Engine, id: u64) -> Option<Phase> {
    e.instance()
        .migrations()
        .into_iter()
        .find(|(m, _, _)| m.0 == id)
        .map(|(_, _, p)| p)
}

#[test]
fn freeze_copy_over_loopback_tcp_moves_every_state() {
    let (a, b) = freeze_copy(PRELOAD, "", 1, false);
    eprintln!("{PRELOAD} states, default side_budget: source {a}; destination {b}");
}

/// The packet chained during the migration is a 30 kB TSO super-frame: the kernel cannot
/// segment the chain ethertype, so the source cuts it into 21 MTU packets with complete
/// checksums, and the count its end-of-chain marker and `Done` announce includes them (the
/// destination neither releases early nor waits for packets that never come).
#[test]
fn a_chained_gso_packet_is_segmented_and_counted_as_its_segments() {
    freeze_copy(PRELOAD, "", 1, true);
}

/// The poster's 65000 states with 16 batches in flight (so transfer frames queue up), with
/// side budgets 1, the default 4, and 64 (the former fixed budget): prints the poll gaps each
/// engine saw (time on side work between two ring stages of the test's loop, preemption
/// included).
#[test]
fn side_work_gaps_while_migrating_65000_states() {
    for budget in [1, 4, 64] {
        let (a, b) = freeze_copy(65_000, &format!("side_budget = {budget}"), 16, false);
        eprintln!("65000 states, side_budget {budget}: source {a}; destination {b}");
    }
}

/// Migrates the group of an engine preloaded with `preload` states (`extra`: more
/// configuration keys of both) and checks the outcome; the longest poll gap (side work
/// between two "ring stages" of the test's loop) each engine saw while migrating. The new
/// flow that travels the chain starts with a SYN, or (`gso`) with a 30 kB TSO super-frame.
fn freeze_copy(preload: u32, extra: &str, in_flight: u32, gso: bool) -> (String, String) {
    let la = TcpListener::bind("127.0.0.1:0").unwrap();
    let lb = TcpListener::bind("127.0.0.1:0").unwrap();
    let (aa, ab) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let preload_cfg =
        format!("{extra}\n[[preload]]\nexternal = \"198.18.0.1\"\nstates = {preload}\nseed = 3\n");
    let cfg_a = config(1, true, &aa.to_string(), &ab.to_string(), &preload_cfg);
    let cfg_b = config(2, false, &ab.to_string(), &aa.to_string(), extra);
    let (mut a, ends_a) = engine(&cfg_a);
    let (mut b, ends_b) = engine(&cfg_b);
    let stop = Arc::new(AtomicBool::new(false));
    let svc_a = transfer::start(
        la,
        InstanceId(1),
        &creds(1),
        &[(InstanceId(2), ab)],
        ends_a.transfer,
        ends_a.transfer_counters.clone(),
        stop.clone(),
    )
    .unwrap();
    let svc_b = transfer::start(
        lb,
        InstanceId(2),
        &creds(2),
        &[(InstanceId(1), aa)],
        ends_b.transfer,
        ends_b.transfer_counters.clone(),
        stop.clone(),
    )
    .unwrap();
    let (mut cap_a, mut cap_b) = (Capture::default(), Capture::default());
    let t0 = std::time::Instant::now();
    let clock = || Instant::from_nanos(t0.elapsed().as_nanos() as u64);
    let v = Some(VnetHdr::default());

    // A live flow on A before the migration.
    let syn = tcp_frame(
        INSIDE,
        NODE1,
        [100, 64, 0, 9],
        41000,
        SERVER,
        443,
        true,
        &[],
    );
    a.rx_frame(clock(), RxFrame::plain(&syn, v), &mut cap_a);
    a.flush_rx(clock(), &mut cap_a);
    assert_eq!(cap_a.take().len(), 1);

    let params = Params {
        idle_max: Duration::ZERO,
        batch_size: 512,
        batches_in_flight: in_flight,
        drain: Duration::from_millis(20),
        ..Params::default()
    };
    let mig = match a.command(
        clock(),
        NodeRequest::StartMigration {
            external: EXT.into(),
            to: flowshift_migration::InstanceId(2),
            algorithm: Algorithm::FreezeCopy,
            params: Some(params),
        },
    ) {
        Ok(ReplyBody::Started { migration }) => migration,
        other => panic!("start refused: {other:?}"),
    };
    // A new flow after the start: A may no longer create it, so it travels the chain to B.
    let payload: Vec<u8> = (0..30_000u32).map(|i| (i * 11 + 5) as u8).collect();
    let mut first = tcp_frame(
        INSIDE,
        NODE1,
        [100, 64, 0, 10],
        42000,
        SERVER,
        443,
        !gso,
        if gso { &payload[..] } else { &[] },
    );
    let (vnet2, expect_chained) = if gso {
        (
            Some(make_partial(&mut first, 1448)),
            payload.len().div_ceil(1448),
        )
    } else {
        (v, 1)
    };
    a.rx_frame(clock(), RxFrame::plain(&first, vnet2), &mut cap_a);
    a.flush_rx(clock(), &mut cap_a);
    let mut segment_bytes = 0;

    let deadline = t0 + Duration::from_secs(20);
    let (mut chained, mut cut) = (0, false);
    let mut translated_by_b = Vec::new();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "migration did not finish: A {:?} B {:?}",
            phase_of(&a, mig),
            phase_of(&b, mig)
        );
        let now = clock();
        for (e, cap) in [(&mut a, &mut cap_a), (&mut b, &mut cap_b)] {
            // As the node's loop: an (empty) ring stage, the side work, the next ring stage
            // (which records the gap; the test's sleep and the other engine's turn are not
            // part of it).
            e.ring_done(clock());
            e.poll_side(now, cap);
            e.handle_timeout(now, cap);
            e.ring_start(clock());
        }
        // The switch: A's chained frames go to B.
        for (vnet, f) in cap_a.take() {
            assert_eq!(u16::from_be_bytes([f[12], f[13]]), ETHERTYPE_CHAIN);
            assert_eq!((&f[..6], &f[6..12]), (&NODE2[..], &NODE1[..]));
            if gso {
                assert_eq!(vnet.map(|v| v.gso_type), Some(0), "a segment, not GSO");
                let s = inspect(&f);
                assert!(
                    s.ip_ok && s.l4_ok,
                    "segment {chained} carries full checksums"
                );
                assert!(f.len() <= 14 + 1500, "segment {chained} fits the MTU");
                segment_bytes += s.payload_len;
            }
            chained += 1;
            b.rx_frame(now, RxFrame::plain(&f, vnet), &mut cap_b);
            b.flush_rx(now, &mut cap_b);
        }
        translated_by_b.extend(cap_b.take());
        if !cut && phase_of(&a, mig) == Some(Phase::AwaitCutover) {
            assert_eq!(
                a.command(now, NodeRequest::CutoverDone { migration: mig }),
                Ok(ReplyBody::Ok)
            );
            cut = true;
        }
        let completed = |e: &Engine| {
            e.instance()
                .report(flowshift_migration::MigrationId(mig))
                .is_some_and(|r| r.completed)
        };
        if completed(&a) && completed(&b) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);

    assert_eq!(
        chained, expect_chained,
        "the new flow's first packet, chained"
    );
    let (ia, ib) = (a.instance().counters(), b.instance().counters());
    assert_eq!(ib.chained_in, expect_chained as u64);
    assert_eq!(ia.chained_out, expect_chained as u64, "announced = sent");
    assert_eq!(
        ib.hold_timeouts, 0,
        "the destination released on the marker's count"
    );
    if gso {
        assert_eq!(segment_bytes, payload.len());
        let io = a.io();
        assert_eq!((io.tx_chain_segmented, io.tx_chain_unsegmentable), (1, 0));
    } else {
        assert_eq!(translated_by_b.len(), 1);
        let s = inspect(&translated_by_b[0].1);
        assert_eq!(
            (s.src, s.dst, s.ethertype, s.eth_dst),
            (EXT, SERVER, ETHERTYPE_IPV4, OUTSIDE)
        );
        assert!(s.ip_ok && s.l4_ok);
    }

    let (na, nb) = (a.instance().nat(), b.instance().nat());
    assert_eq!(na.group_id(EXT.into()), None, "the source forgot the group");
    let g = nb
        .group_id(EXT.into())
        .expect("the destination serves the group");
    let st = nb.group_stats(g).unwrap();
    if gso {
        assert!(st.sessions > preload, "every state arrived");
    } else {
        assert_eq!(st.sessions, preload + 2, "every state arrived");
    }
    nb.check_invariants().unwrap();
    na.check_invariants().unwrap();
    assert_eq!(phase_of(&a, mig), Some(Phase::Done));
    let report = a
        .instance()
        .report(flowshift_migration::MigrationId(mig))
        .unwrap();
    assert_eq!(report.packets_lost_by_cause.values().sum::<u64>(), 0);

    let (ca, cb) = (&ends_a.transfer_counters, &ends_b.transfer_counters);
    assert!(ca.frames_out.get() > 0 && cb.frames_out.get() > 0);
    assert_eq!(ca.frames_in.get(), cb.frames_out.get());
    assert_eq!(cb.frames_in.get(), ca.frames_out.get());
    assert_eq!(ca.frames_lost.get() + cb.frames_lost.get(), 0);
    assert_eq!((ca.connects.get(), cb.connects.get()), (1, 1));
    assert_eq!((ca.accepts.get(), cb.accepts.get()), (1, 1));
    let status = a.status(clock());
    assert_eq!(status.counters.transfer.frames_out, ca.frames_out.get());
    assert_eq!(status.counters.io.transfer_out_refused, 0);
    svc_a.join();
    svc_b.join();
    let gaps = |e: &Engine| {
        let c = e.status(clock()).counters;
        assert!(c.poll_max.max_poll_gap_migrating_us > 0);
        format!(
            "longest gap while migrating {} us, gaps over 1 ms {} of {}",
            c.poll_max.max_poll_gap_migrating_us, c.poll.poll_gaps_over_1000us, c.poll.poll_gaps
        )
    };
    (gaps(&a), gaps(&b))
}

fn creds(id: u16) -> flowshift_trust::Credentials {
    flowshift_trust::Credentials::load(&pki().files(Party::Node(id))).expect("test credentials")
}

/// A TLS connection to node 1's listener at `addr` with `files`' credentials, and `hello`.
fn tls_client(
    addr: std::net::SocketAddr,
    files: &flowshift_trust::TlsFiles,
    hello: u16,
) -> std::io::Result<flowshift_trust::split::ClientStream> {
    use std::io::Write;
    let c = flowshift_trust::Credentials::load(files).unwrap();
    let tcp = std::net::TcpStream::connect(addr)?;
    let name = flowshift_trust::server_name(&flowshift_trust::node_name(1)).unwrap();
    let (conn, tcp) = flowshift_trust::split::connect(
        tcp,
        c.client_config().unwrap(),
        name,
        Duration::from_secs(5),
    )?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(&transfer::hello(InstanceId(hello)))?;
    Ok(s)
}

/// Reads until the node closes the connection (or 5 s pass: then the test fails).
fn wait_closed(s: &mut impl std::io::Read) {
    let t = std::time::Instant::now();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return,
            Err(e)
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut =>
            {
                return;
            }
            _ => assert!(
                t.elapsed() < Duration::from_secs(5),
                "not closed by the node"
            ),
        }
    }
}

#[test]
fn strangers_impostors_and_bad_streams_are_refused() {
    use std::io::Write;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let waker = Arc::new(flowshift_node::sys::Waker::new().unwrap());
    let (link, ends) = transfer::link(&[InstanceId(2)], 8, waker);
    let counters = Arc::new(flowshift_node::stats::TransferCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let svc = transfer::start(
        l,
        InstanceId(1),
        &creds(1),
        &[(InstanceId(2), "127.0.0.1:9".parse().unwrap())],
        ends,
        counters.clone(),
        stop.clone(),
    )
    .unwrap();
    // Plain TCP with a valid hello (the attack of issue 12): no TLS, refused.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&transfer::hello(InstanceId(2))).unwrap();
    wait_closed(&mut s);
    // Another CA's certificate for node 2: the handshake fails.
    let other = flowshift_trust::pki::ScratchPki::new(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")),
        &[Party::Node(2)],
    )
    .unwrap();
    assert!(tls_client(addr, &other.files(Party::Node(2)), 2).is_err());
    // Node 3 holds a valid certificate but is no peer of node 1.
    let mut s = tls_client(addr, &pki().files(Party::Node(3)), 3).unwrap();
    wait_closed(&mut s);
    // Node 3 claiming to be node 2: its certificate does not name node 2.
    let mut s = tls_client(addr, &pki().files(Party::Node(3)), 2).unwrap();
    wait_closed(&mut s);
    // Node 2, then garbage instead of a frame header.
    let mut s = tls_client(addr, &pki().files(Party::Node(2)), 2).unwrap();
    s.write_all(&[0xAB; 64]).unwrap();
    wait_closed(&mut s);
    // Node 2 sending a valid frame, split in small writes.
    let frame = flowshift_migration::proto::write_frame(
        flowshift_migration::proto::Kind::Ack,
        flowshift_migration::MigrationId::new(InstanceId(2), 1),
        0,
        0,
        &[],
    );
    let mut s = tls_client(addr, &pki().files(Party::Node(2)), 2).unwrap();
    for chunk in frame.chunks(5) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let t = std::time::Instant::now();
    let got = loop {
        if let Some(x) = link.try_recv() {
            break x;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "frame not delivered");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(got, (InstanceId(2), frame));
    // Sending to a peer that is not listening: lost, counted, no panic.
    assert!(link.send(InstanceId(2), vec![1, 2, 3]));
    assert!(!link.send(InstanceId(5), vec![1]), "unknown peer refused");
    let t = std::time::Instant::now();
    while counters.frames_lost.get() == 0 {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(counters.auth_refused.get(), 3, "plain, other CA, impostor");
    assert_eq!(counters.refused.get(), 1, "node 3 is no peer");
    assert_eq!(counters.stream_errors.get(), 1);
    assert_eq!(counters.accepts.get(), 2);
    assert_eq!(counters.connect_failures.get(), 1);
    drop(s);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(link);
    svc.join();
}
