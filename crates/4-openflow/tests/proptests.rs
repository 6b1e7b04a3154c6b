//! Property tests: encode/decode round trips and robustness against arbitrary input.

use std::net::Ipv4Addr;

use flowshift_openflow::*;
use flowshift_wire::Instant;
use proptest::collection::vec;
use proptest::prelude::*;

fn mac() -> impl Strategy<Value = [u8; 6]> {
    any::<[u8; 6]>()
}

fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn masked_mac() -> impl Strategy<Value = Masked<[u8; 6]>> {
    (mac(), proptest::option::of(mac())).prop_map(|(value, mask)| Masked { value, mask })
}

fn masked_ipv4() -> impl Strategy<Value = Masked<Ipv4Addr>> {
    prop_oneof![
        (ipv4(), 0u8..=32).prop_map(|(a, len)| Masked::ipv4_prefix(a, len)),
        (ipv4(), proptest::option::of(ipv4())).prop_map(|(value, mask)| Masked { value, mask }),
    ]
}

/// TLVs the typed fields of [`Match`] never claim: other classes, or unmodelled basic fields.
fn foreign_tlv() -> impl Strategy<Value = OxmTlv> {
    (
        prop_oneof![
            Just(0x0000u16),
            Just(0x0001),
            Just(0xffff),
            Just(OXM_CLASS_OPENFLOW_BASIC)
        ],
        17u8..128,
        any::<bool>(),
        vec(any::<u8>(), 0..24),
    )
        .prop_map(|(class, field, has_mask, payload)| OxmTlv {
            class,
            field,
            has_mask,
            payload,
        })
}

fn match_() -> impl Strategy<Value = Match> {
    use proptest::option::of;
    (
        (
            of(any::<u32>()),
            of(masked_mac()),
            of(masked_mac()),
            of(any::<u16>()),
            of(any::<u8>()),
        ),
        (of(masked_ipv4()), of(masked_ipv4())),
        (
            of(any::<u16>()),
            of(any::<u16>()),
            of(any::<u16>()),
            of(any::<u16>()),
        ),
        vec(foreign_tlv(), 0..3),
    )
        .prop_map(
            |(
                (in_port, eth_dst, eth_src, eth_type, ip_proto),
                (ipv4_src, ipv4_dst),
                (tcp_src, tcp_dst, udp_src, udp_dst),
                other,
            )| Match {
                in_port,
                eth_dst,
                eth_src,
                eth_type,
                ip_proto,
                ipv4_src,
                ipv4_dst,
                tcp_src,
                tcp_dst,
                udp_src,
                udp_dst,
                other,
            },
        )
}

/// Bodies that make a TLV with a 4-byte header a multiple of 8 bytes long.
fn padded_body() -> impl Strategy<Value = Vec<u8>> {
    (0usize..3).prop_flat_map(|n| vec(any::<u8>(), 4 + 8 * n))
}

fn set_field() -> impl Strategy<Value = SetField> {
    prop_oneof![
        mac().prop_map(SetField::EthDst),
        mac().prop_map(SetField::EthSrc),
        ipv4().prop_map(SetField::Ipv4Src),
        ipv4().prop_map(SetField::Ipv4Dst),
        any::<u16>().prop_map(SetField::TcpSrc),
        any::<u16>().prop_map(SetField::TcpDst),
        any::<u16>().prop_map(SetField::UdpSrc),
        any::<u16>().prop_map(SetField::UdpDst),
        foreign_tlv().prop_map(SetField::Other),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (any::<u32>(), any::<u16>()).prop_map(|(port, max_len)| Action::Output { port, max_len }),
        any::<u32>().prop_map(Action::Group),
        Just(Action::DecNwTtl),
        set_field().prop_map(Action::SetField),
        (
            prop::sample::select(vec![11u16, 12, 16, 17, 18, 21, 23, 26, 0xffff]),
            padded_body()
        )
            .prop_map(|(action_type, body)| Action::Unknown { action_type, body }),
    ]
}

