//! The connection state machine, driven by hand-made switch messages.

use std::time::Duration;

use flowshift_openflow::*;
use flowshift_wire::Instant;

const DPID: u64 = 0x0000_0242_ac11_0002;

fn features() -> FeaturesReply {
    FeaturesReply {
        datapath_id: DPID,
        n_buffers: 0,
        n_tables: 254,
        auxiliary_id: 0,
        capabilities: 0x4f,
        reserved: 0,
    }
}

fn bytes(msg: &Message, xid: u32) -> Vec<u8> {
    encode(msg, xid).unwrap()
}

/// Everything queued for transmission, decoded.
fn sent(conn: &mut Connection) -> Vec<(u32, Message)> {
    std::iter::from_fn(|| conn.poll_transmit())
        .map(|b| decode(&b).unwrap())
        .collect()
}

fn events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

/// A connection that completed the handshake at t = 0, with the queues drained.
fn connected(config: Config) -> Connection {
    let mut conn = Connection::new(config, Instant::ZERO);
    conn.handle_input(Instant::ZERO, &bytes(&Message::Hello(Hello::of13()), 100));
    let features_xid = sent(&mut conn)
        .into_iter()
        .find(|(_, m)| *m == Message::FeaturesRequest)
        .expect("features request")
        .0;
    conn.handle_input(
        Instant::ZERO,
        &bytes(&Message::FeaturesReply(features()), features_xid),
    );
    assert_eq!(conn.state(), State::Connected);
    events(&mut conn);
    conn
}

#[test]
fn hello_exchange_then_features_handshake() {
    let mut conn = Connection::new(Config::default(), Instant::ZERO);
    assert_eq!(conn.state(), State::AwaitingHello);
    let hello = conn.poll_transmit().unwrap();
    assert_eq!(hello, [4, 0, 0, 16, 0, 0, 0, 1, 0, 1, 0, 8, 0, 0, 0, 0x10]);
    assert_eq!(conn.poll_transmit(), None);
    assert_eq!(conn.send_barrier(), Err(SendError::NotConnected));

    // The switch's hello arrives in two pieces.
    let peer = bytes(&Message::Hello(Hello::of13()), 77);
    conn.handle_input(Instant::from_millis(1), &peer[..5]);
    assert_eq!(conn.poll_transmit(), None);
    conn.handle_input(Instant::from_millis(2), &peer[5..]);
    assert_eq!(conn.state(), State::AwaitingFeatures);
    assert_eq!(sent(&mut conn), vec![(2, Message::FeaturesRequest)]);
    assert_eq!(events(&mut conn), vec![]);

    // A reply with another xid is not the handshake's.
    conn.handle_input(
        Instant::from_millis(3),
        &bytes(&Message::FeaturesReply(features()), 9),
    );
    assert_eq!(conn.state(), State::AwaitingFeatures);
    events(&mut conn);

    conn.handle_input(
        Instant::from_millis(3),
        &bytes(&Message::FeaturesReply(features()), 2),
    );
    assert_eq!(conn.state(), State::Connected);
    assert_eq!(conn.datapath_id(), Some(DPID));
    assert_eq!(
        events(&mut conn),
        vec![Event::Connected {
            datapath_id: DPID,
            features: features()
        }]
    );
}

#[test]
fn hello_and_features_reply_in_one_chunk_and_newer_peer_versions() {
    let mut conn = Connection::new(Config::default(), Instant::ZERO);
    // A 1.5 switch that also supports 1.0 and 1.3.
    let mut chunk = bytes(
        &Message::Hello(Hello {
            version: 6,
            bitmap: Some(0b101_0010),
        }),
        1,
    );
    chunk.extend(bytes(&Message::FeaturesReply(features()), 2));
    conn.handle_input(Instant::ZERO, &chunk);
    assert_eq!(conn.state(), State::Connected);
}

