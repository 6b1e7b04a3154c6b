//! Network namespaces the harness creates, adopts or detaches ([`Netns`]).

use crate::process::{COMMAND_TIMEOUT, program, run};
use crate::{COUNTER, OvsError};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

/// A network namespace created by this process; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub(crate) name: String,
    ip: PathBuf,
    /// Delete the namespace on drop (false after [`Netns::detach`]).
    pub(crate) owned: bool,
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

    /// Steers the packets `dev` receives to CPUs by flow hash (receive packet steering:
    /// every online CPU, up to 32, in each receive queue's `rps_cpus`). A veth hands a packet
    /// to the backlog of the CPU its sender runs on; a sender that moves between CPUs can
    /// then have two packets of one flow overtake each other. With steering, a flow's packets
    /// share one backlog. `Ok(false)`: the kernel has no steering (no `rps_cpus` files).
    pub fn steer_by_flow(&self, dev: &str) -> Result<bool, OvsError> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(32));
        let mask = format!("{:x}", u64::MAX >> (64 - cpus));
        let script = r#"set -e; found=false
for q in /sys/class/net/"$1"/queues/rx-*/rps_cpus; do
  [ -e "$q" ] || continue; echo "$2" > "$q"; found=true
done
echo "$found""#;
        let out = run(
            self.command("sh").args(["-c", script, "sh", dev, &mask]),
            COMMAND_TIMEOUT,
        )?;
        Ok(out.trim() == "true")
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
