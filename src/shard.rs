//! One shard: a thread pinned to one CPU, with its own io_uring, its own listener, its own
//! connections and its own counters, answering the verify protocol in the turn loop
//! (`dataplane/turn.rs`). The verify path here takes no lock and does no cross-core atomic
//! RMW: it reads the shared mapped table and writes only shard-local state.
//!
//! Between turns, when its doorbell rang, the shard applies what the control plane sent
//! (deltas, snapshot switches), acknowledges each, and answers the self-service revocations
//! that finished.

use std::collections::HashMap;
use std::os::unix::io::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::credential::{self, KeyId};
use crate::dataplane::connection::ConnectionId;
use crate::dataplane::turn::{self, Service, Step, TurnReport, TurnSettings};
use crate::delta::Delta;
use crate::link::{
    self, Applied, RevocationAnswer, RevocationRequest, ShardLink, ShardMessage, Shutdown,
};
use crate::metrics::{Board, ShardMetrics};
use crate::overlay::{Overlay, TableView};
use crate::protocol::{self, ErrorCode, Request, RequestKind, Status};
use crate::record::UnixSeconds;
use crate::snapshot::Snapshot;
use crate::usage::{Outcome, Tallies, REPORT_INTERVAL};
use crate::verify::{self, Verdict, Verifier};

/// Requests of one receive decoded ahead of answering, so their table entries can be
/// prefetched together (see `prefetch`).
const DECODED_AHEAD_MAX: usize = 16;
/// Most self-service revocations one shard has waiting at once (below the link queues'
/// capacity); past it a REVOKE_SELF is answered `busy`.
const REVOCATIONS_WAITING_MAX: usize = 256;
const _: () = assert!(REVOCATIONS_WAITING_MAX < link::SHARD_CHANNEL_CAPACITY);
/// Most items of one VERIFY_BATCH whose table entries are prefetched together.
const PREFETCH_ITEMS_MAX: usize = 64;

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
    /// Bytes of connection inputs grown past their first size the shard may hold at once.
    pub frame_buffer_bytes_max: usize,
    /// Provided receive buffers of the shard's ring, and the size of each.
    pub receive_buffers: u16,
    pub receive_buffer_bytes: u32,
    /// Unsent answers one connection may hold before it is no longer read.
    pub output_bytes_max: usize,
    /// How long a shard keeps looking for work before it sleeps in the kernel.
    pub busy_poll: Duration,
    /// How long a VERIFY_AT may wait for the sequence it asks for before it is answered
    /// `stale`.
    pub verify_at_wait: Duration,
}

/// VERIFY_ATs waiting in one shard at most; past it a VERIFY_AT this shard is not yet at is
/// answered `stale` at once.
const PARKED_MAX: usize = 4096;

