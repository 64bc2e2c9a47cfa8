//! `--op propagation`: how long a revocation takes to reach another node. Keys are imported on
//! the node of `--control` (unmeasured) and checked valid on the node of `--server`; then each
//! is revoked on `--control`, and from the acknowledgement on, `--server` is asked with VERIFY
//! until it stops answering `valid`. Reported: acknowledgement to first refusal (the window in
//! which the other node still said `valid`), and the REVOKE's own acknowledgement latency.

use keyward::outln;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use keyward::admin::{opcode, AdminClient};
use keyward::client::Client;
use keyward::protocol::{Status, VerifyRequest};

use crate::drive::new_histogram;
use crate::Args;

/// Longest a revocation may take to reach the other node before the run fails.
const REACH_MAX: Duration = Duration::from_secs(10);
/// Most revocations one run makes.
const REVOCATIONS_MAX: usize = 1_000_000;

pub fn run(args: &Args, token: &str) -> Result<bool, String> {
    let count = args.requests.map_or(1000, |n| n as usize);
    if count == 0 || count > REVOCATIONS_MAX {
        return Err(format!("--requests must be 1 to {REVOCATIONS_MAX}"));
    }
    let mut admin = AdminClient::connect(args.control, token)
        .map_err(|e| format!("cannot reach the control port {}: {e}", args.control))?;
    let mut observer = Client::connect_to(&args.server)
        .map_err(|e| format!("cannot reach the verify port {}: {e}", args.server))?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let credentials: Vec<String> = (0..count)
        .map(|i| format!("loadgen_propagation_{nonce:x}_{i:08}"))
        .collect();
    let mut ids = Vec::with_capacity(count);
    for chunk in credentials.chunks(1000) {
        let keys: Vec<_> = chunk.iter().map(|c| json!({ "credential": c })).collect();
        let answer = admin
            .call(opcode::IMPORT, &json!({ "keys": keys }))
            .map_err(|e| format!("IMPORT: {e}"))?;
        for result in answer["results"]
            .as_array()
            .ok_or("IMPORT answered no results")?
        {
            ids.push(result["id"].as_u64().ok_or("an import failed")?);
        }
    }
    let ask = |observer: &mut Client, credential: &str| -> Result<Status, String> {
        let request = VerifyRequest {
            credential: credential.as_bytes(),
            ..Default::default()
        };
        observer
            .verify(&request)
            .map(|r| r.status)
            .map_err(|e| format!("VERIFY on {}: {e}", args.server))
    };
    // Every key valid on the other node before anything is measured.
    let deadline = Instant::now() + REACH_MAX;
    while ask(&mut observer, credentials.last().expect("count ≥ 1"))? != Status::Valid {
        if Instant::now() > deadline {
            return Err(format!(
                "the imported keys never became valid on {}",
                args.server
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut window = new_histogram();
    let mut acks = new_histogram();
    let mut polls = 0u64;
    let started = Instant::now();
    for (id, credential) in ids.iter().zip(&credentials) {
        if let Some(pace) = args.pace_ms {
            std::thread::sleep(Duration::from_millis(pace));
        }
        let sent = Instant::now();
        admin
            .call(
                opcode::REVOKE,
                &json!({ "id": id, "reason": "loadgen propagation" }),
            )
            .map_err(|e| format!("REVOKE: {e}"))?;
        let acked = Instant::now();
        loop {
            polls += 1;
            if ask(&mut observer, credential)? != Status::Valid {
                break;
            }
            if acked.elapsed() > REACH_MAX {
                return Err(format!(
                    "key {id}, revoked on {}, was still valid on {} after {} s",
                    args.control,
                    args.server,
                    REACH_MAX.as_secs()
                ));
            }
        }
        record(&mut window, acked.elapsed());
        record(&mut acks, acked - sent);
    }
    let elapsed = started.elapsed();
    report(args, count, &window, &acks, polls, elapsed);
    Ok(true)
}

fn record(histogram: &mut Histogram<u64>, duration: Duration) {
    let _ = histogram.record(duration.as_nanos().min(u128::from(u64::MAX)) as u64);
}

fn us(histogram: &Histogram<u64>, percentile: f64) -> f64 {
    histogram.value_at_percentile(percentile) as f64 / 1e3
}

fn report(
    args: &Args,
    count: usize,
    window: &Histogram<u64>,
    acks: &Histogram<u64>,
    polls: u64,
    elapsed: Duration,
) {
    if args.json {
        outln!(
            "{}",
            json!({
                "op": "propagation",
                "revocations": count,
                "seconds": elapsed.as_secs_f64(),
                "window_p50_us": us(window, 50.0),
                "window_p99_us": us(window, 99.0),
                "window_max_us": window.max() as f64 / 1e3,
                "ack_p50_us": us(acks, 50.0),
                "ack_p99_us": us(acks, 99.0),
                "verifies_polled": polls,
            })
        );
        return;
    }
    outln!(
        "keyward-loadgen: {count} revocations on {}, watched on {} ({:.1} s)",
        args.control,
        args.server,
        elapsed.as_secs_f64()
    );
    outln!(
        "still valid there after the ack   p50 {:.0} µs   p99 {:.0} µs   max {:.0} µs",
        us(window, 50.0),
        us(window, 99.0),
        window.max() as f64 / 1e3
    );
    outln!(
        "REVOKE acknowledgement            p50 {:.0} µs   p99 {:.0} µs",
        us(acks, 50.0),
        us(acks, 99.0)
    );
}
