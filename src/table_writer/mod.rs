//! Writing a snapshot in bounded memory. Records are pushed one at a time, in id order: each
//! becomes a 64-byte hot record, spooled to a temporary file beside the output, and a cold
//! strings entry, kept in memory (names average a dozen bytes). Tenants, scope sets, allowlists
//! and their combinations (policies) are interned as they come. At the end the two indexes are
//! built from the ids and imported fingerprints kept on the way, and the archive is serialized
//! straight into the output file, reading the spool once and digesting each section as it goes
//! out. So memory is the indexes, the strings, the ids and the interned
//! dictionaries — all parts of the file, about a third of it — whatever the key count.
//!
//! [`encode`] runs the same writer with the records held in memory, for tests and small tables.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{self, File};
use std::hash::Hash;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::credential::fingerprint;
use crate::record::{visibility_to_u8, KeyKind, KeyRecord, KeyStatus, UnixSeconds};
use crate::snapshot::{
    bucket_count, home, io_error, sync_parent, Bucket, Policy, Record, ScopeSet, Slot,
    SnapshotError, Span, StoredRange, EMPTY, EMPTY_BUCKET, FLAG_IMPORTED, FLAG_PUBLIC,
    FLAG_REVOKED, HEADER_BYTES, NAME_RESTART_RECORDS, RECORDS_MAX, TIME_WIDE,
};

mod body;

use body::{spooled, Parts, RecordSource, SpooledRecords};

/// Where the hot records wait for the end: a spool file, or memory ([`encode`]).
enum Spool {
    File { path: PathBuf, out: BufWriter<File> },
    Memory(Vec<Record>),
}

/// Values interned in order of first use.
struct Interner<K> {
    index: HashMap<K, u32>,
    values: Vec<K>,
}

impl<K: Hash + Eq + Clone> Interner<K> {
    fn new() -> Interner<K> {
        Interner {
            index: HashMap::new(),
            values: Vec::new(),
        }
    }

    fn intern(&mut self, value: K) -> u32 {
        if let Some(&at) = self.index.get(&value) {
            return at;
        }
        let at = self.values.len() as u32;
        self.index.insert(value.clone(), at);
        self.values.push(value);
        at
    }
}

/// A snapshot being written: push every record in id order, then [`TableWriter::finish`].
pub struct TableWriter {
    path: PathBuf,
    spool: Spool,
    tenants: Vec<String>,
    scopes: Vec<String>,
    policies: Interner<Policy>,
    scope_sets: Interner<Vec<u32>>,
    allowlists: Interner<Vec<StoredRange>>,
    strings: Vec<u8>,
    /// The last record's name, which the next one's is front-coded against.
    previous_name: String,
    ids: Vec<u64>,
    /// (fingerprint, record index) of each imported key.
    imported: Vec<(u64, u32)>,
}

impl TableWriter {
    /// Starts a snapshot at `path`, whose records name only these tenants and scopes.
    pub fn create(
        path: &Path,
        tenants: Vec<String>,
        scopes: Vec<String>,
    ) -> Result<TableWriter, SnapshotError> {
        let spool_path = sibling(path, "spool");
        let spool = crate::datadir::create_private(&spool_path).map_err(io_error(&spool_path))?;
        Ok(TableWriter::with_spool(
            path,
            Spool::File {
                path: spool_path,
                out: BufWriter::with_capacity(1 << 20, spool),
            },
            tenants,
            scopes,
        ))
    }

    fn with_spool(
        path: &Path,
        spool: Spool,
        mut tenants: Vec<String>,
        mut scopes: Vec<String>,
    ) -> TableWriter {
        tenants.sort();
        tenants.dedup();
        scopes.sort();
        scopes.dedup();
        TableWriter {
            path: path.to_path_buf(),
            spool,
            tenants,
            scopes,
            policies: Interner::new(),
            scope_sets: Interner::new(),
            allowlists: Interner::new(),
            strings: Vec::new(),
            previous_name: String::new(),
            ids: Vec::new(),
            imported: Vec::new(),
        }
    }

