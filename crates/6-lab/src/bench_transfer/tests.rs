//! Tests of the transfer benchmark: small runs move every state intact, odd batch sizes and
//! several groups, and bad arguments are refused.

use super::*;

fn args(states: u32, batch_records: u32) -> TransferArgs {
    TransferArgs {
        states,
        batch_records,
        json: true,
    }
}

/// Frames the sender makes of groups of `records` one-record mappings, batches of at most
/// `batch` records (the first ones smaller).
fn frames_for(records: &[u64], batch: usize) -> u64 {
    let mut frames = 0;
    for &n in records {
        let mut left = n;
        while left > 0 {
            left -= left.min(batch_limit(frames, batch) as u64);
            frames += 1;
        }
    }
    frames
}

#[test]
fn the_first_batches_ramp_up_to_the_batch_size() {
    let sizes: Vec<usize> = (0..6).map(|f| batch_limit(f, 4096)).collect();
    assert_eq!(sizes, [256, 512, 1024, 2048, 4096, 4096]);
    assert_eq!(batch_limit(0, 100), 100);
    assert_eq!(batch_limit(u64::MAX, 1 << 30), 256 << 16);
    assert_eq!(
        frames_for(&[5_000], 512),
        1 + 5_000u64.saturating_sub(256).div_ceil(512)
    );
}

#[test]
fn small_transfer_moves_every_state_intact() {
    let r = run(&args(5_000, 512)).expect("transfer");
    assert_eq!(r.states, 5_000);
    assert_eq!(r.groups, 1);
    assert_eq!(r.frames, frames_for(&[5_000], 512));
    // Headers, batch numbers and 24 bytes per record: nothing else on the wire.
    assert_eq!(
        r.bytes,
        r.frames * (HEADER_LEN as u64 + 4) + 5_000 * RECORD_LEN as u64
    );
    assert_eq!(r.sampled_flows, 1000);
    assert!(r.seconds > 0.0 && r.raw_seconds > 0.0);
}

#[test]
fn transfer_spanning_groups_and_odd_batches() {
    let per_group = Layout::new().per_group();
    let n = per_group + 777;
    let r = run(&args(n, 1000)).expect("transfer");
    assert_eq!(r.groups, 2);
    assert_eq!(r.frames, frames_for(&[per_group as u64, 777], 1000));
}

#[test]
fn bad_arguments_are_refused() {
    assert!(run(&args(0, 512)).is_err());
    assert!(run(&args(100, 0)).is_err());
    assert!(run(&args(100, u32::MAX)).is_err());
    assert!(setup(MAX_STATES + 1).is_err());
}

/// A valid stream of `n` records for the first group, in frames of `per` records.
fn stream(s: &Setup, per: usize) -> Vec<u8> {
    let (sg, m, _) = s.groups[0];
    let mut out = Vec::new();
    let ids = s.src.group_mappings(sg).unwrap();
    for (k, chunk) in ids.chunks(per).enumerate() {
        let mut records = Vec::new();
        for &id in chunk {
            s.src.export_mapping(id, NOW, &mut records).unwrap();
        }
        let f = Frame {
            migration: m,
            seq: k as u64 + 1,
            ack: 0,
            msg: Message::Batch {
                batch: k as u32,
                records,
            },
        };
        out.extend_from_slice(&proto::encode(&f).unwrap());
    }
    out
}

#[test]
fn receiver_imports_a_stream_read_in_small_pieces() {
    let mut s = setup(300).unwrap();
    let bytes = stream(&s, 64);
    // A reader that returns at most 7 bytes per call splits headers and bodies.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(7).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let st = receive(Trickle(&bytes), Some(&mut s.dst), &s.groups, u64::MAX).unwrap();
    assert_eq!((st.frames, st.records), (5, 300));
    assert_eq!(st.bytes, bytes.len() as u64);
    assert_eq!(s.dst.mapping_count(), 300);
    s.dst.check_invariants().unwrap();
}

#[test]
fn receiver_refuses_bad_streams() {
    let fresh = || setup(300).unwrap();
    let good = stream(&fresh(), 100);
    let frame1 = HEADER_LEN + 4 + 100 * RECORD_LEN;

    // Truncated inside a frame.
    let mut s = fresh();
    let e = receive(
        &good[..good.len() - 1],
        Some(&mut s.dst),
        &s.groups,
        u64::MAX,
    );
    assert!(format!("{:#}", e.unwrap_err()).contains("inside a frame"));

    // Bad magic.
    let mut s = fresh();
    let mut b = good.clone();
    b[frame1] = b'X';
    assert!(receive(&b[..], Some(&mut s.dst), &s.groups, u64::MAX).is_err());

    // Second frame replayed (sequence out of order).
    let mut s = fresh();
    let mut b = good[..frame1].to_vec();
    b.extend_from_slice(&good[..frame1]);
    let e = receive(&b[..], Some(&mut s.dst), &s.groups, u64::MAX);
    assert!(format!("{:#}", e.unwrap_err()).contains("out of order"));

    // A record the NAT refuses (bad record version): import error, nothing installed.
    let mut s = fresh();
    let mut b = good.clone();
    b[HEADER_LEN + 4 + 3] = 9;
    assert!(receive(&b[..], Some(&mut s.dst), &s.groups, u64::MAX).is_err());
    assert_eq!(s.dst.mapping_count(), 0);

    // Unknown migration id.
    let mut s = fresh();
    let mut b = good.clone();
    b[8..16].copy_from_slice(&0xdead_u64.to_be_bytes());
    let e = receive(&b[..], Some(&mut s.dst), &s.groups, u64::MAX);
    assert!(format!("{:#}", e.unwrap_err()).contains("unknown migration"));

    // More bytes than the bound.
    let mut s = fresh();
    assert!(receive(&good[..], Some(&mut s.dst), &s.groups, 100).is_err());

    // The untouched stream is accepted.
    let mut s = fresh();
    receive(&good[..], Some(&mut s.dst), &s.groups, u64::MAX).unwrap();
    assert_eq!(s.dst.mapping_count(), 300);
}

#[test]
fn the_listener_refuses_a_peer_that_is_not_the_benchmark_socket() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let intruder = TcpStream::connect(addr).unwrap();
    let ours = TcpStream::connect(addr).unwrap();
    let err = accept_own(&listener, &ours).unwrap_err();
    assert!(err.to_string().contains("unexpected peer"), "{err}");
    // Its own connection is accepted.
    assert!(accept_own(&listener, &ours).is_ok());
    drop(intruder);
}
