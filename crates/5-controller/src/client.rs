//! A blocking client of the operator API (for the CLI and tests): HTTP/1.1 over TCP or a
//! unix socket, one request per connection, bounded answer size and time.

use crate::config::Endpoint;
use crate::core::ControllerCounters;
use crate::switch::SwitchStatus;
use flowshift_control::api::{ClusterStatus, MigrateRequest, MigrateResponse};
use flowshift_control::orchestrator::MigrationStatus;
use serde::de::DeserializeOwned;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Largest answer accepted, in bytes.
pub const MAX_RESPONSE: usize = 64 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection to the controller.
    #[error("cannot reach the controller at {endpoint}")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange failed midway (including timeouts).
    #[error("talking to the controller: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not HTTP or not the expected JSON.
    #[error("bad answer from the controller: {0}")]
    BadResponse(String),
    /// The controller answered with an error status.
    #[error("controller refused ({status}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Its `error` text (or the raw body).
        message: String,
    },
}

/// A client of one controller.
#[derive(Clone, Debug)]
pub struct ApiClient {
    endpoint: Endpoint,
    timeout: Duration,
}

impl ApiClient {
    /// A client of the controller at `endpoint`, with a 10 s limit per call.
    pub fn new(endpoint: Endpoint) -> Self {
        ApiClient {
            endpoint,
            timeout: Duration::from_secs(10),
        }
    }

    /// The same client with another time limit per call (connect, send and receive each).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET /status`.
    pub fn status(&self) -> Result<ClusterStatus, ClientError> {
        self.get("/status")
    }

    /// `POST /migrate`.
    pub fn migrate(&self, req: &MigrateRequest) -> Result<MigrateResponse, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        let (status, answer) = self.request("POST", "/migrate", Some(&body))?;
        decode(status, &answer)
    }

    /// `GET /migrations`.
    pub fn migrations(&self) -> Result<Vec<MigrationStatus>, ClientError> {
        self.get("/migrations")
    }

    /// `GET /migrations/<index>/report`: the source node's report as JSON.
    pub fn report(&self, index: usize) -> Result<serde_json::Value, ClientError> {
        self.get(&format!("/migrations/{index}/report"))
    }

    /// `GET /switch`.
    pub fn switch(&self) -> Result<SwitchStatus, ClientError> {
        self.get("/switch")
    }

    /// `GET /counters`.
    pub fn counters(&self) -> Result<ControllerCounters, ClientError> {
        self.get("/counters")
    }

    /// `GET path`, decoded as `T`; an error status becomes [`ClientError::Api`].
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, body) = self.request("GET", path, None)?;
        decode(status, &body)
    }

    /// One raw exchange: status code and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let body = body.unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: flowshift\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str("\r\n");
        let mut stream = self.connect()?;
        stream.write_all(req.as_bytes())?;
        stream.write_all(body)?;
        let mut answer = Vec::new();
        stream
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut answer)?;
        if answer.len() > MAX_RESPONSE {
            return Err(ClientError::BadResponse(format!(
                "answer longer than {MAX_RESPONSE} bytes"
            )));
        }
        parse_response(&answer)
    }

    fn connect(&self) -> Result<Box<dyn ReadWrite>, ClientError> {
        let err = |source| ClientError::Connect {
            endpoint: self.endpoint.to_string(),
            source,
        };
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let s = UnixStream::connect(path).map_err(err)?;
                s.set_read_timeout(Some(self.timeout))?;
                s.set_write_timeout(Some(self.timeout))?;
                Ok(Box::new(s))
            }
            Endpoint::Tcp(hp) => {
                let mut last = None;
                for addr in hp.to_socket_addrs().map_err(err)? {
                    match TcpStream::connect_timeout(&addr, self.timeout) {
                        Ok(s) => {
                            s.set_read_timeout(Some(self.timeout))?;
                            s.set_write_timeout(Some(self.timeout))?;
                            return Ok(Box::new(s));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(err(last.unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                })))
            }
        }
    }
}

/// A byte stream (TCP or unix).
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn parse_response(answer: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(answer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(ClientError::BadResponse("truncated answer".into()));
        }
        Err(e) => return Err(ClientError::BadResponse(e.to_string())),
    };
    let status = resp.code.unwrap_or_default();
    let body = answer.get(head_len..).unwrap_or_default();
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let body = match length {
        Some(n) if n <= body.len() => &body[..n],
        Some(n) => {
            return Err(ClientError::BadResponse(format!(
                "answer body has {} of {n} bytes",
                body.len()
            )));
        }
        None => body,
    };
    Ok((status, body.to_vec()))
}

fn decode<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, ClientError> {
    if !(200..300).contains(&status) {
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
        return Err(ClientError::Api { status, message });
    }
    serde_json::from_slice(body).map_err(|e| ClientError::BadResponse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_and_without_length() {
        let (s, b) =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}trailing").unwrap();
        assert_eq!((s, b.as_slice()), (200, b"{}".as_slice()));
        let (s, b) = parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n{\"error\":\"x\"}").unwrap();
        assert_eq!(s, 404);
        match decode::<serde_json::Value>(s, &b) {
            Err(ClientError::Api {
                status: 404,
                message,
            }) => assert_eq!(message, "x"),
            other => panic!("{other:?}"),
        }
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
        assert!(parse_response(b"HTTP/1.1 200").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
