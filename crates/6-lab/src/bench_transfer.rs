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
//! export, the framing and the transport cost without the destination's table inserts).

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

/// One generated flow: its identity and the record that carries it.
#[derive(Clone, Copy, Debug)]
struct Flow {
    proto: u8,
    int: (Ipv4Addr, u16),
    ext: (Ipv4Addr, u16),
    remote: (Ipv4Addr, u16),
    idle_ms: u32,
}

/// The sizes of the layout.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// Blocks per external address.
    blocks: u32,
}

impl Layout {
    fn new() -> Layout {
        let blocks = NatConfig::default().blocks_per_group();
        Layout { blocks }
    }

    /// States per group: every port of every block, for TCP and for UDP.
    fn per_group(self) -> u32 {
        2 * self.blocks * BLOCK_SIZE
    }

    fn external(g: u32) -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, 1 + g as u8)
    }

    fn group_config(g: u32) -> GroupConfig {
        GroupConfig {
            external: Self::external(g),
            subscribers: format!("100.{}.{}.0/24", 64 + g / 256, g % 256)
                .parse()
                .expect("valid prefix"),
        }
    }

    /// The `i`th flow: group by group, alternately TCP and UDP, ports in order.
    fn flow(self, i: u32) -> Flow {
        let g = i / self.per_group();
        let j = i % self.per_group();
        let proto = if j.is_multiple_of(2) { 6 } else { 17 };
        let slot = j / 2;
        let block = slot / BLOCK_SIZE;
        let sub = Ipv4Addr::new(
            100,
            64 + (g / 256) as u8,
            (g % 256) as u8,
            1 + (block / BLOCKS_PER_SUB) as u8,
        );
        let int_port = 20_000 + ((block % BLOCKS_PER_SUB) * BLOCK_SIZE + slot % BLOCK_SIZE) as u16;
        Flow {
            proto,
            int: (sub, int_port),
            ext: (Self::external(g), PORT_MIN + slot as u16),
            remote: (
                Ipv4Addr::new(198, 18 + (i >> 16 & 1) as u8, (i >> 8) as u8, i as u8),
                if proto == 6 { 443 } else { 53 },
            ),
            idle_ms: i.wrapping_mul(7919) % 120_000,
        }
    }
}

/// The 24-byte record of a flow, written by hand from the documented layout
/// (`flowshift_nat::record`), so the test also checks the NAT's reading of it.
fn record(f: &Flow) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[0] = f.proto;
    r[1] = if f.proto == 6 { 3 } else { 0 }; // TCP established
    r[2] = 0;
    r[3] = 1; // record version
    r[4..8].copy_from_slice(&f.int.0.octets());
    r[8..10].copy_from_slice(&f.int.1.to_be_bytes());
    r[10..12].copy_from_slice(&f.ext.1.to_be_bytes());
    r[12..16].copy_from_slice(&f.remote.0.octets());
    r[16..18].copy_from_slice(&f.remote.1.to_be_bytes());
    r[20..24].copy_from_slice(&f.idle_ms.to_be_bytes());
    r
}

/// Source, destination, and the migration id of each source group.
struct Setup {
    layout: Layout,
    src: Nat,
    dst: Nat,
    /// Seconds the destination's [`Nat::reserve`] took (set-up, not in the transfer).
    reserve_secs: f64,
    /// (source group, migration id, destination group), in sending order.
    groups: Vec<(GroupId, MigrationId, GroupId)>,
}

