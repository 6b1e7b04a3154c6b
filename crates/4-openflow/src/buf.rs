//! Bounds-checked big-endian reader and writer helpers shared by the codec modules.

use crate::error::DecodeError;

/// A cursor over a byte slice; every read is bounds-checked and reports what it was reading.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not yet consumed.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Consumes `n` bytes, or fails with [`DecodeError::Truncated`] naming `what`.
    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated {
                what,
                needed: n,
                available: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Consumes `n` bytes and returns a reader over them.
    pub(crate) fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader<'a>, DecodeError> {
        self.bytes(n, what).map(Reader::new)
    }

    /// Consumes everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    pub(crate) fn skip(&mut self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        self.bytes(n, what).map(|_| ())
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(what).map(|b| b[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.array(what).map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.array(what).map(u64::from_be_bytes)
    }

    /// Peeks at a big-endian u16 at `offset` without consuming.
    pub(crate) fn peek_u16(&self, offset: usize, what: &'static str) -> Result<u16, DecodeError> {
        let mut r = *self;
        r.skip(offset, what)?;
        r.u16(what)
    }
}

pub(crate) fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_zeros(out: &mut Vec<u8>, n: usize) {
    out.resize(out.len() + n, 0);
}

/// Number of zero bytes that pad `len` up to a multiple of 8.
pub(crate) const fn pad8(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// Pads `out` with zeros so that the bytes written since `start` are a multiple of 8.
pub(crate) fn pad_to_8(out: &mut Vec<u8>, start: usize) {
    put_zeros(out, pad8(out.len() - start));
}

/// Writes the big-endian `len` (the bytes written since `start`) into the u16 at `at`.
///
/// Saturates at `u16::MAX`; a saturated length can only occur inside a message that is itself
/// larger than 65535 bytes, which [`crate::encode_into`] rejects afterwards.
pub(crate) fn patch_len(out: &mut [u8], at: usize, start: usize) {
    let len = u16::try_from(out.len().saturating_sub(start)).unwrap_or(u16::MAX);
    if let Some(slot) = out.get_mut(at..at + 2) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}
