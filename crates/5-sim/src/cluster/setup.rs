//! Building a run's network: the two instances (A pre-loaded with the fictive states), the
//! orchestrator and the switch, routers, hosts and links (with the scheduled faults), the
//! applications and the delay observer.

use super::{
    A, B, ClusterConfig, ClusterError, EXTERNAL, Net, SW_INSIDE, SW_NAT_A, SW_NAT_B, SW_OUTSIDE,
    cfg_err, client_addr, nat_config, server_addr,
};
use crate::element::StaticRouter;
use crate::host::{AppSpec, HostConfig, TcpConfig};
use crate::link::LinkConfig;
use crate::nat_element::{NatElement, NatPorts};
use crate::packet::ElementId;
use crate::sim::{AppId, Sim, SimConfig};
use crate::switch::RuleSwitch;
use flowshift_control::orchestrator::Orchestrator;
use flowshift_control::rules::{GroupRoute, InstancePort, Topology};
use flowshift_migration::{Instance, MigrationConfig};
use flowshift_nat::{GroupConfig, Nat, NatConfig};
use flowshift_wire::Instant;
use ipnet::Ipv4Net;
use rand::RngExt;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::rc::Rc;
use std::time::Duration;

/// The network of a run for `cfg`, at time zero.
pub(super) fn build(cfg: &ClusterConfig) -> Result<Net, ClusterError> {
    let mut sim = Sim::new(SimConfig {
        seed: cfg.seed,
        goodput_bin: cfg.goodput_bin,
    });
    let (na, nb, subscribers) = instances(&mut sim, cfg)?;
    let (orch, sw) = controller(&mut sim, cfg, subscribers)?;
    let (clients, servers) = network(&mut sim, cfg, na, nb, sw)?;
    let sinks = apps(&mut sim, cfg, &clients, &servers)?;
    let samples = delay_samples(&mut sim, &servers);
    Ok(Net {
        sim,
        na,
        nb,
        sw,
        orch,
        sinks,
        samples,
    })
}

/// NAT instances: A serves the group and holds the fictive states; B starts empty. Returns
/// their elements and the group's subscriber prefix.
fn instances(
    sim: &mut Sim,
    cfg: &ClusterConfig,
) -> Result<(ElementId, ElementId, Ipv4Net), ClusterError> {
    let group = GroupConfig {
        external: EXTERNAL,
        subscribers: "100.64.0.0/16".parse().map_err(cfg_err)?,
    };
    let max_sessions = cfg.fictive_states + 64 * cfg.flows as u32 + 4096;
    let mut nat_a = Nat::new(NatConfig {
        groups: vec![group.clone()],
        ..nat_config(max_sessions)
    })
    .map_err(cfg_err)?;
    let g = nat_a
        .group_id(EXTERNAL)
        .ok_or_else(|| ClusterError::Config("group missing".into()))?;
    for chunk in flowshift_nat::record::fictive_records(cfg.fictive_states, cfg.seed) {
        nat_a.import(g, Instant::ZERO, &chunk).map_err(cfg_err)?;
    }
    while nat_a.poll_event().is_some() {}
    let nat_b = Nat::new(nat_config(max_sessions)).map_err(cfg_err)?;
    let mcfg = MigrationConfig {
        report_drops: true,
        cutover_hold_max: Duration::from_millis(200),
        ..MigrationConfig::default()
    };
    let inst_a = Instance::with_meta(A, nat_a, mcfg.clone()).map_err(cfg_err)?;
    let inst_b = Instance::with_meta(B, nat_b, mcfg).map_err(cfg_err)?;
    let na = sim.add_element("nat-a", NatElement::new(inst_a, NatPorts::pair_to(B)));
    let nb = sim.add_element("nat-b", NatElement::new(inst_b, NatPorts::pair_to(A)));
    Ok((na, nb, group.subscribers))
}

/// Controller and switch: the orchestrator with A owning the group, and the rule switch with
/// its table.
fn controller(
    sim: &mut Sim,
    cfg: &ClusterConfig,
    subscribers: Ipv4Net,
) -> Result<(Orchestrator, ElementId), ClusterError> {
    let topo = Topology {
        inside_port: SW_INSIDE as u32,
        outside_port: SW_OUTSIDE as u32,
        instances: BTreeMap::from([
            (
                A,
                InstancePort {
                    port: SW_NAT_A as u32,
                    mac: [2, 0, 0, 0, 0, 0xa],
                },
            ),
            (
                B,
                InstancePort {
                    port: SW_NAT_B as u32,
                    mac: [2, 0, 0, 0, 0, 0xb],
                },
            ),
        ]),
    };
    let orch = Orchestrator::new(
        topo,
        vec![GroupRoute {
            external: EXTERNAL,
            subscribers,
            owner: A,
        }],
    )
    .map_err(cfg_err)?;
    let sw = sim.add_element(
        "switch",
        RuleSwitch::new(orch.table().to_vec(), cfg.switch_update_delay),
    );
    Ok((orch, sw))
}

