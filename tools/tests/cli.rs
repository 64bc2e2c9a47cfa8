//! keyward-ctl as a user runs it: generate keys, build a table from JSON lines, inspect and
//! check snapshots, and verify against a real server (exit codes included).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{ctl, generate_keys, serve, serve_with_metrics, text};

#[test]
fn generate_serve_verify() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let keys = root.path().join("keys.txt");
    let output = generate_keys(&data, &keys, 200);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("expected answers: valid 150"),
        "{}",
        text(&output)
    );

    // A second generate must not silently replace the keys.
    let again = generate_keys(&data, &keys, 5);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again).contains("--force"), "{}", text(&again));

    let server = serve(&data);
    let lines = std::fs::read_to_string(&keys).unwrap();
    let mut seen = std::collections::HashSet::new();
    for line in lines.lines().filter(|l| !l.starts_with('#')) {
        let mut columns = line.split('\t');
        let (credential, expected) = (columns.next().unwrap(), columns.next().unwrap());
        if !seen.insert(expected.to_string()) {
            continue;
        }
        let output = ctl(&["verify", "--server", &server.1, credential, "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(json["status"], expected, "{line}");
        assert_eq!(
            output.status.code(),
            Some(if expected == "valid" { 0 } else { 1 }),
            "{line}"
        );
    }
    assert!(seen.len() >= 6, "{seen:?}");

    let unreachable = ctl(&["verify", "--server", "127.0.0.1:1", "kw_x"]);
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(
        text(&unreachable).contains("cannot reach"),
        "{}",
        text(&unreachable)
    );
}

#[test]
fn build_from_json_lines_then_inspect_and_check() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let records = root.path().join("records.jsonl");
    std::fs::write(
        &records,
        concat!(
            r#"{"credential": "sk_live_imported_key_number_one", "tenant": "acme", "name": "legacy", "scopes": ["orders:read"]}"#, "\n",
            r#"{"credential": "sk_live_imported_key_number_two", "tenant": "acme", "revoked": true, "allow": ["10.0.0.0/8"]}"#, "\n",
        ),
    )
    .unwrap();
    let output = ctl(&[
        "table",
        "build",
        "--data-dir",
        data.to_str().unwrap(),
        "--from",
        records.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output));

    let inspect = ctl(&["table", "inspect", data.to_str().unwrap(), "--json"]);
    assert!(inspect.status.success(), "{}", text(&inspect));
    let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(json["records"], 2);
    assert_eq!(json["counts"]["revoked"], 1);
    assert_eq!(json["first_records"][1]["allow"][0], "10.0.0.0/8");
    assert!(
        !String::from_utf8_lossy(&inspect.stdout).contains("sk_live"),
        "a secret leaked into inspect"
    );

    let server = serve(&data);
    let valid = ctl(&[
        "verify",
        "--server",
        &server.1,
        "sk_live_imported_key_number_one",
        "--scope",
        "orders:read",
    ]);
    assert_eq!(valid.status.code(), Some(0), "{}", text(&valid));
    let revoked = ctl(&[
        "verify",
        "--server",
        &server.1,
        "sk_live_imported_key_number_two",
    ]);
    assert_eq!(text(&revoked).trim(), "revoked");
    drop(server);

    let snapshot = data.join("snapshot.kws");
    let check = ctl(&["table", "check", snapshot.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&snapshot, &bytes).unwrap();
    let check = ctl(&["table", "check", snapshot.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1));
    assert!(text(&check).contains("checksum"), "{}", text(&check));
}

#[test]
fn bad_records_name_their_line() {
    let root = tempfile::tempdir().unwrap();
    let records = root.path().join("records.jsonl");
    std::fs::write(
        &records,
        "{\"credential\": \"sk_live_imported_key_number_one\"}\n{\"credential\": \"short\"}\n",
    )
    .unwrap();
    let output = ctl(&[
        "table",
        "build",
        "--data-dir",
        root.path().join("d").to_str().unwrap(),
        "--from",
        records.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output).contains("records.jsonl:2: imported key must be 16 to 512 bytes"),
        "{}",
        text(&output)
    );
}

/// Replacing the table offline must not let the old table's logged changes come back.
#[test]
fn replacing_the_table_drops_changes_logged_for_the_old_one() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let keys = root.path().join("keys.txt");
    let dir = data.to_str().unwrap();
    let generate = |force: bool| {
        let mut args = vec![
            "keys",
            "generate",
            "--data-dir",
            dir,
            "--count",
            "40",
            "--out-keys",
            keys.to_str().unwrap(),
        ];
        if force {
            args.push("--force");
        }
        let output = ctl(&args);
        assert!(output.status.success(), "{}", text(&output));
    };
    generate(false);
    let server = serve(&data);
    let control = server.2.clone();
    let issued = ctl(&[
        "issue",
        "--control",
        &control,
        "--data-dir",
        dir,
        "--name",
        "old table",
    ]);
    assert!(issued.status.success(), "{}", text(&issued));
    let old_key = String::from_utf8_lossy(&issued.stdout).trim().to_string();
    drop(server);

    generate(true);
    let server = serve(&data);
    let verify = ctl(&["verify", "--server", &server.1, &old_key]);
    assert_eq!(
        String::from_utf8_lossy(&verify.stdout).trim(),
        "unknown",
        "a change logged for the old table came back"
    );
    let control = server.2.clone();
    let issued = ctl(&["issue", "--control", &control, "--data-dir", dir]);
    assert!(issued.status.success(), "{}", text(&issued));
}

