//! Table management: the mapping and session slabs, their indexes, install and remove.

use super::{
    Mapping, MappingId, NIL, Nat, NatError, RemoveCause, S_FROZEN, S_HAIRPIN, S_INBOUND_OPENED,
    S_LIVE, Session, mkey, skey,
};
use crate::counters::DropReason;
use crate::index::{E_FROZEN, E_HAIRPIN, SEntry};
use crate::ports::{AllocError, PortProto};
use crate::tcp::{Dir, TcpState, TimeoutClass};
use flowshift_wire::Instant;
use flowshift_wire::checksum::Delta;
use flowshift_wire::packet::proto;

/// The hashes of the two index keys of a mapping or of a session (outbound, inbound).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct IndexHashes {
    pub out: u64,
    pub inn: u64,
}

/// A session to install under an existing mapping.
#[derive(Clone, Copy, Debug)]
pub(super) struct NewSession {
    /// Slot of its (live) mapping.
    pub mapping: u32,
    /// Remote address and port (port 0 for ICMP).
    pub rem_addr: u32,
    pub rem_port: u16,
    /// TCP state (`None` for UDP and ICMP).
    pub tcp: Option<TcpState>,
    /// Opened by an inbound packet (endpoint-independent filtering let it in).
    pub inbound_opened: bool,
}

impl Nat {
    /// The O(1) table invariants, checked (in debug builds) after every install and remove:
    /// each slab slot is live or on its free list, each live entry has two index entries, and
    /// the counts are within their bounds.
    #[inline]
    pub(super) fn debug_check_counts(&self) {
        debug_assert_eq!(
            self.sessions.len(),
            self.session_count as usize + self.session_free.len(),
            "session slab: live + free = slots"
        );
        debug_assert_eq!(
            self.mappings.len(),
            self.mapping_count as usize + self.mapping_free.len(),
            "mapping slab: live + free = slots"
        );
        debug_assert_eq!(
            self.session_index.len(),
            2 * self.session_count as usize,
            "two index entries per session"
        );
        debug_assert_eq!(
            self.mapping_index.len(),
            self.mapping_count as usize,
            "one index entry per mapping"
        );
        debug_assert!(self.session_count <= self.cfg.max_sessions, "session bound");
        debug_assert!(self.mapping_count <= self.cfg.max_mappings, "mapping bound");
    }

    pub(super) fn mapping_id(&self, slot: u32) -> MappingId {
        debug_assert!(
            self.mappings.get(slot as usize).is_some_and(|m| m.live),
            "handle of a live mapping"
        );
        MappingId {
            slot,
            generation: self.mappings[slot as usize].generation,
        }
    }

    pub(super) fn live_mapping(&self, id: MappingId) -> Result<&Mapping, NatError> {
        self.mappings
            .get(id.slot as usize)
            .filter(|m| m.live && m.generation == id.generation)
            .ok_or(NatError::NoMapping)
    }

    pub(super) fn create_mapping(
        &mut self,
        now: Instant,
        g: u16,
        proto: u8,
        int_addr: u32,
        int_port: u16,
    ) -> Result<u32, DropReason> {
        if self.mapping_count >= self.cfg.max_mappings {
            return Err(DropReason::MappingTableFull);
        }
        if self.session_count >= self.cfg.max_sessions {
            return Err(DropReason::SessionTableFull);
        }
        // Before a port (maybe a block) is taken for a session that would be refused.
        if !self.subscriber_has_room(int_addr) {
            return Err(DropReason::SubscriberSessionLimit);
        }
        let pp = PortProto::from_ip_proto(proto).ok_or(DropReason::UnsupportedProtocol)?;
        let group = self.groups[g as usize]
            .as_mut()
            .ok_or(DropReason::NotOurs)?;
        let (ext_port, change) =
            group
                .ports
                .allocate(int_addr, pp, &mut self.rng)
                .map_err(|e| match e {
                    AllocError::SubscriberLimit => DropReason::SubscriberPortLimit,
                    AllocError::PoolExhausted => DropReason::PoolExhausted,
                })?;
        if let Some(c) = change {
            self.log_block(now, g, c, false);
        }
        Ok(self.install_mapping(g, proto, int_addr, int_port, ext_port))
    }

