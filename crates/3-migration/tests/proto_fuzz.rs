//! The decoder and the engine never panic on any bytes from the network.

use flowshift_migration::proto::{
    self, AbortReason, Algorithm, BatchAck, Commit, DecodeError, Frame, Kind, Message, Prepare,
};
use flowshift_migration::{Instance, InstanceId, MigrationConfig, MigrationId};
use flowshift_nat::{GroupConfig, Nat, NatConfig};
use flowshift_wire::Instant;
use proptest::prelude::*;
use std::net::Ipv4Addr;

const A: InstanceId = InstanceId(1);
const B: InstanceId = InstanceId(2);
const EXT0: [u8; 4] = [198, 18, 0, 1];
const EXT2: [u8; 4] = [198, 18, 0, 3];

fn group(ext: [u8; 4], net: [u8; 4], len: u8) -> GroupConfig {
    GroupConfig {
        external: Ipv4Addr::from(ext),
        subscribers: flowshift_nat::prefix(Ipv4Addr::from(net), len).expect("prefix"),
    }
}

/// Small port pools (32 blocks of 64 ports) so `check_invariants` stays cheap.
fn nat_config(groups: Vec<GroupConfig>, seed: u64) -> NatConfig {
    NatConfig {
        groups,
        port_min: 1024,
        port_max: 1024 + 32 * 64 - 1,
        block_size: 64,
        max_blocks_per_subscriber: 4,
        rng_seed: seed,
        ..NatConfig::default()
    }
}

fn mig_config() -> MigrationConfig {
    MigrationConfig {
        max_retries: 14,
        report_drops: true,
        ..MigrationConfig::default()
    }
}

fn valid_frames() -> Vec<Vec<u8>> {
    let m = MigrationId::new(A, 1);
    let msgs = vec![
        Message::Prepare(Prepare {
            external: EXT0,
            prefix_addr: [100, 64, 0, 0],
            prefix_len: 22,
            algorithm: Algorithm::FreezeCopy,
            held_blocks: vec![(0, [100, 64, 0, 1]), (5, [100, 64, 0, 2])],
            port_min: 1024,
            port_max: 1024 + 32 * 64 - 1,
            block_size: 64,
            mappings_hint: 2,
            records_hint: 2,
        }),
        Message::PrepareAck,
        Message::Batch {
            batch: 0,
            records: vec![0; 48],
        },
        Message::BatchAck(BatchAck {
            batch: 0,
            installed: 2,
            ok: true,
        }),
        Message::Delete(vec![]),
        Message::Commit(Commit {
            mappings: 1,
            records: 1,
        }),
        Message::Cutover,
        Message::ChainEnd(proto::ChainEnd { chained: 0 }),
        Message::Abort(AbortReason::Requested),
        Message::Ping,
    ];
    msgs.into_iter()
        .enumerate()
        .map(|(i, msg)| {
            proto::encode(&Frame {
                migration: m,
                seq: i as u64 + 1,
                ack: 0,
                msg,
            })
            .unwrap()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoder_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = proto::decode(&bytes);
        let _ = proto::frame_len(&bytes);
    }

    #[test]
    fn decoder_never_panics_on_mutated_frames(
        which in 0usize..9,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let mut f = valid_frames()[which].clone();
        for (at, v) in flips {
            let i = at % f.len();
            f[i] = v;
        }
        let _ = proto::decode(&f);
        let len = cut % (f.len() + 1);
        let _ = proto::decode(&f[..len]);
    }

    #[test]
    fn headers_with_random_bodies_are_refused_or_decoded(
        kind in 1u8..=12,
        body in proptest::collection::vec(any::<u8>(), 0..120),
        seq in 0u64..4,
    ) {
        let mut f = proto::write_frame(Kind::Ack, MigrationId(7), seq, 0, &body);
        f[3] = kind;
        match proto::decode(&f) {
            Ok(fr) => prop_assert_eq!(fr.msg.kind() as u8, kind),
            Err(e) => prop_assert!(matches!(
                e,
                DecodeError::Sequence | DecodeError::Body | DecodeError::TrailingBytes
            )),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// A destination fed arbitrary (mostly well-framed) messages from a peer keeps a
    /// consistent NAT and never panics.
    #[test]
    fn engine_survives_arbitrary_frames(
        frames in proptest::collection::vec(
            (0usize..9, proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
             proptest::collection::vec(any::<u8>(), 0..96), 0u64..12), 1..30),
    ) {
        let mut b = Instance::new(
            B,
            Nat::new(nat_config(vec![group(EXT2, [100, 64, 16, 0], 24)], 1)).unwrap(),
            mig_config(),
        )
        .unwrap();
        let templates = valid_frames();
        let mut now = Instant::from_secs(1);
        for (which, flips, records, seq) in frames {
            let mut f = templates[which].clone();
            if which == 2 {
                // A batch of random records (a whole number of them).
                let n = records.len() / 24 * 24;
                f = proto::encode(&Frame {
                    migration: MigrationId::new(A, 1),
                    seq,
                    ack: 0,
                    msg: Message::Batch { batch: 0, records: records[..n].to_vec() },
                })
                .unwrap();
            } else {
                f[16..24].copy_from_slice(&seq.to_be_bytes());
            }
            for (at, v) in flips {
                let i = 32 + at % (f.len() - 31).max(1);
                if i < f.len() {
                    f[i] = v;
                }
            }
            let _ = b.handle_transfer(now, A, &f);
            let _ = b.handle_transfer(now, InstanceId(9), &f);
            while b.poll_transmit().is_some() {}
            while b.poll_event().is_some() {}
            now = now + core::time::Duration::from_millis(7);
            if b.poll_timeout() <= now {
                b.handle_timeout(now);
            }
            b.nat().check_invariants().map_err(TestCaseError::fail)?;
        }
    }
}
