//! The delta log: an append-only file of checksummed, sequence-numbered changes made since the
//! snapshot. A change is acknowledged only once its record is durable; on start-up the log is
//! replayed over the snapshot, and a torn or corrupt tail is cut at the last good record.
//!
//! ```text
//! file header, 16 bytes
//! 0   8  magic "KWLOG\r\n\0"
//! 8   4  format version, u32 LE (1)
//! 12  4  zero
//!
//! then records, back to back
//! 0   4  payload bytes, u32 LE (at most PAYLOAD_BYTES_MAX)
//! 4   4  CRC-32 of the payload, u32 LE
//! 8   …  payload: sequence u64 LE, kind u8, note (u16 LE length + UTF-8),
//!        record count u16 LE, records (each a full key record, see `put_record`)
//! ```
//!
//! Applying a delta means: every record it carries replaces the record with the same id (or is
//! added). Revocation, rotation and updates are all expressed that way, so replay is simple and
//! idempotent by sequence number.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::credential::{KeyId, Visibility};
use crate::record::{
    visibility_from_u8, visibility_to_u8, Cidr, KeyKind, KeyRecord, KeyStatus, UnixSeconds,
};

pub const FILE_NAME: &str = "deltas.log";
pub const MAGIC: [u8; 8] = *b"KWLOG\r\n\0";
/// Format 2 adds the sequence of the key table the log follows to the header; format 1 logs
/// (written before it) are still read, and become format 2 at the next compaction.
pub const FORMAT_VERSION: u32 = 2;
/// The header a log is written with (format 2).
pub const FILE_HEADER_BYTES: usize = 24;
/// A format 1 log's header (no sequence: the table it follows is not known).
pub const FILE_HEADER_BYTES_V1: usize = 16;
pub const RECORD_HEADER_BYTES: usize = 8;
/// Most key records in one delta (a batch import of 1000 is the largest producer).
pub const RECORDS_PER_DELTA_MAX: usize = 1000;
/// Longest delta payload: 1000 records of at most ~2.7 KiB each, plus the note.
pub const PAYLOAD_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest note (e.g. a revocation reason).
pub const NOTE_BYTES_MAX: usize = 1024;

/// What a delta did, for the audit trail and for people reading the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DeltaKind {
    Issue = 1,
    Import = 2,
    Revoke = 3,
    Rotate = 4,
    Update = 5,
}

impl DeltaKind {
    pub fn from_u8(value: u8) -> Option<DeltaKind> {
        Some(match value {
            1 => DeltaKind::Issue,
            2 => DeltaKind::Import,
            3 => DeltaKind::Revoke,
            4 => DeltaKind::Rotate,
            5 => DeltaKind::Update,
            _ => return None,
        })
    }

    /// The control operation that makes this kind of delta.
    pub fn name(self) -> &'static str {
        match self {
            DeltaKind::Issue => "issue",
            DeltaKind::Import => "import",
            DeltaKind::Revoke => "revoke",
            DeltaKind::Rotate => "rotate",
            DeltaKind::Update => "update",
        }
    }
}

/// One change: a sequence number and the full new state of every record it touches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub sequence: u64,
    pub kind: DeltaKind,
    pub note: String,
    pub records: Vec<KeyRecord>,
}

/// Why a log could not be opened or appended to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a keyward delta log (bad magic)")]
    Magic { path: PathBuf },
    #[error("{path}: delta log format version {found} is not supported (this build reads 1 and {FORMAT_VERSION})")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: this log follows the key table at sequence {follows}, but snapshot.kws is at sequence {snapshot}: the changes after {snapshot} up to {follows}, revocations included, are in neither file (an older snapshot.kws was put back beside a newer log?). Refusing to start rather than lose them: put back the snapshot.kws that goes with this log, or restore both from one backup (docs/DEPLOY.md, \"Restoring\")")]
    OlderSnapshot {
        path: PathBuf,
        follows: u64,
        snapshot: u64,
    },
    #[error("{path}: missing or empty ({bytes} bytes, shorter than its header); a new log would forget every change since the snapshot, revocations included. Restore it from backup (docs/OPERATIONS.md, \"A damaged data directory\")")]
    Empty { path: PathBuf, bytes: usize },
    #[error("{path}: damaged record at byte offset {offset} ({reason}) is followed by a valid record (sequence {next_sequence} at byte offset {next_offset}): this is corruption, not a torn tail, and cutting it would drop acknowledged changes. Refusing to start; see `keyward-ctl log check` and docs/OPERATIONS.md, \"A damaged delta log\"")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
        next_offset: u64,
        next_sequence: u64,
    },
    #[error("{path}: delta {found} follows {previous}; sequence numbers must increase by one")]
    Sequence {
        path: PathBuf,
        previous: u64,
        found: u64,
    },
}

