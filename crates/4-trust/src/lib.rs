//! The cluster's trust: one small CA, a certificate per node and one for the controller (and
//! the switch, the operator's CLI and the metrics scraper), and the mutual-TLS configurations
//! every management-network listener and client uses.
//!
//! **Identity is a certificate name.** A node's certificate carries the DNS name
//! [`node_name`]`(id)` (`node-7.flowshift.internal`), the controller's [`CONTROLLER_NAME`], the
//! operator's [`OPERATOR_NAME`] (the operator API admits only it), the metrics scraper's
//! [`MONITOR_NAME`] (a node's `/metrics` admits it and the operator); all are signed by the
//! cluster CA ([`pki`]). A listener accepts a connection only when the peer
//! presents a certificate chaining to the CA ([`Credentials::server_config`]); an id the peer
//! *states* (a hello) is then checked against its certificate with [`peer_is`], so one node's
//! key cannot speak for another. A client checks the server's name the usual way (the name it
//! expects is the `ServerName` of its [`Credentials::client_config`] connection).
//!
//! The crypto provider is *ring* (builds with a C compiler only); TLS 1.3 only, no session
//! tickets or resumption (every connection proves its identity afresh).

pub mod pki;
pub mod split;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The DNS-name suffix of every identity in the cluster (a reserved, never-resolved domain).
pub const DOMAIN: &str = "flowshift.internal";
/// The controller's certificate name.
pub const CONTROLLER_NAME: &str = "controller.flowshift.internal";
/// The OpenFlow switch's certificate name (for an `ssl:` controller connection; Open vSwitch
/// presents it, the controller checks it).
pub const SWITCH_NAME: &str = "switch.flowshift.internal";
/// The operator's certificate name: the `flowshift` CLI presents it to the operator API.
pub const OPERATOR_NAME: &str = "operator.flowshift.internal";
/// The metrics scraper's certificate name (Prometheus presents it to a node's `/metrics`).
pub const MONITOR_NAME: &str = "monitor.flowshift.internal";

/// The certificate name of node `id`.
pub fn node_name(id: u16) -> String {
    format!("node-{id}.{DOMAIN}")
}

/// A name as rustls wants it for a client connection (checked against the server's cert).
pub fn server_name(name: &str) -> Result<ServerName<'static>, TrustError> {
    ServerName::try_from(name.to_string()).map_err(|_| TrustError::BadName(name.to_string()))
}

/// What went wrong loading or using credentials.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
    },
    /// rustls refused the configuration (e.g. a key that does not match its certificate).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client verifier could not be built (e.g. no usable CA).
    #[error("client verifier: {0}")]
    Verifier(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// Not a valid DNS name.
    #[error("{0:?} is not a valid certificate name")]
    BadName(String),
    /// Refusing to overwrite existing files.
    #[error("{0} exists (pass --force to overwrite)")]
    Exists(PathBuf),
}

/// Where a party's credentials are (`[tls]` in node and cluster configurations); relative
/// paths are resolved against the configuration file's folder by the loader.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM): the only trust anchor.
    pub ca: PathBuf,
    /// This party's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// This party's private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The same files with relative paths taken from `base`.
    pub fn resolved(&self, base: &Path) -> TlsFiles {
        let at = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        TlsFiles {
            ca: at(&self.ca),
            cert: at(&self.cert),
            key: at(&self.key),
        }
    }

    /// The files `pki init` writes for `name` in `dir` (see [`pki::Layout`]).
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join(pki::CA_CERT),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

/// A party's loaded credentials.
#[derive(Clone, Debug)]
pub struct Credentials {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

fn read(path: &Path) -> Result<Vec<u8>, TrustError> {
    std::fs::read(path).map_err(|source| TrustError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// *ring*'s provider. rustls 0.23.48 deprecates it for lacking post-quantum key exchange
/// (aws-lc-rs has it but needs cmake to build): a known limitation, see README "Security".
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Credentials {
    /// Reads the CA, the chain and the key.
    pub fn load(files: &TlsFiles) -> Result<Credentials, TrustError> {
        let pem_err = |path: &Path, what| TrustError::Pem {
            path: path.to_path_buf(),
            what,
        };
        let ca = read(&files.ca)?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca) {
            let c = c.map_err(|_| pem_err(&files.ca, "unreadable PEM certificate"))?;
            roots
                .add(c)
                .map_err(|_| pem_err(&files.ca, "not a usable CA certificate"))?;
        }
        if roots.is_empty() {
            return Err(pem_err(&files.ca, "no CA certificate"));
        }
        let chain = CertificateDer::pem_slice_iter(&read(&files.cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| pem_err(&files.cert, "unreadable PEM certificate"))?;
        if chain.is_empty() {
            return Err(pem_err(&files.cert, "no certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
            .map_err(|_| pem_err(&files.key, "no PEM private key"))?;
        let creds = Credentials {
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
        };
        // Fail now, not at the first connection, if the key does not match.
        creds.server_config()?;
        Ok(creds)
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// Whether these credentials' own certificate carries `name`.
    pub fn is(&self, name: &str) -> bool {
        peer_is(std::slice::from_ref(self.leaf()), name)
    }

    /// A server configuration that requires a client certificate chaining to the CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TrustError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TrustError::Verifier(e.to_string()))?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.send_tls13_tickets = 0;
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Arc::new(cfg))
    }

    /// A client configuration that trusts only the CA and presents this party's certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TrustError> {
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(cfg))
    }
}

/// Whether the (already CA-verified) peer certificate chain `certs` is valid for `name`: the
/// check that binds a stated identity to the certificate. False on an empty chain or a
/// certificate that cannot be parsed.
pub fn peer_is(certs: &[CertificateDer<'_>], name: &str) -> bool {
    let (Some(leaf), Ok(name)) = (certs.first(), ServerName::try_from(name)) else {
        return false;
    };
    match webpki::EndEntityCert::try_from(leaf) {
        Ok(ee) => ee.verify_is_valid_for_subject_name(&name).is_ok(),
        Err(_) => false,
    }
}

/// Which of `names` a (CA-verified) peer certificate chain carries: `Ok(name)` for the first
/// one, else `Err` saying whom the endpoint admits. For `flowshift_http::ServerTls::admit`.
pub fn admit_one_of(certs: &[CertificateDer<'_>], names: &[&str]) -> Result<String, String> {
    names
        .iter()
        .find(|n| peer_is(certs, n))
        .map(|n| (*n).to_owned())
        .ok_or_else(|| format!("the certificate names none of {}", names.join(", ")))
}

/// The node id a (CA-verified) peer certificate names among `candidates`, if exactly one.
pub fn peer_node(
    certs: &[CertificateDer<'_>],
    candidates: impl IntoIterator<Item = u16>,
) -> Option<u16> {
    let mut found = None;
    for id in candidates {
        if peer_is(certs, &node_name(id)) {
            if found.is_some() {
                return None;
            }
            found = Some(id);
        }
    }
    found
}

#[cfg(test)]
mod tests;
