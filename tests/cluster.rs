//! Replicated mode against real processes: a 3-server NATS JetStream cluster on loopback
//! (Debian's nats-server) and three keyward nodes following one change stream (R3), each taking
//! changes on its own control port. Skips, saying so, where nats-server is not installed
//! (`.ci/run` installs it and sets KEYWARD_REQUIRE_BASELINES).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use keyward::admin::{opcode, AdminClient};
use keyward::client::Client;
use keyward::protocol::{Status, VerifyRequest};

/// Three nats-server processes, one JetStream cluster, killed when dropped.
struct Nats {
    servers: Vec<Option<Child>>,
    client_ports: Vec<u16>,
    configs: Vec<PathBuf>,
}

impl Nats {
    /// Starts the cluster on free ports. A port found free can be taken by another test before
    /// nats-server binds it (the tests run in parallel), so a server that exits while starting
    /// makes the whole cluster start again on new ports, a few times at most.
    fn start(dir: &Path) -> Nats {
        const ATTEMPTS_MAX: usize = 5;
        let mut failures = Vec::new();
        for attempt in 0..ATTEMPTS_MAX {
            let mut nats = Nats::configure(&dir.join(format!("attempt-{attempt}")));
            for i in 0..3 {
                let child = nats.spawn(i);
                nats.servers.push(Some(child));
            }
            match nats.wait_for_clients() {
                Ok(()) => return nats,
                Err(why) => failures.push(why),
            }
        }
        panic!("the NATS cluster did not start in {ATTEMPTS_MAX} attempts: {failures:#?}");
    }

    fn configure(dir: &Path) -> Nats {
        std::fs::create_dir_all(dir).unwrap();
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 6 {
            let port = common::free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let (client_ports, route_ports) = (ports[..3].to_vec(), ports[3..].to_vec());
        let routes: Vec<String> = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut configs = Vec::new();
        for i in 0..3 {
            let store = dir.join(format!("nats-{i}"));
            let config = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\", max_memory_store: 64MB, max_file_store: 1GB }}\ncluster {{\n  name: keyward-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                client_ports[i],
                store.display(),
                route_ports[i],
                routes.join(", ")
            );
            let path = dir.join(format!("nats-{i}.conf"));
            std::fs::write(&path, config).unwrap();
            configs.push(path);
        }
        Nats {
            servers: Vec::new(),
            client_ports,
            configs,
        }
    }

    /// Where server `i` writes what it says (kept for a failure's message).
    fn log_path(&self, i: usize) -> PathBuf {
        self.configs[i].with_extension("log")
    }

    fn spawn(&self, i: usize) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        Command::new("nats-server")
            .arg("-c")
            .arg(&self.configs[i])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server")
    }

    /// Waits until every running server takes clients; a server that exited, one still not
    /// listening after 20 s, or a port answered by something else is an error with the end of
    /// the server's log.
    fn wait_for_clients(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        for i in 0..self.client_ports.len() {
            let port = self.client_ports[i];
            let Some(child) = self.servers[i].as_mut() else {
                continue;
            };
            loop {
                let state = match greeting(port) {
                    Some(info) if info.contains(&format!("\"server_name\":\"n{i}\"")) => break,
                    Some(_) => "is answered by another process".to_string(),
                    None => match child.try_wait().unwrap() {
                        Some(status) => format!("exited ({status})"),
                        None if Instant::now() >= deadline => "did not listen in 20 s".to_string(),
                        None => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    },
                };
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(5)..];
                return Err(format!("nats-server {i}: port {port} {state}: {tail:?}"));
            }
        }
        Ok(())
    }

    fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.client_ports[i])
    }

    /// Every server's URL, comma-separated, the given one first.
    fn urls_from(&self, first: usize) -> String {
        let mut urls = vec![self.url(first)];
        urls.extend((0..3).filter(|i| *i != first).map(|i| self.url(i)));
        urls.join(",")
    }

    fn restart(&mut self, i: usize) {
        assert!(self.servers[i].is_none());
        self.servers[i] = Some(self.spawn(i));
        if let Err(why) = self.wait_for_clients() {
            panic!("{why}");
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// The first line a server on `port` sends (a NATS server begins with `INFO {...}`), or None
/// where nothing listens there yet or nothing is said within a second.
fn greeting(port: u16) -> Option<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut said = Vec::new();
    let mut buffer = [0u8; 4096];
    while !said.contains(&b'\n') && said.len() < 64 * 1024 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => said.extend_from_slice(&buffer[..n]),
        }
    }
    Some(String::from_utf8_lossy(&said).into_owned())
}

