//! `flowshift testbed check`: the NAT's behaviour as an independent tool sees it from the
//! subscriber side. Debian's RFC 3489 STUN server (`stund`, from `stun-server`) runs in the
//! server namespace on 203.0.113.10 and .11 (ports 3478 and 3479); Debian's STUN client
//! (`stun`, from `stun-client`) runs on a subscriber address and classifies the NAT:
//!
//! * test I to the primary and to the alternate address: the same mapped address both times
//!   means endpoint-independent mapping (RFC 4787 REQ-1);
//! * test II (answer from the other address and port) and test III (other port): which
//!   answers arrive tells endpoint-independent, address-dependent or address-and-port-
//!   dependent filtering (RFC 4787 REQ-8);
//! * hairpinning (RFC 4787 REQ-9) and port preservation come along.
//!
//! The verdict compares the classification with the run's configured filtering and checks
//! that the mapped address is the subscriber group's external address.

use super::bed::State;
use super::layout;
use super::sys;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The check's findings.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// Run id.
    pub run: String,
    /// Subscriber address the client used.
    pub subscriber: String,
    /// External address of the subscriber's group.
    pub group_external: String,
    /// Mapped addresses the server reported (`IP:port`), in order, without repeats.
    pub mapped: Vec<String>,
    /// The client's classification line.
    pub classification: String,
    /// Mapping behaviour derived from it.
    pub mapping: String,
    /// Filtering behaviour derived from it.
    pub filtering: String,
    /// Filtering the run configured.
    pub filtering_configured: String,
    /// Whether the client saw hairpinning work.
    pub hairpin: bool,
    /// Whether the NAT kept the client's port.
    pub port_preserved: bool,
    /// The client's test outcomes (`test I`, `test II`, ...).
    pub tests: BTreeMap<String, bool>,
    /// Problems found (empty: pass).
    pub problems: Vec<String>,
}

impl CheckReport {
    /// Whether the behaviour matches the configuration.
    pub fn pass(&self) -> bool {
        self.problems.is_empty()
    }
}

/// `testbed check`.
pub fn run(a: &super::CheckArgs) -> Result<()> {
    super::bed::require_root("`flowshift testbed check`")?;
    let run = super::pick_run(a.run.as_deref())?;
    let state = State::load(&run)?;
    let r = check(&state)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print(&r);
    }
    if !r.pass() {
        bail!("behaviour check failed: {}", r.problems.join("; "));
    }
    Ok(())
}

fn print(r: &CheckReport) {
    let ok = |b: bool| if b { "ok" } else { "MISMATCH" };
    println!(
        "behaviour check of testbed {} (independent RFC 3489 STUN client `stun` on {} -> `stund` on {} and {})",
        r.run,
        r.subscriber,
        layout::SERVERS[0],
        layout::SERVERS[1]
    );
    println!(
        "  mapped addresses  {} (one per client socket; group {})",
        if r.mapped.is_empty() {
            "none".to_owned()
        } else {
            r.mapped.join(", ")
        },
        r.group_external
    );
    println!(
        "  mapping           {:<28} expected endpoint-independent   {}",
        r.mapping,
        ok(r.mapping == "endpoint-independent")
    );
    println!(
        "  filtering         {:<28} configured {:<20} {}",
        r.filtering,
        r.filtering_configured,
        ok(r.filtering == r.filtering_configured)
    );
    println!(
        "  hairpinning       {}",
        if r.hairpin { "yes" } else { "no" }
    );
    println!(
        "  port preservation {}",
        if r.port_preserved {
            "yes"
        } else {
            "no (random port from the subscriber's port block)"
        }
    );
    println!("  client says       {:?}", r.classification);
    if r.pass() {
        println!("verdict: PASS");
    } else {
        println!("verdict: FAIL ({})", r.problems.join("; "));
    }
}

