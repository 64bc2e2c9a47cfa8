//! The turn loop: one thread, one ring, one listener. Each turn takes every completion
//! (multishot accepts, multishot receives into the provided buffer ring, sends, the doorbell),
//! hands the bytes each connection received to the [`Service`], queues at most one send per
//! connection with all the answers of the turn, checks the clocks now and then, and ends in
//! one `submit_and_wait` with a timeout. No per-request syscall: receives and sends are the
//! ring's.
//!
//! Receives: a connection with nothing pending is answered straight from the provided buffer
//! (no copy); only the start of a frame still arriving is copied into the connection's
//! `input`, which grows to the pending frame's size (charged to the shard's input budget;
//! past it the connection gets `busy`). Buffers go back to the ring as soon as their bytes are
//! answered or copied. A multishot receive that ends (`ENOBUFS` when the ring ran dry, or any
//! completion without `F_MORE`) is re-armed at the end of the turn, after the turn's buffers
//! went back: a shortage slows connections down, it never stalls one.
//!
//! Backpressure: a connection whose unsent answers pass `output_bytes_max` has its receive
//! cancelled and is not re-armed until they drain below half; so does one holding frames back
//! behind a wait. A client that sends and never reads cannot grow the server's memory.
//!
//! Timers: every `tick` the turn looks at each connection's clocks: silent past `idle_timeout`
//! → closed without a word; a frame unfinished `frame_timeout` after its first byte → a
//! `timeout` error, then closed; answers not taken by the client for `idle_timeout` (it stopped
//! reading) → shut down and closed, so a client that never reads cannot hold a connection.
//!
//! A completion's `user_data` names the operation (low 8 bits) and the connection's slot.

use std::io;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::buffers::BufferRing;
use super::connection::{Connection, ConnectionId, INPUT_BYTES_INITIAL};
use super::ring;
use super::socket::{refuse, set_nodelay, set_nonblocking};
use crate::protocol::{self, ErrorCode};

/// What a connection does after the service answered its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Every whole frame was answered; the rest (if any) is the start of the next one.
    More,
    /// End the connection once what was answered is sent (a framing error, answered).
    Close,
    /// The last frame consumed waits for an answer from outside the shard
    /// ([`Service::rung`] hands it over); frames after it are held back until then.
    Wait,
}

/// What the turn serves: the verify protocol's answers, or (for measurement) just PINGs.
pub trait Service {
    /// Answers the whole frames at the start of `bytes`, appending to `out`; returns how many
    /// bytes it consumed, and what next.
    fn answer(
        &mut self,
        connection: ConnectionId,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> (usize, Step);

    /// A descriptor to watch for the other plane's doorbell.
    fn bell(&self) -> Option<RawFd> {
        None
    }

    /// The doorbell rang: take in what arrived, and push the answers of finished waits.
    fn rung(&mut self, _finished: &mut Vec<(ConnectionId, Vec<u8>)>) {}

    /// A turn begins: the thread woke with work (e.g. read the clock once for all of it).
    fn begin_turn(&mut self) {}

    /// A turn that began at `started` (when its completions were taken) has queued its sends.
    fn end_turn(&mut self, _started: Instant) {}

    /// The loop's clock tick (at most every 50 ms, never per request), with what the loop has
    /// counted so far; once more when the loop stops.
    fn tick(&mut self, _report: &TurnReport) {}

    /// The earliest moment a waiting request must be answered even if nothing arrives; the
    /// loop sleeps no longer than that.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// The deadline passed: push the answers of the waits that ran out.
    fn expire(&mut self, _now: Instant, _finished: &mut Vec<(ConnectionId, Vec<u8>)>) {}
}

/// The bounds of one turn loop.
#[derive(Clone, Copy, Debug)]
pub struct TurnSettings {
    /// Most connections at once; more are told `busy` and closed.
    pub connections_max: usize,
    /// Buffers in the provided buffer ring (a power of two).
    pub buffers: u16,
    /// Bytes per buffer.
    pub buffer_bytes: u32,
    /// Largest frame body.
    pub frame_body_bytes_max: usize,
    /// Longest sleep in the kernel before the stop flag is looked at.
    pub stop_poll: Duration,
    /// Unsent answers one connection may hold before it is no longer read.
    pub output_bytes_max: usize,
    /// Bytes of input grown past [`INPUT_BYTES_INITIAL`], over all connections.
    pub input_bytes_max: usize,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// A frame must arrive whole within this of its first byte.
    pub frame_timeout: Duration,
    /// After work, keep looking for completions without sleeping for this long (0: sleep at
    /// once). Trades CPU for the wake-up latency of the next request.
    pub busy_poll: Duration,
}

impl Default for TurnSettings {
    fn default() -> TurnSettings {
        TurnSettings {
            connections_max: 4096,
            buffers: 1024,
            buffer_bytes: 4096,
            frame_body_bytes_max: protocol::BODY_BYTES_DEFAULT,
            stop_poll: Duration::from_millis(50),
            output_bytes_max: 1 << 20,
            input_bytes_max: 64 << 20,
            idle_timeout: Duration::from_secs(300),
            frame_timeout: Duration::from_secs(10),
            busy_poll: Duration::ZERO,
        }
    }
}

/// What the loop counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct TurnReport {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    /// Errors the turn itself sent (busy, timeout).
    pub errors_sent: u64,
    pub busy_sent: u64,
    pub timeouts_sent: u64,
    /// Turns that took completions, and the submission entries the loop submitted.
    pub turns: u64,
    pub submissions: u64,
    /// Receives that ended because the provided buffer ring was empty.
    pub buffer_shortages: u64,
    /// Connections open at the last tick.
    pub connections_open: u64,
}

