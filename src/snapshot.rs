//! The snapshot: the immutable, memory-mapped key table every shard reads.
//!
//! File layout (all integers little-endian; the full spec is in docs/FORMATS.md):
//!
//! ```text
//! offset size field
//! 0      8    magic "KWSNAP\r\n"
//! 8      4    format version (1)
//! 12     4    header bytes (96)
//! 16     8    delta sequence included
//! 24     8    record count
//! 32     8    body bytes
//! 40     8    created, unix seconds
//! 48     32   BLAKE3 of the body
//! 80     4    CRC-32 of header bytes 0..80
//! 84     12   zero
//! 96     ...  body: rkyv 0.8 archive of `TableBody`, 64-bit relative pointers, root at the end
//! ```
//!
//! The body is checked once when the file is mapped (BLAKE3 digest, then rkyv validation, then
//! the table's own invariants); lookups afterwards access it without re-validating.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rkyv::{Archive, Serialize};

use crate::credential::{fingerprint, KeyId, SecretHash};
use crate::record::{visibility_to_u8, KeyKind, KeyRecord, RecordError, UnixSeconds};

pub const MAGIC: [u8; 8] = *b"KWSNAP\r\n";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 96;
/// The file name of the live snapshot inside a data directory.
pub const FILE_NAME: &str = "snapshot.kws";
/// Most records one snapshot holds (slot indices are u32, and the table keeps at least half
/// its slots empty).
pub const RECORDS_MAX: usize = 1 << 30;
/// Sentinel record index of an empty slot.
pub(crate) const EMPTY: u32 = u32::MAX;

const _: () = assert!(
    HEADER_BYTES % 16 == 0,
    "the archive after the header must stay aligned"
);
const _: () = assert!(RECORDS_MAX * 2 <= EMPTY as usize);

/// One open-addressing slot: a key (key id, or imported fingerprint) and the record's index.
#[derive(Archive, Serialize, Clone, Copy, Debug)]
pub struct Slot {
    pub key: u64,
    pub record: u32,
}

/// A client-address range as stored: 16-byte (IPv4-mapped) network and prefix length.
#[derive(Archive, Serialize, Clone, Copy, Debug)]
#[rkyv(derive(Debug))]
pub struct StoredRange {
    pub network: [u8; 16],
    pub prefix_len: u8,
}

/// A record as stored: strings replaced by indices into the table's dictionaries.
#[derive(Archive, Serialize, Clone, Debug)]
#[rkyv(derive(Debug))]
pub struct StoredRecord {
    pub id: u64,
    pub hash: [u8; 32],
    pub tenant: u32,
    pub name: String,
    pub scopes: Vec<u32>,
    pub created: u64,
    pub not_before: u64,
    /// 0: never.
    pub expires: u64,
    pub status: u8,
    pub visibility: u8,
    pub kind: u8,
    pub allow: Vec<StoredRange>,
    /// The idempotency key the record was issued under; empty when none.
    pub idempotency_key: String,
}

/// The archived root.
#[derive(Archive, Serialize, Debug)]
pub struct TableBody {
    /// Key id → record; length a power of two, at most half full.
    pub id_slots: Vec<Slot>,
    /// Imported-key fingerprint → record; length a power of two, at most half full.
    pub fingerprint_slots: Vec<Slot>,
    /// Sorted by id.
    pub records: Vec<StoredRecord>,
    /// Sorted, unique.
    pub scopes: Vec<String>,
    /// Sorted, unique; index 0 may be the empty tenant.
    pub tenants: Vec<String>,
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
    #[error("{path}: snapshot format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    Version { path: PathBuf, found: u32 },
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

/// The fixed-size header in front of the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub sequence: u64,
    pub record_count: u64,
    pub body_bytes: u64,
    pub created: UnixSeconds,
    pub body_digest: [u8; 32],
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
        bytes[48..80].copy_from_slice(&self.body_digest);
        let crc = crc32fast::hash(&bytes[0..80]);
        bytes[80..84].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Parses and checks a header; `path` only names the file in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Header, SnapshotError> {
        let path = path.to_path_buf();
        if bytes.len() < HEADER_BYTES {
            return Err(SnapshotError::TooShort {
                path,
                bytes: bytes.len() as u64,
            });
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        if bytes[0..8] != MAGIC {
            return Err(SnapshotError::Magic { path });
        }
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(SnapshotError::Version {
                path,
                found: version,
            });
        }
        let reserved_zero = bytes[84..HEADER_BYTES].iter().all(|&b| b == 0);
        if u32_at(80) != crc32fast::hash(&bytes[0..80])
            || u32_at(12) as usize != HEADER_BYTES
            || !reserved_zero
        {
            return Err(SnapshotError::HeaderChecksum { path });
        }
        Ok(Header {
            sequence: u64_at(16),
            record_count: u64_at(24),
            body_bytes: u64_at(32),
            created: UnixSeconds(u64_at(40)),
            body_digest: bytes[48..80].try_into().unwrap(),
        })
    }
}

