//! An open-addressing hash table whose probe unit is one 64-byte cache line: the line an
//! entry's hash picks holds `N` entries with their keys (no control bytes to read first), so a
//! lookup that finds its entry in its first line reads one line of memory. An insert reads
//! one occupancy byte per line (a dense array that mostly stays cached) and writes the line
//! without reading it, so a cold line costs a store miss, which does not stall the CPU. The
//! session and mapping indexes (`index.rs`) use it: an import writes three index entries per
//! record at random places, and a packet's lookup reads one, so the lines touched are the cost.
//!
//! Layout: a power-of-two number of lines; an entry of hash `h` lives in line `h & mask` or,
//! when that line is full, in the next line with room (linear probing over lines, wrapping).
//! Invariant: for an entry of home line `a` stored in line `b`, every line from `a` up to but
//! not including `b` is full. A lookup therefore stops at its key or at the first line with
//! an empty slot. Removal keeps the invariant by backward shifting (no tombstones): the entries
//! after the hole whose probe passed through it move back into it. Empty slots hold
//! [`LineEntry::EMPTY`], which no real key equals.
//!
//! Load is kept at most 3/4 of the slots, so probes are short and a line with room is always
//! found. Growth doubles the lines and rehashes (callers pass the hash of an entry).

/// An entry of a [`LineTable`]: `Copy`, with an empty value no live entry equals.
pub(crate) trait LineEntry: Copy {
    /// The value of an empty slot (its key is one no caller ever inserts).
    const EMPTY: Self;
    /// True for [`EMPTY`](Self::EMPTY).
    fn is_empty(&self) -> bool;
}

/// One cache line of `N` entries.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line<E, const N: usize>([E; N]);

/// See the module documentation. `N` entries of type `E` fill one 64-byte line exactly.
pub(crate) struct LineTable<E, const N: usize> {
    lines: Vec<Line<E, N>>,
    /// Per line, a bit per occupied slot: 1 byte per 64-byte line, so it mostly stays in cache
    /// and an insert finds its slot without reading the (cold) line: the entry's write then
    /// does not stall the CPU the way a load miss does. Lookups read the lines, not this.
    occ: Vec<u8>,
    len: usize,
    /// [`capacity`](Self::capacity), kept so an insert's growth check is one comparison.
    cap: usize,
}

/// Where a table's probe for a hash starts, to prefetch it before the lookup or insert. A hint
/// only: a stale prefetcher (the table grew since) costs speed, never correctness.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LinePrefetcher {
    /// Address of line 0 (0: disabled).
    base: usize,
    /// Address of the occupancy bytes.
    occ: usize,
    mask: usize,
}

impl LinePrefetcher {
    /// Address of the line `hash` probes first.
    #[inline(always)]
    pub fn line_addr(&self, hash: u64) -> usize {
        self.base.wrapping_add((hash as usize & self.mask) * 64)
    }

    /// Hints the CPU to fetch the line `hash`'s lookup reads first.
    #[inline(always)]
    pub fn prefetch(&self, hash: u64) {
        if self.base != 0 {
            crate::index::prefetch_line(self.line_addr(hash));
        }
    }

    /// [`prefetch`](Self::prefetch) for an insert: the line will be written and its
    /// occupancy byte read.
    #[inline(always)]
    pub fn prefetch_insert(&self, hash: u64) {
        if self.base != 0 {
            crate::index::prefetch_line_w(self.line_addr(hash));
            crate::index::prefetch_line(self.occ.wrapping_add(hash as usize & self.mask));
        }
    }
}

impl<E: LineEntry, const N: usize> LineTable<E, N> {
    const LINE_FITS: () = assert!(N > 0 && N <= 8 && N * core::mem::size_of::<E>() == 64);

