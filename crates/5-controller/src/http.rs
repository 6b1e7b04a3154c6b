//! The operator API: a small HTTP/1.1 server, one request per connection (`Connection:
//! close`), JSON in and out. Bounded: at most [`MAX_CONNECTIONS`] open connections, request
//! heads of at most [`MAX_HEAD`] bytes, bodies (with `Content-Length`; chunked bodies are
//! refused) of at most [`MAX_BODY`] bytes, and [`EXCHANGE_TIMEOUT`] for a whole exchange.
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | `{"status":"ok"}` |
//! | `GET /status` | `ClusterStatus` |
//! | `POST /migrate` (`MigrateRequest`) | `MigrateResponse`; 400/409 `{"error": ...}` on refusal |
//! | `GET /migrations` | `[MigrationStatus]` |
//! | `GET /migrations/<index>/report` | the source node's report of that migration |
//! | `GET /switch` | [`crate::SwitchStatus`] (connection, counters, flow and port statistics) |
//! | `GET /counters` | [`crate::ControllerCounters`] |

use crate::core::{ApiRequest, Inbox, Input, Reply, Shared};
use crate::net::{BoxRead, BoxWrite, Listener};
use flowshift_control::api::MigrateRequest;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, oneshot};
use tracing::{debug, warn};

/// Connections served at once; more are closed unanswered and counted.
pub const MAX_CONNECTIONS: usize = 32;
/// Longest request line plus headers, in bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Longest request body, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Time allowed for reading a request, answering it and writing the answer.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// After answering, input is drained for at most this long ...
const LINGER: Duration = Duration::from_secs(1);
/// ... and at most this many bytes.
const MAX_LINGER_BYTES: usize = 1 << 20;
/// Headers parsed at most.
const MAX_HEADERS: usize = 32;

/// Serves the API on `listener` forever.
pub(crate) async fn serve(listener: Listener, inbox: Inbox) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (rd, wr, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("accepting an API connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            Shared::bump(&inbox.shared.http_conns_refused);
            continue;
        };
        let inbox = inbox.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let shared = inbox.shared.clone();
            if tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(rd, wr, &inbox))
                .await
                .is_err()
            {
                Shared::bump(&shared.http_timeouts);
                debug!(%peer, "API exchange timed out");
            }
        });
    }
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

async fn exchange(mut rd: BoxRead, mut wr: BoxWrite, inbox: &Inbox) {
    let reply = match read_request(&mut rd, &mut wr).await {
        Ok(req) => route(req, inbox).await,
        Err(None) => return, // the client went away
        Err(Some(reply)) => {
            Shared::bump(&inbox.shared.http_bad_requests);
            reply
        }
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        reason(reply.status),
        reply.body.len()
    );
    // The client may have gone; nothing to do about it.
    if wr.write_all(head.as_bytes()).await.is_ok() {
        let _ = wr.write_all(&reply.body).await;
    }
    let _ = wr.shutdown().await;
    // Lingering close: read what the client still sends (say, a refused body) until it
    // closes, so that closing with unread input does not reset the connection before the
    // client has read the answer. Bounded in bytes and time.
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let linger = async {
        while drained < MAX_LINGER_BYTES {
            match rd.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, linger).await;
}

/// Reads one request. `Err(None)`: the connection ended first; `Err(Some(reply))`: answer
/// with this error.
async fn read_request(rd: &mut BoxRead, wr: &mut BoxWrite) -> Result<Request, Option<Reply>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head_len, method, path, content_length, expect_continue) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let mut content_length = 0usize;
                let mut expect_continue = false;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        content_length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or_else(|| Some(Reply::error(400, "bad Content-Length")))?;
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(Some(Reply::error(
                            411,
                            "chunked bodies are not supported; send Content-Length",
                        )));
                    } else if h.name.eq_ignore_ascii_case("expect") {
                        expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
                    }
                }
                break (
                    len,
                    req.method.unwrap_or_default().to_owned(),
                    req.path.unwrap_or_default().to_owned(),
                    content_length,
                    expect_continue,
                );
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(Some(Reply::error(400, &format!("bad request: {e}")))),
        }
        if buf.len() >= MAX_HEAD {
            return Err(Some(Reply::error(431, "request head too large")));
        }
        let n = rd.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if content_length > MAX_BODY {
        return Err(Some(Reply::error(413, "request body too large")));
    }
    let mut body = buf.split_off(head_len);
    if expect_continue && body.len() < content_length {
        wr.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| None)?;
    }
    while body.len() < content_length {
        let n = rd.read(&mut chunk).await.map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(content_length);
    Ok(Request { method, path, body })
}

async fn route(req: Request, inbox: &Inbox) -> Reply {
    let path = req.path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (allowed, api) = match segments.as_slice() {
        ["healthz"] => ("GET", None),
        ["status"] => ("GET", Some(ApiRequest::Status)),
        ["migrations"] => ("GET", Some(ApiRequest::Migrations)),
        ["switch"] => ("GET", Some(ApiRequest::Switch)),
        ["counters"] => ("GET", Some(ApiRequest::Counters)),
        ["migrations", index, "report"] => match index.parse() {
            Ok(i) => ("GET", Some(ApiRequest::Report(i))),
            Err(_) => return Reply::error(404, &format!("no migration {index:?}")),
        },
        ["migrate"] => {
            if req.method != "POST" {
                return Reply::error(405, "use POST /migrate");
            }
            match serde_json::from_slice::<MigrateRequest>(&req.body) {
                Ok(m) => ("POST", Some(ApiRequest::Migrate(m))),
                Err(e) => {
                    return Reply::error(400, &format!("bad migrate request: {e}"));
                }
            }
        }
        _ => return Reply::error(404, &format!("no such resource: {path}")),
    };
    if req.method != allowed {
        return Reply::error(405, &format!("use {allowed} {path}"));
    }
    let Some(api) = api else {
        return Reply::json(200, &serde_json::json!({ "status": "ok" }));
    };
    let (tx, rx) = oneshot::channel();
    if !inbox.try_send(Input::Api {
        req: api,
        reply: tx,
    }) {
        Shared::bump(&inbox.shared.api_refused_busy);
        return Reply::error(503, "controller busy; try again");
    }
    rx.await
        .unwrap_or_else(|_| Reply::error(503, "controller stopping"))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}
