//! Keys changing while the real server (2 shards) runs: issue, import, revoke, rotate, update,
//! inspect, list, stats, authentication — checked over TCP from many connections at once.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use keyward::admin::{self, opcode, AdminClient, AdminError};
use keyward::client::Client;
use keyward::protocol::{Status, VerifyRequest};

fn start() -> (tempfile::TempDir, common::Server) {
    let directory = tempfile::tempdir().unwrap();
    let server = common::Server::start(directory.path(), &[]);
    (directory, server)
}

/// Verifies `credential` from `connections` fresh connections (spread over both shards by the
/// kernel) and returns every status seen.
fn statuses_everywhere(address: SocketAddr, credential: &str, connections: usize) -> Vec<Status> {
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let credential = credential.to_string();
            std::thread::spawn(move || {
                let mut client = Client::connect(address).unwrap();
                let request = VerifyRequest {
                    credential: credential.as_bytes(),
                    ..Default::default()
                };
                client.verify(&request).unwrap().status
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn issue(admin: &mut AdminClient, request: Value) -> (String, u64) {
    let answer = admin.call(opcode::ISSUE, &request).unwrap();
    (
        answer["credential"].as_str().unwrap().to_string(),
        answer["key"]["id"].as_u64().unwrap(),
    )
}

#[test]
fn issued_keys_are_valid_on_every_shard_at_once_and_revoked_ones_nowhere() {
    let (_directory, server) = start();
    let mut admin = server.admin();
    for round in 0..5 {
        let (credential, id) = issue(
            &mut admin,
            json!({ "tenant": "acme", "scopes": ["orders:read"], "name": format!("round {round}") }),
        );
        let seen = statuses_everywhere(server.address, &credential, 32);
        assert!(
            seen.iter().all(|s| *s == Status::Valid),
            "after ISSUE: {seen:?}"
        );

        let answer = admin
            .call(opcode::REVOKE, &json!({ "id": id, "reason": "test" }))
            .unwrap();
        assert_eq!(answer["key"]["status"], "revoked");
        let seen = statuses_everywhere(server.address, &credential, 32);
        assert!(
            seen.iter().all(|s| *s == Status::Revoked),
            "after REVOKE: {seen:?}"
        );
    }
}

#[test]
fn revoke_by_credential_is_idempotent() {
    let (_directory, server) = start();
    let mut admin = server.admin();
    let (credential, id) = issue(&mut admin, json!({}));
    let first = admin
        .call(opcode::REVOKE, &json!({ "credential": credential }))
        .unwrap();
    assert_eq!(
        (first["key"]["id"].as_u64(), &first["already_revoked"]),
        (Some(id), &json!(false))
    );
    let again = admin
        .call(opcode::REVOKE, &json!({ "credential": credential }))
        .unwrap();
    assert_eq!(again["already_revoked"], true);
    let wrong = admin.call(opcode::REVOKE, &json!({ "id": 999 }));
    assert!(
        matches!(
            wrong,
            Err(AdminError::Server {
                code: admin::error_code::NOT_FOUND,
                ..
            })
        ),
        "{wrong:?}"
    );
}

#[test]
fn rotation_without_grace_kills_the_old_key_and_with_grace_lets_it_expire() {
    let (_directory, server) = start();
    let mut admin = server.admin();
    let (old, old_id) = issue(
        &mut admin,
        json!({ "tenant": "acme", "scopes": ["a:b"], "allow": ["127.0.0.0/8"] }),
    );
    let answer = admin
        .call(opcode::ROTATE, &json!({ "id": old_id }))
        .unwrap();
    let new = answer["credential"].as_str().unwrap().to_string();
    assert_eq!(answer["key"]["tenant"], "acme");
    assert_eq!(answer["key"]["scopes"], json!(["a:b"]));
    assert_eq!(answer["key"]["allow"], json!(["127.0.0.0/8"]));
    let mut client = Client::connect(server.address).unwrap();
    let ask = |client: &mut Client, credential: &str| {
        let request = VerifyRequest {
            credential: credential.as_bytes(),
            address: Some("127.0.0.1".parse().unwrap()),
            ..Default::default()
        };
        client.verify(&request).unwrap().status
    };
    assert_eq!(ask(&mut client, &old), Status::Revoked);
    assert_eq!(ask(&mut client, &new), Status::Valid);

    let (graced, graced_id) = issue(&mut admin, json!({ "tenant": "acme" }));
    let answer = admin
        .call(
            opcode::ROTATE,
            &json!({ "id": graced_id, "grace_seconds": 2 }),
        )
        .unwrap();
    let successor = answer["credential"].as_str().unwrap().to_string();
    assert_eq!(ask(&mut client, &graced), Status::Valid);
    assert_eq!(ask(&mut client, &successor), Status::Valid);
    std::thread::sleep(Duration::from_millis(3100));
    assert_eq!(ask(&mut client, &graced), Status::Expired);
    assert_eq!(ask(&mut client, &successor), Status::Valid);
}

#[test]
fn imports_single_and_batch_with_per_item_results() {
    let (_directory, server) = start();
    let mut admin = server.admin();
    let one = admin.call(opcode::IMPORT, &json!({ "keys": [{ "credential": "sk_live_single_imported_key", "tenant": "legacy" }] })).unwrap();
    assert_eq!(one["imported"], 1);
    let batch: Vec<Value> = (0..1000)
        .map(|i| json!({ "credential": format!("sk_live_batch_key_{i:06}"), "scopes": ["x:y"] }))
        .collect();
    let answer = admin
        .call(opcode::IMPORT, &json!({ "keys": batch }))
        .unwrap();
    assert_eq!(answer["imported"], 1000);
    let mixed = admin
        .call(
            opcode::IMPORT,
            &json!({ "keys": [
                { "credential": "sk_live_batch_key_000007" },
                { "credential": "short" },
                { "credential": "kw_aeaaaaaaaaaaakqaaebagbafaydqqcikbmga2dqpcaireeyuculbogazdinryhi6d7mnyfzx" },
                { "credential": "sk_live_fresh_key_in_mixed_batch" },
            ]}),
        )
        .unwrap();
    let results = mixed["results"].as_array().unwrap();
    assert_eq!(mixed["imported"], 1);
    assert!(
        results[0]["error"]
            .as_str()
            .unwrap()
            .contains("already imported"),
        "{mixed}"
    );
    assert!(
        results[1]["error"].as_str().unwrap().contains("16 to 512"),
        "{mixed}"
    );
    assert!(
        results[2]["error"]
            .as_str()
            .unwrap()
            .contains("keyward credential"),
        "{mixed}"
    );
    assert_eq!(results[3]["ok"], true);
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({ "credential": format!("sk_live_over_limit_{i:06}") }))
        .collect();
    assert!(admin
        .call(opcode::IMPORT, &json!({ "keys": too_many }))
        .is_err());

    let mut client = Client::connect(server.address).unwrap();
    for (credential, scope, expected) in [
        ("sk_live_single_imported_key", None, Status::Valid),
        ("sk_live_batch_key_000999", Some(&b"x:y"[..]), Status::Valid),
        (
            "sk_live_batch_key_000999",
            Some(&b"z:z"[..]),
            Status::ScopeDenied,
        ),
        ("sk_live_fresh_key_in_mixed_batch", None, Status::Valid),
        ("sk_live_never_imported_at_all", None, Status::Unknown),
    ] {
        let request = VerifyRequest {
            credential: credential.as_bytes(),
            scope,
            ..Default::default()
        };
        assert_eq!(
            client.verify(&request).unwrap().status,
            expected,
            "{credential}"
        );
    }
    let revoked = admin
        .call(
            opcode::REVOKE,
            &json!({ "credential": "sk_live_batch_key_000500" }),
        )
        .unwrap();
    assert_eq!(revoked["key"]["kind"], "imported");
    let request = VerifyRequest {
        credential: b"sk_live_batch_key_000500",
        ..Default::default()
    };
    assert_eq!(client.verify(&request).unwrap().status, Status::Revoked);
}

#[test]
fn issue_with_an_idempotency_key_returns_the_same_key() {
    let (_directory, server) = start();
    let mut admin = server.admin();
    let first = admin
        .call(
            opcode::ISSUE,
            &json!({ "tenant": "t", "idempotency_key": "deploy-42" }),
        )
        .unwrap();
    let retry = admin
        .call(
            opcode::ISSUE,
            &json!({ "tenant": "t", "idempotency_key": "deploy-42" }),
        )
        .unwrap();
    assert_eq!(first["credential"], retry["credential"]);
    assert_eq!(first["key"]["id"], retry["key"]["id"]);
    assert_eq!(
        (first["replayed"].clone(), retry["replayed"].clone()),
        (json!(false), json!(true))
    );
    let other = admin
        .call(
            opcode::ISSUE,
            &json!({ "tenant": "t", "idempotency_key": "deploy-43" }),
        )
        .unwrap();
    assert_ne!(first["credential"], other["credential"]);
    let stats = admin.call(opcode::STATS, &json!({})).unwrap();
    assert_eq!(stats["sequence"], 2, "{stats}");
    let mut client = Client::connect(server.address).unwrap();
    let credential = first["credential"].as_str().unwrap();
    let request = VerifyRequest {
        credential: credential.as_bytes(),
        ..Default::default()
    };
    assert_eq!(client.verify(&request).unwrap().status, Status::Valid);
}

#[test]
fn update_inspect_and_list() {
    let (_directory, server) = start();
    let mut admin = server.admin();
    let mut ids = Vec::new();
    for i in 0..25 {
        let tenant = if i % 2 == 0 { "even" } else { "odd" };
        ids.push(
            issue(
                &mut admin,
                json!({ "tenant": tenant, "name": format!("k{i}") }),
            )
            .1,
        );
    }
    let (credential, id) = issue(
        &mut admin,
        json!({ "tenant": "even", "scopes": ["a:read"] }),
    );
    admin
        .call(
            opcode::UPDATE,
            &json!({ "id": id, "scopes": ["a:read", "a:write"], "name": "renamed" }),
        )
        .unwrap();
    let inspected = admin
        .call(opcode::INSPECT, &json!({ "credential": credential }))
        .unwrap();
    assert_eq!(inspected["key"]["name"], "renamed");
    assert_eq!(inspected["key"]["scopes"], json!(["a:read", "a:write"]));
    assert!(inspected["key"].get("hash").is_none());
    let mut client = Client::connect(server.address).unwrap();
    let request = VerifyRequest {
        credential: credential.as_bytes(),
        scope: Some(b"a:write"),
        ..Default::default()
    };
    assert_eq!(client.verify(&request).unwrap().status, Status::Valid);

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = admin
            .call(
                opcode::LIST,
                &json!({ "tenant": "even", "after": after, "limit": 5 }),
            )
            .unwrap();
        for key in page["keys"].as_array().unwrap() {
            assert_eq!(key["tenant"], "even");
            seen.push(key["id"].as_u64().unwrap());
        }
        match page["next"].as_u64() {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<u64> = ids.iter().copied().step_by(2).collect();
    expected.push(id);
    assert_eq!(seen, expected);
    let stats = admin.call(opcode::STATS, &json!({})).unwrap();
    assert_eq!(stats["sequence"], 27);
    assert_eq!(stats["applied_sequence"], 27);
}

/// Every operation, without the admin token and with a wrong one: refused, nothing changes.
#[test]
fn every_operation_needs_the_admin_token() {
    let (_directory, server) = start();
    let mut admin = server.admin();
    let (_credential, id) = issue(&mut admin, json!({}));
    let requests = [
        (opcode::ISSUE, json!({})),
        (
            opcode::IMPORT,
            json!({ "keys": [{ "credential": "sk_live_unauthorized_import" }] }),
        ),
        (opcode::REVOKE, json!({ "id": id })),
        (opcode::ROTATE, json!({ "id": id })),
        (opcode::UPDATE, json!({ "id": id, "name": "x" })),
        (opcode::INSPECT, json!({ "id": id })),
        (opcode::LIST, json!({})),
        (opcode::STATS, json!({})),
        (opcode::COMPACT, json!({})),
    ];
    let real = std::fs::read_to_string(server.data_dir.join("admin.token")).unwrap();
    let mut near_miss = real.trim().to_string().into_bytes();
    let last = near_miss.len() - 1;
    near_miss[last] = if near_miss[last] == b'0' { b'1' } else { b'0' };
    let near_miss = String::from_utf8(near_miss).unwrap();
    for token in ["", "kwadmin_wrong", near_miss.as_str()] {
        for (op, request) in &requests {
            // A refused token closes the connection: each attempt needs a new one.
            let mut intruder = AdminClient::connect(server.control, token).unwrap();
            let refused = intruder.call(*op, request);
            assert!(
                matches!(
                    refused,
                    Err(AdminError::Server {
                        code: admin::error_code::UNAUTHORIZED,
                        ..
                    })
                ),
                "opcode {op:#x} with token {token:?}: {refused:?}"
            );
        }
    }
    let stats = admin.call(opcode::STATS, &json!({})).unwrap();
    assert_eq!(stats["sequence"], 1, "something changed: {stats}");
    let inspected = admin.call(opcode::INSPECT, &json!({ "id": id })).unwrap();
    assert_eq!(inspected["key"]["status"], "active");
}

#[test]
fn changes_survive_a_restart() {
    let directory = tempfile::tempdir().unwrap();
    let server = common::Server::start(directory.path(), &[]);
    let mut admin = server.admin();
    let (kept, _) = issue(&mut admin, json!({ "tenant": "a" }));
    let (revoked, revoked_id) = issue(&mut admin, json!({ "tenant": "a" }));
    admin
        .call(opcode::REVOKE, &json!({ "id": revoked_id }))
        .unwrap();
    drop(admin);
    let (status, _) = server.stop();
    assert!(status.success());
    let server = common::Server::start(directory.path(), &[]);
    let mut client = Client::connect(server.address).unwrap();
    for (credential, expected) in [(&kept, Status::Valid), (&revoked, Status::Revoked)] {
        let request = VerifyRequest {
            credential: credential.as_bytes(),
            ..Default::default()
        };
        assert_eq!(client.verify(&request).unwrap().status, expected);
    }
    let (next, next_id) = issue(&mut server.admin(), json!({}));
    assert_eq!(next_id, 3, "ids continue after a restart");
    let request = VerifyRequest {
        credential: next.as_bytes(),
        ..Default::default()
    };
    assert_eq!(client.verify(&request).unwrap().status, Status::Valid);
}
