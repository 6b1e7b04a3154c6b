//! Port-block allocation for one external address (RFC 6888 REQ-3/4, RFC 7422).
//!
//! The port range `[port_min, port_max]` is cut into blocks of `block_size` ports. A subscriber
//! holds at most `max_per_subscriber` blocks at once; a block serves the subscriber for every
//! protocol (TCP, UDP, ICMP identifiers each have their own bitmap). A port inside a block is
//! picked at random (RFC 6056 spirit) and is never bound twice. A block returns to the pool when
//! its last port is released. A block may also be *reserved*: held by a peer instance during a
//! migration, so this instance may not allocate from it until the peer's mappings arrive.

use hashbrown::HashMap;
use rand::RngExt;

/// Protocol index into the per-block bitmaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PortProto {
    Tcp = 0,
    Udp = 1,
    Icmp = 2,
}

impl PortProto {
    pub(crate) fn from_ip_proto(p: u8) -> Option<Self> {
        match p {
            flowshift_wire::packet::proto::TCP => Some(PortProto::Tcp),
            flowshift_wire::packet::proto::UDP => Some(PortProto::Udp),
            flowshift_wire::packet::proto::ICMP => Some(PortProto::Icmp),
            _ => None,
        }
    }
}

const PROTOS: usize = 3;

/// Who may allocate from a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockOwner {
    /// In the pool.
    Free,
    /// Held by this subscriber (IPv4 address as u32).
    Subscriber(u32),
    /// Held by a peer instance; not allocatable here.
    Reserved,
}

/// A change of block ownership worth a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlockChange {
    pub block: u32,
    pub subscriber: u32,
    pub allocated: bool,
}

/// Why an allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AllocError {
    SubscriberLimit,
    PoolExhausted,
}

/// Why a claim (import of a bound port) is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClaimError {
    OutOfRange,
    OwnedByOther,
    AlreadyBound,
}

pub(crate) struct PortBlocks {
    port_min: u16,
    block_size: u16,
    /// `ceil(2^32 / block_size)`: `off * recip >> 32 == off / block_size` for every 16-bit
    /// `off` (the error `off * (recip * block_size - 2^32)` stays below `2^32`), so a port's
    /// block takes a multiplication, not a division.
    recip: u64,
    words_per_bitmap: usize,
    max_per_subscriber: usize,
    owner: Vec<BlockOwner>,
    used: Vec<u64>,
    used_count: Vec<u32>,
    subscribers: HashMap<u32, Vec<u32>>,
    /// Per block, allocated the first time a mapping is recorded in it and dropped when its
    /// last port is released (so memory follows the blocks in use): the slab slot of the
    /// mapping holding each port, by protocol (`proto * block_size + bit`; [`NO_MAPPING`]
    /// where none). The inbound mapping lookup (external port -> mapping) reads one entry here
    /// instead of a hash index.
    mappings: Vec<Option<Box<[u32]>>>,
}

/// A port without a mapping in [`PortBlocks::mapping`]'s table.
const NO_MAPPING: u32 = u32::MAX;

impl PortBlocks {
    pub fn new(port_min: u16, block_size: u16, n_blocks: u32, max_per_subscriber: u16) -> Self {
        let words = block_size as usize / 64;
        let n = n_blocks as usize;
        PortBlocks {
            port_min,
            block_size,
            recip: (1u64 << 32).div_ceil(u64::from(block_size.max(1))),
            words_per_bitmap: words,
            max_per_subscriber: max_per_subscriber as usize,
            owner: vec![BlockOwner::Free; n],
            used: vec![0; n * PROTOS * words],
            used_count: vec![0; n],
            subscribers: HashMap::new(),
            mappings: vec![None; n],
        }
    }

    pub fn n_blocks(&self) -> u32 {
        self.owner.len() as u32
    }

    /// First and last port of a block.
    pub fn block_range(&self, block: u32) -> (u16, u16) {
        let first = self.port_min as u32 + block * self.block_size as u32;
        (first as u16, (first + self.block_size as u32 - 1) as u16)
    }

