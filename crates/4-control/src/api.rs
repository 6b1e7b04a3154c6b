//! Messages between the controller and the nodes, and of the controller's operator API, as
//! plain serde values (sans-IO; the drivers choose the transport).
//!
//! **Node control channel.** A node connects to the controller's node listener over TCP and
//! both sides exchange [`NodeToController`] / [`ControllerToNode`] values as JSON, one per
//! line (`\n`-terminated, at most [`MAX_LINE`] bytes; [`LineBuffer`] splits a byte stream).
//! The node opens with [`NodeToController::Hello`]; requests carry an id the reply echoes.
//! Events are pushed as they happen, in order.
//!
//! **Operator API.** The controller serves HTTP/JSON: `GET /status` returns a
//! [`ClusterStatus`]; `POST /migrate` with a [`MigrateRequest`] body starts a migration and
//! returns a [`MigrateResponse`]; `GET /migrations` lists [`MigrationStatus`] records.

use crate::orchestrator::MigrationStatus;
pub use crate::status::{GroupStatus, NodeMigration, NodeStatus};
use flowshift_migration::{Algorithm, InstanceId, MigrationEvent, Params};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Longest line either side accepts, in bytes (a status with many counters fits easily).
pub const MAX_LINE: usize = 1 << 20;

/// Node to controller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeToController {
    /// First message: who the node is and what it serves.
    Hello {
        /// Instance id (as in the cluster configuration).
        id: InstanceId,
        /// The node's MAC on the switch port.
        mac: [u8; 6],
        /// External addresses of the groups the node has configured.
        groups: Vec<Ipv4Addr>,
    },
    /// Answer to request `req`.
    Reply {
        /// The request's id.
        req: u64,
        /// The result, or a human-readable error.
        result: Result<ReplyBody, String>,
    },
    /// A migration event, with the node's clock (ns since the node started).
    Event {
        /// When (node clock, ns).
        at_ns: u64,
        /// The event.
        event: MigrationEvent,
    },
}

/// Controller to node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControllerToNode {
    /// A request; the node answers with [`NodeToController::Reply`] carrying `req`.
    Request {
        /// Id chosen by the controller.
        req: u64,
        /// What to do.
        body: NodeRequest,
    },
}

/// What the controller asks of a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NodeRequest {
    /// Start migrating the group with this external address to instance `to`.
    StartMigration {
        /// The group.
        external: Ipv4Addr,
        /// Destination instance.
        to: InstanceId,
        /// Algorithm.
        algorithm: Algorithm,
        /// Parameters; `None`: the node's configured defaults.
        params: Option<Params>,
    },
    /// The switch now steers the group to the destination: start draining.
    CutoverDone {
        /// Migration id.
        migration: u64,
    },
    /// Abandon a migration this node is the source of.
    Abort {
        /// Migration id.
        migration: u64,
    },
    /// Take over group `external` (its owner died: `rehome`); answered `Ok`.
    AdoptGroup {
        /// The group's external address.
        external: Ipv4Addr,
        /// Its subscriber prefix.
        subscribers: ipnet::Ipv4Net,
    },
    /// Drop whatever this node holds of group `external` (it went elsewhere); answered
    /// `Released`.
    ReleaseGroup {
        /// The group's external address.
        external: Ipv4Addr,
    },
    /// The node's [`NodeStatus`].
    Status,
    /// The report of one migration (as JSON, see `flowshift_migration::MigrationReport`).
    Report {
        /// Migration id.
        migration: u64,
    },
}

/// Successful replies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReplyBody {
    /// The migration started with this id.
    Started {
        /// Migration id.
        migration: u64,
    },
    /// Done; nothing to return.
    Ok,
    /// Abort outcome: true if reverted, false if completing forward.
    Aborted {
        /// True if the source owns the group again.
        reverted: bool,
    },
    /// `ReleaseGroup` done: the sessions dropped.
    Released {
        /// Sessions dropped (counted as lost on this node).
        sessions: u32,
    },
    /// The node's status (boxed: far larger than the other replies).
    Status(Box<NodeStatus>),
    /// A migration report.
    Report(serde_json::Value),
}

/// `POST /migrate` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrateRequest {
    /// The group's external address.
    pub group: Ipv4Addr,
    /// Destination node id.
    pub to: InstanceId,
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Parameters; `None`: the controller's configured defaults.
    #[serde(default)]
    pub params: Option<Params>,
}

/// `POST /migrate` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrateResponse {
    /// Index of the migration in `GET /migrations` (stable for the controller's lifetime).
    pub index: usize,
    /// Its record at the time of the answer.
    pub status: MigrationStatus,
}