/// Builds the archived body from records. O(n log n); runs on the control plane or offline.
pub fn build_body(records: &[KeyRecord]) -> Result<TableBody, SnapshotError> {
    if records.len() > RECORDS_MAX {
        return Err(SnapshotError::TooManyRecords {
            count: records.len(),
        });
    }
    for record in records {
        record.validate().map_err(|source| SnapshotError::Record {
            id: record.id.0,
            source,
        })?;
    }
    let mut sorted: Vec<&KeyRecord> = records.iter().collect();
    sorted.sort_by_key(|record| record.id);
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0].id == pair[1].id) {
        return Err(SnapshotError::DuplicateId(pair[0].id.0));
    }

    let mut tenants: Vec<String> = sorted.iter().map(|r| r.tenant.clone()).collect();
    tenants.sort();
    tenants.dedup();
    let mut scopes: Vec<String> = sorted
        .iter()
        .flat_map(|r| r.scopes.iter().cloned())
        .collect();
    scopes.sort();
    scopes.dedup();
    let stored: Vec<StoredRecord> = sorted
        .iter()
        .map(|record| stored_record(record, &tenants, &scopes))
        .collect();

    let id_slots = build_slots(stored.iter().map(|r| r.id));
    let imported = stored.iter().map(|r| {
        if r.kind == KeyKind::Imported as u8 {
            fingerprint(&r.hash)
        } else {
            0
        }
    });
    let fingerprint_slots = build_slots(imported);
    for (index, record) in stored.iter().enumerate() {
        if record.kind != KeyKind::Imported as u8 {
            continue;
        }
        let found = probe(&fingerprint_slots, fingerprint(&record.hash)).map(|slot| slot.record);
        if found != Some(index as u32) {
            let first = stored[found.expect("fingerprint inserted") as usize].id;
            return Err(SnapshotError::DuplicateFingerprint {
                first,
                second: record.id,
            });
        }
    }
    Ok(TableBody {
        id_slots,
        fingerprint_slots,
        records: stored,
        scopes,
        tenants,
    })
}

/// A record as stored, its tenant and scopes replaced by their indices in the (sorted, unique)
/// dictionaries, which must hold them.
pub(crate) fn stored_record(
    record: &KeyRecord,
    tenants: &[String],
    scopes: &[String],
) -> StoredRecord {
    let index_of = |dictionary: &[String], name: &str| -> u32 {
        dictionary
            .binary_search_by(|entry| entry.as_str().cmp(name))
            .expect("name in dictionary") as u32
    };
    StoredRecord {
        id: record.id.0,
        hash: record.hash,
        tenant: index_of(tenants, &record.tenant),
        name: record.name.clone(),
        scopes: record.scopes.iter().map(|s| index_of(scopes, s)).collect(),
        created: record.created.0,
        not_before: record.not_before.0,
        expires: record.expires.map_or(0, |e| e.0.max(1)),
        status: record.status as u8,
        visibility: visibility_to_u8(record.visibility),
        kind: record.kind as u8,
        allow: record
            .allow
            .iter()
            .map(|c| StoredRange {
                network: c.network,
                prefix_len: c.prefix_len,
            })
            .collect(),
        idempotency_key: record.idempotency_key.clone(),
    }
}

