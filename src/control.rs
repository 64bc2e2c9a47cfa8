//! The control plane: the authenticated control port, the durable delta log with group commit,
//! the fan-out of every delta to every shard, and compaction.
//!
//! It runs on its own executor. A change goes through three steps:
//! 1. the request is checked against the control plane's view (snapshot + its own overlay) and
//!    turned into a delta with the next sequence number;
//! 2. the committer appends every delta waiting at that moment to the log in one write and one
//!    fsync (group commit), then sends each to every shard over a lock-free channel and waits
//!    until every shard reports it applied;
//! 3. only then is the change acknowledged. So after an acknowledged REVOKE no shard answers
//!    "valid" for that key again, and after a restart the log replays it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::io::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::{
    ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::net::{TcpListener, TcpStream};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::admin::{
    self, error_code, opcode, ImportRequest, InspectRequest, IssueRequest, KeyInfo, KeySpec,
    ListRequest, RevokeRequest, RotateRequest, UpdateRequest,
};
use crate::credential::{
    self, Hasher, KeyId, NativeCredential, Parsed, Prefixes, Secret, Visibility,
};
use crate::delta::{self, Delta, DeltaKind, DeltaLog};
use crate::overlay::{Overlay, TableView};
use crate::protocol::{self, ErrorCode};
use crate::record::{KeyKind, KeyRecord, KeyStatus, UnixSeconds};
use crate::server::Shutdown;
use crate::shard::ShardMessage;
use crate::snapshot::{self, Snapshot};

/// Most jobs the committer takes in one round. Each round sends at most this many messages
/// to every shard before reading their acknowledgements, so it must stay below the channel
/// capacity or the two sides could wait on each other.
pub const COMMIT_ROUND_JOBS_MAX: usize = 256;
/// Capacity of each control → shard and shard → control channel.
pub const SHARD_CHANNEL_CAPACITY: usize = 1024;
const _: () = assert!(COMMIT_ROUND_JOBS_MAX + 1 < SHARD_CHANNEL_CAPACITY);
/// Open control connections at once.
pub const CONTROL_CONNECTIONS_MAX: usize = 256;
/// How often the control plane checks whether a compaction's build has finished.
const COMPACTION_POLL: Duration = Duration::from_millis(10);
/// How often the idle control plane looks at the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// The exit code when the log cannot be made durable: continuing would acknowledge changes that
/// a crash could lose.
const EXIT_LOG_FAILED: i32 = 70;

/// The control plane's fixed settings.
pub struct ControlSettings {
    pub admin_token: String,
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
}

/// One shard's self-service revocation channels, seen from the control plane.
pub type SelfServiceChannels = (
    SharedReceiver<crate::shard::RevocationRequest>,
    SharedSender<crate::shard::RevocationAnswer>,
);

/// What the control plane starts from.
pub struct ControlStart {
    pub listener_fd: RawFd,
    pub snapshot: Arc<Snapshot>,
    pub log: DeltaLog,
    pub replayed: Arc<Vec<Arc<Delta>>>,
    pub to_shards: Vec<SharedSender<ShardMessage>>,
    pub from_shards: Vec<SharedReceiver<u64>>,
    /// Per shard: self-service revocations in (ticket, key id), answers out (ticket, done).
    pub self_service: Vec<SelfServiceChannels>,
}

/// The view requests are checked against: the snapshot plus every delta assigned so far.
struct View {
    snapshot: Arc<Snapshot>,
    overlay: Overlay,
    assigned: u64,
    next_id: u64,
    idempotency: HashMap<String, KeyId>,
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
}

/// What is durable: the deltas committed since the snapshot, and the log file.
struct Durable {
    snapshot: Arc<Snapshot>,
    committed: Vec<(Arc<Delta>, Vec<u8>)>,
    /// Key records carried by `committed`: what the overlays hold beyond the snapshot.
    changes: u64,
    log: Option<DeltaLog>,
    applied: u64,
    log_bytes: u64,
}

enum Job {
    Commit {
        delta: Arc<Delta>,
        encoded: Vec<u8>,
        done: LocalSender<()>,
    },
    Barrier {
        done: LocalSender<()>,
    },
    Switch {
        snapshot: Arc<Snapshot>,
        done: LocalSender<()>,
    },
}

struct Control {
    settings: ControlSettings,
    view: RefCell<View>,
    durable: RefCell<Durable>,
    queue: RefCell<VecDeque<Job>>,
    wake: LocalSender<()>,
    compacting: Cell<bool>,
    connections: Cell<usize>,
    compactions: Cell<u64>,
    started: Instant,
}

