//! The audit trail: `audit.log` in the data directory, one JSON object per line, each line
//! holding the BLAKE3 hash of the line before it, so an edited, removed or inserted line breaks
//! the chain where it happened (docs/FORMATS.md, "audit.log").
//!
//! The control plane writes it in the group commit: a change's line is appended and fsynced in
//! the same round as its delta, before the delta and before the answer, so an acknowledged
//! change always has its line. Refused requests and reads get lines of their own. When the
//! current file reaches the rotation size it is renamed `audit.log.N` (N counting up from 1)
//! and a new `audit.log` continues the chain: its first line holds the hash of the last line of
//! the file before.
//!
//! A chain proves nothing about its own end: whoever can write the file can cut lines off the
//! end. The hash of the last line (`head`) is therefore shown by `keyward-ctl audit verify` and
//! STATS, for an operator to record elsewhere.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::datadir::hex;

pub const FILE_NAME: &str = "audit.log";
/// The `prev` of the very first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest line read back (an import of 1000 keys writes about 25 KiB).
pub const LINE_BYTES_MAX: usize = 1024 * 1024;

/// One line of the trail. Fields appear in this order; absent ones are left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Line number across every file of the trail, from 1.
    #[serde(default)]
    pub n: u64,
    /// UTC, RFC 3339 with milliseconds: sorts as text.
    pub time: String,
    /// The admin token's name, `self-service` (a key's holder on the verify port), `verify`
    /// (a security event seen by the shards), `keyward` (the server itself), or `unknown`
    /// (a wrong token).
    pub actor: String,
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<u64>,
    /// Every key of a change over more than one key (an import).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `ok`, or the error code's name (PROTOCOL.md), or for a security event the status.
    pub outcome: String,
    /// The control connection's peer address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The delta sequence a change was committed as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// BLAKE3 of the previous line's bytes (without its newline), 64 hex digits.
    #[serde(default)]
    pub prev: String,
}

impl Entry {
    /// An entry stamped with the current time.
    pub fn now(actor: &str, op: &str, outcome: &str) -> Entry {
        Entry {
            time: rfc3339(SystemTime::now()),
            actor: actor.to_string(),
            op: op.to_string(),
            outcome: outcome.to_string(),
            ..Entry::default()
        }
    }
}

/// `time` as UTC RFC 3339 with milliseconds, e.g. `2026-11-30T16:43:06.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

fn line_hash(line: &[u8]) -> String {
    hex(blake3::hash(line).as_bytes())
}

/// Why the trail could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: its last line cannot be read ({problem}); refusing to start, since the trail could not be continued. Run `keyward-ctl audit verify`, then move the file aside (e.g. to audit.damaged) to start a new chain from the file before it")]
    Damaged { path: PathBuf, problem: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The trail's files, oldest first: `audit.log.1`, `audit.log.2`, …, then `audit.log`.
pub fn files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut rotated = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = name
            .strip_prefix(FILE_NAME)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            rotated.push(number);
        }
    }
    rotated.sort_unstable();
    let mut files: Vec<PathBuf> = rotated
        .into_iter()
        .map(|n| dir.join(format!("{FILE_NAME}.{n}")))
        .collect();
    let current = dir.join(FILE_NAME);
    if current.exists() {
        files.push(current);
    }
    Ok(files)
}

/// The last complete line of `path` (bytes, without newline) and the length of the file up to
/// and including it; `None` when it has no complete line.
fn last_line(path: &Path) -> io::Result<Option<(Vec<u8>, u64)>> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    let window = length.min(2 * LINE_BYTES_MAX as u64);
    file.seek(SeekFrom::Start(length - window))?;
    let mut tail = Vec::with_capacity(window as usize);
    file.read_to_end(&mut tail)?;
    let Some(end) = tail.iter().rposition(|&b| b == b'\n') else {
        return Ok(None);
    };
    let start = tail[..end]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    let kept = length - window + end as u64 + 1;
    Ok(Some((tail[start..end].to_vec(), kept)))
}

/// What opening the trail found.
#[derive(Debug, Default)]
pub struct Opened {
    /// Bytes of a torn last line (a crash in the middle of a write) that were cut.
    pub torn_bytes: u64,
}

/// Appends to the trail; owned by the control plane's committer.
#[derive(Debug)]
pub struct AuditWriter {
    dir: PathBuf,
    file: File,
    bytes: u64,
    next_n: u64,
    prev: String,
    rotate_bytes: u64,
}

