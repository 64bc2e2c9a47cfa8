//! The change stream on NATS JetStream (docs/CLUSTER.md): a thread of its own runs the
//! `async-nats` client on a small tokio runtime, off the verify cores, and talks to the control
//! plane over channels. It publishes the control plane's deltas with an expected-last-sequence
//! check, so every change has one place in one order, and delivers every message of the stream,
//! in order, from where this node left off, the node's own included.
//!
//! The verify path never touches any of it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_lite::StreamExt;
use tokio::sync::{mpsc, oneshot};

/// Messages delivered to the control plane and not yet taken, at most.
const INCOMING_MAX: usize = 4096;
/// How long a publish waits for JetStream's acknowledgement.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the stream's last sequence is asked for (for the lag figures).
const STREAM_INFO_INTERVAL: Duration = Duration::from_millis(500);
/// How often the follower checks that its consumer still delivers.
const STALL_CHECK: Duration = Duration::from_millis(100);
/// A consumer that delivered nothing this long while the stream holds more is made anew.
const STALL_AFTER: Duration = Duration::from_millis(750);
/// Header carrying the audit line of the change (JSON), written by every node that applies it.
pub const AUDIT_HEADER: &str = "Keyward-Audit";

/// Where the change stream lives.
#[derive(Clone, Debug)]
pub struct NatsSettings {
    pub servers: Vec<String>,
    pub stream: String,
    pub credentials: Option<PathBuf>,
    pub replicas: usize,
    /// Fail closed once the stream has been silent this long (zero: never).
    pub max_staleness: Duration,
    /// This node's name, for the NATS connection and the audit trail.
    pub node: String,
}

impl NatsSettings {
    /// The one subject the stream holds.
    pub fn subject(&self) -> String {
        format!("keyward.{}.changes", self.stream)
    }
}

/// One message of the stream: a delta as `delta::encode` wrote it, at `sequence`.
#[derive(Debug)]
pub struct Incoming {
    pub sequence: u64,
    pub payload: Bytes,
    /// The audit line the publishing node wrote for it (JSON), when it sent one.
    pub audit: Option<String>,
}

/// Why a publish did not store the change.
#[derive(Debug)]
pub enum PublishFailure {
    /// Another change took the sequence first: catch up and check the request again.
    Conflict,
    /// The stream did not answer or refused (no quorum, no connection, timeout). A timeout
    /// leaves it unknown whether the change was stored; if it was, every node applies it.
    Unavailable(String),
}

enum Request {
    Publish {
        payload: Bytes,
        expected_last: u64,
        audit: String,
        reply: oneshot::Sender<Result<u64, PublishFailure>>,
    },
    /// A snapshot this node compacted to: put it in the stream's object store, unless one at
    /// least as new is there.
    Snapshot(Arc<crate::snapshot::Snapshot>),
}

/// The object store bucket beside the stream, holding the latest snapshot.
pub fn bucket_name(stream: &str) -> String {
    format!("{stream}_SNAPSHOTS")
}

/// The one object in the bucket.
const SNAPSHOT_OBJECT: &str = "snapshot";

/// The snapshot object's description: the delta sequence it includes.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotDescription {
    sequence: u64,
}

/// What the stream thread knows, for metrics, `stats` and the staleness check.
#[derive(Debug, Default)]
pub struct StreamStatus {
    connected: AtomicBool,
    /// The stream's last sequence, as last asked (0 before the first answer).
    last_sequence: AtomicU64,
    /// The stream's first sequence still held.
    first_sequence: AtomicU64,
    /// Milliseconds since the thread started at the last answer from the stream.
    heard_ms: AtomicU64,
    /// Set once the stream is open (created if it was missing) and being followed.
    opened: AtomicBool,
    /// The last failure to connect or open the stream, logged once each time it changes.
    last_error: std::sync::Mutex<Option<String>>,
    /// Set when this node cannot follow the stream any more (see `problem`).
    stuck: AtomicBool,
    problem: std::sync::Mutex<Option<String>>,
    started: std::sync::OnceLock<Instant>,
}

