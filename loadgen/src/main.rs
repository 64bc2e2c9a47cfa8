//! `keyward-loadgen`: drives a keyward verify port and reports throughput, latency percentiles
//! (HdrHistogram) and answers by status, checking every answer against the status its
//! credential must get.
//!
//! Closed loop: each client thread owns its share of the connections; per round it writes
//! `depth` requests on every connection (one write each), then reads every answer. Latency is
//! measured per request, from the round's write to the answer's arrival.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;

use keyward::keyset::{self, ExpectedKey};

mod control;
use keyward::protocol::{self, opcode, Status, VerifyRequest};

#[derive(Parser, Debug)]
#[command(
    name = "keyward-loadgen",
    version,
    about = "Load generator for a keyward verify port"
)]
struct Args {
    /// Verify port to drive.
    #[arg(long, default_value = "127.0.0.1:7500", value_name = "ADDR")]
    server: SocketAddr,
    /// Key file written by `keyward-ctl keys generate` (credential<TAB>expected status).
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// What to send: VERIFY requests, or PING (the I/O ceiling).
    #[arg(long, value_enum, default_value_t = Op::Verify)]
    op: Op,
    /// Open connections, spread over the client threads.
    #[arg(long, default_value_t = 1, value_name = "N")]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1, value_name = "N")]
    depth: usize,
    /// Credentials per VERIFY_BATCH frame; 0 sends one VERIFY frame per credential.
    #[arg(long, default_value_t = 0, value_name = "N")]
    batch: usize,
    /// Client threads, each pinned to one CPU of --cpus (or not pinned when --cpus is empty).
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: usize,
    /// CPUs for the client threads, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    cpus: Vec<usize>,
    /// Measured duration in seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    duration: f64,
    /// Warm-up in seconds, run but not counted.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    warmup: f64,
    /// Control port, for --op issue, revoke and import.
    #[arg(long, default_value = "127.0.0.1:7501", value_name = "ADDR")]
    control: SocketAddr,
    /// Admin token file, for the control operations.
    #[arg(
        long,
        default_value = "./keyward-data/admin.token",
        value_name = "FILE"
    )]
    token_file: PathBuf,
    /// Control operations: how many (for import: how many keys).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    requests: usize,
    /// Control operations: each client waits this long before each request (light steady load).
    #[arg(long, value_name = "MS")]
    pace_ms: Option<u64>,
    /// Verify derived tokens instead of keys: before the run, DERIVE a token (ttl 1 h) from each
    /// of the first N valid keys in the key file, and drive those.
    #[arg(long, value_name = "N")]
    tokens: Option<usize>,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    Verify,
    Ping,
    /// Control port: ISSUE with --connections concurrent clients.
    Issue,
    /// Control port: REVOKE (keys are issued first, unmeasured).
    Revoke,
    /// Control port: IMPORT --requests keys in batches of --batch (default 1000).
    Import,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Verify => "verify",
            Op::Ping => "ping",
            Op::Issue => "issue",
            Op::Revoke => "revoke",
            Op::Import => "import",
        }
    }
}

/// Bounds on the arguments.
const CONNECTIONS_MAX: usize = 65_536;
const DEPTH_MAX: usize = 4096;
const THREADS_MAX: usize = 1024;
const DURATION_SECS_MAX: f64 = 24.0 * 3600.0;
/// Latencies above this are clamped into the histogram's last bucket.
const LATENCY_NS_MAX: u64 = 60_000_000_000;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("keyward-loadgen: error: {message}");
            ExitCode::from(2)
        }
    }
}

