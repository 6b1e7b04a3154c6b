//! The pass of an import (`import.rs`): each record checked, then installed, journalled.
//!
//! A dedicated path rather than `install_mapping` / `install_session` once per record: every
//! mapping of a batch is new and unfrozen, so what those compute per call (the group, its
//! external address, the checksum deltas of a mapping, the timeout of a class, table growth)
//! is worked out once per batch or per mapping here. The result after the commit is the same
//! tables, counts and events as installing the records one by one (the crate's model tests
//! compare them).
//!
//! Software-pipelined: the index-key hashes of the record [`IMPORT_PREFETCH`] ahead are
//! computed (once: lookups and inserts reuse them) and the lines they will touch prefetched,
//! so the memory latencies of consecutive records overlap.

use super::import::{AHEAD_RING, IMPORT_PREFETCH, ImportScratch};
use super::table::{entry_flags, slab_insert};
use super::{
    GroupId, Mapping, NIL, Nat, NatError, S_HAIRPIN, S_INBOUND_OPENED, S_LIVE, Session, mkey, skey,
};
use crate::index::SEntry;
use crate::ports::{ClaimError, PortProto};
use crate::record::{FLAG_INBOUND_OPENED, RECORD_VERSION, StateRecord};
use crate::tcp::{Dir, TcpState, TimeoutClass};
use flowshift_wire::Instant;
use flowshift_wire::checksum::Delta;
use flowshift_wire::packet::proto;
use std::hash::BuildHasher;

/// The checksum deltas of a mapping's sessions (they depend on the mapping only), raw, for
/// the outbound entry and the inbound one.
#[derive(Clone, Copy, Debug, Default)]
struct Deltas {
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

/// The checks of a record on its own (the group's and the tables' come after).
#[inline(always)]
fn check_record(r: &StateRecord) -> Result<PortProto, &'static str> {
    if r.version != RECORD_VERSION || r.reserved.get() != 0 || r.flags & !FLAG_INBOUND_OPENED != 0 {
        return Err("unknown version or reserved bits set");
    }
    let pp = PortProto::from_ip_proto(r.proto).ok_or("unknown protocol")?;
    match pp {
        PortProto::Tcp if TcpState::from_u8(r.tcp_state).is_none() => Err("bad TCP state"),
        PortProto::Tcp => Ok(pp),
        _ if r.tcp_state != 0 => Err("TCP state on a non-TCP record"),
        PortProto::Icmp if r.rem_port.get() != 0 => Err("ICMP record with a remote port"),
        _ => Ok(pp),
    }
}

/// The hashes of a record's three index keys: mapping, outbound session, inbound session.
#[derive(Clone, Copy, Default)]
struct Hashes {
    map: u64,
    out: u64,
    inn: u64,
}

/// The mapping the current run of records belongs to.
#[derive(Clone, Copy)]
struct Current {
    /// Its outbound mapping-index key (0: none yet; no real key is 0, its protocol is not).
    key: u64,
    slot: u32,
    ext_port: u16,
    deltas: Deltas,
}

/// Why the pass stopped: a record's own fault, or a port claim refused (the message is
/// worked out afterwards, when the tables can be read again).
enum Stop {
    Refused(usize, &'static str),
    Claim(usize, u16, PortProto, ClaimError),
}

impl Nat {
    /// Checks and installs `recs` into group `g` (checked to exist) one by one, journalling
    /// into `sc`; stops at the first refusal, whose error it returns (the caller undoes the
    /// journal). Mappings get `importing` set; sessions get no expiry entry and the counts
    /// are not touched (the commit's work).
    pub(super) fn import_records(
        &mut self,
        g: GroupId,
        now: Instant,
        recs: &[StateRecord],
        sc: &mut ImportScratch,
    ) -> Result<(), NatError> {
        match self.import_pass(g, now, recs, sc) {
            Ok(()) => Ok(()),
            Err(Stop::Refused(index, why)) => Err(NatError::Import { index, why }),
            Err(Stop::Claim(index, port, pp, e)) => Err(NatError::Import {
                index,
                why: self.claim_refusal(g.0 as usize, port, pp, e),
            }),
        }
    }