/// Routers, hosts, links, and the faults scheduled on them. Returns the clients and servers.
fn network(
    sim: &mut Sim,
    cfg: &ClusterConfig,
    na: ElementId,
    nb: ElementId,
    sw: ElementId,
) -> Result<(Vec<ElementId>, Vec<ElementId>), ClusterError> {
    let servers_n = cfg.client_hosts;
    let fast = LinkConfig::new(10_000_000_000, cfg.hop_delay, 1_000_000);
    let mut inside = StaticRouter::new().route(Ipv4Addr::UNSPECIFIED, 0, 0);
    let mut outside = StaticRouter::new().route(Ipv4Addr::UNSPECIFIED, 0, 0);
    let mut clients = Vec::new();
    let mut servers: Vec<ElementId> = Vec::new();
    for i in 0..cfg.client_hosts {
        inside.add_route(client_addr(i), 32, 1 + i as u16);
    }
    for i in 0..servers_n {
        outside.add_route(server_addr(i), 32, 1 + i as u16);
    }
    let r_in = sim.add_element("inside-router", inside);
    let r_out = sim.add_element("outside-router", outside);
    for i in 0..cfg.client_hosts {
        let c = sim
            .add_host(HostConfig::new(format!("sub{i}"), client_addr(i)))
            .map_err(cfg_err)?;
        sim.connect((c, 0), (r_in, 1 + i as u16), fast.clone())
            .map_err(cfg_err)?;
        clients.push(c);
    }
    for i in 0..servers_n {
        let s = sim
            .add_host(HostConfig::new(format!("srv{i}"), server_addr(i)))
            .map_err(cfg_err)?;
        sim.connect((s, 0), (r_out, 1 + i as u16), fast.clone())
            .map_err(cfg_err)?;
        servers.push(s);
    }
    sim.connect((r_in, 0), (sw, SW_INSIDE), fast.clone())
        .map_err(cfg_err)?;
    let bottleneck = LinkConfig::new(cfg.bottleneck_bps, cfg.hop_delay * 5, cfg.bottleneck_queue);
    sim.connect((sw, SW_OUTSIDE), (r_out, 0), bottleneck)
        .map_err(cfg_err)?;
    let a_switch = sim
        .connect((sw, SW_NAT_A), (na, 0), fast.clone())
        .map_err(cfg_err)?;
    sim.connect((sw, SW_NAT_B), (nb, 0), fast.clone())
        .map_err(cfg_err)?;
    let chain_link = if cfg.chain_over_transfer_path {
        LinkConfig::new(cfg.transfer_bps, cfg.transfer_delay, 8 << 20)
    } else {
        fast.clone()
    };
    let chain = sim.connect((na, 1), (nb, 1), chain_link).map_err(cfg_err)?;
    let transfer = LinkConfig::new(cfg.transfer_bps, cfg.transfer_delay, 64 << 20)
        .with_loss(cfg.transfer_loss)
        .with_reorder(cfg.transfer_reorder, Duration::from_millis(1));
    let transfer = sim.connect((na, 2), (nb, 2), transfer).map_err(cfg_err)?;
    if let Some(t) = cfg.transfer_down_at {
        for l in [transfer.0, transfer.1] {
            sim.schedule_link_state(l, Instant::ZERO + t, false)
                .map_err(cfg_err)?;
        }
    }
    if let Some(t) = cfg.source_crash_at {
        for l in [
            a_switch.0, a_switch.1, chain.0, chain.1, transfer.0, transfer.1,
        ] {
            sim.schedule_link_state(l, Instant::ZERO + t, false)
                .map_err(cfg_err)?;
        }
    }
    Ok((clients, servers))
}

/// Applications: sinks on the servers, bulk senders on the subscribers. Returns the sinks.
fn apps(
    sim: &mut Sim,
    cfg: &ClusterConfig,
    clients: &[ElementId],
    servers: &[ElementId],
) -> Result<Vec<AppId>, ClusterError> {
    let servers_n = cfg.client_hosts;
    let tcp = TcpConfig::default();
    let per_server = cfg.flows.div_ceil(servers_n);
    let mut sinks: Vec<AppId> = Vec::new();
    for &s in servers {
        sinks.push(
            sim.add_app(
                s,
                AppSpec::TcpSink {
                    port: 5001,
                    backlog: per_server,
                    tcp: tcp.clone(),
                },
            )
            .map_err(cfg_err)?,
        );
    }
    let mut rng = sim.rng(1);
    for f in 0..cfg.flows {
        let start = Instant::ZERO + Duration::from_micros(rng.random_range(0..50_000));
        let dst = SocketAddrV4::new(server_addr(f % servers_n), 5001);
        sim.add_app(
            clients[f % cfg.client_hosts],
            AppSpec::TcpSource {
                dst,
                bytes: None,
                start,
                tcp: tcp.clone(),
            },
        )
        .map_err(cfg_err)?;
    }
    Ok(sinks)
}

/// Delay samples of data packets at the servers: (sent ns, one-way delay ns).
fn delay_samples(sim: &mut Sim, servers: &[ElementId]) -> Rc<RefCell<Vec<(u64, u64)>>> {
    let samples: Rc<RefCell<Vec<(u64, u64)>>> = Rc::new(RefCell::new(Vec::new()));
    {
        let samples = samples.clone();
        let servers = servers.to_vec();
        sim.set_arrival_observer(move |a| {
            if servers.contains(&a.host) && a.packet.bytes().len() > 100 {
                samples
                    .borrow_mut()
                    .push((a.packet.sent_at().as_nanos(), a.delay.as_nanos() as u64));
            }
        });
    }
    samples
}
