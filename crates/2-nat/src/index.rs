//! The session index: both directions' 5-tuples of every session, each entry carrying the
//! rewrite of its direction (translated address and port, RFC 1624 checksum deltas already
//! oriented, the flags the fast path checks, a coarse refresh stamp), so that a hit reads one
//! 32-byte entry and nothing else: the table (`linetable.rs`) keeps keys in the entries, two
//! per cache line, so a lookup that finds its entry in its first line reads one line.
//!
//! The session slab stays the authority: an entry is a cache of its session's rewrite data,
//! written when the session is installed, updated when its frozen flag changes and removed
//! with it; `Nat::check_invariants` verifies they agree.

use crate::linetable::{LineEntry, LinePrefetcher, LineTable};
use foldhash::fast::FixedState;
use std::hash::BuildHasher;

/// Session key: direction, protocol, local endpoint (internal on Out, external on In),
/// remote endpoint, packed into two words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SessionKey(pub u64, pub u64);

/// The entry's mapping is frozen (packets are held; the full path decides).
pub(crate) const E_FROZEN: u8 = 1;
/// The session's remote is an external address of this NAT (hairpin; the full path decides).
pub(crate) const E_HAIRPIN: u8 = 2;

/// Bits of the refresh stamp (see [`SEntry::stamp`]).
pub(crate) const STAMP_BITS: u32 = 24;
/// A stamp no tick equals: the next refresh writes the session's `last_seen`.
pub(crate) const STAMP_NONE: u32 = 1 << (STAMP_BITS - 1);
/// Ticks are masked to this (one bit less than the stamp, so [`STAMP_NONE`] is never a tick).
pub(crate) const TICK_MASK: u32 = STAMP_NONE - 1;

/// One direction of one session. 32 bytes, aligned to 32: never straddles a cache line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(32))]
pub(crate) struct SEntry {
    /// Key word 0: direction, protocol, local port and address.
    pub k0: u64,
    /// Key: remote address.
    pub rem: u32,
    /// Key: remote port.
    pub rport: u16,
    /// Refresh stamp, high 16 bits.
    stamp_hi: u16,
    /// Session slot.
    pub slot: u32,
    /// The address written into the packet (external on Out, internal on In), host order.
    pub addr: u32,
    /// The port (or ICMP identifier) written into the packet.
    pub port: u16,
    /// IPv4 header checksum delta of the address change, oriented for this direction.
    pub ip_delta: u16,
    /// Transport checksum delta (address and port), oriented for this direction.
    pub l4_delta: u16,
    /// `E_*` flags.
    pub flags: u8,
    /// Refresh stamp, low 8 bits.
    stamp_lo: u8,
}

const _: () = assert!(core::mem::size_of::<SEntry>() == 32);

impl SEntry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: SessionKey,
        slot: u32,
        addr: u32,
        port: u16,
        ip_delta: u16,
        l4_delta: u16,
        flags: u8,
    ) -> SEntry {
        debug_assert_eq!(key.1 >> 48, 0, "key word 1 holds 48 bits");
        let mut e = SEntry {
            k0: key.0,
            rem: key.1 as u32,
            rport: (key.1 >> 32) as u16,
            stamp_hi: 0,
            slot,
            addr,
            port,
            ip_delta,
            l4_delta,
            flags,
            stamp_lo: 0,
        };
        e.set_stamp(STAMP_NONE);
        e
    }

    #[inline(always)]
    pub fn key(&self) -> SessionKey {
        SessionKey(self.k0, (self.rport as u64) << 32 | self.rem as u64)
    }

    #[inline(always)]
    fn matches(&self, key: &SessionKey) -> bool {
        self.k0 == key.0 && ((self.rport as u64) << 32 | self.rem as u64) == key.1
    }

    /// The refresh stamp: [`STAMP_NONE`], or the tick of a packet that refreshed the session
    /// through this entry; the session's `last_seen` was then set to that packet's time, so it
    /// lies in that tick or later. A hit in the same tick need not write `last_seen` again.
    #[inline(always)]
    pub fn stamp(&self) -> u32 {
        (self.stamp_hi as u32) << 8 | self.stamp_lo as u32
    }

    #[inline(always)]
    pub fn set_stamp(&mut self, stamp: u32) {
        debug_assert!(stamp <= STAMP_NONE);
        self.stamp_hi = (stamp >> 8) as u16;
        self.stamp_lo = stamp as u8;
    }

    /// Is this the inbound entry (key direction bit)?
    #[inline(always)]
    pub fn inbound(&self) -> bool {
        self.k0 >> 56 & 1 == 1
    }
}

