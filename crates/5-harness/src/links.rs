//! The harness's links: the state-transfer link (serialization, delay, seeded faults) and the
//! chain path (FIFO, fixed delay), as time-ordered queues.

use crate::{A, HarnessConfig, HarnessStats, MAX_IN_FLIGHT};
use flowshift_migration::{InstanceId, MigrationEvent};
use flowshift_wire::Instant;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::time::Duration;

/// Fault injection on the state-transfer link (both directions). Draws come from the
/// harness's seeded stream, per frame: loss, then duplication, then each copy's jitter.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Probability that a frame is lost.
    pub loss: f64,
    /// Probability that a frame arrives twice.
    pub dup: f64,
    /// Extra uniformly random delay in [0, jitter) per copy (reorders frames).
    pub jitter: Duration,
    /// Every frame sent from this time on is lost (the channel fails).
    pub cut_at: Option<Instant>,
}

/// A packet or frame on its way: (to, from, bytes).
type InFlight = (InstanceId, InstanceId, Vec<u8>);

/// The queues between the instances, and the events waiting for the orchestrator.
pub(crate) struct Net {
    rng: ChaCha8Rng,
    seq: u64,
    /// (deliver at, order) -> frame.
    transfer: BTreeMap<(Instant, u64), InFlight>,
    /// When each direction's transfer link is free again: [from A, from B].
    free_at: [Instant; 2],
    /// (deliver at, order) -> chained packet.
    chain: BTreeMap<(Instant, u64), InFlight>,
    /// Instance events drained and not yet handed on.
    pub events: Vec<(InstanceId, MigrationEvent)>,
}

impl Net {
    pub fn new(seed: u64) -> Net {
        Net {
            rng: ChaCha8Rng::seed_from_u64(seed),
            seq: 0,
            transfer: BTreeMap::new(),
            free_at: [Instant::ZERO; 2],
            chain: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// A fresh tie-breaker (insertion order among equal times).
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn next_chain(&self) -> Option<Instant> {
        self.chain.keys().next().map(|k| k.0)
    }

    pub fn next_transfer(&self) -> Option<Instant> {
        self.transfer.keys().next().map(|k| k.0)
    }

    /// The process `id` died: what travels to or from it is lost (its connections broke).
    /// Returns the transfer frames and chained packets dropped.
    pub fn forget(&mut self, id: InstanceId) -> (u64, u64) {
        let (t, c) = (self.transfer.len(), self.chain.len());
        self.transfer.retain(|_, x| x.0 != id && x.1 != id);
        self.chain.retain(|_, x| x.0 != id && x.1 != id);
        (
            (t - self.transfer.len()) as u64,
            (c - self.chain.len()) as u64,
        )
    }

    pub fn pop_chain(&mut self) -> Option<InFlight> {
        self.chain.pop_first().map(|(_, x)| x)
    }

    pub fn pop_transfer(&mut self) -> Option<InFlight> {
        self.transfer.pop_first().map(|(_, x)| x)
    }

    /// A chained packet arrives at `at`; false (dropped) if [`MAX_IN_FLIGHT`] are on the way.
    pub fn chain(&mut self, at: Instant, to: InstanceId, from: InstanceId, pkt: Vec<u8>) -> bool {
        if self.chain.len() >= MAX_IN_FLIGHT {
            return false;
        }
        let k = (at, self.next_seq());
        self.chain.insert(k, (to, from, pkt));
        true
    }

    /// A transfer frame leaves `from` now: it waits for the link, is serialized, then faults
    /// apply; each surviving copy arrives a delay (plus jitter) after its serialization ends.
    /// A copy that finds [`MAX_IN_FLIGHT`] frames on the links is dropped (`queue_full`).
    pub fn transmit(
        &mut self,
        now: Instant,
        cfg: &HarnessConfig,
        from: InstanceId,
        to: InstanceId,
        frame: Vec<u8>,
        stats: &mut HarnessStats,
    ) {
        let dir = usize::from(from != A);
        let ser = Duration::from_nanos((frame.len() as f64 * cfg.transfer_ns_per_byte) as u64);
        let done = self.free_at[dir].max(now) + ser;
        self.free_at[dir] = done;
        let f = cfg.faults;
        if f.cut_at.is_some_and(|t| now >= t) || self.rng.random_bool(f.loss) {
            stats.frames_lost += 1;
            return;
        }
        let copies = if self.rng.random_bool(f.dup) {
            stats.frames_duplicated += 1;
            2
        } else {
            1
        };
        let mut frame = Some(frame);
        for copy in (0..copies).rev() {
            let jitter = if f.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(self.rng.random_range(0..f.jitter.as_nanos() as u64))
            };
            let bytes = match copy {
                0 => frame.take().unwrap_or_default(),
                _ => frame.clone().unwrap_or_default(),
            };
            if self.transfer.len() >= MAX_IN_FLIGHT {
                stats.queue_full += 1;
                continue;
            }
            let k = (done + cfg.transfer_delay + jitter, self.next_seq());
            self.transfer.insert(k, (to, from, bytes));
        }
    }
}