impl AuditWriter {
    /// Opens (or starts) the trail in `dir`, continuing the chain from its last line. A torn
    /// last line is cut; a last line that is whole but not an entry refuses.
    pub fn open(dir: &Path, rotate_bytes: u64) -> Result<(AuditWriter, Opened), AuditError> {
        let path = dir.join(FILE_NAME);
        let mut opened = Opened::default();
        let mut found = None;
        for file in files(dir).map_err(io_error(dir))?.iter().rev() {
            let last = last_line(file).map_err(io_error(file))?;
            if file == &path {
                let length = fs::metadata(file).map_err(io_error(file))?.len();
                let kept = last.as_ref().map_or(0, |(_, kept)| *kept);
                if kept < length {
                    opened.torn_bytes = length - kept;
                    let handle = OpenOptions::new()
                        .write(true)
                        .open(file)
                        .map_err(io_error(file))?;
                    handle.set_len(kept).map_err(io_error(file))?;
                    handle.sync_all().map_err(io_error(file))?;
                }
            }
            if let Some((line, _)) = last {
                let entry: Entry =
                    serde_json::from_slice(&line).map_err(|e| AuditError::Damaged {
                        path: file.clone(),
                        problem: e.to_string(),
                    })?;
                found = Some((entry.n, line_hash(&line)));
                break;
            }
        }
        let (last_n, prev) = found.unwrap_or((0, GENESIS.to_string()));
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error(&path))?;
        let bytes = file.metadata().map_err(io_error(&path))?.len();
        Ok((
            AuditWriter {
                dir: dir.to_path_buf(),
                file,
                bytes,
                next_n: last_n + 1,
                prev,
                rotate_bytes,
            },
            opened,
        ))
    }

    /// The hash of the last line written: the chain's head.
    pub fn head(&self) -> &str {
        &self.prev
    }

    /// Lines written so far, across every file (the last line's number).
    pub fn lines(&self) -> u64 {
        self.next_n - 1
    }

    /// Appends `entries` (numbering and chaining them) in one write, makes them durable, and
    /// rotates the file once it has reached the rotation size.
    pub fn append(&mut self, entries: Vec<Entry>) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(256 * entries.len());
        for mut entry in entries {
            entry.n = self.next_n;
            entry.prev = std::mem::take(&mut self.prev);
            let line = serde_json::to_vec(&entry).expect("audit entries serialize");
            self.prev = line_hash(&line);
            self.next_n += 1;
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
        self.file.write_all(&out)?;
        self.file.sync_data()?;
        self.bytes += out.len() as u64;
        if self.bytes >= self.rotate_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = files(&self.dir)?
            .iter()
            .filter_map(|p| p.extension()?.to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let current = self.dir.join(FILE_NAME);
        fs::rename(&current, self.dir.join(format!("{FILE_NAME}.{next}")))?;
        self.file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&current)?;
        File::open(&self.dir)?.sync_all()?;
        self.bytes = 0;
        Ok(())
    }
}

/// One line read back, with where it was.
#[derive(Debug)]
pub struct Line {
    pub file: PathBuf,
    /// 1-based line number within `file`.
    pub line: u64,
    pub entry: Entry,
}

/// The first place the chain breaks.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {problem}", file = .file.display())]
pub struct Broken {
    pub file: PathBuf,
    pub line: u64,
    /// The trail's line number (`n`) of the bad line, when known.
    pub n: Option<u64>,
    pub problem: String,
}

/// What a whole chain holds.
#[derive(Debug, Default, Serialize)]
pub struct Verified {
    pub files: usize,
    pub lines: u64,
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// Hash of the last line: record it elsewhere to detect lines cut off the end.
    pub head: String,
}

