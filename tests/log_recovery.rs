//! A delta log cut mid-record, or with a flipped byte, replays to the last good record: the
//! server starts, says where it cut, and keeps every change before the damage.

mod common;

use std::io::Read;

use serde_json::json;

use keyward::admin::opcode;
use keyward::client::Client;
use keyward::delta;
use keyward::protocol::{Status, VerifyRequest};

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
    let bytes = std::fs::read(directory.join(delta::FILE_NAME)).unwrap();
    let mut offsets = Vec::new();
    let mut at = delta::FILE_HEADER_BYTES;
    while at < bytes.len() {
        offsets.push(at);
        at += delta::decode(&bytes[at..]).unwrap().1;
    }
    assert_eq!(offsets.len(), 5);
    (credentials, offsets)
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
fn flipped_byte_replays_to_the_record_before_it() {
    let directory = tempfile::tempdir().unwrap();
    let (credentials, offsets) = five_logged_keys(directory.path());
    let path = directory.path().join(delta::FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offsets[3] + 20] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let (stderr, statuses) = restart(directory.path(), &credentials);
    assert!(
        stderr.contains(&format!("at byte offset {}", offsets[3])),
        "{stderr}"
    );
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    use Status::*;
    assert_eq!(statuses, vec![Valid, Valid, Valid, Unknown, Unknown]);
    // New changes after the cut get the next sequence numbers and survive another restart.
    let server = common::Server::start(directory.path(), &[]);
    let answer = server.admin().call(opcode::STATS, &json!({})).unwrap();
    assert_eq!(answer["sequence"], 3);
}