/// Runs the check on a running testbed.
pub fn check(state: &State) -> Result<CheckReport> {
    let srv = &state.ns_srv;
    let sub = &state.ns_sub;
    let log = state.dir.join("stund.log");
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut server = sys::ns_cmd(srv, sys::prog("timeout")?)?
        .args(["--kill-after=1", "60"])
        .arg(sys::prog("stund")?)
        .args([
            "-h",
            &layout::SERVERS[0].to_string(),
            "-a",
            &layout::SERVERS[1].to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("starting stund")?;
    let result = (|| {
        wait_udp(srv, 4, Duration::from_secs(5))?;
        let subscriber = layout::subscriber(1, layout::SUBSCRIBER_HOSTS - 1);
        // `stun` exits with its classification code: the status says nothing about success.
        let (_, stdout, stderr) = sys::run_status(
            sys::ns_cmd(sub, sys::prog("timeout")?)?
                .args(["--kill-after=1", "30"])
                .arg(sys::prog("stun")?)
                .args([
                    &layout::SERVERS[0].to_string(),
                    "-v",
                    "-i",
                    &subscriber.to_string(),
                ]),
            Duration::from_secs(40),
        )?;
        let text = format!("{stdout}{stderr}");
        fs::write(state.dir.join("stun-client.log"), &text).ok();
        Ok(interpret(
            &text,
            &state.run,
            subscriber,
            layout::group_external(1),
            &state.filtering,
        ))
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// Waits until `n` UDP sockets are bound in `ns`.
fn wait_udp(ns: &str, n: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = sys::in_ns(ns, "ss", &["-Hlun"])?;
        let bound = out
            .lines()
            .filter(|l| l.contains(":3478") || l.contains(":3479"))
            .count();
        if bound >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("stund did not bind its {n} sockets in {ns}");
        }
        sys::sleep(Duration::from_millis(20))?;
    }
}

/// Interprets the client's verbose output.
pub fn interpret(
    text: &str,
    run: &str,
    subscriber: Ipv4Addr,
    external: Ipv4Addr,
    configured: &str,
) -> CheckReport {
    let mut mapped: Vec<String> = Vec::new();
    let mut tests = BTreeMap::new();
    let mut classification = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(a) = line.strip_prefix("MappedAddress = ") {
            let a = a.trim().to_owned();
            if !mapped.contains(&a) {
                mapped.push(a);
            }
        } else if let Some(c) = line.strip_prefix("Primary:") {
            classification = c.trim().to_owned();
        } else if let Some((k, v)) = line.split_once('=')
            && matches!(v.trim(), "0" | "1")
            && (k.starts_with("test ")
                || matches!(
                    k.trim(),
                    "is nat" | "mapped IP same" | "hairpin" | "preserver port"
                ))
        {
            tests.insert(k.trim().to_owned(), v.trim() == "1");
        }
    }
    let c = classification.to_ascii_lowercase();
    let mapping = if c.contains("independent mapping") {
        "endpoint-independent"
    } else if c.contains("dependent mapping") {
        "endpoint-dependent"
    } else if c.starts_with("open") {
        "none (no NAT)"
    } else {
        "unknown"
    };
    let filtering = if c.contains("independent filter") {
        "endpoint-independent"
    } else if c.contains("address dependent filter") {
        "address-dependent"
    } else if c.contains("port dependent filter") {
        "address-and-port-dependent"
    } else {
        "unknown"
    };
    let mut problems = Vec::new();
    if classification.is_empty() {
        problems.push("the STUN client gave no classification".to_owned());
    }
    if mapping != "endpoint-independent" {
        problems.push(format!("mapping is {mapping}, not endpoint-independent"));
    }
    if filtering != configured {
        problems.push(format!("filtering is {filtering}, configured {configured}"));
    }
    let prefix = format!("{external}:");
    if mapped.is_empty() || !mapped.iter().all(|m| m.starts_with(&prefix)) {
        problems.push(format!(
            "mapped addresses {mapped:?} are not all on the group's external address {external}"
        ));
    }
    CheckReport {
        run: run.to_owned(),
        subscriber: subscriber.to_string(),
        group_external: external.to_string(),
        mapped,
        mapping: mapping.into(),
        filtering: filtering.into(),
        filtering_configured: configured.to_owned(),
        hairpin: tests.get("hairpin").copied().unwrap_or(false),
        port_preserved: tests.get("preserver port").copied().unwrap_or(false),
        tests,
        classification,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "MappedAddress = 198.18.0.1:37368\nSourceAddress = 203.0.113.10:3479\n\
        MappedAddress = 198.18.0.1:37368\nMappedAddress = 198.18.0.1:37070\n\
        test I = 1\ntest II = 1\ntest III = 1\ntest I(2) = 1\nis nat  = 1\nmapped IP same = 1\n\
        hairpin = 1\npreserver port = 0\n\
        Primary: Independent Mapping, Independent Filter, random port, will hairpin\t\n\
        Return value is 0x000002\n";

    #[test]
    fn a_full_cone_classification_passes_for_endpoint_independent_filtering() {
        let ext = Ipv4Addr::new(198, 18, 0, 1);
        let sub = Ipv4Addr::new(100, 64, 0, 7);
        let r = interpret(OUT, "abcd", sub, ext, "endpoint-independent");
        assert!(r.pass(), "{:?}", r.problems);
        assert_eq!(r.mapped.len(), 2);
        assert!(r.hairpin);
        assert!(!r.port_preserved);
        assert_eq!(r.tests.get("test II"), Some(&true));
        assert_eq!(r.tests.get("is nat"), Some(&true));
        let r = interpret(OUT, "abcd", sub, ext, "address-dependent");
        assert!(!r.pass());
        let ad = OUT.replace("Independent Filter", "Address Dependent Filter");
        let r = interpret(&ad, "abcd", sub, ext, "address-dependent");
        assert!(r.pass(), "{:?}", r.problems);
        let r = interpret(
            OUT,
            "abcd",
            sub,
            Ipv4Addr::new(198, 18, 0, 2),
            "endpoint-independent",
        );
        assert!(!r.pass(), "wrong external address");
        assert!(!interpret("", "abcd", sub, ext, "endpoint-independent").pass());
    }
}
