//! Bounded HTTP/1.1 serving of an axum [`Router`] on a [`Listener`].
//!
//! * **Connections** are bounded overall ([`Limits::max_connections`]) and per client
//!   ([`Limits::max_per_client`]: per IP address; the unix socket's local processes count as
//!   one client). When a new connection would exceed a bound, the connection that has been
//!   *idle* longest within that bound is closed to make room (counted as `evicted`). Idle
//!   means not inside a request handler: still sending its request head, or between
//!   requests. So half-sent requests can never lock out a client that sends a whole request
//!   promptly. Only when every connection within the bound is inside a handler is the new one
//!   closed unanswered (`refused`).
//! * **Time**: a request head (and the wait for the next one on a kept-alive connection) must
//!   arrive within [`Limits::header_timeout`] (`timeouts`); handlers read bodies with
//!   [`read_body`], bounded by [`Limits::body_timeout`] and [`Limits::max_body`].
//! * **Size**: request heads up to [`Limits::max_head`] bytes and [`MAX_HEADERS`] headers;
//!   hyper answers larger or malformed heads itself (`bad_requests`).
//! * **Authentication**: with [`Auth::tls`], every TCP connection must complete a mutual-TLS
//!   handshake within [`Limits::handshake_timeout`] (`handshake_timeouts`; failed handshakes,
//!   e.g. no certificate or one from another CA: `handshake_failures`) and its verified peer
//!   must be admitted ([`crate::tls`]; otherwise 403 and close: `forbidden`). A handshaking
//!   connection counts as idle, so it can be evicted like a half-sent request head. With a
//!   [`Token`], every request except the [`Auth::open_paths`] must also carry
//!   `Authorization: Bearer <token>`; others get 401 (`unauthorized`).
//!
//! Each connection is its own task, so a slow client holds only its own slot.

use crate::listener::{Listener, Peer, Stream};
use crate::tls::{Caller, PeerIdentity, ServerTls};
use crate::token::Token;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tower_service::Service;
use tracing::{debug, warn};

/// Request headers parsed at most.
pub const MAX_HEADERS: usize = 64;

/// Bounds of one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one client.
    pub max_per_client: usize,
    /// Time allowed for a request head to arrive (from the connection's start, or from the
    /// end of the previous answer).
    pub header_timeout: Duration,
    /// Time allowed for [`read_body`] to read a request body.
    pub body_timeout: Duration,
    /// Time allowed for a TLS handshake (from the connection's start).
    pub handshake_timeout: Duration,
    /// Longest request head, in bytes (at least 8192: hyper's smallest read buffer).
    pub max_head: usize,
    /// Longest request body [`read_body`] accepts, in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            max_per_client: 32,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            max_head: 16 * 1024,
            max_body: 64 * 1024,
        }
    }
}

/// Who may call.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    /// Mutual TLS on TCP connections and who is admitted; `None`: plain HTTP (for unix
    /// sockets, whose permissions admit the peer; TCP without it authenticates nobody).
    pub tls: Option<ServerTls>,
    /// The bearer token required; `None`: every request is served (a unix socket whose file
    /// permissions admit only its owner, or a deliberately open endpoint).
    pub token: Option<Token>,
    /// Paths served without the token (e.g. `/healthz`).
    pub open_paths: Vec<&'static str>,
}

/// What a server counts; all monotonic.
#[derive(Debug, Default)]
pub struct ServerCounters {
    connections: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
    timeouts: AtomicU64,
    bad_requests: AtomicU64,
    unauthorized: AtomicU64,
    handshake_failures: AtomicU64,
    handshake_timeouts: AtomicU64,
    forbidden: AtomicU64,
}

/// A snapshot of [`ServerCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpCounters {
    /// Connections accepted.
    pub connections: u64,
    /// Idle connections closed to make room for a new one.
    pub evicted: u64,
    /// Connections closed unanswered: every connection within the bound was busy.
    pub refused: u64,
    /// Connections closed because a request head did not arrive in time.
    pub timeouts: u64,
    /// Requests refused as malformed, too large, or with a body too slow to arrive.
    pub bad_requests: u64,
    /// Requests refused for a missing or wrong bearer token (HTTP 401).
    pub unauthorized: u64,
    /// TLS handshakes that failed (no client certificate, one the CA did not sign, not TLS).
    pub handshake_failures: u64,
    /// TLS handshakes not finished within [`Limits::handshake_timeout`].
    pub handshake_timeouts: u64,
    /// TLS connections whose verified certificate names a party not admitted here (HTTP 403).
    pub forbidden: u64,
}

impl ServerCounters {
    /// The current values.
    pub fn snapshot(&self) -> HttpCounters {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HttpCounters {
            connections: l(&self.connections),
            evicted: l(&self.evicted),
            refused: l(&self.refused),
            timeouts: l(&self.timeouts),
            bad_requests: l(&self.bad_requests),
            unauthorized: l(&self.unauthorized),
            handshake_failures: l(&self.handshake_failures),
            handshake_timeouts: l(&self.handshake_timeouts),
            forbidden: l(&self.forbidden),
        }
    }

