//! Processes and namespaces for the testbed: commands with a time limit, detached daemons
//! inside namespaces, signals by pid (only to processes that still are ours), namespace
//! discovery. Everything here runs `ip`, `sh`, `kill`-free libc calls and reads `/proc`.

use anyhow::{Context, Result, anyhow, bail};
use flowshift_ovs::{self as ovs, describe, find_program};
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Time limit of ordinary commands (`ip`, `ethtool`, `nft`, ...).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(15);

/// The path of `name` (searching `PATH` and the sbin directories) or an error naming it.
pub fn prog(name: &str) -> Result<PathBuf> {
    find_program(name).ok_or_else(|| {
        anyhow!("{name} not found (scripts/install-testbed-deps.sh installs the testbed tools)")
    })
}

/// Runs `cmd` (stdin closed) with a time limit; returns stdout, or an error carrying the
/// command line, the exit status and stderr. The command is killed on expiry.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let line = describe(cmd);
    let (status, stdout, stderr) = run_status(cmd, timeout)?;
    if status.success() {
        Ok(stdout)
    } else {
        bail!("`{line}` failed ({status}): {}", stderr.trim())
    }
}

/// Runs `cmd` (stdin closed) with a time limit; returns its exit status, stdout and stderr
/// whatever the status. The command is killed on expiry (an error).
pub fn run_status(
    cmd: &mut Command,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String, String)> {
    Ok(ovs::run_status(cmd, timeout)?)
}

/// `ip args...` in the root namespace.
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new(prog("ip")?).args(args), CMD_TIMEOUT)
}

/// `ip -n <ns> args...`.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    run(
        Command::new(prog("ip")?).args(["-n", ns]).args(args),
        CMD_TIMEOUT,
    )
}

/// A command running `program` inside namespace `ns` (`ip netns exec <ns> <program>`).
pub fn ns_cmd(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    let mut c = Command::new(prog("ip")?);
    c.args(["netns", "exec", ns]).arg(program);
    Ok(c)
}

/// Runs `program args...` inside `ns` with the default time limit; returns stdout.
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    run(ns_cmd(ns, prog(program)?)?.args(args), CMD_TIMEOUT)
}

/// Sets the sysctl `key` (dotted, e.g. `net.ipv4.ip_forward`) to `value` inside `ns`.
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = sysctl_path(key)?;
    // `key` and `value` are checked to be plain tokens: no quoting issues.
    if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("sysctl value {value:?}: letters, digits and '-' only");
    }
    let mut c = ns_cmd(ns, prog("sh")?)?;
    c.arg("-c")
        .arg(format!("echo {value} > {}", path.display()));
    run(&mut c, CMD_TIMEOUT).map(|_| ())
}

/// `/proc/sys/...` for a dotted sysctl key (letters, digits, `_`, `-` and dots only).
pub fn sysctl_path(key: &str) -> Result<PathBuf> {
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        bail!("bad sysctl key {key:?}");
    }
    Ok(Path::new("/proc/sys").join(key.replace('.', "/")))
}

/// Starts `program args...` inside `ns` in its own session (so it survives this process and
/// its terminal), stdin closed, stdout and stderr appended to `log`. `ip netns exec` execs
/// the program, so the child's pid is the program's.
pub fn spawn_in_ns(
    ns: &str,
    program: &Path,
    args: &[String],
    log: &Path,
    env: &[(&str, &str)],
) -> Result<Child> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = ns_cmd(ns, program)?;
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let line = describe(&cmd);
    cmd.spawn().with_context(|| format!("starting `{line}`"))
}

/// Reaps `pid` if it is a zombie child of this process (no effect otherwise).
fn reap(pid: u32) {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return;
    };
    let mut status = 0;
    // SAFETY: plain syscall; WNOHANG never blocks; ECHILD for processes that are not ours.
    unsafe {
        libc::waitpid(p, &mut status, libc::WNOHANG);
    }
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    reap(pid);
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The command line of `pid`, arguments joined by spaces (`None` when gone).
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return;
    };
    if p <= 1 {
        return;
    }
    // SAFETY: plain syscall; failure (ESRCH) means the process is gone.
    unsafe {
        libc::kill(p, sig);
    }
}

