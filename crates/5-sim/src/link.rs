//! Unidirectional links: a drop-tail byte-bounded queue, a serializer at a fixed bit rate, and
//! a propagation delay, with seeded fault injection (loss, reordering) and up/down state.

use std::collections::VecDeque;
use std::time::Duration;

use flowshift_wire::Instant;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::packet::{DropCause, ElementId, Packet, Port};

/// Static parameters of a unidirectional link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkConfig {
    /// Serialization rate in bit/s (> 0). A packet of `n` bytes occupies the link for
    /// `ceil(n * 8 * 1e9 / rate_bps)` nanoseconds.
    pub rate_bps: u64,
    /// Propagation delay, added after serialization.
    pub delay: Duration,
    /// Capacity of the drop-tail queue in bytes, counting packets waiting to be serialized
    /// (not the one being serialized). A packet that does not fit is dropped
    /// ([`DropCause::QueueFull`]).
    pub queue_bytes: usize,
    /// Probability in `[0, 1]` that a serialized packet is lost on the wire
    /// ([`DropCause::InjectedLoss`]).
    pub loss: f64,
    /// Probability in `[0, 1]` that a serialized packet gets `reorder_delay` of extra
    /// propagation delay (so later packets can overtake it).
    pub reorder: f64,
    /// The extra delay given to reordered packets.
    pub reorder_delay: Duration,
}

impl LinkConfig {
    /// A loss-free, order-preserving link.
    pub fn new(rate_bps: u64, delay: Duration, queue_bytes: usize) -> Self {
        LinkConfig {
            rate_bps,
            delay,
            queue_bytes,
            loss: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
        }
    }
    /// With random loss probability `p`.
    pub fn with_loss(mut self, p: f64) -> Self {
        self.loss = p;
        self
    }
    /// With a fraction `p` of packets delayed by an extra `extra`.
    pub fn with_reorder(mut self, p: f64, extra: Duration) -> Self {
        self.reorder = p;
        self.reorder_delay = extra;
        self
    }
    /// Checks the contract of each field.
    pub fn validate(&self) -> Result<(), String> {
        if self.rate_bps == 0 {
            return Err("link rate must be > 0 bit/s".into());
        }
        for (name, p) in [("loss", self.loss), ("reorder", self.reorder)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("link {name} probability {p} not in [0, 1]"));
            }
        }
        Ok(())
    }
    /// Serialization time of `bytes` bytes on this link, rounded up to whole nanoseconds.
    pub fn serialization(&self, bytes: usize) -> Duration {
        let bits = bytes as u128 * 8 * 1_000_000_000;
        let rate = self.rate_bps.max(1) as u128;
        let ns = bits.div_ceil(rate);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// Counters of one link. "Offered" packets were handed to the link; each one is then either
/// transmitted or dropped (queue full / link down), or still queued at the end. Transmitted
/// packets are then delivered, dropped (injected loss / link down), or still on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// Packets handed to the link.
    pub offered_packets: u64,
    /// Bytes handed to the link.
    pub offered_bytes: u64,
    /// Packets that finished serialization.
    pub transmitted_packets: u64,
    /// Bytes that finished serialization.
    pub transmitted_bytes: u64,
    /// Packets handed to the far end.
    pub delivered_packets: u64,
    /// Bytes handed to the far end.
    pub delivered_bytes: u64,
    /// Packets refused because the queue was full.
    pub dropped_queue_full: u64,
    /// Packets lost by injected random loss.
    pub dropped_injected_loss: u64,
    /// Packets lost because the link was (or went) down.
    pub dropped_link_down: u64,
    /// Packets given the extra reordering delay.
    pub reorder_delayed: u64,
    /// Largest queue occupancy seen, in bytes (excluding the packet being serialized).
    pub max_queue_bytes: u64,
}

/// What happened to a packet offered to a link.
pub(crate) enum Offer {
    /// Refused; the caller accounts for the drop.
    Dropped(Packet, DropCause),
    /// Waiting in the queue.
    Queued,
    /// The link was idle: the packet is being serialized until the given time.
    Started(Instant),
}

/// What a finished serialization produced.
pub(crate) struct TxDone {
    /// The packet and its arrival time at the far end, or a drop.
    pub outcome: Result<(Packet, Instant), (Packet, DropCause)>,
    /// If another packet started serialization: when it finishes.
    pub next_done: Option<Instant>,
    /// A host that asked to be woken when the queue has room again.
    pub wake: Option<ElementId>,
}

/// A unidirectional link and its dynamic state.
pub(crate) struct Link {
    pub name: String,
    pub cfg: LinkConfig,
    pub from: (ElementId, Port),
    pub to: (ElementId, Port),
    queue: VecDeque<Packet>,
    queued_bytes: usize,
    in_service: Option<Packet>,
    pub up: bool,
    /// Bumped when the link goes down: events from an older epoch are stale.
    pub epoch: u32,
    rng: ChaCha8Rng,
    pub stats: LinkStats,
    /// Host to wake when the queue is empty or has at least `wake_threshold()` bytes free.
    waker: Option<ElementId>,
}