/// Open-addressing table over `keys` (0 = not inserted). Keys that repeat keep their first
/// record; the caller detects that.
pub(crate) fn build_slots(keys: impl ExactSizeIterator<Item = u64>) -> Vec<Slot> {
    let capacity = (keys.len() * 2).next_power_of_two().max(16);
    let mask = capacity - 1;
    let mut slots = vec![
        Slot {
            key: 0,
            record: EMPTY
        };
        capacity
    ];
    for (index, key) in keys.enumerate() {
        if key == 0 {
            continue;
        }
        let mut at = slot_hash(key) as usize & mask;
        loop {
            if slots[at].record == EMPTY {
                slots[at] = Slot {
                    key,
                    record: index as u32,
                };
                break;
            }
            if slots[at].key == key {
                break;
            }
            at = (at + 1) & mask;
        }
    }
    slots
}

fn probe(slots: &[Slot], key: u64) -> Option<&Slot> {
    let mask = slots.len() - 1;
    let mut at = slot_hash(key) as usize & mask;
    for _ in 0..slots.len() {
        let slot = &slots[at];
        if slot.record == EMPTY {
            return None;
        }
        if slot.key == key {
            return Some(slot);
        }
        at = (at + 1) & mask;
    }
    None
}

#[inline]
pub(crate) fn slot_hash(key: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&key.to_le_bytes())
}

/// BLAKE3 of a snapshot body, hashed on every core (blake3's rayon mode: the digest is the same
/// as a one-thread hash). It was half of start-up at 1 M keys.
pub(crate) fn body_digest(body: &[u8]) -> [u8; 32] {
    *blake3::Hasher::new()
        .update_rayon(body)
        .finalize()
        .as_bytes()
}

