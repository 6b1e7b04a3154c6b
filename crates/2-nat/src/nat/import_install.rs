//! The install pass of an import, after the validation pass (`import.rs`) accepted the batch:
//! cannot fail.
//!
//! A dedicated path rather than `install_mapping` / `install_session` once per record: every
//! mapping of a batch is new and unfrozen, so what those compute per call (the group, its
//! external address, the checksum deltas of a mapping, the timeout of a class, table growth,
//! counts) is worked out once per batch or per mapping here, and each record costs its slab
//! slots, its three index entries, its port-table entry and its wheel entry. The result is
//! the same tables, counts and events as installing the records one by one (the crate's
//! model tests compare them).
//!
//! Software-pipelined: the index-key hashes of the record [`IMPORT_PREFETCH`] ahead are
//! computed (once: the inserts reuse them) and the lines its inserts will write are
//! prefetched, so the memory latencies of consecutive records overlap.

use super::import::{AHEAD_RING, IMPORT_PREFETCH, ImportScratch};
use super::table::{entry_flags, slab_insert};
use super::{
    GroupId, ImportSummary, Mapping, NIL, Nat, S_HAIRPIN, S_INBOUND_OPENED, S_LIVE, Session, mkey,
    skey,
};
use crate::index::SEntry;
use crate::ports::PortProto;
use crate::record::{FLAG_INBOUND_OPENED, StateRecord};
use crate::tcp::{Dir, TcpState, TimeoutClass};
use crate::wheel::WheelEntry;
use flowshift_wire::Instant;
use flowshift_wire::checksum::Delta;
use flowshift_wire::packet::proto;

/// The checksum deltas of a mapping's sessions (they depend on the mapping only), raw, for
/// the outbound entry and the inbound one.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Deltas {
    ip_out: u16,
    l4_out: u16,
    ip_in: u16,
    l4_in: u16,
}

impl Deltas {
    /// As `install_session` computes them, from the address part `ip` (the internal address
    /// replaced by the external one).
    fn of(ip: Delta, proto: u8, int_port: u16, ext_port: u16) -> Deltas {
        let l4 = if proto == proto::ICMP {
            Delta::NONE.replace(int_port, ext_port)
        } else {
            ip.replace(int_port, ext_port)
        };
        Deltas {
            ip_out: ip.to_raw(),
            l4_out: l4.to_raw(),
            ip_in: ip.inverse().to_raw(),
            l4_in: l4.inverse().to_raw(),
        }
    }
}

/// Timeout class of a record's session by TCP state byte (index 8: UDP, 9: ICMP), as
/// `install_session` derives it.
fn class_table() -> [u8; 10] {
    let mut t = [TimeoutClass::Udp as u8; 10];
    for (v, c) in t.iter_mut().enumerate().take(8) {
        if let Some(s) = TcpState::from_u8(v as u8) {
            *c = s.class() as u8;
        }
    }
    t[9] = TimeoutClass::Icmp as u8;
    t
}

impl Nat {
    /// The install pass (see the module documentation): the mappings, then the sessions.
    pub(super) fn import_install(
        &mut self,
        g: GroupId,
        now: Instant,
        recs: &[StateRecord],
        sc: &mut ImportScratch,
    ) -> ImportSummary {
        debug_assert_eq!(sc.rec_mapping.len(), recs.len());
        let (n, n_maps) = (recs.len(), sc.mappings.len());
        let (mappings_before, sessions_before) = (self.mapping_count, self.session_count);
        // No table grows while installing (a no-op after a large enough `reserve`).
        self.reserve(n_maps, n);
        let ext = self.groups[g.0 as usize].as_ref().expect("validated").ext;
        self.import_mappings(g, now, ext, sc);
        self.import_sessions(g, now, ext, recs, sc);
        let group = self.groups[g.0 as usize].as_mut().expect("validated");
        group.mappings += n_maps as u32;
        group.sessions += n as u32;
        self.mapping_count += n_maps as u32;
        self.session_count += n as u32;
        self.counters.mappings_created += n_maps as u64;
        self.counters.sessions_created += n as u64;
        self.counters.records_imported += n as u64;
        self.debug_check_counts();
        debug_assert_eq!(self.mapping_count - mappings_before, n_maps as u32);
        debug_assert_eq!(self.session_count - sessions_before, n as u32);
        ImportSummary {
            mappings: n_maps as u32,
            sessions: n as u32,
        }
    }

