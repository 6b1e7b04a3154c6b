//! Removing a testbed run ([`teardown`]) from any point of a failed `up`, with or without
//! its record.

use super::layout::{self, Layout};
use super::state::*;
use super::sys;
use anyhow::{Result, bail};
use flowshift_ovs::{self as ovs, Netns, Ovs, OvsRecord};
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

/// Runs `f` with a handle on the existing namespace `name` that does not delete it.
pub(super) fn with_ns<T>(
    name: &str,
    f: impl FnOnce(&Netns) -> Result<T, ovs::OvsError>,
) -> Result<T> {
    let ns = Netns::adopt(name)?;
    let r = f(&ns);
    ns.detach();
    Ok(r?)
}

/// Removes run `run`: its processes (recorded ones and everything running in its
/// namespaces), the switch (gracefully, then by force), its namespaces (and with them every
/// veth and bridge: none of them ever lives in the root namespace), the global sysctl it
/// changed (when no other run remains) and its directory. Works from a partial `state` or
/// none. Fails listing what is left behind.
pub fn teardown(
    run: &str,
    state: Option<&State>,
    ovs: Option<Ovs>,
    children: Vec<Child>,
    verbose: bool,
) -> Result<()> {
    if !layout::is_run_id(run) {
        bail!("{run:?} is not a run id (four hex digits)");
    }
    let say = |m: &str| {
        if verbose {
            eprintln!("testbed {run}: {m}");
        }
    };
    let ovs_ns = format!("fs{run}-ovs");
    let mut namespaces: BTreeSet<String> = sys::netns_list()
        .into_iter()
        .filter(|ns| Layout::run_of_namespace(ns) == Some(run))
        .collect();
    if let Some(s) = state {
        namespaces.extend(s.namespaces.iter().cloned());
    }
    // 1. The processes this run started, then everything else in its namespaces but the
    //    switch's (iperf3, stund, ping, ...).
    say("stopping processes");
    let recorded: Vec<u32> = state
        .map(|s| {
            s.processes
                .iter()
                .filter(|p| {
                    sys::alive(p.pid) && sys::cmdline(p.pid).is_some_and(|c| c.contains(&p.marker))
                })
                .map(|p| p.pid)
                .collect()
        })
        .unwrap_or_default();
    let mut stuck = sys::terminate(&recorded, Duration::from_secs(5));
    let others: Vec<u32> = namespaces
        .iter()
        .filter(|ns| **ns != ovs_ns)
        .flat_map(|ns| sys::netns_pids(ns))
        .collect();
    stuck.extend(sys::terminate(&others, Duration::from_secs(3)));
    for mut c in children {
        // Reap our own children (they were signalled above).
        let _ = c.try_wait();
    }
    // 2. The switch: `ovs-appctl exit --cleanup`, pid files, namespace, directory.
    say("stopping Open vSwitch");
    match ovs {
        Some(o) => drop(o),
        None => {
            if let Some(rec) = state.and_then(|s| s.switch.as_ref())
                && let Ok(o) = Ovs::adopt(&OvsRecord {
                    netns: rec.netns.clone(),
                    dir: rec.dir.clone(),
                    bridge: rec.bridge.clone(),
                    userspace_tso: rec.userspace_tso,
                })
            {
                drop(o);
            }
        }
    }
    // 3. Whatever still runs in any of the namespaces.
    let rest: Vec<u32> = namespaces
        .iter()
        .flat_map(|ns| sys::netns_pids(ns))
        .collect();
    stuck.extend(sys::terminate(&rest, Duration::from_secs(2)));
    // 4. Namespaces.
    say("deleting namespaces");
    let mut problems = Vec::new();
    for ns in &namespaces {
        if let Err(e) = sys::netns_delete(ns) {
            problems.push(format!("{e:#}"));
        }
    }
    // 5. The global sysctls, if no other run needs them.
    let changes = [
        ("rmem_default", state.and_then(|s| s.rmem_default)),
        ("wmem_default", state.and_then(|s| s.wmem_default)),
    ];
    for (key, ch) in changes {
        let Some(ch) = ch else { continue };
        let others = existing_runs().into_iter().any(|r| r != run);
        let path = Path::new("/proc/sys/net/core").join(key);
        let now: Option<u64> = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if !others && now == Some(ch.set) {
            // Best effort: a failure leaves a larger default buffer, harmless.
            let _ = fs::write(&path, ch.before.to_string());
        }
    }
    // 6. The directory.
    let dir = run_dir(run);
    if dir.exists()
        && let Err(e) = fs::remove_dir_all(&dir)
    {
        problems.push(format!("removing {}: {e}", dir.display()));
    }
    // 7. Verify.
    let left_ns: Vec<String> = sys::netns_list()
        .into_iter()
        .filter(|ns| Layout::run_of_namespace(ns) == Some(run))
        .collect();
    if !left_ns.is_empty() {
        problems.push(format!("namespaces left: {}", left_ns.join(", ")));
    }
    let prefix = format!("fs{run}");
    if let Ok(links) = sys::ip(&["-o", "link", "show"]) {
        let left: Vec<&str> = links
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(str::trim))
            .filter(|name| name.starts_with(&prefix))
            .collect();
        if !left.is_empty() {
            problems.push(format!(
                "interfaces left in the root namespace: {}",
                left.join(", ")
            ));
        }
    }
    stuck.retain(|&p| sys::alive(p));
    if !stuck.is_empty() {
        problems.push(format!("processes still running: {stuck:?}"));
    }
    if dir.exists() {
        problems.push(format!("{} still exists", dir.display()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "testbed {run}: incomplete teardown: {}",
            problems.join("; ")
        )
    }
}