/// A request that could not be carried out: an ERROR frame's code and message.
struct Refusal(u8, String);

impl Refusal {
    fn invalid(message: impl Into<String>) -> Refusal {
        Refusal(error_code::INVALID, message.into())
    }
    fn not_found(message: impl Into<String>) -> Refusal {
        Refusal(error_code::NOT_FOUND, message.into())
    }
}

type Outcome = Result<Value, Refusal>;

/// The control plane's main future.
pub async fn serve(settings: ControlSettings, start: ControlStart, shutdown: Shutdown) {
    let ControlStart {
        listener_fd,
        snapshot,
        log,
        replayed,
        to_shards,
        from_shards,
        self_service,
    } = start;
    // SAFETY: a bound, listening, non-blocking socket handed over by server::run.
    let listener = unsafe { TcpListener::from_raw_fd(listener_fd) };
    let mut overlay = Overlay::new(snapshot.header().sequence);
    let mut idempotency = HashMap::new();
    let mut max_id = snapshot
        .body()
        .records
        .last()
        .map_or(0, |r| r.id.to_native());
    for record in snapshot
        .body()
        .records
        .iter()
        .filter(|r| !r.idempotency_key.is_empty())
    {
        idempotency.insert(
            record.idempotency_key.as_str().to_string(),
            KeyId(record.id.to_native()),
        );
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
            next_id: max_id + 1,
            idempotency,
        }),
        durable: RefCell::new(Durable {
            changes: replayed.iter().map(|d| d.records.len() as u64).sum(),
            snapshot,
            committed,
            log_bytes: log.bytes(),
            log: Some(log),
            applied: assigned,
        }),
        queue: RefCell::new(VecDeque::new()),
        wake,
        compacting: Cell::new(false),
        connections: Cell::new(0),
        compactions: Cell::new(0),
        started: Instant::now(),
    });

    // Everything from here on races the shutdown flag: the shards may stop before the channels
    // to them are even connected.
    let running = async {
        let mut senders = Vec::with_capacity(to_shards.len());
        for sender in to_shards {
            senders.push(sender.connect().await);
        }
        let mut receivers = Vec::with_capacity(from_shards.len());
        for receiver in from_shards {
            receivers.push(receiver.connect().await);
        }
        glommio::spawn_local(committer(control.clone(), wakeups, senders, receivers)).detach();
        for (requests, answers) in self_service {
            let requests = requests.connect().await;
            let answers = answers.connect().await;
            glommio::spawn_local(serve_self_service(control.clone(), requests, answers)).detach();
        }
        accept_loop(&listener, &control).await;
    };
    let stopping = async {
        while !shutdown.is_triggered() {
            glommio::timer::sleep(SHUTDOWN_POLL).await;
        }
    };
    futures_lite::future::or(running, stopping).await;
}

/// Revocations asked for on the verify port by the key's holder (its secret was checked by the
/// shard): carried out like an admin's REVOKE, answered once durable and applied everywhere.
async fn serve_self_service(
    control: Rc<Control>,
    requests: ConnectedReceiver<(u64, KeyId)>,
    answers: ConnectedSender<(u64, bool)>,
) {
    while let Some((ticket, id)) = requests.recv().await {
        let request = RevokeRequest {
            id: Some(id.0),
            credential: None,
            reason: "self-service".into(),
        };
        let done = revoke(&control, request).await.is_ok();
        if answers.send((ticket, done)).await.is_err() {
            return;
        }
    }
}

