//! The validation pass of an import (changes nothing; the install pass that follows cannot
//! fail: `import_install.rs`), and the scratch space both use.

use super::import_install::Deltas;
use super::{GroupId, ImportSummary, NIL, Nat, NatError, mkey, skey};
use crate::index::{Prefetcher, SessionKey};
use crate::ports::PortProto;
use crate::record::{FLAG_INBOUND_OPENED, RECORD_VERSION, StateRecord, records};
use crate::tcp::{Dir, TcpState};
use flowshift_wire::Instant;
use flowshift_wire::packet::proto;
use foldhash::fast::FixedState;

/// How many records ahead an import prefetches the table slots it will touch.
pub(super) const IMPORT_PREFETCH: usize = 8;

/// Slots of the install pass's ring of precomputed hashes (a power of two above
/// [`IMPORT_PREFETCH`]).
pub(super) const AHEAD_RING: usize = (IMPORT_PREFETCH + 1).next_power_of_two();

/// A mapping of the batch being imported.
#[derive(Clone, Copy, Debug)]
pub(super) struct ImportMapping {
    pub proto: u8,
    pub int_addr: u32,
    pub int_port: u16,
    pub ext_port: u16,
    /// Records of the batch under it.
    pub records: u32,
    /// Index of its first record.
    pub first: u32,
    /// Its slot once installed.
    pub slot: u32,
    /// Hash of its outbound mapping-index key (computed once, by the validation pass).
    pub h_out: u64,
    /// Its position in [`ImportScratch::keys`].
    pub pos: u32,
    /// Its sessions' checksum deltas (set with `slot`).
    pub deltas: Deltas,
}

/// Scratch space of [`Nat::import`], kept between calls so a batch allocates nothing.
#[derive(Default)]
pub(super) struct ImportScratch {
    /// Open-addressing set of the batch's mappings: (outbound mapping key, index in
    /// `mappings`), key 0 for an empty slot (no mapping key is 0: its protocol is not), linear
    /// probing from the key's hash (the mapping index's keyed hash, computed once per mapping
    /// and reused by the install pass). A power of two of slots, at least twice the records.
    pub keys: Vec<(u64, u32)>,
    pub mappings: Vec<ImportMapping>,
    /// Per record: index in `mappings`.
    pub rec_mapping: Vec<u32>,
    /// Bitmap over (port proto, external port): external ports of the batch.
    ext_ports: Vec<u64>,
    /// Per block of the group: `1 << 32 | subscriber` of the batch using it (0: none yet).
    block_sub: Vec<u64>,
    /// Blocks with a `block_sub` entry (to clear them).
    blocks_touched: Vec<u32>,
    /// Out keys of records under mappings with several records of the batch (duplicates).
    remotes: hashbrown::HashSet<SessionKey, FixedState>,
}

impl ImportScratch {
    /// Empty scratch space whose hash tables use `hasher`.
    pub(super) fn new(hasher: FixedState) -> ImportScratch {
        ImportScratch {
            remotes: hashbrown::HashSet::with_hasher(hasher),
            ext_ports: vec![0; 3 * 65536 / 64],
            ..ImportScratch::default()
        }
    }

    /// The index in `mappings` of the mapping of outbound key `key` (hash `h`) if it is in the
    /// set; else enters it with index `next` (at a position the caller records) and returns
    /// `Err(position)`.
    #[inline(always)]
    fn key_entry(&mut self, h: u64, key: u64, next: u32) -> Result<u32, u32> {
        debug_assert_ne!(key, 0);
        let mask = self.keys.len() - 1;
        // The high bits: the mapping index places by the low ones.
        let mut p = (h >> 32) as usize & mask;
        loop {
            match self.keys[p] {
                (0, _) => {
                    self.keys[p] = (key, next);
                    return Err(p as u32);
                }
                (k, idx) if k == key => return Ok(idx),
                _ => p = (p + 1) & mask,
            }
        }
    }
}