    /// Installs the batch's mappings (validated, none present): claims each one's port and
    /// records the mapping in the group's port table, puts it in the slab at the head of the
    /// group's list and in the mapping index; records its slot and checksum deltas in `sc`.
    /// Counts are the caller's to add.
    #[inline(never)]
    fn import_mappings(&mut self, g: GroupId, now: Instant, ext: u32, sc: &mut ImportScratch) {
        let pf = self.mapping_index.prefetcher();
        for m in sc.mappings.iter().take(IMPORT_PREFETCH) {
            pf.prefetch_insert(m.h_out);
        }
        let mut first = self.groups[g.0 as usize]
            .as_ref()
            .expect("validated")
            .first_mapping;
        let ext_be = ext.to_be_bytes();
        // (subscriber, its address delta) of the last mapping.
        let mut ip: Option<(u32, Delta)> = None;
        for i in 0..sc.mappings.len() {
            if let Some(a) = sc.mappings.get(i + IMPORT_PREFETCH) {
                pf.prefetch_insert(a.h_out);
            }
            let m = sc.mappings[i];
            let new = Mapping::new_live(g.0, m.proto, m.int_addr, m.int_port, m.ext_port, first);
            let slot = slab_insert(
                &mut self.mappings,
                &mut self.mapping_free,
                new,
                |old, new| new.generation = old.generation,
            );
            if first != NIL {
                self.mappings[first as usize].prev = slot;
            }
            first = slot;
            let pp = PortProto::from_ip_proto(m.proto).expect("validated");
            let ports = &mut self.groups[g.0 as usize].as_mut().expect("validated").ports;
            let change = ports.claim_validated(m.ext_port, pp, m.int_addr);
            ports.set_mapping(m.ext_port, pp, Some(slot));
            if let Some(c) = change {
                self.log_block(now, g.0, c, true);
            }
            self.mapping_index.insert_new_hashed(
                m.h_out,
                mkey(Dir::Out, m.proto, m.int_addr, m.int_port),
                slot,
            );
            // The address part depends on the subscriber only (records come subscriber by
            // subscriber).
            let ip_delta = match ip {
                Some((sub, d)) if sub == m.int_addr => d,
                _ => {
                    let d = Delta::NONE.replace_addr(m.int_addr.to_be_bytes(), ext_be);
                    ip = Some((m.int_addr, d));
                    d
                }
            };
            let sm = &mut sc.mappings[i];
            sm.slot = slot;
            sm.deltas = Deltas::of(ip_delta, m.proto, m.int_port, m.ext_port);
        }
        self.groups[g.0 as usize]
            .as_mut()
            .expect("validated")
            .first_mapping = first;
    }

