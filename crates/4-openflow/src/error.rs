//! Codec errors.

/// Why a byte sequence is not a valid OpenFlow 1.3 message (or part of one).
///
/// Decoding never panics: every malformed input maps to one of these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Input ended before a field was complete.
    #[error("truncated {what}: needed {needed} bytes, {available} available")]
    Truncated {
        /// The field or structure being read.
        what: &'static str,
        /// Bytes the field needed.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A length field is inconsistent with the data around it (too small, too large, or not a
    /// multiple of the alignment the protocol requires).
    #[error("bad length {len} for {what}")]
    BadLength {
        /// The structure whose length is wrong.
        what: &'static str,
        /// The offending length in bytes.
        len: usize,
    },
    /// The header carries a protocol version other than OpenFlow 1.3 (0x04) on a message type
    /// whose layout depends on the version (only HELLO and ERROR decode in any version).
    #[error("unsupported OpenFlow version {0:#04x} (only 1.3 = 0x04)")]
    UnsupportedVersion(u8),
    /// A field holds a value the protocol does not define here.
    #[error("bad value {value:#x} for {what}")]
    BadValue {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// An OXM field that may appear once in a match appears twice.
    #[error("duplicate OXM field {field} in match")]
    DuplicateField {
        /// The OXM field number (OFPXMT_OFB_*).
        field: u8,
    },
    /// Bytes left over after a structure whose length is fully determined.
    #[error("{len} trailing bytes after {what}")]
    TrailingBytes {
        /// The structure.
        what: &'static str,
        /// Bytes left over.
        len: usize,
    },
}

/// Why a message cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded message would exceed the 65535-byte limit of the OpenFlow length field.
    #[error("message of {len} bytes exceeds the OpenFlow limit of 65535")]
    TooLarge {
        /// The encoded length in bytes.
        len: usize,
    },
    /// An OXM TLV payload exceeds the 255 bytes its one-byte length field can express.
    #[error("OXM payload of {len} bytes exceeds 255")]
    OxmTooLong {
        /// The payload length in bytes.
        len: usize,
    },
}
