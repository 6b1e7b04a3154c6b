//! A simulated OpenFlow-like switch that forwards by the controller's rules
//! ([`flowshift_control::rules`]) and applies rule changes after a configurable update delay,
//! confirming each change like an OpenFlow barrier reply.
//!
//! The simulator carries IPv4 packets without an Ethernet header, so MAC matches never match
//! and `SetEthDst` actions do nothing; instance-to-instance chaining uses direct links.

use crate::element::{Element, Emit};
use crate::packet::{Packet, Port};
use flowshift_control::rules::{self, Action, Rule, RuleDiff};
use flowshift_wire::Instant;
use serde::Serialize;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Counters of the switch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SwitchStats {
    /// Packets forwarded.
    pub forwarded: u64,
    /// Packets no rule matched (dropped).
    pub no_rule: u64,
    /// Packets too short to carry IPv4 addresses (dropped).
    pub malformed: u64,
    /// Rule changes applied.
    pub changes_applied: u64,
    /// Rule changes refused because too many were pending.
    pub changes_refused: u64,
}

/// The switch element.
pub struct RuleSwitch {
    table: Vec<Rule>,
    update_delay: Duration,
    pending: VecDeque<(Instant, RuleDiff, u64)>,
    confirmed: VecDeque<(u64, Instant)>,
    max_pending: usize,
    stats: SwitchStats,
}

impl RuleSwitch {
    /// A switch with an initial table; later changes take `update_delay` to apply.
    pub fn new(table: Vec<Rule>, update_delay: Duration) -> Self {
        RuleSwitch {
            table,
            update_delay,
            pending: VecDeque::new(),
            confirmed: VecDeque::new(),
            max_pending: 1024,
            stats: SwitchStats::default(),
        }
    }

    /// Queues a change (the flow-mods of `diff` followed by a barrier tagged `token`); it takes
    /// effect `update_delay` after `now`, in submission order. False if too many are pending.
    pub fn submit(&mut self, now: Instant, diff: RuleDiff, token: u64) -> bool {
        if self.pending.len() >= self.max_pending {
            self.stats.changes_refused += 1;
            return false;
        }
        let at = self.pending.back().map_or(now, |p| p.0.max(now)) + self.update_delay;
        self.pending.push_back((at, diff, token));
        true
    }

    /// Barrier tokens whose changes are in effect, with the instant they took effect.
    pub fn take_confirmed(&mut self) -> Vec<(u64, Instant)> {
        self.confirmed.drain(..).collect()
    }

    /// The current table.
    pub fn table(&self) -> &[Rule] {
        &self.table
    }

    /// Counters.
    pub fn stats(&self) -> &SwitchStats {
        &self.stats
    }
}

impl Element for RuleSwitch {
    fn on_packet(&mut self, _now: Instant, port: Port, pkt: Packet, out: &mut Emit<'_>) {
        let b = pkt.bytes();
        if b.len() < 20 {
            self.stats.malformed += 1;
            out.drop_packet(pkt, "switch_malformed");
            return;
        }
        let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
        let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
        let egress = rules::lookup(&self.table, port as u32, [0; 6], src, dst).and_then(|r| {
            r.actions.iter().rev().find_map(|a| match a {
                Action::Output(p) => Some(*p),
                Action::SetEthDst(_) => None,
            })
        });
        match egress.and_then(|p| Port::try_from(p).ok()) {
            Some(p) => {
                self.stats.forwarded += 1;
                out.send(p, pkt);
            }
            None => {
                self.stats.no_rule += 1;
                out.drop_packet(pkt, "switch_no_rule");
            }
        }
    }

    fn on_timer(&mut self, now: Instant, _out: &mut Emit<'_>) {
        while let Some((at, _, _)) = self.pending.front() {
            if *at > now {
                break;
            }
            let Some((at, diff, token)) = self.pending.pop_front() else {
                break;
            };
            rules::apply(&mut self.table, &diff);
            self.stats.changes_applied += 1;
            self.confirmed.push_back((token, at));
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.pending.front().map(|p| p.0)
    }
}