impl Nat {
    pub(super) fn import_all_or_nothing(
        &mut self,
        g: GroupId,
        now: Instant,
        bytes: &[u8],
    ) -> Result<ImportSummary, NatError> {
        let recs = records(bytes).ok_or(NatError::Import {
            index: 0,
            why: "length is not a multiple of 24",
        })?;
        self.group(g)?;
        let mut sc = std::mem::take(&mut self.import_scratch);
        let pf = self.mapping_index.prefetcher();
        let checked = self.import_validate(g, recs, &mut sc, pf);
        let result = checked.map(|()| self.import_install(g, now, recs, &mut sc));
        // Leave the scratch empty (keeping its memory) for the next batch.
        if result.is_err() {
            // A refusal may leave a key entered for a mapping that was not pushed.
            sc.keys.fill((0, 0));
        }
        for m in &sc.mappings {
            let pp = PortProto::from_ip_proto(m.proto).map_or(0, |p| p as usize);
            sc.ext_ports[(pp << 16 | m.ext_port as usize) / 64] = 0;
            sc.keys[m.pos as usize] = (0, 0);
        }
        for &b in &sc.blocks_touched {
            sc.block_sub[b as usize] = 0;
        }
        debug_assert!(
            sc.ext_ports.iter().all(|&w| w == 0),
            "ext port bitmap cleared"
        );
        debug_assert!(sc.keys.iter().all(|&(k, _)| k == 0), "key set cleared");
        sc.blocks_touched.clear();
        sc.mappings.clear();
        sc.rec_mapping.clear();
        // `clear` costs the table's capacity: do not let one huge batch slow later ones.
        if sc.keys.len() > 8 * recs.len().max(4096) {
            sc.keys = Vec::new();
        }
        if sc.remotes.capacity() > 4 * recs.len().max(4096) {
            sc.remotes = hashbrown::HashSet::with_hasher(sc.remotes.hasher().clone());
        }
        sc.remotes.clear();
        self.import_scratch = sc;
        result
    }

