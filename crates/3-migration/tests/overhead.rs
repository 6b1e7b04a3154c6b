//! What the `Instance` wrapper costs over the bare NAT, per packet (untagged, `M = ()`).
//! Ignored by default (prints figures): `cargo test -p flowshift-migration --release --test
//! overhead -- --ignored --nocapture`.

use flowshift_migration::MigrationConfig;
use flowshift_nat::{GroupConfig, Nat};
use std::net::Ipv4Addr;

const A: flowshift_migration::InstanceId = flowshift_migration::InstanceId(1);
const SERVER: [u8; 4] = [203, 0, 113, 10];

fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flow: u32, seq: u32) -> Vec<u8> {
    let mut payload = flow.to_be_bytes().to_vec();
    payload.extend_from_slice(&seq.to_be_bytes());
    let mut out = Vec::new();
    etherparse::PacketBuilder::ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, &payload)
        .expect("build");
    out
}

#[test]
#[ignore]
fn wrapper_overhead_figures() {
    use flowshift_migration::{Ingress, Instance};
    let cfg = || flowshift_nat::NatConfig {
        groups: vec![GroupConfig {
            external: Ipv4Addr::new(198, 18, 0, 1),
            subscribers: flowshift_nat::prefix(Ipv4Addr::new(100, 64, 0, 0), 22).unwrap(),
        }],
        block_size: 512,
        ..flowshift_nat::NatConfig::default()
    };
    let mut nat = Nat::new(cfg()).unwrap();
    let mut inst = Instance::new(A, Nat::new(cfg()).unwrap(), MigrationConfig::default()).unwrap();
    let now = flowshift_wire::Instant::from_secs(1);
    let pkts: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| {
            udp(
                [100, 64, 0, 1 + (i / 500) as u8],
                20_000 + (i % 500) as u16,
                SERVER,
                53,
                i,
                0,
            )
        })
        .collect();
    for p in &pkts {
        nat.process(now, &mut p.clone());
        inst.handle_packet(now, p.clone(), (), Ingress::Switch);
        while inst.poll_output().is_some() {}
    }
    let rounds = 100;
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        for p in &pkts {
            let mut q = p.clone();
            std::hint::black_box(nat.process(now, &mut q));
        }
    }
    let bare = t.elapsed().as_nanos() as f64 / (rounds * pkts.len()) as f64;
    let t = std::time::Instant::now();
    for _ in 0..rounds {
        for p in &pkts {
            inst.handle_packet(now, p.clone(), (), Ingress::Switch);
            std::hint::black_box(inst.poll_output());
        }
    }
    let wrapped = t.elapsed().as_nanos() as f64 / (rounds * pkts.len()) as f64;
    let t = std::time::Instant::now();
    let mut batch = Vec::with_capacity(64);
    for _ in 0..rounds {
        for chunk in pkts.chunks(64) {
            batch.extend(chunk.iter().map(|p| (p.clone(), ())));
            inst.handle_batch(now, &mut batch, Ingress::Switch);
            while let Some(o) = inst.poll_output() {
                std::hint::black_box(o);
            }
        }
    }
    let batched = t.elapsed().as_nanos() as f64 / (rounds * pkts.len()) as f64;
    println!(
        "per packet (incl. one Vec clone): Nat::process {bare:.0} ns, \
         Instance::handle_packet {wrapped:.0} ns, handle_batch(64) {batched:.0} ns"
    );
}