    /// An empty table (no allocation).
    pub fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::LINE_FITS;
        LineTable {
            lines: Vec::new(),
            occ: Vec::new(),
            len: 0,
            cap: 0,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Entries the table holds before it must grow (3/4 of its slots).
    #[inline(always)]
    pub fn capacity(&self) -> usize {
        debug_assert_eq!(self.cap, self.lines.len() * N / 4 * 3);
        self.cap
    }

    /// Lines allocated.
    #[cfg(test)]
    pub fn num_lines(&self) -> usize {
        self.lines.len()
    }

    #[inline(always)]
    fn mask(&self) -> usize {
        self.lines.len().wrapping_sub(1)
    }

    /// The prefetcher of the current allocation.
    #[inline]
    pub fn prefetcher(&self) -> LinePrefetcher {
        if self.lines.is_empty() {
            return LinePrefetcher::default();
        }
        LinePrefetcher {
            base: self.lines.as_ptr() as usize,
            occ: self.occ.as_ptr() as usize,
            mask: self.mask(),
        }
    }

    /// (line, slot) of the entry of hash `hash` for which `eq` holds.
    #[inline(always)]
    fn find_pos(&self, hash: u64, eq: impl Fn(&E) -> bool) -> Option<(usize, usize)> {
        if self.lines.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut l = hash as usize & mask;
        // The load bound leaves a line with room, so this ends; the count is a safety net.
        for _ in 0..self.lines.len() {
            let line = &self.lines[l].0;
            let mut room = false;
            for (s, e) in line.iter().enumerate() {
                if e.is_empty() {
                    room = true;
                } else if eq(e) {
                    return Some((l, s));
                }
            }
            if room {
                return None;
            }
            l = (l + 1) & mask;
        }
        None
    }

    /// The entry of hash `hash` for which `eq` holds.
    #[inline(always)]
    pub fn find(&self, hash: u64, eq: impl Fn(&E) -> bool) -> Option<&E> {
        self.find_pos(hash, eq).map(|(l, s)| &self.lines[l].0[s])
    }

    /// [`find`](Self::find), mutable. The caller must not change what the entry hashes to.
    #[inline(always)]
    pub fn find_mut(&mut self, hash: u64, eq: impl Fn(&E) -> bool) -> Option<&mut E> {
        self.find_pos(hash, eq)
            .map(|(l, s)| &mut self.lines[l].0[s])
    }

    /// Inserts `e` (not [`LineEntry::EMPTY`]) of hash `hash`, whose key is absent (not checked).
    /// Grows (rehashing with `hash_of`) if the table is at its capacity.
    #[inline(always)]
    pub fn insert_unique(&mut self, hash: u64, e: E, hash_of: impl Fn(&E) -> u64) {
        debug_assert!(!e.is_empty(), "the empty entry is not a key");
        if self.len >= self.capacity() {
            self.resize((self.len + 1).max(2 * self.capacity()), &hash_of);
        }
        self.place(hash, e);
    }

    /// Bits of a full line's occupancy byte.
    const FULL: u8 = ((1u16 << N) - 1) as u8;

    /// Puts `e` in the first slot with room from its home line (room is guaranteed), found
    /// from the occupancy bytes: the lines themselves are only written.
    #[inline(always)]
    fn place(&mut self, hash: u64, e: E) {
        let mask = self.mask();
        let mut l = hash as usize & mask;
        loop {
            let o = self.occ[l];
            if o != Self::FULL {
                let s = (!o).trailing_zeros() as usize;
                debug_assert!(self.lines[l].0[s].is_empty(), "occupancy agrees");
                self.lines[l].0[s] = e;
                self.occ[l] = o | 1 << s;
                self.len += 1;
                return;
            }
            l = (l + 1) & mask;
        }
    }

    /// Removes and returns the entry of hash `hash` for which `eq` holds; `hash_of` gives the
    /// hash of the entries that may move back into the hole.
    pub fn remove(
        &mut self,
        hash: u64,
        eq: impl Fn(&E) -> bool,
        hash_of: impl Fn(&E) -> u64,
    ) -> Option<E> {
        let (l, s) = self.find_pos(hash, eq)?;
        let removed = self.lines[l].0[s];
        self.lines[l].0[s] = E::EMPTY;
        self.occ[l] &= !(1 << s);
        self.len -= 1;
        let mask = self.mask();
        let mut hole = (l, s);
        let mut j = l;
        for _ in 0..self.lines.len() {
            j = (j + 1) & mask;
            let line = self.lines[j].0;
            let had_room = line.iter().any(|x| x.is_empty());
            // An entry of line `j` whose probe passed through the hole's line moves into it
            // (one is enough: the hole's line is then full again, and the hole is in `j`).
            for (t, e) in line.iter().enumerate() {
                if e.is_empty() {
                    continue;
                }
                let home = hash_of(e) as usize & mask;
                if (hole.0.wrapping_sub(home) & mask) < (j.wrapping_sub(home) & mask) {
                    self.lines[hole.0].0[hole.1] = *e;
                    self.occ[hole.0] |= 1 << hole.1;
                    self.lines[j].0[t] = E::EMPTY;
                    self.occ[j] &= !(1 << t);
                    hole = (j, t);
                    break;
                }
            }
            // No probe passes a line that had room: nothing beyond it can need the hole.
            if had_room {
                break;
            }
        }
        Some(removed)
    }

    /// Room for `additional` more entries without growing. If it must grow: at least double
    /// (amortised), but not past room for `limit` entries unless `additional` needs it. The
    /// new lines are written once, sequentially, before the entries move in, so the page
    /// faults (the kernel zeroing fresh memory) happen here rather than at the inserts.
    pub fn reserve(&mut self, additional: usize, limit: usize, hash_of: impl Fn(&E) -> u64) {
        let want = self.len.saturating_add(additional);
        if self.capacity() >= want {
            return;
        }
        let doubled = self.capacity().saturating_mul(2).min(limit);
        self.resize(want.max(doubled), &hash_of);
    }

    /// Reallocates with room for at least `entries` entries and rehashes every entry.
    fn resize(&mut self, entries: usize, hash_of: &impl Fn(&E) -> u64) {
        let slots = entries.max(1).saturating_mul(4).div_ceil(3);
        let lines = slots.div_ceil(N).next_power_of_two().max(2);
        let mut fresh: Vec<Line<E, N>> = Vec::with_capacity(lines);
        crate::memory::advise_huge(fresh.spare_capacity_mut());
        fresh.resize(lines, Line([E::EMPTY; N]));
        // Written (not `vec![0; n]`, which maps lazily zeroed pages): faults happen here.
        #[allow(clippy::slow_vector_initialization)]
        let occ = {
            let mut occ = Vec::with_capacity(lines);
            crate::memory::advise_huge(occ.spare_capacity_mut());
            occ.resize(lines, 0u8);
            occ
        };
        self.occ = occ;
        self.cap = lines * N / 4 * 3;
        let old = core::mem::replace(&mut self.lines, fresh);
        self.len = 0;
        for e in old
            .iter()
            .flat_map(|l| l.0.iter())
            .filter(|e| !e.is_empty())
        {
            self.place(hash_of(e), *e);
        }
        debug_assert!(self.capacity() >= entries);
    }

    /// Every entry, in table order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &E> {
        self.lines
            .iter()
            .flat_map(|l| l.0.iter())
            .filter(|e| !e.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[repr(C)]
    struct E16 {
        key: u64,
        val: u64,
    }

    impl LineEntry for E16 {
        const EMPTY: Self = E16 {
            key: u64::MAX,
            val: 0,
        };
        fn is_empty(&self) -> bool {
            self.key == u64::MAX
        }
    }

    /// A deliberately poor hash (few distinct home lines) so that clusters, wrap-around and
    /// backward shifts are exercised.
    fn h(k: u64) -> u64 {
        k % 13 + (k >> 5)
    }

    fn check(t: &LineTable<E16, 4>, model: &std::collections::HashMap<u64, u64>) {
        assert_eq!(t.len(), model.len());
        for (l, line) in t.lines.iter().enumerate() {
            let bits = line
                .0
                .iter()
                .enumerate()
                .fold(0u8, |b, (s, e)| b | u8::from(!e.is_empty()) << s);
            assert_eq!(t.occ[l], bits, "occupancy of line {l}");
        }
        assert_eq!(t.iter().count(), model.len());
        for (&k, &v) in model {
            assert_eq!(
                t.find(h(k), |e| e.key == k).map(|e| e.val),
                Some(v),
                "key {k}"
            );
        }
    }

    #[test]
    fn insert_find_remove_grow() {
        let mut t: LineTable<E16, 4> = LineTable::new();
        assert!(t.find(1, |_| true).is_none());
        let mut model = std::collections::HashMap::new();
        for k in 0..1000u64 {
            t.insert_unique(h(k), E16 { key: k, val: k * 3 }, |e| h(e.key));
            model.insert(k, k * 3);
        }
        check(&t, &model);
        for k in (0..1000u64).step_by(3) {
            assert_eq!(
                t.remove(h(k), |e| e.key == k, |e| h(e.key)).map(|e| e.val),
                Some(k * 3)
            );
            model.remove(&k);
            assert!(t.find(h(k), |e| e.key == k).is_none());
        }
        check(&t, &model);
        assert!(t.remove(h(0), |e| e.key == 0, |e| h(e.key)).is_none());
        *t.find_mut(h(1), |e| e.key == 1).unwrap() = E16 { key: 1, val: 7 };
        model.insert(1, 7);
        check(&t, &model);
    }

    #[test]
    fn reserve_keeps_entries_and_respects_the_limit() {
        let mut t: LineTable<E16, 4> = LineTable::new();
        for k in 0..100u64 {
            t.insert_unique(h(k), E16 { key: k, val: k }, |e| h(e.key));
        }
        t.reserve(10_000, 20_000, |e| h(e.key));
        assert!(t.capacity() >= 10_100);
        let lines = t.num_lines();
        t.reserve(10, 20_000, |e| h(e.key));
        assert_eq!(t.num_lines(), lines, "no growth when there is room");
        let model = (0..100u64).map(|k| (k, k)).collect();
        check(&t, &model);
        let pf = t.prefetcher();
        let first = t.find(h(5), |e| e.key == 5).unwrap() as *const E16 as usize;
        assert!(first >= pf.line_addr(0) && first < pf.line_addr(0) + t.num_lines() * 64);
    }

    proptest! {
        /// Any sequence of inserts and removes (with a clustering hash, small tables and
        /// growth) agrees with a model map, and every key stays findable.
        #[test]
        fn agrees_with_a_model(ops in proptest::collection::vec((any::<bool>(), 0u64..300), 1..600)) {
            let mut t: LineTable<E16, 4> = LineTable::new();
            let mut model = std::collections::HashMap::new();
            for (ins, k) in ops {
                if ins && !model.contains_key(&k) {
                    t.insert_unique(h(k), E16 { key: k, val: k ^ 9 }, |e| h(e.key));
                    model.insert(k, k ^ 9);
                } else if !ins {
                    let got = t.remove(h(k), |e| e.key == k, |e| h(e.key)).map(|e| e.val);
                    prop_assert_eq!(got, model.remove(&k));
                }
            }
            check(&t, &model);
        }
    }
}
