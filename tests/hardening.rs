//! What an attacker and a failing disk found, each pinned against the real server: an empty
//! admin token, missing companion files, key-id overflow, per-connection memory, control-port
//! lockout, slowloris, running out of file descriptors, restart right after SIGKILL, and the
//! protocol edges a client written from the docs alone ran into.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::json;

use keyward::admin::{self, opcode as control, AdminClient, AdminError};
use keyward::client::{read_frame, Client};
use keyward::credential::KeyId;
use keyward::protocol::{self, opcode, ErrorCode, Status, VerifyRequest};

/// A data directory made by a first run of the real server, with one key issued and revoked.
/// Returns the revoked key's credential.
fn used_data_dir(path: &std::path::Path) -> String {
    let server = common::Server::start(path, &[]);
    let mut admin = server.admin();
    let issued = admin.call(control::ISSUE, &json!({})).unwrap();
    let credential = issued["credential"].as_str().unwrap().to_string();
    admin
        .call(control::REVOKE, &json!({ "credential": credential }))
        .unwrap();
    let (status, _) = server.stop();
    assert!(status.success());
    credential
}

fn error_of(stream: &mut TcpStream) -> (ErrorCode, String) {
    let (header, body) = read_frame(stream).expect("an answer");
    assert_eq!(header.opcode, opcode::ERROR, "expected an ERROR frame");
    let error = protocol::parse_error(&body).unwrap();
    (ErrorCode::from_u8(error.code).unwrap(), error.message)
}

/// Sends one frame of `opcode` with `body` as it is.
fn send_frame(stream: &mut TcpStream, opcode: u8, request_id: u32, body: &[u8]) {
    let mut frame = Vec::new();
    protocol::put_header(&mut frame, opcode, request_id, body.len());
    frame.extend_from_slice(body);
    stream.write_all(&frame).unwrap();
}

