//! A delta log cut mid-record, or damaged in its last record (a torn tail), replays to the last
//! good record: the server starts, says where it cut, and keeps every change before the damage.
//! Damage followed by valid records is corruption: the server refuses to start and names the
//! offset, and acknowledged changes after the damage (a revocation, here) are never undone.

mod common;

use std::io::Read;

use serde_json::json;

use keyward::admin::opcode;
use keyward::client::Client;
use keyward::delta;
use keyward::protocol::{Status, VerifyRequest};

/// The byte offset of each record of the (undamaged) log; there must be `count`.
fn record_offsets(directory: &std::path::Path, count: usize) -> Vec<usize> {
    let bytes = std::fs::read(directory.join(delta::FILE_NAME)).unwrap();
    let mut offsets = Vec::new();
    let mut at = delta::FILE_HEADER_BYTES;
    while at < bytes.len() {
        offsets.push(at);
        at += delta::decode(&bytes[at..]).unwrap().1;
    }
    assert_eq!(offsets.len(), count);
    offsets
}

/// Issues five keys, kills the server, returns the credentials and each log record's offset.
fn five_logged_keys(directory: &std::path::Path) -> (Vec<String>, Vec<usize>) {
    let server = common::Server::start(directory, &[]);
    let mut admin = server.admin();
    let credentials: Vec<String> = (0..5)
        .map(|i| {
            let answer = admin
                .call(opcode::ISSUE, &json!({ "name": format!("k{i}") }))
                .unwrap();
            answer["credential"].as_str().unwrap().to_string()
        })
        .collect();
    server.kill();
    (credentials, record_offsets(directory, 5))
}

/// Starts the server on the damaged log; returns what it printed on stderr before listening,
/// and the statuses of the credentials.
fn restart(directory: &std::path::Path, credentials: &[String]) -> (String, Vec<Status>) {
    let mut server = common::Server::start(directory, &[]);
    let mut client = Client::connect(server.address).unwrap();
    let statuses = credentials
        .iter()
        .map(|c| {
            client
                .verify(&VerifyRequest {
                    credential: c.as_bytes(),
                    ..Default::default()
                })
                .unwrap()
                .status
        })
        .collect();
    let mut stderr = server.child.stderr.take().unwrap();
    server.kill();
    let mut text = String::new();
    stderr.read_to_string(&mut text).unwrap();
    (text, statuses)
}

#[test]
fn log_cut_mid_record_replays_to_the_last_whole_record() {
    let directory = tempfile::tempdir().unwrap();
    let (credentials, offsets) = five_logged_keys(directory.path());
    let path = directory.path().join(delta::FILE_NAME);
    let length = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(length - 7).unwrap();
    drop(file);
    let (stderr, statuses) = restart(directory.path(), &credentials);
    assert!(
        stderr.contains(&format!("at byte offset {}", offsets[4])),
        "{stderr}"
    );
    use Status::*;
    assert_eq!(statuses, vec![Valid, Valid, Valid, Valid, Unknown]);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        offsets[4] as u64,
        "the torn tail was not cut off"
    );
}

#[test]
fn flipped_byte_in_the_last_record_is_a_torn_tail() {
    let directory = tempfile::tempdir().unwrap();
    let (credentials, offsets) = five_logged_keys(directory.path());
    let path = directory.path().join(delta::FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offsets[4] + 20] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let (stderr, statuses) = restart(directory.path(), &credentials);
    assert!(
        stderr.contains(&format!("at byte offset {}", offsets[4])),
        "{stderr}"
    );
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    use Status::*;
    assert_eq!(statuses, vec![Valid, Valid, Valid, Valid, Unknown]);
    // New changes after the cut get the next sequence numbers and survive another restart.
    let server = common::Server::start(directory.path(), &[]);
    let answer = server.admin().call(opcode::STATS, &json!({})).unwrap();
    assert_eq!(answer["sequence"], 4);
}

/// Issues four keys and revokes the first; kills the server. Returns the credentials and each
/// log record's offset (5 records: four issues, then the revocation).
fn revocation_in_the_log(directory: &std::path::Path) -> (Vec<String>, Vec<usize>) {
    let server = common::Server::start(directory, &[]);
    let mut admin = server.admin();
    let mut issue = |name: &str| {
        let answer = admin.call(opcode::ISSUE, &json!({ "name": name })).unwrap();
        answer["credential"].as_str().unwrap().to_string()
    };
    let credentials: Vec<String> = ["a", "b", "c", "d"].iter().map(|n| issue(n)).collect();
    let revoked = admin
        .call(opcode::REVOKE, &json!({ "credential": credentials[0] }))
        .unwrap();
    assert_eq!(revoked["key"]["status"], "revoked");
    server.kill();
    (credentials, record_offsets(directory, 5))
}

fn assert_refused_as_corrupt(directory: &std::path::Path, offset: usize) {
    let (status, stderr) = common::start_expecting_failure(directory, &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("damaged record at byte offset {offset}")),
        "{stderr}"
    );
    assert!(stderr.contains("corruption, not a torn tail"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr:?}");
}

#[test]
fn flipped_byte_before_valid_records_refuses_to_start() {
    let directory = tempfile::tempdir().unwrap();
    let (_credentials, offsets) = revocation_in_the_log(directory.path());
    let path = directory.path().join(delta::FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offsets[2] + 20] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    assert_refused_as_corrupt(directory.path(), offsets[2]);
    // Nothing was cut: the file is as it was, so a restored record can still be recovered.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn huge_length_field_before_valid_records_refuses_to_start() {
    let directory = tempfile::tempdir().unwrap();
    let (_credentials, offsets) = revocation_in_the_log(directory.path());
    let path = directory.path().join(delta::FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offsets[1]..offsets[1] + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    assert_refused_as_corrupt(directory.path(), offsets[1]);
}

#[test]
fn an_older_key_table_put_back_beside_a_compacted_log_is_refused() {
    //! A compaction moves the changes into a new snapshot and empties the log. Putting an older
    //! snapshot.kws back (from a backup, or copied before the log) beside that log started the
    //! server silently without those changes: a revoked key was valid again.
    let directory = tempfile::tempdir().unwrap();
    let server = common::Server::start(directory.path(), &[]);
    let mut admin = server.admin();
    let answer = admin.call(opcode::ISSUE, &json!({ "name": "k" })).unwrap();
    let credential = answer["credential"].as_str().unwrap().to_string();
    let id = answer["key"]["id"].as_u64().unwrap();
    admin.call(opcode::COMPACT, &json!({})).unwrap();
    let older = std::fs::read(directory.path().join("snapshot.kws")).unwrap();
    admin.call(opcode::REVOKE, &json!({ "id": id })).unwrap();
    admin.call(opcode::COMPACT, &json!({})).unwrap();
    server.kill();
    let newer = std::fs::read(directory.path().join("snapshot.kws")).unwrap();

    std::fs::write(directory.path().join("snapshot.kws"), &older).unwrap();
    let (status, stderr) = common::start_expecting_failure(directory.path(), &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("deltas.log"), "{stderr}");
    assert!(stderr.contains("snapshot.kws"), "{stderr}");

    // With its own table back, the revocation holds.
    std::fs::write(directory.path().join("snapshot.kws"), &newer).unwrap();
    let (_, statuses) = restart(directory.path(), &[credential]);
    assert_eq!(statuses, [Status::Revoked]);
}
