//! Node configuration: the plan's example parses; mistakes are refused with clear messages.

use flowshift_node::pacing::PollMode;
use flowshift_node::{ConfigError, MacAddr, NodeConfig, SeedsGiven, load_config};

const GOOD: &str = r#"
id = 1
interface = "fsn1"
mac = "02:f5:00:00:00:01"
inside_next_hop = "02:f5:00:00:01:00"
outside_next_hop = "02:f5:00:00:02:00"
controller = "198.19.0.1:6700"
transfer_listen = "198.19.0.11:6800"
tls = { ca = "pki/ca.pem", cert = "pki/node-1.pem", key = "pki/node-1.key" }
metrics_listen = "198.19.0.11:9100"
vnet_hdr = true
[[peers]]
id = 2
mac = "02:f5:00:00:00:02"
transfer = "198.19.0.12:6800"
[nat]
groups = [{ external = "198.18.0.1", subscribers = "100.64.0.0/16" }]
[migration]
[params]
[[preload]]
external = "198.18.0.1"
states = 65000
seed = 1
"#;

fn err(text: &str) -> String {
    match NodeConfig::parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_plans_example_parses_with_defaults() {
    let c = NodeConfig::parse(GOOD).unwrap();
    assert_eq!(c.id.0, 1);
    assert_eq!(c.mac, MacAddr([2, 0xf5, 0, 0, 0, 1]));
    assert_eq!(c.mac.to_string(), "02:f5:00:00:00:01");
    assert_eq!(c.peers.len(), 1);
    assert_eq!(c.peers[0].transfer.to_string(), "198.19.0.12:6800");
    assert_eq!(c.metrics_listen.unwrap().port(), 9100);
    assert_eq!(c.nat.groups.len(), 1);
    assert_eq!(c.preload[0].states, 65000);
    // I/O defaults.
    assert!(c.vnet_hdr);
    assert_eq!((c.ring_block_kib, c.ring_blocks, c.batch), (256, 64, 64));
    assert_eq!(c.spin_us, 50);
    assert_eq!(c.poll, PollMode::Adaptive);
    assert_eq!(c.side_budget, 4);
    assert_eq!(c.cpu, None);
    // The instance builds, with the fictive states installed.
    let inst = c.build_instance().unwrap();
    assert_eq!(inst.nat().session_count(), 65000);
    inst.nat().check_invariants().unwrap();
}

#[test]
fn minimal_config_and_file_loading() {
    let text = r#"
id = 7
interface = "eth0"
mac = "02:00:00:00:00:07"
inside_next_hop = "02:00:00:00:01:00"
outside_next_hop = "02:00:00:00:02:00"
controller = "127.0.0.1:6700"
transfer_listen = "127.0.0.1:6800"
tls = { ca = "pki/ca.pem", cert = "pki/node-7.pem", key = "/etc/flowshift/node-7.key" }
"#;
    let c = NodeConfig::parse(text).unwrap();
    assert!(c.peers.is_empty() && c.preload.is_empty() && c.metrics_listen.is_none());
    assert_eq!(c.build_instance().unwrap().nat().group_ids().len(), 0);
    let path = std::env::temp_dir().join(format!("fs-node-cfg-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    // Relative credential paths are taken from the file's folder, absolute ones kept.
    let mut resolved = c.clone();
    resolved.tls.ca = std::env::temp_dir().join("pki/ca.pem");
    resolved.tls.cert = std::env::temp_dir().join("pki/node-7.pem");
    assert_eq!(load_config(&path).unwrap(), resolved);
    std::fs::remove_file(&path).unwrap();
    let missing = load_config("/nonexistent/node.toml").unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }));
    assert!(missing.to_string().contains("/nonexistent/node.toml"));
}

