//! OpenFlow 1.3 messages (the controller's subset) and their encoding and decoding.

use crate::action::{
    Action, Instruction, decode_actions, decode_instructions, encode_actions, encode_instructions,
};
use crate::buf::{Reader, patch_len, put_u8, put_u16, put_u32, put_u64, put_zeros};
use crate::error::{DecodeError, EncodeError};
use crate::multipart::{MultipartReply, MultipartRequest, Port, decode_port, encode_port};
use crate::oxm::{Match, decode_match, encode_match};

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

/// Message type numbers (OFPT_*).
pub mod msg_type {
    /// OFPT_HELLO
    pub const HELLO: u8 = 0;
    /// OFPT_ERROR
    pub const ERROR: u8 = 1;
    /// OFPT_ECHO_REQUEST
    pub const ECHO_REQUEST: u8 = 2;
    /// OFPT_ECHO_REPLY
    pub const ECHO_REPLY: u8 = 3;
    /// OFPT_EXPERIMENTER
    pub const EXPERIMENTER: u8 = 4;
    /// OFPT_FEATURES_REQUEST
    pub const FEATURES_REQUEST: u8 = 5;
    /// OFPT_FEATURES_REPLY
    pub const FEATURES_REPLY: u8 = 6;
    /// OFPT_GET_CONFIG_REQUEST
    pub const GET_CONFIG_REQUEST: u8 = 7;
    /// OFPT_GET_CONFIG_REPLY
    pub const GET_CONFIG_REPLY: u8 = 8;
    /// OFPT_SET_CONFIG
    pub const SET_CONFIG: u8 = 9;
    /// OFPT_PACKET_IN
    pub const PACKET_IN: u8 = 10;
    /// OFPT_FLOW_REMOVED
    pub const FLOW_REMOVED: u8 = 11;
    /// OFPT_PORT_STATUS
    pub const PORT_STATUS: u8 = 12;
    /// OFPT_PACKET_OUT
    pub const PACKET_OUT: u8 = 13;
    /// OFPT_FLOW_MOD
    pub const FLOW_MOD: u8 = 14;
    /// OFPT_MULTIPART_REQUEST
    pub const MULTIPART_REQUEST: u8 = 18;
    /// OFPT_MULTIPART_REPLY
    pub const MULTIPART_REPLY: u8 = 19;
    /// OFPT_BARRIER_REQUEST
    pub const BARRIER_REQUEST: u8 = 20;
    /// OFPT_BARRIER_REPLY
    pub const BARRIER_REPLY: u8 = 21;
}

/// Error types (OFPET_*) carried in [`ErrorMsg::err_type`].
pub mod error_type {
    /// Hello protocol failed.
    pub const HELLO_FAILED: u16 = 0;
    /// Request was not understood.
    pub const BAD_REQUEST: u16 = 1;
    /// Error in an action description.
    pub const BAD_ACTION: u16 = 2;
    /// Error in an instruction list.
    pub const BAD_INSTRUCTION: u16 = 3;
    /// Error in a match.
    pub const BAD_MATCH: u16 = 4;
    /// Problem modifying a flow entry.
    pub const FLOW_MOD_FAILED: u16 = 5;
    /// Problem modifying a group entry.
    pub const GROUP_MOD_FAILED: u16 = 6;
    /// Port mod request failed.
    pub const PORT_MOD_FAILED: u16 = 7;
    /// Table mod request failed.
    pub const TABLE_MOD_FAILED: u16 = 8;
    /// Queue operation failed.
    pub const QUEUE_OP_FAILED: u16 = 9;
    /// Switch config request failed.
    pub const SWITCH_CONFIG_FAILED: u16 = 10;
    /// Controller role request failed.
    pub const ROLE_REQUEST_FAILED: u16 = 11;
    /// Error in a meter.
    pub const METER_MOD_FAILED: u16 = 12;
    /// Setting table features failed.
    pub const TABLE_FEATURES_FAILED: u16 = 13;
    /// Experimenter error.
    pub const EXPERIMENTER: u16 = 0xffff;
}

