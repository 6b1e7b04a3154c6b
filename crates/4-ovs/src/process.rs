//! Running the harness's commands: finding programs, checking prerequisites, and running a
//! command with a time limit while collecting its output.

use crate::OvsError;
use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Time limit for ordinary commands.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Where Debian installs the database schema.
const SCHEMA_DIRS: [&str; 2] = ["/usr/share/openvswitch", "/usr/local/share/openvswitch"];
/// Programs the harness runs.
const PROGRAMS: [&str; 7] = [
    "ip",
    "ovsdb-tool",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-ofctl",
    "ovs-appctl",
];

/// Finds `name` in `PATH` or the sbin directories (which non-root `PATH`s often lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/sbin",
                "/sbin",
                "/usr/bin",
                "/bin",
                "/usr/local/sbin",
                "/usr/local/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether the process runs with effective uid 0 (read from `/proc/self/status`).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .is_some_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
                .unwrap_or(false)
        })
}

/// Checks root and the presence of every binary and the schema; the error explains what is
/// missing.
pub fn check_prerequisites() -> Result<(), OvsError> {
    if !is_root() {
        return Err(OvsError::Unavailable("not running as root".into()));
    }
    let missing: Vec<&str> = PROGRAMS
        .into_iter()
        .filter(|p| find_program(p).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(OvsError::Unavailable(format!(
            "missing {} (run scripts/install-testbed-deps.sh)",
            missing.join(", ")
        )));
    }
    schema_dir().map(|_| ())
}

pub(crate) fn schema_dir() -> Result<PathBuf, OvsError> {
    SCHEMA_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("vswitch.ovsschema").is_file())
        .ok_or_else(|| OvsError::Unavailable("vswitch.ovsschema not found".into()))
}

pub(crate) fn program(name: &str) -> Result<PathBuf, OvsError> {
    find_program(name).ok_or_else(|| OvsError::Unavailable(format!("{name} not found")))
}

/// A command line as text (program and arguments), for errors and logs.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Waits for `child` until `timeout`, killing it on expiry.
pub(crate) fn wait_timeout(
    child: &mut std::process::Child,
    command: &str,
    timeout: Duration,
) -> Result<ExitStatus, OvsError> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                // Best effort: the child may exit between the check and the kill.
                let _ = child.kill();
                let _ = child.wait();
                return Err(OvsError::Timeout {
                    command: command.to_owned(),
                    after: timeout,
                });
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(source) => {
                return Err(OvsError::Io {
                    context: format!("waiting for `{command}`"),
                    source,
                });
            }
        }
    }
}

/// Runs `cmd` (stdin closed) with a time limit and returns its exit status, standard output
/// and standard error whatever the status; on expiry the command is killed
/// ([`OvsError::Timeout`]).
pub fn run_status(
    cmd: &mut Command,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String, String), OvsError> {
    let command = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| OvsError::Io {
            context: format!("spawning `{command}`"),
            source,
        })?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                // A read error leaves what was read so far; the exit status decides success.
                let _ = p.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = wait_timeout(&mut child, &command, timeout)?;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok((status, stdout, stderr))
}

/// Runs `cmd` with a time limit and returns its standard output; a non-zero exit becomes
/// [`OvsError::Command`] carrying standard error.
pub(crate) fn run(cmd: &mut Command, timeout: Duration) -> Result<String, OvsError> {
    let command = describe(cmd);
    let (status, stdout, stderr) = run_status(cmd, timeout)?;
    if status.success() {
        Ok(stdout)
    } else {
        Err(OvsError::Command {
            command,
            status: status.to_string(),
            stderr: stderr.trim().to_owned(),
        })
    }
}
