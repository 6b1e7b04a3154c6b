//! Seeded random streams: one `u64` seed decides every random choice of a run.
//!
//! Each component draws from its own ChaCha8 stream (same key, different stream number), so
//! adding draws in one component never shifts the numbers another component sees.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Namespaces of stream ids, so internal and user streams never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// One stream per link (loss and reordering decisions).
    Link = 1,
    /// One stream per host (smoltcp seed, ephemeral port base).
    Host = 2,
    /// Streams handed to callers through [`crate::Sim::rng`] (elements, workloads).
    User = 0x80,
}

/// The ChaCha8 stream `index` of namespace `kind` for `seed`.
///
/// Contract: a pure function of its arguments; distinct `(kind, index)` give independent
/// streams. `index` is truncated to 56 bits.
pub fn stream(seed: u64, kind: StreamKind, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((kind as u64) << 56) | (index & ((1 << 56) - 1)));
    rng
}
