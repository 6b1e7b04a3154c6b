//! `flowshift testbed kill`: process faults on a running testbed. Kills one of the run's
//! recorded processes (`controller`, `node1`, ...) with SIGKILL, as a crash would, and with
//! `--restart` starts it again with its recorded command line (its log is appended to), so
//! restart behaviour is tested on real processes.

use super::bed::{self, State};
use super::sys;
use anyhow::{Context, Result, bail};
use clap::Args;
use std::fs;

/// Arguments of `testbed kill`.
#[derive(Args, Debug)]
pub struct KillArgs {
    /// The process: `controller`, `node1`, `node2`, ...
    pub process: String,
    /// Run id; default: the only run.
    #[arg(long)]
    pub run: Option<String>,
    /// Start it again (same command line and namespace) once it is gone.
    #[arg(long)]
    pub restart: bool,
}

/// Runs `testbed kill`.
pub fn kill(a: &KillArgs) -> Result<()> {
    bed::require_root("`flowshift testbed kill`")?;
    let run = super::pick_run(a.run.as_deref())?;
    let mut state = State::load(&run)?;
    let Some(i) = state.processes.iter().position(|p| p.name == a.process) else {
        let names: Vec<&str> = state.processes.iter().map(|p| p.name.as_str()).collect();
        bail!(
            "testbed {run} has no process {:?} (it has: {})",
            a.process,
            names.join(", ")
        );
    };
    let p = state.processes[i].clone();
    let ours = sys::cmdline(p.pid).is_some_and(|c| c.contains(&p.marker));
    if ours {
        if !sys::kill_now(p.pid) {
            bail!("{} (pid {}) survived SIGKILL", p.name, p.pid);
        }
        println!("killed {} (pid {})", p.name, p.pid);
    } else {
        println!("{} (pid {}) was not running", p.name, p.pid);
    }
    if !a.restart {
        return Ok(());
    }
    let Some((program, args)) = p.command.split_first() else {
        bail!(
            "state.json has no command line for {}: cannot restart it",
            p.name
        );
    };
    let child = sys::spawn_in_ns(&p.netns, program.as_ref(), args, &p.log, &[])?;
    let pid = child.id();
    fs::write(
        state.dir.join(format!("{}.pid", p.name)),
        format!("{pid}\n"),
    )
    .with_context(|| format!("writing {}.pid", p.name))?;
    state.processes[i].pid = pid;
    state.save()?;
    println!("restarted {} (pid {pid})", p.name);
    Ok(())
}
