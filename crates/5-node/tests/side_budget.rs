//! The packet loop's per-iteration bound on side work, and the loop counters in the status.

mod common;

use common::*;
use flowshift_control::api::{NodeRequest, ReplyBody};
use flowshift_migration::InstanceId;
use flowshift_wire::Instant;
use std::time::Duration;

#[test]
fn side_work_per_iteration_is_bounded_commands_first() {
    let cfg = config(1, true, "127.0.0.1:1", "127.0.0.1:2", "side_budget = 4");
    let (mut e, ends) = engine(&cfg);
    let mut cap = Capture::default();
    let now = Instant::from_millis(1);
    let malformed = |e: &flowshift_node::engine::Engine| e.io().transfer_in_malformed;

    // A burst of ten (malformed) transfer frames: four per iteration, then the rest.
    for i in 0..10u8 {
        assert!(ends.transfer.deliver(InstanceId(2), vec![i; 40]));
    }
    assert_eq!(e.poll_side(now, &mut cap), 4);
    assert_eq!(malformed(&e), 4);
    assert_eq!(e.poll_side(now, &mut cap), 4);
    assert_eq!(e.poll_side(now, &mut cap), 2);
    assert_eq!(e.poll_side(now, &mut cap), 0);
    assert_eq!(malformed(&e), 10);

    // Commands share the budget and go first.
    for i in 0..6u8 {
        assert!(ends.transfer.deliver(InstanceId(2), vec![i; 40]));
    }
    let replies: Vec<_> = (0..3)
        .map(|_| ends.control.submit(NodeRequest::Status).expect("queued"))
        .collect();
    assert_eq!(e.poll_side(now, &mut cap), 4);
    assert_eq!(e.io().commands, 3);
    assert_eq!(malformed(&e), 11);
    for r in replies {
        assert!(matches!(r.try_recv(), Ok(Ok(ReplyBody::Status(_)))));
    }
    // Five commands: four now (no transfer frame), one with three frames next time.
    let replies: Vec<_> = (0..5)
        .map(|_| ends.control.submit(NodeRequest::Status).expect("queued"))
        .collect();
    assert_eq!(e.poll_side(now, &mut cap), 4);
    assert_eq!((e.io().commands, malformed(&e)), (7, 11));
    assert_eq!(e.poll_side(now, &mut cap), 4);
    assert_eq!((e.io().commands, malformed(&e)), (8, 14));
    assert_eq!(e.poll_side(now, &mut cap), 2);
    assert_eq!(e.poll_side(now, &mut cap), 0);
    assert_eq!(replies.iter().filter(|r| r.try_recv().is_ok()).count(), 5);
}

#[test]
fn the_status_carries_poll_gaps_and_cpu_time() {
    let cfg = config(1, true, "127.0.0.1:1", "127.0.0.1:2", "");
    let (mut e, _ends) = engine(&cfg);
    let ms = |n: u64| Instant::from_micros(n * 1000);
    // Ring stage, 3 ms of other work, ring stage; then 50 ms of which 49.9 asleep.
    e.ring_start(ms(0));
    e.ring_done(ms(1));
    assert_eq!(e.ring_start(ms(4)), Some(Duration::from_millis(3)));
    e.ring_done(ms(5));
    e.note_sleep(ms(5), Instant::from_micros(54_900));
    assert_eq!(e.ring_start(ms(55)), Some(Duration::from_micros(100)));
    assert!(!e.migrating());
    // Burn a little CPU so the thread's clock has moved.
    let mut x = 0u64;
    for i in 0..2_000_000u64 {
        x = x.wrapping_mul(31).wrapping_add(i);
    }
    std::hint::black_box(x);
    let st = e.status(ms(60));
    let c = &st.counters;
    assert_eq!(c.poll_max.max_poll_gap_us, 3000);
    assert_eq!(c.poll_max.max_poll_gap_migrating_us, 0);
    assert_eq!(c.poll.poll_gaps, 2);
    assert_eq!(c.poll.poll_gaps_over_10us, 2);
    assert_eq!(c.poll.poll_gaps_over_100us, 1);
    assert_eq!(c.poll.poll_gaps_over_1000us, 1);
    assert_eq!(c.poll.poll_gaps_over_10000us, 0);
    assert_eq!(c.io.idle_sleeps, 1);
    assert!(c.cpu.packet_thread_us > 0);
    assert!(c.cpu.process_us >= c.cpu.packet_thread_us);
}