fn validate(args: &Args) -> Result<(), String> {
    let check = |ok: bool, message: &str| if ok { Ok(()) } else { Err(message.to_string()) };
    check(
        (1..=CONNECTIONS_MAX).contains(&args.connections),
        "--connections must be 1 to 65536",
    )?;
    check(
        (1..=DEPTH_MAX).contains(&args.depth),
        "--depth must be 1 to 4096",
    )?;
    check(
        args.batch <= protocol::BATCH_ITEMS_MAX || (args.op == Op::Import && args.batch <= 1000),
        "--batch must be 0 to 256 (1 to 1000 with --op import)",
    )?;
    check(
        args.batch == 0 || matches!(args.op, Op::Verify | Op::Import),
        "--batch applies to --op verify and import only",
    )?;
    check(
        (1..=THREADS_MAX).contains(&args.threads),
        "--threads must be 1 to 1024",
    )?;
    check(
        args.threads <= args.connections,
        "--threads cannot exceed --connections",
    )?;
    check(
        args.duration > 0.0 && args.duration <= DURATION_SECS_MAX,
        "--duration must be above 0 and at most a day",
    )?;
    check(
        args.warmup >= 0.0 && args.warmup <= DURATION_SECS_MAX,
        "--warmup must be 0 to a day",
    )?;
    check(
        args.keys.is_some() || args.op != Op::Verify,
        "--keys FILE is required with --op verify (write one with `keyward-ctl keys generate`)",
    )?;
    Ok(())
}

/// One request template: its frame bytes (request id patched at send) and what each
/// credential in it must get.
struct Template {
    frame: Vec<u8>,
    expected: Vec<Status>,
}

fn templates(args: &Args, keys: &[ExpectedKey]) -> Vec<Template> {
    if args.op == Op::Ping {
        let mut frame = Vec::new();
        protocol::put_ping_frame(&mut frame, 0);
        return vec![Template {
            frame,
            expected: Vec::new(),
        }];
    }
    fn request(key: &ExpectedKey) -> VerifyRequest<'_> {
        VerifyRequest {
            credential: key.credential.as_bytes(),
            ..Default::default()
        }
    }
    if args.batch == 0 {
        return keys
            .iter()
            .map(|key| {
                let mut frame = Vec::new();
                protocol::put_verify_frame(&mut frame, 0, &request(key));
                Template {
                    frame,
                    expected: vec![key.expected],
                }
            })
            .collect();
    }
    keys.chunks(args.batch)
        .filter(|chunk| chunk.len() == args.batch)
        .map(|chunk| {
            let requests: Vec<VerifyRequest<'_>> = chunk.iter().map(request).collect();
            let mut frame = Vec::new();
            protocol::put_batch_frame(&mut frame, 0, &requests);
            Template {
                frame,
                expected: chunk.iter().map(|k| k.expected).collect(),
            }
        })
        .collect()
}

/// What one thread measured.
struct ThreadResult {
    histogram: Histogram<u64>,
    by_status: [u64; Status::ALL.len()],
    mismatches: u64,
    first_mismatch: Option<String>,
    requests: u64,
}

/// Live counters the progress line reads.
struct Live {
    requests: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
}

