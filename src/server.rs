//! Starting and stopping the server: open the data directory, map the table, bind one listening
//! socket per shard, start one pinned glommio executor per shard, wait for shutdown.

use std::net::SocketAddr;
use std::os::unix::io::{IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use crate::audit::AuditWriter;
use crate::config::{ConfigError, ServerConfig};
use crate::control::{self, ControlSettings, ControlStart};
use crate::datadir::{DataDir, DataDirError};
use crate::delta::{self, Delta, DeltaLog, LogError};
use crate::endpoint::Endpoint;
use crate::link;
pub use crate::link::Shutdown;
use crate::metrics::{self, Board};
use crate::shard::{self, ShardReport, ShardSettings, ShardStart};
use crate::snapshot::{Snapshot, SnapshotError};
use crate::usage::UsageStore;
use crate::verify::Verifier;

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Admins(#[from] crate::admins::AdminsError),
    #[error("cannot open the audit trail: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("cannot open the key-usage journal: {0}")]
    Usage(#[from] crate::usage::UsageError),
    #[error("cannot load the key table: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("cannot open the delta log: {0}")]
    Log(#[from] LogError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on unix:{}: {message}", path.display())]
    BindUnix { path: PathBuf, message: String },
    #[error("{0}")]
    Host(String),
    #[error("cannot make the doorbells between the control plane and the shards: {0}")]
    Link(std::io::Error),
    #[error("cannot start shard {shard} on CPU {cpu}: {message}")]
    Executor {
        shard: usize,
        cpu: usize,
        message: String,
    },
    #[error("shard {shard} stopped: its io_uring failed: {error}")]
    ShardFailed { shard: usize, error: std::io::Error },
    #[error("shard {0} stopped abnormally (panicked)")]
    ShardPanicked(usize),
    #[error("{0}")]
    Cluster(String),
}

/// What a started server tells its caller.
#[derive(Clone, Debug)]
pub struct Ready {
    pub verify_address: Endpoint,
    pub control_address: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, when they are.
    pub metrics_address: Option<SocketAddr>,
    pub replayed_deltas: usize,
    pub sequence: u64,
    pub cpus: Vec<usize>,
    /// Where every thread that is not a shard runs; empty: unpinned.
    pub control_cpus: Vec<usize>,
    pub records: u64,
    pub snapshot_sequence: u64,
    pub data_dir_created: bool,
    /// Where shards and the control plane publish their figures and liveness.
    pub board: Arc<Board>,
}

/// Runs the server until `shutdown` is triggered. `on_ready` is called once every shard's
/// socket is listening (connections made after it are served).
pub fn run(
    config: ServerConfig,
    shutdown: Shutdown,
    on_ready: impl FnOnce(&Ready),
) -> Result<Vec<ShardReport>, ServerError> {
    config.validate()?;
    let host_warnings = crate::doctor::preflight(&config).map_err(ServerError::Host)?;
    let data_dir = DataDir::open_or_create(&config.data_dir)?;
    if let Some(settings) = config.nats() {
        bootstrap(&data_dir, &settings)?;
    }
    let snapshot = Snapshot::open(&data_dir.snapshot_path())?;
    let log_path = config.data_dir.join(delta::FILE_NAME);
    let (log, replay) = DeltaLog::open(&log_path, snapshot.header().sequence)?;
    if let Some((offset, dropped, reason)) = &replay.cut {
        crate::log_warn!(
            "{}: cut a torn tail at byte offset {offset} ({dropped} bytes dropped: {reason}; nothing valid follows it); every change before it is kept",
            log_path.display()
        );
    }
    let admins = crate::admins::Admins::load(data_dir.path(), data_dir.admin_token())?;
    let (audit, opened) = AuditWriter::open(data_dir.path(), config.audit_rotate_bytes)?;
    if opened.torn_bytes > 0 {
        crate::log_warn!(
            "{}: cut a torn last line ({} bytes: a crash in the middle of a write; never acknowledged)",
            data_dir.path().join(crate::audit::FILE_NAME).display(),
            opened.torn_bytes
        );
    }
    let (usage_store, usage) = UsageStore::open(data_dir.path())?;
    if usage.cut_bytes > 0 {
        crate::log_warn!(
            "{}: cut {} bytes of a torn or damaged end; the usage counts before it are kept",
            data_dir.path().join(crate::usage::FILE_NAME).display(),
            usage.cut_bytes
        );
    }
    let replayed: Arc<Vec<Arc<Delta>>> =
        Arc::new(replay.deltas.into_iter().map(Arc::new).collect());
    let verifier = Arc::new(Verifier::new(
        data_dir.pepper(),
        data_dir.master_secret(),
        config.prefixes().map_err(ConfigError::from)?,
        &config.token_prefix,
    ));
    let cpus = choose_cpus(&config);

    raise_file_limit();
    let bind_retry = Duration::from_millis(config.bind_retry_ms);
    let (verify_address, listeners) = match &config.listen {
        Endpoint::Tcp(address) => {
            let (address, listeners) =
                bind_tcp_shards(*address, cpus.len(), config.listen_backlog, bind_retry)?;
            (Endpoint::Tcp(address), listeners)
        }
        Endpoint::Unix(path) => {
            let listeners = bind_unix_shards(path, cpus.len(), config.listen_backlog)?;
            (Endpoint::Unix(path.clone()), listeners)
        }
    };

    wait_until_free(config.control, bind_retry)?;
    let control_listener = bind_listener(config.control, config.listen_backlog, false)?;
    let control_address = control_listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(config.control);
    let (links, control_links) = link::build(cpus.len()).map_err(ServerError::Link)?;
    let board = Arc::new(Board::new(
        cpus.len(),
        snapshot.header().record_count,
        snapshot.header().sequence,
    ));
    // Every thread started from here on inherits this thread's CPUs; each shard then pins
    // itself to its own.
    let control_cpus = choose_control_cpus(&config, &cpus);
    if !control_cpus.is_empty() {
        if let Err(error) = pin_current_thread(&control_cpus) {
            crate::log_warn!(
                "cannot keep the control plane on CPU(s) {control_cpus:?} ({error}); it runs unpinned"
            );
        }
    }
    let metrics =
        match config.metrics_address().map_err(ServerError::Config)? {
            Some(address) => {
                wait_until_free(address, bind_retry)?;
                let listener = std::net::TcpListener::bind(address)
                    .map_err(|source| ServerError::Bind { address, source })?;
                let address = listener.local_addr().unwrap_or(address);
                let handle = metrics::http::spawn(listener, board.clone(), shutdown.clone())
                    .map_err(|e| ServerError::Executor {
                        shard: usize::MAX,
                        cpu: usize::MAX,
                        message: e.to_string(),
                    })?;
                Some((address, handle))
            }
            None => None,
        };

    let settings = ShardSettings {
        token_ttl_max_seconds: config.token_ttl_max_seconds,
        // Changes keep arriving while a compaction runs: room for twice the bound.
        overlay_records: (config.compact_changes_max as usize).saturating_mul(2),
        connections_max: config.connections_per_shard_max,
        frame_body_bytes_max: config.frame_body_bytes_max,
        idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        frame_timeout: Duration::from_millis(config.frame_timeout_ms),
        frame_buffer_bytes_max: config.frame_buffer_bytes_per_shard_max,
        receive_buffers: config.receive_buffers,
        receive_buffer_bytes: config.receive_buffer_bytes,
        output_bytes_max: config.unsent_bytes_per_connection_max,
        busy_poll: Duration::from_micros(config.busy_poll_us),
        verify_at_wait: Duration::from_millis(config.verify_at_wait_ms),
    };
    let mut handles = Vec::with_capacity(cpus.len());
    for (index, ((cpu, listener), link)) in
        cpus.iter().copied().zip(listeners).zip(links).enumerate()
    {
        let fd = listener.into_raw_fd();
        let snapshot = snapshot.clone();
        let replayed = replayed.clone();
        let verifier = verifier.clone();
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        let board = board.clone();
        let handle = std::thread::Builder::new()
            .name(format!("keyward-shard-{index}"))
            .spawn(move || {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                    crate::log_warn!("cannot pin shard {index} to CPU {cpu}; it runs unpinned");
                }
                let start = ShardStart {
                    index,
                    board,
                    listener_fd: fd,
                    snapshot,
                    replayed,
                    link,
                };
                let served = shard::serve(start, verifier, settings, shutdown.clone());
                if served.is_err() {
                    shutdown.trigger(); // one shard down takes the server down, not half of it
                }
                served
            })
            .map_err(|e| ServerError::Executor {
                shard: index,
                cpu,
                message: e.to_string(),
            })?;
        handles.push(handle);
    }

    let sequence = replay.last_sequence;
    let control_settings = ControlSettings {
        hasher: verifier.hasher().clone(),
        prefixes: verifier.prefixes().clone(),
        master_secret: *data_dir.master_secret(),
        snapshot_path: data_dir.snapshot_path(),
        compact_changes_max: config.compact_changes_max,
        compact_log_bytes_max: config.compact_log_bytes_max,
        compaction_nice: config.compaction_nice,
        token_prefix: config.token_prefix.clone(),
        token_ttl_max_seconds: config.token_ttl_max_seconds,
        token_root: verifier.token_root().clone(),
        idle_timeout: Duration::from_millis(config.control_idle_timeout_ms),
        frame_timeout: Duration::from_millis(config.frame_timeout_ms),
    };
    let replica = match config.nats() {
        Some(settings) => {
            crate::cluster::check_marker(data_dir.path(), &settings.stream, sequence)
                .map_err(ServerError::Cluster)?;
            let fail_closed = board.fail_closed.clone();
            let started =
                crate::replication::start(settings, sequence, fail_closed).map_err(|e| {
                    ServerError::Cluster(format!("cannot start the NATS client thread: {e}"))
                })?;
            let _ = board.replication.set(started.0.status.clone());
            Some(started)
        }
        None => None,
    };
    let control_start = ControlStart {
        listener_fd: control_listener.into_raw_fd(),
        snapshot: snapshot.clone(),
        log,
        audit,
        admins,
        usage: (usage_store, usage.usage),
        replayed: replayed.clone(),
        links: control_links,
        board: board.clone(),
        replica,
    };
    let control_shutdown = shutdown.clone();
    let control_handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("keyward-control")
        // No spinning: the control plane shares CPUs with the shards, and a spinning control
        // thread would take their time for a latency no admin call needs.
        .io_memory(config.io_memory_bytes)
        .spawn(move || control::serve(control_settings, control_start, control_shutdown))
        .map_err(|e| ServerError::Executor {
            shard: usize::MAX,
            cpu: usize::MAX,
            message: e.to_string(),
        })?;

    crate::doctor::log_warnings(&host_warnings);
    on_ready(&Ready {
        verify_address: verify_address.clone(),
        control_address,
        metrics_address: metrics.as_ref().map(|(address, _)| *address),
        replayed_deltas: replayed.len(),
        sequence,
        cpus: cpus.clone(),
        control_cpus: control_cpus.clone(),
        records: snapshot.header().record_count,
        snapshot_sequence: snapshot.header().sequence,
        data_dir_created: data_dir.was_created(),
        board: board.clone(),
    });

    let mut reports = Vec::with_capacity(handles.len());
    let mut failure = None;
    for (index, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(error)) => {
                shutdown.trigger();
                failure.get_or_insert(ServerError::ShardFailed {
                    shard: index,
                    error,
                });
            }
            Err(_) => {
                shutdown.trigger();
                failure.get_or_insert(ServerError::ShardPanicked(index));
            }
        }
    }
    if control_handle.join().is_err() {
        failure.get_or_insert(ServerError::ShardPanicked(usize::MAX));
    }
    if let Some((_, handle)) = metrics {
        shutdown.trigger();
        let _ = handle.join();
    }
    drop(data_dir);
    if let Endpoint::Unix(path) = &verify_address {
        let _ = std::fs::remove_file(path);
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(reports),
    }
}

