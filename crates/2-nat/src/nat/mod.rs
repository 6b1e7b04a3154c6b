//! The NAT instance: tables, the packet path, expiry, and the migration hooks.
//!
//! This module holds the public types, the [`Nat`] struct and its constructor; each concern
//! adds its own `impl Nat` block in a submodule:
//! * `groups`: external addresses, modes, port blocks, occupancy;
//! * `packet`: [`Nat::process`], [`Nat::process_batch`] and its fast path, the full path's
//!   dispatch, and `apply_session`, the tail every translated session hit shares;
//! * `outbound`, `inbound`: the full path in each direction (hairpin included);
//! * `rewrite`: the precomputed `Rewrite` of a translated packet;
//! * `icmp`: ICMP errors (RFC 5508); `fragments`: the fragment table;
//! * `table`: the mapping and session slabs and indexes, install and remove;
//! * `expiry`: the timer wheel and timeout classes;
//! * `migration`: enumerate, freeze, export, remove, reserve; `import`: an import's commit
//!   and undo, `import_install`: its one pass (each record checked, then installed);
//! * `subscribers`: per-subscriber session counts and their limit (RFC 6888 REQ-5);
//! * `invariants`: [`Nat::check_invariants`].

mod expiry;
mod fragments;
mod groups;
mod icmp;
mod import;
mod import_install;
mod inbound;
mod invariants;
mod migration;
mod outbound;
mod packet;
mod rewrite;
mod subscribers;
mod table;

use self::fragments::{FragEntry, FragKey};
use self::import::ImportScratch;
use self::packet::{FastHit, FastMeta};
use crate::config::{GroupConfig, NatConfig};
use crate::counters::{Counters, DropReason};
use crate::index::{MappingIndex, STAMP_BITS, SessionIndex, SessionKey};
use crate::ports::{BlockChange, PortBlocks};
use crate::tcp::Dir;
use crate::wheel::{Wheel, WheelEntry};
use flowshift_wire::Instant;
use foldhash::fast::FixedState;
use hashbrown::HashMap;
use ipnet::Ipv4Net;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};

type Map<K, V> = HashMap<K, V, FixedState>;

const NIL: u32 = u32::MAX;
/// Most wheel entries examined per [`Nat::handle_timeout`] call (bounds its latency).
pub const EXPIRY_BUDGET: usize = 4096;

/// Index of a group (an external address) in this instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u16);

/// Handle of a mapping; stale handles (mapping gone, slot reused) are detected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MappingId {
    slot: u32,
    generation: u32,
}

/// How this instance treats a group's traffic (serialized by its snake_case name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupMode {
    /// Normal service: mappings are created and translated.
    Active,
    /// Migration source during the idle and freeze-and-copy phases: packets of mappings held
    /// here are translated (including new sessions under them); packets that would need a new
    /// mapping return [`Verdict::ToPeer`] unchanged.
    Draining,
    /// Stop-and-copy downtime: every packet of the group is dropped ([`DropReason::GroupHalted`]).
    Halted,
    /// Migration source after the destination took the group over while the source still
    /// removes its copies: every packet of the group returns [`Verdict::ToPeer`] unchanged,
    /// whether a mapping matches here or not.
    Moved,
}

impl GroupMode {
    /// The group's packets never take the fast path (halted, or handed to the peer).
    #[inline]
    fn stops_fast_path(self) -> bool {
        matches!(self, GroupMode::Halted | GroupMode::Moved)
    }
}

/// What the driver must do with a packet after [`Nat::process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Translated in place; send it towards the outside.
    ToOutside,
    /// Translated in place; send it towards the subscribers.
    ToInside,
    /// Unchanged; this instance is draining the group: hand the packet to the migration peer.
    ToPeer(GroupId),
    /// Unchanged; the packet touches a frozen mapping: hold it until the mapping has moved.
    Hold(MappingId),
    /// Dropped and counted.
    Drop(DropReason),
}

/// What happened to a port block (RFC 6888 REQ-12 logging).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockAction {
    /// Taken from the pool for the subscriber.
    Allocated,
    /// Returned to the pool.
    Released,
    /// Arrived with migrated mappings (the subscriber keeps the same ports).
    MigratedIn,
    /// Left with migrated mappings.
    MigratedOut,
}

/// A mapping-log event for the driver to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PortBlockEvent {
    /// When (driver time).
    pub time: Instant,
    /// What happened.
    pub action: BlockAction,
    /// The subscriber's internal address.
    pub subscriber: Ipv4Addr,
    /// The external address.
    pub external: Ipv4Addr,
    /// First port of the block.
    pub first_port: u16,
    /// Last port of the block.
    pub last_port: u16,
}

/// Events for the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A port block changed hands.
    PortBlock(PortBlockEvent),
}

/// Why a mapping is removed (decides the log action of a block that becomes empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveCause {
    /// Administrative removal.
    Deleted,
    /// Moved to another instance.
    Migrated,
}

