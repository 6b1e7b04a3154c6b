//! Multipart (statistics) requests and replies: flow stats, port stats and port descriptions.

use crate::action::{Instruction, decode_instructions, encode_instructions, port};
use crate::buf::{Reader, patch_len, put_u8, put_u16, put_u32, put_u64, put_zeros};
use crate::error::{DecodeError, EncodeError};
use crate::message::{GROUP_ANY, TABLE_ALL};
use crate::oxm::{Match, decode_match, encode_match};

/// Multipart types (OFPMP_*).
pub mod multipart_type {
    /// Switch description.
    pub const DESC: u16 = 0;
    /// Individual flow statistics.
    pub const FLOW: u16 = 1;
    /// Aggregate flow statistics.
    pub const AGGREGATE: u16 = 2;
    /// Table statistics.
    pub const TABLE: u16 = 3;
    /// Port statistics.
    pub const PORT_STATS: u16 = 4;
    /// Port descriptions.
    pub const PORT_DESC: u16 = 13;
    /// Experimenter extension.
    pub const EXPERIMENTER: u16 = 0xffff;
}

/// Flag of a multipart message: more parts with the same xid follow (OFPMPF_REQ_MORE /
/// OFPMPF_REPLY_MORE).
pub const MULTIPART_MORE: u16 = 1;

/// Body of an OFPMP_FLOW request: which entries to report.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowStatsRequest {
    /// Table to read, or [`TABLE_ALL`].
    pub table_id: u8,
    /// Only entries outputting to this port ([`port::ANY`] = no filter).
    pub out_port: u32,
    /// Only entries outputting to this group ([`GROUP_ANY`] = no filter).
    pub out_group: u32,
    /// Cookie value to filter on (under `cookie_mask`).
    pub cookie: u64,
    /// Cookie bits that must match; 0 = no filter.
    pub cookie_mask: u64,
    /// Only entries whose match is covered by this one (non-strict).
    pub match_: Match,
}

impl FlowStatsRequest {
    /// Every entry of every table.
    pub fn all() -> Self {
        FlowStatsRequest {
            table_id: TABLE_ALL,
            out_port: port::ANY,
            out_group: GROUP_ANY,
            cookie: 0,
            cookie_mask: 0,
            match_: Match::default(),
        }
    }
}

/// One entry of an OFPMP_FLOW reply.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowStats {
    /// Table of the entry.
    pub table_id: u8,
    /// Whole seconds the entry has been installed.
    pub duration_sec: u32,
    /// Nanoseconds beyond `duration_sec`.
    pub duration_nsec: u32,
    /// Priority.
    pub priority: u16,
    /// Idle timeout in seconds.
    pub idle_timeout: u16,
    /// Hard timeout in seconds.
    pub hard_timeout: u16,
    /// OFPFF_* flags.
    pub flags: u16,
    /// Cookie.
    pub cookie: u64,
    /// Packets matched.
    pub packet_count: u64,
    /// Bytes matched.
    pub byte_count: u64,
    /// Match.
    pub match_: Match,
    /// Instructions.
    pub instructions: Vec<Instruction>,
}

/// One entry of an OFPMP_PORT_STATS reply. Counters a switch does not keep are all-ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the fields mirror ofp_port_stats one to one
pub struct PortStats {
    pub port_no: u32,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_frame_err: u64,
    pub rx_over_err: u64,
    pub rx_crc_err: u64,
    pub collisions: u64,
    /// Whole seconds the port has been alive.
    pub duration_sec: u32,
    /// Nanoseconds beyond `duration_sec`.
    pub duration_nsec: u32,
}

/// A port description (ofp_port), from OFPMP_PORT_DESC replies and PORT_STATUS messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Port {
    /// OpenFlow port number.
    pub port_no: u32,
    /// MAC address.
    pub hw_addr: [u8; 6],
    /// Interface name (the wire field is 16 bytes, NUL-terminated). Encoding writes at most
    /// 15 bytes, cut at a character boundary. Decoding reads up to the first NUL, at most 15
    /// bytes (a 16th byte stands where the NUL must be), and replaces each byte of invalid
    /// UTF-8 with `?`, so a decoded name encodes back to the same name.
    pub name: String,
    /// OFPPC_* configuration bits.
    pub config: u32,
    /// OFPPS_* state bits.
    pub state: u32,
    /// Current features (OFPPF_*).
    pub curr: u32,
    /// Advertised features.
    pub advertised: u32,
    /// Supported features.
    pub supported: u32,
    /// Features advertised by the peer.
    pub peer: u32,
    /// Current bit rate in kbit/s.
    pub curr_speed: u32,
    /// Maximum bit rate in kbit/s.
    pub max_speed: u32,
}

