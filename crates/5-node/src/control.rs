//! The control connection to the controller (`flowshift_control::api`, JSON lines over
//! mutual TLS).
//!
//! The client connects to the controller's node listener over TLS ([`flowshift_trust`]: the
//! controller's certificate must chain to the cluster CA and name
//! [`flowshift_trust::CONTROLLER_NAME`]; the node presents its own, which the controller
//! checks against the hello's id; the handshake must finish within [`HANDSHAKE_TIMEOUT`];
//! failures count as `control_tls_failures`), sends
//! [`NodeToController::Hello`] (id, MAC, the external addresses of the groups in the latest
//! published status), then serves [`ControllerToNode::Request`]s in order and pushes migration
//! events as they happen. When the connection drops it reconnects every
//! [`RECONNECT_INTERVAL`]; events produced meanwhile wait in the bounded event queue and go out
//! after the next hello (the packet thread counts events the full queue refused).
//!
//! Requests are executed by the packet thread: the client queues a [`Command`] with a
//! one-slot reply channel ([`ControlLink::commands`], bounded; a full queue answers "busy")
//! and waits at most [`REPLY_TIMEOUT`] for the result. Replies travel through the same queue
//! as events, tagged with the connection they belong to, so a reply never reaches a later
//! connection.

use crate::config::MacAddr;
use crate::stats::{ControlCounters, SnapshotCell};
use crate::sys::Waker;
use flowshift_control::api::{
    ControllerToNode, LineBuffer, NodeRequest, NodeToController, ReplyBody, decode_line,
    encode_line,
};
use flowshift_migration::{InstanceId, MigrationEvent};
use flowshift_trust::split::{self, TlsReader, TlsWriter};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Time between connection attempts.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for the packet thread's answer to a request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the writer looks at the stop flag and the reader's health.
const TICK: Duration = Duration::from_millis(100);
/// The TLS handshake with the controller must finish within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A controller request for the packet thread, with where to put the answer.
pub struct Command {
    /// The request.
    pub body: NodeRequest,
    /// One-slot reply channel (the packet thread uses `try_send`).
    pub reply: SyncSender<Result<ReplyBody, String>>,
}

/// What the client writes to the controller.
pub enum Outgoing {
    /// A migration event (node clock, ns).
    Event {
        /// When.
        at_ns: u64,
        /// The event.
        event: MigrationEvent,
    },
    /// The answer to request `req` of connection `conn`.
    Reply {
        /// Connection number (replies of an earlier connection are discarded).
        conn: u64,
        /// Request id.
        req: u64,
        /// Result.
        result: Result<ReplyBody, String>,
    },
}

/// The packet thread's side: commands to serve, events to push.
pub struct ControlLink {
    /// Requests to execute (`try_recv`).
    pub commands: Receiver<Command>,
    /// Events for the controller (`try_send`; count refusals).
    pub events: SyncSender<Outgoing>,
}

/// The client's side.
pub struct ControlEnds {
    commands: SyncSender<Command>,
    out_tx: SyncSender<Outgoing>,
    out_rx: Receiver<Outgoing>,
    waker: Arc<Waker>,
}

/// Bounded queues: `commands` requests, `events` outgoing events and replies; `waker` is
/// signalled whenever a command is queued.
pub fn link(commands: usize, events: usize, waker: Arc<Waker>) -> (ControlLink, ControlEnds) {
    let (cmd_tx, cmd_rx) = mpsc::sync_channel(commands);
    let (out_tx, out_rx) = mpsc::sync_channel(events);
    (
        ControlLink {
            commands: cmd_rx,
            events: out_tx.clone(),
        },
        ControlEnds {
            commands: cmd_tx,
            out_tx,
            out_rx,
            waker,
        },
    )
}

impl ControlEnds {
    /// Queues a request for the packet thread and wakes it, as the client does for each
    /// request it reads; the channel its answer arrives on, or `None` if the queue is full.
    pub fn submit(&self, body: NodeRequest) -> Option<Receiver<Result<ReplyBody, String>>> {
        queue_command(&self.commands, &self.waker, body)
    }
}

fn queue_command(
    commands: &SyncSender<Command>,
    waker: &Waker,
    body: NodeRequest,
) -> Option<Receiver<Result<ReplyBody, String>>> {
    let (tx, rx) = mpsc::sync_channel(1);
    commands.try_send(Command { body, reply: tx }).ok()?;
    waker.wake();
    Some(rx)
}

/// Who the node is, for the hello.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    /// Instance id.
    pub id: InstanceId,
    /// MAC on the switch.
    pub mac: MacAddr,
}

/// Starts the client thread; it ends once `stop` is set. `tls` is the node's client
/// configuration (`flowshift_trust::Credentials::client_config`).
pub fn start(
    controller: SocketAddr,
    me: Identity,
    tls: Arc<rustls::ClientConfig>,
    snapshot: Arc<SnapshotCell>,
    ends: ControlEnds,
    counters: Arc<ControlCounters>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fs-control".into())
        .spawn(move || client(controller, me, &tls, &snapshot, ends, counters, &stop))
}

/// Opens a TLS connection to the controller: the halves for the writer and reader threads.
fn connect(
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> std::io::Result<(TlsReader, TlsWriter)> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    let _ = tcp.set_nodelay(true);
    let name = flowshift_trust::server_name(flowshift_trust::CONTROLLER_NAME)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let (conn, tcp) = split::connect(tcp, tls.clone(), name, HANDSHAKE_TIMEOUT)
        .map_err(|e| std::io::Error::new(e.kind(), Tls(e)))?;
    // The handshake left its deadline on the socket: reads block until data or a close,
    // writes give up after REPLY_TIMEOUT.
    tcp.set_read_timeout(None)?;
    tcp.set_write_timeout(Some(REPLY_TIMEOUT))?;
    split::split(conn, tcp)
}

