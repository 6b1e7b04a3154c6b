//! NAT configuration: the external pool, its pairing with subscriber prefixes, port blocks,
//! timeouts, filtering and table bounds. Validated by [`NatConfig::validate`].

use core::time::Duration;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// One external address (a *group*) and the subscriber prefix paired with it (RFC 4787 REQ-2:
/// every subscriber address is always translated to the same external address).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    /// The external (public) address of the group.
    pub external: Ipv4Addr,
    /// Subscribers translated to `external`.
    pub subscribers: Ipv4Net,
}

/// Inbound filtering (RFC 4787 section 5, RFC 5382 section 4.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Any remote endpoint may send to an existing mapping (REQ-8 "application transparency";
    /// the default: a CGN sits behind subscriber CPEs that do their own stricter filtering, and
    /// peer-to-peer applications and STUN work best through it).
    #[default]
    EndpointIndependent,
    /// Only remote addresses the mapping has sent to may send back (REQ-8 "more stringent").
    AddressDependent,
}

/// What to do with IPv4 packets that carry options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IpOptionsPolicy {
    /// Translate the fixed header and pass the options through untouched (as Linux NAT does).
    #[default]
    Pass,
    /// Drop, counted as `DropReason::IpOptions`.
    Drop,
}

/// Idle timeouts. Defaults are the RFC minimums or recommendations; [`NatConfig::validate`]
/// refuses values below the RFC minimums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timeouts {
    /// TCP established idle timeout; RFC 5382 REQ-5: at least 2 h 4 min.
    #[serde(with = "secs")]
    pub tcp_established: Duration,
    /// TCP transitory (SYN one way, FIN both ways, or RST) idle timeout; RFC 5382 REQ-5: at
    /// least 4 min.
    #[serde(with = "secs")]
    pub tcp_transitory: Duration,
    /// UDP idle timeout; RFC 4787 REQ-5: at least 2 min, 5 min recommended (the default).
    #[serde(with = "secs")]
    pub udp: Duration,
    /// ICMP query idle timeout; RFC 5508 REQ-1: 60 s.
    #[serde(with = "secs")]
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: Duration::from_secs(2 * 3600 + 4 * 60),
            tcp_transitory: Duration::from_secs(4 * 60),
            udp: Duration::from_secs(5 * 60),
            icmp: Duration::from_secs(60),
        }
    }
}

/// The whole NAT configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatConfig {
    /// External addresses and their subscribers.
    pub groups: Vec<GroupConfig>,
    /// First external port handed out (ports below are never used; default 1024).
    pub port_min: u16,
    /// Last external port handed out (default 65535).
    pub port_max: u16,
    /// Ports per block (RFC 6888 REQ-3/4, RFC 7422); default 512.
    pub block_size: u16,
    /// Blocks one subscriber may hold at once (default 4, i.e. 2048 ports per protocol).
    pub max_blocks_per_subscriber: u16,
    /// Upper bound on sessions in the table (default 2^20).
    pub max_sessions: u32,
    /// Upper bound on mappings in the table (default 2^20).
    pub max_mappings: u32,
    /// Upper bound on sessions under one mapping (default 4096).
    pub max_sessions_per_mapping: u32,
    /// Upper bound on the sessions one subscriber (internal address) holds, whoever opened
    /// them (RFC 6888 REQ-5: state per subscriber; default 4096). A session the limit refuses
    /// is dropped as [`DropReason::SubscriberSessionLimit`](crate::DropReason); imports may
    /// exceed it (see [`Nat::import`](crate::Nat::import)).
    pub max_sessions_per_subscriber: u32,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Inbound filtering behaviour.
    pub filtering: Filtering,
    /// Packets with IPv4 options.
    pub ip_options: IpOptionsPolicy,
    /// Verify the IPv4 header checksum of every packet (default true).
    pub verify_ip_checksum: bool,
    /// Refresh a session's idle timer on inbound packets too (RFC 4787 REQ-6 makes outbound
    /// refresh mandatory and inbound optional; default true).
    pub inbound_refresh: bool,
    /// Bound of the fragment-tracking table (first fragments seen, awaiting the rest).
    pub max_fragment_flows: u32,
    /// How long a fragment-tracking entry lives after the first fragment.
    #[serde(with = "secs")]
    pub fragment_timeout: Duration,
    /// Bound of the event queue (mapping logs); overflow is counted.
    pub max_events: u32,
    /// Granularity of the expiry timer wheel (default 1 s).
    #[serde(with = "millis")]
    pub timer_granularity: Duration,
    /// Seed for the flow-table hash function. Keys come from untrusted traffic, so a deployed
    /// NAT needs a secret seed: the default is a public constant (tests, simulator, benches),
    /// and the drivers (the node's configuration loader) draw a random one when the
    /// configuration leaves it out.
    pub hash_seed: u64,
    /// Seed for port choice inside a block (RFC 6056: external ports should be hard to guess).
    /// Default a public constant; drivers draw a random one when it is left out, like
    /// `hash_seed`.
    pub rng_seed: u64,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            groups: Vec::new(),
            port_min: 1024,
            port_max: 65535,
            block_size: 512,
            max_blocks_per_subscriber: 4,
            max_sessions: 1 << 20,
            max_mappings: 1 << 20,
            max_sessions_per_mapping: 4096,
            max_sessions_per_subscriber: 4096,
            timeouts: Timeouts::default(),
            filtering: Filtering::default(),
            ip_options: IpOptionsPolicy::default(),
            verify_ip_checksum: true,
            inbound_refresh: true,
            max_fragment_flows: 4096,
            fragment_timeout: Duration::from_secs(5),
            max_events: 65536,
            timer_granularity: Duration::from_secs(1),
            hash_seed: 0x5eed_f10e_5eed_f10e,
            rng_seed: 1,
        }
    }
}

