//! Blocking mutual TLS over a `TcpStream`: a completed handshake ([`connect`], [`accept`]),
//! and a connection split into a reading half and a writing half for two threads ([`split`]),
//! as the node's control client needs (one thread blocks reading requests while another
//! writes events).
//!
//! The halves share the rustls state behind a mutex held only while bytes are moved in
//! memory or written: the reader never holds it while blocked on the socket. Socket timeouts
//! set on the stream keep working (a timed-out read returns the error and can be retried).

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Raw bytes read from the socket at a time.
const RAW_CHUNK: usize = 32 << 10;

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Completes the handshake within `timeout` in all (a peer trickling bytes cannot hold it
/// open longer); the socket's read and write timeouts are left at what remains.
fn handshake(conn: &mut Connection, tcp: &mut TcpStream, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake took too long",
            ));
        }
        tcp.set_read_timeout(Some(left))?;
        tcp.set_write_timeout(Some(left))?;
        conn.complete_io(tcp)?;
    }
    // Flush what the handshake left (a server's last flight).
    while conn.wants_write() {
        conn.write_tls(tcp)?;
    }
    Ok(())
}

/// A TLS client connection to `name` over `tcp`, handshake completed within `timeout` (the server's
/// certificate checked against the CA and `name`, ours presented).
pub fn connect(
    mut tcp: TcpStream,
    cfg: Arc<ClientConfig>,
    name: ServerName<'static>,
    timeout: Duration,
) -> io::Result<(ClientConnection, TcpStream)> {
    let mut conn: Connection = ClientConnection::new(cfg, name).map_err(invalid)?.into();
    handshake(&mut conn, &mut tcp, timeout)?;
    match conn {
        Connection::Client(c) => Ok((c, tcp)),
        Connection::Server(_) => Err(io::Error::other("a client connection turned server")),
    }
}

/// The server side of a TLS connection over `tcp`, handshake completed within `timeout` (the client's
/// certificate checked against the CA; its identity is for the caller to check with
/// [`peer_certificates`] and [`crate::peer_is`]).
pub fn accept(
    mut tcp: TcpStream,
    cfg: Arc<ServerConfig>,
    timeout: Duration,
) -> io::Result<(ServerConnection, TcpStream)> {
    let mut conn: Connection = ServerConnection::new(cfg).map_err(invalid)?.into();
    handshake(&mut conn, &mut tcp, timeout)?;
    match conn {
        Connection::Server(c) => Ok((c, tcp)),
        Connection::Client(_) => Err(io::Error::other("a server connection turned client")),
    }
}

/// The peer's certificate chain (empty if none).
pub fn peer_certificates(conn: &rustls::CommonState) -> &[CertificateDer<'static>] {
    conn.peer_certificates().unwrap_or(&[])
}

/// One thread's client stream (`Read` + `Write`) over a pair from [`connect`].
pub type ClientStream = rustls::StreamOwned<ClientConnection, TcpStream>;
/// One thread's server stream (`Read` + `Write`) over a pair from [`accept`].
pub type ServerStream = rustls::StreamOwned<ServerConnection, TcpStream>;

struct Shared {
    conn: Mutex<Connection>,
    /// The socket for writes (TLS records go out only under the lock).
    tcp: TcpStream,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic elsewhere cannot leave the rustls state half-updated in a way that matters
        // more than the panic itself; keep serving.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush_tls(&self, conn: &mut Connection) -> io::Result<()> {
        let mut tcp = &self.tcp;
        while conn.wants_write() {
            conn.write_tls(&mut tcp)?;
        }
        Ok(())
    }
}

/// The reading half of [`split`].
pub struct TlsReader {
    shared: Arc<Shared>,
    tcp: TcpStream,
    raw: Vec<u8>,
    /// Unprocessed raw bytes are `raw[pos..len]`.
    pos: usize,
    len: usize,
}

/// The writing half of [`split`].
pub struct TlsWriter {
    shared: Arc<Shared>,
}

/// Splits a connected, handshaken TLS connection into halves for two threads.
pub fn split(conn: impl Into<Connection>, tcp: TcpStream) -> io::Result<(TlsReader, TlsWriter)> {
    let read_tcp = tcp.try_clone()?;
    let shared = Arc::new(Shared {
        conn: Mutex::new(conn.into()),
        tcp,
    });
    Ok((
        TlsReader {
            shared: shared.clone(),
            tcp: read_tcp,
            raw: vec![0; RAW_CHUNK],
            pos: 0,
            len: 0,
        },
        TlsWriter { shared },
    ))
}

impl TlsReader {
    /// The underlying socket (for timeouts and shutdown).
    pub fn socket(&self) -> &TcpStream {
        &self.tcp
    }
}

impl Read for TlsReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut conn = self.shared.lock();
                while self.pos < self.len && conn.wants_read() {
                    let mut bytes = &self.raw[self.pos..self.len];
                    let n = conn.read_tls(&mut bytes)?;
                    self.pos += n;
                    conn.process_new_packets().map_err(invalid)?;
                }
                self.shared.flush_tls(&mut conn)?;
                match conn.reader().read(out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if self.pos < self.len {
                continue;
            }
            // Block on the socket without the lock.
            let n = self.tcp.read(&mut self.raw)?;
            if n == 0 {
                return Ok(0);
            }
            (self.pos, self.len) = (0, n);
        }
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut conn = self.shared.lock();
        let n = conn.writer().write(buf)?;
        self.shared.flush_tls(&mut conn)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut conn = self.shared.lock();
        conn.writer().flush()?;
        self.shared.flush_tls(&mut conn)
    }
}

impl TlsWriter {
    /// Sends close_notify and shuts the socket down (wakes a reader blocked on it).
    pub fn close(&mut self) {
        let mut conn = self.shared.lock();
        conn.send_close_notify();
        let _ = self.shared.flush_tls(&mut conn);
        let _ = self.shared.tcp.shutdown(std::net::Shutdown::Both);
    }
}
