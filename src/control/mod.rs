//! The control plane: the authenticated control port, the durable delta log with group commit,
//! the fan-out of every delta to every shard, and compaction. It runs on its own executor.
//!
//! | file | what happens there |
//! | --- | --- |
//! | `port.rs` | the control port: accepting, timeouts, the admin token (checked first), dispatch |
//! | `keys.rs` | the commands that change keys: issue, import, revoke, rotate, update |
//! | `queries.rs` | the commands that read: inspect, list, stats, derive |
//! | `commit.rs` | group commit: one write and one fsync per round, fan-out, acknowledgement |
//! | `compaction.rs` | building a new snapshot and switching every shard to it |
//! | `self_service.rs` | revocations asked for on the verify port by a key's holder |
//! | `shards.rs` | the control plane's ends of the links to the shards |
//! | `admins.rs` | adding, removing and listing named admin tokens |
//! | `usage.rs` | per-key usage and verify-side security events from the shards |
//! | `replicated.rs` | replicated mode: publishing to the change stream, applying what it delivers |
//!
//! A change goes through three steps:
//! 1. the request is checked against the control plane's view (snapshot + its own overlay) and
//!    turned into a delta with the next sequence number (`commit::assign`);
//! 2. the committer appends every delta waiting at that moment to the log in one write and one
//!    fsync (group commit), then sends each to every shard over a lock-free channel and waits
//!    until every shard reports it applied;
//! 3. only then is the change acknowledged. So after an acknowledged REVOKE no shard answers
//!    "valid" for that key again, and after a restart the log replays it.

mod admins;
mod commit;
mod compaction;
mod keys;
mod port;
mod queries;
mod replicated;
mod self_service;
mod shards;
mod usage;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::unix::io::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::TcpListener;

use crate::admins::Admins;
use crate::audit::{AuditWriter, Entry};
use crate::credential::{Hasher, KeyId, Prefixes};
use crate::delta::{self, Delta, DeltaLog};
use crate::link::{ControlLink, Shutdown};
use crate::metrics::{Board, ControlMetrics};
use crate::overlay::{Overlay, TableView};
use crate::protocol::ErrorCode;
use crate::record::KeyRecord;
use crate::snapshot::Snapshot;

pub use compaction::merge_records;
pub use port::UNAUTHENTICATED_BYTES_MAX;

/// Open control connections at once.
pub const CONTROL_CONNECTIONS_MAX: usize = 256;
/// How often the idle control plane looks at the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// The control plane's fixed settings.
pub struct ControlSettings {
    pub hasher: Hasher,
    pub prefixes: Prefixes,
    pub master_secret: [u8; 32],
    pub snapshot_path: PathBuf,
    pub compact_changes_max: u64,
    pub compact_log_bytes_max: u64,
    /// Nice value the compaction thread sets for itself.
    pub compaction_nice: u32,
    pub token_prefix: String,
    pub token_ttl_max_seconds: u64,
    pub token_root: crate::token::RootKey,
    /// A control connection silent this long between requests is closed.
    pub idle_timeout: Duration,
    /// A request must arrive whole within this of its first byte.
    pub frame_timeout: Duration,
}

/// What the control plane starts from.
pub struct ControlStart {
    pub listener_fd: RawFd,
    pub snapshot: Arc<Snapshot>,
    pub log: DeltaLog,
    pub audit: AuditWriter,
    pub admins: Admins,
    /// Per-key usage as persisted, and where to keep it.
    pub usage: (
        crate::usage::UsageStore,
        crate::usage::IdMap<crate::usage::KeyUsage>,
    ),
    pub replayed: Arc<Vec<Arc<Delta>>>,
    /// The control plane's ends of each shard's channels.
    pub links: Vec<ControlLink>,
    /// Where the control plane leaves its figures for the metrics exporter.
    pub board: Arc<crate::metrics::Board>,
    /// Replicated mode: the change stream, and what it delivers.
    pub replica: Option<(
        crate::replication::Replica,
        tokio::sync::mpsc::Receiver<crate::replication::Incoming>,
    )>,
}

/// The view requests are checked against: the snapshot plus every delta assigned so far.
struct View {
    snapshot: Arc<Snapshot>,
    overlay: Overlay,
    assigned: u64,
    /// The id the next issued key gets; above [`KeyId::MAX`] when the id space is used up.
    next_id: u64,
    idempotency: HashMap<String, KeyId>,
    /// Replicated mode: a request's delta reaches the view only when it comes back from the
    /// change stream (every node applies the stream in order), never when it is made.
    replicated: bool,
}

