//! Booting and stopping the daemons of an [`Ovs`]: creating the database, starting
//! `ovsdb-server` and `ovs-vswitchd` in the namespace with the private environment, creating
//! the bridge, and the pid-file fallback used on drop.

use super::{Ovs, OvsOptions};
use crate::OvsError;
use crate::process::{COMMAND_TIMEOUT, describe, run, wait_timeout};
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

impl Ovs {
    pub(super) fn boot(&self, options: &OvsOptions) -> Result<(), OvsError> {
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

    pub(super) fn env(&self, mut cmd: Command) -> Command {
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

    pub(super) fn ctl_socket(&self, daemon: &str) -> PathBuf {
        self.dir.join(format!("{daemon}.ctl"))
    }

    /// Stops a daemon whose `ovs-appctl exit` did not work, by pid file: SIGTERM, then SIGKILL.
    pub(super) fn kill_by_pidfile(&self, daemon: &str) {
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