    pub fn block_of(&self, port: u16) -> Option<u32> {
        let off = port.checked_sub(self.port_min)?;
        let (b, _) = self.split(off);
        (b < self.n_blocks()).then_some(b)
    }

    /// (block, bit in the block) of port offset `off` (port minus `port_min`).
    #[inline(always)]
    fn split(&self, off: u16) -> (u32, usize) {
        let b = ((u64::from(off) * self.recip) >> 32) as u32;
        debug_assert_eq!(b, u32::from(off) / u32::from(self.block_size));
        (
            b,
            (u32::from(off) - b * u32::from(self.block_size)) as usize,
        )
    }

    pub fn owner(&self, block: u32) -> BlockOwner {
        self.owner
            .get(block as usize)
            .copied()
            .unwrap_or(BlockOwner::Reserved)
    }

    /// The mapping recorded for `port` (see [`set_mapping`](Self::set_mapping)).
    #[inline]
    pub fn mapping(&self, port: u16, proto: PortProto) -> Option<u32> {
        let (b, bit) = self.split(port.checked_sub(self.port_min)?);
        let t = self.mappings.get(b as usize)?.as_deref()?;
        let slot = t[proto as usize * self.block_size as usize + bit];
        (slot != NO_MAPPING).then_some(slot)
    }

    /// Records `slot` as the mapping holding `port` (in range), or none.
    #[inline]
    pub fn set_mapping(&mut self, port: u16, proto: PortProto, slot: Option<u32>) {
        debug_assert!(port >= self.port_min, "port in range");
        let (b, bit) = self.split(port - self.port_min);
        let bs = self.block_size as usize;
        let table = &mut self.mappings[b as usize];
        let t = match (table, slot) {
            (Some(t), _) => t,
            (None, None) => return,
            (table @ None, Some(_)) => {
                table.insert(vec![NO_MAPPING; PROTOS * bs].into_boxed_slice())
            }
        };
        t[proto as usize * bs + bit] = slot.unwrap_or(NO_MAPPING);
    }

    /// Ports with a mapping recorded (for invariant checks).
    pub fn mapping_entries(&self) -> usize {
        self.mappings
            .iter()
            .flatten()
            .map(|t| t.iter().filter(|&&s| s != NO_MAPPING).count())
            .sum()
    }

    fn bitmap_base(&self, block: u32, proto: PortProto) -> usize {
        (block as usize * PROTOS + proto as usize) * self.words_per_bitmap
    }

    pub fn is_bound(&self, port: u16, proto: PortProto) -> bool {
        let Some(off) = port.checked_sub(self.port_min) else {
            return false;
        };
        let (b, bit) = self.split(off);
        if b >= self.n_blocks() {
            return false;
        }
        let w = self.bitmap_base(b, proto) + bit / 64;
        self.used[w] & (1u64 << (bit % 64)) != 0
    }

    fn set_bit(&mut self, block: u32, proto: PortProto, bit: usize) {
        let w = self.bitmap_base(block, proto) + bit / 64;
        self.used[w] |= 1u64 << (bit % 64);
        self.used_count[block as usize] += 1;
    }

    /// Random free port of `proto` in `block`, marked bound.
    fn pick_in_block(
        &mut self,
        block: u32,
        proto: PortProto,
        rng: &mut impl RngExt,
    ) -> Option<u16> {
        if self.used_count[block as usize] as usize >= PROTOS * self.block_size as usize {
            return None;
        }
        let base = self.bitmap_base(block, proto);
        let words = self.words_per_bitmap;
        let start: usize = rng.random_range(0..self.block_size as usize);
        for i in 0..=words {
            let wi = (start / 64 + i) % words;
            let mut free = !self.used[base + wi];
            if i == 0 {
                // First word: only bits at or after the random start.
                free &= u64::MAX << (start % 64);
            } else if i == words {
                // Wrapped back to the first word: the bits before the start.
                free &= !(u64::MAX << (start % 64));
            }
            if free != 0 {
                let bit = wi * 64 + free.trailing_zeros() as usize;
                self.set_bit(block, proto, bit);
                return Some(
                    self.port_min + (block as usize * self.block_size as usize + bit) as u16,
                );
            }
        }
        None
    }