    /// The loop of [`import_records`](Self::import_records), on disjoint borrows of the
    /// tables (so that their pointers stay in registers across the stores).
    #[inline(never)]
    fn import_pass(
        &mut self,
        g: GroupId,
        now: Instant,
        recs: &[StateRecord],
        sc: &mut ImportScratch,
    ) -> Result<(), Stop> {
        let Nat {
            cfg,
            groups,
            group_by_ext,
            sessions,
            session_free,
            mappings,
            mapping_free,
            mapping_count,
            session_index,
            mapping_index,
            ..
        } = self;
        let mapping_room = cfg.max_mappings.saturating_sub(*mapping_count) as usize;
        // A remote outside the range of this NAT's external addresses is not hairpinned (the
        // common case, decided without a lookup).
        let (ext_lo, ext_hi) = group_by_ext
            .keys()
            .fold((u32::MAX, 0), |(lo, hi), &a| (lo.min(a), hi.max(a)));
        let group = groups[g.0 as usize]
            .as_mut()
            .expect("checked by the caller");
        let (net, mask, ext) = (group.net, group.mask, group.ext);
        let ext_be = ext.to_be_bytes();
        let class_of = class_table();
        let now_ns = now.as_nanos();
        let (mpf, spf) = (mapping_index.prefetcher(), session_index.prefetcher());
        let (mh, sh) = (mapping_index.hasher(), session_index.hasher());
        // From the record alone (a record whose fields are wrong is refused before they are
        // used).
        let hashes = |r: &StateRecord| {
            let (rem, rport) = (u32::from_be_bytes(r.rem_addr), r.rem_port.get());
            let (int_addr, int_port) = (u32::from_be_bytes(r.int_addr), r.int_port.get());
            let h = Hashes {
                map: mh.hash_one(mkey(Dir::Out, r.proto, int_addr, int_port)),
                out: sh.hash_one(skey(Dir::Out, r.proto, int_addr, int_port, rem, rport)),
                inn: sh.hash_one(skey(Dir::In, r.proto, ext, r.ext_port.get(), rem, rport)),
            };
            mpf.prefetch_insert(h.map);
            spf.prefetch_insert(h.out);
            spf.prefetch_insert(h.inn);
            h
        };
        let mut ahead = [Hashes::default(); AHEAD_RING];
        for (j, r) in recs.iter().enumerate().take(IMPORT_PREFETCH) {
            ahead[j % AHEAD_RING] = hashes(r);
        }
        let mut cur = Current {
            key: 0,
            slot: NIL,
            ext_port: 0,
            deltas: Deltas::default(),
        };
        // (subscriber, its address delta) of the last mapping installed.
        let mut ip: (u32, Delta) = (0, Delta::NONE.replace_addr([0; 4], ext_be));
        // (subscriber, sessions of it installed and not journalled yet).
        let mut run = (0u32, 0u32);
        for (i, r) in recs.iter().enumerate() {
            if let Some(a) = recs.get(i + IMPORT_PREFETCH) {
                ahead[(i + IMPORT_PREFETCH) % AHEAD_RING] = hashes(a);
            }
            let h = ahead[i % AHEAD_RING];
            let pp = check_record(r).map_err(|why| Stop::Refused(i, why))?;
            let int_addr = u32::from_be_bytes(r.int_addr);
            if int_addr & mask != net {
                return Err(Stop::Refused(i, "subscriber outside the group's prefix"));
            }
            let (proto, int_port, ext_port) = (r.proto, r.int_port.get(), r.ext_port.get());
            let mk = mkey(Dir::Out, proto, int_addr, int_port);
            if mk != cur.key {
                cur = match mapping_index.get_hashed(h.map, &mk) {
                    Some(&slot) => {
                        // Present: only a mapping of this batch may take more records.
                        let m = &mappings[slot as usize];
                        if !m.importing {
                            return Err(Stop::Refused(i, "mapping already present"));
                        }
                        let ipd = Delta::NONE.replace_addr(m.int_addr.to_be_bytes(), ext_be);
                        Current {
                            key: mk,
                            slot,
                            ext_port: m.ext_port,
                            deltas: Deltas::of(ipd, proto, int_port, m.ext_port),
                        }
                    }
                    None => {
                        if sc.mappings.len() >= mapping_room {
                            return Err(Stop::Refused(0, "batch exceeds the table bounds"));
                        }
                        match group.ports.claim(ext_port, pp, int_addr) {
                            Ok(Some(change)) => sc.blocks.push(change),
                            Ok(None) => {}
                            Err(e) => return Err(Stop::Claim(i, ext_port, pp, e)),
                        }
                        let first = group.first_mapping;
                        let new = Mapping {
                            importing: true,
                            ..Mapping::new_live(g.0, proto, int_addr, int_port, ext_port, first)
                        };
                        let slot = slab_insert(mappings, mapping_free, new, |old, new| {
                            new.generation = old.generation
                        });
                        if first != NIL {
                            mappings[first as usize].prev = slot;
                        }
                        group.first_mapping = slot;
                        group.ports.set_mapping(ext_port, pp, Some(slot));
                        mapping_index.insert_new_hashed(h.map, mk, slot);
                        sc.mappings.push(slot);
                        // The address part depends on the subscriber only (records come
                        // subscriber by subscriber).
                        if ip.0 != int_addr {
                            ip = (int_addr, Delta::NONE.replace_addr(r.int_addr, ext_be));
                        }
                        Current {
                            key: mk,
                            slot,
                            ext_port,
                            deltas: Deltas::of(ip.1, proto, int_port, ext_port),
                        }
                    }
                };
            }
            if ext_port != cur.ext_port {
                return Err(Stop::Refused(i, "one mapping with two external ports"));
            }
            let rem = u32::from_be_bytes(r.rem_addr);
            let rport = r.rem_port.get();
            let out_key = skey(Dir::Out, proto, int_addr, int_port, rem, rport);
            let (mslot, d) = (cur.slot, cur.deltas);
            let map = &mut mappings[mslot as usize];
            // A mapping's sessions so far are this batch's: a duplicate is one of them.
            if map.sessions != 0 && session_index.get_hashed(h.out, &out_key).is_some() {
                return Err(Stop::Refused(i, "duplicate session"));
            }
            let hairpin = (ext_lo..=ext_hi).contains(&rem) && group_by_ext.contains_key(&rem);
            // Checked: a TCP record's state is 1..=7, any other's is 0.
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
            let first_session = map.first_session;
            let slot = match session_free.last() {
                Some(&f) => f,
                None => sessions.len() as u32,
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
                // The expiry entry the commit pushes (what `schedule` does for a new session).
                queued: 1 << class,
                class,
                next: first_session,
                prev: NIL,
            };
            let put = slab_insert(sessions, session_free, s, |old, new| {
                new.generation = old.generation
            });
            debug_assert_eq!(put, slot);
            if first_session != NIL {
                sessions[first_session as usize].prev = slot;
            }
            sc.sessions.push(slot);
            let ef = entry_flags(flags);
            let in_key = skey(Dir::In, proto, ext, ext_port, rem, rport);
            session_index.insert_new_hashed(
                h.out,
                SEntry::new(out_key, slot, ext, ext_port, d.ip_out, d.l4_out, ef),
            );
            session_index.insert_new_hashed(
                h.inn,
                SEntry::new(in_key, slot, int_addr, int_port, d.ip_in, d.l4_in, ef),
            );
            // Sessions per subscriber, journalled once per run of one subscriber's records.
            if int_addr != run.0 {
                if run.1 != 0 {
                    sc.runs.push(run);
                }
                run = (int_addr, 0);
            }
            run.1 += 1;
        }
        if run.1 != 0 {
            sc.runs.push(run);
        }
        Ok(())
    }

    /// Why a claim of an imported mapping's port was refused. A port bound by a mapping of
    /// this batch is reported as such (the peer sent it twice).
    #[cold]
    fn claim_refusal(&self, gi: usize, port: u16, pp: PortProto, e: ClaimError) -> &'static str {
        let ports = &self.groups[gi].as_ref().expect("checked").ports;
        let in_batch = ports
            .mapping(port, pp)
            .is_some_and(|m| self.mappings[m as usize].importing);
        match e {
            ClaimError::OutOfRange => "external port outside the range",
            _ if in_batch => "external port twice in the batch",
            ClaimError::OwnedByOther => "port block held by another subscriber",
            ClaimError::AlreadyBound => "external port already bound",
        }
    }
}
