//! One shard: a glommio executor pinned to one CPU, with its own listener, its own connections
//! and its own counters. The verify path here takes no lock and does no cross-core atomic RMW:
//! it reads the shared mapped table and writes only shard-local state.
//!
//! Per connection: read as many bytes as the buffer holds, answer every whole frame in it, write
//! all the answers back in one write, repeat. Pipelined clients therefore cost one read and one
//! write per batch of frames, not per frame.

use std::cell::{Cell, RefCell};
use std::io::ErrorKind;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::collections::HashMap;

use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::ConnectedSender;

use crate::credential::{self, KeyId};
use glommio::net::{TcpListener, TcpStream};

use crate::delta::Delta;
use crate::link::{
    Applied, RevocationAnswer, RevocationRequest, ShardLink, ShardMessage, Shutdown,
};
use crate::overlay::{Overlay, TableView};
use crate::protocol::{self, opcode, ErrorCode, Frame, Status};
use crate::record::UnixSeconds;
use crate::snapshot::Snapshot;
use crate::verify::{self, Verifier};

/// Most credentials of one read whose table entries are prefetched (see `prefetch_table`).
const PREFETCH_FRAMES_MAX: usize = 64;
/// A polling connection tries its socket again after this (in practice: on the shard's next
/// pass over io_uring and its timers).
const REPOLL_AFTER: Duration = Duration::from_micros(1);
/// Most connections of one shard polling their sockets at once (see `read_soon`).
const READ_POLLERS_MAX: usize = 64;
/// First size of a connection's read buffer; it grows to hold one largest frame when needed.
pub const READ_BUFFER_BYTES_INITIAL: usize = 16 * 1024;
/// Answers are flushed once this many bytes are pending, even mid-batch.
pub const WRITE_FLUSH_BYTES: usize = 256 * 1024;
/// How often an idle shard looks at the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// Most waiting connections refused in one go when out of file descriptors.
const REFUSE_BATCH_MAX: u64 = 256;
/// Back-off after a failed accept (EMFILE and friends leave the connection queued, so an
/// immediate retry would spin).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Per-shard bounds, from the config.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    /// Longest lifetime of a token minted by DERIVE.
    pub token_ttl_max_seconds: u64,
    /// Records the overlay is sized for at start-up (the compaction bound, plus headroom).
    pub overlay_records: usize,
    pub connections_max: usize,
    pub frame_body_bytes_max: usize,
    pub idle_timeout: Duration,
    /// A frame must arrive whole within this of its first byte.
    pub frame_timeout: Duration,
    /// Bytes of read buffers grown past [`READ_BUFFER_BYTES_INITIAL`] the shard may hold at once.
    pub frame_buffer_bytes_max: usize,
    /// How long a connection keeps trying non-blocking receives (yielding to the shard's other
    /// tasks in between) before it waits on io_uring; zero waits at once. Follows
    /// `spin_before_park_us`: both trade CPU the shard owns anyway for latency.
    pub read_poll: Duration,
}

/// What a shard did, reported when it stops.
#[derive(Clone, Debug, Default)]
pub struct ShardReport {
    pub shard: usize,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub by_status: [u64; Status::ALL.len()],
    pub errors_sent: u64,
}

/// Self-service revocations waiting for the control plane, by ticket.
#[derive(Default)]
struct Revocations {
    sender: RefCell<Option<Rc<ConnectedSender<RevocationRequest>>>>,
    waiting: RefCell<HashMap<u64, LocalSender<bool>>>,
    next_ticket: Cell<u64>,
}

/// What one shard starts from.
pub struct ShardStart {
    pub index: usize,
    /// A bound, listening, non-blocking socket for the verify port.
    pub listener_fd: RawFd,
    pub snapshot: Arc<Snapshot>,
    /// Deltas logged after the snapshot, replayed into the overlay before serving.
    pub replayed: Arc<Vec<Arc<Delta>>>,
    pub link: ShardLink,
}

