//! No secret ever reaches a log line or the audit trail: a server run through every operation
//! (with credentials in requests, wrong tokens, malformed frames, failures) at the most verbose
//! level, in both log formats, then every line it wrote is searched for every secret it saw.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use keyward::admin::{opcode, AdminClient};
use keyward::client::Client;
use keyward::datadir::hex;
use keyward::protocol::VerifyRequest;
use serde_json::json;

/// Runs the server through everything once; returns every secret it handled and all it wrote
/// (stdout, stderr, audit trail).
fn exercise(format: &str) -> (Vec<String>, String) {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let server = common::Server::start(
        dir,
        &[
            "--log-format",
            format,
            "--log-level",
            "debug",
            "--audit-rotate-bytes",
            "4096",
        ],
    );
    let admin_token = std::fs::read_to_string(dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let mut secrets = vec![admin_token.clone()];
    let mut admin = server.admin();
    let mut credentials = Vec::new();
    for tenant in ["a", "b"] {
        let issued = admin
            .call(opcode::ISSUE, &json!({ "tenant": tenant }))
            .unwrap();
        credentials.push(issued["credential"].as_str().unwrap().to_string());
    }
    let foreign = [
        "sk_live_4f3c2b1a09887766554433221100ffee",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    ];
    admin
        .call(
            opcode::IMPORT,
            &json!({ "keys": foreign.iter().map(|c| json!({ "credential": c })).collect::<Vec<_>>() }),
        )
        .unwrap();
    secrets.extend(foreign.iter().map(|s| s.to_string()));
    // Requests that carry a credential: by credential, malformed, unknown, refused.
    let _ = admin.call(opcode::INSPECT, &json!({ "credential": credentials[0] }));
    let _ = admin.call(opcode::REVOKE, &json!({ "credential": credentials[1] }));
    let _ = admin.call(
        opcode::INSPECT,
        &json!({ "credential": format!("{}x", credentials[0]) }),
    );
    let _ = admin.call(
        opcode::REVOKE,
        &json!({ "credential": "kw_not_a_real_credential_but_secretish" }),
    );
    let _ = admin.call(opcode::ISSUE, &json!({ "tenant": credentials[0] }));
    let derived = admin
        .call(
            opcode::DERIVE,
            &json!({ "parent_id": 1, "ttl_seconds": 60 }),
        )
        .unwrap();
    secrets.push(derived["token"].as_str().unwrap().to_string());
    let reader = admin
        .call(opcode::ADMIN_ADD, &json!({ "name": "r", "role": "read" }))
        .unwrap();
    let reader = reader["token"].as_str().unwrap().to_string();
    secrets.push(reader.clone());
    let _ = AdminClient::connect(server.control, &reader)
        .unwrap()
        .call(opcode::ISSUE, &json!({}));
    let _ = admin.call(opcode::ADMIN_REMOVE, &json!({ "name": "r" }));
    let _ = AdminClient::connect(server.control, &reader)
        .unwrap()
        .call(opcode::STATS, &json!({}));
    let _ = AdminClient::connect(server.control, &format!("{admin_token}0"))
        .unwrap()
        .call(opcode::STATS, &json!({}));
    // The verify port: valid, self-revoked, and garbage around a credential.
    let mut client = Client::connect(server.address).unwrap();
    for credential in credentials.iter().chain([&secrets[3]]) {
        let _ = client.verify(&VerifyRequest {
            credential: credential.as_bytes(),
            ..Default::default()
        });
    }
    let _ = client.revoke_self(credentials[0].as_bytes());
    let mut raw = TcpStream::connect(server.address).unwrap();
    let mut garbage = vec![9u8, 9, 9, 9];
    garbage.extend_from_slice(credentials[1].as_bytes());
    let _ = raw.write_all(&garbage);
    let _ = raw.read(&mut [0u8; 256]);
    admin.call(opcode::COMPACT, &json!({})).unwrap();
    secrets.extend(credentials);
    secrets.push(hex(&std::fs::read(dir.join("pepper")).unwrap()));
    secrets.push(hex(&std::fs::read(dir.join("master.key")).unwrap()));

    let mut stderr = String::new();
    let mut child_stderr = None;
    let (status, stdout) = {
        let mut server = server;
        child_stderr = server.child.stderr.take().or(child_stderr);
        server.stop()
    };
    assert!(status.success());
    child_stderr.unwrap().read_to_string(&mut stderr).unwrap();
    let mut written = format!("{stdout}{stderr}");
    for file in keyward::audit::files(dir).unwrap() {
        written += &std::fs::read_to_string(file).unwrap();
    }
    (secrets, written)
}

#[test]
fn no_secret_is_ever_logged_or_audited() {
    for format in ["text", "json"] {
        let (secrets, written) = exercise(format);
        assert!(
            written.lines().count() > 15 && written.contains("debug"),
            "too little written to mean anything: {written}"
        );
        if format == "json" {
            for line in written.lines() {
                let value: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                assert!(
                    value.get("level").is_some() || value.get("prev").is_some(),
                    "{line}"
                );
            }
        }
        for (index, secret) in secrets.iter().enumerate() {
            assert!(secret.len() >= 16);
            let leaks: Vec<String> = written
                .lines()
                .filter(|line| line.contains(secret.as_str()))
                .map(|line| line.replace(secret.as_str(), "<SECRET>"))
                .collect();
            assert!(
                leaks.is_empty(),
                "secret {index} reached the {format} logs or the audit trail: {leaks:#?}"
            );
        }
    }
}