fn instruction() -> impl Strategy<Value = Instruction> {
    prop_oneof![
        any::<u8>().prop_map(Instruction::GotoTable),
        (any::<u64>(), any::<u64>())
            .prop_map(|(metadata, mask)| Instruction::WriteMetadata { metadata, mask }),
        vec(action(), 0..4).prop_map(Instruction::WriteActions),
        vec(action(), 0..4).prop_map(Instruction::ApplyActions),
        Just(Instruction::ClearActions),
        any::<u32>().prop_map(Instruction::Meter),
        (
            prop::sample::select(vec![7u16, 8, 100, 0xffff]),
            padded_body()
        )
            .prop_map(|(instruction_type, body)| Instruction::Unknown {
                instruction_type,
                body
            }),
    ]
}

fn flow_mod() -> impl Strategy<Value = FlowMod> {
    let command = prop::sample::select(vec![
        FlowModCommand::Add,
        FlowModCommand::Modify,
        FlowModCommand::ModifyStrict,
        FlowModCommand::Delete,
        FlowModCommand::DeleteStrict,
    ]);
    (
        (
            any::<u64>(),
            any::<u64>(),
            any::<u8>(),
            command,
            any::<u16>(),
            any::<u16>(),
            any::<u16>(),
        ),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u16>()),
        match_(),
        vec(instruction(), 0..4),
    )
        .prop_map(
            |(
                (cookie, cookie_mask, table_id, command, idle_timeout, hard_timeout, priority),
                (buffer_id, out_port, out_group, flags),
                match_,
                instructions,
            )| FlowMod {
                cookie,
                cookie_mask,
                table_id,
                command,
                idle_timeout,
                hard_timeout,
                priority,
                buffer_id,
                out_port,
                out_group,
                flags: FlowModFlags(flags),
                match_,
                instructions,
            },
        )
}

fn flow_stats() -> impl Strategy<Value = FlowStats> {
    (
        (
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            any::<u16>(),
            any::<u16>(),
            any::<u16>(),
        ),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        match_(),
        vec(instruction(), 0..3),
    )
        .prop_map(
            |(
                (
                    table_id,
                    duration_sec,
                    duration_nsec,
                    priority,
                    idle_timeout,
                    hard_timeout,
                    flags,
                ),
                (cookie, packet_count, byte_count),
                match_,
                instructions,
            )| FlowStats {
                table_id,
                duration_sec,
                duration_nsec,
                priority,
                idle_timeout,
                hard_timeout,
                flags,
                cookie,
                packet_count,
                byte_count,
                match_,
                instructions,
            },
        )
}

fn port_desc() -> impl Strategy<Value = Port> {
    (any::<u32>(), mac(), "[a-z0-9-]{0,15}", any::<[u32; 8]>()).prop_map(
        |(port_no, hw_addr, name, v)| Port {
            port_no,
            hw_addr,
            name,
            config: v[0],
            state: v[1],
            curr: v[2],
            advertised: v[3],
            supported: v[4],
            peer: v[5],
            curr_speed: v[6],
            max_speed: v[7],
        },
    )
}

fn port_stats() -> impl Strategy<Value = PortStats> {
    (any::<u32>(), any::<[u64; 12]>(), any::<u32>(), any::<u32>()).prop_map(
        |(port_no, c, duration_sec, duration_nsec)| PortStats {
            port_no,
            rx_packets: c[0],
            tx_packets: c[1],
            rx_bytes: c[2],
            tx_bytes: c[3],
            rx_dropped: c[4],
            tx_dropped: c[5],
            rx_errors: c[6],
            tx_errors: c[7],
            rx_frame_err: c[8],
            rx_over_err: c[9],
            rx_crc_err: c[10],
            collisions: c[11],
            duration_sec,
            duration_nsec,
        },
    )
}

/// Multipart types this crate does not model.
fn other_mp_type() -> impl Strategy<Value = u16> {
    any::<u16>().prop_filter("modelled", |t| ![1, 4, 13].contains(t))
}

