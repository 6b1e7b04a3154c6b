//! Reliable, ordered delivery of one migration's messages over an unreliable datagram path.
//!
//! Every message but `Ack` gets a sequence number (from 1). The receiver delivers messages
//! strictly in sequence order, exactly once: duplicates are re-acknowledged and dropped,
//! messages ahead of a gap wait in a reorder window bounded in messages and bytes (messages
//! beyond it are refused and counted; the sender retransmits them). Acknowledgements are cumulative, piggybacked on every
//! frame, or sent as a pure `Ack`. The sender keeps each message until it is acknowledged and
//! retransmits it when its timer expires: `rto_initial`, doubled on every retry up to `rto_max`;
//! after `max_retries` retransmissions of one message the channel is declared failed.

use crate::MigrationId;
use crate::config::MigrationConfig;
use crate::proto::{self, Frame, Kind, Message};
use flowshift_wire::Instant;
use std::collections::{BTreeMap, VecDeque};

struct Pending {
    seq: u64,
    kind: Kind,
    body: Vec<u8>,
    deadline: Instant,
    retries: u32,
    queued: bool,
}

/// Channel counters (both directions), reported per migration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChannelStats {
    /// Frames handed to the driver (including retransmissions and pure acks).
    pub frames_sent: u64,
    /// Bytes of those frames (headers included).
    pub bytes_sent: u64,
    /// Messages retransmitted.
    pub retransmissions: u64,
    /// Frames received and accepted for this migration.
    pub frames_received: u64,
    /// Bytes of those frames.
    pub bytes_received: u64,
    /// Duplicate messages received (re-acknowledged, dropped).
    pub duplicates: u64,
    /// Messages received beyond the reorder window (dropped; the sender retransmits).
    pub reorder_refused: u64,
    /// Messages held in the reorder window at some point.
    pub reordered: u64,
}

pub(crate) struct Channel {
    migration: MigrationId,
    next_seq: u64,
    unacked: VecDeque<Pending>,
    tx: VecDeque<u64>,
    rcv_next: u64,
    reorder: BTreeMap<u64, (Message, usize)>,
    reorder_bytes: usize,
    ack_pending: bool,
    pub failed: bool,
    pub last_heard: Instant,
    pub last_sent: Instant,
    pub stats: ChannelStats,
}

impl Channel {
    pub fn new(migration: MigrationId, now: Instant) -> Self {
        Channel {
            migration,
            next_seq: 1,
            unacked: VecDeque::new(),
            tx: VecDeque::new(),
            rcv_next: 1,
            reorder: BTreeMap::new(),
            reorder_bytes: 0,
            ack_pending: false,
            failed: false,
            last_heard: now,
            last_sent: now,
            stats: ChannelStats::default(),
        }
    }