#[test]
fn echo_requests_are_answered_with_the_same_xid_and_payload() {
    let mut conn = connected(Config::default());
    conn.handle_input(
        Instant::from_secs(1),
        &bytes(&Message::EchoRequest(b"abc".to_vec()), 0xabcd),
    );
    assert_eq!(
        sent(&mut conn),
        vec![(0xabcd, Message::EchoReply(b"abc".to_vec()))]
    );
    assert_eq!(conn.stats().echo_replies_sent, 1);
    assert_eq!(events(&mut conn), vec![]);
}

#[test]
fn version_mismatch_sends_hello_failed_and_closes() {
    for peer in [
        Hello {
            version: 1,
            bitmap: None,
        },
        Hello {
            version: 5,
            bitmap: Some(0b10_0010), // 1.0 and 1.4, not 1.3
        },
    ] {
        let mut conn = Connection::new(Config::default(), Instant::ZERO);
        conn.poll_transmit();
        conn.handle_input(Instant::ZERO, &bytes(&Message::Hello(peer), 1));
        assert_eq!(conn.state(), State::Closed);
        let out = sent(&mut conn);
        assert_eq!(out.len(), 1, "{out:?}");
        let Message::Error(e) = &out[0].1 else {
            panic!("{out:?}")
        };
        assert_eq!(
            (e.err_type, e.code),
            (
                error_type::HELLO_FAILED,
                error_code::hello_failed::INCOMPATIBLE
            )
        );
        assert_eq!(
            events(&mut conn),
            vec![Event::Closed(CloseReason::VersionMismatch {
                peer_version: peer.version,
                peer_bitmap: peer.bitmap
            })]
        );
        conn.handle_input(Instant::ZERO, &[1, 2, 3]);
        assert_eq!(conn.stats().input_after_close, 3);
        assert_eq!(conn.send_barrier(), Err(SendError::Closed));
    }
}

#[test]
fn first_message_must_be_hello_and_framing_errors_close() {
    let mut conn = Connection::new(Config::default(), Instant::ZERO);
    conn.handle_input(Instant::ZERO, &bytes(&Message::BarrierReply, 1));
    assert_eq!(
        events(&mut conn),
        vec![Event::Closed(CloseReason::ProtocolViolation(
            "first message was not HELLO"
        ))]
    );

    let mut conn = connected(Config::default());
    conn.handle_input(Instant::ZERO, &[4, 0, 0, 4, 0, 0, 0, 0]);
    assert_eq!(
        events(&mut conn),
        vec![Event::Closed(CloseReason::Framing(FrameError::TooShort {
            len: 4
        }))]
    );

    let mut conn = Connection::new(Config::default(), Instant::ZERO);
    let err = ErrorMsg {
        err_type: error_type::HELLO_FAILED,
        code: error_code::hello_failed::EPERM,
        data: vec![],
    };
    conn.handle_input(Instant::ZERO, &bytes(&Message::Error(err), 1));
    assert_eq!(
        events(&mut conn),
        vec![Event::Closed(CloseReason::PeerHelloFailed { code: 1 })]
    );
}

#[test]
fn requests_get_distinct_xids_and_replies_map_back() {
    let mut conn = connected(Config::default());
    let fm = FlowMod::add(Match::default(), 10, vec![]);
    let x1 = conn.send_flow_mod(&fm).unwrap();
    let x2 = conn.send_flow_mod(&fm).unwrap();
    let xb = conn.send_barrier().unwrap();
    assert!(x1 != x2 && x2 != xb && x1 != xb);
    let out = sent(&mut conn);
    assert_eq!(out[0], (x1, Message::FlowMod(fm.clone())));
    assert_eq!(out[2], (xb, Message::BarrierRequest));

    let err = ErrorMsg {
        err_type: error_type::FLOW_MOD_FAILED,
        code: error_code::flow_mod_failed::BAD_TABLE_ID,
        data: bytes(&Message::FlowMod(fm), x2),
    };
    let mut input = bytes(&Message::Error(err.clone()), x2);
    input.extend(bytes(&Message::BarrierReply, xb));
    conn.handle_input(Instant::from_millis(5), &input);
    assert_eq!(
        events(&mut conn),
        vec![
            Event::Error {
                xid: x2,
                error: err
            },
            Event::BarrierReply { xid: xb }
        ]
    );
}

