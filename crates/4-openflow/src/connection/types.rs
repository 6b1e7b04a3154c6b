//! The public types of a connection: its configuration, state, events, close reasons, send
//! errors and counters.

use super::*;

/// Limits and timers of a [`Connection`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest message accepted from the switch, in bytes (at most 65535).
    pub max_message_len: usize,
    /// Bytes the transmit queue may hold; sends beyond it are refused with
    /// [`SendError::QueueFull`].
    pub max_tx_bytes: usize,
    /// Events the event queue may hold; further events are dropped and counted (except
    /// [`Event::Closed`], which is always delivered).
    pub max_events: usize,
    /// Multipart requests that may await their reply at once.
    pub max_pending_requests: usize,
    /// Entries kept per multipart reply; the rest are dropped and the event marked truncated.
    pub max_stats_entries: usize,
    /// Time allowed from start until the FEATURES_REPLY arrives.
    pub handshake_timeout: Duration,
    /// Idle time after which an ECHO_REQUEST probes the switch; `None` disables keepalive.
    pub echo_interval: Option<Duration>,
    /// Time after the probe without any input before the connection is closed.
    pub echo_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_len: OFP_MAX_MESSAGE_LEN,
            max_tx_bytes: 4 << 20,
            max_events: 4096,
            max_pending_requests: 64,
            max_stats_entries: 1 << 20,
            handshake_timeout: Duration::from_secs(10),
            echo_interval: Some(Duration::from_secs(5)),
            echo_timeout: Duration::from_secs(5),
        }
    }
}

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// HELLO sent, waiting for the switch's HELLO.
    AwaitingHello,
    /// Version 1.3 agreed, FEATURES_REQUEST sent, waiting for the reply.
    AwaitingFeatures,
    /// Handshake complete; requests may be sent.
    Connected,
    /// Closed; input is ignored.
    Closed,
}

/// Why the connection closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The switch does not speak OpenFlow 1.3; an OFPET_HELLO_FAILED error was queued.
    VersionMismatch {
        /// Version in the switch's HELLO header.
        peer_version: u8,
        /// Its version bitmap, if it sent one.
        peer_bitmap: Option<u32>,
    },
    /// The switch sent an OFPET_HELLO_FAILED error.
    PeerHelloFailed {
        /// The error code.
        code: u16,
    },
    /// No FEATURES_REPLY within [`Config::handshake_timeout`].
    HandshakeTimeout,
    /// No input within [`Config::echo_timeout`] of a keepalive probe.
    EchoTimeout,
    /// The byte stream could not be split into messages.
    Framing(FrameError),
    /// The switch broke the protocol (e.g. its first message was not a HELLO).
    ProtocolViolation(&'static str),
    /// [`Connection::close`] was called.
    Local,
}

/// Something the driver should know about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Connected {
        /// The switch's datapath id.
        datapath_id: u64,
        /// The whole FEATURES_REPLY.
        features: FeaturesReply,
    },
    /// A BARRIER_REPLY: every request sent before barrier `xid` has been processed.
    BarrierReply {
        /// Xid of the barrier request.
        xid: u32,
    },
    /// An OFPT_ERROR about request `xid`.
    Error {
        /// Xid of the failed request.
        xid: u32,
        /// The error.
        error: ErrorMsg,
    },
    /// A packet sent to the controller.
    PacketIn(PacketIn),
    /// A flow entry installed with SEND_FLOW_REM was removed.
    FlowRemoved(FlowRemoved),
    /// A port was added, removed or changed.
    PortStatus(PortStatus),
    /// All parts of the reply to a flow-stats request.
    FlowStats {
        /// Xid of the request.
        xid: u32,
        /// The entries.
        entries: Vec<FlowStats>,
        /// Whether entries beyond [`Config::max_stats_entries`] were dropped.
        truncated: bool,
    },
    /// All parts of the reply to a port-stats request.
    PortStats {
        /// Xid of the request.
        xid: u32,
        /// The entries.
        entries: Vec<PortStats>,
        /// Whether entries were dropped.
        truncated: bool,
    },
    /// All parts of the reply to a port-description request.
    PortDesc {
        /// Xid of the request.
        xid: u32,
        /// The ports.
        ports: Vec<Port>,
        /// Whether entries were dropped.
        truncated: bool,
    },
    /// Any other message from the switch (including unknown types and unsolicited replies).
    Message {
        /// Its xid.
        xid: u32,
        /// The message.
        message: Message,
    },
    /// A message from the switch that could not be decoded (counted and skipped).
    Malformed {
        /// Its xid.
        xid: u32,
        /// Its type.
        msg_type: u8,
        /// What was wrong.
        error: DecodeError,
    },
    /// The connection closed; no further events follow.
    Closed(CloseReason),
}

/// Why a request was not queued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The handshake has not completed.
    #[error("connection not established")]
    NotConnected,
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// The transmit queue is full; poll_transmit and retry.
    #[error("transmit queue full")]
    QueueFull,
    /// Too many multipart requests await replies.
    #[error("too many pending multipart requests")]
    TooManyPending,
    /// The message cannot be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Counters; all monotonic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes passed to `handle_input` while open.
    pub bytes_received: u64,
    /// Messages framed from the input.
    pub messages_received: u64,
    /// Messages handed out by `poll_transmit`.
    pub messages_sent: u64,
    /// Bytes handed out by `poll_transmit`.
    pub bytes_sent: u64,
    /// Received messages that failed to decode.
    pub decode_errors: u64,
    /// Messages not queued because the transmit queue was full.
    pub tx_refused: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
    /// Bytes passed to `handle_input` after close (ignored).
    pub input_after_close: u64,
    /// ECHO_REQUESTs from the switch answered.
    pub echo_replies_sent: u64,
    /// Keepalive ECHO_REQUESTs sent.
    pub echo_requests_sent: u64,
    /// Multipart reply entries dropped beyond [`Config::max_stats_entries`].
    pub stats_entries_dropped: u64,
    /// Replies matching no pending request, or of another type than requested.
    pub unsolicited_replies: u64,
}