const ACCEPT: u64 = 1;
const RECEIVE: u64 = 2;
const SEND: u64 = 3;
const CANCEL: u64 = 4;
const BELL: u64 = 5;
const BUFFER_GROUP: u16 = 0;
/// Most waiting connections refused in one go when out of file descriptors.
const REFUSE_BATCH_MAX: u64 = 256;
/// Pause before accepting again after a failed accept (EMFILE and friends leave the
/// connection queued, so an immediate retry would spin).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// How long stopping waits for the kernel to let go of the connections' buffers.
const STOP_DRAIN: Duration = Duration::from_millis(200);

fn user_data(kind: u64, slot: usize) -> u64 {
    kind | (slot as u64) << 8
}

/// The loop's state.
struct Turn {
    ring: IoUring,
    enter: ring::Enter,
    buffers: BufferRing,
    listener: RawFd,
    settings: TurnSettings,
    connections: Vec<Option<Connection>>,
    free: Vec<usize>,
    next_serial: u64,
    /// Bytes of connection inputs grown past their first size.
    input_bytes: usize,
    report: TurnReport,
    /// Connections a turn touched (reused across turns).
    touched: Vec<usize>,
    /// Connections whose receive ended and should be armed again at the end of the turn.
    rearm: Vec<usize>,
    accept_armed: bool,
    accept_again_at: Option<Instant>,
    /// A descriptor kept open to be given up when accept fails for want of descriptors, so the
    /// waiting connections can be accepted and told `busy` instead of hanging in the backlog.
    spare_fd: Option<std::fs::File>,
    accept_failures: crate::throttle::Throttled,
    now: Instant,
}