/// A keyward node of the cluster.
struct Node {
    server: common::Server,
    dir: PathBuf,
    nats_urls: String,
}

impl Node {
    fn start(dir: &Path, nats_urls: &str, name: &str) -> Node {
        Node::start_with(dir, nats_urls, name, &[])
    }

    fn start_with(dir: &Path, nats_urls: &str, name: &str, extra: &[&str]) -> Node {
        let mut args = vec![
            "--replication",
            "nats",
            "--nats-servers",
            nats_urls,
            "--node-name",
            name,
        ];
        args.extend_from_slice(extra);
        let server = common::Server::start(dir, &args);
        let node = Node {
            server,
            dir: dir.to_path_buf(),
            nats_urls: nats_urls.to_string(),
        };
        // Serving from its local state at once; following the stream once NATS answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stats = node.stats(false);
            if stats["replication"]["following"] == true {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "not following the stream: {stats}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn admin(&self) -> AdminClient {
        self.server.admin()
    }

    fn status(&self, credential: &str) -> Status {
        let mut client = Client::connect(self.server.address).unwrap();
        let request = VerifyRequest {
            credential: credential.as_bytes(),
            address: Some("127.0.0.1".parse().unwrap()),
            ..Default::default()
        };
        client.verify(&request).unwrap().status
    }

    /// Waits (at most 10 s) until `credential` gets `want` here; panics with what it got.
    fn expect(&self, credential: &str, want: Status) {
        self.expect_within(credential, want, Duration::from_secs(10));
    }

    /// Waits (at most `limit`) until `credential` gets `want` here; panics with what it got.
    fn expect_within(&self, credential: &str, want: Status, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.status(credential);
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} answers {got:?}, not {want:?}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stats(&self, digest: bool) -> Value {
        self.admin()
            .call(opcode::STATS, &json!({ "digest": digest }))
            .unwrap()
    }
}

/// A NATS cluster and three keyward nodes sharing one set of secrets (the first node's,
/// carried to the others as an operator would: export-secrets, import-secrets).
struct Cluster {
    _dir: tempfile::TempDir,
    nats: Nats,
    nodes: Vec<Node>,
}

fn cluster() -> Option<Cluster> {
    if !common::installed("nats-server", "nats-server") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let first = dir.path().join("node-0");
    drop(keyward::datadir::DataDir::open_or_create(&first).unwrap());
    let secrets = keyward::cluster::export_secrets(&first).unwrap();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let node_dir = dir.path().join(format!("node-{i}"));
        if i > 0 {
            keyward::cluster::import_secrets(&node_dir, &secrets).unwrap();
        }
        nodes.push(Node::start(
            &node_dir,
            &nats.urls_from(i),
            &format!("node-{i}"),
        ));
    }
    Some(Cluster {
        _dir: dir,
        nats,
        nodes,
    })
}

fn issue(admin: &mut AdminClient, request: Value) -> (String, u64) {
    let answer = admin.call(opcode::ISSUE, &request).unwrap();
    (
        answer["credential"].as_str().unwrap().to_string(),
        answer["key"]["id"].as_u64().unwrap(),
    )
}

