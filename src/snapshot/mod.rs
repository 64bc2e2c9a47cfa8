//! The snapshot: the immutable, memory-mapped key table every shard reads.
//!
//! File layout, format version 2 (all integers little-endian; the full spec is in
//! docs/FORMATS.md):
//!
//! ```text
//! offset size field
//! 0      8    magic "KWSNAP\r\n"
//! 8      4    format version (2)
//! 12     4    header bytes (320)
//! 16     8    delta sequence included
//! 24     8    record count
//! 32     8    body bytes
//! 40     8    created, unix seconds
//! 48     4    section count (6)
//! 52     4    zero
//! 56     240  per section, in file order: end offset in the body (u64), BLAKE3 of its bytes (32)
//! 296    4    CRC-32 of header bytes 0..296
//! 300    20   zero
//! 320    ...  body: rkyv 0.8 archive of `TableBody`, 64-bit relative pointers, root at the end
//! ```
//!
//! The body's sections follow each other in the order of [`SECTIONS`]: the 64-byte hot records
//! (one cache line each, sorted by key id), the id index and the imported-key index (buckets of
//! eight 8-byte slots, one cache line each), the interned dictionaries (policies, scope sets,
//! allowlists, tenant and scope names), the cold strings (names, idempotency keys, times past
//! 2106), and rkyv's root. Each section carries its own digest, so a damaged one is named.
//! Everything is checked once when the file is mapped (digests on every core, beside the rkyv
//! validation and the table's own invariants); lookups afterwards access it without
//! re-validating. Version 1 files are refused with the command that upgrades them ([`v1`]).

mod check;
pub(crate) mod lookup;
pub mod v1;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rkyv::{Archive, Serialize};

use crate::record::{RecordError, UnixSeconds};

pub const MAGIC: [u8; 8] = *b"KWSNAP\r\n";
pub const FORMAT_VERSION: u32 = 2;
pub const HEADER_BYTES: usize = 320;
/// The file name of the live snapshot inside a data directory.
pub const FILE_NAME: &str = "snapshot.kws";
/// Most records one snapshot holds (record indices are u32 and u32::MAX marks an empty slot).
pub const RECORDS_MAX: usize = 1 << 30;
/// Sentinel record index of an empty slot.
pub(crate) const EMPTY: u32 = u32::MAX;
/// Slots in one index bucket: 8 × 8 bytes, one cache line.
pub const BUCKET_SLOTS: usize = 8;
/// Highest share of an index's slots in use, in percent, when it is built: at 80 % a few keys
/// in a hundred overflow their home bucket (`keyward-ctl table stats` shows how many).
pub const INDEX_LOAD_PERCENT_MAX: usize = 80;
/// A hot-record time field holding this value means "past 2106: the exact value is in the
/// record's strings entry".
pub const TIME_WIDE: u32 = u32::MAX;
/// Every this many records, a name is stored whole; between, each is front-coded against the
/// previous record's (generated and machine-made names share long prefixes).
pub const NAME_RESTART_RECORDS: usize = 16;
/// Policy flags: bit 0 revoked, bit 1 public visibility, bit 2 imported; the rest are zero.
pub const FLAG_REVOKED: u32 = 1;
pub const FLAG_PUBLIC: u32 = 2;
pub const FLAG_IMPORTED: u32 = 4;
pub const FLAGS_KNOWN: u32 = FLAG_REVOKED | FLAG_PUBLIC | FLAG_IMPORTED;

/// The body's sections, in file order.
pub const SECTIONS: [&str; 6] = [
    "records",
    "id_index",
    "fingerprint_index",
    "dictionaries",
    "strings",
    "root",
];
const SECTION_TABLE_AT: usize = 56;
const SECTION_ENTRY_BYTES: usize = 40;
const HEADER_CRC_AT: usize = SECTION_TABLE_AT + SECTIONS.len() * SECTION_ENTRY_BYTES;

const _: () = assert!(HEADER_BYTES % 64 == 0, "records must start on a cache line");
const _: () = assert!(HEADER_CRC_AT + 4 <= HEADER_BYTES);
const _: () = assert!(RECORDS_MAX <= EMPTY as usize);
const _: () = assert!(std::mem::size_of::<ArchivedRecord>() == 64);
const _: () = assert!(std::mem::size_of::<ArchivedBucket>() == 64);

