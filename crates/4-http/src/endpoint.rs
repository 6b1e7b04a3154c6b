//! Where to listen or connect: TCP `HOST:PORT` or a unix stream socket path.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Longest unix socket path (`sun_path` minus the terminating NUL), in bytes.
const SUN_PATH_MAX: usize = 107;

/// Where to listen or connect: TCP `HOST:PORT` or a unix stream socket.
/// Parsed from `unix:/path`, `tcp:HOST:PORT` or `HOST:PORT` (host: a name, an IPv4 address
/// or a bracketed IPv6 address); displayed as `unix:/path` or `HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Endpoint {
    /// TCP, as `HOST:PORT`.
    Tcp(String),
    /// A unix stream socket at this path.
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{s:?}: empty unix socket path"));
            }
            if path.len() > SUN_PATH_MAX {
                return Err(format!(
                    "{s:?}: unix socket path longer than {SUN_PATH_MAX} bytes"
                ));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let hp = s.strip_prefix("tcp:").unwrap_or(s);
        let (host, port) = hp
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected HOST:PORT, tcp:HOST:PORT or unix:/path"))?;
        if host.is_empty() {
            return Err(format!("{s:?}: empty host"));
        }
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(format!(
                "{s:?}: write IPv6 addresses in brackets, [::1]:PORT"
            ));
        }
        port.parse::<u16>()
            .map_err(|_| format!("{s:?}: bad port {port:?}"))?;
        Ok(Endpoint::Tcp(hp.to_owned()))
    }
}

impl Endpoint {
    /// Whether this is TCP port 0 (the system picks a free port when binding).
    pub fn is_ephemeral(&self) -> bool {
        matches!(self, Endpoint::Tcp(hp) if hp.ends_with(":0"))
    }
}

impl TryFrom<String> for Endpoint {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.to_string()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(hp) => f.write_str(hp),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}