/// A server on a fresh table, one valid credential of it, and a connection to its verify port.
fn server_with_a_valid_key() -> (tempfile::TempDir, common::Server, String, TcpStream) {
    let directory = tempfile::tempdir().unwrap();
    let keys = common::generated_data_dir(directory.path(), 20);
    let valid = keys.iter().find(|k| k.expected == Status::Valid).unwrap();
    let server = common::Server::start(directory.path(), &[]);
    let stream = TcpStream::connect(server.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (directory, server, valid.credential.clone(), stream)
}

fn token_of(server: &common::Server) -> String {
    std::fs::read_to_string(server.data_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn empty_or_blank_admin_token_file_refuses_to_start() {
    //! An empty admin.token made the empty token valid: a request with no token could ISSUE.
    let directory = tempfile::tempdir().unwrap();
    used_data_dir(directory.path());
    for (content, expected) in [
        ("", "the admin token is empty"),
        ("  \n\t\n", "the admin token is empty"),
        ("short\n", "the admin token is too short"),
        (
            "kwadmin_with a space inside\n",
            "spaces or control characters",
        ),
    ] {
        std::fs::write(directory.path().join("admin.token"), content).unwrap();
        let (status, stderr) = common::start_expecting_failure(directory.path(), &[]);
        assert_eq!(status.code(), Some(1), "{content:?}: {stderr}");
        assert!(stderr.contains("admin.token"), "{stderr}");
        assert!(stderr.contains(expected), "{content:?}: {stderr}");
    }
}

#[test]
fn missing_or_empty_companion_files_are_refused_by_name() {
    //! A deleted deltas.log, pepper, master.key or admin.token was silently re-created: revoked
    //! keys came back valid, or every key turned unknown.
    let directory = tempfile::tempdir().unwrap();
    let revoked = used_data_dir(directory.path());
    for name in [
        "deltas.log",
        "pepper",
        "master.key",
        "admin.token",
        "snapshot.kws",
    ] {
        let path = directory.path().join(name);
        let saved = std::fs::read(&path).unwrap();
        for damage in ["missing", "empty"] {
            match damage {
                "missing" => std::fs::remove_file(&path).unwrap(),
                _ => {
                    std::fs::write(&path, b"").unwrap();
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .unwrap();
                }
            }
            let (status, stderr) = common::start_expecting_failure(directory.path(), &[]);
            assert_eq!(status.code(), Some(1), "{name} {damage}: {stderr}");
            assert!(stderr.contains(name), "{name} {damage}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr:?}");
            assert!(!path.exists() || std::fs::read(&path).unwrap().is_empty());
        }
        std::fs::write(&path, &saved).unwrap();
    }
    // Restored, the directory serves again, and the revocation held throughout.
    let server = common::Server::start(directory.path(), &[]);
    let mut client = Client::connect(server.address).unwrap();
    let result = client
        .verify(&VerifyRequest {
            credential: revoked.as_bytes(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(result.status, Status::Revoked);
}

#[test]
fn key_ids_never_wrap_or_repeat() {
    //! IMPORT with an id near 2^64 made every later ISSUE reuse id 18446744073709551615, and
    //! after a restart a minted id 0 was malformed.
    let directory = tempfile::tempdir().unwrap();
    let server = common::Server::start(directory.path(), &[]);
    let mut admin = server.admin();
    let import = |admin: &mut AdminClient, id: u64, credential: &str| {
        admin
            .call(
                control::IMPORT,
                &json!({ "keys": [{ "credential": credential, "id": id }] }),
            )
            .unwrap()
    };
    for id in [u64::MAX, u64::MAX - 1, KeyId::MAX + 1] {
        let answer = import(&mut admin, id, &format!("sk_test_outside_range_{id}"));
        assert_eq!(answer["imported"], 0, "{answer}");
        let error = answer["results"][0]["error"].as_str().unwrap();
        assert!(error.contains("outside 1 to"), "{error}");
    }
    let answer = import(&mut admin, KeyId::MAX, "sk_test_the_very_last_id_0001");
    assert_eq!(answer["imported"], 1, "{answer}");
    for op in [control::ISSUE, control::ROTATE] {
        let request = if op == control::ISSUE {
            json!({})
        } else {
            json!({ "id": KeyId::MAX })
        };
        match admin.call(op, &request) {
            Err(AdminError::Server { code, message }) => {
                assert_eq!(code, admin::error_code::INVALID);
                assert!(message.contains("key id space is used up"), "{message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    let auto = admin
        .call(
            control::IMPORT,
            &json!({ "keys": [{ "credential": "sk_test_no_id_given_here_001" }] }),
        )
        .unwrap();
    assert_eq!(auto["imported"], 0, "{auto}");
    drop(admin);
    let (status, _) = server.stop();
    assert!(status.success());
    let server = common::Server::start(directory.path(), &[]);
    let stats = server.admin().call(control::STATS, &json!({})).unwrap();
    assert_eq!(stats["sequence"], 1, "{stats}");
}

#[test]
fn a_large_frame_does_not_keep_the_limit_in_memory() {
    //! With frame_body_bytes_max at 16 MiB, a connection with a pending 20 KB frame held 16 MiB,
    //! kept after the answer: 40 connections held 663 MB.
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 10);
    let server = common::Server::start(
        directory.path(),
        &["--shards", "1", "--frame-body-bytes-max", "16777216"],
    );
    let mut warm = Client::connect(server.address).unwrap();
    warm.ping().unwrap();
    let before = common::resident_kib(server.child.id());
    // 40 connections, each with the first 16 KiB of a 20 KB VERIFY pending.
    let body_bytes = 20_000u32;
    let mut header = Vec::new();
    protocol::put_header(&mut header, opcode::VERIFY, 1, body_bytes as usize);
    let mut streams: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut stream = TcpStream::connect(server.address).unwrap();
            stream.write_all(&header).unwrap();
            stream.write_all(&vec![0u8; 16 * 1024]).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    warm.ping().unwrap();
    let pending = common::resident_kib(server.child.id());
    // Finish the frames (a body of zeros is a bad body: an ERROR, the connection stays open).
    for stream in &mut streams {
        stream
            .write_all(&vec![0u8; body_bytes as usize - 16 * 1024])
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (code, _) = error_of(stream);
        assert_eq!(code, ErrorCode::BadBody);
    }
    let grown = pending.saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "40 pending 20 KB frames grew the server by {grown} KiB"
    );
}

#[test]
fn large_frames_past_the_shard_budget_get_busy() {
    //! Memory for large frames is bounded per shard, not only per connection.
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 10);
    let server = common::Server::start(
        directory.path(),
        &[
            "--shards",
            "1",
            "--frame-body-bytes-max",
            "1048576",
            "--frame-buffer-bytes-per-shard-max",
            "1048576",
        ],
    );
    let mut header = Vec::new();
    protocol::put_header(&mut header, opcode::VERIFY, 1, 400_000);
    let mut answered_busy = 0;
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(server.address).unwrap();
        stream.write_all(&header).unwrap();
        stream.write_all(&vec![0u8; 20_000]).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        let mut byte = [0u8; 1];
        if stream.peek(&mut byte).is_ok() {
            let (code, message) = error_of(&mut stream);
            assert_eq!(code, ErrorCode::Busy, "{message}");
            answered_busy += 1;
        }
        streams.push(stream);
    }
    // 1 MiB holds two 400 KB frames beyond the first 16 KiB buffers, not three.
    assert_eq!(answered_busy, 2);
    let mut client = Client::connect(server.address).unwrap();
    client.ping().unwrap();
}

#[test]
fn slowloris_is_closed_by_the_frame_timeout() {
    //! A connection sending one byte a second stayed open forever: the idle timeout only
    //! measured silence.
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 10);
    let server = common::Server::start(
        directory.path(),
        &["--frame-timeout-ms", "600", "--idle-timeout-ms", "60000"],
    );
    let mut frame = Vec::new();
    protocol::put_verify_frame(
        &mut frame,
        7,
        &VerifyRequest {
            credential: b"kw_slow",
            ..Default::default()
        },
    );
    let mut stream = TcpStream::connect(server.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    let mut sent = 0;
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        if sent < frame.len() && stream.write_all(&frame[sent..sent + 1]).is_ok() {
            sent += 1;
        }
        let mut buffer = [0u8; 512];
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
            Err(_) => {}
        }
    }
    assert!(sent < frame.len(), "the whole slow frame was accepted");
    let (header, body) = read_frame(&mut answer.as_slice()).unwrap();
    assert_eq!(header.opcode, opcode::ERROR);
    let error = protocol::parse_error(&body).unwrap();
    assert_eq!(error.code, ErrorCode::Timeout as u8, "{}", error.message);
    // A connection that sends whole frames, however idle between them, is unaffected.
    let mut client = Client::connect(server.address).unwrap();
    client.ping().unwrap();
    std::thread::sleep(Duration::from_millis(900));
    client.ping().unwrap();
}

#[test]
fn silent_control_connections_do_not_lock_admins_out() {
    //! ~256 silent connections refused 10 of 12 admin STATS calls over a minute.
    let directory = tempfile::tempdir().unwrap();
    let server = common::Server::start(directory.path(), &[]);
    let silent: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(server.control).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..12 {
        let mut admin = server.admin();
        admin.call(control::STATS, &json!({})).unwrap();
    }
    // And an admin connection keeps working while more silent ones arrive.
    let mut admin = server.admin();
    admin.call(control::STATS, &json!({})).unwrap();
    let more: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(server.control).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    admin.call(control::STATS, &json!({})).unwrap();
    drop((silent, more));
}

#[test]
fn idle_and_slow_control_connections_are_closed() {
    //! Control connections had no idle timeout, and a request could trickle in forever.
    let directory = tempfile::tempdir().unwrap();
    let server = common::Server::start(
        directory.path(),
        &[
            "--control-idle-timeout-ms",
            "300",
            "--frame-timeout-ms",
            "500",
        ],
    );
    let mut idle = TcpStream::connect(server.control).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (code, _) = error_of(&mut idle);
    assert_eq!(code, ErrorCode::Timeout);
    assert_eq!(idle.read(&mut [0u8; 8]).unwrap(), 0);
    let mut slow = TcpStream::connect(server.control).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut frame = Vec::new();
    admin::put_request(&mut frame, control::STATS, 3, &token_of(&server), b"{}");
    for byte in &frame[..20] {
        if slow.write_all(std::slice::from_ref(byte)).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, message) = error_of(&mut slow);
    assert_eq!(code, ErrorCode::Timeout, "{message}");
}

#[test]
fn a_wrong_token_is_refused_before_the_body_is_held() {
    //! The body (up to 4 MiB) was buffered before the token was checked: 48 unauthenticated
    //! connections held 214 MB.
    let directory = tempfile::tempdir().unwrap();
    let server = common::Server::start(directory.path(), &[]);
    let mut admin = server.admin();
    admin.call(control::STATS, &json!({})).unwrap();
    let before = common::resident_kib(server.child.id());
    let body_bytes = admin::CONTROL_BODY_BYTES_MAX;
    let mut start = Vec::new();
    protocol::put_header(&mut start, control::ISSUE, 1, body_bytes);
    start.push(16);
    start.extend_from_slice(b"kwadmin_not_real");
    let mut streams: Vec<TcpStream> = (0..48)
        .map(|_| {
            let mut stream = TcpStream::connect(server.control).unwrap();
            stream.write_all(&start).unwrap();
            stream.write_all(&vec![b' '; 3 * 1024 * 1024]).unwrap();
            stream
        })
        .collect();
    admin.call(control::STATS, &json!({})).unwrap();
    let grown = common::resident_kib(server.child.id()).saturating_sub(before);
    assert!(
        grown < 32 * 1024,
        "48 unauthenticated 3 MiB bodies grew the server by {grown} KiB"
    );
    // Each gets `unauthorized` once its body is in, and is closed.
    let rest = vec![b' '; body_bytes - 1 - 16 - 3 * 1024 * 1024];
    for stream in &mut streams {
        stream.write_all(&rest).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (code, _) = error_of(stream);
        assert_eq!(code, ErrorCode::Unauthorized);
    }
    let stats = admin.call(control::STATS, &json!({})).unwrap();
    assert_eq!(stats["sequence"], 0, "{stats}");
}

/// Runs the server with its open-files limit set to `files` (soft and hard).
fn start_with_file_limit(
    directory: &std::path::Path,
    files: u64,
    extra: &[&str],
) -> common::Server {
    start_with_file_limits(directory, files, files, extra)
}

/// Runs the server with the given soft and hard open-files limits.
fn start_with_file_limits(
    directory: &std::path::Path,
    soft: u64,
    hard: u64,
    extra: &[&str],
) -> common::Server {
    let mut command = common::keyward_command(directory, extra);
    common::with_file_limits(&mut command, soft, hard);
    common::Server::start_command(command, directory)
}

#[test]
fn out_of_file_descriptors_new_clients_get_busy_and_the_log_stays_short() {
    //! At EMFILE a new client connected and got no answer for seconds while the log took ~100
    //! lines a second; nothing warned that connections_max x shards could not fit.
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 10);
    let mut server = start_with_file_limit(
        directory.path(),
        96,
        &["--shards", "1", "--connections-per-shard-max", "1000"],
    );
    let mut kept = Vec::new();
    let mut busy = 0;
    for _ in 0..120 {
        let mut stream = TcpStream::connect(server.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut ping = Vec::new();
        protocol::put_ping_frame(&mut ping, 1);
        let _ = stream.write_all(&ping);
        let (header, body) = read_frame(&mut stream)
            .expect("every client gets an answer: a PONG, or BUSY when out of descriptors");
        match header.opcode {
            opcode::PONG => kept.push(stream),
            opcode::ERROR => {
                let error = protocol::parse_error(&body).unwrap();
                assert_eq!(error.code, ErrorCode::Busy as u8, "{}", error.message);
                busy += 1;
            }
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
    assert!(busy > 0, "the limit was never reached");
    // Once descriptors are free again, new clients are served.
    drop(kept);
    std::thread::sleep(Duration::from_millis(300));
    let mut client = Client::connect(server.address).unwrap();
    client.ping().unwrap();
    let mut stderr = server.child.stderr.take().unwrap();
    server.kill();
    let mut text = String::new();
    stderr.read_to_string(&mut text).unwrap();
    assert!(
        text.contains("open files: RLIMIT_NOFILE soft 96 hard 96"),
        "the start-up host check warns: {text}"
    );
    let accept_lines = text.lines().filter(|l| l.contains("accept failed")).count();
    assert!(
        (1..=10).contains(&accept_lines),
        "{accept_lines} accept failure lines: {text}"
    );
}

#[test]
fn restart_right_after_sigkill_just_works() {
    //! Restarting right after SIGKILL failed 19 of 20 times with "Address already in use" on
    //! the control port, while the dead process's verify listeners still reset connections.
    let directory = tempfile::tempdir().unwrap();
    let keys = common::generated_data_dir(directory.path(), 20);
    let valid = keys.iter().find(|k| k.expected == Status::Valid).unwrap();
    let verify: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let control_port: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let (verify_text, control_text) = (verify.to_string(), control_port.to_string());
    for round in 0..10 {
        let command = common::keyward_command_at(
            directory.path(),
            &verify_text,
            &control_text,
            &["--shards", "2"],
        );
        let server = common::Server::start_command(command, directory.path());
        assert_eq!(server.address, verify, "round {round}");
        // Connections made right away are served, none reset by a dead listener.
        for _ in 0..8 {
            let mut client = Client::connect(server.address).unwrap();
            let result = client
                .verify(&VerifyRequest {
                    credential: valid.credential.as_bytes(),
                    ..Default::default()
                })
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(result.status, Status::Valid);
        }
        server.admin().call(control::STATS, &json!({})).unwrap();
        server.kill();
    }
}

#[test]
fn revoke_self_refuses_extra_fields() {
    //! REVOKE_SELF accepted a scope, tenant and address that the docs say must be empty.
    let (_directory, server, valid, mut stream) = server_with_a_valid_key();
    let extras = [
        VerifyRequest {
            credential: valid.as_bytes(),
            scope: Some(b"orders:read"),
            ..Default::default()
        },
        VerifyRequest {
            credential: valid.as_bytes(),
            tenant: Some(b"tenant-0"),
            ..Default::default()
        },
        VerifyRequest {
            credential: valid.as_bytes(),
            address: Some("10.0.0.1".parse().unwrap()),
            ..Default::default()
        },
    ];
    for request in &extras {
        let mut body = Vec::new();
        protocol::put_verify(&mut body, request);
        send_frame(&mut stream, opcode::REVOKE_SELF, 9, &body);
        let (code, message) = error_of(&mut stream);
        assert_eq!(code, ErrorCode::BadBody);
        assert!(message.contains("must be empty"), "{message}");
    }
    let mut client = Client::connect(server.address).unwrap();
    let result = client
        .verify(&VerifyRequest {
            credential: valid.as_bytes(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(result.status, Status::Valid, "the key was revoked anyway");
}

/// A DERIVE body by hand (the library's encoder refuses what these tests send).
fn derive_body(
    credential: &[u8],
    scopes: usize,
    range: Option<([u8; 16], u8)>,
    claim_key_bytes: usize,
) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(credential.len() as u16).to_le_bytes());
    body.extend_from_slice(credential);
    body.extend_from_slice(&60u32.to_le_bytes());
    body.push(scopes as u8);
    for i in 0..scopes {
        let scope = format!("s{i}");
        body.push(scope.len() as u8);
        body.extend_from_slice(scope.as_bytes());
    }
    body.push(0); // tenant
    match range {
        Some((network, prefix)) => {
            body.push(1);
            body.extend_from_slice(&network);
            body.push(prefix);
        }
        None => body.push(0),
    }
    if claim_key_bytes == 0 {
        body.push(0);
    } else {
        body.extend_from_slice(&[1, claim_key_bytes as u8]);
        body.extend_from_slice(&vec![b'k'; claim_key_bytes]);
        body.extend_from_slice(&[1, b'v']);
    }
    body
}

#[test]
fn derive_edges_get_bad_body_that_names_the_fault() {
    //! A DERIVE range of prefix 8 on an IPv4-mapped network silently meant ::/8 (every IPv4
    //! address); 17 scopes were refused as "batch must hold 1 to 256 items".
    let (_directory, _server, valid, mut stream) = server_with_a_valid_key();
    let mapped_ten = {
        let mut network = [0u8; 16];
        network[10] = 0xff;
        network[11] = 0xff;
        network[12] = 10;
        network
    };
    let cases = [
        (
            derive_body(valid.as_bytes(), 17, None, 0),
            "at most 16 scopes",
        ),
        (
            derive_body(valid.as_bytes(), 0, Some((mapped_ten, 8)), 0),
            "counts from 96",
        ),
        (
            derive_body(valid.as_bytes(), 0, Some((mapped_ten, 129)), 0),
            "prefix length 129 is over 128",
        ),
        (
            derive_body(valid.as_bytes(), 0, None, 40),
            "claim's key must be 1 to 32 bytes",
        ),
    ];
    for (body, expected) in cases {
        send_frame(&mut stream, opcode::DERIVE, 4, &body);
        let (code, message) = error_of(&mut stream);
        assert_eq!(code, ErrorCode::BadBody);
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    // The IPv4 /8 written as 96 + 8 is accepted.
    let body = derive_body(valid.as_bytes(), 0, Some((mapped_ten, 104)), 0);
    send_frame(&mut stream, opcode::DERIVE, 5, &body);
    let (header, body) = read_frame(&mut stream).unwrap();
    assert_eq!(header.opcode, opcode::DERIVE_RESULT);
    assert!(matches!(
        protocol::parse_derive_result(&body).unwrap(),
        protocol::DeriveResult::Minted { .. }
    ));
}

#[test]
fn failing_compaction_backs_off_and_logs_once_per_try() {
    //! Compaction on a full disk retried after every commit: 45 log lines with a doubled
    //! "compaction failed: compaction failed:" prefix.
    let directory = tempfile::tempdir().unwrap();
    let mut server = common::Server::start(directory.path(), &["--compact-changes-max", "1"]);
    // The snapshot's temporary file cannot be created: a directory holds its name.
    let blocker = directory
        .path()
        .join(format!(".snapshot.kws.tmp-{}", server.child.id()));
    std::fs::create_dir(&blocker).unwrap();
    let mut admin = server.admin();
    for _ in 0..45 {
        admin.call(control::ISSUE, &json!({})).unwrap();
    }
    // The admin's own COMPACT tries at once and says why it failed.
    match admin.call(control::COMPACT, &json!({})) {
        Err(AdminError::Server { code, message }) => {
            assert_eq!(code, admin::error_code::UNAVAILABLE);
            assert!(message.starts_with("compaction failed: "), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let stats = admin.call(control::STATS, &json!({})).unwrap();
    assert!(
        stats["compaction_failures"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    std::fs::remove_dir(&blocker).unwrap();
    admin.call(control::COMPACT, &json!({})).unwrap();
    let mut stderr = server.child.stderr.take().unwrap();
    drop(admin);
    server.kill();
    let mut text = String::new();
    stderr.read_to_string(&mut text).unwrap();
    let failures = text
        .lines()
        .filter(|l| l.contains("compaction failed"))
        .count();
    assert!((1..=4).contains(&failures), "{failures} lines: {text}");
    assert!(
        !text.contains("compaction failed: compaction failed"),
        "{text}"
    );
}

#[test]
fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
    //! The server ran with whatever soft limit it was given, however far below the hard one.
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 10);
    let mut server = start_with_file_limits(
        directory.path(),
        64,
        300,
        &["--shards", "1", "--connections-per-shard-max", "1000"],
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect();
    assert_eq!(open_files, ["300", "300"], "{limits}");
    let mut stderr = server.child.stderr.take().unwrap();
    server.kill();
    let mut text = String::new();
    stderr.read_to_string(&mut text).unwrap();
    assert!(
        text.contains("open files: RLIMIT_NOFILE soft 64 hard 300 (serve raises soft to hard)"),
        "{text}"
    );
}
