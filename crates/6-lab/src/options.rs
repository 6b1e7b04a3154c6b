//! Options of `experiment fig1c` that both back ends read (the CLI picks the back end from
//! `--testbed`), and the value types they use. A leaf module: no experiment code here.

use clap::{Args, ValueEnum};
use flowshift_migration::Algorithm;
use std::path::PathBuf;

/// Which algorithms to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AlgorithmChoice {
    /// Idle phase, then iterated freeze-and-copy (the poster's).
    FreezeCopy,
    /// Stop, copy everything, redirect (baseline).
    StopCopy,
    /// Copy rounds while serving, then a final stop-and-copy (baseline).
    PreCopy,
    /// All three.
    All,
}

impl AlgorithmChoice {
    pub fn list(self) -> Vec<Algorithm> {
        match self {
            AlgorithmChoice::FreezeCopy => vec![Algorithm::FreezeCopy],
            AlgorithmChoice::StopCopy => vec![Algorithm::StopCopy],
            AlgorithmChoice::PreCopy => vec![Algorithm::PreCopy],
            AlgorithmChoice::All => vec![
                Algorithm::FreezeCopy,
                Algorithm::StopCopy,
                Algorithm::PreCopy,
            ],
        }
    }
}

/// Arguments of `experiment fig1c`.
#[derive(Args, Debug)]
pub struct Fig1cArgs {
    /// Algorithm(s) to run, each on the same scenario and seed.
    #[arg(long, value_enum, default_value = "all")]
    pub algorithm: AlgorithmChoice,
    /// Fictive long-lived states pre-loaded on the source (24 bytes each).
    #[arg(long, default_value_t = 65_000)]
    pub states: u32,
    /// Long-lived TCP flows saturating the bottleneck.
    #[arg(long, default_value_t = 100)]
    pub flows: usize,
    /// Seed (decides every random choice; same seed, same report).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output directory for fig1c.json, fig1c.svg and fig1c.png.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Simulated seconds per run.
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// When the migration starts (simulated seconds).
    #[arg(long, default_value_t = 1.0)]
    pub migrate_at: f64,
    /// Random loss on the state-transfer link (fault injection, 0..1).
    #[arg(long, default_value_t = 0.0)]
    pub transfer_loss: f64,
    /// Run on the one-machine testbed (root: namespaces, Open vSwitch, real nodes, iperf3)
    /// instead of the simulator.
    #[arg(long)]
    pub testbed: bool,
    /// Testbed: rate of the shaped server link (the bottleneck): `1gbit`, `500mbit`, ..., or
    /// `off`. The simulator's bottleneck is always 1 Gbit/s.
    #[arg(long, default_value = "1gbit")]
    pub link_rate: LinkRate,
    /// Testbed: UDP probes per second from a subscriber of the migrated group to an echo on
    /// the server side (loss, reordering, added delay as a subscriber sees them).
    #[arg(long, default_value_t = 1000)]
    pub probe_rate: u32,
    /// Testbed: switch and veth offloads. `off` (the default): plain userspace datapath, whose
    /// single thread tops out near the link rate on 2 cores (the queue then builds in the
    /// switch, not at the shaped link); `tso`: GSO frames pass the switch and nodes, so the
    /// shaped link is the bottleneck.
    #[arg(long, value_enum, default_value = "off")]
    pub offload: Offload,
    /// Testbed: the migration's `chain_quiet` in ms (how long the source must chain nothing
    /// after the cutover before it sends the end-of-chain marker; the destination holds the
    /// group's switch packets until then). Shorter holds less, but a straggler the switch
    /// sends later is chained after the marker (counted) and may arrive out of order.
    #[arg(long, default_value_t = 10.0)]
    pub chain_quiet_ms: f64,
}

/// Switch and veth offloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Offload {
    /// Plain userspace datapath: TSO off in the switch, `tx off` on every veth.
    Off,
    /// `userspace-tso-enable=true`, veth offloads on (GSO frames pass the switch and nodes).
    Tso,
}

/// Rate of the shaped server link (`--link-rate`): `1gbit`, `500mbit`, ..., or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkRate(pub Option<u64>);

impl std::str::FromStr for LinkRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_link_rate(s).map(LinkRate)
    }
}

impl std::fmt::Display for LinkRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => write!(f, "off"),
            Some(b) if b % 1_000_000_000 == 0 => write!(f, "{}gbit", b / 1_000_000_000),
            Some(b) if b % 1_000_000 == 0 => write!(f, "{}mbit", b / 1_000_000),
            Some(b) => write!(f, "{b}bit"),
        }
    }
}

/// Parses a link rate: `off` / `none` / `0` (no shaping), or a number of bits per second with
/// an optional SI suffix (`k`, `m`, `g`, optionally followed by `bit`): `1g`, `1gbit`,
/// `500mbit`, `2.5G`. At least 1 Mbit/s, at most 100 Gbit/s.
pub fn parse_link_rate(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim().to_ascii_lowercase();
    if matches!(t.as_str(), "off" | "none" | "0") {
        return Ok(None);
    }
    let t = t.strip_suffix("bit").unwrap_or(&t);
    let t = t.strip_suffix("bps").unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('g') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate (e.g. 1gbit, 500mbit, off)"))?;
    let bps = v * mult;
    if !(1e6..=1e11).contains(&bps) {
        return Err(format!(
            "link rate {s:?} out of range (1 Mbit/s to 100 Gbit/s, or off)"
        ));
    }
    Ok(Some(bps.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_rates_parse() {
        assert_eq!(parse_link_rate("1gbit"), Ok(Some(1_000_000_000)));
        assert_eq!(parse_link_rate("1G"), Ok(Some(1_000_000_000)));
        assert_eq!(parse_link_rate("500mbit"), Ok(Some(500_000_000)));
        assert_eq!(parse_link_rate("2.5g"), Ok(Some(2_500_000_000)));
        assert_eq!(parse_link_rate("20000000"), Ok(Some(20_000_000)));
        assert_eq!(parse_link_rate("off"), Ok(None));
        assert!(parse_link_rate("fast").is_err());
        assert!(parse_link_rate("10kbit").is_err());
    }
}