struct ShardState {
    snapshot: RefCell<Arc<Snapshot>>,
    overlay: RefCell<Overlay>,
    verifier: Arc<Verifier>,
    settings: ShardSettings,
    connections_open: Cell<usize>,
    connections_accepted: Cell<u64>,
    connections_refused: Cell<u64>,
    by_status: [Cell<u64>; Status::ALL.len()],
    errors_sent: Cell<u64>,
    revocations: Revocations,
    /// Connections polling their sockets right now (see `read_soon`).
    pollers: Cell<usize>,
    /// Bytes of read buffers grown past their first size, over every connection.
    frame_buffer_bytes: Cell<usize>,
    /// A descriptor kept open to be given up when accept fails for want of descriptors, so the
    /// waiting connection can be accepted and told `busy` instead of hanging in the backlog.
    spare_fd: Cell<Option<std::fs::File>>,
    accept_failures: crate::throttle::Throttled,
}

/// The shard's main future: accept until shutdown, then return the counters.
pub async fn serve(
    start: ShardStart,
    verifier: Arc<Verifier>,
    settings: ShardSettings,
    shutdown: Shutdown,
) -> ShardReport {
    let ShardStart {
        index,
        listener_fd,
        snapshot,
        replayed,
        link,
    } = start;
    // SAFETY: the descriptor is a bound, listening, non-blocking TCP socket handed over by
    // server::run, owned by this shard alone from now on.
    let listener = unsafe { TcpListener::from_raw_fd(listener_fd) };
    let mut overlay = Overlay::with_capacity(snapshot.header().sequence, settings.overlay_records);
    for delta in replayed.iter() {
        overlay.apply(delta);
    }
    let state = Rc::new(ShardState {
        snapshot: RefCell::new(snapshot),
        overlay: RefCell::new(overlay),
        verifier,
        settings,
        connections_open: Cell::new(0),
        connections_accepted: Cell::new(0),
        connections_refused: Cell::new(0),
        by_status: Default::default(),
        errors_sent: Cell::new(0),
        revocations: Revocations::default(),
        pollers: Cell::new(0),
        frame_buffer_bytes: Cell::new(0),
        spare_fd: Cell::new(std::fs::File::open("/dev/null").ok()),
        accept_failures: Default::default(),
    });
    // The apply task shares the shard's one task queue. A second queue (with a latency bound)
    // measured no gain, and glommio 0.9 can park an executor for good while a second queue is
    // runnable (fixed upstream after 0.9): a shard that never wakes would stall every change.
    glommio::spawn_local(apply_loop(link, state.clone())).detach();
    let accepting = accept_loop(&listener, listener_fd, &state);
    futures_lite::future::or(accepting, shutdown.triggered(SHUTDOWN_POLL)).await;
    ShardReport {
        shard: index,
        connections_accepted: state.connections_accepted.get(),
        connections_refused: state.connections_refused.get(),
        by_status: std::array::from_fn(|i| state.by_status[i].get()),
        errors_sent: state.errors_sent.get(),
    }
}

/// Applies what the control plane sends, in order, on this core, and reports the sequence
/// applied after each message. Runs until the control plane hangs up.
async fn apply_loop(link: ShardLink, state: Rc<ShardState>) {
    let ShardLink {
        inbox,
        acks,
        revocations,
        revoked,
    } = link;
    let inbox = inbox.connect().await;
    let acks = acks.connect().await;
    let sender = Rc::new(revocations.connect().await);
    *state.revocations.sender.borrow_mut() = Some(sender);
    let answers = revoked.connect().await;
    let answering = state.clone();
    glommio::spawn_local(async move {
        while let Some(RevocationAnswer { ticket, done }) = answers.recv().await {
            if let Some(waiter) = answering.revocations.waiting.borrow_mut().remove(&ticket) {
                let _ = waiter.try_send(done);
            }
        }
    })
    .detach();
    while let Some(message) = inbox.recv().await {
        match message {
            ShardMessage::Apply(delta) => state.overlay.borrow_mut().apply(&delta),
            ShardMessage::Switch(snapshot) => {
                let included = snapshot.header().sequence;
                let mut overlay = state.overlay.borrow_mut();
                assert!(
                    included <= overlay.sequence(),
                    "a shard switches only to a snapshot it has applied every delta of"
                );
                *state.snapshot.borrow_mut() = snapshot;
                overlay.drop_through(included);
            }
        }
        let applied = Applied(state.overlay.borrow().sequence());
        if acks.send(applied).await.is_err() {
            return;
        }
    }
}

