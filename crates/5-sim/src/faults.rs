//! Fault plans for the swarm ([`crate::swarm`]): which faults one run injects and when, all
//! drawn from the run's seed, so a seed reproduces its faults exactly.

use crate::rng::{StreamKind, stream};
use flowshift_migration::Algorithm;
use rand::RngExt;
use rand_chacha::ChaCha8Rng as Rng;
use serde::Serialize;
use std::time::Duration;

/// A process crash and restart: its links go down at `at`, a fresh instance (new epoch) takes
/// its place and its links come back `down_for` later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Crash {
    /// When the process dies (from the start of the run).
    pub at: Duration,
    /// How long it stays dead.
    pub down_for: Duration,
    /// The controller gives the dead owner's group to the survivor at once (`rehome`), rather
    /// than waiting for the restart and giving it back to the restarted owner.
    pub rehome_at_once: bool,
}

/// Every fault of one run. `Default` is a run without faults.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FaultPlan {
    /// Migration algorithm of the run.
    pub algorithm: Option<Algorithm>,
    /// Random loss of transfer frames (each direction).
    pub transfer_loss: f64,
    /// Fraction of transfer frames delayed by an extra millisecond (reordering).
    pub transfer_reorder: f64,
    /// The transfer link goes down at `.0` for `.1` (a connection reset).
    pub transfer_reset: Option<(Duration, Duration)>,
    /// The source (instance A) crashes and restarts.
    pub source_crash: Option<Crash>,
    /// The destination (instance B) crashes and restarts.
    pub dest_crash: Option<Crash>,
    /// The controller restarts at this time: its orchestrator is rebuilt from the persisted
    /// group ownership and forgets every migration.
    pub controller_restart: Option<Duration>,
    /// Switch update delay (flow-mod to effect and barrier reply).
    pub switch_delay: Duration,
}

impl FaultPlan {
    /// Draws a plan from `seed`; faults fall in `[window.0, window.1)` of the run. About one
    /// run in eight has no fault at all (the loss-free baseline is checked on those too).
    pub fn draw(seed: u64, window: (Duration, Duration)) -> FaultPlan {
        let mut r = stream(seed, StreamKind::User, 0xfa17);
        let span = (window.1 - window.0).as_micros() as u64;
        let at = |r: &mut Rng| window.0 + Duration::from_micros(r.random_range(0..span.max(1)));
        let ms = |r: &mut Rng, lo: u64, hi: u64| Duration::from_millis(r.random_range(lo..hi));
        let algorithm = match r.random_range(0..8u32) {
            0 => Algorithm::StopCopy,
            1 => Algorithm::PreCopy,
            _ => Algorithm::FreezeCopy,
        };
        let mut p = FaultPlan {
            algorithm: Some(algorithm),
            switch_delay: ms(&mut r, 1, 40),
            ..FaultPlan::default()
        };
        if r.random_range(0..8u32) == 0 {
            return p;
        }
        if r.random_bool(0.4) {
            p.transfer_loss = [0.01, 0.05, 0.2][r.random_range(0..3usize)];
        }
        if r.random_bool(0.3) {
            p.transfer_reorder = 0.1;
        }
        if r.random_bool(0.25) {
            let t = at(&mut r);
            p.transfer_reset = Some((t, ms(&mut r, 5, 400)));
        }
        let crash = |r: &mut Rng| Crash {
            at: at(r),
            down_for: ms(r, 20, 300),
            rehome_at_once: r.random_bool(0.5),
        };
        match r.random_range(0..6u32) {
            0 => p.source_crash = Some(crash(&mut r)),
            1 => p.dest_crash = Some(crash(&mut r)),
            _ => {}
        }
        if r.random_bool(0.2) {
            p.controller_restart = Some(at(&mut r));
        }
        p
    }

    /// True if the plan kills a process (then packets and state may be lost, counted).
    pub fn crashes(&self) -> bool {
        self.source_crash.is_some() || self.dest_crash.is_some()
    }
}
