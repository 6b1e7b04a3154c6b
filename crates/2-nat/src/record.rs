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

/// Fictive subscribers use 100.64.1.1 and up: 4 blocks of 512 ports each, TCP and UDP.
const FICTIVE_PER_SUB: u32 = 4 * 512 * 2;
/// Fictive subscribers (100.64.1.1 ..= 100.64.1.29).
const FICTIVE_SUBS: u32 = 29;

/// `states` fictive records for pre-loading a group, as the poster's experiment does:
/// established TCP and UDP sessions of idle subscribers 100.64.1.1 ..= 100.64.1.29 (so the
/// group's subscriber prefix must cover 100.64.1.0/27) towards remotes in 198.19.0.0/16:443,
/// filling port blocks of 512 ports from port 1024 (the default port layout) like a
/// busy external address. Up to 59,392 mappings; above that, mappings carry several sessions.
/// Returns chunks of at most about 16k records for [`crate::Nat::import`]; a mapping never
/// straddles chunks. Idle times are drawn from `seed` (0.5 to 20 s).
pub fn fictive_records(states: u32, seed: u64) -> Vec<Vec<u8>> {
    use rand::RngExt;
    use zerocopy::IntoBytes;
    let capacity = FICTIVE_SUBS * FICTIVE_PER_SUB;
    let mappings = states.min(capacity).max(1);
    let per = states.div_ceil(mappings);
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed ^ 0xf1c7);
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut left = states;
    for j in 0..mappings {
        if left == 0 {
            break;
        }
        let sub = j / FICTIVE_PER_SUB;
        let within = j % FICTIVE_PER_SUB;
        let tcp = within < FICTIVE_PER_SUB / 2;
        let idx = within % (FICTIVE_PER_SUB / 2);
        let block = sub * 4 + idx / 512;
        let ext_port = 1024 + block * 512 + idx % 512;
        let sessions = per.min(left);
        for k in 0..sessions {
            let remote = 0x0100 + (j * per + k) % 0xfe00;
            let rec = StateRecord {
                proto: if tcp { 6 } else { 17 },
                tcp_state: if tcp { 3 } else { 0 },
                flags: 0,
                version: RECORD_VERSION,
                int_addr: [100, 64, 1, 1 + sub as u8],
                int_port: U16::new(10_000 + idx as u16),
                ext_port: U16::new(ext_port as u16),
                rem_addr: [198, 19, (remote >> 8) as u8, remote as u8],
                rem_port: U16::new(443),
                reserved: U16::ZERO,
                idle_ms: U32::new(rng.random_range(500..20_000)),
            };
            chunk.extend_from_slice(rec.as_bytes());
        }
        left -= sessions;
        if chunk.len() >= RECORD_LEN * 16_384 {
            chunks.push(core::mem::take(&mut chunk));
        }
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}
