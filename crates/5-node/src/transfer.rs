//! State transfer between nodes over TCP (the migration protocol's frames).
//!
//! **Wire.** A connection carries one direction: the connecting node sends a [`HELLO_LEN`]-byte
//! hello (`"FSXH"`, version 1, a zero byte, its instance id as big-endian u16), then
//! migration frames back to back; they are self-delimiting
//! ([`flowshift_migration::proto::frame_len`]). The receiving node refuses hellos from
//! instances that are not configured peers, and closes a stream whose frame header is invalid.
//!
//! **Threads.** One writer per peer connects lazily, when the packet thread first has a frame
//! for that peer, and reconnects after a failure (at most every [`RECONNECT_BACKOFF`]; frames
//! lost meanwhile are counted, and the migration protocol retransmits them). One accept thread
//! serves the listener and starts one reader per accepted connection (at most
//! `2 * peers + 2` at once). TCP_NODELAY everywhere.
//!
//! **Queues.** [`link`] builds the bounded queues between the packet thread
//! ([`TransferLink`], never blocks) and the service ([`TransferEnds`]): one queue of outgoing
//! frames per peer (a full queue refuses the frame; the caller counts it) and one queue of
//! received frames (a reader that finds it full waits, which pushes back on the sender through
//! TCP, and counts the wait).

use crate::stats::TransferCounters;
use crate::sys::Waker;
use flowshift_migration::InstanceId;
use flowshift_migration::proto::{HEADER_LEN, frame_len};
use std::io::{self, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Length of the hello that opens a connection.
pub const HELLO_LEN: usize = 8;
const HELLO_MAGIC: [u8; 4] = *b"FSXH";
const HELLO_VERSION: u8 = 1;
/// Least time between two connection attempts to one peer.
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);
/// How long a connection may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Read timeout: how often a blocked reader looks at the stop flag.
const READ_TICK: Duration = Duration::from_millis(200);
/// A write that cannot progress for this long fails the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames a writer coalesces into one flush.
const WRITE_BATCH: usize = 64;

/// The hello of instance `id`.
pub fn hello(id: InstanceId) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..4].copy_from_slice(&HELLO_MAGIC);
    h[4] = HELLO_VERSION;
    h[6..].copy_from_slice(&id.0.to_be_bytes());
    h
}

fn parse_hello(h: &[u8; HELLO_LEN]) -> Option<InstanceId> {
    (h[..4] == HELLO_MAGIC && h[4] == HELLO_VERSION && h[5] == 0)
        .then(|| InstanceId(u16::from_be_bytes([h[6], h[7]])))
}

/// The packet thread's side of the queues.
pub struct TransferLink {
    out: Vec<(InstanceId, SyncSender<Vec<u8>>)>,
    inbound: Receiver<(InstanceId, Vec<u8>)>,
}

impl TransferLink {
    /// Queues a frame for peer `to`; false if the peer is unknown or its queue is full.
    pub fn send(&self, to: InstanceId, frame: Vec<u8>) -> bool {
        match self.out.iter().find(|(id, _)| *id == to) {
            Some((_, tx)) => tx.try_send(frame).is_ok(),
            None => false,
        }
    }

    /// The next received frame and its sender, if any.
    pub fn try_recv(&self) -> Option<(InstanceId, Vec<u8>)> {
        self.inbound.try_recv().ok()
    }
}

/// The service's side of the queues.
pub struct TransferEnds {
    out: Vec<(InstanceId, Receiver<Vec<u8>>)>,
    inbound: SyncSender<(InstanceId, Vec<u8>)>,
    waker: Arc<Waker>,
}

impl TransferEnds {
    /// Queues a frame received from `from` for the packet thread and wakes it, as a reader
    /// does; false if the queue is full or gone.
    pub fn deliver(&self, from: InstanceId, frame: Vec<u8>) -> bool {
        let ok = self.inbound.try_send((from, frame)).is_ok();
        self.waker.wake();
        ok
    }
}