/// One CPU per shard: the configured list, else the CPUs this process may run on.
pub fn choose_cpus(config: &ServerConfig) -> Vec<usize> {
    let available: Vec<usize> = if config.cpus.is_empty() {
        core_affinity::get_core_ids()
            .map(|ids| ids.into_iter().map(|id| id.id).collect())
            .filter(|ids: &Vec<usize>| !ids.is_empty())
            .unwrap_or_else(|| vec![0])
    } else {
        config.cpus.clone()
    };
    let shards = if config.shards == 0 {
        available.len()
    } else {
        config.shards
    };
    (0..shards)
        .map(|i| available[i % available.len()])
        .collect()
}

/// The CPUs for every thread that is not a shard: the configured list, else the CPUs this
/// process may run on that no shard uses. Empty (the shards use them all): leave them unpinned.
pub fn choose_control_cpus(config: &ServerConfig, shard_cpus: &[usize]) -> Vec<usize> {
    if !config.control_cpus.is_empty() {
        return config.control_cpus.clone();
    }
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|id| id.id)
        .filter(|cpu| !shard_cpus.contains(cpu))
        .collect()
}

/// Restricts the calling thread (and the threads it starts later) to `cpus`.
fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        assert!(cpu < crate::config::CPU_ID_LIMIT, "validated by the config");
        // SAFETY: cpu is below the set's size (CPU_SETSIZE), checked just above.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; the set is initialised and its size is passed.
    let result =
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One listening socket per shard on the same TCP port (SO_REUSEPORT: the kernel spreads new
/// connections over the shards); returns the address bound (its port, when 0 was asked for).
fn bind_tcp_shards(
    address: SocketAddr,
    shards: usize,
    backlog: u32,
    bind_retry: Duration,
) -> Result<(SocketAddr, Vec<OwnedFd>), ServerError> {
    wait_until_free(address, bind_retry)?;
    let mut address = address;
    let mut listeners = Vec::with_capacity(shards);
    for _ in 0..shards {
        let socket = bind_listener(address, backlog, true)?;
        // Blocking: a shard's io_uring then waits for connections itself (on a non-blocking
        // socket its accepts would fail with EAGAIN instead).
        socket
            .set_nonblocking(false)
            .map_err(|source| ServerError::Bind { address, source })?;
        address = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(address);
        listeners.push(socket.into());
    }
    Ok((address, listeners))
}

/// Mode of the verify port's socket file: owner and group may connect.
pub const UNIX_SOCKET_MODE: u32 = 0o660;

/// One Unix-domain listening socket, shared by every shard (each accepts on it from its own
/// ring: Unix sockets have no SO_REUSEPORT). A socket file left by a server that is gone is
/// replaced; one something still listens on is not, and neither is any other kind of file.
fn bind_unix_shards(path: &Path, shards: usize, backlog: u32) -> Result<Vec<OwnedFd>, ServerError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let refuse = |message: String| ServerError::BindUnix {
        path: path.to_path_buf(),
        message,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(refuse(
                        "another server listens on this socket; stop it or choose another path"
                            .into(),
                    ))
                }
                Err(_) => std::fs::remove_file(path)
                    .map_err(|e| refuse(format!("cannot remove the stale socket file: {e}")))?,
            }
        }
        Ok(_) => {
            return Err(refuse(
                "the path exists and is not a socket; keyward replaces only a stale socket file"
                    .into(),
            ))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(refuse(error.to_string())),
    }
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket =
        Socket::new(Domain::UNIX, Type::STREAM, None).map_err(|e| refuse(e.to_string()))?;
    let address = SockAddr::unix(path).map_err(|e| refuse(e.to_string()))?;
    socket.bind(&address).map_err(|e| refuse(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(UNIX_SOCKET_MODE))
        .map_err(|e| refuse(format!("cannot set the socket file's mode: {e}")))?;
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(|e| refuse(e.to_string()))?;
    let first: OwnedFd = socket.into();
    let mut listeners = Vec::with_capacity(shards);
    for _ in 1..shards {
        listeners.push(first.try_clone().map_err(|e| refuse(e.to_string()))?);
    }
    listeners.push(first);
    Ok(listeners)
}

