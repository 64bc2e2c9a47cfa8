//! The io_uring data plane against the real server: thousands of connections on a tiny buffer
//! ring, frames split at every byte, clients that never read, resets mid-frame, shutdown with
//! requests in flight, and the verify port on a Unix-domain socket.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use keyward::client::{read_frame, Client};
use keyward::endpoint::Endpoint;
use keyward::keyset::ExpectedKey;
use keyward::protocol::{self, opcode, ErrorCode, Status, VerifyRequest};

fn verify_frame(out: &mut Vec<u8>, request_id: u32, key: &ExpectedKey) {
    let request = VerifyRequest {
        credential: key.credential.as_bytes(),
        ..Default::default()
    };
    protocol::put_verify_frame(out, request_id, &request);
}

/// Reads one VERIFY answer and checks its request id and status.
fn expect_verdict(stream: &mut impl Read, request_id: u32, key: &ExpectedKey) {
    let (header, body) = read_frame(stream).expect("an answer");
    assert_eq!(header.opcode, opcode::VERIFY_RESULT, "request {request_id}");
    assert_eq!(header.request_id, request_id);
    let result = protocol::parse_result(&body).unwrap();
    assert_eq!(result.status, key.expected, "request {request_id}");
}

fn expect_pong(stream: &mut impl Read, request_id: u32) {
    let (header, _) = read_frame(stream).expect("a PONG");
    assert_eq!(
        (header.opcode, header.request_id),
        (opcode::PONG, request_id)
    );
}

fn raise_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

#[test]
fn ten_thousand_connections_share_a_tiny_buffer_ring_and_all_are_answered() {
    let directory = tempfile::tempdir().unwrap();
    let keys = common::generated_data_dir(directory.path(), 200);
    // The test process holds one end of every connection, the server the other.
    let connections = 10_000.min(raise_file_limit().saturating_sub(256) as usize);
    assert!(
        connections >= 1000,
        "the open-files hard limit is too low for this test"
    );
    let server = common::Server::start(
        directory.path(),
        &[
            "--shards",
            "1",
            "--connections-per-shard-max",
            "12000",
            // 16 buffers of 64 bytes for 10 000 connections: the ring runs dry all the time,
            // and every VERIFY frame straddles buffers.
            "--receive-buffers",
            "16",
            "--receive-buffer-bytes",
            "64",
        ],
    );
    let started = Instant::now();
    let mut streams: Vec<TcpStream> = (0..connections)
        .map(|_| TcpStream::connect(server.address).unwrap())
        .collect();
    let connected = started.elapsed();
    for round in 0..2u32 {
        let began = Instant::now();
        // Every connection sends one request before any answer is read.
        for (index, stream) in streams.iter_mut().enumerate() {
            let mut frame = Vec::new();
            verify_frame(
                &mut frame,
                round << 24 | index as u32,
                &keys[index % keys.len()],
            );
            stream.write_all(&frame).unwrap();
        }
        for (index, stream) in streams.iter_mut().enumerate() {
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            expect_verdict(
                stream,
                round << 24 | index as u32,
                &keys[index % keys.len()],
            );
        }
        let worst = began.elapsed();
        eprintln!(
            "{connections} connections (connected in {connected:?}), round {round}: every answer within {worst:?}"
        );
        // Bounded: no connection is starved behind the others (a stalled one would hit the
        // 30 s read timeout above; debug builds on two busy CPUs answer in about a second).
        assert!(worst < Duration::from_secs(20), "slowest answer {worst:?}");
    }
}

#[test]
fn a_frame_split_at_every_byte_across_sends_and_buffers_is_answered() {
    let directory = tempfile::tempdir().unwrap();
    let keys = common::generated_data_dir(directory.path(), 20);
    let valid = keys.iter().find(|k| k.expected == Status::Valid).unwrap();
    // 16-byte buffers: each frame spans several, wherever the split falls.
    let server = common::Server::start(
        directory.path(),
        &["--receive-buffers", "8", "--receive-buffer-bytes", "16"],
    );
    let mut bytes = Vec::new();
    verify_frame(&mut bytes, 1, valid);
    protocol::put_ping_frame(&mut bytes, 2);
    for split in 1..bytes.len() {
        let mut stream = TcpStream::connect(server.address).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(&bytes[..split]).unwrap();
        std::thread::sleep(Duration::from_millis(2)); // a separate arrival, not one segment
        stream.write_all(&bytes[split..]).unwrap();
        expect_verdict(&mut stream, 1, valid);
        expect_pong(&mut stream, 2);
    }
}

