//! A real Prometheus scrapes the real server: its query API returns the verify totals the
//! clients were answered. Needs the `prometheus` binary (Debian's package); skipped without it
//! unless KEYWARD_REQUIRE_BASELINES is set (as `.ci/run` sets it, after installing it).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyward::client::Client;
use keyward::protocol::VerifyRequest;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PromQL query's vector result: the value per `by` label (or "" for one series).
fn query(prometheus: SocketAddr, promql: &str, by: &str) -> BTreeMap<String, f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    // HTTP/1.0: the answer comes whole, closed, never chunked.
    let request = format!("GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: prometheus\r\n\r\n");
    let mut values = BTreeMap::new();
    let Some((200, body)) = common::try_http(prometheus, &request) else {
        return values; // not up yet
    };
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    for series in json["data"]["result"].as_array().into_iter().flatten() {
        let label = series["metric"][by].as_str().unwrap_or("").to_string();
        let value = series["value"][1].as_str().and_then(|v| v.parse().ok());
        if let Some(value) = value {
            values.insert(label, value);
        }
    }
    values
}

#[test]
fn prometheus_scrapes_the_totals_clients_were_answered() {
    if !common::installed("prometheus", "prometheus") {
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let keys = common::generated_data_dir(&directory.path().join("data"), 200);
    let server = common::Server::start(&directory.path().join("data"), &[]);
    let metrics = server.metrics.expect("a metrics listener");

    let mut answered: BTreeMap<String, f64> = BTreeMap::new();
    let mut client = Client::connect(server.address).unwrap();
    for key in &keys {
        let request = VerifyRequest {
            credential: key.credential.as_bytes(),
            ..Default::default()
        };
        let status = client.verify(&request).unwrap().status;
        *answered.entry(status.name().to_string()).or_insert(0.0) += 1.0;
    }

    let port = common::free_port();
    let config = directory.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: keyward\n    static_configs:\n      - targets: [\"{metrics}\"]\n"
        ),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                directory.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let prometheus: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Bounded: Prometheus starts, scrapes every second, and answers the query.
    let deadline = Instant::now() + Duration::from_secs(90);
    let promql = "sum by (status) (keyward_verifies_total)";
    let mut seen = BTreeMap::new();
    while Instant::now() < deadline {
        seen = query(prometheus, promql, "status");
        seen.retain(|_, value| *value > 0.0);
        if seen == answered {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        seen, answered,
        "Prometheus's totals against the clients' answers"
    );
    let up = query(prometheus, "up{job=\"keyward\"}", "job");
    assert_eq!(up.get("keyward"), Some(&1.0), "{up:?}");
}

#[test]
fn the_documented_alert_rules_are_valid_and_name_existing_metrics() {
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/prometheus/keyward-alerts.yml"
    );
    let Ok(output) = Command::new("promtool")
        .args(["check", "rules", rules])
        .output()
    else {
        assert!(
            std::env::var_os("KEYWARD_REQUIRE_BASELINES").is_none(),
            "promtool is not installed (apt-get install prometheus)"
        );
        eprintln!("skipping: promtool is not installed (apt-get install prometheus)");
        return;
    };
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Every keyward_ series the rules use is one the server exposes (the replicated mode's own
    // are checked against a cluster node in tests/cluster.rs).
    let directory = tempfile::tempdir().unwrap();
    let server = common::Server::start(directory.path(), &[]);
    let (_, scrape) = common::http_get(server.metrics.unwrap(), "/metrics");
    let text = std::fs::read_to_string(rules).unwrap();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("keyward_replication_") {
            continue;
        }
        if let Some(name) = word.strip_prefix("keyward_") {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(
                scrape.contains(&format!("# TYPE keyward_{base}")),
                "{word} is not exposed"
            );
        }
    }
}
