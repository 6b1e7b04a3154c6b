//! Fuzzes the state-transfer protocol decoder (`flowshift_migration::proto`): `decode` of one
//! frame and `frame_len` splitting a stream. Properties, beyond never panicking:
//! * a decoded frame encodes, and that encoding decodes to the same frame; it is never longer
//!   than the input (postcard accepts overlong varints, so an input may be longer than its
//!   canonical encoding, never shorter);
//! * `frame_len` of a decoded frame's header is the frame's length;
//! * a stream split with `frame_len` never yields a frame whose header `decode` refuses.
#![no_main]

mod common;

use flowshift_migration::MigrationId;
use flowshift_migration::proto::{
    self, AbortReason, Algorithm, BatchAck, ChainEnd, Commit, CommitAck, DecodeError, Done, Frame,
    HEADER_LEN, MAX_BODY, MappingKey, Message, Prepare,
};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn templates() -> &'static [Vec<u8>] {
    static T: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    T.get_or_init(|| {
        let msgs = [
            Message::Prepare(Prepare {
                external: [198, 18, 0, 1],
                prefix_addr: [100, 64, 0, 0],
                prefix_len: 22,
                algorithm: Algorithm::FreezeCopy,
                held_blocks: vec![(0, [100, 64, 0, 1]), (300, [100, 64, 3, 200])],
                port_min: 1024,
                port_max: 65535,
                block_size: 512,
                mappings_hint: 70_000,
                records_hint: 1 << 20,
            }),
            Message::PrepareAck,
            Message::Batch {
                batch: 3,
                records: (0..48u8).collect(),
            },
            Message::BatchAck(BatchAck {
                batch: 3,
                installed: 2,
                ok: true,
            }),
            Message::Delete(vec![
                MappingKey {
                    proto: 17,
                    addr: [100, 64, 0, 1],
                    port: 5000,
                },
                MappingKey {
                    proto: 6,
                    addr: [100, 64, 0, 2],
                    port: 65535,
                },
            ]),
            Message::Commit(Commit {
                mappings: 10,
                records: 300,
            }),
            Message::CommitAck(CommitAck {
                ok: false,
                mappings: 1,
                records: 2,
            }),
            Message::Cutover,
            Message::Done(Done {
                released_blocks: vec![1, 2, 500],
                chained: 1 << 40,
            }),
            Message::Abort(AbortReason::ImportRefused),
            Message::Ack,
            Message::Ping,
            Message::ChainEnd(ChainEnd { chained: 12345 }),
        ];
        msgs.into_iter()
            .enumerate()
            .map(|(i, msg)| {
                let seq = if msg == Message::Ack { 0 } else { i as u64 + 1 };
                let frame = Frame {
                    migration: MigrationId(0x0001_0000_0000_0007),
                    seq,
                    ack: 9,
                    msg,
                };
                proto::encode(&frame).expect("template encodes")
            })
            .collect()
    })
}

/// Sets the header's body length to what follows the header.
fn repair(bytes: &mut [u8]) {
    if bytes.len() >= HEADER_LEN {
        let body = (bytes.len() - HEADER_LEN) as u32;
        bytes[4..8].copy_from_slice(&body.to_be_bytes());
    }
}

fn check_frame(bytes: &[u8]) {
    let Ok(frame) = proto::decode(bytes) else {
        return;
    };
    assert_eq!(
        proto::frame_len(&bytes[..HEADER_LEN]),
        Ok(Some(bytes.len())),
        "frame_len of a decoded frame"
    );
    let again = proto::encode(&frame).expect("a decoded frame encodes");
    assert!(again.len() <= bytes.len(), "re-encoding never grows");
    assert_eq!(
        proto::decode(&again).as_ref(),
        Ok(&frame),
        "decode(encode(frame)) == frame"
    );
}

fn check_stream(mut rest: &[u8]) {
    loop {
        match proto::frame_len(rest) {
            Ok(None) => {
                assert!(rest.len() < HEADER_LEN);
                return;
            }
            Err(_) => return,
            Ok(Some(n)) => {
                assert!((HEADER_LEN..=HEADER_LEN + MAX_BODY).contains(&n));
                if rest.len() < n {
                    return;
                }
                match proto::decode(&rest[..n]) {
                    Ok(_)
                    | Err(DecodeError::Sequence)
                    | Err(DecodeError::Body)
                    | Err(DecodeError::TrailingBytes) => {}
                    Err(e) => panic!("frame_len accepted a header decode refuses: {e}"),
                }
                rest = &rest[n..];
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (mut bytes, fix) = common::shape(data, templates());
    if fix {
        repair(&mut bytes);
    }
    check_frame(&bytes);
    check_stream(&bytes);
});
