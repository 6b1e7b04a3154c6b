//! The folder prefix of each crate is its layer (`crates/<layer>-<name>`). A crate may depend
//! only on crates of strictly lower layers: wire -> NAT -> migration -> control -> drivers ->
//! lab -> CLI. No exceptions.

use std::collections::BTreeMap;
use std::path::Path;

fn layer_of(dir: &str) -> Option<u32> {
    dir.split('-').next()?.parse().ok()
}

#[test]
fn dependencies_point_from_higher_layers_to_lower_ones_only() {
    let crates_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut layer_by_package = BTreeMap::new();
    let mut deps_by_package = BTreeMap::new();
    for entry in std::fs::read_dir(&crates_dir).expect("crates/ is readable") {
        let path = entry.expect("dir entry").path();
        let manifest = path.join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        let dir = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 folder name")
            .to_string();
        let layer =
            layer_of(&dir).unwrap_or_else(|| panic!("crates/{dir} lacks a numeric layer prefix"));
        let text = std::fs::read_to_string(&manifest).expect("manifest readable");
        let doc: toml::Table = text.parse().expect("manifest parses");
        let name = doc["package"]["name"]
            .as_str()
            .expect("package name")
            .to_string();
        let mut deps = Vec::new();
        // Dev-dependencies count too: a test of a lower layer must not pull in a higher one.
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            if let Some(t) = doc.get(section).and_then(|s| s.as_table()) {
                deps.extend(t.keys().filter(|k| k.starts_with("flowshift")).cloned());
            }
        }
        layer_by_package.insert(name.clone(), layer);
        deps_by_package.insert(name, deps);
    }
    assert!(
        layer_by_package.len() >= 3,
        "found only {layer_by_package:?}"
    );
    // The lab sits on every driver it runs, the CLI on the lab.
    assert_eq!(layer_by_package.get("flowshift-lab"), Some(&6));
    assert_eq!(layer_by_package.get("flowshift"), Some(&7));
    let mut violations = Vec::new();
    for (pkg, deps) in &deps_by_package {
        for dep in deps {
            let (own, theirs) = (layer_by_package[pkg], layer_by_package.get(dep).copied());
            match theirs {
                Some(l) if l < own => {}
                Some(l) => {
                    violations.push(format!("{pkg} (layer {own}) depends on {dep} (layer {l})"))
                }
                None => violations.push(format!("{pkg} depends on unknown workspace crate {dep}")),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violated:\n{}",
        violations.join("\n")
    );
}

#[test]
fn layer_prefix_parser_rejects_unnumbered_folders() {
    assert_eq!(layer_of("2-nat"), Some(2));
    assert_eq!(layer_of("nat"), None);
}
