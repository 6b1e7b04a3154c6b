//! The private Open vSwitch instance ([`Ovs`]): its options, its record for detaching and
//! adopting, starting, accessors and cleanup on drop. Booting the daemons lives in `boot`,
//! the `ovs-vsctl`/`ovs-ofctl` commands in `commands`.

use crate::netns::Netns;
use crate::process::{check_prerequisites, find_program, program, run, schema_dir};
use crate::{COUNTER, OvsError};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

mod boot;
mod commands;
/// Longest Linux interface name.
const IFNAMSIZ_MAX: usize = 15;
/// Longest unix socket path (sun_path minus the NUL).
const SUN_PATH_MAX: usize = 107;

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
