//! keyward-floor, the epoll PING responder `tools/compare` measures keyward's own PING against:
//! it must answer like keyward does (PONG with the request's id, in order, pipelined and split
//! frames alike), or the floor it reports is not a floor for the same work.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyward::client::read_frame;
use keyward::protocol::{self, opcode};

struct Floor(Child, String);

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn floor() -> Floor {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyward-floor"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("keyward-floor: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Floor(child, address)
}

fn connect(floor: &Floor) -> TcpStream {
    let stream = TcpStream::connect(&floor.1).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

#[test]
fn pipelined_and_split_pings_get_their_pongs_in_order() {
    let floor = floor();
    let mut pings = Vec::new();
    for id in 0..500u32 {
        protocol::put_ping_frame(&mut pings, id * 7);
    }
    let mut first = connect(&floor);
    let mut second = connect(&floor);
    // The first client sends everything at once; the second in pieces of 5 bytes, so frames
    // are split at every offset of the header.
    first.write_all(&pings).unwrap();
    for piece in pings.chunks(5) {
        second.write_all(piece).unwrap();
    }
    for stream in [&mut first, &mut second] {
        for id in 0..500u32 {
            let (header, body) = read_frame(stream).unwrap();
            assert_eq!(header.opcode, opcode::PONG);
            assert_eq!(header.request_id, id * 7);
            assert!(body.is_empty());
        }
    }
}

#[test]
fn anything_but_a_ping_closes_the_connection() {
    let floor = floor();
    let mut stream = connect(&floor);
    let mut frame = Vec::new();
    protocol::put_header(&mut frame, opcode::VERIFY, 1, 3);
    frame.extend_from_slice(b"abc");
    stream.write_all(&frame).unwrap();
    assert_eq!(stream.read(&mut [0u8; 16]).unwrap(), 0);
    // The responder carries on for others.
    let mut other = connect(&floor);
    let mut ping = Vec::new();
    protocol::put_ping_frame(&mut ping, 9);
    other.write_all(&ping).unwrap();
    assert_eq!(read_frame(&mut other).unwrap().0.request_id, 9);
}
