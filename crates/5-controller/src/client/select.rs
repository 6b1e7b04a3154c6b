//! Which controller the operator's tools talk to, and how: the endpoint, the bearer token
//! and the operator's TLS credentials, chosen from what the operator named (flags), the
//! cluster configuration, the environment and the one running testbed.
//!
//! Precedence (first found wins; an empty environment variable counts as unset):
//! * endpoint: `--controller`, `api_listen` of `--config`, `FLOWSHIFT_CONTROLLER`, the single
//!   running testbed's `api`, [`DEFAULT_CONTROLLER`];
//! * token file: `--token-file`, `api_token_file` of `--config` (even when it has none),
//!   `FLOWSHIFT_TOKEN_FILE`, the testbed's `api_token_file` if the endpoint is its API;
//! * TLS folder (TCP only): `--tls-dir`, `FLOWSHIFT_TLS_DIR`, the folder of `--config`'s
//!   `tls.ca`.
//!
//! Error messages name the `flowshift` flags and variables, since operators read them.

use super::ApiClient;
use crate::config::{ClusterConfig, Endpoint};
use anyhow::{Context, Result, anyhow, bail};
use flowshift_http::Token;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where the operator API is when nothing else names it.
pub const DEFAULT_CONTROLLER: &str = "127.0.0.1:6780";
/// Where testbeds keep their state (`testbed-<run>/state.json`, fields `api` and
/// `api_token_file`).
pub const TESTBED_STATE_DIR: &str = "/run/flowshift";

/// What the operator named explicitly (`flowshift` flags); `None`: not given.
#[derive(Clone, Debug, Default)]
pub struct ApiSelection {
    /// `--controller`: `HOST:PORT`, `tcp:HOST:PORT` or `unix:/path`.
    pub controller: Option<String>,
    /// `--token-file`: the API's bearer token file.
    pub token_file: Option<PathBuf>,
    /// `--config`: the cluster configuration (TOML).
    pub config: Option<PathBuf>,
    /// `--tls-dir`: a folder with `ca.pem`, `operator.pem` and `operator.key`.
    pub tls_dir: Option<PathBuf>,
}

/// The environment's defaults (empty values already dropped).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApiEnv {
    /// `FLOWSHIFT_CONTROLLER` (unset if not valid UTF-8).
    pub controller: Option<String>,
    /// `FLOWSHIFT_TOKEN_FILE`.
    pub token_file: Option<PathBuf>,
    /// `FLOWSHIFT_TLS_DIR`.
    pub tls_dir: Option<PathBuf>,
}

impl ApiEnv {
    /// Reads the three variables from this process's environment.
    pub fn from_process() -> ApiEnv {
        let path = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        ApiEnv {
            controller: std::env::var("FLOWSHIFT_CONTROLLER")
                .ok()
                .filter(|v| !v.is_empty()),
            token_file: path("FLOWSHIFT_TOKEN_FILE"),
            tls_dir: path("FLOWSHIFT_TLS_DIR"),
        }
    }
}

/// A testbed's API: its endpoint and token file.
#[derive(Clone, Debug, PartialEq)]
pub struct TestbedApi {
    /// `api`: a unix socket path (`unix:` optional) or `HOST:PORT`.
    pub endpoint: Endpoint,
    /// `api_token_file`, if the testbed has one.
    pub token_file: Option<PathBuf>,
}

/// The chosen endpoint and where its credentials are (see the module's precedence).
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedApi {
    /// The operator API.
    pub endpoint: Endpoint,
    /// The bearer token file, if any.
    pub token_file: Option<PathBuf>,
    /// The operator's TLS folder, if any (used only for a TCP endpoint).
    pub tls_dir: Option<PathBuf>,
}

