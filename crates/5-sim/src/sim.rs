//! The simulator: topology builder, event loop, measurement and report.

use std::any::Any;
use std::time::Duration;

use flowshift_wire::Instant;
use hdrhistogram::Histogram;
use rand_chacha::ChaCha8Rng;

use crate::element::{Element, Emit};
use crate::event::EventQueue;
use crate::host::{AppSpec, AppStats, FlowRecord, Host, HostConfig, HostStats, POOL_LIMIT};
use crate::link::{Link, LinkConfig, LinkStats, Offer};
use crate::measure::{
    AppReport, DelaySummary, HostReport, Ledger, LedgerReport, LinkReport, Report, summarize_flows,
};
use crate::packet::{DropCause, ElementId, FiveTuple, FlowId, LinkId, Packet, PacketMeta, Port};
use crate::rng::{StreamKind, stream};

mod report;

/// Largest one-way delay the histogram resolves (larger values are recorded as this).
const DELAY_HIST_MAX_NS: u64 = 60_000_000_000;

/// Errors of the topology builder and accessors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// No element with this id.
    #[error("unknown element {0:?}")]
    UnknownElement(ElementId),
    /// No link with this id.
    #[error("unknown link {0:?}")]
    UnknownLink(LinkId),
    /// No application with this id.
    #[error("unknown app {0:?}")]
    UnknownApp(AppId),
    /// The port already has an outgoing link.
    #[error("element {0:?} port {1} already has an outgoing link")]
    PortInUse(ElementId, Port),
    /// Hosts only have port 0.
    #[error("host {0:?} has only port 0, not {1}")]
    BadHostPort(ElementId, Port),
    /// The element is not a host (for applications).
    #[error("element {0:?} is not a host")]
    NotAHost(ElementId),
    /// The element is not of the requested type.
    #[error("element {0:?} is not of the requested type")]
    WrongElementType(ElementId),
    /// A configuration value breaks its contract.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Parameters of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Decides every random choice of the run (links, smoltcp ISNs, ephemeral ports, and the
    /// streams handed out by [`Sim::rng`]).
    pub seed: u64,
    /// Width of a goodput bin (> 0; default 10 ms).
    pub goodput_bin: Duration,
}

impl SimConfig {
    /// Seed `seed`, 10 ms goodput bins.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            goodput_bin: Duration::from_millis(10),
        }
    }
}

/// Identity of an application (see [`Sim::add_app`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct AppId(pub u32);

/// What the arrival observer sees for each packet delivered to a host.
#[derive(Debug)]
pub struct Arrival<'a> {
    /// Arrival time.
    pub now: Instant,
    /// Receiving host.
    pub host: ElementId,
    /// The packet (bytes as received, metadata as stamped at the sender).
    pub packet: &'a Packet,
    /// One-way delay from the sender's egress.
    pub delay: Duration,
    /// True if a later packet of the same flow was delivered before this one.
    pub reordered: bool,
}

pub(crate) enum Ev {
    TxDone {
        link: LinkId,
        epoch: u32,
    },
    /// A packet arrives at the far end of `link`; the packet waits in `Net::wire[slot]` (so
    /// heap entries stay small).
    Arrive {
        link: LinkId,
        epoch: u32,
        slot: u32,
    },
    Wake(ElementId),
    HostTxReady(ElementId),
    LinkState {
        link: LinkId,
        up: bool,
    },
}

/// What the drop observer sees for each packet dropped anywhere.
#[derive(Debug)]
pub struct DropInfo<'a> {
    /// Drop time.
    pub now: Instant,
    /// The packet (metadata as stamped at its creation).
    pub packet: &'a Packet,
    /// Why it was dropped.
    pub cause: DropCause,
    /// The element or host that dropped it or sent it into a port without a link; `None` for
    /// drops inside links (queue full, injected loss, link down).
    pub element: Option<ElementId>,
}

