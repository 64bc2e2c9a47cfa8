//! Start-up and shutdown: bad snapshots are refused with one clear line and a non-zero exit,
//! the data directory is exclusive, a first run creates it, limits and idle timeouts hold.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use keyward::client::{read_frame, Client};
use keyward::protocol::{self, opcode, ErrorCode};
use keyward::snapshot;

fn damaged(damage: impl FnOnce(&mut Vec<u8>)) -> (std::process::ExitStatus, String) {
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 100);
    let path = directory.path().join(snapshot::FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    damage(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    common::start_expecting_failure(directory.path(), &[])
}

fn assert_refused(result: (std::process::ExitStatus, String), expected: &str) {
    let (status, stderr) = result;
    assert!(!status.success(), "server started on a bad snapshot");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(expected),
        "{stderr:?} does not mention {expected:?}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn corrupted_body_is_refused() {
    assert_refused(
        damaged(|b| {
            let at = b.len() / 2;
            b[at] ^= 0x40;
        }),
        "checksum mismatch (corrupted file",
    );
}

#[test]
fn a_byte_flipped_in_any_section_is_refused_naming_the_section() {
    for (index, name) in snapshot::SECTIONS.iter().enumerate() {
        let result = damaged(|b| {
            let header = snapshot::Header::decode(b, std::path::Path::new("x")).unwrap();
            let range = header.section_range(index);
            assert!(!range.is_empty(), "section {name} is empty");
            let at = snapshot::HEADER_BYTES + range.start + range.len() / 2;
            b[at] ^= 0x01;
        });
        assert_refused(result, &format!("section `{name}` checksum mismatch"));
    }
}

#[test]
fn truncated_snapshot_is_refused() {
    assert_refused(damaged(|b| b.truncate(b.len() - 100)), "truncated");
    assert_refused(
        damaged(|b| b.truncate(40)),
        "shorter than the 320-byte header",
    );
    assert_refused(damaged(|b| b.clear()), "shorter than the 320-byte header");
}

#[test]
fn wrong_magic_and_version_are_refused() {
    assert_refused(
        damaged(|b| b[0..8].copy_from_slice(b"NOTASNAP")),
        "not a keyward snapshot",
    );
    assert_refused(damaged(|b| b[8] = 9), "format version 9 is not supported");
    assert_refused(damaged(|b| b[20] ^= 1), "header checksum mismatch");
}

#[test]
fn first_run_creates_the_data_directory() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("fresh");
    let server = common::Server::start(&path, &[]);
    let mut client = Client::connect(server.address).unwrap();
    client.ping().unwrap();
    for name in ["pepper", "master.key", "admin.token"] {
        let mode = std::fs::metadata(path.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    assert!(path.join(snapshot::FILE_NAME).exists());
    let (status, report) = server.stop();
    assert!(status.success(), "{report}");
    assert!(report.contains("stopped"), "{report}");
}

#[test]
fn second_server_on_the_same_data_directory_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 10);
    let _first = common::Server::start(directory.path(), &[]);
    let (status, stderr) = common::start_expecting_failure(directory.path(), &[]);
    assert!(!status.success());
    assert!(
        stderr.contains("in use by another keyward process"),
        "{stderr}"
    );
}

#[test]
fn connection_limit_refuses_with_busy() {
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 10);
    let server = common::Server::start(
        directory.path(),
        &["--shards", "1", "--connections-per-shard-max", "1"],
    );
    let mut first = Client::connect(server.address).unwrap();
    first.ping().unwrap();
    let mut second = TcpStream::connect(server.address).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (header, body) = read_frame(&mut second).unwrap();
    assert_eq!(header.opcode, opcode::ERROR);
    assert_eq!(
        protocol::parse_error(&body).unwrap().code,
        ErrorCode::Busy as u8
    );
    first.ping().unwrap();
}

#[test]
fn idle_connections_are_closed() {
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 10);
    let server = common::Server::start(directory.path(), &["--idle-timeout-ms", "200"]);
    let mut stream = TcpStream::connect(server.address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buffer = [0u8; 16];
    assert_eq!(
        stream.read(&mut buffer).unwrap(),
        0,
        "idle connection was not closed"
    );
    let _ = stream.write_all(&[1]);
}

#[test]
fn bad_settings_are_refused_with_a_clear_error() {
    let directory = tempfile::tempdir().unwrap();
    let (status, stderr) = common::start_expecting_failure(directory.path(), &["--prefix", "KW"]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("prefix \"KW\""), "{stderr}");
    let config = directory.path().join("keyward.toml");
    std::fs::write(&config, "shardz = 3\n").unwrap();
    let (status, stderr) =
        common::start_expecting_failure(directory.path(), &["--config", config.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("shardz"), "{stderr}");
}

#[test]
fn config_file_is_read_and_flags_override_it() {
    let directory = tempfile::tempdir().unwrap();
    common::generated_data_dir(directory.path(), 10);
    let config = directory.path().join("keyward.toml");
    std::fs::write(
        &config,
        "connections_per_shard_max = 1\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    // The file's connection limit applies; the helper's --listen 127.0.0.1:0 overrides port 1.
    let server = common::Server::start(
        directory.path(),
        &["--config", config.to_str().unwrap(), "--shards", "1"],
    );
    assert_ne!(
        server.address.port(),
        1,
        "the flag did not override the file"
    );
    let mut first = Client::connect(server.address).unwrap();
    first.ping().unwrap();
    let mut second = TcpStream::connect(server.address).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (header, body) = read_frame(&mut second).unwrap();
    assert_eq!(
        header.opcode,
        opcode::ERROR,
        "the file's connection limit was not applied"
    );
    assert_eq!(
        protocol::parse_error(&body).unwrap().code,
        ErrorCode::Busy as u8
    );
}
