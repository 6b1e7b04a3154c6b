//! The message bodies: what `Prepare`, `BatchAck`, `Delete`, `Commit`, `CommitAck`, `Done`,
//! `ChainEnd` and `Abort` carry (postcard-encoded), and the algorithm names.

use serde::{Deserialize, Serialize};

/// Which algorithm a migration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Halt, copy everything, resume on the destination (baseline).
    StopCopy,
    /// Copy in rounds while serving, then a final stop-and-copy (baseline).
    PreCopy,
    /// The poster's: idle phase, then iterated freeze-and-copy.
    FreezeCopy,
}

impl Algorithm {
    /// The algorithm's kebab-case name, as in JSON and on the command line (`stop-copy`,
    /// `pre-copy`, `freeze-copy`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::StopCopy => "stop-copy",
            Algorithm::PreCopy => "pre-copy",
            Algorithm::FreezeCopy => "freeze-copy",
        }
    }
}

/// Why a migration was abandoned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// The controller called `abort`.
    Requested,
    /// Retransmissions exhausted: the peer or the channel is gone.
    ChannelFailed,
    /// The destination heard nothing from the source for `peer_timeout`.
    PeerTimeout,
    /// The destination could not add the group or reserve the source's blocks.
    PrepareRefused,
    /// The two instances' port layouts differ.
    ConfigMismatch,
    /// The destination refused a batch (stop-copy / pre-copy).
    ImportRefused,
    /// The destination refused to commit (counts differ or import failed).
    CommitRefused,
    /// A message arrived that the protocol does not allow in this state.
    Protocol,
    /// Source: the destination did not answer `Prepare` within `prepare_timeout`.
    PrepareTimeout,
    /// Destination: the source came back with a new epoch (it restarted), so the migration's
    /// source process is gone.
    SourceRestarted,
    /// The controller gave the group to an instance (its owner died): `adopt_group` or
    /// `release_group` ended the migration here.
    Rehomed,
}

/// A mapping's identity, as `Delete` names it: protocol, subscriber address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MappingKey {
    /// IP protocol.
    pub proto: u8,
    /// Subscriber address.
    pub addr: [u8; 4],
    /// Subscriber port or ICMP identifier.
    pub port: u16,
}

/// `Prepare` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    /// External address of the group.
    pub external: [u8; 4],
    /// Subscriber prefix address.
    pub prefix_addr: [u8; 4],
    /// Subscriber prefix length.
    pub prefix_len: u8,
    /// Algorithm (decides how the destination treats batches).
    pub algorithm: Algorithm,
    /// Blocks the source's subscribers hold: (block index, subscriber address).
    pub held_blocks: Vec<(u32, [u8; 4])>,
    /// Source's first port.
    pub port_min: u16,
    /// Source's last port.
    pub port_max: u16,
    /// Source's block size.
    pub block_size: u16,
    /// Mappings of the group at the source when the migration started (a sizing hint: the
    /// destination pre-sizes its tables; it is never trusted as a count).
    pub mappings_hint: u32,
    /// Sessions (records) of the group at the source when the migration started (hint).
    pub records_hint: u32,
}

/// `BatchAck` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    /// The batch number.
    pub batch: u32,
    /// Records installed (or staged).
    pub installed: u32,
    /// False: the batch was refused and nothing of it was installed.
    pub ok: bool,
}

/// `Commit` body: what the destination must hold once it installs (a consistency check).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Mappings.
    pub mappings: u32,
    /// Records (sessions).
    pub records: u32,
}

/// `CommitAck` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitAck {
    /// False: nothing was installed by the commit.
    pub ok: bool,
    /// Mappings now installed for this migration.
    pub mappings: u32,
    /// Records now installed for this migration.
    pub records: u32,
}

/// `Done` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Blocks the source held at prepare time, now released (the destination may allocate
    /// from them).
    pub released_blocks: Vec<u32>,
    /// Packets the source has chained to the destination over its whole life (all groups):
    /// the destination holds switch traffic of the group until it has received this many.
    pub chained: u64,
}

/// `ChainEnd` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainEnd {
    /// Packets the source has chained to the destination over its whole life (all groups) when
    /// it sent the marker: every chained packet of the group that left the source before the
    /// marker is among them.
    pub chained: u64,
}
