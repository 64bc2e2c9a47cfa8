//! Backing up a data directory, with the server running or stopped (`keyward-ctl backup`,
//! docs/DEPLOY.md "Backing up").
//!
//! What makes a copy of a live directory consistent is the order: compaction writes a new
//! snapshot (sequence C) first and only then shortens the log to the records after C, each by a
//! rename. So the log is copied **before** the snapshot: whatever compaction does in between,
//! the copied snapshot is at least as new as the start of the copied log, and replay (skip the
//! records the snapshot holds, apply the rest in order) gives a state the server really had. The
//! other way round, a compaction in between would leave an old snapshot and a log that starts
//! after it: a gap, which the server refuses at start (revocations in the gap would be lost).
//!
//! The secrets come first (they never change once written); the audit trail and usage counts
//! last (they are optional: a missing one cannot bring a revoked key back). Each file is read
//! whole from one open descriptor (a rename during the copy does not mix two files), written
//! with mode 0600 and fsynced, then the directory is fsynced. Finally the copy is checked the
//! way a start checks it: the snapshot's sections, and the log's replay after it (a torn last
//! record — a change being written during the copy, not yet acknowledged — is cut).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::datadir::{ADMIN_TOKEN_FILE, MASTER_FILE, PEPPER_FILE};

/// What a backup holds.
#[derive(Debug)]
pub struct BackupReport {
    /// Files copied, in the order they were.
    pub files: Vec<String>,
    pub bytes: u64,
    /// The snapshot's sequence and key records.
    pub snapshot_sequence: u64,
    pub snapshot_records: u64,
    /// The last change the copy holds (a restore answers as the server did just after it).
    pub last_sequence: u64,
    /// Bytes of a torn last log record cut from the copy (a change not yet acknowledged).
    pub cut_bytes: u64,
}

/// The files a backup copies, in the order it copies them, and whether each must exist.
fn plan(source: &Path) -> Vec<(String, bool)> {
    let mut files: Vec<(String, bool)> = vec![
        (PEPPER_FILE.into(), true),
        (MASTER_FILE.into(), true),
        (ADMIN_TOKEN_FILE.into(), true),
        (crate::admins::FILE_NAME.into(), false),
        (crate::cluster::MARKER_FILE.into(), false),
        (crate::delta::FILE_NAME.into(), true),
        (crate::snapshot::FILE_NAME.into(), true),
    ];
    // The audit trail's rotated files, oldest first, then the current one.
    let mut rotated: Vec<(u64, String)> = std::fs::read_dir(source)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let number = name
                .strip_prefix(crate::audit::FILE_NAME)?
                .strip_prefix('.')?
                .parse()
                .ok()?;
            Some((number, name))
        })
        .collect();
    rotated.sort();
    files.extend(rotated.into_iter().map(|(_, name)| (name, false)));
    files.push((crate::audit::FILE_NAME.into(), false));
    files.push((crate::usage::FILE_NAME.into(), false));
    files
}

/// Copies the data directory `source` into `dest` (absent, or an empty directory; made with
/// mode 0700), in the order that keeps it consistent, and checks the copy.
pub fn backup(source: &Path, dest: &Path) -> Result<BackupReport, String> {
    let show = |path: &Path, e: std::io::Error| format!("{}: {e}", path.display());
    if !source.join(crate::snapshot::FILE_NAME).exists() {
        return Err(format!(
            "{} is not a keyward data directory (no {})",
            source.display(),
            crate::snapshot::FILE_NAME
        ));
    }
    match std::fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "{} is not empty: back up into a new directory",
                    dest.display()
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dest)
            .map_err(|e| show(dest, e))?,
        Err(e) => return Err(show(dest, e)),
    }
    let mut report = BackupReport {
        files: Vec::new(),
        bytes: 0,
        snapshot_sequence: 0,
        snapshot_records: 0,
        last_sequence: 0,
        cut_bytes: 0,
    };
    for (name, required) in plan(source) {
        let from = source.join(&name);
        let mut file = match File::open(&from) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) => return Err(show(&from, e)),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| show(&from, e))?;
        let to = dest.join(&name);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&to)
            .map_err(|e| show(&to, e))?;
        out.write_all(&bytes)
            .and_then(|()| out.sync_all())
            .map_err(|e| show(&to, e))?;
        report.bytes += bytes.len() as u64;
        report.files.push(name);
    }
    File::open(dest)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| show(dest, e))?;
    let (sequence, records, last, cut) = check(dest)?;
    report.snapshot_sequence = sequence;
    report.snapshot_records = records;
    report.last_sequence = last;
    report.cut_bytes = cut;
    Ok(report)
}

/// Checks a copied directory as a start would: (snapshot sequence, records, last sequence,
/// bytes cut from a torn log tail).
fn check(dest: &Path) -> Result<(u64, u64, u64, u64), String> {
    let snapshot_path: PathBuf = dest.join(crate::snapshot::FILE_NAME);
    let snapshot = crate::snapshot::Snapshot::open(&snapshot_path)
        .map_err(|e| format!("the copied key table does not load: {e}"))?;
    let header = snapshot.header();
    let (_, replay) =
        crate::delta::DeltaLog::open(&dest.join(crate::delta::FILE_NAME), header.sequence)
            .map_err(|e| {
                format!("the copied delta log does not replay after the copied snapshot: {e}")
            })?;
    let cut = replay.cut.as_ref().map_or(0, |(_, dropped, _)| *dropped);
    Ok((
        header.sequence,
        header.record_count,
        replay.last_sequence,
        cut,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_copied_before_the_snapshot_and_the_optional_files_after() {
        let directory = tempfile::tempdir().unwrap();
        for name in ["audit.log.2", "audit.log.10", "audit.log.1", "audit.log.x"] {
            std::fs::write(directory.path().join(name), b"").unwrap();
        }
        let order: Vec<String> = plan(directory.path()).into_iter().map(|(n, _)| n).collect();
        let at = |name: &str| order.iter().position(|n| n == name).unwrap();
        assert!(at("pepper") < at("deltas.log"));
        assert!(at("deltas.log") < at("snapshot.kws"));
        assert!(at("snapshot.kws") < at("audit.log.1"));
        assert!(at("audit.log.1") < at("audit.log.2") && at("audit.log.2") < at("audit.log.10"));
        assert!(at("audit.log.10") < at("audit.log"));
        assert!(!order.contains(&"audit.log.x".to_string()));
    }

    #[test]
    fn a_backup_goes_only_into_a_new_or_empty_directory() {
        let directory = tempfile::tempdir().unwrap();
        let source = directory.path().join("data");
        crate::datadir::DataDir::open_or_create(&source).unwrap();
        let dest = directory.path().join("copy");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("x"), b"").unwrap();
        let error = backup(&source, &dest).unwrap_err();
        assert!(error.contains("is not empty"), "{error}");
        let error = backup(&dest, &directory.path().join("other")).unwrap_err();
        assert!(error.contains("not a keyward data directory"), "{error}");
    }
}