/// Sends SIGKILL to `pid` and waits up to 2 s for it to be gone; whether it is.
pub fn kill_now(pid: u32) -> bool {
    signal(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(2);
    while alive(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    !alive(pid)
}

/// Sends SIGTERM to every pid, waits up to `grace` for all to exit, then SIGKILLs the rest
/// and waits up to 2 s more. Returns the pids still alive after that.
pub fn terminate(pids: &[u32], grace: Duration) -> Vec<u32> {
    for &p in pids {
        if alive(p) {
            signal(p, libc::SIGTERM);
        }
    }
    let wait_all = |limit: Duration| {
        let deadline = Instant::now() + limit;
        while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    };
    wait_all(grace);
    for &p in pids {
        if alive(p) {
            signal(p, libc::SIGKILL);
        }
    }
    wait_all(Duration::from_secs(2));
    pids.iter().copied().filter(|&p| alive(p)).collect()
}

/// Network namespaces that exist (`/run/netns` entries).
pub fn netns_list() -> Vec<String> {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Whether namespace `ns` exists.
pub fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Processes running inside namespace `ns` (`ip netns pids`); empty when it does not exist.
pub fn netns_pids(ns: &str) -> Vec<u32> {
    if !netns_exists(ns) {
        return Vec::new();
    }
    ip(&["netns", "pids", ns])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes namespace `ns` if it exists.
pub fn netns_delete(ns: &str) -> Result<()> {
    if netns_exists(ns) {
        ip(&["netns", "del", ns])?;
    }
    Ok(())
}

/// Four random lowercase hex digits (from the kernel's random source).
pub fn random_hex4() -> Result<String> {
    let mut b = [0u8; 2];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(format!("{:02x}{:02x}", b[0], b[1]))
}

/// CPU time (user + system) of `pid` and all its threads, in seconds; `None` when gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) / hz)
}

/// Set by the SIGINT/SIGTERM handlers [`catch_interrupts`] installs.
static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Installs SIGINT/SIGTERM handlers (`signal-hook`) that only set a flag ([`interrupted`]);
/// long runs poll it and unwind, so their clean-up runs. Installing twice is harmless.
pub fn catch_interrupts() {
    let mut first = false;
    let flag = INTERRUPTED.get_or_init(|| {
        first = true;
        Arc::new(AtomicBool::new(false))
    });
    if !first {
        return;
    }
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, flag.clone()) {
            eprintln!("warning: cannot catch signal {sig}: {e}; an interrupt skips the clean-up");
        }
    }
}

/// Whether SIGINT or SIGTERM arrived since [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.get().is_some_and(|f| f.load(Ordering::SeqCst))
}

/// Fails when interrupted (for `?` in polling loops).
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d` in small steps, failing early when interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let deadline = Instant::now() + d;
    loop {
        check_interrupt()?;
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

/// The last `n` lines of a file (for error messages); empty when unreadable.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_map_to_proc_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.all.rp_filter").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/all/rp_filter")
        );
        assert!(sysctl_path("net/../../etc").is_err());
        assert!(sysctl_path("a b").is_err());
    }

    #[test]
    fn own_process_is_alive_and_has_a_cmdline() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(cmdline(me).is_some());
        assert!(cpu_seconds(me).is_some());
        assert!(!alive(u32::MAX - 1));
    }

    #[test]
    fn commands_report_failures_and_time_limits() {
        let out = run(Command::new("sh").args(["-c", "echo hi"]), CMD_TIMEOUT).unwrap();
        assert_eq!(out.trim(), "hi");
        let e = run(
            Command::new("sh").args(["-c", "echo bad >&2; exit 3"]),
            CMD_TIMEOUT,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bad"), "{e}");
        assert!(run(Command::new("sleep").arg("5"), Duration::from_millis(100)).is_err());
        assert_eq!(random_hex4().unwrap().len(), 4);
    }
}
