//! Handling the connection's events (handshake, errors, barrier and statistics replies,
//! flow removals, closes) and polling flow and port statistics.

use super::*;

impl Switch {
    pub(super) fn process_events(&mut self, now: Instant, table: &[Rule]) -> Vec<u64> {
        let mut confirmed = Vec::new();
        while let Some(ev) = self.link.as_mut().and_then(|l| l.conn.poll_event()) {
            match ev {
                Event::Connected {
                    datapath_id,
                    features,
                } => {
                    // Links are promoted from candidates once connected: not expected here.
                    self.handshake_done(now, datapath_id, features.n_tables, table);
                }
                Event::BarrierReply { xid } => {
                    let Some(i) = self.batches.iter().position(|b| b.barrier == xid) else {
                        self.counters.unknown_barriers += 1;
                        debug!(xid, "barrier reply for no batch");
                        continue;
                    };
                    if let Some(b) = self.batches.remove(i) {
                        confirmed.extend(self.finish_batch(b, table));
                    }
                }
                Event::Error { xid, error } => {
                    self.counters.errors += 1;
                    let batch = self
                        .batches
                        .iter_mut()
                        .find(|b| b.sent.iter().any(|s| s.xid == xid));
                    let what = match batch {
                        Some(b) => {
                            b.errors += 1;
                            b.sent
                                .iter()
                                .find(|s| s.xid == xid)
                                .map_or_else(String::new, |s| s.what.clone())
                        }
                        None => "a request outside any batch".to_owned(),
                    };
                    let msg = format!(
                        "OpenFlow error type {} code {} for xid {xid} ({what})",
                        error.err_type, error.code
                    );
                    error!("{msg}");
                    self.note_error(msg);
                }
                Event::FlowStats { xid, entries, .. } => {
                    if let Some(p) = &mut self.stats_pending
                        && p.flows == Some(xid)
                    {
                        p.flows = None;
                        self.counters.stats_replies += 1;
                        self.stats_at = Some(now);
                        let mut flows: Vec<FlowCounter> = entries
                            .iter()
                            .map(|e| FlowCounter {
                                table_id: e.table_id,
                                priority: e.priority,
                                cookie: e.cookie,
                                match_: flows::describe_match(&e.match_),
                                packets: e.packet_count,
                                bytes: e.byte_count,
                                duration_s: f64::from(e.duration_sec)
                                    + f64::from(e.duration_nsec) / 1e9,
                            })
                            .collect();
                        flows.sort_by(|a, b| (b.priority, &a.match_).cmp(&(a.priority, &b.match_)));
                        self.flows = flows;
                    }
                }
                Event::PortStats { xid, entries, .. } => {
                    if let Some(p) = &mut self.stats_pending
                        && p.ports == Some(xid)
                    {
                        p.ports = None;
                        self.counters.stats_replies += 1;
                        self.stats_at = Some(now);
                        let mut ports: Vec<PortCounter> = entries
                            .iter()
                            .map(|e| PortCounter {
                                port_no: e.port_no,
                                rx_packets: e.rx_packets,
                                tx_packets: e.tx_packets,
                                rx_bytes: e.rx_bytes,
                                tx_bytes: e.tx_bytes,
                                rx_dropped: e.rx_dropped,
                                tx_dropped: e.tx_dropped,
                                rx_errors: e.rx_errors,
                                tx_errors: e.tx_errors,
                            })
                            .collect();
                        ports.sort_by_key(|p| p.port_no);
                        self.ports = ports;
                    }
                }
                Event::PortStatus(p) => {
                    self.counters.port_status += 1;
                    info!(port = p.port.port_no, name = %p.port.name, reason = p.reason, "switch port status");
                }
                Event::PacketIn(_) => self.counters.packet_ins += 1,
                Event::FlowRemoved(_) | Event::PortDesc { .. } | Event::Message { .. } => {
                    self.counters.other_messages += 1;
                }
                Event::Malformed {
                    xid,
                    msg_type,
                    error,
                } => {
                    warn!(xid, msg_type, %error, "undecodable message from the switch");
                }
                Event::Closed(reason) => {
                    let why = close_reason(&reason);
                    warn!(%why, "switch connection closed");
                    self.drop_link(&why);
                }
            }
            if self
                .stats_pending
                .as_ref()
                .is_some_and(|p| p.flows.is_none() && p.ports.is_none())
            {
                self.stats_pending = None;
            }
        }
        confirmed
    }

    /// The current link's handshake completed: install the whole table.
    pub(super) fn handshake_done(
        &mut self,
        now: Instant,
        datapath_id: u64,
        n_tables: u8,
        table: &[Rule],
    ) {
        info!(
            datapath_id = format_args!("{datapath_id:#018x}"),
            tables = n_tables,
            "switch handshake complete"
        );
        self.counters.connects += 1;
        self.next_stats = now + STATS_INTERVAL;
        let tokens = std::mem::take(&mut self.waiting);
        self.install(table, tokens, true, 1);
    }

    pub(super) fn poll_stats(&mut self, now: Instant) {
        if let Some(p) = &self.stats_pending {
            if now < p.since + STATS_TIMEOUT {
                return;
            }
            self.counters.stats_timeouts += 1;
            self.stats_pending = None;
        }
        if now < self.next_stats || !self.connected() {
            return;
        }
        self.next_stats = now + STATS_INTERVAL;
        let Some(l) = &mut self.link else { return };
        let flows = l.conn.request_flow_stats(&FlowStatsRequest::all()).ok();
        let ports = l.conn.request_port_stats(port::ANY).ok();
        if flows.is_none() || ports.is_none() {
            self.counters.send_refused += 1;
        }
        if flows.is_some() || ports.is_some() {
            self.stats_pending = Some(StatsPending {
                since: now,
                flows,
                ports,
            });
        }
    }
}