    /// Adds the next record; its id must be above the previous one's.
    pub fn push(&mut self, record: &KeyRecord) -> Result<(), SnapshotError> {
        record.validate().map_err(|source| SnapshotError::Record {
            id: record.id.0,
            source,
        })?;
        if let Some(&last) = self.ids.last() {
            if record.id.0 == last {
                return Err(SnapshotError::DuplicateId(last));
            }
            if record.id.0 < last {
                return Err(SnapshotError::Serialize(format!(
                    "record {} comes after record {last}: records must be pushed in id order",
                    record.id.0
                )));
            }
        }
        if self.ids.len() >= RECORDS_MAX {
            return Err(SnapshotError::TooManyRecords {
                count: self.ids.len() + 1,
            });
        }
        let index_of = |dictionary: &[String], name: &str| {
            dictionary
                .binary_search_by(|entry| entry.as_str().cmp(name))
                .ok()
                .map(|at| at as u32)
        };
        let unknown = |name: &str| {
            SnapshotError::Serialize(format!(
                "record {} names `{name}`, which the writer was not given",
                record.id.0
            ))
        };
        let tenant =
            index_of(&self.tenants, &record.tenant).ok_or_else(|| unknown(&record.tenant))?;
        let members = record
            .scopes
            .iter()
            .map(|scope| index_of(&self.scopes, scope).ok_or_else(|| unknown(scope)))
            .collect::<Result<Vec<u32>, _>>()?;
        let ranges = record
            .allow
            .iter()
            .map(|c| StoredRange {
                network: c.network,
                prefix_len: c.prefix_len,
            })
            .collect();
        let mut flags = 0;
        if record.status == KeyStatus::Revoked {
            flags |= FLAG_REVOKED;
        }
        if visibility_to_u8(record.visibility) == 1 {
            flags |= FLAG_PUBLIC;
        }
        if record.kind == KeyKind::Imported {
            flags |= FLAG_IMPORTED;
        }
        let policy = Policy {
            tenant,
            scope_set: self.scope_sets.intern(members),
            allowlist: self.allowlists.intern(ranges),
            flags,
        };
        let hot = Record {
            id: record.id.0,
            hash: record.hash,
            policy: self.policies.intern(policy),
            not_before: narrow(record.not_before.0),
            expires: narrow(expires_of(record)),
            created: narrow(record.created.0),
            strings: self.strings.len() as u64,
        };
        self.push_strings(record, &hot);
        let index = self.ids.len() as u32;
        match &mut self.spool {
            Spool::File { path, out } => out.write_all(&spooled(&hot)).map_err(io_error(path))?,
            Spool::Memory(records) => records.push(hot),
        }
        self.ids.push(record.id.0);
        if record.kind == KeyKind::Imported {
            self.imported.push((fingerprint(&record.hash), index));
        }
        Ok(())
    }

    /// The record's cold entry: name (front-coded), idempotency key, and its exact times when a
    /// hot field could not hold one.
    fn push_strings(&mut self, record: &KeyRecord, hot: &Record) {
        let shared = if self.ids.len() % NAME_RESTART_RECORDS == 0 {
            0
        } else {
            shared_prefix(&self.previous_name, &record.name)
        };
        let suffix = &record.name.as_bytes()[shared..];
        self.strings.push(shared as u8);
        for bytes in [suffix, record.idempotency_key.as_bytes()] {
            self.strings.push(bytes.len() as u8);
            self.strings.extend_from_slice(bytes);
        }
        self.previous_name.clone_from(&record.name);
        if [hot.created, hot.not_before, hot.expires].contains(&TIME_WIDE) {
            for time in [record.created.0, record.not_before.0, expires_of(record)] {
                self.strings.extend_from_slice(&time.to_le_bytes());
            }
        }
    }

    /// Builds the indexes, writes the file (atomically: a temporary file, fsync, rename, fsync
    /// of the directory) and returns its size in bytes.
    pub fn finish(self, sequence: u64, created: UnixSeconds) -> Result<u64, SnapshotError> {
        let path = self.path.clone();
        let spool_path = match &self.spool {
            Spool::File { path, .. } => Some(path.clone()),
            Spool::Memory(_) => None,
        };
        let result = self.finish_to_file(&path, sequence, created);
        if let Some(spool_path) = spool_path {
            let _ = fs::remove_file(&spool_path);
        }
        result
    }

