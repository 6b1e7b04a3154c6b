//! [`Message`]: a decoded message, its kind, and its body's encoding and decoding.

use super::body::{AbortReason, BatchAck, ChainEnd, Commit, CommitAck, Done, MappingKey, Prepare};
use super::{DecodeError, EncodeError, Kind, MAX_BODY, MAX_DELETE_KEYS};
use flowshift_nat::record::RECORD_LEN;
use serde::{Deserialize, Serialize};

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

    pub(super) fn decode_body(kind: Kind, body: &[u8]) -> Result<Message, DecodeError> {
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
