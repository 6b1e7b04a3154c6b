//! Internet checksum arithmetic: full sums (RFC 1071) and incremental updates (RFC 1624).
//!
//! The NAT fast path never re-sums a packet. When a translation replaces fields (addresses,
//! ports, identifiers), the difference it makes to any checksum covering those fields is a
//! constant, computed once when the session is created ([`Delta`]), and applied per packet
//! with one add and one fold (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).

/// The one's-complement difference made by replacing some 16-bit words by others.
///
/// Build it with [`Delta::replace`]/[`Delta::replace_addr`], then [`apply`](Delta::apply) it to
/// any checksum that covers exactly those words. [`inverse`](Delta::inverse) undoes it (the
/// translation in the other direction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Delta(u16);

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

impl Delta {
    /// No change.
    pub const NONE: Delta = Delta(0);

    /// The raw folded one's-complement value `~m + m'` (for storing in compact tables).
    pub const fn to_raw(self) -> u16 {
        self.0
    }
    /// Rebuilds a delta stored with [`to_raw`](Delta::to_raw).
    pub const fn from_raw(raw: u16) -> Self {
        Delta(raw)
    }

    /// Adds the replacement of the 16-bit word `old` by `new`.
    #[inline]
    pub fn replace(self, old: u16, new: u16) -> Delta {
        Delta(fold(self.0 as u32 + (!old) as u32 + new as u32))
    }

    /// Adds the replacement of a 32-bit field (e.g. an IPv4 address, network order bytes).
    #[inline]
    pub fn replace_addr(self, old: [u8; 4], new: [u8; 4]) -> Delta {
        self.replace(
            u16::from_be_bytes([old[0], old[1]]),
            u16::from_be_bytes([new[0], new[1]]),
        )
        .replace(
            u16::from_be_bytes([old[2], old[3]]),
            u16::from_be_bytes([new[2], new[3]]),
        )
    }

    /// Combines two deltas (both replacements applied).
    #[inline]
    pub fn then(self, other: Delta) -> Delta {
        Delta(fold(self.0 as u32 + other.0 as u32))
    }

    /// The delta that undoes this one.
    #[inline]
    pub fn inverse(self) -> Delta {
        Delta(!self.0)
    }

    /// Applies the delta to a checksum field value (host order), RFC 1624 eqn. 3.
    #[inline(always)]
    pub fn apply(self, checksum: u16) -> u16 {
        !fold((!checksum) as u32 + self.0 as u32)
    }

    /// Like [`apply`](Delta::apply) for UDP, where 0 means "no checksum" (left alone) and a
    /// computed 0 is sent as 0xffff (RFC 768).
    #[inline(always)]
    pub fn apply_udp(self, checksum: u16) -> u16 {
        if checksum == 0 {
            return 0;
        }
        match self.apply(checksum) {
            0 => 0xffff,
            c => c,
        }
    }
}

/// The Internet checksum of `bytes` (RFC 1071), as a host-order value ready to store.
#[inline]
pub fn compute(bytes: &[u8]) -> u16 {
    if bytes.len() <= 64 {
        // Headers: summing 32-bit words into 64 bits beats the general routine at this size
        // (one's-complement sums may be taken over any word width, RFC 1071 section 2).
        let mut sum: u64 = 0;
        let mut words = bytes.chunks_exact(4);
        for w in &mut words {
            sum += u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as u64;
        }
        let rest = words.remainder();
        let mut tail = [0u8; 4];
        tail[..rest.len()].copy_from_slice(rest);
        sum += u32::from_be_bytes(tail) as u64;
        let sum = (sum & 0xffff_ffff) + (sum >> 32);
        let sum = (sum & 0xffff_ffff) + (sum >> 32);
        return !fold(sum as u32);
    }
    u16::from_be_bytes(internet_checksum::checksum(bytes))
}

/// True if `bytes`, checksum field included, sum to the all-ones value.
#[inline]
pub fn verify(bytes: &[u8]) -> bool {
    compute(bytes) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The short-input loop and the general routine agree.
        #[test]
        fn short_and_long_sums_agree(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(compute(&bytes), u16::from_be_bytes(internet_checksum::checksum(&bytes)));
        }

        /// Incremental update equals a full recomputation, for any buffer and any replaced word.
        #[test]
        fn incremental_update_matches_recompute(mut words in proptest::collection::vec(any::<u16>(), 2..64),
                                                idx in any::<prop::sample::Index>(), new in any::<u16>()) {
            let csum_at = 0;
            let i = 1 + idx.index(words.len() - 1);
            words[csum_at] = 0;
            let bytes = |w: &[u16]| w.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
            let c = compute(&bytes(&words));
            words[csum_at] = c;
            let old = words[i];
            words[i] = new;
            let updated = Delta::NONE.replace(old, new).apply(c);
            words[csum_at] = updated;
            prop_assert!(verify(&bytes(&words)));
            // And the inverse restores the original checksum's validity.
            words[i] = old;
            words[csum_at] = Delta::NONE.replace(old, new).inverse().apply(updated);
            prop_assert!(verify(&bytes(&words)));
        }
    }
}