/// Error codes (per [`error_type`]) that a flow-programming controller meets.
pub mod error_code {
    /// Codes of [`super::error_type::HELLO_FAILED`].
    pub mod hello_failed {
        /// No compatible version.
        pub const INCOMPATIBLE: u16 = 0;
        /// Permissions error.
        pub const EPERM: u16 = 1;
    }
    /// Codes of [`super::error_type::BAD_REQUEST`].
    pub mod bad_request {
        /// Header version not supported.
        pub const BAD_VERSION: u16 = 0;
        /// Message type not supported.
        pub const BAD_TYPE: u16 = 1;
        /// Multipart type not supported.
        pub const BAD_MULTIPART: u16 = 2;
        /// Wrong request length for its type.
        pub const BAD_LEN: u16 = 6;
        /// Table id invalid or does not exist.
        pub const BAD_TABLE_ID: u16 = 9;
        /// Port invalid or does not exist.
        pub const BAD_PORT: u16 = 11;
        /// Invalid packet in a PACKET_OUT.
        pub const BAD_PACKET: u16 = 12;
    }
    /// Codes of [`super::error_type::BAD_ACTION`].
    pub mod bad_action {
        /// Unknown action type.
        pub const BAD_TYPE: u16 = 0;
        /// Length problem in actions.
        pub const BAD_LEN: u16 = 1;
        /// Problem validating the output port.
        pub const BAD_OUT_PORT: u16 = 4;
        /// Bad action argument.
        pub const BAD_ARGUMENT: u16 = 5;
        /// Unsupported field in a SET_FIELD action.
        pub const BAD_SET_TYPE: u16 = 13;
        /// Bad argument in a SET_FIELD action.
        pub const BAD_SET_ARGUMENT: u16 = 15;
    }
    /// Codes of [`super::error_type::BAD_MATCH`].
    pub mod bad_match {
        /// Unsupported match type.
        pub const BAD_TYPE: u16 = 0;
        /// Length problem in the match.
        pub const BAD_LEN: u16 = 1;
        /// Unsupported network address mask.
        pub const BAD_NW_ADDR_MASK: u16 = 4;
        /// Unsupported field.
        pub const BAD_FIELD: u16 = 6;
        /// Unsupported value in a field.
        pub const BAD_VALUE: u16 = 7;
        /// Unsupported mask.
        pub const BAD_MASK: u16 = 8;
        /// A prerequisite was not met.
        pub const BAD_PREREQ: u16 = 9;
        /// A field appears twice.
        pub const DUP_FIELD: u16 = 10;
    }
    /// Codes of [`super::error_type::FLOW_MOD_FAILED`].
    pub mod flow_mod_failed {
        /// Unspecified error.
        pub const UNKNOWN: u16 = 0;
        /// The table is full.
        pub const TABLE_FULL: u16 = 1;
        /// The table does not exist.
        pub const BAD_TABLE_ID: u16 = 2;
        /// CHECK_OVERLAP was set and an overlap exists.
        pub const OVERLAP: u16 = 3;
        /// Permissions error.
        pub const EPERM: u16 = 4;
        /// Unsupported idle or hard timeout.
        pub const BAD_TIMEOUT: u16 = 5;
        /// Unsupported or unknown command.
        pub const BAD_COMMAND: u16 = 6;
        /// Unsupported or unknown flags.
        pub const BAD_FLAGS: u16 = 7;
    }
}

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
    /// Error type ([`error_type`]).
    pub err_type: u16,
    /// Error code within the type ([`error_code`]).
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

/// Reasons of a [`PacketIn`] (OFPR_*).
pub mod packet_in_reason {
    /// No matching flow (table-miss entry).
    pub const NO_MATCH: u8 = 0;
    /// An output-to-controller action.
    pub const ACTION: u8 = 1;
    /// Invalid TTL.
    pub const INVALID_TTL: u8 = 2;
}

/// OFPT_PACKET_IN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketIn {
    /// Switch buffer holding the full packet, or [`NO_BUFFER`].
    pub buffer_id: u32,
    /// Full length of the packet.
    pub total_len: u16,
    /// Why the packet was sent ([`packet_in_reason`]).
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

/// Reasons of a [`FlowRemoved`] (OFPRR_*).
pub mod flow_removed_reason {
    /// Idle timeout expired.
    pub const IDLE_TIMEOUT: u8 = 0;
    /// Hard timeout expired.
    pub const HARD_TIMEOUT: u8 = 1;
    /// Deleted by a flow mod.
    pub const DELETE: u8 = 2;
    /// Its group was removed.
    pub const GROUP_DELETE: u8 = 3;
}