    /// The validation pass of an import: every check, nothing changed but `sc`.
    #[inline(never)]
    fn import_validate(
        &self,
        g: GroupId,
        recs: &[StateRecord],
        sc: &mut ImportScratch,
        pf: Prefetcher,
    ) -> Result<(), NatError> {
        let refuse = |index: usize, why: &'static str| NatError::Import { index, why };
        let group = self.group(g)?;
        let (net, mask) = (group.net, group.mask);
        let n_blocks = group.ports.n_blocks() as usize;
        if sc.block_sub.len() < n_blocks {
            sc.block_sub.resize(n_blocks, 0);
        }
        sc.rec_mapping.reserve(recs.len());
        let want = (2 * recs.len()).next_power_of_two().max(64);
        if sc.keys.len() < want {
            sc.keys = vec![(0, 0); want];
        }
        let mut prev: Option<(u64, u32)> = None;
        // Whether a subscriber may have mappings here (it holds a block), for the last one asked.
        let mut holds: (u32, bool) = (0, group.ports.holds_blocks(0));
        let mut may_have_mappings = |sub: u32| {
            if holds.0 != sub {
                holds = (sub, group.ports.holds_blocks(sub));
            }
            holds.1
        };
        for (i, r) in recs.iter().enumerate() {
            // The mapping lookup of a record a few ahead (its memory latency overlaps ours).
            if let Some(a) = recs.get(i + IMPORT_PREFETCH) {
                let sub = u32::from_be_bytes(a.int_addr);
                if may_have_mappings(sub) {
                    let mk = mkey(Dir::Out, a.proto, sub, a.int_port.get());
                    pf.prefetch(self.mapping_index.hash(&mk));
                }
            }
            if r.version != RECORD_VERSION
                || r.reserved.get() != 0
                || r.flags & !FLAG_INBOUND_OPENED != 0
            {
                return Err(refuse(i, "unknown version or reserved bits set"));
            }
            let Some(pp) = PortProto::from_ip_proto(r.proto) else {
                return Err(refuse(i, "unknown protocol"));
            };
            match (r.proto, TcpState::from_u8(r.tcp_state)) {
                (proto::TCP, None) => return Err(refuse(i, "bad TCP state")),
                (proto::TCP, Some(_)) => {}
                (_, _) if r.tcp_state != 0 => {
                    return Err(refuse(i, "TCP state on a non-TCP record"));
                }
                _ => {}
            }
            if r.proto == proto::ICMP && r.rem_port.get() != 0 {
                return Err(refuse(i, "ICMP record with a remote port"));
            }
            let int_addr = u32::from_be_bytes(r.int_addr);
            if int_addr & mask != net {
                return Err(refuse(i, "subscriber outside the group's prefix"));
            }
            let (int_port, ext_port) = (r.int_port.get(), r.ext_port.get());
            let mk = mkey(Dir::Out, r.proto, int_addr, int_port);
            // Records of a mapping usually come together: skip the lookup for a run.
            // One probe of the scratch map: a key not seen yet is entered right away with the
            // index its mapping gets below (on a refusal the whole scratch is cleared).
            let (known, h_out, pos) = match prev {
                Some((k, idx)) if k == mk => (Some(idx), 0, 0),
                _ => {
                    let h = self.mapping_index.hash(&mk);
                    match sc.key_entry(h, mk, sc.mappings.len() as u32) {
                        Ok(idx) => (Some(idx), 0, 0),
                        Err(pos) => (None, h, pos),
                    }
                }
            };
            let idx = match known {
                Some(idx) => {
                    let m = &mut sc.mappings[idx as usize];
                    if m.ext_port != ext_port {
                        return Err(refuse(i, "one mapping with two external ports"));
                    }
                    // Duplicate sessions can only be under one mapping: track the remotes of
                    // mappings with several records only.
                    let rem = |r: &StateRecord| {
                        skey(
                            Dir::Out,
                            r.proto,
                            int_addr,
                            int_port,
                            u32::from_be_bytes(r.rem_addr),
                            r.rem_port.get(),
                        )
                    };
                    if m.records == 1 {
                        sc.remotes.insert(rem(&recs[m.first as usize]));
                    }
                    m.records += 1;
                    if !sc.remotes.insert(rem(r)) {
                        return Err(refuse(i, "duplicate session"));
                    }
                    idx
                }
                None => {
                    // A subscriber that holds no block of the group has no mapping in it (the
                    // usual case for the first batch of a subscriber): no index lookup.
                    if may_have_mappings(int_addr) {
                        if self.mapping_index.contains_key(&mk) {
                            return Err(refuse(i, "mapping already present"));
                        }
                    } else {
                        debug_assert!(!self.mapping_index.contains_key(&mk));
                    }
                    let bit = (pp as usize) << 16 | ext_port as usize;
                    if sc.ext_ports[bit / 64] & 1 << (bit % 64) != 0 {
                        return Err(refuse(i, "external port twice in the batch"));
                    }
                    match group.ports.check_claim(ext_port, pp, int_addr) {
                        Ok(()) => {}
                        Err(crate::ports::ClaimError::OutOfRange) => {
                            return Err(refuse(i, "external port outside the range"));
                        }
                        Err(crate::ports::ClaimError::OwnedByOther) => {
                            return Err(refuse(i, "port block held by another subscriber"));
                        }
                        Err(crate::ports::ClaimError::AlreadyBound) => {
                            return Err(refuse(i, "external port already bound"));
                        }
                    }
                    // Two subscribers of the batch in one free block: the claim of the second
                    // would fail at install time, leaving a mapping with an unbound port.
                    let b = group
                        .ports
                        .block_of(ext_port)
                        .expect("claim checked the range");
                    debug_assert!((b as usize) < n_blocks, "block in range");
                    let tagged = 1u64 << 32 | int_addr as u64;
                    match sc.block_sub[b as usize] {
                        0 => {
                            sc.block_sub[b as usize] = tagged;
                            sc.blocks_touched.push(b);
                        }
                        t if t != tagged => {
                            return Err(refuse(i, "port block held by another subscriber"));
                        }
                        _ => {}
                    }
                    // Marked only now: the scratch clean-up clears the bits of `mappings`.
                    sc.ext_ports[bit / 64] |= 1 << (bit % 64);
                    let idx = sc.mappings.len() as u32;
                    sc.mappings.push(ImportMapping {
                        proto: r.proto,
                        int_addr,
                        int_port,
                        ext_port,
                        records: 1,
                        first: i as u32,
                        slot: NIL,
                        h_out,
                        pos,
                        deltas: Deltas::default(),
                    });
                    idx
                }
            };
            prev = Some((mk, idx));
            sc.rec_mapping.push(idx);
        }
        if self.mapping_count as usize + sc.mappings.len() > self.cfg.max_mappings as usize
            || self.session_count as usize + recs.len() > self.cfg.max_sessions as usize
        {
            return Err(refuse(0, "batch exceeds the table bounds"));
        }
        Ok(())
    }
}
