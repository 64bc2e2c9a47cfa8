//! `keyward-loadgen`: the measuring instrument for keyward and for what it replaces. It drives a
//! keyward verify port, a Redis server (RESP GET) or memcached (text get) with the same
//! connections, pipelining, scheduling and histogram code, checks every answer against the
//! status its credential must get, and reports throughput and latency percentiles.
//!
//! Closed loop (`--connections` × `--depth`) or open loop (`--rate`, latency from each
//! request's intended send time); `--sweep` steps the open-loop rate up to saturation and
//! reports the highest rate whose p99 stays under `--slo-p99`. Control-port operations
//! (`--op issue|revoke|import`) live in `control.rs`.

use keyward::outln;
use std::net::{IpAddr, SocketAddr};

use keyward::endpoint::Endpoint;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::json;

use keyward::keyset::{self, ExpectedKey};
use keyward::protocol::{self, Status};

mod control;
mod drive;
mod prepare;
mod propagation;
mod report;

use drive::{new_histogram, Schedule, Shared, ThreadPlan};
use keyward_loadgen::wire::{Protocol, Tally};
use keyward_loadgen::workload::{Kind, Mix, Pools, Popularity, Requests, Shape};
use report::{micros, thousands, Outcome, SweepPoint};

#[derive(Parser, Debug)]
#[command(
    name = "keyward-loadgen",
    version,
    about = "Load generator for keyward, with Redis and memcached baselines",
    long_about = "Load generator for keyward, with Redis and memcached baselines.\n\n\
        Closed loop by default (--connections × --depth requests always in flight); open loop \
        with --rate (requests sent on a fixed schedule, latency measured from when each was \
        due); --sweep finds the highest rate whose p99 stays under --slo-p99. Every answer is \
        checked against the status its credential must get; wrong answers make the exit code 1.",
    after_help = "Examples:\n  \
        keyward-loadgen --keys keys.txt --connections 16 --depth 16\n  \
        keyward-loadgen --keys keys.txt --rate 100000 --connections 16 --depth 8 --hgrm out.hgrm --plot out.svg\n  \
        keyward-loadgen --keys keys.txt --mix valid=90,unknown=4,revoked=2,expired=2,malformed=2 --zipf 1.1\n  \
        keyward-loadgen --protocol resp --server 127.0.0.1:6379 --keys keys.txt --prepare\n  \
        keyward-loadgen --protocol resp --server 127.0.0.1:6379 --keys keys.txt --connections 16 --depth 16\n  \
        keyward-loadgen --keys keys.txt --sweep --slo-p99 1ms --plot sweep.svg"
)]
pub struct Args {
    /// Write the man page and shell completions generated from this CLI into DIR, and exit.
    #[arg(long, value_name = "DIR", hide = true)]
    generate_assets: Option<std::path::PathBuf>,
    /// Server to drive: a keyward verify port, or a Redis/memcached address; HOST:PORT, or
    /// unix:/PATH for a Unix-domain socket.
    #[arg(long, default_value = "127.0.0.1:7500", value_name = "ADDR")]
    server: Endpoint,
    /// Wire protocol: keyward, or a baseline store looking up the same credentials.
    #[arg(long, value_enum, default_value_t = Protocol::Keyward)]
    protocol: Protocol,
    /// Key file (`keyward-ctl keys generate --out-keys`): credential, expected status, scopes, allowlist.
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// What to send: lookups (VERIFY, GET), the protocol's no-op (PING, the I/O ceiling), or a
    /// control-port operation.
    #[arg(long, value_enum, default_value_t = Op::Verify)]
    op: Op,
    /// Open connections, spread over the client threads.
    #[arg(long, default_value_t = 1, value_name = "N")]
    connections: usize,
    /// Requests in flight per connection: always this many in closed loop, at most this many in
    /// open loop.
    #[arg(long, default_value_t = 1, value_name = "N")]
    depth: usize,
    /// Closed loop: how a connection refills its pipeline: `each` sends a new request per answer
    /// (the pipeline stays full), `whole` sends the next --depth requests together once all
    /// answers are in (as redis-benchmark's -P does).
    #[arg(long, value_enum, default_value_t = Refill::Each)]
    refill: Refill,
    /// Open loop: requests per second in all, sent on a fixed schedule.
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,
    /// Credentials per request: VERIFY_BATCH (keyward) or MGET (resp); 0 sends one per request.
    #[arg(long, default_value_t = 0, value_name = "N")]
    batch: usize,
    /// Mix of credential kinds by weight, e.g. valid=90,unknown=4,revoked=2,expired=2,malformed=1,derived=1
    /// (kinds: any status name in the key file, malformed, derived). Default: the whole key file,
    /// each credential equally likely.
    #[arg(long, value_name = "KIND=W,...")]
    mix: Option<String>,
    /// Key popularity: Zipf with this exponent (e.g. 1.1) instead of uniform.
    #[arg(long, value_name = "S")]
    zipf: Option<f64>,
    /// Require this scope in every VERIFY (expected statuses follow the key file's scopes).
    #[arg(long, value_name = "SCOPE")]
    scope: Option<String>,
    /// Name this end-client address in every VERIFY (checked against key allowlists).
    #[arg(long, value_name = "IP")]
    client_address: Option<IpAddr>,
    /// Derived tokens to mint (DERIVE, ttl 1 h) from valid keys before the run, for the
    /// `derived` kind; without --mix, the run sends only these tokens.
    #[arg(long, value_name = "N")]
    tokens: Option<usize>,
    /// Seed of the request sequence (mix and popularity draws).
    #[arg(long, default_value_t = 1, value_name = "N")]
    seed: u64,
    /// Client threads, each pinned to one CPU of --cpus (or not pinned when --cpus is empty).
    #[arg(long, default_value_t = 1, value_name = "N")]
    threads: usize,
    /// CPUs for the client threads, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    cpus: Vec<usize>,
    /// Measured seconds, after the warm-up (default 10, or unbounded with --requests).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Warm-up in seconds: sent and checked but not counted.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    warmup: f64,
    /// Measured requests to send (stops early when --duration ends first). Control
    /// operations: how many (for import: how many keys; default 10000).
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// Baselines: store every credential the run will look up (value: its status and scopes)
    /// in the Redis or memcached server, then exit. Run once before measuring.
    #[arg(long)]
    prepare: bool,
    /// Step the open-loop rate up to saturation and report the highest rate whose p99 stays
    /// under --slo-p99. Each step runs --duration seconds.
    #[arg(long)]
    sweep: bool,
    /// Latency bound for --sweep, e.g. 1ms, 500us.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    slo_p99: Option<Duration>,
    /// Sweep steps between zero and the closed-loop capacity.
    #[arg(long, default_value_t = 10, value_name = "N")]
    sweep_steps: usize,
    /// Write the HdrHistogram percentile distribution (.hgrm, milliseconds) here.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<PathBuf>,
    /// Draw latency by percentile (or, with --sweep, latency against throughput) as SVG here.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
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
    /// Control operations: each client waits this long before each request (light steady load).
    #[arg(long, value_name = "MS")]
    pace_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Refill {
    Each,
    Whole,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Op {
    /// VERIFY (keyward), GET (resp), get (memcache).
    Verify,
    /// PING (keyward, resp) or version (memcache): the I/O ceiling.
    Ping,
    /// Control port: ISSUE with --connections concurrent clients.
    Issue,
    /// Control port: REVOKE (keys are issued first, unmeasured).
    Revoke,
    /// Control port: IMPORT --requests keys in batches of --batch (default 1000).
    Import,
    /// Revoke --requests keys (default 1000) on --control, one at a time, and time how long
    /// each stays valid on --server (another node of a cluster) after the acknowledgement.
    Propagation,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Verify => "verify",
            Op::Ping => "ping",
            Op::Issue => "issue",
            Op::Revoke => "revoke",
            Op::Import => "import",
            Op::Propagation => "propagation",
        }
    }
}

