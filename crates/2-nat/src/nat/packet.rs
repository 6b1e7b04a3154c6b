//! The packet path: `process`, `process_batch` and its fast path, and the full path's
//! dispatch.

use super::inbound::Ingress;
use super::rewrite::Rewrite;
use super::{GroupId, GroupMode, MappingId, NIL, Nat, S_FROZEN, S_HAIRPIN, S_LIVE, Verdict, skey};
use crate::config::IpOptionsPolicy;
use crate::counters::DropReason;
use crate::index::{E_FROZEN, E_HAIRPIN, SEntry, SessionKey, TICK_MASK};
use crate::tcp::Dir;
use flowshift_wire::Instant;
use flowshift_wire::checksum::Delta;
use flowshift_wire::packet::{
    self, IcmpKind, Ipv4Header, L4, ParseError, icmp_kind, proto, tcp_flags,
};

pub(super) fn parse_drop(e: ParseError) -> DropReason {
    match e {
        ParseError::Truncated => DropReason::Truncated,
        ParseError::NotIpv4 => DropReason::NotIpv4,
        ParseError::BadHeaderLength => DropReason::BadHeaderLength,
        ParseError::BadTotalLength => DropReason::BadTotalLength,
        ParseError::BadIpChecksum => DropReason::BadIpChecksum,
        ParseError::L4Truncated => DropReason::L4Truncated,
    }
}

/// The transport fields of a packet, oriented: `lport` is the subscriber side's port (internal
/// on outbound packets, external on inbound ones), `rport` the remote's. ICMP queries use the
/// identifier as `lport` and 0 as `rport`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Flow {
    pub(super) proto: u8,
    pub(super) lport: u16,
    pub(super) rport: u16,
    pub(super) tcp_flags: u8,
    pub(super) icmp_request: bool,
}

/// `(protocol, source port, destination port, TCP flags)` of a TCP or UDP header; an ICMP
/// header comes back as `Err((type, identifier))`.
#[inline(always)]
pub(super) fn ports_of(l4: L4) -> Result<(u8, u16, u16, u8), (u8, u16)> {
    match l4 {
        L4::Tcp {
            src_port,
            dst_port,
            flags,
        } => Ok((proto::TCP, src_port, dst_port, flags)),
        L4::Udp { src_port, dst_port } => Ok((proto::UDP, src_port, dst_port, 0)),
        L4::Icmp { ty, ident, .. } => Err((ty, ident)),
    }
}

impl Flow {
    /// The flow of a TCP or UDP packet travelling `dir` (inbound: the destination port is the
    /// subscriber side's); an ICMP header comes back as `Err((type, identifier))`.
    pub(super) fn of_ports(l4: L4, dir: Dir) -> Result<Flow, (u8, u16)> {
        let (proto, src_port, dst_port, tcp_flags) = ports_of(l4)?;
        let (lport, rport) = match dir {
            Dir::Out => (src_port, dst_port),
            Dir::In => (dst_port, src_port),
        };
        Ok(Flow {
            proto,
            lport,
            rport,
            tcp_flags,
            icmp_request: false,
        })
    }

    /// The flow of an ICMP query (`request`) or reply with this identifier.
    pub(super) fn icmp_query(ident: u16, request: bool) -> Flow {
        Flow {
            proto: proto::ICMP,
            lport: ident,
            rport: 0,
            tcp_flags: 0,
            icmp_request: request,
        }
    }
}

/// What the batch path's first pass learns about a packet.
#[derive(Clone, Copy, Debug)]
pub(super) struct FastMeta {
    key: SessionKey,
    /// The key's hash in the session index.
    hash: u64,
    ihl: u16,
    proto: u8,
    tcp_flags: u8,
    inbound: bool,
}

impl FastMeta {
    const NONE: FastMeta = FastMeta {
        key: SessionKey(0, 0),
        hash: 0,
        ihl: 0,
        proto: 0,
        tcp_flags: 0,
        inbound: false,
    };
}