impl StreamStatus {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence.load(Ordering::Relaxed)
    }
    pub fn first_sequence(&self) -> u64 {
        self.first_sequence.load(Ordering::Relaxed)
    }
    /// How long since the stream last answered; `None` before it ever did.
    pub fn silent_for(&self) -> Option<Duration> {
        let heard = self.heard_ms.load(Ordering::Relaxed);
        let started = self.started.get()?;
        (heard > 0).then(|| {
            started
                .elapsed()
                .saturating_sub(Duration::from_millis(heard))
        })
    }
    /// Why this node cannot follow the stream, once it cannot.
    pub fn problem(&self) -> Option<String> {
        if !self.stuck.load(Ordering::Relaxed) {
            return None;
        }
        self.problem.lock().ok().and_then(|p| p.clone())
    }
    /// Whether the stream is open and followed.
    pub fn opened(&self) -> bool {
        self.opened.load(Ordering::Relaxed)
    }
    /// The last failure to connect to NATS or open the stream.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
    fn failed(&self, why: String) {
        if let Ok(mut last) = self.last_error.lock() {
            if last.as_deref() != Some(why.as_str()) {
                crate::log_warn!("{why}; retrying");
            }
            *last = Some(why);
        }
    }
    fn heard(&self) {
        let started = self.started.get_or_init(Instant::now);
        let ms = started.elapsed().as_millis() as u64;
        self.heard_ms.store(ms.max(1), Ordering::Relaxed);
    }
    fn stuck(&self, why: String) {
        crate::log_error!("replication stopped: {why}");
        if let Ok(mut problem) = self.problem.lock() {
            *problem = Some(why);
        }
        self.stuck.store(true, Ordering::Relaxed);
    }
}

/// The control plane's end of the stream thread.
pub struct Replica {
    publish: mpsc::Sender<Request>,
    pub status: Arc<StreamStatus>,
    pub settings: NatsSettings,
}

impl Replica {
    /// Publishes `payload` (a delta at sequence `expected_last + 1`) with its audit line.
    /// Returns the sequence the stream stored it at.
    pub async fn publish(
        &self,
        payload: Vec<u8>,
        expected_last: u64,
        audit: String,
    ) -> Result<u64, PublishFailure> {
        let (reply, answer) = oneshot::channel();
        let request = Request::Publish {
            payload: Bytes::from(payload),
            expected_last,
            audit,
            reply,
        };
        if self.publish.send(request).await.is_err() {
            return Err(PublishFailure::Unavailable(
                "the stream thread has stopped".into(),
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(PublishFailure::Unavailable(
                "the stream thread has stopped".into(),
            ))
        })
    }
}

impl Replica {
    /// Offers a snapshot this node compacted to, for nodes that start when the stream no
    /// longer holds the changes it includes. Dropped when the thread is busy (the next
    /// compaction offers a newer one).
    pub fn offer_snapshot(&self, snapshot: Arc<crate::snapshot::Snapshot>) {
        let _ = self.publish.try_send(Request::Snapshot(snapshot));
    }
}

/// Starts the stream thread; it connects (and keeps reconnecting) in the background and
/// delivers the stream from `after + 1` on, in order, on the receiver returned.
pub fn start(
    settings: NatsSettings,
    after: u64,
    fail_closed: Arc<AtomicBool>,
) -> std::io::Result<(Replica, mpsc::Receiver<Incoming>)> {
    let (publish, requests) = mpsc::channel(1024);
    let (deliver, incoming) = mpsc::channel(INCOMING_MAX);
    let status = Arc::new(StreamStatus::default());
    let _ = status.started.set(Instant::now());
    let thread_status = status.clone();
    let thread_settings = settings.clone();
    std::thread::Builder::new()
        .name("keyward-nats".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    thread_status.stuck(format!("cannot start the NATS client's runtime: {error}"));
                    return;
                }
            };
            runtime.block_on(run(
                thread_settings,
                after,
                requests,
                deliver,
                thread_status,
                fail_closed,
            ));
        })?;
    let replica = Replica {
        publish,
        status,
        settings,
    };
    Ok((replica, incoming))
}

