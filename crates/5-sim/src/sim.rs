//! The simulator: topology builder, event loop, measurement and report.
//!
//! This module holds the public types and [`Sim`] with its accessors; the shared network
//! state elements act on is in `net`, building the topology in `topology`, the event loop in
//! `events` and the report in `report`.

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

mod events;
mod net;
mod report;
mod topology;

pub(crate) use net::Net;

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
}
