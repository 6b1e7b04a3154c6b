//! The fixed-size state record a migration carries: one per session, 24 bytes, network byte
//! order (the poster's figure: 65,000 states of 24 bytes, about 1.5 MB).
//!
//! ```text
//! offset size field
//!  0     1    protocol (1 ICMP, 6 TCP, 17 UDP)
//!  1     1    TCP state (1..=7, see TcpState); 0 for UDP and ICMP
//!  2     1    flags (bit 0: the session was opened inbound); other bits 0
//!  3     1    record version (1)
//!  4     4    subscriber (internal) address
//!  8     2    internal port, or ICMP query identifier
//! 10     2    external port, or external ICMP identifier
//! 12     4    remote address
//! 16     2    remote port (0 for ICMP)
//! 18     2    reserved, 0
//! 20     4    idle time in milliseconds at export (saturating)
//! ```
//!
//! The external address is not in the record: every record of a batch belongs to one group,
//! named by the batch. A mapping travels as the records of its sessions, always in one batch.
//! Idle time rather than a timestamp keeps instances' clocks independent.

use zerocopy::network_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Length of one record in bytes.
pub const RECORD_LEN: usize = 24;
/// The record layout version this build writes and accepts.
pub const RECORD_VERSION: u8 = 1;
/// Flag: the session was created by an inbound packet.
pub const FLAG_INBOUND_OPENED: u8 = 0x01;

/// One session's state, as it travels between instances.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct StateRecord {
    /// IP protocol number.
    pub proto: u8,
    /// TCP state byte, 0 for other protocols.
    pub tcp_state: u8,
    /// Flags (`FLAG_*`).
    pub flags: u8,
    /// Layout version ([`RECORD_VERSION`]).
    pub version: u8,
    /// Subscriber address.
    pub int_addr: [u8; 4],
    /// Internal port or ICMP identifier.
    pub int_port: U16,
    /// External port or ICMP identifier.
    pub ext_port: U16,
    /// Remote address.
    pub rem_addr: [u8; 4],
    /// Remote port (0 for ICMP).
    pub rem_port: U16,
    /// Zero.
    pub reserved: U16,
    /// Milliseconds since the session last saw a packet.
    pub idle_ms: U32,
}

const _: () = assert!(core::mem::size_of::<StateRecord>() == RECORD_LEN);

/// Views a byte slice as records; `None` unless its length is a multiple of [`RECORD_LEN`].
pub fn records(bytes: &[u8]) -> Option<&[StateRecord]> {
    <[StateRecord]>::ref_from_bytes(bytes).ok()
}
