//! Fuzzes the OpenFlow 1.3 decoder (`flowshift_openflow::decode`) and the stream `Framer`.
//! Properties, beyond never panicking:
//! * a decoded message encodes, and that encoding decodes to the same xid and message;
//! * the framer, fed the input in chunks of any sizes, yields the same messages as splitting
//!   the stream by its header lengths, each within its size bound, and buffers at most one
//!   partial message.
#![no_main]

mod common;

use flowshift_openflow::{
    Action, ErrorMsg, FeaturesReply, FlowMod, FlowModCommand, FlowModFlags, FlowRemoved, FlowStats,
    FlowStatsRequest, Framer, Hello, Instruction, Masked, Match, Message, MultipartReply,
    MultipartReplyBody, MultipartRequest, MultipartRequestBody, OFP_HEADER_LEN, OxmTlv, PacketIn,
    PacketOut, Port, PortStats, PortStatus, SetField, SwitchConfig, decode, encode, port,
};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

fn a_match() -> Match {
    Match {
        in_port: Some(3),
        eth_dst: Some(Masked::mac_masked([2, 0xf5, 0, 0, 0, 1], [0xff; 6])),
        ipv4_src: Some(Masked::ipv4_prefix(Ipv4Addr::new(100, 64, 0, 0), 16)),
        ipv4_dst: Some(Masked::exact(Ipv4Addr::new(198, 18, 0, 1))),
        udp_dst: Some(53),
        other: vec![OxmTlv {
            class: 0xffff,
            field: 9,
            has_mask: false,
            payload: vec![1, 2, 3, 4, 5],
        }],
        ..Match::default()
    }
    .with_prerequisites()
}

fn actions() -> Vec<Action> {
    vec![
        Action::SetField(SetField::EthDst([2, 0xf5, 0, 0, 0, 2])),
        Action::SetField(SetField::Ipv4Src(Ipv4Addr::new(198, 18, 0, 1))),
        Action::SetField(SetField::Other(OxmTlv {
            class: 0x8000,
            field: 6,
            has_mask: false,
            payload: vec![0x10, 0x05],
        })),
        Action::DecNwTtl,
        Action::Group(7),
        Action::Unknown {
            action_type: 0xffff,
            body: vec![0, 0, 0x23, 0x20, 1, 2, 3, 4, 0, 0, 0, 0],
        },
        Action::output(4),
        Action::to_controller(128),
    ]
}

fn instructions() -> Vec<Instruction> {
    vec![
        Instruction::ApplyActions(actions()),
        Instruction::WriteActions(vec![Action::output(2)]),
        Instruction::WriteMetadata {
            metadata: 0xdead,
            mask: 0xffff,
        },
        Instruction::ClearActions,
        Instruction::Meter(5),
        Instruction::GotoTable(1),
    ]
}

fn a_port(no: u32, name: &str) -> Port {
    Port {
        port_no: no,
        hw_addr: [2, 0, 0, 0, 0, no as u8],
        name: name.into(),
        config: 0,
        state: 4,
        curr: 0x2820,
        advertised: 0,
        supported: 0,
        peer: 0,
        curr_speed: 10_000_000,
        max_speed: 0,
    }
}