/// Bounded queues for `peers`: `bound` frames per peer outwards and `bound` frames inwards;
/// `waker` is signalled whenever a received frame is queued.
pub fn link(peers: &[InstanceId], bound: usize, waker: Arc<Waker>) -> (TransferLink, TransferEnds) {
    let (in_tx, in_rx) = mpsc::sync_channel(bound);
    let (mut out_tx, mut out_rx) = (Vec::new(), Vec::new());
    for &p in peers {
        let (tx, rx) = mpsc::sync_channel(bound);
        out_tx.push((p, tx));
        out_rx.push((p, rx));
    }
    (
        TransferLink {
            out: out_tx,
            inbound: in_rx,
        },
        TransferEnds {
            out: out_rx,
            inbound: in_tx,
            waker,
        },
    )
}

/// The running service's threads.
pub struct TransferService {
    threads: Vec<JoinHandle<()>>,
}

impl TransferService {
    /// Waits for every thread (they end once `stop` is set, or once the packet thread's
    /// queues are gone).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Starts the service: `listener` accepts the peers' connections; `peers` are the other
/// instances and their listeners.
pub fn start(
    listener: TcpListener,
    me: InstanceId,
    peers: &[(InstanceId, SocketAddr)],
    ends: TransferEnds,
    counters: Arc<TransferCounters>,
    stop: Arc<AtomicBool>,
) -> io::Result<TransferService> {
    let mut threads = Vec::new();
    for (peer, rx) in ends.out {
        let addr = peers
            .iter()
            .find(|(id, _)| *id == peer)
            .map(|&(_, a)| a)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "queue for an unknown peer")
            })?;
        let (c, s) = (counters.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("fs-xfer-to-{}", peer.0))
                .spawn(move || writer(me, peer, addr, rx, &c, &s))?,
        );
    }
    let ids: Vec<InstanceId> = peers.iter().map(|&(id, _)| id).collect();
    let (inbound, waker) = (ends.inbound, ends.waker);
    threads.push(
        std::thread::Builder::new()
            .name("fs-xfer-accept".into())
            .spawn(move || acceptor(listener, ids, inbound, waker, counters, stop))?,
    );
    Ok(TransferService { threads })
}

fn connect(addr: SocketAddr, me: InstanceId) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
    (&s).write_all(&hello(me))?;
    Ok(s)
}

fn writer(
    me: InstanceId,
    peer: InstanceId,
    addr: SocketAddr,
    rx: Receiver<Vec<u8>>,
    c: &TransferCounters,
    stop: &AtomicBool,
) {
    let mut conn: Option<BufWriter<TcpStream>> = None;
    let mut retry_at: Option<Instant> = None;
    let mut failing = false;
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(WRITE_BATCH);
    loop {
        match rx.recv_timeout(READ_TICK) {
            Ok(f) => batch.push(f),
            Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Relaxed) => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if conn.is_none() {
            if retry_at.is_some_and(|t| Instant::now() < t) {
                c.frames_lost.add(batch.len() as u64);
                batch.clear();
                continue;
            }
            match connect(addr, me) {
                Ok(s) => {
                    c.connects.inc();
                    info!(peer = peer.0, %addr, "transfer connection up");
                    failing = false;
                    retry_at = None;
                    conn = Some(BufWriter::with_capacity(256 << 10, s));
                }
                Err(e) => {
                    c.connect_failures.inc();
                    if !failing {
                        warn!(peer = peer.0, %addr, error = %e, "transfer connect failed; retrying");
                    }
                    failing = true;
                    retry_at = Some(Instant::now() + RECONNECT_BACKOFF);
                    c.frames_lost.add(batch.len() as u64);
                    batch.clear();
                    continue;
                }
            }
        }
        let Some(w) = conn.as_mut() else { continue };
        let bytes: usize = batch.iter().map(Vec::len).sum();
        let ok = batch.iter().all(|f| w.write_all(f).is_ok()) && w.flush().is_ok();
        if ok {
            c.frames_out.add(batch.len() as u64);
            c.bytes_out.add(bytes as u64);
        } else {
            warn!(peer = peer.0, %addr, "transfer connection broke; reconnecting");
            c.frames_lost.add(batch.len() as u64);
            conn = None;
        }
        batch.clear();
    }
}

