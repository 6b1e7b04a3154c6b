//! `/metrics` over a real socket (unprivileged): mutual TLS admitting the monitor and the
//! operator only (refusals counted), the optional bearer token, and slow or half-sent scrapes
//! that cannot block a prompt one.

mod common;

use axum::http::Method;
use common::{metrics_client, pki};
use flowshift_control::api::NodeStatus;
use flowshift_http::{Client, Endpoint, Token};
use flowshift_node::metrics::{self, LIMITS};
use flowshift_node::stats::SnapshotCell;
use flowshift_trust::pki::Party;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

fn serve(token: Option<Token>) -> (metrics::MetricsServer, Endpoint) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ep = Endpoint::Tcp(listener.local_addr().unwrap().to_string());
    let cell = Arc::new(SnapshotCell::default());
    let mut st = NodeStatus {
        id: flowshift_migration::InstanceId(4),
        ..NodeStatus::default()
    };
    st.counters.io.rx_packets = 12;
    assert!(cell.try_publish(st));
    let creds = flowshift_trust::Credentials::load(&pki().files(Party::Node(1))).unwrap();
    let tls = metrics::server_tls(&creds).unwrap();
    (metrics::start(listener, cell, tls, token).unwrap(), ep)
}

/// The monitor's client of node 1's endpoint `ep`.
fn monitor(ep: &Endpoint) -> Client {
    metrics_client(ep.clone(), 1, Party::Monitor)
}

fn scrape(client: &Client) -> (u16, String) {
    let (status, body) = client.request(Method::GET, "/metrics", None).unwrap();
    (status, String::from_utf8(body).unwrap())
}

#[test]
fn scrapes_need_the_token_when_one_is_configured() {
    let token = Token::generate().unwrap();
    let (server, ep) = serve(Some(token.clone()));
    let anonymous = monitor(&ep);
    assert_eq!(scrape(&anonymous).0, 401);
    let (status, text) = scrape(&anonymous.clone().with_token(Some(token)));
    assert_eq!(status, 200);
    assert!(text.contains("flowshift_rx_packets_total 12\n"), "{text}");
    assert!(
        text.contains("flowshift_uptime_seconds{node=\"4\"} 0"),
        "{text}"
    );
    // The refused scrape is counted on the endpoint itself.
    assert!(
        text.contains("flowshift_metrics_http_unauthorized_total 1\n"),
        "{text}"
    );
    server.stop();
}

#[test]
fn only_the_monitor_and_the_operator_may_scrape() {
    let (server, ep) = serve(None);
    assert_eq!(scrape(&monitor(&ep)).0, 200);
    assert_eq!(
        scrape(&metrics_client(ep.clone(), 1, Party::Operator)).0,
        200
    );
    // Another node, the controller: valid certificates, wrong identity: 403.
    for p in [Party::Node(2), Party::Controller] {
        let (status, body) = scrape(&metrics_client(ep.clone(), 1, p));
        assert_eq!(status, 403, "{p:?}");
        assert!(body.contains("monitor.flowshift.internal"), "{body}");
    }
    // Plain HTTP: refused in the handshake.
    assert!(
        Client::new(ep.clone())
            .request(Method::GET, "/metrics", None)
            .is_err()
    );
    // The refusals are counted on the endpoint itself (the handshake failure may be counted
    // just after the client saw it: scrape until it shows).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, text) = scrape(&monitor(&ep));
        assert!(
            text.contains("flowshift_metrics_http_forbidden_total 2\n"),
            "{text}"
        );
        if text.contains("flowshift_metrics_http_handshake_failures_total 1\n") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    server.stop();
}

#[test]
fn slow_scrapers_cannot_block_a_prompt_one() {
    let (server, ep) = serve(None);
    let Endpoint::Tcp(addr) = &ep else {
        unreachable!()
    };
    // Three times the bound of scrapers that stall in the TLS handshake (half a ClientHello).
    let mut slow = Vec::new();
    for _ in 0..3 * LIMITS.max_connections {
        let mut s = TcpStream::connect(addr.as_str()).unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
        slow.push(s);
    }
    let client = monitor(&ep);
    for _ in 0..3 {
        let (status, text) = scrape(&client);
        assert_eq!(status, 200);
        assert!(text.contains("flowshift_rx_packets_total 12\n"));
    }
    // The other endpoints answer 404, and scrapes work without a token when none is set.
    assert_eq!(client.request(Method::GET, "/", None).unwrap().0, 404);
    let (_, text) = scrape(&client);
    let evicted = text
        .lines()
        .find_map(|l| l.strip_prefix("flowshift_metrics_http_evicted_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("the evicted counter");
    assert!(evicted > 0, "{text}");
    drop(slow);
    server.stop();
}
