//! The controller side of one OpenFlow 1.3 connection as a sans-IO state machine.
//!
//! The driver owns the socket and the clock. It feeds received bytes to
//! [`Connection::handle_input`], writes out whatever [`Connection::poll_transmit`] returns,
//! calls [`Connection::handle_timeout`] when [`Connection::poll_timeout`] is due, and reads
//! [`Event`]s from [`Connection::poll_event`]. After [`Event::Closed`] it should flush the
//! remaining transmit queue (it may hold an ERROR explaining the close) and drop the socket.

use std::collections::VecDeque;
use std::time::Duration;

use flowshift_wire::Instant;

use crate::error::{DecodeError, EncodeError};
use crate::framer::{FrameError, Framer};
use crate::message::{
    ErrorMsg, FeaturesReply, FlowMod, FlowRemoved, Header, Hello, Message, OFP_MAX_MESSAGE_LEN,
    OFP_VERSION, PacketIn, PacketOut, PortStatus, decode, encode, error_code, error_type,
};
use crate::multipart::{
    FlowStats, FlowStatsRequest, MultipartReply, MultipartReplyBody, MultipartRequest,
    MultipartRequestBody, Port, PortStats,
};

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

#[derive(Debug)]
enum Accumulated {
    Flow(Vec<FlowStats>),
    PortStats(Vec<PortStats>),
    PortDesc(Vec<Port>),
}

#[derive(Debug)]
struct Pending {
    xid: u32,
    acc: Accumulated,
    truncated: bool,
}

/// The controller side of one OpenFlow 1.3 connection. See the module documentation.
#[derive(Debug)]
pub struct Connection {
    config: Config,
    state: State,
    framer: Framer,
    next_xid: u32,
    features_xid: u32,
    datapath_id: Option<u64>,
    started: Instant,
    last_rx: Instant,
    echo_sent: Option<Instant>,
    tx: VecDeque<Vec<u8>>,
    tx_bytes: usize,
    events: VecDeque<Event>,
    pending: Vec<Pending>,
    stats: Stats,
}

impl Connection {
    /// Starts a connection at `now` and queues our HELLO (version bitmap {1.3}).
    pub fn new(config: Config, now: Instant) -> Self {
        let mut c = Connection {
            framer: Framer::new(config.max_message_len),
            config,
            state: State::AwaitingHello,
            next_xid: 1,
            features_xid: 0,
            datapath_id: None,
            started: now,
            last_rx: now,
            echo_sent: None,
            tx: VecDeque::new(),
            tx_bytes: 0,
            events: VecDeque::new(),
            pending: Vec::new(),
            stats: Stats::default(),
        };
        let xid = c.alloc_xid();
        c.queue_internal(&Message::Hello(Hello::of13()), xid);
        c
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The switch's datapath id, once connected.
    pub fn datapath_id(&self) -> Option<u64> {
        self.datapath_id
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Bytes waiting in the transmit queue.
    pub fn tx_queued_bytes(&self) -> usize {
        self.tx_bytes
    }

    /// Feeds bytes received from the switch at `now`.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        if self.state == State::Closed {
            self.stats.input_after_close += bytes.len() as u64;
            return;
        }
        if bytes.is_empty() {
            return;
        }
        self.stats.bytes_received += bytes.len() as u64;
        self.last_rx = now;
        self.echo_sent = None;
        let mut input = bytes;
        while let Some(frame) = self.framer.next_frame(&mut input) {
            match frame {
                Ok(buf) => self.handle_message(&buf),
                Err(e) => self.close_with(CloseReason::Framing(e)),
            }
            if self.state == State::Closed {
                return;
            }
        }
    }

