//! The NAT instance: tables, the packet path, expiry, and the migration hooks.

use crate::config::{Filtering, GroupConfig, IpOptionsPolicy, NatConfig};
use crate::counters::{Counters, DropReason};
use crate::index::{
    E_FROZEN, E_HAIRPIN, MappingIndex, Prefetcher, SEntry, STAMP_BITS, STAMP_NONE, SessionIndex,
    SessionKey, TICK_MASK,
};
use crate::ports::{AllocError, BlockChange, PortBlocks, PortProto};
use crate::record::{FLAG_INBOUND_OPENED, RECORD_VERSION, StateRecord, records};
use crate::tcp::{Dir, TcpState, TimeoutClass};
use crate::wheel::{Wheel, WheelEntry};
use flowshift_wire::Instant;
use flowshift_wire::checksum::{self, Delta};
use flowshift_wire::packet::{
    self, IcmpKind, Ipv4Header, L4, ParseError, field, get_u16, icmp_kind, proto, set_addr,
    set_u16, tcp_flags,
};
use foldhash::fast::FixedState;
use hashbrown::HashMap;
use ipnet::Ipv4Net;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use zerocopy::IntoBytes;
use zerocopy::network_endian::{U16, U32};

type Map<K, V> = HashMap<K, V, FixedState>;

const NIL: u32 = u32::MAX;
/// How many records ahead an import prefetches the table slots it will touch.
const IMPORT_PREFETCH: usize = 8;
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

/// How this instance treats a group's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    generation: u32,
    first_session: u32,
    sessions: u32,
    next: u32,
    prev: u32,
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

