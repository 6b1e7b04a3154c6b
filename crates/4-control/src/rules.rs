//! Switch rules as values, and the table a cluster needs.
//!
//! The switch has one port towards the subscribers (`inside`), one towards the Internet
//! (`outside`) and one per NAT instance. For every group (external address + subscriber
//! prefix) two *steering* rules send its traffic to the owning instance: from `inside` by
//! subscriber source prefix, from `outside` by external destination address; the instance's
//! MAC is written into the frame. Traffic leaving an instance goes to `inside` when it is
//! addressed to a subscriber, else to `outside`. *Chain* rules carry frames between instances
//! by destination MAC (the daisy chain of a migration, when it runs through the switch).
//! Anything else matches nothing and is dropped (the switch runs in fail-secure mode).

use flowshift_migration::InstanceId;
use ipnet::Ipv4Net;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Priority of chain rules (instance to instance by MAC): above everything else.
pub const PRIORITY_CHAIN: u16 = 300;
/// Priority of steering rules (group traffic to its owner).
pub const PRIORITY_STEER: u16 = 200;
/// Priority of return rules towards subscribers.
pub const PRIORITY_TO_INSIDE: u16 = 150;
/// Priority of the default return rule towards the outside.
pub const PRIORITY_TO_OUTSIDE: u16 = 100;

/// What a rule matches. `None` fields are wildcards. Maps to OXM fields in_port, eth_dst,
/// eth_type=IPv4 (implied by the IPv4 fields), ipv4_src and ipv4_dst with prefix masks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Match {
    /// Ingress port.
    pub in_port: Option<u32>,
    /// Destination MAC.
    pub eth_dst: Option<[u8; 6]>,
    /// IPv4 source prefix.
    pub ipv4_src: Option<Ipv4Net>,
    /// IPv4 destination prefix.
    pub ipv4_dst: Option<Ipv4Net>,
}

impl Match {
    /// True if a frame with these fields matches.
    pub fn matches(&self, in_port: u32, eth_dst: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.in_port.is_none_or(|p| p == in_port)
            && self.eth_dst.is_none_or(|m| m == eth_dst)
            && self.ipv4_src.is_none_or(|n| n.contains(&src))
            && self.ipv4_dst.is_none_or(|n| n.contains(&dst))
    }
}

/// An action, applied in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Action {
    /// Rewrite the destination MAC.
    SetEthDst([u8; 6]),
    /// Send out of a port.
    Output(u32),
}

/// One flow entry (table 0). Two rules with the same priority and match are the same entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    /// Priority (higher wins).
    pub priority: u16,
    /// Opaque tag for the controller (which group or purpose).
    pub cookie: u64,
    /// Match.
    pub matcher: Match,
    /// Actions.
    pub actions: Vec<Action>,
}

/// A NAT instance as the switch sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct InstancePort {
    /// Switch port the instance is attached to.
    pub port: u32,
    /// The instance's MAC address.
    pub mac: [u8; 6],
}

/// A group as the switch sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GroupRoute {
    /// External address.
    pub external: Ipv4Addr,
    /// Subscriber prefix.
    pub subscribers: Ipv4Net,
    /// Owning instance (key into [`Topology::instances`]).
    pub owner: InstanceId,
}

/// The switch's wiring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// Port towards subscribers.
    pub inside_port: u32,
    /// Port towards the Internet.
    pub outside_port: u32,
    /// NAT instances by id.
    pub instances: BTreeMap<InstanceId, InstancePort>,
}

/// Cookie layout: kind in the top byte, detail below.
const COOKIE_STEER: u64 = 1 << 56;
const COOKIE_RETURN: u64 = 2 << 56;
const COOKIE_CHAIN: u64 = 3 << 56;

/// The group whose steering rule carries `cookie` (the switch's per-rule counters of a group's
/// two steering rules are its packets in both directions); `None` for other rules.
pub fn steered_group(cookie: u64) -> Option<Ipv4Addr> {
    (cookie & !0xffff_ffff == COOKIE_STEER).then(|| Ipv4Addr::from(cookie as u32))
}

/// Why a table cannot be computed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A group names an instance the topology lacks.
    #[error("group {0} is owned by unknown instance {1}")]
    UnknownOwner(Ipv4Addr, InstanceId),
}

