//! The control layer's rules as OpenFlow 1.3 flow-mods, one to one.
//!
//! A [`Rule`] becomes a table-0 entry with the rule's priority and cookie, no timeouts and no
//! flags. Its match maps field by field: `in_port`, `eth_dst` (exact), `ipv4_src` /
//! `ipv4_dst` as prefix masks (exact for /32), and `eth_type = 0x0800` whenever an IPv4 field
//! is set (OpenFlow's prerequisite). Its actions become one APPLY_ACTIONS instruction:
//! SET_FIELD eth_dst and OUTPUT, in the rule's order.

use flowshift_control::rules::{self, Rule};
use flowshift_openflow::{Action, FlowMod, FlowModCommand, Instruction, Masked, Match, SetField};
use ipnet::Ipv4Net;
use std::fmt::Write as _;

/// The OpenFlow match of a rule's match (prerequisites included).
pub fn to_match(m: &rules::Match) -> Match {
    let prefix = |n: Ipv4Net| Masked::ipv4_prefix(n.network(), n.prefix_len());
    Match {
        in_port: m.in_port,
        eth_dst: m.eth_dst.map(Masked::exact),
        ipv4_src: m.ipv4_src.map(prefix),
        ipv4_dst: m.ipv4_dst.map(prefix),
        ..Match::default()
    }
    .with_prerequisites()
}

/// The instructions of a rule's actions: one APPLY_ACTIONS with them in order.
pub fn to_instructions(actions: &[rules::Action]) -> Vec<Instruction> {
    vec![Instruction::ApplyActions(
        actions
            .iter()
            .map(|a| match *a {
                rules::Action::SetEthDst(mac) => Action::SetField(SetField::EthDst(mac)),
                rules::Action::Output(port) => Action::output(port),
            })
            .collect(),
    )]
}

/// The flow-mod applying `command` to `rule`'s entry in table 0. ADD and MODIFY_STRICT carry
/// the cookie and instructions; DELETE_STRICT identifies the entry by priority and match only
/// (cookie mask 0).
pub fn flow_mod(rule: &Rule, command: FlowModCommand) -> FlowMod {
    let m = to_match(&rule.matcher);
    match command {
        FlowModCommand::Delete | FlowModCommand::DeleteStrict => FlowMod {
            command,
            ..FlowMod::delete_strict(0, m, rule.priority)
        },
        _ => FlowMod {
            cookie: rule.cookie,
            command,
            ..FlowMod::add(m, rule.priority, to_instructions(&rule.actions))
        },
    }
}

/// The flow-mod deleting every entry of every table.
pub fn delete_all() -> FlowMod {
    FlowMod::delete(Match::default())
}

/// A one-line description of a rule for logs and errors, e.g.
/// `prio=200 in_port=1 ipv4_src=100.64.0.0/16 -> eth_dst:02:f5:00:00:00:01 output:3`.
pub fn describe(rule: &Rule) -> String {
    let mut s = format!("prio={}", rule.priority);
    let m = &rule.matcher;
    if let Some(p) = m.in_port {
        let _ = write!(s, " in_port={p}");
    }
    if let Some(mac) = m.eth_dst {
        let _ = write!(s, " eth_dst={}", crate::config::MacAddr(mac));
    }
    if let Some(n) = m.ipv4_src {
        let _ = write!(s, " ipv4_src={n}");
    }
    if let Some(n) = m.ipv4_dst {
        let _ = write!(s, " ipv4_dst={n}");
    }
    s.push_str(" ->");
    for a in &rule.actions {
        match a {
            rules::Action::SetEthDst(mac) => {
                let _ = write!(s, " eth_dst:{}", crate::config::MacAddr(*mac));
            }
            rules::Action::Output(p) => {
                let _ = write!(s, " output:{p}");
            }
        }
    }
    s
}