fn acceptor(
    listener: TcpListener,
    peers: Vec<InstanceId>,
    inbound: SyncSender<(InstanceId, Vec<u8>)>,
    waker: Arc<Waker>,
    c: Arc<TransferCounters>,
    stop: Arc<AtomicBool>,
) {
    let max_conns = 2 * peers.len() + 2;
    let active = Arc::new(AtomicUsize::new(0));
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    let fd = listener.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        readers.retain(|t| !t.is_finished());
        if !crate::sys::poll_fd(fd, libc::POLLIN, READ_TICK) {
            continue;
        }
        let Ok((stream, from)) = listener.accept() else {
            continue;
        };
        if active.load(Ordering::Relaxed) >= max_conns {
            c.refused.inc();
            warn!(%from, "transfer connection refused: too many connections");
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let (peers, inbound, waker, c2, stop2, active2) = (
            peers.clone(),
            inbound.clone(),
            waker.clone(),
            c.clone(),
            stop.clone(),
            active.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("fs-xfer-in".into())
            .spawn(move || {
                let to_packet_thread = Inbound {
                    queue: &inbound,
                    waker: &waker,
                };
                reader(stream, from, &peers, to_packet_thread, &c2, &stop2);
                active2.fetch_sub(1, Ordering::Relaxed);
            });
        match spawned {
            Ok(t) => readers.push(t),
            Err(e) => {
                active.fetch_sub(1, Ordering::Relaxed);
                warn!(error = %e, "cannot start a transfer reader");
            }
        }
    }
    for t in readers {
        let _ = t.join();
    }
}

/// Fills `buf` from the stream; false on end of stream, error, stop, or `deadline`.
fn read_full(
    s: &mut TcpStream,
    buf: &mut [u8],
    stop: &AtomicBool,
    deadline: Option<Instant>,
) -> bool {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// Where a reader puts frames: the packet thread's queue, and its waker.
struct Inbound<'a> {
    queue: &'a SyncSender<(InstanceId, Vec<u8>)>,
    waker: &'a Waker,
}

fn reader(
    mut s: TcpStream,
    from: SocketAddr,
    peers: &[InstanceId],
    inbound: Inbound<'_>,
    c: &TransferCounters,
    stop: &AtomicBool,
) {
    if s.set_nodelay(true).is_err() || s.set_read_timeout(Some(READ_TICK)).is_err() {
        return;
    }
    let mut h = [0u8; HELLO_LEN];
    if !read_full(&mut s, &mut h, stop, Some(Instant::now() + HELLO_TIMEOUT)) {
        c.refused.inc();
        return;
    }
    let Some(id) = parse_hello(&h).filter(|id| peers.contains(id)) else {
        c.refused.inc();
        warn!(%from, "transfer connection refused: bad hello or not a peer");
        return;
    };
    c.accepts.inc();
    info!(peer = id.0, %from, "transfer connection accepted");
    loop {
        let mut head = [0u8; HEADER_LEN];
        if !read_full(&mut s, &mut head, stop, None) {
            return;
        }
        let len = match frame_len(&head) {
            Ok(Some(n)) => n,
            _ => {
                c.stream_errors.inc();
                warn!(
                    peer = id.0,
                    "invalid transfer frame header; closing the stream"
                );
                return;
            }
        };
        let mut frame = vec![0u8; len];
        frame[..HEADER_LEN].copy_from_slice(&head);
        if !read_full(&mut s, &mut frame[HEADER_LEN..], stop, None) {
            return;
        }
        c.frames_in.inc();
        c.bytes_in.add(len as u64);
        match inbound.queue.try_send((id, frame)) {
            Ok(()) => {}
            Err(TrySendError::Full(x)) => {
                c.in_waits.inc();
                inbound.waker.wake();
                if inbound.queue.send(x).is_err() {
                    return;
                }
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
        inbound.waker.wake();
    }
}