    /// Counts a request refused by a handler as malformed (say, a bad JSON body).
    pub fn bad_request(&self) {
        bump(&self.bad_requests);
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting and closes
/// every connection. Plain HTTP on a TCP listener (no [`Auth::tls`]) is logged as a warning.
pub async fn serve(
    listener: Listener,
    app: Router,
    limits: Limits,
    auth: Auth,
    counters: Arc<ServerCounters>,
    shutdown: impl Future<Output = ()>,
) {
    if matches!(listener, Listener::Tcp(_)) && auth.tls.is_none() {
        warn!(
            "serving plain HTTP on TCP {}: peers are not authenticated",
            listener.local()
        );
    }
    let table = Arc::new(Mutex::new(Table::default()));
    let auth = Arc::new(auth);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    warn!("accepting an HTTP connection on {}: {e}", listener.local());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some((id, evicted)) = admit(&table, peer.client(), &limits, &counters) else {
            debug!(%peer, "HTTP connection refused: every connection within the bound is busy");
            continue;
        };
        bump(&counters.connections);
        let conn = Connection {
            id,
            table: table.clone(),
            app: app.clone(),
            auth: auth.clone(),
            counters: counters.clone(),
        };
        conns.spawn(conn.run(stream, peer, limits, evicted));
    }
}

/// The open connections, for the bounds and the choice of whom to evict.
#[derive(Default)]
struct Table {
    next_id: u64,
    /// Advances on every state change: a smaller stamp is an older idle period.
    clock: u64,
    slots: HashMap<u64, Slot>,
}

struct Slot {
    client: Option<IpAddr>,
    /// `Some(stamp)`: idle since `stamp`; `None`: inside a handler.
    idle_since: Option<u64>,
    /// Closes the connection.
    evict: Option<oneshot::Sender<()>>,
}

impl Table {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The connection idle longest among those `within` selects.
    fn oldest_idle(&self, within: impl Fn(&Slot) -> bool) -> Option<u64> {
        self.slots
            .iter()
            .filter(|(_, s)| within(s))
            .filter_map(|(&id, s)| Some((s.idle_since?, id)))
            .min()
            .map(|(_, id)| id)
    }

    fn evict(&mut self, id: u64) {
        if let Some(tx) = self.slots.remove(&id).and_then(|mut s| s.evict.take()) {
            let _ = tx.send(());
        }
    }