/// Serializes records into snapshot bytes (header + body).
pub fn encode(
    records: &[KeyRecord],
    sequence: u64,
    created: UnixSeconds,
) -> Result<Vec<u8>, SnapshotError> {
    let body = build_body(records)?;
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&body)
        .map_err(|e| SnapshotError::Serialize(e.to_string()))?;
    let header = Header {
        sequence,
        record_count: records.len() as u64,
        body_bytes: archive.len() as u64,
        created,
        body_digest: body_digest(&archive),
    };
    let mut bytes = Vec::with_capacity(HEADER_BYTES + archive.len());
    bytes.extend_from_slice(&header.encode());
    bytes.extend_from_slice(&archive);
    Ok(bytes)
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
        let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
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
    let directory = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(directory)
        .and_then(|d| d.sync_all())
        .map_err(io_error(directory))
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
        if bytes < HEADER_BYTES as u64 {
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
        let body = &map[HEADER_BYTES..];
        // The digest (on every core) and the structural checks run at once: rkyv's validation
        // is safe on any bytes, and a digest mismatch is still the error reported first.
        let (digest, checked) = std::thread::scope(|scope| {
            let digest = scope.spawn(|| body_digest(body));
            let checked = rkyv::access::<ArchivedTableBody, rkyv::rancor::Error>(body)
                .map_err(|e| SnapshotError::Archive {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })
                .and_then(|archived| {
                    check_invariants(archived, &header).map_err(|detail| SnapshotError::Invariant {
                        path: path.to_path_buf(),
                        detail,
                    })
                });
            (
                digest.join().expect("the digest thread does not panic"),
                checked,
            )
        });
        if digest != header.body_digest {
            return Err(SnapshotError::BodyChecksum {
                path: path.to_path_buf(),
            });
        }
        checked?;
        Ok(Arc::new(Snapshot {
            map,
            header,
            path: path.to_path_buf(),
        }))
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

    /// Finds a record by key id.
    #[inline]
    pub fn find(&self, id: KeyId) -> Option<&ArchivedStoredRecord> {
        let body = self.body();
        let slot = probe_archived(&body.id_slots, id.0)?;
        body.records.get(slot as usize)
    }

    /// Asks the CPU to start loading the hash slot where `id` would be found. A hint only: it
    /// changes nothing and cannot fault.
    #[inline]
    pub fn prefetch_slot(&self, id: KeyId) {
        let slots = &self.body().id_slots;
        let at = slot_hash(id.0) as usize & slots.len().wrapping_sub(1);
        if let Some(slot) = slots.get(at) {
            prefetch(slot as *const ArchivedSlot as *const u8, 1);
        }
    }

    /// Asks the CPU to start loading `id`'s record (its slot should be cached by now, see
    /// [`Snapshot::prefetch_slot`]).
    #[inline]
    pub fn prefetch_record(&self, id: KeyId) {
        // A miss prefetches its decoy, as the verify will load it: hit and miss stay alike.
        if let Ok(record) | Err(Some(record)) = self.find_or_decoy(id) {
            let lines = std::mem::size_of::<ArchivedStoredRecord>().div_ceil(64);
            prefetch(record as *const ArchivedStoredRecord as *const u8, lines);
        }
    }

    /// Asks the CPU to start loading `id`'s scope list, which the archive keeps apart from the
    /// record (its record should be cached by now, see [`Snapshot::prefetch_record`]). Only a
    /// key that exists has one to load; a valid answer lists its scopes.
    #[inline]
    pub fn prefetch_scopes(&self, id: KeyId) {
        if let Some(record) = self.find(id) {
            let scopes = record.scopes.as_slice();
            if !scopes.is_empty() {
                prefetch(scopes.as_ptr() as *const u8, 1);
            }
        }
    }

    /// Looks `id` up; when it is absent, returns instead a decoy record (`Err`) picked by the id
    /// *and by the empty slot the probe ended on*. Checking the presented credential against the
    /// decoy loads a record as a hit does, and since the decoy's address depends on the slot just
    /// read, its load waits for that read as a hit's record load does: a miss and a hit with a
    /// wrong secret cost the same (`benches/timing.rs` measures it). `Err(None)`: an empty table.
    #[inline]
    pub fn find_or_decoy(
        &self,
        id: KeyId,
    ) -> Result<&ArchivedStoredRecord, Option<&ArchivedStoredRecord>> {
        let body = self.body();
        self.hit_or_decoy(probe_or_empty(&body.id_slots, id.0), id.0)
    }

    /// [`Snapshot::find_or_decoy`] for an imported key's fingerprint.
    #[inline]
    pub fn find_fingerprint_or_decoy(
        &self,
        hash: &SecretHash,
    ) -> Result<&ArchivedStoredRecord, Option<&ArchivedStoredRecord>> {
        let body = self.body();
        let key = fingerprint(hash);
        self.hit_or_decoy(probe_or_empty(&body.fingerprint_slots, key), key)
    }

    #[inline]
    fn hit_or_decoy(
        &self,
        probed: Result<u32, u64>,
        key: u64,
    ) -> Result<&ArchivedStoredRecord, Option<&ArchivedStoredRecord>> {
        let records = &self.body().records;
        match probed {
            Ok(index) => records.get(index as usize).ok_or(None),
            Err(empty_slot_key) => {
                // A multiply to mix and a multiply-shift to scale: a few cycles, where a hash
                // and a division would make the miss measurably slower than a hit.
                let mixed = (key ^ DECOY_SALT ^ std::hint::black_box(empty_slot_key))
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let pick = ((u128::from(mixed) * records.len() as u128) >> 64) as usize;
                Err(records.get(pick))
            }
        }
    }

    /// Finds an imported key's record by the fingerprint of its keyed hash.
    #[inline]
    pub fn find_fingerprint(&self, hash: &SecretHash) -> Option<&ArchivedStoredRecord> {
        let body = self.body();
        let slot = probe_archived(&body.fingerprint_slots, fingerprint(hash))?;
        body.records.get(slot as usize)
    }

    pub fn tenant_name(&self, index: u32) -> &str {
        self.body()
            .tenants
            .get(index as usize)
            .map_or("", |t| t.as_str())
    }

    pub fn scope_name(&self, index: u32) -> &str {
        self.body()
            .scopes
            .get(index as usize)
            .map_or("", |s| s.as_str())
    }

    /// The index of a scope name in the dictionary, if any key carries it.
    pub fn scope_index(&self, name: &[u8]) -> Option<u32> {
        let scopes = &self.body().scopes;
        scopes
            .binary_search_by(|entry| entry.as_bytes().cmp(name))
            .ok()
            .map(|i| i as u32)
    }

    /// The index of a tenant name in the dictionary, if any key belongs to it.
    pub fn tenant_index(&self, name: &[u8]) -> Option<u32> {
        let tenants = &self.body().tenants;
        tenants
            .binary_search_by(|entry| entry.as_bytes().cmp(name))
            .ok()
            .map(|i| i as u32)
    }

    /// Every record, decoded into owned form (for inspection tools and compaction).
    pub fn records(&self) -> impl Iterator<Item = KeyRecord> + '_ {
        self.body()
            .records
            .iter()
            .map(|stored| self.decode_record(stored))
    }

    pub fn decode_record(&self, stored: &ArchivedStoredRecord) -> KeyRecord {
        let expires = stored.expires.to_native();
        KeyRecord {
            id: KeyId(stored.id.to_native()),
            kind: KeyKind::from_u8(stored.kind).unwrap_or(KeyKind::Native),
            hash: stored.hash,
            tenant: self.tenant_name(stored.tenant.to_native()).to_string(),
            name: stored.name.as_str().to_string(),
            scopes: stored
                .scopes
                .iter()
                .map(|s| self.scope_name(s.to_native()).to_string())
                .collect(),
            created: UnixSeconds(stored.created.to_native()),
            not_before: UnixSeconds(stored.not_before.to_native()),
            expires: (expires != 0).then_some(UnixSeconds(expires)),
            status: crate::record::KeyStatus::from_u8(stored.status)
                .unwrap_or(crate::record::KeyStatus::Revoked),
            visibility: crate::record::visibility_from_u8(stored.visibility)
                .unwrap_or(crate::credential::Visibility::Secret),
            allow: stored
                .allow
                .iter()
                .map(|r| crate::record::Cidr {
                    network: r.network,
                    prefix_len: r.prefix_len,
                })
                .collect(),
            idempotency_key: stored.idempotency_key.as_str().to_string(),
        }
    }
}

