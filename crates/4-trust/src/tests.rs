use super::pki::{self, Layout, Party};
use super::split;
use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SECS5: Duration = Duration::from_secs(5);

/// A fresh, unique folder under the system temp dir (removed by [`TempDir`]'s drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "flowshift-trust-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cluster(nodes: &[u16]) -> (TempDir, Layout) {
    let dir = TempDir::new();
    let mut parties: Vec<Party> = nodes.iter().map(|&i| Party::Node(i)).collect();
    parties.push(Party::Controller);
    pki::init(&dir.0, &parties, false).expect("pki init");
    let layout = Layout { dir: dir.0.clone() };
    (dir, layout)
}

fn creds(l: &Layout, p: Party) -> Credentials {
    Credentials::load(&l.files(p)).expect("credentials load")
}

/// Runs a server accepting one connection with `server`; the client connects with `client`
/// expecting `name`. Returns the server's view of the client chain, or the failure.
fn handshake(
    server: &Credentials,
    client: &Credentials,
    name: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let scfg = server.server_config().unwrap();
    let srv = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        split::accept(tcp, scfg, SECS5)
            .map(|(c, _)| split::peer_certificates(&c).to_vec())
            .map_err(|e| e.to_string())
    });
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let client_result = split::connect(
        tcp,
        client.client_config().unwrap(),
        server_name(name).unwrap(),
        SECS5,
    );
    let server_result = srv.join().unwrap();
    match (client_result, server_result) {
        (Ok(_), Ok(certs)) => Ok(certs),
        (Err(e), _) => Err(format!("client: {e}")),
        (_, Err(e)) => Err(format!("server: {e}")),
    }
}

#[test]
fn nodes_authenticate_each_other_and_names_bind_ids() {
    let (_d, l) = cluster(&[1, 2]);
    let (n1, n2) = (creds(&l, Party::Node(1)), creds(&l, Party::Node(2)));
    assert!(n1.is(&node_name(1)) && !n1.is(&node_name(2)));
    let seen = handshake(&n1, &n2, &node_name(1)).expect("handshake");
    assert!(peer_is(&seen, &node_name(2)));
    assert!(!peer_is(&seen, &node_name(1)));
    assert!(!peer_is(&seen, CONTROLLER_NAME));
    assert_eq!(peer_node(&seen, [1, 2, 3]), Some(2));
    assert_eq!(peer_node(&seen, [1, 3]), None);
    assert!(!peer_is(&[], &node_name(2)));
}

#[test]
fn the_switch_has_its_own_name_and_files() {
    let dir = TempDir::new();
    pki::init(&dir.0, &[Party::Controller, Party::Switch], false).expect("pki init");
    let l = Layout { dir: dir.0.clone() };
    assert!(l.files(Party::Switch).cert.ends_with("switch.pem"));
    let (ctl, sw) = (creds(&l, Party::Controller), creds(&l, Party::Switch));
    assert!(sw.is(SWITCH_NAME) && !sw.is(CONTROLLER_NAME) && !sw.is(&node_name(1)));
    // The switch connects to the controller's listener (client certificate required).
    let seen = handshake(&ctl, &sw, CONTROLLER_NAME).expect("handshake");
    assert!(peer_is(&seen, SWITCH_NAME));
    assert_eq!(peer_node(&seen, [1, 2]), None);
}

#[test]
fn operator_and_monitor_have_their_own_names_and_admission_checks_them() {
    let dir = TempDir::new();
    let parties = [
        Party::Controller,
        Party::Node(1),
        Party::Operator,
        Party::Monitor,
    ];
    pki::init(&dir.0, &parties, false).expect("pki init");
    let l = Layout { dir: dir.0.clone() };
    assert!(l.files(Party::Operator).cert.ends_with("operator.pem"));
    assert!(l.files(Party::Monitor).key.ends_with("monitor.key"));
    let ctl = creds(&l, Party::Controller);
    let op = handshake(&ctl, &creds(&l, Party::Operator), CONTROLLER_NAME).expect("operator");
    let mon = handshake(&ctl, &creds(&l, Party::Monitor), CONTROLLER_NAME).expect("monitor");
    let node = handshake(&ctl, &creds(&l, Party::Node(1)), CONTROLLER_NAME).expect("node");
    assert_eq!(
        admit_one_of(&op, &[OPERATOR_NAME]).as_deref(),
        Ok(OPERATOR_NAME)
    );
    assert_eq!(
        admit_one_of(&mon, &[MONITOR_NAME, OPERATOR_NAME]).as_deref(),
        Ok(MONITOR_NAME)
    );
    let refused = admit_one_of(&node, &[OPERATOR_NAME]).unwrap_err();
    assert!(refused.contains(OPERATOR_NAME), "{refused}");
    assert!(admit_one_of(&mon, &[OPERATOR_NAME]).is_err());
    assert!(admit_one_of(&[], &[OPERATOR_NAME]).is_err());
}

