//! What operators rely on, against the real server: the audit trail (every control operation,
//! a chain that verifies, an edit found at its line, intact across rotation and SIGKILL),
//! throttled security events, per-key usage that survives a restart, and least-privilege
//! admin tokens.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use keyward::admin::{opcode, AdminClient, AdminError};
use keyward::audit::{self, Entry};
use keyward::client::Client;
use keyward::protocol::{ErrorCode, Status, VerifyRequest};
use serde_json::{json, Value};

fn entries(dir: &Path) -> Vec<Entry> {
    let mut all = Vec::new();
    audit::walk(dir, |line| all.push(line.entry.clone())).expect("the chain verifies");
    all
}

/// Waits (up to 10 s) until the trail holds a line `wanted` accepts; returns every line.
fn wait_for(dir: &Path, wanted: impl Fn(&Entry) -> bool) -> Vec<Entry> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = entries(dir);
        if all.iter().any(&wanted) {
            return all;
        }
        assert!(Instant::now() < deadline, "no such audit line in {all:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn issue(admin: &mut AdminClient, tenant: &str) -> (String, u64) {
    let answer = admin
        .call(opcode::ISSUE, &json!({ "tenant": tenant }))
        .unwrap();
    (
        answer["credential"].as_str().unwrap().to_string(),
        answer["key"]["id"].as_u64().unwrap(),
    )
}

