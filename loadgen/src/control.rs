//! Control-port load: ISSUE throughput with N concurrent clients, REVOKE acknowledgement
//! latency, and bulk IMPORT. Each client is a thread with its own blocking connection; latency
//! is measured per request from send to acknowledgement (which includes the fsync and the
//! fan-out to every shard).

use keyward::outln;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use keyward::admin::{opcode, AdminClient};

use crate::drive::new_histogram;
use crate::report::{micros, thousands};
use crate::{Args, Op};

/// Most keys one bulk import may create.
const IMPORT_KEYS_MAX: usize = 100_000_000;

fn token(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            format!(
                "cannot read the admin token {}: {e} (pass --token-file)",
                path.display()
            )
        })
}

fn connect(args: &Args, token: &str) -> Result<AdminClient, String> {
    AdminClient::connect(args.control, token)
        .map_err(|e| format!("cannot reach the control port {}: {e}", args.control))
}

/// Runs `per_client` calls on each of `clients` threads; `make` builds request `i` of client `c`.
fn drive(
    args: &Args,
    token: &str,
    clients: usize,
    per_client: usize,
    op: u8,
    make: impl Fn(usize, usize) -> serde_json::Value + Sync,
) -> Result<(Histogram<u64>, Duration), String> {
    let started = Instant::now();
    let make = &make;
    let results: Vec<Result<Histogram<u64>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|client| {
                scope.spawn(move || {
                    if let Some(&cpu) = args.cpus.get(client % args.cpus.len().max(1)) {
                        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                    }
                    let mut admin = connect(args, token)?;
                    let mut histogram = new_histogram();
                    for i in 0..per_client {
                        let request = make(client, i);
                        let sent = Instant::now();
                        admin.call(op, &request).map_err(|e| e.to_string())?;
                        histogram.saturating_record(sent.elapsed().as_nanos().max(1) as u64);
                    }
                    Ok(histogram)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    let mut total = new_histogram();
    for result in results {
        total.add(result?).map_err(|e| e.to_string())?;
    }
    Ok((total, elapsed))
}

fn report(
    args: &Args,
    name: &str,
    clients: usize,
    histogram: &Histogram<u64>,
    elapsed: Duration,
    items_per_request: u64,
) {
    let requests = histogram.len();
    let rate = requests as f64 / elapsed.as_secs_f64().max(1e-9);
    if args.json {
        outln!(
            "{{\"op\":\"{name}\",\"clients\":{clients},\"requests\":{requests},\"seconds\":{:.3},\"requests_per_sec\":{rate:.1},\"items_per_sec\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p99.9_us\":{:.1},\"max_us\":{:.1}}}",
            elapsed.as_secs_f64(),
            rate * items_per_request as f64,
            histogram.value_at_percentile(50.0) as f64 / 1e3,
            histogram.value_at_percentile(99.0) as f64 / 1e3,
            histogram.value_at_percentile(99.9) as f64 / 1e3,
            histogram.max() as f64 / 1e3,
        );
        return;
    }
    outln!(
        "keyward-loadgen: {name} against {}, {clients} client(s), {:.1} s",
        args.control,
        elapsed.as_secs_f64()
    );
    outln!(
        "requests     {} ({}/s)",
        thousands(requests),
        thousands(rate as u64)
    );
    if items_per_request > 1 {
        outln!(
            "keys         {} ({}/s)",
            thousands(requests * items_per_request),
            thousands((rate * items_per_request as f64) as u64)
        );
    }
    outln!(
        "latency      p50 {} p90 {} p99 {} p99.9 {} max {}",
        micros(histogram.value_at_percentile(50.0)),
        micros(histogram.value_at_percentile(90.0)),
        micros(histogram.value_at_percentile(99.0)),
        micros(histogram.value_at_percentile(99.9)),
        micros(histogram.max())
    );
}

pub fn run(args: &Args) -> Result<bool, String> {
    let token = token(&args.token_file)?;
    if args.op == Op::Propagation {
        return crate::propagation::run(args, &token);
    }
    let clients = args.connections;
    let per_client = args.control_requests().div_ceil(clients);
    let tag = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    match args.op {
        Op::Issue => {
            let (histogram, elapsed) = drive(
                args,
                &token,
                clients,
                per_client,
                opcode::ISSUE,
                |_, _| json!({ "tenant": "loadgen" }),
            )?;
            report(args, "issue", clients, &histogram, elapsed, 1);
        }
        Op::Revoke => {
            // Keys to revoke are issued first, outside the measurement.
            let mut ids = Vec::with_capacity(clients * per_client);
            let mut admin = connect(args, &token)?;
            for _ in 0..clients * per_client {
                let answer = admin
                    .call(opcode::ISSUE, &json!({ "tenant": "loadgen-revoke" }))
                    .map_err(|e| e.to_string())?;
                ids.push(
                    answer["key"]["id"]
                        .as_u64()
                        .ok_or("ISSUE answered without an id")?,
                );
            }
            if let Some(pause) = args.pace_ms {
                eprintln!(
                    "keyward-loadgen: revoking {} keys, one every {pause} ms per client",
                    ids.len()
                );
            }
            let ids = &ids;
            let pace = args.pace_ms.map(Duration::from_millis);
            let (histogram, elapsed) = drive(
                args,
                &token,
                clients,
                per_client,
                opcode::REVOKE,
                move |client, i| {
                    if let Some(pace) = pace {
                        std::thread::sleep(pace);
                    }
                    json!({ "id": ids[client * per_client + i], "reason": "loadgen" })
                },
            )?;
            report(args, "revoke", clients, &histogram, elapsed, 1);
        }
        Op::Import => {
            let total = args.control_requests();
            if total == 0 || total > IMPORT_KEYS_MAX {
                return Err(format!(
                    "--requests (keys to import) must be 1 to {IMPORT_KEYS_MAX}"
                ));
            }
            let batch = if args.batch == 0 {
                1000
            } else {
                args.batch.min(1000)
            };
            let requests = total.div_ceil(batch);
            let per_client = requests.div_ceil(clients);
            let (histogram, elapsed) = drive(
                args,
                &token,
                clients,
                per_client,
                opcode::IMPORT,
                |client, i| {
                    let first = (client * per_client + i) * batch;
                    let keys: Vec<_> = (first..first + batch)
                    .map(|n| json!({ "credential": format!("lg_{tag}_{n:012}"), "tenant": "imported" }))
                    .collect();
                    json!({ "keys": keys })
                },
            )?;
            report(args, "import", clients, &histogram, elapsed, batch as u64);
        }
        Op::Verify | Op::Ping | Op::Propagation => {
            unreachable!("handled above, or not a control operation")
        }
    }
    Ok(true)
}