/// Why one record's bytes do not decode (the replay treats it as the end of the good log).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("ends early")]
    Truncated,
    #[error("length {0} is over the limit")]
    Length(u32),
    #[error("checksum mismatch")]
    Checksum,
    #[error("bad field: {0}")]
    Field(&'static str),
    #[error("{0} bytes after the last field")]
    Trailing(usize),
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    debug_assert!(text.len() <= usize::from(u8::MAX));
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

/// Appends the binary form of a record (documented in docs/FORMATS.md).
pub fn put_record(out: &mut Vec<u8>, record: &KeyRecord) {
    out.extend_from_slice(&record.id.0.to_le_bytes());
    out.push(record.kind as u8);
    out.extend_from_slice(&record.hash);
    put_text(out, &record.tenant);
    put_text(out, &record.name);
    out.push(record.scopes.len() as u8);
    for scope in &record.scopes {
        put_text(out, scope);
    }
    out.extend_from_slice(&record.created.0.to_le_bytes());
    out.extend_from_slice(&record.not_before.0.to_le_bytes());
    out.extend_from_slice(&record.expires.map_or(0, |e| e.0.max(1)).to_le_bytes());
    out.push(record.status as u8);
    out.push(visibility_to_u8(record.visibility));
    out.push(record.allow.len() as u8);
    for range in &record.allow {
        out.extend_from_slice(&range.network);
        out.push(range.prefix_len);
    }
    put_text(out, &record.idempotency_key);
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], DecodeError> {
        if count > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, tail) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or(DecodeError::Truncated)?;
        self.bytes = tail;
        Ok(*head)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn text(&mut self, count: usize) -> Result<String, DecodeError> {
        let bytes = self.take(count)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Field("text is not UTF-8"))
    }
    fn short_text(&mut self) -> Result<String, DecodeError> {
        let count = usize::from(self.u8()?);
        self.text(count)
    }
}

/// Decodes one record in the form [`put_record`] writes; every byte must belong to it.
pub fn decode_record(bytes: &[u8]) -> Result<KeyRecord, DecodeError> {
    let mut reader = Reader { bytes };
    let record = read_record(&mut reader)?;
    match reader.bytes.len() {
        0 => Ok(record),
        extra => Err(DecodeError::Trailing(extra)),
    }
}

fn read_record(reader: &mut Reader<'_>) -> Result<KeyRecord, DecodeError> {
    let id = KeyId(reader.u64()?);
    let kind = KeyKind::from_u8(reader.u8()?).ok_or(DecodeError::Field("kind"))?;
    let hash: [u8; 32] = reader.array()?;
    let tenant = reader.short_text()?;
    let name = reader.short_text()?;
    let scope_count = reader.u8()?;
    let scopes = (0..scope_count)
        .map(|_| reader.short_text())
        .collect::<Result<Vec<_>, _>>()?;
    let created = UnixSeconds(reader.u64()?);
    let not_before = UnixSeconds(reader.u64()?);
    let expires = reader.u64()?;
    let status = KeyStatus::from_u8(reader.u8()?).ok_or(DecodeError::Field("status"))?;
    let visibility: Visibility =
        visibility_from_u8(reader.u8()?).ok_or(DecodeError::Field("visibility"))?;
    let range_count = reader.u8()?;
    let mut allow = Vec::with_capacity(usize::from(range_count));
    for _ in 0..range_count {
        let network: [u8; 16] = reader.array()?;
        let prefix_len = reader.u8()?;
        if prefix_len > 128 {
            return Err(DecodeError::Field("address range prefix"));
        }
        allow.push(Cidr {
            network,
            prefix_len,
        });
    }
    let idempotency_key = reader.short_text()?;
    let record = KeyRecord {
        id,
        kind,
        hash,
        tenant,
        name,
        scopes,
        created,
        not_before,
        expires: (expires != 0).then_some(UnixSeconds(expires)),
        status,
        visibility,
        allow,
        idempotency_key,
    };
    record
        .validate()
        .map_err(|_| DecodeError::Field("record out of bounds"))?;
    Ok(record)
}

