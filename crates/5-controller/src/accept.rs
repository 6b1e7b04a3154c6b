//! Accept loops and reader tasks for the switch and node connections. Readers only frame
//! and decode; every decision is the core's.

use crate::core::{Inbox, Input, Shared};
use crate::net::spawn_writer;
use flowshift_control::api::{LineBuffer, NodeToController, decode_line};
use flowshift_http::{BoxRead, BoxWrite, Listener, Peer, Stream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, error, warn};

/// Buffers a connection's writer queue holds (the core closes a connection whose queue is
/// full).
const WRITER_QUEUE: usize = 256;
/// Read buffer size, in bytes.
const READ_BUF: usize = 64 * 1024;
/// A node must send its hello within this time of connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Node connections open at once, validated or not; more are refused.
const MAX_NODE_CONNECTIONS: usize = 256;

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

fn split(stream: Stream, peer: Peer) -> (BoxRead, BoxWrite, String) {
    let (r, w) = stream.into_split();
    (r, w, peer.to_string())
}

/// Accepts switch connections forever; each is handed to the core, which keeps the newest.
pub(crate) async fn switches(listener: Listener, inbox: Inbox) {
    loop {
        let (mut rd, wr, peer) = match listener.accept().await {
            Ok((stream, peer)) => split(stream, peer),
            Err(e) => {
                accept_failed("switch", e).await;
                continue;
            }
        };
        let conn = next_conn();
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        if !inbox.send(Input::SwitchUp { conn, tx, peer }).await {
            return;
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
    }
}

/// Accepts node connections forever (at most [`MAX_NODE_CONNECTIONS`] at once).
pub(crate) async fn nodes(listener: Listener, inbox: Inbox) {
    let slots = Arc::new(Semaphore::new(MAX_NODE_CONNECTIONS));
    loop {
        let (rd, wr, peer) = match listener.accept().await {
            Ok((stream, peer)) => split(stream, peer),
            Err(e) => {
                accept_failed("node", e).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(%peer, "too many node connections; refusing one");
            continue;
        };
        let conn = next_conn();
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let reader_inbox = inbox.clone();
        let reader = tokio::spawn(async move {
            let _permit = permit;
            node_reader(rd, conn, tx, peer, reader_inbox).await;
        });
        spawn_writer(wr, rx, reader.abort_handle(), inbox.clone(), move |why| {
            Input::NodeDown { conn, why }
        });
    }
}

/// Reads a node's lines: the hello (within [`HELLO_TIMEOUT`]), then messages. A malformed
/// line is counted and logged, and closes the connection.
async fn node_reader(
    mut rd: BoxRead,
    conn: u64,
    tx: mpsc::Sender<Vec<u8>>,
    peer: String,
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