async fn accept_loop(listener: &TcpListener, control: &Rc<Control>) {
    loop {
        match listener.accept().await {
            Ok(stream) if control.connections.get() < CONTROL_CONNECTIONS_MAX => {
                control.connections.set(control.connections.get() + 1);
                let control = control.clone();
                glommio::spawn_local(async move {
                    let _ = connection(stream, &control).await;
                    control.connections.set(control.connections.get() - 1);
                })
                .detach();
            }
            Ok(mut stream) => {
                let mut out = Vec::new();
                protocol::put_error_frame(
                    &mut out,
                    0,
                    ErrorCode::Busy,
                    "too many control connections",
                );
                let _ = stream.write_all(&out).await;
            }
            Err(error) => {
                eprintln!("keyward: control accept failed: {error}; backing off");
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The group-commit loop: one write and one fsync per round, then fan-out, then acknowledgements.
async fn committer(
    control: Rc<Control>,
    wakeups: local_channel::LocalReceiver<()>,
    senders: Vec<ConnectedSender<ShardMessage>>,
    receivers: Vec<ConnectedReceiver<u64>>,
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
                with_log(&control, "make the delta log durable", move |log| {
                    log.append_durable(&bytes)
                })
                .await;
            }
            let mut sent = 0usize;
            let mut waiting = Vec::with_capacity(jobs.len());
            for job in jobs {
                let message = match job {
                    Job::Commit {
                        delta,
                        encoded,
                        done,
                    } => {
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
                        switch_snapshot(&control, &snapshot).await;
                        waiting.push(done);
                        ShardMessage::Switch(snapshot)
                    }
                };
                for sender in &senders {
                    let copy = match &message {
                        ShardMessage::Apply(delta) => ShardMessage::Apply(delta.clone()),
                        ShardMessage::Switch(snapshot) => ShardMessage::Switch(snapshot.clone()),
                    };
                    if sender.send(copy).await.is_err() {
                        return; // a shard is gone: the server is stopping
                    }
                }
                sent += 1;
            }
            let mut applied = u64::MAX;
            for receiver in &receivers {
                for _ in 0..sent {
                    match receiver.recv().await {
                        Some(sequence) => applied = applied.min(sequence),
                        None => return,
                    }
                }
            }
            if sent > 0 {
                control.durable.borrow_mut().applied = applied;
            }
            for done in waiting {
                let _ = done.try_send(());
            }
            maybe_compact(&control);
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

/// Makes a new snapshot the base: rewrites the log to hold only newer deltas, drops what the
/// snapshot includes from the control plane's overlay.
async fn switch_snapshot(control: &Control, snapshot: &Arc<Snapshot>) {
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
    with_log(
        control,
        "rewrite the delta log after compaction",
        move |log| log.rewrite(&keep),
    )
    .await;
    let mut view = control.view.borrow_mut();
    view.snapshot = snapshot.clone();
    view.overlay.drop_through(included);
}

/// Runs blocking work on the delta log off the executor thread. A log that cannot be written
/// stops the server: carrying on would acknowledge changes a crash could lose.
async fn with_log(
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

fn maybe_compact(control: &Rc<Control>) {
    if control.compacting.get() {
        return;
    }
    let (changes, bytes) = {
        let durable = control.durable.borrow();
        (durable.changes, durable.log_bytes)
    };
    if changes >= control.settings.compact_changes_max
        || bytes >= control.settings.compact_log_bytes_max
    {
        let control = control.clone();
        glommio::spawn_local(async move {
            if let Err(Refusal(_, message)) = compact(&control).await {
                eprintln!("keyward: compaction failed: {message}");
            }
        })
        .detach();
    }
}

/// Queues a job and waits until the committer has finished it.
async fn submit(control: &Control, make: impl FnOnce(LocalSender<()>) -> Job) {
    let (done, finished) = local_channel::new_bounded(1);
    control.queue.borrow_mut().push_back(make(done));
    let _ = control.wake.try_send(());
    let _ = finished.recv().await;
}

/// Builds a new snapshot from the last one and every committed delta, off the control
/// executor's thread, then switches every shard to it.
async fn compact(control: &Rc<Control>) -> Outcome {
    if control.compacting.replace(true) {
        return Err(Refusal(
            error_code::CONFLICT,
            "a compaction is already running".into(),
        ));
    }
    let started = Instant::now();
    submit(control, |done| Job::Barrier { done }).await;
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
    let builder = std::thread::Builder::new()
        .name("keyward-compact".into())
        .spawn(move || {
            // On Linux the nice value is per thread (docs/OPERATIONS.md, "Compaction and CPU",
            // for the trade-off); failure only leaves the default priority.
            if nice > 0 {
                // SAFETY: plain syscall on the calling thread, no memory passed.
                let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice as libc::c_int) };
            }
            let built = build_snapshot(&base, &deltas, sequence, &path);
            *filled.lock().unwrap_or_else(|e| e.into_inner()) = Some(built);
        });
    if let Err(error) = builder {
        control.compacting.set(false);
        return Err(Refusal(
            error_code::UNAVAILABLE,
            format!("cannot start compaction: {error}"),
        ));
    }
    let built = loop {
        if let Some(built) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
            break built;
        }
        glommio::timer::sleep(COMPACTION_POLL).await;
    };
    let result = match built {
        Ok(snapshot) => {
            let records = snapshot.header().record_count;
            let bytes = snapshot.header().body_bytes + snapshot::HEADER_BYTES as u64;
            submit(control, |done| Job::Switch { snapshot, done }).await;
            control.compactions.set(control.compactions.get() + 1);
            Ok(json!({
                "snapshot_sequence": sequence,
                "records": records,
                "bytes": bytes,
                "seconds": started.elapsed().as_secs_f64(),
            }))
        }
        Err(message) => Err(Refusal(
            error_code::UNAVAILABLE,
            format!("compaction failed: {message}"),
        )),
    };
    control.compacting.set(false);
    result
}

/// A compaction's result, handed from its thread to the control plane.
type Built = Result<Arc<Snapshot>, String>;

/// Merges the base snapshot with the committed deltas and writes the result atomically.
fn build_snapshot(
    base: &Snapshot,
    deltas: &[Arc<Delta>],
    sequence: u64,
    path: &std::path::Path,
) -> Result<Arc<Snapshot>, String> {
    let mut records: BTreeMap<KeyId, KeyRecord> = base.records().map(|r| (r.id, r)).collect();
    for delta in deltas {
        for record in &delta.records {
            records.insert(record.id, record.clone());
        }
    }
    let records: Vec<KeyRecord> = records.into_values().collect();
    let bytes =
        snapshot::encode(&records, sequence, UnixSeconds::now()).map_err(|e| e.to_string())?;
    snapshot::write_atomic(path, &bytes).map_err(|e| e.to_string())?;
    Snapshot::open(path).map_err(|e| e.to_string())
}

/// Serves one control connection: frames in, one answer per frame out.
async fn connection(mut stream: TcpStream, control: &Rc<Control>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut input = vec![0u8; 64 * 1024];
    let mut filled = 0usize;
    loop {
        let frame_end = loop {
            match protocol::decode_frame(&input[..filled], admin::CONTROL_BODY_BYTES_MAX) {
                Ok(Some(frame)) => break frame.bytes(),
                Ok(None) => {}
                Err(error) => {
                    let mut out = Vec::new();
                    protocol::put_error_frame(&mut out, 0, error.code(), &error.to_string());
                    stream.write_all(&out).await?;
                    return Ok(());
                }
            }
            if filled == input.len() {
                input.resize(
                    (input.len() * 2).min(protocol::HEADER_BYTES + admin::CONTROL_BODY_BYTES_MAX),
                    0,
                );
            }
            let read = stream.read(&mut input[filled..]).await?;
            if read == 0 {
                return Ok(());
            }
            filled += read;
        };
        let (header, body) = {
            let frame = protocol::decode_frame(&input[..frame_end], admin::CONTROL_BODY_BYTES_MAX)
                .ok()
                .flatten()
                .expect("frame decoded above");
            (frame.header, frame.body.to_vec())
        };
        input.copy_within(frame_end..filled, 0);
        filled -= frame_end;
        let mut out = Vec::new();
        match handle(control, header.opcode, &body).await {
            Ok(value) => {
                let json = serde_json::to_vec(&value).expect("JSON values serialize");
                protocol::put_header(&mut out, opcode::OK, header.request_id, json.len());
                out.extend_from_slice(&json);
            }
            Err(Refusal(code, message)) => {
                protocol::put_error_frame_code(&mut out, header.request_id, code, &message);
            }
        }
        stream.write_all(&out).await?;
    }
}

/// Authenticates, parses and runs one request.
async fn handle(control: &Rc<Control>, opcode: u8, body: &[u8]) -> Outcome {
    let token_bytes = usize::from(*body.first().ok_or_else(unauthorized)?);
    let token = body.get(1..1 + token_bytes).ok_or_else(unauthorized)?;
    let expected = control.settings.admin_token.as_bytes();
    if !bool::from(token.ct_eq(expected)) {
        return Err(unauthorized());
    }
    let json = &body[1 + token_bytes..];
    match opcode {
        opcode::ISSUE => issue(control, parse(json)?).await,
        opcode::IMPORT => import(control, parse(json)?).await,
        opcode::REVOKE => revoke(control, parse(json)?).await,
        opcode::ROTATE => rotate(control, parse(json)?).await,
        opcode::UPDATE => update(control, parse(json)?).await,
        opcode::INSPECT => inspect(control, parse(json)?),
        opcode::DERIVE => derive(control, parse(json)?),
        opcode::LIST => list(control, parse(json)?),
        opcode::STATS => {
            let _: admin::Empty = parse(json)?;
            Ok(stats(control))
        }
        opcode::COMPACT => {
            let _: admin::Empty = parse(json)?;
            compact(control).await
        }
        other => Err(Refusal(
            ErrorCode::UnknownOpcode as u8,
            format!("unknown control opcode {other:#04x}"),
        )),
    }
}

fn unauthorized() -> Refusal {
    Refusal(
        error_code::UNAUTHORIZED,
        "missing or wrong admin token".into(),
    )
}

fn parse<T: DeserializeOwned>(json: &[u8]) -> Result<T, Refusal> {
    let json = if json.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        json
    };
    serde_json::from_slice(json).map_err(|e| Refusal::invalid(format!("bad request: {e}")))
}

/// Turns a key spec into a record (without id, hash and kind), checking its bounds.
fn record_from_spec(spec: &KeySpec, now: UnixSeconds) -> Result<KeyRecord, Refusal> {
    let expires = match (spec.expires, spec.ttl_seconds) {
        (Some(expires), _) => Some(UnixSeconds(expires)),
        (None, Some(ttl)) => Some(UnixSeconds(now.0.saturating_add(ttl))),
        (None, None) => None,
    };
    let record = KeyRecord {
        id: KeyId(1),
        kind: KeyKind::Native,
        hash: [0; 32],
        tenant: spec.tenant.clone(),
        name: spec.name.clone(),
        scopes: spec.scopes.clone(),
        created: now,
        not_before: UnixSeconds(spec.not_before.unwrap_or(now.0)),
        expires,
        status: KeyStatus::Active,
        visibility: if spec.public {
            Visibility::Public
        } else {
            Visibility::Secret
        },
        allow: spec.allow.clone(),
        idempotency_key: String::new(),
    };
    record
        .validate()
        .map_err(|e| Refusal::invalid(e.to_string()))?;
    Ok(record)
}

/// Assigns the next sequence to a delta over `records`, applies it to the view, and returns it
/// ready to commit. The caller holds the view.
fn assign(
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
        view.next_id = view.next_id.max(record.id.0 + 1);
        if !record.idempotency_key.is_empty() {
            view.idempotency
                .insert(record.idempotency_key.clone(), record.id);
        }
    }
    let encoded = delta::encode(&delta);
    (delta, encoded)
}

