//! OpenFlow 1.3 messages (the controller's subset) and their encoding and decoding.
//!
//! This module holds the common header and the [`Message`] enum; the wire numbers are in
//! `codes`, the message bodies in `bodies` and `flow_mod`, the codec in `encode` and
//! `decode`.

use crate::buf::Reader;
use crate::error::DecodeError;
use crate::multipart::{MultipartReply, MultipartRequest};

mod bodies;
mod codes;
mod decode;
mod encode;
mod flow_mod;

pub use bodies::{
    ErrorMsg, FeaturesReply, FlowRemoved, Hello, PacketIn, PacketOut, PortStatus, SwitchConfig,
};
pub use codes::{error_code, error_type, flow_removed_reason, msg_type, packet_in_reason};
pub use decode::decode;
pub use encode::{encode, encode_into};
pub use flow_mod::{FlowMod, FlowModCommand, FlowModFlags};

/// The OpenFlow 1.3 wire version.
pub const OFP_VERSION: u8 = 0x04;
/// Length of the common message header (version, type, length, xid).
pub const OFP_HEADER_LEN: usize = 8;
/// Largest message the 16-bit length field can describe.
pub const OFP_MAX_MESSAGE_LEN: usize = 65535;
/// `buffer_id` meaning "no buffered packet" (OFP_NO_BUFFER).
pub const NO_BUFFER: u32 = 0xffff_ffff;
/// Wildcard table id in deletes and stats requests (OFPTT_ALL).
pub const TABLE_ALL: u8 = 0xff;
/// Wildcard group in deletes and stats requests (OFPG_ANY).
pub const GROUP_ANY: u32 = 0xffff_ffff;

/// The fixed header in front of every message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Protocol version (0x04 for OpenFlow 1.3).
    pub version: u8,
    /// Message type ([`msg_type`]).
    pub msg_type: u8,
    /// Length of the whole message including this header, in bytes.
    pub length: u16,
    /// Transaction id; replies carry the xid of their request.
    pub xid: u32,
}

impl Header {
    /// Parses the first 8 bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Header, DecodeError> {
        let mut r = Reader::new(buf);
        Ok(Header {
            version: r.u8("header")?,
            msg_type: r.u8("header")?,
            length: r.u16("header")?,
            xid: r.u32("header")?,
        })
    }
}

/// An OpenFlow 1.3 message. Types this crate does not model decode to [`Message::Unknown`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// OFPT_HELLO.
    Hello(Hello),
    /// OFPT_ERROR.
    Error(ErrorMsg),
    /// OFPT_ECHO_REQUEST with arbitrary payload.
    EchoRequest(Vec<u8>),
    /// OFPT_ECHO_REPLY echoing the request payload.
    EchoReply(Vec<u8>),
    /// OFPT_FEATURES_REQUEST.
    FeaturesRequest,
    /// OFPT_FEATURES_REPLY.
    FeaturesReply(FeaturesReply),
    /// OFPT_GET_CONFIG_REQUEST.
    GetConfigRequest,
    /// OFPT_GET_CONFIG_REPLY.
    GetConfigReply(SwitchConfig),
    /// OFPT_SET_CONFIG.
    SetConfig(SwitchConfig),
    /// OFPT_PACKET_IN.
    PacketIn(PacketIn),
    /// OFPT_FLOW_REMOVED.
    FlowRemoved(FlowRemoved),
    /// OFPT_PORT_STATUS.
    PortStatus(PortStatus),
    /// OFPT_PACKET_OUT.
    PacketOut(PacketOut),
    /// OFPT_FLOW_MOD.
    FlowMod(FlowMod),
    /// OFPT_MULTIPART_REQUEST.
    MultipartRequest(MultipartRequest),
    /// OFPT_MULTIPART_REPLY.
    MultipartReply(MultipartReply),
    /// OFPT_BARRIER_REQUEST.
    BarrierRequest,
    /// OFPT_BARRIER_REPLY.
    BarrierReply,
    /// Any other message type, with the body after the header.
    Unknown {
        /// OFPT_* type.
        msg_type: u8,
        /// Bytes after the 8-byte header.
        body: Vec<u8>,
    },
}

impl Message {
    /// The OFPT_* type number.
    pub fn msg_type(&self) -> u8 {
        use msg_type as t;
        match self {
            Message::Hello(_) => t::HELLO,
            Message::Error(_) => t::ERROR,
            Message::EchoRequest(_) => t::ECHO_REQUEST,
            Message::EchoReply(_) => t::ECHO_REPLY,
            Message::FeaturesRequest => t::FEATURES_REQUEST,
            Message::FeaturesReply(_) => t::FEATURES_REPLY,
            Message::GetConfigRequest => t::GET_CONFIG_REQUEST,
            Message::GetConfigReply(_) => t::GET_CONFIG_REPLY,
            Message::SetConfig(_) => t::SET_CONFIG,
            Message::PacketIn(_) => t::PACKET_IN,
            Message::FlowRemoved(_) => t::FLOW_REMOVED,
            Message::PortStatus(_) => t::PORT_STATUS,
            Message::PacketOut(_) => t::PACKET_OUT,
            Message::FlowMod(_) => t::FLOW_MOD,
            Message::MultipartRequest(_) => t::MULTIPART_REQUEST,
            Message::MultipartReply(_) => t::MULTIPART_REPLY,
            Message::BarrierRequest => t::BARRIER_REQUEST,
            Message::BarrierReply => t::BARRIER_REPLY,
            Message::Unknown { msg_type, .. } => *msg_type,
        }
    }
}
