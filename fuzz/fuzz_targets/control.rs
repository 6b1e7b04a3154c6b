//! Fuzzes the control protocol between nodes and the controller (`flowshift_control::api`:
//! JSON lines split by `LineBuffer`, decoded by `decode_line` as `NodeToController` on the
//! controller and `ControllerToNode` on the node). Properties, beyond never panicking:
//! * a decoded message encodes (`encode_line`), and that line decodes to the same message;
//! * `LineBuffer` fed the input in chunks yields exactly its `\n`-separated lines of at most
//!   `MAX_LINE` bytes, in order.
#![no_main]

mod common;

use flowshift_control::api::{
    ControllerToNode, GroupStatus, LineBuffer, MAX_LINE, NodeMigration, NodeRequest, NodeStatus,
    NodeToController, ReplyBody, decode_line, encode_line,
};
use flowshift_migration::{
    AbortReason, Algorithm, InstanceId, MigrationEvent, MigrationId, Params, Phase, Role,
};
use flowshift_wire::Instant;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

fn templates() -> &'static [Vec<u8>] {
    static T: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    T.get_or_init(|| {
        let m = MigrationId::new(InstanceId(1), 7);
        let status = NodeStatus {
            id: flowshift_migration::InstanceId(1),
            uptime_s: 12.625,
            groups: vec![GroupStatus {
                external: Ipv4Addr::new(198, 18, 0, 1),
                mode: flowshift_nat::GroupMode::Draining,
                mappings: 10,
                sessions: 30,
            }],
            migrations: vec![NodeMigration {
                migration: m.0,
                role: Role::Source,
                phase: Phase::FreezeCopy,
            }],
            counters: {
                let mut c = flowshift_control::status::NodeCounters::default();
                c.nat.drops[flowshift_nat::DropReason::SubscriberSessionLimit as usize] = 3;
                c.io.rx_packets = u64::MAX;
                c.losses
                    .insert(flowshift_migration::LossCause::GroupHalted, 7);
                c
            },
        };
        let events = [
            MigrationEvent::Incoming {
                migration: m,
                group: 2,
                from: InstanceId(2),
            },
            MigrationEvent::Phase {
                migration: m,
                role: Role::Destination,
                phase: Phase::Transfer,
                at: Instant::from_nanos(123_456_789),
            },
            MigrationEvent::ReadyForCutover {
                migration: m,
                group: 0,
            },
            MigrationEvent::Completed {
                migration: m,
                role: Role::Source,
            },
            MigrationEvent::Aborted {
                migration: m,
                role: Role::Source,
                reason: AbortReason::PeerTimeout,
                split: false,
            },
            MigrationEvent::PrecopyRound {
                migration: m,
                round: 1,
                copied: 2,
                dirty: 3,
                new: 4,
                dead: 5,
                last: true,
            },
            MigrationEvent::IdleProgress {
                migration: m,
                remaining: 6,
                expired: 7,
            },
        ];
        let mut lines = vec![
            encode_line(&NodeToController::Hello {
                id: flowshift_migration::InstanceId(1),
                mac: [2, 0xf5, 0, 0, 0, 1],
                groups: vec![Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)],
            }),
            encode_line(&NodeToController::Reply {
                req: 1,
                result: Ok(ReplyBody::Started { migration: m.0 }),
            }),
            encode_line(&NodeToController::Reply {
                req: 2,
                result: Ok(ReplyBody::Status(Box::new(status))),
            }),
            encode_line(&NodeToController::Reply {
                req: 3,
                result: Ok(ReplyBody::Aborted { reverted: true }),
            }),
            encode_line(&NodeToController::Reply {
                req: 4,
                result: Ok(ReplyBody::Report(serde_json::json!({
                    "algorithm": "freeze-copy", "rounds": [1, 2.5, null], "ok": true
                }))),
            }),
            encode_line(&NodeToController::Reply {
                req: 5,
                result: Err("no such migration".into()),
            }),
            encode_line(&NodeToController::Reply {
                req: 6,
                result: Ok(ReplyBody::Ok),
            }),
        ];
        for event in events {
            lines.push(encode_line(&NodeToController::Event { at_ns: 99, event }));
        }
        let requests = [
            NodeRequest::StartMigration {
                external: Ipv4Addr::new(198, 18, 0, 1),
                to: flowshift_migration::InstanceId(2),
                algorithm: Algorithm::FreezeCopy,
                params: Some(Params::default()),
            },
            NodeRequest::StartMigration {
                external: Ipv4Addr::new(198, 18, 0, 1),
                to: flowshift_migration::InstanceId(3),
                algorithm: Algorithm::StopCopy,
                // Floats whose shortest decimal form a fast parser gets wrong by one ulp.
                params: Some(Params {
                    idle_rate_threshold: 1.0715660391465826e-75,
                    ..Params::default()
                }),
            },
            NodeRequest::StartMigration {
                external: Ipv4Addr::new(198, 18, 0, 2),
                to: flowshift_migration::InstanceId(1),
                algorithm: Algorithm::PreCopy,
                params: None,
            },
            NodeRequest::CutoverDone { migration: m.0 },
            NodeRequest::Abort { migration: m.0 },
            NodeRequest::Status,
            NodeRequest::Report { migration: m.0 },
        ];
        for (req, body) in requests.into_iter().enumerate() {
            lines.push(encode_line(&ControllerToNode::Request {
                req: req as u64,
                body,
            }));
        }
        lines
    })
}

/// A line that decodes as `T` must survive `encode_line` and `decode_line` unchanged.
fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + Debug>(line: &[u8]) {
    let Ok(msg) = decode_line::<T>(line) else {
        return;
    };
    let again = encode_line(&msg);
    assert_eq!(again.last(), Some(&b'\n'));
    assert!(
        !again[..again.len() - 1].contains(&b'\n'),
        "one message, one line"
    );
    let back: T = decode_line(&again[..again.len() - 1]).expect("an encoded message decodes");
    assert_eq!(back, msg, "decode(encode(message)) == message");
}

fuzz_target!(|data: &[u8]| {
    let (bytes, _) = common::shape(data, templates());
    // Lines as LineBuffer yields them from chunks of sizes taken from the input.
    let mut lb = LineBuffer::default();
    let mut got = Vec::new();
    let mut rest = &bytes[..];
    let mut k = 0;
    while !rest.is_empty() {
        let n = (usize::from(data.get(k).copied().unwrap_or(255)) + 1).min(rest.len());
        k += 1;
        lb.push(&rest[..n]);
        rest = &rest[n..];
        while let Ok(Some(line)) = lb.next_line() {
            got.push(line);
        }
    }
    // Inputs stay far below MAX_LINE, so every complete line comes out.
    assert!(bytes.len() < MAX_LINE);
    let want: Vec<Vec<u8>> = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => bytes[..end]
            .split(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect(),
        None => Vec::new(),
    };
    assert_eq!(got, want, "LineBuffer splits at every newline");
    for line in &got {
        roundtrip::<NodeToController>(line);
        roundtrip::<ControllerToNode>(line);
    }
    // The input as one line, whether or not it ends in a newline.
    roundtrip::<NodeToController>(&bytes);
    roundtrip::<ControllerToNode>(&bytes);
});