/// A VERIFY_AT waiting for a sequence this shard has not applied yet.
struct Parked {
    connection: ConnectionId,
    request_id: u32,
    sequence: u64,
    /// The VERIFY body, copied (the receive buffer it came in is reused).
    body: Vec<u8>,
    deadline: Instant,
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

/// What one shard starts from.
pub struct ShardStart {
    pub index: usize,
    /// Where the shard leaves its counters for the metrics exporter.
    pub board: Arc<Board>,
    /// A bound, listening, blocking socket for the verify port.
    pub listener_fd: RawFd,
    pub snapshot: Arc<Snapshot>,
    /// Deltas logged after the snapshot, replayed into the overlay before serving.
    pub replayed: Arc<Vec<Arc<Delta>>>,
    pub link: ShardLink,
}

/// The shard's service: its view of the table and what answering needs.
struct Shard {
    snapshot: Arc<Snapshot>,
    overlay: Overlay,
    verifier: Arc<Verifier>,
    settings: ShardSettings,
    link: ShardLink,
    /// Self-service revocations waiting for the control plane: ticket → (connection, request).
    waiting: HashMap<u64, (ConnectionId, u32)>,
    next_ticket: u64,
    now: UnixSeconds,
    by_status: [u64; Status::ALL.len()],
    errors_sent: u64,
    index: usize,
    board: Arc<Board>,
    metrics: ShardMetrics,
    /// Requests answered in the current turn (for the service-time histogram).
    answered_in_turn: u64,
    /// Per-key usage since the last report, and when that was.
    tallies: Tallies,
    reported: Instant,
    /// VERIFY_ATs waiting for a sequence, in arrival order (so by deadline too).
    parked: Vec<Parked>,
    /// Replicated mode, read at each turn: the change stream has been silent past
    /// `max_staleness_ms`, so `valid` is answered `stale`.
    fail_closed: bool,
}

/// Serves on the calling thread (pinned by the caller) until `shutdown`; returns the counters.
pub fn serve(
    start: ShardStart,
    verifier: Arc<Verifier>,
    settings: ShardSettings,
    shutdown: Shutdown,
) -> std::io::Result<ShardReport> {
    let ShardStart {
        index,
        board,
        listener_fd,
        snapshot,
        replayed,
        link,
    } = start;
    let mut overlay = Overlay::with_capacity(snapshot.header().sequence, settings.overlay_records);
    for delta in replayed.iter() {
        overlay.apply(delta);
    }
    let turn_settings = TurnSettings {
        connections_max: settings.connections_max,
        buffers: settings.receive_buffers,
        buffer_bytes: settings.receive_buffer_bytes,
        frame_body_bytes_max: settings.frame_body_bytes_max,
        stop_poll: Duration::from_millis(50),
        output_bytes_max: settings.output_bytes_max,
        input_bytes_max: settings.frame_buffer_bytes_max,
        idle_timeout: settings.idle_timeout,
        frame_timeout: settings.frame_timeout,
        busy_poll: settings.busy_poll,
    };
    let mut shard = Shard {
        snapshot,
        overlay,
        verifier,
        settings,
        link,
        waiting: HashMap::new(),
        next_ticket: 0,
        now: UnixSeconds::now(),
        by_status: [0; Status::ALL.len()],
        errors_sent: 0,
        index,
        board,
        metrics: ShardMetrics::default(),
        answered_in_turn: 0,
        tallies: Tallies::default(),
        reported: Instant::now(),
        parked: Vec::new(),
        fail_closed: false,
    };
    let stop = shutdown.flag();
    debug_start_delay(index);
    let result = turn::serve(listener_fd, turn_settings, &stop, &mut shard);
    // SAFETY: the listener was handed to this shard alone; the turn is done with it.
    unsafe { libc::close(listener_fd) };
    let report = result?;
    Ok(ShardReport {
        shard: index,
        connections_accepted: report.connections_accepted,
        connections_refused: report.connections_refused,
        by_status: shard.by_status,
        errors_sent: shard.errors_sent + report.errors_sent,
    })
}

/// Test hook, debug builds only: shard 0 waits `KEYWARD_DEBUG_SHARD_START_DELAY_MS` before
/// it starts serving, so a test can see `/readyz` report a shard that is not serving yet.
fn debug_start_delay(index: usize) {
    #[cfg(debug_assertions)]
    if index == 0 {
        if let Some(ms) = std::env::var("KEYWARD_DEBUG_SHARD_START_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(Duration::from_millis(ms.min(60_000)));
        }
    }
    let _ = index;
}

impl Service for Shard {
    fn answer(
        &mut self,
        connection: ConnectionId,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> (usize, Step) {
        let body_bytes_max = self.settings.frame_body_bytes_max;
        let mut consumed = 0;
        loop {
            // Decode once, ahead of answering: up to DECODED_AHEAD_MAX requests, stopping after a
            // REVOKE_SELF (which may make the connection wait).
            let mut decoded: [Option<Request<'_>>; DECODED_AHEAD_MAX] =
                std::array::from_fn(|_| None);
            let mut count = 0;
            let mut end = consumed;
            let mut last = None;
            while count < DECODED_AHEAD_MAX {
                match protocol::decode_request(&bytes[end..], body_bytes_max) {
                    Ok(Some(request)) => {
                        end += request.bytes;
                        let revoke = matches!(request.kind, Ok(RequestKind::RevokeSelf(_)));
                        decoded[count] = Some(request);
                        count += 1;
                        if revoke {
                            break;
                        }
                    }
                    Ok(None) => {
                        last = Some(Ok(()));
                        break;
                    }
                    Err(error) => {
                        last = Some(Err(error));
                        break;
                    }
                }
            }
            if count > 1 {
                self.prefetch(&decoded[..count]);
            }
            for request in decoded.iter_mut().take(count) {
                let request = request.take().expect("decoded");
                consumed += request.bytes;
                if self.answer_one(connection, request, out) == Step::Wait {
                    return (consumed, Step::Wait);
                }
            }
            match last {
                Some(Ok(())) => return (consumed, Step::More),
                Some(Err(error)) => {
                    self.error(out, 0, error.code(), &error.to_string());
                    return (consumed, Step::Close);
                }
                None => {} // more decoded requests may follow
            }
        }
    }

    fn bell(&self) -> Option<RawFd> {
        Some(self.link.bell_fd())
    }

    fn rung(&mut self, finished: &mut Vec<(ConnectionId, Vec<u8>)>) {
        let mut applied_any = false;
        while let Some(message) = self.link.queues.to_shard.pop() {
            self.apply(message);
            link::push(&self.link.queues.acks, Applied(self.overlay.sequence()));
            applied_any = true;
        }
        if applied_any {
            self.link.ring();
            let applied = self.overlay.sequence();
            self.release_parked(finished, |parked| parked.sequence <= applied);
        }
        while let Some(RevocationAnswer { ticket, done }) = self.link.queues.revoked.pop() {
            let Some((connection, request_id)) = self.waiting.remove(&ticket) else {
                continue;
            };
            let mut answer = Vec::new();
            if done {
                protocol::put_revoke_self_result_frame(&mut answer, request_id, Status::Revoked);
            } else {
                let message = "the control plane could not revoke the key; try again";
                protocol::put_error_frame(&mut answer, request_id, ErrorCode::Unavailable, message);
                self.errors_sent += 1;
                self.metrics.count_error(ErrorCode::Unavailable);
            }
            finished.push((connection, answer));
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.parked.first().map(|parked| parked.deadline)
    }

    fn expire(&mut self, now: Instant, finished: &mut Vec<(ConnectionId, Vec<u8>)>) {
        self.release_parked(finished, |parked| parked.deadline <= now);
    }

    fn begin_turn(&mut self) {
        self.now = UnixSeconds::now();
        self.fail_closed = self
            .board
            .fail_closed
            .load(std::sync::atomic::Ordering::Relaxed);
    }

    fn end_turn(&mut self, started: Instant) {
        if self.answered_in_turn > 0 {
            let seconds = started.elapsed().as_secs_f64();
            let answered = std::mem::take(&mut self.answered_in_turn);
            self.metrics.service_seconds.observe_many(seconds, answered);
        }
    }

    fn tick(&mut self, report: &TurnReport) {
        let metrics = &mut self.metrics;
        metrics.serving = true;
        metrics.ticks += 1;
        metrics.connections_accepted = report.connections_accepted;
        metrics.connections_refused = report.connections_refused;
        metrics.connections_open = report.connections_open;
        metrics.turns = report.turns;
        metrics.submissions = report.submissions;
        metrics.buffer_shortages = report.buffer_shortages;
        metrics.applied_sequence = self.overlay.sequence();
        let mut published = metrics.clone();
        // The loop's own errors (busy, timeout) are counted in its report.
        published.count_errors(ErrorCode::Busy, report.busy_sent);
        published.count_errors(ErrorCode::Timeout, report.timeouts_sent);
        self.board.publish_shard(self.index, &published);
        self.report_usage();
    }
}

/// Counts a verify for its key's usage, when the key's secret matched (a token's counts for
/// its parent key), with the security events among the refusals.
fn tally(tallies: &mut Tallies, verdict: &Verdict<'_>) {
    let Some(record) = &verdict.record else {
        return;
    };
    let outcome = match verdict.status {
        Status::Valid => Outcome::Valid,
        Status::Revoked => Outcome::Revoked,
        Status::AddressDenied => Outcome::AddressDenied,
        Status::TenantMismatch => Outcome::TenantMismatch,
        _ => Outcome::Refused,
    };
    tallies.count(record.id().0, outcome);
}

/// Fails closed: while the change stream has been silent past `max_staleness_ms`, a `valid`
/// verdict is answered `stale` (every other verdict stands).
#[inline]
fn closed(fail_closed: bool, mut verdict: Verdict<'_>) -> Verdict<'_> {
    if fail_closed && verdict.status == Status::Valid {
        verdict.status = Status::Stale;
    }
    verdict
}

/// [`crate::metrics::OPERATIONS`] indices.
const OPERATION_PING: usize = 0;
const OPERATION_VERIFY: usize = 1;
const OPERATION_VERIFY_BATCH: usize = 2;
const OPERATION_DERIVE: usize = 3;
const OPERATION_REVOKE_SELF: usize = 4;
const OPERATION_VERIFY_AT: usize = 5;
const OPERATION_UNKNOWN: usize = 6;

impl Shard {
    /// Hands the usage tallies to the control plane, at most once per [`REPORT_INTERVAL`]. A
    /// full queue (the control plane is behind) leaves them here to grow until the next try.
    fn report_usage(&mut self) {
        if self.tallies.is_empty() || self.reported.elapsed() < REPORT_INTERVAL {
            return;
        }
        self.reported = Instant::now();
        // Only this shard pushes onto its queue: room now is room for the push.
        if !self.link.queues.usage.is_full() {
            let report = self.tallies.take(UnixSeconds::now().0);
            link::push(&self.link.queues.usage, report);
            self.link.ring();
        }
    }

    /// Answers a VERIFY_AT at the sequence this shard has applied.
    fn verify_at(
        &mut self,
        out: &mut Vec<u8>,
        request_id: u32,
        verify: &protocol::VerifyRequest<'_>,
    ) {
        let table = TableView {
            snapshot: &self.snapshot,
            overlay: &self.overlay,
        };
        let verdict = closed(
            self.fail_closed,
            self.verifier.verify(&table, verify, self.now),
        );
        self.by_status[verdict.status as usize] += 1;
        self.metrics.count_verify(verdict.status, verdict.kind);
        tally(&mut self.tallies, &verdict);
        let start = protocol::begin_frame(out, protocol::opcode::VERIFY_AT_RESULT, request_id);
        out.extend_from_slice(&self.overlay.sequence().to_le_bytes());
        verify::put_verdict(out, &verdict);
        protocol::end_frame(out, start);
    }

    /// Answers a VERIFY_AT `stale`: this shard has not applied the sequence asked for.
    fn stale(&mut self, out: &mut Vec<u8>, request_id: u32) {
        self.by_status[Status::Stale as usize] += 1;
        let start = protocol::begin_frame(out, protocol::opcode::VERIFY_AT_RESULT, request_id);
        out.extend_from_slice(&self.overlay.sequence().to_le_bytes());
        out.push(Status::Stale as u8);
        protocol::end_frame(out, start);
    }

    /// Answers the parked VERIFY_ATs `release` picks: at the sequence now applied when they
    /// reached it, else `stale`.
    fn release_parked(
        &mut self,
        finished: &mut Vec<(ConnectionId, Vec<u8>)>,
        release: impl Fn(&Parked) -> bool,
    ) {
        if self.parked.is_empty() {
            return;
        }
        let applied = self.overlay.sequence();
        let (due, waiting): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(release);
        self.parked = waiting;
        for parked in due {
            let mut answer = Vec::new();
            match protocol::parse_verify(&parked.body) {
                Ok(verify) if applied >= parked.sequence => {
                    self.now = UnixSeconds::now();
                    self.verify_at(&mut answer, parked.request_id, &verify)
                }
                _ => self.stale(&mut answer, parked.request_id),
            }
            finished.push((parked.connection, answer));
        }
    }

    /// Applies one message from the control plane, in order, on this core.
    fn apply(&mut self, message: ShardMessage) {
        match message {
            ShardMessage::Apply(delta) => self.overlay.apply(&delta),
            ShardMessage::Switch(snapshot) => {
                let included = snapshot.header().sequence;
                assert!(
                    included <= self.overlay.sequence(),
                    "a shard switches only to a snapshot it has applied every delta of"
                );
                self.snapshot = snapshot;
                self.overlay.drop_through(included);
            }
        }
    }

    /// Starts loading the table entries the decoded VERIFYs will need, so the cache misses of
    /// several lookups overlap instead of following one another: first every hash slot, then
    /// (slots cached by then) every record, then (records cached) every scope list. With 16
    /// requests per read on a 100 000-key table the slot and record misses were four fifths of
    /// `Verifier::verify`'s own time, and the scope list's miss was most of encoding a valid
    /// answer. Only a hint.
    fn prefetch(&self, decoded: &[Option<Request<'_>>]) {
        let ids = decoded.iter().filter_map(|request| match request {
            Some(Request {
                kind: Ok(RequestKind::Verify(verify)),
                ..
            }) => credential::peek_key_id(verify.credential),
            _ => None,
        });
        self.prefetch_ids(ids);
    }

    fn prefetch_ids(&self, ids: impl Iterator<Item = KeyId> + Clone) {
        for id in ids.clone() {
            self.snapshot.prefetch_slot(id);
        }
        for id in ids.clone() {
            self.snapshot.prefetch_record(id);
        }
        for id in ids {
            self.snapshot.prefetch_scopes(id);
            // Last: the usage slot is needed only after the verify, so it must not delay the
            // lookups' own lines.
            self.tallies.prefetch(id.0);
        }
    }

    /// Answers one request; `Step::Wait` when it went to the control plane.
    fn answer_one(
        &mut self,
        connection: ConnectionId,
        request: Request<'_>,
        out: &mut Vec<u8>,
    ) -> Step {
        let request_id = request.request_id;
        self.answered_in_turn += 1;
        let kind = match request.kind {
            Ok(kind) => kind,
            Err(error) => {
                self.bad_body(out, request_id, error);
                return Step::More;
            }
        };
        let table = TableView {
            snapshot: &self.snapshot,
            overlay: &self.overlay,
        };
        match kind {
            RequestKind::Ping => {
                self.metrics.requests[OPERATION_PING] += 1;
                protocol::put_pong_frame(out, request_id)
            }
            RequestKind::Verify(verify) => {
                self.metrics.requests[OPERATION_VERIFY] += 1;
                let verdict = closed(
                    self.fail_closed,
                    self.verifier.verify(&table, &verify, self.now),
                );
                self.by_status[verdict.status as usize] += 1;
                self.metrics.count_verify(verdict.status, verdict.kind);
                tally(&mut self.tallies, &verdict);
                verify::put_verdict_frame(out, request_id, &verdict);
            }
            RequestKind::VerifyBatch(items, count) => {
                self.prefetch_ids(items.clone().take(PREFETCH_ITEMS_MAX).filter_map(|item| {
                    item.ok()
                        .and_then(|r| credential::peek_key_id(r.credential))
                }));
                self.metrics.requests[OPERATION_VERIFY_BATCH] += 1;
                let mut items = items;
                let verifier = &self.verifier;
                let now = self.now;
                let by_status = &mut self.by_status;
                let metrics = &mut self.metrics;
                let tallies = &mut self.tallies;
                let fail_closed = self.fail_closed;
                verify::put_batch_frame(out, request_id, count, || {
                    let item = items.next().expect("checked count").expect("checked item");
                    let verdict = closed(fail_closed, verifier.verify(&table, &item, now));
                    by_status[verdict.status as usize] += 1;
                    metrics.count_verify(verdict.status, verdict.kind);
                    tally(tallies, &verdict);
                    verdict
                });
            }
            RequestKind::Derive(derive) => {
                self.metrics.requests[OPERATION_DERIVE] += 1;
                let result = self.verifier.derive(
                    &table,
                    &derive,
                    self.now,
                    self.settings.token_ttl_max_seconds,
                );
                protocol::put_derive_result_frame(out, request_id, &result);
            }
            RequestKind::RevokeSelf(revoke) => {
                self.metrics.requests[OPERATION_REVOKE_SELF] += 1;
                return self.revoke_self(connection, request_id, &revoke, out);
            }
            RequestKind::VerifyAt(sequence, verify) => {
                self.metrics.requests[OPERATION_VERIFY_AT] += 1;
                let applied = self.overlay.sequence();
                if applied >= sequence {
                    self.verify_at(out, request_id, &verify);
                } else if self.settings.verify_at_wait.is_zero() || self.parked.len() >= PARKED_MAX
                {
                    self.stale(out, request_id);
                } else {
                    let mut body = Vec::with_capacity(64);
                    protocol::put_verify(&mut body, &verify);
                    self.parked.push(Parked {
                        connection,
                        request_id,
                        sequence,
                        body,
                        deadline: Instant::now() + self.settings.verify_at_wait,
                    });
                    return Step::Wait;
                }
            }
            RequestKind::Unknown(opcode) => {
                self.metrics.requests[OPERATION_UNKNOWN] += 1;
                let message = format!("unknown opcode {opcode:#04x}");
                self.error(out, request_id, ErrorCode::UnknownOpcode, &message);
            }
        }
        Step::More
    }

    /// Self-service revocation: whoever presents a key may revoke it. The secret is checked
    /// here; the revocation itself goes through the control plane like an admin's, and the
    /// connection waits (answers stay in request order) until it is durable and applied on
    /// every shard.
    fn revoke_self(
        &mut self,
        connection: ConnectionId,
        request_id: u32,
        request: &protocol::VerifyRequest<'_>,
        out: &mut Vec<u8>,
    ) -> Step {
        let table = TableView {
            snapshot: &self.snapshot,
            overlay: &self.overlay,
        };
        let plain = protocol::VerifyRequest {
            credential: request.credential,
            ..Default::default()
        };
        let verdict = self.verifier.verify(&table, &plain, self.now);
        if verdict.token.is_some() {
            let message =
                "a token cannot be revoked by itself: revoke its parent key, or let it expire";
            self.error(out, request_id, ErrorCode::BadBody, message);
            return Step::More;
        }
        match (verdict.status, verdict.record.map(|r| r.id())) {
            (Status::Revoked, Some(_)) => {
                protocol::put_revoke_self_result_frame(out, request_id, Status::Revoked)
            }
            (_, Some(_)) if self.waiting.len() >= REVOCATIONS_WAITING_MAX => {
                let message = "too many self-service revocations in progress; try again";
                self.error(out, request_id, ErrorCode::Busy, message);
            }
            (_, Some(key)) => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.waiting.insert(ticket, (connection, request_id));
                link::push(
                    &self.link.queues.revocations,
                    RevocationRequest { ticket, key },
                );
                self.link.ring();
                return Step::Wait;
            }
            (status, None) => protocol::put_revoke_self_result_frame(out, request_id, status),
        }
        Step::More
    }

    fn bad_body(&mut self, out: &mut Vec<u8>, request_id: u32, error: protocol::BodyError) {
        self.error(out, request_id, ErrorCode::BadBody, &error.to_string());
    }

    /// Sends an ERROR frame, counted.
    fn error(&mut self, out: &mut Vec<u8>, request_id: u32, code: ErrorCode, message: &str) {
        protocol::put_error_frame(out, request_id, code, message);
        self.errors_sent += 1;
        self.metrics.count_error(code);
    }
}
