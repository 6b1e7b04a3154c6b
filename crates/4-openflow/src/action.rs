//! Actions (OpenFlow 1.3 §7.2.5) and instructions (§7.2.4).

use crate::buf::{Reader, pad_to_8, patch_len, put_u16, put_u32, put_u64, put_zeros};
use crate::error::{DecodeError, EncodeError};
use crate::oxm::{SetField, decode_set_field, encode_set_field};

/// Reserved OpenFlow port numbers (OFPP_*). Physical and logical ports are `1..=MAX`.
pub mod port {
    /// Largest number of a physical or logical port.
    pub const MAX: u32 = 0xffff_ff00;
    /// Send the packet out of its input port.
    pub const IN_PORT: u32 = 0xffff_fff8;
    /// Submit the packet to the first flow table (PACKET_OUT only).
    pub const TABLE: u32 = 0xffff_fff9;
    /// The switch's non-OpenFlow L2/L3 pipeline.
    pub const NORMAL: u32 = 0xffff_fffa;
    /// Flood along the spanning tree, excluding the input port.
    pub const FLOOD: u32 = 0xffff_fffb;
    /// All ports except the input port.
    pub const ALL: u32 = 0xffff_fffc;
    /// The controller, as a PACKET_IN.
    pub const CONTROLLER: u32 = 0xffff_fffd;
    /// The switch's local networking stack.
    pub const LOCAL: u32 = 0xffff_fffe;
    /// Wildcard ("any port") in requests and deletes; not a valid output port.
    pub const ANY: u32 = 0xffff_ffff;
}

/// `max_len` of an output to [`port::CONTROLLER`] asking for the whole packet, unbuffered.
pub const CONTROLLER_MAX_LEN_NO_BUFFER: u16 = 0xffff;

/// An action applied to a packet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// OFPAT_OUTPUT: send to `port`; `max_len` bytes go to the controller when `port` is
    /// [`port::CONTROLLER`] (ignored otherwise).
    Output {
        /// Output port number or a reserved [`port`].
        port: u32,
        /// Bytes to send to the controller.
        max_len: u16,
    },
    /// OFPAT_GROUP: process the packet through a group.
    Group(u32),
    /// OFPAT_DEC_NW_TTL: decrement the IP TTL.
    DecNwTtl,
    /// OFPAT_SET_FIELD: rewrite a header field.
    SetField(SetField),
    /// Any other action type, with its body after the 4-byte action header (including the
    /// padding; encoding pads the body so that the action is a multiple of 8 bytes).
    Unknown {
        /// OFPAT_* type.
        action_type: u16,
        /// Bytes after the type and length fields.
        body: Vec<u8>,
    },
}

impl Action {
    /// Output to `port` (a physical port or a reserved [`port`] other than the controller).
    pub const fn output(port: u32) -> Self {
        Action::Output { port, max_len: 0 }
    }

    /// Output to the controller as a PACKET_IN carrying up to `max_len` bytes of the packet
    /// ([`CONTROLLER_MAX_LEN_NO_BUFFER`] for all of it).
    pub const fn to_controller(max_len: u16) -> Self {
        Action::Output {
            port: port::CONTROLLER,
            max_len,
        }
    }
}

const OFPAT_OUTPUT: u16 = 0;
const OFPAT_GROUP: u16 = 22;
const OFPAT_DEC_NW_TTL: u16 = 24;
const OFPAT_SET_FIELD: u16 = 25;

