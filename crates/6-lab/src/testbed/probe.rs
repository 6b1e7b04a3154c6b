//! The probe stream: the subscriber's view of a migration, measured from outside the NAT.
//!
//! `flowshift probe echo` (hidden subcommand, run with `ip netns exec` in the server
//! namespace) echoes every probe datagram to its sender, writing into it the kernel's receive
//! time and its own arrival counter. `flowshift probe send` (in the subscriber namespace, from
//! a subscriber address of the migrated group) sends `--count` sequence-numbered datagrams at
//! `--rate` per second, collects the echoes with the kernel's receive time, waits `--grace`
//! after the last send and writes one JSON file ([`ProbeRecord`]). Both exit by themselves:
//! the sender after `count / rate + grace` seconds, the echo after `--duration` seconds or
//! `--count` echoes. Times are `CLOCK_REALTIME` nanoseconds (one clock: same machine), so each
//! round trip splits into its forward (subscriber -> echo) and return legs.
//!
//! [`analyse`] turns a record into losses, reordering (end to end, and per direction: at the
//! echo by sequence number, at the sender by the echo's arrival counter) and the RTT timeline.
//!
//! Network safety: the sender refuses destinations outside loopback and the testbed's ranges
//! (100.64.0.0/10, 198.18.0.0/15, 203.0.113.0/24).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

mod analysis;
mod process;
mod stream;

pub use analysis::{Analysis, Answer, added_delay, analyse, quantile};
pub use process::{ProbeProcess, read_record, start_echo, start_sender, start_sender_to};
use stream::{echo, send};

/// First bytes of every probe datagram.
pub const MAGIC: [u8; 4] = *b"FSPB";
/// Probe payload size (bytes): magic, seq, send time, echo receive time, echo counter, pad.
pub const PAYLOAD: usize = 64;

/// `flowshift probe ...` (hidden; the testbed runs it inside namespaces).
#[derive(Subcommand, Debug)]
pub enum ProbeCommand {
    /// Send a sequence-numbered UDP probe stream and collect the echoes.
    Send(SendArgs),
    /// Echo probe datagrams back to their sender.
    Echo(EchoArgs),
}

/// Arguments of `probe send`.
#[derive(Args, Debug)]
pub struct SendArgs {
    /// Source address (a subscriber address).
    #[arg(long)]
    pub bind: Ipv4Addr,
    /// The echo (address:port).
    #[arg(long)]
    pub to: SocketAddrV4,
    /// Probes per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Probes to send.
    #[arg(long)]
    pub count: u64,
    /// Seconds to wait for echoes after the last send.
    #[arg(long, default_value_t = 1.0)]
    pub grace: f64,
    /// Where to write the record (JSON).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `probe echo`.
#[derive(Args, Debug)]
pub struct EchoArgs {
    /// Address and port to listen on.
    #[arg(long)]
    pub bind: SocketAddrV4,
    /// Exit after this many seconds.
    #[arg(long)]
    pub duration: f64,
    /// Exit after this many echoes.
    #[arg(long, default_value_t = u64::MAX)]
    pub count: u64,
    /// Where to write a summary (JSON).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs a probe subcommand.
pub fn run(cmd: &ProbeCommand) -> Result<()> {
    match cmd {
        ProbeCommand::Send(a) => {
            let rec = send(a)?;
            let text = serde_json::to_string(&rec)? + "\n";
            std::fs::write(&a.out, text).with_context(|| format!("writing {}", a.out.display()))
        }
        ProbeCommand::Echo(a) => {
            let s = echo(a)?;
            if let Some(out) = &a.out {
                std::fs::write(out, serde_json::to_string(&s)? + "\n")
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            Ok(())
        }
    }
}

/// What `probe send` writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// Probes per second asked for.
    pub rate_per_s: u32,
    /// Probes sent (attempted).
    pub sent: u64,
    /// `send` calls that failed (those probes count as lost).
    pub send_errors: u64,
    /// `recv` calls that failed (other than time-outs).
    pub recv_errors: u64,
    /// Send time of probe `seq` at index `seq` (Unix ns).
    pub send_ns: Vec<u64>,
    /// Echoes in arrival order: `[seq, echo receive time (Unix ns), receive time back at the
    /// sender (Unix ns), the echo's arrival counter]`.
    pub replies: Vec<[u64; 4]>,
    /// Datagrams that were not probe echoes of this stream.
    pub foreign: u64,
}

/// What `probe echo` writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EchoSummary {
    /// Datagrams echoed.
    pub echoed: u64,
    /// Datagrams ignored (not probes).
    pub ignored: u64,
}

/// Whether the probe may be sent to `a` (loopback or the testbed's ranges).
pub fn allowed_destination(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_loopback()
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
        || (o[0], o[1], o[2]) == (203, 0, 113)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_limited_to_the_testbed() {
        for ok in [
            "127.0.0.1",
            "100.64.0.1",
            "100.127.255.1",
            "198.18.0.1",
            "198.19.0.1",
        ] {
            assert!(allowed_destination(ok.parse().unwrap()), "{ok}");
        }
        assert!(allowed_destination(Ipv4Addr::new(203, 0, 113, 11)));
        for bad in [
            "8.8.8.8",
            "100.128.0.1",
            "198.20.0.1",
            "203.0.114.1",
            "10.0.0.1",
        ] {
            assert!(!allowed_destination(bad.parse().unwrap()), "{bad}");
        }
    }
}