    /// Inserts a mapping whose port is already bound in the group's blocks: in the slab, the
    /// mapping index (outbound key) and the group's port table (inbound lookup).
    pub(super) fn install_mapping(
        &mut self,
        g: u16,
        proto: u8,
        int_addr: u32,
        int_port: u16,
        ext_port: u16,
    ) -> u32 {
        let first = self.groups[g as usize]
            .as_ref()
            .expect("caller checked the group")
            .first_mapping;
        let m = Mapping::new_live(g, proto, int_addr, int_port, ext_port, first);
        debug_assert!(
            self.mapping_free
                .last()
                .is_none_or(|&f| self.mappings.get(f as usize).is_some_and(|m| !m.live)),
            "the mapping slot to reuse is free"
        );
        let slot = slab_insert(&mut self.mappings, &mut self.mapping_free, m, |old, new| {
            new.generation = old.generation
        });
        if first != NIL {
            self.mappings[first as usize].prev = slot;
        }
        let group = self.groups[g as usize]
            .as_mut()
            .expect("caller checked the group");
        group.first_mapping = slot;
        group.mappings += 1;
        let pp = PortProto::from_ip_proto(proto).expect("a bound port's protocol");
        group.ports.set_mapping(ext_port, pp, Some(slot));
        let key = mkey(Dir::Out, proto, int_addr, int_port);
        let hash = self.mapping_index.hash(&key);
        self.mapping_index.insert_new_hashed(hash, key, slot);
        self.mapping_count += 1;
        self.counters.mappings_created += 1;
        self.debug_check_counts();
        slot
    }

    pub(super) fn create_session(
        &mut self,
        now: Instant,
        m: u32,
        rem_addr: u32,
        rem_port: u16,
        tcp: Option<TcpState>,
        inbound_opened: bool,
    ) -> Result<u32, DropReason> {
        if self.session_count >= self.cfg.max_sessions {
            return Err(DropReason::SessionTableFull);
        }
        if !self.subscriber_has_room(self.mappings[m as usize].int_addr) {
            return Err(DropReason::SubscriberSessionLimit);
        }
        if self.mappings[m as usize].sessions >= self.cfg.max_sessions_per_mapping {
            return Err(DropReason::SessionsPerMappingLimit);
        }
        let new = NewSession {
            mapping: m,
            rem_addr,
            rem_port,
            tcp,
            inbound_opened,
        };
        Ok(self.install_session(now, now, new))
    }

    /// Installs session `new` (no limit checked: callers did), last seen at `last_seen`.
    pub(super) fn install_session(
        &mut self,
        now: Instant,
        last_seen: Instant,
        new: NewSession,
    ) -> u32 {
        let NewSession {
            mapping: m,
            rem_addr,
            rem_port,
            ..
        } = new;
        let map = &self.mappings[m as usize];
        let (proto, int_addr, int_port, ext_port, g) = (
            map.proto,
            map.int_addr,
            map.int_port,
            map.ext_port,
            map.group,
        );
        let ext = self.groups[g as usize].as_ref().map_or(0, |g| g.ext);
        let hashes = IndexHashes {
            out: self.session_index.hash(&skey(
                Dir::Out,
                proto,
                int_addr,
                int_port,
                rem_addr,
                rem_port,
            )),
            inn: self
                .session_index
                .hash(&skey(Dir::In, proto, ext, ext_port, rem_addr, rem_port)),
        };
        let hairpin = self.group_by_ext.contains_key(&rem_addr);
        self.install_session_hashed(now, last_seen, new, hairpin, hashes)
    }

    /// [`install_session`](Self::install_session) with the hashes of the session's index keys
    /// and whether its remote is an external address of this NAT (`hairpin`) worked out by
    /// the caller.
    pub(super) fn install_session_hashed(
        &mut self,
        now: Instant,
        last_seen: Instant,
        new: NewSession,
        hairpin: bool,
        hashes: IndexHashes,
    ) -> u32 {
        let sub = self.mappings[new.mapping as usize].int_addr;
        let slot = self.install_session_uncounted(now, last_seen, new, hairpin, hashes);
        self.subscriber_sessions_added(sub, 1);
        slot
    }

