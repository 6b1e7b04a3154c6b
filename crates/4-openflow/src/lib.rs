//! Layer 4 of flowshift: the controller side of OpenFlow 1.3, without I/O.
//!
//! * Codec ([`encode`], [`encode_into`], [`decode`]): the subset of OpenFlow 1.3 a
//!   NAT-steering controller needs — HELLO with version bitmap, ERROR, ECHO, FEATURES,
//!   GET/SET_CONFIG, FLOW_MOD, BARRIER, PACKET_IN, PACKET_OUT, FLOW_REMOVED, PORT_STATUS and
//!   MULTIPART flow stats, port stats and port descriptions. Matches are OXM TLVs ([`Match`]);
//!   instructions and actions are [`Instruction`] and [`Action`]. Unknown message types decode
//!   to [`Message::Unknown`]; malformed input maps to a [`DecodeError`], never a panic.
//! * [`Framer`]: splits a byte stream into whole messages, refusing any longer than 64 KiB (or
//!   a smaller configured bound).
//! * [`Connection`]: a sans-IO state machine for one switch connection: version negotiation,
//!   features handshake, echo replies and keepalive, xid assignment, multipart reassembly,
//!   bounded queues with counters. Time comes in as [`flowshift_wire::Instant`].
//!
//! The crate performs no I/O; the Open vSwitch process harness used by live tests and the
//! testbed is the `flowshift-ovs` crate.

#![deny(missing_docs)]

mod action;
mod buf;
pub mod connection;
mod error;
mod framer;
mod message;
mod multipart;
mod oxm;

pub use action::{Action, CONTROLLER_MAX_LEN_NO_BUFFER, Instruction, port};
pub use connection::{CloseReason, Config, Connection, Event, SendError, State, Stats};
pub use error::{DecodeError, EncodeError};
pub use framer::{FrameError, Framer};
pub use message::{
    ErrorMsg, FeaturesReply, FlowMod, FlowModCommand, FlowModFlags, FlowRemoved, GROUP_ANY, Header,
    Hello, Message, NO_BUFFER, OFP_HEADER_LEN, OFP_MAX_MESSAGE_LEN, OFP_VERSION, PacketIn,
    PacketOut, PortStatus, SwitchConfig, TABLE_ALL, decode, encode, encode_into, error_code,
    error_type, flow_removed_reason, msg_type, packet_in_reason,
};
pub use multipart::{
    FlowStats, FlowStatsRequest, MULTIPART_MORE, MultipartReply, MultipartReplyBody,
    MultipartRequest, MultipartRequestBody, Port, PortStats, multipart_type,
};
pub use oxm::{
    ETH_TYPE_IPV4, IP_PROTO_TCP, IP_PROTO_UDP, Masked, Match, OXM_CLASS_OPENFLOW_BASIC, OxmTlv,
    SetField, oxm_field,
};