    fn set_idle(&mut self, id: u64, idle: bool) {
        let stamp = self.tick();
        if let Some(s) = self.slots.get_mut(&id) {
            s.idle_since = idle.then_some(stamp);
        }
    }
}

/// Makes room for a connection from `client` (evicting idle connections as needed) and
/// registers it; `None` (counted) if there is no room. Returns its id and its eviction signal.
fn admit(
    table: &Mutex<Table>,
    client: Option<IpAddr>,
    limits: &Limits,
    counters: &ServerCounters,
) -> Option<(u64, oneshot::Receiver<()>)> {
    let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
    let same = |s: &Slot| s.client == client;
    let from_client = t.slots.values().filter(|s| same(s)).count();
    if from_client >= limits.max_per_client.max(1) {
        let Some(victim) = t.oldest_idle(same) else {
            bump(&counters.refused);
            return None;
        };
        t.evict(victim);
        bump(&counters.evicted);
    }
    if t.slots.len() >= limits.max_connections.max(1) {
        let Some(victim) = t.oldest_idle(|_| true) else {
            bump(&counters.refused);
            return None;
        };
        t.evict(victim);
        bump(&counters.evicted);
    }
    t.next_id += 1;
    let id = t.next_id;
    let stamp = t.tick();
    let (tx, rx) = oneshot::channel();
    t.slots.insert(
        id,
        Slot {
            client,
            idle_since: Some(stamp),
            evict: Some(tx),
        },
    );
    Some((id, rx))
}

/// One served connection.
struct Connection {
    id: u64,
    table: Arc<Mutex<Table>>,
    app: Router,
    auth: Arc<Auth>,
    counters: Arc<ServerCounters>,
}

impl Connection {
    async fn run(self, stream: Stream, peer: Peer, limits: Limits, evicted: oneshot::Receiver<()>) {
        let slot = SlotGuard {
            id: self.id,
            table: self.table.clone(),
        };
        let mut evicted = evicted;
        let Some(tls) = self
            .auth
            .tls
            .clone()
            .filter(|_| matches!(peer, Peer::Tcp(_)))
        else {
            return self
                .http(stream, Caller::Plain, peer, limits, evicted, slot)
                .await;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
        let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream));
        let stream = tokio::select! {
            r = handshake => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    bump(&self.counters.handshake_failures);
                    debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    bump(&self.counters.handshake_timeouts);
                    debug!(%peer, "TLS handshake not finished within {:?}", limits.handshake_timeout);
                    return;
                }
            },
            _ = &mut evicted => {
                debug!(%peer, "handshaking connection closed to make room");
                return;
            }
        };
        let caller = crate::tls::caller(&tls, stream.get_ref().1.peer_certificates());
        match &caller {
            Caller::Forbidden(why) => {
                bump(&self.counters.forbidden);
                warn!(%peer, "TLS peer refused (403): {why}");
            }
            Caller::Admitted(id) => debug!(%peer, identity = %id, "TLS peer admitted"),
            Caller::Plain => {}
        }
        self.http(stream, caller, peer, limits, evicted, slot).await;
    }

    /// Serves HTTP/1.1 on `io` until it closes, times out or is evicted.
    async fn http<I>(
        self,
        io: I,
        caller: Caller,
        peer: Peer,
        limits: Limits,
        evicted: oneshot::Receiver<()>,
        _slot: SlotGuard,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let counters = self.counters.clone();
        // A refused peer gets one 403, then the connection closes.
        let keep_alive = !matches!(caller, Caller::Forbidden(_));
        let caller = Arc::new(caller);
        let (id, table, app, auth) = (self.id, self.table, self.app, self.auth);
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let busy = BusyGuard::new(id, &table);
            let (app, auth, counters) = (app.clone(), auth.clone(), counters.clone());
            let caller = caller.clone();
            async move {
                let answer = handle(app, &auth, &caller, &counters, req.map(Body::new)).await;
                drop(busy);
                answer
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_head.max(8192))
            .max_headers(MAX_HEADERS)
            .keep_alive(keep_alive);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::select! {
            result = conn => if let Err(e) = result {
                if e.is_timeout() {
                    bump(&self.counters.timeouts);
                } else if e.is_parse() || e.is_parse_too_large() {
                    bump(&self.counters.bad_requests);
                }
                debug!(%peer, "HTTP connection ended: {e}");
            },
            _ = evicted => debug!(%peer, "idle HTTP connection closed to make room"),
        }
    }
}

/// Routes one request, after the authentication checks (TLS identity, then bearer token).
async fn handle(
    mut app: Router,
    auth: &Auth,
    caller: &Caller,
    counters: &ServerCounters,
    mut req: Request<Body>,
) -> Result<Response<Body>, std::convert::Infallible> {
    match caller {
        Caller::Forbidden(why) => {
            let message = format!("this client certificate is not admitted here: {why}");
            return Ok(error_response(StatusCode::FORBIDDEN, &message));
        }
        Caller::Admitted(id) => {
            req.extensions_mut().insert(PeerIdentity(id.clone()));
        }
        Caller::Plain => {}
    }
    if let Some(token) = &auth.token
        && !auth.open_paths.contains(&req.uri().path())
    {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if !presented.is_some_and(|v| token.verify(v)) {
            bump(&counters.unauthorized);
            let mut r = error_response(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Ok(r);
        }
    }
    app.call(req).await
}

/// A JSON error answer: `{"error": message}`.
pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let mut body = serde_json::json!({ "error": message }).to_string();
    body.push('\n');
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Reads a request body of at most [`Limits::max_body`] bytes within
/// [`Limits::body_timeout`]; otherwise an error answer (413, 408 or 400), counted as a bad
/// request.
pub async fn read_body(
    body: Body,
    limits: &Limits,
    counters: &ServerCounters,
) -> Result<Bytes, Response<Body>> {
    let limited = http_body_util::Limited::new(body, limits.max_body);
    let refused = |status, message: &str| {
        counters.bad_request();
        error_response(status, message)
    };
    match tokio::time::timeout(limits.body_timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body longer than {} bytes", limits.max_body),
        )),
        Ok(Err(e)) => Err(refused(
            StatusCode::BAD_REQUEST,
            &format!("reading the body: {e}"),
        )),
        Err(_) => Err(refused(
            StatusCode::REQUEST_TIMEOUT,
            &format!("request body not received within {:?}", limits.body_timeout),
        )),
    }
}

/// Removes a connection's slot when its task ends (however it ends).
struct SlotGuard {
    id: u64,
    table: Arc<Mutex<Table>>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.slots.remove(&self.id);
    }
}

/// Marks a connection busy while a handler runs.
struct BusyGuard {
    id: u64,
    table: Arc<Mutex<Table>>,
}

impl BusyGuard {
    fn new(id: u64, table: &Arc<Mutex<Table>>) -> BusyGuard {
        table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_idle(id, false);
        BusyGuard {
            id,
            table: table.clone(),
        }
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_idle(self.id, true);
    }
}
