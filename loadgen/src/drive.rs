//! The client threads. Each owns some connections (non-blocking sockets it polls itself) and
//! keeps them busy in one of two ways:
//!
//! - closed loop: every connection always has `depth` requests in flight; an answer makes room
//!   for the next request at once (or, with `refill_whole`, the next `depth` requests go out
//!   together once all answers are in, as redis-benchmark's `-P` does). Latency runs from the
//!   request's write.
//! - open loop: requests are due on a fixed schedule ([`Schedule`]) whatever the server does.
//!   A due request goes to the next connection with fewer than `depth` in flight; when none has
//!   room it waits, and its latency still runs from the moment it was due. A server that falls
//!   behind therefore shows its backlog in the latencies instead of slowing the client down
//!   (no coordinated omission).
//!
//! Requests due (open loop) or written (closed loop) during the warm-up are sent and checked
//! but their latencies are not recorded; throughput counts the answers that arrive inside the
//! measured window. After the window the thread stops sending and waits up to [`DRAIN`] for
//! the answers still owed, whose latencies are recorded like any other.

use keyward::endpoint::{Endpoint, Stream};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use keyward_loadgen::wire::{self, Protocol, Tally};
use keyward_loadgen::workload::Requests;

/// Latencies above this are clamped into the histogram's last bucket.
pub const LATENCY_NS_MAX: u64 = 3_600_000_000_000;
/// How long a thread waits for owed answers after the measured window.
pub const DRAIN: Duration = Duration::from_secs(5);
/// Largest answer buffered from one connection.
const INPUT_BYTES_MAX: usize = 64 << 20;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("static histogram bounds")
}

/// When one thread's open-loop requests are due: request k at `phase + k / rate` after the
/// start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Requests per second for this thread.
    pub rate: f64,
    /// Offset of the first request, so threads do not all send at the same instant.
    pub phase: Duration,
}

impl Schedule {
    /// Splits `rate` over threads in proportion to the connections each owns, staggering the
    /// threads by one interval of the whole rate each.
    pub fn split(rate: f64, connections: &[usize]) -> Vec<Schedule> {
        let total: usize = connections.iter().sum();
        connections
            .iter()
            .enumerate()
            .map(|(index, &owned)| Schedule {
                rate: rate * owned as f64 / total as f64,
                phase: Duration::from_secs_f64(index as f64 / rate),
            })
            .collect()
    }

    /// When request `k` is due, from the start.
    pub fn due(&self, k: u64) -> Duration {
        self.phase + Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// How many requests are due by `elapsed` from the start.
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        match elapsed.checked_sub(self.phase) {
            Some(after) => (after.as_secs_f64() * self.rate).floor() as u64 + 1,
            None => 0,
        }
    }
}

/// What one thread is asked to do.
pub struct ThreadPlan {
    pub server: Endpoint,
    pub protocol: Protocol,
    pub connections: usize,
    pub depth: usize,
    /// Closed loop: send a connection's next `depth` requests only once all its answers are in
    /// (redis-benchmark's `-P`), instead of one new request per answer.
    pub refill_whole: bool,
    pub schedule: Option<Schedule>,
    /// Most measured requests this thread sends.
    pub budget: Option<u64>,
    /// Where in the request sequence this thread starts.
    pub start: usize,
    pub cpu: Option<usize>,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What the threads share with the progress line.
pub struct Shared {
    pub stop: AtomicBool,
    pub errors: AtomicU64,
    /// Latencies since the progress line last looked (all phases).
    pub interval: Mutex<Histogram<u64>>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            interval: Mutex::new(new_histogram()),
        }
    }
}

/// What one thread measured.
pub struct ThreadResult {
    pub histogram: Histogram<u64>,
    pub tally: Tally,
    /// Answers that arrived in the measured window, whenever their requests were due: the
    /// throughput. (The histogram holds the requests due or written in the window.)
    pub completed: u64,
    /// Measured requests sent but never answered within [`DRAIN`].
    pub unanswered: u64,
    /// Open loop: requests due in the measured window that were never sent.
    pub unsent: u64,
    /// The measured window: `--duration`, or, when this thread's `--requests` share ran out
    /// first, until its last measured answer.
    pub sending: Duration,
}

struct Pending {
    index: usize,
    /// Write time (closed loop) or due time (open loop).
    from: Instant,
    counted: bool,
}

struct Connection {
    stream: Stream,
    output: Vec<u8>,
    written: usize,
    input: Vec<u8>,
    start: usize,
    filled: usize,
    in_flight: VecDeque<Pending>,
}

