//! Configuration of an instance's migration engine ([`MigrationConfig`]) and the parameters of
//! one migration ([`Params`]). Durations serialize as integer milliseconds (fields ending in
//! `_us`: microseconds).

use core::time::Duration;
use serde::{Deserialize, Serialize};

/// Engine-wide settings: the transfer channel, buffer bounds, queue bounds. Validated by
/// [`MigrationConfig::validate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MigrationConfig {
    /// First retransmission timeout of a message (default 20 ms).
    #[serde(with = "millis")]
    pub rto_initial: Duration,
    /// Ceiling of the doubled retransmission timeout (default 1 s).
    #[serde(with = "millis")]
    pub rto_max: Duration,
    /// Retransmissions of one message before the channel is declared failed (default 8).
    pub max_retries: u32,
    /// Messages a receiver keeps ahead of a gap (default 64); later ones are refused, counted.
    pub reorder_window: u32,
    /// Bytes of frames a receiver keeps ahead of a gap, per migration (default 8 MiB).
    pub reorder_bytes: u32,
    /// Messages a sender keeps unacknowledged per migration before it stops producing batches
    /// (default 32; control messages may exceed it by a few).
    pub max_unacked: u32,
    /// Source: a keepalive `Ping` is sent after this long without sending anything (default 1 s).
    #[serde(with = "millis")]
    pub keepalive: Duration,
    /// Destination: the migration is abandoned after this long without a frame from the source
    /// (default 10 s; must exceed `keepalive` plus the retransmission schedule).
    #[serde(with = "millis")]
    pub peer_timeout: Duration,
    /// Packets a source may buffer per migration (frozen mappings' packets and new flows
    /// waiting for `PrepareAck`); overflow is a counted drop (default 8192).
    pub freeze_buffer_packets: u32,
    /// Bytes a source may buffer per migration (default 8 MiB).
    pub freeze_buffer_bytes: u32,
    /// Switch packets a destination may hold per migration until the source's end-of-chain
    /// marker (default 32768); overflow is a counted drop. Size it for the group's packet rate
    /// times the hold (`chain_quiet` plus the chain path's delay, about 15 ms): a switch that
    /// queued a backlog releases it into the hold at once when the redirect lands.
    pub cutover_hold_packets: u32,
    /// Bytes a destination may hold per migration (default 32 MiB: 15 ms at 10 Gbit/s with
    /// room for a backlog; GSO frames count with their whole length).
    pub cutover_hold_bytes: u32,
    /// After the end-of-chain marker, a destination still missing some of the chained packets
    /// it announces releases its hold once no chained packet has arrived for this long (taken
    /// as lost on the chain path; counted in `chain_lost`). Default 200 ms: it must exceed the
    /// chain path's queueing delay, which on a saturated software switch reaches about 100 ms
    /// (a release before the chained packets arrive reorders them).
    #[serde(rename = "chain_idle_release_us", with = "micros")]
    pub chain_idle_release: Duration,
    /// Longest a destination holds switch packets waiting for the end-of-chain marker; then it
    /// releases them anyway (default 1 s).
    #[serde(with = "millis")]
    pub cutover_hold_max: Duration,
    /// Bound of the output queue (default 65536): packets to send or chain; overflow is a
    /// counted drop. Drop reports (`report_drops`) have an allowance of as many again; a report
    /// beyond it is refused and counted. The driver drains `poll_output` after every call.
    pub max_outputs: u32,
    /// Bound of the event queue (default 4096); overflow is counted.
    pub max_events: u32,
    /// Migrations in progress at once on this instance, either role (default 16).
    pub max_migrations: u32,
    /// Finished migrations kept for `report` and for re-acknowledging late frames (default 64);
    /// the oldest is forgotten first.
    pub max_finished: u32,
    /// Hand dropped packets back as `Output::Dropped` (default false: they are only counted).
    pub report_drops: bool,
    /// This process's migration-id epoch. The driver draws it at random when it creates the
    /// instance (the simulator from its seed, the node from the OS; see
    /// [`with_epoch`](Self::with_epoch)), so ids are unguessable and a restarted process never
    /// reuses its predecessor's ids. Not read from configuration files (default 0: tests).
    #[serde(skip)]
    pub epoch: u32,
    /// Source: a destination that has not answered `Prepare` (`PrepareAck` or a refusal) this
    /// long after it was sent is given up: the source reverts, the group is `Active` again and
    /// an `Aborted` event (`PrepareTimeout`) is reported (default 5 s).
    #[serde(with = "millis")]
    pub prepare_timeout: Duration,
    /// Source in `AwaitCutover`: with no `cutover_done` for this long, it keeps serving the
    /// group through the daisy chain (nothing is lost: the destination holds the state) and
    /// reports [`crate::MigrationEvent::AwaitingCutover`] again, every `cutover_timeout`, so a
    /// restarted controller learns of it (default 5 s; counted in `cutover_overdue`).
    #[serde(with = "millis")]
    pub cutover_timeout: Duration,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            rto_initial: Duration::from_millis(20),
            rto_max: Duration::from_secs(1),
            max_retries: 8,
            reorder_window: 64,
            reorder_bytes: 8 << 20,
            max_unacked: 32,
            keepalive: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(10),
            freeze_buffer_packets: 8192,
            freeze_buffer_bytes: 8 << 20,
            cutover_hold_packets: 32768,
            cutover_hold_bytes: 32 << 20,
            chain_idle_release: Duration::from_millis(200),
            cutover_hold_max: Duration::from_secs(1),
            max_outputs: 65536,
            max_events: 4096,
            max_migrations: 16,
            max_finished: 64,
            report_drops: false,
            epoch: 0,
            prepare_timeout: Duration::from_secs(5),
            cutover_timeout: Duration::from_secs(5),
        }
    }
}

