//! Building a run's world: the two instances (A pre-loaded), the orchestrator, the switch,
//! routers, hosts and their traffic, the links; and the plan's faults as timed actions.

use super::{
    A, Action, B, CLIENTS, DETECT, EXTERNAL, FICTIVE, TRAFFIC_STOP, World, err, group, mig_config,
    nat_config, timeouts,
};
use crate::element::StaticRouter;
use crate::faults::FaultPlan;
use crate::host::{AppSpec, HostConfig};
use crate::link::LinkConfig;
use crate::nat_element::{NatElement, NatPorts};
use crate::packet::ElementId;
use crate::sim::{Sim, SimConfig};
use crate::switch::RuleSwitch;
use flowshift_control::orchestrator::Orchestrator;
use flowshift_control::rules::{GroupRoute, InstancePort, Topology};
use flowshift_migration::Instance;
use flowshift_nat::Nat;
use flowshift_wire::Instant;
use rand::RngExt;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// The world of a run for `seed` under `plan`, at time zero, with every link up.
pub(super) fn world(seed: u64, plan: &FaultPlan) -> Result<World, String> {
    let mut sim = Sim::new(SimConfig {
        seed,
        goodput_bin: Duration::from_millis(100),
    });
    let mut epochs = sim.rng(7);
    let [na, nb] = instances(&mut sim, seed, &mut epochs)?;
    let (topo, orch) = orchestrator()?;
    let sw = sim.add_element(
        "switch",
        RuleSwitch::new(orch.table().to_vec(), plan.switch_delay),
    );
    let fast = LinkConfig::new(1_000_000_000, Duration::from_micros(20), 1_000_000);
    let (r_in, r_out) = hosts(&mut sim, &fast)?;
    sim.connect((r_in, 0), (sw, 1), fast.clone()).map_err(err)?;
    sim.connect((sw, 2), (r_out, 0), fast.clone())
        .map_err(err)?;
    let la = sim.connect((sw, 10), (na, 0), fast.clone()).map_err(err)?;
    let lb = sim.connect((sw, 11), (nb, 0), fast.clone()).map_err(err)?;
    let chain = sim.connect((na, 1), (nb, 1), fast.clone()).map_err(err)?;
    let transfer = LinkConfig::new(1_000_000_000, Duration::from_micros(50), 16 << 20)
        .with_loss(plan.transfer_loss)
        .with_reorder(plan.transfer_reorder, Duration::from_millis(1));
    let tl = sim.connect((na, 2), (nb, 2), transfer).map_err(err)?;
    Ok(World {
        sim,
        nodes: [na, nb],
        sw,
        links: [la, lb, chain, tl],
        alive: [true, true],
        transfer_up: true,
        orch,
        topo,
        generation: 0,
        epochs,
        sessions_lost: 0,
        mappings_released: 0,
    })
}

/// The plan's faults as actions at their times from `t0`, in time order.
pub(super) fn schedule(t0: Instant, plan: &FaultPlan) -> Vec<(Instant, Action)> {
    let mut actions: Vec<(Instant, Action)> = Vec::new();
    for (x, c) in [(A, plan.source_crash), (B, plan.dest_crash)] {
        if let Some(c) = c {
            actions.push((t0 + c.at, Action::Crash(x)));
            actions.push((t0 + c.at + DETECT, Action::Detect(x, c.rehome_at_once)));
            actions.push((
                t0 + c.at + c.down_for.max(DETECT * 2),
                Action::Restart(x, c.rehome_at_once),
            ));
        }
    }
    if let Some((at, d)) = plan.transfer_reset {
        actions.push((t0 + at, Action::TransferDown));
        actions.push((t0 + at + d, Action::TransferUp));
    }
    if let Some(at) = plan.controller_restart {
        actions.push((t0 + at, Action::ControllerRestart));
    }
    actions.sort_by_key(|a| a.0);
    actions
}

