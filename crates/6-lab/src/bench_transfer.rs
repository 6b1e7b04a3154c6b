//! `flowshift bench transfer`: state-transfer throughput of the migration protocol over a real
//! loopback TCP connection, against a raw TCP copy of the same bytes.
//!
//! Set-up (not timed): a source [`Nat`] holding `states` mappings of one session each (half
//! TCP established, half UDP), filled group by group (external addresses 203.0.113.1.., one
//! subscriber /24 of 100.64.0.0/10 per group, 4 port blocks per subscriber, every port of every
//! block used for TCP and for UDP), installed by importing generated records; a destination
//! [`Nat`] with the same groups that reserved the blocks the source's subscribers hold (what
//! the protocol's `Prepare` does) and pre-sized its tables for the states to come
//! ([`Nat::reserve`], as a migration destination does on `Prepare`; its time is reported as
//! `reserve_secs`, outside the transfer); a connected TCP pair on 127.0.0.1 (ephemeral port,
//! `TCP_NODELAY`, `SO_SNDBUF`/`SO_RCVBUF` of 4 MiB requested).
//!
//! Timed, end to end, with the receiver in a second thread: the sender walks each group's
//! mappings, exports them ([`Nat::export_mapping`]) into batches of at most `batch_records`
//! records (a mapping never straddles two batches), frames each batch as a protocol `Batch`
//! message ([`proto::encode`], one migration id per group, sequence numbers from 1) and writes
//! it to the socket; the receiver splits the stream with [`proto::frame_len`], decodes each
//! frame ([`proto::decode`]), checks migration id, sequence and batch numbers, and imports the
//! records into the destination group ([`Nat::import`]). The clock stops when the receiver has
//! imported the last batch. The split: `export_secs` and `encode_send_secs` (`encode_secs` +
//! `send_secs`) are the sender's, sending including time blocked on a full socket, i.e. waiting
//! for the receiver; `decode_import_secs` (`decode_secs` + `import_secs`) the receiver's, time
//! blocked in `read` excluded. `import_cpu_secs` is the receiver thread's CPU time inside
//! [`Nat::import`] (`CLOCK_THREAD_CPUTIME_ID`; 0 where unavailable): on a shared machine the
//! wall-clock figures include time the thread waited for a CPU, this one does not.
//!
//! Verified afterwards (the command fails otherwise): the destination holds exactly `states`
//! mappings and sessions, per group as many as the source, `check_invariants` passes, every
//! group's records exported from both sides are identical, and a sample of flows translate to
//! identical packets on both sides, in both directions.
//!
//! Peers in the same run: a raw copy of the same number of bytes over another loopback TCP
//! pair with the same options and the same write and read sizes (`raw_bytes_per_sec`;
//! `ratio = bytes_per_sec / raw_bytes_per_sec`), and the same transfer with a receiver that
//! decodes and checks every frame but imports nothing (`no_import_bytes_per_sec`: what the
//! export, the framing and the transport cost without the destination's table inserts). And
//! the index peer (`peer`): the same records' three index keys inserted into `hashbrown` maps
//! and nothing else (`index_peer_cpu_secs`, `index_peer_bytes_per_sec`; `import_vs_index_peer`
//! above 1 means the NAT's whole import is cheaper than those inserts alone).
//!
//! Files: this one runs the benchmark and reports; `setup` builds the two NATs and the
//! records and verifies the result; `io` holds the timed sender and receiver and the raw copy;
//! `peer` the index peer.

use anyhow::{Context, Result, bail};
use clap::Args;
use flowshift_migration::proto::{self, Frame, HEADER_LEN, MAX_BODY, Message};
use flowshift_migration::{InstanceId, MigrationId};
use flowshift_nat::record::RECORD_LEN;
use flowshift_nat::{GroupConfig, GroupId, Nat, NatConfig, Verdict};
use flowshift_wire::Instant;
use hashbrown::HashMap;
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant as WallClock};

mod io;
mod peer;
mod setup;
#[cfg(test)]
mod tests;

use io::*;
use setup::*;

/// Socket send and receive buffer size requested (the kernel caps it at `rmem_max`/`wmem_max`).
const SOCKET_BUFFER: usize = 4 << 20;
/// Largest single `read` either receiver issues.
const READ_CHUNK: usize = 1 << 20;
/// Sender-side write buffer (frames at least this large bypass it).
const WRITE_BUFFER: usize = 256 << 10;
/// Any socket operation blocked this long fails the run (so it always stops by itself).
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Flows translated on both sides after the run.
const SAMPLE_FLOWS: u32 = 1000;
/// Virtual time of the whole run (the NAT is sans-IO; idle times are relative to it).
const NOW: Instant = Instant::from_secs(3600);
/// First external port (the NAT's default).
const PORT_MIN: u16 = 1024;
/// Ports per block (the NAT's default).
const BLOCK_SIZE: u32 = 512;
/// Blocks each generated subscriber holds (the NAT's default per-subscriber limit).
const BLOCKS_PER_SUB: u32 = 4;
/// Groups available: external addresses 203.0.113.1 ..= 203.0.113.254.
const MAX_GROUPS: u32 = 254;
/// Most states accepted (both NATs take about 0.85 GB per million).
const MAX_STATES: u32 = 8_000_000;