#[test]
fn mistakes_are_refused_with_clear_messages() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "mac = \"02:f5:00:00:00:01\"",
            "mac = \"02:f5:00:00:01\"",
            "six hex bytes",
        ),
        (
            "mac = \"02:f5:00:00:00:01\"",
            "mac = \"02:f5:00:00:00:zz\"",
            "not two hex digits",
        ),
        (
            "mac = \"02:f5:00:00:00:01\"",
            "mac = \"01:00:5e:00:00:01\"",
            "not a unicast",
        ),
        (
            "interface = \"fsn1\"",
            "interface = \"a-very-long-interface-name\"",
            "1 to 15",
        ),
        (
            "id = 2\nmac = \"02:f5:00:00:00:02\"",
            "id = 1\nmac = \"02:f5:00:00:00:02\"",
            "own id",
        ),
        (
            "mac = \"02:f5:00:00:00:02\"",
            "mac = \"02:f5:00:00:00:01\"",
            "own MAC",
        ),
        (
            "transfer = \"198.19.0.12:6800\"",
            "transfer = \"198.19.0.11:6800\"",
            "transfer_listen",
        ),
        (
            "controller = \"198.19.0.1:6700\"",
            "controller = \"not an address\"",
            "controller",
        ),
        (
            "vnet_hdr = true",
            "vnet_hdr = true\nring_block_kib = 64",
            "64 KiB GSO frame",
        ),
        (
            "vnet_hdr = true",
            "vnet_hdr = true\nring_block_kib = 300",
            "power of two",
        ),
        (
            "vnet_hdr = true",
            "vnet_hdr = true\nring_blocks = 1",
            "ring_blocks",
        ),
        ("vnet_hdr = true", "vnet_hdr = true\nbatch = 0", "batch"),
        (
            "vnet_hdr = true",
            "vnet_hdr = true\nbusy_poll = 5000000",
            "busy_poll",
        ),
        (
            "vnet_hdr = true",
            "vnet_hdr = true\nspin_us = 5000000",
            "spin_us",
        ),
        (
            "vnet_hdr = true",
            "vnet_hdr = true\nside_budget = 0",
            "side_budget",
        ),
        (
            "vnet_hdr = true",
            "vnet_hdr = true\npoll = \"sometimes\"",
            "unknown variant",
        ),
        (
            "vnet_hdr = true",
            "vnet_hdr = true\nbogus = 1",
            "unknown field",
        ),
        (
            "external = \"198.18.0.1\"\nstates",
            "external = \"198.18.0.9\"\nstates",
            "not a group",
        ),
        ("100.64.0.0/16", "100.64.0.0/24", "must cover 100.64.1.0/27"),
        ("states = 65000", "states = 0", "states must be >= 1"),
        ("[migration]", "[migration]\nmax_unacked = 0", "[migration]"),
        ("[params]", "[params]\nbatch_size = 0", "[params]"),
        ("[nat]", "[nat]\nblock_size = 100", "[nat]"),
    ];
    for (from, to, expect) in cases {
        assert!(GOOD.contains(from), "test case does not apply: {from}");
        let msg = err(&GOOD.replacen(from, to, 1));
        assert!(
            msg.contains(expect),
            "{to:?}: message {msg:?} lacks {expect:?}"
        );
    }
    // Two peers with one id, one MAC, one transfer address.
    let two = |id2: u16, mac2: &str, addr2: &str| {
        format!("{GOOD}\n[[peers]]\nid = {id2}\nmac = \"{mac2}\"\ntransfer = \"{addr2}\"\n")
    };
    assert!(
        err(&two(2, "02:f5:00:00:00:03", "198.19.0.13:6800")).contains("peer id 2 appears twice")
    );
    assert!(err(&two(3, "02:f5:00:00:00:02", "198.19.0.13:6800")).contains("appears twice"));
    assert!(err(&two(3, "02:f5:00:00:00:03", "198.19.0.12:6800")).contains("appears twice"));
    assert!(NodeConfig::parse(&two(3, "02:f5:00:00:00:03", "198.19.0.13:6800")).is_ok());
    // Preloading more states than the table holds.
    let big = GOOD.replacen("[nat]", "[nat]\nmax_sessions = 1000", 1);
    assert!(err(&big).contains("exceed nat.max_sessions"));
}

#[test]
fn packet_loop_keys_and_the_former_busy_poll_name() {
    let with = |extra: &str| {
        NodeConfig::parse(&GOOD.replace("vnet_hdr = true", &format!("vnet_hdr = true\n{extra}")))
            .unwrap()
    };
    let c = with("poll = \"busy\"\nspin_us = 200\nside_budget = 32");
    assert_eq!(
        (c.poll, c.spin_us, c.side_budget),
        (PollMode::Busy, 200, 32)
    );
    let c = with("poll = \"adaptive\"");
    assert_eq!((c.poll, c.spin_us), (PollMode::Adaptive, 50));
    // Configurations written before `spin_us` keep working.
    assert_eq!(with("busy_poll = 120").spin_us, 120);
}

#[test]
fn nat_seeds_are_secret_unless_the_file_sets_them() {
    let public = flowshift_nat::NatConfig::default();
    // Left out: each build draws its own.
    let c = NodeConfig::parse(GOOD).unwrap();
    assert_eq!(c.nat_seeds, SeedsGiven::default());
    let (a, b) = (c.nat_config().unwrap(), c.nat_config().unwrap());
    assert_ne!(a.hash_seed, b.hash_seed, "a fresh hash seed per build");
    assert_ne!(a.rng_seed, b.rng_seed, "a fresh port-choice seed per build");
    assert_ne!(a.hash_seed, public.hash_seed);
    let inst = c.build_instance().unwrap();
    assert_ne!(inst.nat().config().hash_seed, public.hash_seed);
    assert_ne!(inst.nat().config().rng_seed, public.rng_seed);
    // Set: used as given (reproducible runs); one may be set without the other.
    let set = GOOD.replacen("[nat]", "[nat]\nhash_seed = 42\nrng_seed = 7", 1);
    let c = NodeConfig::parse(&set).unwrap();
    let n = c.build_instance().unwrap().nat().config().clone();
    assert_eq!((n.hash_seed, n.rng_seed), (42, 7));
    let one = GOOD.replacen("[nat]", "[nat]\nrng_seed = 7", 1);
    let c = NodeConfig::parse(&one).unwrap();
    let (a, b) = (c.nat_config().unwrap(), c.nat_config().unwrap());
    assert_eq!((a.rng_seed, b.rng_seed), (7, 7));
    assert_ne!(a.hash_seed, b.hash_seed);
}

#[test]
fn the_per_subscriber_session_limit_is_configurable() {
    let c = NodeConfig::parse(GOOD).unwrap();
    assert_eq!(c.nat.max_sessions_per_subscriber, 4096, "default");
    let set = GOOD.replacen("[nat]", "[nat]\nmax_sessions_per_subscriber = 100", 1);
    let c = NodeConfig::parse(&set).unwrap();
    assert_eq!(c.nat.max_sessions_per_subscriber, 100);
    assert_eq!(
        c.build_instance()
            .unwrap()
            .nat()
            .config()
            .max_sessions_per_subscriber,
        100
    );
    let zero = GOOD.replacen("[nat]", "[nat]\nmax_sessions_per_subscriber = 0", 1);
    assert!(err(&zero).contains("non-zero"));
}
