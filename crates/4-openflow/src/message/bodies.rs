//! Bodies of the OpenFlow 1.3 messages the controller exchanges, other than flow-mods:
//! HELLO, ERROR, FEATURES_REPLY, SET/GET_CONFIG, PACKET_IN, FLOW_REMOVED, PORT_STATUS and
//! PACKET_OUT.

use super::{Header, NO_BUFFER, OFP_VERSION};
use crate::action::Action;
use crate::multipart::Port;
use crate::oxm::Match;
/// OFPT_HELLO, with the optional version-bitmap element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The header version: the highest version the sender supports.
    pub version: u8,
    /// Versions 0..=31 the sender supports (bit `v` set = version `v`); `None` when the hello
    /// carries no version-bitmap element.
    pub bitmap: Option<u32>,
}

impl Hello {
    /// The hello this crate sends: version 1.3, bitmap {1.3}.
    pub const fn of13() -> Self {
        Hello {
            version: OFP_VERSION,
            bitmap: Some(1 << OFP_VERSION),
        }
    }

    /// Whether the sender supports `version`, per the negotiation rules of OpenFlow 1.3 §6.3.1:
    /// the bitmap if present, else every version up to the header version.
    pub fn supports(&self, version: u8) -> bool {
        match self.bitmap {
            Some(b) => version < 32 && b & (1 << version) != 0,
            None => version <= self.version,
        }
    }
}

/// OFPT_ERROR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMsg {
    /// Error type ([`error_type`](super::error_type)).
    pub err_type: u16,
    /// Error code within the type ([`error_code`](super::error_code)).
    pub code: u16,
    /// Usually the start of the failed request (at least 64 bytes of it, or all of it).
    pub data: Vec<u8>,
}

impl ErrorMsg {
    /// The header of the failed request echoed in `data`, if present.
    pub fn failed_request(&self) -> Option<Header> {
        Header::parse(&self.data).ok()
    }
}

/// OFPT_FEATURES_REPLY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeaturesReply {
    /// Datapath id: the low 48 bits are a MAC address, the top 16 implementer-defined.
    pub datapath_id: u64,
    /// Packets the switch can buffer for the controller.
    pub n_buffers: u32,
    /// Number of flow tables.
    pub n_tables: u8,
    /// Auxiliary connection id (0 for the main connection).
    pub auxiliary_id: u8,
    /// OFPC_* capability bits.
    pub capabilities: u32,
    /// Reserved.
    pub reserved: u32,
}

/// Body of OFPT_SET_CONFIG and OFPT_GET_CONFIG_REPLY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchConfig {
    /// OFPC_FRAG_* flags.
    pub flags: u16,
    /// Bytes of a table-miss packet sent to the controller.
    pub miss_send_len: u16,
}

/// OFPT_PACKET_IN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketIn {
    /// Switch buffer holding the full packet, or [`NO_BUFFER`].
    pub buffer_id: u32,
    /// Full length of the packet.
    pub total_len: u16,
    /// Why the packet was sent ([`packet_in_reason`](super::packet_in_reason)).
    pub reason: u8,
    /// Table that sent it.
    pub table_id: u8,
    /// Cookie of the flow entry that sent it.
    pub cookie: u64,
    /// Pipeline fields, at least `in_port`.
    pub match_: Match,
    /// The (possibly truncated) Ethernet frame.
    pub data: Vec<u8>,
}

/// OFPT_FLOW_REMOVED (sent for entries installed with [`FlowModFlags::SEND_FLOW_REM`](super::FlowModFlags::SEND_FLOW_REM)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRemoved {
    /// Cookie of the entry.
    pub cookie: u64,
    /// Priority of the entry.
    pub priority: u16,
    /// Why it was removed ([`flow_removed_reason`](super::flow_removed_reason)).
    pub reason: u8,
    /// Its table.
    pub table_id: u8,
    /// Whole seconds it was alive.
    pub duration_sec: u32,
    /// Nanoseconds beyond `duration_sec`.
    pub duration_nsec: u32,
    /// Its idle timeout in seconds.
    pub idle_timeout: u16,
    /// Its hard timeout in seconds.
    pub hard_timeout: u16,
    /// Packets it matched.
    pub packet_count: u64,
    /// Bytes it matched.
    pub byte_count: u64,
    /// Its match.
    pub match_: Match,
}

/// OFPT_PORT_STATUS: a port was added, removed or changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStatus {
    /// OFPPR_ADD = 0, OFPPR_DELETE = 1, OFPPR_MODIFY = 2.
    pub reason: u8,
    /// The port.
    pub port: Port,
}

/// OFPT_PACKET_OUT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketOut {
    /// Buffered packet to send, or [`NO_BUFFER`] to send `data`.
    pub buffer_id: u32,
    /// Input port for the pipeline ([`crate::port::CONTROLLER`] when none).
    pub in_port: u32,
    /// Actions to apply.
    pub actions: Vec<Action>,
    /// The Ethernet frame (empty when `buffer_id` names a buffer).
    pub data: Vec<u8>,
}

impl PacketOut {
    /// Sends the frame `data` through `actions`, as if received on the controller port.
    pub fn new(actions: Vec<Action>, data: Vec<u8>) -> Self {
        PacketOut {
            buffer_id: NO_BUFFER,
            in_port: crate::action::port::CONTROLLER,
            actions,
            data,
        }
    }
}