/// Reads every line of the trail in order, checking the chain, and hands each to `visit`.
/// Stops at the first break. The first line of the oldest file present is trusted as it is
/// (older files may have been archived), unless it is line 1, whose `prev` must be
/// [`GENESIS`].
pub fn walk(dir: &Path, mut visit: impl FnMut(&Line)) -> Result<Verified, Broken> {
    let broken = |file: &Path, line: u64, n: Option<u64>, problem: String| Broken {
        file: file.to_path_buf(),
        line,
        n,
        problem,
    };
    let files = files(dir).map_err(|e| broken(dir, 0, None, e.to_string()))?;
    let mut verified = Verified {
        files: files.len(),
        ..Verified::default()
    };
    // The previous line: its n, its hash, and where it was.
    let mut previous: Option<(u64, String, PathBuf, u64)> = None;
    for path in &files {
        let file = File::open(path).map_err(|e| broken(path, 0, None, e.to_string()))?;
        let mut reader = BufReader::new(file);
        let mut bytes = Vec::new();
        let mut number = 0;
        loop {
            bytes.clear();
            let read = (&mut reader)
                .take(LINE_BYTES_MAX as u64 + 1)
                .read_until(b'\n', &mut bytes)
                .map_err(|e| broken(path, number + 1, None, e.to_string()))?;
            if read == 0 {
                break;
            }
            number += 1;
            if bytes.last() != Some(&b'\n') {
                let problem = if bytes.len() > LINE_BYTES_MAX {
                    format!("longer than {LINE_BYTES_MAX} bytes")
                } else {
                    "the last line is torn (no newline): a crash cut it, or it was edited".into()
                };
                return Err(broken(path, number, None, problem));
            }
            bytes.pop();
            let entry: Entry = serde_json::from_slice(&bytes)
                .map_err(|e| broken(path, number, None, format!("not an audit entry: {e}")))?;
            match &previous {
                Some((n, hash, previous_file, previous_line)) => {
                    if entry.n != n + 1 {
                        return Err(broken(
                            path,
                            number,
                            Some(entry.n),
                            format!("line number {} follows {n}: lines are missing, repeated or were edited", entry.n),
                        ));
                    }
                    if &entry.prev != hash {
                        // The line before no longer hashes to what this one recorded: that is
                        // the changed line (or this one's `prev` was edited).
                        return Err(broken(
                            previous_file,
                            *previous_line,
                            Some(*n),
                            format!(
                                "this line (n = {n}) was changed: the next line ({}:{}) recorded a different hash for it",
                                path.display(),
                                number
                            ),
                        ));
                    }
                }
                None => {
                    if entry.n == 1 && entry.prev != GENESIS {
                        return Err(broken(
                            path,
                            number,
                            Some(1),
                            "the first line's prev is not the genesis hash".into(),
                        ));
                    }
                    verified.first = Some(entry.n);
                }
            }
            let hash = line_hash(&bytes);
            let n = entry.n;
            visit(&Line {
                file: path.clone(),
                line: number,
                entry,
            });
            verified.lines += 1;
            previous = Some((n, hash, path.clone(), number));
        }
    }
    if let Some((n, hash, _, _)) = previous {
        verified.last = Some(n);
        verified.head = hash;
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(count: usize) -> Vec<Entry> {
        (0..count)
            .map(|i| {
                let mut entry = Entry::now("admin", "revoke", "ok");
                entry.key = Some(i as u64);
                entry
            })
            .collect()
    }

    #[test]
    fn time_is_rfc3339_utc() {
        let at = UNIX_EPOCH + std::time::Duration::from_millis(1_796_056_986_123);
        assert_eq!(rfc3339(at), "2026-11-30T16:43:06.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn the_chain_continues_across_reopening_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = AuditWriter::open(dir.path(), 2000).unwrap();
        for _ in 0..10 {
            writer.append(entries(3)).unwrap();
        }
        drop(writer);
        let (mut writer, opened) = AuditWriter::open(dir.path(), 2000).unwrap();
        assert_eq!(opened.torn_bytes, 0);
        writer.append(entries(2)).unwrap();
        let files = files(dir.path()).unwrap();
        assert!(files.len() >= 3, "rotated: {files:?}");
        let mut seen = Vec::new();
        let verified = walk(dir.path(), |line| seen.push(line.entry.n)).unwrap();
        assert_eq!(verified.lines, 32);
        assert_eq!(seen, (1..=32).collect::<Vec<_>>());
        assert_eq!(verified.head, writer.head());
    }

    #[test]
    fn an_edited_byte_names_its_line_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = AuditWriter::open(dir.path(), u64::MAX).unwrap();
        writer.append(entries(5)).unwrap();
        drop(writer);
        let path = dir.path().join(FILE_NAME);
        let text = fs::read_to_string(&path).unwrap();
        let edited = text.replacen("\"key\":2", "\"key\":7", 1);
        fs::write(&path, &edited).unwrap();
        let error = walk(dir.path(), |_| {}).unwrap_err();
        assert_eq!((error.line, error.n), (3, Some(3)), "{error}");
        fs::write(&path, format!("{text}{{\"n\":6,\"ti")).unwrap();
        let (writer, opened) = AuditWriter::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(opened.torn_bytes, 10);
        assert_eq!(writer.lines(), 5);
        assert_eq!(walk(dir.path(), |_| {}).unwrap().lines, 5);
    }
}
