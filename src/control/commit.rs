//! Group commit: every change waiting at the start of a round is appended to the delta log in
//! one write and made durable with one fsync, then sent to every shard, and acknowledged once
//! every shard reports it applied. The round's audit lines (docs/FORMATS.md, "audit.log") are
//! appended and fsynced first, in the same round: a change that is durable in the log has its
//! line, and an acknowledged one certainly has.
//!
//! A log or audit trail that cannot be written (a full or failing disk) stops changes, not the
//! server: the round's requests are answered `unavailable`, every later change is refused, and
//! `/readyz` says why. Verification goes on from what was durable. Restarting is the way back,
//! since after a failed fsync the file's state on disk is not known.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use super::shards::ShardEnd;
use super::{compaction, Caller, Control, Refusal, View};
use crate::audit::{AuditWriter, Entry};
use crate::delta::{self, Delta, DeltaKind, DeltaLog};
use crate::link::{Applied, ShardMessage, COMMIT_ROUND_JOBS_MAX};
use crate::protocol::ErrorCode;
use crate::record::KeyRecord;
use crate::snapshot::Snapshot;

/// The files the committer writes, taken together off the executor for each write.
pub(super) struct Files {
    pub log: DeltaLog,
    pub audit: AuditWriter,
}

/// Work for the committer, answered on `done` once finished: `true` when it was carried out,
/// `false` when the files could not be written.
pub(super) enum Job {
    /// Make this delta durable with its audit line, and apply it on every shard.
    Commit {
        delta: Arc<Delta>,
        encoded: Vec<u8>,
        audit: Entry,
        done: LocalSender<bool>,
        /// When the request handed it over (for the acknowledgement latency).
        queued: Instant,
    },
    /// Append an audit line that describes no change (a refusal, a read, a security event);
    /// `done`, when given, is answered once it is durable.
    Audit {
        entry: Entry,
        done: Option<LocalSender<bool>>,
    },
    /// Answer once everything queued before it is durable and applied.
    Barrier { done: LocalSender<bool> },
    /// Make this snapshot the base on the control plane and every shard.
    Switch {
        snapshot: Arc<Snapshot>,
        done: LocalSender<bool>,
    },
}

impl Job {
    fn answer(self, carried_out: bool) {
        let done = match self {
            Job::Commit { done, .. } | Job::Barrier { done } | Job::Switch { done, .. } => done,
            Job::Audit { done, .. } => match done {
                Some(done) => done,
                None => return,
            },
        };
        let _ = done.try_send(carried_out);
    }
}

/// The refusal for a change asked for after the files failed.
pub(super) fn broken_refusal(control: &Control) -> Refusal {
    let why = control.broken.borrow().clone().unwrap_or_default();
    Refusal::new(
        ErrorCode::Unavailable,
        format!("changes are refused until the server is restarted: {why}"),
    )
}

/// Queues a job and waits until the committer has finished it: `false` when it could not be.
pub(super) async fn submit(control: &Control, make: impl FnOnce(LocalSender<bool>) -> Job) -> bool {
    if control.broken.borrow().is_some() {
        return false;
    }
    let (done, finished) = local_channel::new_bounded(1);
    control.queue.borrow_mut().push_back(make(done));
    let _ = control.wake.try_send(());
    finished.recv().await.unwrap_or(false)
}

/// Queues an audit line and returns at once; it is written in the next round.
pub(super) fn audit_later(control: &Control, entry: Entry) {
    control
        .queue
        .borrow_mut()
        .push_back(Job::Audit { entry, done: None });
    let _ = control.wake.try_send(());
}

/// Writes an audit line and waits until it is durable.
pub(super) async fn audit_now(control: &Control, entry: Entry) -> Result<(), Refusal> {
    if submit(control, |done| Job::Audit {
        entry,
        done: Some(done),
    })
    .await
    {
        Ok(())
    } else {
        Err(broken_refusal(control))
    }
}

/// Waits until every change queued before this call is durable and applied everywhere.
pub(super) async fn barrier(control: &Control) -> Result<(), Refusal> {
    if submit(control, |done| Job::Barrier { done }).await {
        Ok(())
    } else {
        Err(broken_refusal(control))
    }
}

/// Commits a delta made by [`assign`] with its audit line (on behalf of `caller`, for the
/// request named `op`) and waits for it to be durable and applied everywhere. In replicated
/// mode the delta goes to the change stream instead, and this waits until the stream has
/// delivered it back and it is applied here (see `replicated::publish`).
pub(super) async fn commit(
    control: &Control,
    caller: &Caller,
    op: &str,
    (delta, encoded): (Arc<Delta>, Vec<u8>),
) -> Result<(), Refusal> {
    let audit = caller.entry_for(op, &delta);
    if control.replica.is_some() {
        return super::replicated::publish(control, &delta, encoded, audit).await;
    }
    if submit(control, |done| Job::Commit {
        delta,
        encoded,
        audit,
        done,
        queued: Instant::now(),
    })
    .await
    {
        Ok(())
    } else {
        Err(broken_refusal(control))
    }
}

