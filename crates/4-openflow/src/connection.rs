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

mod receive;
mod types;

pub use types::{CloseReason, Config, Event, SendError, State, Stats};

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
}