/// Why a configuration is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `port_min` is 0, `port_min > port_max`, or the range holds no whole block.
    #[error("port range {min}..={max} holds no block of {block} ports")]
    PortRange {
        /// First port.
        min: u16,
        /// Last port.
        max: u16,
        /// Block size.
        block: u16,
    },
    /// Block size 0 or not a multiple of 64.
    #[error("block size {0} must be a non-zero multiple of 64")]
    BlockSize(u16),
    /// A timeout is below its RFC minimum.
    #[error("{name} timeout {got:?} is below the RFC minimum {min:?}")]
    TimeoutTooShort {
        /// Which timeout.
        name: &'static str,
        /// Configured value.
        got: Duration,
        /// RFC minimum.
        min: Duration,
    },
    /// Two groups share an external address.
    #[error("external address {0} appears in two groups")]
    DuplicateExternal(Ipv4Addr),
    /// Two groups' subscriber prefixes overlap.
    #[error("subscriber prefixes {0} and {1} overlap")]
    OverlappingSubscribers(Ipv4Net, Ipv4Net),
    /// An external address lies inside a subscriber prefix.
    #[error("external address {0} lies inside subscriber prefix {1}")]
    ExternalInsideSubscribers(Ipv4Addr, Ipv4Net),
    /// A bound is zero, or too many groups.
    #[error("{0}")]
    Bound(&'static str),
}

impl NatConfig {
    /// A configuration with `groups` and every other field at its default.
    pub fn with_groups(groups: Vec<GroupConfig>) -> Self {
        NatConfig {
            groups,
            ..NatConfig::default()
        }
    }

    /// Blocks per external address for this configuration.
    pub fn blocks_per_group(&self) -> u32 {
        if self.port_max < self.port_min || self.block_size == 0 {
            return 0;
        }
        (self.port_max as u32 - self.port_min as u32 + 1) / self.block_size as u32
    }