impl Args {
    fn control_requests(&self) -> usize {
        self.requests.map_or(10_000, |n| n as usize)
    }

    fn measured(&self) -> Duration {
        match (self.duration, self.requests) {
            (Some(seconds), _) => Duration::from_secs_f64(seconds),
            (None, Some(_)) => Duration::from_secs_f64(DURATION_SECS_MAX),
            (None, None) => Duration::from_secs(10),
        }
    }
}

/// Bounds on the arguments.
const CONNECTIONS_MAX: usize = 65_536;
const DEPTH_MAX: usize = 4096;
const THREADS_MAX: usize = 1024;
const DURATION_SECS_MAX: f64 = 24.0 * 3600.0;
const RATE_MAX: f64 = 1e9;
const TOKENS_MAX: usize = 1_000_000;
const SWEEP_STEPS_MAX: usize = 100;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.generate_assets {
        return match keyward::assets::generate(<Args as clap::CommandFactory>::command(), dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("keyward-loadgen: error: {}: {error}", dir.display());
                ExitCode::from(2)
            }
        };
    }
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("keyward-loadgen: error: {message}");
            ExitCode::from(2)
        }
    }
}

/// Parses `1ms`, `500us`, `250µs`, `2s`, `1.5ms`.
fn parse_time(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} needs a unit: ns, us, ms or s"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .ok_or_else(|| format!("{text:?}: not a positive number"))?;
    let seconds = match unit {
        "ns" => value / 1e9,
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (ns, us, ms or s)"
            ))
        }
    };
    if seconds > DURATION_SECS_MAX {
        return Err(format!("{text:?}: longer than a day"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn validate(args: &Args) -> Result<(), String> {
    let check = |ok: bool, message: &str| if ok { Ok(()) } else { Err(message.to_string()) };
    let control = matches!(
        args.op,
        Op::Issue | Op::Revoke | Op::Import | Op::Propagation
    );
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
        args.batch == 0 || args.protocol != Protocol::Memcache,
        "--batch is not offered with --protocol memcache (its multi-get answers only the hits)",
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
        args.duration
            .is_none_or(|d| d > 0.0 && d <= DURATION_SECS_MAX),
        "--duration must be above 0 and at most a day",
    )?;
    check(
        args.warmup >= 0.0 && args.warmup <= DURATION_SECS_MAX,
        "--warmup must be 0 to a day",
    )?;
    check(
        args.refill == Refill::Each || (args.rate.is_none() && !args.sweep),
        "--refill applies to the closed loop; open loop sends on its schedule",
    )?;
    check(
        args.requests.is_none_or(|n| n > 0),
        "--requests must be at least 1",
    )?;
    check(
        args.rate
            .is_none_or(|r| r.is_finite() && r > 0.0 && r <= RATE_MAX),
        "--rate must be above 0 and at most 1e9 requests/s",
    )?;
    check(
        args.zipf.is_none_or(|s| s.is_finite() && s > 0.0),
        "--zipf must be a number above 0 (1.0 to 1.3 are typical)",
    )?;
    check(
        args.tokens.is_none_or(|n| (1..=TOKENS_MAX).contains(&n)),
        "--tokens must be 1 to 1000000",
    )?;
    check(
        (1..=SWEEP_STEPS_MAX).contains(&args.sweep_steps),
        "--sweep-steps must be 1 to 100",
    )?;
    check(
        !args.sweep || args.slo_p99.is_some(),
        "--sweep needs the latency bound, e.g. --slo-p99 1ms",
    )?;
    check(
        !args.sweep || (args.rate.is_none() && args.requests.is_none()),
        "--sweep chooses its own rates and runs --duration per step: drop --rate and --requests",
    )?;
    check(
        !(control && (args.sweep || args.rate.is_some() || args.prepare)),
        "--rate, --sweep and --prepare apply to --op verify and ping",
    )?;
    check(
        args.protocol == Protocol::Keyward || !control,
        "control operations (--op issue, revoke, import) are keyward's own: use --protocol keyward",
    )?;
    check(
        args.protocol == Protocol::Keyward
            || (args.scope.is_none() && args.client_address.is_none() && args.tokens.is_none()),
        "--scope, --client-address and --tokens are keyward features a key store lacks: use --protocol keyward",
    )?;
    check(
        !args.prepare || (args.protocol != Protocol::Keyward && args.op == Op::Verify),
        "--prepare loads credentials into a baseline store (--protocol resp or memcache); keyward's own keys come from `keyward-ctl keys generate` or `import`",
    )?;
    check(
        args.keys.is_some() || args.op != Op::Verify,
        "--keys FILE is required with --op verify (write one with `keyward-ctl keys generate`)",
    )?;
    check(
        args.op == Op::Verify
            || (args.mix.is_none() && args.zipf.is_none() && args.tokens.is_none()),
        "--mix, --zipf and --tokens apply to --op verify",
    )?;
    Ok(())
}

fn run(args: Args) -> Result<bool, String> {
    validate(&args)?;
    if matches!(
        args.op,
        Op::Issue | Op::Revoke | Op::Import | Op::Propagation
    ) {
        return control::run(&args);
    }
    let requests = Arc::new(build_requests(&args)?);
    if args.prepare {
        return prepare::run(&args, &requests).map(|_| true);
    }
    if args.sweep {
        return sweep(&args, &requests);
    }
    let outcome = measure(&args, &requests, args.rate, args.measured())?;
    let settings = settings(&args, args.rate);
    if args.json {
        let mut report = outcome.json();
        report["settings"] = settings;
        outln!("{report}");
    } else {
        outcome.print(&headline(&args, args.rate, outcome.seconds));
    }
    if let Some(path) = &args.hgrm {
        let mut file =
            std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        report::write_hgrm(&outcome.histogram, &mut file)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        report::plot_percentiles(path, &plot_title(&args, args.rate), &outcome.histogram)?;
    }
    finish(&outcome.tally, outcome.unanswered)
}

/// Says what went wrong with the answers; true when nothing did.
fn finish(tally: &Tally, unanswered: u64) -> Result<bool, String> {
    if let Some(example) = &tally.first_mismatch {
        eprintln!(
            "keyward-loadgen: {} answers differed from the expected status; first: {example}",
            tally.mismatches
        );
    }
    if unanswered > 0 {
        eprintln!(
            "keyward-loadgen: {unanswered} measured requests were not answered within {} s of the end",
            drive::DRAIN.as_secs()
        );
    }
    Ok(tally.mismatches == 0 && unanswered == 0)
}

fn build_requests(args: &Args) -> Result<Requests, String> {
    if args.op == Op::Ping {
        return Ok(Requests::ping(args.protocol));
    }
    let path = args
        .keys
        .as_ref()
        .expect("validated: --keys with --op verify");
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let keys = keyset::read_key_file(std::io::BufReader::new(file))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if keys.is_empty() {
        return Err(format!(
            "{}: no credentials in the key file",
            path.display()
        ));
    }
    for key in &keys {
        args.protocol.check_key(&key.credential)?;
    }
    let mix = match (&args.mix, args.tokens) {
        (Some(text), _) => Some(Mix::parse(text)?),
        (None, Some(_)) => Some(Mix(vec![(Kind::Derived, 1.0)])),
        (None, None) => None,
    };
    if args.protocol != Protocol::Keyward && mix.as_ref().is_some_and(|m| m.has(Kind::Derived)) {
        return Err("derived tokens exist only in keyward: drop `derived` from --mix".into());
    }
    let mut pools = match &mix {
        Some(mix) => Pools::from_key_file(&keys, mix, args.seed)?,
        None => Pools {
            pools: vec![(Kind::Filed(Status::Valid), keys.clone())],
        },
    };
    if mix.as_ref().is_some_and(|m| m.has(Kind::Derived)) {
        let tokens = derive_tokens(&args.server, &keys, args.tokens.unwrap_or(1000))?;
        pools.set(Kind::Derived, tokens);
    }
    let shape = Shape {
        protocol: args.protocol,
        batch: args.batch,
        mix: mix.as_ref(),
        popularity: args.zipf.map_or(Popularity::Uniform, Popularity::Zipf),
        scope: args.scope.as_deref(),
        address: args.client_address,
        seed: args.seed,
    };
    Requests::build(&pools, &shape)
}

/// Mints one derived token per valid key (up to `count`), each expected to verify as valid.
fn derive_tokens(
    server: &Endpoint,
    keys: &[ExpectedKey],
    count: usize,
) -> Result<Vec<ExpectedKey>, String> {
    let mut client = keyward::client::Client::connect_to(server)
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
                scopes: key.scopes.clone(),
                allow: key.allow.clone(),
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

/// One measured run: spawns the threads, prints progress once a second, merges the results.
fn measure(
    args: &Args,
    requests: &Arc<Requests>,
    rate: Option<f64>,
    duration: Duration,
) -> Result<Outcome, String> {
    let owned: Vec<usize> = (0..args.threads)
        .map(|t| args.connections / args.threads + usize::from(t < args.connections % args.threads))
        .collect();
    let schedules = rate.map(|rate| Schedule::split(rate, &owned));
    let plans: Vec<ThreadPlan> = owned
        .iter()
        .enumerate()
        .map(|(thread, &connections)| ThreadPlan {
            server: args.server.clone(),
            protocol: args.protocol,
            connections,
            depth: args.depth,
            refill_whole: args.refill == Refill::Whole,
            schedule: schedules.as_ref().map(|s| s[thread]),
            budget: args
                .requests
                .map(|total| (total * connections as u64).div_ceil(args.connections as u64)),
            start: thread * requests.len() / args.threads,
            cpu: (!args.cpus.is_empty()).then(|| args.cpus[thread % args.cpus.len()]),
            warmup: Duration::from_secs_f64(args.warmup),
            duration,
        })
        .collect();
    let shared = Shared::new();
    let barrier = Barrier::new(plans.len() + 1);
    let warmup = Duration::from_secs_f64(args.warmup);
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = plans
            .iter()
            .map(|plan| {
                let (requests, shared, barrier) = (&**requests, &shared, &barrier);
                scope.spawn(move || drive::run_thread(plan, requests, shared, barrier))
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let mut last = Instant::now();
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            if args.quiet || last.elapsed() < Duration::from_secs(1) {
                continue;
            }
            let interval = shared
                .interval
                .lock()
                .map(|mut h| {
                    let copy = h.clone();
                    h.reset();
                    copy
                })
                .unwrap_or_else(|_| new_histogram());
            let seconds = last.elapsed().as_secs_f64();
            last = Instant::now();
            let elapsed = started.elapsed();
            let phase = if elapsed < warmup {
                " (warm-up)"
            } else if elapsed > warmup + duration {
                " (draining)"
            } else {
                ""
            };
            eprintln!(
                "[{:>6.1}s] {:>11} req/s  p50 {:>9}  p99 {:>9}  errors {}{phase}",
                elapsed.as_secs_f64(),
                thousands((interval.len() as f64 / seconds) as u64),
                micros(interval.value_at_percentile(50.0)),
                micros(interval.value_at_percentile(99.0)),
                thousands(shared.errors.load(Ordering::Relaxed)),
            );
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect::<Vec<_>>()
    });
    let mut outcome = Outcome {
        seconds: 0.0,
        completed: 0,
        credentials: requests.credentials,
        histogram: new_histogram(),
        tally: Tally::default(),
        unanswered: 0,
        unsent: 0,
        per_thread: Vec::new(),
        target_rate: rate,
    };
    // The first real error, not the "stopped because another thread failed" ones.
    let mut failure = None;
    for result in results {
        match result {
            Ok(result) => {
                outcome
                    .histogram
                    .add(&result.histogram)
                    .map_err(|e| e.to_string())?;
                outcome.tally.add(&result.tally);
                outcome.completed += result.completed;
                outcome.unanswered += result.unanswered;
                outcome.unsent += result.unsent;
                outcome.seconds = outcome.seconds.max(result.sending.as_secs_f64());
                outcome.per_thread.push(result.completed);
            }
            Err(error) => {
                failure.get_or_insert(error);
            }
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(outcome),
    }
}

/// The sweep: a closed-loop run finds the capacity, then open-loop steps at 1/N, 2/N … of it
/// until the p99 bound breaks well past or the server falls behind.
fn sweep(args: &Args, requests: &Arc<Requests>) -> Result<bool, String> {
    let slo = args.slo_p99.expect("validated: --sweep needs --slo-p99");
    let duration = args.measured();
    if !args.quiet {
        eprintln!("keyward-loadgen: sweep: closed-loop run to find the capacity");
    }
    let capacity = measure(args, requests, None, duration)?;
    let mut tally = capacity.tally.clone();
    let mut unanswered = capacity.unanswered;
    let mut steps = Vec::new();
    let mut best: Option<(f64, Outcome)> = None;
    for step in 1..=args.sweep_steps + 2 {
        let rate = capacity.rate() * step as f64 / args.sweep_steps as f64;
        if rate <= 0.0 {
            break;
        }
        if !args.quiet {
            eprintln!(
                "keyward-loadgen: sweep step {step}: {} requests/s",
                thousands(rate as u64)
            );
        }
        let outcome = measure(args, requests, Some(rate), duration)?;
        tally.add(&outcome.tally);
        unanswered += outcome.unanswered;
        let Verdict { within, saturated } = judge_step(rate, &outcome, slo);
        if within && best.as_ref().is_none_or(|(r, _)| rate > *r) {
            best = Some((rate, outcome.clone()));
        }
        steps.push((rate, outcome, within));
        if saturated {
            break;
        }
    }
    let best_rate = best.as_ref().map(|(rate, _)| *rate);
    if args.json {
        let rows: Vec<_> = steps
            .iter()
            .map(|(rate, outcome, within)| {
                let mut row = outcome.json();
                row["target_rate"] = json!(rate);
                row["within_slo"] = json!(within);
                row
            })
            .collect();
        outln!(
            "{}",
            json!({
                "settings": settings(args, None),
                "slo_p99_us": slo.as_secs_f64() * 1e6,
                "closed_loop": capacity.json(),
                "steps": rows,
                "best_rate": best_rate,
            })
        );
    } else {
        outln!("{}", headline(args, None, duration.as_secs_f64()));
        outln!(
            "closed-loop capacity {} requests/s (p50 {}, p99 {}); open-loop steps, p99 bound {}:",
            thousands(capacity.rate() as u64),
            micros(capacity.percentile(50.0)),
            micros(capacity.percentile(99.0)),
            micros(slo.as_nanos() as u64),
        );
        outln!(
            "{:>14} {:>14} {:>10} {:>10} {:>10} {:>10}  within",
            "target/s",
            "achieved/s",
            "p50",
            "p99",
            "p99.9",
            "max"
        );
        for (rate, outcome, within) in &steps {
            outln!(
                "{:>14} {:>14} {:>10} {:>10} {:>10} {:>10}  {}",
                thousands(*rate as u64),
                thousands(outcome.rate() as u64),
                micros(outcome.percentile(50.0)),
                micros(outcome.percentile(99.0)),
                micros(outcome.percentile(99.9)),
                micros(outcome.histogram.max()),
                if *within { "yes" } else { "no" }
            );
        }
        match best_rate {
            Some(rate) => outln!(
                "highest rate with p99 ≤ {}: {} requests/s",
                micros(slo.as_nanos() as u64),
                thousands(rate as u64)
            ),
            None => outln!(
                "no step kept p99 ≤ {}: the bound is below this server's latency even at {} requests/s",
                micros(slo.as_nanos() as u64),
                thousands((capacity.rate() / args.sweep_steps as f64) as u64)
            ),
        }
    }
    if let (Some(path), Some((_, outcome))) = (&args.hgrm, &best) {
        let mut file =
            std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        report::write_hgrm(&outcome.histogram, &mut file)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let points: Vec<SweepPoint> = steps
            .iter()
            .map(|(_, o, _)| SweepPoint {
                achieved: o.rate(),
                p50_us: o.percentile(50.0) as f64 / 1e3,
                p99_us: o.percentile(99.0) as f64 / 1e3,
            })
            .collect();
        report::plot_sweep(
            path,
            &plot_title(args, None),
            &points,
            slo.as_secs_f64() * 1e6,
        )?;
    }
    finish(&tally, unanswered)
}

/// How one sweep step went.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    /// The server held the rate (≥ 95 %, under 1 % left unsent), with no errors and p99 within
    /// the bound.
    within: bool,
    /// The server fell behind, or p99 passed 20× the bound: no point in going higher.
    saturated: bool,
}

fn judge_step(rate: f64, outcome: &Outcome, slo: Duration) -> Verdict {
    let p99 = outcome.percentile(99.0);
    let bound = slo.as_nanos() as u64;
    // A few requests due in the window's last instant may go unsent when it closes; more than
    // 1 % of the window's requests means the client could not send them in time.
    let held =
        outcome.rate() >= 0.95 * rate && (outcome.unsent as f64) <= 0.01 * rate * outcome.seconds;
    Verdict {
        within: held && p99 <= bound && outcome.errors() == 0,
        saturated: !held || p99 > bound.saturating_mul(20),
    }
}

fn settings(args: &Args, rate: Option<f64>) -> serde_json::Value {
    json!({
        "protocol": args.protocol.name(),
        "server": args.server.to_string(),
        "op": args.op.name(),
        "connections": args.connections,
        "depth": args.depth,
        "refill": format!("{:?}", args.refill).to_lowercase(),
        "batch": args.batch,
        "threads": args.threads,
        "cpus": args.cpus,
        "rate": rate,
        "mix": args.mix,
        "zipf": args.zipf,
        "warmup_seconds": args.warmup,
    })
}

fn headline(args: &Args, rate: Option<f64>, seconds: f64) -> String {
    let mode = match rate {
        Some(rate) => format!("open loop at {} requests/s", thousands(rate as u64)),
        None => "closed loop".to_string(),
    };
    format!(
        "keyward-loadgen: {} over {} against {}, {} connection(s) × depth {}{}, {mode}, {} thread(s){}, {:.1} s measured after {:.1} s warm-up",
        args.op.name(),
        args.protocol.name(),
        args.server,
        args.connections,
        args.depth,
        if args.batch > 0 { format!(" × batch {}", args.batch) } else { String::new() },
        args.threads,
        if args.cpus.is_empty() { String::new() } else { format!(" on CPU(s) {:?}", args.cpus) },
        seconds,
        args.warmup,
    )
}

fn plot_title(args: &Args, rate: Option<f64>) -> String {
    format!(
        "{} {} — {}×{}{}",
        args.protocol.name(),
        args.op.name(),
        args.connections,
        args.depth,
        match (args.sweep, rate) {
            (true, _) => " — rate sweep".to_string(),
            (false, Some(rate)) => format!(" at {}/s", thousands(rate as u64)),
            (false, None) => " closed loop".to_string(),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut all = vec!["keyward-loadgen"];
        all.extend_from_slice(extra);
        Args::try_parse_from(all).unwrap()
    }

    fn error(extra: &[&str]) -> String {
        validate(&args(extra)).unwrap_err()
    }

    #[test]
    fn argument_bounds_give_clear_errors() {
        assert!(error(&["--connections", "0", "--keys", "k"]).contains("--connections"));
        assert!(
            error(&["--threads", "4", "--connections", "2", "--keys", "k"]).contains("--threads")
        );
        assert!(error(&["--batch", "300", "--keys", "k"]).contains("--batch"));
        assert!(error(&["--op", "ping", "--batch", "8"]).contains("--batch"));
        assert!(error(&[]).contains("keyward-ctl keys generate"));
        assert!(error(&["--keys", "k", "--rate", "0"]).contains("--rate"));
        assert!(error(&["--keys", "k", "--rate", "NaN"]).contains("--rate"));
        assert!(error(&["--keys", "k", "--zipf=-1"]).contains("--zipf"));
        assert!(error(&["--keys", "k", "--sweep"]).contains("--slo-p99"));
        assert!(
            error(&["--keys", "k", "--sweep", "--slo-p99", "1ms", "--rate", "5"])
                .contains("--rate")
        );
        assert!(error(&["--keys", "k", "--prepare"]).contains("baseline"));
        assert!(error(&["--keys", "k", "--protocol", "resp", "--scope", "a"]).contains("--scope"));
        assert!(
            error(&["--keys", "k", "--protocol", "memcache", "--batch", "4"]).contains("memcache")
        );
        assert!(error(&["--op", "issue", "--protocol", "resp"]).contains("keyward"));
        assert!(error(&["--op", "issue", "--rate", "10"]).contains("--rate"));
        assert!(error(&["--keys", "k", "--requests", "0"]).contains("--requests"));
        assert!(error(&["--keys", "k", "--refill", "whole", "--rate", "9"]).contains("--refill"));
        assert!(error(&["--keys", "k", "--duration", "0"]).contains("--duration"));
        assert!(validate(&args(&["--op", "ping"])).is_ok());
        assert!(validate(&args(&["--op", "import", "--batch", "1000"])).is_ok());
        assert!(validate(&args(&["--keys", "k", "--protocol", "resp", "--prepare"])).is_ok());
        assert!(validate(&args(&["--keys", "k", "--sweep", "--slo-p99", "500us"])).is_ok());
        assert!(Args::try_parse_from(["keyward-loadgen", "--op", "fly"]).is_err());
        assert!(Args::try_parse_from(["keyward-loadgen", "--slo-p99", "1"]).is_err());
    }

    #[test]
    fn sweep_steps_are_judged_on_rate_latency_and_errors() {
        let outcome = |completed: u64, p99_us: u64, unsent: u64, mismatches: u64| {
            let mut histogram = new_histogram();
            histogram.record_n(p99_us * 1000, 100).unwrap();
            let tally = Tally {
                mismatches,
                ..Tally::default()
            };
            Outcome {
                seconds: 1.0,
                completed,
                credentials: 1,
                histogram,
                tally,
                unanswered: 0,
                unsent,
                per_thread: vec![completed],
                target_rate: Some(1000.0),
            }
        };
        let slo = Duration::from_millis(1);
        let verdict = |o: &Outcome| judge_step(1000.0, o, slo);
        let fine = Verdict {
            within: true,
            saturated: false,
        };
        assert_eq!(verdict(&outcome(1000, 500, 0, 0)), fine);
        assert_eq!(verdict(&outcome(960, 500, 0, 0)), fine);
        // Over the bound but not far: keep stepping.
        assert_eq!(
            verdict(&outcome(1000, 5_000, 0, 0)),
            Verdict {
                within: false,
                saturated: false
            }
        );
        assert_eq!(
            verdict(&outcome(1000, 50_000, 0, 0)),
            Verdict {
                within: false,
                saturated: true
            }
        );
        // Fell behind, or left requests unsent: saturated.
        assert_eq!(
            verdict(&outcome(900, 500, 0, 0)),
            Verdict {
                within: false,
                saturated: true
            }
        );
        assert_eq!(
            verdict(&outcome(1000, 500, 30, 0)),
            Verdict {
                within: false,
                saturated: true
            }
        );
        // A handful unsent as the window closes is not falling behind.
        assert_eq!(verdict(&outcome(1000, 500, 3, 0)), fine);
        // Wrong answers never count as within.
        assert_eq!(
            verdict(&outcome(1000, 500, 0, 1)),
            Verdict {
                within: false,
                saturated: false
            }
        );
    }

    #[test]
    fn times_parse_with_units() {
        assert_eq!(parse_time("1ms").unwrap(), Duration::from_millis(1));
        assert_eq!(parse_time("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_time("250µs").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_time("1.5ms").unwrap(), Duration::from_micros(1500));
        assert_eq!(parse_time("2s").unwrap(), Duration::from_secs(2));
        for bad in ["1", "ms", "0ms", "-1ms", "1 hour", "1e9s"] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn duration_defaults_depend_on_the_request_bound() {
        assert_eq!(args(&[]).measured(), Duration::from_secs(10));
        assert_eq!(
            args(&["--duration", "2.5"]).measured(),
            Duration::from_millis(2500)
        );
        assert!(args(&["--requests", "10"]).measured() > Duration::from_secs(3600));
        assert_eq!(
            args(&["--requests", "10", "--duration", "1"]).measured(),
            Duration::from_secs(1)
        );
    }
}
