//! `/metrics` over a real socket (unprivileged): the optional bearer token, and slow or
//! half-sent scrapes that cannot block a prompt one.

use axum::http::Method;
use flowshift_control::api::NodeStatus;
use flowshift_http::{Client, Endpoint, Token};
use flowshift_node::metrics::{self, LIMITS};
use flowshift_node::stats::SnapshotCell;
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
    (metrics::start(listener, cell, token).unwrap(), ep)
}

fn scrape(client: &Client) -> (u16, String) {
    let (status, body) = client.request(Method::GET, "/metrics", None).unwrap();
    (status, String::from_utf8(body).unwrap())
}

#[test]
fn scrapes_need_the_token_when_one_is_configured() {
    let token = Token::generate().unwrap();
    let (server, ep) = serve(Some(token.clone()));
    let anonymous = Client::new(ep.clone());
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
fn slow_scrapers_cannot_block_a_prompt_one() {
    let (server, ep) = serve(None);
    let Endpoint::Tcp(addr) = &ep else {
        unreachable!()
    };
    // Three times the bound of scrapers that send half a request and stall.
    let mut slow = Vec::new();
    for _ in 0..3 * LIMITS.max_connections {
        let mut s = TcpStream::connect(addr.as_str()).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHo").unwrap();
        slow.push(s);
    }
    let client = Client::new(ep.clone());
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