fn setup(states: u32) -> Result<Setup> {
    let layout = Layout::new();
    let n_groups = states.div_ceil(layout.per_group());
    let max = MAX_STATES.min(MAX_GROUPS * layout.per_group());
    if states == 0 || states > max {
        bail!("--states must be in 1..={max}");
    }
    let groups: Vec<GroupConfig> = (0..n_groups).map(Layout::group_config).collect();
    let base = NatConfig {
        max_sessions: states.max(1024),
        max_mappings: states.max(1024),
        ..NatConfig::with_groups(groups)
    };
    if base.port_min != PORT_MIN || base.block_size as u32 != BLOCK_SIZE {
        bail!("the layout assumes the NAT's default port range and block size");
    }
    let mut src = Nat::new(NatConfig {
        hash_seed: 0x51c0_ffee_0000_0001,
        rng_seed: 1,
        ..base.clone()
    })
    .context("source NAT")?;
    let mut dst = Nat::new(NatConfig {
        hash_seed: 0xd57c_0ffe_e000_0002,
        rng_seed: 2,
        ..base
    })
    .context("destination NAT")?;
    let mut bytes = Vec::with_capacity(layout.per_group() as usize * RECORD_LEN);
    let mut mapped = Vec::with_capacity(n_groups as usize);
    for g in 0..n_groups {
        let ext = Layout::external(g);
        let sg = src.group_id(ext).context("source group")?;
        let dg = dst.group_id(ext).context("destination group")?;
        bytes.clear();
        let first = g * layout.per_group();
        let last = (first + layout.per_group()).min(states);
        for i in first..last {
            bytes.extend_from_slice(&record(&layout.flow(i)));
        }
        src.import(sg, NOW, &bytes)
            .with_context(|| format!("filling source group {g}"))?;
        // What `Prepare` does: the destination reserves the blocks the source holds.
        let held: Vec<u32> = src.held_blocks(sg)?.iter().map(|h| h.block).collect();
        dst.reserve_blocks(dg, &held)
            .with_context(|| format!("reserving group {g}'s blocks"))?;
        mapped.push((sg, MigrationId::new(InstanceId(1), g as u64 + 1), dg));
    }
    // What the destination does when `Prepare` announces the mappings and records to come:
    // pre-size its tables so the imports do not grow them.
    let t = WallClock::now();
    dst.reserve(src.mapping_count() as usize, src.session_count() as usize);
    let reserve_secs = t.elapsed().as_secs_f64();
    if src.mapping_count() != states || src.session_count() != states {
        bail!(
            "source holds {} mappings, {} sessions; expected {states}",
            src.mapping_count(),
            src.session_count()
        );
    }
    Ok(Setup {
        layout,
        src,
        dst,
        reserve_secs,
        groups: mapped,
    })
}

/// What the sender measured.
#[derive(Clone, Copy, Debug, Default)]
struct SendStats {
    frames: u64,
    bytes: u64,
    records: u64,
    export: Duration,
    encode: Duration,
    /// Writing to the socket, blocked time included.
    send: Duration,
}

/// Exports every group of `src` in batches, frames and writes them; shuts the write side.
fn send(
    src: &Nat,
    groups: &[(GroupId, MigrationId, GroupId)],
    batch_records: usize,
    stream: &TcpStream,
) -> Result<SendStats> {
    let mut st = SendStats::default();
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, stream);
    let mut records: Vec<u8> = Vec::with_capacity(batch_records * RECORD_LEN);
    for &(g, migration, _) in groups {
        let t = WallClock::now();
        let ids = src.group_mappings(g)?;
        st.export += t.elapsed();
        let mut seq = 1u64;
        let mut batch = 0u32;
        let mut ids = ids.iter().peekable();
        while ids.peek().is_some() {
            // Export whole mappings until the batch is full.
            let t = WallClock::now();
            let mut n = 0usize;
            while n < batch_records {
                let Some(&id) = ids.next() else { break };
                n += src.export_mapping(id, NOW, &mut records)? as usize;
            }
            if records.len() + 4 > MAX_BODY {
                bail!("a batch of {n} records exceeds the protocol's body limit");
            }
            let t2 = WallClock::now();
            st.export += t2 - t;
            let frame = Frame {
                migration,
                seq,
                ack: 0,
                msg: Message::Batch {
                    batch,
                    records: std::mem::take(&mut records),
                },
            };
            let wire = proto::encode(&frame)?;
            let t3 = WallClock::now();
            st.encode += t3 - t2;
            out.write_all(&wire).context("sending a frame")?;
            st.send += t3.elapsed();
            if let Message::Batch { records: r, .. } = frame.msg {
                records = r; // reuse the allocation
                records.clear();
            }
            st.frames += 1;
            st.bytes += wire.len() as u64;
            st.records += n as u64;
            seq += 1;
            batch = batch.wrapping_add(1);
        }
    }
    let t = WallClock::now();
    out.flush().context("sending")?;
    drop(out);
    stream.shutdown(Shutdown::Write).context("shutdown")?;
    st.send += t.elapsed();
    Ok(st)
}

