//! Mutual TLS for TCP endpoints, given as rustls configurations (this crate builds none
//! itself: the daemons get theirs from `flowshift_trust`).
//!
//! * Server side ([`ServerTls`]): every TCP connection must complete a TLS handshake within
//!   [`crate::Limits::handshake_timeout`] and present a client certificate that the
//!   configuration's verifier accepts (the cluster CA); then [`ServerTls::admit`] decides from
//!   the verified chain whether this peer may use the endpoint. A peer it refuses gets `403`
//!   on its one request and the connection closes. Each refusal is counted
//!   ([`crate::HttpCounters`]: `handshake_failures`, `handshake_timeouts`, `forbidden`).
//!   Unix socket connections skip TLS: the socket file's permissions admit the local peer.
//! * Client side ([`ClientTls`]): [`crate::Client`] connects over TLS to TCP endpoints,
//!   presenting its configuration's certificate and checking the server's certificate against
//!   [`ClientTls::server_name`].

use rustls::pki_types::{CertificateDer, ServerName};
use std::fmt;
use std::sync::Arc;

/// Decides from a peer's verified certificate chain (leaf first) whether it may use the
/// endpoint: `Ok(identity)` (for logs) or `Err(reason)` (sent in the 403 answer).
pub type Admit = Arc<dyn Fn(&[CertificateDer<'_>]) -> Result<String, String> + Send + Sync>;

/// TLS for a server's TCP connections.
#[derive(Clone)]
pub struct ServerTls {
    /// The server configuration. It should require a client certificate; a connection whose
    /// peer presents none is refused regardless (403, counted as `forbidden`).
    pub config: Arc<rustls::ServerConfig>,
    /// Who, among the peers the configuration verifies, may use the endpoint.
    pub admit: Admit,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// TLS for a client of TCP endpoints.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// The client configuration (trust anchors and the client's own certificate).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry.
    pub server_name: ServerName<'static>,
}

/// The outcome of a connection's handshake, for its requests.
#[derive(Clone, Debug)]
pub(crate) enum Caller {
    /// No TLS on this connection (a unix socket, or a server without [`ServerTls`]).
    Plain,
    /// A peer [`ServerTls::admit`] accepted, with its identity.
    Admitted(String),
    /// A verified peer [`ServerTls::admit`] refused, with the reason.
    Forbidden(String),
}

/// The identity of the TLS peer that sent a request (a request extension, present on
/// admitted TLS connections only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity(pub String);

/// Applies `admit` to a finished handshake's peer certificates (none: refused).
pub(crate) fn caller(tls: &ServerTls, certs: Option<&[CertificateDer<'_>]>) -> Caller {
    match certs {
        Some(c) if !c.is_empty() => match (tls.admit)(c) {
            Ok(id) => Caller::Admitted(id),
            Err(why) => Caller::Forbidden(why),
        },
        _ => Caller::Forbidden("no client certificate".into()),
    }
}