/// Where an index's probe for a hash starts, to prefetch it before the lookup or insert (so
/// that the lookups of a batch overlap their memory latencies): one line per probe.
pub(crate) type Prefetcher = LinePrefetcher;

/// The session index's table entry: [`SEntry`], two per line.
impl LineEntry for SEntry {
    const EMPTY: SEntry = SEntry {
        k0: u64::MAX,
        rem: 0,
        rport: 0,
        stamp_hi: 0,
        slot: 0,
        addr: 0,
        port: 0,
        ip_delta: 0,
        l4_delta: 0,
        flags: 0,
        stamp_lo: 0,
    };
    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.k0 == u64::MAX
    }
}

/// A mapping-index entry: packed key (see `mkey`) and mapping slot. 16 bytes, four per line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(16))]
pub(crate) struct MEntry {
    key: u64,
    slot: u32,
}

impl LineEntry for MEntry {
    const EMPTY: MEntry = MEntry {
        key: u64::MAX,
        slot: 0,
    };
    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.key == u64::MAX
    }
}

/// Like [`prefetch_line`], for a line about to be written (fetched for ownership).
#[inline(always)]
pub(crate) fn prefetch_line_w(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as for `prefetch_line`: a hint, never a fault or a dereference.
    unsafe {
        core::arch::x86_64::_mm_prefetch(addr as *const i8, core::arch::x86_64::_MM_HINT_ET0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// A hint to the CPU to fetch the cache line at `addr`; no effect on program semantics.
#[inline(always)]
pub(crate) fn prefetch_line(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults and does not dereference in the
    // language's sense, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch(addr as *const i8, core::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// The hash index of sessions.
pub(crate) struct SessionIndex {
    table: LineTable<SEntry, 2>,
    hasher: FixedState,
}

impl SessionIndex {
    pub fn new(hasher: FixedState) -> Self {
        SessionIndex {
            table: LineTable::new(),
            hasher,
        }
    }

    /// The prefetcher of the current allocation (stale once the table grows: hints only).
    #[inline]
    pub fn prefetcher(&self) -> Prefetcher {
        self.table.prefetcher()
    }

    /// Finds the entry of `key`, whose hash `hash` the caller computed (and prefetched).
    #[inline(always)]
    pub fn get_mut_hashed(&mut self, hash: u64, key: &SessionKey) -> Option<&mut SEntry> {
        debug_assert_eq!(hash, self.hash(key));
        self.table.find_mut(hash, |e| e.matches(key))
    }

    /// The hasher of the keys (a copy, to hash while the index is borrowed elsewhere).
    #[inline]
    pub fn hasher(&self) -> FixedState {
        self.hasher.clone()
    }

    #[inline(always)]
    pub fn hash(&self, key: &SessionKey) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline(always)]
    pub fn get_hashed(&self, hash: u64, key: &SessionKey) -> Option<&SEntry> {
        debug_assert_eq!(hash, self.hash(key));
        self.table.find(hash, |e| e.matches(key))
    }

    #[inline(always)]
    pub fn get(&self, key: &SessionKey) -> Option<&SEntry> {
        self.table.find(self.hash(key), |e| e.matches(key))
    }

    #[inline(always)]
    pub fn get_mut(&mut self, key: &SessionKey) -> Option<&mut SEntry> {
        let h = self.hash(key);
        self.table.find_mut(h, |e| e.matches(key))
    }

    /// Inserts an entry whose key is absent.
    #[cfg(test)]
    pub fn insert_new(&mut self, e: SEntry) {
        self.insert_new_hashed(self.hash(&e.key()), e);
    }

    /// Inserts an entry whose key is absent and hashes to `hash` (computed by the caller,
    /// who may have prefetched its probe).
    #[inline(always)]
    pub fn insert_new_hashed(&mut self, hash: u64, e: SEntry) {
        debug_assert_eq!(hash, self.hash(&e.key()), "the key's hash");
        debug_assert!(self.get(&e.key()).is_none(), "session key indexed twice");
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, e, |x| hasher.hash_one(x.key()));
    }

    pub fn remove(&mut self, key: &SessionKey) -> Option<SEntry> {
        let h = self.hash(key);
        let hasher = &self.hasher;
        self.table
            .remove(h, |e| e.matches(key), |x| hasher.hash_one(x.key()))
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Room for `additional` more entries without growing, not past room for `limit` unless
    /// asked; a new table's memory is touched here rather than by the inserts.
    pub fn reserve(&mut self, additional: usize, limit: usize) {
        let hasher = &self.hasher;
        self.table
            .reserve(additional, limit, |x| hasher.hash_one(x.key()));
    }

    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }
}

/// The hash index of mappings: `(direction, protocol, address, port)` packed in a u64 ->
/// mapping slot. The NAT indexes the outbound (internal endpoint) keys only: a group's port
/// blocks hold the mapping of each external port.
pub(crate) struct MappingIndex {
    table: LineTable<MEntry, 4>,
    hasher: FixedState,
}

impl MappingIndex {
    pub fn new(hasher: FixedState) -> Self {
        MappingIndex {
            table: LineTable::new(),
            hasher,
        }
    }

    /// The prefetcher of the current allocation (see [`SessionIndex::prefetcher`]).
    #[inline]
    pub fn prefetcher(&self) -> Prefetcher {
        self.table.prefetcher()
    }

    /// The hasher of the keys (a copy, to hash while the index is borrowed elsewhere).
    #[inline]
    pub fn hasher(&self) -> FixedState {
        self.hasher.clone()
    }

    #[inline(always)]
    pub fn hash(&self, key: &u64) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline(always)]
    pub fn get(&self, key: &u64) -> Option<&u32> {
        self.get_hashed(self.hash(key), key)
    }

    /// [`get`](Self::get) with the key's hash computed (and maybe prefetched) by the caller.
    #[inline(always)]
    pub fn get_hashed(&self, hash: u64, key: &u64) -> Option<&u32> {
        debug_assert_eq!(hash, self.hash(key));
        self.table.find(hash, |e| e.key == *key).map(|e| &e.slot)
    }

    #[cfg(test)]
    pub fn contains_key(&self, key: &u64) -> bool {
        self.get(key).is_some()
    }

    /// Inserts a key that is absent (no probe for an existing entry first).
    #[cfg(test)]
    pub fn insert_new(&mut self, key: u64, slot: u32) {
        self.insert_new_hashed(self.hash(&key), key, slot);
    }

    /// [`insert_new`](Self::insert_new) with the key's hash `hash` computed by the caller.
    #[inline(always)]
    pub fn insert_new_hashed(&mut self, hash: u64, key: u64, slot: u32) {
        debug_assert_eq!(hash, self.hash(&key), "the key's hash");
        debug_assert!(self.get(&key).is_none(), "mapping key indexed twice");
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, MEntry { key, slot }, |e| hasher.hash_one(e.key));
    }

    pub fn remove(&mut self, key: &u64) -> Option<u32> {
        let h = self.hash(key);
        let hasher = &self.hasher;
        self.table
            .remove(h, |e| e.key == *key, |e| hasher.hash_one(e.key))
            .map(|e| e.slot)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Room for `additional` more entries without growing (memory touched here).
    pub fn reserve(&mut self, additional: usize, limit: usize) {
        let hasher = &self.hasher;
        self.table
            .reserve(additional, limit, |e| hasher.hash_one(e.key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> SessionKey {
        SessionKey(
            i.wrapping_mul(0x9e37_79b9) & 0x01ff_ffff_ffff_ffff,
            i & 0xffff_ffff_ffff,
        )
    }

    fn index_of(n: u64) -> SessionIndex {
        let mut idx = SessionIndex::new(FixedState::with_seed(42));
        for i in 0..n {
            idx.insert_new(SEntry::new(key(i), i as u32, 0, 0, 0, 0, 0));
        }
        idx
    }

    /// Most entries of a sparse index sit in the line their hash picks, where the prefetcher
    /// points: a lookup then reads that one line.
    #[test]
    fn prefetcher_points_at_the_probed_lines() {
        let idx = index_of(20_000);
        let pf = idx.prefetcher();
        let mut first = 0;
        for i in 0..20_000 {
            let k = key(i);
            let e = idx.get(&k).unwrap() as *const SEntry as usize;
            first += (e & !63 == pf.line_addr(idx.hash(&k))) as u32;
        }
        assert!(
            first > 15_000,
            "only {first} of 20000 entries in their first line"
        );
    }

    #[test]
    fn reserve_keeps_every_entry_and_respects_the_limit() {
        let mut idx = index_of(1000);
        idx.reserve(5000, 12_000);
        assert!(idx.capacity() >= 6000);
        assert_eq!(idx.len(), 1000);
        for i in 0..1000 {
            assert_eq!(idx.get(&key(i)).map(|e| e.slot), Some(i as u32));
        }
        let cap = idx.capacity();
        idx.reserve(10, 12_000);
        assert_eq!(idx.capacity(), cap, "no growth when there is room");
        // Growth beyond the limit only as far as asked: 4000 + 1000 entries, not double.
        let mut small = index_of(1000);
        let before = small.capacity();
        small.reserve(before, 10);
        assert!(
            small.capacity() < 4 * (before + 1000),
            "{}",
            small.capacity()
        );
        // Removing and re-inserting keeps every other entry findable.
        for i in (0..1000).step_by(2) {
            assert_eq!(idx.remove(&key(i)).map(|e| e.slot), Some(i as u32));
        }
        for i in 0..1000 {
            assert_eq!(idx.get(&key(i)).is_some(), i % 2 == 1, "key {i}");
        }
    }

    /// A reserved but empty index (a destination's first batch) has a working prefetcher.
    #[test]
    fn prefetcher_of_an_empty_reserved_index() {
        let mut idx = SessionIndex::new(FixedState::with_seed(9));
        assert_eq!(idx.prefetcher().line_addr(0), 0, "no allocation yet");
        idx.reserve(10_000, 10_000);
        let pf = idx.prefetcher();
        assert_eq!(idx.len(), 0);
        let k = key(77);
        idx.insert_new(SEntry::new(k, 5, 0, 0, 0, 0, 0));
        let e = idx.get(&k).unwrap() as *const SEntry as usize;
        assert_eq!(
            e & !63,
            pf.line_addr(idx.hash(&k)),
            "alone: in its first line"
        );
        let mut m = MappingIndex::new(FixedState::with_seed(9));
        m.reserve(100, 100);
        assert_ne!(m.prefetcher().line_addr(0), 0);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn mapping_index_insert_reserve_remove() {
        let mut m = MappingIndex::new(FixedState::with_seed(1));
        m.insert_new(7, 2);
        m.insert_new(8, 3);
        m.reserve(100, 1000);
        assert_eq!(m.get(&7), Some(&2));
        assert!(m.contains_key(&7));
        assert_eq!(m.remove(&7), Some(2));
        assert_eq!(m.get(&8), Some(&3));
        assert_eq!((m.len(), m.remove(&7)), (1, None));
    }

    #[test]
    fn stamps_round_trip_and_none_is_no_tick() {
        let mut e = SEntry::new(key(1), 1, 2, 3, 4, 5, E_FROZEN);
        assert_eq!(e.stamp(), STAMP_NONE);
        for s in [0, 1, 0xff, 0x100, TICK_MASK] {
            e.set_stamp(s);
            assert_eq!(e.stamp(), s);
        }
        assert_eq!(STAMP_NONE & TICK_MASK, 0);
        assert_eq!(e.key(), key(1));
        assert!(!e.inbound());
    }
}