    /// Allocates a port for `subscriber`, taking a new block from the pool if needed.
    pub fn allocate(
        &mut self,
        subscriber: u32,
        proto: PortProto,
        rng: &mut impl RngExt,
    ) -> Result<(u16, Option<BlockChange>), AllocError> {
        let held = self
            .subscribers
            .get(&subscriber)
            .cloned()
            .unwrap_or_default();
        for &b in &held {
            if let Some(p) = self.pick_in_block(b, proto, rng) {
                return Ok((p, None));
            }
        }
        if held.len() >= self.max_per_subscriber {
            return Err(AllocError::SubscriberLimit);
        }
        let n = self.owner.len();
        let start = rng.random_range(0..n);
        let block = (0..n)
            .map(|i| ((start + i) % n) as u32)
            .find(|&b| self.owner[b as usize] == BlockOwner::Free)
            .ok_or(AllocError::PoolExhausted)?;
        self.owner[block as usize] = BlockOwner::Subscriber(subscriber);
        self.subscribers.entry(subscriber).or_default().push(block);
        let port = self
            .pick_in_block(block, proto, rng)
            .ok_or(AllocError::PoolExhausted)?;
        Ok((
            port,
            Some(BlockChange {
                block,
                subscriber,
                allocated: true,
            }),
        ))
    }

    /// Unbinds a port; returns the block release if that was the block's last port.
    pub fn release(&mut self, port: u16, proto: PortProto) -> Option<BlockChange> {
        let b = self.block_of(port)?;
        if !self.is_bound(port, proto) {
            return None;
        }
        let (_, bit) = self.split(port - self.port_min);
        let w = self.bitmap_base(b, proto) + bit / 64;
        self.used[w] &= !(1u64 << (bit % 64));
        self.used_count[b as usize] -= 1;
        if self.used_count[b as usize] != 0 {
            return None;
        }
        // No port of the block is bound: none has a mapping.
        debug_assert!(
            self.mappings[b as usize]
                .as_deref()
                .is_none_or(|t| t.iter().all(|&s| s == NO_MAPPING)),
            "mappings cleared before their ports are released"
        );
        self.mappings[b as usize] = None;
        match self.owner[b as usize] {
            BlockOwner::Subscriber(s) => {
                self.owner[b as usize] = BlockOwner::Free;
                if let Some(list) = self.subscribers.get_mut(&s) {
                    list.retain(|&x| x != b);
                    if list.is_empty() {
                        self.subscribers.remove(&s);
                    }
                }
                Some(BlockChange {
                    block: b,
                    subscriber: s,
                    allocated: false,
                })
            }
            _ => None,
        }
    }

    /// Does `subscriber` hold any block? (If not, it has no mapping in this group: a mapping's
    /// port is bound, and a block with a bound port stays with its subscriber.)
    #[cfg(test)]
    pub fn holds_blocks(&self, subscriber: u32) -> bool {
        self.subscribers.contains_key(&subscriber)
    }

