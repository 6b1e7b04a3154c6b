//! Tests of the cluster configuration: the documented format, datapath ids, TLS paths,
//! pools, endpoints, and the errors for inconsistent or malformed files. `GOOD` is a valid
//! configuration other modules' tests start from.

use super::*;

pub(crate) const GOOD: &str = r#"
openflow_listen = "unix:/run/x/of.sock"
node_listen = "198.19.0.1:6700"
api_listen = "tcp:127.0.0.1:6780"
api_token_file = "/etc/flowshift/api.token"
tls = { ca = "pki/ca.pem", cert = "pki/controller.pem", key = "pki/controller.key" }
[switch]
inside_port = 1
outside_port = 2
datapath_id = "0x00000000000000fa"
[[nodes]]
id = 1
port = 3
mac = "02:f5:00:00:00:01"
[[nodes]]
id = 2
port = 4
mac = "02:F5:00:00:00:02"
[[groups]]
external = "198.18.0.1"
subscribers = "100.64.0.0/16"
owner = 1
[[groups]]
external = "198.18.0.2"
subscribers = "100.65.0.0/16"
owner = 2
[params]
batch_size = 128
idle_max = 0
"#;

#[test]
fn the_plan_format_parses() {
    let c = ClusterConfig::from_toml(GOOD).unwrap();
    assert_eq!(
        c.openflow_listen,
        Endpoint::Unix(PathBuf::from("/run/x/of.sock"))
    );
    assert_eq!(c.node_listen, Endpoint::Tcp("198.19.0.1:6700".into()));
    assert_eq!(c.api_listen, Endpoint::Tcp("127.0.0.1:6780".into()));
    assert_eq!(
        c.api_token_file.as_deref(),
        Some(std::path::Path::new("/etc/flowshift/api.token"))
    );
    assert_eq!(c.nodes[1].mac, MacAddr([2, 0xf5, 0, 0, 0, 2]));
    assert_eq!(c.nodes[1].mac.to_string(), "02:f5:00:00:00:02");
    let p = c.params.as_ref().unwrap();
    assert_eq!(p.batch_size, 128);
    assert_eq!(p.idle_max, std::time::Duration::ZERO);
    let t = c.topology();
    assert_eq!(t.instances[&InstanceId(2)].port, 4);
    assert_eq!(c.group_routes()[1].owner, InstanceId(2));
    assert_eq!(c.tls.cert, PathBuf::from("pki/controller.pem"));
    assert!(!c.openflow_tls);
    assert_eq!(c.switch.datapath_id, Some(DatapathId(0xfa)));
    // Without [params] the nodes' defaults apply.
    let no_params = GOOD.split("[params]").next().unwrap();
    assert_eq!(ClusterConfig::from_toml(no_params).unwrap().params, None);
}

#[test]
fn datapath_ids_parse_as_hex_or_integers_and_pinning_is_optional() {
    for (text, dpid) in [
        ("\"0x00000000000000fa\"", 0xfa),
        ("\"fa\"", 0xfa),
        ("\"FFFFFFFFFFFFFFFF\"", u64::MAX),
        ("250", 0xfa),
    ] {
        let c = ClusterConfig::from_toml(&GOOD.replace("\"0x00000000000000fa\"", text))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(c.switch.datapath_id, Some(DatapathId(dpid)), "{text}");
    }
    for bad in ["\"0x\"", "\"xyz\"", "\"0x1234567890abcdef0\"", "-1"] {
        let e = invalid(&GOOD.replace("\"0x00000000000000fa\"", bad));
        assert!(
            e.contains("datapath") || e.contains("untagged"),
            "{bad}: {e}"
        );
    }
    assert_eq!(DatapathId(0xfa).to_string(), "0x00000000000000fa");
    let unpinned = GOOD.replace("datapath_id = \"0x00000000000000fa\"\n", "");
    assert_eq!(
        ClusterConfig::from_toml(&unpinned)
            .unwrap()
            .switch
            .datapath_id,
        None
    );
}