/// Arguments of `bench transfer`.
#[derive(Args, Debug, Clone)]
pub struct TransferArgs {
    /// Mappings to transfer (one session, hence one 24-byte record, each).
    #[arg(long, default_value_t = 65_000)]
    pub states: u32,
    /// Most records per `Batch` message.
    #[arg(long, default_value_t = 4096)]
    pub batch_records: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Figures of one run.
#[derive(Clone, Debug, serde::Serialize)]
struct Report {
    states: u32,
    groups: u32,
    batch_records: u32,
    frames: u64,
    /// Wire bytes, frame headers included.
    bytes: u64,
    seconds: f64,
    records_per_sec: f64,
    bytes_per_sec: f64,
    export_secs: f64,
    encode_send_secs: f64,
    encode_secs: f64,
    send_secs: f64,
    decode_import_secs: f64,
    decode_secs: f64,
    import_secs: f64,
    /// CPU time of the receiver thread inside `Nat::import` (0 if unavailable).
    import_cpu_secs: f64,
    /// From the start until the sender had written its first frame.
    first_write_secs: f64,
    /// From the start until the receiver had its first complete frame (the pipeline's fill).
    first_frame_secs: f64,
    /// Receiver time blocked in `read` (waiting for data, copies included).
    read_secs: f64,
    /// The destination's `Nat::reserve` before the transfer (not in `seconds`).
    reserve_secs: f64,
    /// `bytes` over `seconds + reserve_secs`: the transfer as if the reserve were on its
    /// critical path (a destination that reserves only when `Prepare` arrives).
    bytes_per_sec_incl_reserve: f64,
    no_import_seconds: f64,
    no_import_bytes_per_sec: f64,
    raw_seconds: f64,
    raw_bytes_per_sec: f64,
    ratio: f64,
    /// CPU time of the index peer: three `hashbrown` inserts per record, nothing else.
    index_peer_cpu_secs: f64,
    /// `bytes` over `index_peer_cpu_secs`: a ceiling for a receiver that only did those inserts.
    index_peer_bytes_per_sec: f64,
    /// `index_peer_cpu_secs / import_cpu_secs` (wall-clock import time where the thread clock
    /// is unavailable): above 1, the NAT's whole import costs less than the peer's inserts.
    import_vs_index_peer: f64,
    sampled_flows: u32,
    profile: &'static str,
}

/// Runs the benchmark and prints the figures.
pub fn transfer(args: &TransferArgs) -> Result<()> {
    let r = run(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "flowshift bench transfer ({} build, loopback TCP)",
            r.profile
        );
        println!(
            "  states           {:>12}  ({} groups, {} records per batch, {} frames)",
            r.states, r.groups, r.batch_records, r.frames
        );
        println!("  wire bytes       {:>12}", r.bytes);
        println!("  seconds          {:>12.6}", r.seconds);
        println!("  records/s        {:>12.0}", r.records_per_sec);
        println!("  transfer         {:>12.3} GB/s", r.bytes_per_sec / 1e9);
        println!(
            "  raw TCP copy     {:>12.3} GB/s  ({:.6} s)",
            r.raw_bytes_per_sec / 1e9,
            r.raw_seconds
        );
        println!("  ratio            {:>12.3}", r.ratio);
        println!(
            "  without import   {:>12.3} GB/s  ({:.6} s: export, framing, TCP, decode)",
            r.no_import_bytes_per_sec / 1e9,
            r.no_import_seconds
        );
        println!(
            "  index peer       {:>12.3} GB/s  ({:.6} s on CPU: 3 hashbrown inserts per record, \
             nothing else; import is {:.2}x its speed)",
            r.index_peer_bytes_per_sec / 1e9,
            r.index_peer_cpu_secs,
            r.import_vs_index_peer
        );
        println!("  export           {:>12.6} s  (sender)", r.export_secs);
        println!(
            "  encode+send      {:>12.6} s  (sender: encode {:.6} s, send {:.6} s)",
            r.encode_send_secs, r.encode_secs, r.send_secs
        );
        println!(
            "  decode+import    {:>12.6} s  (receiver: decode {:.6} s, import {:.6} s)",
            r.decode_import_secs, r.decode_secs, r.import_secs
        );
        println!(
            "  receiver reads   {:>12.6} s  (blocked in read; first frame written after {:.6} s, \
             received after {:.6} s)",
            r.read_secs, r.first_write_secs, r.first_frame_secs
        );
        println!(
            "  import on CPU    {:>12.6} s  (receiver thread's CPU time: {:.0} ns per record)",
            r.import_cpu_secs,
            r.import_cpu_secs * 1e9 / r.states as f64
        );
        println!(
            "  reserve          {:>12.6} s  (receiver, at prepare time: not in the transfer; \
             {:.3} GB/s counting it)",
            r.reserve_secs,
            r.bytes_per_sec_incl_reserve / 1e9
        );
        println!("  verified         {:>12} sampled flows", r.sampled_flows);
    }
    Ok(())
}