/// Errors of the control-plane API (never of the packet path).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NatError {
    /// Configuration refused.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// No such group.
    #[error("no group {0:?}")]
    NoGroup(GroupId),
    /// The mapping handle is stale.
    #[error("mapping no longer exists")]
    NoMapping,
    /// The group still has mappings.
    #[error("group {0:?} still holds {1} mappings")]
    GroupNotEmpty(GroupId, u32),
    /// A block to reserve is held here.
    #[error("block {0} is in use on this instance")]
    BlockInUse(u32),
    /// Import refused; nothing was installed.
    #[error("import refused at record {index}: {why}")]
    Import {
        /// Index of the offending record.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
}

/// A summary of one mapping, for migration planning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappingInfo {
    /// Its handle.
    pub id: MappingId,
    /// IP protocol.
    pub proto: u8,
    /// Subscriber endpoint.
    pub internal: SocketAddrV4,
    /// External port (or ICMP identifier).
    pub external_port: u16,
    /// Sessions under it.
    pub sessions: u32,
    /// Most recent packet of any of its sessions.
    pub last_seen: Instant,
    /// Frozen for transfer.
    pub frozen: bool,
}

/// Per-group occupancy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct GroupStats {
    /// Mappings held.
    pub mappings: u32,
    /// Sessions held.
    pub sessions: u32,
    /// Blocks held by subscribers.
    pub blocks_held: u32,
    /// Blocks reserved for a peer.
    pub blocks_reserved: u32,
    /// Blocks free.
    pub blocks_free: u32,
}

/// A port block a subscriber holds (for migration's prepare message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldBlock {
    /// Block index within the group.
    pub block: u32,
    /// First port.
    pub first_port: u16,
    /// Last port.
    pub last_port: u16,
    /// Holder.
    pub subscriber: Ipv4Addr,
}

/// Result of a successful import.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ImportSummary {
    /// Mappings installed.
    pub mappings: u32,
    /// Sessions installed.
    pub sessions: u32,
}

const S_LIVE: u8 = 1;
const S_FROZEN: u8 = 2;
const S_HAIRPIN: u8 = 4;
const S_INBOUND_OPENED: u8 = 8;

#[derive(Clone, Debug, Default)]
struct Session {
    int_addr: u32,
    rem_addr: u32,
    int_port: u16,
    ext_port: u16,
    rem_port: u16,
    group: u16,
    mapping: u32,
    generation: u32,
    last_seen: Instant,
    ip_delta: u16,
    l4_delta: u16,
    proto: u8,
    tcp: u8,
    flags: u8,
    queued: u8,
    class: u8,
    next: u32,
    prev: u32,
}

#[derive(Clone, Debug, Default)]
struct Mapping {
    int_addr: u32,
    int_port: u16,
    ext_port: u16,
    proto: u8,
    group: u16,
    live: bool,
    frozen: bool,
    /// Installed by the import in progress (cleared when it commits; see `nat/import.rs`).
    importing: bool,
    generation: u32,
    first_session: u32,
    sessions: u32,
    next: u32,
    prev: u32,
}

impl Mapping {
    /// A live mapping with no session yet, at the head of its group's list (before `next`).
    #[inline(always)]
    fn new_live(
        group: u16,
        proto: u8,
        int_addr: u32,
        int_port: u16,
        ext_port: u16,
        next: u32,
    ) -> Mapping {
        Mapping {
            int_addr,
            int_port,
            ext_port,
            proto,
            group,
            live: true,
            frozen: false,
            importing: false,
            generation: 0,
            first_session: NIL,
            sessions: 0,
            next,
            prev: NIL,
        }
    }
}

struct Group {
    ext: u32,
    net: u32,
    mask: u32,
    cfg: GroupConfig,
    mode: GroupMode,
    ports: PortBlocks,
    first_mapping: u32,
    mappings: u32,
    sessions: u32,
}

#[inline(always)]
fn skey(dir: Dir, proto: u8, local: u32, lport: u16, rem: u32, rport: u16) -> SessionKey {
    SessionKey(
        ((dir == Dir::In) as u64) << 56
            | (proto as u64) << 48
            | (lport as u64) << 32
            | local as u64,
        (rport as u64) << 32 | rem as u64,
    )
}

