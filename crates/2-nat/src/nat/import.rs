//! The two passes of an import: validate everything, then install (cannot fail).

use super::table::{IndexHashes, NewSession};
use super::{GroupId, ImportSummary, NIL, Nat, NatError, mkey, skey};
use crate::index::{Prefetcher, SessionKey};
use crate::ports::PortProto;
use crate::record::{FLAG_INBOUND_OPENED, RECORD_VERSION, StateRecord, records};
use crate::tcp::{Dir, TcpState};
use flowshift_wire::Instant;
use flowshift_wire::packet::proto;
use foldhash::fast::FixedState;

/// How many records ahead an import prefetches the table slots it will touch.
const IMPORT_PREFETCH: usize = 8;

/// Slots of the install pass's ring of precomputed hashes (a power of two above
/// [`IMPORT_PREFETCH`]).
const AHEAD_RING: usize = (IMPORT_PREFETCH + 1).next_power_of_two();

/// The index-key hashes of one record: its session's, and its mapping's if the record is the
/// first of its mapping in the batch (the one that installs it).
#[derive(Clone, Copy, Debug, Default)]
struct RecordHashes {
    session: IndexHashes,
    mapping: IndexHashes,
}

/// A mapping of the batch being imported.
#[derive(Clone, Copy, Debug)]
struct ImportMapping {
    proto: u8,
    int_addr: u32,
    int_port: u16,
    ext_port: u16,
    /// Records of the batch under it.
    records: u32,
    /// Index of its first record.
    first: u32,
    /// Its slot once installed.
    slot: u32,
}

/// Scratch space of [`Nat::import`], kept between calls so a batch allocates nothing.
#[derive(Default)]
pub(super) struct ImportScratch {
    /// (proto, internal address, internal port) -> index in `mappings`.
    by_key: hashbrown::HashMap<u64, u32, FixedState>,
    mappings: Vec<ImportMapping>,
    /// Per record: index in `mappings`.
    rec_mapping: Vec<u32>,
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
            by_key: hashbrown::HashMap::with_hasher(hasher.clone()),
            remotes: hashbrown::HashSet::with_hasher(hasher),
            ext_ports: vec![0; 3 * 65536 / 64],
            ..ImportScratch::default()
        }
    }
}

