//! Draining the instance: its outputs become frames, transfer frames go to the transfer
//! threads, events to the log and the controller.

use super::egress::Egress;
use super::{Engine, Links};
use crate::control::Outgoing;
use crate::frame::{self, ETHERTYPE_CHAIN, ETHERTYPE_IPV4, FrameSink, Offload, TxFrame, VnetHdr};
use crate::segment;
use crate::stats::IoCounters;
use flowshift_migration::{Direction, Driver, InstanceId, MigrationEvent, Output};
use flowshift_nat::BlockAction;
use flowshift_wire::Instant;
use std::sync::mpsc::TrySendError;
use tracing::{info, warn};

impl Engine {
    /// Drains the instance (outputs, transfer frames, events, mapping-log events), sends the
    /// queued frames, and re-reads the next timeout.
    pub fn drain<S: FrameSink>(&mut self, now: Instant, sink: &mut S) {
        let mut d = Drain {
            now,
            eg: &mut self.eg,
            io: &mut self.io,
            links: &self.links,
            sink,
            events: false,
            split: std::mem::take(&mut self.split),
        };
        self.next_timeout = self.inst.drain(&mut d);
        d.eg.flush_tx(d.io, d.sink);
        let (events, mut split) = (d.events, d.split);
        for &(to, frames) in &split {
            self.inst.chain_split(to, frames);
        }
        split.clear();
        self.split = split;
        if events {
            self.note_migrations();
        }
    }
}

/// The engine as the instance's [`Driver`] for one drain: translated and chained packets
/// become frames for the socket (the offload tag gives their virtio-net header), transfer
/// frames go to the transfer threads, events to the log and the controller.
struct Drain<'a, S> {
    now: Instant,
    eg: &'a mut Egress,
    io: &'a mut IoCounters,
    links: &'a Links,
    sink: &'a mut S,
    /// A migration event was seen (the engine re-reads whether a migration runs).
    events: bool,
    /// Chained packets sent as another number of frames (segmented: several; refused: 0).
    split: Vec<(InstanceId, u64)>,
}

impl<S: FrameSink> Driver<Offload> for Drain<'_, S> {
    fn output(&mut self, out: Output<Offload>) {
        let eg = &mut *self.eg;
        match out {
            Output::Send { mut pkt, meta, dir } => {
                let vnet = frame::finish(&mut pkt, meta);
                let dst = match dir {
                    Direction::ToInside => {
                        self.io.tx_to_inside += 1;
                        eg.inside
                    }
                    Direction::ToOutside => {
                        self.io.tx_to_outside += 1;
                        eg.outside
                    }
                };
                let eth = frame::eth_header(dst, eg.mac, ETHERTYPE_IPV4);
                let f = TxFrame::new(eg.vnet.then_some(vnet), eth, pkt);
                eg.queue_tx(f, self.io, self.sink);
            }
            Output::Chain { to, mut pkt, meta } => match eg.peers.mac_of(to) {
                Some(peer) => {
                    let vnet = frame::finish(&mut pkt, meta);
                    let eth = frame::eth_header(peer, eg.mac, ETHERTYPE_CHAIN);
                    if eg.vnet && vnet.gso_type != 0 {
                        // The kernel cannot segment a GSO frame of the chain ethertype.
                        let (io, sink) = (&mut *self.io, &mut *self.sink);
                        let cut = segment::segment(&pkt, vnet, |s| {
                            io.tx_chained += 1;
                            let f = TxFrame::new(Some(VnetHdr::default()), eth, s);
                            eg.queue_tx(f, io, sink);
                        });
                        match cut {
                            Ok(n) => {
                                io.tx_chain_segmented += 1;
                                self.split.push((to, n as u64));
                            }
                            Err(e) => {
                                io.tx_chain_unsegmentable += 1;
                                // Nothing was sent: the peer must not wait for it.
                                self.split.push((to, 0));
                                if io.tx_chain_unsegmentable.is_power_of_two() {
                                    warn!(error = %e, "chained GSO packet dropped");
                                }
                            }
                        }
                        eg.recycle(pkt);
                    } else {
                        self.io.tx_chained += 1;
                        let f = TxFrame::new(eg.vnet.then_some(vnet), eth, pkt);
                        eg.queue_tx(f, self.io, self.sink);
                    }
                }
                None => {
                    self.io.tx_chain_unknown_peer += 1;
                    eg.recycle(pkt);
                }
            },
            Output::Dropped { pkt, .. } => {
                self.io.dropped_reported += 1;
                eg.recycle(pkt);
            }
        }
    }

    fn transmit(&mut self, to: InstanceId, frame: Vec<u8>) {
        // Packets first: what the outputs queued leaves before the transfer frames.
        if !self.eg.tx.is_empty() {
            self.eg.flush_tx(self.io, self.sink);
        }
        if !self.links.transfer.send(to, frame) {
            self.io.transfer_out_refused += 1;
        }
    }

    fn event(&mut self, event: MigrationEvent) {
        self.events = true;
        let now = self.now;
        info!(
            target: "flowshift::migration",
            at_ns = now.as_nanos(),
            event = %serde_json::to_string(&event).unwrap_or_default(),
            "migration event"
        );
        match self.links.control.events.try_send(Outgoing::Event {
            at_ns: now.as_nanos(),
            event,
        }) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => self.io.control_events_dropped += 1,
        }
    }

    fn nat_event(&mut self, ev: flowshift_nat::Event) {
        match ev {
            flowshift_nat::Event::PortBlock(b) => info!(
                target: "flowshift::mapping",
                time_ns = b.time.as_nanos(),
                action = %match b.action {
                    BlockAction::Allocated => "allocated",
                    BlockAction::Released => "released",
                    BlockAction::MigratedIn => "migrated_in",
                    BlockAction::MigratedOut => "migrated_out",
                },
                subscriber = %b.subscriber,
                external = %b.external,
                first_port = b.first_port,
                last_port = b.last_port,
                "port block"
            ),
        }
    }
}