#[inline(always)]
fn mkey(dir: Dir, proto: u8, addr: u32, port: u16) -> u64 {
    ((dir == Dir::In) as u64) << 56 | (proto as u64) << 48 | (port as u64) << 32 | addr as u64
}
/// One carrier-grade NAT instance (sans-IO). See the crate documentation.
pub struct Nat {
    cfg: NatConfig,
    groups: Vec<Option<Group>>,
    group_by_ext: Map<u32, u16>,
    sessions: Vec<Session>,
    session_free: Vec<u32>,
    session_count: u32,
    mappings: Vec<Mapping>,
    mapping_free: Vec<u32>,
    mapping_count: u32,
    /// Sessions per subscriber (internal address); no zero entries (`subscribers.rs`).
    sub_sessions: Map<u32, u32>,
    session_index: SessionIndex,
    mapping_index: MappingIndex,
    wheel: Wheel,
    wheel_scratch: Vec<WheelEntry>,
    frags: Map<FragKey, FragEntry>,
    frag_fifo: VecDeque<(FragKey, Instant)>,
    events: VecDeque<Event>,
    counters: Counters,
    rng: ChaCha8Rng,
    timeout_ns: [u64; 4],
    last_session: u32,
    batch_scratch: Vec<(FastMeta, FastHit)>,
    /// Groups in [`GroupMode::Halted`] or [`GroupMode::Moved`] (the fast path looks at group
    /// modes only if non-zero).
    halted: u32,
    /// Refresh ticks are `now >> tick_shift` ns (at most the timer granularity).
    tick_shift: u32,
    /// Lazy refresh in force: a hit writes `last_seen` only once per tick per entry (off when a
    /// timeout is long enough for the stamps to wrap around while a session lives).
    lazy: bool,
    /// Reused by [`Nat::import`].
    import_scratch: ImportScratch,
}

impl Nat {
    /// Creates an instance serving every group of `cfg` in [`GroupMode::Active`].
    pub fn new(cfg: NatConfig) -> Result<Nat, NatError> {
        cfg.validate()?;
        let t = &cfg.timeouts;
        let timeout_ns = [t.tcp_established, t.tcp_transitory, t.udp, t.icmp]
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let horizon = timeout_ns.iter().copied().max().unwrap_or(0);
        let gran = u64::try_from(cfg.timer_granularity.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let hasher = FixedState::with_seed(cfg.hash_seed);
        // Refresh tick: 2^21 ns (2.1 ms), or the largest power of two not above the timer
        // granularity if that is finer, so lazy refresh never delays expiry by a whole bucket.
        let tick_shift = (63 - gran.leading_zeros()).min(21);
        // Stamps wrap after 2^(STAMP_BITS - 1) ticks; lazy refresh needs every session to
        // expire (or be refreshed) well within that.
        let wrap = 1u64
            .checked_shl(tick_shift + STAMP_BITS - 1)
            .unwrap_or(u64::MAX);
        let lazy = horizon.saturating_add(gran) < wrap / 2;
        let mut nat = Nat {
            groups: Vec::new(),
            group_by_ext: Map::with_hasher(hasher.clone()),
            sessions: Vec::new(),
            session_free: Vec::new(),
            session_count: 0,
            mappings: Vec::new(),
            mapping_free: Vec::new(),
            mapping_count: 0,
            sub_sessions: Map::with_hasher(hasher.clone()),
            session_index: SessionIndex::new(hasher.clone()),
            mapping_index: MappingIndex::new(hasher.clone()),
            wheel: Wheel::new(gran, horizon.min(u64::MAX / 2)),
            wheel_scratch: Vec::with_capacity(EXPIRY_BUDGET),
            frags: Map::with_hasher(hasher),
            frag_fifo: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            rng: ChaCha8Rng::seed_from_u64(cfg.rng_seed),
            timeout_ns,
            last_session: NIL,
            batch_scratch: Vec::with_capacity(64),
            halted: 0,
            tick_shift,
            lazy,
            import_scratch: ImportScratch::default(),
            cfg,
        };
        for g in nat.cfg.groups.clone() {
            nat.add_group(g, GroupMode::Active)?;
        }
        Ok(nat)
    }

    /// The configuration in force (groups added later are included).
    pub fn config(&self) -> &NatConfig {
        &self.cfg
    }

    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counters, for a wrapping layer (migration) that drops packets under NAT reasons.
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// Sessions held.
    pub fn session_count(&self) -> u32 {
        self.session_count
    }

    /// Mappings held.
    pub fn mapping_count(&self) -> u32 {
        self.mapping_count
    }

    /// Next mapping-log event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn emit(&mut self, e: Event) {
        if self.events.len() >= self.cfg.max_events as usize {
            self.counters.events_dropped += 1;
        } else {
            self.events.push_back(e);
        }
    }

    fn log_block(&mut self, now: Instant, g: u16, change: BlockChange, migrated: bool) {
        let Some(group) = self.groups[g as usize].as_ref() else {
            return;
        };
        let (first_port, last_port) = group.ports.block_range(change.block);
        let action = match (change.allocated, migrated) {
            (true, false) => BlockAction::Allocated,
            (false, false) => BlockAction::Released,
            (true, true) => BlockAction::MigratedIn,
            (false, true) => BlockAction::MigratedOut,
        };
        if change.allocated {
            self.counters.blocks_allocated += 1;
        } else {
            self.counters.blocks_released += 1;
        }
        let external = Ipv4Addr::from(group.ext);
        self.emit(Event::PortBlock(PortBlockEvent {
            time: now,
            action,
            subscriber: Ipv4Addr::from(change.subscriber),
            external,
            first_port,
            last_port,
        }));
    }
}

/// An IPv4 prefix helper for configuration code.
pub fn prefix(addr: Ipv4Addr, len: u8) -> Option<Ipv4Net> {
    Ipv4Net::new(addr, len).ok().map(|n| n.trunc())
}