/// Instances A (holding the group, pre-loaded with [`FICTIVE`] states) and B (empty) as NAT
/// elements, their epochs drawn from `epochs`.
fn instances(
    sim: &mut Sim,
    seed: u64,
    epochs: &mut rand_chacha::ChaCha8Rng,
) -> Result<[ElementId; 2], String> {
    let mut nat_a = Nat::new(nat_config(vec![group()])).map_err(err)?;
    let g = nat_a.group_id(EXTERNAL).ok_or("group missing")?;
    for chunk in flowshift_nat::record::fictive_records(FICTIVE, seed) {
        nat_a.import(g, Instant::ZERO, &chunk).map_err(err)?;
    }
    while nat_a.poll_event().is_some() {}
    let nat_b = Nat::new(nat_config(vec![])).map_err(err)?;
    let inst_a = Instance::with_meta(A, nat_a, mig_config(epochs.random())).map_err(err)?;
    let inst_b = Instance::with_meta(B, nat_b, mig_config(epochs.random())).map_err(err)?;
    let na = sim.add_element("nat-a", NatElement::new(inst_a, NatPorts::pair_to(B)));
    let nb = sim.add_element("nat-b", NatElement::new(inst_b, NatPorts::pair_to(A)));
    Ok([na, nb])
}

/// The orchestrator over A and B with A owning the group, and its topology.
fn orchestrator() -> Result<(Topology, Orchestrator), String> {
    let port = |p: u32, mac: u8| InstancePort {
        port: p,
        mac: [2, 0, 0, 0, 0, mac],
    };
    let topo = Topology {
        inside_port: 1,
        outside_port: 2,
        instances: BTreeMap::from([(A, port(10, 0xa)), (B, port(11, 0xb))]),
    };
    let mut orch = Orchestrator::new(
        topo.clone(),
        vec![GroupRoute {
            external: EXTERNAL,
            subscribers: group().subscribers,
            owner: A,
        }],
    )
    .map_err(err)?;
    orch.set_timeouts(timeouts());
    Ok((topo, orch))
}

/// The inside and outside routers, the servers behind the outside one and the subscribers
/// behind the inside one sending UDP to them until [`TRAFFIC_STOP`].
fn hosts(sim: &mut Sim, fast: &LinkConfig) -> Result<(ElementId, ElementId), String> {
    let client = |i: usize| Ipv4Addr::new(100, 64, 0, 1 + i as u8);
    let server = |i: usize| Ipv4Addr::new(198, 18, 0, 1 + i as u8);
    let mut inside = StaticRouter::new();
    let mut outside = StaticRouter::new();
    for i in 0..CLIENTS {
        inside.add_route(client(i), 32, 1 + i as u16);
    }
    outside.add_route(server(0), 32, 1);
    outside.add_route(server(1), 32, 2);
    let inside = inside.route(Ipv4Addr::UNSPECIFIED, 0, 0);
    let outside = outside.route(Ipv4Addr::UNSPECIFIED, 0, 0);
    let r_in = sim.add_element("inside-router", inside);
    let r_out = sim.add_element("outside-router", outside);
    let mut servers = Vec::new();
    for i in 0..2 {
        let s = sim
            .add_host(HostConfig::new(format!("srv{i}"), server(i)))
            .map_err(err)?;
        sim.connect((s, 0), (r_out, 1 + i as u16), fast.clone())
            .map_err(err)?;
        servers.push(s);
    }
    let mut rng = sim.rng(1);
    for i in 0..CLIENTS {
        let c = sim
            .add_host(HostConfig::new(format!("sub{i}"), client(i)))
            .map_err(err)?;
        sim.connect((c, 0), (r_in, 1 + i as u16), fast.clone())
            .map_err(err)?;
        let port = 7000 + i as u16;
        sim.add_app(servers[i % 2], AppSpec::UdpSink { port })
            .map_err(err)?;
        sim.add_app(
            c,
            AppSpec::UdpCbr {
                dst: SocketAddrV4::new(server(i % 2), port),
                payload_len: 100,
                interval: Duration::from_millis(2),
                start: Instant::ZERO + Duration::from_micros(rng.random_range(0..5_000)),
                stop: Instant::ZERO + TRAFFIC_STOP,
            },
        )
        .map_err(err)?;
    }
    Ok((r_in, r_out))
}
