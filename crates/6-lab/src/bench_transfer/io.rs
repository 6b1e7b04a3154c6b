//! The timed I/O: the sender (export, frame, write), the receiver (read, decode, check,
//! import), the raw TCP copy it is compared with, and the socket and CPU-clock helpers.

use super::*;

/// Records in the first batch the sender exports (then twice as many each batch, up to the
/// batch size asked for).
const FIRST_BATCH: usize = 256;

/// Most records of the batch after `sent` frames: [`FIRST_BATCH`], doubling, up to
/// `batch_records`.
pub(super) fn batch_limit(sent: u64, batch_records: usize) -> usize {
    batch_records.min(FIRST_BATCH << sent.min(16))
}

/// What the sender measured.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SendStats {
    pub(super) frames: u64,
    pub(super) bytes: u64,
    pub(super) records: u64,
    pub(super) export: Duration,
    pub(super) encode: Duration,
    /// Writing to the socket, blocked time included.
    pub(super) send: Duration,
    /// When the first frame was written.
    pub(super) first_write: Option<WallClock>,
}

/// Exports every group of `src` in batches, frames and writes them; shuts the write side.
pub(super) fn send(
    src: &Nat,
    groups: &[(GroupId, MigrationId, GroupId)],
    batch_records: usize,
    stream: &TcpStream,
) -> Result<SendStats> {
    let mut st = SendStats::default();
    // Unbuffered: each frame is one write, and leaves as soon as it is encoded (the receiver
    // imports it while the next is exported).
    let mut out = stream;
    let mut records: Vec<u8> = Vec::with_capacity(batch_records * RECORD_LEN);
    for &(g, migration, _) in groups {
        let t = WallClock::now();
        let ids = src.group_mappings(g)?;
        st.export += t.elapsed();
        let mut seq = 1u64;
        let mut batch = 0u32;
        let mut ids = ids.iter().peekable();
        while ids.peek().is_some() {
            // Export whole mappings until the batch is full. The first batches are smaller
            // (doubling up to `batch_records`), so the receiver starts importing sooner.
            let t = WallClock::now();
            let mut n = 0usize;
            let limit = batch_limit(st.frames, batch_records);
            while n < limit {
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
            st.first_write.get_or_insert_with(WallClock::now);
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
    stream.shutdown(Shutdown::Write).context("shutdown")?;
    st.send += t.elapsed();
    Ok(st)
}

/// What the receiver measured.
#[derive(Clone, Copy, Debug)]
pub(super) struct RecvStats {
    pub(super) frames: u64,
    pub(super) bytes: u64,
    pub(super) records: u64,
    pub(super) decode: Duration,
    pub(super) import: Duration,
    /// Thread CPU time inside `Nat::import`.
    pub(super) import_cpu: Duration,
    /// When the last batch was imported.
    pub(super) finished: WallClock,
    /// When the first complete frame was in the buffer (`None`: no frame).
    pub(super) first_frame: Option<WallClock>,
    /// Time blocked in `read` (waiting for the sender or the kernel), copies included.
    pub(super) read: Duration,
}

/// Receives frames until end of stream, importing each batch into `dst` (decoding only if
/// `None`). `groups` maps each expected migration id to its destination group; sequence numbers
/// must run from 1 and batch numbers from 0 per migration. Refuses (with an error) anything
/// else, a bad frame, a stream that ends inside a frame, more than `max_bytes` bytes, or a
/// refused import.
pub(super) fn receive<R: Read>(
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
        first_frame: None,
        read: Duration::ZERO,
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
            st.first_frame.get_or_insert(t);
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
        let t = WallClock::now();
        let got = input.read(&mut buf[hi..end]);
        st.read += t.elapsed();
        let n = match got {
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
pub(super) fn thread_cpu() -> Duration {
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
pub(super) fn set_buffers(fd: &impl AsRawFd) -> Result<()> {
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
pub(super) fn tcp_pair() -> Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    // Accepted sockets inherit the listener's buffer sizes (set before the handshake).
    set_buffers(&listener)?;
    let addr = listener.local_addr()?;
    let tx = TcpStream::connect(addr).context("connect")?;
    let rx = accept_own(&listener, &tx)?;
    for s in [&tx, &rx] {
        s.set_nodelay(true)?;
        set_buffers(s)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
    }
    Ok((tx, rx))
}

/// Accepts `tx`'s connection on `listener`, refusing any other: the accepted peer must be
/// `tx`'s own (kernel-assigned) local address, which no other socket can hold meanwhile.
pub(super) fn accept_own(listener: &TcpListener, tx: &TcpStream) -> Result<TcpStream> {
    let (rx, peer) = listener.accept().context("accept")?;
    if peer != tx.local_addr()? {
        bail!("an unexpected peer {peer} connected to the benchmark's listener");
    }
    Ok(rx)
}

/// Copies `bytes` bytes over a fresh loopback pair in writes of `chunk` bytes; seconds from the
/// first write until the receiver has read the last byte.
pub(super) fn raw_copy(bytes: u64, chunk: usize) -> Result<f64> {
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
