//! Group commit: every change waiting at the start of a round is appended to the delta log in
//! one write and made durable with one fsync, then sent to every shard, and acknowledged once
//! every shard reports it applied.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use super::shards::ShardEnd;
use super::{compaction, Control, View};
use crate::delta::{self, Delta, DeltaKind, DeltaLog};
use crate::link::{Applied, ShardMessage, COMMIT_ROUND_JOBS_MAX};
use crate::record::KeyRecord;
use crate::snapshot::Snapshot;

/// The exit code when the log cannot be made durable: continuing would acknowledge changes that
/// a crash could lose.
const EXIT_LOG_FAILED: i32 = 70;

/// Work for the committer, answered on `done` once finished.
pub(super) enum Job {
    /// Make this delta durable and apply it on every shard.
    Commit {
        delta: Arc<Delta>,
        encoded: Vec<u8>,
        done: LocalSender<()>,
        /// When the request handed it over (for the acknowledgement latency).
        queued: Instant,
    },
    /// Answer once everything queued before it is durable and applied.
    Barrier { done: LocalSender<()> },
    /// Make this snapshot the base on the control plane and every shard.
    Switch {
        snapshot: Arc<Snapshot>,
        done: LocalSender<()>,
    },
}

/// Queues a job and waits until the committer has finished it.
pub(super) async fn submit(control: &Control, make: impl FnOnce(LocalSender<()>) -> Job) {
    let (done, finished) = local_channel::new_bounded(1);
    control.queue.borrow_mut().push_back(make(done));
    let _ = control.wake.try_send(());
    let _ = finished.recv().await;
}

/// Waits until every change queued before this call is durable and applied everywhere.
pub(super) async fn barrier(control: &Control) {
    submit(control, |done| Job::Barrier { done }).await;
}

/// Commits a delta made by [`assign`] and waits for it to be durable and applied everywhere.
pub(super) async fn commit(control: &Control, (delta, encoded): (Arc<Delta>, Vec<u8>)) {
    submit(control, |done| Job::Commit {
        delta,
        encoded,
        done,
        queued: Instant::now(),
    })
    .await;
}

/// Assigns the next sequence to a delta over `records`, applies it to the view, and returns it
/// ready to commit. The caller holds the view.
pub(super) fn assign(
    view: &mut View,
    kind: DeltaKind,
    note: String,
    records: Vec<KeyRecord>,
) -> (Arc<Delta>, Vec<u8>) {
    view.assigned += 1;
    let delta = Arc::new(Delta {
        sequence: view.assigned,
        kind,
        note,
        records,
    });
    view.overlay.apply(&delta);
    for record in &delta.records {
        assert!(
            record.id.0 <= crate::credential::KeyId::MAX,
            "ids are checked against the range before a delta is made"
        );
        view.next_id = view.next_id.max(record.id.0 + 1);
        if !record.idempotency_key.is_empty() {
            view.idempotency
                .insert(record.idempotency_key.clone(), record.id);
        }
    }
    let encoded = delta::encode(&delta);
    (delta, encoded)
}

