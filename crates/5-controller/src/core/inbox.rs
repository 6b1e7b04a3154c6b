//! The core's inbox and what goes through it: the [`Inbox`] the socket tasks send on, the
//! [`Input`]s they send, the operator's [`ApiRequest`]s and their [`Reply`]s.

use super::*;
/// The sending side of the core's inbox, shared by the socket tasks.
#[derive(Clone)]
pub(crate) struct Inbox {
    tx: mpsc::Sender<Input>,
    pub(crate) shared: Arc<Shared>,
}

impl Inbox {
    pub(crate) fn new(tx: mpsc::Sender<Input>, shared: Arc<Shared>) -> Self {
        Inbox { tx, shared }
    }

    /// Delivers `input`, waiting while the inbox is full (the wait is counted). False once
    /// the core has stopped.
    pub(crate) async fn send(&self, input: Input) -> bool {
        match self.tx.try_send(input) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(input)) => {
                Shared::bump(&self.shared.inbox_full_waits);
                self.tx.send(input).await.is_ok()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Delivers `input` only if there is room (operator requests: refused when busy).
    pub(crate) fn try_send(&self, input: Input) -> bool {
        self.tx.try_send(input).is_ok()
    }
}

/// What the socket tasks tell the core.
pub(crate) enum Input {
    /// A switch connected; its writer queue is `tx`.
    SwitchUp {
        conn: u64,
        tx: mpsc::Sender<Vec<u8>>,
        peer: String,
    },
    /// Bytes from a switch connection.
    SwitchBytes { conn: u64, bytes: Vec<u8> },
    /// A switch connection ended.
    SwitchDown { conn: u64, why: String },
    /// A node connection opened with this hello; its writer queue is `tx`.
    NodeHello {
        conn: u64,
        id: InstanceId,
        mac: [u8; 6],
        groups: Vec<Ipv4Addr>,
        tx: mpsc::Sender<Vec<u8>>,
        peer: String,
    },
    /// A message after the hello.
    NodeMessage { conn: u64, msg: NodeToController },
    /// A node connection ended.
    NodeDown { conn: u64, why: String },
    /// An operator API request and where to send the answer.
    Api {
        req: ApiRequest,
        reply: oneshot::Sender<Reply>,
    },
}

/// Operator API requests the core answers.
pub(crate) enum ApiRequest {
    Status,
    Migrate(MigrateRequest),
    Abort(flowshift_control::api::AbortRequest),
    Rehome(flowshift_control::api::RehomeRequest),
    Migrations,
    Report(usize),
    Switch,
    Counters,
}

/// An HTTP answer: status code and JSON body.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        match serde_json::to_vec(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Reply { status, body }
            }
            Err(e) => Reply::error(500, &format!("encoding the answer: {e}")),
        }
    }

    pub(crate) fn error(status: u16, message: &str) -> Reply {
        let mut body = serde_json::json!({ "error": message })
            .to_string()
            .into_bytes();
        body.push(b'\n');
        Reply { status, body }
    }
}