/// Prefetches `lines` cache lines from `at` (no-op where the CPU offers no hint).
#[inline]
fn prefetch(at: *const u8, lines: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in 0..lines {
        // SAFETY: a prefetch is a hint: it never faults and reads nothing into the program,
        // whatever the address; `wrapping_add` keeps the pointer arithmetic defined.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                at.wrapping_add(line * 64) as *const i8,
                std::arch::x86_64::_MM_HINT_T0,
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, lines);
}

/// Mixed into a key before it picks a decoy record, so the decoy is not the record its slot
/// would hold.
const DECOY_SALT: u64 = 0x6b65_7977_6172_6421;

/// Like [`probe_archived`], but a miss returns the key field of the empty slot it ended on
/// (whatever it holds), so that a caller can make a later load depend on that read.
#[inline]
fn probe_or_empty(slots: &[ArchivedSlot], key: u64) -> Result<u32, u64> {
    let mask = slots.len().wrapping_sub(1);
    let mut at = slot_hash(key) as usize & mask;
    for _ in 0..slots.len() {
        let Some(slot) = slots.get(at) else { break };
        let record = slot.record.to_native();
        if record == EMPTY {
            return Err(slot.key.to_native());
        }
        if slot.key.to_native() == key {
            return Ok(record);
        }
        at = (at + 1) & mask;
    }
    Err(0)
}

#[inline]
fn probe_archived(slots: &[ArchivedSlot], key: u64) -> Option<u32> {
    let mask = slots.len().wrapping_sub(1);
    let mut at = slot_hash(key) as usize & mask;
    for _ in 0..slots.len() {
        let slot = slots.get(at)?;
        let record = slot.record.to_native();
        if record == EMPTY {
            return None;
        }
        if slot.key.to_native() == key {
            return Some(record);
        }
        at = (at + 1) & mask;
    }
    None
}