impl MigrationConfig {
    /// The same configuration with this process's random migration-id epoch.
    pub fn with_epoch(mut self, epoch: u32) -> Self {
        self.epoch = epoch;
        self
    }

    /// Checks bounds are non-zero and consistent.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.rto_initial.is_zero() || self.rto_max < self.rto_initial {
            return Err("need 0 < rto_initial <= rto_max");
        }
        if self.reorder_window == 0 || self.max_unacked == 0 {
            return Err("reorder_window and max_unacked must be non-zero");
        }
        if self.keepalive.is_zero() || self.peer_timeout <= self.keepalive {
            return Err("need 0 < keepalive < peer_timeout");
        }
        if self.prepare_timeout.is_zero() || self.cutover_timeout.is_zero() {
            return Err("prepare_timeout and cutover_timeout must be non-zero");
        }
        if self.max_migrations == 0 || self.max_events == 0 || self.max_outputs == 0 {
            return Err("max_migrations, max_events and max_outputs must be non-zero");
        }
        if (self.max_outputs as u64)
            < self.freeze_buffer_packets as u64 + self.cutover_hold_packets as u64
        {
            return Err("max_outputs must hold a released freeze buffer and hold queue");
        }
        Ok(())
    }
}

/// How the idle phase measures the death rate of the source's mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RateMode {
    /// Deaths per second divided by the mappings remaining at the window's start (a fraction
    /// per second).
    Relative,
    /// Deaths per second.
    Absolute,
}

