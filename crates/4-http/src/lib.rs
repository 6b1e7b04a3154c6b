//! I/O support shared by the layer-5 daemons (the controller's operator API, the node's
//! `/metrics`): not sans-IO, and it depends on no other flowshift crate.
//!
//! * [`Endpoint`]: where to listen or connect (`HOST:PORT` or `unix:/path`);
//!   [`Listener`]: TCP and unix listeners, unix sockets optionally owner-only.
//! * [`server`]: bounded serving of an axum router (connections overall and per client, with
//!   eviction of the longest-idle connection, header and body timeouts, size bounds, bearer
//!   authentication, counters).
//! * [`tls`]: mutual TLS on TCP endpoints from rustls configurations the caller builds
//!   ([`ServerTls`]: who is admitted; [`ClientTls`]: the server's expected name).
//! * [`Token`]: bearer tokens kept in 0600 files, compared in constant time.
//! * [`Client`]: a blocking HTTP/1.1 client for both endpoint kinds (TLS on TCP if given).

#![deny(missing_docs)]

pub mod client;
pub mod endpoint;
pub mod listener;
pub mod server;
pub mod tls;
pub mod token;

pub use client::{Client, HttpError};
pub use endpoint::Endpoint;
pub use listener::{BoxRead, BoxWrite, Listener, Peer, Stream, UnixMode};
pub use server::{Auth, HttpCounters, Limits, ServerCounters, error_response, read_body, serve};
pub use tls::{Admit, ClientTls, PeerIdentity, ServerTls};
pub use token::Token;
