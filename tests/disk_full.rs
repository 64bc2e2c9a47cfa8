//! A full disk under the data directory (a 1 MiB tmpfs, filled up): the change that cannot be
//! made durable is refused, every later change too, `/readyz` says why, verification and reads
//! carry on, and a restart once there is room serves again. Needs root (to mount); skipped,
//! saying so, without it.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;

use keyward::admin::{opcode, AdminError};
use keyward::client::Client;
use keyward::protocol::{ErrorCode, Status, VerifyRequest};
use serde_json::json;

struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_changes_and_keeps_verifying() {
    let root = tempfile::tempdir().unwrap();
    let mount = root.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "keyward-test",
            mount.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _unmount = Mounted(&mount);
    let dir = mount.join("data");
    let server = common::Server::start(&dir, &[]);
    let metrics = server.metrics.unwrap();
    let mut admin = server.admin();
    let kept = admin
        .call(opcode::ISSUE, &json!({ "tenant": "t" }))
        .unwrap();
    let kept_credential = kept["credential"].as_str().unwrap().to_string();

    // Fill the file system to the last byte.
    let mut filler = std::fs::File::create(mount.join("filler")).unwrap();
    while filler.write_all(&[0u8; 4096]).is_ok() {}
    while filler.write_all(&[0u8; 1]).is_ok() {}
    drop(filler);

    // Changes go on until one cannot be written (a file's last page may still have room).
    let mut refused = None;
    for _ in 0..1000 {
        match admin.call(opcode::ISSUE, &json!({ "tenant": "t" })) {
            Ok(_) => continue,
            Err(AdminError::Server { code, message }) => {
                refused = Some((code, message));
                break;
            }
            Err(other) => panic!("{other}"),
        }
    }
    let (code, message) = refused.expect("a change was refused once the disk was full");
    assert_eq!(code, ErrorCode::Unavailable as u8, "{message}");
    assert!(message.contains("changes are refused"), "{message}");
    // Every later change too, with the reason; reads go on.
    match admin.call(opcode::REVOKE, &json!({ "id": kept["key"]["id"] })) {
        Err(AdminError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::Unavailable as u8);
            assert!(message.contains("restarted"), "{message}");
        }
        other => panic!("a change after the failure: {other:?}"),
    }
    let stats = admin.call(opcode::STATS, &json!({})).unwrap();
    assert!(stats["changes_refused"].is_string(), "{stats}");
    let (status, body) = common::http_get(metrics, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not writable"), "{body}");
    let scrape = common::http_get(metrics, "/metrics").1;
    assert!(scrape.contains("keyward_delta_log_writable 0"), "{scrape}");
    let mut client = Client::connect(server.address).unwrap();
    let answer = client
        .verify(&VerifyRequest {
            credential: kept_credential.as_bytes(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        answer.status,
        Status::Valid,
        "the key revoke was refused for stays valid"
    );

    // Room again, restarted: serving and changing, the kept key still there.
    drop(server);
    std::fs::remove_file(mount.join("filler")).unwrap();
    let server = common::Server::start(&dir, &[]);
    let mut admin = server.admin();
    admin
        .call(opcode::ISSUE, &json!({ "tenant": "t" }))
        .unwrap();
    let inspected = admin
        .call(opcode::INSPECT, &json!({ "id": kept["key"]["id"] }))
        .unwrap();
    assert_eq!(inspected["key"]["status"], "active");
    keyward::audit::walk(&dir, |_| {}).expect("the audit chain survives the full disk");
}