/// Parameters of one migration (all algorithms; each reads the fields it needs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Params {
    /// Most mappings per `Batch` (default 256). A mapping always travels whole, in one batch.
    pub batch_size: u32,
    /// Most record bytes per `Batch` (default 64 KiB); a single larger mapping still travels
    /// alone.
    pub batch_max_bytes: u32,
    /// Batches sent and not yet acknowledged at once (default 1: freeze, send, wait for the
    /// acknowledgement, repeat; stop-copy and pre-copy benefit from more).
    pub batches_in_flight: u32,
    /// Idle phase: how often the source counts its remaining mappings (default 1 s, the NAT's
    /// default expiry granularity).
    #[serde(with = "millis")]
    pub idle_sample_interval: Duration,
    /// Idle phase: the death rate is measured over this many samples (default 10).
    pub idle_window_samples: u32,
    /// Idle phase: leave when the death rate falls below this (default 0.005, i.e. 0.5 % of the
    /// remaining mappings per second in `Relative` mode). Checked once a full window exists.
    pub idle_rate_threshold: f64,
    /// Idle phase: how the rate is measured (default `Relative`).
    pub idle_rate_mode: RateMode,
    /// Idle phase: leave after this long whatever the rate (default 300 s: longer than the
    /// default UDP and TCP-transitory timeouts). Zero skips the idle phase. All exit rules are
    /// evaluated at samples, so the phase ends at the first sample at or after this.
    #[serde(with = "millis")]
    pub idle_max: Duration,
    /// Idle phase: leave as soon as at most this many mappings remain (default 0).
    pub idle_floor: u32,
    /// Pre-copy: stop iterating after a round that copied at most this many mappings
    /// (default 64).
    pub precopy_stop_threshold: u32,
    /// Pre-copy: most rounds before the final stop-and-copy, round 0 included (default 30).
    pub precopy_max_rounds: u32,
    /// Pre-copy: least time between the starts of two rounds (default 0: a round starts when
    /// the previous one is acknowledged).
    #[serde(with = "millis")]
    pub precopy_min_round_interval: Duration,
    /// After `cutover_done`, how long the source keeps chaining stragglers before it forgets
    /// the group (default 50 ms; choose at least twice the switch-to-source delay). The
    /// destination does not wait for it: it stops holding at the end-of-chain marker.
    #[serde(with = "millis")]
    pub drain: Duration,
    /// After `cutover_done`, the source sends the end-of-chain marker (`ChainEnd`) once it has
    /// chained no packet of the group for this long (default 10 ms; at most `drain` after the
    /// cutover). It must outlast every gap in the group's traffic to the source while the
    /// switch still sends it there: a barrier confirms the flow table, not a software switch's
    /// datapath cache, and a CPU-starved switch or a packet ring's block timeout (1 ms, a
    /// jiffy on some kernels) delays stragglers by milliseconds. A straggler after the marker
    /// is still chained and counted as `chained_after_marker`, but it may overtake packets the
    /// destination already released (1 reordered probe in 8,000 with 500 us on this testbed).
    #[serde(rename = "chain_quiet_us", with = "micros")]
    pub chain_quiet: Duration,
    /// Freeze-copy: the longest a mapping should stay frozen, freeze to acknowledgement
    /// (default 1 ms). The source keeps at most a freeze budget of record bytes in flight and
    /// sizes it from this target and the freeze times it measures (see `source/messages.rs`). Zero
    /// turns the budget off: `batch_size`, `batch_max_bytes` and `batches_in_flight` alone
    /// apply.
    #[serde(rename = "freeze_target_us", with = "micros")]
    pub freeze_target: Duration,
    /// Freeze-copy: smallest and first freeze budget, in record bytes (default 4 KiB).
    pub freeze_budget_min: u32,
    /// Freeze-copy: largest freeze budget, in record bytes (default 4 MiB).
    pub freeze_budget_max: u32,
    /// Freeze-copy: consecutive refused batches before the migration gives up (default 8).
    pub max_batch_refusals: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            batch_size: 256,
            batch_max_bytes: 64 << 10,
            batches_in_flight: 1,
            idle_sample_interval: Duration::from_secs(1),
            idle_window_samples: 10,
            idle_rate_threshold: 0.005,
            idle_rate_mode: RateMode::Relative,
            idle_max: Duration::from_secs(300),
            idle_floor: 0,
            precopy_stop_threshold: 64,
            precopy_max_rounds: 30,
            precopy_min_round_interval: Duration::ZERO,
            drain: Duration::from_millis(50),
            chain_quiet: Duration::from_millis(10),
            freeze_target: Duration::from_millis(1),
            freeze_budget_min: 4 << 10,
            freeze_budget_max: 4 << 20,
            max_batch_refusals: 8,
        }
    }
}

impl Params {
    /// Checks the parameters against an engine configuration.
    pub fn validate(&self, cfg: &MigrationConfig) -> Result<(), &'static str> {
        if self.batch_size == 0 || self.batch_max_bytes < 24 {
            return Err("batch_size must be >= 1 and batch_max_bytes >= 24");
        }
        if self.batch_max_bytes as usize > crate::proto::MAX_BODY - 4 {
            return Err("batch_max_bytes exceeds the frame size");
        }
        if self.batches_in_flight == 0 || self.batches_in_flight > cfg.max_unacked {
            return Err("need 1 <= batches_in_flight <= max_unacked");
        }
        if self.idle_sample_interval.is_zero() || self.idle_window_samples == 0 {
            return Err("idle_sample_interval and idle_window_samples must be non-zero");
        }
        if !self.idle_rate_threshold.is_finite() || self.idle_rate_threshold < 0.0 {
            return Err("idle_rate_threshold must be a finite non-negative number");
        }
        if self.precopy_max_rounds == 0 {
            return Err("precopy_max_rounds must be >= 1");
        }
        if self.freeze_budget_min < 24 || self.freeze_budget_max < self.freeze_budget_min {
            return Err("need 24 <= freeze_budget_min <= freeze_budget_max");
        }
        Ok(())
    }
}

mod micros {
    use core::time::Duration;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(d)?))
    }
}

mod millis {
    use core::time::Duration;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
