//! Helpers shared by the testbed tests: running the `flowshift` binary, a run that is torn
//! down on drop, commands inside a run's namespaces.
#![allow(dead_code)] // each test binary uses a different part

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const FLOWSHIFT: &str = env!("CARGO_BIN_EXE_flowshift");

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn flowshift(args: &[&str]) -> Output {
    Command::new(FLOWSHIFT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("flowshift runs")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Removes the testbed when dropped (also when an assertion fails).
pub struct Run {
    pub id: String,
    pub down: bool,
}

impl Run {
    pub fn down(&mut self) -> Output {
        self.down = true;
        flowshift(&["testbed", "down", &self.id])
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !self.down {
            let o = self.down();
            if !o.status.success() {
                eprintln!("testbed down {} failed: {}", self.id, text(&o));
            }
        }
    }
}

pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]).args(args);
    c.stdin(Stdio::null());
    c
}

/// Starts `flowshift probe send` in `ns`: `rate` datagrams/s from `bind` to `to`, `count` in
/// all, its record (replies with sequence numbers) written to `out`.
pub fn probe_sender(ns: &str, bind: &str, to: &str, rate: u64, count: u64, out: &Path) -> Child {
    let (rate, count, out) = (
        rate.to_string(),
        count.to_string(),
        out.display().to_string(),
    );
    in_ns(
        ns,
        FLOWSHIFT,
        &[
            "probe", "send", "--bind", bind, "--to", to, "--rate", &rate, "--count", &count,
            "--out", &out,
        ],
    )
    .stdout(Stdio::null())
    .spawn()
    .expect("probe sender starts")
}

/// Starts `flowshift probe echo` in `ns` on `bind` for at most `seconds`, or until `count`
/// probes came back when given.
pub fn probe_echo(ns: &str, bind: &str, seconds: u64, count: Option<u64>) -> Child {
    let (seconds, count) = (seconds.to_string(), count.map(|c| c.to_string()));
    let mut args = vec!["probe", "echo", "--bind", bind, "--duration", &seconds];
    if let Some(c) = &count {
        args.extend(["--count", c]);
    }
    in_ns(ns, FLOWSHIFT, &args)
        .stdout(Stdio::null())
        .spawn()
        .expect("probe echo starts")
}

/// A run's names: namespaces, directory, the controller's API and token.
pub struct Names {
    /// `fs<run>-`: every namespace of the run starts with it.
    pub prefix: String,
    /// The run's directory.
    pub dir: String,
    /// The controller's API (`unix:<dir>/api.sock`).
    pub controller: String,
    /// The API token file.
    pub token_file: String,
    /// Subscriber namespace.
    pub sub: String,
    /// Server namespace.
    pub srv: String,
}

impl Names {
    pub fn of(run: &str) -> Names {
        let prefix = format!("fs{run}-");
        let dir = format!("/run/flowshift/testbed-{run}");
        Names {
            controller: format!("unix:{dir}/api.sock"),
            token_file: format!("{dir}/api.token"),
            sub: format!("{prefix}sub"),
            srv: format!("{prefix}srv"),
            prefix,
            dir,
        }
    }
}

/// `flowshift testbed up ARGS`: the run (removed on drop) and its names.
pub fn up_run(args: &[&str]) -> (Run, Names) {
    let mut all = vec!["testbed", "up"];
    all.extend_from_slice(args);
    let id = run_id(&flowshift(&all));
    let names = Names::of(&id);
    (Run { id, down: false }, names)
}

/// The run id `testbed up` printed (panics with its output if it failed).
pub fn run_id(up: &Output) -> String {
    let out = String::from_utf8_lossy(&up.stdout).into_owned();
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("testbed ")?.split_whitespace().next())
        .map(str::to_owned);
    match id.filter(|_| up.status.success()) {
        Some(id) => id,
        None => panic!("testbed up failed: {}", text(up)),
    }
}

/// Polls `f` every 200 ms until it gives a value or `timeout` passes (a guard against a hang,
/// not a timing assertion).
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `flowshift status --json` of the controller at `controller` (`None` if it fails).
pub fn status(controller: &str, token_file: &str) -> Option<serde_json::Value> {
    let o = flowshift(&[
        "status",
        "--json",
        "--controller",
        controller,
        "--token-file",
        token_file,
    ]);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).ok())
        .flatten()
}