/// Runs the loop on `listener` (a bound, listening, blocking socket this call borrows) until
/// `stop` is set.
pub fn serve(
    listener: RawFd,
    settings: TurnSettings,
    stop: &AtomicBool,
    service: &mut impl Service,
) -> io::Result<TurnReport> {
    let entries = (settings.connections_max * 2)
        .next_power_of_two()
        .clamp(64, 32768) as u32;
    let (ring, _features) = ring::build(entries)?;
    let buffers = BufferRing::register(
        &ring.submitter(),
        BUFFER_GROUP,
        settings.buffers,
        settings.buffer_bytes,
    )?;
    // The doorbell's receive writes here: it outlives the ring (declared before `turn`).
    let mut bell_bytes = Box::new([0u8; 64]);
    let now = Instant::now();
    let enter = ring::Enter::register(&ring);
    let mut turn = Turn {
        ring,
        enter,
        buffers,
        listener,
        settings,
        connections: Vec::new(),
        free: Vec::new(),
        next_serial: 0,
        input_bytes: 0,
        report: TurnReport::default(),
        touched: Vec::new(),
        rearm: Vec::new(),
        accept_armed: false,
        accept_again_at: None,
        spare_fd: std::fs::File::open("/dev/null").ok(),
        accept_failures: Default::default(),
        now,
    };
    turn.arm_accept()?;
    let bell = service.bell();
    if let Some(fd) = bell {
        turn.arm_bell(fd, &mut bell_bytes)?;
    }
    let tick = (settings.idle_timeout.min(settings.frame_timeout) / 4)
        .clamp(Duration::from_millis(1), Duration::from_millis(50));
    let mut next_tick = now; // the first tick at once: `serving` is published as soon as the accept is armed
    let mut last_work = now;
    let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(entries as usize);
    let mut finished: Vec<(ConnectionId, Vec<u8>)> = Vec::new();
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        let polling = !settings.busy_poll.is_zero()
            && turn.now.duration_since(last_work) < settings.busy_poll;
        let entered = if polling {
            turn.poll_once()
        } else {
            let due = service.deadline().map_or(settings.stop_poll, |d| {
                d.saturating_duration_since(turn.now)
            });
            let wait = next_tick
                .saturating_duration_since(turn.now)
                .min(settings.stop_poll)
                .min(due);
            let queued = turn.ring.submission().len() as u32;
            turn.report.submissions += u64::from(queued);
            turn.enter.enter(queued, 1, Some(wait))
        };
        match entered {
            Ok(()) => {}
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(error) => break Err(error),
        }
        turn.now = Instant::now();
        completions.clear();
        completions.extend(
            turn.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        if !completions.is_empty() {
            last_work = turn.now;
            turn.report.turns += 1;
            service.begin_turn();
        }
        turn.touched.clear();
        let mut failure = None;
        for &(data, result, flags) in &completions {
            let slot = (data >> 8) as usize;
            let done = match data & 0xff {
                ACCEPT => turn.accepted(result, flags),
                RECEIVE => turn.received(slot, result, flags, service),
                SEND => turn.sent(slot, result),
                BELL => {
                    if result > 0 {
                        service.rung(&mut finished);
                        for (id, answer) in finished.drain(..) {
                            turn.resume(id, &answer, service);
                        }
                        turn.arm_bell(bell.expect("a bell was armed"), &mut bell_bytes)
                    } else {
                        Ok(()) // the other plane hung up: the server is stopping
                    }
                }
                _ => Ok(()),
            };
            if let Err(error) = done {
                failure = Some(error);
                break;
            }
        }
        if let Some(error) = failure {
            break Err(error);
        }
        if service.deadline().is_some_and(|due| due <= turn.now) {
            service.expire(turn.now, &mut finished);
            for (id, answer) in finished.drain(..) {
                turn.resume(id, &answer, service);
            }
        }
        if let Err(error) = turn.end_of_turn() {
            break Err(error);
        }
        if !completions.is_empty() {
            service.end_turn(turn.now);
        }
        if turn.now >= next_tick {
            if let Err(error) = turn.check_clocks() {
                break Err(error);
            }
            next_tick = turn.now + tick;
            turn.report.connections_open = turn.open_connections();
            service.tick(&turn.report);
        }
        turn.buffers.publish();
    };
    turn.report.connections_open = 0;
    let report = turn.report;
    service.tick(&report);
    turn.stop();
    result.map(|()| report)
}