    /// Installs the batch's sessions under their mappings (installed by
    /// [`import_mappings`](Self::import_mappings)): slab, index entries, wheel entry,
    /// per-subscriber counts. The other counts are the caller's to add.
    #[inline(never)]
    fn import_sessions(
        &mut self,
        g: GroupId,
        now: Instant,
        ext: u32,
        recs: &[StateRecord],
        sc: &ImportScratch,
    ) {
        let pf = self.session_index.prefetcher();
        // The hashes of a record's index keys, from the record alone (validated: its fields
        // are its mapping's).
        let hashes = |nat: &Nat, r: &StateRecord| {
            let (rem, rport) = (u32::from_be_bytes(r.rem_addr), r.rem_port.get());
            let (int_addr, int_port) = (u32::from_be_bytes(r.int_addr), r.int_port.get());
            let si = &nat.session_index;
            let out = si.hash(&skey(Dir::Out, r.proto, int_addr, int_port, rem, rport));
            let inn = si.hash(&skey(Dir::In, r.proto, ext, r.ext_port.get(), rem, rport));
            pf.prefetch_insert(out);
            pf.prefetch_insert(inn);
            (out, inn)
        };
        // A remote outside the range of this NAT's external addresses is not hairpinned (the
        // common case, decided without a lookup).
        let (ext_lo, ext_hi) = self
            .group_by_ext
            .keys()
            .fold((u32::MAX, 0), |(lo, hi), &a| (lo.min(a), hi.max(a)));
        // Per timeout class: how long after its `last_seen` a session is checked (`schedule`).
        let limit_ns = [0u8, 1, 2, 3].map(|c| self.idle_limit_ns(c));
        let class_of = class_table();
        let now_ns = now.as_nanos();
        let mut ahead = [(0u64, 0u64); AHEAD_RING];
        for (j, r) in recs.iter().enumerate().take(IMPORT_PREFETCH) {
            ahead[j % AHEAD_RING] = hashes(self, r);
        }
        // (subscriber, sessions of it installed and not counted yet).
        let mut run = (0u32, 0u32);
        for (i, r) in recs.iter().enumerate() {
            if let Some(a) = recs.get(i + IMPORT_PREFETCH) {
                ahead[(i + IMPORT_PREFETCH) % AHEAD_RING] = hashes(self, a);
            }
            let (h_out, h_in) = ahead[i % AHEAD_RING];
            let m = &sc.mappings[sc.rec_mapping[i] as usize];
            let (mslot, d) = (m.slot, m.deltas);
            let (proto, int_addr, int_port, ext_port) =
                (m.proto, m.int_addr, m.int_port, m.ext_port);
            let rem = u32::from_be_bytes(r.rem_addr);
            let rport = r.rem_port.get();
            let hairpin = (ext_lo..=ext_hi).contains(&rem) && self.group_by_ext.contains_key(&rem);
            // Validated: a TCP record's state is 1..=7, any other's is 0.
            let class = match proto {
                proto::TCP => class_of[(r.tcp_state & 7) as usize],
                proto::ICMP => class_of[9],
                _ => class_of[8],
            };
            let mut flags = S_LIVE;
            if hairpin {
                flags |= S_HAIRPIN;
            }
            if r.flags & FLAG_INBOUND_OPENED != 0 {
                flags |= S_INBOUND_OPENED;
            }
            let last_seen_ns = now_ns.saturating_sub(u64::from(r.idle_ms.get()) * 1_000_000);
            let map = &mut self.mappings[mslot as usize];
            let first_session = map.first_session;
            let slot = match self.session_free.last() {
                Some(&f) => f,
                None => self.sessions.len() as u32,
            };
            map.first_session = slot;
            map.sessions += 1;
            let s = Session {
                int_addr,
                rem_addr: rem,
                int_port,
                ext_port,
                rem_port: rport,
                group: g.0,
                mapping: mslot,
                generation: 0,
                last_seen: Instant::from_nanos(last_seen_ns),
                ip_delta: d.ip_out,
                l4_delta: d.l4_out,
                proto,
                tcp: r.tcp_state,
                flags,
                // Scheduled below (what `schedule` does for a new session).
                queued: 1 << class,
                class,
                next: first_session,
                prev: NIL,
            };
            let put = slab_insert(&mut self.sessions, &mut self.session_free, s, |old, new| {
                new.generation = old.generation
            });
            debug_assert_eq!(put, slot);
            let generation = self.sessions[slot as usize].generation;
            if first_session != NIL {
                self.sessions[first_session as usize].prev = slot;
            }
            let ef = entry_flags(flags);
            let out_key = skey(Dir::Out, proto, int_addr, int_port, rem, rport);
            let in_key = skey(Dir::In, proto, ext, ext_port, rem, rport);
            let si = &mut self.session_index;
            si.insert_new_hashed(
                h_out,
                SEntry::new(out_key, slot, ext, ext_port, d.ip_out, d.l4_out, ef),
            );
            si.insert_new_hashed(
                h_in,
                SEntry::new(in_key, slot, int_addr, int_port, d.ip_in, d.l4_in, ef),
            );
            let deadline =
                Instant::from_nanos(last_seen_ns.saturating_add(limit_ns[class as usize]));
            let entry = WheelEntry {
                slot,
                generation,
                class,
            };
            self.wheel.push(now, deadline, entry);
            // Sessions per subscriber, counted once per run of one subscriber's records.
            if int_addr != run.0 {
                self.subscriber_sessions_added(run.0, run.1);
                run = (int_addr, 0);
            }
            run.1 += 1;
        }
        self.subscriber_sessions_added(run.0, run.1);
    }
}