/// A hint to the CPU to fetch the cache line at `ptr`; no effect on program semantics.
#[inline(always)]
fn prefetch<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults and does not dereference in the
    // language's sense, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch(ptr as *const i8, core::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// What a batch's lookup pass found for a packet: `slot == NIL` sends it to the full path.
#[derive(Clone, Copy, Debug)]
pub(super) struct FastHit {
    slot: u32,
    addr: u32,
    port: u16,
    ip_delta: u16,
    l4_delta: u16,
    /// Write the session's `last_seen` (first refresh of this entry in this tick).
    write: bool,
}

impl FastHit {
    const MISS: FastHit = FastHit {
        slot: NIL,
        addr: 0,
        port: 0,
        ip_delta: 0,
        l4_delta: 0,
        write: false,
    };
}

impl Nat {
    /// Translates one IPv4 packet in place (`pkt` starts at the IPv4 header; bytes past the
    /// total length are ignored) and says where it goes. The packet is modified only when the
    /// verdict is [`Verdict::ToOutside`] or [`Verdict::ToInside`]. Never panics.
    pub fn process(&mut self, now: Instant, pkt: &mut [u8]) -> Verdict {
        self.counters.packets_in += 1;
        let v = self.translate(now, pkt);
        self.account(v);
        v
    }

    #[inline(always)]
    fn account(&mut self, v: Verdict) {
        match v {
            Verdict::Drop(r) => self.counters.drop(r),
            Verdict::ToPeer(_) => self.counters.chained += 1,
            Verdict::Hold(_) => self.counters.held += 1,
            Verdict::ToOutside | Verdict::ToInside => {}
        }
    }

    /// Translates a batch of packets, exactly as calling [`process`](Self::process) on each
    /// in order would, but faster for large tables: the batch's index lookups are issued
    /// back to back and the sessions they find are prefetched before any packet is rewritten,
    /// so the memory latencies of different packets overlap. `verdicts` is cleared and gets one
    /// verdict per packet. Batches of 16 to 64 packets work best.
    pub fn process_batch<P: AsMut<[u8]>>(
        &mut self,
        now: Instant,
        packets: &mut [P],
        verdicts: &mut Vec<Verdict>,
    ) {
        self.process_batch_with(now, packets, |p| p.as_mut(), verdicts);
    }

