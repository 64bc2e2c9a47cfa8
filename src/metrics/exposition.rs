//! The Prometheus text exposition of the [`Board`], through the `prometheus-client` crate (the
//! Prometheus project's own Rust client): a collector that reads the board on each scrape, so
//! nothing is registered or updated on the verify path. Names follow Prometheus's conventions
//! (`keyward_` prefix, `_total` on counters, base units). docs/OPERATIONS.md lists them all.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{Board, ShardMetrics, OPERATIONS};
use crate::protocol::{ErrorCode, Status};
use crate::verify::CredentialKind;

#[derive(Debug)]
struct BoardCollector(Arc<Board>);

/// The registry a scrape encodes.
pub fn registry(board: Arc<Board>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BoardCollector(board)));
    registry
}

/// The scrape's `Content-Type`: Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Renders one scrape (Prometheus text format 0.0.4, which every Prometheus reads).
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        .expect("writing to a String does not fail");
    text
}

type Labels<'a> = Vec<(&'static str, std::borrow::Cow<'a, str>)>;

/// One metric family of whole numbers (counts, sizes, sequences): its descriptor, then a
/// value per label set.
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    values: impl IntoIterator<Item = (Labels<'static>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in values {
        let mut labelled = metric.encode_family(&labels)?;
        match metric_type {
            MetricType::Counter => labelled.encode_counter::<NoLabelSet, _, u64>(&value, None)?,
            _ => labelled.encode_gauge(&(value.min(i64::MAX as u64) as i64))?,
        }
    }
    Ok(())
}

fn per_shard(
    shards: &[ShardMetrics],
    value: impl Fn(&ShardMetrics) -> u64,
) -> Vec<(Labels<'static>, u64)> {
    shards
        .iter()
        .enumerate()
        .map(|(index, shard)| (vec![("shard", index.to_string().into())], value(shard)))
        .collect()
}