fn run(args: Args) -> Result<bool, String> {
    validate(&args)?;
    if matches!(args.op, Op::Issue | Op::Revoke | Op::Import) {
        return control::run(&args);
    }
    let keys = match (&args.keys, args.op) {
        (Some(path), Op::Verify) => {
            let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            keyset::read_key_file(std::io::BufReader::new(file))
                .map_err(|e| format!("{}: {e}", path.display()))?
        }
        _ => Vec::new(),
    };
    let keys = match args.tokens {
        Some(count) => derive_tokens(args.server, &keys, count)?,
        None => keys,
    };
    if args.op == Op::Verify && keys.len() < args.batch.max(1) {
        return Err("the key file holds fewer credentials than one batch".into());
    }
    let templates = Arc::new(templates(&args, &keys));
    let live = Arc::new(Live {
        requests: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let per_credential = args.batch.max(1) as u64;

    let mut handles = Vec::new();
    for thread in 0..args.threads {
        let connections =
            args.connections / args.threads + usize::from(thread < args.connections % args.threads);
        let cpu = (!args.cpus.is_empty()).then(|| args.cpus[thread % args.cpus.len()]);
        let templates = templates.clone();
        let live = live.clone();
        let server = args.server;
        let depth = args.depth;
        let offset = thread * 7919;
        handles.push(std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
            }
            drive(server, connections, depth, &templates, offset, &live)
        }));
    }

    let started = Instant::now();
    let warmup = Duration::from_secs_f64(args.warmup);
    let total = warmup + Duration::from_secs_f64(args.duration);
    let mut last = (Instant::now(), 0u64);
    let mut measured_from = None;
    while started.elapsed() < total {
        std::thread::sleep(Duration::from_millis(100).min(total.saturating_sub(started.elapsed())));
        if measured_from.is_none() && started.elapsed() >= warmup {
            live.requests.store(0, Ordering::Relaxed);
            live.measuring.store(true, Ordering::Release);
            measured_from = Some(Instant::now());
            last = (Instant::now(), 0);
        }
        if handles.iter().all(|h| h.is_finished()) {
            break;
        }
        if !args.quiet && last.0.elapsed() >= Duration::from_secs(1) {
            let count = live.requests.load(Ordering::Relaxed);
            let rate = (count - last.1) as f64 / last.0.elapsed().as_secs_f64();
            let phase = if measured_from.is_some() {
                ""
            } else {
                " (warm-up)"
            };
            eprintln!(
                "[{:>5.1}s] {:>12} credentials/s{phase}",
                started.elapsed().as_secs_f64(),
                thousands((rate * per_credential as f64) as u64)
            );
            last = (Instant::now(), count);
        }
    }
    live.stop.store(true, Ordering::Release);
    let elapsed = measured_from.map_or(Duration::ZERO, |from| from.elapsed());

    let mut histogram = new_histogram();
    let mut by_status = [0u64; Status::ALL.len()];
    let mut mismatches = 0;
    let mut first_mismatch = None;
    let mut requests = 0;
    let mut per_thread = Vec::new();
    for handle in handles {
        let result = handle
            .join()
            .map_err(|_| "a client thread panicked".to_string())??;
        histogram
            .add(&result.histogram)
            .map_err(|e| e.to_string())?;
        for (total, count) in by_status.iter_mut().zip(result.by_status) {
            *total += count;
        }
        mismatches += result.mismatches;
        first_mismatch = first_mismatch.or(result.first_mismatch);
        requests += result.requests;
        per_thread.push(result.requests);
    }
    let report = Report {
        args: &args,
        elapsed,
        requests,
        credentials: requests
            * if args.op == Op::Verify {
                per_credential
            } else {
                0
            },
        histogram: &histogram,
        by_status,
        mismatches,
        per_thread,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        report.print();
    }
    if let Some(example) = first_mismatch {
        eprintln!("keyward-loadgen: {mismatches} answers differed from the expected status; first: {example}");
    }
    Ok(mismatches == 0)
}

/// Mints one derived token per valid key (up to `count`), each expected to verify as valid.
fn derive_tokens(
    server: SocketAddr,
    keys: &[ExpectedKey],
    count: usize,
) -> Result<Vec<ExpectedKey>, String> {
    let mut client = keyward::client::Client::connect(server)
        .map_err(|e| format!("cannot connect to {server}: {e}"))?;
    let mut tokens = Vec::with_capacity(count);
    for key in keys
        .iter()
        .filter(|k| k.expected == Status::Valid)
        .take(count)
    {
        let request = protocol::DeriveRequest {
            credential: key.credential.as_bytes(),
            ttl_seconds: 3600,
            ..Default::default()
        };
        match client
            .derive(&request)
            .map_err(|e| format!("DERIVE failed: {e}"))?
        {
            protocol::DeriveResult::Minted { token, .. } => tokens.push(ExpectedKey {
                credential: token,
                expected: Status::Valid,
            }),
            protocol::DeriveResult::Refused { status, message } => {
                return Err(format!("DERIVE refused ({status}): {message}"))
            }
        }
    }
    if tokens.is_empty() {
        return Err("no valid key in the key file to derive tokens from".into());
    }
    eprintln!("keyward-loadgen: derived {} tokens", tokens.len());
    Ok(tokens)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("static histogram bounds")
}

/// One connection's state inside a client thread.
struct Connection {
    stream: TcpStream,
    input: Vec<u8>,
    filled: usize,
    /// Template index of each request in flight, in send order.
    in_flight: Vec<usize>,
}