/// The body of a multipart request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MultipartRequestBody {
    /// OFPMP_FLOW.
    Flow(FlowStatsRequest),
    /// OFPMP_PORT_STATS for one port or [`port::ANY`].
    PortStats {
        /// Port to report.
        port_no: u32,
    },
    /// OFPMP_PORT_DESC.
    PortDesc,
    /// Any other multipart type with its raw body.
    Other {
        /// OFPMP_* type.
        mp_type: u16,
        /// Body after the multipart header.
        body: Vec<u8>,
    },
}

/// OFPT_MULTIPART_REQUEST.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MultipartRequest {
    /// [`MULTIPART_MORE`] or 0.
    pub flags: u16,
    /// What is requested.
    pub body: MultipartRequestBody,
}

/// The body of one part of a multipart reply.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MultipartReplyBody {
    /// OFPMP_FLOW entries.
    Flow(Vec<FlowStats>),
    /// OFPMP_PORT_STATS entries.
    PortStats(Vec<PortStats>),
    /// OFPMP_PORT_DESC entries.
    PortDesc(Vec<Port>),
    /// Any other multipart type with its raw body.
    Other {
        /// OFPMP_* type.
        mp_type: u16,
        /// Body after the multipart header.
        body: Vec<u8>,
    },
}

/// OFPT_MULTIPART_REPLY: one part; parts with [`MULTIPART_MORE`] set are followed by more.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MultipartReply {
    /// [`MULTIPART_MORE`] or 0.
    pub flags: u16,
    /// The entries of this part.
    pub body: MultipartReplyBody,
}

impl MultipartReply {
    /// Whether more parts follow.
    pub fn more(&self) -> bool {
        self.flags & MULTIPART_MORE != 0
    }
}

fn mp_header(out: &mut Vec<u8>, mp_type: u16, flags: u16) {
    put_u16(out, mp_type);
    put_u16(out, flags);
    put_zeros(out, 4);
}

pub(crate) fn encode_request(m: &MultipartRequest, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    use multipart_type as t;
    match &m.body {
        MultipartRequestBody::Flow(f) => {
            mp_header(out, t::FLOW, m.flags);
            put_u8(out, f.table_id);
            put_zeros(out, 3);
            put_u32(out, f.out_port);
            put_u32(out, f.out_group);
            put_zeros(out, 4);
            put_u64(out, f.cookie);
            put_u64(out, f.cookie_mask);
            encode_match(&f.match_, out)?;
        }
        MultipartRequestBody::PortStats { port_no } => {
            mp_header(out, t::PORT_STATS, m.flags);
            put_u32(out, *port_no);
            put_zeros(out, 4);
        }
        MultipartRequestBody::PortDesc => mp_header(out, t::PORT_DESC, m.flags),
        MultipartRequestBody::Other { mp_type, body } => {
            mp_header(out, *mp_type, m.flags);
            out.extend_from_slice(body);
        }
    }
    Ok(())
}

pub(crate) fn decode_request(r: &mut Reader<'_>) -> Result<MultipartRequest, DecodeError> {
    use multipart_type as t;
    let mp_type = r.u16("multipart type")?;
    let flags = r.u16("multipart flags")?;
    r.skip(4, "multipart padding")?;
    let body = match mp_type {
        t::FLOW => {
            let table_id = r.u8("flow stats table_id")?;
            r.skip(3, "flow stats padding")?;
            let out_port = r.u32("flow stats out_port")?;
            let out_group = r.u32("flow stats out_group")?;
            r.skip(4, "flow stats padding")?;
            MultipartRequestBody::Flow(FlowStatsRequest {
                table_id,
                out_port,
                out_group,
                cookie: r.u64("flow stats cookie")?,
                cookie_mask: r.u64("flow stats cookie_mask")?,
                match_: decode_match(r)?,
            })
        }
        t::PORT_STATS => {
            let port_no = r.u32("port stats port_no")?;
            r.skip(4, "port stats padding")?;
            MultipartRequestBody::PortStats { port_no }
        }
        t::PORT_DESC => MultipartRequestBody::PortDesc,
        mp_type => MultipartRequestBody::Other {
            mp_type,
            body: r.rest().to_vec(),
        },
    };
    Ok(MultipartRequest { flags, body })
}