/// Encodes a whole log record (length, checksum, payload).
pub fn encode(delta: &Delta) -> Vec<u8> {
    assert!(
        delta.records.len() <= RECORDS_PER_DELTA_MAX,
        "delta carries too many records"
    );
    assert!(delta.note.len() <= NOTE_BYTES_MAX, "delta note too long");
    let mut out = vec![0u8; RECORD_HEADER_BYTES];
    out.extend_from_slice(&delta.sequence.to_le_bytes());
    out.push(delta.kind as u8);
    out.extend_from_slice(&(delta.note.len() as u16).to_le_bytes());
    out.extend_from_slice(delta.note.as_bytes());
    out.extend_from_slice(&(delta.records.len() as u16).to_le_bytes());
    for record in &delta.records {
        put_record(&mut out, record);
    }
    let payload_bytes = out.len() - RECORD_HEADER_BYTES;
    assert!(payload_bytes <= PAYLOAD_BYTES_MAX);
    let crc = crc32fast::hash(&out[RECORD_HEADER_BYTES..]);
    out[0..4].copy_from_slice(&(payload_bytes as u32).to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the record at the start of `bytes`; returns it and its length in bytes.
pub fn decode(bytes: &[u8]) -> Result<(Delta, usize), DecodeError> {
    let header = bytes
        .get(..RECORD_HEADER_BYTES)
        .ok_or(DecodeError::Truncated)?;
    let payload_bytes = u32::from_le_bytes(header[0..4].try_into().unwrap());
    if payload_bytes as usize > PAYLOAD_BYTES_MAX {
        return Err(DecodeError::Length(payload_bytes));
    }
    let end = RECORD_HEADER_BYTES + payload_bytes as usize;
    let payload = bytes
        .get(RECORD_HEADER_BYTES..end)
        .ok_or(DecodeError::Truncated)?;
    if crc32fast::hash(payload) != u32::from_le_bytes(header[4..8].try_into().unwrap()) {
        return Err(DecodeError::Checksum);
    }
    let mut reader = Reader { bytes: payload };
    let sequence = reader.u64()?;
    let kind = DeltaKind::from_u8(reader.u8()?).ok_or(DecodeError::Field("delta kind"))?;
    let note_bytes = usize::from(reader.u16()?);
    if note_bytes > NOTE_BYTES_MAX {
        return Err(DecodeError::Field("note length"));
    }
    let note = reader.text(note_bytes)?;
    let count = usize::from(reader.u16()?);
    if count > RECORDS_PER_DELTA_MAX {
        return Err(DecodeError::Field("record count"));
    }
    let records = (0..count)
        .map(|_| read_record(&mut reader))
        .collect::<Result<Vec<_>, _>>()?;
    if !reader.bytes.is_empty() {
        return Err(DecodeError::Trailing(reader.bytes.len()));
    }
    Ok((
        Delta {
            sequence,
            kind,
            note,
            records,
        },
        end,
    ))
}

/// The bytes of a log that holds no delta yet, following an empty key table (sequence 0).
pub fn empty_log() -> [u8; FILE_HEADER_BYTES] {
    file_header(0)
}

/// A format 2 header: magic, version, four zero bytes, then the sequence of the key table the
/// log follows (it holds only changes after it).
fn file_header(follows: u64) -> [u8; FILE_HEADER_BYTES] {
    let mut header = [0u8; FILE_HEADER_BYTES];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&follows.to_le_bytes());
    header
}

/// A log's header, read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    /// Where the first record starts.
    pub bytes: usize,
    /// The sequence of the key table the log follows; 0 for a format 1 log (not recorded).
    pub follows: u64,
}

/// Why a header does not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than the header its version needs (`bytes` long).
    Short(usize),
    Magic,
    Version(u32),
}