async fn accept_loop(listener: &TcpListener, listener_fd: RawFd, state: &Rc<ShardState>) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                let refused = match error.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE) => {
                        refuse_without_descriptors(listener_fd, state)
                    }
                    _ => 0,
                };
                state
                    .connections_refused
                    .set(state.connections_refused.get() + refused);
                state.accept_failures.log(|| {
                    format!(
                        "accept failed: {error}; {refused} waiting connection(s) told busy; \
                         raise the open-files limit (ulimit -n, LimitNOFILE=) or lower \
                         connections_per_shard_max"
                    )
                });
                glommio::timer::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if state.connections_open.get() >= state.settings.connections_max {
            state
                .connections_refused
                .set(state.connections_refused.get() + 1);
            glommio::spawn_local(refuse(stream)).detach();
            continue;
        }
        state.connections_open.set(state.connections_open.get() + 1);
        state
            .connections_accepted
            .set(state.connections_accepted.get() + 1);
        let state = state.clone();
        glommio::spawn_local(async move {
            let _ = connection(stream, &state).await;
            state.connections_open.set(state.connections_open.get() - 1);
        })
        .detach();
    }
}

/// Out of descriptors: gives up the spare one, and accepts and answers `busy` to the
/// connections waiting in the backlog (at most [`REFUSE_BATCH_MAX`]), closing each; then takes
/// the spare again. Returns how many were refused.
fn refuse_without_descriptors(listener_fd: RawFd, state: &ShardState) -> u64 {
    let Some(spare) = state.spare_fd.take() else {
        return 0;
    };
    drop(spare);
    let mut busy = Vec::new();
    protocol::put_error_frame(
        &mut busy,
        0,
        ErrorCode::Busy,
        "the server is out of file descriptors",
    );
    let mut refused = 0;
    while refused < REFUSE_BATCH_MAX {
        // SAFETY: accept4 on the shard's listening socket; no address is asked for.
        let fd = unsafe {
            libc::accept4(
                listener_fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            break;
        }
        // SAFETY: `fd` is the connection just accepted, owned here and closed right after; a
        // fresh socket's send buffer takes the small frame without blocking.
        unsafe {
            libc::send(
                fd,
                busy.as_ptr().cast(),
                busy.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
            libc::close(fd);
        }
        refused += 1;
    }
    state.spare_fd.set(std::fs::File::open("/dev/null").ok());
    refused
}

async fn refuse(mut stream: TcpStream) {
    let mut out = Vec::new();
    protocol::put_error_frame(
        &mut out,
        0,
        ErrorCode::Busy,
        "shard is at its connection limit",
    );
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

/// A connection's read buffer: it starts at [`READ_BUFFER_BYTES_INITIAL`], grows to exactly what
/// a larger pending frame needs (charged to the shard's `frame_buffer_bytes`), and shrinks back
/// once that frame is answered.
struct ReadBuffer<'s> {
    bytes: Vec<u8>,
    filled: usize,
    state: &'s ShardState,
}

impl ReadBuffer<'_> {
    fn grown(&self) -> usize {
        self.bytes.len().saturating_sub(READ_BUFFER_BYTES_INITIAL)
    }

    /// Makes room for the whole pending frame; false when the shard's budget cannot take it.
    fn make_room(&mut self, frame_bytes: usize) -> bool {
        if frame_bytes <= self.bytes.len() {
            return true;
        }
        let more = frame_bytes - self.bytes.len();
        let in_use = self.state.frame_buffer_bytes.get();
        if in_use + more > self.state.settings.frame_buffer_bytes_max {
            return false;
        }
        self.state.frame_buffer_bytes.set(in_use + more);
        self.bytes.resize(frame_bytes, 0);
        true
    }

    /// Back to the first size once what is left fits in it.
    fn shrink(&mut self) {
        if self.grown() > 0 && self.filled <= READ_BUFFER_BYTES_INITIAL {
            let grown = self.grown();
            self.state
                .frame_buffer_bytes
                .set(self.state.frame_buffer_bytes.get() - grown);
            self.bytes.truncate(READ_BUFFER_BYTES_INITIAL);
            self.bytes.shrink_to_fit();
        }
    }
}

impl Drop for ReadBuffer<'_> {
    fn drop(&mut self) {
        let grown = self.grown();
        self.state
            .frame_buffer_bytes
            .set(self.state.frame_buffer_bytes.get() - grown);
    }
}

