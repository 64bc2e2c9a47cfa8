//! A backup taken as docs/DEPLOY.md says — `keyward-ctl backup` while the server runs with
//! changes and compactions going on, or the files copied by hand in the order it gives — restored
//! as it says (copied into a fresh directory), answers every credential exactly as the server did
//! when the backup was taken.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use keyward::admin::{opcode, AdminClient};
use keyward::client::Client;
use keyward::protocol::{Status, VerifyRequest};

use common::{ctl, serve, text, Server};

fn admin(server: &Server, data_dir: &Path) -> AdminClient {
    let token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap();
    let admin = AdminClient::connect(
        server.2.parse::<std::net::SocketAddr>().unwrap(),
        token.trim(),
    )
    .unwrap();
    admin.set_timeout(Some(Duration::from_secs(60))).unwrap();
    admin
}

fn answers(server: &Server, credentials: &[String]) -> Vec<Status> {
    let mut client = Client::connect(server.1.as_str()).unwrap();
    credentials
        .iter()
        .map(|credential| {
            let request = VerifyRequest {
                credential: credential.as_bytes(),
                ..Default::default()
            };
            client.verify(&request).unwrap().status
        })
        .collect()
}

/// A new data directory of `count` generated keys (valid, revoked, expired, …): their
/// credentials.
fn generated_keys(data: &Path, count: usize) -> Vec<String> {
    let keys_file = data.with_extension("keys.txt");
    let generated = common::generate_keys(data, &keys_file, count);
    assert!(generated.status.success(), "{}", text(&generated));
    let file = std::fs::File::open(&keys_file).unwrap();
    keyward::keyset::read_key_file(std::io::BufReader::new(file))
        .unwrap()
        .into_iter()
        .map(|k| k.credential)
        .collect()
}

/// `cp -a BACKUP/. NEW/` into a fresh directory of mode 0700: the restore DEPLOY.md describes.
fn restore(backup: &Path, fresh: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(fresh)
        .unwrap();
    for entry in std::fs::read_dir(backup).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), fresh.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_backup_of_a_running_server_restored_elsewhere_answers_every_key_as_before() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let mut credentials = generated_keys(&data, 300);
    let server = serve(&data);
    let mut control = admin(&server, &data);

    // Changes before and after a compaction: the backup needs the key table and the log.
    let mut issued = Vec::new();
    for n in 0..30 {
        let answer = control
            .call(
                opcode::ISSUE,
                &json!({ "name": format!("k{n}"), "scopes": ["a:read"] }),
            )
            .unwrap();
        issued.push((
            answer["credential"].as_str().unwrap().to_string(),
            answer["key"]["id"].as_u64().unwrap(),
        ));
    }
    for (_, id) in issued.iter().step_by(3) {
        control.call(opcode::REVOKE, &json!({ "id": id })).unwrap();
    }
    control.call(opcode::COMPACT, &json!({})).unwrap();
    for (_, id) in issued.iter().skip(1).step_by(5) {
        let _ = control.call(opcode::REVOKE, &json!({ "id": id }));
    }
    let rotated = control
        .call(
            opcode::ROTATE,
            &json!({ "id": issued[2].1, "grace_seconds": 3600 }),
        )
        .unwrap();
    credentials.push(rotated["credential"].as_str().unwrap().to_string());
    let token = control
        .call(
            opcode::DERIVE,
            &json!({ "parent_id": issued[4].1, "ttl_seconds": 3600 }),
        )
        .unwrap();
    credentials.push(token["token"].as_str().unwrap().to_string());
    credentials.extend(issued.iter().map(|(credential, _)| credential.clone()));

    // Backups taken while revocations and compactions keep going: each one is consistent.
    let churn_stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = churn_stop.clone();
        let mut control = admin(&server, &data);
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) && rounds < 2000 {
                let answer = control.call(opcode::ISSUE, &json!({})).unwrap();
                let id = answer["key"]["id"].as_u64().unwrap();
                control.call(opcode::REVOKE, &json!({ "id": id })).unwrap();
                if rounds % 2 == 0 {
                    control.call(opcode::COMPACT, &json!({})).unwrap();
                }
                rounds += 1;
            }
            rounds
        })
    };
    for n in 0..10 {
        let backup = directory.path().join(format!("churn-backup-{n}"));
        let output = ctl(&[
            "backup",
            "--data-dir",
            data.to_str().unwrap(),
            backup.to_str().unwrap(),
        ]);
        assert!(
            output.status.success(),
            "backup {n} during churn: {}",
            text(&output)
        );
    }
    churn_stop.store(true, Ordering::Relaxed);
    let rounds = churn.join().unwrap();
    assert!(rounds > 0, "no churn ran alongside the backups");

    // The backup the restore is tested with: taken with the server running, after the answers.
    let before = answers(&server, &credentials);
    assert!(before.contains(&Status::Valid) && before.contains(&Status::Revoked));
    let backup = directory.path().join("backup");
    let output = ctl(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        backup.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("backed up"), "{}", text(&output));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&backup).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    // A backup never goes over another one.
    let again = ctl(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        backup.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(text(&again).contains("is not empty"), "{}", text(&again));

    let restored_dir = directory.path().join("restored");
    restore(&backup, &restored_dir);
    let restored = serve(&restored_dir);
    let after = answers(&restored, &credentials);
    for (index, (was, is)) in before.iter().zip(&after).enumerate() {
        assert_eq!(
            was, is,
            "{} answered {was} before, {is} restored",
            credentials[index]
        );
    }
    // The original is untouched by the backups, and the admin token came along.
    assert_eq!(answers(&server, &credentials), before);
    admin(&restored, &restored_dir)
        .call(opcode::STATS, &json!({}))
        .unwrap();
}