/// Length of the fixed part of ofp_flow_stats.
const FLOW_STATS_FIXED_LEN: usize = 48;
/// Length of ofp_port_stats.
const PORT_STATS_LEN: usize = 112;
/// Length of ofp_port.
const PORT_LEN: usize = 64;

fn encode_flow_stats(f: &FlowStats, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    put_u16(out, 0); // length, patched below
    put_u8(out, f.table_id);
    put_zeros(out, 1);
    put_u32(out, f.duration_sec);
    put_u32(out, f.duration_nsec);
    put_u16(out, f.priority);
    put_u16(out, f.idle_timeout);
    put_u16(out, f.hard_timeout);
    put_u16(out, f.flags);
    put_zeros(out, 4);
    put_u64(out, f.cookie);
    put_u64(out, f.packet_count);
    put_u64(out, f.byte_count);
    encode_match(&f.match_, out)?;
    encode_instructions(&f.instructions, out)?;
    patch_len(out, start, start);
    Ok(())
}

fn decode_flow_stats(r: &mut Reader<'_>) -> Result<FlowStats, DecodeError> {
    let len = usize::from(r.peek_u16(0, "flow stats entry")?);
    if len < FLOW_STATS_FIXED_LEN + 8 || len % 8 != 0 {
        return Err(DecodeError::BadLength {
            what: "flow stats entry",
            len,
        });
    }
    let mut e = r.sub(len, "flow stats entry")?;
    e.skip(2, "flow stats length")?;
    let table_id = e.u8("flow stats table_id")?;
    e.skip(1, "flow stats padding")?;
    let duration_sec = e.u32("flow stats duration")?;
    let duration_nsec = e.u32("flow stats duration")?;
    let priority = e.u16("flow stats priority")?;
    let idle_timeout = e.u16("flow stats idle_timeout")?;
    let hard_timeout = e.u16("flow stats hard_timeout")?;
    let flags = e.u16("flow stats flags")?;
    e.skip(4, "flow stats padding")?;
    Ok(FlowStats {
        table_id,
        duration_sec,
        duration_nsec,
        priority,
        idle_timeout,
        hard_timeout,
        flags,
        cookie: e.u64("flow stats cookie")?,
        packet_count: e.u64("flow stats packet_count")?,
        byte_count: e.u64("flow stats byte_count")?,
        match_: decode_match(&mut e)?,
        instructions: decode_instructions(&mut e)?,
    })
}

fn encode_port_stats(p: &PortStats, out: &mut Vec<u8>) {
    put_u32(out, p.port_no);
    put_zeros(out, 4);
    for v in [
        p.rx_packets,
        p.tx_packets,
        p.rx_bytes,
        p.tx_bytes,
        p.rx_dropped,
        p.tx_dropped,
        p.rx_errors,
        p.tx_errors,
        p.rx_frame_err,
        p.rx_over_err,
        p.rx_crc_err,
        p.collisions,
    ] {
        put_u64(out, v);
    }
    put_u32(out, p.duration_sec);
    put_u32(out, p.duration_nsec);
}

fn decode_port_stats(r: &mut Reader<'_>) -> Result<PortStats, DecodeError> {
    let mut e = r.sub(PORT_STATS_LEN, "port stats entry")?;
    let port_no = e.u32("port stats port_no")?;
    e.skip(4, "port stats padding")?;
    let mut c = [0u64; 12];
    for v in &mut c {
        *v = e.u64("port stats counter")?;
    }
    let [
        rx_packets,
        tx_packets,
        rx_bytes,
        tx_bytes,
        rx_dropped,
        tx_dropped,
        rx_errors,
        tx_errors,
        rx_frame_err,
        rx_over_err,
        rx_crc_err,
        collisions,
    ] = c;
    Ok(PortStats {
        port_no,
        rx_packets,
        tx_packets,
        rx_bytes,
        tx_bytes,
        rx_dropped,
        tx_dropped,
        rx_errors,
        tx_errors,
        rx_frame_err,
        rx_over_err,
        rx_crc_err,
        collisions,
        duration_sec: e.u32("port stats duration")?,
        duration_nsec: e.u32("port stats duration")?,
    })
}

