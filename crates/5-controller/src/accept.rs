//! Accept loops and reader tasks for the switch and node connections. Readers only frame
//! and decode; every decision is the core's, but for the identity checks of TLS: a node's
//! certificate must name the id of its hello, the switch's (with `openflow_tls`)
//! [`SWITCH_NAME`].
//!
//! Node connections are mutual TLS (`flowshift_trust`'s server configuration: a client
//! certificate chaining to the cluster CA is required). A handshake must finish within
//! [`HANDSHAKE_TIMEOUT`] and the hello arrive within [`HELLO_TIMEOUT`] after it; at most
//! [`MAX_NODE_CONNECTIONS`] node connections are open at once, handshaking or not, so
//! half-open connections cannot pile up. Every refusal is counted.

use crate::core::{Inbox, Input, Shared};
use crate::net::spawn_writer;
use flowshift_control::api::{LineBuffer, NodeToController, decode_line};
use flowshift_http::{BoxRead, BoxWrite, Listener, Stream};
use flowshift_trust::{SWITCH_NAME, node_name, peer_is};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tracing::{debug, error, warn};

/// Buffers a connection's writer queue holds (the core closes a connection whose queue is
/// full).
const WRITER_QUEUE: usize = 256;
/// Read buffer size, in bytes.
const READ_BUF: usize = 64 * 1024;
/// A TLS handshake (node, or switch with `openflow_tls`) must complete within this time.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A node must send its hello within this time of its handshake.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Node connections open at once, handshaking, validated or not; more are refused.
const MAX_NODE_CONNECTIONS: usize = 256;
/// Switch TLS handshakes in progress at once; more are refused.
const MAX_SWITCH_HANDSHAKES: usize = 8;

/// Connection ids, unique over the process (stale inputs of a closed connection are ignored
/// by id).
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

fn next_conn() -> u64 {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

/// Pauses after a failed `accept` (e.g. out of file descriptors) before trying again.
async fn accept_failed(what: &str, e: std::io::Error) {
    error!("accepting a {what} connection: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

type TlsStream = tokio_rustls::server::TlsStream<Stream>;

/// The server side of a TLS handshake within [`HANDSHAKE_TIMEOUT`]; `None` (counted in
/// `refused`, logged) if it fails or takes too long.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: Stream,
    peer: &str,
    refused: &AtomicU64,
    what: &str,
) -> Option<TlsStream> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            Shared::bump(refused);
            warn!(%peer, error = %e, "{what} connection refused: TLS handshake failed");
            None
        }
        Err(_) => {
            Shared::bump(refused);
            warn!(%peer, "{what} connection refused: no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
            None
        }
    }
}

/// The peer's certificate chain (verified against the CA by the handshake).
fn peer_certs(s: &TlsStream) -> Vec<CertificateDer<'static>> {
    s.get_ref()
        .1
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default()
}

fn boxed<S>(s: S) -> (BoxRead, BoxWrite)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (r, w) = tokio::io::split(s);
    (Box::new(r), Box::new(w))
}

/// Accepts switch connections forever; each is handed to the core, which promotes the newest
/// whose OpenFlow handshake completes (and whose datapath id matches the pinned one). With
/// `tls`, a connection must first complete a TLS handshake with a certificate naming
/// [`SWITCH_NAME`].
pub(crate) async fn switches(listener: Listener, tls: Option<TlsAcceptor>, inbox: Inbox) {
    let slots = Arc::new(Semaphore::new(MAX_SWITCH_HANDSHAKES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok((stream, peer)) => (stream, peer.to_string()),
            Err(e) => {
                accept_failed("switch", e).await;
                continue;
            }
        };
        let Some(acceptor) = &tls else {
            if !switch_up(stream.into_split(), peer, &inbox).await {
                return;
            }
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            Shared::bump(&inbox.shared.switch_refused_busy);
            warn!(%peer, "too many switch TLS handshakes in progress; refusing one");
            continue;
        };
        let (acceptor, inbox) = (acceptor.clone(), inbox.clone());
        tokio::spawn(async move {
            let refused = &inbox.shared.switch_refused_tls;
            let Some(s) = handshake(&acceptor, stream, &peer, refused, "switch").await else {
                return;
            };
            drop(permit);
            if !peer_is(&peer_certs(&s), SWITCH_NAME) {
                Shared::bump(refused);
                warn!(%peer, "switch connection refused: its certificate does not name {SWITCH_NAME}");
                return;
            }
            switch_up(boxed(s), peer, &inbox).await;
        });
    }
}

/// Hands a switch connection to the core and starts its reader and writer; false once the
/// core has stopped.
async fn switch_up((mut rd, wr): (BoxRead, BoxWrite), peer: String, inbox: &Inbox) -> bool {
    let conn = next_conn();
    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    if !inbox.send(Input::SwitchUp { conn, tx, peer }).await {
        return false;
    }
    let reader_inbox = inbox.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; READ_BUF];
        let why = loop {
            match rd.read(&mut buf).await {
                Ok(0) => break "closed by the switch".to_owned(),
                Ok(n) => {
                    let bytes = buf[..n].to_vec();
                    if !reader_inbox.send(Input::SwitchBytes { conn, bytes }).await {
                        return;
                    }
                }
                Err(e) => break format!("read failed: {e}"),
            }
        };
        reader_inbox.send(Input::SwitchDown { conn, why }).await;
    });
    spawn_writer(wr, rx, reader.abort_handle(), inbox.clone(), move |why| {
        Input::SwitchDown { conn, why }
    });
    true
}

