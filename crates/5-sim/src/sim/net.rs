//! The shared network state an element acts on through [`Emit`]: the clock, the event
//! queue, links, parked packets and recycled buffers (a child module of `sim`).

use super::*;
/// The shared network state an element can act on through [`Emit`].
pub(crate) struct Net {
    pub now: Instant,
    pub queue: EventQueue<Ev>,
    pub links: Vec<Link>,
    pub ledger: Ledger,
    pub flows: Vec<FlowRecord>,
    pub pool: Vec<Vec<u8>>,
    pub mtu_hint: usize,
    /// Packets propagating on a wire (after serialization, before arrival).
    pub wire: Vec<Option<Packet>>,
    pub wire_free: Vec<u32>,
    pub drop_observer: Option<DropObserver>,
}

impl Net {
    pub(super) fn park(&mut self, pkt: Packet) -> u32 {
        match self.wire_free.pop() {
            Some(i) => {
                self.wire[i as usize] = Some(pkt);
                i
            }
            None => {
                self.wire.push(Some(pkt));
                (self.wire.len() - 1) as u32
            }
        }
    }

    pub(super) fn unpark(&mut self, slot: u32) -> Option<Packet> {
        let p = self.wire.get_mut(slot as usize)?.take()?;
        self.wire_free.push(slot);
        Some(p)
    }

    pub fn new_packet(
        &mut self,
        bytes: Vec<u8>,
        flow: Option<FlowId>,
        seq: u64,
        origin: ElementId,
    ) -> Packet {
        let id = self.ledger.create();
        Packet {
            bytes,
            meta: PacketMeta {
                id,
                flow,
                seq,
                sent_at: self.now,
                origin,
                seen: None,
            },
        }
    }

    pub fn recycle(&mut self, mut bytes: Vec<u8>) {
        if self.pool.len() < POOL_LIMIT && bytes.capacity() >= self.mtu_hint {
            bytes.clear();
            self.pool.push(bytes);
        }
    }

    pub fn drop_pkt(&mut self, pkt: Packet, cause: DropCause, element: Option<ElementId>) {
        self.ledger.dropped(pkt.meta.id, cause, element);
        if let Some(obs) = &mut self.drop_observer {
            obs(&DropInfo {
                now: self.now,
                packet: &pkt,
                cause,
                element,
            });
        }
        if let Some(f) = pkt.meta.flow
            && let Some(rec) = self.flows.get_mut(f.0 as usize)
        {
            rec.dropped += 1;
        }
        self.recycle(pkt.bytes);
    }

    /// Offers `pkt` to `link` (or drops it as unconnected).
    pub fn send_on(&mut self, link: Option<LinkId>, pkt: Packet, element: Option<ElementId>) {
        let Some(link) = link else {
            self.drop_pkt(pkt, DropCause::Unconnected, element);
            return;
        };
        let l = &mut self.links[link.0 as usize];
        let epoch = l.epoch;
        match l.offer(pkt, self.now) {
            Offer::Dropped(p, cause) => self.drop_pkt(p, cause, element),
            Offer::Queued => {}
            Offer::Started(done) => self.queue.push(done, Ev::TxDone { link, epoch }),
        }
    }
}