impl Nat {
    /// The index-key hashes of record `r` of a batch for the group of external address `ext`
    /// (its mapping's too if `mapping`), with the lines their inserts will write prefetched.
    #[inline(always)]
    fn record_hashes(
        &self,
        (ext, pf_s, pf_m): (u32, Prefetcher, Prefetcher),
        r: &StateRecord,
        mapping: bool,
    ) -> RecordHashes {
        let (int_addr, int_port, ext_port) = (
            u32::from_be_bytes(r.int_addr),
            r.int_port.get(),
            r.ext_port.get(),
        );
        let (rem, rport) = (u32::from_be_bytes(r.rem_addr), r.rem_port.get());
        let (si, mi) = (&self.session_index, &self.mapping_index);
        let session = IndexHashes {
            out: si.hash(&skey(Dir::Out, r.proto, int_addr, int_port, rem, rport)),
            inn: si.hash(&skey(Dir::In, r.proto, ext, ext_port, rem, rport)),
        };
        pf_s.prefetch_insert(session.out);
        pf_s.prefetch_insert(session.inn);
        let mut h = RecordHashes {
            session,
            mapping: IndexHashes::default(),
        };
        if mapping {
            h.mapping = IndexHashes {
                out: mi.hash(&mkey(Dir::Out, r.proto, int_addr, int_port)),
                inn: mi.hash(&mkey(Dir::In, r.proto, ext, ext_port)),
            };
            pf_m.prefetch_insert(h.mapping.out);
            pf_m.prefetch_insert(h.mapping.inn);
        }
        h
    }

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
        for m in &sc.mappings {
            let pp = PortProto::from_ip_proto(m.proto).map_or(0, |p| p as usize);
            sc.ext_ports[(pp << 16 | m.ext_port as usize) / 64] = 0;
        }
        for &b in &sc.blocks_touched {
            sc.block_sub[b as usize] = 0;
        }
        debug_assert!(
            sc.ext_ports.iter().all(|&w| w == 0),
            "ext port bitmap cleared"
        );
        sc.blocks_touched.clear();
        sc.mappings.clear();
        sc.rec_mapping.clear();
        // `clear` costs the table's capacity: do not let one huge batch slow later ones.
        if sc.by_key.capacity() > 4 * recs.len().max(4096) {
            sc.by_key = hashbrown::HashMap::with_hasher(sc.by_key.hasher().clone());
        }
        if sc.remotes.capacity() > 4 * recs.len().max(4096) {
            sc.remotes = hashbrown::HashSet::with_hasher(sc.remotes.hasher().clone());
        }
        sc.by_key.clear();
        sc.remotes.clear();
        self.import_scratch = sc;
        result
    }

    /// The validation pass of an import: every check, nothing changed but `sc`.
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
            let known = match prev {
                Some((k, idx)) if k == mk => Some(idx),
                _ => {
                    let next = sc.mappings.len() as u32;
                    let idx = *sc.by_key.entry(mk).or_insert(next);
                    (idx != next).then_some(idx)
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
                    });
                    debug_assert_eq!(sc.by_key.get(&mk), Some(&idx));
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

    /// The install pass of an import (after [`import_validate`](Self::import_validate)
    /// accepted the batch): cannot fail.
    ///
    /// Software-pipelined: the index-key hashes of the record [`IMPORT_PREFETCH`] ahead are
    /// computed (once: the inserts reuse them) and the lines its inserts will write are
    /// prefetched, so the memory latencies of consecutive records overlap.
    fn import_install(
        &mut self,
        g: GroupId,
        now: Instant,
        recs: &[StateRecord],
        sc: &mut ImportScratch,
    ) -> ImportSummary {
        debug_assert_eq!(sc.rec_mapping.len(), recs.len());
        let (mappings_before, sessions_before) = (self.mapping_count, self.session_count);
        // No table grows while installing (a no-op after a large enough `reserve`).
        self.reserve(sc.mappings.len(), recs.len());
        let ext = self.group(g).expect("validated").ext;
        let table = (
            ext,
            self.session_index.prefetcher(),
            self.mapping_index.prefetcher(),
        );
        // A remote outside the range of this NAT's external addresses is not hairpinned (the
        // common case, decided without a lookup).
        let (ext_lo, ext_hi) = self
            .group_by_ext
            .keys()
            .fold((u32::MAX, 0), |(lo, hi), &a| (lo.min(a), hi.max(a)));
        let n = recs.len();
        let mut ahead = [RecordHashes::default(); AHEAD_RING];
        let first_of_mapping = |sc: &ImportScratch, i: usize| {
            sc.mappings[sc.rec_mapping[i] as usize].first == i as u32
        };
        for (j, a) in recs.iter().enumerate().take(IMPORT_PREFETCH) {
            ahead[j % AHEAD_RING] = self.record_hashes(table, a, first_of_mapping(sc, j));
        }
        // (subscriber, sessions of it installed and not counted yet).
        let mut run = (0u32, 0u32);
        for (i, (r, &idx)) in recs.iter().zip(&sc.rec_mapping).enumerate() {
            let j = i + IMPORT_PREFETCH;
            if j < n {
                let first = first_of_mapping(sc, j);
                ahead[j % AHEAD_RING] = self.record_hashes(table, &recs[j], first);
            }
            let h = ahead[i % AHEAD_RING];
            let m = &mut sc.mappings[idx as usize];
            if m.slot == NIL {
                debug_assert_eq!(
                    m.first, i as u32,
                    "a mapping is installed at its first record"
                );
                let pp = PortProto::from_ip_proto(m.proto).expect("validated");
                let change = self
                    .group_mut(g)
                    .expect("validated")
                    .ports
                    .claim_validated(m.ext_port, pp, m.int_addr);
                if let Some(c) = change {
                    self.log_block(now, g.0, c, true);
                }
                m.slot = self.install_mapping(
                    g.0,
                    m.proto,
                    m.int_addr,
                    m.int_port,
                    m.ext_port,
                    Some(h.mapping),
                );
            }
            let slot = m.slot;
            debug_assert!(
                self.mappings[slot as usize].live,
                "installing under a live mapping"
            );
            let last_seen = now - core::time::Duration::from_millis(r.idle_ms.get() as u64);
            let rem = u32::from_be_bytes(r.rem_addr);
            let hairpin = (ext_lo..=ext_hi).contains(&rem) && self.group_by_ext.contains_key(&rem);
            let new = NewSession {
                mapping: slot,
                rem_addr: rem,
                rem_port: r.rem_port.get(),
                tcp: TcpState::from_u8(r.tcp_state),
                inbound_opened: r.flags & FLAG_INBOUND_OPENED != 0,
            };
            self.install_session_uncounted(now, last_seen, new, hairpin, h.session);
            // Sessions per subscriber, counted once per run of one subscriber's records.
            let sub = u32::from_be_bytes(r.int_addr);
            if sub != run.0 {
                self.subscriber_sessions_added(run.0, run.1);
                run = (sub, 0);
            }
            run.1 += 1;
        }
        self.subscriber_sessions_added(run.0, run.1);
        debug_assert_eq!(
            self.mapping_count - mappings_before,
            sc.mappings.len() as u32
        );
        debug_assert_eq!(self.session_count - sessions_before, recs.len() as u32);
        self.counters.records_imported += recs.len() as u64;
        ImportSummary {
            mappings: sc.mappings.len() as u32,
            sessions: recs.len() as u32,
        }
    }
}