fn entry(priority: u16) -> FlowStats {
    FlowStats {
        table_id: 0,
        duration_sec: 1,
        duration_nsec: 2,
        priority,
        idle_timeout: 0,
        hard_timeout: 0,
        flags: 0,
        cookie: u64::from(priority),
        packet_count: 3,
        byte_count: 4,
        match_: Match {
            in_port: Some(1),
            ..Match::default()
        },
        instructions: vec![Instruction::ApplyActions(vec![Action::output(2)])],
    }
}

fn flow_reply(flags: u16, entries: Vec<FlowStats>) -> Message {
    Message::MultipartReply(MultipartReply {
        flags,
        body: MultipartReplyBody::Flow(entries),
    })
}

#[test]
fn multipart_flow_stats_are_reassembled_and_bounded() {
    let mut conn = connected(Config {
        max_stats_entries: 3,
        ..Config::default()
    });
    let xid = conn.request_flow_stats(&FlowStatsRequest::all()).unwrap();
    sent(&mut conn);
    conn.handle_input(
        Instant::ZERO,
        &bytes(&flow_reply(MULTIPART_MORE, vec![entry(1), entry(2)]), xid),
    );
    assert_eq!(events(&mut conn), vec![], "no event before the last part");
    conn.handle_input(
        Instant::ZERO,
        &bytes(&flow_reply(0, vec![entry(3), entry(4)]), xid),
    );
    assert_eq!(
        events(&mut conn),
        vec![Event::FlowStats {
            xid,
            entries: vec![entry(1), entry(2), entry(3)],
            truncated: true
        }]
    );
    assert_eq!(conn.stats().stats_entries_dropped, 1);

    // A reply nobody asked for is passed through and counted.
    conn.handle_input(Instant::ZERO, &bytes(&flow_reply(0, vec![entry(5)]), xid));
    assert_eq!(
        events(&mut conn),
        vec![Event::Message {
            xid,
            message: flow_reply(0, vec![entry(5)])
        }]
    );
    assert_eq!(conn.stats().unsolicited_replies, 1);
}

#[test]
fn pending_requests_and_transmit_queue_are_bounded() {
    let mut conn = connected(Config {
        max_pending_requests: 2,
        max_tx_bytes: 60, // a flow-stats request is 56 bytes, a port-stats request 24
        ..Config::default()
    });
    conn.request_flow_stats(&FlowStatsRequest::all()).unwrap();
    assert_eq!(
        conn.request_port_stats(port::ANY),
        Err(SendError::QueueFull)
    );
    assert_eq!(conn.stats().tx_refused, 1);
    sent(&mut conn);
    let x = conn.request_port_stats(port::ANY).unwrap();
    assert_eq!(conn.request_port_desc(), Err(SendError::TooManyPending));
    // An error for a pending request frees its slot.
    let err = ErrorMsg {
        err_type: error_type::BAD_REQUEST,
        code: error_code::bad_request::BAD_MULTIPART,
        data: vec![],
    };
    conn.handle_input(Instant::ZERO, &bytes(&Message::Error(err), x));
    sent(&mut conn);
    assert!(conn.request_port_desc().is_ok());
}

