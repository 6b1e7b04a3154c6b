//! A blocking HTTP/1.1 client for TCP and unix socket endpoints (hyper's client connection on
//! a private single-threaded tokio runtime): one request per connection, bounded answer size,
//! one time limit for the whole exchange, an optional bearer token. With [`ClientTls`], TCP
//! endpoints are reached over mutual TLS (the server's certificate name checked); unix
//! sockets never use TLS.

use crate::endpoint::Endpoint;
use crate::tls::ClientTls;
use crate::token::Token;
use axum::http::{Method, Request, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No connection could be made.
    #[error("cannot reach {endpoint}: {source}")]
    Connect {
        /// Where.
        endpoint: String,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange took longer than the client's time limit.
    #[error("no answer from {endpoint} within {timeout:?}")]
    Timeout {
        /// Where.
        endpoint: String,
        /// The limit.
        timeout: Duration,
    },
    /// The exchange failed midway, or the answer was not valid HTTP.
    #[error("talking to {endpoint}: {message}")]
    Protocol {
        /// Where.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The answer body exceeded the client's bound.
    #[error("answer from {endpoint} longer than {limit} bytes")]
    TooLong {
        /// Where.
        endpoint: String,
        /// The bound.
        limit: usize,
    },
}

/// A client of one endpoint.
#[derive(Clone, Debug)]
pub struct Client {
    endpoint: Endpoint,
    token: Option<Token>,
    tls: Option<ClientTls>,
    timeout: Duration,
    max_response: usize,
}

impl Client {
    /// A client of `endpoint` without a token, a 10 s limit per exchange and answers of at
    /// most 64 MiB.
    pub fn new(endpoint: Endpoint) -> Client {
        Client {
            endpoint,
            token: None,
            tls: None,
            timeout: Duration::from_secs(10),
            max_response: 64 << 20,
        }
    }

    /// The same client sending `token` with every request.
    pub fn with_token(mut self, token: Option<Token>) -> Client {
        self.token = token;
        self
    }

    /// The same client using `tls` on TCP endpoints (without it, TCP is plain HTTP).
    pub fn with_tls(mut self, tls: Option<ClientTls>) -> Client {
        self.tls = tls;
        self
    }

    /// Whether TCP exchanges use TLS.
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The same client with another limit per exchange (connect, send and receive).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// One exchange: `method path` with an optional JSON `body`; the status code and body of
    /// the answer, whatever the status.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| self.protocol(format!("starting a runtime: {e}")))?;
        rt.block_on(async {
            match tokio::time::timeout(self.timeout, self.exchange(method, path, body)).await {
                Ok(r) => r,
                Err(_) => Err(HttpError::Timeout {
                    endpoint: self.endpoint.to_string(),
                    timeout: self.timeout,
                }),
            }
        })
    }

    fn protocol(&self, message: String) -> HttpError {
        HttpError::Protocol {
            endpoint: self.endpoint.to_string(),
            message,
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let connect_err = |source| HttpError::Connect {
            endpoint: self.endpoint.to_string(),
            source,
        };
        match &self.endpoint {
            Endpoint::Tcp(hp) => {
                let s = TcpStream::connect(hp.as_str()).await.map_err(connect_err)?;
                // Best effort: only latency depends on it.
                let _ = s.set_nodelay(true);
                match &self.tls {
                    None => self.send(s, method, path, body).await,
                    Some(tls) => {
                        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                        let s = connector
                            .connect(tls.server_name.clone(), s)
                            .await
                            .map_err(|e| self.protocol(format!("TLS handshake: {e}")))?;
                        self.send(s, method, path, body).await
                    }
                }
            }
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p).await.map_err(connect_err)?;
                self.send(s, method, path, body).await
            }
        }
    }

    async fn send<S>(
        &self,
        stream: S,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), HttpError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let host = match &self.endpoint {
            Endpoint::Tcp(hp) => hp.clone(),
            Endpoint::Unix(_) => "localhost".to_owned(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host)
            .header(header::CONNECTION, "close");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, t.header_value());
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.protocol(e.to_string()))?;
        let status = resp.status().as_u16();
        let limited = http_body_util::Limited::new(resp.into_body(), self.max_response);
        let body = limited.collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                HttpError::TooLong {
                    endpoint: self.endpoint.to_string(),
                    limit: self.max_response,
                }
            } else {
                self.protocol(e.to_string())
            }
        })?;
        driver.abort();
        Ok((status, body.to_bytes().to_vec()))
    }
}
