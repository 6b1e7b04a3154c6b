//! The session index: both directions' 5-tuples of every session, each entry carrying the
//! rewrite of its direction (translated address and port, RFC 1624 checksum deltas already
//! oriented, the flags the fast path checks, a coarse refresh stamp), so that a hit reads one
//! 32-byte entry (one cache line) and nothing else.
//!
//! The session slab stays the authority: an entry is a cache of its session's rewrite data,
//! written when the session is installed, updated when its frozen flag changes and removed
//! with it; `Nat::check_invariants` verifies they agree.

use foldhash::fast::FixedState;
use hashbrown::HashTable;
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

/// The hash index of sessions.
pub(crate) struct SessionIndex {
    table: HashTable<SEntry>,
    hasher: FixedState,
}

impl SessionIndex {
    pub fn new(hasher: FixedState) -> Self {
        SessionIndex {
            table: HashTable::new(),
            hasher,
        }
    }

    #[inline(always)]
    pub fn hash(&self, key: &SessionKey) -> u64 {
        self.hasher.hash_one(key)
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
    #[inline]
    pub fn insert_new(&mut self, e: SEntry) {
        let key = e.key();
        debug_assert!(self.get(&key).is_none(), "session key indexed twice");
        let h = self.hash(&key);
        let hasher = &self.hasher;
        self.table.insert_unique(h, e, |x| hasher.hash_one(x.key()));
    }

    pub fn remove(&mut self, key: &SessionKey) -> Option<SEntry> {
        let h = self.hash(key);
        match self.table.find_entry(h, |e| e.matches(key)) {
            Ok(occ) => Some(occ.remove().0),
            Err(_) => None,
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Room for `additional` more entries without growing; a new table's memory is touched
    /// here rather than by the inserts (see [`grow_prefaulted`]).
    pub fn reserve(&mut self, additional: usize, limit: usize) {
        let hasher = &self.hasher;
        grow_prefaulted(
            &mut self.table,
            additional,
            limit,
            SEntry::new(SessionKey(0, 0), 0, 0, 0, 0, 0, 0),
            |x| hasher.hash_one(x.key()),
        );
    }

    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }
}

/// The hash index of mappings: `(direction, protocol, address, port)` packed in a u64 ->
/// mapping slot.
pub(crate) struct MappingIndex {
    table: HashTable<(u64, u32)>,
    hasher: FixedState,
}

impl MappingIndex {
    pub fn new(hasher: FixedState) -> Self {
        MappingIndex {
            table: HashTable::new(),
            hasher,
        }
    }

    #[inline(always)]
    pub fn get(&self, key: &u64) -> Option<&u32> {
        self.table
            .find(self.hasher.hash_one(key), |e| e.0 == *key)
            .map(|e| &e.1)
    }

    #[inline]
    pub fn contains_key(&self, key: &u64) -> bool {
        self.get(key).is_some()
    }

    /// Inserts or replaces; the previous value.
    pub fn insert(&mut self, key: u64, slot: u32) -> Option<u32> {
        let h = self.hasher.hash_one(key);
        let hasher = &self.hasher;
        match self
            .table
            .entry(h, |e| e.0 == key, |e| hasher.hash_one(e.0))
        {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                Some(core::mem::replace(&mut o.get_mut().1, slot))
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert((key, slot));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &u64) -> Option<u32> {
        let h = self.hasher.hash_one(key);
        match self.table.find_entry(h, |e| e.0 == *key) {
            Ok(occ) => Some(occ.remove().0.1),
            Err(_) => None,
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Room for `additional` more entries without growing (memory touched here).
    pub fn reserve(&mut self, additional: usize, limit: usize) {
        let hasher = &self.hasher;
        grow_prefaulted(&mut self.table, additional, limit, (0, 0), |x| {
            hasher.hash_one(x.0)
        });
    }
}

/// Makes room for `additional` more entries in `table`. If it must grow, the new table is
/// allocated and its bucket memory written once, sequentially, before the entries move in:
/// the page faults (the kernel zeroing fresh memory) happen here, in one pass, instead of
/// one by one at random places during the inserts that follow (an import's). Grows to at
/// least double (amortised), but not past room for `limit` entries unless asked to.
fn grow_prefaulted<T: Copy>(
    table: &mut HashTable<T>,
    additional: usize,
    limit: usize,
    dummy: T,
    hasher: impl Fn(&T) -> u64,
) {
    let want = table.len().saturating_add(additional);
    if table.capacity() >= want {
        return;
    }
    let doubled = table.capacity().saturating_mul(2).min(limit);
    let mut fresh: HashTable<T> = HashTable::with_capacity(want.max(doubled));
    let cap = fresh.capacity();
    // The table has about cap * 8 / 7 buckets and puts an entry of hash h in the first free
    // bucket from h modulo that: these hashes spread the dummies over every bucket, in order.
    for i in 0..cap as u64 {
        fresh.insert_unique(i * 8 / 7, dummy, |_| {
            unreachable!("no growth below capacity")
        });
    }
    fresh.clear();
    debug_assert!(fresh.capacity() >= want, "capacity kept by clear");
    for e in table.drain() {
        let h = hasher(&e);
        fresh.insert_unique(h, e, &hasher);
    }
    *table = fresh;
}