/// Serves one connection until the peer closes, idles out, is too slow, or breaks the framing.
async fn connection(mut stream: TcpStream, state: &ShardState) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let settings = &state.settings;
    let mut input = ReadBuffer {
        bytes: vec![0u8; READ_BUFFER_BYTES_INITIAL],
        filled: 0,
        state,
    };
    let mut output: Vec<u8> = Vec::with_capacity(READ_BUFFER_BYTES_INITIAL);
    // When the first byte of the frame still pending arrived.
    let mut frame_started: Option<std::time::Instant> = None;
    loop {
        if input.filled == input.bytes.len() {
            // A whole buffer and no whole frame: the pending frame is larger than the buffer
            // (its header passed the size check when it was decoded).
            let header = input.bytes.first_chunk::<{ protocol::HEADER_BYTES }>();
            let frame_bytes = header
                .and_then(|h| protocol::decode_header(h, settings.frame_body_bytes_max).ok())
                .map_or(0, |h| protocol::HEADER_BYTES + h.body_bytes as usize);
            if !input.make_room(frame_bytes) {
                let message = "the shard's memory for large frames is in use; retry later";
                protocol::put_error_frame(&mut output, 0, ErrorCode::Busy, message);
                state.errors_sent.set(state.errors_sent.get() + 1);
                stream.write_all(&output).await?;
                return stream.close().await;
            }
        }
        let timeout = match frame_started {
            None => settings.idle_timeout,
            Some(started) => {
                let left = (started + settings.frame_timeout)
                    .saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return frame_too_slow(stream, state, &mut output).await;
                }
                left
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        let filled = input.filled;
        let read = match read_soon(&mut stream, &mut input.bytes[filled..], state).await {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(error) if error.kind() == ErrorKind::TimedOut => match frame_started {
                None => return Ok(()), // idle: close without a word, as documented
                Some(_) => return frame_too_slow(stream, state, &mut output).await,
            },
            Err(error) => return Err(error),
        };
        input.filled += read;
        let filled = input.filled;
        let now = UnixSeconds::now();
        prefetch_table(state, &input.bytes[..filled]);
        let mut consumed = 0;
        let fatal = loop {
            match protocol::decode_frame(
                &input.bytes[consumed..filled],
                settings.frame_body_bytes_max,
            ) {
                Ok(Some(frame)) if frame.header.opcode == opcode::REVOKE_SELF => {
                    consumed += frame.bytes();
                    // Answers stay in request order: send what came before, then wait for the
                    // control plane (durable and applied on every shard) before going on.
                    stream.write_all(&output).await?;
                    output.clear();
                    revoke_self(state, frame.header.request_id, frame.body, now, &mut output).await;
                }
                Ok(Some(frame)) => {
                    consumed += frame.bytes();
                    answer(state, &frame, now, &mut output);
                    if output.len() >= WRITE_FLUSH_BYTES {
                        stream.write_all(&output).await?;
                        output.clear();
                    }
                }
                Ok(None) => break false,
                Err(error) => {
                    protocol::put_error_frame(&mut output, 0, error.code(), &error.to_string());
                    state.errors_sent.set(state.errors_sent.get() + 1);
                    break true;
                }
            }
        };
        input.bytes.copy_within(consumed..filled, 0);
        input.filled -= consumed;
        input.shrink();
        frame_started = match (input.filled, consumed) {
            (0, _) => None,
            // Something of a new frame is pending: its clock starts now.
            (_, 1..) => Some(std::time::Instant::now()),
            (_, 0) => frame_started.or_else(|| Some(std::time::Instant::now())),
        };
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
            if output.capacity() > WRITE_FLUSH_BYTES {
                // A large batch's answers: do not keep their memory on an idle connection.
                output.shrink_to(READ_BUFFER_BYTES_INITIAL);
            }
        }
        if fatal {
            stream.close().await?;
            return Ok(());
        }
    }
}