#[test]
fn asynchronous_messages_become_events() {
    let mut conn = connected(Config::default());
    let pin = PacketIn {
        buffer_id: NO_BUFFER,
        total_len: 3,
        reason: packet_in_reason::NO_MATCH,
        table_id: 0,
        cookie: u64::MAX,
        match_: Match {
            in_port: Some(7),
            ..Match::default()
        },
        data: vec![1, 2, 3],
    };
    let removed = FlowRemoved {
        cookie: 9,
        priority: 100,
        reason: flow_removed_reason::DELETE,
        table_id: 0,
        duration_sec: 1,
        duration_nsec: 0,
        idle_timeout: 0,
        hard_timeout: 0,
        packet_count: 0,
        byte_count: 0,
        match_: Match::default(),
    };
    let mut input = bytes(&Message::PacketIn(pin.clone()), 0);
    input.extend(bytes(&Message::FlowRemoved(removed.clone()), 0));
    input.extend(bytes(
        &Message::Unknown {
            msg_type: 25,
            body: vec![0; 8],
        },
        4,
    ));
    input.extend([4, 10, 0, 9, 0, 0, 0, 5, 0]); // truncated packet-in
    conn.handle_input(Instant::ZERO, &input);
    let ev = events(&mut conn);
    assert_eq!(ev[0], Event::PacketIn(pin));
    assert_eq!(ev[1], Event::FlowRemoved(removed));
    assert_eq!(
        ev[2],
        Event::Message {
            xid: 4,
            message: Message::Unknown {
                msg_type: 25,
                body: vec![0; 8]
            }
        }
    );
    assert!(matches!(
        ev[3],
        Event::Malformed {
            xid: 5,
            msg_type: 10,
            ..
        }
    ));
    assert_eq!(conn.stats().decode_errors, 1);
    assert_eq!(
        conn.state(),
        State::Connected,
        "a malformed message is skipped, not fatal"
    );
}

#[test]
fn keepalive_probes_an_idle_switch_and_closes_a_dead_one() {
    let config = Config {
        echo_interval: Some(Duration::from_secs(5)),
        echo_timeout: Duration::from_secs(2),
        ..Config::default()
    };
    let mut conn = connected(config);
    assert_eq!(conn.poll_timeout(), Some(Instant::from_secs(5)));
    conn.handle_timeout(Instant::from_secs(4));
    assert_eq!(sent(&mut conn), vec![]);
    conn.handle_timeout(Instant::from_secs(5));
    let probes = sent(&mut conn);
    assert!(
        matches!(probes[..], [(_, Message::EchoRequest(_))]),
        "{probes:?}"
    );
    assert_eq!(conn.poll_timeout(), Some(Instant::from_secs(7)));

    // Any input counts as liveness and re-arms the idle timer.
    conn.handle_input(
        Instant::from_secs(6),
        &bytes(&Message::EchoReply(vec![]), probes[0].0),
    );
    assert_eq!(conn.poll_timeout(), Some(Instant::from_secs(11)));
    conn.handle_timeout(Instant::from_secs(11));
    assert_eq!(sent(&mut conn).len(), 1);
    conn.handle_timeout(Instant::from_secs(12));
    assert_eq!(conn.state(), State::Connected);
    conn.handle_timeout(Instant::from_secs(13));
    assert_eq!(conn.state(), State::Closed);
    assert_eq!(
        events(&mut conn),
        vec![Event::Closed(CloseReason::EchoTimeout)]
    );
    assert_eq!(conn.poll_timeout(), None);
}

#[test]
fn handshake_times_out() {
    let mut conn = Connection::new(
        Config {
            handshake_timeout: Duration::from_secs(3),
            ..Config::default()
        },
        Instant::from_secs(10),
    );
    assert_eq!(conn.poll_timeout(), Some(Instant::from_secs(13)));
    conn.handle_timeout(Instant::from_secs(12));
    assert_eq!(conn.state(), State::AwaitingHello);
    conn.handle_timeout(Instant::from_secs(13));
    assert_eq!(
        events(&mut conn),
        vec![Event::Closed(CloseReason::HandshakeTimeout)]
    );
}

#[test]
fn event_queue_is_bounded_but_close_is_always_delivered() {
    let mut conn = connected(Config {
        max_events: 2,
        ..Config::default()
    });
    let input: Vec<u8> = (0..5)
        .flat_map(|x| bytes(&Message::BarrierReply, x))
        .collect();
    conn.handle_input(Instant::ZERO, &input);
    conn.close();
    let ev = events(&mut conn);
    assert_eq!(
        ev,
        vec![
            Event::BarrierReply { xid: 0 },
            Event::BarrierReply { xid: 1 },
            Event::Closed(CloseReason::Local)
        ]
    );
    assert_eq!(conn.stats().events_dropped, 3);
}
