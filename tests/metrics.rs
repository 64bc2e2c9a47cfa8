//! The metrics listener of the real server: what a scrape says equals what clients were
//! answered, `/healthz` and `/readyz` answer, and anything else gets a clear HTTP error.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use keyward::client::Client;
use keyward::protocol::{Status, VerifyRequest};

fn http(address: SocketAddr, request: &str) -> (u16, String) {
    common::http(address, request)
}

fn get(address: SocketAddr, path: &str) -> (u16, String) {
    common::http_get(address, path)
}

/// `keyward_verifies_total` summed over credential kinds, by status.
fn verifies_by_status(scrape: &str) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    for line in scrape
        .lines()
        .filter(|l| l.starts_with("keyward_verifies_total{"))
    {
        let status = line
            .split("status=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_string();
        let value: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *totals.entry(status).or_insert(0) += value;
    }
    totals.retain(|_, count| *count > 0);
    totals
}

fn value_of(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn scraped_verify_counts_equal_what_clients_were_answered() {
    let directory = tempfile::tempdir().unwrap();
    let keys = common::generated_data_dir(directory.path(), 400);
    let server = common::Server::start(directory.path(), &[]);
    let metrics = server.metrics.expect("a metrics listener");

    // Several connections, so both shards answer; single VERIFYs and batches.
    let mut answered: BTreeMap<String, u64> = BTreeMap::new();
    for chunk in keys.chunks(50) {
        let mut client = Client::connect(server.address).unwrap();
        for key in &chunk[..25] {
            let request = VerifyRequest {
                credential: key.credential.as_bytes(),
                ..Default::default()
            };
            let result = client.verify(&request).unwrap();
            *answered
                .entry(result.status.name().to_string())
                .or_insert(0) += 1;
        }
        let requests: Vec<VerifyRequest<'_>> = chunk[25..]
            .iter()
            .map(|key| VerifyRequest {
                credential: key.credential.as_bytes(),
                ..Default::default()
            })
            .collect();
        for result in client.verify_batch(&requests).unwrap() {
            *answered
                .entry(result.status.name().to_string())
                .or_insert(0) += 1;
        }
    }
    let mut client = Client::connect(server.address).unwrap();
    let malformed = VerifyRequest {
        credential: b"kw_not-a-key",
        ..Default::default()
    };
    assert_eq!(client.verify(&malformed).unwrap().status, Status::Malformed);
    *answered.entry("malformed".into()).or_insert(0) += 1;
    assert!(answered.len() >= 5, "{answered:?}");

    // Shards publish on their clock tick: the scrape catches up within a few ticks.
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let (status, scrape) = get(metrics, "/metrics");
        assert_eq!(status, 200);
        if verifies_by_status(&scrape) == answered || Instant::now() > deadline {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(verifies_by_status(&scrape), answered, "{scrape}");
    assert_eq!(
        value_of(
            &scrape,
            "keyward_requests_total{operation=\"verify_batch\"}"
        ),
        Some(8.0)
    );
    assert_eq!(
        value_of(
            &scrape,
            "keyward_verifies_total{status=\"malformed\",kind=\"native\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value_of(&scrape, "keyward_table_snapshot_records"),
        Some(380.0)
    );
    for name in [
        "# TYPE keyward_verifies_total counter",
        "# TYPE keyward_connections_open gauge",
        "keyward_connections_accepted_total{shard=\"1\"}",
        "keyward_shard_applied_sequence{shard=\"0\"}",
        "keyward_turn_submissions_total",
        "keyward_receive_buffer_shortages_total",
        "keyward_request_service_seconds_bucket{le=\"0.001\"}",
    ] {
        assert!(scrape.contains(name), "{name} missing from {scrape}");
    }
}

#[test]
fn changes_show_in_sequences_latencies_and_every_shards_applied_sequence() {
    use keyward::admin::opcode;
    use serde_json::json;
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 20);
    let server = common::Server::start(directory.path(), &[]);
    let metrics = server.metrics.expect("a metrics listener");
    let mut admin = server.admin();
    for _ in 0..3 {
        let issued = admin
            .call(opcode::ISSUE, &json!({ "tenant": "acme" }))
            .unwrap();
        let id = issued["key"]["id"].as_u64().unwrap();
        admin
            .call(
                opcode::REVOKE,
                &json!({ "id": id, "reason": "metrics test" }),
            )
            .unwrap();
    }
    // Six changes, each acknowledged only once every shard applied it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let (_, scrape) = get(metrics, "/metrics");
        let shards_caught_up = ["0", "1"].iter().all(|shard| {
            value_of(
                &scrape,
                &format!("keyward_shard_applied_sequence{{shard=\"{shard}\"}}"),
            ) == Some(6.0)
        });
        if shards_caught_up || Instant::now() > deadline {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        value_of(&scrape, "keyward_applied_sequence"),
        Some(6.0),
        "{scrape}"
    );
    assert_eq!(value_of(&scrape, "keyward_assigned_sequence"), Some(6.0));
    assert_eq!(
        value_of(&scrape, "keyward_change_ack_seconds_count"),
        Some(6.0)
    );
    assert_eq!(
        value_of(&scrape, "keyward_table_overlay_records"),
        Some(3.0)
    );
    assert!(value_of(&scrape, "keyward_delta_log_sync_seconds_count").unwrap() >= 1.0);
    assert!(value_of(&scrape, "keyward_delta_log_bytes").unwrap() > 16.0);
    for shard in ["0", "1"] {
        let series = format!("keyward_shard_applied_sequence{{shard=\"{shard}\"}}");
        assert_eq!(value_of(&scrape, &series), Some(6.0), "{scrape}");
    }
}

#[test]
fn health_readiness_and_http_errors() {
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 10);
    let server = common::Server::start(directory.path(), &[]);
    let metrics = server.metrics.expect("a metrics listener");
    assert_eq!(get(metrics, "/healthz"), (200, "ok\n".into()));
    // Ready once every shard has published (its first tick, within 50 ms of starting).
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(metrics, "/readyz").0 != 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(metrics, "/readyz"), (200, "ready\n".into()));
    assert_eq!(get(metrics, "/nowhere").0, 404);
    assert_eq!(
        http(
            metrics,
            "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
        )
        .0,
        405
    );
    assert_eq!(http(metrics, "NOT HTTP AT ALL\r\n\r\n").0, 400);
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(http(metrics, &huge).0, 431);
    // A client that sends nothing is dropped after the I/O timeout; the listener goes on.
    let _silent = TcpStream::connect(metrics).unwrap();
    assert_eq!(get(metrics, "/healthz").0, 200);
}