fn drive(
    server: SocketAddr,
    count: usize,
    depth: usize,
    templates: &[Template],
    offset: usize,
    live: &Live,
) -> Result<ThreadResult, String> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        let stream =
            TcpStream::connect(server).map_err(|e| format!("cannot connect to {server}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        connections.push(Connection {
            stream,
            input: vec![0; 1 << 20],
            filled: 0,
            in_flight: Vec::with_capacity(depth),
        });
    }
    let mut result = ThreadResult {
        histogram: new_histogram(),
        by_status: [0; Status::ALL.len()],
        mismatches: 0,
        first_mismatch: None,
        requests: 0,
    };
    let mut next = offset % templates.len();
    let mut output = Vec::with_capacity(depth * 128);
    let mut request_id = 0u32;
    while !live.stop.load(Ordering::Acquire) {
        let measuring = live.measuring.load(Ordering::Acquire);
        let sent_at = Instant::now();
        for connection in &mut connections {
            output.clear();
            connection.in_flight.clear();
            for _ in 0..depth {
                let start = output.len();
                output.extend_from_slice(&templates[next].frame);
                request_id = request_id.wrapping_add(1);
                output[start + 4..start + 8].copy_from_slice(&request_id.to_le_bytes());
                connection.in_flight.push(next);
                next = (next + 1) % templates.len();
            }
            connection
                .stream
                .write_all(&output)
                .map_err(|e| format!("write: {e}"))?;
        }
        for connection in &mut connections {
            for index in 0..connection.in_flight.len() {
                let template = &templates[connection.in_flight[index]];
                let (op, body) = read_frame(connection)?;
                let latency = sent_at.elapsed().as_nanos() as u64;
                check_answer(op, &body, template, measuring, &mut result)?;
                if measuring {
                    result
                        .histogram
                        .saturating_record(latency.clamp(1, LATENCY_NS_MAX));
                    result.requests += 1;
                }
                consume(connection, body.len());
            }
        }
        live.requests
            .fetch_add((connections.len() * depth) as u64, Ordering::Relaxed);
    }
    Ok(result)
}

/// Reads until one whole frame is buffered; returns its opcode and body range length.
fn read_frame(connection: &mut Connection) -> Result<(u8, Vec<u8>), String> {
    loop {
        match protocol::decode_frame(
            &connection.input[..connection.filled],
            protocol::BODY_BYTES_LIMIT,
        ) {
            Ok(Some(frame)) => return Ok((frame.header.opcode, frame.body.to_vec())),
            Ok(None) => {}
            Err(error) => return Err(format!("bad frame from server: {error}")),
        }
        if connection.filled == connection.input.len() {
            connection.input.resize(connection.input.len() * 2, 0);
        }
        let read = connection
            .stream
            .read(&mut connection.input[connection.filled..])
            .map_err(|e| format!("read: {e}"))?;
        if read == 0 {
            return Err("server closed the connection".into());
        }
        connection.filled += read;
    }
}

fn consume(connection: &mut Connection, body_bytes: usize) {
    let used = protocol::HEADER_BYTES + body_bytes;
    connection.input.copy_within(used..connection.filled, 0);
    connection.filled -= used;
}

fn check_answer(
    op: u8,
    body: &[u8],
    template: &Template,
    measuring: bool,
    result: &mut ThreadResult,
) -> Result<(), String> {
    let record = |status: Status, expected: Status, result: &mut ThreadResult| {
        if measuring {
            result.by_status[status as usize] += 1;
        }
        if status != expected {
            result.mismatches += 1;
            result
                .first_mismatch
                .get_or_insert_with(|| format!("expected {expected}, got {status}"));
        }
    };
    match op {
        opcode::PONG => Ok(()),
        opcode::VERIFY_RESULT => {
            let status = status_at(body, 0).ok_or("bad VERIFY_RESULT body")?;
            record(status, template.expected[0], result);
            Ok(())
        }
        opcode::VERIFY_BATCH_RESULT => {
            let results = protocol::parse_batch_result(body).map_err(|e| e.to_string())?;
            for (answer, expected) in results.iter().zip(&template.expected) {
                record(answer.status, *expected, result);
            }
            Ok(())
        }
        opcode::ERROR => Err(format!("server error: {:?}", protocol::parse_error(body))),
        other => Err(format!("unexpected opcode {other:#04x}")),
    }
}

