//! Process harness: a private Open vSwitch for live tests and the testbed.
//!
//! This crate performs I/O (it runs `ip`, `ovsdb-tool`, `ovsdb-server`, `ovs-vswitchd`,
//! `ovs-vsctl`, `ovs-ofctl` and `ovs-appctl`). It needs root
//! and the Open vSwitch binaries (`scripts/install-testbed-deps.sh` installs them).
//!
//! [`Ovs::start`] creates:
//! * a uniquely named network namespace (`<prefix>-<pid>-<counter>`), in which both daemons
//!   run, so the tap devices of the userspace (`netdev`) datapath never collide between runs;
//! * a private directory under the temp dir holding the database, sockets, pid files and logs
//!   (the daemons get `OVS_RUNDIR`, `OVS_DBDIR`, `OVS_LOGDIR` and `OVS_SYSCONFDIR` pointing at
//!   it, and `OVS_PKGDATADIR` pointing at the system schema directory);
//! * one bridge with `datapath_type=netdev`, `protocols=OpenFlow13` and `fail-mode=secure`
//!   (no flows, so nothing is forwarded until a controller installs rules).
//!
//! Dropping the [`Ovs`] stops the daemons (`ovs-appctl exit --cleanup`, then SIGTERM/SIGKILL by
//! pid file as a fallback), deletes the namespace (and with it every veth end inside) and
//! removes the directory. [`Netns`] values delete their namespace on drop too.
//!
//! **Persistent instances.** [`OvsOptions::netns_name`] and [`OvsOptions::dir`] choose exact
//! names (the testbed names everything after its run). [`Ovs::detach`] gives up ownership and
//! returns an [`OvsRecord`]: the daemons, the namespace and the directory then outlive the
//! process. [`Ovs::adopt`] takes such a record (possibly of a half-started or already stopped
//! instance) back, so a later process can drive the switch and stop it by dropping the value.
//! [`Netns::create_named`], [`Netns::adopt`] and [`Netns::detach`] do the same for namespaces.
//!
//! **Offloads.** By default every veth gets `tx off` (TCP through the plain userspace datapath
//! needs it). With [`OvsOptions::userspace_tso`] the bridge runs with
//! `other_config:userspace-tso-enable=true` and veths keep their offloads, so GSO frames pass
//! through the switch.
//!
//! A unix-socket controller target (`unix:<path>`) works across namespaces;
//! [`Ovs::controller_socket_path`] suggests a path inside the private directory. Bind the
//! listener before calling [`Ovs::set_controller`], or the switch backs off before retrying.
//! Setting the controller flushes all flows.

#![deny(missing_docs)]

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Why the harness failed.
#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    /// The environment cannot run a private Open vSwitch (not root, binaries missing, network
    /// namespaces unavailable). Tests treat this as "skip".
    #[error("Open vSwitch harness unavailable: {0}")]
    Unavailable(String),
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error (or a pointer to the log).
        stderr: String,
    },
    /// A command did not finish in time and was killed.
    #[error("`{command}` timed out after {after:?}")]
    Timeout {
        /// The command line.
        command: String,
        /// The time limit.
        after: Duration,
    },
    /// An I/O error (spawning a process, creating a directory, ...).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// Output of a command could not be understood, or an argument was invalid.
    #[error("{0}")]
    Invalid(String),
}

/// Time limit for ordinary commands.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
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
/// Longest Linux interface name.
const IFNAMSIZ_MAX: usize = 15;
/// Longest unix socket path (sun_path minus the NUL).
const SUN_PATH_MAX: usize = 107;

static COUNTER: AtomicU32 = AtomicU32::new(0);

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

fn schema_dir() -> Result<PathBuf, OvsError> {
    SCHEMA_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("vswitch.ovsschema").is_file())
        .ok_or_else(|| OvsError::Unavailable("vswitch.ovsschema not found".into()))
}