    /// Binds `port` for `subscriber` (an import of a mapping the peer allocated): refused if
    /// the port is outside the range, in a block another subscriber holds, or bound already
    /// (nothing changes then). A free or reserved block passes to the subscriber: the change
    /// is returned with the block's owner before it, so that
    /// [`unclaim_block`](Self::unclaim_block) can undo it.
    #[inline]
    pub fn claim(
        &mut self,
        port: u16,
        proto: PortProto,
        subscriber: u32,
    ) -> Result<Option<(BlockChange, BlockOwner)>, ClaimError> {
        let off = port
            .checked_sub(self.port_min)
            .ok_or(ClaimError::OutOfRange)?;
        let (b, bit) = self.split(off);
        let before = *self.owner.get(b as usize).ok_or(ClaimError::OutOfRange)?;
        if matches!(before, BlockOwner::Subscriber(s) if s != subscriber) {
            return Err(ClaimError::OwnedByOther);
        }
        let w = self.bitmap_base(b, proto) + bit / 64;
        if self.used[w] & (1u64 << (bit % 64)) != 0 {
            return Err(ClaimError::AlreadyBound);
        }
        self.set_bit(b, proto, bit);
        if before == BlockOwner::Subscriber(subscriber) {
            return Ok(None);
        }
        self.owner[b as usize] = BlockOwner::Subscriber(subscriber);
        self.subscribers.entry(subscriber).or_default().push(b);
        let change = BlockChange {
            block: b,
            subscriber,
            allocated: true,
        };
        Ok(Some((change, before)))
    }

    /// Undoes the ownership change of a [`claim`](Self::claim) whose ports were all released
    /// since (which returned the block to the pool): the block goes back to `before`.
    pub fn unclaim_block(&mut self, block: u32, before: BlockOwner) {
        let b = block as usize;
        debug_assert_eq!(
            self.used_count[b], 0,
            "no port of an unclaimed block is bound"
        );
        debug_assert_eq!(self.owner[b], BlockOwner::Free, "released to the pool");
        debug_assert!(
            !matches!(before, BlockOwner::Subscriber(_)),
            "a claim takes free or reserved blocks"
        );
        self.owner[b] = before;
    }

    /// Marks free blocks as reserved for a peer. Fails (changing nothing) if any is not free.
    pub fn reserve(&mut self, blocks: &[u32]) -> Result<(), u32> {
        if let Some(&b) = blocks.iter().find(|&&b| {
            !matches!(
                self.owner.get(b as usize),
                Some(BlockOwner::Free | BlockOwner::Reserved)
            )
        }) {
            return Err(b);
        }
        for &b in blocks {
            self.owner[b as usize] = BlockOwner::Reserved;
        }
        Ok(())
    }

    /// Returns every reserved block to the pool; the number released.
    pub fn release_reserved(&mut self) -> u32 {
        let mut n = 0;
        for o in &mut self.owner {
            if *o == BlockOwner::Reserved {
                *o = BlockOwner::Free;
                n += 1;
            }
        }
        n
    }