/// OFPT_FLOW_REMOVED (sent for entries installed with [`FlowModFlags::SEND_FLOW_REM`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRemoved {
    /// Cookie of the entry.
    pub cookie: u64,
    /// Priority of the entry.
    pub priority: u16,
    /// Why it was removed ([`flow_removed_reason`]).
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

/// Flow-mod commands (OFPFC_*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowModCommand {
    /// Add a flow (replacing an identical match and priority).
    Add,
    /// Modify the instructions of all matching flows.
    Modify,
    /// Modify the flow with exactly this match and priority.
    ModifyStrict,
    /// Delete all matching flows.
    Delete,
    /// Delete the flow with exactly this match and priority.
    DeleteStrict,
}

impl FlowModCommand {
    /// The wire value.
    pub const fn to_u8(self) -> u8 {
        match self {
            FlowModCommand::Add => 0,
            FlowModCommand::Modify => 1,
            FlowModCommand::ModifyStrict => 2,
            FlowModCommand::Delete => 3,
            FlowModCommand::DeleteStrict => 4,
        }
    }

    /// Parses a wire value.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => FlowModCommand::Add,
            1 => FlowModCommand::Modify,
            2 => FlowModCommand::ModifyStrict,
            3 => FlowModCommand::Delete,
            4 => FlowModCommand::DeleteStrict,
            _ => return None,
        })
    }
}

/// Flow-mod flags (OFPFF_*), a bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowModFlags(pub u16);

impl FlowModFlags {
    /// No flags.
    pub const NONE: FlowModFlags = FlowModFlags(0);
    /// Send a FLOW_REMOVED message when the entry expires or is deleted.
    pub const SEND_FLOW_REM: FlowModFlags = FlowModFlags(1);
    /// Refuse to add an entry that overlaps an existing one of the same priority.
    pub const CHECK_OVERLAP: FlowModFlags = FlowModFlags(1 << 1);
    /// Reset the counters of modified entries.
    pub const RESET_COUNTS: FlowModFlags = FlowModFlags(1 << 2);
    /// Do not keep packet counts.
    pub const NO_PKT_COUNTS: FlowModFlags = FlowModFlags(1 << 3);
    /// Do not keep byte counts.
    pub const NO_BYT_COUNTS: FlowModFlags = FlowModFlags(1 << 4);

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: FlowModFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for FlowModFlags {
    type Output = FlowModFlags;
    fn bitor(self, rhs: FlowModFlags) -> FlowModFlags {
        FlowModFlags(self.0 | rhs.0)
    }
}

/// OFPT_FLOW_MOD: add, modify or delete flow entries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowMod {
    /// Opaque controller-issued identifier (ADD), or the value to filter on (MODIFY/DELETE).
    pub cookie: u64,
    /// Cookie bits that must match for MODIFY/DELETE; 0 ignores the cookie.
    pub cookie_mask: u64,
    /// Table to change; [`TABLE_ALL`] only for deletes.
    pub table_id: u8,
    /// What to do.
    pub command: FlowModCommand,
    /// Seconds without a packet before the entry is removed; 0 = never.
    pub idle_timeout: u16,
    /// Seconds after which the entry is removed; 0 = never.
    pub hard_timeout: u16,
    /// Priority; higher wins among overlapping matches.
    pub priority: u16,
    /// Buffered packet to apply the entry to, or [`NO_BUFFER`].
    pub buffer_id: u32,
    /// For DELETE*: only entries outputting to this port ([`crate::port::ANY`] = no filter).
    pub out_port: u32,
    /// For DELETE*: only entries outputting to this group ([`GROUP_ANY`] = no filter).
    pub out_group: u32,
    /// OFPFF_* flags.
    pub flags: FlowModFlags,
    /// Fields to match.
    pub match_: Match,
    /// Instructions (ignored for deletes).
    pub instructions: Vec<Instruction>,
}

impl FlowMod {
    /// An ADD into table 0 with cookie 0, no timeouts and no flags.
    pub fn add(match_: Match, priority: u16, instructions: Vec<Instruction>) -> Self {
        FlowMod {
            cookie: 0,
            cookie_mask: 0,
            table_id: 0,
            command: FlowModCommand::Add,
            idle_timeout: 0,
            hard_timeout: 0,
            priority,
            buffer_id: NO_BUFFER,
            out_port: crate::action::port::ANY,
            out_group: GROUP_ANY,
            flags: FlowModFlags::NONE,
            match_,
            instructions,
        }
    }