async fn run(
    settings: NatsSettings,
    after: u64,
    mut requests: mpsc::Receiver<Request>,
    deliver: mpsc::Sender<Incoming>,
    status: Arc<StreamStatus>,
    fail_closed: Arc<AtomicBool>,
) {
    let opened = Arc::new(std::sync::OnceLock::new());
    tokio::spawn(guard_staleness(
        settings.max_staleness,
        status.clone(),
        fail_closed,
    ));
    tokio::spawn(open(
        settings.clone(),
        after,
        deliver,
        status.clone(),
        opened.clone(),
    ));
    let subject = settings.subject();
    // Message ids unique to this process: the node's name, when it started, a counter.
    let boot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut published = 0u64;
    while let Some(request) = requests.recv().await {
        let (payload, expected_last, audit, reply) = match request {
            Request::Publish {
                payload,
                expected_last,
                audit,
                reply,
            } => (payload, expected_last, audit, reply),
            Request::Snapshot(snapshot) => {
                if let Some(js) = opened.get() {
                    let js = js.clone();
                    let (stream, replicas) = (settings.stream.clone(), settings.replicas);
                    tokio::spawn(async move {
                        if let Err(error) = put_snapshot(&js, &stream, replicas, &snapshot).await {
                            crate::log_warn!(
                                "cannot publish the snapshot at sequence {} for new nodes: {error}",
                                snapshot.header().sequence
                            );
                        }
                    });
                }
                continue;
            }
        };
        let Some(js) = opened.get() else {
            let why = status.last_error().unwrap_or_else(|| "connecting".into());
            let failure = PublishFailure::Unavailable(format!(
                "this node has not opened the change stream yet ({why})"
            ));
            let _ = reply.send(Err(failure));
            continue;
        };
        published += 1;
        let message_id = format!("{}-{boot:x}-{published}", settings.node);
        // Publishes go out one after another (the control plane sends one at a time anyway).
        let result = publish_one(
            js,
            subject.clone(),
            message_id,
            payload,
            expected_last,
            audit,
        )
        .await;
        if result.is_ok() {
            status.heard();
        }
        let _ = reply.send(result);
    }
}