    /// Checks the configuration against the RFC minimums and internal consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.block_size == 0 || !self.block_size.is_multiple_of(64) {
            return Err(ConfigError::BlockSize(self.block_size));
        }
        if self.port_min == 0 || self.blocks_per_group() == 0 {
            return Err(ConfigError::PortRange {
                min: self.port_min,
                max: self.port_max,
                block: self.block_size,
            });
        }
        let t = &self.timeouts;
        let mins = [
            (
                "tcp_established",
                t.tcp_established,
                Duration::from_secs(7440),
            ),
            ("tcp_transitory", t.tcp_transitory, Duration::from_secs(240)),
            ("udp", t.udp, Duration::from_secs(120)),
            ("icmp", t.icmp, Duration::from_secs(60)),
        ];
        for (name, got, min) in mins {
            if got < min {
                return Err(ConfigError::TimeoutTooShort { name, got, min });
            }
        }
        if self.max_sessions == 0
            || self.max_mappings == 0
            || self.max_sessions_per_mapping == 0
            || self.max_sessions_per_subscriber == 0
        {
            return Err(ConfigError::Bound("table bounds must be non-zero"));
        }
        if self.max_blocks_per_subscriber == 0 {
            return Err(ConfigError::Bound(
                "max_blocks_per_subscriber must be non-zero",
            ));
        }
        if self.groups.len() > u16::MAX as usize {
            return Err(ConfigError::Bound("at most 65535 groups"));
        }
        if self.timer_granularity.is_zero() {
            return Err(ConfigError::Bound("timer_granularity must be non-zero"));
        }
        for (i, a) in self.groups.iter().enumerate() {
            for b in &self.groups[i + 1..] {
                if a.external == b.external {
                    return Err(ConfigError::DuplicateExternal(a.external));
                }
                if a.subscribers.contains(&b.subscribers.network())
                    || b.subscribers.contains(&a.subscribers.network())
                {
                    return Err(ConfigError::OverlappingSubscribers(
                        a.subscribers,
                        b.subscribers,
                    ));
                }
            }
            for b in &self.groups {
                if b.subscribers.contains(&a.external) {
                    return Err(ConfigError::ExternalInsideSubscribers(
                        a.external,
                        b.subscribers,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Splits an external `pool` into `count` groups: group `i` is the pool's `i`-th address
/// paired with the `i`-th of `count` equal slices of `subscribers` (e.g. a /26 pool and
/// 100.64.0.0/16 in 32 groups: 203.0.113.0 with 100.64.0.0/21, 203.0.113.1 with
/// 100.64.8.0/21, ...). `count` must be a power of two, at most the pool's size and at most
/// the number of `subscribers`' addresses.
pub fn group_layout(
    pool: Ipv4Net,
    subscribers: Ipv4Net,
    count: u32,
) -> Result<Vec<GroupConfig>, ConfigError> {
    if count == 0 || !count.is_power_of_two() {
        return Err(ConfigError::Bound("group count must be a power of two"));
    }
    let bits = count.trailing_zeros() as u8;
    let pool_size = 1u64 << (32 - pool.prefix_len());
    if u64::from(count) > pool_size {
        return Err(ConfigError::Bound("more groups than pool addresses"));
    }
    let len = subscribers.prefix_len() + bits;
    if len > 32 {
        return Err(ConfigError::Bound("more groups than subscriber addresses"));
    }
    let slices = subscribers
        .subnets(len)
        .map_err(|_| ConfigError::Bound("more groups than subscriber addresses"))?;
    let base = u32::from(pool.network());
    Ok(slices
        .zip(0..count)
        .map(|(s, i)| GroupConfig {
            external: Ipv4Addr::from(base + i),
            subscribers: s,
        })
        .collect())
}

mod secs {
    use core::time::Duration;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

mod millis {
    use core::time::Duration;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_26_pool_splits_into_64_valid_groups() {
        let pool: Ipv4Net = "203.0.113.0/26".parse().unwrap();
        let subs: Ipv4Net = "100.64.0.0/16".parse().unwrap();
        let g = group_layout(pool, subs, 64).unwrap();
        assert_eq!(g.len(), 64);
        assert_eq!(g[0].external, Ipv4Addr::new(203, 0, 113, 0));
        assert_eq!(
            g[0].subscribers,
            "100.64.0.0/22".parse::<Ipv4Net>().unwrap()
        );
        assert_eq!(g[63].external, Ipv4Addr::new(203, 0, 113, 63));
        assert_eq!(
            g[63].subscribers,
            "100.64.252.0/22".parse::<Ipv4Net>().unwrap()
        );
        NatConfig::with_groups(g).validate().unwrap();
        let g = group_layout(pool, subs, 32).unwrap();
        assert_eq!(
            g[1].subscribers,
            "100.64.8.0/21".parse::<Ipv4Net>().unwrap()
        );
        NatConfig::with_groups(g).validate().unwrap();
    }

    #[test]
    fn group_layout_refuses_impossible_splits() {
        let pool: Ipv4Net = "203.0.113.0/26".parse().unwrap();
        let subs: Ipv4Net = "100.64.0.0/16".parse().unwrap();
        assert!(group_layout(pool, subs, 0).is_err());
        assert!(group_layout(pool, subs, 48).is_err());
        assert!(group_layout(pool, subs, 128).is_err());
        assert!(group_layout(pool, "100.64.0.0/30".parse().unwrap(), 8).is_err());
    }
}