    /// [`install_session_hashed`](Self::install_session_hashed) without the per-subscriber
    /// count: the caller must add the session with
    /// [`subscriber_sessions_added`](Self::subscriber_sessions_added) before it next reads
    /// the counts (an import counts a run of one subscriber's sessions at once).
    pub(super) fn install_session_uncounted(
        &mut self,
        now: Instant,
        last_seen: Instant,
        new: NewSession,
        hairpin: bool,
        hashes: IndexHashes,
    ) -> u32 {
        let NewSession {
            mapping: m,
            rem_addr,
            rem_port,
            tcp,
            inbound_opened,
        } = new;
        debug_assert_eq!(hairpin, self.group_by_ext.contains_key(&rem_addr));
        debug_assert!(
            self.mappings.get(m as usize).is_some_and(|m| m.live),
            "session under a live mapping"
        );
        let map = &self.mappings[m as usize];
        let (proto, int_addr, int_port, ext_port, g, first) = (
            map.proto,
            map.int_addr,
            map.int_port,
            map.ext_port,
            map.group,
            map.first_session,
        );
        let ext = self.groups[g as usize].as_ref().map_or(0, |g| g.ext);
        let ip_delta = Delta::NONE.replace_addr(int_addr.to_be_bytes(), ext.to_be_bytes());
        let l4_delta = if proto == proto::ICMP {
            Delta::NONE.replace(int_port, ext_port)
        } else {
            ip_delta.replace(int_port, ext_port)
        };
        let class = match (proto, tcp) {
            (proto::TCP, Some(t)) => t.class(),
            (proto::ICMP, _) => TimeoutClass::Icmp,
            _ => TimeoutClass::Udp,
        } as u8;
        let mut flags = S_LIVE;
        if hairpin {
            flags |= S_HAIRPIN;
        }
        if inbound_opened {
            flags |= S_INBOUND_OPENED;
        }
        if self.mappings[m as usize].frozen {
            flags |= S_FROZEN;
        }
        let s = Session {
            int_addr,
            rem_addr,
            int_port,
            ext_port,
            rem_port,
            group: g,
            mapping: m,
            generation: 0,
            last_seen,
            ip_delta: ip_delta.to_raw(),
            l4_delta: l4_delta.to_raw(),
            proto,
            tcp: tcp.map_or(0, |t| t as u8),
            flags,
            queued: 0,
            class,
            next: first,
            prev: NIL,
        };
        debug_assert!(
            self.session_free.last().is_none_or(|&f| self
                .sessions
                .get(f as usize)
                .is_some_and(|s| s.flags & S_LIVE == 0)),
            "the session slot to reuse is free"
        );
        let slot = slab_insert(&mut self.sessions, &mut self.session_free, s, |old, new| {
            new.generation = old.generation
        });
        if first != NIL {
            self.sessions[first as usize].prev = slot;
        }
        let map = &mut self.mappings[m as usize];
        map.first_session = slot;
        map.sessions += 1;
        if let Some(group) = self.groups[g as usize].as_mut() {
            group.sessions += 1;
        }
        let ef = entry_flags(flags);
        self.session_index.insert_new_hashed(
            hashes.out,
            SEntry::new(
                skey(Dir::Out, proto, int_addr, int_port, rem_addr, rem_port),
                slot,
                ext,
                ext_port,
                ip_delta.to_raw(),
                l4_delta.to_raw(),
                ef,
            ),
        );
        self.session_index.insert_new_hashed(
            hashes.inn,
            SEntry::new(
                skey(Dir::In, proto, ext, ext_port, rem_addr, rem_port),
                slot,
                int_addr,
                int_port,
                ip_delta.inverse().to_raw(),
                l4_delta.inverse().to_raw(),
                ef,
            ),
        );
        self.session_count += 1;
        self.counters.sessions_created += 1;
        self.debug_check_counts();
        self.schedule(now, slot);
        slot
    }

    /// Removes a session; removes its mapping too if it was the last one.
    pub(super) fn remove_session(&mut self, now: Instant, slot: u32, cause: RemoveCause) {
        debug_assert!(
            (slot as usize) < self.sessions.len(),
            "session slot in range"
        );
        let s = &mut self.sessions[slot as usize];
        if s.flags & S_LIVE == 0 {
            return;
        }
        let (proto, int_addr, int_port, ext_port, rem_addr, rem_port, g, m, next, prev) = (
            s.proto, s.int_addr, s.int_port, s.ext_port, s.rem_addr, s.rem_port, s.group,
            s.mapping, s.next, s.prev,
        );
        s.flags = 0;
        s.queued = 0;
        s.generation = s.generation.wrapping_add(1);
        s.next = NIL;
        s.prev = NIL;
        self.session_free.push(slot);
        let ext = self.groups[g as usize].as_ref().map_or(0, |g| g.ext);
        let out = self.session_index.remove(&skey(
            Dir::Out,
            proto,
            int_addr,
            int_port,
            rem_addr,
            rem_port,
        ));
        let inn =
            self.session_index
                .remove(&skey(Dir::In, proto, ext, ext_port, rem_addr, rem_port));
        debug_assert!(
            out.is_some_and(|e| e.slot == slot) && inn.is_some_and(|e| e.slot == slot),
            "both index entries of session {slot} removed"
        );
        if next != NIL {
            self.sessions[next as usize].prev = prev;
        }
        if prev != NIL {
            self.sessions[prev as usize].next = next;
        } else {
            self.mappings[m as usize].first_session = next;
        }
        self.mappings[m as usize].sessions -= 1;
        self.session_count -= 1;
        self.subscriber_session_removed(int_addr);
        if let Some(group) = self.groups[g as usize].as_mut() {
            group.sessions -= 1;
        }
        debug_assert!(
            self.mappings[m as usize].live,
            "a live session's mapping is live"
        );
        self.remove_mapping_if_empty(now, m, cause);
        self.debug_check_counts();
    }

