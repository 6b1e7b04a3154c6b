//! Probe processes inside the testbed's namespaces: starting an echo or a sender as
//! `flowshift probe ...`, waiting for them, and reading the sender's record.

use super::ProbeRecord;
use crate::testbed::sys;
use anyhow::{Context, Result, bail};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A probe process (sender or echo) running inside a namespace.
pub struct ProbeProcess {
    child: Child,
    /// Its output file.
    pub out: PathBuf,
    err: PathBuf,
    what: String,
}

impl ProbeProcess {
    fn spawn(ns: &str, args: &[String], out: PathBuf, what: &str) -> Result<ProbeProcess> {
        let exe = std::env::current_exe().context("locating the flowshift executable")?;
        let err = out.with_extension("stderr");
        let stderr =
            std::fs::File::create(&err).with_context(|| format!("creating {}", err.display()))?;
        let mut cmd = sys::ns_cmd(ns, exe)?;
        cmd.arg("probe")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(ProbeProcess {
            child,
            out,
            err,
            what: what.to_owned(),
        })
    }

    /// Waits for the process to exit by itself (killing it at `deadline`, an error).
    pub fn finish(&mut self, deadline: Instant) -> Result<()> {
        loop {
            if let Some(st) = self.child.try_wait()? {
                if !st.success() {
                    bail!(
                        "{} exited with {st}: {}",
                        self.what,
                        sys::tail(&self.err, 5)
                    );
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not finish in time", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProbeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts an echo in `ns` on `bind` for `seconds`, and waits until it listens.
pub fn start_echo(ns: &str, bind: SocketAddrV4, seconds: f64, dir: &Path) -> Result<ProbeProcess> {
    let out = dir.join("probe-echo.json");
    let p = ProbeProcess::spawn(
        ns,
        &[
            "echo".into(),
            "--bind".into(),
            bind.to_string(),
            "--duration".into(),
            format!("{seconds:.3}"),
            "--out".into(),
            out.display().to_string(),
        ],
        out,
        "probe echo",
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let suffix = format!(":{}", bind.port());
    loop {
        let o = sys::in_ns(ns, "ss", &["-Hlun"])?;
        if o.lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .any(|l| l.ends_with(&suffix))
        {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("the probe echo in {ns} is not listening on {bind}");
        }
        sys::sleep(Duration::from_millis(20))?;
    }
}

/// Starts a sender in `ns`: `count` probes at `rate` per second from `bind` to `to`, its
/// record in `dir/probe-send.json`.
pub fn start_sender(
    ns: &str,
    bind: Ipv4Addr,
    to: SocketAddrV4,
    rate: u32,
    count: u64,
    dir: &Path,
) -> Result<ProbeProcess> {
    start_sender_to(ns, bind, to, rate, count, dir.join("probe-send.json"))
}

/// Like [`start_sender`], the record written to `out` (several senders at once).
pub fn start_sender_to(
    ns: &str,
    bind: Ipv4Addr,
    to: SocketAddrV4,
    rate: u32,
    count: u64,
    out: PathBuf,
) -> Result<ProbeProcess> {
    ProbeProcess::spawn(
        ns,
        &[
            "send".into(),
            "--bind".into(),
            bind.to_string(),
            "--to".into(),
            to.to_string(),
            "--rate".into(),
            rate.to_string(),
            "--count".into(),
            count.to_string(),
            "--out".into(),
            out.display().to_string(),
        ],
        out,
        "probe sender",
    )
}

/// Reads a sender's record.
pub fn read_record(path: &Path) -> Result<ProbeRecord> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
