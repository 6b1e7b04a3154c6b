//! Layer 1 of flowshift: packet views and the value types every other layer shares.
//!
//! * [`packet`]: bounds-checked, zero-copy parsing of IPv4 headers and their TCP/UDP/ICMP
//!   headers, and the field offsets the NAT rewrites in place. Parsing never panics: every
//!   malformed input maps to a [`packet::ParseError`].
//! * [`checksum`]: one's-complement sums (RFC 1071) and precomputed incremental updates
//!   (RFC 1624), the arithmetic of the NAT fast path.
//! * [`time`]: [`Instant`], a point in time in nanoseconds that callers pass in. Nothing in this
//!   workspace's core layers reads a clock: the simulator passes virtual time, the Linux node
//!   passes a monotonic clock reading.
//! * [`MacAddr`]: an Ethernet address with its configuration text form.

pub mod checksum;
mod mac;
pub mod packet;
pub mod time;

pub use mac::MacAddr;
pub use time::Instant;