    /// A non-strict DELETE of every entry, in any table, whose match is covered by `match_`.
    pub fn delete(match_: Match) -> Self {
        FlowMod {
            table_id: TABLE_ALL,
            command: FlowModCommand::Delete,
            ..FlowMod::add(match_, 0, Vec::new())
        }
    }

    /// A DELETE_STRICT of the entry in `table_id` with exactly `match_` and `priority`.
    pub fn delete_strict(table_id: u8, match_: Match, priority: u16) -> Self {
        FlowMod {
            table_id,
            command: FlowModCommand::DeleteStrict,
            ..FlowMod::add(match_, priority, Vec::new())
        }
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

/// Encodes `msg` with transaction id `xid` into a new buffer.
pub fn encode(msg: &Message, xid: u32) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(msg, xid, &mut out)?;
    Ok(out)
}

/// Appends the encoding of `msg` with transaction id `xid` to `out`. On error `out` is left as
/// it was.
pub fn encode_into(msg: &Message, xid: u32, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let result = encode_unchecked(msg, xid, out).and_then(|()| {
        let len = out.len() - start;
        if len > OFP_MAX_MESSAGE_LEN {
            Err(EncodeError::TooLarge { len })
        } else {
            Ok(())
        }
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_unchecked(msg: &Message, xid: u32, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let version = match msg {
        Message::Hello(h) => h.version,
        _ => OFP_VERSION,
    };
    put_u8(out, version);
    put_u8(out, msg.msg_type());
    put_u16(out, 0); // length, patched below
    put_u32(out, xid);
    match msg {
        Message::Hello(h) => {
            if let Some(bitmap) = h.bitmap {
                const OFPHET_VERSIONBITMAP: u16 = 1;
                put_u16(out, OFPHET_VERSIONBITMAP);
                put_u16(out, 8);
                put_u32(out, bitmap);
            }
        }
        Message::Error(e) => {
            put_u16(out, e.err_type);
            put_u16(out, e.code);
            out.extend_from_slice(&e.data);
        }
        Message::EchoRequest(data) | Message::EchoReply(data) => out.extend_from_slice(data),
        Message::FeaturesRequest
        | Message::GetConfigRequest
        | Message::BarrierRequest
        | Message::BarrierReply => {}
        Message::FeaturesReply(f) => {
            put_u64(out, f.datapath_id);
            put_u32(out, f.n_buffers);
            put_u8(out, f.n_tables);
            put_u8(out, f.auxiliary_id);
            put_zeros(out, 2);
            put_u32(out, f.capabilities);
            put_u32(out, f.reserved);
        }
        Message::GetConfigReply(c) | Message::SetConfig(c) => {
            put_u16(out, c.flags);
            put_u16(out, c.miss_send_len);
        }
        Message::PacketIn(p) => {
            put_u32(out, p.buffer_id);
            put_u16(out, p.total_len);
            put_u8(out, p.reason);
            put_u8(out, p.table_id);
            put_u64(out, p.cookie);
            encode_match(&p.match_, out)?;
            put_zeros(out, 2);
            out.extend_from_slice(&p.data);
        }
        Message::FlowRemoved(f) => {
            put_u64(out, f.cookie);
            put_u16(out, f.priority);
            put_u8(out, f.reason);
            put_u8(out, f.table_id);
            put_u32(out, f.duration_sec);
            put_u32(out, f.duration_nsec);
            put_u16(out, f.idle_timeout);
            put_u16(out, f.hard_timeout);
            put_u64(out, f.packet_count);
            put_u64(out, f.byte_count);
            encode_match(&f.match_, out)?;
        }
        Message::PortStatus(s) => {
            put_u8(out, s.reason);
            put_zeros(out, 7);
            encode_port(&s.port, out);
        }
        Message::PacketOut(p) => {
            put_u32(out, p.buffer_id);
            put_u32(out, p.in_port);
            let actions_len_at = out.len();
            put_u16(out, 0);
            put_zeros(out, 6);
            let actions_start = out.len();
            encode_actions(&p.actions, out)?;
            patch_len(out, actions_len_at, actions_start);
            out.extend_from_slice(&p.data);
        }
        Message::FlowMod(f) => {
            put_u64(out, f.cookie);
            put_u64(out, f.cookie_mask);
            put_u8(out, f.table_id);
            put_u8(out, f.command.to_u8());
            put_u16(out, f.idle_timeout);
            put_u16(out, f.hard_timeout);
            put_u16(out, f.priority);
            put_u32(out, f.buffer_id);
            put_u32(out, f.out_port);
            put_u32(out, f.out_group);
            put_u16(out, f.flags.0);
            put_zeros(out, 2);
            encode_match(&f.match_, out)?;
            encode_instructions(&f.instructions, out)?;
        }
        Message::MultipartRequest(m) => crate::multipart::encode_request(m, out)?,
        Message::MultipartReply(m) => crate::multipart::encode_reply(m, out)?,
        Message::Unknown { body, .. } => out.extend_from_slice(body),
    }
    patch_len(out, start + 2, start);
    Ok(())
}

/// Decodes exactly one message occupying all of `buf` (as produced by [`crate::Framer`]) and
/// returns its xid and contents.
///
/// The header length must equal `buf.len()`. HELLO and ERROR decode in any version; other
/// messages must be version 0x04. Unknown message types decode to [`Message::Unknown`].
pub fn decode(buf: &[u8]) -> Result<(u32, Message), DecodeError> {
    let h = Header::parse(buf)?;
    if usize::from(h.length) != buf.len() {
        return Err(DecodeError::BadLength {
            what: "message (header length vs. buffer)",
            len: usize::from(h.length),
        });
    }
    if h.version != OFP_VERSION && h.msg_type != msg_type::HELLO && h.msg_type != msg_type::ERROR {
        return Err(DecodeError::UnsupportedVersion(h.version));
    }
    let mut r = Reader::new(buf.get(OFP_HEADER_LEN..).unwrap_or_default());
    let msg = decode_body(&h, &mut r)?;
    if !r.is_empty() {
        return Err(DecodeError::TrailingBytes {
            what: "message",
            len: r.remaining(),
        });
    }
    Ok((h.xid, msg))
}

fn decode_hello(version: u8, r: &mut Reader<'_>) -> Result<Hello, DecodeError> {
    const OFPHET_VERSIONBITMAP: u16 = 1;
    let mut hello = Hello {
        version,
        bitmap: None,
    };
    // Elements: type, length (excluding padding), payload, padding to 8. Unknown ones are
    // skipped, as the specification requires.
    while !r.is_empty() {
        let etype = r.peek_u16(0, "hello element")?;
        let len = usize::from(r.peek_u16(2, "hello element")?);
        if len < 4 {
            return Err(DecodeError::BadLength {
                what: "hello element",
                len,
            });
        }
        let mut elem = r.sub(len, "hello element")?;
        // Some senders omit the final padding; tolerate its absence at the very end.
        r.skip(
            crate::buf::pad8(len).min(r.remaining()),
            "hello element padding",
        )?;
        elem.skip(4, "hello element")?;
        if etype == OFPHET_VERSIONBITMAP && hello.bitmap.is_none() {
            // Only versions 0..=31 exist; later bitmap words are ignored.
            hello.bitmap = Some(elem.u32("version bitmap")?);
        }
    }
    Ok(hello)
}

fn decode_body(h: &Header, r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    use msg_type as t;
    Ok(match h.msg_type {
        t::HELLO => Message::Hello(decode_hello(h.version, r)?),
        t::ERROR => Message::Error(ErrorMsg {
            err_type: r.u16("error type")?,
            code: r.u16("error code")?,
            data: r.rest().to_vec(),
        }),
        t::ECHO_REQUEST => Message::EchoRequest(r.rest().to_vec()),
        t::ECHO_REPLY => Message::EchoReply(r.rest().to_vec()),
        t::FEATURES_REQUEST => Message::FeaturesRequest,
        t::GET_CONFIG_REQUEST => Message::GetConfigRequest,
        t::BARRIER_REQUEST => Message::BarrierRequest,
        t::BARRIER_REPLY => Message::BarrierReply,
        t::FEATURES_REPLY => {
            let datapath_id = r.u64("datapath_id")?;
            let n_buffers = r.u32("n_buffers")?;
            let n_tables = r.u8("n_tables")?;
            let auxiliary_id = r.u8("auxiliary_id")?;
            r.skip(2, "features padding")?;
            Message::FeaturesReply(FeaturesReply {
                datapath_id,
                n_buffers,
                n_tables,
                auxiliary_id,
                capabilities: r.u32("capabilities")?,
                reserved: r.u32("reserved")?,
            })
        }
        t::GET_CONFIG_REPLY | t::SET_CONFIG => {
            let c = SwitchConfig {
                flags: r.u16("config flags")?,
                miss_send_len: r.u16("miss_send_len")?,
            };
            if h.msg_type == t::SET_CONFIG {
                Message::SetConfig(c)
            } else {
                Message::GetConfigReply(c)
            }
        }
        t::PACKET_IN => {
            let buffer_id = r.u32("packet_in buffer_id")?;
            let total_len = r.u16("packet_in total_len")?;
            let reason = r.u8("packet_in reason")?;
            let table_id = r.u8("packet_in table_id")?;
            let cookie = r.u64("packet_in cookie")?;
            let match_ = decode_match(r)?;
            r.skip(2, "packet_in padding")?;
            Message::PacketIn(PacketIn {
                buffer_id,
                total_len,
                reason,
                table_id,
                cookie,
                match_,
                data: r.rest().to_vec(),
            })
        }
        t::FLOW_REMOVED => Message::FlowRemoved(FlowRemoved {
            cookie: r.u64("flow_removed cookie")?,
            priority: r.u16("flow_removed priority")?,
            reason: r.u8("flow_removed reason")?,
            table_id: r.u8("flow_removed table_id")?,
            duration_sec: r.u32("flow_removed duration")?,
            duration_nsec: r.u32("flow_removed duration")?,
            idle_timeout: r.u16("flow_removed idle_timeout")?,
            hard_timeout: r.u16("flow_removed hard_timeout")?,
            packet_count: r.u64("flow_removed packet_count")?,
            byte_count: r.u64("flow_removed byte_count")?,
            match_: decode_match(r)?,
        }),
        t::PORT_STATUS => {
            let reason = r.u8("port_status reason")?;
            r.skip(7, "port_status padding")?;
            Message::PortStatus(PortStatus {
                reason,
                port: decode_port(r)?,
            })
        }
        t::PACKET_OUT => {
            let buffer_id = r.u32("packet_out buffer_id")?;
            let in_port = r.u32("packet_out in_port")?;
            let actions_len = usize::from(r.u16("packet_out actions_len")?);
            r.skip(6, "packet_out padding")?;
            let actions = decode_actions(&mut r.sub(actions_len, "packet_out actions")?)?;
            Message::PacketOut(PacketOut {
                buffer_id,
                in_port,
                actions,
                data: r.rest().to_vec(),
            })
        }
        t::FLOW_MOD => {
            let cookie = r.u64("flow_mod cookie")?;
            let cookie_mask = r.u64("flow_mod cookie_mask")?;
            let table_id = r.u8("flow_mod table_id")?;
            let cmd = r.u8("flow_mod command")?;
            let command = FlowModCommand::from_u8(cmd).ok_or(DecodeError::BadValue {
                what: "flow_mod command",
                value: cmd.into(),
            })?;
            let idle_timeout = r.u16("flow_mod idle_timeout")?;
            let hard_timeout = r.u16("flow_mod hard_timeout")?;
            let priority = r.u16("flow_mod priority")?;
            let buffer_id = r.u32("flow_mod buffer_id")?;
            let out_port = r.u32("flow_mod out_port")?;
            let out_group = r.u32("flow_mod out_group")?;
            let flags = FlowModFlags(r.u16("flow_mod flags")?);
            r.skip(2, "flow_mod padding")?;
            let match_ = decode_match(r)?;
            let instructions = decode_instructions(r)?;
            Message::FlowMod(FlowMod {
                cookie,
                cookie_mask,
                table_id,
                command,
                idle_timeout,
                hard_timeout,
                priority,
                buffer_id,
                out_port,
                out_group,
                flags,
                match_,
                instructions,
            })
        }
        t::MULTIPART_REQUEST => Message::MultipartRequest(crate::multipart::decode_request(r)?),
        t::MULTIPART_REPLY => Message::MultipartReply(crate::multipart::decode_reply(r)?),
        msg_type => Message::Unknown {
            msg_type,
            body: r.rest().to_vec(),
        },
    })
}