#[test]
fn a_server_with_the_wrong_name_is_refused() {
    let (_d, l) = cluster(&[1, 2]);
    let (n1, n2) = (creds(&l, Party::Node(1)), creds(&l, Party::Node(2)));
    // Node 2 wants node 3 but reaches node 1's listener.
    assert!(handshake(&n1, &n2, &node_name(3)).is_err());
}

#[test]
fn another_cas_certificate_is_refused_both_ways() {
    let (_d1, a) = cluster(&[1]);
    let (_d2, b) = cluster(&[1, 2]);
    let (a1, b2) = (creds(&a, Party::Node(1)), creds(&b, Party::Node(2)));
    // Same names, other CA: neither side accepts the other.
    assert!(handshake(&a1, &b2, &node_name(1)).is_err());
    assert!(handshake(&b2, &a1, &node_name(2)).is_err());
}

#[test]
fn split_halves_carry_both_directions() {
    let (_d, l) = cluster(&[1]);
    let (ctl, n1) = (creds(&l, Party::Controller), creds(&l, Party::Node(1)));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let scfg = ctl.server_config().unwrap();
    // The server echoes every byte, uppercased.
    let srv = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let (conn, tcp) = split::accept(tcp, scfg, SECS5).unwrap();
        assert!(peer_is(split::peer_certificates(&conn), &node_name(1)));
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf[..n].make_ascii_uppercase();
                    s.write_all(&buf[..n]).unwrap();
                }
            }
        }
    });
    let tcp = TcpStream::connect(addr).unwrap();
    let (conn, tcp) = split::connect(
        tcp,
        n1.client_config().unwrap(),
        server_name(CONTROLLER_NAME).unwrap(),
        SECS5,
    )
    .unwrap();
    let (mut rx, mut tx) = split::split(conn, tcp).unwrap();
    let total = 200_000usize;
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        while got.len() < total {
            let n = rx.read(&mut buf).unwrap();
            assert!(n > 0, "early end after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let msg: Vec<u8> = (0..total).map(|i| b"abcdefgh"[i % 8]).collect();
    for chunk in msg.chunks(1000) {
        tx.write_all(chunk).unwrap();
    }
    let got = reader.join().unwrap();
    assert_eq!(got, msg.to_ascii_uppercase());
    tx.close();
    srv.join().unwrap();
}

#[test]
fn pki_refuses_to_overwrite_and_issues_with_an_existing_ca() {
    let (_d, l) = cluster(&[1]);
    assert!(matches!(
        pki::init(&l.dir, &[Party::Node(1)], false),
        Err(TrustError::Exists(_))
    ));
    assert!(matches!(
        pki::issue(&l.dir, &[Party::Node(1)], false),
        Err(TrustError::Exists(_))
    ));
    pki::issue(&l.dir, &[Party::Node(9)], false).expect("issue a new node");
    let (n1, n9) = (creds(&l, Party::Node(1)), creds(&l, Party::Node(9)));
    let seen = handshake(&n1, &n9, &node_name(1)).expect("new node is trusted");
    assert_eq!(peer_node(&seen, [1, 9]), Some(9));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(l.files(Party::Node(9)).key)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "keys are private");
}

#[test]
fn mismatched_or_missing_files_are_clear_errors() {
    let (_d, l) = cluster(&[1, 2]);
    let mut f = l.files(Party::Node(1));
    f.key = l.files(Party::Node(2)).key;
    assert!(Credentials::load(&f).is_err(), "key of another cert");
    let mut f = l.files(Party::Node(1));
    f.ca = l.dir.join("missing.pem");
    let e = Credentials::load(&f).unwrap_err().to_string();
    assert!(e.contains("missing.pem"), "{e}");
    let mut f = l.files(Party::Node(1));
    f.ca = f.cert.clone();
    f.cert = l.dir.join(pki::CA_KEY);
    assert!(Credentials::load(&f).is_err(), "a key is not a certificate");
}

#[test]
fn a_silent_client_cannot_hold_the_handshake_open() {
    let (_d, l) = cluster(&[1]);
    let scfg = creds(&l, Party::Node(1)).server_config().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Connects and sends half a ClientHello, then nothing.
    let _client = {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
        s
    };
    let (tcp, _) = listener.accept().unwrap();
    let e = split::accept(tcp, scfg, Duration::from_millis(300)).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ),
        "{e}"
    );
}