/// The less common messages, kept apart to keep the strategy types small.
fn other_message() -> impl Strategy<Value = Message> {
    let request_body = prop_oneof![
        (
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            match_()
        )
            .prop_map(
                |(table_id, out_port, out_group, cookie, cookie_mask, match_)| {
                    MultipartRequestBody::Flow(FlowStatsRequest {
                        table_id,
                        out_port,
                        out_group,
                        cookie,
                        cookie_mask,
                        match_,
                    })
                }
            ),
        any::<u32>().prop_map(|port_no| MultipartRequestBody::PortStats { port_no }),
        Just(MultipartRequestBody::PortDesc),
        (other_mp_type(), vec(any::<u8>(), 0..32))
            .prop_map(|(mp_type, body)| MultipartRequestBody::Other { mp_type, body }),
    ];
    let reply_body = prop_oneof![
        vec(port_stats(), 0..3).prop_map(MultipartReplyBody::PortStats),
        vec(port_desc(), 0..3).prop_map(MultipartReplyBody::PortDesc),
        (other_mp_type(), vec(any::<u8>(), 0..32))
            .prop_map(|(mp_type, body)| MultipartReplyBody::Other { mp_type, body }),
    ];
    prop_oneof![
        (any::<u16>(), request_body)
            .prop_map(|(flags, body)| Message::MultipartRequest(MultipartRequest { flags, body })),
        (any::<u16>(), reply_body)
            .prop_map(|(flags, body)| Message::MultipartReply(MultipartReply { flags, body })),
        (any::<u8>(), port_desc())
            .prop_map(|(reason, port)| Message::PortStatus(PortStatus { reason, port })),
        (any::<u16>(), any::<u16>(), any::<bool>()).prop_map(|(flags, miss_send_len, set)| {
            let c = SwitchConfig {
                flags,
                miss_send_len,
            };
            if set {
                Message::SetConfig(c)
            } else {
                Message::GetConfigReply(c)
            }
        }),
        Just(Message::GetConfigRequest),
        vec(any::<u8>(), 0..32).prop_map(Message::EchoReply),
        Just(Message::BarrierRequest),
        (
            any::<[u64; 5]>(),
            any::<[u32; 2]>(),
            any::<[u16; 3]>(),
            any::<[u8; 2]>(),
            match_()
        )
            .prop_map(|(w, d, h, b, match_)| Message::FlowRemoved(FlowRemoved {
                cookie: w[0],
                priority: h[0],
                reason: b[0],
                table_id: b[1],
                duration_sec: d[0],
                duration_nsec: d[1],
                idle_timeout: h[1],
                hard_timeout: h[2],
                packet_count: w[1],
                byte_count: w[2],
                match_,
            })),
        (
            any::<[u64; 1]>(),
            any::<u32>(),
            any::<u8>(),
            any::<[u32; 2]>()
        )
            .prop_map(|(d, n_buffers, n_tables, c)| {
                Message::FeaturesReply(FeaturesReply {
                    datapath_id: d[0],
                    n_buffers,
                    n_tables,
                    auxiliary_id: 0,
                    capabilities: c[0],
                    reserved: c[1],
                })
            }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u8>(), proptest::option::of(any::<u32>()))
            .prop_map(|(version, bitmap)| Message::Hello(Hello { version, bitmap })),
        (any::<u16>(), any::<u16>(), vec(any::<u8>(), 0..64)).prop_map(|(err_type, code, data)| {
            Message::Error(ErrorMsg {
                err_type,
                code,
                data,
            })
        }),
        vec(any::<u8>(), 0..32).prop_map(Message::EchoRequest),
        Just(Message::FeaturesRequest),
        Just(Message::BarrierReply),
        flow_mod().prop_map(Message::FlowMod),
        (
            any::<u32>(),
            any::<u32>(),
            vec(action(), 0..4),
            vec(any::<u8>(), 0..80)
        )
            .prop_map(|(buffer_id, in_port, actions, data)| Message::PacketOut(
                PacketOut {
                    buffer_id,
                    in_port,
                    actions,
                    data
                }
            )),
        (
            any::<u32>(),
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
            any::<u64>(),
            match_(),
            vec(any::<u8>(), 0..80)
        )
            .prop_map(
                |(buffer_id, total_len, reason, table_id, cookie, match_, data)| Message::PacketIn(
                    PacketIn {
                        buffer_id,
                        total_len,
                        reason,
                        table_id,
                        cookie,
                        match_,
                        data
                    }
                )
            ),
        (any::<u16>(), vec(flow_stats(), 0..4)).prop_map(|(flags, entries)| {
            Message::MultipartReply(MultipartReply {
                flags,
                body: MultipartReplyBody::Flow(entries),
            })
        }),
        (any::<u8>(), vec(any::<u8>(), 0..40))
            .prop_filter("modelled types decode differently", |(t, _)| *t == 4
                || *t > 21)
            .prop_map(|(msg_type, body)| Message::Unknown { msg_type, body }),
        other_message(),
    ]
}

