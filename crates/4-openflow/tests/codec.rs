//! Byte-exact encodings (hex checked by hand and with `ovs-ofctl ofp-print`) and decodes.

use std::net::Ipv4Addr;

use flowshift_openflow::*;

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn roundtrip(msg: &Message, xid: u32) {
    let bytes = encode(msg, xid).unwrap();
    assert_eq!(decode(&bytes).unwrap(), (xid, msg.clone()));
}

#[test]
fn hello_with_version_bitmap() {
    let bytes = encode(&Message::Hello(Hello::of13()), 1).unwrap();
    assert_eq!(bytes, hex("04 00 00 10 00000001  0001 0008 00000010"));
    roundtrip(&Message::Hello(Hello::of13()), 1);
}

#[test]
fn features_request_and_barrier() {
    assert_eq!(
        encode(&Message::FeaturesRequest, 2).unwrap(),
        hex("04 05 0008 00000002")
    );
    assert_eq!(
        encode(&Message::BarrierRequest, 3).unwrap(),
        hex("04 14 0008 00000003")
    );
    assert_eq!(
        encode(&Message::BarrierReply, 3).unwrap(),
        hex("04 15 0008 00000003")
    );
    assert_eq!(
        decode(&hex("04 15 0008 00000003")).unwrap(),
        (3, Message::BarrierReply)
    );
}