async fn commit(control: &Control, delta: Arc<Delta>, encoded: Vec<u8>) {
    submit(control, |done| Job::Commit {
        delta,
        encoded,
        done,
    })
    .await;
}

/// The secret of a key issued under an idempotency key: derived, so a retry can return the
/// same credential without the secret ever being stored.
fn idempotent_secret(master: &[u8; 32], id: KeyId, idempotency_key: &str) -> Secret {
    let key = blake3::derive_key("keyward 2026-11 idempotent issue secret v1", master);
    let mut hasher = blake3::Hasher::new_keyed(&key);
    hasher.update(&id.0.to_be_bytes());
    hasher.update(idempotency_key.as_bytes());
    Secret(*hasher.finalize().as_bytes())
}

async fn issue(control: &Rc<Control>, request: IssueRequest) -> Outcome {
    let now = UnixSeconds::now();
    let mut record = record_from_spec(&request.spec, now)?;
    let idempotency_key = request.idempotency_key.unwrap_or_default();
    if idempotency_key.len() > crate::record::IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(Refusal::invalid("idempotency_key is longer than 128 bytes"));
    }
    let settings = &control.settings;
    let (pending, credential, info, replayed) = {
        let mut view = control.view.borrow_mut();
        if let Some(&id) = (!idempotency_key.is_empty())
            .then(|| view.idempotency.get(&idempotency_key))
            .flatten()
        {
            let existing = view
                .find(id)
                .ok_or_else(|| Refusal::not_found("idempotent key vanished"))?;
            let secret = idempotent_secret(&settings.master_secret, id, &idempotency_key);
            let credential = NativeCredential {
                key_id: id,
                secret,
                visibility: existing.visibility,
            }
            .encode(&settings.prefixes);
            (None, credential, KeyInfo::from(&existing), true)
        } else {
            let id = KeyId(view.next_id);
            let secret = if idempotency_key.is_empty() {
                Secret::random()
            } else {
                idempotent_secret(&settings.master_secret, id, &idempotency_key)
            };
            record.id = id;
            record.hash = settings.hasher.native(id, &secret);
            record.idempotency_key = idempotency_key.clone();
            let credential = NativeCredential {
                key_id: id,
                secret,
                visibility: record.visibility,
            }
            .encode(&settings.prefixes);
            let info = KeyInfo::from(&record);
            let pending = assign(&mut view, DeltaKind::Issue, String::new(), vec![record]);
            (Some(pending), credential, info, false)
        }
    };
    match pending {
        Some((delta, encoded)) => commit(control, delta, encoded).await,
        // The key exists, but its delta may still be on its way: wait for everything before us.
        None => submit(control, |done| Job::Barrier { done }).await,
    }
    Ok(json!({ "credential": credential, "key": info, "replayed": replayed }))
}

