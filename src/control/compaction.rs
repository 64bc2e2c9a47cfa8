//! Compaction: merge the snapshot with every committed delta into a new snapshot on a thread of
//! its own, switch the control plane and every shard to it, and shorten the log.
//!
//! A build that fails (a full disk, say) is retried automatically only after a back-off that
//! doubles from [`RETRY_AFTER_FIRST`] to [`RETRY_AFTER_MAX`], so a failing disk gets one log line
//! per try rather than one per commit. `COMPACT` on the control port always tries at once.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::commit::{self, Job};
use super::{Control, Outcome, Refusal};
use crate::credential::KeyId;
use crate::delta::Delta;
use crate::protocol::ErrorCode;
use crate::record::{KeyRecord, UnixSeconds};
use crate::snapshot::{self, Snapshot};
use crate::table_writer::TableWriter;

/// How often the control plane checks whether a compaction's build has finished.
const POLL: Duration = Duration::from_millis(10);
/// Wait before the first automatic retry after a failed compaction.
pub const RETRY_AFTER_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between automatic retries.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);

/// The compaction's state on the control plane.
#[derive(Default)]
pub(super) struct State {
    running: Cell<bool>,
    finished: Cell<u64>,
    /// Failures in a row, and when the next automatic try may start.
    failures: Cell<u32>,
    retry_at: Cell<Option<Instant>>,
}

impl State {
    pub(super) fn running(&self) -> bool {
        self.running.get()
    }
    pub(super) fn finished(&self) -> u64 {
        self.finished.get()
    }
    pub(super) fn failures(&self) -> u32 {
        self.failures.get()
    }
}

/// Starts a compaction in the background when the log has grown past its bounds (and no
/// back-off after a failure is in force).
pub(super) fn maybe_start(control: &Rc<Control>) {
    let state = &control.compaction;
    if state.running.get() {
        return;
    }
    if state.retry_at.get().is_some_and(|at| Instant::now() < at) {
        return;
    }
    let (changes, bytes) = {
        let durable = control.durable.borrow();
        (durable.changes, durable.log_bytes)
    };
    if changes < control.settings.compact_changes_max
        && bytes < control.settings.compact_log_bytes_max
    {
        return;
    }
    let control = control.clone();
    glommio::spawn_local(async move {
        if let Err(refusal) = run(&control).await {
            let wait = control
                .compaction
                .retry_at
                .get()
                .map_or(Duration::ZERO, |at| {
                    at.saturating_duration_since(Instant::now())
                });
            crate::log_warn!(
                "{}; next automatic try in {} s",
                refusal.message,
                wait.as_secs().max(1)
            );
        }
    })
    .detach();
}

/// Builds a new snapshot from the last one and every committed delta, off the control
/// executor's thread, then switches every shard to it.
pub(super) async fn run(control: &Rc<Control>) -> Outcome {
    let state = &control.compaction;
    if state.running.replace(true) {
        return Err(Refusal::new(
            ErrorCode::Conflict,
            "a compaction is already running",
        ));
    }
    let started = Instant::now();
    let result = build_and_switch(control).await;
    match &result {
        Ok(_) => {
            state.finished.set(state.finished.get() + 1);
            state.failures.set(0);
            state.retry_at.set(None);
            let seconds = started.elapsed().as_secs_f64();
            control
                .metrics
                .borrow_mut()
                .compaction_seconds
                .observe(seconds);
        }
        Err(_) => {
            control.metrics.borrow_mut().compaction_failures += 1;
            let failures = state.failures.get().saturating_add(1);
            state.failures.set(failures);
            let wait = RETRY_AFTER_FIRST
                .saturating_mul(1 << (failures - 1).min(16))
                .min(RETRY_AFTER_MAX);
            state.retry_at.set(Some(Instant::now() + wait));
        }
    }
    state.running.set(false);
    control.publish_metrics();
    result.map(|mut value| {
        value["seconds"] = json!(started.elapsed().as_secs_f64());
        value
    })
}

async fn build_and_switch(control: &Rc<Control>) -> Outcome {
    commit::barrier(control).await?;
    let (base, deltas) = {
        let durable = control.durable.borrow();
        let deltas: Vec<Arc<Delta>> = durable.committed.iter().map(|(d, _)| d.clone()).collect();
        (durable.snapshot.clone(), deltas)
    };
    let sequence = deltas.last().map_or(base.header().sequence, |d| d.sequence);
    let path = control.settings.snapshot_path.clone();
    // Its own thread, not the executor's blocking pool: the pool also runs the log's fsyncs,
    // and a build of several seconds must not hold them up.
    let slot: Arc<std::sync::Mutex<Option<Built>>> = Arc::default();
    let filled = slot.clone();
    let nice = control.settings.compaction_nice;
    std::thread::Builder::new()
        .name("keyward-compact".into())
        .spawn(move || {
            // On Linux the nice value is per thread (docs/OPERATIONS.md, "Compaction and CPU",
            // for the trade-off); failure only leaves the default priority.
            if nice > 0 {
                // SAFETY: plain syscall on the calling thread, no memory passed.
                let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice as libc::c_int) };
            }
            let built = build(&base, &deltas, sequence, &path);
            *filled.lock().unwrap_or_else(|e| e.into_inner()) = Some(built);
        })
        .map_err(|error| {
            Refusal::new(
                ErrorCode::Unavailable,
                format!("compaction failed: cannot start its thread: {error}"),
            )
        })?;
    let built = loop {
        if let Some(built) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
            break built;
        }
        glommio::timer::sleep(POLL).await;
    };
    let snapshot = built.map_err(|message| {
        Refusal::new(
            ErrorCode::Unavailable,
            format!("compaction failed: {message}"),
        )
    })?;
    let records = snapshot.header().record_count;
    let bytes = snapshot.header().body_bytes + snapshot::HEADER_BYTES as u64;
    let offered = snapshot.clone();
    if !commit::submit(control, |done| Job::Switch { snapshot, done }).await {
        return Err(commit::broken_refusal(control));
    }
    if let Some(replica) = &control.replica {
        replica.offer_snapshot(offered);
    }
    Ok(json!({
        "snapshot_sequence": sequence,
        "records": records,
        "bytes": bytes,
    }))
}