impl Turn {
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        // Every entry pushed here refers to memory that outlives its completion: a connection's
        // `sending` buffer (kept until the send's completion), the buffer ring, the doorbell's
        // bytes (kept until the ring is gone), or nothing.
        // SAFETY: as above.
        unsafe {
            if self.ring.submission().push(entry).is_err() {
                self.ring.submit()?;
                self.ring
                    .submission()
                    .push(entry)
                    .map_err(|_| io::Error::other("submission queue full"))?;
            }
        }
        Ok(())
    }

    /// One look for work without sleeping: enters the kernel only when there is something to
    /// submit or the kernel flagged completions waiting to be posted (a zero-timeout wait would
    /// sleep anyway: the kernel arms a timer with tens of microseconds of slack).
    fn poll_once(&mut self) -> io::Result<()> {
        let mut submission = self.ring.submission();
        submission.sync();
        let queued = submission.len() as u32;
        let enter = queued > 0 || submission.taskrun() || submission.cq_overflow();
        drop(submission);
        if enter {
            self.report.submissions += u64::from(queued);
            // Nothing to wait for: runs the deferred completions and returns.
            self.enter.enter(queued, 0, None)?;
        } else {
            std::hint::spin_loop();
        }
        Ok(())
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let accept = opcode::AcceptMulti::new(types::Fd(self.listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(ACCEPT, 0));
        self.push(&accept)?;
        self.accept_armed = true;
        Ok(())
    }

    fn arm_bell(&mut self, fd: RawFd, bytes: &mut [u8; 64]) -> io::Result<()> {
        let receive = opcode::Recv::new(types::Fd(fd), bytes.as_mut_ptr(), bytes.len() as u32)
            .build()
            .user_data(user_data(BELL, 0));
        self.push(&receive)
    }

    fn accepted(&mut self, result: i32, flags: u32) -> io::Result<()> {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if result >= 0 {
            self.open(result)?;
        } else {
            let error = io::Error::from_raw_os_error(-result);
            let refused = match -result {
                libc::EMFILE | libc::ENFILE => self.refuse_without_descriptors(),
                _ => 0,
            };
            self.report.connections_refused += refused;
            self.accept_failures.log(|| {
                format!(
                    "accept failed: {error}; {refused} waiting connection(s) told busy; \
                     raise the open-files limit (ulimit -n, LimitNOFILE=) or lower \
                     connections_per_shard_max"
                )
            });
            if self.accept_armed {
                let cancel = opcode::AsyncCancel::new(user_data(ACCEPT, 0))
                    .build()
                    .user_data(user_data(CANCEL, 0));
                self.push(&cancel)?;
            }
            self.accept_again_at = Some(self.now + ACCEPT_BACKOFF);
            return Ok(());
        }
        if !self.accept_armed && self.accept_again_at.is_none() {
            self.arm_accept()?;
        }
        Ok(())
    }

    /// Takes a new connection, or tells it `busy` when the shard is full.
    fn open(&mut self, fd: RawFd) -> io::Result<()> {
        let open = self.connections.len() - self.free.len();
        if open >= self.settings.connections_max {
            self.report.connections_refused += 1;
            refuse(fd, "shard is at its connection limit");
            return Ok(());
        }
        self.report.connections_accepted += 1;
        set_nodelay(fd);
        let serial = self.next_serial;
        self.next_serial += 1;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.connections.push(None);
                self.connections.len() - 1
            }
        };
        self.connections[slot] = Some(Connection::new(fd, serial, self.now));
        self.arm_receive(slot)
    }

    /// Out of descriptors: gives up the spare one, and accepts and answers `busy` to the
    /// connections waiting in the backlog (at most [`REFUSE_BATCH_MAX`]), closing each; then
    /// takes the spare again. Returns how many were refused.
    fn refuse_without_descriptors(&mut self) -> u64 {
        let Some(spare) = self.spare_fd.take() else {
            return 0;
        };
        drop(spare);
        set_nonblocking(self.listener, true);
        let mut refused = 0;
        while refused < REFUSE_BATCH_MAX {
            // SAFETY: accept4 on the shard's listening socket; no address is asked for.
            let fd = unsafe {
                libc::accept4(
                    self.listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                break;
            }
            refuse(fd, "the server is out of file descriptors");
            refused += 1;
        }
        set_nonblocking(self.listener, false);
        self.spare_fd = std::fs::File::open("/dev/null").ok();
        refused
    }

    fn arm_receive(&mut self, slot: usize) -> io::Result<()> {
        let connection = self.connections[slot].as_mut().expect("open");
        let receive = opcode::RecvMulti::new(types::Fd(connection.fd), BUFFER_GROUP)
            .build()
            .user_data(user_data(RECEIVE, slot));
        connection.receive_armed = true;
        self.push(&receive)
    }

    fn received(
        &mut self,
        slot: usize,
        result: i32,
        flags: u32,
        service: &mut impl Service,
    ) -> io::Result<()> {
        let Some(Some(connection)) = self.connections.get_mut(slot) else {
            if let Some(id) = cqueue::buffer_select(flags) {
                self.buffers.recycle(id);
            }
            return Ok(());
        };
        if !cqueue::more(flags) {
            connection.receive_armed = false;
        }
        if let Some(id) = cqueue::buffer_select(flags) {
            if result > 0 && !connection.closing {
                let bytes = self.buffers.buffer(id, result as usize);
                connection.last_input = self.now;
                let id_of = ConnectionId {
                    slot,
                    serial: connection.serial,
                };
                take_input(connection, id_of, bytes, self.now, service);
            }
            self.buffers.recycle(id);
        }
        if result == -libc::ENOBUFS {
            self.report.buffer_shortages += 1;
        }
        if result == 0 || (result < 0 && !matches!(-result, libc::ENOBUFS | libc::ECANCELED)) {
            connection.closing = true; // end of stream, or an error such as a reset
        }
        if result > 0 {
            self.budget(slot);
        }
        let connection = self.connections[slot].as_mut().expect("open");
        if connection.held_back(self.settings.output_bytes_max) && !connection.paused {
            connection.paused = true;
            if connection.receive_armed {
                let cancel = opcode::AsyncCancel::new(user_data(RECEIVE, slot))
                    .build()
                    .user_data(user_data(CANCEL, slot));
                self.push(&cancel)?;
            }
        }
        let connection = self.connections[slot].as_mut().expect("open");
        if !connection.receive_armed && !connection.closing && !connection.paused {
            self.rearm.push(slot);
        }
        self.touched.push(slot);
        Ok(())
    }

    /// Sizes the connection's input for the frame pending in it, charging the shard's input
    /// budget; past the budget the connection gets `busy` and is closed.
    fn budget(&mut self, slot: usize) {
        let settings = self.settings;
        let connection = self.connections[slot].as_mut().expect("open");
        if let Some(frame) = connection.pending_frame_bytes(settings.frame_body_bytes_max) {
            // Room for the frame and for one more buffer's bytes beyond it, so the copy that
            // completes the frame never makes the vector double.
            let wanted = frame + settings.buffer_bytes as usize;
            if frame > INPUT_BYTES_INITIAL && connection.input.capacity() < wanted {
                let more = wanted - INPUT_BYTES_INITIAL - connection.charged;
                if self.input_bytes + more > settings.input_bytes_max {
                    let message = "the server is short of memory for large frames; try again";
                    protocol::put_error_frame(&mut connection.output, 0, ErrorCode::Busy, message);
                    self.report.errors_sent += 1;
                    self.report.busy_sent += 1;
                    connection.closing = true;
                    connection.input = Vec::new();
                } else {
                    connection
                        .input
                        .reserve_exact(wanted - connection.input.len());
                }
            }
        }
        if connection.input.len() <= INPUT_BYTES_INITIAL
            && connection.input.capacity() > INPUT_BYTES_INITIAL
        {
            connection.input.shrink_to(INPUT_BYTES_INITIAL);
        }
        let charged = connection
            .input
            .capacity()
            .saturating_sub(INPUT_BYTES_INITIAL);
        self.input_bytes = self.input_bytes + charged - connection.charged;
        connection.charged = charged;
    }

    fn sent(&mut self, slot: usize, result: i32) -> io::Result<()> {
        let Some(Some(connection)) = self.connections.get_mut(slot) else {
            return Ok(());
        };
        if result < 0 {
            connection.closing = true;
            connection.sending.clear();
            connection.sent = 0;
        } else {
            connection.sent += result as usize;
            connection.last_output = self.now;
            if connection.sent < connection.sending.len() {
                // A short send: the rest goes before anything newer.
                return self.push_send(slot);
            }
            connection.sending.clear();
            connection.sent = 0;
            if connection.sending.capacity() > 1 << 20 {
                connection.sending = Vec::new(); // a large batch's answers: give the memory back
            }
        }
        if connection.paused && !connection.held_back(self.settings.output_bytes_max) {
            connection.paused = false;
            if !connection.receive_armed && !connection.closing {
                self.rearm.push(slot);
            }
        }
        self.touched.push(slot);
        Ok(())
    }

    /// A wait ended: its answer goes out, then the frames held behind it are answered.
    fn resume(&mut self, id: ConnectionId, answer: &[u8], service: &mut impl Service) {
        let Some(Some(connection)) = self.connections.get_mut(id.slot) else {
            return;
        };
        if connection.serial != id.serial || !connection.waiting {
            return; // the connection has gone; its slot serves another
        }
        connection.waiting = false;
        connection.output.extend_from_slice(answer);
        if !connection.closing {
            let input = std::mem::take(&mut connection.input);
            take_input(connection, id, &input, self.now, service);
            if connection.input.is_empty() {
                connection.input = input;
                connection.input.clear();
            }
        }
        let slot = id.slot;
        self.budget(slot);
        let connection = self.connections[slot].as_mut().expect("open");
        if connection.paused && !connection.held_back(self.settings.output_bytes_max) {
            connection.paused = false;
            if !connection.receive_armed && !connection.closing {
                self.rearm.push(slot);
            }
        }
        self.touched.push(slot);
    }

    fn push_send(&mut self, slot: usize) -> io::Result<()> {
        let connection = self.connections[slot].as_ref().expect("open");
        let rest = &connection.sending[connection.sent..];
        let send = opcode::Send::new(types::Fd(connection.fd), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(SEND, slot));
        self.push(&send)
    }

    /// One send per connection per turn, with every answer the turn produced for it; receives
    /// re-armed; connections that are done closed.
    fn end_of_turn(&mut self) -> io::Result<()> {
        let mut rearm = std::mem::take(&mut self.rearm);
        for &slot in &rearm {
            if let Some(Some(connection)) = self.connections.get(slot) {
                if !connection.receive_armed && !connection.closing && !connection.paused {
                    self.arm_receive(slot)?;
                }
            }
        }
        rearm.clear();
        self.rearm = rearm;
        let touched = std::mem::take(&mut self.touched);
        for &slot in &touched {
            let Some(Some(connection)) = self.connections.get_mut(slot) else {
                continue;
            };
            if connection.sending.is_empty() && !connection.output.is_empty() {
                std::mem::swap(&mut connection.sending, &mut connection.output);
                self.push_send(slot)?;
            }
            self.close_if_done(slot);
        }
        self.touched = touched;
        Ok(())
    }

    fn close_if_done(&mut self, slot: usize) {
        let Some(Some(connection)) = self.connections.get_mut(slot) else {
            return;
        };
        if !connection.closing || !connection.output.is_empty() {
            return;
        }
        if connection.receive_armed {
            // Ends the multishot receive (its last completion comes back) and leaves the
            // sending side open for the answers still going out.
            // SAFETY: shutdown on the connection's own open descriptor.
            unsafe { libc::shutdown(connection.fd, libc::SHUT_RD) };
        }
        if connection.idle() {
            // SAFETY: nothing in flight refers to the descriptor any more.
            unsafe { libc::close(connection.fd) };
            self.input_bytes -= connection.charged;
            self.connections[slot] = None;
            self.free.push(slot);
        }
    }

    /// The clocks: idle and slow connections, and an accept waiting to be armed again.
    fn open_connections(&self) -> u64 {
        self.connections.iter().filter(|c| c.is_some()).count() as u64
    }

    fn check_clocks(&mut self) -> io::Result<()> {
        if self.accept_again_at.is_some_and(|at| at <= self.now) {
            self.accept_again_at = None;
            if !self.accept_armed {
                self.arm_accept()?;
            }
        }
        let settings = self.settings;
        for slot in 0..self.connections.len() {
            let Some(connection) = self.connections[slot].as_mut() else {
                continue;
            };
            if connection.closing || connection.waiting {
                continue;
            }
            let progress = connection.last_input.max(connection.last_output);
            if connection.unsent() > 0 && self.now.duration_since(progress) >= settings.idle_timeout
            {
                // Answers the client has not taken for the whole idle timeout: it stopped
                // reading. Shutting the socket down ends the send that waits for it.
                connection.closing = true;
                connection.output.clear();
                // SAFETY: shutdown on the connection's own open descriptor.
                unsafe { libc::shutdown(connection.fd, libc::SHUT_RDWR) };
                self.touched.push(slot);
                continue;
            }
            match connection.frame_started {
                Some(started) if self.now.duration_since(started) >= settings.frame_timeout => {
                    let message = format!(
                        "a frame must arrive whole within {} ms of its first byte",
                        settings.frame_timeout.as_millis()
                    );
                    protocol::put_error_frame(
                        &mut connection.output,
                        0,
                        ErrorCode::Timeout,
                        &message,
                    );
                    self.report.errors_sent += 1;
                    self.report.timeouts_sent += 1;
                    connection.closing = true;
                }
                None if connection.unsent() == 0
                    && self.now.duration_since(connection.last_input) >= settings.idle_timeout =>
                {
                    connection.closing = true; // idle: closed without a word, as documented
                }
                _ => continue,
            }
            self.touched.push(slot);
        }
        self.end_of_turn()
    }

    /// Stopping: every connection is shut down, the kernel is given a moment to hand back
    /// what it holds of theirs, then they are closed and the ring goes.
    fn stop(mut self) {
        for connection in self.connections.iter().flatten() {
            // SAFETY: shutdown on an open descriptor of ours.
            unsafe { libc::shutdown(connection.fd, libc::SHUT_RDWR) };
        }
        let deadline = Instant::now() + STOP_DRAIN;
        while Instant::now() < deadline
            && self
                .connections
                .iter()
                .flatten()
                .any(|connection| !connection.idle())
        {
            let timeout = types::Timespec::from(Duration::from_millis(10));
            let args = types::SubmitArgs::new().timespec(&timeout);
            if let Err(error) = self.ring.submitter().submit_with_args(1, &args) {
                if !matches!(error.raw_os_error(), Some(libc::ETIME | libc::EINTR)) {
                    break;
                }
            }
            let completions: Vec<_> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.flags()))
                .collect();
            for (data, flags) in completions {
                let slot = (data >> 8) as usize;
                if let Some(id) = cqueue::buffer_select(flags) {
                    self.buffers.recycle(id);
                }
                let Some(Some(connection)) = self.connections.get_mut(slot) else {
                    continue;
                };
                match data & 0xff {
                    RECEIVE if !cqueue::more(flags) => connection.receive_armed = false,
                    SEND => connection.sending.clear(),
                    _ => {}
                }
            }
        }
        let Turn {
            ring,
            buffers,
            connections,
            ..
        } = self;
        drop(ring); // cancels what is still in flight before the buffers and connections go
        for connection in connections.into_iter().flatten() {
            // SAFETY: the ring is gone; the descriptors are ours.
            unsafe { libc::close(connection.fd) };
        }
        drop(buffers);
    }
}

