//! The operator API: JSON over HTTP/1.1 (axum on hyper), served by
//! [`flowshift_http::serve`] with the bounds of [`LIMITS`]: connections overall and per
//! client (the longest-idle connection is closed to make room, so half-sent requests cannot
//! lock the API out), request heads within 5 s, bodies of at most [`MAX_BODY`] bytes within
//! 5 s.
//!
//! On a TCP `api_listen` every connection is mutual TLS with the controller's credentials: the
//! client must present a certificate from the cluster CA naming
//! [`flowshift_trust::OPERATOR_NAME`] (no or a foreign certificate: refused in the handshake,
//! `http.handshake_failures`; another party's: 403, `http.forbidden`; handshake within 5 s).
//! A unix `api_listen` is owner-only and has no TLS. With `api_token_file` configured, every
//! request except `GET /healthz` also needs `Authorization: Bearer <token>` (401 otherwise,
//! counted as `http.unauthorized`): a second factor on TCP, the only one on a unix socket.
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
//!
//! Errors are `{"error": "..."}` with 400, 401, 403, 404, 405, 408, 409, 413, 431, 502 or 503.

use crate::core::{ApiRequest, Inbox, Input, Reply, Shared};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::{get, post};
use flowshift_control::api::MigrateRequest;
use flowshift_http::{Auth, Limits, Listener, ServerTls, Token, error_response, read_body};
use std::time::Duration;
use tokio::sync::oneshot;

/// Longest request head, in bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Longest request body, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// The server's bounds.
pub const LIMITS: Limits = Limits {
    max_connections: 64,
    max_per_client: 32,
    header_timeout: Duration::from_secs(5),
    body_timeout: Duration::from_secs(5),
    handshake_timeout: Duration::from_secs(5),
    max_head: MAX_HEAD,
    max_body: MAX_BODY,
};

/// Serves the API on `listener` until the task is dropped (`tls`: on its TCP connections).
pub(crate) async fn serve(
    listener: Listener,
    inbox: Inbox,
    token: Option<Token>,
    tls: Option<ServerTls>,
) {
    let counters = inbox.shared.http.clone();
    let auth = Auth {
        tls,
        token,
        open_paths: vec!["/healthz"],
    };
    flowshift_http::serve(
        listener,
        router(inbox),
        LIMITS,
        auth,
        counters,
        std::future::pending(),
    )
    .await;
}

fn router(inbox: Inbox) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(|s| ask(s, ApiRequest::Status)))
        .route("/migrations", get(|s| ask(s, ApiRequest::Migrations)))
        .route("/switch", get(|s| ask(s, ApiRequest::Switch)))
        .route("/counters", get(|s| ask(s, ApiRequest::Counters)))
        .route("/migrations/{index}/report", get(report))
        .route("/migrate", post(migrate))
        .route("/abort", post(abort))
        .route("/rehome", post(rehome))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(inbox)
}

async fn healthz() -> Response {
    reply(Reply::json(200, &serde_json::json!({ "status": "ok" })))
}

async fn not_found(uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("no such resource: {}", uri.path()),
    )
}

async fn method_not_allowed(uri: Uri) -> Response {
    let method = if uri.path() == "/migrate" {
        "POST"
    } else {
        "GET"
    };
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("use {method} {}", uri.path()),
    )
}

async fn report(State(inbox): State<Inbox>, Path(index): Path<String>) -> Response {
    match index.parse() {
        Ok(i) => ask(State(inbox), ApiRequest::Report(i)).await,
        Err(_) => error_response(StatusCode::NOT_FOUND, &format!("no migration {index:?}")),
    }
}

async fn abort(State(inbox): State<Inbox>, body: Body) -> Response {
    json_request(inbox, body, ApiRequest::Abort).await
}

async fn rehome(State(inbox): State<Inbox>, body: Body) -> Response {
    json_request(inbox, body, ApiRequest::Rehome).await
}

/// Reads a bounded JSON body of type `T` and asks the core with it.
async fn json_request<T: serde::de::DeserializeOwned>(
    inbox: Inbox,
    body: Body,
    make: fn(T) -> ApiRequest,
) -> Response {
    let bytes = match read_body(body, &LIMITS, &inbox.shared.http).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    match serde_json::from_slice::<T>(&bytes) {
        Ok(m) => ask(State(inbox), make(m)).await,
        Err(e) => {
            inbox.shared.http.bad_request();
            error_response(StatusCode::BAD_REQUEST, &format!("bad request: {e}"))
        }
    }
}

async fn migrate(State(inbox): State<Inbox>, body: Body) -> Response {
    let bytes = match read_body(body, &LIMITS, &inbox.shared.http).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    match serde_json::from_slice::<MigrateRequest>(&bytes) {
        Ok(m) => ask(State(inbox), ApiRequest::Migrate(m)).await,
        Err(e) => {
            inbox.shared.http.bad_request();
            error_response(
                StatusCode::BAD_REQUEST,
                &format!("bad migrate request: {e}"),
            )
        }
    }
}

/// Hands `req` to the core and waits for its answer; 503 when the core is busy or stopping.
async fn ask(State(inbox): State<Inbox>, req: ApiRequest) -> Response {
    let (tx, rx) = oneshot::channel();
    if !inbox.try_send(Input::Api { req, reply: tx }) {
        Shared::bump(&inbox.shared.api_refused_busy);
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller busy; try again",
        );
    }
    match rx.await {
        Ok(r) => reply(r),
        Err(_) => error_response(StatusCode::SERVICE_UNAVAILABLE, "controller stopping"),
    }
}

fn reply(r: Reply) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r.body))
        .unwrap_or_else(|_| error_response(StatusCode::INTERNAL_SERVER_ERROR, "bad answer"))
}
