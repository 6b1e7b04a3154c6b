//! Encoding a [`Message`] into its OpenFlow 1.3 wire form.

use super::*;
use crate::action::{encode_actions, encode_instructions};
use crate::buf::{patch_len, put_u8, put_u16, put_u32, put_u64, put_zeros};
use crate::error::EncodeError;
use crate::multipart::encode_port;
use crate::oxm::encode_match;

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