/// Waits until every node has applied the same sequence, and returns their digests.
fn settled_digests(nodes: &[&Node]) -> Vec<(u64, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen: Vec<(u64, String)> = nodes
            .iter()
            .map(|n| {
                let stats = n.stats(true);
                (
                    stats["applied_sequence"].as_u64().unwrap(),
                    stats["state_digest"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        if seen.windows(2).all(|w| w[0] == w[1]) {
            return seen;
        }
        assert!(Instant::now() < deadline, "nodes did not settle: {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_change_on_any_node_reaches_every_node() {
    let Some(cluster) = cluster() else { return };
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    // Issued on B: valid on B at once (applied before the answer), then on A and C.
    let (credential, id) = issue(
        &mut b.admin(),
        json!({ "tenant": "acme", "scopes": ["x:y"] }),
    );
    assert_eq!(b.status(&credential), Status::Valid);
    a.expect(&credential, Status::Valid);
    c.expect(&credential, Status::Valid);
    // Revoked on A: refused on A at once, then everywhere.
    a.admin()
        .call(opcode::REVOKE, &json!({ "id": id, "reason": "test" }))
        .unwrap();
    assert_eq!(a.status(&credential), Status::Revoked);
    b.expect(&credential, Status::Revoked);
    c.expect(&credential, Status::Revoked);
    // Rotated on C: the old key dead and the new one valid everywhere.
    let (old, old_id) = issue(&mut c.admin(), json!({ "tenant": "acme" }));
    let rotated = c
        .admin()
        .call(opcode::ROTATE, &json!({ "id": old_id }))
        .unwrap();
    let new = rotated["credential"].as_str().unwrap().to_string();
    for node in [a, b, c] {
        node.expect(&old, Status::Revoked);
        node.expect(&new, Status::Valid);
    }
    // Imported on A.
    let imported = a
        .admin()
        .call(
            opcode::IMPORT,
            &json!({ "keys": [{ "credential": "sk_live_cluster_imported", "tenant": "legacy" }] }),
        )
        .unwrap();
    assert_eq!(imported["imported"], 1, "{imported}");
    for node in [a, b, c] {
        node.expect("sk_live_cluster_imported", Status::Valid);
    }
    // A token derived on B from a key issued on A dies on C when its parent is revoked on B.
    let (parent, parent_id) = issue(&mut a.admin(), json!({ "scopes": ["p:q"] }));
    b.expect(&parent, Status::Valid);
    let derived = b
        .admin()
        .call(
            opcode::DERIVE,
            &json!({ "parent_id": parent_id, "ttl_seconds": 600 }),
        )
        .unwrap();
    let token = derived["token"].as_str().unwrap().to_string();
    c.expect(&token, Status::Valid);
    b.admin()
        .call(opcode::REVOKE, &json!({ "id": parent_id }))
        .unwrap();
    c.expect(&token, Status::Revoked);
    // An idempotent issue retried on another node returns the same key.
    let first = a
        .admin()
        .call(
            opcode::ISSUE,
            &json!({ "idempotency_key": "order-17", "tenant": "acme" }),
        )
        .unwrap();
    let again = c
        .admin()
        .call(
            opcode::ISSUE,
            &json!({ "idempotency_key": "order-17", "tenant": "acme" }),
        )
        .unwrap();
    assert_eq!(first["credential"], again["credential"]);
    assert_eq!(again["replayed"], true, "{again}");
    // Every node holds the same keys in the same states, and says where it stands.
    settled_digests(&[a, b, c]);
    let stats = c.stats(false);
    assert_eq!(stats["replication"]["mode"], "nats", "{stats}");
    assert_eq!(stats["replication"]["connected"], true, "{stats}");
    let (code, metrics) = common::http_get(c.server.metrics.unwrap(), "/metrics");
    assert_eq!(code, 200);
    for line in [
        "keyward_replication_connected 1",
        "keyward_replication_following 1",
        "keyward_replication_fail_closed 0",
        "keyward_replication_behind ",
        "keyward_replication_silent_seconds ",
    ] {
        assert!(metrics.contains(line), "no {line:?} in:\n{metrics}");
    }
    // The documented alert rules' replication series are all exposed.
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/prometheus/keyward-alerts.yml"
    );
    let rules = std::fs::read_to_string(rules).unwrap();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("keyward_replication_") {
            assert!(
                metrics.contains(&format!("# TYPE {word} ")),
                "{word} is not exposed"
            );
        }
    }
    // Each node's audit trail holds every change, with the node that took it.
    let audit = std::fs::read_to_string(c.dir.join("audit.log")).unwrap();
    let revoke_line = audit
        .lines()
        .find(|l| l.contains("\"op\":\"revoke\"") && l.contains("\"node\":\"node-0\""))
        .unwrap_or_else(|| panic!("no revoke line from node-0 in C's audit trail:\n{audit}"));
    assert!(
        revoke_line.contains(&format!("\"key\":{id}")),
        "{revoke_line}"
    );
}

#[test]
fn nodes_changing_keys_at_once_converge() {
    let Some(cluster) = cluster() else { return };
    let [a, b, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    let writers: Vec<_> = [a, b]
        .iter()
        .enumerate()
        .map(|(w, node)| {
            let mut admin = node.admin();
            std::thread::spawn(move || {
                let mut issued = Vec::new();
                for round in 0..40 {
                    let (credential, id) = issue(
                        &mut admin,
                        json!({ "tenant": format!("w{w}"), "name": format!("{round}") }),
                    );
                    if round % 3 == 0 {
                        admin.call(opcode::REVOKE, &json!({ "id": id })).unwrap();
                    }
                    issued.push((credential, round % 3 == 0));
                }
                issued
            })
        })
        .collect();
    let issued: Vec<(String, bool)> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let digests = settled_digests(&[a, b, c]);
    assert_eq!(digests[0].0, 80 + 2 * 14, "every change once: {digests:?}");
    for (credential, revoked) in &issued {
        let want = if *revoked {
            Status::Revoked
        } else {
            Status::Valid
        };
        assert_eq!(c.status(credential), want);
    }
}

#[test]
fn a_killed_node_catches_up_and_a_new_node_joins_from_nothing() {
    let Some(mut cluster) = cluster() else { return };
    let c = cluster.nodes.pop().unwrap();
    let (dir, urls) = (c.dir.clone(), c.nats_urls.clone());
    c.server.kill(); // SIGKILL: no shutdown at all
    let a = &cluster.nodes[0];
    let mut admin = a.admin();
    let mut keys = Vec::new();
    for round in 0..30 {
        let (credential, id) = issue(&mut admin, json!({ "name": format!("{round}") }));
        let revoked = round % 2 == 0;
        if revoked {
            admin.call(opcode::REVOKE, &json!({ "id": id })).unwrap();
        }
        keys.push((credential, revoked));
    }
    let check = |node: &Node| {
        for (credential, revoked) in &keys {
            let want = if *revoked {
                Status::Revoked
            } else {
                Status::Valid
            };
            node.expect(credential, want);
        }
    };
    let c = Node::start(&dir, &urls, "node-2");
    check(&c);
    // A new node: an empty data directory, the cluster's secrets, nothing else (the secrets
    // exported from a running node).
    let secrets = keyward::cluster::export_secrets(&a.dir).unwrap();
    let fresh = dir.parent().unwrap().join("node-3");
    keyward::cluster::import_secrets(&fresh, &secrets).unwrap();
    let d = Node::start(&fresh, &cluster.nats.urls_from(0), "node-3");
    check(&d);
    settled_digests(&[a, &cluster.nodes[1], &c, &d]);
}

#[test]
fn changes_go_on_with_one_nats_server_down_and_stop_clearly_with_two() {
    let Some(mut cluster) = cluster() else { return };
    cluster.nats.kill(2); // node-2's first server: it moves to another
                          // Once the two left have a stream leader (an election takes seconds; a change made during
                          // it waits up to 15 s, which a loaded test machine can exceed), changes commit.
    with_jetstream(&cluster.nats, async |js| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while js.get_stream("KEYWARD").await.is_err() {
            assert!(Instant::now() < deadline, "no stream leader after a minute");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let committed = Instant::now();
    let (credential, id) = issue(&mut cluster.nodes[2].admin(), json!({}));
    // A node whose consumer lived on the lost server follows the stream anew once the cluster
    // has settled (its consumer requests time out until then): tens of seconds at worst.
    for node in &cluster.nodes {
        node.expect_within(&credential, Status::Valid, Duration::from_secs(90));
    }
    eprintln!(
        "every node had the change {:?} after it was committed",
        committed.elapsed()
    );
    cluster.nats.kill(1);
    let started = Instant::now();
    let refused = cluster.nodes[0]
        .admin()
        .call(opcode::REVOKE, &json!({ "id": id }));
    let message = match refused {
        Err(keyward::admin::AdminError::Server { code, message }) => {
            assert_eq!(
                code,
                keyward::protocol::ErrorCode::Unavailable as u8,
                "{message}"
            );
            message
        }
        other => panic!("a change without a NATS quorum: {other:?}"),
    };
    assert!(message.contains("change stream"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(45));
    // Verification goes on from what every node had applied.
    for node in &cluster.nodes {
        assert_eq!(node.status(&credential), Status::Valid);
    }
}

#[test]
fn a_verify_at_a_revocations_sequence_is_never_valid_on_another_node() {
    let Some(cluster) = cluster() else { return };
    let [a, _, c] = &cluster.nodes[..] else {
        unreachable!()
    };
    const TRIES: usize = 1000;
    let keys: Vec<Value> = (0..TRIES)
        .map(|i| json!({ "credential": format!("sk_live_zookie_{i:06}_padding") }))
        .collect();
    let imported = a
        .admin()
        .call(opcode::IMPORT, &json!({ "keys": keys }))
        .unwrap();
    let ids: Vec<u64> = imported["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), TRIES);
    c.expect("sk_live_zookie_000999_padding", Status::Valid);
    // Verify load on C for the whole run (bounded: it stops when the tries are done).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, address) = (stop.clone(), c.server.address);
            std::thread::spawn(move || {
                let mut client = Client::connect(address).unwrap();
                let requests: Vec<VerifyRequest> = (0..16)
                    .map(|_| VerifyRequest {
                        credential: b"sk_live_zookie_000999_padding",
                        ..Default::default()
                    })
                    .collect();
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 50_000_000 {
                    client.verify_pipelined(&requests).unwrap();
                    sent += 16;
                }
                sent
            })
        })
        .collect();
    let mut admin = a.admin();
    let mut client = Client::connect(c.server.address).unwrap();
    let (mut revoked, mut stale) = (0, 0);
    for (i, id) in ids.iter().enumerate() {
        let answer = admin.call(opcode::REVOKE, &json!({ "id": id })).unwrap();
        let sequence = answer["sequence"].as_u64().unwrap();
        let credential = format!("sk_live_zookie_{i:06}_padding");
        let request = VerifyRequest {
            credential: credential.as_bytes(),
            ..Default::default()
        };
        let (decided_at, result) = client.verify_at(sequence, &request).unwrap();
        match result.status {
            Status::Revoked => {
                assert!(
                    decided_at >= sequence,
                    "revoked at {decided_at} < {sequence}"
                );
                revoked += 1;
            }
            Status::Stale => {
                assert!(decided_at < sequence, "stale at {decided_at} ≥ {sequence}");
                stale += 1;
            }
            other => panic!(
                "try {i}: C answered {other:?} at {decided_at} for a key revoked at {sequence}"
            ),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let verified: u64 = load.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!("{revoked} revoked, {stale} stale (C waited for the sequence); {verified} verifies of load meanwhile");
    assert!(
        revoked > 0,
        "C never caught up within its wait: {stale} stale"
    );
    assert!(verified > 0);
}

#[test]
fn verify_at_in_local_mode_answers_at_once_or_stale() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(dir.path(), &["--shards", "1"]);
    let answer = server
        .admin()
        .call(opcode::ISSUE, &json!({ "tenant": "t" }))
        .unwrap();
    let sequence = answer["sequence"].as_u64().unwrap();
    assert_eq!(sequence, 1, "{answer}");
    let credential = answer["credential"].as_str().unwrap();
    let request = VerifyRequest {
        credential: credential.as_bytes(),
        ..Default::default()
    };
    let mut client = Client::connect(server.address).unwrap();
    let (at, result) = client.verify_at(sequence, &request).unwrap();
    assert_eq!((at, result.status), (1, Status::Valid));
    assert_eq!(result.grant.unwrap().tenant, "t");
    // A sequence nobody has reached: `stale` after the wait, never an answer from before it.
    let started = Instant::now();
    let (at, result) = client.verify_at(99, &request).unwrap();
    assert_eq!((at, result.status), (1, Status::Stale));
    assert!(started.elapsed() >= Duration::from_millis(4));
    // The connection goes on; old VERIFY is unchanged.
    assert_eq!(client.verify(&request).unwrap().status, Status::Valid);
    // A body too short for its sequence is a bad body, and the connection stays open.
    let mut frame = Vec::new();
    keyward::protocol::put_header(&mut frame, keyward::protocol::opcode::VERIFY_AT, 7, 3);
    frame.extend_from_slice(&[1, 2, 3]);
    let mut raw = std::net::TcpStream::connect(server.address).unwrap();
    std::io::Write::write_all(&mut raw, &frame).unwrap();
    let (header, body) = keyward::client::read_frame(&mut raw).unwrap();
    assert_eq!(header.opcode, keyward::protocol::opcode::ERROR);
    assert_eq!(body[0], keyward::protocol::ErrorCode::BadBody as u8);
}

#[test]
fn past_max_staleness_a_node_fails_closed_and_recovers() {
    let Some(mut cluster) = cluster() else { return };
    let (credential, id) = issue(&mut cluster.nodes[0].admin(), json!({}));
    let (revoked, revoked_id) = issue(&mut cluster.nodes[0].admin(), json!({}));
    cluster.nodes[0]
        .admin()
        .call(opcode::REVOKE, &json!({ "id": revoked_id }))
        .unwrap();
    // Node 2 again, failing closed after 2 s of silence; node 1 keeps the default.
    let old = cluster.nodes.pop().unwrap();
    let (dir, urls) = (old.dir.clone(), old.nats_urls.clone());
    drop(old);
    let strict = Node::start_with(&dir, &urls, "node-2", &["--max-staleness-ms", "2000"]);
    strict.expect(&credential, Status::Valid);
    strict.expect(&revoked, Status::Revoked);
    let metrics = strict.server.metrics.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::http_get(metrics, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..3 {
        cluster.nats.kill(i);
    }
    // Silent: the strict node answers stale for the valid key (never valid), keeps refusing the
    // revoked one, and says why it is not ready; the default node keeps answering valid.
    strict.expect(&credential, Status::Stale);
    assert_eq!(strict.status(&revoked), Status::Revoked);
    let (code, body) = common::http_get(metrics, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("max_staleness_ms"), "{body}");
    assert_eq!(cluster.nodes[1].status(&credential), Status::Valid);
    // The stream answers again: valid again.
    for i in 0..3 {
        cluster.nats.restart(i);
    }
    // (JetStream elects its leaders again first: seconds.)
    let back = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while strict.status(&credential) != Status::Valid {
        assert!(
            Instant::now() < deadline,
            "still stale a minute after NATS came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("valid again {:?} after NATS came back", back.elapsed());
    let _ = id;
}

/// Runs `work` against the cluster's NATS on a small tokio runtime of the test's own.
fn with_jetstream<T>(
    nats: &Nats,
    work: impl AsyncFnOnce(async_nats::jetstream::Context) -> T,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(nats.url(0)).await.unwrap();
        work(async_nats::jetstream::new(client)).await
    })
}

#[test]
fn a_new_node_starts_from_the_published_snapshot_once_the_stream_is_trimmed() {
    let Some(cluster) = cluster() else { return };
    let a = &cluster.nodes[0];
    let mut admin = a.admin();
    let mut keys = Vec::new();
    for round in 0..12 {
        let (credential, id) = issue(&mut admin, json!({ "name": format!("{round}") }));
        let revoked = round % 3 == 0;
        if revoked {
            admin.call(opcode::REVOKE, &json!({ "id": id })).unwrap();
        }
        keys.push((credential, revoked));
    }
    let compacted = admin.call(opcode::COMPACT, &json!({})).unwrap();
    let sequence = compacted["snapshot_sequence"].as_u64().unwrap();
    assert_eq!(sequence, 16, "{compacted}");
    // The snapshot reaches the object store; then the stream forgets everything it holds.
    with_jetstream(&cluster.nats, async |js| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(store) = js.get_object_store("KEYWARD_SNAPSHOTS").await {
                if let Ok(info) = store.info("snapshot").await {
                    if info.description.as_deref() == Some(&format!("{{\"sequence\":{sequence}}}"))
                    {
                        break;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no snapshot published");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stream = js.get_stream("KEYWARD").await.unwrap();
        stream.purge().sequence(sequence + 1).await.unwrap();
    });
    // Changes after the snapshot stay in the stream.
    let (later, _) = issue(&mut admin, json!({ "name": "after the snapshot" }));
    keys.push((later, false));
    let secrets = keyward::cluster::export_secrets(&a.dir).unwrap();
    let fresh = a.dir.parent().unwrap().join("node-new");
    keyward::cluster::import_secrets(&fresh, &secrets).unwrap();
    let d = Node::start(&fresh, &cluster.nats.urls_from(1), "node-new");
    for (credential, revoked) in &keys {
        let want = if *revoked {
            Status::Revoked
        } else {
            Status::Valid
        };
        d.expect(credential, want);
    }
    let stats = d.stats(false);
    assert_eq!(stats["snapshot_sequence"], sequence, "{stats}");
    settled_digests(&[a, &cluster.nodes[2], &d]);
}