/// Ends a connection whose pending frame did not arrive within the frame timeout.
async fn frame_too_slow(
    mut stream: TcpStream,
    state: &ShardState,
    output: &mut Vec<u8>,
) -> std::io::Result<()> {
    let message = format!(
        "a frame must arrive whole within {} ms of its first byte",
        state.settings.frame_timeout.as_millis()
    );
    protocol::put_error_frame(output, 0, ErrorCode::Timeout, &message);
    state.errors_sent.set(state.errors_sent.get() + 1);
    stream.write_all(output).await?;
    stream.close().await
}

/// Reads like `stream.read`, but first keeps trying non-blocking receives for up to
/// `read_poll`, yielding to the shard's other tasks between tries. On a busy shard the next
/// request usually arrives within a few task switches, and a receive that finds it costs one
/// syscall, where waiting on io_uring costs arming a poll, its completion and a wake-up for
/// every request (measured: that is what held depth-1 traffic below Redis's, see
/// docs/PERFORMANCE.md). At most [`READ_POLLERS_MAX`] connections poll at once, so a shard with
/// thousands of quiet connections does not spend itself on empty receives. Reading the
/// descriptor directly is sound because glommio's unbuffered stream keeps no bytes of its own.
async fn read_soon(
    stream: &mut TcpStream,
    buffer: &mut [u8],
    state: &ShardState,
) -> std::io::Result<usize> {
    let poll = state.settings.read_poll;
    if !poll.is_zero() && state.pollers.get() < READ_POLLERS_MAX {
        state.pollers.set(state.pollers.get() + 1);
        let found = poll_socket(stream.as_raw_fd(), buffer, poll).await;
        state.pollers.set(state.pollers.get() - 1);
        if let Some(result) = found {
            return result;
        }
    }
    stream.read(buffer).await
}

