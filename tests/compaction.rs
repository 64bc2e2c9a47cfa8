//! Compaction under load: verify traffic with a known answer per credential runs through many
//! compactions (automatic and on demand) while keys are issued and revoked; no answer is ever
//! wrong, and every change survives the snapshot switch.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use keyward::admin::opcode;
use keyward::client::Client;
use keyward::protocol::{Status, VerifyRequest};

#[test]
fn verify_answers_stay_right_through_compactions() {
    let directory = tempfile::tempdir().unwrap();
    let keys = Arc::new(common::generated_data_dir(directory.path(), 3000));
    let server = common::Server::start(directory.path(), &["--compact-changes-max", "25"]);
    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..4)
        .map(|reader| {
            let (keys, stop, wrong, answered, address) = (
                keys.clone(),
                stop.clone(),
                wrong.clone(),
                answered.clone(),
                server.address,
            );
            std::thread::spawn(move || {
                let mut client = Client::connect(address).unwrap();
                let mut at = reader * 97;
                while !stop.load(Ordering::Relaxed) {
                    let window: Vec<_> = (0..32).map(|i| &keys[(at + i) % keys.len()]).collect();
                    at += 32;
                    let requests: Vec<_> = window
                        .iter()
                        .map(|k| VerifyRequest {
                            credential: k.credential.as_bytes(),
                            ..Default::default()
                        })
                        .collect();
                    for (result, key) in client
                        .verify_pipelined(&requests)
                        .unwrap()
                        .iter()
                        .zip(&window)
                    {
                        if result.status != key.expected {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    answered.fetch_add(32, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let mut admin = server.admin();
    let mut issued = Vec::new();
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(3) || round < 200 {
        let answer = admin
            .call(opcode::ISSUE, &json!({ "tenant": "new" }))
            .unwrap();
        let id = answer["key"]["id"].as_u64().unwrap();
        issued.push((
            answer["credential"].as_str().unwrap().to_string(),
            id,
            round % 3 == 0,
        ));
        if round % 3 == 0 {
            admin.call(opcode::REVOKE, &json!({ "id": id })).unwrap();
        }
        if round % 50 == 0 {
            let compacted = admin.call(opcode::COMPACT, &json!({}));
            // A compaction started automatically may be running: both answers are fine.
            if let Err(error) = &compacted {
                assert!(error.to_string().contains("already running"), "{error}");
            }
        }
        round += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "wrong answers during compaction"
    );
    assert!(answered.load(Ordering::Relaxed) > 1000);
    let stats = admin.call(opcode::STATS, &json!({})).unwrap();
    assert!(stats["compactions"].as_u64().unwrap() >= 5, "{stats}");
    assert!(stats["snapshot_sequence"].as_u64().unwrap() > 0, "{stats}");

    let mut client = Client::connect(server.address).unwrap();
    let check = |client: &mut Client, issued: &[(String, u64, bool)]| {
        for (credential, id, revoked) in issued {
            let status = client
                .verify(&VerifyRequest {
                    credential: credential.as_bytes(),
                    ..Default::default()
                })
                .unwrap()
                .status;
            assert_eq!(
                status,
                if *revoked {
                    Status::Revoked
                } else {
                    Status::Valid
                },
                "key {id}"
            );
        }
    };
    check(&mut client, &issued);
    // And after a restart from the compacted snapshot plus the shortened log.
    drop(admin);
    let (status, _) = server.stop();
    assert!(status.success());
    let server = common::Server::start(directory.path(), &[]);
    let mut client = Client::connect(server.address).unwrap();
    check(&mut client, &issued);
    for key in keys.iter().take(200) {
        let status = client
            .verify(&VerifyRequest {
                credential: key.credential.as_bytes(),
                ..Default::default()
            })
            .unwrap()
            .status;
        assert_eq!(status, key.expected);
    }
}

#[test]
fn every_file_a_compaction_writes_is_private_whatever_the_umask() {
    //! A compaction wrote snapshot.kws and deltas.log with the umask's mode: 0644 under 022.
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let directory = tempfile::tempdir().unwrap();
    let mut command = common::keyward_command(directory.path(), &["--shards", "1"]);
    // SAFETY: umask is async-signal-safe; nothing else runs in the child before exec.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let server = common::Server::start_command(command, directory.path());
    let mut admin = server.admin();
    for _ in 0..3 {
        admin
            .call(opcode::ISSUE, &json!({ "tenant": "acme" }))
            .unwrap();
        admin.call(opcode::COMPACT, &json!({})).unwrap();
    }
    let (status, _) = server.stop();
    assert!(status.success());
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(directory.path()).unwrap() {
        let entry = entry.unwrap();
        let metadata = entry.metadata().unwrap();
        if metadata.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mode = metadata.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
            seen.push(name);
        }
    }
    for name in ["snapshot.kws", "deltas.log", "audit.log"] {
        assert!(seen.iter().any(|s| s == name), "{name} not in {seen:?}");
    }
}
