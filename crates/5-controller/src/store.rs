//! The controller's durable state (`state_file` in cluster.toml): which node owns each group,
//! and the migrations whose switch update may have been sent. A restarted controller starts
//! from it instead of from the configuration's initial owners, so it never moves a group back
//! silently.
//!
//! **Write-ahead.** [`Store::save`] runs before the switch update that redirects a group is
//! sent, so the switch never points anywhere the file does not say. The file is replaced
//! atomically (write a temporary file in the same directory, `fsync`, `rename`, `fsync` the
//! directory): a crash leaves the old or the new state, never a mix.
//!
//! **Resuming.** A persisted migration in [`PersistedStage::Redirecting`] had its group's
//! owner moved to the destination already; on start the controller pushes that table to the
//! switch and sends the source its `CutoverDone` again when it connects (the source waits in
//! AwaitCutover; a source that finished already refuses it, which is harmless). Migrations
//! that had not reached the redirect are not persisted: their group is still the source's, and
//! the source's later `ReadyForCutover` for a migration the controller does not know is
//! aborted (`abort_stray`), which returns the group to Active at the source.

use flowshift_migration::InstanceId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The file format's version; another version is refused with a clear error.
pub const STATE_VERSION: u32 = 1;

/// Largest state file read, in bytes (a cluster's groups and in-flight migrations are far
/// smaller; a larger file is not ours).
const MAX_STATE_BYTES: u64 = 16 << 20;

/// How far a persisted migration had come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistedStage {
    /// The redirect was decided (owner moved to the destination); the switch update may or
    /// may not have reached the switch; the source may not have had its cutover.
    Redirecting,
}

/// A migration that must be finished after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedMigration {
    /// The migration id the nodes know.
    pub migration: u64,
    /// The group's external address.
    pub external: Ipv4Addr,
    /// Source node.
    pub from: InstanceId,
    /// Destination node.
    pub to: InstanceId,
    /// How far it had come.
    pub stage: PersistedStage,
}

/// What the file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Owner node of each group, by external address.
    pub owners: BTreeMap<Ipv4Addr, InstanceId>,
    /// Migrations to finish after a restart.
    pub migrations: Vec<PersistedMigration>,
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or replacing the file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a state file of this version (move it away to start from the
    /// configuration's owners).
    #[error(
        "state file {path} is unreadable ({why}); move it away to start from the configuration's owners"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The state file (see the module documentation).
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    last_saved: Option<PersistedState>,
    saves: u64,
}

impl Store {
    /// A store writing `path` (nothing is read or written yet).
    pub fn new(path: PathBuf) -> Store {
        Store {
            path,
            last_saved: None,
            saves: 0,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Times the file was replaced by this process.
    pub fn saves(&self) -> u64 {
        self.saves
    }

    /// Reads the file: `Ok(None)` if it does not exist (a first start).
    pub fn load(&mut self) -> Result<Option<PersistedState>, StoreError> {
        let io = |what, source| StoreError::Io {
            what,
            path: self.path.clone(),
            source,
        };
        let corrupt = |why: String| StoreError::Corrupt {
            path: self.path.clone(),
            why,
        };
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("reading", e)),
        };
        if meta.len() > MAX_STATE_BYTES {
            return Err(corrupt(format!(
                "{} bytes, more than {MAX_STATE_BYTES}",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| io("reading", e))?;
        let state: PersistedState =
            serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(corrupt(format!(
                "version {}, this controller writes {STATE_VERSION}",
                state.version
            )));
        }
        self.last_saved = Some(state.clone());
        Ok(Some(state))
    }

    /// Replaces the file with `state` atomically, unless it already holds exactly that.
    /// Returns whether it wrote.
    pub fn save(&mut self, state: &PersistedState) -> Result<bool, StoreError> {
        if self.last_saved.as_ref() == Some(state) {
            return Ok(false);
        }
        let io = |what, source| StoreError::Io {
            what,
            path: self.path.clone(),
            source,
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".to_owned());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let mut text = serde_json::to_vec_pretty(state).expect("state serializes");
        text.push(b'\n');
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            // The rename itself is durable once the directory is synced.
            std::fs::File::open(&dir)?.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("replacing", e));
        }
        self.last_saved = Some(state.clone());
        self.saves += 1;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fsctl-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("state.json")
    }

    fn sample() -> PersistedState {
        PersistedState {
            version: STATE_VERSION,
            owners: [
                (Ipv4Addr::new(198, 18, 0, 1), InstanceId(2)),
                (Ipv4Addr::new(198, 18, 0, 2), InstanceId(1)),
            ]
            .into_iter()
            .collect(),
            migrations: vec![PersistedMigration {
                migration: 0xdead_beef,
                external: Ipv4Addr::new(198, 18, 0, 1),
                from: InstanceId(1),
                to: InstanceId(2),
                stage: PersistedStage::Redirecting,
            }],
        }
    }

    #[test]
    fn saves_atomically_loads_back_and_skips_unchanged_states() {
        let path = temp_path("roundtrip");
        let mut store = Store::new(path.clone());
        assert_eq!(store.load().unwrap(), None, "no file: first start");
        let s = sample();
        assert!(store.save(&s).unwrap());
        assert!(!store.save(&s).unwrap(), "unchanged state not rewritten");
        assert_eq!(store.saves(), 1);
        let mut again = Store::new(path.clone());
        assert_eq!(again.load().unwrap(), Some(s.clone()));
        assert!(!again.save(&s).unwrap(), "loaded state counts as saved");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn corrupt_or_foreign_files_are_refused_with_the_path() {
        let path = temp_path("corrupt");
        std::fs::write(&path, "{ not json").unwrap();
        let e = Store::new(path.clone()).load().unwrap_err().to_string();
        assert!(
            e.contains("state.json") && e.contains("move it away"),
            "{e}"
        );
        let mut s = sample();
        s.version = 99;
        std::fs::write(&path, serde_json::to_string(&s).unwrap()).unwrap();
        let e = Store::new(path.clone()).load().unwrap_err().to_string();
        assert!(e.contains("version 99"), "{e}");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn an_unwritable_directory_is_an_error_not_a_panic() {
        let mut store = Store::new(PathBuf::from("/nonexistent-flowshift-dir/state.json"));
        assert!(store.save(&sample()).is_err());
    }
}
