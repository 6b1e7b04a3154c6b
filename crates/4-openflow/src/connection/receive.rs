//! The receive path of a connection: decoding each framed message, version negotiation, the
//! features handshake, dispatch to events, and multipart reassembly within its bounds.

use super::*;

impl Connection {
    pub(super) fn handle_message(&mut self, buf: &[u8]) {
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