/// One timed transfer from `src` to `dst` (or to a receiver that only decodes) over a fresh
/// loopback pair: what each side measured, and seconds from the first export until the
/// receiver has handled the last frame.
fn timed_pass(
    src: &Nat,
    dst: Option<&mut Nat>,
    groups: &[(GroupId, MigrationId, GroupId)],
    batch_records: u32,
    max_bytes: u64,
) -> Result<(SendStats, RecvStats, f64, [f64; 2])> {
    let (tx, rx) = tcp_pair()?;
    // The clock starts once the receiver thread runs (starting a thread is not part of a
    // transfer: a destination's receiver is up before the first batch).
    let ready = std::sync::Barrier::new(2);
    let (sent, recv, start) = std::thread::scope(|s| {
        let receiver = std::thread::Builder::new()
            .name("xfer-recv".into())
            .spawn_scoped(s, || {
                let rx = rx; // closed when the receiver returns, whatever happens
                ready.wait();
                receive(&rx, dst, groups, max_bytes)
            })
            .context("spawning the receiver")?;
        ready.wait();
        let start = WallClock::now();
        let sent = send(src, groups, batch_records as usize, &tx);
        drop(tx); // on error, the receiver sees the end of the stream
        let recv = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"));
        anyhow::Ok((sent, recv, start))
    })?;
    // A receiver error explains a sender error (broken pipe), so report it first.
    let recv = recv??;
    let sent = sent?;
    if (recv.frames, recv.bytes, recv.records) != (sent.frames, sent.bytes, sent.records) {
        bail!("sent {sent:?}, received {recv:?}");
    }
    let since =
        |t: Option<WallClock>| t.map_or(0.0, |t| t.saturating_duration_since(start).as_secs_f64());
    let first = [since(sent.first_write), since(recv.first_frame)];
    Ok((sent, recv, (recv.finished - start).as_secs_f64(), first))
}

/// Set-up, timed transfer, peers, verification.
fn run(args: &TransferArgs) -> Result<Report> {
    let max_batch = (MAX_BODY - 4) / RECORD_LEN;
    if args.batch_records == 0 || args.batch_records as usize > max_batch {
        bail!("--batch-records must be in 1..={max_batch}");
    }
    let mut setup = setup(args.states)?;
    // Upper bound of the stream: one frame per record.
    let max_bytes = args.states as u64 * (HEADER_LEN + 4 + RECORD_LEN) as u64;
    let (sent, recv, seconds, [first_write_secs, first_frame_secs]) = {
        let Setup {
            src, dst, groups, ..
        } = &mut setup;
        timed_pass(src, Some(dst), groups, args.batch_records, max_bytes)?
    };
    if sent.records != args.states as u64 {
        bail!("sent {sent:?}, expected {} records", args.states);
    }
    // The same export, framing, TCP and decoding, without the import (the NAT is untouched).
    let (_, _, no_import_seconds, _) = timed_pass(
        &setup.src,
        None,
        &setup.groups,
        args.batch_records,
        max_bytes,
    )?;

    let chunk = sent.bytes.div_ceil(sent.frames.max(1)) as usize;
    let raw_seconds = raw_copy(sent.bytes, chunk)?;
    let sampled = verify(&mut setup, args.states)?;
    let index_peer_cpu_secs = peer::index_peer(&setup.src, &setup.groups)?;
    let import_secs = if recv.import_cpu.is_zero() {
        recv.import
    } else {
        recv.import_cpu
    };

    let bytes_per_sec = sent.bytes as f64 / seconds;
    let raw_bytes_per_sec = sent.bytes as f64 / raw_seconds;
    Ok(Report {
        states: args.states,
        groups: setup.groups.len() as u32,
        batch_records: args.batch_records,
        frames: sent.frames,
        bytes: sent.bytes,
        seconds,
        records_per_sec: args.states as f64 / seconds,
        bytes_per_sec,
        export_secs: sent.export.as_secs_f64(),
        encode_send_secs: (sent.encode + sent.send).as_secs_f64(),
        encode_secs: sent.encode.as_secs_f64(),
        send_secs: sent.send.as_secs_f64(),
        decode_import_secs: (recv.decode + recv.import).as_secs_f64(),
        decode_secs: recv.decode.as_secs_f64(),
        import_secs: recv.import.as_secs_f64(),
        import_cpu_secs: recv.import_cpu.as_secs_f64(),
        first_write_secs,
        first_frame_secs,
        read_secs: recv.read.as_secs_f64(),
        reserve_secs: setup.reserve_secs,
        bytes_per_sec_incl_reserve: sent.bytes as f64 / (seconds + setup.reserve_secs),
        no_import_seconds,
        no_import_bytes_per_sec: sent.bytes as f64 / no_import_seconds,
        raw_seconds,
        raw_bytes_per_sec,
        ratio: bytes_per_sec / raw_bytes_per_sec,
        index_peer_cpu_secs,
        index_peer_bytes_per_sec: sent.bytes as f64 / index_peer_cpu_secs,
        import_vs_index_peer: index_peer_cpu_secs / import_secs.as_secs_f64(),
        sampled_flows: sampled,
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    })
}