    pub(super) fn remove_mapping_if_empty(&mut self, now: Instant, m: u32, cause: RemoveCause) {
        debug_assert!((m as usize) < self.mappings.len(), "mapping slot in range");
        let map = &mut self.mappings[m as usize];
        if !map.live || map.sessions != 0 {
            return;
        }
        let (proto, int_addr, int_port, ext_port, g, next, prev) = (
            map.proto,
            map.int_addr,
            map.int_port,
            map.ext_port,
            map.group,
            map.next,
            map.prev,
        );
        map.live = false;
        map.frozen = false;
        map.generation = map.generation.wrapping_add(1);
        map.next = NIL;
        map.prev = NIL;
        self.mapping_free.push(m);
        self.mapping_count -= 1;
        self.counters.mappings_removed += 1;
        if next != NIL {
            self.mappings[next as usize].prev = prev;
        }
        if prev != NIL {
            self.mappings[prev as usize].next = next;
        }
        let Some(group) = self.groups[g as usize].as_mut() else {
            return;
        };
        if prev == NIL {
            group.first_mapping = next;
        }
        group.mappings -= 1;
        let change = PortProto::from_ip_proto(proto).and_then(|pp| {
            group.ports.set_mapping(ext_port, pp, None);
            group.ports.release(ext_port, pp)
        });
        self.mapping_index
            .remove(&mkey(Dir::Out, proto, int_addr, int_port));
        if let Some(c) = change {
            self.log_block(now, g, c, cause == RemoveCause::Migrated);
        }
    }
}

/// Makes room for `new_slots` more slots at the end of `slab`: amortised growth (at least
/// double) but never past `bound` slots unless asked to; freshly allocated memory is written
/// once (page faults here, not at the inserts that follow). The free list gets room for every
/// slot too (see [`free_list_room`]).
pub(super) fn grow_slab<T: Default>(
    slab: &mut Vec<T>,
    free: &mut Vec<u32>,
    new_slots: usize,
    bound: usize,
) {
    if slab.capacity() - slab.len() < new_slots {
        let want = slab.len() + new_slots;
        let target = want.max(slab.capacity().saturating_mul(2).min(bound));
        slab.reserve_exact(target - slab.len());
        crate::memory::advise_huge(slab.spare_capacity_mut());
        for slot in slab.spare_capacity_mut() {
            slot.write(T::default());
        }
        debug_assert!(slab.capacity() >= want);
    }
    free_list_room(free, slab.capacity());
}

/// Gives a slab's free list room for all `slots` of the slab, written once, so that a removal
/// never grows it nor touches fresh memory. Why: with a million slots, the first write to each
/// fresh 2 MiB page of the list (transparent huge pages) stalled a migration's removals, and
/// with them the packet thread, for 5-11 ms (`flowshift bench stall --states 1000000`).
#[inline]
pub(super) fn free_list_room(free: &mut Vec<u32>, slots: usize) {
    if free.capacity() < slots {
        free.reserve_exact(slots - free.len());
        crate::memory::advise_huge(free.spare_capacity_mut());
        free.spare_capacity_mut()
            .fill(core::mem::MaybeUninit::new(0));
    }
}

/// The index-entry flags of a session with flags `s_flags`.
#[inline(always)]
pub(super) fn entry_flags(s_flags: u8) -> u8 {
    (if s_flags & S_FROZEN != 0 { E_FROZEN } else { 0 })
        | (if s_flags & S_HAIRPIN != 0 {
            E_HAIRPIN
        } else {
            0
        })
}

/// Puts `item` in a free slot of `slab` (keeping what `keep` copies from the slot's previous
/// occupant, i.e. its generation) or at the end; returns the slot.
pub(super) fn slab_insert<T>(
    slab: &mut Vec<T>,
    free: &mut Vec<u32>,
    mut item: T,
    keep: impl Fn(&T, &mut T),
) -> u32 {
    match free.pop() {
        Some(slot) => {
            debug_assert!((slot as usize) < slab.len(), "free slot in range");
            keep(&slab[slot as usize], &mut item);
            slab[slot as usize] = item;
            slot
        }
        None => {
            debug_assert!(slab.len() < NIL as usize, "slot numbers stay below NIL");
            slab.push(item);
            free_list_room(free, slab.capacity());
            (slab.len() - 1) as u32
        }
    }
}
