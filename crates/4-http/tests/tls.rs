//! Mutual TLS on a TCP endpoint over real sockets: who gets in, who is refused and how each
//! refusal is counted, and that stalled handshakes cannot hold the connection slots.

use axum::Router;
use axum::http::Method;
use axum::routing::get;
use flowshift_http::{
    Auth, Client, ClientTls, Endpoint, HttpCounters, Limits, Listener, PeerIdentity,
    ServerCounters, ServerTls, Token,
};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

#[allow(deprecated)] // ring: see flowshift_trust's provider()
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA and the leaves it issues.
struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf: its chain and key.
struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        Arc::new(roots)
    }

    fn server_config(&self, me: &Leaf) -> Arc<ServerConfig> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots(), provider())
            .build()
            .unwrap();
        let cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(me.chain.clone(), me.key.clone_key())
            .unwrap();
        Arc::new(cfg)
    }

    /// A client trusting this CA, presenting `me` (or no certificate).
    fn client_tls(&self, me: Option<&Leaf>, server: &str) -> ClientTls {
        let b = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(self.roots());
        let cfg = match me {
            Some(l) => b
                .with_client_auth_cert(l.chain.clone(), l.key.clone_key())
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        ClientTls {
            config: Arc::new(cfg),
            server_name: ServerName::try_from(server.to_owned()).unwrap(),
        }
    }
}

/// A server on 127.0.0.1 in its own thread: `GET /who` answers the caller's identity.
struct Server {
    endpoint: Endpoint,
    counters: Arc<ServerCounters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Admits only the certificate `admitted` (by its bytes), as "operator".
    fn start(config: Arc<ServerConfig>, admitted: CertificateDer<'static>, limits: Limits) -> Self {
        Server::start_with(config, admitted, limits, None)
    }

