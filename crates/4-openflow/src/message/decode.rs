//! Decoding OpenFlow 1.3 wire bytes into a [`Message`]: the header checks, HELLO's version
//! bitmap and every modelled body.

use super::*;
use crate::action::{decode_actions, decode_instructions};
use crate::buf::Reader;
use crate::error::DecodeError;
use crate::multipart::decode_port;
use crate::oxm::decode_match;
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
