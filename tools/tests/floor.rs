//! keyward-floor, the epoll PING responder `tools/compare` measures keyward's own PING against:
//! it must answer like keyward does (PONG with the request's id, in order, pipelined and split
//! frames alike), or the floor it reports is not a floor for the same work. Both modes: epoll, and
//! `--uring` (keyward's io_uring turn).

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

fn floor(uring: bool) -> Floor {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyward-floor"));
    command.args(["--listen", "127.0.0.1:0"]);
    if uring {
        command.arg("--uring");
    }
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
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
    for uring in [false, true] {
        pipelined_and_split_pings(uring);
    }
}

#[test]
fn anything_but_a_ping_closes_the_connection() {
    for uring in [false, true] {
        anything_but_a_ping(uring);
    }
}

fn pipelined_and_split_pings(uring: bool) {
    let floor = floor(uring);
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

fn anything_but_a_ping(uring: bool) {
    let floor = floor(uring);
    let mut stream = connect(&floor);
    let mut frame = Vec::new();
    protocol::put_header(&mut frame, opcode::VERIFY, 1, 3);
    frame.extend_from_slice(b"abc");
    stream.write_all(&frame).unwrap();
    // Epoll mode closes at once; the io_uring turn first says why in an ERROR frame.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    if !rest.is_empty() {
        let (header, _) = read_frame(&mut rest.as_slice()).unwrap();
        assert_eq!(header.opcode, opcode::ERROR);
    }
    // The responder carries on for others.
    let mut other = connect(&floor);
    let mut ping = Vec::new();
    protocol::put_ping_frame(&mut ping, 9);
    other.write_all(&ping).unwrap();
    assert_eq!(read_frame(&mut other).unwrap().0.request_id, 9);
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap()
}

#[test]
fn a_client_that_sends_and_never_reads_cannot_grow_the_io_uring_turn() {
    //! Answers to a client that pipelines without reading used to pile up without bound: the
    //! turn now stops reading a connection whose unsent answers pass 1 MiB.
    let floor = floor(true);
    let mut reader = connect(&floor);
    let mut ping = Vec::new();
    protocol::put_ping_frame(&mut ping, 1);
    reader.write_all(&ping).unwrap();
    read_frame(&mut reader).unwrap();
    let before = resident_kib(floor.0.id());
    // 64 MiB of PINGs (5.6 M frames, as many PONG bytes), never reading a single answer.
    let greedy = connect(&floor);
    greedy
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut pings = Vec::new();
    for id in 0..(64 << 20) / protocol::HEADER_BYTES as u32 {
        protocol::put_ping_frame(&mut pings, id);
    }
    let mut writer = &greedy;
    let mut written = 0;
    while written < pings.len() {
        match writer.write(&pings[written..(written + (1 << 20)).min(pings.len())]) {
            Ok(n) => written += n,
            Err(_) => break, // the server stopped reading: the write timed out
        }
    }
    assert!(
        written < pings.len(),
        "all 64 MiB were read without an answer taken"
    );
    // Others are still served.
    reader.write_all(&ping).unwrap();
    assert_eq!(read_frame(&mut reader).unwrap().0.opcode, opcode::PONG);
    let grown = resident_kib(floor.0.id()).saturating_sub(before);
    assert!(grown < 16 * 1024, "the turn grew by {grown} KiB");
}