type DropObserver = Box<dyn FnMut(&DropInfo<'_>)>;

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
    fn park(&mut self, pkt: Packet) -> u32 {
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

    fn unpark(&mut self, slot: u32) -> Option<Packet> {
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

enum NodeKind {
    Host(Box<Host>),
    Element(Box<dyn Element>),
}

struct ElementSlot {
    name: String,
    kind: NodeKind,
    out: Vec<Option<LinkId>>,
    armed: Option<Instant>,
}

fn arm(
    armed: &mut Option<Instant>,
    queue: &mut EventQueue<Ev>,
    element: ElementId,
    t: Option<Instant>,
    now: Instant,
) {
    let Some(t) = t else { return };
    let t = t.max(now);
    if armed.is_none_or(|a| t < a) {
        *armed = Some(t);
        queue.push(t, Ev::Wake(element));
    }
}

type Observer = Box<dyn FnMut(&Arrival<'_>)>;
type Progress = (Duration, Instant, Box<dyn FnMut(Instant)>);

/// A deterministic discrete-event network simulation.
///
/// Build a topology with [`Sim::add_host`], [`Sim::add_element`] and [`Sim::add_link`] /
/// [`Sim::connect`], add applications with [`Sim::add_app`], then advance virtual time with
/// [`Sim::run_until`]. Between runs the driver may act on elements ([`Sim::poke`]), links
/// ([`Sim::set_link_up`]) and add applications. Given the same seed and the same sequence of
/// calls, every result is identical.
pub struct Sim {
    seed: u64,
    bin: Duration,
    net: Net,
    elements: Vec<ElementSlot>,
    apps: Vec<(ElementId, usize)>,
    delay: Histogram<u64>,
    delay_max: u64,
    delay_sum: u128,
    events: u64,
    timer_spins: u64,
    observer: Option<Observer>,
    progress: Option<Progress>,
}

impl Sim {
    /// An empty network at virtual time zero.
    pub fn new(cfg: SimConfig) -> Sim {
        Sim {
            seed: cfg.seed,
            bin: if cfg.goodput_bin.is_zero() {
                Duration::from_millis(10)
            } else {
                cfg.goodput_bin
            },
            net: Net {
                now: Instant::ZERO,
                queue: EventQueue::new(),
                links: Vec::new(),
                ledger: Ledger::default(),
                flows: Vec::new(),
                pool: Vec::new(),
                mtu_hint: 1500,
                wire: Vec::new(),
                wire_free: Vec::new(),
                drop_observer: None,
            },
            elements: Vec::new(),
            apps: Vec::new(),
            delay: Histogram::new_with_bounds(1, DELAY_HIST_MAX_NS, 3)
                .expect("constant histogram bounds are valid"),
            delay_max: 0,
            delay_sum: 0,
            events: 0,
            timer_spins: 0,
            observer: None,
            progress: None,
        }
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.net.now
    }

    /// Events processed so far.
    pub fn events_processed(&self) -> u64 {
        self.events
    }

    /// An independent random stream for a caller component (element, workload generator),
    /// derived from the seed and `stream`. The same `stream` gives the same sequence.
    pub fn rng(&self, stream_id: u64) -> ChaCha8Rng {
        stream(self.seed, StreamKind::User, stream_id)
    }

    /// Adds a host with a smoltcp stack; its single port is 0.
    pub fn add_host(&mut self, cfg: HostConfig) -> Result<ElementId, SimError> {
        let id = ElementId(self.elements.len() as u32);
        let rng = stream(self.seed, StreamKind::Host, id.0 as u64);
        let name = cfg.name.clone();
        self.net.mtu_hint = self.net.mtu_hint.max(cfg.mtu);
        let host = Host::new(cfg, rng, self.net.now).map_err(SimError::Config)?;
        self.elements.push(ElementSlot {
            name,
            kind: NodeKind::Host(Box::new(host)),
            out: vec![None],
            armed: None,
        });
        Ok(id)
    }

    /// Adds an element.
    pub fn add_element<E: Element>(&mut self, name: impl Into<String>, element: E) -> ElementId {
        self.add_boxed_element(name, Box::new(element))
    }

    /// Adds an already boxed element.
    pub fn add_boxed_element(
        &mut self,
        name: impl Into<String>,
        element: Box<dyn Element>,
    ) -> ElementId {
        let id = ElementId(self.elements.len() as u32);
        self.elements.push(ElementSlot {
            name: name.into(),
            kind: NodeKind::Element(element),
            out: Vec::new(),
            armed: None,
        });
        let now = self.net.now;
        self.rearm_element(id, now);
        id
    }

    /// The name of a element.
    pub fn element_name(&self, element: ElementId) -> Option<&str> {
        self.elements
            .get(element.0 as usize)
            .map(|s| s.name.as_str())
    }

    fn check_port(&self, (element, port): (ElementId, Port)) -> Result<(), SimError> {
        let slot = self
            .elements
            .get(element.0 as usize)
            .ok_or(SimError::UnknownElement(element))?;
        if matches!(slot.kind, NodeKind::Host(_)) && port != 0 {
            return Err(SimError::BadHostPort(element, port));
        }
        Ok(())
    }

    /// Adds a unidirectional link from `from` (element, port) to `to` (element, port). A port has at
    /// most one outgoing link but may receive from any number of links.
    pub fn add_link(
        &mut self,
        from: (ElementId, Port),
        to: (ElementId, Port),
        cfg: LinkConfig,
    ) -> Result<LinkId, SimError> {
        self.check_port(from)?;
        self.check_port(to)?;
        cfg.validate().map_err(SimError::Config)?;
        let slot = &mut self.elements[from.0.0 as usize];
        let p = from.1 as usize;
        if slot.out.len() <= p {
            slot.out.resize(p + 1, None);
        }
        if slot.out[p].is_some() {
            return Err(SimError::PortInUse(from.0, from.1));
        }
        let id = LinkId(self.net.links.len() as u32);
        slot.out[p] = Some(id);
        let name = format!(
            "{}:{}->{}:{}",
            self.elements[from.0.0 as usize].name,
            from.1,
            self.elements[to.0.0 as usize].name,
            to.1
        );
        let rng = stream(self.seed, StreamKind::Link, id.0 as u64);
        self.net.links.push(Link::new(name, cfg, from, to, rng));
        Ok(id)
    }

    /// A full-duplex link: two unidirectional links `a -> b` and `b -> a` with the same
    /// configuration. Returns `(a->b, b->a)`.
    pub fn connect(
        &mut self,
        a: (ElementId, Port),
        b: (ElementId, Port),
        cfg: LinkConfig,
    ) -> Result<(LinkId, LinkId), SimError> {
        let ab = self.add_link(a, b, cfg.clone())?;
        let ba = self.add_link(b, a, cfg)?;
        Ok((ab, ba))
    }

    /// Starts an application on `host`. It is serviced from the current virtual time on.
    pub fn add_app(&mut self, host: ElementId, spec: AppSpec) -> Result<AppId, SimError> {
        let slot = self
            .elements
            .get_mut(host.0 as usize)
            .ok_or(SimError::UnknownElement(host))?;
        let NodeKind::Host(h) = &mut slot.kind else {
            return Err(SimError::NotAHost(host));
        };
        let idx = h.add_app(spec).map_err(SimError::Config)?;
        let id = AppId(self.apps.len() as u32);
        self.apps.push((host, idx));
        self.net.queue.push(self.net.now, Ev::HostTxReady(host));
        Ok(id)
    }

    /// Takes a link down or up at virtual time `at` (or now, if `at` is in the past).
    /// Going down drops everything queued, being serialized or on the wire
    /// ([`DropCause::LinkDown`]); packets offered while down are dropped the same way.
    pub fn schedule_link_state(
        &mut self,
        link: LinkId,
        at: Instant,
        up: bool,
    ) -> Result<(), SimError> {
        if link.0 as usize >= self.net.links.len() {
            return Err(SimError::UnknownLink(link));
        }
        self.net
            .queue
            .push(at.max(self.net.now), Ev::LinkState { link, up });
        Ok(())
    }

    /// Takes a link down or up now (see [`Sim::schedule_link_state`]).
    pub fn set_link_up(&mut self, link: LinkId, up: bool) -> Result<(), SimError> {
        if link.0 as usize >= self.net.links.len() {
            return Err(SimError::UnknownLink(link));
        }
        self.apply_link_state(link, up);
        Ok(())
    }

    /// Counters of a link.
    pub fn link_stats(&self, link: LinkId) -> Option<&LinkStats> {
        self.net.links.get(link.0 as usize).map(|l| &l.stats)
    }

    /// The two ends of a link: `((from element, port), (to element, port))`.
    pub fn link_ends(&self, link: LinkId) -> Option<((ElementId, Port), (ElementId, Port))> {
        self.net.links.get(link.0 as usize).map(|l| (l.from, l.to))
    }

    /// The outgoing link of a element's port, if any.
    pub fn out_link(&self, element: ElementId, port: Port) -> Option<LinkId> {
        self.elements
            .get(element.0 as usize)?
            .out
            .get(port as usize)
            .copied()
            .flatten()
    }

    /// Bytes waiting in a link's queue.
    pub fn link_queued_bytes(&self, link: LinkId) -> Option<usize> {
        self.net
            .links
            .get(link.0 as usize)
            .map(|l| l.queued_bytes())
    }

    /// Counters of an application.
    pub fn app_stats(&self, app: AppId) -> Option<&AppStats> {
        let (element, idx) = *self.apps.get(app.0 as usize)?;
        match &self.elements[element.0 as usize].kind {
            NodeKind::Host(h) => h.apps.get(idx).map(|a| &a.stats),
            NodeKind::Element(_) => None,
        }
    }

    /// Counters of a host.
    pub fn host_stats(&self, host: ElementId) -> Option<&HostStats> {
        match &self.elements.get(host.0 as usize)?.kind {
            NodeKind::Host(h) => Some(&h.stats),
            NodeKind::Element(_) => None,
        }
    }

    /// All flows seen so far, indexed by [`FlowId`].
    pub fn flows(&self) -> &[FlowRecord] {
        &self.net.flows
    }

    /// The one-way delay histogram of all packets delivered to hosts (ns).
    pub fn delay_histogram(&self) -> &Histogram<u64> {
        &self.delay
    }

    /// Calls `f` for every packet delivered to a host (after order and delay bookkeeping).
    pub fn set_arrival_observer(&mut self, f: impl FnMut(&Arrival<'_>) + 'static) {
        self.observer = Some(Box::new(f));
    }

    /// Calls `f` for every packet dropped anywhere (after the ledger counted it), e.g. to
    /// count losses by cause for a subset of flows.
    pub fn set_drop_observer(&mut self, f: impl FnMut(&DropInfo<'_>) + 'static) {
        self.net.drop_observer = Some(Box::new(f));
    }

    /// Calls `f(virtual now)` each time virtual time crosses a multiple of `every` during
    /// [`Sim::run_until`] (for progress display; must not affect the simulation).
    pub fn set_progress(&mut self, every: Duration, f: impl FnMut(Instant) + 'static) {
        let every = every.max(Duration::from_nanos(1));
        self.progress = Some((every, self.net.now + every, Box::new(f)));
    }

    /// Shared access to an element of type `T`.
    pub fn element<T: Element>(&self, element: ElementId) -> Option<&T> {
        match &self.elements.get(element.0 as usize)?.kind {
            NodeKind::Element(e) => {
                let any: &dyn Any = e.as_ref();
                any.downcast_ref::<T>()
            }
            NodeKind::Host(_) => None,
        }
    }

    /// Acts on an element of type `T` at the current virtual time; `f` may send packets
    /// through the [`Emit`]. The element's timer is re-armed afterwards.
    pub fn poke<T: Element, R>(
        &mut self,
        element: ElementId,
        f: impl FnOnce(&mut T, &mut Emit<'_>) -> R,
    ) -> Result<R, SimError> {
        let slot = self
            .elements
            .get_mut(element.0 as usize)
            .ok_or(SimError::UnknownElement(element))?;
        let NodeKind::Element(e) = &mut slot.kind else {
            return Err(SimError::WrongElementType(element));
        };
        let any: &mut dyn Any = e.as_mut();
        let t = any
            .downcast_mut::<T>()
            .ok_or(SimError::WrongElementType(element))?;
        let mut emit = Emit {
            net: &mut self.net,
            element,
            out: &slot.out,
        };
        let r = f(t, &mut emit);
        let now = self.net.now;
        self.rearm_element(element, now);
        Ok(r)
    }

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

    fn apply_link_state(&mut self, link: LinkId, up: bool) {
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

    fn rearm_element(&mut self, element: ElementId, now: Instant) {
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
