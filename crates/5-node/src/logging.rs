//! Logging set-up: `tracing` events as lines on stderr, plain `key=value` text or JSON.
//!
//! Targets worth filtering on: `flowshift::mapping` (the CGN mapping log: one line per
//! port-block allocation or release) and `flowshift::migration` (migration events). The level
//! filter comes from `RUST_LOG` in `tracing_subscriber::filter::Targets` syntax (for example
//! `info,flowshift::mapping=off`); default `info`.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

/// Installs the global subscriber; an error if one is installed already.
pub fn init(json: bool) -> Result<(), String> {
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry.with(layer.json().flatten_event(true)).try_init()
    } else {
        registry.with(layer).try_init()
    };
    result.map_err(|e| e.to_string())
}