/// The steering rules of one group towards `owner`.
pub fn steering_rules(topo: &Topology, group: &GroupRoute) -> Result<[Rule; 2], RuleError> {
    let owner = topo
        .instances
        .get(&group.owner)
        .ok_or(RuleError::UnknownOwner(group.external, group.owner))?;
    let actions = vec![Action::SetEthDst(owner.mac), Action::Output(owner.port)];
    let cookie = COOKIE_STEER | u32::from(group.external) as u64;
    let external = Ipv4Net::new(group.external, 32).expect("/32 is a valid prefix");
    Ok([
        Rule {
            priority: PRIORITY_STEER,
            cookie,
            matcher: Match {
                in_port: Some(topo.inside_port),
                ipv4_src: Some(group.subscribers),
                ..Match::default()
            },
            actions: actions.clone(),
        },
        Rule {
            priority: PRIORITY_STEER,
            cookie,
            matcher: Match {
                in_port: Some(topo.outside_port),
                ipv4_dst: Some(external),
                ..Match::default()
            },
            actions,
        },
    ])
}

/// The whole table for a cluster: steering per group, return paths per instance, chain rules
/// between every pair of instances.
pub fn table(topo: &Topology, groups: &[GroupRoute]) -> Result<Vec<Rule>, RuleError> {
    let mut rules = Vec::new();
    for g in groups {
        rules.extend(steering_rules(topo, g)?);
    }
    for (&id, inst) in &topo.instances {
        for g in groups {
            rules.push(Rule {
                priority: PRIORITY_TO_INSIDE,
                cookie: COOKIE_RETURN | id.0 as u64,
                matcher: Match {
                    in_port: Some(inst.port),
                    ipv4_dst: Some(g.subscribers),
                    ..Match::default()
                },
                actions: vec![Action::Output(topo.inside_port)],
            });
        }
        rules.push(Rule {
            priority: PRIORITY_TO_OUTSIDE,
            cookie: COOKIE_RETURN | id.0 as u64,
            matcher: Match {
                in_port: Some(inst.port),
                ..Match::default()
            },
            actions: vec![Action::Output(topo.outside_port)],
        });
        for (&other, peer) in &topo.instances {
            if other != id {
                rules.push(Rule {
                    priority: PRIORITY_CHAIN,
                    cookie: COOKIE_CHAIN | (id.0 as u64) << 16 | other.0 as u64,
                    matcher: Match {
                        in_port: Some(inst.port),
                        eth_dst: Some(peer.mac),
                        ..Match::default()
                    },
                    actions: vec![Action::Output(peer.port)],
                });
            }
        }
    }
    Ok(rules)
}

/// The flow-mods that turn table `old` into table `new`: entries are identified by
/// (priority, match), as OpenFlow's strict modify/delete do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleDiff {
    /// New entries (FLOW_MOD ADD).
    pub add: Vec<Rule>,
    /// Entries whose actions or cookie change (FLOW_MOD MODIFY_STRICT).
    pub modify: Vec<Rule>,
    /// Entries to remove (FLOW_MOD DELETE_STRICT).
    pub delete: Vec<Rule>,
}

impl RuleDiff {
    /// True if nothing changes.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.modify.is_empty() && self.delete.is_empty()
    }
}

/// Computes the difference between two tables.
pub fn diff(old: &[Rule], new: &[Rule]) -> RuleDiff {
    let key = |r: &Rule| (r.priority, r.matcher.clone());
    let old_by: BTreeMap<_, &Rule> = old.iter().map(|r| (key(r), r)).collect();
    let new_by: BTreeMap<_, &Rule> = new.iter().map(|r| (key(r), r)).collect();
    let mut d = RuleDiff::default();
    for (k, r) in &new_by {
        match old_by.get(k) {
            None => d.add.push((*r).clone()),
            Some(o) if o.actions != r.actions || o.cookie != r.cookie => {
                d.modify.push((*r).clone())
            }
            Some(_) => {}
        }
    }
    for (k, r) in &old_by {
        if !new_by.contains_key(k) {
            d.delete.push((*r).clone());
        }
    }
    d
}

/// Applies a diff to a table (what a switch does with the flow-mods).
pub fn apply(table: &mut Vec<Rule>, d: &RuleDiff) {
    let same = |a: &Rule, b: &Rule| a.priority == b.priority && a.matcher == b.matcher;
    table.retain(|r| !d.delete.iter().any(|x| same(r, x)));
    for m in &d.modify {
        if let Some(r) = table.iter_mut().find(|r| same(r, m)) {
            *r = m.clone();
        }
    }
    table.extend(d.add.iter().cloned());
}

