//! `keyward-ctl stat`: a live line per interval from a server's metrics listener, like
//! `redis-cli --stat`: verifies per second by status, open connections, p99 service time,
//! sequences. `--json` prints one object per interval instead.

use keyward::outln;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use keyward::metrics::scrape::{self, Sample};
use keyward::protocol::Status;

use crate::Failure;

#[derive(Args)]
pub struct StatArgs {
    /// The server's metrics listener (`metrics_listen`).
    #[arg(long, default_value = "127.0.0.1:7502", value_name = "ADDR")]
    metrics: SocketAddr,
    /// Seconds between lines.
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    interval: f64,
    /// Stop after this many lines [default: run until interrupted].
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

/// The figures one scrape gives.
#[derive(Default)]
struct Reading {
    verifies: BTreeMap<String, f64>,
    connections: f64,
    service_buckets: Vec<(f64, f64)>,
    applied: f64,
    assigned: f64,
    keys: f64,
}

fn read(samples: &[Sample]) -> Reading {
    let mut reading = Reading::default();
    let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
    for sample in samples {
        match sample.name.as_str() {
            "keyward_verifies_total" => {
                let status = sample.label("status").unwrap_or("").to_string();
                *reading.verifies.entry(status).or_insert(0.0) += sample.value;
            }
            "keyward_connections_open" => reading.connections += sample.value,
            "keyward_applied_sequence" => reading.applied = sample.value,
            "keyward_assigned_sequence" => reading.assigned = sample.value,
            "keyward_table_snapshot_records" => reading.keys = sample.value,
            "keyward_request_service_seconds_bucket" => {
                let bound = match sample.label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(text) => text.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                *buckets.entry(bound.to_bits()).or_insert(0.0) += sample.value;
            }
            _ => {}
        }
    }
    let mut service: Vec<(f64, f64)> = buckets
        .into_iter()
        .map(|(bits, count)| (f64::from_bits(bits), count))
        .collect();
    service.sort_by(|a, b| a.0.total_cmp(&b.0));
    reading.service_buckets = service;
    reading
}

/// The upper bound of the bucket holding the 99th percentile of what was observed between two
/// readings (cumulative buckets), in seconds; `None` when nothing was.
fn p99(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, c)| *c);
            (bound, count - earlier)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, cumulative)| *cumulative >= total * 0.99)
        .map(|(bound, _)| *bound)
}

fn fetch(address: SocketAddr) -> Result<Reading, Failure> {
    let text = scrape::fetch(address, "/metrics")
        .map_err(|e| Failure::Error(format!("cannot read {address}/metrics: {e}")))?;
    Ok(read(&scrape::parse(&text).map_err(Failure::Error)?))
}

pub fn run(args: StatArgs) -> Result<(), Failure> {
    if !(0.05..=3600.0).contains(&args.interval) {
        return Err(Failure::Error(
            "--interval must be between 0.05 and 3600 seconds".into(),
        ));
    }
    let interval = Duration::from_secs_f64(args.interval);
    let mut before = fetch(args.metrics)?;
    let mut taken = Instant::now();
    if !args.json {
        outln!(
            "{:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6} {:>10} {:>10}",
            "verify/s",
            "valid/s",
            "unknown/s",
            "revoked/s",
            "expired/s",
            "malformed/s",
            "denied/s",
            "conns",
            "p99",
            "applied"
        );
    }
    let mut lines = 0u64;
    while args.count.is_none_or(|count| lines < count) {
        std::thread::sleep(interval);
        let after = fetch(args.metrics)?;
        let now = Instant::now();
        let seconds = now.duration_since(taken).as_secs_f64().max(1e-9);
        let rate = |status: &str| {
            (after.verifies.get(status).unwrap_or(&0.0)
                - before.verifies.get(status).unwrap_or(&0.0))
            .max(0.0)
                / seconds
        };
        let all: f64 = after.verifies.values().sum::<f64>() - before.verifies.values().sum::<f64>();
        let per_status: BTreeMap<&str, f64> = Status::ALL
            .iter()
            .map(|s| (s.name(), rate(s.name())))
            .collect();
        // Denied: the key is good but not for this request (scope, address, tenant, too wide).
        let denied = rate("scope_denied")
            + rate("address_denied")
            + rate("tenant_mismatch")
            + rate("too_wide");
        let p99 = p99(&before.service_buckets, &after.service_buckets);
        if args.json {
            outln!(
                "{}",
                json!({
                    "verifies_per_second": all.max(0.0) / seconds,
                    "by_status_per_second": per_status,
                    "connections_open": after.connections,
                    "service_p99_seconds": p99,
                    "applied_sequence": after.applied,
                    "assigned_sequence": after.assigned,
                    "snapshot_records": after.keys,
                })
            );
        } else {
            let p99 = p99.map_or("-".to_string(), |s| {
                if s.is_infinite() {
                    ">10s".into()
                } else if s < 0.001 {
                    format!("≤{:.0}µs", s * 1e6)
                } else {
                    format!("≤{:.1}ms", s * 1e3)
                }
            });
            outln!(
                "{:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>6.0} {:>10} {:>10.0}",
                all.max(0.0) / seconds,
                per_status["valid"],
                per_status["unknown"],
                per_status["revoked"],
                per_status["expired"] + per_status["not_yet_valid"],
                per_status["malformed"],
                denied,
                after.connections,
                p99,
                after.applied
            );
        }
        before = after;
        taken = now;
        lines += 1;
    }
    Ok(())
}