impl Link {
    pub fn new(
        name: String,
        cfg: LinkConfig,
        from: (ElementId, Port),
        to: (ElementId, Port),
        rng: ChaCha8Rng,
    ) -> Self {
        Link {
            name,
            cfg,
            from,
            to,
            queue: VecDeque::new(),
            queued_bytes: 0,
            in_service: None,
            up: true,
            epoch: 0,
            rng,
            stats: LinkStats::default(),
            waker: None,
        }
    }

    /// Bytes of queue space left.
    pub fn free_bytes(&self) -> usize {
        self.cfg.queue_bytes.saturating_sub(self.queued_bytes)
    }

    /// True if nothing is being serialized.
    pub fn is_idle(&self) -> bool {
        self.in_service.is_none()
    }

    /// Bytes waiting in the queue (excluding the packet being serialized).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Asks for `element` to be woken when the queue is empty or at least `wake_threshold()`
    /// bytes are free.
    pub fn set_waker(&mut self, element: ElementId) {
        self.waker = Some(element);
    }

    fn wake_threshold(&self, mtu: usize) -> usize {
        mtu.max(self.cfg.queue_bytes / 2)
    }

    /// Hands a packet to the link at `now`.
    pub fn offer(&mut self, pkt: Packet, now: Instant) -> Offer {
        self.stats.offered_packets += 1;
        self.stats.offered_bytes += pkt.len() as u64;
        if !self.up {
            self.stats.dropped_link_down += 1;
            return Offer::Dropped(pkt, DropCause::LinkDown);
        }
        if self.in_service.is_none() {
            let done = now + self.cfg.serialization(pkt.len());
            self.in_service = Some(pkt);
            return Offer::Started(done);
        }
        if self.queued_bytes + pkt.len() > self.cfg.queue_bytes {
            self.stats.dropped_queue_full += 1;
            return Offer::Dropped(pkt, DropCause::QueueFull);
        }
        self.queued_bytes += pkt.len();
        self.stats.max_queue_bytes = self.stats.max_queue_bytes.max(self.queued_bytes as u64);
        self.queue.push_back(pkt);
        Offer::Queued
    }

    /// The packet in service finished serialization at `now`. `mtu` sizes the wake threshold.
    /// Returns `None` if nothing was in service (a stale event).
    pub fn tx_done(&mut self, now: Instant, mtu: usize) -> Option<TxDone> {
        let pkt = self.in_service.take()?;
        self.stats.transmitted_packets += 1;
        self.stats.transmitted_bytes += pkt.len() as u64;
        let outcome = if self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss) {
            self.stats.dropped_injected_loss += 1;
            Err((pkt, DropCause::InjectedLoss))
        } else {
            let mut at = now + self.cfg.delay;
            if self.cfg.reorder > 0.0 && self.rng.random_bool(self.cfg.reorder) {
                self.stats.reorder_delayed += 1;
                at = at + self.cfg.reorder_delay;
            }
            Ok((pkt, at))
        };
        let next_done = self.queue.pop_front().map(|next| {
            self.queued_bytes -= next.len();
            let done = now + self.cfg.serialization(next.len());
            self.in_service = Some(next);
            done
        });
        let room = self.queued_bytes == 0 || self.free_bytes() >= self.wake_threshold(mtu);
        let wake = if self.waker.is_some() && room {
            self.waker.take()
        } else {
            None
        };
        Some(TxDone {
            outcome,
            next_done,
            wake,
        })
    }

    /// Takes the link down (flushing queue and serializer; returned for accounting) or up.
    /// Going down bumps the epoch so packets already on the wire are lost on arrival.
    pub fn set_up(&mut self, up: bool) -> Vec<Packet> {
        if up == self.up {
            return Vec::new();
        }
        self.up = up;
        if up {
            return Vec::new();
        }
        self.epoch = self.epoch.wrapping_add(1);
        let mut flushed: Vec<Packet> = self.in_service.take().into_iter().collect();
        flushed.extend(self.queue.drain(..));
        self.queued_bytes = 0;
        self.stats.dropped_link_down += flushed.len() as u64;
        flushed
    }

    /// Takes the pending waker (e.g. when the link goes down, so the host does not wait).
    pub fn take_waker(&mut self) -> Option<ElementId> {
        self.waker.take()
    }

    /// Visits every packet held by the link (queued or being serialized).
    pub fn for_each_packet(&self, f: &mut dyn FnMut(&Packet)) {
        if let Some(p) = &self.in_service {
            f(p);
        }
        for p in &self.queue {
            f(p);
        }
    }
}
