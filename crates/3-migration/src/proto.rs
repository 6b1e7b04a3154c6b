//! The state-transfer protocol between two instances: framing, message bodies, and a decoder
//! that never panics.
//!
//! # Frame (version 1)
//!
//! ```text
//! offset size field
//!  0     2    magic b"FS"
//!  2     1    version (1)
//!  3     1    kind (see Kind)
//!  4     4    body length in bytes, network order (at most MAX_BODY)
//!  8     8    migration id, network order
//! 16     8    sequence number (0 on a pure Ack, >= 1 on every other kind)
//! 24     8    cumulative acknowledgement: every message of the peer up to this sequence
//!             number has been received (0: none yet)
//! 32     ..   body
//! ```
//!
//! Bodies: `Batch` is raw (`batch` as u32 in network order, then `n * 24` bytes of
//! [`flowshift_nat::record::StateRecord`]); `Prepare`, `BatchAck`, `Delete`, `Commit`,
//! `CommitAck`, `ChainEnd`, `Done` and `Abort` are postcard encodings of the body structs
//! re-exported below; `PrepareAck`, `Cutover`, `Ack` and `Ping` have an empty body. A frame is
//! self-delimiting, so it can travel as one datagram or inside a byte stream ([`frame_len`]
//! splits a stream).

use crate::MigrationId;
use serde::Serialize;

mod body;
mod message;
pub use body::{
    AbortReason, Algorithm, BatchAck, ChainEnd, Commit, CommitAck, Done, MappingKey, Prepare,
};
pub use message::Message;

/// Frame magic.
pub const MAGIC: [u8; 2] = *b"FS";
/// Protocol version this build writes and accepts (2: `Prepare` carries size hints, `ChainEnd`).
pub const VERSION: u8 = 2;
/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 32;
/// Largest body accepted or written (16 MiB).
pub const MAX_BODY: usize = 16 << 20;
/// Most mapping keys in one `Delete` message.
pub const MAX_DELETE_KEYS: usize = 8192;

/// Message kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[repr(u8)]
pub enum Kind {
    /// Source to destination: group configuration and the source's port blocks.
    Prepare = 1,
    /// Destination accepted `Prepare`.
    PrepareAck = 2,
    /// Source to destination: state records of whole mappings.
    Batch = 3,
    /// Destination installed (or staged, or refused) a batch.
    BatchAck = 4,
    /// Pre-copy: mappings copied earlier that have died since.
    Delete = 5,
    /// Stop-copy / pre-copy: install the state sent so far and start serving.
    Commit = 6,
    /// Destination's answer to `Commit`.
    CommitAck = 7,
    /// The switch now sends the group to the destination.
    Cutover = 8,
    /// The source has drained and forgotten the group (also the end-of-chain marker).
    Done = 9,
    /// The migration is abandoned; the sender says why.
    Abort = 10,
    /// Pure cumulative acknowledgement (no sequence number).
    Ack = 11,
    /// Keepalive from the source (so the destination can tell a silent source from a dead one).
    Ping = 12,
    /// Source to destination after cutover: the end-of-chain marker. Once the destination has
    /// received the announced number of chained packets it stops holding the group's switch
    /// packets (nothing older can still come through the source).
    ChainEnd = 13,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Prepare,
            2 => Kind::PrepareAck,
            3 => Kind::Batch,
            4 => Kind::BatchAck,
            5 => Kind::Delete,
            6 => Kind::Commit,
            7 => Kind::CommitAck,
            8 => Kind::Cutover,
            9 => Kind::Done,
            10 => Kind::Abort,
            11 => Kind::Ack,
            12 => Kind::Ping,
            13 => Kind::ChainEnd,
            _ => return None,
        })
    }
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Which migration.
    pub migration: MigrationId,
    /// Sequence number (0 for `Ack`).
    pub seq: u64,
    /// Cumulative acknowledgement of the peer's messages.
    pub ack: u64,
    /// The message.
    pub msg: Message,
}

/// Why a message cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The body would exceed [`MAX_BODY`] bytes.
    #[error("body of {0} bytes exceeds the maximum")]
    TooLarge(usize),
    /// Serialization failed.
    #[error("body serialization failed")]
    Serialize,
}

/// Why bytes are not a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a header.
    #[error("shorter than a frame header")]
    Truncated,
    /// Wrong magic.
    #[error("bad magic")]
    BadMagic,
    /// Unknown version.
    #[error("unsupported version {0}")]
    Version(u8),
    /// Unknown kind.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// Body length above [`MAX_BODY`].
    #[error("body length {0} exceeds the maximum")]
    TooLarge(u32),
    /// Byte count differs from the header's length.
    #[error("frame length does not match its header")]
    Length,
    /// `Ack` with a sequence number, or another kind without one.
    #[error("sequence number invalid for this kind")]
    Sequence,
    /// The body does not decode.
    #[error("malformed body")]
    Body,
    /// The body has bytes past its encoding.
    #[error("trailing bytes after the body")]
    TrailingBytes,
}

/// Writes a frame with an already-encoded body.
pub fn write_frame(kind: Kind, migration: MigrationId, seq: u64, ack: u64, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER_LEN + body.len());
    f.extend_from_slice(&MAGIC);
    f.push(VERSION);
    f.push(kind as u8);
    // Bodies are produced by `encode_body`, which bounds them by MAX_BODY (< u32::MAX).
    f.extend_from_slice(&(body.len().min(u32::MAX as usize) as u32).to_be_bytes());
    f.extend_from_slice(&migration.0.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&ack.to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// Encodes a whole frame.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, EncodeError> {
    let body = frame.msg.encode_body()?;
    Ok(write_frame(
        frame.msg.kind(),
        frame.migration,
        frame.seq,
        frame.ack,
        &body,
    ))
}

fn header(bytes: &[u8]) -> Result<(Kind, usize), DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    if bytes[0..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if bytes[2] != VERSION {
        return Err(DecodeError::Version(bytes[2]));
    }
    let kind = Kind::from_u8(bytes[3]).ok_or(DecodeError::UnknownKind(bytes[3]))?;
    let len = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len as usize > MAX_BODY {
        return Err(DecodeError::TooLarge(len));
    }
    Ok((kind, len as usize))
}

/// For a byte stream: the length of the frame starting at `prefix` once its header is
/// complete (`Ok(None)` while fewer than [`HEADER_LEN`] bytes are available), or an error if
/// the header is invalid (the stream is then unusable).
pub fn frame_len(prefix: &[u8]) -> Result<Option<usize>, DecodeError> {
    match header(prefix) {
        Ok((_, len)) => Ok(Some(HEADER_LEN + len)),
        Err(DecodeError::Truncated) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Decodes exactly one frame from `bytes`. Never panics.
pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
    let (kind, len) = header(bytes)?;
    if bytes.len() != HEADER_LEN + len {
        return Err(DecodeError::Length);
    }
    let word = |off: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[off..off + 8]);
        u64::from_be_bytes(w)
    };
    let (migration, seq, ack) = (MigrationId(word(8)), word(16), word(24));
    if (kind == Kind::Ack) != (seq == 0) {
        return Err(DecodeError::Sequence);
    }
    let msg = Message::decode_body(kind, &bytes[HEADER_LEN..])?;
    Ok(Frame {
        migration,
        seq,
        ack,
        msg,
    })
}

#[cfg(test)]
mod tests;
