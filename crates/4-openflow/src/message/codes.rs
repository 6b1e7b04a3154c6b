//! Wire numbers of OpenFlow 1.3: message types (OFPT_*), error types and codes, and the
//! reasons carried by PACKET_IN and FLOW_REMOVED.
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

/// Error types (OFPET_*) carried in [`ErrorMsg::err_type`](super::ErrorMsg::err_type).
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

/// Reasons of a [`PacketIn`](super::PacketIn) (OFPR_*).
pub mod packet_in_reason {
    /// No matching flow (table-miss entry).
    pub const NO_MATCH: u8 = 0;
    /// An output-to-controller action.
    pub const ACTION: u8 = 1;
    /// Invalid TTL.
    pub const INVALID_TTL: u8 = 2;
}

/// Reasons of a [`FlowRemoved`](super::FlowRemoved) (OFPRR_*).
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
