//! The hex exchanges printed in docs/PROTOCOL.md, replayed byte for byte against the real
//! server: if the codec or the docs drift apart, this fails.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use keyward::credential::{KeyId, NativeCredential, Secret, Visibility};
use keyward::record::{KeyKind, KeyRecord, KeyStatus, UnixSeconds};

const PING: &str = "01 01 00 00 01 00 00 00 00 00 00 00";
const PONG: &str = "01 81 00 00 01 00 00 00 00 00 00 00";
const VERIFY: &str = "01 02 00 00 02 00 00 00 63 00 00 00 4b 00 6b 77 5f 61 65 61 61 61 61 61 61 61 61 61 61 61 6b 71 61 61 65 62 61 67 62 61 66 61 79 64 71 71 63 69 6b 62 6d 67 61 32 64 71 70 63 61 69 72 65 65 79 75 63 75 6c 62 6f 67 61 7a 64 69 6e 72 79 68 69 36 64 37 6d 6e 79 66 7a 78 0b 6f 72 64 65 72 73 3a 72 65 61 64 04 61 63 6d 65 04 0a 01 02 03";
const VERIFY_VALID: &str = "01 82 00 00 02 00 00 00 31 00 00 00 00 2a 00 00 00 00 00 00 00 80 d8 db 70 00 00 00 00 04 61 63 6d 65 02 0b 6f 72 64 65 72 73 3a 72 65 61 64 0c 6f 72 64 65 72 73 3a 77 72 69 74 65 00";
const VERIFY_IMPORTED: &str = "01 02 00 00 03 00 00 00 15 00 00 00 10 00 73 6b 5f 6c 69 76 65 5f 75 6e 6b 6e 6f 77 6e 21 00 00 00";
const VERIFY_UNKNOWN: &str = "01 82 00 00 03 00 00 00 01 00 00 00 02";
const BATCH: &str = "01 03 00 00 04 00 00 00 21 00 00 00 02 00 05 00 73 68 6f 72 74 00 00 00 10 00 73 6b 5f 6c 69 76 65 5f 75 6e 6b 6e 6f 77 6e 21 00 00 00";
const BATCH_RESULT: &str = "01 83 00 00 04 00 00 00 04 00 00 00 02 00 01 02";
const BAD_VERSION: &str = "09 01 00 00 05 00 00 00 00 00 00 00";
const BAD_VERSION_ERROR: &str = "01 ff 00 00 00 00 00 00 21 00 00 00 01 1e 00 75 6e 73 75 70 70 6f 72 74 65 64 20 70 72 6f 74 6f 63 6f 6c 20 76 65 72 73 69 6f 6e 20 39";

fn bytes(hex: &str) -> Vec<u8> {
    hex.split_whitespace()
        .map(|pair| u8::from_str_radix(pair, 16).unwrap())
        .collect()
}

fn exchange(stream: &mut TcpStream, request: &str, response: &str) {
    stream.write_all(&bytes(request)).unwrap();
    let expected = bytes(response);
    let mut answer = vec![0u8; expected.len()];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(
        answer, expected,
        "\nrequest  {request}\nexpected {response}"
    );
}

#[test]
fn documented_exchanges_match_the_server_byte_for_byte() {
    let directory = tempfile::tempdir().unwrap();
    let credential = NativeCredential {
        key_id: KeyId(42),
        secret: Secret(std::array::from_fn(|i| i as u8)),
        visibility: Visibility::Secret,
    };
    common::data_dir_with(directory.path(), |hasher| {
        vec![KeyRecord {
            id: KeyId(42),
            kind: KeyKind::Native,
            hash: hasher.native(credential.key_id, &credential.secret),
            tenant: "acme".into(),
            name: "docs example".into(),
            scopes: vec!["orders:read".into(), "orders:write".into()],
            created: UnixSeconds(1_700_000_000),
            not_before: UnixSeconds(1_700_000_000),
            expires: Some(UnixSeconds(1_893_456_000)),
            status: KeyStatus::Active,
            visibility: Visibility::Secret,
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            idempotency_key: String::new(),
        }]
    });
    let server = common::Server::start(directory.path(), &[]);
    let mut stream = TcpStream::connect(server.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    exchange(&mut stream, PING, PONG);
    exchange(&mut stream, VERIFY, VERIFY_VALID);
    exchange(&mut stream, VERIFY_IMPORTED, VERIFY_UNKNOWN);
    exchange(&mut stream, BATCH, BATCH_RESULT);
    exchange(&mut stream, BAD_VERSION, BAD_VERSION_ERROR);
    let mut rest = Vec::new();
    assert_eq!(
        stream.read_to_end(&mut rest).unwrap(),
        0,
        "connection not closed after a broken header"
    );
}
