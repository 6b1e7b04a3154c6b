//! OFPT_FLOW_MOD: the command, the flag set and the message, with constructors for the
//! adds and deletes a controller sends.

use super::{GROUP_ANY, NO_BUFFER, TABLE_ALL};
use crate::action::Instruction;
use crate::oxm::Match;
/// Flow-mod commands (OFPFC_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowModCommand {
    /// Add a flow (replacing an identical match and priority).
    Add,
    /// Modify the instructions of all matching flows.
    Modify,
    /// Modify the flow with exactly this match and priority.
    ModifyStrict,
    /// Delete all matching flows.
    Delete,
    /// Delete the flow with exactly this match and priority.
    DeleteStrict,
}

impl FlowModCommand {
    /// The wire value.
    pub const fn to_u8(self) -> u8 {
        match self {
            FlowModCommand::Add => 0,
            FlowModCommand::Modify => 1,
            FlowModCommand::ModifyStrict => 2,
            FlowModCommand::Delete => 3,
            FlowModCommand::DeleteStrict => 4,
        }
    }

    /// Parses a wire value.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => FlowModCommand::Add,
            1 => FlowModCommand::Modify,
            2 => FlowModCommand::ModifyStrict,
            3 => FlowModCommand::Delete,
            4 => FlowModCommand::DeleteStrict,
            _ => return None,
        })
    }
}

/// Flow-mod flags (OFPFF_*), a bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowModFlags(pub u16);

impl FlowModFlags {
    /// No flags.
    pub const NONE: FlowModFlags = FlowModFlags(0);
    /// Send a FLOW_REMOVED message when the entry expires or is deleted.
    pub const SEND_FLOW_REM: FlowModFlags = FlowModFlags(1);
    /// Refuse to add an entry that overlaps an existing one of the same priority.
    pub const CHECK_OVERLAP: FlowModFlags = FlowModFlags(1 << 1);
    /// Reset the counters of modified entries.
    pub const RESET_COUNTS: FlowModFlags = FlowModFlags(1 << 2);
    /// Do not keep packet counts.
    pub const NO_PKT_COUNTS: FlowModFlags = FlowModFlags(1 << 3);
    /// Do not keep byte counts.
    pub const NO_BYT_COUNTS: FlowModFlags = FlowModFlags(1 << 4);

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: FlowModFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for FlowModFlags {
    type Output = FlowModFlags;
    fn bitor(self, rhs: FlowModFlags) -> FlowModFlags {
        FlowModFlags(self.0 | rhs.0)
    }
}

/// OFPT_FLOW_MOD: add, modify or delete flow entries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowMod {
    /// Opaque controller-issued identifier (ADD), or the value to filter on (MODIFY/DELETE).
    pub cookie: u64,
    /// Cookie bits that must match for MODIFY/DELETE; 0 ignores the cookie.
    pub cookie_mask: u64,
    /// Table to change; [`TABLE_ALL`] only for deletes.
    pub table_id: u8,
    /// What to do.
    pub command: FlowModCommand,
    /// Seconds without a packet before the entry is removed; 0 = never.
    pub idle_timeout: u16,
    /// Seconds after which the entry is removed; 0 = never.
    pub hard_timeout: u16,
    /// Priority; higher wins among overlapping matches.
    pub priority: u16,
    /// Buffered packet to apply the entry to, or [`NO_BUFFER`].
    pub buffer_id: u32,
    /// For DELETE*: only entries outputting to this port ([`crate::port::ANY`] = no filter).
    pub out_port: u32,
    /// For DELETE*: only entries outputting to this group ([`GROUP_ANY`] = no filter).
    pub out_group: u32,
    /// OFPFF_* flags.
    pub flags: FlowModFlags,
    /// Fields to match.
    pub match_: Match,
    /// Instructions (ignored for deletes).
    pub instructions: Vec<Instruction>,
}

impl FlowMod {
    /// An ADD into table 0 with cookie 0, no timeouts and no flags.
    pub fn add(match_: Match, priority: u16, instructions: Vec<Instruction>) -> Self {
        FlowMod {
            cookie: 0,
            cookie_mask: 0,
            table_id: 0,
            command: FlowModCommand::Add,
            idle_timeout: 0,
            hard_timeout: 0,
            priority,
            buffer_id: NO_BUFFER,
            out_port: crate::action::port::ANY,
            out_group: GROUP_ANY,
            flags: FlowModFlags::NONE,
            match_,
            instructions,
        }
    }

    /// A non-strict DELETE of every entry, in any table, whose match is covered by `match_`.
    pub fn delete(match_: Match) -> Self {
        FlowMod {
            table_id: TABLE_ALL,
            command: FlowModCommand::Delete,
            ..FlowMod::add(match_, 0, Vec::new())
        }
    }

    /// A DELETE_STRICT of the entry in `table_id` with exactly `match_` and `priority`.
    pub fn delete_strict(table_id: u8, match_: Match, priority: u16) -> Self {
        FlowMod {
            table_id,
            command: FlowModCommand::DeleteStrict,
            ..FlowMod::add(match_, priority, Vec::new())
        }
    }
}