impl Collector for BoardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let board = &self.0;
        let shards = board.shards();
        let counter = MetricType::Counter;
        let gauge = MetricType::Gauge;

        let mut verifies = Vec::new();
        for status in Status::ALL {
            for kind in CredentialKind::ALL {
                let total: u64 = shards
                    .iter()
                    .map(|s| s.verifies[status as usize][kind as usize])
                    .sum();
                let labels = vec![
                    ("status", status.name().into()),
                    ("kind", kind.name().into()),
                ];
                verifies.push((labels, total));
            }
        }
        family(
            &mut encoder,
            "keyward_verifies",
            "VERIFY answers (batch items included), by status and credential kind",
            counter,
            verifies,
        )?;
        let requests = OPERATIONS.iter().enumerate().map(|(at, name)| {
            let total: u64 = shards.iter().map(|s| s.requests[at]).sum();
            (vec![("operation", (*name).into())], total)
        });
        family(
            &mut encoder,
            "keyward_requests",
            "Frames the verify port answered, by operation",
            counter,
            requests,
        )?;
        let errors = ErrorCode::ALL.iter().enumerate().map(|(at, code)| {
            let total: u64 = shards.iter().map(|s| s.errors[at]).sum();
            (vec![("code", code.name().into())], total)
        });
        family(
            &mut encoder,
            "keyward_protocol_errors",
            "ERROR frames the verify port sent, by code",
            counter,
            errors,
        )?;
        for (name, help, metric_type, value) in [
            (
                "keyward_connections_accepted",
                "Verify-port connections accepted, per shard",
                counter,
                (|s: &ShardMetrics| s.connections_accepted) as fn(&ShardMetrics) -> u64,
            ),
            (
                "keyward_connections_refused",
                "Verify-port connections told busy and closed at once (connection bound, no descriptors), per shard",
                counter,
                |s| s.connections_refused,
            ),
            (
                "keyward_connections_open",
                "Verify-port connections open, per shard",
                gauge,
                |s| s.connections_open,
            ),
            (
                "keyward_turns",
                "Turns of a shard's io_uring loop that took completions",
                counter,
                |s| s.turns,
            ),
            (
                "keyward_turn_submissions",
                "Submission-queue entries a shard's turns submitted (divide by keyward_turns_total for entries per turn)",
                counter,
                |s| s.submissions,
            ),
            (
                "keyward_receive_buffer_shortages",
                "Receives that found a shard's provided buffer ring empty (re-armed at the end of the turn)",
                counter,
                |s| s.buffer_shortages,
            ),
            (
                "keyward_shard_applied_sequence",
                "The last delta sequence each shard applied (compare with keyward_snapshot_sequence and the control plane's: replication lag)",
                gauge,
                |s| s.applied_sequence,
            ),
            (
                "keyward_shard_serving",
                "1 when the shard's loop is running",
                gauge,
                |s| u64::from(s.serving),
            ),
        ] {
            family(&mut encoder, name, help, metric_type, per_shard(&shards, value))?;
        }
        let no_labels = |value: u64| vec![(Labels::new(), value)];
        let control = board.control();
        let (snapshot_records, snapshot_sequence) = if control.serving {
            (control.snapshot_records, control.snapshot_sequence)
        } else {
            (board.snapshot_records, board.snapshot_sequence)
        };
        for (name, help, metric_type, value) in [
            (
                "keyward_table_snapshot_records",
                "Keys in the snapshot in use",
                gauge,
                snapshot_records,
            ),
            (
                "keyward_table_snapshot_sequence",
                "The delta sequence the snapshot in use includes",
                gauge,
                snapshot_sequence,
            ),
            (
                "keyward_table_overlay_records",
                "Key records changed or added since the snapshot",
                gauge,
                control.overlay_records,
            ),
            (
                "keyward_assigned_sequence",
                "The last delta sequence the control plane assigned",
                gauge,
                control.assigned_sequence,
            ),
            (
                "keyward_applied_sequence",
                "The last delta sequence durable and applied on every shard (acknowledged)",
                gauge,
                control.applied_sequence,
            ),
            (
                "keyward_delta_log_bytes",
                "Size of the delta log",
                gauge,
                control.log_bytes,
            ),
            (
                "keyward_delta_log_changes",
                "Key changes in the delta log since the snapshot (compaction starts at compact_changes_max)",
                gauge,
                control.log_changes,
            ),
            (
                "keyward_audit_lines",
                "Lines in the audit trail, across its files",
                gauge,
                control.audit_lines,
            ),
            (
                "keyward_usage_keys",
                "Keys with usage (last use, verify counts) recorded",
                gauge,
                control.usage_keys,
            ),
            (
                "keyward_delta_log_writable",
                "1 while the delta log and audit trail take writes; 0 once a write failed (changes refused)",
                gauge,
                u64::from(control.broken.is_none()),
            ),
            (
                "keyward_commit_rounds",
                "Group-commit rounds (one write and one fsync each)",
                counter,
                control.commit_rounds,
            ),
            (
                "keyward_compactions",
                "Compactions finished",
                counter,
                control.compactions,
            ),
            (
                "keyward_compaction_failures",
                "Compactions that failed (retried with back-off)",
                counter,
                control.compaction_failures,
            ),
        ] {
            family(&mut encoder, name, help, metric_type, no_labels(value))?;
        }
        if let Some(stream) = board.replication.get() {
            let applied = control.applied_sequence;
            for (name, help, value) in [
                (
                    "keyward_replication_connected",
                    "Replicated mode: 1 while connected to a NATS server",
                    u64::from(stream.connected()),
                ),
                (
                    "keyward_replication_following",
                    "Replicated mode: 1 once the change stream is open and followed",
                    u64::from(stream.opened()),
                ),
                (
                    "keyward_replication_stream_last_sequence",
                    "Replicated mode: the change stream's last sequence, as last asked (twice a second)",
                    stream.last_sequence(),
                ),
                (
                    "keyward_replication_behind",
                    "Replicated mode: changes in the stream not yet applied here (stream last sequence minus applied sequence)",
                    stream.last_sequence().saturating_sub(applied),
                ),
                (
                    "keyward_replication_fail_closed",
                    "Replicated mode: 1 while the stream has been silent past max_staleness_ms (valid answered stale)",
                    u64::from(board.fail_closed.load(std::sync::atomic::Ordering::Relaxed)),
                ),
            ] {
                family(&mut encoder, name, help, gauge, no_labels(value))?;
            }
            encoder
                .encode_descriptor(
                    "keyward_replication_silent_seconds",
                    "Replicated mode: seconds since the change stream last answered this node",
                    None,
                    gauge,
                )?
                .encode_gauge(&stream.silent_for().map_or(0.0, |d| d.as_secs_f64()))?;
        }
        let mut service = super::Histogram::default();
        for shard in &shards {
            service.merge(&shard.service_seconds);
        }
        for (name, help, histogram) in [
            (
                "keyward_request_service_seconds",
                "Verify-port requests from the start of the turn that received them to the end of the turn that queued their answers (one clock read per turn: every request of a turn gets the turn's time)",
                &service,
            ),
            (
                "keyward_delta_log_sync_seconds",
                "One group commit's write and fsync of the delta log",
                &control.log_sync_seconds,
            ),
            (
                "keyward_change_ack_seconds",
                "A change from its commit request to its acknowledgement (durable, then applied on every shard): for a REVOKE, the revocation-ack latency",
                &control.change_ack_seconds,
            ),
            (
                "keyward_compaction_seconds",
                "One compaction, from start to every shard on the new snapshot",
                &control.compaction_seconds,
            ),
        ] {
            let mut metric =
                encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            metric.encode_histogram::<NoLabelSet>(
                histogram.sum,
                histogram.count(),
                &histogram.buckets(),
                None,
            )?;
        }
        encoder
            .encode_descriptor(
                "keyward_uptime_seconds",
                "Seconds since the server started",
                None,
                gauge,
            )?
            .encode_gauge(&board.uptime_seconds())?;
        Ok(())
    }
}