/// A key's hot record: all a verify reads of it, one cache line. Strings, scope sets and
/// allowlists are shared through `policy`; what only `inspect`/`list` need is in the strings
/// section at `strings`.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Record {
    pub id: u64,
    /// Keyed BLAKE3 of the secret.
    pub hash: [u8; 32],
    /// Index into `policies`: tenant, scope set, allowlist, status/visibility/kind flags.
    pub policy: u32,
    /// Unix seconds, or [`TIME_WIDE`].
    pub not_before: u32,
    /// Unix seconds (0: never), or [`TIME_WIDE`].
    pub expires: u32,
    /// Unix seconds, or [`TIME_WIDE`]. Not read by a verify: it fills what would be padding.
    pub created: u32,
    /// Offset of the record's entry in `strings`.
    pub strings: u64,
}

/// One index slot: the high 32 bits of the key's hash, and the record's index ([`EMPTY`]: free).
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Slot {
    pub tag: u32,
    pub record: u32,
}

/// Eight slots, one cache line. A key lives in its home bucket, or (when that is full) in the
/// next one that is not; slots fill from the front, so a free slot ends a probe.
#[derive(Archive, Serialize, Clone, Copy, Debug)]
#[rkyv(derive(Debug))]
pub struct Bucket {
    pub slots: [Slot; BUCKET_SLOTS],
}

pub const EMPTY_BUCKET: Bucket = Bucket {
    slots: [Slot {
        tag: 0,
        record: EMPTY,
    }; BUCKET_SLOTS],
};

/// What many keys share, interned once: tenant, scope set, allowlist and flags.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub struct Policy {
    pub tenant: u32,
    pub scope_set: u32,
    pub allowlist: u32,
    pub flags: u32,
}

/// A set of scopes: `scope_members[start..start + len]`, indices into `scopes` in the order the
/// key lists them.
/// `bitmap` has bit i set for each member i < 64, so most membership tests read no list.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ScopeSet {
    pub bitmap: u64,
    pub start: u32,
    pub len: u32,
}

/// A run of `ranges`: one allowlist.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

/// A client-address range as stored: 16-byte (IPv4-mapped) network and prefix length.
#[derive(Archive, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub struct StoredRange {
    pub network: [u8; 16],
    pub prefix_len: u8,
}

/// The archived root. Fields are written in this order, which is the sections' order.
#[derive(Archive, Serialize, Debug)]
pub struct TableBody {
    /// Sorted by id, strictly increasing.
    pub records: Vec<Record>,
    /// Key id → record.
    pub id_index: Vec<Bucket>,
    /// Imported key's fingerprint → record; sized for the imported keys only.
    pub fingerprint_index: Vec<Bucket>,
    pub policies: Vec<Policy>,
    pub scope_sets: Vec<ScopeSet>,
    pub scope_members: Vec<u32>,
    pub allowlists: Vec<Span>,
    pub ranges: Vec<StoredRange>,
    /// Sorted, unique; may hold the empty tenant.
    pub tenants: Vec<String>,
    /// Sorted, unique.
    pub scopes: Vec<String>,
    /// Per record, in record order, back to back: bytes of the name shared with the previous
    /// record's (u8; 0 every [`NAME_RESTART_RECORDS`]th record), the rest of the name (u8
    /// length, bytes), the idempotency key (u8 length, bytes), and when a time field of the
    /// record is [`TIME_WIDE`]: created, not before, expires (u64 each).
    pub strings: Vec<u8>,
}

