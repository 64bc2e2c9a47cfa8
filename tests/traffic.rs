//! Pipelined and batched requests, and many connections spread over both shards, all checked
//! against the answer each generated credential must get.

mod common;

use std::sync::Arc;

use keyward::client::Client;
use keyward::protocol::{VerifyRequest, BATCH_ITEMS_MAX};

fn requests(keys: &[keyward::keyset::ExpectedKey]) -> Vec<VerifyRequest<'_>> {
    keys.iter()
        .map(|k| VerifyRequest {
            credential: k.credential.as_bytes(),
            ..Default::default()
        })
        .collect()
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let directory = tempfile::tempdir().unwrap();
    let keys = common::generated_data_dir(directory.path(), 2000);
    let server = common::Server::start(directory.path(), &[]);
    let mut client = Client::connect(server.address).unwrap();
    // 2000 frames in one write: more than one server read buffer, so answers span many reads.
    let results = client.verify_pipelined(&requests(&keys)).unwrap();
    assert_eq!(results.len(), keys.len());
    for (key, result) in keys.iter().zip(&results) {
        assert_eq!(result.status, key.expected, "{}", key.credential);
    }
    client.ping().unwrap();
}

#[test]
fn batches_are_answered_item_by_item() {
    let directory = tempfile::tempdir().unwrap();
    let keys = common::generated_data_dir(directory.path(), 1000);
    let server = common::Server::start(directory.path(), &[]);
    let mut client = Client::connect(server.address).unwrap();
    for chunk in keys.chunks(BATCH_ITEMS_MAX) {
        let results = client.verify_batch(&requests(chunk)).unwrap();
        for (key, result) in chunk.iter().zip(&results) {
            assert_eq!(result.status, key.expected);
        }
    }
    let one = client.verify_batch(&requests(&keys[..1])).unwrap();
    assert_eq!(one[0].status, keys[0].expected);
}

#[test]
fn many_connections_reach_both_shards_and_all_answers_are_right() {
    let directory = tempfile::tempdir().unwrap();
    let keys = Arc::new(common::generated_data_dir(directory.path(), 4000));
    let server = common::Server::start(directory.path(), &[]);
    let address = server.address;
    let threads: Vec<_> = (0..64)
        .map(|connection| {
            let keys = keys.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(address).unwrap();
                let mine: Vec<_> = keys.iter().skip(connection).step_by(64).cloned().collect();
                let reqs = requests(&mine);
                for (window, expected) in reqs.chunks(16).zip(mine.chunks(16)) {
                    let results = client.verify_pipelined(window).unwrap();
                    for (result, key) in results.iter().zip(expected) {
                        assert_eq!(result.status, key.expected);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let (status, report) = server.stop();
    assert!(status.success(), "{report}");
    // "... connections served (shard 0 N, shard 1 M); ..." — both shards took some.
    for shard in ["shard 0 ", "shard 1 "] {
        let count: u64 = report
            .split(shard)
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count for {shard} in {report:?}"));
        assert!(count > 0, "{shard} served no connection: {report}");
    }
}