/// Reads the header at the start of `bytes`.
pub fn read_header(bytes: &[u8]) -> Result<Header, HeaderError> {
    if bytes.len() < FILE_HEADER_BYTES_V1 {
        return Err(HeaderError::Short(bytes.len()));
    }
    if bytes[0..8] != MAGIC {
        return Err(HeaderError::Magic);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    match version {
        1 => Ok(Header {
            version,
            bytes: FILE_HEADER_BYTES_V1,
            follows: 0,
        }),
        2 if bytes.len() < FILE_HEADER_BYTES => Err(HeaderError::Short(bytes.len())),
        2 => Ok(Header {
            version,
            bytes: FILE_HEADER_BYTES,
            follows: u64::from_le_bytes(bytes[16..24].try_into().unwrap()),
        }),
        other => Err(HeaderError::Version(other)),
    }
}

/// What replay found in the log.
#[derive(Debug, Default)]
pub struct Replay {
    /// Deltas after `after_sequence`, in order.
    pub deltas: Vec<Delta>,
    /// Highest sequence in the log (or `after_sequence` when the log holds nothing newer).
    pub last_sequence: u64,
    /// When a torn or corrupt tail was cut: the byte offset of the cut, the bytes dropped, why.
    pub cut: Option<(u64, u64, String)>,
}

/// An open delta log, positioned for appends.
pub struct DeltaLog {
    file: File,
    path: PathBuf,
    bytes: u64,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DeltaLog {
    /// Opens the log (it must exist: a data directory's log is created with the directory),
    /// replays it, cuts a torn tail, and returns the deltas newer than `after_sequence` (the
    /// snapshot's). Damage followed by a valid record is refused, not cut.
    pub fn open(path: &Path, after_sequence: u64) -> Result<(DeltaLog, Replay), LogError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_error(path))?;
        let header = read_header(&bytes).map_err(|error| {
            let path = path.to_path_buf();
            match error {
                HeaderError::Short(bytes) => LogError::Empty { path, bytes },
                HeaderError::Magic => LogError::Magic { path },
                HeaderError::Version(found) => LogError::Version { path, found },
            }
        })?;
        // The log holds only changes after `follows`: a key table older than that would lose
        // the changes in between, which no record of the log can show (the log may be empty).
        if header.follows > after_sequence {
            return Err(LogError::OlderSnapshot {
                path: path.to_path_buf(),
                follows: header.follows,
                snapshot: after_sequence,
            });
        }
        let mut replay = Replay {
            last_sequence: after_sequence,
            ..Replay::default()
        };
        let mut at = header.bytes;
        let mut previous: Option<u64> = None;
        while at < bytes.len() {
            match decode(&bytes[at..]) {
                Ok((delta, used)) => {
                    if let Some(previous) = previous {
                        if delta.sequence != previous + 1 {
                            return Err(LogError::Sequence {
                                path: path.to_path_buf(),
                                previous,
                                found: delta.sequence,
                            });
                        }
                    }
                    previous = Some(delta.sequence);
                    if delta.sequence > after_sequence {
                        if delta.sequence != replay.last_sequence + 1 {
                            return Err(LogError::Sequence {
                                path: path.to_path_buf(),
                                previous: replay.last_sequence,
                                found: delta.sequence,
                            });
                        }
                        replay.last_sequence = delta.sequence;
                        replay.deltas.push(delta);
                    }
                    at += used;
                }
                Err(error) => {
                    if let Some((next_offset, next_sequence)) =
                        next_valid_record(&bytes, at, previous.unwrap_or(0))
                    {
                        return Err(LogError::Corrupt {
                            path: path.to_path_buf(),
                            offset: at as u64,
                            reason: error.to_string(),
                            next_offset: next_offset as u64,
                            next_sequence,
                        });
                    }
                    let dropped = (bytes.len() - at) as u64;
                    replay.cut = Some((at as u64, dropped, error.to_string()));
                    file.set_len(at as u64).map_err(io_error(path))?;
                    file.sync_all().map_err(io_error(path))?;
                    break;
                }
            }
        }
        file.seek(SeekFrom::Start(at as u64))
            .map_err(io_error(path))?;
        Ok((
            DeltaLog {
                file,
                path: path.to_path_buf(),
                bytes: at as u64,
            },
            replay,
        ))
    }

    /// Appends already-encoded records and makes them durable (one write, one fsync: callers
    /// batch concurrent changes into one call — group commit).
    pub fn append_durable(&mut self, encoded: &[u8]) -> Result<(), LogError> {
        self.file.write_all(encoded).map_err(io_error(&self.path))?;
        self.file.sync_data().map_err(io_error(&self.path))?;
        self.bytes += encoded.len() as u64;
        Ok(())
    }

    /// Bytes in the log, header included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the log with one following the key table at sequence `follows` and holding
    /// only `keep` (the deltas newer than it): written beside it, fsynced, renamed over it,
    /// directory fsynced. Always in the current format.
    pub fn rewrite(&mut self, follows: u64, keep: &[Vec<u8>]) -> Result<(), LogError> {
        let temporary = self.path.with_extension("log.tmp");
        let mut file = crate::datadir::create_private(&temporary).map_err(io_error(&temporary))?;
        let mut bytes = file_header(follows).to_vec();
        for encoded in keep {
            bytes.extend_from_slice(encoded);
        }
        file.write_all(&bytes).map_err(io_error(&temporary))?;
        file.sync_all().map_err(io_error(&temporary))?;
        std::fs::rename(&temporary, &self.path).map_err(io_error(&self.path))?;
        sync_directory(&self.path)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io_error(&self.path))?;
        file.seek(SeekFrom::End(0)).map_err(io_error(&self.path))?;
        self.file = file;
        self.bytes = bytes.len() as u64;
        Ok(())
    }
}