/// Descriptors kept for what is not a connection: rings, eventfds, listeners, the log, the
/// snapshot, standard streams (measured: 18 with one shard, 24 with two), with room to spare.
pub const FILES_RESERVED: u64 = 64;
pub const FILES_RESERVED_PER_SHARD: u64 = 16;

/// Raises the soft open-files limit to the hard one (whether even that holds every connection
/// the settings allow is the start-up host check's "open files" warning).
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    }
}

/// Waits, for at most `retry`, until nothing listens on `address`: a server killed a moment ago
/// leaves its listening sockets to the kernel for some milliseconds (about 17 ms where it was
/// found), during which binding fails and, on a shared port, new connections land on the dead
/// listeners. A
/// probe socket without SO_REUSEPORT cannot bind while any listener holds the port, so once it
/// binds, the port is ours to share among the shards. It also makes a second server on the same
/// port fail instead of quietly taking a share of its connections.
fn wait_until_free(address: SocketAddr, retry: Duration) -> Result<(), ServerError> {
    if address.port() == 0 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    loop {
        let error = |source| ServerError::Bind { address, source };
        let probe = tcp_socket(address)?;
        match probe.bind(&address.into()) {
            Ok(()) => {
                let waited = started.elapsed();
                if waited >= BIND_RETRY_PAUSE {
                    crate::log_info!(
                        "{address} was still held (by a server just stopped?); bound after {} ms",
                        waited.as_millis()
                    );
                }
                return Ok(());
            }
            Err(source)
                if source.kind() == std::io::ErrorKind::AddrInUse && started.elapsed() < retry =>
            {
                std::thread::sleep(BIND_RETRY_PAUSE);
            }
            Err(source) => return Err(error(source)),
        }
    }
}