#[derive(Clone, Copy)]
struct FragEntry {
    slot: u32,
    generation: u32,
    new_src: [u8; 4],
    new_dst: [u8; 4],
    ip_delta: Delta,
    verdict: Verdict,
    deadline: Instant,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FragKey(u64, u32);

fn parse_drop(e: ParseError) -> DropReason {
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
struct Flow {
    proto: u8,
    lport: u16,
    rport: u16,
    tcp_flags: u8,
    icmp_request: bool,
}

/// What the batch path's first pass learns about a packet.
#[derive(Clone, Copy, Debug)]
struct FastMeta {
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

/// How a packet reached the inbound path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ingress {
    /// From the network: decrement the TTL; a subscriber source means hairpin.
    FromNetwork,
    /// Second half of a hairpin: already translated outbound, TTL already decremented.
    Hairpin,
}

/// The headers of the packet embedded in an ICMP error.
struct Embedded {
    off: usize,
    ihl: usize,
    proto: u8,
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
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

/// What a batch's lookup pass found for a packet: `slot == NIL` sends it to the full path.
#[derive(Clone, Copy, Debug)]
struct FastHit {
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
struct ImportScratch {
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
        let hasher_import = FixedState::with_seed(cfg.hash_seed ^ 0x1a2b_3c4d_5e6f_7081);
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
            import_scratch: ImportScratch {
                by_key: hashbrown::HashMap::with_hasher(hasher_import.clone()),
                remotes: hashbrown::HashSet::with_hasher(hasher_import),
                ext_ports: vec![0; 3 * 65536 / 64],
                ..ImportScratch::default()
            },
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

    // ----------------------------------------------------------------------------------------
    // Groups
    // ----------------------------------------------------------------------------------------

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

    fn group(&self, g: GroupId) -> Result<&Group, NatError> {
        self.groups
            .get(g.0 as usize)
            .and_then(Option::as_ref)
            .ok_or(NatError::NoGroup(g))
    }

    fn group_mut(&mut self, g: GroupId) -> Result<&mut Group, NatError> {
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
    fn ext_halted(&self, ext: u32) -> bool {
        self.group_by_ext
            .get(&ext)
            .and_then(|&g| self.groups[g as usize].as_ref())
            .is_none_or(|g| g.mode.stops_fast_path())
    }

    /// The refresh tick of `now`.
    #[inline(always)]
    fn tick(&self, now: Instant) -> u32 {
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
    fn subscriber_group(&self, addr: u32) -> Option<u16> {
        self.groups
            .iter()
            .position(|g| g.as_ref().is_some_and(|g| addr & g.mask == g.net))
            .map(|i| i as u16)
    }

    // ----------------------------------------------------------------------------------------
    // Packet path
    // ----------------------------------------------------------------------------------------

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
                scratch.push(match self.fast_meta(p.as_mut()) {
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
                let pkt = p.as_mut();
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
        let (proto, sport, dport, tcp_flags) = match l4 {
            L4::Tcp {
                src_port,
                dst_port,
                flags,
            } => (proto::TCP, src_port, dst_port, flags),
            L4::Udp { src_port, dst_port } => (proto::UDP, src_port, dst_port, 0),
            L4::Icmp { ty, ident, .. } => match (icmp_kind(ty), inbound) {
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
        let dir = if meta.inbound { Dir::In } else { Dir::Out };
        if meta.proto == proto::TCP
            && meta.tcp_flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0
        {
            self.tcp_update(now, hit.slot, dir, meta.tcp_flags);
        }
        if hit.write {
            self.sessions[hit.slot as usize].last_seen = now;
        }
        self.last_session = hit.slot;
        rewrite(
            pkt,
            meta.ihl as usize,
            meta.proto,
            !meta.inbound,
            true,
            hit.addr.to_be_bytes(),
            hit.port,
            Delta::from_raw(hit.ip_delta),
            Delta::from_raw(hit.l4_delta),
            true,
        );
        if meta.inbound {
            self.counters.translated_in += 1;
            Verdict::ToInside
        } else {
            self.counters.translated_out += 1;
            Verdict::ToOutside
        }
    }

    fn translate(&mut self, now: Instant, pkt: &mut [u8]) -> Verdict {
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

    fn outbound(
        &mut self,
        now: Instant,
        pkt: &mut [u8],
        h: &Ipv4Header,
        l4: L4,
        hairpin: bool,
    ) -> Verdict {
        let flow = match l4 {
            L4::Tcp {
                src_port,
                dst_port,
                flags,
            } => Flow {
                proto: proto::TCP,
                lport: src_port,
                rport: dst_port,
                tcp_flags: flags,
                icmp_request: false,
            },
            L4::Udp { src_port, dst_port } => Flow {
                proto: proto::UDP,
                lport: src_port,
                rport: dst_port,
                tcp_flags: 0,
                icmp_request: false,
            },
            L4::Icmp { ty, ident, .. } => match icmp_kind(ty) {
                IcmpKind::QueryRequest | IcmpKind::QueryReply => Flow {
                    proto: proto::ICMP,
                    lport: ident,
                    rport: 0,
                    tcp_flags: 0,
                    icmp_request: icmp_kind(ty) == IcmpKind::QueryRequest,
                },
                IcmpKind::Error => return self.icmp_error_out(now, pkt, h),
                IcmpKind::Other => return Verdict::Drop(DropReason::UnsupportedIcmp),
            },
        };
        let src = u32::from_be_bytes(h.src);
        let dst = u32::from_be_bytes(h.dst);
        let key = skey(Dir::Out, flow.proto, src, flow.lport, dst, flow.rport);
        let slot = match self.session_index.get(&key) {
            Some(e) => e.slot,
            None => match self.outbound_miss(now, src, dst, flow) {
                Ok(slot) => slot,
                Err(v) => return v,
            },
        };
        if let Some(v) = self.hit_blocked(slot) {
            return v;
        }
        let write = self.refresh_key(&key, now);
        if flow.proto == proto::TCP
            && flow.tcp_flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0
        {
            self.tcp_update(now, slot, Dir::Out, flow.tcp_flags);
        }
        let s = &mut self.sessions[slot as usize];
        if write {
            s.last_seen = now;
        }
        let (ext_port, ip_delta, l4_delta, group) = (
            s.ext_port,
            Delta::from_raw(s.ip_delta),
            Delta::from_raw(s.l4_delta),
            s.group,
        );
        let ext = self.groups[group as usize].as_ref().map_or(0, |g| g.ext);
        rewrite(
            pkt,
            h.header_len,
            flow.proto,
            true,
            true,
            ext.to_be_bytes(),
            ext_port,
            ip_delta,
            l4_delta,
            !h.is_fragment() || h.frag_offset == 0,
        );
        self.last_session = slot;
        if !hairpin {
            self.counters.translated_out += 1;
            return Verdict::ToOutside;
        }
        // Hairpin (RFC 4787 REQ-9): the packet now carries the external source; deliver it to
        // the destination mapping as if it came from outside, without a second TTL decrement.
        let Ok(h2) = packet::parse_ipv4(pkt, false) else {
            return Verdict::Drop(DropReason::Truncated);
        };
        let Ok(Some(l4b)) = packet::parse_l4(h2.proto, &pkt[h2.header_len..h2.total_len]) else {
            return Verdict::Drop(DropReason::L4Truncated);
        };
        let Some(g2) = self.group_by_ext.get(&dst).copied() else {
            return Verdict::Drop(DropReason::NotOurs);
        };
        match self.inbound(now, pkt, &h2, l4b, g2, Ingress::Hairpin) {
            Verdict::ToInside => {
                self.counters.hairpinned += 1;
                Verdict::ToInside
            }
            // The source side is already translated: chaining or holding it now would hand the
            // peer a half-translated packet.
            Verdict::ToPeer(_) | Verdict::Hold(_) => Verdict::Drop(DropReason::GroupDraining),
            v => v,
        }
    }

    /// The refresh of a hit through the entry of `key` (full path): whether to write the
    /// session's `last_seen`. The same rule as the batch path's, so both leave equal tables.
    fn refresh_key(&mut self, key: &SessionKey, now: Instant) -> bool {
        let (lazy, tick) = (self.lazy, self.tick(now));
        match self.session_index.get_mut(key) {
            Some(e) => Self::refresh_stamp(lazy, e, tick),
            None => {
                debug_assert!(false, "refresh of a session that is not indexed");
                true
            }
        }
    }

    /// For a session hit: the verdict if the group is halted or the mapping frozen.
    #[inline(always)]
    fn hit_blocked(&self, slot: u32) -> Option<Verdict> {
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

    fn outbound_miss(
        &mut self,
        now: Instant,
        src: u32,
        dst: u32,
        flow: Flow,
    ) -> Result<u32, Verdict> {
        let g = self
            .subscriber_group(src)
            .ok_or(Verdict::Drop(DropReason::NotOurs))?;
        let mode = self.groups[g as usize]
            .as_ref()
            .map_or(GroupMode::Halted, |g| g.mode);
        match mode {
            GroupMode::Halted => return Err(Verdict::Drop(DropReason::GroupHalted)),
            GroupMode::Moved => return Err(Verdict::ToPeer(GroupId(g))),
            GroupMode::Active | GroupMode::Draining => {}
        }
        let is_syn =
            flow.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN;
        let may_create = match flow.proto {
            proto::TCP => is_syn,
            proto::ICMP => flow.icmp_request,
            _ => true,
        };
        let refused = if flow.proto == proto::TCP {
            DropReason::TcpNoSessionNonSyn
        } else {
            DropReason::NoMapping
        };
        let tcp_state = (flow.proto == proto::TCP).then_some(TcpState::SynOut);
        let m = match self
            .mapping_index
            .get(&mkey(Dir::Out, flow.proto, src, flow.lport))
        {
            Some(&m) => {
                if self.mappings[m as usize].frozen {
                    return Err(Verdict::Hold(self.mapping_id(m)));
                }
                m
            }
            None if mode == GroupMode::Draining => return Err(Verdict::ToPeer(GroupId(g))),
            None if !may_create => return Err(Verdict::Drop(refused)),
            None => self
                .create_mapping(now, g, flow.proto, src, flow.lport)
                .map_err(Verdict::Drop)?,
        };
        if !may_create {
            return Err(Verdict::Drop(refused));
        }
        self.create_session(now, m, dst, flow.rport, tcp_state, false)
            .map_err(|r| {
                self.remove_mapping_if_empty(now, m, RemoveCause::Deleted);
                Verdict::Drop(r)
            })
    }

    fn inbound(
        &mut self,
        now: Instant,
        pkt: &mut [u8],
        h: &Ipv4Header,
        l4: L4,
        g: u16,
        ingress: Ingress,
    ) -> Verdict {
        let decrement_ttl = ingress == Ingress::FromNetwork;
        let flow = match l4 {
            L4::Tcp {
                src_port,
                dst_port,
                flags,
            } => Flow {
                proto: proto::TCP,
                lport: dst_port,
                rport: src_port,
                tcp_flags: flags,
                icmp_request: false,
            },
            L4::Udp { src_port, dst_port } => Flow {
                proto: proto::UDP,
                lport: dst_port,
                rport: src_port,
                tcp_flags: 0,
                icmp_request: false,
            },
            L4::Icmp { ty, ident, .. } => match icmp_kind(ty) {
                IcmpKind::QueryReply => Flow {
                    proto: proto::ICMP,
                    lport: ident,
                    rport: 0,
                    tcp_flags: 0,
                    icmp_request: false,
                },
                // Unsolicited queries to the external address are not answered.
                IcmpKind::QueryRequest => return Verdict::Drop(DropReason::NoMapping),
                IcmpKind::Error if self.subscriber_group(u32::from_be_bytes(h.src)).is_none() => {
                    return self.icmp_error_in(now, pkt, h, g);
                }
                IcmpKind::Error => return self.icmp_error_hairpin(now, pkt, h, g),
                IcmpKind::Other => return Verdict::Drop(DropReason::UnsupportedIcmp),
            },
        };
        let src = u32::from_be_bytes(h.src);
        let dst = u32::from_be_bytes(h.dst);
        let key = skey(Dir::In, flow.proto, dst, flow.lport, src, flow.rport);
        let slot = match self.session_index.get(&key) {
            Some(e) => e.slot,
            // A subscriber sending to an external address of this NAT: hairpin. (An inbound
            // session never has a subscriber as its remote, so a hit above is never one.)
            None if ingress == Ingress::FromNetwork && self.subscriber_group(src).is_some() => {
                // Keep the bytes the outbound half rewrites (IP header, ports, L4 checksum) so a
                // refused hairpin leaves the packet unchanged, as `process` promises.
                let mut saved = [0u8; 80];
                let n = pkt.len().min(h.header_len + 20).min(saved.len());
                saved[..n].copy_from_slice(&pkt[..n]);
                let v = self.outbound(now, pkt, h, l4, true);
                if !matches!(v, Verdict::ToInside | Verdict::ToOutside) {
                    pkt[..n].copy_from_slice(&saved[..n]);
                }
                return v;
            }
            None => match self.inbound_miss(now, g, dst, src, flow) {
                Ok(slot) => slot,
                Err(v) => return v,
            },
        };
        if let Some(v) = self.hit_blocked(slot) {
            return v;
        }
        let write = self.cfg.inbound_refresh && self.refresh_key(&key, now);
        if flow.proto == proto::TCP
            && flow.tcp_flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) != 0
        {
            self.tcp_update(now, slot, Dir::In, flow.tcp_flags);
        }
        let s = &mut self.sessions[slot as usize];
        if write {
            s.last_seen = now;
        }
        let (int_addr, int_port) = (s.int_addr, s.int_port);
        let (ip_delta, l4_delta) = (
            Delta::from_raw(s.ip_delta).inverse(),
            Delta::from_raw(s.l4_delta).inverse(),
        );
        rewrite(
            pkt,
            h.header_len,
            flow.proto,
            false,
            decrement_ttl,
            int_addr.to_be_bytes(),
            int_port,
            ip_delta,
            l4_delta,
            !h.is_fragment() || h.frag_offset == 0,
        );
        self.last_session = slot;
        self.counters.translated_in += 1;
        Verdict::ToInside
    }

    fn inbound_miss(
        &mut self,
        now: Instant,
        g: u16,
        dst: u32,
        src: u32,
        flow: Flow,
    ) -> Result<u32, Verdict> {
        let mode = self.groups[g as usize]
            .as_ref()
            .map_or(GroupMode::Halted, |g| g.mode);
        match mode {
            GroupMode::Halted => return Err(Verdict::Drop(DropReason::GroupHalted)),
            GroupMode::Moved => return Err(Verdict::ToPeer(GroupId(g))),
            GroupMode::Active | GroupMode::Draining => {}
        }
        let m = match self
            .mapping_index
            .get(&mkey(Dir::In, flow.proto, dst, flow.lport))
        {
            Some(&m) => m,
            None if mode == GroupMode::Draining => return Err(Verdict::ToPeer(GroupId(g))),
            None => return Err(Verdict::Drop(DropReason::NoMapping)),
        };
        if self.mappings[m as usize].frozen {
            return Err(Verdict::Hold(self.mapping_id(m)));
        }
        if self.cfg.filtering == Filtering::AddressDependent && !self.mapping_has_remote(m, src) {
            return Err(Verdict::Drop(DropReason::Filtered));
        }
        let tcp_state = if flow.proto == proto::TCP {
            if flow.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) != tcp_flags::SYN
            {
                return Err(Verdict::Drop(DropReason::TcpInboundNoSession));
            }
            Some(TcpState::SynIn)
        } else {
            None
        };
        self.create_session(now, m, src, flow.rport, tcp_state, true)
            .map_err(Verdict::Drop)
    }

    fn mapping_has_remote(&self, m: u32, rem: u32) -> bool {
        let mut s = self.mappings[m as usize].first_session;
        while s != NIL {
            let sess = &self.sessions[s as usize];
            if sess.rem_addr == rem {
                return true;
            }
            s = sess.next;
        }
        false
    }

    fn tcp_update(&mut self, now: Instant, slot: u32, dir: Dir, flags: u8) {
        let s = &mut self.sessions[slot as usize];
        let Some(old) = TcpState::from_u8(s.tcp) else {
            return;
        };
        let new = old.next(dir, flags);
        if new == old {
            return;
        }
        s.tcp = new as u8;
        let class = new.class() as u8;
        if class != s.class {
            s.class = class;
            self.schedule(now, slot);
        }
    }

    /// Ensures the session has a wheel entry for its current class.
    fn schedule(&mut self, now: Instant, slot: u32) {
        debug_assert!(
            (slot as usize) < self.sessions.len(),
            "session slot in range"
        );
        let limit = self.idle_limit(self.sessions[slot as usize].class);
        let s = &mut self.sessions[slot as usize];
        debug_assert!(s.flags & S_LIVE != 0, "only live sessions are scheduled");
        let bit = 1u8 << s.class;
        if s.queued & bit != 0 {
            return;
        }
        s.queued |= bit;
        // The real deadline (the wheel fires past ones at once), so a refreshed or imported
        // session expires one timeout after its last packet, not one timeout after the check.
        // Frozen sessions are only re-checked a timeout from now.
        let base = if s.flags & S_FROZEN != 0 {
            s.last_seen.max(now)
        } else {
            s.last_seen
        };
        let deadline = base + limit;
        let e = WheelEntry {
            slot,
            generation: s.generation,
            class: s.class,
        };
        self.wheel.push(now, deadline, e);
    }

    /// How long a session of timeout class `class` lives after its `last_seen`: the timeout,
    /// plus one refresh tick under lazy refresh (`last_seen` may then be up to a tick older
    /// than the last packet; the slack keeps expiry from ever coming before the timeout).
    #[inline]
    fn idle_limit(&self, class: u8) -> core::time::Duration {
        let slack = if self.lazy {
            1u64 << self.tick_shift
        } else {
            0
        };
        core::time::Duration::from_nanos(self.timeout_ns[class as usize].saturating_add(slack))
    }

    // ---------------------------------------------------------------- ICMP errors (RFC 5508)

    fn embedded(pkt: &[u8], h: &Ipv4Header) -> Option<Embedded> {
        let off = h.header_len + packet::ICMP_HEADER;
        let inner = pkt.get(off..h.total_len)?;
        if inner.len() < packet::IPV4_MIN_HEADER || inner[0] >> 4 != 4 {
            return None;
        }
        let ihl = (inner[0] & 0x0f) as usize * 4;
        if ihl < packet::IPV4_MIN_HEADER || inner.len() < ihl + 8 {
            return None;
        }
        let proto = inner[9];
        let l4 = &inner[ihl..];
        let (sport, dport) = match proto {
            proto::TCP | proto::UDP => (get_u16(l4, 0)?, get_u16(l4, 2)?),
            proto::ICMP => {
                let id = get_u16(l4, field::ICMP_IDENT)?;
                (id, id)
            }
            _ => return None,
        };
        Some(Embedded {
            off,
            ihl,
            proto,
            src: u32::from_be_bytes(packet::get_addr(inner, field::IPV4_SRC)?),
            dst: u32::from_be_bytes(packet::get_addr(inner, field::IPV4_DST)?),
            sport,
            dport,
        })
    }

    /// An error from outside about a packet this NAT sent out (inner source = external).
    fn icmp_error_in(&mut self, _now: Instant, pkt: &mut [u8], h: &Ipv4Header, g: u16) -> Verdict {
        if !checksum::verify(&pkt[h.header_len..h.total_len]) {
            return Verdict::Drop(DropReason::BadIcmpChecksum);
        }
        let Some(e) = Self::embedded(pkt, h) else {
            return Verdict::Drop(DropReason::IcmpErrorMalformed);
        };
        let (lport, rport) = if e.proto == proto::ICMP {
            (e.sport, 0)
        } else {
            (e.sport, e.dport)
        };
        let key = skey(Dir::In, e.proto, e.src, lport, e.dst, rport);
        let Some(slot) = self
            .session_index
            .get(&key)
            .map(|x| x.slot)
            .filter(|_| e.src == u32::from_be_bytes(h.dst))
        else {
            let draining = self.groups[g as usize]
                .as_ref()
                .is_some_and(|g| matches!(g.mode, GroupMode::Draining | GroupMode::Moved));
            return if draining {
                Verdict::ToPeer(GroupId(g))
            } else {
                Verdict::Drop(DropReason::IcmpErrorNoSession)
            };
        };
        if let Some(v) = self.hit_blocked(slot) {
            return v;
        }
        let s = &self.sessions[slot as usize];
        let (int_addr, int_port) = (s.int_addr.to_be_bytes(), s.int_port);
        let (ip_delta, l4_delta) = (
            Delta::from_raw(s.ip_delta).inverse(),
            Delta::from_raw(s.l4_delta).inverse(),
        );
        rewrite_outer_addr(pkt, field::IPV4_DST, int_addr, ip_delta);
        // Only the ICMP message: bytes past the total length are not the packet's.
        rewrite_embedded(
            &mut pkt[..h.total_len],
            &e,
            field::IPV4_SRC,
            true,
            int_addr,
            int_port,
            ip_delta,
            l4_delta,
        );
        refill_icmp_checksum(pkt, h);
        self.last_session = slot;
        self.counters.translated_in += 1;
        Verdict::ToInside
    }

    /// An error from a subscriber about a hairpinned packet (RFC 5508 REQ-7), addressed to an
    /// external address of group `g`: translated out (as from the sender's mapping), then in
    /// (towards the subscriber that sent the quoted packet), with one TTL decrement. A refused
    /// second half leaves the packet unchanged.
    fn icmp_error_hairpin(
        &mut self,
        now: Instant,
        pkt: &mut [u8],
        h: &Ipv4Header,
        g: u16,
    ) -> Verdict {
        // Rare path: a copy of the message to restore it if the inbound half refuses it.
        let saved = pkt[..h.total_len].to_vec();
        let v = self.icmp_error_out(now, pkt, h);
        if v != Verdict::ToOutside {
            return v;
        }
        self.counters.translated_out -= 1;
        let v = match packet::parse_ipv4(pkt, false) {
            Ok(h2) => self.icmp_error_in(now, pkt, &h2, g),
            Err(e) => Verdict::Drop(parse_drop(e)),
        };
        match v {
            Verdict::ToInside => {
                // Both halves decremented the TTL: one decrement only, header checksum redone.
                pkt[field::IPV4_TTL] = h.ttl - 1;
                set_u16(pkt, field::IPV4_CHECKSUM, 0);
                let c = checksum::compute(&pkt[..h.header_len]);
                set_u16(pkt, field::IPV4_CHECKSUM, c);
                self.counters.hairpinned += 1;
                Verdict::ToInside
            }
            v => {
                pkt[..h.total_len].copy_from_slice(&saved);
                match v {
                    Verdict::ToPeer(_) | Verdict::Hold(_) => {
                        Verdict::Drop(DropReason::GroupDraining)
                    }
                    v => v,
                }
            }
        }
    }

    /// An error from a subscriber about a packet this NAT sent in (inner destination = internal).
    fn icmp_error_out(&mut self, now: Instant, pkt: &mut [u8], h: &Ipv4Header) -> Verdict {
        let _ = now;
        if !checksum::verify(&pkt[h.header_len..h.total_len]) {
            return Verdict::Drop(DropReason::BadIcmpChecksum);
        }
        let Some(e) = Self::embedded(pkt, h) else {
            return Verdict::Drop(DropReason::IcmpErrorMalformed);
        };
        let src = u32::from_be_bytes(h.src);
        let Some(g) = self.subscriber_group(src) else {
            return Verdict::Drop(DropReason::NotOurs);
        };
        let (lport, rport) = if e.proto == proto::ICMP {
            (e.dport, 0)
        } else {
            (e.dport, e.sport)
        };
        let key = skey(Dir::Out, e.proto, e.dst, lport, e.src, rport);
        let Some(slot) = self
            .session_index
            .get(&key)
            .map(|x| x.slot)
            .filter(|_| e.dst == src)
        else {
            let draining = self.groups[g as usize]
                .as_ref()
                .is_some_and(|g| matches!(g.mode, GroupMode::Draining | GroupMode::Moved));
            return if draining {
                Verdict::ToPeer(GroupId(g))
            } else {
                Verdict::Drop(DropReason::IcmpErrorNoSession)
            };
        };
        if let Some(v) = self.hit_blocked(slot) {
            return v;
        }
        let s = &self.sessions[slot as usize];
        let ext = self.groups[s.group as usize]
            .as_ref()
            .map_or(0, |g| g.ext)
            .to_be_bytes();
        let (ext_port, ip_delta, l4_delta) = (
            s.ext_port,
            Delta::from_raw(s.ip_delta),
            Delta::from_raw(s.l4_delta),
        );
        rewrite_outer_addr(pkt, field::IPV4_SRC, ext, ip_delta);
        // Only the ICMP message: bytes past the total length are not the packet's.
        rewrite_embedded(
            &mut pkt[..h.total_len],
            &e,
            field::IPV4_DST,
            false,
            ext,
            ext_port,
            ip_delta,
            l4_delta,
        );
        refill_icmp_checksum(pkt, h);
        self.last_session = slot;
        self.counters.translated_out += 1;
        Verdict::ToOutside
    }

    // ---------------------------------------------------------------- fragments

    fn frag_key(h: &Ipv4Header) -> FragKey {
        FragKey(
            (u32::from_be_bytes(h.src) as u64) << 32 | u32::from_be_bytes(h.dst) as u64,
            (h.ident as u32) << 8 | h.proto as u32,
        )
    }

    fn remember_fragment(&mut self, now: Instant, pkt: &[u8], h: &Ipv4Header, verdict: Verdict) {
        let slot = self.last_session;
        if slot == NIL {
            return;
        }
        let (Some(new_src), Some(new_dst)) = (
            packet::get_addr(pkt, field::IPV4_SRC),
            packet::get_addr(pkt, field::IPV4_DST),
        ) else {
            return;
        };
        let key = Self::frag_key(h);
        if self.frags.contains_key(&key) {
            return;
        }
        let deadline = now + self.cfg.fragment_timeout;
        let ip_delta = Delta::NONE
            .replace_addr(h.src, new_src)
            .replace_addr(h.dst, new_dst);
        let generation = self.sessions[slot as usize].generation;
        self.frags.insert(
            key,
            FragEntry {
                slot,
                generation,
                new_src,
                new_dst,
                ip_delta,
                verdict,
                deadline,
            },
        );
        self.frag_fifo.push_back((key, deadline));
    }

    fn later_fragment(&mut self, now: Instant, pkt: &mut [u8], h: &Ipv4Header) -> Verdict {
        let Some(f) = self.frags.get(&Self::frag_key(h)).copied() else {
            return Verdict::Drop(DropReason::FragmentNoState);
        };
        let s = &self.sessions[f.slot as usize];
        if f.deadline <= now || s.flags & S_LIVE == 0 || s.generation != f.generation {
            return Verdict::Drop(DropReason::FragmentNoState);
        }
        if let Some(v) = self.hit_blocked(f.slot) {
            return v;
        }
        let ttl = pkt[field::IPV4_TTL];
        let delta = f.ip_delta.then(ttl_delta(ttl, pkt[9]));
        pkt[field::IPV4_TTL] = ttl - 1;
        set_addr(pkt, field::IPV4_SRC, f.new_src);
        set_addr(pkt, field::IPV4_DST, f.new_dst);
        let c = get_u16(pkt, field::IPV4_CHECKSUM).unwrap_or(0);
        set_u16(pkt, field::IPV4_CHECKSUM, delta.apply(c));
        match f.verdict {
            Verdict::ToOutside => self.counters.translated_out += 1,
            _ => self.counters.translated_in += 1,
        }
        f.verdict
    }

    fn expire_fragments(&mut self, now: Instant) {
        while let Some(&(key, deadline)) = self.frag_fifo.front() {
            if deadline > now {
                break;
            }
            self.frag_fifo.pop_front();
            if self.frags.get(&key).is_some_and(|f| f.deadline == deadline) {
                self.frags.remove(&key);
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Table management
    // ----------------------------------------------------------------------------------------

    fn mapping_id(&self, slot: u32) -> MappingId {
        MappingId {
            slot,
            generation: self.mappings[slot as usize].generation,
        }
    }

    fn live_mapping(&self, id: MappingId) -> Result<&Mapping, NatError> {
        self.mappings
            .get(id.slot as usize)
            .filter(|m| m.live && m.generation == id.generation)
            .ok_or(NatError::NoMapping)
    }

    fn create_mapping(
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

    /// Inserts a mapping whose port is already bound in the group's blocks.
    fn install_mapping(
        &mut self,
        g: u16,
        proto: u8,
        int_addr: u32,
        int_port: u16,
        ext_port: u16,
    ) -> u32 {
        let group = self.groups[g as usize]
            .as_mut()
            .expect("caller checked the group");
        let ext = group.ext;
        let first = group.first_mapping;
        let m = Mapping {
            int_addr,
            int_port,
            ext_port,
            proto,
            group: g,
            live: true,
            frozen: false,
            generation: 0,
            first_session: NIL,
            sessions: 0,
            next: first,
            prev: NIL,
        };
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
        self.mapping_index
            .insert_new(mkey(Dir::Out, proto, int_addr, int_port), slot);
        self.mapping_index
            .insert_new(mkey(Dir::In, proto, ext, ext_port), slot);
        self.mapping_count += 1;
        self.counters.mappings_created += 1;
        slot
    }

    fn create_session(
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
        if self.mappings[m as usize].sessions >= self.cfg.max_sessions_per_mapping {
            return Err(DropReason::SessionsPerMappingLimit);
        }
        Ok(self.install_session(now, now, m, rem_addr, rem_port, tcp, inbound_opened))
    }

    #[allow(clippy::too_many_arguments)]
    fn install_session(
        &mut self,
        now: Instant,
        last_seen: Instant,
        m: u32,
        rem_addr: u32,
        rem_port: u16,
        tcp: Option<TcpState>,
        inbound_opened: bool,
    ) -> u32 {
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
        if self.group_by_ext.contains_key(&rem_addr) {
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
        self.session_index.insert_new(SEntry::new(
            skey(Dir::Out, proto, int_addr, int_port, rem_addr, rem_port),
            slot,
            ext,
            ext_port,
            ip_delta.to_raw(),
            l4_delta.to_raw(),
            ef,
        ));
        self.session_index.insert_new(SEntry::new(
            skey(Dir::In, proto, ext, ext_port, rem_addr, rem_port),
            slot,
            int_addr,
            int_port,
            ip_delta.inverse().to_raw(),
            l4_delta.inverse().to_raw(),
            ef,
        ));
        self.session_count += 1;
        self.counters.sessions_created += 1;
        self.schedule(now, slot);
        slot
    }

    /// Removes a session; removes its mapping too if it was the last one.
    fn remove_session(&mut self, now: Instant, slot: u32, cause: RemoveCause) {
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
        if let Some(group) = self.groups[g as usize].as_mut() {
            group.sessions -= 1;
        }
        self.remove_mapping_if_empty(now, m, cause);
    }

    fn remove_mapping_if_empty(&mut self, now: Instant, m: u32, cause: RemoveCause) {
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
        let ext = group.ext;
        let change =
            PortProto::from_ip_proto(proto).and_then(|pp| group.ports.release(ext_port, pp));
        self.mapping_index
            .remove(&mkey(Dir::Out, proto, int_addr, int_port));
        self.mapping_index
            .remove(&mkey(Dir::In, proto, ext, ext_port));
        if let Some(c) = change {
            self.log_block(now, g, c, cause == RemoveCause::Migrated);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Expiry
    // ----------------------------------------------------------------------------------------

    /// When [`handle_timeout`](Self::handle_timeout) has work next (`Instant::MAX`: none).
    pub fn poll_timeout(&self) -> Instant {
        let frag = self.frag_fifo.front().map_or(Instant::MAX, |&(_, d)| d);
        self.wheel.next_due_at().min(frag)
    }

    /// Expires idle sessions (and mappings left without sessions) and stale fragment state.
    /// Examines at most [`EXPIRY_BUDGET`] timer entries; returns true if due work remains
    /// (call again). Frozen sessions never expire.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        self.expire_fragments(now);
        let mut due = std::mem::take(&mut self.wheel_scratch);
        due.clear();
        let more = self.wheel.pop_due(now, EXPIRY_BUDGET, &mut due);
        let limits: [core::time::Duration; 4] = core::array::from_fn(|c| self.idle_limit(c as u8));
        for e in &due {
            debug_assert!(
                (e.slot as usize) < self.sessions.len(),
                "wheel slot in range"
            );
            let s = &mut self.sessions[e.slot as usize];
            if s.flags & S_LIVE == 0 || s.generation != e.generation {
                continue;
            }
            s.queued &= !(1 << e.class);
            if s.class != e.class {
                continue; // the session has an entry for its current class
            }
            let deadline = s.last_seen + limits[e.class as usize];
            if deadline > now || s.flags & S_FROZEN != 0 {
                self.schedule(now, e.slot);
                continue;
            }
            self.counters.sessions_expired += 1;
            self.remove_session(now, e.slot, RemoveCause::Deleted);
        }
        self.wheel_scratch = due;
        more
    }

    // ----------------------------------------------------------------------------------------
    // Migration hooks
    // ----------------------------------------------------------------------------------------

    /// The mappings of a group, most recently created first.
    pub fn group_mappings(&self, g: GroupId) -> Result<Vec<MappingId>, NatError> {
        let mut out = Vec::with_capacity(self.group(g)?.mappings as usize);
        let mut m = self.group(g)?.first_mapping;
        while m != NIL {
            out.push(self.mapping_id(m));
            m = self.mappings[m as usize].next;
        }
        Ok(out)
    }

    /// A mapping's summary.
    pub fn mapping_info(&self, id: MappingId) -> Result<MappingInfo, NatError> {
        let m = self.live_mapping(id)?;
        let mut last_seen = Instant::ZERO;
        let mut s = m.first_session;
        while s != NIL {
            last_seen = last_seen.max(self.sessions[s as usize].last_seen);
            s = self.sessions[s as usize].next;
        }
        Ok(MappingInfo {
            id,
            proto: m.proto,
            internal: SocketAddrV4::new(Ipv4Addr::from(m.int_addr), m.int_port),
            external_port: m.ext_port,
            sessions: m.sessions,
            last_seen,
            frozen: m.frozen,
        })
    }

    /// Freezes or unfreezes a mapping: while frozen its packets return [`Verdict::Hold`] and
    /// its sessions do not expire.
    pub fn set_frozen(&mut self, id: MappingId, frozen: bool) -> Result<(), NatError> {
        self.live_mapping(id)?;
        let m = &mut self.mappings[id.slot as usize];
        m.frozen = frozen;
        let ext = self.groups[m.group as usize].as_ref().map_or(0, |g| g.ext);
        let mut s = m.first_session;
        while s != NIL {
            let sess = &mut self.sessions[s as usize];
            if frozen {
                sess.flags |= S_FROZEN;
            } else {
                sess.flags &= !S_FROZEN;
            }
            // The index entries carry the flag for the fast path; their refresh stamps start
            // over (a frozen session may stay idle for longer than the stamps' wrap-around).
            let ef = entry_flags(sess.flags);
            let keys = [
                skey(
                    Dir::Out,
                    sess.proto,
                    sess.int_addr,
                    sess.int_port,
                    sess.rem_addr,
                    sess.rem_port,
                ),
                skey(
                    Dir::In,
                    sess.proto,
                    ext,
                    sess.ext_port,
                    sess.rem_addr,
                    sess.rem_port,
                ),
            ];
            let next = sess.next;
            for key in keys {
                match self.session_index.get_mut(&key) {
                    Some(e) => {
                        debug_assert_eq!(e.slot, s, "index entry points at its session");
                        e.flags = ef;
                        e.set_stamp(STAMP_NONE);
                    }
                    None => debug_assert!(false, "a live session is indexed under both keys"),
                }
            }
            s = next;
        }
        Ok(())
    }

    /// Appends the mapping's sessions as [`StateRecord`]s to `out`; returns how many.
    pub fn export_mapping(
        &self,
        id: MappingId,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<u32, NatError> {
        let m = self.live_mapping(id)?;
        let mut s = m.first_session;
        let mut n = 0;
        while s != NIL {
            let sess = &self.sessions[s as usize];
            let idle = now.saturating_since(sess.last_seen).as_millis();
            let rec = StateRecord {
                proto: m.proto,
                tcp_state: sess.tcp,
                flags: if sess.flags & S_INBOUND_OPENED != 0 {
                    FLAG_INBOUND_OPENED
                } else {
                    0
                },
                version: RECORD_VERSION,
                int_addr: m.int_addr.to_be_bytes(),
                int_port: U16::new(m.int_port),
                ext_port: U16::new(m.ext_port),
                rem_addr: sess.rem_addr.to_be_bytes(),
                rem_port: U16::new(sess.rem_port),
                reserved: U16::ZERO,
                idle_ms: U32::new(u32::try_from(idle).unwrap_or(u32::MAX)),
            };
            out.extend_from_slice(rec.as_bytes());
            n += 1;
            s = sess.next;
        }
        Ok(n)
    }

    /// Removes a mapping and its sessions (after a migration peer acknowledged it, or by an
    /// operator); its port is unbound here. Returns the number of sessions removed.
    pub fn remove_mapping(
        &mut self,
        id: MappingId,
        now: Instant,
        cause: RemoveCause,
    ) -> Result<u32, NatError> {
        let m = self.live_mapping(id)?;
        let n = m.sessions;
        let mut s = m.first_session;
        while s != NIL {
            let next = self.sessions[s as usize].next;
            self.remove_session(now, s, cause);
            s = next;
        }
        Ok(n)
    }

    /// Installs records exported by a peer into group `g`, all or nothing: on error nothing is
    /// installed. Refuses malformed records, records outside the group's subscribers or port
    /// range, mappings or ports already present here, ports in a block another subscriber holds,
    /// duplicates, and batches that would exceed the table bounds. Imported blocks may exceed
    /// the per-subscriber block limit (the peer allocated them).
    pub fn import(
        &mut self,
        g: GroupId,
        now: Instant,
        bytes: &[u8],
    ) -> Result<ImportSummary, NatError> {
        let result = self.import_all_or_nothing(g, now, bytes);
        if result.is_err() {
            self.counters.records_refused +=
                (bytes.len() / crate::record::RECORD_LEN).max(1) as u64;
        }
        result
    }

    /// Pre-sizes the tables for `mappings` more mappings and `sessions` more sessions (a
    /// migration destination calls it when `Prepare` announces what will come), so that the
    /// imports that follow do not grow the slabs or the hash indexes while installing.
    /// Clamped to the configured bounds: never reserves room past `max_mappings` /
    /// `max_sessions` (counting what is held already). Changes nothing observable.
    pub fn reserve(&mut self, mappings: usize, sessions: usize) {
        let m = mappings.min(self.cfg.max_mappings.saturating_sub(self.mapping_count) as usize);
        let s = sessions.min(self.cfg.max_sessions.saturating_sub(self.session_count) as usize);
        // Free slots are reused first; the rest are new slots at the end of the slabs.
        let m_new = m.saturating_sub(self.mapping_free.len());
        let s_new = s.saturating_sub(self.session_free.len());
        // A slab never holds more slots than its bound (free slots are reused first).
        grow_slab(&mut self.mappings, m_new, self.cfg.max_mappings as usize);
        grow_slab(&mut self.sessions, s_new, self.cfg.max_sessions as usize);
        // Two index entries per mapping and per session.
        self.mapping_index
            .reserve(2 * m, 2 * self.cfg.max_mappings as usize);
        self.session_index
            .reserve(2 * s, 2 * self.cfg.max_sessions as usize);
        // One expiry entry per new session (a session has one per timeout class it went
        // through; more are allocated as needed).
        self.wheel.reserve(s);
        debug_assert!(self.mappings.capacity() >= self.mappings.len() + m_new);
        debug_assert!(self.sessions.capacity() >= self.sessions.len() + s_new);
        debug_assert!(self.session_index.capacity() >= self.session_index.len() + 2 * s);
    }

    fn import_all_or_nothing(
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
            let known = match prev {
                Some((k, idx)) if k == mk => Some(idx),
                _ => sc.by_key.get(&mk).copied(),
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
                    sc.by_key.insert(mk, idx);
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
        let (pf_s, pf_m) = (
            self.session_index.prefetcher(),
            self.mapping_index.prefetcher(),
        );
        let ext = self.group(g).expect("validated").ext;
        for (i, (r, &idx)) in recs.iter().zip(&sc.rec_mapping).enumerate() {
            // Where the inserts of a record a few ahead will go (overlapping the latencies).
            if let Some(a) = recs.get(i + IMPORT_PREFETCH) {
                let (int_addr, int_port, ext_port) = (
                    u32::from_be_bytes(a.int_addr),
                    a.int_port.get(),
                    a.ext_port.get(),
                );
                let (rem, rport) = (u32::from_be_bytes(a.rem_addr), a.rem_port.get());
                for k in [
                    skey(Dir::Out, a.proto, int_addr, int_port, rem, rport),
                    skey(Dir::In, a.proto, ext, ext_port, rem, rport),
                ] {
                    pf_s.prefetch_insert(self.session_index.hash(&k));
                }
                for k in [
                    mkey(Dir::Out, a.proto, int_addr, int_port),
                    mkey(Dir::In, a.proto, ext, ext_port),
                ] {
                    pf_m.prefetch_insert(self.mapping_index.hash(&k));
                }
            }
            let m = &mut sc.mappings[idx as usize];
            if m.slot == NIL {
                let pp = PortProto::from_ip_proto(m.proto).expect("validated");
                let change = self
                    .group_mut(g)
                    .expect("validated")
                    .ports
                    .claim(m.ext_port, pp, m.int_addr);
                if let Some(c) = change {
                    self.log_block(now, g.0, c, true);
                }
                m.slot = self.install_mapping(g.0, m.proto, m.int_addr, m.int_port, m.ext_port);
            }
            let slot = m.slot;
            debug_assert!(
                self.mappings[slot as usize].live,
                "installing under a live mapping"
            );
            let last_seen = now - core::time::Duration::from_millis(r.idle_ms.get() as u64);
            self.install_session(
                now,
                last_seen,
                slot,
                u32::from_be_bytes(r.rem_addr),
                r.rem_port.get(),
                TcpState::from_u8(r.tcp_state),
                r.flags & FLAG_INBOUND_OPENED != 0,
            );
        }
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

    /// Checks every internal invariant (O(table size); for tests and the simulator): indices
    /// point at live entries that hold the keys, counts agree, every mapping's external port is
    /// bound exactly once in its group's blocks, no two mappings share an external endpoint.
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
        let mut live_mappings = 0u32;
        let mut ext_seen: HashMap<(u32, u8, u16), u32> = HashMap::new();
        for (i, m) in self.mappings.iter().enumerate() {
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
                || self
                    .mapping_index
                    .get(&mkey(Dir::In, m.proto, group.ext, m.ext_port))
                    != Some(&(i as u32))
            {
                return Err(format!("mapping {i} not indexed under its keys"));
            }
        }
        if live_mappings != self.mapping_count
            || self.mapping_index.len() != 2 * live_mappings as usize
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

/// Makes room for `new_slots` more slots at the end of `slab`: amortised growth (at least
/// double) but never past `bound` slots unless asked to; freshly allocated memory is written
/// once (page faults here, not at the inserts that follow).
fn grow_slab<T: Default>(slab: &mut Vec<T>, new_slots: usize, bound: usize) {
    if slab.capacity() - slab.len() >= new_slots {
        return;
    }
    let want = slab.len() + new_slots;
    let target = want.max(slab.capacity().saturating_mul(2).min(bound));
    slab.reserve_exact(target - slab.len());
    for slot in slab.spare_capacity_mut() {
        slot.write(T::default());
    }
    debug_assert!(slab.capacity() >= want);
}

/// The index-entry flags of a session with flags `s_flags`.
#[inline(always)]
fn entry_flags(s_flags: u8) -> u8 {
    (if s_flags & S_FROZEN != 0 { E_FROZEN } else { 0 })
        | (if s_flags & S_HAIRPIN != 0 {
            E_HAIRPIN
        } else {
            0
        })
}

/// Puts `item` in a free slot of `slab` (keeping what `keep` copies from the slot's previous
/// occupant, i.e. its generation) or at the end; returns the slot.
fn slab_insert<T>(
    slab: &mut Vec<T>,
    free: &mut Vec<u32>,
    mut item: T,
    keep: impl Fn(&T, &mut T),
) -> u32 {
    match free.pop() {
        Some(slot) => {
            keep(&slab[slot as usize], &mut item);
            slab[slot as usize] = item;
            slot
        }
        None => {
            slab.push(item);
            (slab.len() - 1) as u32
        }
    }
}

/// The delta of decrementing the TTL in the (TTL, protocol) header word.
#[inline(always)]
fn ttl_delta(ttl: u8, proto: u8) -> Delta {
    Delta::NONE.replace(
        u16::from_be_bytes([ttl, proto]),
        u16::from_be_bytes([ttl.wrapping_sub(1), proto]),
    )
}

/// The precomputed rewrite of the fast path: one address and one port (or ICMP identifier),
/// the TTL, and the IPv4 and transport checksums, incrementally. `source` picks which side is
/// rewritten. `with_l4` is false for non-first fragments (no transport header).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rewrite(
    pkt: &mut [u8],
    ihl: usize,
    proto: u8,
    source: bool,
    decrement_ttl: bool,
    addr: [u8; 4],
    port: u16,
    ip_delta: Delta,
    l4_delta: Delta,
    with_l4: bool,
) {
    let mut ipd = ip_delta;
    if decrement_ttl {
        let ttl = pkt[field::IPV4_TTL];
        ipd = ipd.then(ttl_delta(ttl, pkt[9]));
        pkt[field::IPV4_TTL] = ttl.wrapping_sub(1);
    }
    let c = get_u16(pkt, field::IPV4_CHECKSUM).unwrap_or(0);
    set_u16(pkt, field::IPV4_CHECKSUM, ipd.apply(c));
    set_addr(
        pkt,
        if source {
            field::IPV4_SRC
        } else {
            field::IPV4_DST
        },
        addr,
    );
    if !with_l4 {
        return;
    }
    let l4 = &mut pkt[ihl..];
    match proto {
        proto::TCP => {
            set_u16(
                l4,
                if source {
                    field::SRC_PORT
                } else {
                    field::DST_PORT
                },
                port,
            );
            let c = get_u16(l4, field::TCP_CHECKSUM).unwrap_or(0);
            set_u16(l4, field::TCP_CHECKSUM, l4_delta.apply(c));
        }
        proto::UDP => {
            set_u16(
                l4,
                if source {
                    field::SRC_PORT
                } else {
                    field::DST_PORT
                },
                port,
            );
            let c = get_u16(l4, field::UDP_CHECKSUM).unwrap_or(0);
            set_u16(l4, field::UDP_CHECKSUM, l4_delta.apply_udp(c));
        }
        _ => {
            set_u16(l4, field::ICMP_IDENT, port);
            let c = get_u16(l4, field::ICMP_CHECKSUM).unwrap_or(0);
            set_u16(l4, field::ICMP_CHECKSUM, l4_delta.apply(c));
        }
    }
}

/// Rewrites the outer address of an ICMP error and its header checksum (with TTL decrement).
fn rewrite_outer_addr(pkt: &mut [u8], off: usize, addr: [u8; 4], ip_delta: Delta) {
    let ttl = pkt[field::IPV4_TTL];
    let d = ip_delta.then(ttl_delta(ttl, pkt[9]));
    pkt[field::IPV4_TTL] = ttl.wrapping_sub(1);
    let c = get_u16(pkt, field::IPV4_CHECKSUM).unwrap_or(0);
    set_u16(pkt, field::IPV4_CHECKSUM, d.apply(c));
    set_addr(pkt, off, addr);
}

/// Rewrites the embedded packet of an ICMP error: one address (at `addr_off` in its header),
/// the matching port or identifier, its header checksum, and its transport checksum when the
/// bytes are present (RFC 5508 section 4.2).
#[allow(clippy::too_many_arguments)]
fn rewrite_embedded(
    pkt: &mut [u8],
    e: &Embedded,
    addr_off: usize,
    source_port: bool,
    addr: [u8; 4],
    port: u16,
    ip_delta: Delta,
    l4_delta: Delta,
) {
    let Some(inner) = pkt.get_mut(e.off..) else {
        return;
    };
    let c = get_u16(inner, field::IPV4_CHECKSUM).unwrap_or(0);
    set_u16(inner, field::IPV4_CHECKSUM, ip_delta.apply(c));
    set_addr(inner, addr_off, addr);
    let Some(l4) = inner.get_mut(e.ihl..) else {
        return;
    };
    match e.proto {
        proto::TCP | proto::UDP => {
            set_u16(
                l4,
                if source_port {
                    field::SRC_PORT
                } else {
                    field::DST_PORT
                },
                port,
            );
            if e.proto == proto::TCP {
                if let Some(c) = get_u16(l4, field::TCP_CHECKSUM) {
                    set_u16(l4, field::TCP_CHECKSUM, l4_delta.apply(c));
                }
            } else if let Some(c) = get_u16(l4, field::UDP_CHECKSUM) {
                set_u16(l4, field::UDP_CHECKSUM, l4_delta.apply_udp(c));
            }
        }
        _ => {
            set_u16(l4, field::ICMP_IDENT, port);
            if let Some(c) = get_u16(l4, field::ICMP_CHECKSUM) {
                set_u16(l4, field::ICMP_CHECKSUM, l4_delta.apply(c));
            }
        }
    }
}

/// Recomputes the checksum of the outer ICMP message (its payload changed in several places).
fn refill_icmp_checksum(pkt: &mut [u8], h: &Ipv4Header) {
    let Some(icmp) = pkt.get_mut(h.header_len..h.total_len) else {
        return;
    };
    set_u16(icmp, field::ICMP_CHECKSUM, 0);
    let c = checksum::compute(icmp);
    set_u16(icmp, field::ICMP_CHECKSUM, c);
}

/// An IPv4 prefix helper for configuration code.
pub fn prefix(addr: Ipv4Addr, len: u8) -> Option<Ipv4Net> {
    Ipv4Net::new(addr, len).ok().map(|n| n.trunc())
}