    fn start_with(
        config: Arc<ServerConfig>,
        admitted: CertificateDer<'static>,
        limits: Limits,
        token: Option<Token>,
    ) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = Endpoint::Tcp(std_listener.local_addr().unwrap().to_string());
        let counters = Arc::new(ServerCounters::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let c = counters.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = Listener::from_std(std_listener).unwrap();
                let app = Router::new().route(
                    "/who",
                    get(|req: axum::extract::Request| async move {
                        match req.extensions().get::<PeerIdentity>() {
                            Some(PeerIdentity(id)) => id.clone(),
                            None => "nobody".to_owned(),
                        }
                    }),
                );
                let admit: flowshift_http::Admit =
                    Arc::new(move |certs: &[CertificateDer<'_>]| {
                        if certs[0].as_ref() == admitted.as_ref() {
                            Ok("operator".to_owned())
                        } else {
                            Err("only the operator may call".to_owned())
                        }
                    });
                let auth = Auth {
                    tls: Some(ServerTls { config, admit }),
                    token,
                    open_paths: Vec::new(),
                };
                flowshift_http::serve(listener, app, limits, auth, c, async {
                    let _ = stopped.await;
                })
                .await;
            });
        });
        Server {
            endpoint,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn counters(&self) -> HttpCounters {
        self.counters.snapshot()
    }

    fn client(&self, tls: Option<ClientTls>) -> Client {
        Client::new(self.endpoint.clone())
            .with_tls(tls)
            .with_timeout(Duration::from_secs(10))
    }

    fn addr(&self) -> String {
        self.endpoint.to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Polls the server's counters until `done` holds (a server task may count a refusal just
/// after the client has seen it); panics after 30 s.
fn wait_for(srv: &Server, done: impl Fn(&HttpCounters) -> bool) -> HttpCounters {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = srv.counters();
        if done(&c) {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "counters stuck at {c:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads from a raw connection until the server closes it.
fn wait_closed(mut s: std::net::TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

#[test]
fn only_the_admitted_certificate_from_the_cluster_ca_gets_through() {
    let ca = Ca::new();
    let server_leaf = ca.leaf("controller.flowshift.internal");
    let operator = ca.leaf("operator.flowshift.internal");
    let node = ca.leaf("node-1.flowshift.internal");
    let srv = Server::start(
        ca.server_config(&server_leaf),
        operator.chain[0].clone(),
        Limits::default(),
    );
    let server_name = "controller.flowshift.internal";

    // The operator gets through, and the handler sees its identity.
    let ok = srv.client(Some(ca.client_tls(Some(&operator), server_name)));
    let (status, body) = ok.request(Method::GET, "/who", None).unwrap();
    assert_eq!((status, body.as_slice()), (200, b"operator".as_slice()));

    // A valid certificate naming another party: 403, counted.
    let wrong = srv.client(Some(ca.client_tls(Some(&node), server_name)));
    let (status, body) = wrong.request(Method::GET, "/who", None).unwrap();
    assert_eq!(status, 403);
    assert!(
        String::from_utf8_lossy(&body).contains("only the operator may call"),
        "{body:?}"
    );
    assert_eq!(srv.counters().forbidden, 1);

    // No client certificate, and one from another CA: refused in the handshake, counted.
    let anonymous = srv.client(Some(ca.client_tls(None, server_name)));
    assert!(anonymous.request(Method::GET, "/who", None).is_err());
    let other = Ca::new();
    let impostor_leaf = other.leaf("operator.flowshift.internal");
    let mut impostor = ca.client_tls(None, server_name);
    impostor.config = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(ca.roots())
            .with_client_auth_cert(impostor_leaf.chain.clone(), impostor_leaf.key.clone_key())
            .unwrap(),
    );
    assert!(
        srv.client(Some(impostor))
            .request(Method::GET, "/who", None)
            .is_err()
    );
    // Plain HTTP on the TLS port is not a handshake either.
    assert!(srv.client(None).request(Method::GET, "/who", None).is_err());
    let c = wait_for(&srv, |c| c.handshake_failures >= 3);
    assert_eq!(c.handshake_failures, 3, "{c:?}");
    assert_eq!(c.forbidden, 1, "{c:?}");

    // The client checks the server's name: a server certificate for another name fails.
    let elsewhere = srv.client(Some(
        ca.client_tls(Some(&operator), "other.flowshift.internal"),
    ));
    let e = elsewhere.request(Method::GET, "/who", None).unwrap_err();
    assert!(e.to_string().contains("TLS handshake"), "{e}");
    let c = wait_for(&srv, |c| c.handshake_failures >= 4);
    assert_eq!(
        (c.connections, c.handshake_failures, c.forbidden),
        (6, 4, 1)
    );
}

#[test]
fn the_bearer_token_is_a_second_factor_after_the_certificate() {
    let ca = Ca::new();
    let server_leaf = ca.leaf("controller.flowshift.internal");
    let operator = ca.leaf("operator.flowshift.internal");
    let token = Token::generate().unwrap();
    let srv = Server::start_with(
        ca.server_config(&server_leaf),
        operator.chain[0].clone(),
        Limits::default(),
        Some(token.clone()),
    );
    let tls = ca.client_tls(Some(&operator), "controller.flowshift.internal");
    let without = srv.client(Some(tls.clone()));
    assert_eq!(without.request(Method::GET, "/who", None).unwrap().0, 401);
    let with = without.with_token(Some(token));
    assert_eq!(with.request(Method::GET, "/who", None).unwrap().0, 200);
    assert_eq!(srv.counters().unauthorized, 1);
}

#[test]
fn stalled_handshakes_time_out_and_cannot_hold_the_slots() {
    let ca = Ca::new();
    let server_leaf = ca.leaf("controller.flowshift.internal");
    let operator = ca.leaf("operator.flowshift.internal");
    let limits = Limits {
        max_connections: 4,
        max_per_client: 4,
        // Long enough that the stalled connections below are still handshaking when the
        // prompt client arrives: only eviction can make room for it.
        handshake_timeout: Duration::from_secs(600),
        ..Limits::default()
    };
    let srv = Server::start(
        ca.server_config(&server_leaf),
        operator.chain[0].clone(),
        limits,
    );
    // Three times the bound of connections that never start their handshake.
    let stalled: Vec<_> = (0..3 * limits.max_connections)
        .map(|_| std::net::TcpStream::connect(srv.addr()).unwrap())
        .collect();
    let ok = srv.client(Some(
        ca.client_tls(Some(&operator), "controller.flowshift.internal"),
    ));
    for _ in 0..3 {
        assert_eq!(ok.request(Method::GET, "/who", None).unwrap().0, 200);
    }
    assert!(srv.counters().evicted > 0, "{:?}", srv.counters());
    assert_eq!(srv.counters().refused, 0);
    drop(stalled);
    drop(srv);

    // With a short deadline, a stalled handshake is closed by the server and counted.
    let limits = Limits {
        handshake_timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    let srv = Server::start(
        ca.server_config(&server_leaf),
        operator.chain[0].clone(),
        limits,
    );
    wait_closed(std::net::TcpStream::connect(srv.addr()).unwrap());
    assert_eq!(srv.counters().handshake_timeouts, 1);
}