    /// Messages sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Queues a message for reliable delivery. A message whose body cannot be encoded (too
    /// large) is not sent; the caller sized it, so this only guards against misuse.
    pub fn send(&mut self, now: Instant, msg: &Message, cfg: &MigrationConfig) -> bool {
        if self.failed {
            return false;
        }
        let Ok(body) = msg.encode_body() else {
            return false;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unacked.push_back(Pending {
            seq,
            kind: msg.kind(),
            body,
            deadline: now + cfg.rto_initial,
            retries: 0,
            queued: true,
        });
        self.tx.push_back(seq);
        self.last_sent = now;
        true
    }

    /// Processes a received frame: its acknowledgement, then its message. Messages that become
    /// deliverable (in sequence order) are appended to `out`.
    pub fn on_frame(
        &mut self,
        now: Instant,
        frame: Frame,
        cfg: &MigrationConfig,
        bytes: usize,
        out: &mut Vec<Message>,
    ) {
        self.stats.frames_received += 1;
        self.stats.bytes_received += bytes as u64;
        self.last_heard = now;
        while self.unacked.front().is_some_and(|p| p.seq <= frame.ack) {
            self.unacked.pop_front();
        }
        if frame.msg == Message::Ack {
            return;
        }
        self.ack_pending = true;
        let seq = frame.seq;
        if seq < self.rcv_next {
            self.stats.duplicates += 1;
            return;
        }
        if seq > self.rcv_next {
            if seq - self.rcv_next > cfg.reorder_window as u64
                || self.reorder_bytes + bytes > cfg.reorder_bytes as usize
            {
                self.stats.reorder_refused += 1;
            } else if !self.reorder.contains_key(&seq) {
                self.stats.reordered += 1;
                self.reorder_bytes += bytes;
                self.reorder.insert(seq, (frame.msg, bytes));
            } else {
                self.stats.duplicates += 1;
            }
            return;
        }
        out.push(frame.msg);
        self.rcv_next += 1;
        while let Some((m, len)) = self.reorder.remove(&self.rcv_next) {
            self.reorder_bytes -= len;
            out.push(m);
            self.rcv_next += 1;
        }
    }

    /// Retransmission timers: queues every message whose timer expired; declares the channel
    /// failed when one exceeded `max_retries`.
    pub fn on_timeout(&mut self, now: Instant, cfg: &MigrationConfig) {
        if self.failed {
            return;
        }
        for p in self.unacked.iter_mut() {
            if p.deadline > now {
                continue;
            }
            if p.retries >= cfg.max_retries {
                self.failed = true;
                return;
            }
            p.retries += 1;
            let shift = p.retries.min(30);
            let rto = cfg
                .rto_initial
                .saturating_mul(1u32 << shift)
                .min(cfg.rto_max);
            p.deadline = now + rto;
            if !p.queued {
                p.queued = true;
                self.tx.push_back(p.seq);
                self.stats.retransmissions += 1;
            }
        }
    }

    /// The earliest retransmission deadline (`Instant::MAX`: none).
    pub fn next_timeout(&self) -> Instant {
        if self.failed {
            return Instant::MAX;
        }
        self.unacked
            .iter()
            .map(|p| p.deadline)
            .min()
            .unwrap_or(Instant::MAX)
    }

    /// The next frame to put on the wire, if any: a queued message (carrying the current
    /// acknowledgement), else a pure `Ack` if one is owed.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let ack = self.rcv_next - 1;
        while let Some(seq) = self.tx.pop_front() {
            let Some(p) = self.unacked.iter_mut().find(|p| p.seq == seq) else {
                continue; // acknowledged meanwhile
            };
            p.queued = false;
            let f = proto::write_frame(p.kind, self.migration, p.seq, ack, &p.body);
            self.ack_pending = false;
            self.stats.frames_sent += 1;
            self.stats.bytes_sent += f.len() as u64;
            return Some(f);
        }
        if self.ack_pending {
            self.ack_pending = false;
            let f = proto::write_frame(Kind::Ack, self.migration, 0, ack, &[]);
            self.stats.frames_sent += 1;
            self.stats.bytes_sent += f.len() as u64;
            return Some(f);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;

    fn cfg() -> MigrationConfig {
        MigrationConfig {
            reorder_window: 2,
            max_retries: 2,
            ..MigrationConfig::default()
        }
    }

    fn frames(n: u64) -> (Channel, Vec<Vec<u8>>) {
        let (c, now) = (cfg(), Instant::from_secs(1));
        let mut tx = Channel::new(MigrationId(5), now);
        for i in 0..n {
            assert!(tx.send(now, &Message::Delete(vec![]), &c) || i > 100);
        }
        let mut out = Vec::new();
        while let Some(f) = tx.poll_transmit() {
            out.push(f);
        }
        (tx, out)
    }

    fn deliver(rx: &mut Channel, bytes: &[u8]) -> usize {
        let mut out = Vec::new();
        let f = proto::decode(bytes).unwrap();
        rx.on_frame(Instant::from_secs(1), f, &cfg(), bytes.len(), &mut out);
        out.len()
    }

    #[test]
    fn delivers_in_order_exactly_once_within_the_window() {
        let (_, f) = frames(4);
        let mut rx = Channel::new(MigrationId(5), Instant::ZERO);
        assert_eq!(deliver(&mut rx, &f[1]), 0, "ahead of a gap: held");
        assert_eq!(deliver(&mut rx, &f[1]), 0, "duplicate of a held one");
        assert_eq!(deliver(&mut rx, &f[3]), 0, "beyond the window: refused");
        assert_eq!(rx.stats.reorder_refused, 1);
        assert_eq!(deliver(&mut rx, &f[0]), 2, "gap filled: 1 and 2 delivered");
        assert_eq!(deliver(&mut rx, &f[0]), 0, "old duplicate");
        assert_eq!(deliver(&mut rx, &f[2]), 1);
        assert_eq!(deliver(&mut rx, &f[3]), 1, "retransmission accepted now");
        assert_eq!(rx.stats.duplicates, 2);
        // The owed acknowledgement is cumulative: 4.
        let ack = proto::decode(&rx.poll_transmit().unwrap()).unwrap();
        assert_eq!((ack.msg, ack.seq, ack.ack), (Message::Ack, 0, 4));
        assert!(rx.poll_transmit().is_none());
    }

    #[test]
    fn retransmits_with_backoff_then_fails() {
        let c = cfg();
        let (mut tx, f) = frames(2);
        assert_eq!(f.len(), 2);
        let t0 = Instant::from_secs(1);
        assert_eq!(tx.next_timeout(), t0 + c.rto_initial);
        // An ack for the first message removes it.
        let mut out = Vec::new();
        let ack = proto::write_frame(Kind::Ack, MigrationId(5), 0, 1, &[]);
        tx.on_frame(t0, proto::decode(&ack).unwrap(), &c, ack.len(), &mut out);
        assert_eq!(tx.unacked(), 1);
        let t1 = t0 + c.rto_initial;
        tx.on_timeout(t1, &c);
        let again = proto::decode(&tx.poll_transmit().unwrap()).unwrap();
        assert_eq!(again.seq, 2);
        assert_eq!(tx.next_timeout(), t1 + c.rto_initial * 2, "doubled");
        let t2 = t1 + c.rto_initial * 2;
        tx.on_timeout(t2, &c);
        assert!(!tx.failed);
        tx.on_timeout(t2 + Duration::from_secs(5), &c);
        assert!(tx.failed, "max_retries exceeded");
        assert_eq!(tx.stats.retransmissions, 2);
        assert_eq!(tx.next_timeout(), Instant::MAX);
    }
}
