//! Unit tests of the framing: every kind round-trips, header and body errors are reported.

use super::*;

fn roundtrip(msg: Message, seq: u64) {
    let f = Frame {
        migration: MigrationId(0x0001_0000_0000_0007),
        seq,
        ack: 42,
        msg,
    };
    let bytes = encode(&f).unwrap();
    assert_eq!(frame_len(&bytes[..HEADER_LEN]), Ok(Some(bytes.len())));
    assert_eq!(decode(&bytes), Ok(f));
}

#[test]
fn every_kind_roundtrips() {
    roundtrip(
        Message::Prepare(Prepare {
            external: [198, 18, 0, 1],
            prefix_addr: [100, 64, 0, 0],
            prefix_len: 24,
            algorithm: Algorithm::FreezeCopy,
            held_blocks: vec![(3, [100, 64, 0, 9])],
            port_min: 1024,
            port_max: 65535,
            block_size: 512,
            mappings_hint: 10,
            records_hint: 20,
        }),
        1,
    );
    roundtrip(Message::ChainEnd(ChainEnd { chained: 123 }), 9);
    roundtrip(Message::PrepareAck, 2);
    roundtrip(
        Message::Batch {
            batch: 7,
            records: vec![1; 48],
        },
        3,
    );
    roundtrip(
        Message::BatchAck(BatchAck {
            batch: 7,
            installed: 2,
            ok: true,
        }),
        4,
    );
    roundtrip(
        Message::Delete(vec![MappingKey {
            proto: 17,
            addr: [100, 64, 0, 1],
            port: 5000,
        }]),
        5,
    );
    roundtrip(
        Message::Commit(Commit {
            mappings: 1,
            records: 2,
        }),
        6,
    );
    roundtrip(
        Message::CommitAck(CommitAck {
            ok: false,
            mappings: 0,
            records: 0,
        }),
        7,
    );
    roundtrip(Message::Cutover, 8);
    roundtrip(
        Message::Done(Done {
            released_blocks: vec![1, 2],
            chained: 99,
        }),
        9,
    );
    roundtrip(Message::Abort(AbortReason::ChannelFailed), 10);
    roundtrip(Message::Ack, 0);
    roundtrip(Message::Ping, 11);
}

#[test]
fn header_errors_are_reported() {
    let good = encode(&Frame {
        migration: MigrationId(1),
        seq: 1,
        ack: 0,
        msg: Message::Cutover,
    })
    .unwrap();
    assert_eq!(decode(&good[..10]), Err(DecodeError::Truncated));
    let mut b = good.clone();
    b[0] = b'X';
    assert_eq!(decode(&b), Err(DecodeError::BadMagic));
    let mut b = good.clone();
    b[2] = 1;
    assert_eq!(decode(&b), Err(DecodeError::Version(1)));
    let mut b = good.clone();
    b[3] = 200;
    assert_eq!(decode(&b), Err(DecodeError::UnknownKind(200)));
    let mut b = good.clone();
    b[4] = 0xff;
    assert!(matches!(decode(&b), Err(DecodeError::TooLarge(_))));
    let mut b = good.clone();
    b.push(0);
    assert_eq!(decode(&b), Err(DecodeError::Length));
    let mut b = good.clone();
    b[16..24].copy_from_slice(&0u64.to_be_bytes());
    assert_eq!(decode(&b), Err(DecodeError::Sequence));
    // A batch whose records are not a whole number of 24-byte records.
    let b = write_frame(Kind::Batch, MigrationId(1), 1, 0, &[0, 0, 0, 1, 9]);
    assert_eq!(decode(&b), Err(DecodeError::Body));
    // An empty-body kind with a body.
    let b = write_frame(Kind::Cutover, MigrationId(1), 1, 0, &[0]);
    assert_eq!(decode(&b), Err(DecodeError::TrailingBytes));
}