/// `GET /status` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Seconds since the controller started.
    pub uptime_s: f64,
    /// Switch connection: datapath id once connected.
    pub switch_datapath_id: Option<u64>,
    /// Flow entries the controller has installed.
    pub switch_rules: usize,
    /// Groups and their current owners.
    pub groups: Vec<GroupOwner>,
    /// Nodes by id: connected or not, and their last status.
    pub nodes: BTreeMap<InstanceId, NodeEntry>,
    /// Every migration requested since the controller started.
    pub migrations: Vec<MigrationStatus>,
    /// The elastic policy: node states, counters, last decisions (absent from older
    /// controllers).
    #[serde(default)]
    pub autoscale: Option<crate::autoscale::AutoscaleStatus>,
}

/// `POST /abort`: abort the migration of a group in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortRequest {
    /// The group's external address.
    pub group: Ipv4Addr,
}

/// `POST /rehome`: give a dead node's group to another node, without a transfer (its sessions
/// are lost, and reported).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RehomeRequest {
    /// The group's external address.
    pub group: Ipv4Addr,
    /// The new owner (must be connected; the current one must not be).
    pub to: InstanceId,
}

/// A group's owner as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOwner {
    /// External address.
    pub external: Ipv4Addr,
    /// Subscriber prefix.
    pub subscribers: Ipv4Net,
    /// Owning node.
    pub owner: InstanceId,
}

/// One node as the controller sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Whether the control connection is up.
    pub connected: bool,
    /// The node's last status, if any.
    pub status: Option<NodeStatus>,
}

/// Why a line could not be taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A line exceeded [`MAX_LINE`]; the connection should be closed.
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
}

/// Splits a byte stream into `\n`-terminated lines of at most [`MAX_LINE`] bytes.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
}

impl LineBuffer {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line without its terminator, `Ok(None)` if none is complete yet, or
    /// an error once the pending line is too long (the buffer is then cleared).
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineError> {
        match self.buf.iter().position(|&b| b == b'\n') {
            Some(i) if i <= MAX_LINE => {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                Ok(Some(line))
            }
            Some(_) => {
                self.buf.clear();
                Err(LineError::TooLong)
            }
            None if self.buf.len() > MAX_LINE => {
                self.buf.clear();
                Err(LineError::TooLong)
            }
            None => Ok(None),
        }
    }
}

/// Encodes a message as one line (JSON plus `\n`).
pub fn encode_line<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(msg).expect("API values always serialize");
    v.push(b'\n');
    v
}

/// Decodes one line.
pub fn decode_line<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_split() {
        let msgs = vec![
            ControllerToNode::Request {
                req: 1,
                body: NodeRequest::StartMigration {
                    external: Ipv4Addr::new(198, 18, 0, 1),
                    to: InstanceId(2),
                    algorithm: Algorithm::FreezeCopy,
                    params: Some(Params::default()),
                },
            },
            ControllerToNode::Request {
                req: 2,
                body: NodeRequest::Status,
            },
        ];
        let mut lb = LineBuffer::default();
        let bytes: Vec<u8> = msgs.iter().flat_map(encode_line).collect();
        // Feed in awkward pieces.
        let mut got = Vec::new();
        for piece in bytes.chunks(7) {
            lb.push(piece);
            while let Some(l) = lb.next_line().unwrap() {
                got.push(decode_line::<ControllerToNode>(&l).unwrap());
            }
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn events_and_replies_round_trip() {
        let msgs = vec![
            NodeToController::Hello {
                id: InstanceId(1),
                mac: [2, 0, 0, 0, 0, 1],
                groups: vec![Ipv4Addr::new(198, 18, 0, 1)],
            },
            NodeToController::Event {
                at_ns: 5,
                event: MigrationEvent::ReadyForCutover {
                    migration: flowshift_migration::MigrationId(7),
                    group: 0,
                },
            },
            NodeToController::Reply {
                req: 3,
                result: Err("no group".into()),
            },
            NodeToController::Reply {
                req: 4,
                result: Ok(ReplyBody::Status(Box::default())),
            },
        ];
        for m in msgs {
            let line = encode_line(&m);
            assert_eq!(line.last(), Some(&b'\n'));
            let back: NodeToController = decode_line(&line[..line.len() - 1]).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn overlong_line_is_refused_not_buffered_forever() {
        let mut lb = LineBuffer::default();
        lb.push(&vec![b'x'; MAX_LINE + 1]);
        assert_eq!(lb.next_line(), Err(LineError::TooLong));
        lb.push(b"{}\n");
        assert_eq!(lb.next_line(), Ok(Some(b"{}".to_vec())));
    }
}