/// A TCP socket for `address` with SO_REUSEADDR (so connections in TIME_WAIT never block a bind).
fn tcp_socket(address: SocketAddr) -> Result<socket2::Socket, ServerError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let error = |source| ServerError::Bind { address, source };
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(error)?;
    socket.set_reuse_address(true).map_err(error)?;
    Ok(socket)
}

/// Pause between two tries to bind a port still in use.
const BIND_RETRY_PAUSE: Duration = Duration::from_millis(2);

/// A listening socket with our own backlog, handed to glommio by file descriptor; with
/// SO_REUSEPORT for the verify port (every shard binds it), without for the control port (one
/// listener, and a second server on the same port must fail rather than share it).
fn bind_listener(
    address: SocketAddr,
    backlog: u32,
    reuse_port: bool,
) -> Result<socket2::Socket, ServerError> {
    let error = |source| ServerError::Bind { address, source };
    let socket = tcp_socket(address)?;
    socket.set_reuse_port(reuse_port).map_err(error)?;
    socket.set_nonblocking(true).map_err(error)?;
    socket.bind(&address.into()).map_err(error)?;
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(error)?;
    Ok(socket)
}

/// The oldest kernel with everything the data plane needs (docs/OPERATIONS.md, "The kernel and
/// io_uring").
pub const KERNEL_MIN: (u32, u32) = (6, 0);

/// Replicated mode, a node with no changes of its own (a new one, or one just compacted): when
/// the change stream no longer holds the changes after its snapshot, starts it from the
/// snapshot a node published instead (docs/CLUSTER.md, "A new node").
fn bootstrap(
    data_dir: &DataDir,
    settings: &crate::replication::NatsSettings,
) -> Result<(), ServerError> {
    let log_bytes = std::fs::metadata(data_dir.log_path()).map_or(0, |m| m.len());
    // Longer than a format 2 header: it holds a record (a format 1 header is shorter still, and
    // its smallest record makes it longer than that).
    if log_bytes > crate::delta::FILE_HEADER_BYTES as u64 {
        return Ok(()); // it has changes to replay: it follows the stream from after them
    }
    let sequence = Snapshot::open(&data_dir.snapshot_path())?.header().sequence;
    // Marked as this stream's before anything of the stream is put in it.
    crate::cluster::check_marker(data_dir.path(), &settings.stream, sequence)
        .map_err(ServerError::Cluster)?;
    crate::replication::bootstrap(
        settings,
        &data_dir.snapshot_path(),
        sequence,
        Duration::from_secs(10),
    )
    .map(|_| ())
    .map_err(ServerError::Cluster)
}
