//! A blocking client of the operator API (for the CLI, the testbed and tests), on
//! [`flowshift_http::Client`]: TCP or unix socket, one request per connection, bounded answer
//! size and time, the bearer token if given, and on TCP mutual TLS with the operator's
//! credentials ([`ApiClient::with_operator`]).
//!
//! The operator's tool (`flowshift migrate`, `flowshift status`) is built from the pieces
//! here: [`select`] finds the controller and its credentials, [`wait`] follows a migration
//! to its end, [`render`] turns answers into the text the tool prints.

pub mod render;
pub mod select;
pub mod wait;

use crate::config::Endpoint;
use crate::core::ControllerCounters;
use crate::switch::SwitchStatus;
use axum::http::Method;
use flowshift_control::api::{ClusterStatus, MigrateRequest, MigrateResponse};
use flowshift_control::orchestrator::MigrationStatus;
use flowshift_http::{Client, ClientTls, HttpError, Token};
use flowshift_migration::InstanceId;
use serde::de::DeserializeOwned;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection, a failed exchange or a timeout.
    #[error("the controller's API: {0}")]
    Http(#[from] HttpError),
    /// The answer was not the expected JSON, or the request could not be encoded.
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
    http: Client,
}

impl ApiClient {
    /// A client of the controller at `endpoint`, without a token, with a 10 s limit per call.
    pub fn new(endpoint: Endpoint) -> Self {
        ApiClient {
            http: Client::new(endpoint),
        }
    }

    /// The same client sending `token` (the controller's `api_token_file`).
    pub fn with_token(self, token: Option<Token>) -> Self {
        ApiClient {
            http: self.http.with_token(token),
        }
    }

    /// The same client using `tls` on a TCP endpoint.
    pub fn with_tls(self, tls: Option<ClientTls>) -> Self {
        ApiClient {
            http: self.http.with_tls(tls),
        }
    }

    /// The same client presenting `operator`'s certificate on a TCP endpoint and expecting
    /// the controller's ([`flowshift_trust::CONTROLLER_NAME`]). Fails if the credentials
    /// are not the operator's (the controller would refuse them).
    pub fn with_operator(self, operator: &flowshift_trust::Credentials) -> anyhow::Result<Self> {
        anyhow::ensure!(
            operator.is(flowshift_trust::OPERATOR_NAME),
            "these TLS credentials are not the operator's (the certificate must name {})",
            flowshift_trust::OPERATOR_NAME
        );
        let tls = ClientTls {
            config: operator.client_config()?,
            server_name: flowshift_trust::server_name(flowshift_trust::CONTROLLER_NAME)?,
        };
        Ok(self.with_tls(Some(tls)))
    }

    /// Whether calls to a TCP endpoint use TLS.
    pub fn has_tls(&self) -> bool {
        self.http.has_tls()
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        self.http.endpoint()
    }

    /// The same client with another time limit per call.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        ApiClient {
            http: self.http.with_timeout(timeout),
        }
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

    /// `POST /abort`: the outcome (`before_redirect` / `after_redirect`) as JSON.
    pub fn abort(&self, group: Ipv4Addr) -> Result<serde_json::Value, ClientError> {
        let req = flowshift_control::api::AbortRequest { group };
        let body = serde_json::to_vec(&req).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        let (status, answer) = self.request("POST", "/abort", Some(&body))?;
        decode(status, &answer)
    }

    /// `POST /rehome`: the record (dead owner, new owner, sessions lost) as JSON.
    pub fn rehome(
        &self,
        group: Ipv4Addr,
        to: InstanceId,
    ) -> Result<serde_json::Value, ClientError> {
        let req = flowshift_control::api::RehomeRequest { group, to };
        let body = serde_json::to_vec(&req).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        let (status, answer) = self.request("POST", "/rehome", Some(&body))?;
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

    /// One raw exchange (`method`: `GET` or `POST`): status code and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|e| ClientError::BadResponse(format!("method {method:?}: {e}")))?;
        Ok(self.http.request(method, path, body.map(<[u8]>::to_vec))?)
    }
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
    fn error_answers_carry_their_message() {
        match decode::<serde_json::Value>(404, b"{\"error\":\"x\"}") {
            Err(ClientError::Api {
                status: 404,
                message,
            }) => assert_eq!(message, "x"),
            other => panic!("{other:?}"),
        }
        match decode::<serde_json::Value>(502, b"plain text\n") {
            Err(ClientError::Api { message, .. }) => assert_eq!(message, "plain text"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode::<u32>(200, b"{}"),
            Err(ClientError::BadResponse(_))
        ));
        assert_eq!(decode::<u32>(200, b"7").unwrap(), 7);
    }
}