    /// [`process_batch`](Self::process_batch) over items that hold a packet beside other data
    /// (a driver's per-packet metadata): `bytes` returns an item's packet (starting at the
    /// IPv4 header). Nothing else of an item is read or written.
    #[inline]
    pub fn process_batch_with<P>(
        &mut self,
        now: Instant,
        packets: &mut [P],
        mut bytes: impl FnMut(&mut P) -> &mut [u8],
        verdicts: &mut Vec<Verdict>,
    ) {
        const CHUNK: usize = 64;
        verdicts.clear();
        let mut scratch = std::mem::take(&mut self.batch_scratch);
        let tick = self.tick(now);
        for chunk in packets.chunks_mut(CHUNK) {
            // Pass 1: parse, hash, and prefetch where each lookup will probe (the lookups of
            // the batch then overlap their memory latencies); `slot == NIL` marks packets for
            // the full path. (Slow-path packets of the chunk may reallocate the index; a stale
            // prefetcher only issues useless hints.)
            let pf = self.session_index.prefetcher();
            scratch.clear();
            for p in chunk.iter_mut() {
                scratch.push(match self.fast_meta(bytes(p)) {
                    Some(mut meta) => (
                        {
                            meta.hash = self.session_index.hash(&meta.key);
                            pf.prefetch(meta.hash);
                            meta
                        },
                        FastHit {
                            slot: 0,
                            ..FastHit::MISS
                        },
                    ),
                    None => (FastMeta::NONE, FastHit::MISS),
                });
            }
            // Pass 2: look up, in a tight loop so that independent lookups overlap in the CPU.
            // The index entry holds the whole rewrite, so a hit reads one cache line; the
            // session itself is fetched only for TCP flags or the first refresh of a tick.
            for (meta, hit) in scratch.iter_mut() {
                if hit.slot == NIL {
                    continue;
                }
                *hit = self.fast_lookup(meta, tick);
                if hit.slot != NIL
                    && (hit.write
                        || meta.proto == proto::TCP
                            && meta.tcp_flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST)
                                != 0)
                {
                    prefetch(self.sessions.as_ptr().wrapping_add(hit.slot as usize));
                }
            }
            // Pass 3: translate, in order; anything unusual takes the full path.
            for ((meta, hit), p) in scratch.iter().zip(chunk.iter_mut()) {
                self.counters.packets_in += 1;
                let pkt = bytes(p);
                let v = if hit.slot == NIL {
                    self.translate(now, pkt)
                } else {
                    self.counters.fast_path += 1;
                    self.fast_translate(now, pkt, meta, hit)
                };
                self.account(v);
                verdicts.push(v);
            }
        }
        self.batch_scratch = scratch;
    }

    /// The batch path's lookup: the rewrite of a packet whose session is found and may take
    /// the fast path (not frozen, not hairpinned, group not halted; these cannot change while
    /// a batch is processed), with its refresh stamp updated; [`FastHit::MISS`] otherwise
    /// (nothing changed: the full path decides).
    #[inline(always)]
    fn fast_lookup(&mut self, meta: &FastMeta, tick: u32) -> FastHit {
        let refresh = !meta.inbound || self.cfg.inbound_refresh;
        let lazy = self.lazy;
        let halted = self.halted != 0;
        let Some(e) = self.session_index.get_mut_hashed(meta.hash, &meta.key) else {
            return FastHit::MISS;
        };
        if e.flags & (E_FROZEN | E_HAIRPIN) != 0 {
            return FastHit::MISS;
        }
        if halted {
            // The entry's external address: the key's local address inbound, the rewrite's
            // address outbound.
            let ext = if meta.inbound { e.k0 as u32 } else { e.addr };
            let (e_copy, halted) = (*e, self.ext_halted(ext));
            if halted {
                return FastHit::MISS;
            }
            let e = self
                .session_index
                .get_mut(&meta.key)
                .expect("found just above");
            debug_assert_eq!(*e, e_copy);
            let write = refresh && Self::refresh_stamp(lazy, e, tick);
            return Self::hit_of(e, write);
        }
        let write = refresh && Self::refresh_stamp(lazy, e, tick);
        Self::hit_of(e, write)
    }

    #[inline(always)]
    fn hit_of(e: &SEntry, write: bool) -> FastHit {
        FastHit {
            slot: e.slot,
            addr: e.addr,
            port: e.port,
            ip_delta: e.ip_delta,
            l4_delta: e.l4_delta,
            write,
        }
    }

    /// The session key of a plain packet (TCP/UDP/ICMP query, no fragment, no options, TTL > 1),
    /// `None` for anything the full path must look at.
    #[inline(always)]
    fn fast_meta(&self, pkt: &[u8]) -> Option<FastMeta> {
        let h = packet::parse_ipv4(pkt, self.cfg.verify_ip_checksum).ok()?;
        if h.has_options() || h.ttl <= 1 || h.is_fragment() {
            return None;
        }
        let l4 = packet::parse_l4(h.proto, &pkt[h.header_len..h.total_len]).ok()??;
        let src = u32::from_be_bytes(h.src);
        let dst = u32::from_be_bytes(h.dst);
        let inbound = self.group_by_ext.contains_key(&dst);
        let (proto, sport, dport, tcp_flags) = match ports_of(l4) {
            Ok(ports) => ports,
            Err((ty, ident)) => match (icmp_kind(ty), inbound) {
                (IcmpKind::QueryRequest | IcmpKind::QueryReply, false) => {
                    (proto::ICMP, ident, 0, 0)
                }
                (IcmpKind::QueryReply, true) => (proto::ICMP, 0, ident, 0),
                _ => return None,
            },
        };
        let key = if inbound {
            skey(Dir::In, proto, dst, dport, src, sport)
        } else {
            skey(Dir::Out, proto, src, sport, dst, dport)
        };
        Some(FastMeta {
            key,
            hash: 0,
            ihl: h.header_len as u16,
            proto,
            tcp_flags,
            inbound,
        })
    }

    /// The fast path for a packet whose session [`fast_lookup`](Self::fast_lookup) found.
    #[inline(always)]
    fn fast_translate(
        &mut self,
        now: Instant,
        pkt: &mut [u8],
        meta: &FastMeta,
        hit: &FastHit,
    ) -> Verdict {
        debug_assert!((hit.slot as usize) < self.sessions.len(), "slot in range");
        debug_assert!(
            self.sessions[hit.slot as usize].flags & (S_LIVE | S_FROZEN | S_HAIRPIN) == S_LIVE,
            "fast path on a live, unfrozen, non-hairpin session"
        );
        // The index entry holds the rewrite: the session itself is not read for it.
        let rw = Rewrite {
            ihl: meta.ihl as usize,
            proto: meta.proto,
            source: !meta.inbound,
            decrement_ttl: true,
            with_l4: true,
            addr: hit.addr.to_be_bytes(),
            port: hit.port,
            ip_delta: Delta::from_raw(hit.ip_delta),
            l4_delta: Delta::from_raw(hit.l4_delta),
        };
        self.apply_session(now, pkt, hit.slot, meta.tcp_flags, hit.write, &rw);
        if meta.inbound {
            self.counters.translated_in += 1;
            Verdict::ToInside
        } else {
            self.counters.translated_out += 1;
            Verdict::ToOutside
        }
    }

    pub(super) fn translate(&mut self, now: Instant, pkt: &mut [u8]) -> Verdict {
        let h = match packet::parse_ipv4(pkt, self.cfg.verify_ip_checksum) {
            Ok(h) => h,
            Err(e) => return Verdict::Drop(parse_drop(e)),
        };
        if h.has_options() && self.cfg.ip_options == IpOptionsPolicy::Drop {
            return Verdict::Drop(DropReason::IpOptions);
        }
        if h.ttl <= 1 {
            return Verdict::Drop(DropReason::TtlExpired);
        }
        if h.is_non_first_fragment() {
            return self.later_fragment(now, pkt, &h);
        }
        let l4 = match packet::parse_l4(h.proto, &pkt[h.header_len..h.total_len]) {
            Ok(Some(l4)) => l4,
            Ok(None) => return Verdict::Drop(DropReason::UnsupportedProtocol),
            Err(e) => return Verdict::Drop(parse_drop(e)),
        };
        if h.more_fragments {
            self.expire_fragments(now);
            if self.frags.len() >= self.cfg.max_fragment_flows as usize {
                return Verdict::Drop(DropReason::FragmentTableFull);
            }
        }
        let dst = u32::from_be_bytes(h.dst);
        self.last_session = NIL;
        let v = match self.group_by_ext.get(&dst).copied() {
            // Towards an external address: inbound, or hairpin if the source is a subscriber
            // (decided in `inbound` on a session miss, off the fast path).
            Some(g) => self.inbound(now, pkt, &h, l4, g, Ingress::FromNetwork),
            None => self.outbound(now, pkt, &h, l4, false),
        };
        if h.more_fragments && matches!(v, Verdict::ToInside | Verdict::ToOutside) {
            self.remember_fragment(now, pkt, &h, v);
        }
        v
    }

    /// The refresh tick of `now`.
    #[inline(always)]
    pub(super) fn tick(&self, now: Instant) -> u32 {
        (now.as_nanos() >> self.tick_shift) as u32 & TICK_MASK
    }

    /// Refresh bookkeeping of a hit through `e` at tick `tick`: whether the session's
    /// `last_seen` must be written (it is, at most once per entry per tick when lazy).
    #[inline(always)]
    fn refresh_stamp(lazy: bool, e: &mut SEntry, tick: u32) -> bool {
        if !lazy {
            return true;
        }
        if e.stamp() == tick {
            return false;
        }
        e.set_stamp(tick);
        true
    }
    /// The refresh of a hit through the entry of `key` (full path): whether to write the
    /// session's `last_seen`. The same rule as the batch path's, so both leave equal tables.
    pub(super) fn refresh_key(&mut self, key: &SessionKey, now: Instant) -> bool {
        let (lazy, tick) = (self.lazy, self.tick(now));
        match self.session_index.get_mut(key) {
            Some(e) => Self::refresh_stamp(lazy, e, tick),
            None => {
                debug_assert!(false, "refresh of a session that is not indexed");
                true
            }
        }
    }

    /// The tail of every translated session hit (full outbound and inbound paths, batch fast
    /// path): TCP state tracking (which may reschedule expiry), the refresh of `last_seen` if
    /// `write` (the caller applied its refresh rule), the session remembered for the fragment
    /// table, and the rewrite of `pkt`. The packet goes out if `rw` rewrites its source, in
    /// otherwise. Counters and the verdict stay with the caller.
    #[inline(always)]
    pub(super) fn apply_session(
        &mut self,
        now: Instant,
        pkt: &mut [u8],
        slot: u32,
        tcp_flags: u8,
        write: bool,
        rw: &Rewrite,
    ) {
        debug_assert!(
            (slot as usize) < self.sessions.len(),
            "session slot in range"
        );
        debug_assert!(
            self.sessions[slot as usize].flags & S_LIVE != 0,
            "applying a live session"
        );
        if rw.proto == proto::TCP
            && tcp_flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0
        {
            let dir = if rw.source { Dir::Out } else { Dir::In };
            self.tcp_update(now, slot, dir, tcp_flags);
        }
        if write {
            self.sessions[slot as usize].last_seen = now;
        }
        self.last_session = slot;
        rw.apply(pkt);
    }

    /// The full path's rewrite of a packet of session `slot` going `dir` (header `h`):
    /// outbound to the session's external endpoint, inbound to its internal one.
    #[inline(always)]
    pub(super) fn session_rewrite(
        &self,
        slot: u32,
        dir: Dir,
        h: &Ipv4Header,
        proto: u8,
        decrement_ttl: bool,
    ) -> Rewrite {
        let s = &self.sessions[slot as usize];
        let (ip_delta, l4_delta) = (Delta::from_raw(s.ip_delta), Delta::from_raw(s.l4_delta));
        let with_l4 = !h.is_fragment() || h.frag_offset == 0;
        match dir {
            Dir::Out => Rewrite {
                ihl: h.header_len,
                proto,
                source: true,
                decrement_ttl,
                with_l4,
                addr: self.groups[s.group as usize]
                    .as_ref()
                    .map_or(0, |g| g.ext)
                    .to_be_bytes(),
                port: s.ext_port,
                ip_delta,
                l4_delta,
            },
            Dir::In => Rewrite {
                ihl: h.header_len,
                proto,
                source: false,
                decrement_ttl,
                with_l4,
                addr: s.int_addr.to_be_bytes(),
                port: s.int_port,
                ip_delta: ip_delta.inverse(),
                l4_delta: l4_delta.inverse(),
            },
        }
    }

    /// For a session hit: the verdict if the group is halted or the mapping frozen.
    #[inline(always)]
    pub(super) fn hit_blocked(&self, slot: u32) -> Option<Verdict> {
        debug_assert!(
            self.sessions
                .get(slot as usize)
                .is_some_and(|s| s.flags & S_LIVE != 0),
            "an indexed session is live"
        );
        let s = &self.sessions[slot as usize];
        if s.flags & S_FROZEN != 0 {
            let m = &self.mappings[s.mapping as usize];
            return Some(Verdict::Hold(MappingId {
                slot: s.mapping,
                generation: m.generation,
            }));
        }
        match self.groups[s.group as usize].as_ref().map(|g| g.mode) {
            Some(GroupMode::Halted) => Some(Verdict::Drop(DropReason::GroupHalted)),
            Some(GroupMode::Moved) => Some(Verdict::ToPeer(GroupId(s.group))),
            _ => None,
        }
    }
}