/// The group-commit loop: one write and one fsync per round, then fan-out, then
/// acknowledgements.
pub(super) async fn committer(
    control: Rc<Control>,
    wakeups: LocalReceiver<()>,
    shards: Vec<Rc<ShardEnd>>,
    receivers: Vec<LocalReceiver<Applied>>,
) {
    while wakeups.recv().await.is_some() {
        loop {
            let jobs = take_round(&control);
            if jobs.is_empty() {
                break;
            }
            let mut bytes = Vec::new();
            for job in &jobs {
                if let Job::Commit { encoded, .. } = job {
                    bytes.extend_from_slice(encoded);
                }
            }
            if !bytes.is_empty() {
                let syncing = Instant::now();
                with_log(&control, "make the delta log durable", move |log| {
                    log.append_durable(&bytes)
                })
                .await;
                let seconds = syncing.elapsed().as_secs_f64();
                control
                    .metrics
                    .borrow_mut()
                    .log_sync_seconds
                    .observe(seconds);
            }
            // What each shard must answer to each message sent, in order.
            let mut expected = Vec::with_capacity(jobs.len());
            let mut last_sent = control.durable.borrow().applied;
            let mut waiting = Vec::with_capacity(jobs.len());
            let mut queued_at = Vec::with_capacity(jobs.len());
            for job in jobs {
                let message = match job {
                    Job::Commit {
                        delta,
                        encoded,
                        done,
                        queued,
                    } => {
                        queued_at.push(queued);
                        assert_eq!(delta.sequence, last_sent + 1, "deltas are sent in order");
                        last_sent = delta.sequence;
                        let mut durable = control.durable.borrow_mut();
                        durable.changes += delta.records.len() as u64;
                        durable.committed.push((delta.clone(), encoded));
                        drop(durable);
                        waiting.push(done);
                        ShardMessage::Apply(delta)
                    }
                    Job::Barrier { done } => {
                        waiting.push(done);
                        continue;
                    }
                    Job::Switch { snapshot, done } => {
                        assert!(
                            snapshot.header().sequence <= last_sent,
                            "a snapshot switched to never includes more than was sent"
                        );
                        compaction::switch_snapshot(&control, &snapshot).await;
                        waiting.push(done);
                        ShardMessage::Switch(snapshot)
                    }
                };
                for shard in &shards {
                    shard.send(message.share());
                }
                expected.push(Applied(last_sent));
            }
            for shard in &shards {
                shard.ring();
            }
            for receiver in &receivers {
                for want in &expected {
                    match receiver.recv().await {
                        // A shard applies in order and acknowledges each message: an ack that
                        // differs means a lost, repeated or reordered delta.
                        Some(applied) => assert_eq!(applied, *want, "shard acknowledgement"),
                        None => return, // a shard is gone: the server is stopping
                    }
                }
            }
            if let Some(&Applied(applied)) = expected.last() {
                let mut durable = control.durable.borrow_mut();
                assert!(applied >= durable.applied, "applied sequences only rise");
                durable.applied = applied;
            }
            for done in waiting {
                let _ = done.try_send(());
            }
            {
                let mut metrics = control.metrics.borrow_mut();
                metrics.commit_rounds += 1;
                for queued in queued_at {
                    metrics
                        .change_ack_seconds
                        .observe(queued.elapsed().as_secs_f64());
                }
            }
            control.publish_metrics();
            compaction::maybe_start(&control);
        }
    }
}

/// Takes the next round of jobs: up to the first switch (inclusive), at most
/// `COMMIT_ROUND_JOBS_MAX`.
fn take_round(control: &Control) -> Vec<Job> {
    let mut queue = control.queue.borrow_mut();
    let mut jobs = Vec::new();
    while jobs.len() < COMMIT_ROUND_JOBS_MAX {
        let Some(job) = queue.pop_front() else { break };
        let is_switch = matches!(job, Job::Switch { .. });
        jobs.push(job);
        if is_switch {
            break;
        }
    }
    jobs
}

/// Runs blocking work on the delta log off the executor thread. A log that cannot be written
/// stops the server: carrying on would acknowledge changes a crash could lose.
pub(super) async fn with_log(
    control: &Control,
    what: &'static str,
    work: impl FnOnce(&mut DeltaLog) -> Result<(), delta::LogError> + Send + 'static,
) {
    let log = control
        .durable
        .borrow_mut()
        .log
        .take()
        .expect("log present");
    let (log, result) = glommio::executor()
        .spawn_blocking(move || {
            let mut log = log;
            let result = work(&mut log);
            (log, result)
        })
        .await;
    if let Err(error) = result {
        eprintln!("keyward: fatal: cannot {what}: {error}");
        std::process::exit(EXIT_LOG_FAILED);
    }
    let mut durable = control.durable.borrow_mut();
    durable.log_bytes = log.bytes();
    durable.log = Some(log);
}