/// Why a snapshot could not be built, written or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: file is {bytes} bytes, shorter than the {HEADER_BYTES}-byte header (truncated?)"
    )]
    TooShort { path: PathBuf, bytes: u64 },
    #[error("{path}: not a keyward snapshot (bad magic)")]
    Magic { path: PathBuf },
    #[error("{path}: snapshot format version {found} is not supported (this build reads {FORMAT_VERSION}); it was written by a newer keyward")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: snapshot format version {found} is older than this build reads ({FORMAT_VERSION}); with the server stopped, run `keyward-ctl table upgrade {path}` (keeps every key), then start again")]
    OldVersion { path: PathBuf, found: u32 },
    #[error("{path}: header checksum mismatch (corrupted header)")]
    HeaderChecksum { path: PathBuf },
    #[error(
        "{path}: body is {found} bytes but the header says {expected} (truncated or extended file)"
    )]
    Length {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{path}: body checksum mismatch (corrupted file)")]
    BodyChecksum { path: PathBuf },
    #[error("{path}: section `{section}` checksum mismatch (corrupted file, bytes {start}..{end} of the body)")]
    SectionChecksum {
        path: PathBuf,
        section: &'static str,
        start: u64,
        end: u64,
    },
    #[error("{path}: archive does not validate: {detail}")]
    Archive { path: PathBuf, detail: String },
    #[error("{path}: table invariant broken: {detail}")]
    Invariant { path: PathBuf, detail: String },
    #[error("record {id}: {source}")]
    Record { id: u64, source: RecordError },
    #[error("key id {0} appears twice")]
    DuplicateId(u64),
    #[error("imported key of record {second} has the same fingerprint as record {first}; re-import one of them")]
    DuplicateFingerprint { first: u64, second: u64 },
    #[error("{count} records exceed the limit of {RECORDS_MAX}")]
    TooManyRecords { count: usize },
    #[error("could not serialize the table: {0}")]
    Serialize(String),
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One body section: where it ends (its start is the previous one's end) and its digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Section {
    pub end: u64,
    pub digest: [u8; 32],
}

/// The fixed-size header in front of the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub sequence: u64,
    pub record_count: u64,
    pub body_bytes: u64,
    pub created: UnixSeconds,
    pub sections: [Section; SECTIONS.len()],
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[12..16].copy_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
        bytes[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.record_count.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.body_bytes.to_le_bytes());
        bytes[40..48].copy_from_slice(&self.created.0.to_le_bytes());
        bytes[48..52].copy_from_slice(&(SECTIONS.len() as u32).to_le_bytes());
        for (i, section) in self.sections.iter().enumerate() {
            let at = SECTION_TABLE_AT + i * SECTION_ENTRY_BYTES;
            bytes[at..at + 8].copy_from_slice(&section.end.to_le_bytes());
            bytes[at + 8..at + 40].copy_from_slice(&section.digest);
        }
        let crc = crc32fast::hash(&bytes[0..HEADER_CRC_AT]);
        bytes[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Parses and checks a header; `path` only names the file in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Header, SnapshotError> {
        let path = path.to_path_buf();
        let too_short = |path| SnapshotError::TooShort {
            path,
            bytes: bytes.len() as u64,
        };
        if bytes.len() < 12 {
            return Err(too_short(path));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        if bytes[0..8] != MAGIC {
            return Err(SnapshotError::Magic { path });
        }
        let version = u32_at(8);
        if version < FORMAT_VERSION {
            return Err(SnapshotError::OldVersion {
                path,
                found: version,
            });
        }
        if version != FORMAT_VERSION {
            return Err(SnapshotError::Version {
                path,
                found: version,
            });
        }
        if bytes.len() < HEADER_BYTES {
            return Err(too_short(path));
        }
        let reserved_zero = bytes[52..56]
            .iter()
            .chain(&bytes[HEADER_CRC_AT + 4..HEADER_BYTES])
            .all(|&b| b == 0);
        if u32_at(HEADER_CRC_AT) != crc32fast::hash(&bytes[0..HEADER_CRC_AT])
            || u32_at(12) as usize != HEADER_BYTES
            || u32_at(48) as usize != SECTIONS.len()
            || !reserved_zero
        {
            return Err(SnapshotError::HeaderChecksum { path });
        }
        let mut sections = [Section::default(); SECTIONS.len()];
        for (i, section) in sections.iter_mut().enumerate() {
            let at = SECTION_TABLE_AT + i * SECTION_ENTRY_BYTES;
            section.end = u64_at(at);
            section.digest = bytes[at + 8..at + 40].try_into().unwrap();
        }
        let body_bytes = u64_at(32);
        let ordered = sections.windows(2).all(|pair| pair[0].end <= pair[1].end);
        if !ordered || sections[SECTIONS.len() - 1].end != body_bytes {
            return Err(SnapshotError::Invariant {
                path,
                detail: "section ends are not in order or do not end with the body".into(),
            });
        }
        Ok(Header {
            sequence: u64_at(16),
            record_count: u64_at(24),
            body_bytes,
            created: UnixSeconds(u64_at(40)),
            sections,
        })
    }

    /// Section `index`'s byte range in the body.
    pub fn section_range(&self, index: usize) -> std::ops::Range<usize> {
        let start = if index == 0 {
            0
        } else {
            self.sections[index - 1].end
        };
        start as usize..self.sections[index].end as usize
    }
}

#[inline]
pub(crate) fn slot_hash(key: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&key.to_le_bytes())
}

/// A key's home bucket (the hash's low half scaled to the bucket count: any count works) and
/// its tag (the high half).
#[inline]
pub(crate) fn home(key: u64, buckets: usize) -> (usize, u32) {
    let hash = slot_hash(key);
    let bucket = ((hash & 0xffff_ffff) * buckets as u64) >> 32;
    (bucket as usize, (hash >> 32) as u32)
}

/// How many buckets an index of `keys` keys gets: a load of at most 0.8, at least one bucket.
pub(crate) fn bucket_count(keys: usize) -> usize {
    (keys * 100)
        .div_ceil(BUCKET_SLOTS * INDEX_LOAD_PERCENT_MAX)
        .max(1)
}

/// BLAKE3 of a byte range, hashed on every core (blake3's rayon mode: the digest is the same as
/// a one-thread hash).
pub(crate) fn body_digest(body: &[u8]) -> [u8; 32] {
    *blake3::Hasher::new()
        .update_rayon(body)
        .finalize()
        .as_bytes()
}

/// Serializes records into snapshot bytes (header + body), in memory: for tests, benchmarks and
/// small tables. Files are written with [`crate::table_writer::TableWriter`], which this uses.
pub fn encode(
    records: &[crate::record::KeyRecord],
    sequence: u64,
    created: UnixSeconds,
) -> Result<Vec<u8>, SnapshotError> {
    crate::table_writer::encode(records, sequence, created)
}

/// Writes a snapshot atomically: a temporary file beside the target, fsync, rename, fsync of
/// the directory. A crash leaves either the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let directory = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temporary = directory.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("snapshot"),
        std::process::id()
    ));
    let result = (|| {
        let mut file = crate::datadir::create_private(&temporary).map_err(io_error(&temporary))?;
        file.write_all(bytes).map_err(io_error(&temporary))?;
        file.sync_all().map_err(io_error(&temporary))?;
        fs::rename(&temporary, path).map_err(io_error(path))?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Makes a rename into `path`'s directory durable (fsync of the directory).
pub(crate) fn sync_parent(path: &Path) -> Result<(), SnapshotError> {
    crate::datadir::sync_parent(path).map_err(io_error(crate::datadir::parent_directory(path)))
}

/// A validated, mapped snapshot. Shared read-only by every shard (`Arc<Snapshot>`).
pub struct Snapshot {
    map: memmap2::Mmap,
    header: Header,
    path: PathBuf,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("path", &self.path)
            .field("header", &self.header)
            .finish()
    }
}

impl Snapshot {
    /// Maps and fully validates a snapshot file.
    pub fn open(path: &Path) -> Result<Arc<Snapshot>, SnapshotError> {
        let file = File::open(path).map_err(io_error(path))?;
        let bytes = file.metadata().map_err(io_error(path))?.len();
        if bytes < 12 {
            return Err(SnapshotError::TooShort {
                path: path.to_path_buf(),
                bytes,
            });
        }
        // SAFETY: the file is never modified in place (new snapshots are new files renamed over
        // the old name), and the data directory is locked against other keyward processes.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(io_error(path))?;
        let header = Header::decode(&map, path)?;
        let found = map.len() as u64 - HEADER_BYTES as u64;
        if found != header.body_bytes {
            return Err(SnapshotError::Length {
                path: path.to_path_buf(),
                expected: header.body_bytes,
                found,
            });
        }
        check::check_body(&map[HEADER_BYTES..], &header, path)?;
        Ok(Arc::new(Snapshot {
            map,
            header,
            path: path.to_path_buf(),
        }))
    }

    /// The whole file as mapped (header and body): what a replicated node publishes for
    /// others to start from.
    pub fn file_bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The archived table. Validated once in `open`.
    #[inline]
    pub fn body(&self) -> &ArchivedTableBody {
        // SAFETY: `open` ran `rkyv::access` (full validation) over exactly these bytes, and the
        // mapping is immutable for the life of `self`.
        unsafe { rkyv::access_unchecked::<ArchivedTableBody>(&self.map[HEADER_BYTES..]) }
    }
}

#[cfg(test)]
mod tests;