#[test]
fn a_client_that_pipelines_and_never_reads_is_stopped_and_others_are_served() {
    let directory = tempfile::tempdir().unwrap();
    let keys = common::generated_data_dir(directory.path(), 20);
    let valid = keys.iter().find(|k| k.expected == Status::Valid).unwrap();
    let server = common::Server::start(directory.path(), &["--shards", "1"]);
    let before = common::resident_kib(server.child.id());
    let mut greedy = TcpStream::connect(server.address).unwrap();
    greedy.set_nonblocking(true).unwrap();
    let mut batch = Vec::new();
    for id in 0..1000 {
        verify_frame(&mut batch, id, valid);
    }
    // Up to 256 MiB of requests; the server must stop reading long before.
    let mut written = 0usize;
    let mut stalled_since = Instant::now();
    let mut offset = 0;
    while written < 256 << 20 && stalled_since.elapsed() < Duration::from_secs(2) {
        match greedy.write(&batch[offset..]) {
            Ok(n) => {
                written += n;
                offset = (offset + n) % batch.len();
                stalled_since = Instant::now();
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(error) => panic!("write: {error}"),
        }
    }
    assert!(
        written < 128 << 20,
        "the server kept reading a client that never reads: {} MiB taken",
        written >> 20
    );
    // Others are served meanwhile, promptly.
    let mut other = Client::connect(server.address).unwrap();
    other.set_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let request = VerifyRequest {
        credential: valid.credential.as_bytes(),
        ..Default::default()
    };
    assert_eq!(other.verify(&request).unwrap().status, Status::Valid);
    assert!(started.elapsed() < Duration::from_secs(1));
    let grown = common::resident_kib(server.child.id()).saturating_sub(before);
    eprintln!(
        "a client wrote {} MiB and stopped being read; the server grew {grown} KiB",
        written >> 20
    );
    assert!(grown < 16 * 1024, "server memory grew {grown} KiB");
}

/// Waits (up to `within`) until a new connection is served a PONG instead of `busy`: on a
/// server allowing one connection, until the slot an earlier client held is free again. False
/// when it never is.
fn served_once_a_slot_frees(server: &common::Server, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let mut next = TcpStream::connect(server.address).unwrap();
        next.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut ping = Vec::new();
        protocol::put_ping_frame(&mut ping, 7);
        next.write_all(&ping).unwrap();
        let (header, body) = read_frame(&mut next).unwrap();
        if header.opcode == opcode::PONG {
            return true;
        }
        let error = protocol::parse_error(&body).unwrap();
        assert_eq!(ErrorCode::from_u8(error.code), Some(ErrorCode::Busy));
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_peer_reset_mid_frame_frees_its_connection() {
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 5);
    // One connection allowed: the next client is served only once the reset one is gone.
    let server = common::Server::start(
        directory.path(),
        &["--shards", "1", "--connections-per-shard-max", "1"],
    );
    for round in 0..3 {
        let stream = TcpStream::connect(server.address).unwrap();
        let mut half = Vec::new();
        protocol::put_ping_frame(&mut half, 1);
        (&stream).write_all(&half[..7]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let socket = socket2::Socket::from(stream);
        socket.set_linger(Some(Duration::ZERO)).unwrap(); // close sends a reset
        drop(socket);
        assert!(
            served_once_a_slot_frees(&server, Duration::from_secs(5)),
            "round {round}: the reset connection was never freed"
        );
    }
}

#[test]
fn shutdown_with_requests_in_flight_stops_promptly_and_answers_stay_whole() {
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 5);
    let server = common::Server::start(directory.path(), &[]);
    let address = server.address;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut answered = 0u32;
                // Bounded: at most 200 000 batches; the server stops long before.
                for batch in 0..200_000u32 {
                    let mut pings = Vec::new();
                    for i in 0..64 {
                        protocol::put_ping_frame(&mut pings, batch * 64 + i);
                    }
                    if stream.write_all(&pings).is_err() {
                        break;
                    }
                    for i in 0..64 {
                        match read_frame(&mut stream) {
                            Ok((header, _)) => {
                                // Whole and in order, until the end.
                                assert_eq!(header.opcode, opcode::PONG);
                                assert_eq!(header.request_id, batch * 64 + i);
                                answered += 1;
                            }
                            Err(keyward::client::ClientError::Io(error)) => {
                                assert_ne!(
                                    error.kind(),
                                    ErrorKind::WouldBlock,
                                    "the server neither answered nor closed"
                                );
                                return answered;
                            }
                            Err(other) => panic!("{other}"),
                        }
                    }
                }
                answered
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    let (status, _) = server.stop();
    assert!(status.success(), "exit status {status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        stopping.elapsed()
    );
    for client in clients {
        assert!(client.join().unwrap() > 0);
    }
}

#[test]
fn the_verify_port_on_a_unix_socket() {
    let directory = tempfile::tempdir().unwrap();
    let keys = common::generated_data_dir(directory.path(), 20);
    let valid = keys.iter().find(|k| k.expected == Status::Valid).unwrap();
    let revoked = keys.iter().find(|k| k.expected == Status::Revoked).unwrap();
    let path = directory.path().join("verify.sock");
    let listen = format!("unix:{}", path.display());
    // A stale socket file (its server gone) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let command = common::keyward_command_at(directory.path(), &listen, "127.0.0.1:0", &[]);
    let server = common::Server::start_command(command, directory.path());
    assert_eq!(server.endpoint, Endpoint::Unix(path.clone()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let mut client = Client::connect_to(&server.endpoint).unwrap();
    client.set_timeout(Some(Duration::from_secs(10))).unwrap();
    for key in [valid, revoked] {
        let request = VerifyRequest {
            credential: key.credential.as_bytes(),
            ..Default::default()
        };
        assert_eq!(client.verify(&request).unwrap().status, key.expected);
    }
    // Pipelined and split frames over the socket too.
    let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut bytes = Vec::new();
    for id in 0..100 {
        verify_frame(&mut bytes, id, &keys[id as usize % keys.len()]);
    }
    let (first, rest) = bytes.split_at(bytes.len() / 2 + 3);
    stream.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(2));
    stream.write_all(rest).unwrap();
    for id in 0..100 {
        expect_verdict(&mut stream, id, &keys[id as usize % keys.len()]);
    }
    // A second server on the same live socket is refused, and the socket keeps working.
    let other_directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(other_directory.path(), 5);
    let second = common::keyward_command_at(other_directory.path(), &listen, "127.0.0.1:0", &[])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("another server listens on this socket"),
        "{stderr}"
    );
    client.ping().unwrap();
    let (status, _) = server.stop();
    assert!(status.success());
    assert!(!path.exists(), "the socket file is removed on a clean stop");
    // A path that is not a socket is never replaced.
    std::fs::write(&path, b"precious").unwrap();
    let refused = common::keyward_command_at(directory.path(), &listen, "127.0.0.1:0", &[])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn idle_is_idle_with_and_without_busy_polling() {
    for busy_poll in ["0", "200"] {
        let directory = tempfile::tempdir().unwrap();
        let keys = common::generated_data_dir(directory.path(), 20);
        let valid = keys.iter().find(|k| k.expected == Status::Valid).unwrap();
        let server = common::Server::start(
            directory.path(),
            &["--shards", "2", "--busy-poll-us", busy_poll],
        );
        let mut client = Client::connect(server.address).unwrap();
        client.set_timeout(Some(Duration::from_secs(10))).unwrap();
        let request = VerifyRequest {
            credential: valid.credential.as_bytes(),
            ..Default::default()
        };
        for _ in 0..2000 {
            assert_eq!(client.verify(&request).unwrap().status, Status::Valid);
        }
        // Connected but silent: the shards sleep in the kernel.
        std::thread::sleep(Duration::from_millis(200));
        let before = cpu_ticks(server.child.id());
        std::thread::sleep(Duration::from_secs(1));
        let used = cpu_ticks(server.child.id()) - before;
        // SAFETY: sysconf has no preconditions.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert!(
            used * 20 <= ticks_per_second,
            "busy_poll_us {busy_poll}: an idle server used {used} ticks of CPU in 1 s (at most 5% allowed)"
        );
        assert_eq!(client.verify(&request).unwrap().status, Status::Valid);
    }
}

#[test]
fn a_client_that_never_reads_is_closed_after_the_idle_timeout() {
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 5);
    // One connection allowed: the slot a non-reader holds must come back.
    let server = common::Server::start(
        directory.path(),
        &[
            "--shards",
            "1",
            "--connections-per-shard-max",
            "1",
            "--idle-timeout-ms",
            "500",
        ],
    );
    let mut greedy = TcpStream::connect(server.address).unwrap();
    greedy.set_nonblocking(true).unwrap();
    let mut pings = Vec::new();
    for id in 0..10_000 {
        protocol::put_ping_frame(&mut pings, id);
    }
    // Pipeline until the server stops reading (bounded: 256 MiB at most).
    let mut written = 0usize;
    let mut stalled_since = Instant::now();
    while written < 256 << 20 && stalled_since.elapsed() < Duration::from_secs(1) {
        match greedy.write(&pings[written % pings.len()..]) {
            Ok(n) => {
                written += n;
                stalled_since = Instant::now();
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => break, // already closed
        }
    }
    // The non-reader's slot comes back once it has made no progress for the idle timeout.
    assert!(
        served_once_a_slot_frees(&server, Duration::from_secs(10)),
        "a client that never reads kept its connection past the idle timeout"
    );
    drop(greedy);
}