async fn import(control: &Rc<Control>, request: ImportRequest) -> Outcome {
    if request.keys.is_empty() || request.keys.len() > admin::IMPORT_ITEMS_MAX {
        return Err(Refusal::invalid(format!(
            "an import holds 1 to {} keys",
            admin::IMPORT_ITEMS_MAX
        )));
    }
    let now = UnixSeconds::now();
    let settings = &control.settings;
    let mut results = Vec::with_capacity(request.keys.len());
    let pending = {
        let mut view = control.view.borrow_mut();
        let mut records = Vec::new();
        let mut fingerprints = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for item in &request.keys {
            let outcome = (|| -> Result<KeyRecord, String> {
                let mut record = record_from_spec(&item.spec, now).map_err(|Refusal(_, m)| m)?;
                let bytes = item.credential.as_bytes();
                if credential::claims_native_prefix(bytes, &settings.prefixes) {
                    return Err(
                        "looks like a keyward credential; only foreign keys can be imported".into(),
                    );
                }
                if !(credential::IMPORTED_BYTES_MIN..=credential::IMPORTED_BYTES_MAX)
                    .contains(&bytes.len())
                {
                    return Err(format!(
                        "an imported key must be {} to {} bytes",
                        credential::IMPORTED_BYTES_MIN,
                        credential::IMPORTED_BYTES_MAX
                    ));
                }
                let hash = settings.hasher.imported(bytes);
                if let Some(existing) = view.table().find_fingerprint(&hash) {
                    return Err(format!("already imported as key {}", existing.id()));
                }
                if !fingerprints.insert(credential::fingerprint(&hash)) {
                    return Err("appears twice in this import".into());
                }
                let id = match item.id {
                    Some(0) => return Err("key id 0 is reserved".into()),
                    Some(id) if view.find(KeyId(id)).is_some() || !ids.insert(id) => {
                        return Err(format!("key id {id} is taken"))
                    }
                    Some(id) => KeyId(id),
                    None => {
                        let mut id = view.next_id + records.len() as u64;
                        while ids.contains(&id) {
                            id += 1;
                        }
                        ids.insert(id);
                        KeyId(id)
                    }
                };
                record.id = id;
                record.kind = KeyKind::Imported;
                record.visibility = Visibility::Secret;
                record.hash = hash;
                Ok(record)
            })();
            match outcome {
                Ok(record) => {
                    results.push(json!({ "ok": true, "id": record.id.0 }));
                    records.push(record);
                }
                Err(message) => results.push(json!({ "ok": false, "error": message })),
            }
        }
        (!records.is_empty()).then(|| assign(&mut view, DeltaKind::Import, String::new(), records))
    };
    if let Some((delta, encoded)) = pending {
        commit(control, delta, encoded).await;
    }
    let imported = results.iter().filter(|r| r["ok"] == true).count();
    Ok(json!({ "imported": imported, "results": results }))
}