/// Non-blocking receives on `fd` until one finds bytes, fails, or `poll` has passed (`None`).
async fn poll_socket(
    fd: RawFd,
    buffer: &mut [u8],
    poll: Duration,
) -> Option<std::io::Result<usize>> {
    let mut deadline = None;
    loop {
        // SAFETY: `buffer` is valid for writes of its length; `fd` is the connection's open
        // socket, owned by its stream for the whole call.
        let read = unsafe {
            libc::recv(
                fd,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if read >= 0 {
            return Some(Ok(read as usize));
        }
        let error = std::io::Error::last_os_error();
        if !matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) {
            return Some(Err(error));
        }
        let now = std::time::Instant::now();
        if *deadline.get_or_insert(now + poll) <= now {
            return None;
        }
        // Wait for the shard's next pass over io_uring rather than just the next task: timers
        // are checked on each pass, so the shard's other connections run, completions and
        // control-plane messages are taken in, and then this task tries again.
        glommio::timer::sleep(REPOLL_AFTER).await;
    }
}

/// Self-service revocation: whoever presents a key may revoke it. The secret is checked here;
/// the revocation itself goes through the control plane like an admin's.
async fn revoke_self(
    state: &ShardState,
    request_id: u32,
    body: &[u8],
    now: UnixSeconds,
    output: &mut Vec<u8>,
) {
    let request = match protocol::parse_revoke_self(body) {
        Ok(request) => request,
        Err(error) => return bad_body(state, output, request_id, error),
    };
    let (status, key) = {
        let snapshot = state.snapshot.borrow();
        let overlay = state.overlay.borrow();
        let table = TableView {
            snapshot: &snapshot,
            overlay: &overlay,
        };
        let plain = protocol::VerifyRequest {
            credential: request.credential,
            ..Default::default()
        };
        let verdict = state.verifier.verify(&table, &plain, now);
        if verdict.token.is_some() {
            let message =
                "a token cannot be revoked by itself: revoke its parent key, or let it expire";
            protocol::put_error_frame(output, request_id, ErrorCode::BadBody, message);
            return;
        }
        (verdict.status, verdict.record.map(|r| r.id()))
    };
    let status = match (status, key) {
        (Status::Revoked, Some(_)) => Status::Revoked,
        (_, Some(id)) => match forward_revocation(state, id).await {
            true => Status::Revoked,
            false => {
                let message = "the control plane is not available; try again";
                protocol::put_error_frame(output, request_id, ErrorCode::Unavailable, message);
                return;
            }
        },
        (status, None) => status,
    };
    let start = protocol::begin_frame(output, opcode::REVOKE_SELF_RESULT, request_id);
    output.push(status as u8);
    protocol::end_frame(output, start);
}

/// Sends a revocation to the control plane and waits for it to be durable and applied.
async fn forward_revocation(state: &ShardState, id: KeyId) -> bool {
    let Some(sender) = state.revocations.sender.borrow().clone() else {
        return false;
    };
    let ticket = state.revocations.next_ticket.get();
    state.revocations.next_ticket.set(ticket + 1);
    let (waiter, done) = local_channel::new_bounded(1);
    state
        .revocations
        .waiting
        .borrow_mut()
        .insert(ticket, waiter);
    if sender
        .send(RevocationRequest { ticket, key: id })
        .await
        .is_err()
    {
        state.revocations.waiting.borrow_mut().remove(&ticket);
        return false;
    }
    done.recv().await.unwrap_or(false)
}

/// Before answering a read's frames, starts loading the table entries their VERIFYs will need,
/// so the cache misses of several lookups overlap instead of following one another: first
/// every hash slot, then (slots cached by then) every record. With 16 requests per read on a
/// 100 000-key table the two misses were four fifths of `Verifier::verify`'s own time.
/// Only a hint: nothing is decided here, and a read with one request skips it.
fn prefetch_table(state: &ShardState, mut bytes: &[u8]) {
    // One request in the read (depth 1): nothing to overlap, so no second parse of it.
    match protocol::decode_frame(bytes, state.settings.frame_body_bytes_max) {
        Ok(Some(frame))
            if frame.header.opcode != opcode::VERIFY_BATCH
                && bytes.len() - frame.bytes() < protocol::HEADER_BYTES =>
        {
            return
        }
        Ok(Some(_)) => {}
        _ => return,
    }
    let mut ids = [KeyId(0); PREFETCH_FRAMES_MAX];
    let mut count = 0;
    while count < PREFETCH_FRAMES_MAX {
        let Ok(Some(frame)) = protocol::decode_frame(bytes, state.settings.frame_body_bytes_max)
        else {
            break;
        };
        bytes = &bytes[frame.bytes()..];
        let mut note = |request: Result<protocol::VerifyRequest<'_>, protocol::BodyError>| {
            if let Some(id) = request
                .ok()
                .and_then(|request| credential::peek_key_id(request.credential))
            {
                if count < PREFETCH_FRAMES_MAX {
                    ids[count] = id;
                    count += 1;
                }
            }
        };
        match frame.header.opcode {
            opcode::VERIFY => note(protocol::parse_verify(frame.body)),
            opcode::VERIFY_BATCH => {
                if let Ok(items) = protocol::BatchItems::new(frame.body) {
                    items.take(PREFETCH_FRAMES_MAX).for_each(&mut note);
                }
            }
            _ => {}
        }
    }
    if count < 2 {
        return;
    }
    let snapshot = state.snapshot.borrow();
    for &id in &ids[..count] {
        snapshot.prefetch_slot(id);
    }
    for &id in &ids[..count] {
        snapshot.prefetch_record(id);
    }
}