fn program(name: &str) -> Result<PathBuf, OvsError> {
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
fn wait_timeout(
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
fn run(cmd: &mut Command, timeout: Duration) -> Result<String, OvsError> {
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

/// A network namespace created by this process; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    ip: PathBuf,
    /// Delete the namespace on drop (false after [`Netns::detach`]).
    owned: bool,
}

impl Netns {
    /// Creates a namespace named `<prefix>-<pid>-<counter>` with its loopback up. Failure to
    /// create namespaces at all (no privilege) is [`OvsError::Unavailable`].
    pub fn create(prefix: &str) -> Result<Netns, OvsError> {
        let ip = program("ip")?;
        let pid = std::process::id();
        let mut last = None;
        for _ in 0..64 {
            let name = format!("{prefix}-{pid}-{}", COUNTER.fetch_add(1, Ordering::Relaxed));
            if Path::new("/run/netns").join(&name).exists() {
                continue; // a leftover of a crashed run with a recycled pid
            }
            match run(
                Command::new(&ip).args(["netns", "add", &name]),
                COMMAND_TIMEOUT,
            ) {
                Ok(_) => {
                    let ns = Netns {
                        name,
                        ip,
                        owned: true,
                    };
                    ns.ip_cmd(&["link", "set", "lo", "up"])?;
                    return Ok(ns);
                }
                Err(e @ OvsError::Command { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(OvsError::Unavailable(format!(
            "cannot create a network namespace: {}",
            last.map_or_else(|| "no free name".to_owned(), |e| e.to_string())
        )))
    }

    /// Creates the namespace `name` exactly (at most 64 bytes, no `/`), with its loopback up.
    /// An existing namespace of that name is an error, never taken over.
    pub fn create_named(name: &str) -> Result<Netns, OvsError> {
        if name.is_empty() || name.len() > 64 || name.contains('/') || name.starts_with('.') {
            return Err(OvsError::Invalid(format!("bad namespace name {name:?}")));
        }
        let ip = program("ip")?;
        if Path::new("/run/netns").join(name).exists() {
            return Err(OvsError::Invalid(format!(
                "network namespace {name} exists already"
            )));
        }
        run(
            Command::new(&ip).args(["netns", "add", name]),
            COMMAND_TIMEOUT,
        )?;
        let ns = Netns {
            name: name.to_owned(),
            ip,
            owned: true,
        };
        ns.ip_cmd(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Takes ownership of the existing namespace `name` (deleted when the value drops). The
    /// namespace need not exist: dropping then does nothing harmful.
    pub fn adopt(name: &str) -> Result<Netns, OvsError> {
        Ok(Netns {
            name: name.to_owned(),
            ip: program("ip")?,
            owned: true,
        })
    }

    /// Gives up ownership: the namespace outlives the value. Returns its name.
    pub fn detach(mut self) -> String {
        self.owned = false;
        std::mem::take(&mut self.name)
    }

    /// The namespace name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command running `program` inside the namespace (`ip netns exec <name> <program>`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(&self.ip);
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `program args` inside the namespace with the default time limit; returns stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, OvsError> {
        run(self.command(program).args(args), COMMAND_TIMEOUT)
    }

    /// Runs `ip -n <name> args`.
    pub fn ip_cmd(&self, args: &[&str]) -> Result<String, OvsError> {
        run(
            Command::new(&self.ip).args(["-n", &self.name]).args(args),
            COMMAND_TIMEOUT,
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // Nothing useful can be done about a failure here; the name is unique to this process.
        let _ = run(
            Command::new(&self.ip).args(["netns", "del", &self.name]),
            COMMAND_TIMEOUT,
        );
    }
}

/// Options of [`Ovs::start_with`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvsOptions {
    /// Bridge name (at most 15 bytes).
    pub bridge: String,
    /// Prefix of the namespace and directory names.
    pub name_prefix: String,
    /// Datapath id to configure; `None` lets Open vSwitch derive one from the bridge MAC.
    pub datapath_id: Option<u64>,
    /// Exact namespace name (must not exist yet); `None`: `<name_prefix>-<pid>-<counter>`.
    pub netns_name: Option<String>,
    /// Exact private directory (created with its parents; must not hold a database yet);
    /// `None`: `<temp dir>/<name_prefix>-<pid>-<counter>`. Sockets live in it: keep the path
    /// short (unix socket paths are limited to 107 bytes).
    pub dir: Option<PathBuf>,
    /// Run the userspace datapath with TCP segmentation offload
    /// (`other_config:userspace-tso-enable=true`) and leave the veths' TX offloads on;
    /// `false` (default): TSO off in the switch and `tx off` on every veth.
    pub userspace_tso: bool,
}

impl Default for OvsOptions {
    fn default() -> Self {
        OvsOptions {
            bridge: "br0".into(),
            name_prefix: "fsof".into(),
            datapath_id: None,
            netns_name: None,
            dir: None,
            userspace_tso: false,
        }
    }
}

/// What identifies a running (or half-started) instance after [`Ovs::detach`]: enough for
/// [`Ovs::adopt`] to drive and stop it from another process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvsRecord {
    /// The namespace the daemons run in.
    pub netns: String,
    /// The private directory (database, sockets, pid files, logs).
    pub dir: PathBuf,
    /// The bridge.
    pub bridge: String,
    /// Whether the veths keep their TX offloads ([`OvsOptions::userspace_tso`]).
    pub userspace_tso: bool,
}

/// Paths of the binaries, resolved once.
#[derive(Debug)]
struct Tools {
    ovsdb_tool: PathBuf,
    ovsdb_server: PathBuf,
    vswitchd: PathBuf,
    vsctl: PathBuf,
    ofctl: PathBuf,
    appctl: PathBuf,
    ethtool: Option<PathBuf>,
    kill: Option<PathBuf>,
    schema: PathBuf,
    pkgdatadir: PathBuf,
}

impl Tools {
    fn find() -> Result<Tools, OvsError> {
        let pkgdatadir = schema_dir()?;
        Ok(Tools {
            ovsdb_tool: program("ovsdb-tool")?,
            ovsdb_server: program("ovsdb-server")?,
            vswitchd: program("ovs-vswitchd")?,
            vsctl: program("ovs-vsctl")?,
            ofctl: program("ovs-ofctl")?,
            appctl: program("ovs-appctl")?,
            ethtool: find_program("ethtool"),
            kill: find_program("kill"),
            schema: pkgdatadir.join("vswitch.ovsschema"),
            pkgdatadir,
        })
    }
}

/// A private Open vSwitch instance (see the module documentation). Stopped and cleaned up on
/// drop.
#[derive(Debug)]
pub struct Ovs {
    tools: Tools,
    dir: PathBuf,
    bridge: String,
    /// Veths keep their TX offloads ([`OvsOptions::userspace_tso`]).
    userspace_tso: bool,
    /// Stop and clean up on drop (false after [`Ovs::detach`]).
    owned: bool,
    // Dropped after `Drop::drop` has stopped the daemons.
    netns: Netns,
}

const DAEMONS: [&str; 2] = ["ovs-vswitchd", "ovsdb-server"];

impl Ovs {
    /// Starts an instance with [`OvsOptions::default`].
    pub fn start() -> Result<Ovs, OvsError> {
        Ovs::start_with(&OvsOptions::default())
    }

    /// Starts the daemons and creates the bridge. Everything created so far is cleaned up if
    /// a step fails.
    pub fn start_with(options: &OvsOptions) -> Result<Ovs, OvsError> {
        check_prerequisites()?;
        if options.bridge.is_empty() || options.bridge.len() > IFNAMSIZ_MAX {
            return Err(OvsError::Invalid(format!(
                "bad bridge name {:?}",
                options.bridge
            )));
        }
        let tools = Tools::find()?;
        let (dir, made_dir) = match &options.dir {
            Some(d) => {
                if d.join("conf.db").exists() {
                    return Err(OvsError::Invalid(format!(
                        "{} holds an Open vSwitch database already",
                        d.display()
                    )));
                }
                let made = !d.exists();
                fs::create_dir_all(d).map_err(|source| OvsError::Io {
                    context: format!("creating {}", d.display()),
                    source,
                })?;
                (d.clone(), made)
            }
            None => (make_private_dir(&options.name_prefix)?, true),
        };
        let netns = match &options.netns_name {
            Some(name) => Netns::create_named(name),
            None => Netns::create(&options.name_prefix),
        };
        let netns = match netns {
            Ok(ns) => ns,
            Err(e) => {
                if made_dir {
                    // Best effort: the directory is empty and ours.
                    let _ = fs::remove_dir_all(&dir);
                }
                return Err(e);
            }
        };
        let ovs = Ovs {
            tools,
            dir,
            bridge: options.bridge.clone(),
            userspace_tso: options.userspace_tso,
            owned: true,
            netns,
        };
        ovs.boot(options)?;
        Ok(ovs)
    }

    /// Gives up ownership: the daemons keep running, and the namespace and the directory stay,
    /// after the value is gone. The record lets [`Ovs::adopt`] take the instance back.
    pub fn detach(mut self) -> OvsRecord {
        self.owned = false;
        let record = self.record();
        self.netns.owned = false;
        record
    }

    /// This instance's record (see [`Ovs::detach`]).
    pub fn record(&self) -> OvsRecord {
        OvsRecord {
            netns: self.netns.name.clone(),
            dir: self.dir.clone(),
            bridge: self.bridge.clone(),
            userspace_tso: self.userspace_tso,
        }
    }

    /// Takes back an instance from its record (typically written by another process after
    /// [`Ovs::detach`]). Nothing is checked beyond the tools being installed: the instance
    /// may be half-started or gone; dropping the value stops whatever runs, deletes the
    /// namespace and removes the directory.
    pub fn adopt(record: &OvsRecord) -> Result<Ovs, OvsError> {
        Ok(Ovs {
            tools: Tools::find()?,
            dir: record.dir.clone(),
            bridge: record.bridge.clone(),
            userspace_tso: record.userspace_tso,
            owned: true,
            netns: Netns::adopt(&record.netns)?,
        })
    }

    fn boot(&self, options: &OvsOptions) -> Result<(), OvsError> {
        let db = self.dir.join("conf.db");
        run(
            self.env(Command::new(&self.tools.ovsdb_tool))
                .arg("create")
                .arg(&db)
                .arg(&self.tools.schema),
            COMMAND_TIMEOUT,
        )?;
        let mut server = self.env(self.netns.command(&self.tools.ovsdb_server));
        server
            .arg(&db)
            .arg(format!("--remote=punix:{}", self.db_socket().display()))
            .arg(format!(
                "--pidfile={}",
                self.pidfile("ovsdb-server").display()
            ))
            .arg(format!(
                "--unixctl={}",
                self.ctl_socket("ovsdb-server").display()
            ))
            .arg(format!(
                "--log-file={}",
                self.dir.join("ovsdb-server.log").display()
            ))
            .arg("--detach");
        self.start_daemon(server, "ovsdb-server")?;
        self.vsctl_opts(&["--no-wait"], &["init"])?;
        let mut vswitchd = self.env(self.netns.command(&self.tools.vswitchd));
        vswitchd
            .arg(format!("unix:{}", self.db_socket().display()))
            .arg(format!(
                "--pidfile={}",
                self.pidfile("ovs-vswitchd").display()
            ))
            .arg(format!(
                "--unixctl={}",
                self.ctl_socket("ovs-vswitchd").display()
            ))
            .arg(format!(
                "--log-file={}",
                self.dir.join("ovs-vswitchd.log").display()
            ))
            .arg("--detach");
        self.start_daemon(vswitchd, "ovs-vswitchd")?;
        let br = self.bridge.as_str();
        let mut args = vec![
            "add-br",
            br,
            "--",
            "set",
            "bridge",
            br,
            "datapath_type=netdev",
            "protocols=OpenFlow13",
            "fail-mode=secure",
        ];
        let dpid = options
            .datapath_id
            .map(|d| format!("other-config:datapath-id={d:016x}"));
        if let Some(d) = &dpid {
            args.push(d);
        }
        self.vsctl(&args)?;
        if options.userspace_tso {
            // Read by the datapath when ports are added: set before any port exists.
            self.vsctl(&[
                "set",
                "open_vswitch",
                ".",
                "other_config:userspace-tso-enable=true",
            ])?;
        }
        Ok(())
    }

    /// Runs a daemon with `--detach`; the launcher exits once the daemon is ready. Its
    /// standard streams go to `<name>.stderr` in the private directory.
    fn start_daemon(&self, mut cmd: Command, name: &str) -> Result<(), OvsError> {
        let command = describe(&cmd);
        let stderr_path = self.dir.join(format!("{name}.stderr"));
        let io = |source| OvsError::Io {
            context: format!("starting `{command}`"),
            source,
        };
        let stderr = fs::File::create(&stderr_path).map_err(io)?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(io)?;
        let status = wait_timeout(&mut child, &command, COMMAND_TIMEOUT)?;
        if status.success() {
            Ok(())
        } else {
            let text = fs::read_to_string(&stderr_path).unwrap_or_default();
            Err(OvsError::Command {
                command,
                status: status.to_string(),
                stderr: format!(
                    "{} (log: {})",
                    text.trim(),
                    self.dir.join(format!("{name}.log")).display()
                ),
            })
        }
    }

    fn env(&self, mut cmd: Command) -> Command {
        cmd.env("OVS_RUNDIR", &self.dir)
            .env("OVS_DBDIR", &self.dir)
            .env("OVS_LOGDIR", &self.dir)
            .env("OVS_SYSCONFDIR", &self.dir)
            .env("OVS_PKGDATADIR", &self.tools.pkgdatadir);
        cmd
    }

    fn pidfile(&self, daemon: &str) -> PathBuf {
        self.dir.join(format!("{daemon}.pid"))
    }

    fn ctl_socket(&self, daemon: &str) -> PathBuf {
        self.dir.join(format!("{daemon}.ctl"))
    }

    /// The namespace the daemons (and the bridge's tap devices) live in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The private directory (database, sockets, pid files, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bridge name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The OVSDB socket.
    pub fn db_socket(&self) -> PathBuf {
        self.dir.join("db.sock")
    }

    /// The bridge's management target for `ovs-ofctl` (`unix:<dir>/<bridge>.mgmt`).
    pub fn mgmt_target(&self) -> String {
        format!(
            "unix:{}",
            self.dir.join(format!("{}.mgmt", self.bridge)).display()
        )
    }

    /// A suggested path for the controller's unix listening socket (inside the private
    /// directory, so it is removed with it).
    pub fn controller_socket_path(&self) -> PathBuf {
        self.dir.join("controller.sock")
    }

    /// The last `lines` lines of the `ovs-vswitchd` log, for diagnostics.
    pub fn vswitchd_log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.dir.join("ovs-vswitchd.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs `ovs-vsctl` against this instance's database; returns stdout.
    pub fn vsctl(&self, args: &[&str]) -> Result<String, OvsError> {
        self.vsctl_opts(&[], args)
    }

    fn vsctl_opts(&self, opts: &[&str], args: &[&str]) -> Result<String, OvsError> {
        run(
            self.env(Command::new(&self.tools.vsctl))
                .arg(format!("--db=unix:{}", self.db_socket().display()))
                .arg("--timeout=10")
                .args(opts)
                .args(args),
            COMMAND_TIMEOUT + Duration::from_secs(1),
        )
    }

    /// Runs `ovs-ofctl -O OpenFlow13 --no-names <command> <mgmt target> args...`; returns
    /// stdout.
    pub fn ofctl(&self, command: &str, args: &[&str]) -> Result<String, OvsError> {
        run(
            self.env(Command::new(&self.tools.ofctl))
                .args(["-O", "OpenFlow13", "--no-names", "--timeout=10", command])
                .arg(self.mgmt_target())
                .args(args),
            COMMAND_TIMEOUT + Duration::from_secs(1),
        )
    }

    /// `ovs-ofctl dump-flows` output, one flow per line after the reply header line.
    pub fn dump_flows(&self) -> Result<String, OvsError> {
        self.ofctl("dump-flows", &[])
    }

    /// `ovs-ofctl dump-ports` output (per-port packet, byte, drop and error counters).
    pub fn dump_ports(&self) -> Result<String, OvsError> {
        self.ofctl("dump-ports", &[])
    }

    /// Whether veths keep their TX offloads ([`OvsOptions::userspace_tso`]).
    pub fn userspace_tso(&self) -> bool {
        self.userspace_tso
    }

    /// The switch's TLS credentials for `ssl:` controllers (`ovs-vsctl set-ssl`): its private
    /// key, its certificate and the CA certificate the controller's must chain to (Open vSwitch
    /// does not check the controller's name). Absolute paths: the daemons read them.
    pub fn set_ssl(&self, key: &Path, cert: &Path, ca: &Path) -> Result<(), OvsError> {
        let (key, cert, ca) = (key.display(), cert.display(), ca.display());
        self.vsctl(&[
            "set-ssl",
            &key.to_string(),
            &cert.to_string(),
            &ca.to_string(),
        ])
        .map(|_| ())
    }

    /// Points the bridge at a controller (`unix:<path>`, `tcp:<ip>:<port>` or, after
    /// [`Ovs::set_ssl`], `ssl:<ip>:<port>`; addresses as seen from inside the namespace), out
    /// of band, retrying at least every second. This flushes all flows.
    pub fn set_controller(&self, target: &str) -> Result<(), OvsError> {
        let br = self.bridge.as_str();
        self.vsctl(&[
            "set-controller",
            br,
            target,
            "--",
            "set",
            "controller",
            br,
            "max_backoff=1000",
            "connection_mode=out-of-band",
        ])
        .map(|_| ())
    }

    /// Creates a veth pair with `port` inside the switch namespace and `peer` inside
    /// `peer_ns`, brings both up, turns off TX checksum offload on both (needed for TCP through
    /// the userspace datapath; skipped when `ethtool` is absent, and with
    /// [`OvsOptions::userspace_tso`], which keeps the offloads), adds `port` to the bridge
    /// (with OpenFlow port number `ofport` if given) and returns its OpenFlow port number.
    pub fn add_veth_port(
        &self,
        port: &str,
        peer_ns: &Netns,
        peer: &str,
        ofport: Option<u32>,
    ) -> Result<u32, OvsError> {
        for name in [port, peer] {
            if name.is_empty() || name.len() > IFNAMSIZ_MAX {
                return Err(OvsError::Invalid(format!("bad interface name {name:?}")));
            }
        }
        self.netns.ip_cmd(&[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            peer_ns.name(),
        ])?;
        self.netns.ip_cmd(&["link", "set", port, "up"])?;
        peer_ns.ip_cmd(&["link", "set", peer, "up"])?;
        if let Some(ethtool) = self.tools.ethtool.as_ref().filter(|_| !self.userspace_tso) {
            run(
                self.netns.command(ethtool).args(["-K", port, "tx", "off"]),
                COMMAND_TIMEOUT,
            )?;
            run(
                peer_ns.command(ethtool).args(["-K", peer, "tx", "off"]),
                COMMAND_TIMEOUT,
            )?;
        }
        let request = ofport.map(|n| format!("ofport_request={n}"));
        let mut args = vec!["add-port", self.bridge.as_str(), port];
        if let Some(r) = &request {
            args.extend(["--", "set", "interface", port, r.as_str()]);
        }
        self.vsctl(&args)?;
        self.ofport(port)
    }

    /// The OpenFlow port number of interface `iface` (`ovs-vsctl get Interface <iface> ofport`).
    pub fn ofport(&self, iface: &str) -> Result<u32, OvsError> {
        let out = self.vsctl(&["get", "interface", iface, "ofport"])?;
        let n: i64 = out.trim().parse().map_err(|_| {
            OvsError::Invalid(format!("ofport of {iface}: unexpected {:?}", out.trim()))
        })?;
        u32::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| {
            OvsError::Invalid(format!("interface {iface} has no OpenFlow port ({n})"))
        })
    }

    /// The bridge's datapath id as reported by OVSDB.
    pub fn datapath_id(&self) -> Result<u64, OvsError> {
        let out = self.vsctl(&["get", "bridge", &self.bridge, "datapath_id"])?;
        let hex = out.trim().trim_matches('"');
        u64::from_str_radix(hex, 16)
            .map_err(|_| OvsError::Invalid(format!("unexpected datapath_id {hex:?}")))
    }

    /// Stops a daemon whose `ovs-appctl exit` did not work, by pid file: SIGTERM, then SIGKILL.
    fn kill_by_pidfile(&self, daemon: &str) {
        let Some(kill) = &self.tools.kill else { return };
        let Some(pid) = fs::read_to_string(self.pidfile(daemon))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            return;
        };
        // Guard against a recycled pid: only signal a process that runs the daemon binary.
        let alive = || {
            fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .is_some_and(|c| String::from_utf8_lossy(&c).contains(daemon))
        };
        for signal in ["-TERM", "-KILL"] {
            if !alive() {
                return;
            }
            let _ = run(
                Command::new(kill).args([signal, &pid.to_string()]),
                COMMAND_TIMEOUT,
            );
            let deadline = Instant::now() + Duration::from_secs(2);
            while alive() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        for daemon in DAEMONS {
            let ctl = self.ctl_socket(daemon);
            if ctl.exists() {
                let mut cmd = self.env(Command::new(&self.tools.appctl));
                cmd.arg("--timeout=5").arg("-t").arg(&ctl).arg("exit");
                if daemon == "ovs-vswitchd" {
                    cmd.arg("--cleanup");
                }
                // Failure falls through to the pid-file fallback below.
                let _ = run(&mut cmd, Duration::from_secs(6));
            }
            self.kill_by_pidfile(daemon);
        }
        // Best effort; the namespace is deleted when `self.netns` drops right after this.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn make_private_dir(prefix: &str) -> Result<PathBuf, OvsError> {
    let mut base = std::env::temp_dir();
    // Sockets live in the directory; keep the longest one within sun_path.
    if base.as_os_str().len() + prefix.len() + 40 > SUN_PATH_MAX {
        base = PathBuf::from("/tmp");
    }
    let pid = std::process::id();
    let mut last = None;
    for _ in 0..64 {
        let mut name = String::new();
        let _ = write!(
            name,
            "{prefix}-{pid}-{}",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = base.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(source) => {
                return Err(OvsError::Io {
                    context: format!("creating {}", dir.display()),
                    source,
                });
            }
        }
    }
    Err(OvsError::Io {
        context: "creating a private directory".into(),
        source: last.unwrap_or_else(|| std::io::Error::other("no free name")),
    })
}
