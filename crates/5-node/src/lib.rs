//! Layer 5: the Linux node. One NAT [`Instance`](flowshift_migration::Instance) on one
//! interface towards the switch, with its state-transfer connections to the other nodes, its
//! control connection to the controller and a Prometheus endpoint.
//!
//! # Threads and queues
//!
//! ```text
//!            AF_PACKET (TPACKET_V3 RX ring, sendmmsg TX)
//!                          |
//!   +----------------------+-----------------------+
//!   | packet thread (spin, then poll(2); owns the  |---- snapshot every 100 ms --> /metrics
//!   | Instance; an eventfd wakes it for the side)  |
//!   +----------------------------------------------+                             control hello
//!     | frames out  ^ frames in       | events  ^ commands (with a reply channel)
//!     v (per peer)  | (one queue)     v         |
//!   transfer writers / readers       control client  <--- JSON lines --->  controller
//!   (TCP to and from the peers)
//! ```
//!
//! * [`engine::Engine`]: the packet thread's work without the socket (classification,
//!   batching, the driver contract of the instance, commands, status), so it can be tested
//!   without privileges; [`node`] runs it against an [`afpacket::AfPacket`] socket.
//! * [`pacing`]: the loop's spin-then-block decision and its poll-gap meter (sans-IO).
//! * [`afpacket`]: the socket, its receive ring and batched sends.
//! * [`frame`]: the frame formats between switch and node, and the partial-checksum repair for
//!   GSO frames.
//! * [`transfer`]: migration frames over TCP between nodes; [`control`]: the controller
//!   channel; [`metrics`]: `GET /metrics` (prometheus-client text, served by axum on a small
//!   tokio runtime in its own thread; optional bearer token).
//!
//! Every queue between threads is bounded; a refusal is counted (see [`stats`]). The packet
//! thread never blocks on another thread: it uses `try_send`/`try_recv` and publishes its
//! status with `try_lock`.

#![deny(missing_docs)]

pub mod afpacket;
pub mod config;
pub mod control;
pub mod engine;
pub mod frame;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod pacing;
pub mod segment;
pub mod stats;
pub mod sys;
pub mod transfer;

pub use config::{
    ConfigError, MacAddr, NodeConfig, PeerConfig, PreloadConfig, SeedsGiven, load_config,
};
pub use node::{Node, run};