/// The table's own invariants, beyond what rkyv validation checks. O(n), once per load.
fn check_invariants(body: &ArchivedTableBody, header: &Header) -> Result<(), String> {
    let records = body.records.len();
    if records as u64 != header.record_count {
        return Err(format!(
            "header says {} records, body has {records}",
            header.record_count
        ));
    }
    for (name, slots) in [
        ("id", &body.id_slots),
        ("fingerprint", &body.fingerprint_slots),
    ] {
        if !slots.len().is_power_of_two() || slots.len() < records * 2 {
            return Err(format!(
                "{name} slot count {} is not a power of two ≥ 2×records",
                slots.len()
            ));
        }
        if let Some(slot) = slots.iter().find(|s| {
            let record = s.record.to_native();
            record != EMPTY && record as usize >= records
        }) {
            return Err(format!(
                "{name} slot points at record {} of {records}",
                slot.record
            ));
        }
    }
    let scopes = body.scopes.len() as u32;
    let tenants = body.tenants.len() as u32;
    let mut previous = 0u64;
    for record in body.records.iter() {
        let id = record.id.to_native();
        if id <= previous {
            return Err(format!("record ids are not strictly increasing at {id}"));
        }
        previous = id;
        if record.tenant.to_native() >= tenants {
            return Err(format!(
                "record {id} names tenant {} of {tenants}",
                record.tenant
            ));
        }
        if record.scopes.iter().any(|s| s.to_native() >= scopes) {
            return Err(format!("record {id} names a scope outside the dictionary"));
        }
        if KeyKind::from_u8(record.kind).is_none()
            || crate::record::KeyStatus::from_u8(record.status).is_none()
            || crate::record::visibility_from_u8(record.visibility).is_none()
            || record.allow.iter().any(|r| r.prefix_len > 128)
        {
            return Err(format!("record {id} has an out-of-range field"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Visibility;
    use crate::record::KeyStatus;

    fn record(id: u64, kind: KeyKind) -> KeyRecord {
        KeyRecord {
            id: KeyId(id),
            kind,
            hash: *blake3::hash(&id.to_le_bytes()).as_bytes(),
            tenant: format!("tenant-{}", id % 3),
            name: format!("key {id}"),
            scopes: vec!["orders:read".into(), format!("scope-{}", id % 5)],
            created: UnixSeconds(1_700_000_000),
            not_before: UnixSeconds(1_700_000_000),
            expires: (id % 2 == 0).then_some(UnixSeconds(1_900_000_000)),
            status: KeyStatus::Active,
            visibility: Visibility::Secret,
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            idempotency_key: String::new(),
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let records: Vec<KeyRecord> = (1..=1000)
            .map(|id| {
                record(
                    id,
                    if id % 10 == 0 {
                        KeyKind::Imported
                    } else {
                        KeyKind::Native
                    },
                )
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        write_atomic(&path, &encode(&records, 7, UnixSeconds(5)).unwrap()).unwrap();
        let snapshot = Snapshot::open(&path).unwrap();
        assert_eq!(snapshot.header().sequence, 7);
        assert_eq!(snapshot.header().record_count, 1000);
        for original in &records {
            let found = snapshot.find(original.id).unwrap();
            assert_eq!(&snapshot.decode_record(found), original);
            if original.kind == KeyKind::Imported {
                let by_hash = snapshot.find_fingerprint(&original.hash).unwrap();
                assert_eq!(by_hash.id.to_native(), original.id.0);
            }
        }
        assert!(snapshot.find(KeyId(1001)).is_none());
        assert!(snapshot.find_fingerprint(&[9u8; 32]).is_none());
    }

    #[test]
    fn empty_table_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        write_atomic(&path, &encode(&[], 0, UnixSeconds(0)).unwrap()).unwrap();
        let snapshot = Snapshot::open(&path).unwrap();
        assert!(snapshot.find(KeyId(1)).is_none());
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let records = vec![record(3, KeyKind::Native), record(3, KeyKind::Native)];
        assert!(matches!(
            build_body(&records),
            Err(SnapshotError::DuplicateId(3))
        ));
    }
}
