//! A small PKI for one cluster (`flowshift pki init` / `pki issue`): an ECDSA P-256 CA and
//! leaf certificates whose DNS names are the parties' identities ([`crate::node_name`],
//! [`crate::CONTROLLER_NAME`], [`crate::SWITCH_NAME`], [`crate::OPERATOR_NAME`],
//! [`crate::MONITOR_NAME`]).
//!
//! Files in the PKI folder ([`Layout`]): `ca.pem` (give to every party), `ca.key` (keep
//! offline; needed only to issue), and `<name>.pem` / `<name>.key` per party, e.g.
//! `node-3.pem`, `controller.key`, `switch.pem`, `operator.pem`, `monitor.key`. Keys are written with mode 0600. Rotation: issue a new
//! certificate for a party (`pki issue --force`) and restart it; a new CA means re-issuing
//! every party.

use crate::{CONTROLLER_NAME, MONITOR_NAME, OPERATOR_NAME, SWITCH_NAME, TrustError, node_name};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The CA certificate's file name.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name.
pub const CA_KEY: &str = "ca.key";
/// Validity of issued certificates, in days.
pub const LEAF_DAYS: i64 = 825;
/// Validity of the CA, in days.
pub const CA_DAYS: i64 = 3650;

/// A party of the cluster: what its files are called and the name its certificate carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Party {
    /// A NAT node.
    Node(u16),
    /// The controller.
    Controller,
    /// The OpenFlow switch (Open vSwitch's `ssl:` connection to the controller).
    Switch,
    /// The operator (the `flowshift` CLI calling the operator API over TCP).
    Operator,
    /// The metrics scraper (Prometheus scraping the nodes' `/metrics`).
    Monitor,
}

impl Party {
    /// File stem in the PKI folder (`node-3`, `controller`).
    pub fn stem(self) -> String {
        match self {
            Party::Node(id) => format!("node-{id}"),
            Party::Controller => "controller".into(),
            Party::Switch => "switch".into(),
            Party::Operator => "operator".into(),
            Party::Monitor => "monitor".into(),
        }
    }

    /// The certificate's DNS name.
    pub fn name(self) -> String {
        match self {
            Party::Node(id) => node_name(id),
            Party::Controller => CONTROLLER_NAME.into(),
            Party::Switch => SWITCH_NAME.into(),
            Party::Operator => OPERATOR_NAME.into(),
            Party::Monitor => MONITOR_NAME.into(),
        }
    }
}

/// The PKI folder.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The folder.
    pub dir: PathBuf,
}

impl Layout {
    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }
    /// The CA key.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join(CA_KEY)
    }
    /// A party's credential files.
    pub fn files(&self, p: Party) -> crate::TlsFiles {
        crate::TlsFiles::in_dir(&self.dir, &p.stem())
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn write_file(path: &Path, text: &str, secret: bool, force: bool) -> Result<(), TrustError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TrustError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() && !force {
        return Err(TrustError::Exists(path.to_path_buf()));
    }
    // Write beside and rename: a reader never sees half a key.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn read_text(path: &Path) -> Result<String, TrustError> {
    std::fs::read_to_string(path).map_err(|source| TrustError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates the folder, a new CA and one certificate per party. Refuses to overwrite any
/// existing file unless `force`. Returns the files written.
pub fn init(dir: &Path, parties: &[Party], force: bool) -> Result<Vec<PathBuf>, TrustError> {
    std::fs::create_dir_all(dir).map_err(|source| TrustError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let layout = Layout {
        dir: dir.to_path_buf(),
    };
    if !force {
        for p in [layout.ca_cert(), layout.ca_key()] {
            if p.exists() {
                return Err(TrustError::Exists(p));
            }
        }
    }
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "flowshift cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_DAYS);
    let ca_cert = params.self_signed(&ca_key)?;
    write_file(&layout.ca_cert(), &ca_cert.pem(), false, force)?;
    write_file(&layout.ca_key(), &ca_key.serialize_pem(), true, force)?;
    let mut written = vec![layout.ca_cert(), layout.ca_key()];
    written.extend(issue(dir, parties, force)?);
    Ok(written)
}

/// Issues certificates for `parties` with the CA in `dir`. Refuses to overwrite a party's
/// files unless `force`. Returns the files written.
pub fn issue(dir: &Path, parties: &[Party], force: bool) -> Result<Vec<PathBuf>, TrustError> {
    let layout = Layout {
        dir: dir.to_path_buf(),
    };
    let ca_key = KeyPair::from_pem(&read_text(&layout.ca_key())?)?;
    let issuer = Issuer::from_ca_cert_pem(&read_text(&layout.ca_cert())?, &ca_key)?;
    let mut written = Vec::new();
    for &p in parties {
        let files = layout.files(p);
        if !force {
            for f in [&files.cert, &files.key] {
                if f.exists() {
                    return Err(TrustError::Exists(f.clone()));
                }
            }
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec![p.name()])?;
        params.distinguished_name.push(DnType::CommonName, p.name());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Nodes and the controller both accept and open connections.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_DAYS);
        let cert = params.signed_by(&key, &issuer)?;
        write_file(&files.cert, &cert.pem(), false, force)?;
        write_file(&files.key, &key.serialize_pem(), true, force)?;
        written.extend([files.cert, files.key]);
    }
    Ok(written)
}

/// A PKI in a fresh folder under `base` for `parties`, removed when dropped: for tests and
/// the testbed, which need real credentials for throw-away clusters.
#[derive(Debug)]
pub struct ScratchPki {
    layout: Layout,
}

impl ScratchPki {
    /// Creates `base/pki-<pid>-<n>` with a new CA and the parties' certificates.
    pub fn new(base: &Path, parties: &[Party]) -> Result<ScratchPki, TrustError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = base.join(format!(
            "pki-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        init(&dir, parties, true)?;
        Ok(ScratchPki {
            layout: Layout { dir },
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// A party's credential files.
    pub fn files(&self, p: Party) -> crate::TlsFiles {
        self.layout.files(p)
    }

    /// A party's files as an inline TOML table (`{ ca = "..", cert = "..", key = ".." }`).
    pub fn toml(&self, p: Party) -> String {
        let f = self.files(p);
        format!(
            "{{ ca = {:?}, cert = {:?}, key = {:?} }}",
            f.ca.display().to_string(),
            f.cert.display().to_string(),
            f.key.display().to_string()
        )
    }
}

impl Drop for ScratchPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.layout.dir);
    }
}