    /// The next deadline at which [`Connection::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::AwaitingHello | State::AwaitingFeatures => {
                Some(self.started + self.config.handshake_timeout)
            }
            State::Connected => self
                .config
                .echo_interval
                .map(|interval| match self.echo_sent {
                    Some(sent) => sent + self.config.echo_timeout,
                    None => self.last_rx + interval,
                }),
        }
    }

    /// Runs the timers: handshake timeout and echo keepalive. Calling it early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closed => {}
            State::AwaitingHello | State::AwaitingFeatures => {
                if now >= self.started + self.config.handshake_timeout {
                    self.close_with(CloseReason::HandshakeTimeout);
                }
            }
            State::Connected => {
                let Some(interval) = self.config.echo_interval else {
                    return;
                };
                match self.echo_sent {
                    Some(sent) if now >= sent + self.config.echo_timeout => {
                        self.close_with(CloseReason::EchoTimeout);
                    }
                    None if now >= self.last_rx + interval => {
                        let xid = self.alloc_xid();
                        if self.queue_internal(&Message::EchoRequest(Vec::new()), xid) {
                            self.stats.echo_requests_sent += 1;
                        }
                        self.echo_sent = Some(now);
                    }
                    _ => {}
                }
            }
        }
    }

    /// The next encoded message to write to the socket.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let m = self.tx.pop_front()?;
        self.tx_bytes = self.tx_bytes.saturating_sub(m.len());
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += m.len() as u64;
        Some(m)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Closes the connection locally (emits [`Event::Closed`] with [`CloseReason::Local`]).
    pub fn close(&mut self) {
        if self.state != State::Closed {
            self.close_with(CloseReason::Local);
        }
    }

    /// Queues a FLOW_MOD; returns its xid (errors about it carry this xid).
    pub fn send_flow_mod(&mut self, flow_mod: &FlowMod) -> Result<u32, SendError> {
        self.send(&Message::FlowMod(flow_mod.clone()))
    }

    /// Queues a BARRIER_REQUEST; [`Event::BarrierReply`] with the returned xid follows once
    /// everything sent before it has been processed.
    pub fn send_barrier(&mut self) -> Result<u32, SendError> {
        self.send(&Message::BarrierRequest)
    }

    /// Queues a PACKET_OUT; returns its xid.
    pub fn send_packet_out(&mut self, packet_out: &PacketOut) -> Result<u32, SendError> {
        self.send(&Message::PacketOut(packet_out.clone()))
    }

    /// Requests flow statistics; [`Event::FlowStats`] with the returned xid carries all parts.
    pub fn request_flow_stats(&mut self, request: &FlowStatsRequest) -> Result<u32, SendError> {
        self.send(&Message::MultipartRequest(MultipartRequest {
            flags: 0,
            body: MultipartRequestBody::Flow(request.clone()),
        }))
    }

    /// Requests statistics of `port_no` ([`crate::port::ANY`] for all ports); answered by
    /// [`Event::PortStats`].
    pub fn request_port_stats(&mut self, port_no: u32) -> Result<u32, SendError> {
        self.send(&Message::MultipartRequest(MultipartRequest {
            flags: 0,
            body: MultipartRequestBody::PortStats { port_no },
        }))
    }

    /// Requests the port descriptions; answered by [`Event::PortDesc`].
    pub fn request_port_desc(&mut self) -> Result<u32, SendError> {
        self.send(&Message::MultipartRequest(MultipartRequest {
            flags: 0,
            body: MultipartRequestBody::PortDesc,
        }))
    }

    /// Queues any message with a fresh xid and returns the xid. Flow-stats, port-stats and
    /// port-description requests are tracked so that their replies are reassembled.
    pub fn send(&mut self, message: &Message) -> Result<u32, SendError> {
        match self.state {
            State::Connected => {}
            State::Closed => return Err(SendError::Closed),
            State::AwaitingHello | State::AwaitingFeatures => return Err(SendError::NotConnected),
        }
        let acc = match message {
            Message::MultipartRequest(MultipartRequest { body, .. }) => match body {
                MultipartRequestBody::Flow(_) => Some(Accumulated::Flow(Vec::new())),
                MultipartRequestBody::PortStats { .. } => Some(Accumulated::PortStats(Vec::new())),
                MultipartRequestBody::PortDesc => Some(Accumulated::PortDesc(Vec::new())),
                MultipartRequestBody::Other { .. } => None,
            },
            _ => None,
        };
        if acc.is_some() && self.pending.len() >= self.config.max_pending_requests {
            return Err(SendError::TooManyPending);
        }
        let xid = self.alloc_xid();
        self.queue(message, xid)?;
        if let Some(acc) = acc {
            self.pending.push(Pending {
                xid,
                acc,
                truncated: false,
            });
        }
        Ok(xid)
    }

    fn alloc_xid(&mut self) -> u32 {
        let xid = self.next_xid;
        self.next_xid = self.next_xid.wrapping_add(1).max(1);
        xid
    }

    fn queue(&mut self, message: &Message, xid: u32) -> Result<(), SendError> {
        let bytes = encode(message, xid)?;
        if self.tx_bytes + bytes.len() > self.config.max_tx_bytes {
            self.stats.tx_refused += 1;
            return Err(SendError::QueueFull);
        }
        self.tx_bytes += bytes.len();
        self.tx.push_back(bytes);
        Ok(())
    }

    /// Queues a message the connection sends on its own; a refusal is counted in
    /// [`Stats::tx_refused`]. Returns whether it was queued.
    fn queue_internal(&mut self, message: &Message, xid: u32) -> bool {
        self.queue(message, xid).is_ok()
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= self.config.max_events && !matches!(event, Event::Closed(_)) {
            self.stats.events_dropped += 1;
            return;
        }
        self.events.push_back(event);
    }

    fn close_with(&mut self, reason: CloseReason) {
        self.state = State::Closed;
        self.pending.clear();
        self.push_event(Event::Closed(reason));
    }

    fn handle_message(&mut self, buf: &[u8]) {
        self.stats.messages_received += 1;
        let (xid, message) = match decode(buf) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.stats.decode_errors += 1;
                // The framer guarantees a complete header.
                let (xid, msg_type) = Header::parse(buf).map_or((0, 0), |h| (h.xid, h.msg_type));
                self.push_event(Event::Malformed {
                    xid,
                    msg_type,
                    error,
                });
                if self.state == State::AwaitingHello {
                    self.close_with(CloseReason::ProtocolViolation("undecodable first message"));
                }
                return;
            }
        };
        if self.state == State::AwaitingHello {
            match message {
                Message::Hello(hello) => self.negotiate(hello),
                Message::Error(e) if e.err_type == error_type::HELLO_FAILED => {
                    self.close_with(CloseReason::PeerHelloFailed { code: e.code });
                }
                _ => self.close_with(CloseReason::ProtocolViolation(
                    "first message was not HELLO",
                )),
            }
            return;
        }
        self.dispatch(xid, message);
    }

    fn negotiate(&mut self, hello: Hello) {
        if hello.supports(OFP_VERSION) {
            self.state = State::AwaitingFeatures;
            self.features_xid = self.alloc_xid();
            self.queue_internal(&Message::FeaturesRequest, self.features_xid);
        } else {
            let error = ErrorMsg {
                err_type: error_type::HELLO_FAILED,
                code: error_code::hello_failed::INCOMPATIBLE,
                data: b"flowshift controller requires OpenFlow 1.3 (0x04)".to_vec(),
            };
            let xid = self.alloc_xid();
            self.queue_internal(&Message::Error(error), xid);
            self.close_with(CloseReason::VersionMismatch {
                peer_version: hello.version,
                peer_bitmap: hello.bitmap,
            });
        }
    }

    fn dispatch(&mut self, xid: u32, message: Message) {
        match message {
            Message::EchoRequest(data) => {
                if self.queue_internal(&Message::EchoReply(data), xid) {
                    self.stats.echo_replies_sent += 1;
                }
            }
            // Any input already counts as liveness.
            Message::EchoReply(_) => {}
            Message::Error(error) => {
                if error.err_type == error_type::HELLO_FAILED {
                    self.close_with(CloseReason::PeerHelloFailed { code: error.code });
                    return;
                }
                self.pending.retain(|p| p.xid != xid);
                self.push_event(Event::Error { xid, error });
            }
            Message::FeaturesReply(features)
                if self.state == State::AwaitingFeatures && xid == self.features_xid =>
            {
                self.state = State::Connected;
                self.datapath_id = Some(features.datapath_id);
                self.push_event(Event::Connected {
                    datapath_id: features.datapath_id,
                    features,
                });
            }
            Message::BarrierReply => self.push_event(Event::BarrierReply { xid }),
            Message::PacketIn(p) => self.push_event(Event::PacketIn(p)),
            Message::FlowRemoved(f) => self.push_event(Event::FlowRemoved(f)),
            Message::PortStatus(p) => self.push_event(Event::PortStatus(p)),
            Message::MultipartReply(reply) => self.on_multipart(xid, reply),
            message => self.push_event(Event::Message { xid, message }),
        }
    }

    fn on_multipart(&mut self, xid: u32, reply: MultipartReply) {
        let more = reply.more();
        let max = self.config.max_stats_entries;
        let Some(idx) = self.pending.iter().position(|p| p.xid == xid) else {
            self.stats.unsolicited_replies += 1;
            self.push_event(Event::Message {
                xid,
                message: Message::MultipartReply(reply),
            });
            return;
        };
        let Some(p) = self.pending.get_mut(idx) else {
            return;
        };
        let mut dropped = 0;
        let matched = match (&mut p.acc, reply.body) {
            (Accumulated::Flow(acc), MultipartReplyBody::Flow(v)) => {
                dropped = extend_bounded(acc, v, max);
                true
            }
            (Accumulated::PortStats(acc), MultipartReplyBody::PortStats(v)) => {
                dropped = extend_bounded(acc, v, max);
                true
            }
            (Accumulated::PortDesc(acc), MultipartReplyBody::PortDesc(v)) => {
                dropped = extend_bounded(acc, v, max);
                true
            }
            (_, body) => {
                self.stats.unsolicited_replies += 1;
                let message = Message::MultipartReply(MultipartReply {
                    flags: reply.flags,
                    body,
                });
                self.push_event(Event::Message { xid, message });
                false
            }
        };
        if dropped > 0 {
            self.stats.stats_entries_dropped += dropped as u64;
            if let Some(p) = self.pending.get_mut(idx) {
                p.truncated = true;
            }
        }
        if matched && !more {
            let p = self.pending.swap_remove(idx);
            let truncated = p.truncated;
            self.push_event(match p.acc {
                Accumulated::Flow(entries) => Event::FlowStats {
                    xid,
                    entries,
                    truncated,
                },
                Accumulated::PortStats(entries) => Event::PortStats {
                    xid,
                    entries,
                    truncated,
                },
                Accumulated::PortDesc(ports) => Event::PortDesc {
                    xid,
                    ports,
                    truncated,
                },
            });
        }
    }
}

/// Appends up to `max - acc.len()` items of `v`; returns how many were dropped.
fn extend_bounded<T>(acc: &mut Vec<T>, mut v: Vec<T>, max: usize) -> usize {
    let room = max.saturating_sub(acc.len());
    let dropped = v.len().saturating_sub(room);
    v.truncate(room);
    acc.append(&mut v);
    dropped
}
