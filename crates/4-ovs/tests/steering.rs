//! Receive packet steering on a veth pair between two namespaces this test creates (removed
//! on drop). Prints `SKIP: <reason>` and passes when namespaces cannot be created (not root).

use flowshift_ovs::{Netns, OvsError};

#[test]
fn both_ends_of_a_veth_steer_by_flow_to_every_cpu() {
    let a = match Netns::create("fs-rps") {
        Ok(ns) => ns,
        Err(OvsError::Unavailable(reason)) => {
            println!("SKIP: {reason}");
            return;
        }
        Err(e) => panic!("creating a namespace: {e}"),
    };
    let b = Netns::create("fs-rps").expect("second namespace");
    a.ip_cmd(&[
        "link",
        "add",
        "rpsa",
        "type",
        "veth",
        "peer",
        "name",
        "rpsb",
        "netns",
        b.name(),
    ])
    .expect("veth pair");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(32));
    for (ns, dev) in [(&a, "rpsa"), (&b, "rpsb")] {
        let read = || {
            ns.run(
                "cat",
                &[&format!("/sys/class/net/{dev}/queues/rx-0/rps_cpus")],
            )
            .map(|s| u64::from_str_radix(&s.trim().replace(',', ""), 16).expect("hex mask"))
        };
        let before = read();
        let steered = ns.steer_by_flow(dev).expect("steering");
        match before {
            Err(_) => assert!(!steered, "{dev}: no rps_cpus file, reported as no steering"),
            Ok(mask) => {
                assert_eq!(mask, 0, "{dev}: a fresh veth does not steer");
                assert!(steered, "{dev}: steering reported");
                assert_eq!(read().unwrap(), u64::MAX >> (64 - cpus), "{dev}: every CPU");
            }
        }
    }
    assert!(
        a.steer_by_flow("nosuchdev").is_ok_and(|s| !s),
        "a missing device steers nothing"
    );
}