/// Connects, opens (or creates) the stream, and starts following it; retries each step until
/// it works. Publishing starts once `opened` is set.
async fn open(
    settings: NatsSettings,
    after: u64,
    deliver: mpsc::Sender<Incoming>,
    status: Arc<StreamStatus>,
    opened: Arc<std::sync::OnceLock<jetstream::Context>>,
) {
    let client = loop {
        match connect(&settings, status.clone()).await {
            Ok(client) => break client,
            Err(error) => {
                status.failed(format!("cannot connect to NATS: {error}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(PUBLISH_TIMEOUT)
        .build(client);
    let stream = loop {
        match ensure_stream(&js, &settings).await {
            Ok(stream) => break stream,
            Err(error) => {
                status.failed(format!(
                    "cannot open the change stream {:?}: {error}",
                    settings.stream
                ));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    crate::log_info!(
        "following the change stream {:?} on NATS ({}), from sequence {}",
        settings.stream,
        settings.servers.join(","),
        after + 1
    );
    if let Ok(mut last) = status.last_error.lock() {
        *last = None;
    }
    status.opened.store(true, Ordering::Relaxed);
    let _ = opened.set(js);
    tokio::spawn(watch_stream(stream.clone(), status.clone()));
    follow(stream, settings.subject(), after, deliver, status).await;
}

async fn connect(
    settings: &NatsSettings,
    status: Arc<StreamStatus>,
) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("keyward {}", settings.node))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .event_callback(move |event| {
            let status = status.clone();
            async move {
                match event {
                    async_nats::Event::Connected => status.connected.store(true, Ordering::Relaxed),
                    async_nats::Event::Disconnected => {
                        status.connected.store(false, Ordering::Relaxed)
                    }
                    _ => {}
                }
            }
        });
    if let Some(path) = &settings.credentials {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    options
        .connect(settings.servers.clone())
        .await
        .map_err(|e| e.to_string())
}

async fn ensure_stream(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> Result<stream::Stream, String> {
    let config = stream::Config {
        name: settings.stream.clone(),
        subjects: vec![settings.subject()],
        num_replicas: settings.replicas,
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        deny_delete: true,
        ..Default::default()
    };
    js.get_or_create_stream(config)
        .await
        .map_err(|e| e.to_string())
}

/// How long a publish is retried after errors that may pass (no stream leader yet, a lost
/// connection, a timeout): JetStream elects a new stream leader within 4 to 9 s of losing one.
const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(15);

/// Publishes one change, retrying transient failures with the same message id: JetStream keeps
/// the first copy it stored and answers a retry with that copy's sequence (its duplicate
/// window), so a change stored once whose acknowledgement was lost is not stored twice.
async fn publish_one(
    js: &jetstream::Context,
    subject: String,
    message_id: String,
    payload: Bytes,
    expected_last: u64,
    audit: String,
) -> Result<u64, PublishFailure> {
    let deadline = Instant::now() + PUBLISH_RETRY_FOR;
    let mut pause = Duration::from_millis(20);
    loop {
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(message_id.as_str())
            .expected_last_sequence(expected_last)
            .header(AUDIT_HEADER, audit.as_str());
        let attempt = match js.send_publish(subject.clone(), message).await {
            Ok(ack) => ack.await,
            Err(error) => Err(error),
        };
        let error = match attempt {
            Ok(ack) => return Ok(ack.sequence),
            Err(error) => error,
        };
        use jetstream::context::PublishErrorKind as Kind;
        match error.kind() {
            Kind::WrongLastSequence => return Err(PublishFailure::Conflict),
            Kind::StreamNotFound
            | Kind::TimedOut
            | Kind::BrokenPipe
            | Kind::MaxAckPending
            | Kind::Other
                if Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            _ => return Err(PublishFailure::Unavailable(error.to_string())),
        }
    }
}

/// Sets `fail_closed` while the stream has been silent (no answer from it, connected or not)
/// for longer than `max_staleness`, and clears it once it answers again; checked 10 times a
/// second.
async fn guard_staleness(
    max_staleness: Duration,
    status: Arc<StreamStatus>,
    fail_closed: Arc<AtomicBool>,
) {
    if max_staleness.is_zero() {
        return;
    }
    loop {
        // Before the stream first answers, the silence counts from the start.
        let silent = status
            .silent_for()
            .unwrap_or_else(|| status.started.get().map_or(Duration::ZERO, |s| s.elapsed()));
        let stale = silent > max_staleness;
        if fail_closed.swap(stale, Ordering::Relaxed) != stale {
            if stale {
                crate::log_error!(
                    "the change stream has been silent for {} ms, past max_staleness_ms: valid keys are answered stale until it answers again",
                    silent.as_millis()
                );
            } else {
                crate::log_info!("the change stream answers again: valid keys are answered valid");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks the stream for its first and last sequences every [`STREAM_INFO_INTERVAL`].
async fn watch_stream(stream: stream::Stream, status: Arc<StreamStatus>) {
    loop {
        if let Ok(info) = stream.get_info().await {
            status
                .last_sequence
                .store(info.state.last_sequence, Ordering::Relaxed);
            status
                .first_sequence
                .store(info.state.first_sequence, Ordering::Relaxed);
            status.heard();
        }
        tokio::time::sleep(STREAM_INFO_INTERVAL).await;
    }
}

/// Delivers every message after `after`, in order, through an ordered consumer (which
/// recreates itself after a gap or a lost server); re-creates it when its messages end.
async fn follow(
    stream: stream::Stream,
    subject: String,
    mut after: u64,
    deliver: mpsc::Sender<Incoming>,
    status: Arc<StreamStatus>,
) {
    loop {
        let config = consumer::pull::OrderedConfig {
            filter_subject: subject.clone(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ..Default::default()
        };
        let messages = match stream.create_consumer(config).await {
            Ok(consumer) => consumer.messages().await,
            Err(error) => {
                crate::log_warn!("cannot follow the change stream: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                crate::log_warn!("cannot follow the change stream: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let mut delivered = Instant::now();
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                () = tokio::time::sleep(STALL_CHECK) => {
                    // The stream holds more than was delivered, and nothing came for a while:
                    // the consumer was lost with its server; make a new one from here.
                    if status.last_sequence() > after && delivered.elapsed() >= STALL_AFTER {
                        crate::log_warn!(
                            "the change stream has sequence {} but nothing came after {after} for {} ms; following it anew",
                            status.last_sequence(),
                            delivered.elapsed().as_millis()
                        );
                        break;
                    }
                    continue;
                }
            };
            let Some(message) = next else { break };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    crate::log_warn!("the change stream's consumer failed: {error}; resuming");
                    break;
                }
            };
            let Ok(info) = message.info() else { continue };
            let sequence = info.stream_sequence;
            if sequence <= after {
                continue; // delivered before a consumer reset
            }
            if sequence != after + 1 {
                status.stuck(format!(
                    "the stream no longer holds sequence {} (its next message is {sequence}): start this node again from a new data directory (keyward-ctl cluster import-secrets), which starts from the snapshot a node published",
                    after + 1
                ));
                return;
            }
            status.heard();
            delivered = Instant::now();
            let audit = message
                .headers
                .as_ref()
                .and_then(|h| h.get(AUDIT_HEADER))
                .map(|v| v.as_str().to_string());
            let incoming = Incoming {
                sequence,
                payload: message.payload.clone(),
                audit,
            };
            if deliver.send(incoming).await.is_err() {
                return; // the control plane is gone
            }
            after = sequence;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn snapshot_bucket(
    js: &jetstream::Context,
    stream: &str,
    replicas: usize,
) -> Result<jetstream::object_store::ObjectStore, String> {
    let bucket = bucket_name(stream);
    if let Ok(store) = js.get_object_store(&bucket).await {
        return Ok(store);
    }
    js.create_object_store(jetstream::object_store::Config {
        bucket,
        description: Some(format!(
            "keyward: the latest snapshot of the stream {stream}"
        )),
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())
}

/// The sequence of the snapshot in the bucket, if there is one.
async fn published_sequence(store: &jetstream::object_store::ObjectStore) -> Option<u64> {
    let info = store.info(SNAPSHOT_OBJECT).await.ok()?;
    let description: SnapshotDescription =
        serde_json::from_str(info.description.as_deref()?).ok()?;
    Some(description.sequence)
}

/// Puts `snapshot` in the bucket unless the one there is at least as new.
async fn put_snapshot(
    js: &jetstream::Context,
    stream: &str,
    replicas: usize,
    snapshot: &crate::snapshot::Snapshot,
) -> Result<(), String> {
    let sequence = snapshot.header().sequence;
    let store = snapshot_bucket(js, stream, replicas).await?;
    if published_sequence(&store)
        .await
        .is_some_and(|s| s >= sequence)
    {
        return Ok(());
    }
    let description = serde_json::to_string(&SnapshotDescription { sequence }).expect("serializes");
    let meta = jetstream::object_store::ObjectMetadata {
        name: SNAPSHOT_OBJECT.into(),
        description: Some(description),
        ..Default::default()
    };
    let mut bytes = snapshot.file_bytes();
    store
        .put(meta, &mut bytes)
        .await
        .map_err(|e| e.to_string())?;
    crate::log_info!(
        "published the snapshot at sequence {sequence} ({} bytes) for nodes that start later",
        snapshot.file_bytes().len()
    );
    Ok(())
}

/// Before a node with no changes of its own loads its table: when the stream no longer holds
/// the changes after `sequence` (the node's snapshot), fetches the latest published snapshot
/// into `snapshot_path` (written beside it, fsynced, checked, then renamed over it). Returns
/// the sequence fetched, or `None` when the stream still holds what the node needs (or cannot
/// be reached within `wait`: the node then starts from what it has and follows the stream
/// when it can, stopping with a clear problem if the stream has moved past it).
pub fn bootstrap(
    settings: &NatsSettings,
    snapshot_path: &std::path::Path,
    sequence: u64,
    wait: Duration,
) -> Result<Option<u64>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the NATS client's runtime: {e}"))?;
    runtime.block_on(async {
        let status = Arc::new(StreamStatus::default());
        // One bound for reaching NATS and asking for the stream.
        let probe = tokio::time::timeout(wait, async {
            let js = jetstream::new(connect(settings, status).await.ok()?);
            let stream = js.get_stream(&settings.stream).await.ok();
            Some((js, stream))
        });
        let (js, stream) = match probe.await {
            Ok(Some(found)) => found,
            _ => {
                crate::log_warn!(
                    "NATS did not answer within {} s: starting from the local table",
                    wait.as_secs()
                );
                return Ok(None);
            }
        };
        let Some(stream) = stream else {
            return Ok(None); // no stream yet: everything is still to come
        };
        let first = stream.cached_info().state.first_sequence;
        let last = stream.cached_info().state.last_sequence;
        if last == 0 || first <= sequence + 1 {
            return Ok(None);
        }
        let store = js.get_object_store(bucket_name(&settings.stream)).await.map_err(|_| {
            format!(
                "the change stream {:?} no longer holds sequence {} (its first is {first}) and no node has published a snapshot: compact a node of the cluster (keyward-ctl compact), then start this one again",
                settings.stream,
                sequence + 1
            )
        })?;
        let published = published_sequence(&store).await.unwrap_or(0);
        if published + 1 < first {
            return Err(format!(
                "the change stream {:?} holds sequences from {first}, and its published snapshot only reaches {published}: compact a node of the cluster (keyward-ctl compact), then start this one again",
                settings.stream
            ));
        }
        let mut object = store
            .get(SNAPSHOT_OBJECT)
            .await
            .map_err(|e| format!("cannot fetch the published snapshot: {e}"))?;
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
            .await
            .map_err(|e| format!("cannot fetch the published snapshot: {e}"))?;
        let staged = snapshot_path.with_extension("kws.fetched");
        crate::datadir::replace_private(&staged, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", staged.display()))?;
        let fetched = crate::snapshot::Snapshot::open(&staged)
            .map_err(|e| format!("the published snapshot is damaged: {e}"))?;
        if fetched.header().sequence != published {
            return Err(format!(
                "the published snapshot says sequence {published} but holds {}",
                fetched.header().sequence
            ));
        }
        drop(fetched);
        std::fs::rename(&staged, snapshot_path)
            .and_then(|()| {
                let dir = snapshot_path.parent().unwrap_or(std::path::Path::new("."));
                std::fs::File::open(dir)?.sync_all()
            })
            .map_err(|e| format!("cannot put the fetched snapshot in place: {e}"))?;
        crate::log_info!(
            "the change stream starts at {first}: fetched the published snapshot at sequence {published} ({} bytes)",
            bytes.len()
        );
        Ok(Some(published))
    })
}