/// A TLS handshake failure (told apart from TCP connect failures for the counters).
#[derive(Debug)]
struct Tls(std::io::Error);

impl std::fmt::Display for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS handshake: {}", self.0)
    }
}

impl std::error::Error for Tls {}

/// Sleeps `d`, waking early if `stop` is set.
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(TICK));
    }
}

fn client(
    addr: SocketAddr,
    me: Identity,
    tls: &Arc<rustls::ClientConfig>,
    snapshot: &SnapshotCell,
    ends: ControlEnds,
    c: Arc<ControlCounters>,
    stop: &AtomicBool,
) {
    let mut conn = 0u64;
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        let (reader, writer) = match connect(addr, tls) {
            Ok(s) => s,
            Err(e) => {
                let is_tls = e.get_ref().is_some_and(|inner| inner.is::<Tls>());
                if is_tls {
                    c.tls_failures.inc();
                } else {
                    c.connect_failures.inc();
                }
                if !failing {
                    warn!(%addr, error = %e, "controller unreachable; retrying every second");
                }
                failing = true;
                sleep_unless(stop, RECONNECT_INTERVAL);
                continue;
            }
        };
        failing = false;
        conn += 1;
        c.connects.inc();
        info!(%addr, "controller connected (TLS)");
        if let Err(e) = serve(reader, writer, conn, me, snapshot, &ends, &c, stop) {
            warn!(%addr, error = %e, "controller connection lost");
        }
        sleep_unless(stop, RECONNECT_INTERVAL);
    }
}

/// One connection: hello, then write events and replies until it fails or `stop`.
#[allow(clippy::too_many_arguments)]
fn serve(
    reader: TlsReader,
    mut w: TlsWriter,
    conn: u64,
    me: Identity,
    snapshot: &SnapshotCell,
    ends: &ControlEnds,
    c: &Arc<ControlCounters>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let hello = NodeToController::Hello {
        id: me.id,
        mac: me.mac.0,
        groups: snapshot.get().groups.iter().map(|g| g.external).collect(),
    };
    w.write_all(&encode_line(&hello))?;
    let alive = Arc::new(AtomicBool::new(true));
    let reader = {
        let (s, commands, out, waker, c, alive) = (
            reader,
            ends.commands.clone(),
            ends.out_tx.clone(),
            ends.waker.clone(),
            c.clone(),
            alive.clone(),
        );
        std::thread::Builder::new()
            .name("fs-control-rx".into())
            .spawn(move || {
                let packet_thread = PacketThread {
                    commands: &commands,
                    waker: &waker,
                };
                requests(s, conn, packet_thread, &out, &c);
                alive.store(false, Ordering::Relaxed);
            })?
    };
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        if !alive.load(Ordering::Relaxed) {
            break Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "controller closed the connection",
            ));
        }
        let msg = match ends.out_rx.recv_timeout(TICK) {
            Ok(Outgoing::Event { at_ns, event }) => {
                c.events_sent.inc();
                NodeToController::Event { at_ns, event }
            }
            Ok(Outgoing::Reply {
                conn: n,
                req,
                result,
            }) if n == conn => NodeToController::Reply { req, result },
            Ok(Outgoing::Reply { .. }) | Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
        };
        if let Err(e) = w.write_all(&encode_line(&msg)) {
            break Err(e);
        }
    };
    w.close(); // wakes the reader blocked on the socket
    let _ = reader.join();
    result
}

/// Reads requests until the connection ends; each is executed by the packet thread and its
/// reply queued for the writer.
/// Where requests go: the packet thread's command queue, and its waker.
struct PacketThread<'a> {
    commands: &'a SyncSender<Command>,
    waker: &'a Waker,
}

fn requests(
    mut s: TlsReader,
    conn: u64,
    packet_thread: PacketThread<'_>,
    out: &SyncSender<Outgoing>,
    c: &ControlCounters,
) {
    let mut lines = LineBuffer::default();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        lines.push(&buf[..n]);
        loop {
            let line = match lines.next_line() {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(e) => {
                    c.bad_lines.inc();
                    warn!(error = %e, "controller sent an overlong line; closing");
                    return;
                }
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let (req, body) = match decode_line::<ControllerToNode>(&line) {
                Ok(ControllerToNode::Request { req, body }) => (req, body),
                Err(e) => {
                    c.bad_lines.inc();
                    warn!(error = %e, "undecodable controller line ignored");
                    continue;
                }
            };
            c.requests.inc();
            let result = execute(&packet_thread, body, c);
            if out.send(Outgoing::Reply { conn, req, result }).is_err() {
                return;
            }
        }
    }
}

fn execute(
    packet_thread: &PacketThread<'_>,
    body: NodeRequest,
    c: &ControlCounters,
) -> Result<ReplyBody, String> {
    let Some(rx) = queue_command(packet_thread.commands, packet_thread.waker, body) else {
        c.request_failures.inc();
        return Err("node busy: command queue full".into());
    };
    rx.recv_timeout(REPLY_TIMEOUT).unwrap_or_else(|_| {
        c.request_failures.inc();
        Err("node did not answer in time".into())
    })
}
