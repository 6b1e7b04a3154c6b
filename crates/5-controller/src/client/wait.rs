//! Following one migration to its end through the operator API (`flowshift migrate --wait`):
//! a pure [`MigrationWatch`] judges each `GET /migrations` answer; [`wait_for_migration`]
//! polls and sleeps around it.

use super::{ApiClient, ClientError};
use anyhow::{Result, anyhow, bail};
use flowshift_control::orchestrator::{MigrationStatus, Stage};
use std::fmt;
use std::time::{Duration, Instant};

/// How often [`wait_for_migration`] asks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A migration seen in a new stage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StageChange {
    /// Since the wait began.
    pub elapsed: Duration,
    /// The migration's index in the controller's list.
    pub index: usize,
    /// The stage it is in now.
    pub stage: Stage,
}

impl fmt::Display for StageChange {
    /// `[   12.3 s] migration #0: running` (seconds right-aligned in 7 columns).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:7.1} s] migration #{}: {}",
            self.elapsed.as_secs_f64(),
            self.index,
            self.stage.as_str()
        )
    }
}

/// Judges successive answers about migration `index` (no I/O, no clock).
#[derive(Clone, Debug)]
pub struct MigrationWatch {
    index: usize,
    timeout: Duration,
    last_stage: Option<Stage>,
}

impl MigrationWatch {
    /// Watches migration `index`, giving up once `timeout` has passed without an end.
    pub fn new(index: usize, timeout: Duration) -> MigrationWatch {
        MigrationWatch {
            index,
            timeout,
            last_stage: None,
        }
    }

    /// Takes the controller's list of migrations, `elapsed` after the wait began. Calls
    /// `on_change` first if the stage differs from the last answer's (always for the first);
    /// then returns the status once it is `Done` or `Aborted`, `Ok(None)` to ask again, or an
    /// error if the list lacks the migration or `elapsed` exceeds the timeout.
    pub fn observe(
        &mut self,
        elapsed: Duration,
        migrations: &[MigrationStatus],
        on_change: impl FnOnce(&StageChange),
    ) -> Result<Option<MigrationStatus>> {
        let index = self.index;
        let m = migrations
            .get(index)
            .ok_or_else(|| anyhow!("the controller no longer lists migration #{index}"))?;
        if self.last_stage != Some(m.stage) {
            on_change(&StageChange {
                elapsed,
                index,
                stage: m.stage,
            });
            self.last_stage = Some(m.stage);
        }
        if matches!(m.stage, Stage::Done | Stage::Aborted) {
            return Ok(Some(m.clone()));
        }
        if elapsed > self.timeout {
            bail!(
                "migration #{index} still {} after {} s",
                m.stage.as_str(),
                self.timeout.as_secs()
            );
        }
        Ok(None)
    }
}

/// Polls `GET /migrations` every [`POLL_INTERVAL`] until migration `index` is done or
/// aborted (its last status), calling `on_change` on each new stage. Fails as
/// [`MigrationWatch::observe`] does, or when a call fails.
pub fn wait_for_migration(
    client: &ApiClient,
    index: usize,
    timeout: Duration,
    mut on_change: impl FnMut(&StageChange),
) -> Result<MigrationStatus> {
    let started = Instant::now();
    let mut watch = MigrationWatch::new(index, timeout);
    loop {
        let all = client.migrations()?;
        if let Some(done) = watch.observe(started.elapsed(), &all, &mut on_change)? {
            return Ok(done);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The source node's report of finished migration `index` (`GET /migrations/<index>/report`),
/// or `Ok(None)` if it never got an id (it never started on the source).
pub fn finished_report(
    client: &ApiClient,
    index: usize,
    status: &MigrationStatus,
) -> Result<Option<serde_json::Value>, ClientError> {
    match status.migration {
        Some(_) => client.report(index).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowshift_migration::{Algorithm, InstanceId};
    use flowshift_wire::Instant as At;

    fn at(stage: Stage) -> MigrationStatus {
        let mut m = MigrationStatus::requested(
            At::from_nanos(0),
            "198.18.0.1".parse().unwrap(),
            InstanceId(1),
            InstanceId(2),
            Algorithm::FreezeCopy,
        );
        m.stage = stage;
        m
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn each_new_stage_is_reported_once_until_the_end() {
        let mut w = MigrationWatch::new(1, secs(60));
        let mut seen = Vec::new();
        let mut note = |c: &StageChange| seen.push((c.elapsed, c.stage));
        let list = |s| vec![at(Stage::Done), at(s)];
        assert_eq!(
            w.observe(secs(0), &list(Stage::Running), &mut note)
                .unwrap(),
            None
        );
        assert_eq!(
            w.observe(secs(1), &list(Stage::Running), &mut note)
                .unwrap(),
            None
        );
        assert_eq!(
            w.observe(secs(2), &list(Stage::Draining), &mut note)
                .unwrap(),
            None
        );
        let done = w.observe(secs(3), &list(Stage::Aborted), &mut note);
        assert_eq!(done.unwrap().map(|m| m.stage), Some(Stage::Aborted));
        assert_eq!(
            seen,
            [
                (secs(0), Stage::Running),
                (secs(2), Stage::Draining),
                (secs(3), Stage::Aborted)
            ]
        );
    }

    #[test]
    fn a_missing_or_late_migration_is_an_error_after_its_stage_is_shown() {
        let mut w = MigrationWatch::new(0, secs(5));
        let e = w.observe(secs(0), &[], |_| panic!("nothing to show"));
        assert_eq!(
            e.unwrap_err().to_string(),
            "the controller no longer lists migration #0"
        );
        let mut shown = None;
        let running = [at(Stage::Running)];
        assert_eq!(w.observe(secs(5), &running, |_| ()).unwrap(), None);
        let e = w.observe(secs(6), &[at(Stage::Redirecting)], |c| {
            shown = Some(c.stage)
        });
        assert_eq!(
            e.unwrap_err().to_string(),
            "migration #0 still redirecting after 5 s"
        );
        assert_eq!(shown, Some(Stage::Redirecting));
        // A migration that ends late is still an end.
        let done = w.observe(secs(60), &[at(Stage::Done)], |_| ()).unwrap();
        assert_eq!(done.map(|m| m.stage), Some(Stage::Done));
    }

    #[test]
    fn stage_lines_align_seconds() {
        let c = StageChange {
            elapsed: Duration::from_millis(12_345),
            index: 3,
            stage: Stage::Draining,
        };
        assert_eq!(c.to_string(), "[   12.3 s] migration #3: draining");
    }
}