/// Longest port name on the wire, in bytes (the 16-byte field holds a terminating NUL).
const PORT_NAME_MAX: usize = 15;

/// The name in a 16-byte ofp_port name field: up to the first NUL, at most
/// [`PORT_NAME_MAX`] bytes, every byte of invalid UTF-8 replaced by `?` (one byte for one:
/// the name stays within the field when encoded again, unlike U+FFFD).
fn decode_port_name(raw: &[u8; 16]) -> String {
    let end = raw
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw.len())
        .min(PORT_NAME_MAX);
    let mut name = String::with_capacity(end);
    for chunk in raw[..end].utf8_chunks() {
        name.push_str(chunk.valid());
        name.extend(core::iter::repeat_n('?', chunk.invalid().len()));
    }
    name
}

/// Appends a 64-byte ofp_port.
pub(crate) fn encode_port(p: &Port, out: &mut Vec<u8>) {
    put_u32(out, p.port_no);
    put_zeros(out, 4);
    out.extend_from_slice(&p.hw_addr);
    put_zeros(out, 2);
    let mut name = [0u8; 16];
    let n = (0..=p.name.len().min(PORT_NAME_MAX))
        .rev()
        .find(|&i| p.name.is_char_boundary(i))
        .unwrap_or(0);
    name[..n].copy_from_slice(&p.name.as_bytes()[..n]);
    out.extend_from_slice(&name);
    for v in [
        p.config,
        p.state,
        p.curr,
        p.advertised,
        p.supported,
        p.peer,
        p.curr_speed,
        p.max_speed,
    ] {
        put_u32(out, v);
    }
}

/// Reads a 64-byte ofp_port.
pub(crate) fn decode_port(r: &mut Reader<'_>) -> Result<Port, DecodeError> {
    let mut e = r.sub(PORT_LEN, "port")?;
    let port_no = e.u32("port_no")?;
    e.skip(4, "port padding")?;
    let hw_addr = e.array("port hw_addr")?;
    e.skip(2, "port padding")?;
    let raw: [u8; 16] = e.array("port name")?;
    let name = decode_port_name(&raw);
    Ok(Port {
        port_no,
        hw_addr,
        name,
        config: e.u32("port config")?,
        state: e.u32("port state")?,
        curr: e.u32("port curr")?,
        advertised: e.u32("port advertised")?,
        supported: e.u32("port supported")?,
        peer: e.u32("port peer")?,
        curr_speed: e.u32("port curr_speed")?,
        max_speed: e.u32("port max_speed")?,
    })
}

pub(crate) fn encode_reply(m: &MultipartReply, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    use multipart_type as t;
    match &m.body {
        MultipartReplyBody::Flow(entries) => {
            mp_header(out, t::FLOW, m.flags);
            entries.iter().try_for_each(|e| encode_flow_stats(e, out))?;
        }
        MultipartReplyBody::PortStats(entries) => {
            mp_header(out, t::PORT_STATS, m.flags);
            entries.iter().for_each(|e| encode_port_stats(e, out));
        }
        MultipartReplyBody::PortDesc(ports) => {
            mp_header(out, t::PORT_DESC, m.flags);
            ports.iter().for_each(|p| encode_port(p, out));
        }
        MultipartReplyBody::Other { mp_type, body } => {
            mp_header(out, *mp_type, m.flags);
            out.extend_from_slice(body);
        }
    }
    Ok(())
}

fn decode_all<T>(
    r: &mut Reader<'_>,
    mut one: impl FnMut(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let mut v = Vec::new();
    while !r.is_empty() {
        v.push(one(r)?);
    }
    Ok(v)
}

pub(crate) fn decode_reply(r: &mut Reader<'_>) -> Result<MultipartReply, DecodeError> {
    use multipart_type as t;
    let mp_type = r.u16("multipart type")?;
    let flags = r.u16("multipart flags")?;
    r.skip(4, "multipart padding")?;
    let body = match mp_type {
        t::FLOW => MultipartReplyBody::Flow(decode_all(r, decode_flow_stats)?),
        t::PORT_STATS => MultipartReplyBody::PortStats(decode_all(r, decode_port_stats)?),
        t::PORT_DESC => MultipartReplyBody::PortDesc(decode_all(r, decode_port)?),
        mp_type => MultipartReplyBody::Other {
            mp_type,
            body: r.rest().to_vec(),
        },
    };
    Ok(MultipartReply { flags, body })
}