/// Accepts node connections forever (at most [`MAX_NODE_CONNECTIONS`] at once), each over
/// mutual TLS with `acceptor`.
pub(crate) async fn nodes(listener: Listener, acceptor: TlsAcceptor, inbox: Inbox) {
    let slots = Arc::new(Semaphore::new(MAX_NODE_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok((stream, peer)) => (stream, peer.to_string()),
            Err(e) => {
                accept_failed("node", e).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            Shared::bump(&inbox.shared.nodes_refused_busy);
            warn!(%peer, "too many node connections; refusing one");
            continue;
        };
        let (acceptor, inbox) = (acceptor.clone(), inbox.clone());
        tokio::spawn(async move {
            let refused = &inbox.shared.nodes_refused_tls;
            let Some(s) = handshake(&acceptor, stream, &peer, refused, "node").await else {
                return;
            };
            let certs = peer_certs(&s);
            let (rd, wr) = boxed(s);
            let conn = next_conn();
            let (tx, rx) = mpsc::channel(WRITER_QUEUE);
            let reader_inbox = inbox.clone();
            let reader = tokio::spawn(async move {
                let _permit = permit;
                node_reader(rd, conn, tx, peer, &certs, reader_inbox).await;
            });
            spawn_writer(wr, rx, reader.abort_handle(), inbox, move |why| {
                Input::NodeDown { conn, why }
            });
        });
    }
}

/// Reads a node's lines: the hello (within [`HELLO_TIMEOUT`]; its id must be the one the
/// certificate `certs` names), then messages. A malformed line is counted and logged, and
/// closes the connection.
async fn node_reader(
    mut rd: BoxRead,
    conn: u64,
    tx: mpsc::Sender<Vec<u8>>,
    peer: String,
    certs: &[CertificateDer<'static>],
    inbox: Inbox,
) {
    let mut lines = LineBuffer::default();
    let mut buf = vec![0u8; READ_BUF];
    let shared = inbox.shared.clone();
    let first = tokio::time::timeout(
        HELLO_TIMEOUT,
        next_message(&mut rd, &mut lines, &mut buf, &shared, &peer),
    )
    .await;
    let hello = match first {
        Err(_) => {
            warn!(%peer, "node sent no hello within {HELLO_TIMEOUT:?}; closing");
            return;
        }
        Ok(Err(why)) => {
            debug!(%peer, why, "node connection closed before its hello");
            return;
        }
        Ok(Ok(msg)) => msg,
    };
    let NodeToController::Hello { id, mac, groups } = hello else {
        Shared::bump(&shared.node_lines_malformed);
        warn!(%peer, "node's first message was not a hello; closing");
        return;
    };
    // The id is the certificate's, never the hello's word alone: an impostor (another
    // node's key, the switch's, the controller's) is refused before the core sees it.
    if !peer_is(certs, &node_name(id.0)) {
        Shared::bump(&shared.nodes_refused_auth);
        warn!(%peer, claimed = %id, "node connection refused: its certificate does not name node {id}");
        return;
    }
    let peer_for_core = peer.clone();
    if !inbox
        .send(Input::NodeHello {
            conn,
            id,
            mac,
            groups,
            tx,
            peer: peer_for_core,
        })
        .await
    {
        return;
    }
    loop {
        match next_message(&mut rd, &mut lines, &mut buf, &shared, &peer).await {
            Ok(msg) => {
                if !inbox.send(Input::NodeMessage { conn, msg }).await {
                    return; // the core has stopped
                }
            }
            Err(why) => {
                inbox.send(Input::NodeDown { conn, why }).await;
                return;
            }
        }
    }
}

/// The next message on a node connection, or why there is none (end of stream, read error,
/// overlong or malformed line).
async fn next_message(
    rd: &mut BoxRead,
    lines: &mut LineBuffer,
    buf: &mut [u8],
    shared: &Shared,
    peer: &str,
) -> Result<NodeToController, String> {
    loop {
        match lines.next_line() {
            Ok(Some(line)) => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return decode_line::<NodeToController>(&line).map_err(|e| {
                    Shared::bump(&shared.node_lines_malformed);
                    let shown = String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned();
                    warn!(%peer, error = %e, line = %shown, "malformed line from a node; closing");
                    format!("malformed line: {e}")
                });
            }
            Ok(None) => {}
            Err(e) => {
                Shared::bump(&shared.node_lines_malformed);
                warn!(%peer, "{e}; closing");
                return Err(e.to_string());
            }
        }
        match rd.read(buf).await {
            Ok(0) => return Err("closed by the node".into()),
            Ok(n) => lines.push(&buf[..n]),
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}
