//! `check_invariants`: the whole-table consistency check of tests and the simulator.

use super::table::entry_flags;
use super::{NIL, Nat, S_FROZEN, S_LIVE, mkey, skey};
use crate::index::{STAMP_NONE, TICK_MASK};
use crate::ports::PortProto;
use crate::tcp::Dir;
use flowshift_wire::checksum::Delta;
use flowshift_wire::packet::proto;
use hashbrown::HashMap;

impl Nat {
    /// Checks every internal invariant (O(table size); for tests and the simulator): indices
    /// point at live entries that hold the keys, counts agree, every mapping's external port is
    /// bound exactly once in its group's blocks, no two mappings share an external endpoint,
    /// the per-subscriber session counts are exact.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut live_sessions = 0u32;
        let mut per_mapping: HashMap<u32, u32> = HashMap::new();
        for (i, s) in self.sessions.iter().enumerate() {
            if s.flags & S_LIVE == 0 {
                continue;
            }
            live_sessions += 1;
            *per_mapping.entry(s.mapping).or_default() += 1;
            let m = &self.mappings[s.mapping as usize];
            if !m.live || m.ext_port != s.ext_port || m.int_addr != s.int_addr || m.proto != s.proto
            {
                return Err(format!(
                    "session {i} disagrees with its mapping {}",
                    s.mapping
                ));
            }
            if (s.flags & S_FROZEN != 0) != m.frozen {
                return Err(format!(
                    "session {i} frozen flag disagrees with its mapping"
                ));
            }
            let ext = self.groups[s.group as usize]
                .as_ref()
                .ok_or(format!("session {i} in a removed group"))?
                .ext;
            let out = skey(
                Dir::Out,
                s.proto,
                s.int_addr,
                s.int_port,
                s.rem_addr,
                s.rem_port,
            );
            let inn = skey(Dir::In, s.proto, ext, s.ext_port, s.rem_addr, s.rem_port);
            let (Some(eo), Some(ei)) = (self.session_index.get(&out), self.session_index.get(&inn))
            else {
                return Err(format!("session {i} not indexed under its keys"));
            };
            if eo.slot != i as u32 || ei.slot != i as u32 {
                return Err(format!("session {i} not indexed under its keys"));
            }
            // The rewrite cached in the entries is the session's.
            let ip_delta = Delta::NONE.replace_addr(s.int_addr.to_be_bytes(), ext.to_be_bytes());
            let l4_delta = if s.proto == proto::ICMP {
                Delta::NONE.replace(s.int_port, s.ext_port)
            } else {
                ip_delta.replace(s.int_port, s.ext_port)
            };
            if (s.ip_delta, s.l4_delta) != (ip_delta.to_raw(), l4_delta.to_raw()) {
                return Err(format!("session {i} checksum deltas wrong"));
            }
            let ef = entry_flags(s.flags);
            let want_out = (ext, s.ext_port, s.ip_delta, s.l4_delta, ef);
            let want_in = (
                s.int_addr,
                s.int_port,
                ip_delta.inverse().to_raw(),
                l4_delta.inverse().to_raw(),
                ef,
            );
            if (eo.addr, eo.port, eo.ip_delta, eo.l4_delta, eo.flags) != want_out
                || eo.inbound()
                || (ei.addr, ei.port, ei.ip_delta, ei.l4_delta, ei.flags) != want_in
                || !ei.inbound()
            {
                return Err(format!(
                    "session {i}: index entries disagree with the session: {eo:?} {ei:?}"
                ));
            }
            for e in [eo, ei] {
                let st = e.stamp();
                if st > STAMP_NONE || !self.lazy && st != STAMP_NONE {
                    return Err(format!("session {i}: bad refresh stamp {st:#x}"));
                }
                // A stamp says `last_seen` is in that tick or later (modulo the wrap-around).
                if st != STAMP_NONE
                    && self.tick(s.last_seen).wrapping_sub(st) & TICK_MASK > TICK_MASK / 2
                {
                    return Err(format!(
                        "session {i}: stamp {st:#x} past last_seen's tick {:#x}",
                        self.tick(s.last_seen)
                    ));
                }
            }
            if s.queued & (1 << s.class) == 0 {
                return Err(format!("session {i} has no expiry entry for its class"));
            }
        }
        if live_sessions != self.session_count
            || self.session_index.len() != 2 * live_sessions as usize
        {
            return Err(format!(
                "session count {} / index {} / live {}",
                self.session_count,
                self.session_index.len(),
                live_sessions
            ));
        }
        self.check_subscriber_counts(&self.sessions)?;
        let mut live_mappings = 0u32;
        let mut ext_seen: HashMap<(u32, u8, u16), u32> = HashMap::new();
        for (i, m) in self.mappings.iter().enumerate() {
            if m.importing {
                return Err(format!("mapping {i} still marked as importing"));
            }
            if !m.live {
                continue;
            }
            live_mappings += 1;
            if m.sessions == 0 || per_mapping.get(&(i as u32)) != Some(&m.sessions) {
                return Err(format!("mapping {i} session count {} wrong", m.sessions));
            }
            let group = self.groups[m.group as usize]
                .as_ref()
                .ok_or(format!("mapping {i} in a removed group"))?;
            if let Some(j) = ext_seen.insert((group.ext, m.proto, m.ext_port), i as u32) {
                return Err(format!("mappings {j} and {i} share an external endpoint"));
            }
            let pp = PortProto::from_ip_proto(m.proto).ok_or("bad proto")?;
            if !group.ports.is_bound(m.ext_port, pp) {
                return Err(format!("mapping {i} port {} not bound", m.ext_port));
            }
            if group
                .ports
                .owner(group.ports.block_of(m.ext_port).unwrap_or(u32::MAX))
                != crate::ports::BlockOwner::Subscriber(m.int_addr)
            {
                return Err(format!(
                    "mapping {i} port {} in a block its subscriber does not hold",
                    m.ext_port
                ));
            }
            if self
                .mapping_index
                .get(&mkey(Dir::Out, m.proto, m.int_addr, m.int_port))
                != Some(&(i as u32))
                || group.ports.mapping(m.ext_port, pp) != Some(i as u32)
            {
                return Err(format!("mapping {i} not indexed under its keys"));
            }
        }
        let port_entries: usize = self
            .groups
            .iter()
            .flatten()
            .map(|g| g.ports.mapping_entries())
            .sum();
        if live_mappings != self.mapping_count
            || self.mapping_index.len() != live_mappings as usize
            || port_entries != live_mappings as usize
        {
            return Err("mapping counts disagree".into());
        }
        // Every bound port belongs to a mapping.
        let bound: usize = self
            .groups
            .iter()
            .flatten()
            .map(|g| {
                (0..g.ports.n_blocks())
                    .map(|b| {
                        let (lo, hi) = g.ports.block_range(b);
                        (lo..=hi)
                            .map(|p| {
                                [PortProto::Tcp, PortProto::Udp, PortProto::Icmp]
                                    .iter()
                                    .filter(|&&pp| g.ports.is_bound(p, pp))
                                    .count()
                            })
                            .sum::<usize>()
                    })
                    .sum::<usize>()
            })
            .sum();
        if bound != live_mappings as usize {
            return Err(format!("{bound} ports bound for {live_mappings} mappings"));
        }
        for (gi, g) in self.groups.iter().enumerate() {
            let Some(g) = g else { continue };
            let (mut n, mut m) = (0, g.first_mapping);
            while m != NIL {
                n += 1;
                if self.mappings[m as usize].group as usize != gi {
                    return Err(format!("mapping {m} listed in the wrong group"));
                }
                m = self.mappings[m as usize].next;
            }
            if n != g.mappings {
                return Err(format!(
                    "group {gi} lists {n} mappings, counts {}",
                    g.mappings
                ));
            }
        }
        Ok(())
    }
}
