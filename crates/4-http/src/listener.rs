//! Listeners on TCP or unix endpoints and the streams they accept.
//!
//! A [`Listener`] yields a [`Stream`] and the [`Peer`] it came from. A TLS acceptor slots in
//! between: it takes the accepted [`Stream`] and returns its own stream, which
//! [`crate::server`] serves the same way (it is generic over the I/O type).

use crate::endpoint::Endpoint;
use anyhow::{Context, Result, bail};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// The read half of a split connection.
pub type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
/// The write half of a split connection.
pub type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// Who connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A local process on the unix socket (its file permissions admitted it).
    Unix,
}

impl Peer {
    /// The key per-client limits count by: the IP address (every port of a host is one
    /// client), or `None` for the unix socket's local processes.
    pub fn client(&self) -> Option<IpAddr> {
        match self {
            Peer::Tcp(a) => Some(a.ip()),
            Peer::Unix => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

/// An accepted connection.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix stream socket.
    Unix(UnixStream),
}

impl Stream {
    /// Splits the stream into owned halves.
    pub fn into_split(self) -> (BoxRead, BoxWrite) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Who may connect to a unix socket listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnixMode {
    /// As the process's umask leaves the socket file.
    Umask,
    /// The owner only (mode 0600): set before the socket appears under its name, so no
    /// other user can connect, even briefly.
    OwnerOnly,
}

/// A bound listener. A unix listener removes its socket file when dropped.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix stream socket bound at `path`.
    Unix {
        /// The listener.
        listener: UnixListener,
        /// Its socket file.
        path: PathBuf,
    },
}

impl Listener {
    /// Binds `ep` (inside a tokio runtime). A unix socket file left behind by a dead process
    /// is replaced; one that a live process listens on is an error.
    pub async fn bind(ep: &Endpoint, mode: UnixMode) -> Result<Listener> {
        match ep {
            Endpoint::Tcp(hp) => {
                let l = TcpListener::bind(hp.as_str())
                    .await
                    .with_context(|| format!("binding TCP {hp}"))?;
                Ok(Listener::Tcp(l))
            }
            Endpoint::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = match mode {
                    UnixMode::Umask => UnixListener::bind(path)
                        .with_context(|| format!("binding unix socket {}", path.display()))?,
                    UnixMode::OwnerOnly => bind_owner_only(path)?,
                };
                Ok(Listener::Unix {
                    listener,
                    path: path.clone(),
                })
            }
        }
    }

    /// Binds a TCP address given as a socket address (inside a tokio runtime).
    pub async fn bind_tcp(addr: SocketAddr) -> Result<Listener> {
        Listener::bind(&Endpoint::Tcp(addr.to_string()), UnixMode::Umask).await
    }

    /// Wraps a bound standard TCP listener (inside a tokio runtime).
    pub fn from_std(l: std::net::TcpListener) -> Result<Listener> {
        l.set_nonblocking(true)?;
        Ok(Listener::Tcp(TcpListener::from_std(l)?))
    }

    /// The bound address (with the actual port when port 0 was asked for).
    pub fn local(&self) -> Endpoint {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => Endpoint::Tcp(a.to_string()),
                Err(_) => Endpoint::Tcp("unknown:0".into()),
            },
            Listener::Unix { path, .. } => Endpoint::Unix(path.clone()),
        }
    }

    /// Accepts one connection (TCP with `TCP_NODELAY`: small messages go out at once).
    pub async fn accept(&self) -> io::Result<(Stream, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok((Stream::Tcp(s), Peer::Tcp(peer)))
            }
            Listener::Unix { listener, .. } => {
                let (s, _) = listener.accept().await?;
                Ok((Stream::Unix(s), Peer::Unix))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix { path, .. } = self {
            // Best effort: the directory may already be gone.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds under a temporary name, restricts the file to its owner, then renames it into place:
/// the socket is never reachable under `path` with looser permissions.
fn bind_owner_only(path: &Path) -> Result<UnixListener> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)
        .with_context(|| format!("binding unix socket {}", tmp.display()))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("placing unix socket {}", path.display()));
    }
    Ok(listener)
}

fn remove_stale_socket(path: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        bail!("{} exists and is not a socket", path.display());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!("another process listens on {}", path.display()),
        Err(_) => std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn owner_only_unix_sockets_are_0600_and_removed_on_drop() {
        let dir = std::env::temp_dir().join(format!("fs-http-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let l = Listener::bind(&Endpoint::Unix(path.clone()), UnixMode::OwnerOnly)
            .await
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second listener on a live socket is refused; the first keeps its file.
        assert!(
            Listener::bind(&Endpoint::Unix(path.clone()), UnixMode::OwnerOnly)
                .await
                .is_err()
        );
        drop(l);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