/// The highest-priority rule matching a frame (ties: first in table order, which a correct
/// table never needs).
pub fn lookup(
    table: &[Rule],
    in_port: u32,
    eth_dst: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Option<&Rule> {
    table
        .iter()
        .filter(|r| r.matcher.matches(in_port, eth_dst, src, dst))
        .max_by_key(|r| r.priority)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two instances (0 on port 10, 1 on port 11) between inside port 1 and outside port 2.
    pub(crate) fn topo() -> Topology {
        Topology {
            inside_port: 1,
            outside_port: 2,
            instances: BTreeMap::from([
                (
                    InstanceId(0),
                    InstancePort {
                        port: 10,
                        mac: [2, 0, 0, 0, 0, 10],
                    },
                ),
                (
                    InstanceId(1),
                    InstancePort {
                        port: 11,
                        mac: [2, 0, 0, 0, 0, 11],
                    },
                ),
            ]),
        }
    }

    fn groups(owner_of_second: InstanceId) -> Vec<GroupRoute> {
        vec![
            GroupRoute {
                external: [203, 0, 113, 1].into(),
                subscribers: "100.64.0.0/24".parse().unwrap(),
                owner: InstanceId(0),
            },
            GroupRoute {
                external: [203, 0, 113, 2].into(),
                subscribers: "100.64.1.0/24".parse().unwrap(),
                owner: owner_of_second,
            },
        ]
    }

    #[test]
    fn traffic_reaches_the_owner_and_returns_the_right_way() {
        let t = table(&topo(), &groups(InstanceId(0))).unwrap();
        let any = [0; 6];
        let up = lookup(&t, 1, any, [100, 64, 1, 7].into(), [198, 18, 0, 1].into()).unwrap();
        assert_eq!(
            up.actions,
            vec![Action::SetEthDst([2, 0, 0, 0, 0, 10]), Action::Output(10)]
        );
        let down = lookup(&t, 2, any, [198, 18, 0, 1].into(), [203, 0, 113, 2].into()).unwrap();
        assert_eq!(down.actions.last(), Some(&Action::Output(10)));
        let back_in = lookup(&t, 10, any, [198, 18, 0, 1].into(), [100, 64, 1, 7].into()).unwrap();
        assert_eq!(back_in.actions, vec![Action::Output(1)]);
        let back_out =
            lookup(&t, 10, any, [203, 0, 113, 2].into(), [198, 18, 0, 1].into()).unwrap();
        assert_eq!(back_out.actions, vec![Action::Output(2)]);
        let chained = lookup(
            &t,
            10,
            [2, 0, 0, 0, 0, 11],
            [100, 64, 1, 7].into(),
            [198, 18, 0, 1].into(),
        )
        .unwrap();
        assert_eq!(chained.actions, vec![Action::Output(11)]);
        assert!(
            lookup(&t, 1, any, [10, 0, 0, 1].into(), [198, 18, 0, 1].into()).is_none(),
            "strangers are dropped"
        );
    }

    #[test]
    fn moving_a_group_modifies_exactly_its_two_steering_rules() {
        let before = table(&topo(), &groups(InstanceId(0))).unwrap();
        let after = table(&topo(), &groups(InstanceId(1))).unwrap();
        let d = diff(&before, &after);
        assert!(d.add.is_empty() && d.delete.is_empty());
        assert_eq!(d.modify.len(), 2);
        assert!(
            d.modify
                .iter()
                .all(|r| r.actions.last() == Some(&Action::Output(11)))
        );
        let mut t = before.clone();
        apply(&mut t, &d);
        assert!(diff(&t, &after).is_empty());
    }

    #[test]
    fn unknown_owner_is_an_error() {
        let mut g = groups(InstanceId(0));
        g[0].owner = InstanceId(9);
        assert!(matches!(
            table(&topo(), &g),
            Err(RuleError::UnknownOwner(_, InstanceId(9)))
        ));
    }

    #[test]
    fn steering_cookies_name_their_group_and_no_other_rule_does() {
        let t = table(&topo(), &groups(InstanceId(0))).unwrap();
        let steered: Vec<Ipv4Addr> = t.iter().filter_map(|r| steered_group(r.cookie)).collect();
        let externals: Vec<Ipv4Addr> = groups(InstanceId(0)).iter().map(|g| g.external).collect();
        assert_eq!(
            steered.len(),
            2 * externals.len(),
            "two steering rules per group"
        );
        assert!(steered.iter().all(|g| externals.contains(g)));
        for e in externals {
            assert_eq!(steered.iter().filter(|&&g| g == e).count(), 2);
        }
    }
}
