//! Splitting a byte stream into whole OpenFlow messages, with a size bound.

use crate::message::{OFP_HEADER_LEN, OFP_MAX_MESSAGE_LEN};

/// Why a stream cannot be split into messages. The stream cannot be resynchronised afterwards.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A header announced a length smaller than the header itself.
    #[error("message length {len} is below the 8-byte header")]
    TooShort {
        /// The announced length.
        len: usize,
    },
    /// A header announced a message longer than the framer accepts.
    #[error("message length {len} exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The framer's limit.
        max: usize,
    },
}

/// A stream decoder: accepts arbitrary chunks and yields whole messages.
///
/// It buffers at most one partial message, so its memory is bounded by `max_len`. After a
/// [`FrameError`] it is poisoned: it discards all further input and yields nothing.
#[derive(Clone, Debug)]
pub struct Framer {
    buf: Vec<u8>,
    max_len: usize,
    poisoned: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new(OFP_MAX_MESSAGE_LEN)
    }
}

impl Framer {
    /// A framer refusing messages longer than `max_len` bytes (clamped to 8..=65535).
    pub fn new(max_len: usize) -> Self {
        Framer {
            buf: Vec::new(),
            max_len: max_len.clamp(OFP_HEADER_LEN, OFP_MAX_MESSAGE_LEN),
            poisoned: false,
        }
    }

    /// The size limit in bytes.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Bytes of an incomplete message held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether a framing error has stopped the framer.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Consumes bytes from the front of `input` until a message is complete and returns it
    /// (header included). Returns `None` once `input` is exhausted without completing one; the
    /// partial message is kept for the next call. Call repeatedly until `None`.
    pub fn next_frame(&mut self, input: &mut &[u8]) -> Option<Result<Vec<u8>, FrameError>> {
        if self.poisoned {
            *input = &[];
            return None;
        }
        if !self.fill(input, OFP_HEADER_LEN) {
            return None;
        }
        let len = match self.buf.get(2..4) {
            Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
            _ => return None,
        };
        let error = if len < OFP_HEADER_LEN {
            Some(FrameError::TooShort { len })
        } else if len > self.max_len {
            Some(FrameError::TooLarge {
                len,
                max: self.max_len,
            })
        } else {
            None
        };
        if let Some(e) = error {
            self.poisoned = true;
            self.buf = Vec::new();
            *input = &[];
            return Some(Err(e));
        }
        if !self.fill(input, len) {
            return None;
        }
        Some(Ok(core::mem::take(&mut self.buf)))
    }

    /// Moves bytes from `input` until the buffer holds `want`; returns whether it does.
    fn fill(&mut self, input: &mut &[u8], want: usize) -> bool {
        let need = want.saturating_sub(self.buf.len());
        let (take, rest) = input.split_at(need.min(input.len()));
        self.buf.extend_from_slice(take);
        *input = rest;
        self.buf.len() >= want
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(len: u16, fill: u8) -> Vec<u8> {
        let mut m = vec![4, 2];
        m.extend_from_slice(&len.to_be_bytes());
        m.resize(usize::from(len), fill);
        m
    }

    #[test]
    fn splits_and_joins_chunks() {
        let mut stream = msg(8, 0);
        stream.extend(msg(20, 7));
        stream.extend(msg(9, 1));
        for chunk in [1, 3, 8, 13, 100] {
            let mut f = Framer::default();
            let mut out = Vec::new();
            for c in stream.chunks(chunk) {
                let mut input = c;
                while let Some(m) = f.next_frame(&mut input) {
                    out.push(m.unwrap());
                }
                assert!(input.is_empty());
            }
            assert_eq!(out, vec![msg(8, 0), msg(20, 7), msg(9, 1)], "chunk {chunk}");
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn refuses_short_and_oversized_lengths_then_stays_poisoned() {
        let mut f = Framer::new(64);
        let mut input: &[u8] = &msg(65, 0);
        assert_eq!(
            f.next_frame(&mut input),
            Some(Err(FrameError::TooLarge { len: 65, max: 64 }))
        );
        let mut more: &[u8] = &msg(8, 0);
        assert_eq!(f.next_frame(&mut more), None);
        assert!(f.is_poisoned());

        let mut f = Framer::default();
        let mut input: &[u8] = &[4, 0, 0, 7, 0, 0, 0, 0];
        assert_eq!(
            f.next_frame(&mut input),
            Some(Err(FrameError::TooShort { len: 7 }))
        );
    }
}
