//! keyward-loadgen against real servers on loopback: a 2-shard keyward (started here), and,
//! when installed, redis-server and memcached. Every run checks every answer; these tests
//! check what the load generator reports, never how fast anything was.
//!
//! Without redis-server or memcached on the PATH the baseline tests say so and pass, so the
//! suite runs on a machine with only the Rust toolchain; with KEYWARD_REQUIRE_BASELINES=1 (as
//! `.ci/run` sets after installing them) a missing one is a failure.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn sibling(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_keyward-loadgen")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Keyward {
    _process: Process,
    verify: String,
    control: String,
    /// The metrics listener, when started with one.
    metrics: Option<std::net::SocketAddr>,
    dir: tempfile::TempDir,
}

/// A 2-shard keyward over a generated table of `count` keys; the key file is `keys.txt`.
fn keyward(count: usize) -> Keyward {
    keyward_on(count, |_| "127.0.0.1:0".to_string())
}

/// Like [`keyward`], with the verify port at `listen(directory)`.
fn keyward_on(count: usize, listen: impl FnOnce(&Path) -> String) -> Keyward {
    keyward_with(count, listen, "")
}

/// Like [`keyward_on`], with the metrics listener at `metrics` ("" for none).
fn keyward_with(count: usize, listen: impl FnOnce(&Path) -> String, metrics: &str) -> Keyward {
    let dir = tempfile::tempdir().unwrap();
    let listen = listen(dir.path());
    let data = dir.path().join("data");
    let status = Command::new(sibling("keyward-ctl"))
        .args([
            "keys",
            "generate",
            "--count",
            &count.to_string(),
            "--data-dir",
        ])
        .arg(&data)
        .arg("--out-keys")
        .arg(dir.path().join("keys.txt"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = Command::new(sibling("keyward"))
        .args(["serve", "--listen", &listen, "--control", "127.0.0.1:0"])
        .args(["--metrics-listen", metrics])
        .args(["--shards", "2", "--spin-before-park-us", "0", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut verify = None;
    let mut control = None;
    let mut metrics_address = None;
    loop {
        let line = lines.next().expect("server exited").unwrap();
        if let Some(rest) = line.split("verify port listening on ").nth(1) {
            verify = Some(rest.split_whitespace().next().unwrap().to_string());
        }
        if let Some(rest) = line.split("control port listening on ").nth(1) {
            control = Some(rest.split_whitespace().next().unwrap().to_string());
        }
        if let Some(rest) = line.split("metrics listening on ").nth(1) {
            metrics_address = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
        }
        if line.contains("press Ctrl-C to stop") {
            break;
        }
    }
    // Keep draining the server's output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Keyward {
        _process: Process(child),
        verify: verify.expect("verify port line"),
        control: control.expect("control port line"),
        metrics: metrics_address,
        dir,
    }
}

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyward-loadgen"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs with --json and returns the report; panics with the output unless the exit code is `code`.
fn report(args: &[&str], code: i32) -> Value {
    let mut all = args.to_vec();
    all.extend(["--json", "--quiet"]);
    let output = loadgen(&all);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn a_mixed_workload_is_answered_as_expected_and_reported() {
    let server = keyward(2000);
    let keys = server.dir.path().join("keys.txt");
    let hgrm = server.dir.path().join("run.hgrm");
    let svg = server.dir.path().join("run.svg");
    let run = report(
        &[
            "--server",
            &server.verify,
            "--keys",
            keys.to_str().unwrap(),
            "--mix",
            "valid=60,unknown=10,revoked=10,expired=5,malformed=10,derived=5",
            "--tokens",
            "50",
            "--zipf",
            "1.1",
            "--scope",
            "orders:write",
            "--connections",
            "4",
            "--depth",
            "8",
            "--threads",
            "2",
            "--warmup",
            "0.2",
            "--requests",
            "20000",
            "--hgrm",
            hgrm.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
        0,
    );
    assert_eq!(run["mismatches"], 0);
    assert_eq!(run["latency_samples"], 20000);
    let statuses = &run["statuses"];
    for status in [
        "valid",
        "unknown",
        "revoked",
        "expired",
        "malformed",
        "scope_denied",
    ] {
        assert!(statuses[status].as_u64().unwrap() > 0, "{status}: {run}");
    }
    assert_eq!(run["per_thread"].as_array().unwrap().len(), 2);
    let hgrm = std::fs::read_to_string(hgrm).unwrap();
    assert!(hgrm.contains("Total count    =        20000"), "{hgrm}");
    assert!(std::fs::read_to_string(svg).unwrap().starts_with("<svg"));
}

#[test]
fn the_servers_scraped_counters_equal_the_loadgens_counts_by_status() {
    let server = keyward_with(2000, |_| "127.0.0.1:0".to_string(), "127.0.0.1:0");
    let metrics = server.metrics.expect("a metrics listener");
    let keys = server.dir.path().join("keys.txt");
    let run = report(
        &[
            "--server",
            &server.verify,
            "--keys",
            keys.to_str().unwrap(),
            "--mix",
            "valid=55,unknown=10,revoked=10,expired=5,malformed=10,derived=10",
            "--tokens",
            "50",
            "--connections",
            "4",
            "--depth",
            "8",
            "--warmup",
            "0",
            "--requests",
            "30000",
        ],
        0,
    );
    assert_eq!(run["mismatches"], 0);
    let expected: std::collections::BTreeMap<String, u64> = run["statuses"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(status, count)| (status.clone(), count.as_u64().unwrap()))
        .filter(|(_, count)| *count > 0)
        .collect();
    assert_eq!(expected.values().sum::<u64>(), 30000, "{run}");
    // Shards publish on their clock tick (50 ms at most): wait for the last one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = keyward::metrics::scrape::fetch(metrics, "/metrics").unwrap();
        let mut scraped = std::collections::BTreeMap::new();
        for sample in keyward::metrics::scrape::parse(&text).unwrap() {
            if sample.name == "keyward_verifies_total" && sample.value > 0.0 {
                *scraped
                    .entry(sample.label("status").unwrap().to_string())
                    .or_insert(0) += sample.value as u64;
            }
        }
        if scraped == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "scraped {scraped:?}, loadgen counted {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_unix_socket_verify_port_is_driven_and_verified_through() {
    let server = keyward_on(500, |dir| format!("unix:{}/verify.sock", dir.display()));
    assert!(server.verify.starts_with("unix:"), "{}", server.verify);
    let keys = server.dir.path().join("keys.txt");
    let run = report(
        &[
            "--server",
            &server.verify,
            "--keys",
            keys.to_str().unwrap(),
            "--connections",
            "4",
            "--depth",
            "4",
            "--warmup",
            "0",
            "--requests",
            "5000",
        ],
        0,
    );
    assert_eq!(run["mismatches"], 0);
    assert_eq!(run["latency_samples"], 5000);
    let keys = std::fs::read_to_string(&keys).unwrap();
    let valid = keys
        .lines()
        .find(|line| line.split('\t').nth(1) == Some("valid"))
        .and_then(|line| line.split('\t').next())
        .unwrap();
    let verified = Command::new(sibling("keyward-ctl"))
        .args(["verify", valid, "--server", &server.verify])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{stdout}");
    assert!(stdout.contains("valid"), "{stdout}");
}

#[test]
fn a_wrong_answer_fails_the_run_and_is_named() {
    let server = keyward(200);
    let original = std::fs::read_to_string(server.dir.path().join("keys.txt")).unwrap();
    // Claim one revoked key is valid: the server must disagree.
    let lied = original.replacen("\trevoked\t", "\tvalid\t", 1);
    assert_ne!(lied, original);
    let keys = server.dir.path().join("lied.txt");
    std::fs::write(&keys, lied).unwrap();
    let output = loadgen(&[
        "--server",
        &server.verify,
        "--keys",
        keys.to_str().unwrap(),
        "--requests",
        "400",
        "--warmup",
        "0",
        "--quiet",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("expected valid, got revoked"), "{stderr}");
}

#[test]
fn open_loop_latency_grows_with_the_backlog() {
    let server = keyward(200);
    let keys = server.dir.path().join("keys.txt");
    let keys = keys.to_str().unwrap();
    // Far above what one connection at depth 1 can carry: requests queue at the client, and
    // each one's latency counts from when it was due, so the later ones wait longer and longer.
    let overloaded = report(
        &[
            "--server",
            &server.verify,
            "--keys",
            keys,
            "--rate",
            "5000000",
            "--connections",
            "1",
            "--depth",
            "1",
            "--warmup",
            "0",
            "--duration",
            "1.5",
        ],
        0,
    );
    let latency = &overloaded["latency"];
    let (p50, max) = (
        latency["p50_us"].as_f64().unwrap(),
        latency["max_us"].as_f64().unwrap(),
    );
    assert!(
        p50 > 300_000.0,
        "p50 {p50} µs should reflect the backlog: {overloaded}"
    );
    assert!(max > 1_000_000.0, "max {max} µs: {overloaded}");
    assert!(
        overloaded["unsent"].as_u64().unwrap() > 1_000_000,
        "{overloaded}"
    );
    // At a rate any server holds, every request due in the window is sent and measured.
    let light = report(
        &[
            "--server",
            &server.verify,
            "--keys",
            keys,
            "--rate",
            "200",
            "--connections",
            "2",
            "--depth",
            "4",
            "--warmup",
            "0.5",
            "--duration",
            "1.5",
        ],
        0,
    );
    assert_eq!(light["latency_samples"], 300, "{light}");
    assert_eq!(light["unsent"], 0);
}

#[test]
fn a_sweep_reports_steps_and_the_best_rate() {
    let server = keyward(500);
    let keys = server.dir.path().join("keys.txt");
    let sweep = report(
        &[
            "--server",
            &server.verify,
            "--keys",
            keys.to_str().unwrap(),
            "--sweep",
            "--slo-p99",
            "10s",
            "--sweep-steps",
            "2",
            "--connections",
            "2",
            "--depth",
            "2",
            "--warmup",
            "0.2",
            "--duration",
            "0.5",
        ],
        0,
    );
    let steps = sweep["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{sweep}");
    let capacity = sweep["closed_loop"]["requests_per_sec"].as_f64().unwrap();
    assert!(capacity > 0.0);
    // Steps at 1/2, 2/2 … of the closed-loop capacity, each judged against the bound.
    for (index, step) in steps.iter().enumerate() {
        let target = step["target_rate"].as_f64().unwrap();
        assert!(
            (target - capacity * (index + 1) as f64 / 2.0).abs() < 1.0,
            "{sweep}"
        );
        assert!(step["within_slo"].is_boolean());
    }
    let best = &sweep["best_rate"];
    assert!(
        best.is_null()
            || steps
                .iter()
                .any(|s| s["within_slo"] == true && &s["target_rate"] == best),
        "{sweep}"
    );
}

#[test]
fn bad_arguments_are_refused_with_the_reason() {
    let output = loadgen(&["--keys", "/nonexistent/keys.txt"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/keys.txt"), "{stderr}");
    let output = loadgen(&["--keys", "k", "--sweep"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--slo-p99"));
}

// ---- baselines ----

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a baseline server, or returns None (after saying why) when it is not installed and
/// KEYWARD_REQUIRE_BASELINES is not set.
fn baseline(program: &str, args: &[String], port: u16) -> Option<Process> {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("KEYWARD_REQUIRE_BASELINES").is_none(),
            "{program} is not installed (apt-get install redis-server memcached)"
        );
        eprintln!("skipping: {program} is not installed (apt-get install redis-server memcached)");
        return None;
    }
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{program} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(process)
}

fn baseline_round_trip(protocol: &str, address: &str, keys: &Path) {
    let keys = keys.to_str().unwrap();
    let prepare = loadgen(&[
        "--protocol",
        protocol,
        "--server",
        address,
        "--keys",
        keys,
        "--prepare",
    ]);
    assert!(
        prepare.status.success(),
        "{}",
        String::from_utf8_lossy(&prepare.stderr)
    );
    let stdout = String::from_utf8_lossy(&prepare.stdout);
    // 300 keys: 285 known ones stored, the 15 unknown ones not.
    assert!(stdout.contains("stored 285 credentials"), "{stdout}");
    let run = report(
        &[
            "--protocol",
            protocol,
            "--server",
            address,
            "--keys",
            keys,
            "--mix",
            "valid=80,revoked=10,unknown=5,malformed=5",
            "--connections",
            "4",
            "--depth",
            "8",
            "--requests",
            "5000",
            "--warmup",
            "0.1",
        ],
        0,
    );
    assert_eq!(run["mismatches"], 0, "{run}");
    assert_eq!(run["latency_samples"], 5000);
    // A key store cannot tell malformed from unknown: both are misses.
    assert_eq!(run["statuses"]["malformed"], 0);
    assert!(run["statuses"]["unknown"].as_u64().unwrap() > 0);
    assert!(run["statuses"]["revoked"].as_u64().unwrap() > 0);
    let ping = report(
        &[
            "--protocol",
            protocol,
            "--server",
            address,
            "--op",
            "ping",
            "--requests",
            "1000",
            "--warmup",
            "0",
        ],
        0,
    );
    assert_eq!(ping["latency_samples"], 1000);
}

fn key_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(sibling("keyward-ctl"))
        .args(["keys", "generate", "--count", "300", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--out-keys")
        .arg(dir.path().join("keys.txt"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let keys = dir.path().join("keys.txt");
    (dir, keys)
}

#[test]
fn resp_baseline_against_redis() {
    let port = free_port();
    let args = strings(&[
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let Some(_redis) = baseline("redis-server", &args, port) else {
        return;
    };
    let (_dir, keys) = key_file();
    baseline_round_trip("resp", &format!("127.0.0.1:{port}"), &keys);
    // Batches become MGET.
    let run = report(
        &[
            "--protocol",
            "resp",
            "--server",
            &format!("127.0.0.1:{port}"),
            "--keys",
            keys.to_str().unwrap(),
            "--batch",
            "16",
            "--requests",
            "200",
            "--warmup",
            "0",
        ],
        0,
    );
    assert_eq!(run["latency_samples"], 200);
    assert!(
        run["credentials_per_sec"].as_f64().unwrap() > run["requests_per_sec"].as_f64().unwrap()
    );
}

#[test]
fn memcache_baseline_against_memcached() {
    let port = free_port();
    let args = strings(&[
        "-p",
        &port.to_string(),
        "-l",
        "127.0.0.1",
        "-U",
        "0",
        "-t",
        "1",
        "-u",
        "root",
    ]);
    let Some(_memcached) = baseline("memcached", &args, port) else {
        return;
    };
    let (_dir, keys) = key_file();
    baseline_round_trip("memcache", &format!("127.0.0.1:{port}"), &keys);
}

/// The server closing mid-run is an error with a reason, not a hang or a panic.
#[test]
fn a_server_that_hangs_up_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.write_all(b"-ERR not today\r\n");
        }
    });
    let output = loadgen(&[
        "--protocol",
        "resp",
        "--server",
        &address,
        "--op",
        "ping",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--quiet",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not today"), "{stderr}");
}

#[test]
fn propagation_revokes_on_the_control_port_and_watches_the_verify_port() {
    let server = keyward(20);
    let token = server.dir.path().join("data").join("admin.token");
    let report = report(
        &[
            "--op",
            "propagation",
            "--control",
            &server.control,
            "--token-file",
            token.to_str().unwrap(),
            "--server",
            &server.verify,
            "--requests",
            "50",
        ],
        0,
    );
    assert_eq!(report["op"], "propagation");
    assert_eq!(report["revocations"], 50);
    // One node: every shard has applied a revocation before its acknowledgement, so the first
    // VERIFY after it is refused: one VERIFY per revocation.
    assert_eq!(report["verifies_polled"], 50, "{report}");
    assert!(report["ack_p50_us"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_man_page_and_completions_are_the_cli() {
    let directory = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_keyward-loadgen"))
        .arg("--generate-assets")
        .arg(directory.path())
        .status()
        .unwrap();
    assert!(status.success());
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/package");
    if let Err(drift) = keyward::assets::compare(directory.path(), &committed, "keyward-loadgen") {
        panic!("{drift}: run tools/package/generate-assets.sh");
    }
}

#[test]
fn a_report_to_a_reader_that_has_gone_ends_quietly_not_in_a_panic() {
    //! `keyward-loadgen … | head` panicked: println! on a closed pipe.
    let server = keyward(100);
    let output = Command::new(env!("CARGO_BIN_EXE_keyward-loadgen"))
        .args(["--server", &server.verify, "--op", "ping"])
        .args(["--duration", "1", "--warmup", "0", "--quiet"])
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(keyward::stdout::EXIT_READER_GONE),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The write end of a pipe whose reader has already gone, as under `| head` once head has read
/// enough. (`std::io::pipe` would do, but it is newer than the supported Rust.)
fn closed_pipe() -> std::process::Stdio {
    use std::os::fd::FromRawFd;
    let mut ends = [0; 2];
    // SAFETY: pipe2 fills both descriptors; each is then owned exactly once.
    assert_eq!(
        unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) },
        0
    );
    drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(ends[0]) });
    std::process::Stdio::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(ends[1]) })
}
