//! State transfer between nodes over TCP (the migration protocol's frames).
//!
//! **Wire.** Every connection is mutual TLS ([`flowshift_trust`]): the connecting node checks
//! that the listener's certificate names the peer it wants, the listener that the connecting
//! node's certificate chains to the cluster CA. A connection carries one direction: inside
//! TLS the connecting node sends a [`HELLO_LEN`]-byte hello (`"FSXH"`, version 1, a zero
//! byte, its instance id as big-endian u16), then migration frames back to back; they are
//! self-delimiting ([`flowshift_migration::proto::frame_len`]). The receiving node refuses a
//! hello from an instance that is not a configured peer or that its certificate does not
//! name (`transfer_auth_refused`), closes a stream whose frame header is invalid, and closes
//! a connection idle for [`IDLE_TIMEOUT`] (the writer reconnects when it next has a frame). A
//! frame's buffer grows as its bytes arrive, never on the strength of a header alone.
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
use flowshift_trust::split::{self, ClientStream, ServerStream};
use flowshift_trust::{Credentials, node_name};
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
/// How long a connection may take for its TLS handshake and its hello (each).
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// An incoming connection without a frame for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A writer whose connection has been unused this long opens a fresh one for its next frames
/// (before the listener's [`IDLE_TIMEOUT`] could close it under them).
const WRITER_IDLE: Duration = Duration::from_secs(240);
/// A frame's buffer grows by at most this much per read (frames up to 16 MiB are valid).
const FRAME_GROWTH: usize = 256 << 10;
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
    creds: &Credentials,
    peers: &[(InstanceId, SocketAddr)],
    ends: TransferEnds,
    counters: Arc<TransferCounters>,
    stop: Arc<AtomicBool>,
) -> io::Result<TransferService> {
    let tls_err = |e: flowshift_trust::TrustError| io::Error::new(io::ErrorKind::InvalidInput, e);
    let client_cfg = creds.client_config().map_err(tls_err)?;
    let server_cfg = creds.server_config().map_err(tls_err)?;
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
        let target = Target {
            me,
            peer,
            addr,
            tls: client_cfg.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("fs-xfer-to-{}", peer.0))
                .spawn(move || writer(&target, rx, &c, &s))?,
        );
    }
    let ids: Vec<InstanceId> = peers.iter().map(|&(id, _)| id).collect();
    let (inbound, waker) = (ends.inbound, ends.waker);
    threads.push(
        std::thread::Builder::new()
            .name("fs-xfer-accept".into())
            .spawn(move || acceptor(listener, server_cfg, ids, inbound, waker, counters, stop))?,
    );
    Ok(TransferService { threads })
}

/// Where a writer sends: the peer, its listener, and the TLS set-up to reach it.
struct Target {
    me: InstanceId,
    peer: InstanceId,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

/// Connects to the peer over mutual TLS (its certificate must name it) and sends the hello.
fn connect(t: &Target) -> io::Result<ClientStream> {
    let tcp = TcpStream::connect_timeout(&t.addr, Duration::from_secs(1))?;
    tcp.set_nodelay(true)?;
    let name = flowshift_trust::server_name(&node_name(t.peer.0))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let (conn, tcp) = split::connect(tcp, t.tls.clone(), name, HELLO_TIMEOUT)?;
    tcp.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(&hello(t.me))?;
    Ok(s)
}

fn writer(t: &Target, rx: Receiver<Vec<u8>>, c: &TransferCounters, stop: &AtomicBool) {
    let (peer, addr) = (t.peer, t.addr);
    let mut conn: Option<BufWriter<ClientStream>> = None;
    let mut last_write = Instant::now();
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
        if conn.is_some() && last_write.elapsed() >= WRITER_IDLE {
            conn = None;
        }
        last_write = Instant::now();
        if conn.is_none() {
            if retry_at.is_some_and(|t| Instant::now() < t) {
                c.frames_lost.add(batch.len() as u64);
                batch.clear();
                continue;
            }
            match connect(t) {
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
    tls: Arc<rustls::ServerConfig>,
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
        let (tls, peers, inbound, waker, c2, stop2, active2) = (
            tls.clone(),
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
                if let Some((id, s)) = authenticate(stream, from, tls, &peers, &c2, &stop2) {
                    reader(s, id, to_packet_thread, &c2, &stop2);
                }
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
    s: &mut impl Read,
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

/// The TLS handshake and the hello of an accepted connection: the peer it is from, once its
/// certificate chains to the CA, the hello is valid and names a configured peer, and the
/// certificate names that same peer. `None` (counted) otherwise.
fn authenticate(
    tcp: TcpStream,
    from: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    peers: &[InstanceId],
    c: &TransferCounters,
    stop: &AtomicBool,
) -> Option<(InstanceId, ServerStream)> {
    if tcp.set_nodelay(true).is_err() {
        return None;
    }
    let (conn, tcp) = match split::accept(tcp, tls, HELLO_TIMEOUT) {
        Ok(x) => x,
        Err(e) => {
            c.auth_refused.inc();
            warn!(%from, error = %e, "transfer connection refused: TLS handshake failed");
            return None;
        }
    };
    if tcp.set_read_timeout(Some(READ_TICK)).is_err() {
        return None;
    }
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let mut h = [0u8; HELLO_LEN];
    if !read_full(&mut s, &mut h, stop, Some(Instant::now() + HELLO_TIMEOUT)) {
        c.refused.inc();
        return None;
    }
    let Some(id) = parse_hello(&h).filter(|id| peers.contains(id)) else {
        c.refused.inc();
        warn!(%from, "transfer connection refused: bad hello or not a peer");
        return None;
    };
    if !flowshift_trust::peer_is(split::peer_certificates(&s.conn), &node_name(id.0)) {
        c.auth_refused.inc();
        warn!(%from, claimed = id.0, "transfer connection refused: certificate is not that peer's");
        return None;
    }
    c.accepts.inc();
    info!(peer = id.0, %from, "transfer connection accepted");
    Some((id, s))
}

fn reader(
    mut s: ServerStream,
    id: InstanceId,
    inbound: Inbound<'_>,
    c: &TransferCounters,
    stop: &AtomicBool,
) {
    loop {
        let mut head = [0u8; HEADER_LEN];
        let idle_deadline = Instant::now() + IDLE_TIMEOUT;
        if !read_full(&mut s, &mut head, stop, Some(idle_deadline)) {
            if Instant::now() >= idle_deadline {
                c.idle_closed.inc();
            }
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
        let mut frame = Vec::with_capacity(len.min(FRAME_GROWTH));
        frame.extend_from_slice(&head);
        while frame.len() < len {
            let at = frame.len();
            let step = (len - at).min(FRAME_GROWTH);
            frame.resize(at + step, 0);
            if !read_full(&mut s, &mut frame[at..], stop, None) {
                return;
            }
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