/// A compaction's result, handed from its thread to the control plane.
type Built = Result<Arc<Snapshot>, String>;

/// The records of `base` with every delta applied in order: each record a delta carries
/// replaces the one with its id. Sorted by id, as a snapshot stores them.
pub fn merge_records(base: &Snapshot, deltas: &[Arc<Delta>]) -> Vec<KeyRecord> {
    merged_records(base, &latest_changes(deltas)).collect()
}

/// The newest record of every key the deltas changed, by id.
fn latest_changes(deltas: &[Arc<Delta>]) -> BTreeMap<KeyId, &KeyRecord> {
    let mut changes = BTreeMap::new();
    for delta in deltas {
        for record in &delta.records {
            changes.insert(record.id, record);
        }
    }
    changes
}

/// The base's records with the changes applied, in id order, one at a time: the base is read
/// from its mapping as the merge goes, so only the changes are held in memory.
fn merged_records<'a>(
    base: &'a Snapshot,
    changes: &'a BTreeMap<KeyId, &'a KeyRecord>,
) -> impl Iterator<Item = KeyRecord> + 'a {
    let mut base_records = base.records().peekable();
    let mut changed = changes.values().copied().peekable();
    std::iter::from_fn(move || match (base_records.peek(), changed.peek()) {
        (Some(old), Some(new)) if old.id < new.id => base_records.next(),
        (Some(old), Some(new)) if old.id == new.id => {
            base_records.next();
            changed.next().cloned()
        }
        (_, Some(_)) => changed.next().cloned(),
        (Some(_), None) => base_records.next(),
        (None, None) => None,
    })
}

/// Merges the base snapshot with the committed deltas and writes the result atomically, one
/// record at a time (`table_writer.rs`): a compaction's memory is the changes and the slot
/// tables, not the whole table several times over.
fn build(
    base: &Snapshot,
    deltas: &[Arc<Delta>],
    sequence: u64,
    path: &std::path::Path,
) -> Result<Arc<Snapshot>, String> {
    let changes = latest_changes(deltas);
    let body = base.body();
    let tenants = body
        .tenants
        .iter()
        .map(|t| t.as_str().to_string())
        .chain(changes.values().map(|r| r.tenant.clone()))
        .collect();
    let scopes = body
        .scopes
        .iter()
        .map(|s| s.as_str().to_string())
        .chain(changes.values().flat_map(|r| r.scopes.iter().cloned()))
        .collect();
    let mut writer = TableWriter::create(path, tenants, scopes).map_err(|e| e.to_string())?;
    for record in merged_records(base, &changes) {
        writer.push(&record).map_err(|e| e.to_string())?;
    }
    writer
        .finish(sequence, UnixSeconds::now())
        .map_err(|e| e.to_string())?;
    Snapshot::open(path).map_err(|e| e.to_string())
}

/// Makes `snapshot` the control plane's base and shortens the log: `false` when the log could
/// not be rewritten (changes are refused from then on).
pub(super) async fn switch_snapshot(control: &Control, snapshot: &Arc<Snapshot>) -> bool {
    let included = snapshot.header().sequence;
    let keep = {
        let mut durable = control.durable.borrow_mut();
        durable
            .committed
            .retain(|(delta, _)| delta.sequence > included);
        durable.changes = durable
            .committed
            .iter()
            .map(|(d, _)| d.records.len() as u64)
            .sum();
        durable.snapshot = snapshot.clone();
        let keep: Vec<Vec<u8>> = durable
            .committed
            .iter()
            .map(|(_, encoded)| encoded.clone())
            .collect();
        keep
    };
    let rewritten = commit::with_files(
        control,
        "rewrite the delta log after compaction",
        move |files| {
            files
                .log
                .rewrite(included, &keep)
                .map_err(|e| e.to_string())
        },
    )
    .await;
    if !rewritten {
        return false;
    }
    let mut view = control.view.borrow_mut();
    view.snapshot = snapshot.clone();
    view.overlay.drop_through(included);
    true
}