fn status_at(body: &[u8], at: usize) -> Option<Status> {
    Status::from_u8(*body.get(at)?)
}

struct Report<'a> {
    args: &'a Args,
    elapsed: Duration,
    requests: u64,
    credentials: u64,
    histogram: &'a Histogram<u64>,
    by_status: [u64; Status::ALL.len()],
    mismatches: u64,
    per_thread: Vec<u64>,
}

const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
];

impl Report<'_> {
    fn rate(&self, count: u64) -> f64 {
        count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn print(&self) {
        let args = self.args;
        println!(
            "keyward-loadgen: {} against {}, {} connection(s) × depth {}{}, {} thread(s){}, {:.1} s measured",
            args.op.name(),
            args.server,
            args.connections,
            args.depth,
            if args.batch > 0 { format!(" × batch {}", args.batch) } else { String::new() },
            args.threads,
            if args.cpus.is_empty() { String::new() } else { format!(" on CPU(s) {:?}", args.cpus) },
            self.elapsed.as_secs_f64()
        );
        println!(
            "requests     {} ({}/s)",
            thousands(self.requests),
            thousands(self.rate(self.requests) as u64)
        );
        if self.credentials > 0 && args.batch > 0 {
            println!(
                "credentials  {} ({}/s)",
                thousands(self.credentials),
                thousands(self.rate(self.credentials) as u64)
            );
        }
        let mut line = String::from("latency     ");
        for (name, q) in PERCENTILES {
            line.push_str(&format!(
                " {name} {}",
                micros(self.histogram.value_at_percentile(q))
            ));
        }
        line.push_str(&format!(" max {}", micros(self.histogram.max())));
        println!("{line}");
        if args.op == Op::Verify {
            let statuses: Vec<String> = Status::ALL
                .iter()
                .zip(self.by_status)
                .filter(|(_, n)| *n > 0)
                .map(|(s, n)| format!("{s} {}", thousands(n)))
                .collect();
            println!("statuses     {}", statuses.join(", "));
            println!("mismatches   {}", thousands(self.mismatches));
        }
        if self.per_thread.len() > 1 {
            let spread: Vec<String> = self.per_thread.iter().map(|n| thousands(*n)).collect();
            println!("per thread   {}", spread.join(" / "));
        }
    }

    fn json(&self) -> String {
        let percentiles: Vec<String> = PERCENTILES
            .iter()
            .map(|(name, q)| {
                format!(
                    "\"{name}_us\":{:.3}",
                    self.histogram.value_at_percentile(*q) as f64 / 1000.0
                )
            })
            .collect();
        let statuses: Vec<String> = Status::ALL
            .iter()
            .zip(self.by_status)
            .map(|(s, n)| format!("\"{s}\":{n}"))
            .collect();
        format!(
            "{{\"op\":\"{:?}\",\"connections\":{},\"depth\":{},\"batch\":{},\"threads\":{},\"seconds\":{:.3},\"requests\":{},\"requests_per_sec\":{:.1},\"credentials_per_sec\":{:.1},{},\"max_us\":{:.3},\"statuses\":{{{}}},\"mismatches\":{}}}",
            self.args.op,
            self.args.connections,
            self.args.depth,
            self.args.batch,
            self.args.threads,
            self.elapsed.as_secs_f64(),
            self.requests,
            self.rate(self.requests),
            self.rate(self.credentials),
            percentiles.join(","),
            self.histogram.max() as f64 / 1000.0,
            statuses.join(","),
            self.mismatches
        )
        .to_lowercase()
    }
}

