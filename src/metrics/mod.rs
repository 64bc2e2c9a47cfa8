//! What the server counts, and how the counts leave the verify cores without slowing them.
//!
//! Each shard counts in plain fields of its own ([`ShardMetrics`]): no atomics, no locks on the
//! verify path. On its clock tick (every 50 ms at most, never per request) it copies them into
//! its slot of the [`Board`], behind a mutex only the exporter also takes, on a scrape. So a
//! scrape sees each shard as it was at its last tick: at most one tick old, and a shard that
//! has gone quiet has published its final counts within a tick. The exporter (`http.rs`)
//! serves them in Prometheus's text format (`exposition.rs`), beside `/healthz` and `/readyz`.

pub mod exposition;
pub mod http;
pub mod scrape;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::protocol::{ErrorCode, Status};
use crate::verify::CredentialKind;

/// The verify port's requests, by opcode, as labelled.
pub const OPERATIONS: [&str; 7] = [
    "ping",
    "verify",
    "verify_batch",
    "derive",
    "revoke_self",
    "verify_at",
    "unknown",
];

/// One shard's counters. Counters only grow; `connections_open` and `applied_sequence` are
/// levels.
#[derive(Clone, Debug, Default)]
pub struct ShardMetrics {
    /// Whether the shard's loop is running (set at its first publication).
    pub serving: bool,
    /// Clock ticks of the shard's loop: at least one every 50 ms while it runs, busy or idle,
    /// so a count that stops growing is a stalled shard (the systemd watchdog's signal).
    pub ticks: u64,
    /// VERIFY answers (batch items included), by status then credential kind.
    pub verifies: [[u64; CredentialKind::ALL.len()]; Status::ALL.len()],
    /// Frames answered, by [`OPERATIONS`] index.
    pub requests: [u64; OPERATIONS.len()],
    /// ERROR frames sent, by code (index in [`ErrorCode::ALL`]).
    pub errors: [u64; ErrorCode::ALL.len()],
    pub connections_accepted: u64,
    /// Connections told `busy` and closed at once (connection bound, out of descriptors).
    pub connections_refused: u64,
    pub connections_open: u64,
    /// Turns of the loop that took completions, submission entries they submitted, and
    /// receives that found the provided buffer ring empty.
    pub turns: u64,
    pub submissions: u64,
    pub buffer_shortages: u64,
    /// The last delta sequence the shard applied.
    pub applied_sequence: u64,
    /// Per request answered: from the start of the turn that received it (its completion
    /// taken) to the end of that turn (its answer queued for sending). One clock read per turn:
    /// every request of a turn gets the turn's time.
    pub service_seconds: Histogram,
}

impl ShardMetrics {
    pub fn count_verify(&mut self, status: Status, kind: CredentialKind) {
        self.verifies[status as usize][kind as usize] += 1;
    }

    pub fn count_error(&mut self, code: ErrorCode) {
        self.count_errors(code, 1);
    }

    pub fn count_errors(&mut self, code: ErrorCode, count: u64) {
        if let Some(at) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[at] += count;
        }
    }
}

/// Upper bounds of the latency histograms' buckets, in seconds (100 µs to 10 s).
pub const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A latency histogram with [`SECONDS_BUCKETS`] (Prometheus's classic buckets; the encoder
/// makes them cumulative).
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last counts those above every bound.
    pub counts: [u64; SECONDS_BUCKETS.len() + 1],
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        self.observe_many(seconds, 1);
    }

    /// `count` observations of the same value.
    pub fn observe_many(&mut self, seconds: f64, count: u64) {
        let bucket = SECONDS_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(SECONDS_BUCKETS.len());
        self.counts[bucket] += count;
        self.sum += seconds * count as f64;
    }

    /// Adds another histogram's observations (shards' histograms, merged for a scrape).
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// (upper bound, observations in that bucket alone) per bucket, `+Inf` last.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .map(|(at, &count)| {
                let bound = SECONDS_BUCKETS.get(at).copied().unwrap_or(f64::INFINITY);
                (bound, count)
            })
            .collect()
    }
}

/// The control plane's figures, published after each commit round and each compaction.
#[derive(Clone, Debug, Default)]
pub struct ControlMetrics {
    /// The control plane's loop is running.
    pub serving: bool,
    /// The last sequence assigned, and the last one durable and applied on every shard.
    pub assigned_sequence: u64,
    pub applied_sequence: u64,
    /// The snapshot in use: its sequence and record count.
    pub snapshot_sequence: u64,
    pub snapshot_records: u64,
    /// Key records in the overlay (changed or added since the snapshot).
    pub overlay_records: u64,
    pub log_bytes: u64,
    /// Changes committed since the snapshot (compaction starts at `compact_changes_max`).
    pub log_changes: u64,
    /// One write + fsync of a group commit.
    pub log_sync_seconds: Histogram,
    /// A change from its request's commit to its acknowledgement: durable, then applied on
    /// every shard (for a revocation: the revocation-ack latency).
    pub change_ack_seconds: Histogram,
    pub commit_rounds: u64,
    pub compactions: u64,
    pub compaction_failures: u64,
    pub compaction_seconds: Histogram,
    /// Lines in the audit trail (all files).
    pub audit_lines: u64,
    /// Keys with usage recorded.
    pub usage_keys: u64,
    /// Why changes are refused: the delta log or audit trail could not be written.
    pub broken: Option<String>,
}