/// A one-line description of an OpenFlow match (for switch statistics), e.g.
/// `in_port=1,eth_type=0x0800,ipv4_src=100.64.0.0/16`; `any` for the empty match.
pub fn describe_match(m: &Match) -> String {
    let mut parts = Vec::new();
    if let Some(p) = m.in_port {
        parts.push(format!("in_port={p}"));
    }
    if let Some(e) = &m.eth_dst {
        parts.push(format!("eth_dst={}", crate::config::MacAddr(e.value)));
    }
    if let Some(t) = m.eth_type {
        parts.push(format!("eth_type=0x{t:04x}"));
    }
    for (name, v) in [("ipv4_src", &m.ipv4_src), ("ipv4_dst", &m.ipv4_dst)] {
        if let Some(a) = v {
            match a.prefix_len() {
                Some(32) => parts.push(format!("{name}={}", a.value)),
                Some(len) => parts.push(format!("{name}={}/{len}", a.value)),
                None => parts.push(format!("{name}={}/{:?}", a.value, a.mask)),
            }
        }
    }
    if parts.is_empty() && m.other.is_empty() {
        return "any".into();
    }
    if !m.other.is_empty() {
        parts.push(format!("+{} other fields", m.other.len()));
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowshift_control::rules::{GroupRoute, InstancePort, Topology};
    use flowshift_migration::InstanceId;
    use flowshift_openflow::{ETH_TYPE_IPV4, NO_BUFFER, TABLE_ALL, decode, encode, port};
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    fn steer() -> Rule {
        Rule {
            priority: rules::PRIORITY_STEER,
            cookie: 0x0100_0000_c612_0001,
            matcher: rules::Match {
                in_port: Some(1),
                ipv4_src: Some("100.64.0.0/16".parse().unwrap()),
                ..rules::Match::default()
            },
            actions: vec![
                rules::Action::SetEthDst([2, 0xf5, 0, 0, 0, 1]),
                rules::Action::Output(3),
            ],
        }
    }

    #[test]
    fn a_steering_rule_becomes_an_add_with_prefix_mask_and_implied_eth_type() {
        let fm = flow_mod(&steer(), FlowModCommand::Add);
        assert_eq!(fm.command, FlowModCommand::Add);
        assert_eq!(
            (fm.table_id, fm.priority, fm.cookie),
            (0, 200, steer().cookie)
        );
        assert_eq!(
            (fm.cookie_mask, fm.idle_timeout, fm.hard_timeout),
            (0, 0, 0)
        );
        assert_eq!(fm.buffer_id, NO_BUFFER);
        assert_eq!(
            fm.match_,
            Match {
                in_port: Some(1),
                eth_type: Some(ETH_TYPE_IPV4),
                ipv4_src: Some(Masked {
                    value: Ipv4Addr::new(100, 64, 0, 0),
                    mask: Some(Ipv4Addr::new(255, 255, 0, 0)),
                }),
                ..Match::default()
            }
        );
        assert_eq!(
            fm.instructions,
            vec![Instruction::ApplyActions(vec![
                Action::SetField(SetField::EthDst([2, 0xf5, 0, 0, 0, 1])),
                Action::output(3),
            ])]
        );
        // It encodes and decodes to itself.
        let bytes = encode(&flowshift_openflow::Message::FlowMod(fm.clone()), 7).unwrap();
        assert_eq!(
            decode(&bytes).unwrap(),
            (7, flowshift_openflow::Message::FlowMod(fm))
        );
    }

    #[test]
    fn host_routes_are_exact_and_mac_matches_need_no_eth_type() {
        let r = Rule {
            priority: rules::PRIORITY_STEER,
            cookie: 1,
            matcher: rules::Match {
                in_port: Some(2),
                ipv4_dst: Some("198.18.0.1/32".parse().unwrap()),
                ..rules::Match::default()
            },
            actions: vec![rules::Action::Output(4)],
        };
        let m = flow_mod(&r, FlowModCommand::ModifyStrict).match_;
        assert_eq!(
            m.ipv4_dst,
            Some(Masked::exact(Ipv4Addr::new(198, 18, 0, 1)))
        );
        assert_eq!(m.eth_type, Some(ETH_TYPE_IPV4));
        let chain = rules::Match {
            in_port: Some(3),
            eth_dst: Some([2, 0, 0, 0, 0, 2]),
            ..rules::Match::default()
        };
        let m = to_match(&chain);
        assert_eq!(m.eth_dst, Some(Masked::exact([2, 0, 0, 0, 0, 2])));
        assert_eq!(m.eth_type, None, "chain frames are not IPv4 (0x88b5)");
    }

    #[test]
    fn modify_and_delete_strict_identify_the_entry_by_priority_and_match() {
        let r = steer();
        let m = flow_mod(&r, FlowModCommand::ModifyStrict);
        assert_eq!(m.command, FlowModCommand::ModifyStrict);
        assert_eq!(m.instructions, to_instructions(&r.actions));
        let d = flow_mod(&r, FlowModCommand::DeleteStrict);
        assert_eq!(d.command, FlowModCommand::DeleteStrict);
        assert_eq!((d.table_id, d.priority, d.cookie_mask), (0, 200, 0));
        assert_eq!(d.match_, m.match_);
        assert!(d.instructions.is_empty());
        assert_eq!(
            (d.out_port, d.out_group),
            (port::ANY, flowshift_openflow::GROUP_ANY)
        );
        let all = delete_all();
        assert_eq!((all.table_id, all.match_.is_empty()), (TABLE_ALL, true));
    }

    #[test]
    fn every_rule_of_a_cluster_table_maps_and_round_trips() {
        let topo = Topology {
            inside_port: 1,
            outside_port: 2,
            instances: BTreeMap::from([
                (
                    InstanceId(1),
                    InstancePort {
                        port: 3,
                        mac: [2, 0xf5, 0, 0, 0, 1],
                    },
                ),
                (
                    InstanceId(2),
                    InstancePort {
                        port: 4,
                        mac: [2, 0xf5, 0, 0, 0, 2],
                    },
                ),
            ]),
        };
        let groups = [GroupRoute {
            external: Ipv4Addr::new(198, 18, 0, 1),
            subscribers: "100.64.0.0/16".parse().unwrap(),
            owner: InstanceId(1),
        }];
        let table = rules::table(&topo, &groups).unwrap();
        assert_eq!(table.len(), 2 + 2 * 2 + 2);
        for r in &table {
            let fm = flow_mod(r, FlowModCommand::Add);
            assert_eq!((fm.priority, fm.cookie), (r.priority, r.cookie));
            let bytes = encode(&flowshift_openflow::Message::FlowMod(fm.clone()), 1).unwrap();
            assert_eq!(
                decode(&bytes).unwrap().1,
                flowshift_openflow::Message::FlowMod(fm)
            );
        }
        assert_eq!(
            describe(&table[0]),
            "prio=200 in_port=1 ipv4_src=100.64.0.0/16 -> eth_dst:02:f5:00:00:00:01 output:3"
        );
        assert_eq!(
            describe_match(&to_match(&table[1].matcher)),
            "in_port=2,eth_type=0x0800,ipv4_dst=198.18.0.1"
        );
        assert_eq!(describe_match(&Match::default()), "any");
    }
}
