//! Fuzzes the NAT packet path: each input is a sequence of records
//! `[time step][direction hint][len][bytes...]`; every packet goes through `Nat::process`
//! (inside-looking and outside-looking addresses are patched in by the hint so the fuzzer
//! reaches the translation code, not only the parser), timeouts run, and the NAT's internal
//! invariants are checked after the input.
#![no_main]

use flowshift_nat::{GroupConfig, Nat, NatConfig};
use flowshift_wire::Instant;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

fn new_nat() -> Nat {
    let groups = vec![
        GroupConfig {
            external: [203, 0, 113, 1].into(),
            subscribers: "100.64.0.0/30".parse().unwrap(),
        },
        GroupConfig {
            external: [203, 0, 113, 2].into(),
            subscribers: "100.64.1.0/30".parse().unwrap(),
        },
    ];
    let cfg = NatConfig {
        block_size: 64,
        port_min: 1024,
        port_max: 1024 + 4 * 64 - 1,
        max_blocks_per_subscriber: 2,
        max_sessions: 512,
        max_mappings: 256,
        max_sessions_per_mapping: 8,
        // Below the table bound, so floods reach the per-subscriber limit too.
        max_sessions_per_subscriber: 48,
        hash_seed: 0x5eed,
        rng_seed: 1,
        max_fragment_flows: 16,
        ..NatConfig::with_groups(groups)
    };
    Nat::new(cfg).expect("valid config")
}

thread_local! {
    static STATE: RefCell<(Nat, u64)> = RefCell::new((new_nat(), 0));
}

fuzz_target!(|data: &[u8]| {
    STATE.with(|s| {
        let (nat, t) = &mut *s.borrow_mut();
        let mut rest = data;
        while rest.len() >= 3 {
            let (step, hint, len) = (rest[0], rest[1], rest[2] as usize);
            rest = &rest[3..];
            let len = len.min(rest.len());
            let mut pkt = rest[..len].to_vec();
            rest = &rest[len..];
            *t += (step as u64) * 1_000_000_000;
            if pkt.len() >= 20 && hint & 1 == 1 {
                // Make it look like subscriber -> outside or outside -> external address.
                if hint & 2 == 0 {
                    pkt[12..16].copy_from_slice(&[100, 64, (hint >> 2) & 1, hint >> 6]);
                } else {
                    pkt[16..20].copy_from_slice(&[203, 0, 113, 1 + ((hint >> 2) & 1)]);
                }
                if hint & 0x10 != 0 {
                    // Fix the header checksum so the packet passes validation.
                    let ihl = ((pkt[0] & 0x0f) as usize * 4).clamp(20, pkt.len());
                    pkt[10] = 0;
                    pkt[11] = 0;
                    let c = flowshift_wire::checksum::compute(&pkt[..ihl]);
                    pkt[10..12].copy_from_slice(&c.to_be_bytes());
                }
            }
            let now = Instant::from_nanos(*t);
            let _ = nat.process(now, &mut pkt);
            while nat.handle_timeout(now) {}
            while nat.poll_event().is_some() {}
        }
        if let Err(e) = nat.check_invariants() {
            panic!("invariant broken: {e}");
        }
    });
});