/// What the receiver measured.
#[derive(Clone, Copy, Debug)]
struct RecvStats {
    frames: u64,
    bytes: u64,
    records: u64,
    decode: Duration,
    import: Duration,
    /// Thread CPU time inside `Nat::import`.
    import_cpu: Duration,
    /// When the last batch was imported.
    finished: WallClock,
}

/// Receives frames until end of stream, importing each batch into `dst` (decoding only if
/// `None`). `groups` maps each expected migration id to its destination group; sequence numbers
/// must run from 1 and batch numbers from 0 per migration. Refuses (with an error) anything
/// else, a bad frame, a stream that ends inside a frame, more than `max_bytes` bytes, or a
/// refused import.
fn receive<R: Read>(
    mut input: R,
    mut dst: Option<&mut Nat>,
    groups: &[(GroupId, MigrationId, GroupId)],
    max_bytes: u64,
) -> Result<RecvStats> {
    // Per migration: destination group, next sequence number, next batch number.
    let mut expect: HashMap<u64, (GroupId, u64, u32)> =
        groups.iter().map(|&(_, m, dg)| (m.0, (dg, 1, 0))).collect();
    let mut st = RecvStats {
        frames: 0,
        bytes: 0,
        records: 0,
        decode: Duration::ZERO,
        import: Duration::ZERO,
        import_cpu: Duration::ZERO,
        finished: WallClock::now(),
    };
    let mut buf = vec![0u8; 2 * READ_CHUNK];
    let (mut lo, mut hi) = (0usize, 0usize);
    loop {
        // Consume every complete frame in buf[lo..hi].
        let mut need = HEADER_LEN;
        while let Some(len) = proto::frame_len(&buf[lo..hi]).context("bad frame header")? {
            if hi - lo < len {
                need = len;
                break;
            }
            let t = WallClock::now();
            let frame = proto::decode(&buf[lo..lo + len]).context("bad frame")?;
            let t2 = WallClock::now();
            st.decode += t2 - t;
            lo += len;
            let Message::Batch { batch, records } = frame.msg else {
                bail!("unexpected {:?} message", frame.msg.kind());
            };
            let Some((g, seq, next_batch)) = expect.get_mut(&frame.migration.0) else {
                bail!("frame of unknown migration {:?}", frame.migration);
            };
            if frame.seq != *seq || batch != *next_batch {
                bail!(
                    "out of order: seq {} batch {batch}, expected seq {seq} batch {next_batch}",
                    frame.seq
                );
            }
            *seq += 1;
            *next_batch = next_batch.wrapping_add(1);
            let n = records.len() / RECORD_LEN;
            if let Some(dst) = dst.as_deref_mut() {
                let cpu = thread_cpu();
                let sum = dst
                    .import(*g, NOW, &records)
                    .with_context(|| format!("importing batch {batch}"))?;
                st.import_cpu += thread_cpu().saturating_sub(cpu);
                if sum.sessions as usize != n {
                    bail!("batch {batch}: {} of {n} records imported", sum.sessions);
                }
            }
            st.finished = WallClock::now();
            st.import += st.finished - t2;
            st.frames += 1;
            st.records += n as u64;
        }
        // Make room for the rest of the pending frame and one more read.
        if lo == hi {
            (lo, hi) = (0, 0);
        } else if buf.len() - lo < need.max(READ_CHUNK) {
            buf.copy_within(lo..hi, 0);
            (lo, hi) = (0, hi - lo);
        }
        if buf.len() < need {
            // `frame_len` bounds `need` by HEADER_LEN + MAX_BODY.
            buf.resize(need, 0);
        }
        let end = buf.len().min(hi + READ_CHUNK);
        if end == hi {
            bail!("receive buffer full"); // unreachable: a pending frame always fits
        }
        let n = match input.read(&mut buf[hi..end]) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("receiving"),
        };
        if n == 0 {
            if lo != hi {
                bail!("stream ended inside a frame ({} bytes left)", hi - lo);
            }
            return Ok(st);
        }
        hi += n;
        st.bytes += n as u64;
        if st.bytes > max_bytes {
            bail!("more than the {max_bytes} bytes expected");
        }
    }
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`; zero if unavailable).
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a live timespec that the call writes.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Requests large send and receive buffers on a socket.
fn set_buffers(fd: &impl AsRawFd) -> Result<()> {
    let size = libc::c_int::try_from(SOCKET_BUFFER).unwrap_or(libc::c_int::MAX);
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: `fd` is an open socket owned by the caller; the option value is a live c_int
        // and its length is passed alongside.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("setsockopt");
        }
    }
    Ok(())
}

/// A connected loopback TCP pair: (sending side, receiving side).
fn tcp_pair() -> Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    // Accepted sockets inherit the listener's buffer sizes (set before the handshake).
    set_buffers(&listener)?;
    let addr = listener.local_addr()?;
    let tx = TcpStream::connect(addr).context("connect")?;
    let (rx, _) = listener.accept().context("accept")?;
    for s in [&tx, &rx] {
        s.set_nodelay(true)?;
        set_buffers(s)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
    }
    Ok((tx, rx))
}

/// Copies `bytes` bytes over a fresh loopback pair in writes of `chunk` bytes; seconds from the
/// first write until the receiver has read the last byte.
fn raw_copy(bytes: u64, chunk: usize) -> Result<f64> {
    let (tx, rx) = tcp_pair()?;
    let data = vec![0x5au8; chunk.max(1)];
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<(u64, WallClock)> {
            let mut rx = rx;
            let mut buf = vec![0u8; READ_CHUNK];
            let mut got = 0u64;
            loop {
                match rx.read(&mut buf) {
                    Ok(0) => return Ok((got, WallClock::now())),
                    Ok(n) => got += n as u64,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context("raw receive"),
                }
                if got > bytes {
                    bail!("raw copy: more bytes than sent");
                }
            }
        });
        let start = WallClock::now();
        let sent = (|| -> Result<()> {
            let mut out = BufWriter::with_capacity(WRITE_BUFFER, &tx);
            let mut left = bytes;
            while left > 0 {
                let n = left.min(data.len() as u64) as usize;
                out.write_all(&data[..n]).context("raw send")?;
                left -= n as u64;
            }
            out.flush().context("raw send")?;
            drop(out);
            tx.shutdown(Shutdown::Write).context("shutdown")?;
            Ok(())
        })();
        drop(tx);
        let (got, end) = reader
            .join()
            .map_err(|_| anyhow::anyhow!("raw receiver panicked"))??;
        sent?;
        if got != bytes {
            bail!("raw copy moved {got} of {bytes} bytes");
        }
        Ok((end - start).as_secs_f64())
    })
}

/// A 64-byte-ish IPv4 packet (no Ethernet header) of `proto` from `src` to `dst`.
fn packet(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Result<Vec<u8>> {
    let b = etherparse::PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 64);
    let mut out = Vec::with_capacity(64);
    if proto == 6 {
        b.tcp(src.1, dst.1, 1000, 65535)
            .ack(1)
            .write(&mut out, &[0u8; 4])?;
    } else {
        b.udp(src.1, dst.1).write(&mut out, &[0u8; 16])?;
    }
    Ok(out)
}

/// Exports every mapping of group `g`, records sorted.
fn export_sorted(nat: &Nat, g: GroupId) -> Result<Vec<[u8; RECORD_LEN]>> {
    let mut bytes = Vec::new();
    for id in nat.group_mappings(g)? {
        nat.export_mapping(id, NOW, &mut bytes)?;
    }
    let mut recs: Vec<[u8; RECORD_LEN]> = bytes
        .chunks_exact(RECORD_LEN)
        .map(|c| c.try_into().expect("chunks_exact gives whole records"))
        .collect();
    recs.sort_unstable();
    Ok(recs)
}

/// Checks the destination against the source; returns the number of flows translated.
fn verify(setup: &mut Setup, states: u32) -> Result<u32> {
    let (src, dst) = (&mut setup.src, &mut setup.dst);
    if dst.mapping_count() != states || dst.session_count() != states {
        bail!(
            "destination holds {} mappings and {} sessions, expected {states}",
            dst.mapping_count(),
            dst.session_count()
        );
    }
    dst.check_invariants()
        .map_err(|e| anyhow::anyhow!("destination invariant: {e}"))?;
    for &(sg, _, dg) in &setup.groups {
        let (s, d) = (src.group_stats(sg)?, dst.group_stats(dg)?);
        if (s.mappings, s.sessions, s.blocks_held) != (d.mappings, d.sessions, d.blocks_held) {
            bail!("group {sg:?}: source {s:?}, destination {d:?}");
        }
        if export_sorted(src, sg)? != export_sorted(dst, dg)? {
            bail!("group {sg:?}: the destination's records differ from the source's");
        }
    }
    // Translate a sample of flows on both sides: identical packets, both directions.
    let step = (states / SAMPLE_FLOWS.min(states)).max(1);
    let mut sampled = 0;
    for i in (0..states).step_by(step as usize) {
        let f = setup.layout.flow(i);
        let mut a = packet(f.proto, f.int, f.remote)?;
        let mut b = a.clone();
        let (va, vb) = (src.process(NOW, &mut a), dst.process(NOW, &mut b));
        if va != Verdict::ToOutside || vb != va || a != b {
            bail!("flow {i} ({f:?}) outbound: source {va:?}, destination {vb:?}");
        }
        if a[12..16] != f.ext.0.octets() || a[20..22] != f.ext.1.to_be_bytes() {
            bail!("flow {i} ({f:?}) leaves from the wrong external endpoint");
        }
        let mut a = packet(f.proto, f.remote, f.ext)?;
        let mut b = a.clone();
        let (va, vb) = (src.process(NOW, &mut a), dst.process(NOW, &mut b));
        if va != Verdict::ToInside || vb != va || a != b {
            bail!("flow {i} ({f:?}) inbound: source {va:?}, destination {vb:?}");
        }
        sampled += 1;
    }
    Ok(sampled)
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
) -> Result<(SendStats, RecvStats, f64)> {
    let (tx, rx) = tcp_pair()?;
    let (sent, recv, start) = std::thread::scope(|s| {
        let receiver = std::thread::Builder::new()
            .name("xfer-recv".into())
            .spawn_scoped(s, move || {
                let rx = rx; // closed when the receiver returns, whatever happens
                receive(&rx, dst, groups, max_bytes)
            })
            .context("spawning the receiver")?;
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
    Ok((sent, recv, (recv.finished - start).as_secs_f64()))
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
    let (sent, recv, seconds) = {
        let Setup {
            src, dst, groups, ..
        } = &mut setup;
        timed_pass(src, Some(dst), groups, args.batch_records, max_bytes)?
    };
    if sent.records != args.states as u64 {
        bail!("sent {sent:?}, expected {} records", args.states);
    }
    // The same export, framing, TCP and decoding, without the import (the NAT is untouched).
    let (_, _, no_import_seconds) = timed_pass(
        &setup.src,
        None,
        &setup.groups,
        args.batch_records,
        max_bytes,
    )?;

    let chunk = sent.bytes.div_ceil(sent.frames.max(1)) as usize;
    let raw_seconds = raw_copy(sent.bytes, chunk)?;
    let sampled = verify(&mut setup, args.states)?;

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
        reserve_secs: setup.reserve_secs,
        bytes_per_sec_incl_reserve: sent.bytes as f64 / (seconds + setup.reserve_secs),
        no_import_seconds,
        no_import_bytes_per_sec: sent.bytes as f64 / no_import_seconds,
        raw_seconds,
        raw_bytes_per_sec,
        ratio: bytes_per_sec / raw_bytes_per_sec,
        sampled_flows: sampled,
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(states: u32, batch_records: u32) -> TransferArgs {
        TransferArgs {
            states,
            batch_records,
            json: true,
        }
    }

    #[test]
    fn small_transfer_moves_every_state_intact() {
        let r = run(&args(5_000, 512)).expect("transfer");
        assert_eq!(r.states, 5_000);
        assert_eq!(r.groups, 1);
        assert_eq!(r.frames, 5_000u64.div_ceil(512));
        // Headers, batch numbers and 24 bytes per record: nothing else on the wire.
        assert_eq!(
            r.bytes,
            r.frames * (HEADER_LEN as u64 + 4) + 5_000 * RECORD_LEN as u64
        );
        assert_eq!(r.sampled_flows, 1000);
        assert!(r.seconds > 0.0 && r.raw_seconds > 0.0);
    }

    #[test]
    fn transfer_spanning_groups_and_odd_batches() {
        let per_group = Layout::new().per_group();
        let n = per_group + 777;
        let r = run(&args(n, 1000)).expect("transfer");
        assert_eq!(r.groups, 2);
        assert_eq!(
            r.frames,
            (per_group as u64).div_ceil(1000) + 777u64.div_ceil(1000)
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(run(&args(0, 512)).is_err());
        assert!(run(&args(100, 0)).is_err());
        assert!(run(&args(100, u32::MAX)).is_err());
        assert!(setup(MAX_STATES + 1).is_err());
    }

    /// A valid stream of `n` records for the first group, in frames of `per` records.
    fn stream(s: &Setup, per: usize) -> Vec<u8> {
        let (sg, m, _) = s.groups[0];
        let mut out = Vec::new();
        let ids = s.src.group_mappings(sg).unwrap();
        for (k, chunk) in ids.chunks(per).enumerate() {
            let mut records = Vec::new();
            for &id in chunk {
                s.src.export_mapping(id, NOW, &mut records).unwrap();
            }
            let f = Frame {
                migration: m,
                seq: k as u64 + 1,
                ack: 0,
                msg: Message::Batch {
                    batch: k as u32,
                    records,
                },
            };
            out.extend_from_slice(&proto::encode(&f).unwrap());
        }
        out
    }

    #[test]
    fn receiver_imports_a_stream_read_in_small_pieces() {
        let mut s = setup(300).unwrap();
        let bytes = stream(&s, 64);
        // A reader that returns at most 7 bytes per call splits headers and bodies.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(7).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let st = receive(Trickle(&bytes), Some(&mut s.dst), &s.groups, u64::MAX).unwrap();
        assert_eq!((st.frames, st.records), (5, 300));
        assert_eq!(st.bytes, bytes.len() as u64);
        assert_eq!(s.dst.mapping_count(), 300);
        s.dst.check_invariants().unwrap();
    }

    #[test]
    fn receiver_refuses_bad_streams() {
        let fresh = || setup(300).unwrap();
        let good = stream(&fresh(), 100);
        let frame1 = HEADER_LEN + 4 + 100 * RECORD_LEN;

        // Truncated inside a frame.
        let mut s = fresh();
        let e = receive(
            &good[..good.len() - 1],
            Some(&mut s.dst),
            &s.groups,
            u64::MAX,
        );
        assert!(format!("{:#}", e.unwrap_err()).contains("inside a frame"));

        // Bad magic.
        let mut s = fresh();
        let mut b = good.clone();
        b[frame1] = b'X';
        assert!(receive(&b[..], Some(&mut s.dst), &s.groups, u64::MAX).is_err());

        // Second frame replayed (sequence out of order).
        let mut s = fresh();
        let mut b = good[..frame1].to_vec();
        b.extend_from_slice(&good[..frame1]);
        let e = receive(&b[..], Some(&mut s.dst), &s.groups, u64::MAX);
        assert!(format!("{:#}", e.unwrap_err()).contains("out of order"));

        // A record the NAT refuses (bad record version): import error, nothing installed.
        let mut s = fresh();
        let mut b = good.clone();
        b[HEADER_LEN + 4 + 3] = 9;
        assert!(receive(&b[..], Some(&mut s.dst), &s.groups, u64::MAX).is_err());
        assert_eq!(s.dst.mapping_count(), 0);

        // Unknown migration id.
        let mut s = fresh();
        let mut b = good.clone();
        b[8..16].copy_from_slice(&0xdead_u64.to_be_bytes());
        let e = receive(&b[..], Some(&mut s.dst), &s.groups, u64::MAX);
        assert!(format!("{:#}", e.unwrap_err()).contains("unknown migration"));

        // More bytes than the bound.
        let mut s = fresh();
        assert!(receive(&good[..], Some(&mut s.dst), &s.groups, 100).is_err());

        // The untouched stream is accepted.
        let mut s = fresh();
        receive(&good[..], Some(&mut s.dst), &s.groups, u64::MAX).unwrap();
        assert_eq!(s.dst.mapping_count(), 300);
    }
}