fn error_code(result: Result<Value, AdminError>) -> u8 {
    match result {
        Err(AdminError::Server { code, .. }) => code,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

fn verify(client: &mut Client, credential: &str) -> Status {
    client
        .verify(&VerifyRequest {
            credential: credential.as_bytes(),
            ..Default::default()
        })
        .unwrap()
        .status
}

#[test]
fn every_control_operation_has_its_audit_line_and_an_edit_is_found_at_its_line() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let server = common::Server::start(dir, &[]);
    let mut admin = server.admin();
    let (_, first) = issue(&mut admin, "acme");
    let imported = admin
        .call(
            opcode::IMPORT,
            &json!({ "keys": [
                { "credential": "sk_live_0123456789abcdef0123", "tenant": "acme" },
                { "credential": "sk_live_fedcba9876543210fedc", "tenant": "acme" },
            ]}),
        )
        .unwrap();
    assert_eq!(imported["imported"], 2, "{imported}");
    admin
        .call(opcode::REVOKE, &json!({ "id": first, "reason": "leaked" }))
        .unwrap();
    let (_, second) = issue(&mut admin, "acme");
    admin
        .call(opcode::ROTATE, &json!({ "id": second }))
        .unwrap();
    admin
        .call(opcode::UPDATE, &json!({ "id": second, "name": "renamed" }))
        .unwrap();
    admin
        .call(opcode::INSPECT, &json!({ "id": second }))
        .unwrap();
    admin.call(opcode::LIST, &json!({})).unwrap();
    admin.call(opcode::STATS, &json!({})).unwrap();
    let (third_credential, third) = issue(&mut admin, "acme");
    admin
        .call(
            opcode::DERIVE,
            &json!({ "parent_id": third, "ttl_seconds": 60 }),
        )
        .unwrap();
    admin.call(opcode::COMPACT, &json!({})).unwrap();
    let mut holder = Client::connect(server.address).unwrap();
    assert_eq!(
        holder.revoke_self(third_credential.as_bytes()).unwrap(),
        Status::Revoked
    );
    assert_eq!(
        error_code(admin.call(opcode::REVOKE, &json!({ "id": 999_999 }))),
        ErrorCode::NotFound as u8
    );
    let added = admin
        .call(opcode::ADMIN_ADD, &json!({ "name": "ci", "role": "read" }))
        .unwrap();
    admin.call(opcode::ADMIN_LIST, &json!({})).unwrap();
    admin
        .call(opcode::ADMIN_REMOVE, &json!({ "name": "ci" }))
        .unwrap();
    let token = added["token"].as_str().unwrap();
    let mut removed = AdminClient::connect(server.control, token).unwrap();
    assert_eq!(
        error_code(removed.call(opcode::STATS, &json!({}))),
        ErrorCode::Unauthorized as u8
    );

    let all = wait_for(dir, |e| e.op == "control" && e.outcome == "unauthorized");
    let ops: Vec<(&str, &str)> = all
        .iter()
        .map(|e| (e.op.as_str(), e.outcome.as_str()))
        .collect();
    for wanted in [
        ("start", "ok"),
        ("issue", "ok"),
        ("import", "ok"),
        ("revoke", "ok"),
        ("rotate", "ok"),
        ("update", "ok"),
        ("inspect", "ok"),
        ("list", "ok"),
        ("stats", "ok"),
        ("derive", "ok"),
        ("compact", "ok"),
        ("revoke", "not_found"),
        ("admin_add", "ok"),
        ("admin_list", "ok"),
        ("admin_remove", "ok"),
        ("control", "unauthorized"),
    ] {
        assert!(ops.contains(&wanted), "no {wanted:?} line in {ops:?}");
    }
    let revoke = all
        .iter()
        .find(|e| e.op == "revoke" && e.outcome == "ok")
        .unwrap();
    assert_eq!(revoke.actor, "admin");
    assert_eq!(revoke.key, Some(first));
    assert_eq!(revoke.tenant.as_deref(), Some("acme"));
    assert!(revoke.client.as_deref().unwrap().starts_with("127.0.0.1:"));
    assert!(revoke.seq.is_some());
    let own = all
        .iter()
        .find(|e| e.actor == "self-service")
        .expect("a self-service revocation's line");
    assert_eq!((own.op.as_str(), own.key), ("revoke", Some(third)));
    let import = all.iter().find(|e| e.op == "import").unwrap();
    assert_eq!(import.keys.len(), 2);
    // No line holds a credential, a secret or a token.
    let text: String = audit::files(dir)
        .unwrap()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for secret in [
        "sk_live_0123456789abcdef0123",
        "sk_live_fedcba9876543210fedc",
        token,
    ] {
        assert!(!text.contains(secret), "the audit trail holds a secret");
    }
    let (status, _) = server.stop();
    assert!(status.success());

    // One byte changed in line 4: the chain breaks there, and says so.
    let path = dir.join(audit::FILE_NAME);
    let original = std::fs::read(&path).unwrap();
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(
            original
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect();
    let mut edited = original.clone();
    let at = line_starts[3]
        + original[line_starts[3]..]
            .windows(7)
            .position(|w| w == b"\"actor\"")
            .unwrap()
        + 10;
    edited[at] ^= 0x01;
    std::fs::write(&path, &edited).unwrap();
    let broken = audit::walk(dir, |_| {}).unwrap_err();
    assert_eq!(broken.line, 4, "{broken}");
    assert_eq!(broken.n, Some(4), "{broken}");
    std::fs::write(&path, &original).unwrap();
    assert!(audit::walk(dir, |_| {}).is_ok());
}

#[test]
fn the_chain_holds_across_rotation_and_sigkill_and_every_acknowledged_change_has_its_line() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let server = common::Server::start(dir, &["--audit-rotate-bytes", "4096"]);
    let control = server.control;
    let token = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    // Four admins change keys at once until the server is killed under them.
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let token = token.trim().to_string();
            std::thread::spawn(move || {
                let mut admin = AdminClient::connect(control, &token).unwrap();
                let mut acknowledged = Vec::new();
                for _ in 0..2000 {
                    match admin.call(opcode::ISSUE, &json!({ "tenant": format!("w{worker}") })) {
                        Ok(answer) => acknowledged.push(answer["key"]["id"].as_u64().unwrap()),
                        Err(_) => break,
                    }
                }
                acknowledged
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    server.kill();
    let acknowledged: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        acknowledged.len() > 20,
        "only {} changes made",
        acknowledged.len()
    );
    assert!(
        audit::files(dir).unwrap().len() > 2,
        "the trail was rotated"
    );
    let all = entries(dir);
    let issued: std::collections::HashSet<u64> = all
        .iter()
        .filter(|e| e.op == "issue" && e.outcome == "ok")
        .filter_map(|e| e.key)
        .collect();
    for id in &acknowledged {
        assert!(
            issued.contains(id),
            "key {id} was acknowledged but has no audit line"
        );
    }
    // The restarted server continues the same chain.
    let server = common::Server::start(dir, &["--audit-rotate-bytes", "4096"]);
    issue(&mut server.admin(), "after");
    let all = wait_for(dir, |e| {
        e.op == "issue" && e.tenant.as_deref() == Some("after")
    });
    assert_eq!(all.iter().filter(|e| e.op == "start").count(), 2);
    assert_eq!(all.first().unwrap().n, 1);
}

#[test]
fn security_events_are_throttled_to_one_line_per_key_per_minute() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let server = common::Server::start(dir, &[]);
    let mut admin = server.admin();
    let (revoked, revoked_id) = issue(&mut admin, "acme");
    admin
        .call(opcode::REVOKE, &json!({ "id": revoked_id }))
        .unwrap();
    let fenced = admin
        .call(
            opcode::ISSUE,
            &json!({ "tenant": "acme", "allow": ["10.0.0.0/8"] }),
        )
        .unwrap();
    let fenced_credential = fenced["credential"].as_str().unwrap();
    let fenced_id = fenced["key"]["id"].as_u64().unwrap();

    let mut client = Client::connect(server.address).unwrap();
    let flood = 20_000;
    for _ in 0..flood {
        assert_eq!(verify(&mut client, &revoked), Status::Revoked);
    }
    for _ in 0..flood {
        let status = client
            .verify(&VerifyRequest {
                credential: fenced_credential.as_bytes(),
                address: Some("192.0.2.1".parse().unwrap()),
                ..Default::default()
            })
            .unwrap()
            .status;
        assert_eq!(status, Status::AddressDenied);
    }
    for _ in 0..200 {
        let mut intruder =
            AdminClient::connect(server.control, "kwadmin_not_the_right_token").unwrap();
        assert!(intruder.call(opcode::STATS, &json!({})).is_err());
    }
    let all = wait_for(dir, |e| e.op == "security" && e.key == Some(fenced_id));
    std::thread::sleep(Duration::from_secs(2)); // a little more flood time to be counted
    let all = {
        let _ = all;
        entries(dir)
    };
    let security: Vec<&Entry> = all.iter().filter(|e| e.op == "security").collect();
    let for_key = |id: u64, outcome: &str| {
        security
            .iter()
            .filter(|e| e.key == Some(id) && e.outcome == outcome)
            .count()
    };
    // 40 000 events in under a minute: one line per key, with the count.
    assert_eq!(for_key(revoked_id, "revoked"), 1, "{security:#?}");
    assert_eq!(for_key(fenced_id, "address_denied"), 1, "{security:#?}");
    let counted: u64 = security
        .iter()
        .map(|e| e.detail.as_ref().unwrap()["count"].as_u64().unwrap())
        .sum();
    assert!(counted >= 2, "counts are carried: {security:#?}");
    let unauthorized: Vec<&Entry> = all.iter().filter(|e| e.outcome == "unauthorized").collect();
    assert_eq!(unauthorized.len(), 1, "{unauthorized:#?}");
    assert!(all.len() < 50, "{} lines after a flood", all.len());
}

#[test]
fn usage_is_shown_by_inspect_and_list_and_survives_a_restart() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let server = common::Server::start(dir, &[]);
    let mut admin = server.admin();
    let (_, idle) = issue(&mut admin, "acme");
    std::thread::sleep(Duration::from_millis(1100)); // `idle` is created a second earlier
    let (used, used_id) = issue(&mut admin, "acme");
    let (revoked, revoked_id) = issue(&mut admin, "acme");
    admin
        .call(opcode::REVOKE, &json!({ "id": revoked_id }))
        .unwrap();
    let mut client = Client::connect(server.address).unwrap();
    for _ in 0..5 {
        assert_eq!(verify(&mut client, &used), Status::Valid);
    }
    for _ in 0..3 {
        assert_eq!(verify(&mut client, &revoked), Status::Revoked);
    }
    let usage_of = |admin: &mut AdminClient, id: u64| -> Value {
        admin.call(opcode::INSPECT, &json!({ "id": id })).unwrap()["key"]["usage"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while usage_of(&mut admin, used_id)["valid"] != 5
        || usage_of(&mut admin, revoked_id)["refused"] != 3
    {
        assert!(Instant::now() < deadline, "usage never arrived");
        std::thread::sleep(Duration::from_millis(100));
    }
    let used_usage = usage_of(&mut admin, used_id);
    assert_eq!(used_usage["refused"], 0);
    assert!(usage_of(&mut admin, idle).is_null(), "never used");
    let last_used = used_usage["last_used"].as_u64().unwrap();

    // Unused since the moment `used` was used: `idle` (created before, never used) only.
    let unused = admin
        .call(opcode::LIST, &json!({ "unused_since": last_used }))
        .unwrap();
    let ids: Vec<u64> = unused["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![idle]);

    // Persisted within a couple of seconds: a SIGKILL then keeps the counts.
    std::thread::sleep(Duration::from_millis(2500));
    server.kill();
    let server = common::Server::start(dir, &[]);
    let mut admin = server.admin();
    assert_eq!(usage_of(&mut admin, used_id), used_usage);
    assert_eq!(usage_of(&mut admin, revoked_id)["refused"], 3);
}

#[test]
fn a_read_token_changes_nothing_and_a_removed_token_is_refused_at_once() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let server = common::Server::start(dir, &[]);
    let mut admin = server.admin();
    let (_, key) = issue(&mut admin, "acme");
    let reader = admin
        .call(
            opcode::ADMIN_ADD,
            &json!({ "name": "dashboard", "role": "read" }),
        )
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let writer = admin
        .call(
            opcode::ADMIN_ADD,
            &json!({ "name": "deployer", "role": "write" }),
        )
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!std::fs::read_to_string(dir.join("admins.json"))
        .unwrap()
        .contains(&reader));

    let mut read = AdminClient::connect(server.control, &reader).unwrap();
    read.call(opcode::INSPECT, &json!({ "id": key })).unwrap();
    read.call(opcode::LIST, &json!({})).unwrap();
    read.call(opcode::STATS, &json!({})).unwrap();
    read.call(opcode::ADMIN_LIST, &json!({})).unwrap();
    for (op, body) in [
        (opcode::ISSUE, json!({})),
        (opcode::REVOKE, json!({ "id": key })),
        (opcode::UPDATE, json!({ "id": key, "name": "x" })),
        (opcode::ROTATE, json!({ "id": key })),
        (opcode::COMPACT, json!({})),
        (
            opcode::ADMIN_ADD,
            json!({ "name": "sneaky", "role": "write" }),
        ),
        (opcode::ADMIN_REMOVE, json!({ "name": "deployer" })),
    ] {
        // Refused, and the connection stays open for the next request.
        assert_eq!(error_code(read.call(op, &body)), ErrorCode::Forbidden as u8);
    }
    let key_now = admin.call(opcode::INSPECT, &json!({ "id": key })).unwrap();
    assert_eq!(key_now["key"]["status"], "active");
    assert_eq!(key_now["key"]["name"], "");

    let mut write = AdminClient::connect(server.control, &writer).unwrap();
    let (_, by_deployer) = issue(&mut write, "acme");
    let all = wait_for(dir, |e| e.op == "issue" && e.key == Some(by_deployer));
    let line = all.iter().find(|e| e.key == Some(by_deployer)).unwrap();
    assert_eq!(line.actor, "deployer");
    assert!(all
        .iter()
        .any(|e| e.actor == "dashboard" && e.op == "revoke" && e.outcome == "forbidden"));

    // Removed: refused on its open connection, from the very next request.
    admin
        .call(opcode::ADMIN_REMOVE, &json!({ "name": "deployer" }))
        .unwrap();
    assert_eq!(
        error_code(write.call(opcode::STATS, &json!({}))),
        ErrorCode::Unauthorized as u8
    );
    // Kept across a restart: the reader still reads, the removed writer is still refused.
    let (status, _) = server.stop();
    assert!(status.success());
    let server = common::Server::start(dir, &[]);
    AdminClient::connect(server.control, &reader)
        .unwrap()
        .call(opcode::STATS, &json!({}))
        .unwrap();
    assert_eq!(
        error_code(
            AdminClient::connect(server.control, &writer)
                .unwrap()
                .call(opcode::STATS, &json!({}))
        ),
        ErrorCode::Unauthorized as u8
    );
}