/// Hands received bytes to the service: straight from `bytes` when nothing is pending (the
/// common case: no copy), else after what is pending; keeps what is not yet a whole frame.
fn take_input(
    connection: &mut Connection,
    id: ConnectionId,
    bytes: &[u8],
    now: Instant,
    service: &mut impl Service,
) {
    if connection.waiting {
        connection.input.extend_from_slice(bytes);
        return;
    }
    let (consumed, step) = if connection.input.is_empty() {
        let (consumed, step) = service.answer(id, bytes, &mut connection.output);
        connection.input.extend_from_slice(&bytes[consumed..]);
        (consumed, step)
    } else {
        connection.input.extend_from_slice(bytes);
        let (consumed, step) = service.answer(id, &connection.input, &mut connection.output);
        connection.input.drain(..consumed);
        (consumed, step)
    };
    match step {
        Step::More => {}
        Step::Close => {
            connection.closing = true;
            connection.input.clear();
        }
        Step::Wait => connection.waiting = true,
    }
    connection.frame_started = match (connection.input.is_empty(), consumed) {
        (true, _) => None,
        _ if connection.waiting => None,
        // Something of a new frame is pending: its clock starts now.
        (false, 1..) => Some(now),
        (false, 0) => connection.frame_started.or(Some(now)),
    };
}
