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
//! `CommitAck`, `ChainEnd`, `Done` and `Abort` are postcard encodings of the structs below; `PrepareAck`,
//! `Cutover`, `Ack` and `Ping` have an empty body. A frame is self-delimiting, so it can travel
//! as one datagram or inside a byte stream ([`frame_len`] splits a stream).

use crate::MigrationId;
use flowshift_nat::record::RECORD_LEN;
use serde::{Deserialize, Serialize};

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

/// Which algorithm a migration runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Halt, copy everything, resume on the destination (baseline).
    StopCopy,
    /// Copy in rounds while serving, then a final stop-and-copy (baseline).
    PreCopy,
    /// The poster's: idle phase, then iterated freeze-and-copy.
    FreezeCopy,
}

impl Algorithm {
    /// The algorithm's kebab-case name, as in JSON and on the command line (`stop-copy`,
    /// `pre-copy`, `freeze-copy`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::StopCopy => "stop-copy",
            Algorithm::PreCopy => "pre-copy",
            Algorithm::FreezeCopy => "freeze-copy",
        }
    }
}

/// Why a migration was abandoned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// The controller called `abort`.
    Requested,
    /// Retransmissions exhausted: the peer or the channel is gone.
    ChannelFailed,
    /// The destination heard nothing from the source for `peer_timeout`.
    PeerTimeout,
    /// The destination could not add the group or reserve the source's blocks.
    PrepareRefused,
    /// The two instances' port layouts differ.
    ConfigMismatch,
    /// The destination refused a batch (stop-copy / pre-copy).
    ImportRefused,
    /// The destination refused to commit (counts differ or import failed).
    CommitRefused,
    /// A message arrived that the protocol does not allow in this state.
    Protocol,
    /// Source: the destination did not answer `Prepare` within `prepare_timeout`.
    PrepareTimeout,
    /// Destination: the source came back with a new epoch (it restarted), so the migration's
    /// source process is gone.
    SourceRestarted,
    /// The controller gave the group to an instance (its owner died): `adopt_group` or
    /// `release_group` ended the migration here.
    Rehomed,
}

/// A mapping's identity, as `Delete` names it: protocol, subscriber address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MappingKey {
    /// IP protocol.
    pub proto: u8,
    /// Subscriber address.
    pub addr: [u8; 4],
    /// Subscriber port or ICMP identifier.
    pub port: u16,
}

/// `Prepare` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    /// External address of the group.
    pub external: [u8; 4],
    /// Subscriber prefix address.
    pub prefix_addr: [u8; 4],
    /// Subscriber prefix length.
    pub prefix_len: u8,
    /// Algorithm (decides how the destination treats batches).
    pub algorithm: Algorithm,
    /// Blocks the source's subscribers hold: (block index, subscriber address).
    pub held_blocks: Vec<(u32, [u8; 4])>,
    /// Source's first port.
    pub port_min: u16,
    /// Source's last port.
    pub port_max: u16,
    /// Source's block size.
    pub block_size: u16,
    /// Mappings of the group at the source when the migration started (a sizing hint: the
    /// destination pre-sizes its tables; it is never trusted as a count).
    pub mappings_hint: u32,
    /// Sessions (records) of the group at the source when the migration started (hint).
    pub records_hint: u32,
}

/// `BatchAck` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAck {
    /// The batch number.
    pub batch: u32,
    /// Records installed (or staged).
    pub installed: u32,
    /// False: the batch was refused and nothing of it was installed.
    pub ok: bool,
}

/// `Commit` body: what the destination must hold once it installs (a consistency check).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Mappings.
    pub mappings: u32,
    /// Records (sessions).
    pub records: u32,
}

/// `CommitAck` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitAck {
    /// False: nothing was installed by the commit.
    pub ok: bool,
    /// Mappings now installed for this migration.
    pub mappings: u32,
    /// Records now installed for this migration.
    pub records: u32,
}

/// `Done` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Blocks the source held at prepare time, now released (the destination may allocate
    /// from them).
    pub released_blocks: Vec<u32>,
    /// Packets the source has chained to the destination over its whole life (all groups):
    /// the destination holds switch traffic of the group until it has received this many.
    pub chained: u64,
}

