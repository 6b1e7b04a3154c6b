//! The index peer of `bench transfer`: what a receiver would spend on the three lookups the NAT
//! keeps per session, done with a general-purpose hash map and nothing else.
//!
//! For every record the source exports (the same bytes the transfer carries), the peer inserts
//! the mapping key (protocol, subscriber address and port) into one `hashbrown` map and the
//! outbound and inbound session keys (both endpoints) into another, with values that make each
//! session entry 32 bytes, as the NAT's index entries are. Both maps are sized for every entry
//! and their memory written once before the clock starts (as `Nat::reserve` does), so the
//! figure is the inserts alone: no validation, no session or mapping slots, no port
//! bitmaps, no expiry entries, no journal. It runs on one thread with the other core idle,
//! where the import shares the machine with the sender: the comparison flatters the peer.
//!
//! `index_peer_cpu_secs` is the calling thread's CPU time for the inserts;
//! `import_vs_index_peer = index_peer_cpu_secs / import_cpu_secs` is above 1 when the NAT's
//! whole import costs less than these three inserts per record.

use super::*;

/// CPU seconds (wall seconds where the thread clock is unavailable) the peer's inserts took.
pub(super) fn index_peer(src: &Nat, groups: &[(GroupId, MigrationId, GroupId)]) -> Result<f64> {
    // Each group's records, in the order the transfer sends them, with the external address
    // its batches name.
    let mut batches = Vec::with_capacity(groups.len());
    for (i, &(sg, _, _)) in groups.iter().enumerate() {
        batches.push((
            u32::from(Layout::external(i as u32)),
            export_group(src, sg)?,
        ));
    }
    let records: usize = batches.iter().map(|(_, recs)| recs.len()).sum();
    let mut mappings: HashMap<u64, u64> = HashMap::with_capacity(records);
    let mut sessions: HashMap<(u64, u64), [u64; 2]> = HashMap::with_capacity(2 * records);
    // Write the maps' memory once (page faults are set-up, as in the NAT's `reserve`).
    for i in 0..records as u64 {
        mappings.insert(!i, i);
        sessions.insert((!i, i), [i; 2]);
        sessions.insert((i, !i), [i; 2]);
    }
    mappings.clear();
    sessions.clear();
    let (wall, cpu) = (WallClock::now(), thread_cpu());
    for (ext, recs) in &batches {
        let ext = u64::from(*ext);
        for r in recs {
            let proto = u64::from(r[0]);
            let be32 =
                |o: usize| u64::from(u32::from_be_bytes([r[o], r[o + 1], r[o + 2], r[o + 3]]));
            let be16 = |o: usize| u64::from(u16::from_be_bytes([r[o], r[o + 1]]));
            let internal = proto << 48 | be32(4) << 16 | be16(8);
            let external = proto << 48 | ext << 16 | be16(10);
            let remote = be32(12) << 16 | be16(16);
            mappings.insert(internal, external);
            sessions.insert((internal, remote), [external, remote]);
            sessions.insert((external, remote), [internal, remote]);
        }
    }
    let cpu = thread_cpu().saturating_sub(cpu);
    let wall = wall.elapsed();
    if mappings.len() != records || sessions.len() != 2 * records {
        bail!(
            "index peer: {} mappings and {} session keys for {records} records",
            mappings.len(),
            sessions.len()
        );
    }
    Ok(if cpu.is_zero() { wall } else { cpu }.as_secs_f64())
}