/// Smallest payload a record can have: sequence, kind, empty note, zero records.
const PAYLOAD_BYTES_MIN: usize = 8 + 1 + 2 + 2;

/// The first whole, checksummed record after the damaged one at `damaged` whose sequence is
/// above `previous` (the last good one): its offset and sequence. A torn tail has none, since
/// nothing was written after it. Every byte offset is tried; the cheap header checks come
/// first, so a scan of a tail of garbage is linear.
pub fn next_valid_record(bytes: &[u8], damaged: usize, previous: u64) -> Option<(usize, u64)> {
    let last_start = bytes
        .len()
        .checked_sub(RECORD_HEADER_BYTES + PAYLOAD_BYTES_MIN)?;
    (damaged + 1..=last_start).find_map(|offset| {
        let rest = &bytes[offset..];
        let (length, after) = rest.split_first_chunk::<4>()?;
        let payload_bytes = u32::from_le_bytes(*length) as usize;
        if !(PAYLOAD_BYTES_MIN..=PAYLOAD_BYTES_MAX).contains(&payload_bytes)
            || payload_bytes + RECORD_HEADER_BYTES > rest.len()
        {
            return None;
        }
        let (sequence, _) = after.get(4..)?.split_first_chunk::<8>()?;
        // At most one record per PAYLOAD_BYTES_MIN bytes follows the last good one.
        let sequence = u64::from_le_bytes(*sequence);
        if sequence <= previous || sequence - previous > bytes.len() as u64 {
            return None;
        }
        decode(rest).ok().map(|(delta, _)| (offset, delta.sequence))
    })
}

/// What `keyward-ctl log check` reports of a log: each whole record, and where damage begins.
#[derive(Debug, Default)]
pub struct LogReport {
    /// The file's header.
    pub header: Option<Header>,
    /// (byte offset, delta) for every record that decodes, in file order, past damage too.
    pub records: Vec<(u64, Delta)>,
    /// Byte offset and reason of the first damage, if any.
    pub damage: Option<(u64, String)>,
}

/// Reads a log without changing it: every whole record, including valid ones after damage.
pub fn inspect(bytes: &[u8]) -> Result<LogReport, DecodeError> {
    let header = read_header(bytes).map_err(|error| match error {
        HeaderError::Short(_) => DecodeError::Truncated,
        HeaderError::Magic => DecodeError::Field("magic"),
        HeaderError::Version(_) => DecodeError::Field("format version"),
    })?;
    let mut report = LogReport {
        header: Some(header),
        ..LogReport::default()
    };
    let mut at = header.bytes;
    let mut previous = 0;
    while at < bytes.len() {
        match decode(&bytes[at..]) {
            Ok((delta, used)) => {
                previous = delta.sequence;
                report.records.push((at as u64, delta));
                at += used;
            }
            Err(error) => {
                report.damage.get_or_insert((at as u64, error.to_string()));
                match next_valid_record(bytes, at, previous) {
                    Some((next, _)) => at = next,
                    None => break,
                }
            }
        }
    }
    Ok(report)
}

/// Makes the rename into `path`'s directory durable.
fn sync_directory(path: &Path) -> Result<(), LogError> {
    crate::datadir::sync_parent(path).map_err(io_error(crate::datadir::parent_directory(path)))
}

#[cfg(test)]
mod tests;