/// Where shards and the control plane leave their figures for the exporter.
#[derive(Debug)]
pub struct Board {
    shards: Vec<Mutex<ShardMetrics>>,
    control: Mutex<ControlMetrics>,
    started: Instant,
    /// Keys in the table the server started on and its sequence (until the control plane
    /// publishes its own).
    pub snapshot_records: u64,
    pub snapshot_sequence: u64,
    /// Replicated mode: set while the change stream has been silent past `max_staleness_ms`;
    /// shards then answer `stale` instead of `valid` (docs/CLUSTER.md). Read once per turn.
    pub fail_closed: Arc<AtomicBool>,
    /// Replicated mode: what the NATS thread knows of the stream, read on each scrape.
    pub replication: std::sync::OnceLock<Arc<crate::replication::StreamStatus>>,
    /// Ticks of the control plane's heartbeat task, one every [`CONTROL_TICK`] while its
    /// executor runs tasks (the watchdog's view of the control plane).
    control_ticks: AtomicU64,
}

/// How often the control plane's heartbeat ticks.
pub const CONTROL_TICK: std::time::Duration = std::time::Duration::from_millis(50);

impl Board {
    pub fn new(shards: usize, snapshot_records: u64, snapshot_sequence: u64) -> Board {
        Board {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            control: Mutex::default(),
            started: Instant::now(),
            snapshot_records,
            snapshot_sequence,
            fail_closed: Arc::new(AtomicBool::new(false)),
            replication: std::sync::OnceLock::new(),
            control_ticks: AtomicU64::new(0),
        }
    }

    /// A shard leaves its counters (called on its tick, and when it stops).
    pub fn publish_shard(&self, shard: usize, metrics: &ShardMetrics) {
        if let Some(slot) = self.shards.get(shard) {
            slot.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone_from(metrics);
        }
    }

    pub fn publish_control(&self, metrics: &ControlMetrics) {
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone_from(metrics);
    }

    /// Every shard's last publication.
    pub fn shards(&self) -> Vec<ShardMetrics> {
        self.shards
            .iter()
            .map(|slot| slot.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }

    pub fn control(&self) -> ControlMetrics {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn uptime_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// `Ok` once every shard's loop and the control plane's are running (what `READY=1` waits
    /// for); else what is still starting.
    pub fn started(&self) -> Result<(), String> {
        let mut starting = Vec::new();
        for (index, shard) in self.shards().iter().enumerate() {
            if !shard.serving {
                starting.push(format!("shard {index}"));
            }
        }
        if !self.control().serving {
            starting.push("the control plane".to_string());
        }
        if starting.is_empty() {
            Ok(())
        } else {
            Err(format!("starting: {}", starting.join(", ")))
        }
    }

    /// Counts one heartbeat of the control plane.
    pub fn tick_control(&self) {
        self.control_ticks.fetch_add(1, Ordering::Relaxed);
    }

    /// The control plane's heartbeat count.
    pub fn control_ticks(&self) -> u64 {
        self.control_ticks.load(Ordering::Relaxed)
    }

    /// Every shard's tick count, in shard order.
    pub fn shard_ticks(&self) -> Vec<u64> {
        self.shards
            .iter()
            .map(|slot| slot.lock().unwrap_or_else(|p| p.into_inner()).ticks)
            .collect()
    }

    /// `Ok` when the server can answer: the table is loaded (it is, or the server would not
    /// have started), every shard is serving and the control plane is running; else the reasons.
    pub fn readiness(&self) -> Result<(), String> {
        let mut reasons = Vec::new();
        for (index, shard) in self.shards().iter().enumerate() {
            if !shard.serving {
                reasons.push(format!("shard {index} is not serving yet"));
            }
        }
        let control = self.control();
        if !control.serving {
            reasons.push("the control plane is not running yet".to_string());
        }
        if let Some(why) = control.broken {
            reasons.push(format!(
                "the delta log is not writable or not followed ({why}); changes are refused"
            ));
        }
        if self.fail_closed.load(Ordering::Relaxed) {
            reasons.push(
                "the change stream has been silent past max_staleness_ms: valid keys are answered stale".to_string(),
            );
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }
}