/// Encodes a header with the right length around `body`.
fn framed(version: u8, msg_type: u8, xid: u32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![version, msg_type];
    m.extend_from_slice(&u16::try_from(8 + body.len()).unwrap().to_be_bytes());
    m.extend_from_slice(&xid.to_be_bytes());
    m.extend_from_slice(body);
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn flow_mod_round_trips(fm in flow_mod(), xid in any::<u32>()) {
        let msg = Message::FlowMod(fm);
        let bytes = encode(&msg, xid).unwrap();
        prop_assert_eq!(bytes.len() % 8, 0, "flow mods are 8-byte aligned");
        prop_assert_eq!(decode(&bytes).unwrap(), (xid, msg));
    }

    #[test]
    fn messages_round_trip(msg in message(), xid in any::<u32>()) {
        // HELLO and ERROR decode in any version; everything else is always encoded as 1.3.
        let bytes = encode(&msg, xid).unwrap();
        prop_assert_eq!(decode(&bytes).unwrap(), (xid, msg));
    }

    #[test]
    fn arbitrary_bodies_never_panic(msg_type in 0u8..32, body in vec(any::<u8>(), 0..300), xid in any::<u32>()) {
        let _ = decode(&framed(4, msg_type, xid, &body));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..200)) {
        let _ = decode(&bytes);
        let mut f = Framer::new(128);
        let mut input = &bytes[..];
        while let Some(frame) = f.next_frame(&mut input) {
            if let Ok(frame) = frame {
                prop_assert!(frame.len() <= 128);
                let _ = decode(&frame);
            }
        }
        prop_assert!(input.is_empty());
        prop_assert!(f.buffered() <= 128);
    }

    /// Corrupting valid encodings reaches deep into the nested structures.
    #[test]
    fn corrupted_encodings_never_panic(
        msg in message(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = encode(&msg, 1).unwrap();
        for (at, v) in flips {
            let i = at.index(bytes.len());
            if i >= 4 { // keep the header length consistent so the body gets parsed
                bytes[i] = v;
            }
        }
        let _ = decode(&bytes);
    }

    #[test]
    fn framer_reassembles_any_chunking(
        msgs in vec(message(), 1..6),
        cuts in vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let encoded: Vec<Vec<u8>> = msgs.iter().map(|m| encode(m, 7).unwrap()).collect();
        let stream = encoded.concat();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut f = Framer::default();
        let mut out = Vec::new();
        for w in cuts.windows(2) {
            let mut input = &stream[w[0]..w[1]];
            while let Some(frame) = f.next_frame(&mut input) {
                out.push(frame.unwrap());
            }
        }
        prop_assert_eq!(out, encoded);
    }

    #[test]
    fn connection_survives_arbitrary_input(chunks in vec(vec(any::<u8>(), 0..100), 0..8)) {
        let config = Config { max_events: 16, max_tx_bytes: 512, ..Config::default() };
        let mut conn = Connection::new(config, Instant::ZERO);
        // Complete the handshake first so that arbitrary input reaches the dispatcher.
        conn.handle_input(Instant::ZERO, &encode(&Message::Hello(Hello::of13()), 1).unwrap());
        let features = FeaturesReply {
            datapath_id: 1, n_buffers: 0, n_tables: 1, auxiliary_id: 0, capabilities: 0, reserved: 0,
        };
        conn.handle_input(Instant::ZERO, &encode(&Message::FeaturesReply(features), 2).unwrap());
        prop_assert_eq!(conn.state(), State::Connected);
        for (i, c) in chunks.iter().enumerate() {
            conn.handle_input(Instant::from_millis(i as u64), c);
            conn.handle_timeout(Instant::from_secs(i as u64));
        }
        prop_assert!(conn.tx_queued_bytes() <= 512);
        let mut events = 0;
        while conn.poll_event().is_some() {
            events += 1;
        }
        prop_assert!(events <= 17, "bounded event queue (+1 for Closed)");
    }
}
