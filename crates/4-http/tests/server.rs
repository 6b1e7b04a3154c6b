//! The bounded server against real sockets: authentication, half-sent requests that cannot
//! lock a prompt client out, timeouts, body bounds, unix sockets.

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use flowshift_http::{
    Auth, Client, Endpoint, HttpCounters, Limits, Listener, ServerCounters, Token, UnixMode,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

struct Server {
    endpoint: Endpoint,
    counters: Arc<ServerCounters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(at: Endpoint, limits: Limits, auth: Auth) -> Server {
        let counters = Arc::new(ServerCounters::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let c = counters.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = Listener::bind(&at, UnixMode::OwnerOnly).await.unwrap();
                ready_tx.send(listener.local()).unwrap();
                let body_counters = c.clone();
                let app = Router::new()
                    .route("/hello", get(|| async { "hello\n" }))
                    .route("/healthz", get(|| async { "ok\n" }))
                    .route(
                        "/echo",
                        post(move |body: Body| {
                            let counters = body_counters.clone();
                            async move {
                                match flowshift_http::read_body(body, &limits, &counters).await {
                                    Ok(b) => axum::response::IntoResponse::into_response(b),
                                    Err(r) => r,
                                }
                            }
                        }),
                    );
                flowshift_http::serve(listener, app, limits, auth, c, async {
                    let _ = stopped.await;
                })
                .await;
            });
        });
        Server {
            endpoint: ready.recv().unwrap(),
            counters,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn addr(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp(hp) => hp.clone(),
            Endpoint::Unix(_) => panic!("not TCP"),
        }
    }

    fn counters(&self) -> HttpCounters {
        self.counters.snapshot()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

/// Whether `cond` becomes true within 10 s (polled).
fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn tcp_any() -> Endpoint {
    Endpoint::Tcp("127.0.0.1:0".into())
}

fn token() -> Token {
    Token::generate().unwrap()
}

#[test]
fn requests_need_the_token_except_on_open_paths() {
    let t = token();
    let s = Server::start(
        tcp_any(),
        Limits::default(),
        Auth {
            tls: None,
            token: Some(t.clone()),
            open_paths: vec!["/healthz"],
        },
    );
    let anonymous = Client::new(s.endpoint.clone());
    let (status, body) = anonymous
        .request(axum::http::Method::GET, "/hello", None)
        .unwrap();
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let wrong = anonymous.clone().with_token(Some(token()));
    assert_eq!(
        wrong
            .request(axum::http::Method::GET, "/hello", None)
            .unwrap()
            .0,
        401
    );
    let (status, _) = anonymous
        .request(axum::http::Method::GET, "/healthz", None)
        .unwrap();
    assert_eq!(status, 200);
    let good = anonymous.with_token(Some(t));
    let (status, body) = good
        .request(axum::http::Method::GET, "/hello", None)
        .unwrap();
    assert_eq!((status, body.as_slice()), (200, b"hello\n".as_slice()));
    assert_eq!(s.counters().unauthorized, 2);
}

/// Opens `n` connections that send half a request head and then nothing.
fn half_sent(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n").unwrap();
            c
        })
        .collect()
}

#[test]
fn half_sent_requests_cannot_lock_out_a_prompt_client() {
    let limits = Limits {
        max_connections: 8,
        max_per_client: 6,
        // Long enough that no half-sent connection times out during the test.
        header_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let t = token();
    let s = Server::start(
        tcp_any(),
        limits,
        Auth {
            tls: None,
            token: Some(t.clone()),
            open_paths: vec![],
        },
    );
    // Four times the bound of half-sent requests, then whole requests: each succeeds.
    let _slow = half_sent(&s.addr(), 4 * limits.max_connections);
    let client = Client::new(s.endpoint.clone()).with_token(Some(t));
    for _ in 0..3 {
        let (status, body) = client
            .request(axum::http::Method::GET, "/hello", None)
            .unwrap();
        assert_eq!((status, body.as_slice()), (200, b"hello\n".as_slice()));
    }
    let c = s.counters();
    assert!(c.evicted >= 4 * 8 - 6, "{c:?}");
    assert_eq!(c.refused, 0, "{c:?}");
}

#[test]
fn a_stalled_head_times_out_and_is_counted() {
    let limits = Limits {
        header_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let s = Server::start(tcp_any(), limits, Auth::default());
    let mut c = half_sent(&s.addr(), 1).pop().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut rest = Vec::new();
    // The server closes the connection (possibly after an error answer).
    c.read_to_end(&mut rest).unwrap();
    // The server task counts after closing: wait for it.
    assert!(
        eventually(|| s.counters().timeouts == 1),
        "{:?}",
        s.counters()
    );
}

#[test]
fn bodies_are_bounded_in_size_and_time() {
    let limits = Limits {
        max_body: 16,
        body_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let s = Server::start(tcp_any(), limits, Auth::default());
    let client = Client::new(s.endpoint.clone());
    let (status, body) = client
        .request(
            axum::http::Method::POST,
            "/echo",
            Some(b"{\"a\":1}".to_vec()),
        )
        .unwrap();
    assert_eq!((status, body.as_slice()), (200, b"{\"a\":1}".as_slice()));
    let (status, _) = client
        .request(axum::http::Method::POST, "/echo", Some(vec![b'x'; 17]))
        .unwrap();
    assert_eq!(status, 413);
    // A body announced but never sent.
    let mut c = TcpStream::connect(s.addr()).unwrap();
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(s.counters().bad_requests, 2);
}

#[test]
fn unix_sockets_serve_and_are_owner_only() {
    let dir = std::env::temp_dir().join(format!("fs-http-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("api.sock");
    let s = Server::start(
        Endpoint::Unix(path.clone()),
        Limits::default(),
        Auth::default(),
    );
    let (status, body) = Client::new(s.endpoint.clone())
        .request(axum::http::Method::GET, "/hello", None)
        .unwrap();
    assert_eq!((status, body.as_slice()), (200, b"hello\n".as_slice()));
    drop(s);
    assert!(!path.exists(), "the socket file is removed on shutdown");
    std::fs::remove_dir_all(&dir).unwrap();
}