/// Appends one action, padded to a multiple of 8 bytes.
fn encode_action(a: &Action, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    match a {
        Action::Output { port, max_len } => {
            put_u16(out, OFPAT_OUTPUT);
            put_u16(out, 16);
            put_u32(out, *port);
            put_u16(out, *max_len);
            put_zeros(out, 6);
        }
        Action::Group(g) => {
            put_u16(out, OFPAT_GROUP);
            put_u16(out, 8);
            put_u32(out, *g);
        }
        Action::DecNwTtl => {
            put_u16(out, OFPAT_DEC_NW_TTL);
            put_u16(out, 8);
            put_zeros(out, 4);
        }
        Action::SetField(sf) => {
            put_u16(out, OFPAT_SET_FIELD);
            put_u16(out, 0);
            encode_set_field(sf, out)?;
            pad_to_8(out, start);
            patch_len(out, start + 2, start);
        }
        Action::Unknown { action_type, body } => {
            put_u16(out, *action_type);
            put_u16(out, 0);
            out.extend_from_slice(body);
            pad_to_8(out, start);
            patch_len(out, start + 2, start);
        }
    }
    Ok(())
}

/// Appends a list of actions.
pub(crate) fn encode_actions(actions: &[Action], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    actions.iter().try_for_each(|a| encode_action(a, out))
}

/// Splits off one TLV whose u16 length at offset 2 must be a multiple of 8 and at least 8.
fn tlv8<'a>(r: &mut Reader<'a>, what: &'static str) -> Result<(u16, Reader<'a>), DecodeError> {
    let t = r.peek_u16(0, what)?;
    let len = usize::from(r.peek_u16(2, what)?);
    if len < 8 || len % 8 != 0 {
        return Err(DecodeError::BadLength { what, len });
    }
    let mut body = r.sub(len, what)?;
    body.skip(4, what)?;
    Ok((t, body))
}

fn expect_len(body: &Reader<'_>, want: usize, what: &'static str) -> Result<(), DecodeError> {
    if body.remaining() == want {
        Ok(())
    } else {
        Err(DecodeError::BadLength {
            what,
            len: body.remaining() + 4,
        })
    }
}

fn decode_action(r: &mut Reader<'_>) -> Result<Action, DecodeError> {
    let (t, mut body) = tlv8(r, "action")?;
    Ok(match t {
        OFPAT_OUTPUT => {
            expect_len(&body, 12, "output action")?;
            let port = body.u32("output port")?;
            let max_len = body.u16("output max_len")?;
            Action::Output { port, max_len }
        }
        OFPAT_GROUP => {
            expect_len(&body, 4, "group action")?;
            Action::Group(body.u32("group id")?)
        }
        OFPAT_DEC_NW_TTL => {
            expect_len(&body, 4, "dec_nw_ttl action")?;
            Action::DecNwTtl
        }
        OFPAT_SET_FIELD => {
            let sf = decode_set_field(&mut body)?;
            if body.remaining() >= 8 {
                return Err(DecodeError::TrailingBytes {
                    what: "set_field action",
                    len: body.remaining(),
                });
            }
            Action::SetField(sf)
        }
        action_type => Action::Unknown {
            action_type,
            body: body.rest().to_vec(),
        },
    })
}

/// Reads actions until `r` is exhausted.
pub(crate) fn decode_actions(r: &mut Reader<'_>) -> Result<Vec<Action>, DecodeError> {
    let mut actions = Vec::new();
    while !r.is_empty() {
        actions.push(decode_action(r)?);
    }
    Ok(actions)
}

/// An instruction of a flow entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Instruction {
    /// OFPIT_GOTO_TABLE: continue in a later table.
    GotoTable(u8),
    /// OFPIT_WRITE_METADATA: `metadata = (metadata & !mask) | (value & mask)`.
    WriteMetadata {
        /// Value to write.
        metadata: u64,
        /// Bits to write.
        mask: u64,
    },
    /// OFPIT_WRITE_ACTIONS: merge actions into the action set.
    WriteActions(Vec<Action>),
    /// OFPIT_APPLY_ACTIONS: apply actions immediately, in order.
    ApplyActions(Vec<Action>),
    /// OFPIT_CLEAR_ACTIONS: empty the action set.
    ClearActions,
    /// OFPIT_METER: apply a meter.
    Meter(u32),
    /// Any other instruction, with its body after the 4-byte header (including padding;
    /// encoding pads to a multiple of 8 bytes).
    Unknown {
        /// OFPIT_* type.
        instruction_type: u16,
        /// Bytes after the type and length fields.
        body: Vec<u8>,
    },
}

