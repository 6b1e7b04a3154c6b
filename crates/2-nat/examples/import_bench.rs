//! Times `Nat::import` alone (no transport): `cargo run --release -p flowshift-nat --example
//! import_bench -- [states] [batch] [rounds]`. The layout is `flowshift bench transfer`'s: one session
//! per mapping, alternately TCP established and UDP, every port of every block of 4 blocks per
//! subscriber, group after group; the destination reserved the blocks and called `reserve`.

use flowshift_nat::record::RECORD_LEN;
use flowshift_nat::{GroupConfig, Nat, NatConfig};
use flowshift_wire::Instant;
use std::net::Ipv4Addr;
use std::time::Instant as Wall;

/// Like the `flowshift` binary (`crates/7-cli/src/alloc.rs`): allocations of 4 MiB and more are
/// 2 MiB aligned, so the tables (which ask for huge pages themselves) get whole ones and their
/// random accesses miss the TLB as rarely as in the daemon and in `bench transfer`.
struct HugeAligned;

fn huge(l: std::alloc::Layout) -> std::alloc::Layout {
    if l.size() < 4 << 20 || l.align() >= 2 << 20 {
        return l;
    }
    std::alloc::Layout::from_size_align(l.size().next_multiple_of(2 << 20), l.align().max(2 << 20))
        .unwrap_or(l)
}

// SAFETY: forwarded to `System` with a layout at least as large and aligned as asked, the same
// one recomputed on `dealloc` (`realloc` is the trait's default: alloc, copy, dealloc).
unsafe impl std::alloc::GlobalAlloc for HugeAligned {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: `huge(layout)` is non-zero-sized (as `layout`).
        unsafe { std::alloc::System.alloc(huge(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: allocated by `alloc` with the same layout mapping.
        unsafe { std::alloc::System.dealloc(ptr, huge(layout)) }
    }
}

#[global_allocator]
static ALLOC: HugeAligned = HugeAligned;

fn main() {
    let mut args = std::env::args().skip(1);
    let states: u32 = args.next().map_or(65_000, |a| a.parse().expect("states"));
    let batch: usize = args.next().map_or(4096, |a| a.parse().expect("batch"));
    let rounds: u32 = args.next().map_or(3, |a| a.parse().expect("rounds"));
    let blocks = NatConfig::default().blocks_per_group();
    let per_group = 2 * blocks * 512;
    let n_groups = states.div_ceil(per_group);
    let groups: Vec<GroupConfig> = (0..n_groups)
        .map(|g| GroupConfig {
            external: Ipv4Addr::new(203, 0, 113, 1 + g as u8),
            subscribers: format!("100.64.{g}.0/24").parse().unwrap(),
        })
        .collect();
    let cfg = NatConfig {
        max_sessions: states.max(1024),
        max_mappings: states.max(1024),
        ..NatConfig::with_groups(groups.clone())
    };
    let now = Instant::from_secs(3600);
    let mut per_group_bytes = Vec::new();
    for g in 0..n_groups {
        let mut bytes = Vec::new();
        for i in g * per_group..((g + 1) * per_group).min(states) {
            let j = i % per_group;
            let tcp = j % 2 == 0;
            let slot = j / 2;
            let block = slot / 512;
            let mut r = [0u8; RECORD_LEN];
            r[0] = if tcp { 6 } else { 17 };
            r[1] = if tcp { 3 } else { 0 };
            r[3] = 1;
            r[4..8].copy_from_slice(&[100, 64, g as u8, 1 + (block / 4) as u8]);
            r[8..10]
                .copy_from_slice(&(20_000 + ((block % 4) * 512 + slot % 512) as u16).to_be_bytes());
            r[10..12].copy_from_slice(&(1024 + slot as u16).to_be_bytes());
            r[12..16].copy_from_slice(&[198, 18 + (i >> 16 & 1) as u8, (i >> 8) as u8, i as u8]);
            r[16..18].copy_from_slice(&(if tcp { 443u16 } else { 53 }).to_be_bytes());
            r[20..24].copy_from_slice(&(i.wrapping_mul(7919) % 120_000).to_be_bytes());
            bytes.extend_from_slice(&r);
        }
        per_group_bytes.push(bytes);
    }
    let mut best = f64::MAX;
    for round in 0..rounds {
        let mut dst = Nat::new(cfg.clone()).unwrap();
        for g in &groups {
            let id = dst.group_id(g.external).unwrap();
            let all: Vec<u32> = (0..blocks).collect();
            dst.reserve_blocks(id, &all).unwrap();
        }
        let t = Wall::now();
        dst.reserve(states as usize, states as usize);
        let reserve = t.elapsed();
        let (t, c) = (Wall::now(), cpu_ns());
        for (g, bytes) in groups.iter().zip(&per_group_bytes) {
            let id = dst.group_id(g.external).unwrap();
            for c in bytes.chunks(batch * RECORD_LEN) {
                dst.import(id, now, c).unwrap();
            }
        }
        let import = t.elapsed();
        let cpu = cpu_ns().zip(c).map(|(b, a)| (b - a) as f64 * 1e-9);
        assert_eq!(dst.session_count(), states);
        // On a shared machine the thread's CPU time is the steadier figure.
        let secs = cpu.unwrap_or(import.as_secs_f64());
        best = best.min(secs);
        println!(
            "round {round}: {states} states, reserve {:.1} ms, import {:.1} ms ({:.1} ms on CPU) = {:.0} ns/record on CPU, {:.0} MB/s of records",
            reserve.as_secs_f64() * 1e3,
            import.as_secs_f64() * 1e3,
            secs * 1e3,
            secs * 1e9 / states as f64,
            states as f64 * RECORD_LEN as f64 / secs / 1e6
        );
    }
    println!(
        "best of {rounds}: {:.0} ns/record on CPU, {:.0} MB/s of records",
        best * 1e9 / states as f64,
        states as f64 * RECORD_LEN as f64 / best / 1e6
    );
}

/// Nanoseconds this thread has run (`CLOCK_THREAD_CPUTIME_ID`), if available.
fn cpu_ns() -> Option<u64> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a live timespec the call writes.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    (rc == 0).then(|| t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64)
}