#[test]
fn an_empty_metrics_address_turns_the_listener_off() {
    let directory = tempfile::tempdir().unwrap();
    let server = common::Server::start(directory.path(), &["--metrics-listen", ""]);
    assert!(server.metrics.is_none());
    let mut client = Client::connect(server.address).unwrap();
    client.ping().unwrap();
}

#[test]
fn readyz_says_not_ready_while_a_shard_is_not_serving_yet() {
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 10);
    // Debug builds only: shard 0 waits this long before its first turn.
    let mut command = common::keyward_command(directory.path(), &["--shards", "2"]);
    command.env("KEYWARD_DEBUG_SHARD_START_DELAY_MS", "2000");
    let server = common::Server::start_command(command, directory.path());
    let metrics = server.metrics.expect("a metrics listener");
    let started = Instant::now();
    // Shard 1 and the control plane come up within milliseconds; shard 0 stays out.
    let (status, body) = loop {
        let (status, body) = get(metrics, "/readyz");
        if !body.contains("shard 1") && !body.contains("control plane") {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "checked too late to mean anything"
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shard 0 is not serving yet"), "{body}");
    assert_eq!(get(metrics, "/healthz").0, 200, "alive all along");
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(metrics, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(metrics, "/readyz"), (200, "ready\n".into()));
}