    fn finish_to_file(
        self,
        path: &Path,
        sequence: u64,
        created: UnixSeconds,
    ) -> Result<u64, SnapshotError> {
        let (parts, source) = self.into_parts()?;
        let temporary = sibling(path, "tmp");
        let result = (|| {
            let file = crate::datadir::create_private(&temporary).map_err(io_error(&temporary))?;
            let mut out = BufWriter::with_capacity(1 << 20, &file);
            out.write_all(&[0u8; HEADER_BYTES])
                .map_err(io_error(&temporary))?;
            let (out, sections) = parts.serialize(source, out, &temporary)?;
            out.into_inner()
                .map_err(|e| io_error(&temporary)(e.into_error()))?;
            let header = parts.header(sequence, created, sections);
            file.write_all_at(&header.encode(), 0)
                .map_err(io_error(&temporary))?;
            file.sync_all().map_err(io_error(&temporary))?;
            fs::rename(&temporary, path).map_err(io_error(path))?;
            sync_parent(path)?;
            Ok(HEADER_BYTES as u64 + header.body_bytes)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        result
    }

    /// The interned tables and indexes, and where the hot records are.
    fn into_parts(self) -> Result<(Parts, RecordSource), SnapshotError> {
        let TableWriter {
            spool,
            tenants,
            scopes,
            policies,
            scope_sets,
            allowlists,
            strings,
            ids,
            mut imported,
            ..
        } = self;
        let count = ids.len();
        let id_index = build_index(ids.iter().enumerate().map(|(i, &id)| (id, i as u32)), count);
        imported.sort_unstable();
        if let Some(pair) = imported.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            let (a, b) = (pair[0].1.min(pair[1].1), pair[0].1.max(pair[1].1));
            return Err(SnapshotError::DuplicateFingerprint {
                first: ids[a as usize],
                second: ids[b as usize],
            });
        }
        let fingerprint_index = build_index(imported.iter().copied(), imported.len());
        drop((ids, imported));
        let source = match spool {
            Spool::File { path, out } => {
                out.into_inner()
                    .map_err(|e| io_error(&path)(e.into_error()))?;
                RecordSource::File(SpooledRecords {
                    path,
                    remaining: count,
                    reader: None,
                    failure: Rc::new(RefCell::new(None)),
                })
            }
            Spool::Memory(records) => RecordSource::Memory(records),
        };
        let mut members = Vec::new();
        let sets = scope_sets
            .values
            .iter()
            .map(|list| {
                let set = ScopeSet {
                    bitmap: list
                        .iter()
                        .filter(|&&m| m < 64)
                        .fold(0u64, |bits, &m| bits | 1 << m),
                    start: members.len() as u32,
                    len: list.len() as u32,
                };
                members.extend_from_slice(list);
                set
            })
            .collect();
        let mut ranges = Vec::new();
        let lists = allowlists
            .values
            .iter()
            .map(|list| {
                let span = Span {
                    start: ranges.len() as u32,
                    len: list.len() as u32,
                };
                ranges.extend_from_slice(list);
                span
            })
            .collect();
        Ok((
            Parts {
                record_count: count,
                id_index,
                fingerprint_index,
                policies: policies.values,
                scope_sets: sets,
                scope_members: members,
                allowlists: lists,
                ranges,
                tenants,
                scopes,
                strings,
            },
            source,
        ))
    }
}

/// Serializes `records` into snapshot bytes (header + body) in memory, through the writer.
pub fn encode(
    records: &[KeyRecord],
    sequence: u64,
    created: UnixSeconds,
) -> Result<Vec<u8>, SnapshotError> {
    if records.len() > RECORDS_MAX {
        return Err(SnapshotError::TooManyRecords {
            count: records.len(),
        });
    }
    let mut sorted: Vec<&KeyRecord> = records.iter().collect();
    sorted.sort_by_key(|record| record.id);
    let tenants = sorted.iter().map(|r| r.tenant.clone()).collect();
    let scopes = sorted
        .iter()
        .flat_map(|r| r.scopes.iter().cloned())
        .collect();
    let mut writer =
        TableWriter::with_spool(Path::new(""), Spool::Memory(Vec::new()), tenants, scopes);
    for record in sorted {
        writer.push(record)?;
    }
    let (parts, source) = writer.into_parts()?;
    let (body, sections) = parts.serialize(source, Vec::new(), Path::new("memory"))?;
    let header = parts.header(sequence, created, sections);
    let mut bytes = Vec::with_capacity(HEADER_BYTES + body.len());
    bytes.extend_from_slice(&header.encode());
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// How many leading bytes two names share (both at most 128 bytes, so it fits a u8).
fn shared_prefix(previous: &str, name: &str) -> usize {
    previous
        .bytes()
        .zip(name.bytes())
        .take_while(|(a, b)| a == b)
        .count()
}

/// Seconds as a hot record holds them: [`TIME_WIDE`] for what does not fit below it.
fn narrow(seconds: u64) -> u32 {
    u32::try_from(seconds).unwrap_or(TIME_WIDE)
}

/// The stored expiry: 0 for never (so an expiry at 0 is kept as 1).
fn expires_of(record: &KeyRecord) -> u64 {
    record.expires.map_or(0, |e| e.0.max(1))
}

/// An index over `(key, record)` pairs, `count` of them: each key in the first bucket with a
/// free slot from its home on.
fn build_index(keys: impl Iterator<Item = (u64, u32)>, count: usize) -> Vec<Bucket> {
    let buckets = bucket_count(count);
    let mut index = vec![EMPTY_BUCKET; buckets];
    for (key, record) in keys {
        let (mut at, tag) = home(key, buckets);
        loop {
            if let Some(slot) = index[at].slots.iter_mut().find(|s| s.record == EMPTY) {
                *slot = Slot { tag, record };
                break;
            }
            at = if at + 1 == buckets { 0 } else { at + 1 };
        }
    }
    index
}

/// A path beside `path` for a temporary file of this process.
fn sibling(path: &Path, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("snapshot");
    path.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{Hasher, Prefixes};
    use crate::keyset;
    use crate::snapshot::{self, Snapshot};

    /// Writes `records` (in id order) through a writer given exactly their names.
    fn write_all(
        path: &Path,
        records: &[KeyRecord],
        now: UnixSeconds,
    ) -> Result<u64, SnapshotError> {
        let tenants = records.iter().map(|r| r.tenant.clone()).collect();
        let scopes = records.iter().flat_map(|r| r.scopes.clone()).collect();
        let mut writer = TableWriter::create(path, tenants, scopes)?;
        for record in records {
            writer.push(record)?;
        }
        writer.finish(7, now)
    }

    #[test]
    fn a_streamed_table_is_the_encoded_table_byte_for_byte() {
        let now = UnixSeconds(1_800_000_000);
        let set = keyset::generate(5000, &Hasher::new(&[9; 32]), &Prefixes::default(), now);
        let mut records = set.records;
        records[10].idempotency_key = "an idempotency key longer than eight bytes".into();
        records[11].name = String::new();
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(snapshot::FILE_NAME);
        let bytes = write_all(&path, &records, now).unwrap();
        let streamed = std::fs::read(&path).unwrap();
        assert_eq!(streamed.len() as u64, bytes);
        assert_eq!(streamed, snapshot::encode(&records, 7, now).unwrap());
        let opened = Snapshot::open(&path).unwrap();
        assert_eq!(opened.records().collect::<Vec<_>>(), records);
        let leftovers: Vec<_> = std::fs::read_dir(directory.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");
    }

    #[test]
    fn records_out_of_order_or_naming_unknown_names_are_refused() {
        let now = UnixSeconds(1_800_000_000);
        let set = keyset::generate(3, &Hasher::new(&[9; 32]), &Prefixes::default(), now);
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(snapshot::FILE_NAME);
        let tenants: Vec<String> = set.records.iter().map(|r| r.tenant.clone()).collect();
        let scopes: Vec<String> = set.records.iter().flat_map(|r| r.scopes.clone()).collect();
        let mut writer = TableWriter::create(&path, tenants.clone(), scopes.clone()).unwrap();
        writer.push(&set.records[1]).unwrap();
        assert!(matches!(
            writer.push(&set.records[1]),
            Err(SnapshotError::DuplicateId(_))
        ));
        let error = writer.push(&set.records[0]).unwrap_err().to_string();
        assert!(error.contains("id order"), "{error}");
        let mut stranger = set.records[2].clone();
        stranger.tenant = "not given".into();
        let error = writer.push(&stranger).unwrap_err().to_string();
        assert!(error.contains("`not given`"), "{error}");
    }

    #[test]
    fn two_imported_keys_with_one_fingerprint_are_refused_by_id() {
        let now = UnixSeconds(1_800_000_000);
        let set = keyset::generate(40, &Hasher::new(&[9; 32]), &Prefixes::default(), now);
        let imported: Vec<&KeyRecord> = set
            .records
            .iter()
            .filter(|r| r.kind == KeyKind::Imported)
            .collect();
        assert!(imported.len() >= 2);
        let (first, second) = (imported[0].id.0, imported[1].id.0);
        let mut records = set.records.clone();
        let hash = imported[0].hash;
        records.iter_mut().find(|r| r.id.0 == second).unwrap().hash = hash;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(snapshot::FILE_NAME);
        match write_all(&path, &records, now) {
            Err(SnapshotError::DuplicateFingerprint {
                first: a,
                second: b,
            }) => {
                assert_eq!((a, b), (first, second))
            }
            other => panic!("expected a duplicate fingerprint, got {other:?}"),
        }
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(directory.path()).unwrap().count(), 0);
    }

    #[test]
    fn seventy_thousand_tenants_and_five_thousand_scopes_round_trip() {
        let now = UnixSeconds(1_800_000_000);
        let base = keyset::generate(1, &Hasher::new(&[9; 32]), &Prefixes::default(), now)
            .records
            .remove(0);
        let records: Vec<KeyRecord> = (0..70_000u64)
            .map(|i| KeyRecord {
                id: crate::credential::KeyId(i + 1),
                tenant: format!("tenant-{i:05}"),
                scopes: (0..3)
                    .map(|k| format!("scope-{:04}", (i * 3 + k) % 5000))
                    .collect(),
                name: format!("key {i}"),
                ..base.clone()
            })
            .collect();
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(snapshot::FILE_NAME);
        write_all(&path, &records, now).unwrap();
        let opened = Snapshot::open(&path).unwrap();
        let stats = opened.stats();
        assert_eq!((stats.tenants, stats.scopes), (70_000, 5000));
        assert!(opened.records().eq(records.iter().cloned()));
    }
}