impl Connection {
    fn open(server: &Endpoint, depth: usize) -> Result<Connection, String> {
        let stream = server
            .connect()
            .map_err(|e| format!("cannot connect to {server}: {e}"))?;
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(Connection {
            stream,
            output: Vec::with_capacity(depth * 128),
            written: 0,
            input: vec![0; 64 << 10],
            start: 0,
            filled: 0,
            in_flight: VecDeque::with_capacity(depth),
        })
    }

    /// Writes what it can; true when something was written.
    fn flush(&mut self) -> Result<bool, String> {
        let mut progressed = false;
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err("server closed the connection".into()),
                Ok(n) => {
                    self.written += n;
                    progressed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        }
        Ok(progressed)
    }

    /// Reads what has arrived; true when something was read.
    fn fill(&mut self) -> Result<bool, String> {
        if self.start > 0 && (self.start == self.filled || self.filled == self.input.len()) {
            self.input.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.filled == self.input.len() {
            if self.input.len() >= INPUT_BYTES_MAX {
                return Err("an answer larger than 64 MiB".into());
            }
            self.input.resize(self.input.len() * 2, 0);
        }
        match self.stream.read(&mut self.input[self.filled..]) {
            Ok(0) => Err("server closed the connection".into()),
            Ok(n) => {
                self.filled += n;
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                Ok(false)
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

/// Runs one client thread; on error tells the others to stop.
pub fn run_thread(
    plan: &ThreadPlan,
    requests: &Requests,
    shared: &Shared,
    barrier: &Barrier,
) -> Result<ThreadResult, String> {
    if let Some(cpu) = plan.cpu {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
    let connections: Result<Vec<Connection>, String> = (0..plan.connections)
        .map(|_| Connection::open(&plan.server, plan.depth))
        .collect();
    // Every thread reaches the barrier, connected or not, so none waits for ever.
    barrier.wait();
    let result = connections.and_then(|connections| drive(plan, requests, shared, connections));
    if result.is_err() {
        shared.stop.store(true, Ordering::Release);
    }
    result
}

fn drive(
    plan: &ThreadPlan,
    requests: &Requests,
    shared: &Shared,
    mut connections: Vec<Connection>,
) -> Result<ThreadResult, String> {
    let started = Instant::now();
    let measure_from = started + plan.warmup;
    let measure_to = measure_from + plan.duration;
    let mut result = ThreadResult {
        histogram: new_histogram(),
        tally: Tally::default(),
        completed: 0,
        unanswered: 0,
        unsent: 0,
        sending: Duration::ZERO,
    };
    let mut interval = new_histogram();
    let mut reported = 0u64;
    let mut last_flush = started;
    let mut budget = plan.budget.unwrap_or(u64::MAX);
    let mut next = plan.start % requests.len();
    let mut due = 0u64;
    let mut turn = 0usize;
    let mut request_id = 0u32;
    let mut last_measured_answer = None;
    let mut stopped_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let sending = now < measure_to
            && budget > 0
            && !shared.stop.load(Ordering::Relaxed)
            && stopped_at.is_none();
        if !sending && stopped_at.is_none() {
            stopped_at = Some(now);
            if let Some(schedule) = &plan.schedule {
                // Requests due strictly before the window's end, and before its start.
                let before =
                    |at: Duration| schedule.due_by(at.saturating_sub(Duration::from_nanos(1)));
                let owed = before(measure_to.saturating_duration_since(started));
                let measured_first = before(plan.warmup);
                result.unsent = owed.saturating_sub(due.max(measured_first));
                if budget == 0 || shared.stop.load(Ordering::Relaxed) {
                    result.unsent = 0;
                }
            }
        }
        let mut progressed = false;
        if sending {
            let mut enqueue = |connection: &mut Connection, from: Instant| {
                let counted = from >= measure_from && from < measure_to;
                let at = connection.output.len();
                connection.output.extend_from_slice(requests.frame(next));
                request_id = request_id.wrapping_add(1);
                plan.protocol
                    .patch_id(&mut connection.output[at..], request_id);
                connection.in_flight.push_back(Pending {
                    index: next,
                    from,
                    counted,
                });
                next = (next + 1) % requests.len();
                u64::from(counted)
            };
            match &plan.schedule {
                None => {
                    for connection in &mut connections {
                        if plan.refill_whole && !connection.in_flight.is_empty() {
                            continue;
                        }
                        while connection.in_flight.len() < plan.depth && budget > 0 {
                            budget -= enqueue(connection, now);
                        }
                    }
                }
                Some(schedule) => {
                    while budget > 0 {
                        let at = started + schedule.due(due);
                        if at > now {
                            break;
                        }
                        let count = connections.len();
                        let Some(offset) = (0..count)
                            .find(|i| connections[(turn + i) % count].in_flight.len() < plan.depth)
                        else {
                            break;
                        };
                        let chosen = (turn + offset) % count;
                        budget -= enqueue(&mut connections[chosen], at);
                        turn = chosen + 1;
                        due += 1;
                    }
                }
            }
        }
        for connection in &mut connections {
            if !connection.output.is_empty() {
                progressed |= connection.flush()?;
            }
            if connection.in_flight.is_empty() || !connection.fill()? {
                continue;
            }
            progressed = true;
            let arrived = Instant::now();
            while let Some((taken, answer)) = plan
                .protocol
                .parse(&connection.input[connection.start..connection.filled])?
            {
                let pending = connection
                    .in_flight
                    .pop_front()
                    .ok_or("the server answered a request that was never sent")?;
                wire::check(
                    &answer,
                    requests.expected(pending.index),
                    pending.counted,
                    &mut result.tally,
                )?;
                connection.start += taken;
                let latency = (arrived.saturating_duration_since(pending.from).as_nanos() as u64)
                    .clamp(1, LATENCY_NS_MAX);
                interval.saturating_record(latency);
                if pending.counted {
                    result.histogram.saturating_record(latency);
                    last_measured_answer = Some(arrived);
                }
                if arrived >= measure_from && arrived < measure_to {
                    result.completed += 1;
                }
            }
        }
        if last_flush.elapsed() >= Duration::from_millis(100) {
            flush_interval(shared, &mut interval, &result.tally, &mut reported);
            last_flush = Instant::now();
        }
        if let Some(stopped) = stopped_at {
            let owed: usize = connections.iter().map(|c| c.in_flight.len()).sum();
            if owed == 0 {
                break;
            }
            if stopped.elapsed() >= DRAIN || shared.stop.load(Ordering::Relaxed) {
                result.unanswered = connections
                    .iter()
                    .flat_map(|c| c.in_flight.iter())
                    .filter(|p| p.counted)
                    .count() as u64;
                break;
            }
        }
        if !progressed {
            std::thread::yield_now();
        }
    }
    flush_interval(shared, &mut interval, &result.tally, &mut reported);
    result.sending = match (plan.budget, last_measured_answer) {
        (Some(_), Some(last)) if budget == 0 => last.saturating_duration_since(measure_from),
        _ => plan.duration,
    };
    Ok(result)
}

/// Hands the progress line this thread's latencies and new wrong answers since the last call.
fn flush_interval(
    shared: &Shared,
    interval: &mut Histogram<u64>,
    tally: &Tally,
    reported: &mut u64,
) {
    if let Ok(mut merged) = shared.interval.lock() {
        let _ = merged.add(&*interval);
    }
    interval.reset();
    shared
        .errors
        .fetch_add(tally.mismatches - *reported, Ordering::Relaxed);
    *reported = tally.mismatches;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_spreads_the_rate_over_threads_in_proportion() {
        let schedules = Schedule::split(1000.0, &[3, 1]);
        assert_eq!(schedules[0].rate, 750.0);
        assert_eq!(schedules[1].rate, 250.0);
        assert_eq!(schedules[0].phase, Duration::ZERO);
        assert_eq!(schedules[1].phase, Duration::from_millis(1));
        // Over 2 s, 2000 requests are due in all, evenly spaced.
        let total: u64 = schedules
            .iter()
            .map(|s| s.due_by(Duration::from_secs(2)))
            .sum();
        assert!((1999..=2001).contains(&total), "{total}");
        let one = &schedules[1];
        assert_eq!(one.due(0), Duration::from_millis(1));
        assert_eq!(one.due(1) - one.due(0), Duration::from_millis(4));
        assert_eq!(one.due(100) - one.due(99), Duration::from_millis(4));
        assert_eq!(one.due_by(Duration::ZERO), 0);
        assert_eq!(one.due_by(Duration::from_millis(1)), 1);
        assert_eq!(one.due_by(Duration::from_millis(5)), 2);
        for k in [0u64, 1, 17, 1000] {
            assert_eq!(one.due_by(one.due(k)), k + 1, "{k}");
        }
    }
}