/// `ChainEnd` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainEnd {
    /// Packets the source has chained to the destination over its whole life (all groups) when
    /// it sent the marker: every chained packet of the group that left the source before the
    /// marker is among them.
    pub chained: u64,
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// See [`Kind::Prepare`].
    Prepare(Prepare),
    /// See [`Kind::PrepareAck`].
    PrepareAck,
    /// See [`Kind::Batch`]; `records` is a whole number of 24-byte records.
    Batch {
        /// Batch number.
        batch: u32,
        /// Raw records.
        records: Vec<u8>,
    },
    /// See [`Kind::BatchAck`].
    BatchAck(BatchAck),
    /// See [`Kind::Delete`].
    Delete(Vec<MappingKey>),
    /// See [`Kind::Commit`].
    Commit(Commit),
    /// See [`Kind::CommitAck`].
    CommitAck(CommitAck),
    /// See [`Kind::Cutover`].
    Cutover,
    /// See [`Kind::Done`].
    Done(Done),
    /// See [`Kind::Abort`].
    Abort(AbortReason),
    /// See [`Kind::Ack`].
    Ack,
    /// See [`Kind::Ping`].
    Ping,
    /// See [`Kind::ChainEnd`].
    ChainEnd(ChainEnd),
}

impl Message {
    /// The message's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Prepare(_) => Kind::Prepare,
            Message::PrepareAck => Kind::PrepareAck,
            Message::Batch { .. } => Kind::Batch,
            Message::BatchAck(_) => Kind::BatchAck,
            Message::Delete(_) => Kind::Delete,
            Message::Commit(_) => Kind::Commit,
            Message::CommitAck(_) => Kind::CommitAck,
            Message::Cutover => Kind::Cutover,
            Message::Done(_) => Kind::Done,
            Message::Abort(_) => Kind::Abort,
            Message::Ack => Kind::Ack,
            Message::Ping => Kind::Ping,
            Message::ChainEnd(_) => Kind::ChainEnd,
        }
    }

    /// Encodes the body. Fails only if it would exceed [`MAX_BODY`].
    pub fn encode_body(&self) -> Result<Vec<u8>, EncodeError> {
        fn pc<T: Serialize>(v: &T) -> Result<Vec<u8>, EncodeError> {
            postcard::to_allocvec(v).map_err(|_| EncodeError::Serialize)
        }
        let body = match self {
            Message::Prepare(p) => pc(p)?,
            Message::Batch { batch, records } => {
                let mut b = Vec::with_capacity(4 + records.len());
                b.extend_from_slice(&batch.to_be_bytes());
                b.extend_from_slice(records);
                b
            }
            Message::BatchAck(a) => pc(a)?,
            Message::Delete(keys) => pc(keys)?,
            Message::Commit(c) => pc(c)?,
            Message::CommitAck(c) => pc(c)?,
            Message::Done(d) => pc(d)?,
            Message::ChainEnd(c) => pc(c)?,
            Message::Abort(r) => pc(r)?,
            Message::PrepareAck | Message::Cutover | Message::Ack | Message::Ping => Vec::new(),
        };
        if body.len() > MAX_BODY {
            return Err(EncodeError::TooLarge(body.len()));
        }
        Ok(body)
    }

    fn decode_body(kind: Kind, body: &[u8]) -> Result<Message, DecodeError> {
        fn pc<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
            match postcard::take_from_bytes::<T>(body) {
                Ok((v, [])) => Ok(v),
                Ok(_) => Err(DecodeError::TrailingBytes),
                Err(_) => Err(DecodeError::Body),
            }
        }
        let empty = |m: Message| {
            if body.is_empty() {
                Ok(m)
            } else {
                Err(DecodeError::TrailingBytes)
            }
        };
        Ok(match kind {
            Kind::Prepare => Message::Prepare(pc(body)?),
            Kind::PrepareAck => empty(Message::PrepareAck)?,
            Kind::Batch => {
                let (head, records) = body.split_first_chunk::<4>().ok_or(DecodeError::Body)?;
                if records.len() % RECORD_LEN != 0 {
                    return Err(DecodeError::Body);
                }
                Message::Batch {
                    batch: u32::from_be_bytes(*head),
                    records: records.to_vec(),
                }
            }
            Kind::BatchAck => Message::BatchAck(pc(body)?),
            Kind::Delete => {
                let keys: Vec<MappingKey> = pc(body)?;
                if keys.len() > MAX_DELETE_KEYS {
                    return Err(DecodeError::Body);
                }
                Message::Delete(keys)
            }
            Kind::Commit => Message::Commit(pc(body)?),
            Kind::CommitAck => Message::CommitAck(pc(body)?),
            Kind::Cutover => empty(Message::Cutover)?,
            Kind::Done => Message::Done(pc(body)?),
            Kind::Abort => Message::Abort(pc(body)?),
            Kind::Ack => empty(Message::Ack)?,
            Kind::Ping => empty(Message::Ping)?,
            Kind::ChainEnd => Message::ChainEnd(pc(body)?),
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
mod tests {
    use super::*;

    fn roundtrip(msg: Message, seq: u64) {
        let f = Frame {
            migration: MigrationId(0x0001_0000_0000_0007),
            seq,
            ack: 42,
            msg,
        };
        let bytes = encode(&f).unwrap();
        assert_eq!(frame_len(&bytes[..HEADER_LEN]), Ok(Some(bytes.len())));
        assert_eq!(decode(&bytes), Ok(f));
    }

    #[test]
    fn every_kind_roundtrips() {
        roundtrip(
            Message::Prepare(Prepare {
                external: [198, 18, 0, 1],
                prefix_addr: [100, 64, 0, 0],
                prefix_len: 24,
                algorithm: Algorithm::FreezeCopy,
                held_blocks: vec![(3, [100, 64, 0, 9])],
                port_min: 1024,
                port_max: 65535,
                block_size: 512,
                mappings_hint: 10,
                records_hint: 20,
            }),
            1,
        );
        roundtrip(Message::ChainEnd(ChainEnd { chained: 123 }), 9);
        roundtrip(Message::PrepareAck, 2);
        roundtrip(
            Message::Batch {
                batch: 7,
                records: vec![1; 48],
            },
            3,
        );
        roundtrip(
            Message::BatchAck(BatchAck {
                batch: 7,
                installed: 2,
                ok: true,
            }),
            4,
        );
        roundtrip(
            Message::Delete(vec![MappingKey {
                proto: 17,
                addr: [100, 64, 0, 1],
                port: 5000,
            }]),
            5,
        );
        roundtrip(
            Message::Commit(Commit {
                mappings: 1,
                records: 2,
            }),
            6,
        );
        roundtrip(
            Message::CommitAck(CommitAck {
                ok: false,
                mappings: 0,
                records: 0,
            }),
            7,
        );
        roundtrip(Message::Cutover, 8);
        roundtrip(
            Message::Done(Done {
                released_blocks: vec![1, 2],
                chained: 99,
            }),
            9,
        );
        roundtrip(Message::Abort(AbortReason::ChannelFailed), 10);
        roundtrip(Message::Ack, 0);
        roundtrip(Message::Ping, 11);
    }

    #[test]
    fn header_errors_are_reported() {
        let good = encode(&Frame {
            migration: MigrationId(1),
            seq: 1,
            ack: 0,
            msg: Message::Cutover,
        })
        .unwrap();
        assert_eq!(decode(&good[..10]), Err(DecodeError::Truncated));
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(decode(&b), Err(DecodeError::BadMagic));
        let mut b = good.clone();
        b[2] = 1;
        assert_eq!(decode(&b), Err(DecodeError::Version(1)));
        let mut b = good.clone();
        b[3] = 200;
        assert_eq!(decode(&b), Err(DecodeError::UnknownKind(200)));
        let mut b = good.clone();
        b[4] = 0xff;
        assert!(matches!(decode(&b), Err(DecodeError::TooLarge(_))));
        let mut b = good.clone();
        b.push(0);
        assert_eq!(decode(&b), Err(DecodeError::Length));
        let mut b = good.clone();
        b[16..24].copy_from_slice(&0u64.to_be_bytes());
        assert_eq!(decode(&b), Err(DecodeError::Sequence));
        // A batch whose records are not a whole number of 24-byte records.
        let b = write_frame(Kind::Batch, MigrationId(1), 1, 0, &[0, 0, 0, 1, 9]);
        assert_eq!(decode(&b), Err(DecodeError::Body));
        // An empty-body kind with a body.
        let b = write_frame(Kind::Cutover, MigrationId(1), 1, 0, &[0]);
        assert_eq!(decode(&b), Err(DecodeError::TrailingBytes));
    }
}