/// Finds the record a request names by id or by credential (whose secret must match).
fn locate(
    view: &View,
    settings: &ControlSettings,
    id: Option<u64>,
    credential: Option<&str>,
) -> Result<KeyRecord, Refusal> {
    match (id, credential) {
        (Some(id), None) => view
            .find(KeyId(id))
            .ok_or_else(|| Refusal::not_found(format!("no key {id}"))),
        (None, Some(text)) => {
            let bytes = text.as_bytes();
            let found = match credential::parse(bytes, &settings.prefixes) {
                Parsed::Native(native) => view
                    .find(native.key_id)
                    .filter(|r| r.kind == KeyKind::Native)
                    .filter(|r| {
                        credential::hashes_equal(
                            &r.hash,
                            &settings.hasher.native(native.key_id, &native.secret),
                        )
                    }),
                Parsed::Malformed(error) => {
                    return Err(Refusal::invalid(format!("credential: {error}")))
                }
                Parsed::Other => {
                    let hash = settings.hasher.imported(bytes);
                    let id = view.table().find_fingerprint(&hash).map(|found| found.id());
                    id.and_then(|id| view.find(id))
                        .filter(|r| credential::hashes_equal(&r.hash, &hash))
                }
            };
            found.ok_or_else(|| Refusal::not_found("no key has this credential"))
        }
        _ => Err(Refusal::invalid("give exactly one of id and credential")),
    }
}