fn templates() -> &'static [Vec<u8>] {
    static T: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    T.get_or_init(|| {
        let flow_mod = FlowMod {
            cookie: 0x1234,
            cookie_mask: 0,
            idle_timeout: 10,
            flags: FlowModFlags(1),
            ..FlowMod::add(a_match(), 100, instructions())
        };
        let msgs = vec![
            Message::Hello(Hello {
                version: 4,
                bitmap: Some(0x12),
            }),
            Message::Error(ErrorMsg {
                err_type: 4,
                code: 9,
                data: vec![4, 14, 0, 8, 0, 0, 0, 1],
            }),
            Message::EchoRequest(b"ping".to_vec()),
            Message::EchoReply(vec![]),
            Message::FeaturesRequest,
            Message::FeaturesReply(FeaturesReply {
                datapath_id: 0x00aa_bbcc_ddee_ff00,
                n_buffers: 256,
                n_tables: 254,
                auxiliary_id: 0,
                capabilities: 0x4f,
                reserved: 0,
            }),
            Message::GetConfigRequest,
            Message::GetConfigReply(SwitchConfig {
                flags: 0,
                miss_send_len: 128,
            }),
            Message::SetConfig(SwitchConfig {
                flags: 1,
                miss_send_len: 0xffff,
            }),
            Message::PacketIn(PacketIn {
                buffer_id: u32::MAX,
                total_len: 60,
                reason: 1,
                table_id: 0,
                cookie: 7,
                match_: Match {
                    in_port: Some(1),
                    ..Match::default()
                },
                data: vec![0xab; 60],
            }),
            Message::FlowRemoved(FlowRemoved {
                cookie: 1,
                priority: 100,
                reason: 2,
                table_id: 0,
                duration_sec: 5,
                duration_nsec: 6,
                idle_timeout: 10,
                hard_timeout: 0,
                packet_count: 99,
                byte_count: 9999,
                match_: a_match(),
            }),
            Message::PortStatus(PortStatus {
                reason: 2,
                port: a_port(3, "fsn1"),
            }),
            Message::PacketOut(PacketOut::new(actions(), vec![1, 2, 3])),
            Message::FlowMod(flow_mod.clone()),
            Message::FlowMod(FlowMod {
                command: FlowModCommand::ModifyStrict,
                ..flow_mod
            }),
            Message::FlowMod(FlowMod::delete(Match::default())),
            Message::MultipartRequest(MultipartRequest {
                flags: 0,
                body: MultipartRequestBody::Flow(FlowStatsRequest::all()),
            }),
            Message::MultipartRequest(MultipartRequest {
                flags: 0,
                body: MultipartRequestBody::PortStats { port_no: port::ANY },
            }),
            Message::MultipartRequest(MultipartRequest {
                flags: 0,
                body: MultipartRequestBody::PortDesc,
            }),
            Message::MultipartReply(MultipartReply {
                flags: 1,
                body: MultipartReplyBody::Flow(vec![FlowStats {
                    table_id: 0,
                    duration_sec: 1,
                    duration_nsec: 2,
                    priority: 100,
                    idle_timeout: 0,
                    hard_timeout: 0,
                    flags: 0,
                    cookie: 3,
                    packet_count: 4,
                    byte_count: 5,
                    match_: a_match(),
                    instructions: instructions(),
                }]),
            }),
            Message::MultipartReply(MultipartReply {
                flags: 0,
                body: MultipartReplyBody::PortStats(vec![PortStats {
                    port_no: 1,
                    rx_packets: 10,
                    ..PortStats::default()
                }]),
            }),
            Message::MultipartReply(MultipartReply {
                flags: 0,
                body: MultipartReplyBody::PortDesc(vec![a_port(1, "inside"), a_port(2, "x")]),
            }),
            Message::MultipartReply(MultipartReply {
                flags: 0,
                body: MultipartReplyBody::Other {
                    mp_type: 0xffff,
                    body: vec![0, 0, 0x23, 0x20, 0, 0, 0, 1],
                },
            }),
            Message::BarrierRequest,
            Message::BarrierReply,
            Message::Unknown {
                msg_type: 200,
                body: vec![9; 9],
            },
        ];
        msgs.iter()
            .enumerate()
            .map(|(i, m)| encode(m, 0x100 + i as u32).expect("template encodes"))
            .collect()
    })
}

/// Sets the header's length to the buffer's.
fn repair(bytes: &mut [u8]) {
    if let Ok(len) = u16::try_from(bytes.len())
        && bytes.len() >= OFP_HEADER_LEN
    {
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
    }
}

fn check_message(bytes: &[u8]) {
    let Ok((xid, msg)) = decode(bytes) else {
        return;
    };
    let again = encode(&msg, xid).expect("a decoded message encodes");
    assert_eq!(
        decode(&again),
        Ok((xid, msg)),
        "decode(encode(message)) == message"
    );
}

/// Feeds `stream` to a framer in chunks whose sizes come from `sizes`; checks it against a
/// plain split by header lengths.
fn check_framer(stream: &[u8], sizes: &[u8], max_len: usize) {
    let mut framer = Framer::new(max_len);
    let mut got = Vec::new();
    let mut failed = false;
    let mut rest = stream;
    let mut k = 0;
    while !rest.is_empty() {
        let n = (usize::from(sizes.get(k).copied().unwrap_or(255)) + 1).min(rest.len());
        k += 1;
        let mut chunk = &rest[..n];
        rest = &rest[n..];
        while let Some(m) = framer.next_frame(&mut chunk) {
            match m {
                Ok(m) => got.push(m),
                Err(_) => failed = true,
            }
        }
        assert!(chunk.is_empty(), "the framer consumes every chunk");
        assert!(framer.buffered() < framer.max_len());
    }
    // The same split by hand.
    let mut want = Vec::new();
    let mut want_failed = false;
    let mut s = stream;
    while s.len() >= OFP_HEADER_LEN {
        let len = usize::from(u16::from_be_bytes([s[2], s[3]]));
        if len < OFP_HEADER_LEN || len > framer.max_len() {
            want_failed = true;
            break;
        }
        if s.len() < len {
            break;
        }
        want.push(s[..len].to_vec());
        s = &s[len..];
    }
    assert_eq!(got, want, "framer output");
    assert_eq!(failed, want_failed, "framer error");
    assert_eq!(framer.is_poisoned(), want_failed);
    for m in &got {
        check_message(m);
    }
}

fuzz_target!(|data: &[u8]| {
    let (mut bytes, fix) = common::shape(data, templates());
    if fix {
        repair(&mut bytes);
    }
    check_message(&bytes);
    // The stream: the input twice (two messages back to back when it is one), chunked by the
    // input's own bytes, with a framer bound from its first byte.
    let mut stream = bytes.clone();
    stream.extend_from_slice(&bytes);
    let max_len = 8 + usize::from(data.first().copied().unwrap_or(0)) * 256;
    check_framer(&stream, data, max_len);
});
