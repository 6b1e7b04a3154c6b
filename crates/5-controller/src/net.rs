//! The writer half of a switch or node connection (listeners: [`flowshift_http::Listener`]).

use crate::core::{Inbox, Input};
use flowshift_http::BoxWrite;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// A write that takes longer than this closes the connection (the peer stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes every buffer received on `rx` to `wr` until the channel closes (the owner dropped
/// the sender: queued buffers are written first) or a write fails or exceeds
/// [`WRITE_TIMEOUT`]. Then it shuts the socket down, aborts the connection's reader and, on
/// a write failure, reports `closed(reason)` to the core.
pub(crate) fn spawn_writer(
    mut wr: BoxWrite,
    mut rx: mpsc::Receiver<Vec<u8>>,
    reader: AbortHandle,
    inbox: Inbox,
    closed: impl FnOnce(String) -> Input + Send + 'static,
) {
    tokio::spawn(async move {
        let mut failure = None;
        while let Some(buf) = rx.recv().await {
            // Flush too: over TLS, record bytes the socket did not take at once would
            // otherwise wait in the session buffer for the next write.
            let write = async {
                wr.write_all(&buf).await?;
                wr.flush().await
            };
            match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failure = Some(format!("write failed: {e}"));
                    break;
                }
                Err(_) => {
                    failure = Some(format!("write timed out after {WRITE_TIMEOUT:?}"));
                    break;
                }
            }
        }
        // Best effort: the peer may be gone already.
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
        reader.abort();
        if let Some(why) = failure {
            inbox.send(closed(why)).await;
        }
    });
}