impl View {
    fn table(&self) -> TableView<'_> {
        TableView {
            snapshot: &self.snapshot,
            overlay: &self.overlay,
        }
    }

    fn find(&self, id: KeyId) -> Option<KeyRecord> {
        self.table().find(id).map(|found| match found {
            crate::overlay::Found::Owned(record) => record.clone(),
            crate::overlay::Found::Mapped(table, record) => table.decode_record(record),
        })
    }

    /// The id for a new key, or a refusal once every id up to [`KeyId::MAX`] is taken.
    fn fresh_id(&self) -> Result<KeyId, Refusal> {
        if self.next_id > KeyId::MAX {
            return Err(Refusal::invalid(format!(
                "the key id space is used up (the largest id, {}, is taken)",
                KeyId::MAX
            )));
        }
        Ok(KeyId(self.next_id))
    }
}

/// What is durable: the deltas committed since the snapshot, and the log file.
struct Durable {
    snapshot: Arc<Snapshot>,
    committed: Vec<(Arc<Delta>, Vec<u8>)>,
    /// Key records carried by `committed`: what the overlays hold beyond the snapshot.
    changes: u64,
    /// Taken by each write (`commit::with_files`); absent after a write failed.
    files: Option<commit::Files>,
    /// Lines in the audit trail, and the hash of the last one.
    audit_lines: u64,
    audit_head: String,
    /// The sequence every shard has applied.
    applied: u64,
    log_bytes: u64,
}

struct Control {
    settings: ControlSettings,
    view: RefCell<View>,
    durable: RefCell<Durable>,
    queue: RefCell<VecDeque<commit::Job>>,
    wake: LocalSender<()>,
    compaction: compaction::State,
    connections: port::Connections,
    started: Instant,
    /// Where the control plane leaves its figures for the metrics exporter, and its counters.
    board: Arc<Board>,
    metrics: RefCell<ControlMetrics>,
    admins: RefCell<Admins>,
    /// Why changes are refused, once the delta log or audit trail could not be written.
    broken: RefCell<Option<String>>,
    usage: usage::State,
    /// The change stream, in replicated mode.
    replica: Option<crate::replication::Replica>,
    /// Replicated mode: held by a change from its check against the view until the stream has
    /// delivered it into the view, so a node has one change in the stream's race at a time.
    write_turn: replicated::Turn,
    /// Requests waiting until the committer has applied a sequence: answered `true` then, or
    /// `false` when the files failed.
    applied_waiters: RefCell<Vec<(u64, LocalSender<bool>)>>,
}

/// Who asked for a request: the admin's name and the connection's peer, for the audit trail.
pub(super) struct Caller {
    pub actor: String,
    pub client: Option<String>,
    /// Set once the request's audit line is queued with its change.
    audited: Cell<bool>,
    /// What the request's own audit line should add (an admin's name, a revocation's reason).
    detail: RefCell<Option<serde_json::Value>>,
}

impl Caller {
    pub(super) fn new(actor: &str, client: Option<String>) -> Caller {
        Caller {
            actor: actor.to_string(),
            client,
            audited: Cell::new(false),
            detail: RefCell::new(None),
        }
    }

    /// Adds `detail` to the request's audit line.
    pub(super) fn note(&self, detail: serde_json::Value) {
        *self.detail.borrow_mut() = Some(detail);
    }

    /// An audit entry for a request `op` of this caller, with `outcome`.
    pub(super) fn entry(&self, op: &str, outcome: &str) -> Entry {
        let mut entry = Entry::now(&self.actor, op, outcome);
        entry.client = self.client.clone();
        entry.detail = self.detail.borrow().clone();
        entry
    }

    /// The audit entry of a committed change: its keys, tenant and sequence.
    fn entry_for(&self, op: &str, delta: &Delta) -> Entry {
        self.audited.set(true);
        let mut entry = self.entry(op, "ok");
        entry.seq = Some(delta.sequence);
        match delta.records.as_slice() {
            [one] => entry.key = Some(one.id.0),
            many => entry.keys = many.iter().map(|r| r.id.0).collect(),
        }
        entry.tenant = delta
            .records
            .first()
            .map(|r| r.tenant.clone())
            .filter(|t| !t.is_empty());
        if !delta.note.is_empty() && entry.detail.is_none() {
            entry.detail = Some(serde_json::json!({ "note": delta.note }));
        }
        entry
    }
}

impl Control {
    /// Refreshes the levels (sequences, sizes) and hands every figure to the exporter: after
    /// each commit round and compaction, not per request.
    fn publish_metrics(&self) {
        let mut metrics = self.metrics.borrow_mut();
        {
            let view = self.view.borrow();
            let durable = self.durable.borrow();
            metrics.assigned_sequence = view.assigned;
            metrics.overlay_records = view.overlay.len() as u64;
            metrics.applied_sequence = durable.applied;
            metrics.snapshot_sequence = durable.snapshot.header().sequence;
            metrics.snapshot_records = durable.snapshot.header().record_count;
            metrics.log_bytes = durable.log_bytes;
            metrics.log_changes = durable.changes;
            metrics.audit_lines = durable.audit_lines;
        }
        metrics.broken = self.broken.borrow().clone();
        metrics.usage_keys = self.usage.keys() as u64;
        metrics.compactions = self.compaction.finished();
        self.board.publish_control(&metrics);
    }
}