/// Assigns the next sequence to a delta over `records` and returns it ready to commit. The
/// caller holds the view. In local mode the delta is applied to the view at once (later
/// requests see it while it is being committed); in replicated mode only once the change
/// stream delivers it (`replicated::follow`).
pub(super) fn assign(
    view: &mut View,
    kind: DeltaKind,
    note: String,
    records: Vec<KeyRecord>,
) -> (Arc<Delta>, Vec<u8>) {
    let delta = Arc::new(Delta {
        sequence: view.assigned + 1,
        kind,
        note,
        records,
    });
    for record in &delta.records {
        assert!(
            record.id.0 <= crate::credential::KeyId::MAX,
            "ids are checked against the range before a delta is made"
        );
    }
    if !view.replicated {
        apply_to_view(view, &delta);
    }
    let encoded = delta::encode(&delta);
    (delta, encoded)
}

/// Makes `delta`, the next in sequence, part of the view.
pub(super) fn apply_to_view(view: &mut View, delta: &Arc<Delta>) {
    assert_eq!(
        delta.sequence,
        view.assigned + 1,
        "deltas reach the view in order"
    );
    view.assigned = delta.sequence;
    view.overlay.apply(delta);
    for record in &delta.records {
        view.next_id = view.next_id.max(record.id.0.saturating_add(1));
        if !record.idempotency_key.is_empty() {
            view.idempotency
                .insert(record.idempotency_key.clone(), record.id);
        }
    }
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
            let mut lines = Vec::new();
            for job in &jobs {
                match job {
                    Job::Commit { encoded, audit, .. } => {
                        bytes.extend_from_slice(encoded);
                        lines.push(audit.clone());
                    }
                    Job::Audit { entry, .. } => lines.push(entry.clone()),
                    Job::Barrier { .. } | Job::Switch { .. } => {}
                }
            }
            if !bytes.is_empty() || !lines.is_empty() {
                let syncing = Instant::now();
                let written = with_files(
                    &control,
                    "make the audit trail and delta log durable",
                    move |files| {
                        files
                            .audit
                            .append(lines)
                            .map_err(|e| format!("audit.log: {e}"))?;
                        if bytes.is_empty() {
                            return Ok(());
                        }
                        files.log.append_durable(&bytes).map_err(|e| e.to_string())
                    },
                )
                .await;
                if !written {
                    for job in jobs {
                        job.answer(false);
                    }
                    for (_, waiter) in control.applied_waiters.borrow_mut().drain(..) {
                        let _ = waiter.try_send(false);
                    }
                    control.publish_metrics();
                    continue;
                }
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
                        ..
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
                    Job::Audit { done, .. } => {
                        waiting.extend(done);
                        continue;
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
                        let switched = compaction::switch_snapshot(&control, &snapshot).await;
                        if !switched {
                            let _ = done.try_send(false);
                            continue;
                        }
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
                drop(durable);
                control
                    .applied_waiters
                    .borrow_mut()
                    .retain(|(sequence, waiter)| {
                        let waiting = *sequence > applied;
                        if !waiting {
                            let _ = waiter.try_send(true);
                        }
                        waiting
                    });
            }
            for done in waiting {
                let _ = done.try_send(true);
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

/// Runs blocking work on the delta log and audit trail off the executor thread: `false` when
/// it failed, after which the control plane refuses every change (see the module's note).
pub(super) async fn with_files(
    control: &Control,
    what: &'static str,
    work: impl FnOnce(&mut Files) -> Result<(), String> + Send + 'static,
) -> bool {
    let Some(files) = control.durable.borrow_mut().files.take() else {
        return false; // an earlier write failed
    };
    let (files, result) = glommio::executor()
        .spawn_blocking(move || {
            let mut files = files;
            let result = work(&mut files);
            (files, result)
        })
        .await;
    if let Err(error) = result {
        let why = format!("cannot {what}: {error}");
        crate::log_error!("{why}; changes are refused from now on, verification goes on; restart the server once the disk is fixed");
        *control.broken.borrow_mut() = Some(why);
        return false;
    }
    let mut durable = control.durable.borrow_mut();
    durable.log_bytes = files.log.bytes();
    durable.audit_lines = files.audit.lines();
    durable.audit_head = files.audit.head().to_string();
    durable.files = Some(files);
    true
}
