//! Groups: external addresses, their modes, port blocks and occupancy.

use super::{Group, GroupId, GroupMode, GroupStats, HeldBlock, NIL, Nat, NatError};
use crate::config::{GroupConfig, NatConfig};
use crate::ports::PortBlocks;
use std::net::Ipv4Addr;

impl Nat {
    /// Adds a group (at start-up, or on a migration destination at prepare time).
    pub fn add_group(&mut self, cfg: GroupConfig, mode: GroupMode) -> Result<GroupId, NatError> {
        let mut all: Vec<GroupConfig> = self
            .groups
            .iter()
            .flatten()
            .map(|g| g.cfg.clone())
            .collect();
        all.push(cfg.clone());
        NatConfig {
            groups: all,
            ..self.cfg.clone()
        }
        .validate()?;
        let ext = u32::from(cfg.external);
        let id = match self.groups.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.groups.push(None);
                self.groups.len() - 1
            }
        };
        let ports = PortBlocks::new(
            self.cfg.port_min,
            self.cfg.block_size,
            self.cfg.blocks_per_group(),
            self.cfg.max_blocks_per_subscriber,
        );
        self.groups[id] = Some(Group {
            ext,
            net: u32::from(cfg.subscribers.network()),
            mask: u32::from(cfg.subscribers.netmask()),
            cfg: cfg.clone(),
            mode,
            ports,
            first_mapping: NIL,
            mappings: 0,
            sessions: 0,
        });
        self.group_by_ext.insert(ext, id as u16);
        if !self.cfg.groups.contains(&cfg) {
            self.cfg.groups.push(cfg);
        }
        self.recount_halted();
        Ok(GroupId(id as u16))
    }

    /// Forgets an empty group (a migration source after cutover). Reserved and free blocks go
    /// with it.
    pub fn remove_group(&mut self, g: GroupId) -> Result<GroupConfig, NatError> {
        let group = self.group(g)?;
        if group.mappings != 0 {
            return Err(NatError::GroupNotEmpty(g, group.mappings));
        }
        let group = self.groups[g.0 as usize]
            .take()
            .ok_or(NatError::NoGroup(g))?;
        self.group_by_ext.remove(&group.ext);
        self.cfg.groups.retain(|c| c != &group.cfg);
        self.recount_halted();
        Ok(group.cfg)
    }

    pub(super) fn group(&self, g: GroupId) -> Result<&Group, NatError> {
        self.groups
            .get(g.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(NatError::NoGroup(g))
    }

    pub(super) fn group_mut(&mut self, g: GroupId) -> Result<&mut Group, NatError> {
        self.groups
            .get_mut(g.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(NatError::NoGroup(g))
    }

    /// The group of an external address.
    pub fn group_id(&self, external: Ipv4Addr) -> Option<GroupId> {
        self.group_by_ext
            .get(&u32::from(external))
            .map(|&g| GroupId(g))
    }

    /// All groups served here.
    pub fn group_ids(&self) -> Vec<GroupId> {
        (0..self.groups.len())
            .filter(|&i| self.groups[i].is_some())
            .map(|i| GroupId(i as u16))
            .collect()
    }

    /// A group's configuration.
    pub fn group_config(&self, g: GroupId) -> Result<&GroupConfig, NatError> {
        Ok(&self.group(g)?.cfg)
    }

    /// A group's mode.
    pub fn group_mode(&self, g: GroupId) -> Result<GroupMode, NatError> {
        Ok(self.group(g)?.mode)
    }

    /// Sets a group's mode.
    pub fn set_group_mode(&mut self, g: GroupId, mode: GroupMode) -> Result<(), NatError> {
        self.group_mut(g)?.mode = mode;
        self.recount_halted();
        Ok(())
    }

    fn recount_halted(&mut self) {
        self.halted = self
            .groups
            .iter()
            .flatten()
            .filter(|g| g.mode.stops_fast_path())
            .count() as u32;
    }

    /// Is the group of external address `ext` halted or moved? (Only asked when some group
    /// is.)
    #[inline]
    pub(super) fn ext_halted(&self, ext: u32) -> bool {
        self.group_by_ext
            .get(&ext)
            .and_then(|&g| self.groups[g as usize].as_ref())
            .is_none_or(|g| g.mode.stops_fast_path())
    }

    /// A group's occupancy.
    pub fn group_stats(&self, g: GroupId) -> Result<GroupStats, NatError> {
        let group = self.group(g)?;
        let (free, held, reserved) = group.ports.block_counts();
        Ok(GroupStats {
            mappings: group.mappings,
            sessions: group.sessions,
            blocks_held: held,
            blocks_reserved: reserved,
            blocks_free: free,
        })
    }

    /// Blocks held by subscribers in a group.
    pub fn held_blocks(&self, g: GroupId) -> Result<Vec<HeldBlock>, NatError> {
        let group = self.group(g)?;
        Ok(group
            .ports
            .held()
            .into_iter()
            .map(|(block, sub)| {
                let (first_port, last_port) = group.ports.block_range(block);
                HeldBlock {
                    block,
                    first_port,
                    last_port,
                    subscriber: Ipv4Addr::from(sub),
                }
            })
            .collect())
    }

    /// Marks blocks as held by a migration peer: this instance will not allocate from them.
    /// All or nothing.
    pub fn reserve_blocks(&mut self, g: GroupId, blocks: &[u32]) -> Result<(), NatError> {
        self.group_mut(g)?
            .ports
            .reserve(blocks)
            .map_err(NatError::BlockInUse)
    }

    /// Returns the group's reserved blocks to its pool (the port handoff once the peer holds
    /// nothing more); the number of blocks released.
    pub fn release_reserved_blocks(&mut self, g: GroupId) -> Result<u32, NatError> {
        Ok(self.group_mut(g)?.ports.release_reserved())
    }

    /// Which group a subscriber address belongs to.
    pub(super) fn subscriber_group(&self, addr: u32) -> Option<u16> {
        self.groups
            .iter()
            .position(|g| g.as_ref().is_some_and(|g| addr & g.mask == g.net))
            .map(|i| i as u16)
    }
}
