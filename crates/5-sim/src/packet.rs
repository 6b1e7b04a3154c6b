//! Packets and the out-of-band metadata the simulator carries with them.

use flowshift_wire::Instant;
use serde::Serialize;

/// Identity of an element of one [`crate::Sim`]: a host or any other element (switch, router,
/// NAT). Not a cluster node: those are `flowshift_migration::InstanceId`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ElementId(pub u32);

/// Identity of a unidirectional link in one [`crate::Sim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct LinkId(pub u32);

/// A port number on an element. Hosts have the single port 0; elements number theirs freely.
pub type Port = u16;

/// Unique id of a packet within one simulation run, assigned at creation (ledger key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PacketId(pub u64);

/// A flow as seen at the sending host's egress: one direction of one 5-tuple, before any NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FlowId(pub u32);

/// Metadata the simulator attaches to a packet. Elements can read it but not change it
/// (except [`Packet::note_seen`]), so receivers can trust it for order and delay checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMeta {
    pub(crate) id: PacketId,
    pub(crate) flow: Option<FlowId>,
    pub(crate) seq: u64,
    pub(crate) sent_at: Instant,
    pub(crate) origin: ElementId,
    pub(crate) seen: Option<(u32, Instant)>,
}

/// A packet in flight: the bytes of an IPv4 datagram (no link-layer header), or arbitrary bytes
/// for element-to-element messages (e.g. state transfer), plus [`PacketMeta`].
///
/// Packets cannot be cloned or built outside the simulator: every packet is created through
/// the simulator (a host's egress, [`crate::Emit::new_packet`] or [`crate::Emit::duplicate`]),
/// so the ledger can account for each one exactly once.
#[derive(Debug)]
pub struct Packet {
    pub(crate) bytes: Vec<u8>,
    pub(crate) meta: PacketMeta,
}

impl Packet {
    /// The packet's bytes (an IPv4 datagram for host traffic).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Mutable bytes, for in-place rewriting (e.g. NAT). The length may change; the link
    /// model charges the length at the time the packet enters a link.
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    /// True if the packet has no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    /// The ledger id, unique within the run.
    pub fn id(&self) -> PacketId {
        self.meta.id
    }
    /// The flow stamped at the sending host's egress; `None` for element-created packets.
    pub fn flow(&self) -> Option<FlowId> {
        self.meta.flow
    }
    /// Per-flow sequence number stamped at the sending host's egress (0, 1, 2, ... per flow);
    /// 0 for element-created packets.
    pub fn seq(&self) -> u64 {
        self.meta.seq
    }
    /// Virtual time at which the packet left its sending host (or was created by an element).
    pub fn sent_at(&self) -> Instant {
        self.meta.sent_at
    }
    /// The element that created the packet.
    pub fn origin(&self) -> ElementId {
        self.meta.origin
    }
    /// The first `(tag, time)` recorded by [`Packet::note_seen`], if any.
    pub fn seen(&self) -> Option<(u32, Instant)> {
        self.meta.seen
    }
    /// Records that an element with the caller-chosen `tag` saw the packet at `now`; only the
    /// first note sticks. Returns true if this call recorded it.
    pub fn note_seen(&mut self, tag: u32, now: Instant) -> bool {
        if self.meta.seen.is_none() {
            self.meta.seen = Some((tag, now));
            true
        } else {
            false
        }
    }
}

/// Why a packet left the network without being delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropCause {
    /// A link's drop-tail queue had no room.
    QueueFull,
    /// A link's injected random loss.
    InjectedLoss,
    /// The link was down when the packet was offered, queued, on the wire or arriving.
    LinkDown,
    /// Sent out of a port that has no link attached.
    Unconnected,
    /// A host's receive queue was full.
    HostRxFull,
    /// A host received a datagram that was malformed, not addressed to it, or failed checksum
    /// verification (when checksums are enabled).
    HostRejected,
    /// An element dropped it, with the element's reason.
    Element(&'static str),
}

impl DropCause {
    /// Stable name used in reports (`element:<reason>` for element drops).
    pub fn name(&self) -> String {
        match self {
            DropCause::QueueFull => "queue_full".into(),
            DropCause::InjectedLoss => "injected_loss".into(),
            DropCause::LinkDown => "link_down".into(),
            DropCause::Unconnected => "unconnected_port".into(),
            DropCause::HostRxFull => "host_rx_full".into(),
            DropCause::HostRejected => "host_rejected".into(),
            DropCause::Element(r) => format!("element:{r}"),
        }
    }
}

/// A transport 5-tuple (addresses and ports in host order; ports 0 for non-TCP/UDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FiveTuple {
    /// Source IPv4 address.
    pub src: [u8; 4],
    /// Destination IPv4 address.
    pub dst: [u8; 4],
    /// IP protocol number.
    pub proto: u8,
    /// Source port (0 if not TCP/UDP).
    pub sport: u16,
    /// Destination port (0 if not TCP/UDP).
    pub dport: u16,
}

impl FiveTuple {
    /// Extracts the 5-tuple of an IPv4 datagram; `None` if it is not parseable IPv4.
    pub fn of_ipv4(bytes: &[u8]) -> Option<FiveTuple> {
        let h = flowshift_wire::packet::parse_ipv4(bytes, false).ok()?;
        let (sport, dport) = if h.is_non_first_fragment() {
            (0, 0)
        } else {
            match flowshift_wire::packet::parse_l4(h.proto, &bytes[h.header_len..h.total_len]) {
                Ok(Some(flowshift_wire::packet::L4::Tcp {
                    src_port, dst_port, ..
                }))
                | Ok(Some(flowshift_wire::packet::L4::Udp { src_port, dst_port })) => {
                    (src_port, dst_port)
                }
                _ => (0, 0),
            }
        };
        Some(FiveTuple {
            src: h.src,
            dst: h.dst,
            proto: h.proto,
            sport,
            dport,
        })
    }
}

impl std::fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = std::net::Ipv4Addr::from(self.src);
        let b = std::net::Ipv4Addr::from(self.dst);
        write!(
            f,
            "{}:{}->{}:{}/{}",
            a, self.sport, b, self.dport, self.proto
        )
    }
}
