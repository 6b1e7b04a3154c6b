//! A slice of the fault swarm: every seed's run must satisfy the invariants
//! (`flowshift experiment swarm` runs many more).

use flowshift_sim::swarm;

#[test]
fn a_slice_of_the_swarm_holds_its_invariants() {
    let n: u64 = std::env::var("SWARM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let mut bad = Vec::new();
    for seed in 0..n {
        let r = swarm::run(seed).expect("set-up");
        if !r.violations.is_empty() {
            bad.push(format!("seed {seed}: {:?} {:?}", r.plan, r.violations));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Seed 286: pre-copy, the source crashes 3 ms into the migration and restarts; giving the
/// group back to it released the destination's group twice (2 internal errors on B).
#[test]
fn seed_286_releasing_a_reverted_incoming_group_is_clean() {
    let r = swarm::run(286).expect("set-up");
    assert!(r.violations.is_empty(), "{:?}", r.violations);
}

/// Seeds the 10,000-seed swarm found: a transfer reset splitting freeze-copy (4041) or
/// pre-copy after its commit (1558), and a controller restart that forgot the migration
/// before a source crash (2974, 4008, 6020). Rehoming left the other instance's part in
/// place, so a non-owner kept mappings (and, after the restart, bound ports twice).
#[test]
fn seeds_where_rehoming_left_a_non_owner_holding_the_group() {
    for seed in [1558, 2974, 4008, 4041, 6020, 7142, 9885] {
        let r = swarm::run(seed).expect("set-up");
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
    }
}
