//! Broken headers, oversized frames, truncated frames and random bytes: each gets the
//! documented error frame or a closed connection, and the server keeps serving others.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use keyward::client::{read_frame, Client};
use keyward::protocol::{self, opcode, ErrorCode, VerifyRequest};

fn connect(server: &common::Server) -> TcpStream {
    let stream = TcpStream::connect(server.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads one frame and asserts it is an ERROR with `code`.
fn expect_error(stream: &mut TcpStream, code: ErrorCode) -> String {
    let (header, body) = read_frame(stream).unwrap();
    assert_eq!(header.opcode, opcode::ERROR);
    let error = protocol::parse_error(&body).unwrap();
    assert_eq!(error.code, code as u8, "{}", error.message);
    error.message
}

fn expect_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "connection still open, got {rest:?}"
    );
}

/// A healthy client still gets right answers.
fn still_serving(server: &common::Server, key: &keyward::keyset::ExpectedKey) {
    let mut client = Client::connect(server.address).unwrap();
    client.ping().unwrap();
    let result = client
        .verify(&VerifyRequest {
            credential: key.credential.as_bytes(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(result.status, key.expected);
}

fn start() -> (
    tempfile::TempDir,
    Vec<keyward::keyset::ExpectedKey>,
    common::Server,
) {
    let directory = tempfile::tempdir().unwrap();
    let keys = common::generated_data_dir(directory.path(), 40);
    let server = common::Server::start(directory.path(), &[]);
    (directory, keys, server)
}

#[test]
fn broken_header_gets_error_and_close() {
    let (_directory, keys, server) = start();
    let mut stream = connect(&server);
    stream
        .write_all(&[9, opcode::PING, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    let message = expect_error(&mut stream, ErrorCode::BadVersion);
    assert!(message.contains("version"), "{message}");
    expect_closed(&mut stream);

    let mut stream = connect(&server);
    stream
        .write_all(&[1, opcode::PING, 7, 0, 1, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    expect_error(&mut stream, ErrorCode::BadFlags);
    expect_closed(&mut stream);
    still_serving(&server, &keys[0]);
}

#[test]
fn oversized_frame_gets_error_and_close_before_its_body_arrives() {
    let (_directory, keys, server) = start();
    let mut stream = connect(&server);
    let mut frame = Vec::new();
    protocol::put_header(
        &mut frame,
        opcode::VERIFY,
        5,
        protocol::BODY_BYTES_DEFAULT + 1,
    );
    stream.write_all(&frame).unwrap();
    let message = expect_error(&mut stream, ErrorCode::FrameTooLarge);
    assert!(message.contains("exceeds"), "{message}");
    expect_closed(&mut stream);
    still_serving(&server, &keys[1]);
}

#[test]
fn answers_before_a_broken_frame_are_still_sent() {
    let (_directory, keys, server) = start();
    let mut stream = connect(&server);
    let mut bytes = Vec::new();
    protocol::put_ping_frame(&mut bytes, 1);
    bytes.extend_from_slice(&[0xde; 12]);
    stream.write_all(&bytes).unwrap();
    let (header, _) = read_frame(&mut stream).unwrap();
    assert_eq!((header.opcode, header.request_id), (opcode::PONG, 1));
    expect_error(&mut stream, ErrorCode::BadVersion);
    expect_closed(&mut stream);
    still_serving(&server, &keys[2]);
}

#[test]
fn truncated_frame_then_hangup_leaves_server_healthy() {
    let (_directory, keys, server) = start();
    for cut in [1, 5, 11, 12, 20] {
        let mut stream = connect(&server);
        let mut frame = Vec::new();
        let request = VerifyRequest {
            credential: keys[0].credential.as_bytes(),
            ..Default::default()
        };
        protocol::put_verify_frame(&mut frame, 1, &request);
        stream.write_all(&frame[..cut]).unwrap();
        drop(stream);
    }
    still_serving(&server, &keys[3]);
}

#[test]
fn bad_body_and_unknown_opcode_keep_the_connection() {
    let (_directory, keys, server) = start();
    let mut stream = connect(&server);
    // VERIFY whose body has a trailing byte.
    let mut frame = Vec::new();
    let start = protocol::begin_frame(&mut frame, opcode::VERIFY, 7);
    protocol::put_verify(
        &mut frame,
        &VerifyRequest {
            credential: b"abc",
            ..Default::default()
        },
    );
    frame.push(0);
    protocol::end_frame(&mut frame, start);
    // Unknown opcode, with a body.
    protocol::put_header(&mut frame, 0x42, 8, 3);
    frame.extend_from_slice(b"xyz");
    // Empty batch, PING with a body, address family 5.
    protocol::put_header(&mut frame, opcode::VERIFY_BATCH, 9, 2);
    frame.extend_from_slice(&0u16.to_le_bytes());
    protocol::put_header(&mut frame, opcode::PING, 10, 1);
    frame.push(1);
    protocol::put_header(&mut frame, opcode::VERIFY, 11, 6);
    frame.extend_from_slice(&[1, 0, b'a', 0, 0, 5]);
    protocol::put_ping_frame(&mut frame, 12);
    stream.write_all(&frame).unwrap();

    let message = expect_error(&mut stream, ErrorCode::BadBody);
    assert!(message.contains("after its last field"), "{message}");
    expect_error(&mut stream, ErrorCode::UnknownOpcode);
    expect_error(&mut stream, ErrorCode::BadBody);
    expect_error(&mut stream, ErrorCode::BadBody);
    let message = expect_error(&mut stream, ErrorCode::BadBody);
    assert!(message.contains("address family"), "{message}");
    let (header, _) = read_frame(&mut stream).unwrap();
    assert_eq!((header.opcode, header.request_id), (opcode::PONG, 12));
    still_serving(&server, &keys[4]);
}

#[test]
fn random_bytes_never_take_the_server_down() {
    let (_directory, keys, server) = start();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for round in 0..200 {
        let mut stream = connect(&server);
        let length = 1 + (round * 37) % 300;
        let bytes: Vec<u8> = (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let _ = stream.write_all(&bytes);
        // Whatever comes back must be well-formed frames; then we hang up.
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let mut at = 0;
        while let Ok(Some(frame)) =
            protocol::decode_frame(&answer[at..], protocol::BODY_BYTES_LIMIT)
        {
            assert!(matches!(
                frame.header.opcode,
                opcode::ERROR | opcode::PONG | opcode::VERIFY_RESULT | opcode::VERIFY_BATCH_RESULT
            ));
            at += frame.bytes();
        }
    }
    still_serving(&server, &keys[5]);
}
