//! The operator API over real sockets: bad requests are refused cleanly, on TCP only the
//! operator's certificate gets through (every refusal counted), the bearer token is a second
//! factor (401s counted), and half-sent requests or stalled handshakes cannot lock a prompt
//! client out.

mod common;

use common::*;
use flowshift_controller::{ApiClient, Endpoint};
use flowshift_trust::pki::{Party, ScratchPki};
use std::io::{Read, Write};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

/// Sends `bytes` on a fresh connection and returns everything the API answers until it
/// closes.
fn raw(c: &Running, bytes: &[u8]) -> String {
    let mut s = connect(&c.api_endpoint);
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    wait_until("answer", WAIT, || match s.read_to_end(&mut out) {
        Ok(_) => Some(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(()),
        Err(_) => None,
    });
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_http_api_refuses_bad_requests_cleanly() {
    let dir = TempDir::new("http");
    let c = start_controller(config(
        &dir.sock("of.sock"),
        "127.0.0.1:0",
        &dir.sock("api.sock"),
    ));
    let (status, body) = c.api.request("GET", "/healthz", None).unwrap();
    assert_eq!(
        (status, body.as_slice()),
        (200, b"{\"status\":\"ok\"}\n".as_slice())
    );
    assert_eq!(c.api.request("GET", "/nope", None).unwrap().0, 404);
    assert_eq!(c.api.request("POST", "/status", None).unwrap().0, 405);
    assert_eq!(c.api.request("GET", "/migrate", None).unwrap().0, 405);
    assert_eq!(
        c.api
            .request("GET", "/migrations/x/report", None)
            .unwrap()
            .0,
        404
    );
    let (status, body) = c
        .api
        .request("POST", "/migrate", Some(b"{\"group\":1}"))
        .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("bad migrate request"));
    let huge = vec![b' '; flowshift_controller::http::MAX_BODY + 1];
    assert_eq!(
        c.api.request("POST", "/migrate", Some(&huge)).unwrap().0,
        413
    );

    // Raw protocol abuse: garbage, an oversized head; a chunked body is read like any other.
    let token = flowshift_controller::Token::load(c.token_file.as_deref().unwrap()).unwrap();
    assert!(raw(&c, b"\x00\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    let mut long = b"GET /status HTTP/1.1\r\nX: ".to_vec();
    long.extend(vec![b'a'; flowshift_controller::http::MAX_HEAD + 10]);
    assert!(raw(&c, &long).starts_with("HTTP/1.1 431"));
    let chunked = format!(
        "POST /migrate HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
        token.header_value()
    );
    let answer = raw(&c, chunked.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("bad migrate request"), "{answer}");
    let counters = c.api.counters().unwrap();
    // The bad JSON, the huge body, the garbage, the long head, the empty chunked request.
    assert_eq!(counters.http.bad_requests, 5, "{counters:?}");
    drop(c);
    assert!(
        !dir.0.join("api.sock").exists(),
        "the unix socket is removed on shutdown"
    );
}

#[test]
fn the_api_needs_the_token_from_the_configured_file() {
    let of = TempDir::new("of");
    let c = start_controller(config(&of.sock("of.sock"), "127.0.0.1:0", "127.0.0.1:0"));
    let path = c.token_file.clone().unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "created owner-only");
    // The operator's certificate without the token: 401.
    let no_token = ApiClient::new(c.api_endpoint.clone())
        .with_operator(&creds(Party::Operator))
        .unwrap();
    let refused = no_token.status().unwrap_err().to_string();
    assert!(refused.contains("401"), "{refused}");
    let wrong = no_token
        .clone()
        .with_token(Some(flowshift_controller::Token::generate().unwrap()));
    assert!(wrong.migrations().is_err());
    // Health checks need no token.
    assert_eq!(no_token.request("GET", "/healthz", None).unwrap().0, 200);
    let counters = c.api.counters().unwrap();
    assert_eq!(counters.http.unauthorized, 2, "{counters:?}");
    assert!(c.api.status().is_ok());
}

/// Polls the controller's HTTP counters until `done` holds (the server may count a refused
/// handshake just after the client has seen it).
fn http_counters(
    c: &Running,
    done: impl Fn(&flowshift_http::HttpCounters) -> bool,
) -> flowshift_http::HttpCounters {
    wait_until("the HTTP counters", WAIT, || {
        let h = c.api.counters().unwrap().http;
        done(&h).then_some(h)
    })
}

#[test]
fn a_tcp_api_admits_only_the_operators_certificate() {
    let of = TempDir::new("of");
    let c = start_controller(config(&of.sock("of.sock"), "127.0.0.1:0", "127.0.0.1:0"));
    let token = flowshift_controller::Token::load(c.token_file.as_deref().unwrap()).unwrap();
    let client = |p: Party| {
        ApiClient::new(c.api_endpoint.clone())
            .with_token(Some(token.clone()))
            .with_tls(Some(flowshift_http::ClientTls {
                config: creds(p).client_config().unwrap(),
                server_name: flowshift_trust::server_name(flowshift_trust::CONTROLLER_NAME)
                    .unwrap(),
            }))
    };
    // The operator gets through.
    assert!(client(Party::Operator).status().is_ok());
    // A node, the monitor, even the controller's own certificate: 403, each counted.
    for p in [Party::Node(1), Party::Monitor, Party::Controller] {
        let e = client(p).status().unwrap_err().to_string();
        assert!(e.contains("403"), "{p:?}: {e}");
        assert!(e.contains("operator.flowshift.internal"), "{p:?}: {e}");
    }
    // ApiClient::with_operator refuses other parties' credentials before connecting.
    assert!(
        ApiClient::new(c.api_endpoint.clone())
            .with_operator(&creds(Party::Node(1)))
            .is_err()
    );
    // No TLS at all, and an operator certificate from another CA: refused in the handshake.
    let plain = ApiClient::new(c.api_endpoint.clone()).with_token(Some(token.clone()));
    assert!(plain.status().is_err());
    let other = ScratchPki::new(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")),
        &[Party::Operator],
    )
    .unwrap();
    let foreign = flowshift_trust::Credentials::load(&other.files(Party::Operator)).unwrap();
    let impostor = ApiClient::new(c.api_endpoint.clone())
        .with_token(Some(token.clone()))
        .with_operator(&foreign)
        .unwrap();
    assert!(impostor.status().is_err());
    let h = http_counters(&c, |h| h.handshake_failures >= 2);
    assert_eq!((h.handshake_failures, h.forbidden), (2, 3), "{h:?}");
    assert_eq!(
        h.unauthorized, 0,
        "refused before the token is looked at: {h:?}"
    );
}

#[test]
fn half_sent_requests_cannot_lock_the_api_out() {
    let of = TempDir::new("of");
    let c = start_controller(config(&of.sock("of.sock"), "127.0.0.1:0", "127.0.0.1:0"));
    let limits = flowshift_controller::http::LIMITS;
    // Twice the overall bound of connections that send half a request head and stop, and as
    // many that never start their TLS handshake.
    let mut slow = Vec::new();
    let Endpoint::Tcp(addr) = &c.api_endpoint else {
        unreachable!()
    };
    for _ in 0..2 * limits.max_connections {
        let mut s = try_connect_tls(&c.api_endpoint, &creds(Party::Operator)).unwrap();
        s.write_all(b"POST /migrate HTTP/1.1\r\nHost: x\r\nContent-Le")
            .unwrap();
        slow.push(s);
        slow.push(Box::new(
            std::net::TcpStream::connect(addr.as_str()).unwrap(),
        ));
    }
    // Complete requests still get their answers, every time.
    for _ in 0..5 {
        let s = c.api.status().expect("the API answers a prompt client");
        assert_eq!(s.groups.len(), 1);
    }
    let counters = c.api.counters().unwrap();
    assert!(counters.http.evicted > 0, "{counters:?}");
    assert_eq!(counters.http.refused, 0, "{counters:?}");
}