/// Applies the module's precedence. `testbed` is [`testbed_api`]'s answer: its error is
/// returned only if the endpoint had to come from the testbed (otherwise it is ignored).
/// Fails on an endpoint that does not parse.
pub fn resolve(
    sel: &ApiSelection,
    cfg: Option<&ClusterConfig>,
    env: &ApiEnv,
    testbed: Result<Option<TestbedApi>>,
) -> Result<ResolvedApi> {
    let testbed = match testbed {
        Ok(t) => t,
        Err(e) if sel.controller.is_none() && cfg.is_none() && env.controller.is_none() => {
            return Err(e);
        }
        Err(_) => None,
    };
    let endpoint = match (&sel.controller, cfg, &env.controller, &testbed) {
        (Some(flag), _, _, _) => flag.parse().map_err(|e| anyhow!("--controller: {e}"))?,
        (None, Some(cfg), _, _) => cfg.api_listen.clone(),
        (None, None, Some(var), _) => var
            .parse()
            .map_err(|e| anyhow!("FLOWSHIFT_CONTROLLER: {e}"))?,
        (None, None, None, Some(t)) => t.endpoint.clone(),
        (None, None, None, None) => DEFAULT_CONTROLLER.parse().map_err(|e| anyhow!("{e}"))?,
    };
    let token_file = match (&sel.token_file, cfg, &env.token_file, testbed) {
        (Some(f), _, _, _) => Some(f.clone()),
        (None, Some(cfg), _, _) => cfg.api_token_file.clone(),
        (None, None, Some(var), _) => Some(var.clone()),
        (None, None, None, Some(t)) if t.endpoint == endpoint => t.token_file,
        (None, None, None, _) => None,
    };
    let tls_dir = sel
        .tls_dir
        .clone()
        .or_else(|| env.tls_dir.clone())
        .or_else(|| Some(cfg?.tls.ca.parent()?.to_path_buf()));
    Ok(ResolvedApi {
        endpoint,
        token_file,
        tls_dir,
    })
}

/// A client of the operator API that `sel`, `env` and the testbeds under `testbed_dir`
/// select: loads `--config`, resolves ([`resolve`]), reads the token, and on TCP loads the
/// operator's TLS credentials (a TCP endpoint without a TLS folder is an error: the API
/// admits only the operator's certificate). A unix socket needs no credentials.
pub fn connect(sel: &ApiSelection, env: &ApiEnv, testbed_dir: &Path) -> Result<ApiClient> {
    let cfg = sel.config.as_deref().map(ClusterConfig::load).transpose()?;
    let api = resolve(sel, cfg.as_ref(), env, testbed_api(testbed_dir))?;
    let token = api.token_file.as_deref().map(Token::load).transpose()?;
    let client = ApiClient::new(api.endpoint.clone()).with_token(token);
    if matches!(api.endpoint, Endpoint::Unix(_)) {
        return Ok(client);
    }
    let Some(dir) = api.tls_dir else {
        bail!(
            "the API at {} is TCP, which admits only the operator's certificate: pass \
             --tls-dir DIR or set FLOWSHIFT_TLS_DIR (DIR holds ca.pem, operator.pem and \
             operator.key, from `flowshift pki init` or `flowshift pki issue --operator`)",
            api.endpoint
        );
    };
    let files =
        flowshift_trust::TlsFiles::in_dir(&dir, &flowshift_trust::pki::Party::Operator.stem());
    let creds = flowshift_trust::Credentials::load(&files).with_context(|| {
        format!(
            "loading the operator's TLS credentials from {}",
            dir.display()
        )
    })?;
    client.with_operator(&creds)
}

/// The `api` and `api_token_file` of the one `testbed-*/state.json` under `dir`: `None` if
/// there is none (or `dir` is unreadable, or the state has no `api`); an error if there are
/// several, or the one state file is unreadable or malformed.
pub fn testbed_api(dir: &Path) -> Result<Option<TestbedApi>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let states: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("testbed-"))
        .map(|e| e.path().join("state.json"))
        .filter(|p| p.is_file())
        .collect();
    let state = match states.as_slice() {
        [] => return Ok(None),
        [one] => one,
        many => bail!(
            "several testbeds found ({}); choose one with --controller or FLOWSHIFT_CONTROLLER",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let text =
        std::fs::read_to_string(state).with_context(|| format!("reading {}", state.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", state.display()))?;
    let Some(api) = v.get("api").and_then(Value::as_str) else {
        return Ok(None);
    };
    let endpoint = if api.starts_with('/') {
        Endpoint::Unix(PathBuf::from(api))
    } else {
        api.parse()
            .map_err(|e| anyhow!("{}: api: {e}", state.display()))?
    };
    let token_file = v
        .get("api_token_file")
        .and_then(Value::as_str)
        .map(PathBuf::from);
    Ok(Some(TestbedApi {
        endpoint,
        token_file,
    }))
}

#[cfg(test)]
mod tests;