async fn revoke(control: &Rc<Control>, request: RevokeRequest) -> Outcome {
    if request.reason.len() > delta::NOTE_BYTES_MAX {
        return Err(Refusal::invalid("reason is longer than 1024 bytes"));
    }
    let (pending, info, already) = {
        let mut view = control.view.borrow_mut();
        let mut record = locate(
            &view,
            &control.settings,
            request.id,
            request.credential.as_deref(),
        )?;
        if record.status == KeyStatus::Revoked {
            (None, KeyInfo::from(&record), true)
        } else {
            record.status = KeyStatus::Revoked;
            let info = KeyInfo::from(&record);
            (
                Some(assign(
                    &mut view,
                    DeltaKind::Revoke,
                    request.reason,
                    vec![record],
                )),
                info,
                false,
            )
        }
    };
    match pending {
        Some((delta, encoded)) => commit(control, delta, encoded).await,
        // Revoked already, perhaps by a change still in flight: answer once it is everywhere.
        None => submit(control, |done| Job::Barrier { done }).await,
    }
    Ok(json!({ "key": info, "already_revoked": already }))
}

async fn rotate(control: &Rc<Control>, request: RotateRequest) -> Outcome {
    let now = UnixSeconds::now();
    let settings = &control.settings;
    let (delta, encoded, credential, old_info, new_info) = {
        let mut view = control.view.borrow_mut();
        let mut old = view
            .find(KeyId(request.id))
            .ok_or_else(|| Refusal::not_found(format!("no key {}", request.id)))?;
        if old.status == KeyStatus::Revoked {
            return Err(Refusal::invalid(format!(
                "key {} is revoked; issue a new key instead",
                request.id
            )));
        }
        let id = KeyId(view.next_id);
        let secret = Secret::random();
        let mut successor = old.clone();
        successor.id = id;
        successor.kind = KeyKind::Native;
        successor.hash = settings.hasher.native(id, &secret);
        successor.created = now;
        successor.not_before = now;
        successor.idempotency_key = String::new();
        if let Some(name) = request.name {
            successor.name = name;
        }
        if let Some(scopes) = request.scopes {
            successor.scopes = scopes;
        }
        if let Some(expires) = request.expires {
            successor.expires = Some(UnixSeconds(expires));
        }
        if let Some(allow) = request.allow {
            successor.allow = allow;
        }
        if old.kind == KeyKind::Imported {
            successor.visibility = Visibility::Secret;
        }
        successor
            .validate()
            .map_err(|e| Refusal::invalid(e.to_string()))?;
        match request.grace_seconds.filter(|&g| g > 0) {
            Some(grace) => {
                let until = UnixSeconds(now.0.saturating_add(grace));
                old.expires = Some(old.expires.map_or(until, |e| e.min(until)));
                if let Some(expires) = old.expires.filter(|&e| e < old.not_before) {
                    old.not_before = expires;
                }
            }
            None => old.status = KeyStatus::Revoked,
        }
        let credential = NativeCredential {
            key_id: id,
            secret,
            visibility: successor.visibility,
        }
        .encode(&settings.prefixes);
        let (old_info, new_info) = (KeyInfo::from(&old), KeyInfo::from(&successor));
        let note = format!("rotated {} to {}", old.id, id);
        let (delta, encoded) = assign(&mut view, DeltaKind::Rotate, note, vec![old, successor]);
        (delta, encoded, credential, old_info, new_info)
    };
    commit(control, delta, encoded).await;
    Ok(json!({ "credential": credential, "key": new_info, "previous": old_info }))
}

async fn update(control: &Rc<Control>, request: UpdateRequest) -> Outcome {
    let (delta, encoded, info) = {
        let mut view = control.view.borrow_mut();
        let mut record = view
            .find(KeyId(request.id))
            .ok_or_else(|| Refusal::not_found(format!("no key {}", request.id)))?;
        if let Some(name) = request.name {
            record.name = name;
        }
        if let Some(scopes) = request.scopes {
            record.scopes = scopes;
        }
        if let Some(allow) = request.allow {
            record.allow = allow;
        }
        record
            .validate()
            .map_err(|e| Refusal::invalid(e.to_string()))?;
        let info = KeyInfo::from(&record);
        let (delta, encoded) = assign(&mut view, DeltaKind::Update, String::new(), vec![record]);
        (delta, encoded, info)
    };
    commit(control, delta, encoded).await;
    Ok(json!({ "key": info }))
}