#[test]
fn a_corrupt_log_is_checked_then_cut_by_hand_keeping_the_damaged_copy() {
    //! The recovery path for a delta log the server refuses: `log check` names the damage and
    //! the records after it, `log cut` without --drop-changes only lists what it would drop,
    //! with it cuts (keeping a copy), and the server starts again.
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let dir = data.to_str().unwrap();
    let server = serve(&data);
    let control = server.2.clone();
    for name in ["first", "second", "third"] {
        let issued = ctl(&[
            "issue",
            "--control",
            &control,
            "--data-dir",
            dir,
            "--name",
            name,
        ]);
        assert!(issued.status.success(), "{}", text(&issued));
    }
    let revoked = ctl(&["revoke", "--control", &control, "--data-dir", dir, "1"]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    drop(server);

    let log = data.join("deltas.log");
    let clean = ctl(&["log", "check", "--data-dir", dir]);
    assert!(clean.status.success(), "{}", text(&clean));
    let offsets: Vec<u64> = String::from_utf8_lossy(&clean.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("offset "))
        .map(|l| l.split(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(offsets.len(), 4, "{}", text(&clean));
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[offsets[1] as usize + 20] ^= 0x40;
    std::fs::write(&log, &bytes).unwrap();

    let damaged = ctl(&["log", "check", "--data-dir", dir]);
    assert_eq!(damaged.status.code(), Some(1), "{}", text(&damaged));
    let report = text(&damaged);
    assert!(
        report.contains(&format!("damage at byte offset {}", offsets[1])),
        "{report}"
    );
    assert!(report.contains("2 whole records after it"), "{report}");
    assert!(report.contains("revoked [1]"), "{report}");

    let at = offsets[1].to_string();
    let dry = ctl(&["log", "cut", "--data-dir", dir, "--at", &at]);
    assert_eq!(dry.status.code(), Some(1), "{}", text(&dry));
    assert!(text(&dry).contains("--drop-changes"), "{}", text(&dry));
    assert_eq!(
        std::fs::read(&log).unwrap(),
        bytes,
        "a dry run changed the log"
    );

    let cut = ctl(&[
        "log",
        "cut",
        "--data-dir",
        dir,
        "--at",
        &at,
        "--drop-changes",
    ]);
    assert!(cut.status.success(), "{}", text(&cut));
    assert!(text(&cut).contains("revoked [1]"), "{}", text(&cut));
    assert_eq!(std::fs::metadata(&log).unwrap().len(), offsets[1]);
    let copy = data.join(format!("deltas.log.damaged-{at}"));
    assert_eq!(std::fs::read(copy).unwrap(), bytes);
    let server = serve(&data);
    let stats = ctl(&["stats", "--control", &server.2, "--data-dir", dir, "--json"]);
    assert!(stats.status.success(), "{}", text(&stats));
    assert!(text(&stats).contains("\"sequence\":1"), "{}", text(&stats));
}

#[test]
fn table_stats_accounts_for_every_byte_and_every_key() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let keys = root.path().join("keys.txt");
    let generated = generate_keys(&data, &keys, 3000);
    assert!(generated.status.success(), "{}", text(&generated));
    let stats = ctl(&["table", "stats", data.to_str().unwrap(), "--json"]);
    assert!(stats.status.success(), "{}", text(&stats));
    let json: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let file_bytes = json["file_bytes"].as_u64().unwrap();
    let snapshot = data.join("snapshot.kws");
    assert_eq!(file_bytes, std::fs::metadata(&snapshot).unwrap().len());
    let sections: u64 = json["sections"]
        .as_object()
        .unwrap()
        .values()
        .map(|bytes| bytes.as_u64().unwrap())
        .sum();
    assert_eq!(sections, file_bytes, "{json}");
    let records = json["records"].as_u64().unwrap();
    assert!(records > 2000, "{json}");
    let probed: u64 = json["probe_lengths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|count| count.as_u64().unwrap())
        .sum();
    assert_eq!(probed, records, "every key's probe is counted once");
    let load = json["id_load_factor"].as_f64().unwrap();
    assert!(
        load > 0.5 && load <= 0.8,
        "the id index is built at most 80 % full: {load}"
    );
    let hot = json["sections"]["records"].as_u64().unwrap();
    assert_eq!(hot, records * 64, "one cache line per hot record");
    // The text form names each section and the bytes per key.
    let text_form = ctl(&["table", "stats", data.to_str().unwrap()]);
    let printed = String::from_utf8_lossy(&text_form.stdout);
    for word in [
        "bytes per key",
        "id_index",
        "strings",
        "probe lengths",
        "interned",
    ] {
        assert!(printed.contains(word), "{word} missing from: {printed}");
    }
    // A damaged table is refused, not summarised.
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&snapshot, &bytes).unwrap();
    let refused = ctl(&["table", "stats", data.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
}

/// The committed fixture: a data directory written by format version 1 (57 keys), its key file,
/// and `table inspect --json` of it as version 1 printed it.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

#[test]
fn a_version_1_table_is_refused_by_the_server_then_upgraded_keeping_every_key() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for entry in std::fs::read_dir(fixture("v1-data")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), data.join(entry.file_name())).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    for secret in ["pepper", "master.key", "admin.token"] {
        std::fs::set_permissions(data.join(secret), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }

    // The server refuses it and says what to run.
    let refused = common::serve_expecting_refusal(&data);
    assert!(refused.contains("keyward-ctl table upgrade"), "{refused}");
    // Nothing replaces keys it cannot see as a current table.
    let keys = root.path().join("new-keys.txt");
    let replaced = generate_keys(&data, &keys, 5);
    assert_eq!(replaced.status.code(), Some(2), "{}", text(&replaced));
    assert!(text(&replaced).contains("57 keys"), "{}", text(&replaced));

    let upgraded = ctl(&["table", "upgrade", data.to_str().unwrap()]);
    assert!(upgraded.status.success(), "{}", text(&upgraded));
    assert!(
        text(&upgraded).contains("upgraded 57 keys"),
        "{}",
        text(&upgraded)
    );
    let again = ctl(&["table", "upgrade", data.to_str().unwrap()]);
    assert!(text(&again).contains("nothing to do"), "{}", text(&again));

    // Every field of every record as version 1 showed it.
    let inspected = ctl(&[
        "table",
        "inspect",
        data.to_str().unwrap(),
        "--records",
        "1000",
        "--json",
    ]);
    assert!(inspected.status.success(), "{}", text(&inspected));
    let now: serde_json::Value = serde_json::from_slice(&inspected.stdout).unwrap();
    let before: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("v1-inspect.json")).unwrap())
            .unwrap();
    assert_eq!(now["first_records"], before["first_records"]);
    assert_eq!(now["sequence"], before["sequence"]);
    assert_eq!(now["created"], before["created"]);

    // And the server answers every credential as it did: statuses that time can change
    // (valid or not yet valid turning expired, not yet valid turning valid) aside.
    let server = serve(&data);
    let lines = std::fs::read_to_string(fixture("v1-keys.txt")).unwrap();
    let mut valid = 0;
    for line in lines.lines().filter(|l| !l.starts_with('#')) {
        let mut columns = line.split('\t');
        let (credential, expected) = (columns.next().unwrap(), columns.next().unwrap());
        let output = ctl(&["verify", "--server", &server.1, credential, "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let status = json["status"].as_str().unwrap();
        valid += usize::from(status == "valid");
        assert!(
            status == expected
                || (status == "expired" && expected != "unknown" && expected != "revoked")
                || (status == "valid" && expected == "not_yet_valid"),
            "{line}: now {status}"
        );
    }
    assert!(valid >= 20, "keys that never expire stay valid: {valid}");
}

#[test]
fn stat_prints_a_line_per_interval_from_the_metrics_listener() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let keys = root.path().join("keys.txt");
    assert!(generate_keys(&data, &keys, 100).status.success());
    let server = serve_with_metrics(&data, "127.0.0.1:0");
    let metrics = server.3.clone().expect("a metrics listener");
    let lines = std::fs::read_to_string(&keys).unwrap();
    let credential = lines
        .lines()
        .find(|l| l.ends_with("\tvalid\t-\t-") || l.contains("\tvalid\t"))
        .and_then(|l| l.split('\t').next())
        .unwrap()
        .to_string();
    for _ in 0..5 {
        let output = ctl(&["verify", "--server", &server.1, &credential]);
        assert!(output.status.success(), "{}", text(&output));
    }
    let stat = ctl(&[
        "stat",
        "--metrics",
        &metrics,
        "--count",
        "2",
        "--interval",
        "0.2",
        "--json",
    ]);
    assert!(stat.status.success(), "{}", text(&stat));
    let printed = String::from_utf8_lossy(&stat.stdout).to_string();
    assert_eq!(printed.lines().count(), 2, "{printed}");
    for line in printed.lines() {
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            json["verifies_per_second"].as_f64().unwrap() >= 0.0,
            "{line}"
        );
        assert_eq!(json["snapshot_records"].as_f64(), Some(95.0), "{line}");
        assert!(json["by_status_per_second"]["valid"].is_number(), "{line}");
    }
    let table = ctl(&[
        "stat",
        "--metrics",
        &metrics,
        "--count",
        "1",
        "--interval",
        "0.1",
    ]);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(table.starts_with("  verify/s"), "{table}");
    assert_eq!(table.lines().count(), 2, "{table}");

    let unreachable = ctl(&["stat", "--metrics", "127.0.0.1:1", "--count", "1"]);
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(
        text(&unreachable).contains("cannot read 127.0.0.1:1/metrics"),
        "{}",
        text(&unreachable)
    );
}

#[test]
fn admins_audit_and_unused_keys_from_the_command_line() {
    //! `admin add|list|remove`, a read token refused a change, `audit verify|tail` with its
    //! filters, and `list --unused-since`.
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let dir = data.to_str().unwrap();
    let server = serve(&data);
    let control = server.2.clone();
    let admin = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--control", &control, "--data-dir", dir]);
        ctl(&all)
    };
    let issued = admin(&["issue", "--tenant", "acme"]);
    assert!(issued.status.success(), "{}", text(&issued));
    let token_file = root.path().join("reader.token");
    let added = admin(&[
        "admin",
        "add",
        "dashboard",
        "--role",
        "read",
        "--token-out",
        token_file.to_str().unwrap(),
    ]);
    assert!(added.status.success(), "{}", text(&added));
    let listed = admin(&["admin", "list"]);
    assert!(text(&listed).contains("dashboard"), "{}", text(&listed));
    assert!(text(&listed).contains("read"), "{}", text(&listed));
    let forbidden = ctl(&[
        "revoke",
        "1",
        "--control",
        &control,
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert_eq!(forbidden.status.code(), Some(2), "{}", text(&forbidden));
    assert!(
        text(&forbidden).contains("read role"),
        "{}",
        text(&forbidden)
    );
    let removed = admin(&["admin", "remove", "dashboard"]);
    assert!(removed.status.success(), "{}", text(&removed));

    // Never used, created now: not unused for a day; unused for 0 s once a second has passed.
    let unused = admin(&["list", "--unused-since", "1d"]);
    assert!(!text(&unused).contains("key 1 "), "{}", text(&unused));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let unused = admin(&["list", "--unused-since", "0s"]);
    assert!(text(&unused).contains("key 1 "), "{}", text(&unused));
    assert!(text(&unused).contains("never used"), "{}", text(&unused));
    let bad_age = admin(&["list", "--unused-since", "soon"]);
    assert!(!bad_age.status.success());
    assert!(text(&bad_age).contains("90d"), "{}", text(&bad_age));

    let verified = ctl(&["audit", "verify", "--data-dir", dir]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(
        text(&verified).contains("audit trail intact"),
        "{}",
        text(&verified)
    );
    let tail = ctl(&["audit", "tail", "--data-dir", dir, "--key", "1"]);
    assert!(tail.status.success(), "{}", text(&tail));
    let lines = String::from_utf8_lossy(&tail.stdout).to_string();
    assert!(lines.contains("admin issue key 1"), "{lines}");
    assert!(lines.contains("dashboard revoke key 1"), "{lines}");
    assert!(!lines.contains("admin_add"), "only key 1: {lines}");
    let tail = ctl(&[
        "audit",
        "tail",
        "--data-dir",
        dir,
        "--since",
        "1m",
        "--json",
        "-n",
        "0",
    ]);
    let json_lines = String::from_utf8_lossy(&tail.stdout).to_string();
    assert!(json_lines.lines().count() >= 6, "{json_lines}");
    for line in json_lines.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    let future = ctl(&["audit", "tail", "--data-dir", dir, "--since", "2999-01-01"]);
    assert!(String::from_utf8_lossy(&future.stdout).is_empty());

    // --follow prints lines written after it started.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_keyward-ctl"))
        .args([
            "audit",
            "tail",
            "--follow",
            "-n",
            "0",
            "--tenant",
            "later",
            "--data-dir",
            dir,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (lines_out, lines_in) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if lines_out.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let issued = admin(&["issue", "--tenant", "later"]);
    assert!(issued.status.success(), "{}", text(&issued));
    let followed = lines_in.recv_timeout(std::time::Duration::from_secs(10));
    let _ = follower.kill();
    let _ = follower.wait();
    let followed = followed.expect("--follow printed the new line");
    assert!(
        followed.contains("admin issue key 2 tenant \"later\" ok"),
        "{followed}"
    );
    drop(server);

    // An edit breaks the chain, and `verify` says where.
    let path = data.join("audit.log");
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        original.replacen("\"tenant\":\"acme\"", "\"tenant\":\"acmf\"", 1),
    )
    .unwrap();
    let broken = ctl(&["audit", "verify", "--data-dir", dir]);
    assert_eq!(broken.status.code(), Some(1), "{}", text(&broken));
    assert!(text(&broken).contains("audit.log:2"), "{}", text(&broken));
    assert!(text(&broken).contains("was changed"), "{}", text(&broken));
}

#[test]
fn cluster_secrets_are_exported_and_imported_into_a_new_data_directory_only() {
    let directory = tempfile::tempdir().unwrap();
    let first = directory.path().join("first");
    let keys = directory.path().join("keys.txt");
    assert!(generate_keys(&first, &keys, 3).status.success());
    let file = directory.path().join("secrets.json");
    let file_arg = file.to_str().unwrap();
    let exported = ctl(&[
        "cluster",
        "export-secrets",
        "--data-dir",
        first.to_str().unwrap(),
        "--out",
        file_arg,
    ]);
    assert!(exported.status.success(), "{}", text(&exported));
    assert!(text(&exported).contains("unlocks every key"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Never over an existing file.
    let again = ctl(&[
        "cluster",
        "export-secrets",
        "--data-dir",
        first.to_str().unwrap(),
        "--out",
        file_arg,
    ]);
    assert!(!again.status.success());
    let second = directory.path().join("second");
    let imported = ctl(&[
        "cluster",
        "import-secrets",
        "--data-dir",
        second.to_str().unwrap(),
        file_arg,
    ]);
    assert!(imported.status.success(), "{}", text(&imported));
    for name in ["pepper", "master.key", "admin.token"] {
        assert_eq!(
            std::fs::read(first.join(name)).unwrap(),
            std::fs::read(second.join(name)).unwrap(),
            "{name}"
        );
    }
    // Not into a data directory that holds keys.
    let refused = ctl(&[
        "cluster",
        "import-secrets",
        "--data-dir",
        first.to_str().unwrap(),
        file_arg,
    ]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("not empty"), "{}", text(&refused));
}

#[test]
fn the_man_pages_and_completions_are_the_clis() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().to_str().unwrap();
    let output = ctl(&["generate-assets", out]);
    assert!(output.status.success(), "{}", text(&output));
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("package");
    if let Err(drift) = keyward::assets::compare(directory.path(), &committed, "keyward-ctl") {
        panic!("{drift}: run tools/package/generate-assets.sh");
    }
}

#[test]
fn output_to_a_reader_that_has_gone_ends_quietly_after_the_work_is_done() {
    //! `keyward-ctl … | head` panicked: println! on a closed pipe.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = dir.path().join("keys.txt");
    let output = Command::new(env!("CARGO_BIN_EXE_keyward-ctl"))
        .args(["keys", "generate", "--count", "50", "--data-dir"])
        .arg(&data)
        .arg("--out-keys")
        .arg(&keys)
        .stdout(common::closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(keyward::stdout::EXIT_READER_GONE),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The keys were minted before the summary line found no reader.
    let written = std::fs::read_to_string(&keys).unwrap();
    let credentials = written.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(credentials, 50, "{written}");
}