/// `ovs-ofctl ofp-print` of this hex: `ADD priority=100,ip,in_port=1,nw_src=100.64.1.0/24
/// cookie:0x2a send_flow_rem actions=set_field:02:00:00:00:00:02->eth_dst,output:2`.
#[test]
fn flow_mod_with_oxm_match_and_apply_actions() {
    let fm = FlowMod {
        cookie: 42,
        flags: FlowModFlags::SEND_FLOW_REM,
        ..FlowMod::add(
            Match {
                in_port: Some(1),
                ipv4_src: Some(Masked::ipv4_prefix(Ipv4Addr::new(100, 64, 1, 0), 24)),
                ..Match::default()
            }
            .with_prerequisites(),
            100,
            vec![Instruction::ApplyActions(vec![
                Action::SetField(SetField::EthDst([2, 0, 0, 0, 0, 2])),
                Action::output(2),
            ])],
        )
    };
    let expected = hex("04 0e 0078 00000010
         000000000000002a 0000000000000000 00 00 0000 0000 0064
         ffffffff ffffffff ffffffff 0001 0000
         0001 001e  80000004 00000001  8000 0a 02 0800  8000 17 08 64400100 ffffff00  0000
         0004 0028 00000000
           0019 0010 8000 06 06 020000000002 0000
           0000 0010 00000002 0000 000000000000");
    let bytes = encode(&Message::FlowMod(fm.clone()), 0x10).unwrap();
    assert_eq!(bytes, expected);
    assert_eq!(bytes.len() % 8, 0);
    assert_eq!(decode(&bytes).unwrap(), (0x10, Message::FlowMod(fm)));
}

#[test]
fn flow_stats_request_for_everything() {
    let msg = Message::MultipartRequest(MultipartRequest {
        flags: 0,
        body: MultipartRequestBody::Flow(FlowStatsRequest::all()),
    });
    let expected = hex("04 12 0038 00000009  0001 0000 00000000
         ff 000000 ffffffff ffffffff 00000000 0000000000000000 0000000000000000
         0001 0004 00000000");
    assert_eq!(encode(&msg, 9).unwrap(), expected);
    roundtrip(&msg, 9);
}

#[test]
fn packet_out_with_actions_and_data() {
    let frame = hex("020000000002 020000000001 0800 4500");
    let msg = Message::PacketOut(PacketOut::new(
        vec![Action::to_controller(CONTROLLER_MAX_LEN_NO_BUFFER)],
        frame,
    ));
    let expected = hex("04 0d 0038 00000005  ffffffff fffffffd 0010 000000000000
         0000 0010 fffffffd ffff 000000000000
         020000000002 020000000001 0800 4500");
    assert_eq!(encode(&msg, 5).unwrap(), expected);
    roundtrip(&msg, 5);
}

#[test]
fn decodes_features_reply() {
    let bytes = hex("04 06 0020 00000002 0000000000fa0001 00000000 fe 00 0000 0000004f 00000000");
    let (xid, msg) = decode(&bytes).unwrap();
    assert_eq!(xid, 2);
    assert_eq!(
        msg,
        Message::FeaturesReply(FeaturesReply {
            datapath_id: 0xfa_0001,
            n_buffers: 0,
            n_tables: 254,
            auxiliary_id: 0,
            capabilities: 0x4f,
            reserved: 0,
        })
    );
    // One byte short of the fixed layout.
    assert!(matches!(
        decode(&hex(
            "04 06 001f 00000002 0000000000fa0001 00000000 fe 00 0000 0000004f 000000"
        )),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn decodes_error_with_failed_request() {
    let bytes = hex("04 01 0014 00000007 0005 0002 04 0e 0078 00000007");
    let (xid, msg) = decode(&bytes).unwrap();
    assert_eq!(xid, 7);
    let Message::Error(e) = msg else {
        panic!("not an error: {msg:?}")
    };
    assert_eq!(e.err_type, error_type::FLOW_MOD_FAILED);
    assert_eq!(e.code, error_code::flow_mod_failed::BAD_TABLE_ID);
    let failed = e.failed_request().unwrap();
    assert_eq!(
        (failed.msg_type, failed.xid, failed.length),
        (msg_type::FLOW_MOD, 7, 0x78)
    );
    // ERROR decodes in any version (a switch may answer a HELLO in its own version).
    let (_, old) = decode(&hex("01 01 000c 00000000 0000 0000")).unwrap();
    assert!(matches!(
        old,
        Message::Error(ErrorMsg {
            err_type: 0,
            code: 0,
            ..
        })
    ));
}

#[test]
fn decodes_packet_in() {
    let bytes = hex("04 0a 0038 00000000 ffffffff 000e 01 00 ffffffffffffffff
         0001 000c 80000004 00000003 00000000  0000
         020000000002 020000000001 0800");
    let (_, msg) = decode(&bytes).unwrap();
    let Message::PacketIn(p) = msg else {
        panic!("{msg:?}")
    };
    assert_eq!(p.reason, packet_in_reason::ACTION);
    assert_eq!(p.match_.in_port, Some(3));
    assert_eq!(p.total_len, 14);
    assert_eq!(p.data, hex("020000000002 020000000001 0800"));
}

#[test]
fn unknown_types_decode_to_unknown_and_versions_are_checked() {
    let (xid, msg) = decode(&hex("04 18 000c 00000005 deadbeef")).unwrap();
    assert_eq!(xid, 5);
    assert_eq!(
        msg,
        Message::Unknown {
            msg_type: 24,
            body: hex("deadbeef")
        }
    );
    roundtrip(&msg, 5);
    assert_eq!(
        decode(&hex("01 05 0008 00000001")),
        Err(DecodeError::UnsupportedVersion(1))
    );
    // A HELLO of OpenFlow 1.0 without elements still decodes.
    assert_eq!(
        decode(&hex("01 00 0008 00000001")).unwrap().1,
        Message::Hello(Hello {
            version: 1,
            bitmap: None
        })
    );
}

#[test]
fn structural_errors_are_reported() {
    // Header length disagrees with the buffer.
    assert!(matches!(
        decode(&hex("04 14 0009 00000003")),
        Err(DecodeError::BadLength { .. })
    ));
    assert!(matches!(
        decode(&hex("04 14")),
        Err(DecodeError::Truncated { .. })
    ));
    // Trailing bytes after a barrier.
    assert!(matches!(
        decode(&hex("04 14 000c 00000003 00000000")),
        Err(DecodeError::TrailingBytes { .. })
    ));
    // Flow mod with an unknown command 9.
    let mut fm = encode(
        &Message::FlowMod(FlowMod::add(Match::default(), 1, vec![])),
        1,
    )
    .unwrap();
    fm[25] = 9;
    assert_eq!(
        decode(&fm),
        Err(DecodeError::BadValue {
            what: "flow_mod command",
            value: 9
        })
    );
    // Action whose length is not a multiple of 8.
    let po =
        hex("04 0d 0024 00000001 ffffffff fffffffd 000c 000000000000 0000 000c fffffffd ffff 0000");
    assert!(matches!(
        decode(&po),
        Err(DecodeError::BadLength {
            what: "action",
            len: 12
        })
    ));
}

#[test]
fn oversized_messages_are_refused_by_the_encoder() {
    let msg = Message::EchoRequest(vec![0; OFP_MAX_MESSAGE_LEN]);
    let mut out = vec![1, 2, 3];
    assert_eq!(
        encode_into(&msg, 1, &mut out),
        Err(EncodeError::TooLarge {
            len: OFP_MAX_MESSAGE_LEN + 8
        })
    );
    assert_eq!(out, [1, 2, 3]);
    let long = Match {
        other: vec![OxmTlv {
            class: 0xffff,
            field: 1,
            has_mask: false,
            payload: vec![0; 256],
        }],
        ..Match::default()
    };
    assert_eq!(
        encode(&Message::FlowMod(FlowMod::delete(long)), 1),
        Err(EncodeError::OxmTooLong { len: 256 })
    );
}

/// Regression (fuzz `openflow`): port names that are not NUL-terminated or not UTF-8 decoded
/// to names that no longer fit the 16-byte field (U+FFFD is 3 bytes), so a decoded port did
/// not survive encode + decode.
#[test]
fn port_names_survive_decode_encode_decode() {
    let status = |name: &str| {
        Message::PortStatus(PortStatus {
            reason: 2,
            port: Port {
                port_no: 3,
                name: name.into(),
                ..Port::default()
            },
        })
    };
    let base = encode(&status("x"), 9).unwrap();
    // The name field: header 8, reason + padding 8, port_no + padding 8, MAC + padding 8.
    let with_name = |raw: [u8; 16]| {
        let mut b = base.clone();
        b[32..48].copy_from_slice(&raw);
        b
    };
    let cases: [([u8; 16], &str); 4] = [
        ([0xff; 16], "???????????????"),
        (*b"abcdefghijklmnop", "abcdefghijklmno"),
        (*b"eth0\0garbage\0\0\0\0", "eth0"),
        // "é" cut after its first byte at the 15-byte limit.
        (*b"abcdefghijklmn\xc3\xa9", "abcdefghijklmn?"),
    ];
    for (raw, want) in cases {
        let (xid, msg) = decode(&with_name(raw)).unwrap();
        let Message::PortStatus(PortStatus { port, .. }) = &msg else {
            panic!("not a port status: {msg:?}");
        };
        assert_eq!(port.name, want);
        let again = encode(&msg, xid).unwrap();
        assert_eq!(decode(&again).unwrap(), (xid, msg.clone()));
    }
    // Encoding cuts a long name at a character boundary: 9 x "é" (18 bytes) -> 7 (14 bytes).
    let (_, msg) = decode(&encode(&status("ééééééééé"), 1).unwrap()).unwrap();
    let Message::PortStatus(PortStatus { port, .. }) = msg else {
        panic!("not a port status");
    };
    assert_eq!(port.name, "ééééééé");
}