const OFPIT_GOTO_TABLE: u16 = 1;
const OFPIT_WRITE_METADATA: u16 = 2;
const OFPIT_WRITE_ACTIONS: u16 = 3;
const OFPIT_APPLY_ACTIONS: u16 = 4;
const OFPIT_CLEAR_ACTIONS: u16 = 5;
const OFPIT_METER: u16 = 6;

fn encode_instruction(i: &Instruction, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    match i {
        Instruction::GotoTable(t) => {
            put_u16(out, OFPIT_GOTO_TABLE);
            put_u16(out, 8);
            out.push(*t);
            put_zeros(out, 3);
        }
        Instruction::WriteMetadata { metadata, mask } => {
            put_u16(out, OFPIT_WRITE_METADATA);
            put_u16(out, 24);
            put_zeros(out, 4);
            put_u64(out, *metadata);
            put_u64(out, *mask);
        }
        Instruction::WriteActions(actions) | Instruction::ApplyActions(actions) => {
            let t = if matches!(i, Instruction::WriteActions(_)) {
                OFPIT_WRITE_ACTIONS
            } else {
                OFPIT_APPLY_ACTIONS
            };
            put_u16(out, t);
            put_u16(out, 0);
            put_zeros(out, 4);
            encode_actions(actions, out)?;
            patch_len(out, start + 2, start);
        }
        Instruction::ClearActions => {
            put_u16(out, OFPIT_CLEAR_ACTIONS);
            put_u16(out, 8);
            put_zeros(out, 4);
        }
        Instruction::Meter(m) => {
            put_u16(out, OFPIT_METER);
            put_u16(out, 8);
            put_u32(out, *m);
        }
        Instruction::Unknown {
            instruction_type,
            body,
        } => {
            put_u16(out, *instruction_type);
            put_u16(out, 0);
            out.extend_from_slice(body);
            pad_to_8(out, start);
            patch_len(out, start + 2, start);
        }
    }
    Ok(())
}

/// Appends a list of instructions.
pub(crate) fn encode_instructions(
    instrs: &[Instruction],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    instrs.iter().try_for_each(|i| encode_instruction(i, out))
}

fn decode_instruction(r: &mut Reader<'_>) -> Result<Instruction, DecodeError> {
    let (t, mut body) = tlv8(r, "instruction")?;
    Ok(match t {
        OFPIT_GOTO_TABLE => {
            expect_len(&body, 4, "goto_table instruction")?;
            Instruction::GotoTable(body.u8("goto table id")?)
        }
        OFPIT_WRITE_METADATA => {
            expect_len(&body, 20, "write_metadata instruction")?;
            body.skip(4, "write_metadata padding")?;
            let metadata = body.u64("metadata")?;
            let mask = body.u64("metadata mask")?;
            Instruction::WriteMetadata { metadata, mask }
        }
        OFPIT_WRITE_ACTIONS | OFPIT_APPLY_ACTIONS => {
            body.skip(4, "actions instruction padding")?;
            let actions = decode_actions(&mut body)?;
            if t == OFPIT_WRITE_ACTIONS {
                Instruction::WriteActions(actions)
            } else {
                Instruction::ApplyActions(actions)
            }
        }
        OFPIT_CLEAR_ACTIONS => {
            expect_len(&body, 4, "clear_actions instruction")?;
            Instruction::ClearActions
        }
        OFPIT_METER => {
            expect_len(&body, 4, "meter instruction")?;
            Instruction::Meter(body.u32("meter id")?)
        }
        instruction_type => Instruction::Unknown {
            instruction_type,
            body: body.rest().to_vec(),
        },
    })
}

/// Reads instructions until `r` is exhausted.
pub(crate) fn decode_instructions(r: &mut Reader<'_>) -> Result<Vec<Instruction>, DecodeError> {
    let mut instrs = Vec::new();
    while !r.is_empty() {
        instrs.push(decode_instruction(r)?);
    }
    Ok(instrs)
}
