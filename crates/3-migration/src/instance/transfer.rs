//! The transfer path and timers of an [`Instance`]: frames to and from the state-transfer
//! channel, the next deadline, running due timers, and events for the controller.

use super::{Instance, MAX_LOOSE_ACKS, Mig, Side};
use crate::proto::{self, Kind, Message};
use crate::{InstanceId, MigrationEvent};
use flowshift_wire::Instant;

impl<M: Copy> Instance<M> {
    /// Next frame for the state-transfer channel: (destination instance, bytes).
    pub fn poll_transmit(&mut self) -> Option<(InstanceId, Vec<u8>)> {
        if let Some(x) = self.core.loose.pop_front() {
            return Some(x);
        }
        for m in self.migs.values_mut() {
            if let Some(f) = m.chan.poll_transmit() {
                return Some((m.peer, f));
            }
        }
        None
    }

    /// Handles one frame received from instance `from`. Malformed frames are refused with an
    /// error and counted; frames for unknown migrations are counted and dropped (frames of
    /// migrations finished and forgotten are acknowledged, so a late retransmission ends).
    pub fn handle_transfer(
        &mut self,
        now: Instant,
        from: InstanceId,
        bytes: &[u8],
    ) -> Result<(), proto::DecodeError> {
        self.core.counters.frames_in += 1;
        let frame = match proto::decode(bytes) {
            Ok(f) => f,
            Err(e) => {
                self.core.counters.frames_malformed += 1;
                return Err(e);
            }
        };
        let id = frame.migration;
        if let Some(m) = self.migs.get_mut(&id) {
            if m.terminal && frame.msg != Message::Ack {
                self.core.counters.frames_finished += 1;
            }
            if m.peer == from {
                m.on_frame(&mut self.core, now, frame, bytes.len());
            } else {
                self.core.counters.frames_unknown += 1;
            }
            self.after_call(now);
            return Ok(());
        }
        // A migration we do not know: new (Prepare), stale or replayed, or premature.
        if id.source() != from || from == self.core.id {
            self.core.counters.frames_unknown += 1;
            return Ok(());
        }
        if self.replay.is_stale(id) {
            self.core.counters.frames_stale += 1;
            // A late retransmission of a forgotten migration is acknowledged so it ends; a
            // replayed `Prepare` is not (it must not look delivered to anyone).
            if frame.msg != Message::Ack && !matches!(frame.msg, Message::Prepare(_)) {
                if self.core.loose.len() < MAX_LOOSE_ACKS {
                    let f = proto::write_frame(Kind::Ack, id, 0, frame.seq, &[]);
                    self.core.loose.push_back((from, f));
                    self.core.counters.stale_acks += 1;
                } else {
                    self.core.counters.stale_acks_dropped += 1;
                }
            }
            return Ok(());
        }
        let algorithm = match &frame.msg {
            Message::Prepare(p) if frame.seq == 1 => p.algorithm,
            _ => {
                self.core.counters.frames_unknown += 1;
                return Ok(());
            }
        };
        if self.running >= self.core.cfg.max_migrations as usize {
            // Not answered: the source retransmits and, if we stay busy, fails and reverts.
            self.core.counters.frames_unknown += 1;
            return Ok(());
        }
        if self.replay.accept(id) {
            self.core.counters.replay_forgotten += 1;
        }
        self.source_restarted(now, from, id.epoch());
        let mut m = Mig::new(id, from, now, algorithm, Side::Dst(Box::default()));
        m.on_frame(&mut self.core, now, frame, bytes.len());
        self.migs.insert(id, m);
        self.after_call(now);
        Ok(())
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work next (`Instant::MAX`: none).
    pub fn poll_timeout(&self) -> Instant {
        self.migs
            .values()
            .map(|m| m.next_timeout(&self.core))
            .fold(self.core.nat.poll_timeout(), Instant::min)
    }

    /// Runs due timers: NAT expiry, retransmissions, keepalives, idle sampling, round pacing,
    /// drain and hold deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.nat.handle_timeout(now);
        for m in self.migs.values_mut() {
            m.on_timeout(&mut self.core, now);
        }
        self.after_call(now);
    }

    /// Next event for the controller, if any.
    pub fn poll_event(&mut self) -> Option<MigrationEvent> {
        self.core.events.pop_front()
    }
}