fn micros(nanos: u64) -> String {
    if nanos >= 10_000_000 {
        format!("{:.1}ms", nanos as f64 / 1e6)
    } else {
        format!("{:.1}µs", nanos as f64 / 1e3)
    }
}

fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut all = vec!["keyward-loadgen"];
        all.extend_from_slice(extra);
        Args::try_parse_from(all).unwrap()
    }

    fn result() -> ThreadResult {
        ThreadResult {
            histogram: new_histogram(),
            by_status: [0; Status::ALL.len()],
            mismatches: 0,
            first_mismatch: None,
            requests: 0,
        }
    }

    #[test]
    fn argument_bounds_give_clear_errors() {
        let error = |extra: &[&str]| validate(&args(extra)).unwrap_err();
        assert!(error(&["--connections", "0", "--keys", "k"]).contains("--connections"));
        assert!(
            error(&["--threads", "4", "--connections", "2", "--keys", "k"]).contains("--threads")
        );
        assert!(error(&["--batch", "300", "--keys", "k"]).contains("--batch"));
        assert!(error(&["--op", "ping", "--batch", "8"]).contains("--batch"));
        assert!(error(&[]).contains("keyward-ctl keys generate"));
        assert!(validate(&args(&["--op", "ping"])).is_ok());
        assert!(validate(&args(&["--op", "import", "--batch", "1000"])).is_ok());
        assert!(Args::try_parse_from(["keyward-loadgen", "--op", "fly"]).is_err());
    }

    #[test]
    fn answers_are_checked_against_the_expected_status() {
        let template = Template {
            frame: Vec::new(),
            expected: vec![Status::Revoked],
        };
        let mut counted = result();
        check_answer(
            opcode::VERIFY_RESULT,
            &[Status::Revoked as u8],
            &template,
            true,
            &mut counted,
        )
        .unwrap();
        assert_eq!(
            (
                counted.mismatches,
                counted.by_status[Status::Revoked as usize]
            ),
            (0, 1)
        );
        check_answer(
            opcode::VERIFY_RESULT,
            &[Status::Valid as u8, 0],
            &template,
            true,
            &mut counted,
        )
        .unwrap();
        assert_eq!(counted.mismatches, 1);
        assert_eq!(
            counted.first_mismatch.as_deref(),
            Some("expected revoked, got valid")
        );
        // During warm-up statuses are not counted, but a wrong answer still is.
        check_answer(
            opcode::VERIFY_RESULT,
            &[Status::Unknown as u8],
            &template,
            false,
            &mut counted,
        )
        .unwrap();
        assert_eq!(
            (
                counted.mismatches,
                counted.by_status[Status::Unknown as usize]
            ),
            (2, 0)
        );
        assert!(check_answer(opcode::VERIFY_RESULT, &[], &template, true, &mut counted).is_err());
        assert!(check_answer(opcode::ERROR, &[5, 0, 0], &template, true, &mut counted).is_err());
    }

    #[test]
    fn batch_answers_are_checked_item_by_item() {
        let template = Template {
            frame: Vec::new(),
            expected: vec![Status::Valid, Status::Expired],
        };
        let mut body = 2u16.to_le_bytes().to_vec();
        body.push(Status::Unknown as u8);
        body.push(Status::Expired as u8);
        let mut counted = result();
        check_answer(
            opcode::VERIFY_BATCH_RESULT,
            &body,
            &template,
            true,
            &mut counted,
        )
        .unwrap();
        assert_eq!(counted.mismatches, 1);
        assert_eq!(counted.by_status[Status::Expired as usize], 1);
    }

    #[test]
    fn thread_histograms_merge() {
        let mut first = new_histogram();
        let mut second = new_histogram();
        for value in [1_000, 2_000, 3_000] {
            first.record(value).unwrap();
        }
        second.record(1_000_000).unwrap();
        first.add(&second).unwrap();
        assert_eq!(first.len(), 4);
        assert!(first.max() >= 1_000_000 && first.max() < 1_001_000);
    }

    #[test]
    fn numbers_print_for_people() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(micros(46_400), "46.4µs");
        assert_eq!(micros(12_500_000), "12.5ms");
    }
}