    /// Blocks held by subscribers: (block, subscriber).
    pub fn held(&self) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = self
            .owner
            .iter()
            .enumerate()
            .filter_map(|(b, o)| match o {
                BlockOwner::Subscriber(s) => Some((b as u32, *s)),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Number of blocks held by `subscriber`.
    #[cfg(test)]
    pub fn blocks_of(&self, subscriber: u32) -> usize {
        self.subscribers.get(&subscriber).map_or(0, Vec::len)
    }

    /// Number of blocks in each state: (free, held, reserved).
    pub fn block_counts(&self) -> (u32, u32, u32) {
        let mut c = (0, 0, 0);
        for o in &self.owner {
            match o {
                BlockOwner::Free => c.0 += 1,
                BlockOwner::Subscriber(_) => c.1 += 1,
                BlockOwner::Reserved => c.2 += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn allocates_every_port_of_a_block_once_then_takes_another_block() {
        let mut pb = PortBlocks::new(1024, 64, 4, 2);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for i in 0..128 {
            let (p, change) = pb.allocate(1, PortProto::Udp, &mut rng).unwrap();
            assert!(seen.insert(p), "port {p} bound twice");
            assert_eq!(change.is_some(), i == 0 || i == 64);
        }
        assert_eq!(
            pb.allocate(1, PortProto::Udp, &mut rng),
            Err(AllocError::SubscriberLimit)
        );
        // TCP has its own bitmap in the same blocks.
        assert!(
            pb.allocate(1, PortProto::Tcp, &mut rng)
                .unwrap()
                .1
                .is_none()
        );
        assert_eq!(pb.blocks_of(1), 2);
    }

    #[test]
    fn block_returns_to_pool_when_its_last_port_is_released() {
        let mut pb = PortBlocks::new(1024, 64, 1, 1);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (p, _) = pb.allocate(9, PortProto::Tcp, &mut rng).unwrap();
        assert_eq!(
            pb.allocate(10, PortProto::Tcp, &mut rng),
            Err(AllocError::PoolExhausted)
        );
        let rel = pb.release(p, PortProto::Tcp).unwrap();
        assert!(!rel.allocated);
        assert!(pb.allocate(10, PortProto::Tcp, &mut rng).is_ok());
    }

    #[test]
    fn port_tables_record_mappings_and_go_with_their_block() {
        // A block size that is not a power of two: the division by multiplication is exact.
        let mut pb = PortBlocks::new(1000, 192, 300, 300);
        for off in 0..=u16::MAX - 1000 {
            let (b, bit) = pb.split(off);
            assert_eq!(
                (b, bit),
                (off as u32 / 192, off as usize % 192),
                "offset {off}"
            );
        }
        let port = 1000 + 192 * 7 + 5;
        assert!(matches!(pb.claim(port, PortProto::Udp, 9), Ok(Some(_))));
        assert_eq!(pb.mapping(port, PortProto::Udp), None);
        pb.set_mapping(port, PortProto::Udp, Some(42));
        assert_eq!(pb.mapping(port, PortProto::Udp), Some(42));
        assert_eq!(pb.mapping(port, PortProto::Tcp), None, "per protocol");
        assert_eq!(pb.mapping(port + 1, PortProto::Udp), None);
        assert_eq!(pb.mapping(999, PortProto::Udp), None, "below the range");
        assert_eq!(pb.mapping_entries(), 1);
        pb.set_mapping(port, PortProto::Udp, None);
        assert_eq!(pb.mapping(port, PortProto::Udp), None);
        assert!(pb.mappings[7].is_some());
        assert!(pb.release(port, PortProto::Udp).is_some());
        assert!(
            pb.mappings[7].is_none(),
            "the table goes with the block's last port"
        );
        pb.set_mapping(port, PortProto::Udp, None);
        assert!(pb.mappings[7].is_none(), "clearing allocates nothing");
        assert_eq!(pb.mapping_entries(), 0);
    }

    #[test]
    fn reserved_blocks_are_not_allocated_but_can_be_claimed() {
        let mut pb = PortBlocks::new(1024, 64, 2, 2);
        pb.reserve(&[0]).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..64 {
            let (p, _) = pb.allocate(5, PortProto::Udp, &mut rng).unwrap();
            assert_eq!(pb.block_of(p), Some(1));
        }
        let (change, before) = pb.claim(1030, PortProto::Udp, 6).unwrap().unwrap();
        assert_eq!(
            (change.block, change.subscriber, before),
            (0, 6, BlockOwner::Reserved)
        );
        assert_eq!(
            pb.claim(1031, PortProto::Udp, 6),
            Ok(None),
            "its block already"
        );
        assert_eq!(
            pb.claim(1030, PortProto::Udp, 6),
            Err(ClaimError::AlreadyBound)
        );
        assert_eq!(
            pb.claim(1032, PortProto::Udp, 7),
            Err(ClaimError::OwnedByOther)
        );
        assert_eq!(
            pb.claim(1000, PortProto::Udp, 7),
            Err(ClaimError::OutOfRange)
        );
        // Undone: the ports released, the block is reserved again.
        assert!(pb.release(1031, PortProto::Udp).is_none());
        assert!(pb.release(1030, PortProto::Udp).is_some());
        pb.unclaim_block(0, before);
        assert_eq!(pb.owner(0), BlockOwner::Reserved);
        assert!(!pb.holds_blocks(6));
        assert_eq!(
            pb.claim(2000, PortProto::Udp, 7),
            Err(ClaimError::OutOfRange)
        );
    }
}