fn derive(control: &Control, request: admin::DeriveRequest) -> Outcome {
    let view = control.view.borrow();
    let parent = view
        .find(KeyId(request.parent_id))
        .ok_or_else(|| Refusal::not_found(format!("no key {}", request.parent_id)))?;
    let spec = crate::verify::DeriveSpec {
        ttl_seconds: request.ttl_seconds.unwrap_or(0),
        scopes: request.scopes,
        tenant: request.tenant,
        ranges: request.allow,
        claims: request.claims.into_iter().collect(),
    };
    let settings = &control.settings;
    match crate::verify::mint(
        &settings.token_root,
        &settings.token_prefix,
        &crate::overlay::Found::Owned(&parent),
        &spec,
        UnixSeconds::now(),
        settings.token_ttl_max_seconds,
    ) {
        protocol::DeriveResult::Minted { token, expires } => {
            Ok(json!({ "token": token, "expires": expires.0, "parent": KeyInfo::from(&parent) }))
        }
        protocol::DeriveResult::Refused { status, message } => {
            Err(Refusal::invalid(format!("{status}: {message}")))
        }
    }
}

fn inspect(control: &Control, request: InspectRequest) -> Outcome {
    let view = control.view.borrow();
    let record = locate(
        &view,
        &control.settings,
        request.id,
        request.credential.as_deref(),
    )?;
    Ok(json!({ "key": KeyInfo::from(&record) }))
}

fn list(control: &Control, request: ListRequest) -> Outcome {
    let limit = request.limit.unwrap_or(admin::LIST_LIMIT_DEFAULT);
    if limit == 0 || limit > admin::LIST_LIMIT_MAX {
        return Err(Refusal::invalid(format!(
            "limit must be 1 to {}",
            admin::LIST_LIMIT_MAX
        )));
    }
    let after = request.after.unwrap_or(0);
    let view = control.view.borrow();
    let tenant = request.tenant.as_deref();
    let keep = |record: &KeyRecord| tenant.is_none_or(|t| record.tenant == t);
    // Overlay records newer than the cursor, sorted; merged with the snapshot's sorted records.
    let mut overlay: Vec<&KeyRecord> = view.overlay.records().filter(|r| r.id.0 > after).collect();
    overlay.sort_by_key(|r| r.id);
    let records = &view.snapshot.body().records;
    let mut at = records.partition_point(|r| r.id.to_native() <= after);
    let mut next_overlay = 0;
    let mut page = Vec::with_capacity(limit.min(64));
    let mut more = false;
    loop {
        let from_snapshot = records.get(at).map(|r| r.id.to_native());
        let from_overlay = overlay.get(next_overlay).map(|r| r.id.0);
        let record = match (from_snapshot, from_overlay) {
            (None, None) => break,
            (Some(s), Some(o)) if o <= s => {
                next_overlay += 1;
                if o == s {
                    at += 1;
                }
                overlay[next_overlay - 1].clone()
            }
            (Some(_), _) => {
                let stored = &records[at];
                at += 1;
                if view.overlay.get(KeyId(stored.id.to_native())).is_some() {
                    continue;
                }
                view.snapshot.decode_record(stored)
            }
            (None, Some(_)) => {
                next_overlay += 1;
                overlay[next_overlay - 1].clone()
            }
        };
        if !keep(&record) {
            continue;
        }
        if page.len() == limit {
            more = true;
            break;
        }
        page.push(KeyInfo::from(&record));
    }
    let next = if more {
        page.last().map(|k| k.id)
    } else {
        None
    };
    Ok(json!({ "keys": page, "next": next }))
}

fn stats(control: &Control) -> Value {
    let view = control.view.borrow();
    let durable = control.durable.borrow();
    let snapshot = &durable.snapshot;
    let age = UnixSeconds::now()
        .0
        .saturating_sub(snapshot.header().created.0);
    json!({
        "sequence": view.assigned,
        "applied_sequence": durable.applied,
        "snapshot_sequence": snapshot.header().sequence,
        "snapshot_records": snapshot.header().record_count,
        "snapshot_age_seconds": age,
        "overlay_records": view.overlay.len(),
        "log_bytes": durable.log_bytes,
        "log_deltas": durable.committed.len(),
        "log_changes": durable.changes,
        "compacting": control.compacting.get(),
        "compactions": control.compactions.get(),
        "uptime_seconds": control.started.elapsed().as_secs(),
    })
}