/// Appends the answer to one frame.
fn answer(state: &ShardState, frame: &Frame<'_>, now: UnixSeconds, output: &mut Vec<u8>) {
    let request_id = frame.header.request_id;
    let snapshot = state.snapshot.borrow();
    let overlay = state.overlay.borrow();
    let table = TableView {
        snapshot: &snapshot,
        overlay: &overlay,
    };
    match frame.header.opcode {
        opcode::PING if frame.body.is_empty() => {
            protocol::put_header(output, opcode::PONG, request_id, 0);
        }
        opcode::PING => bad_body(state, output, request_id, protocol::BodyError::PingBody),
        opcode::VERIFY => match protocol::parse_verify(frame.body) {
            Ok(request) => {
                let start = protocol::begin_frame(output, opcode::VERIFY_RESULT, request_id);
                let verdict = state.verifier.verify(&table, &request, now);
                count(state, verdict.status);
                verify::put_verdict(output, &verdict);
                protocol::end_frame(output, start);
            }
            Err(error) => bad_body(state, output, request_id, error),
        },
        opcode::DERIVE => match protocol::parse_derive(frame.body) {
            Ok(request) => {
                let result = state.verifier.derive(
                    &table,
                    &request,
                    now,
                    state.settings.token_ttl_max_seconds,
                );
                let start = protocol::begin_frame(output, opcode::DERIVE_RESULT, request_id);
                protocol::put_derive_result(output, &result);
                protocol::end_frame(output, start);
            }
            Err(error) => bad_body(state, output, request_id, error),
        },
        opcode::VERIFY_BATCH => match protocol::check_batch(frame.body) {
            Ok(count_items) => {
                let start = protocol::begin_frame(output, opcode::VERIFY_BATCH_RESULT, request_id);
                output.extend_from_slice(&(count_items as u16).to_le_bytes());
                let items = protocol::BatchItems::new(frame.body).expect("checked above");
                for request in items {
                    let request = request.expect("checked above");
                    let verdict = state.verifier.verify(&table, &request, now);
                    count(state, verdict.status);
                    verify::put_verdict(output, &verdict);
                }
                protocol::end_frame(output, start);
            }
            Err(error) => bad_body(state, output, request_id, error),
        },
        other => {
            let message = format!("unknown opcode {other:#04x}");
            protocol::put_error_frame(output, request_id, ErrorCode::UnknownOpcode, &message);
            state.errors_sent.set(state.errors_sent.get() + 1);
        }
    }
}

fn bad_body(state: &ShardState, output: &mut Vec<u8>, request_id: u32, error: protocol::BodyError) {
    protocol::put_error_frame(output, request_id, ErrorCode::BadBody, &error.to_string());
    state.errors_sent.set(state.errors_sent.get() + 1);
}

#[inline]
fn count(state: &ShardState, status: Status) {
    let cell = &state.by_status[status as usize];
    cell.set(cell.get() + 1);
}
