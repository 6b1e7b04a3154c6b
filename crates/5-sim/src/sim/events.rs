//! The event loop: running virtual time forward and handling each event (deliveries,
//! element timers, host polls, link state changes).

use super::*;

impl Sim {
    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.net.now + d);
    }

    /// Processes every event scheduled at or before `until`, then sets the clock to `until`
    /// (if later than now).
    pub fn run_until(&mut self, until: Instant) {
        while let Some(t) = self.net.queue.peek_time() {
            if t > until {
                break;
            }
            let Some(e) = self.net.queue.pop() else { break };
            self.net.now = e.time;
            self.events += 1;
            self.handle(e.event);
            if let Some((every, next, f)) = &mut self.progress
                && self.net.now >= *next
            {
                f(self.net.now);
                while *next <= self.net.now {
                    *next = *next + *every;
                }
            }
        }
        if until > self.net.now {
            self.net.now = until;
        }
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.net.now;
        match ev {
            Ev::TxDone { link, epoch } => {
                let mtu = self.net.mtu_hint;
                let l = &mut self.net.links[link.0 as usize];
                if l.epoch != epoch {
                    return;
                }
                let Some(done) = l.tx_done(now, mtu) else {
                    return;
                };
                if let Some(t) = done.next_done {
                    self.net.queue.push(t, Ev::TxDone { link, epoch });
                }
                match done.outcome {
                    Ok((pkt, at)) => {
                        let slot = self.net.park(pkt);
                        self.net.queue.push(at, Ev::Arrive { link, epoch, slot });
                    }
                    Err((pkt, cause)) => self.net.drop_pkt(pkt, cause, None),
                }
                if let Some(n) = done.wake {
                    self.net.queue.push(now, Ev::HostTxReady(n));
                }
            }
            Ev::Arrive { link, epoch, slot } => {
                let Some(pkt) = self.net.unpark(slot) else {
                    self.net
                        .ledger
                        .violations
                        .push(format!("arrival of an empty wire slot {slot}"));
                    return;
                };
                let l = &mut self.net.links[link.0 as usize];
                if l.epoch != epoch || !l.up {
                    l.stats.dropped_link_down += 1;
                    self.net.drop_pkt(pkt, DropCause::LinkDown, None);
                    return;
                }
                l.stats.delivered_packets += 1;
                l.stats.delivered_bytes += pkt.len() as u64;
                let (element, port) = l.to;
                self.deliver(element, port, pkt);
            }
            Ev::Wake(element) => {
                let slot = &mut self.elements[element.0 as usize];
                if slot.armed != Some(now) {
                    return; // superseded by an earlier deadline
                }
                slot.armed = None;
                if matches!(slot.kind, NodeKind::Host(_)) {
                    self.poll_host(element);
                } else {
                    self.fire_timer(element);
                }
            }
            Ev::HostTxReady(element) => self.poll_host(element),
            Ev::LinkState { link, up } => self.apply_link_state(link, up),
        }
    }

    pub(super) fn apply_link_state(&mut self, link: LinkId, up: bool) {
        let flushed = self.net.links[link.0 as usize].set_up(up);
        for p in flushed {
            self.net.drop_pkt(p, DropCause::LinkDown, None);
        }
        if let Some(n) = self.net.links[link.0 as usize].take_waker() {
            self.net.queue.push(self.net.now, Ev::HostTxReady(n));
        }
    }

    fn deliver(&mut self, element: ElementId, port: Port, pkt: Packet) {
        let now = self.net.now;
        let slot = &mut self.elements[element.0 as usize];
        match &mut slot.kind {
            NodeKind::Element(e) => {
                let mut emit = Emit {
                    net: &mut self.net,
                    element,
                    out: &slot.out,
                };
                e.on_packet(now, port, pkt, &mut emit);
                let next = e.next_timer();
                arm(&mut slot.armed, &mut self.net.queue, element, next, now);
            }
            NodeKind::Host(h) => {
                if let Err(full) = h.check_ingress(pkt.bytes()) {
                    let cause = if full {
                        DropCause::HostRxFull
                    } else {
                        DropCause::HostRejected
                    };
                    self.net.drop_pkt(pkt, cause, Some(element));
                    return;
                }
                self.net.ledger.delivered(pkt.meta.id);
                let delay = now - pkt.meta.sent_at;
                let d_ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
                self.delay
                    .saturating_record(d_ns.clamp(1, DELAY_HIST_MAX_NS));
                self.delay_max = self.delay_max.max(d_ns);
                self.delay_sum += d_ns as u128;
                let mut reordered = false;
                if let Some(f) = pkt.meta.flow
                    && let Some(rec) = self.net.flows.get_mut(f.0 as usize)
                {
                    rec.delivered += 1;
                    rec.max_delay_ns = rec.max_delay_ns.max(d_ns);
                    rec.delay_sum_ns = rec.delay_sum_ns.saturating_add(d_ns);
                    match rec.max_seq_delivered {
                        Some(m) if pkt.meta.seq < m => {
                            rec.reordered += 1;
                            reordered = true;
                        }
                        _ => rec.max_seq_delivered = Some(pkt.meta.seq),
                    }
                }
                if let Some(obs) = &mut self.observer {
                    obs(&Arrival {
                        now,
                        host: element,
                        packet: &pkt,
                        delay,
                        reordered,
                    });
                }
                h.push_ingress(pkt.bytes);
                self.poll_host(element);
            }
        }
    }

    fn fire_timer(&mut self, element: ElementId) {
        let now = self.net.now;
        let slot = &mut self.elements[element.0 as usize];
        let NodeKind::Element(e) = &mut slot.kind else {
            return;
        };
        if e.next_timer().is_some_and(|t| t <= now) {
            let mut emit = Emit {
                net: &mut self.net,
                element,
                out: &slot.out,
            };
            e.on_timer(now, &mut emit);
        }
        let mut next = e.next_timer();
        if next.is_some_and(|t| t <= now) {
            self.timer_spins += 1;
            next = Some(now + Duration::from_nanos(1));
        }
        arm(&mut slot.armed, &mut self.net.queue, element, next, now);
    }

    pub(super) fn rearm_element(&mut self, element: ElementId, now: Instant) {
        let slot = &mut self.elements[element.0 as usize];
        if let NodeKind::Element(e) = &slot.kind {
            let next = e.next_timer();
            arm(&mut slot.armed, &mut self.net.queue, element, next, now);
        }
    }

    fn poll_host(&mut self, element: ElementId) {
        let now = self.net.now;
        let slot = &mut self.elements[element.0 as usize];
        let NodeKind::Host(h) = &mut slot.kind else {
            return;
        };
        let link = slot.out.first().copied().flatten();
        let mtu = h.cfg.mtu.max(1);
        let budget = match link {
            Some(l) => {
                let lk = &self.net.links[l.0 as usize];
                if lk.up {
                    lk.free_bytes() / mtu + usize::from(lk.is_idle())
                } else {
                    usize::MAX / 2
                }
            }
            None => usize::MAX / 2,
        };
        std::mem::swap(&mut h.dev.free, &mut self.net.pool);
        let out = h.poll(now, budget, self.bin);
        std::mem::swap(&mut h.dev.free, &mut self.net.pool);
        let mut frames = std::mem::take(&mut h.dev.tx);
        for frame in frames.drain(..) {
            let tuple = FiveTuple::of_ipv4(&frame).unwrap_or(FiveTuple {
                src: h.cfg.addr.octets(),
                dst: [0; 4],
                proto: 0,
                sport: 0,
                dport: 0,
            });
            let flows = &mut self.net.flows;
            let fid = *h.flows.entry(tuple).or_insert_with(|| {
                flows.push(FlowRecord {
                    tuple,
                    src: element,
                    sent: 0,
                    delivered: 0,
                    dropped: 0,
                    reordered: 0,
                    max_seq_delivered: None,
                    max_delay_ns: 0,
                    delay_sum_ns: 0,
                });
                FlowId((flows.len() - 1) as u32)
            });
            let rec = &mut self.net.flows[fid.0 as usize];
            let seq = rec.sent;
            rec.sent += 1;
            let pkt = self.net.new_packet(frame, Some(fid), seq, element);
            self.net.send_on(link, pkt, Some(element));
        }
        h.dev.tx = frames;
        if out.blocked
            && let Some(l) = link
        {
            self.net.links[l.0 as usize].set_waker(element);
        }
        arm(
            &mut slot.armed,
            &mut self.net.queue,
            element,
            out.next_wake,
            now,
        );
    }
}