#[test]
fn tls_paths_are_taken_from_the_files_folder() {
    let dir = std::env::temp_dir().join(format!("fsctl-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cluster.toml");
    std::fs::write(
        &path,
        GOOD.replace("\"pki/ca.pem\"", "\"/etc/flowshift/ca.pem\""),
    )
    .unwrap();
    let c = ClusterConfig::load(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(c.tls.ca, PathBuf::from("/etc/flowshift/ca.pem"));
    assert_eq!(c.tls.cert, dir.join("pki/controller.pem"));
    assert_eq!(c.tls.key, dir.join("pki/controller.key"));
    // Credentials are required.
    let e = invalid(&GOOD.replace(
        "tls = { ca = \"pki/ca.pem\", cert = \"pki/controller.pem\", key = \"pki/controller.key\" }\n",
        "",
    ));
    assert!(e.contains("tls"), "{e}");
}

#[test]
fn pools_expand_into_groups_and_standby_nodes_own_none() {
    let text = GOOD.replace(
        "[params]",
        "[[pools]]\nexternal = \"203.0.113.0/26\"\nsubscribers = \"100.80.0.0/16\"\n\
             groups = 32\nowners = [1, 2]\n[autoscale]\nenabled = true\nhigh = 0.9\n[params]",
    );
    let c = ClusterConfig::from_toml(&text).unwrap();
    assert_eq!(c.groups.len(), 34);
    assert!(c.pools.is_empty());
    let g = &c.groups[2 + 5];
    assert_eq!(g.external, Ipv4Addr::new(203, 0, 113, 5));
    assert_eq!(g.subscribers, "100.80.40.0/21".parse::<Ipv4Net>().unwrap());
    assert_eq!(g.owner, InstanceId(2));
    assert!(c.autoscale.enabled);
    assert_eq!(c.autoscale.high, 0.9);
    assert_eq!(c.group_routes().len(), 34);
    // The expanded form reads back the same.
    let again: ClusterConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(again, c);
    let e = invalid(&text.replace("groups = 32", "groups = 48"));
    assert!(e.contains("power of two"), "{e}");
    let e = invalid(&text.replace("id = 2\n", "id = 2\nstandby = true\n"));
    assert!(e.contains("owner 2 is a standby node"), "{e}");
    let e = invalid(&text.replace("high = 0.9", "high = 0.2"));
    assert!(e.contains("autoscale"), "{e}");
    let standby = text
        .replace("owners = [1, 2]", "owners = [1]")
        .replace("owner = 2", "owner = 1")
        .replace("id = 2\n", "id = 2\nstandby = true\n");
    let c = ClusterConfig::from_toml(&standby).unwrap();
    assert!(c.node(InstanceId(2)).unwrap().standby && !c.node(InstanceId(1)).unwrap().standby);
}

#[test]
fn endpoints_parse_and_print() {
    for (s, shown) in [
        ("unix:/a/b.sock", "unix:/a/b.sock"),
        ("tcp:0.0.0.0:6653", "0.0.0.0:6653"),
        ("localhost:80", "localhost:80"),
        ("[::1]:6780", "[::1]:6780"),
    ] {
        assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), shown);
    }
    for bad in [
        "unix:",
        "6653",
        ":6653",
        "host:",
        "host:70000",
        "::1:80",
        "tcp:nohost",
    ] {
        assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
    }
    let long = format!("unix:/{}", "x".repeat(200));
    assert!(long.parse::<Endpoint>().is_err());
}

fn invalid(text: &str) -> String {
    match ClusterConfig::from_toml(text) {
        Err(e @ (ConfigError::Invalid(_) | ConfigError::Parse(_))) => e.to_string(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn inconsistencies_are_all_reported() {
    let bad = GOOD
        .replace("port = 4", "port = 3")
        .replace("02:F5:00:00:00:02", "02:f5:00:00:00:01")
        .replace("owner = 2", "owner = 9")
        .replace("100.65.0.0/16", "100.64.1.0/24");
    let e = invalid(&bad);
    for needle in [
        "nodes 1 and 2 share port 3",
        "share MAC 02:f5:00:00:00:01",
        "owner 9 is not a configured node",
        "overlap",
    ] {
        assert!(e.contains(needle), "{needle:?} missing from {e}");
    }
    let e = invalid(&GOOD.replace("id = 2", "id = 1"));
    assert!(e.contains("node id 1 appears twice"), "{e}");
    let e = invalid(&GOOD.replace("100.64.0.0/16", "100.64.0.1/16"));
    assert!(e.contains("did you mean 100.64.0.0/16"), "{e}");
    let e = invalid(&GOOD.replace("port = 3", "port = 2"));
    assert!(e.contains("inside or outside port"), "{e}");
    let e = invalid(&GOOD.replace("02:f5:00:00:00:01", "03:f5:00:00:00:01"));
    assert!(e.contains("not a unicast"), "{e}");
    let e = invalid(&GOOD.replace("198.18.0.2", "198.18.0.1"));
    assert!(e.contains("group 198.18.0.1 appears twice"), "{e}");
    let e = invalid(&GOOD.replace("tcp:127.0.0.1:6780", "unix:/run/x/of.sock"));
    assert!(e.contains("openflow_listen and api_listen"), "{e}");
    // The token is optional: a TCP API authenticates the operator's certificate, a unix
    // one relies on the socket's permissions.
    let no_token = GOOD.replace("api_token_file = \"/etc/flowshift/api.token\"\n", "");
    assert_eq!(
        ClusterConfig::from_toml(&no_token).unwrap().api_token_file,
        None
    );
    let unix = no_token.replace("tcp:127.0.0.1:6780", "unix:/run/x/api.sock");
    assert_eq!(
        ClusterConfig::from_toml(&unix).unwrap().api_token_file,
        None
    );
    // A TCP OpenFlow listener must authenticate the switch.
    let of_tcp = GOOD.replace("unix:/run/x/of.sock", "tcp:0.0.0.0:6653");
    assert!(invalid(&of_tcp).contains("openflow_listen is TCP without openflow_tls"));
    let of_tls = of_tcp.replace("[switch]", "openflow_tls = true\n[switch]");
    assert!(ClusterConfig::from_toml(&of_tls).unwrap().openflow_tls);
}

#[test]
fn malformed_text_gives_a_parse_error_naming_the_problem() {
    let e = invalid(&GOOD.replace("02:f5:00:00:00:01", "02:f5:00:00:01"));
    assert!(e.contains("expected six hex bytes"), "{e}");
    let e = invalid(&GOOD.replace("node_listen", "nodes_listen"));
    assert!(e.contains("nodes_listen"), "{e}");
    let e = invalid(&GOOD.replace("unix:/run/x/of.sock", "of.sock"));
    assert!(e.contains("HOST:PORT"), "{e}");
    let e = invalid("openflow_listen = ");
    assert!(e.starts_with("parsing"), "{e}");
    let only_switch = GOOD.split("[[nodes]]").next().unwrap();
    let e = invalid(only_switch);
    assert!(e.contains("nodes"), "{e}");
}
