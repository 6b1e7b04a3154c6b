//! The multi-machine example configurations (`examples/cluster/`, the README's "Several
//! machines") parse with the same parsers the binaries use and agree with each other.

use flowshift_controller::ClusterConfig;
use flowshift_node::NodeConfig;
use std::path::Path;

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/cluster")
        .join(name)
}

#[test]
fn the_cluster_example_is_consistent_with_its_node_examples() {
    let cluster = ClusterConfig::load(&example("cluster.toml")).expect("cluster.toml is valid");
    assert_eq!(cluster.nodes.len(), 2);
    // Secure by example: TLS everywhere, the switch pinned.
    assert!(cluster.openflow_tls);
    assert!(cluster.switch.datapath_id.is_some());
    assert_eq!(cluster.tls.cert, example("pki/controller.pem"));
    for n in &cluster.nodes {
        let path = example(&format!("node{}.toml", n.id));
        let text = std::fs::read_to_string(&path).expect("node example exists");
        let node = NodeConfig::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(node.id, n.id);
        assert_eq!(
            node.mac.0, n.mac.0,
            "node {} MAC as the controller knows it",
            n.id
        );
        assert_eq!(
            node.controller.to_string(),
            cluster.node_listen.to_string(),
            "node {} dials the controller's node listener",
            n.id
        );
        // The node serves exactly the groups the controller gives it at start-up.
        let mine: Vec<_> = cluster
            .groups
            .iter()
            .filter(|g| g.owner == n.id)
            .map(|g| (g.external, g.subscribers))
            .collect();
        let has: Vec<_> = node
            .nat
            .groups
            .iter()
            .map(|g| (g.external, g.subscribers))
            .collect();
        assert_eq!(mine, has, "node {} groups", n.id);
        // Every other node is a peer with its MAC.
        for other in cluster.nodes.iter().filter(|o| o.id != n.id) {
            let peer = node
                .peers
                .iter()
                .find(|p| p.id == other.id)
                .unwrap_or_else(|| panic!("node {} lacks peer {}", n.id, other.id));
            assert_eq!(peer.mac.0, other.mac.0);
        }
    }
}