/// A request that could not be carried out: an ERROR frame's code and message.
#[derive(Debug)]
struct Refusal {
    code: ErrorCode,
    message: String,
    /// Replicated mode: another node's change took the sequence first; the request is
    /// checked again against the newer view (see `commit::change`).
    lost_race: bool,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            lost_race: false,
        }
    }
    fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::Invalid, message)
    }
    fn not_found(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::NotFound, message)
    }
}

type Outcome = Result<serde_json::Value, Refusal>;

/// The control plane's main future.
pub async fn serve(settings: ControlSettings, start: ControlStart, shutdown: Shutdown) {
    let ControlStart {
        listener_fd,
        snapshot,
        log,
        audit,
        admins,
        usage,
        replayed,
        links,
        board,
        replica,
    } = start;
    let (replica, incoming) = match replica {
        Some((replica, incoming)) => (Some(replica), Some(incoming)),
        None => (None, None),
    };
    // SAFETY: a bound, listening, non-blocking socket handed over by server::run.
    let listener = unsafe { TcpListener::from_raw_fd(listener_fd) };
    let mut overlay = Overlay::new(snapshot.header().sequence);
    let mut idempotency = HashMap::new();
    let mut max_id = snapshot
        .body()
        .records
        .last()
        .map_or(0, |r| r.id.to_native());
    for record in snapshot.body().records.iter() {
        let key = snapshot.idempotency_key(record);
        if !key.is_empty() {
            idempotency.insert(key.to_string(), KeyId(record.id.to_native()));
        }
    }
    let mut committed = Vec::with_capacity(replayed.len());
    for delta in replayed.iter() {
        overlay.apply(delta);
        for record in &delta.records {
            max_id = max_id.max(record.id.0);
            if !record.idempotency_key.is_empty() {
                idempotency.insert(record.idempotency_key.clone(), record.id);
            }
        }
        committed.push((delta.clone(), delta::encode(delta)));
    }
    let assigned = overlay.sequence();
    let (wake, wakeups) = local_channel::new_unbounded();
    let control = Rc::new(Control {
        settings,
        view: RefCell::new(View {
            snapshot: snapshot.clone(),
            overlay,
            assigned,
            next_id: max_id.saturating_add(1),
            idempotency,
            replicated: replica.is_some(),
        }),
        durable: RefCell::new(Durable {
            changes: replayed.iter().map(|d| d.records.len() as u64).sum(),
            snapshot,
            committed,
            log_bytes: log.bytes(),
            audit_lines: audit.lines(),
            audit_head: audit.head().to_string(),
            files: Some(commit::Files { log, audit }),
            applied: assigned,
        }),
        queue: RefCell::new(VecDeque::new()),
        wake,
        compaction: compaction::State::default(),
        connections: port::Connections::default(),
        started: Instant::now(),
        board,
        metrics: RefCell::new(ControlMetrics {
            serving: true,
            ..Default::default()
        }),
        admins: RefCell::new(admins),
        broken: RefCell::new(None),
        usage: usage::State::new(usage),
        replica,
        write_turn: replicated::Turn::default(),
        applied_waiters: RefCell::new(Vec::new()),
    });
    control.publish_metrics();

    let (ends, receivers) = shards::connect(&control, links);
    commit::audit_later(&control, start_entry(assigned, replayed.len()));
    glommio::spawn_local(commit::committer(control.clone(), wakeups, ends, receivers)).detach();
    glommio::spawn_local(usage::every_interval(control.clone())).detach();
    glommio::spawn_local(heartbeat(control.board.clone())).detach();
    if let Some(incoming) = incoming {
        glommio::spawn_local(replicated::follow(control.clone(), incoming)).detach();
    }
    let running = port::accept_loop(&listener, &control);
    futures_lite::future::or(running, shutdown.triggered(SHUTDOWN_POLL)).await;
}

/// Ticks the board every [`crate::metrics::CONTROL_TICK`] for as long as the control plane's
/// executor runs its tasks: a thread that is stuck or stopped stops it, and the watchdog with it
/// (crate::supervisor).
async fn heartbeat(board: Arc<Board>) {
    loop {
        board.tick_control();
        glommio::timer::sleep(crate::metrics::CONTROL_TICK).await;
    }
}

/// The audit line of a start: the version and the sequence the server starts from.
fn start_entry(sequence: u64, replayed: usize) -> Entry {
    let mut entry = Entry::now("keyward", "start", "ok");
    entry.seq = Some(sequence);
    entry.detail = Some(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "replayed_deltas": replayed,
    }));
    entry
}