#[test]
fn files_copied_by_hand_in_the_documented_order_survive_a_compaction_between_them() {
    //! DEPLOY.md's order: secrets, admins.json, deltas.log, then snapshot.kws. The worst moment
    //! for a compaction is between the log and the snapshot; it is forced there.
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let mut credentials = generated_keys(&data, 200);
    let server = serve(&data);
    let mut control = admin(&server, &data);
    for n in 0..20 {
        let answer = control.call(opcode::ISSUE, &json!({})).unwrap();
        credentials.push(answer["credential"].as_str().unwrap().to_string());
        if n % 2 == 0 {
            let id = answer["key"]["id"].as_u64().unwrap();
            control.call(opcode::REVOKE, &json!({ "id": id })).unwrap();
        }
    }
    let before = answers(&server, &credentials);

    let backup = directory.path().join("backup");
    std::fs::create_dir(&backup).unwrap();
    for name in ["pepper", "master.key", "admin.token", "deltas.log"] {
        std::fs::copy(data.join(name), backup.join(name)).unwrap();
    }
    // The revocations above are only in the log; the compaction moves them into a new
    // snapshot and empties the log.
    control.call(opcode::COMPACT, &json!({})).unwrap();
    std::fs::copy(data.join("snapshot.kws"), backup.join("snapshot.kws")).unwrap();

    let restored_dir = directory.path().join("restored");
    restore(&backup, &restored_dir);
    let restored = serve(&restored_dir);
    assert_eq!(answers(&restored, &credentials), before);

    // The other order, with a revocation and a compaction between the two copies: the old table
    // and the emptied log would lose the revocation; the server refuses the pair, naming both.
    let wrong = directory.path().join("wrong-order");
    std::fs::create_dir(&wrong).unwrap();
    for name in ["pepper", "master.key", "admin.token", "snapshot.kws"] {
        std::fs::copy(data.join(name), wrong.join(name)).unwrap();
    }
    let answer = control.call(opcode::ISSUE, &json!({})).unwrap();
    let id = answer["key"]["id"].as_u64().unwrap();
    control.call(opcode::REVOKE, &json!({ "id": id })).unwrap();
    control.call(opcode::COMPACT, &json!({})).unwrap();
    std::fs::copy(data.join("deltas.log"), wrong.join("deltas.log")).unwrap();
    let stderr = common::serve_expecting_refusal(&wrong);
    assert!(
        stderr.contains("deltas.log") && stderr.contains("snapshot.kws is at sequence"),
        "{stderr}"
    );
}
