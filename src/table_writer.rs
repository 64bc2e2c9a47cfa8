//! Writing a snapshot in bounded memory. Records are pushed one at a time, in id order, and
//! spooled to a temporary file beside the output; at the end the two hash tables are built
//! from the ids and imported fingerprints kept on the way (16 bytes a key), and the archive is
//! serialized straight into the output file, reading the spool twice (rkyv writes what every
//! record points to, then the records themselves), digesting it on the way.
//! So memory is the slot tables (which are in the file too), the ids, and one small resolver
//! per record, whatever the key count — where `snapshot::encode` holds every record several
//! times over (measured: 5.9x the snapshot's size at 10 M keys).
//!
//! The archive is the one `snapshot::encode` makes from the same records, byte for byte (a test
//! checks it), so readers see no difference.

use std::cell::RefCell;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rkyv::munge::munge;
use rkyv::rancor::Fallible;
use rkyv::ser::{Allocator, Writer};
use rkyv::string::ArchivedString;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize};

use crate::credential::fingerprint;
use crate::record::{KeyKind, KeyRecord, UnixSeconds};
use crate::snapshot::{
    build_slots, io_error, stored_record, sync_parent, ArchivedSlot, ArchivedStoredRecord,
    ArchivedTableBody, Header, Slot, SnapshotError, StoredRange, StoredRecord, HEADER_BYTES,
    RECORDS_MAX,
};

/// A snapshot being written: push every record in id order, then [`TableWriter::finish`].
pub struct TableWriter {
    path: PathBuf,
    spool_path: PathBuf,
    spool: BufWriter<File>,
    tenants: Vec<String>,
    scopes: Vec<String>,
    ids: Vec<u64>,
    /// Per record: its fingerprint when imported, else 0.
    fingerprints: Vec<u64>,
}

impl TableWriter {
    /// Starts a snapshot at `path`, whose records name only these tenants and scopes.
    pub fn create(
        path: &Path,
        mut tenants: Vec<String>,
        mut scopes: Vec<String>,
    ) -> Result<TableWriter, SnapshotError> {
        tenants.sort();
        tenants.dedup();
        scopes.sort();
        scopes.dedup();
        let spool_path = sibling(path, "spool");
        let spool = File::create(&spool_path).map_err(io_error(&spool_path))?;
        Ok(TableWriter {
            path: path.to_path_buf(),
            spool_path,
            spool: BufWriter::new(spool),
            tenants,
            scopes,
            ids: Vec::new(),
            fingerprints: Vec::new(),
        })
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
        let known = |dictionary: &[String], name: &str| {
            dictionary
                .binary_search_by(|entry| entry.as_str().cmp(name))
                .is_ok()
        };
        if let Some(name) = std::iter::once(&record.tenant)
            .filter(|t| !known(&self.tenants, t))
            .chain(record.scopes.iter().filter(|s| !known(&self.scopes, s)))
            .next()
        {
            return Err(SnapshotError::Serialize(format!(
                "record {} names `{name}`, which the writer was not given",
                record.id.0
            )));
        }
        let stored = stored_record(record, &self.tenants, &self.scopes);
        spool_record(&mut self.spool, &stored).map_err(io_error(&self.spool_path))?;
        self.ids.push(record.id.0);
        self.fingerprints.push(if record.kind == KeyKind::Imported {
            fingerprint(&record.hash)
        } else {
            0
        });
        Ok(())
    }

    /// Builds the hash tables, writes the file (atomically: a temporary file, fsync, rename,
    /// fsync of the directory) and returns its size in bytes.
    pub fn finish(self, sequence: u64, created: UnixSeconds) -> Result<u64, SnapshotError> {
        let TableWriter {
            path,
            spool_path,
            spool,
            tenants,
            scopes,
            ids,
            fingerprints,
        } = self;
        let result = (|| {
            spool
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(|file| file.sync_all())
                .map_err(io_error(&spool_path))?;
            let count = ids.len();
            let id_slots = build_slots(ids.iter().copied());
            let fingerprint_slots = build_slots(fingerprints.iter().copied());
            check_fingerprints(&fingerprint_slots, &fingerprints, &ids)?;
            drop((ids, fingerprints));
            let failure = Rc::new(RefCell::new(None));
            let body = StreamedBody {
                id_slots: &id_slots,
                fingerprint_slots: &fingerprint_slots,
                records: SpooledRecords {
                    path: spool_path.clone(),
                    remaining: count,
                    reader: None,
                    failure: failure.clone(),
                },
                scopes: &scopes,
                tenants: &tenants,
            };
            write_file(&path, &body, &failure, sequence, count as u64, created)
        })();
        let _ = fs::remove_file(&spool_path);
        result
    }
}

/// A path beside `path` for a temporary file of this process.
fn sibling(path: &Path, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("snapshot");
    path.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

/// Two imported keys with one fingerprint cannot both be found: refused, naming their ids.
fn check_fingerprints(
    slots: &[Slot],
    fingerprints: &[u64],
    ids: &[u64],
) -> Result<(), SnapshotError> {
    let mask = slots.len() - 1;
    for (index, &key) in fingerprints.iter().enumerate() {
        if key == 0 {
            continue;
        }
        let mut at = crate::snapshot::slot_hash(key) as usize & mask;
        while slots[at].key != key {
            at = (at + 1) & mask;
        }
        let first = slots[at].record as usize;
        if first != index {
            return Err(SnapshotError::DuplicateFingerprint {
                first: ids[first],
                second: ids[index],
            });
        }
    }
    Ok(())
}

/// Serializes `body` after a header-sized gap, digests what was written, then fills in the
/// header and moves the file into place.
fn write_file(
    path: &Path,
    body: &StreamedBody<'_>,
    failure: &RefCell<Option<io::Error>>,
    sequence: u64,
    record_count: u64,
    created: UnixSeconds,
) -> Result<u64, SnapshotError> {
    let temporary = sibling(path, "tmp");
    let result = (|| {
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .map_err(io_error(&temporary))?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        out.write_all(&[0u8; HEADER_BYTES])
            .map_err(io_error(&temporary))?;
        // The body is digested as it is written: no second pass, and no mapping of the file.
        let body_out = Digesting {
            out,
            hasher: blake3::Hasher::new(),
            written: 0,
        };
        let writer = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(
            body,
            rkyv::ser::writer::IoWriter::new(body_out),
        )
        .map_err(|e| SnapshotError::Serialize(e.to_string()))?;
        if let Some(error) = failure.borrow_mut().take() {
            return Err(io_error(&temporary)(error));
        }
        let Digesting {
            mut out,
            hasher,
            written: body_bytes,
        } = writer.into_inner();
        out.flush().map_err(io_error(&temporary))?;
        drop(out);
        let body_digest = *hasher.finalize().as_bytes();
        let header = Header {
            sequence,
            record_count,
            body_bytes,
            created,
            body_digest,
        };
        file.write_all_at(&header.encode(), 0)
            .map_err(io_error(&temporary))?;
        file.sync_all().map_err(io_error(&temporary))?;
        fs::rename(&temporary, path).map_err(io_error(path))?;
        sync_parent(path)?;
        Ok(HEADER_BYTES as u64 + body_bytes)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// A writer that digests what goes through it (the body, for the header's BLAKE3).
struct Digesting<W> {
    out: W,
    hasher: blake3::Hasher,
    written: u64,
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.out.write(bytes)?;
        self.hasher.update(&bytes[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The table body as `snapshot::TableBody` archives it, with its records read from the spool.
struct StreamedBody<'a> {
    id_slots: &'a [Slot],
    fingerprint_slots: &'a [Slot],
    records: SpooledRecords,
    scopes: &'a [String],
    tenants: &'a [String],
}

struct StreamedBodyResolver {
    id_slots: VecResolver,
    fingerprint_slots: VecResolver,
    records: VecResolver,
    scopes: VecResolver,
    tenants: VecResolver,
}

impl Archive for StreamedBody<'_> {
    type Archived = ArchivedTableBody;
    type Resolver = StreamedBodyResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        munge!(let ArchivedTableBody { id_slots, fingerprint_slots, records, scopes, tenants } = out);
        ArchivedVec::resolve_from_len(self.id_slots.len(), resolver.id_slots, id_slots);
        ArchivedVec::resolve_from_len(
            self.fingerprint_slots.len(),
            resolver.fingerprint_slots,
            fingerprint_slots,
        );
        ArchivedVec::resolve_from_len(self.records.remaining, resolver.records, records);
        ArchivedVec::resolve_from_len(self.scopes.len(), resolver.scopes, scopes);
        ArchivedVec::resolve_from_len(self.tenants.len(), resolver.tenants, tenants);
    }
}

impl<S> Serialize<S> for StreamedBody<'_>
where
    S: Fallible + Allocator + Writer + ?Sized,
    Slot: Serialize<S, Archived = ArchivedSlot>,
    StoredRecord: Serialize<S, Archived = ArchivedStoredRecord>,
    String: Serialize<S, Archived = ArchivedString>,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        // In the order of `TableBody`'s fields, as its derived serializer writes them.
        Ok(StreamedBodyResolver {
            id_slots: ArchivedVec::<ArchivedSlot>::serialize_from_slice(self.id_slots, serializer)?,
            fingerprint_slots: ArchivedVec::<ArchivedSlot>::serialize_from_slice(
                self.fingerprint_slots,
                serializer,
            )?,
            records: ArchivedVec::<ArchivedStoredRecord>::serialize_from_iter::<StoredRecord, _, _>(
                self.records.clone(),
                serializer,
            )?,
            scopes: ArchivedVec::<ArchivedString>::serialize_from_slice(self.scopes, serializer)?,
            tenants: ArchivedVec::<ArchivedString>::serialize_from_slice(self.tenants, serializer)?,
        })
    }
}

/// The spooled records, read from the start by every clone. A read error is kept in `failure`
/// (an iterator cannot return it) and fails the write once serialization is over.
struct SpooledRecords {
    path: PathBuf,
    remaining: usize,
    reader: Option<BufReader<File>>,
    failure: Rc<RefCell<Option<io::Error>>>,
}

impl Clone for SpooledRecords {
    fn clone(&self) -> SpooledRecords {
        SpooledRecords {
            path: self.path.clone(),
            remaining: self.remaining,
            reader: None,
            failure: self.failure.clone(),
        }
    }
}

impl Iterator for SpooledRecords {
    type Item = StoredRecord;

    fn next(&mut self) -> Option<StoredRecord> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let read = (|| {
            if self.reader.is_none() {
                self.reader = Some(BufReader::with_capacity(1 << 20, File::open(&self.path)?));
            }
            read_spooled(self.reader.as_mut().expect("opened"))
        })();
        Some(read.unwrap_or_else(|error| {
            self.failure.borrow_mut().get_or_insert(error);
            empty_record()
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for SpooledRecords {}

fn empty_record() -> StoredRecord {
    StoredRecord {
        id: 0,
        hash: [0; 32],
        tenant: 0,
        name: String::new(),
        scopes: Vec::new(),
        created: 0,
        not_before: 0,
        expires: 0,
        status: 0,
        visibility: 0,
        kind: 0,
        allow: Vec::new(),
        idempotency_key: String::new(),
    }
}

// The spool is private to one write: little-endian fields in `StoredRecord`'s order, strings
// and lists prefixed with a u32 length.

fn spool_record(out: &mut impl Write, record: &StoredRecord) -> io::Result<()> {
    out.write_all(&record.id.to_le_bytes())?;
    out.write_all(&record.hash)?;
    out.write_all(&record.tenant.to_le_bytes())?;
    spool_bytes(out, record.name.as_bytes())?;
    out.write_all(&(record.scopes.len() as u32).to_le_bytes())?;
    for scope in &record.scopes {
        out.write_all(&scope.to_le_bytes())?;
    }
    out.write_all(&record.created.to_le_bytes())?;
    out.write_all(&record.not_before.to_le_bytes())?;
    out.write_all(&record.expires.to_le_bytes())?;
    out.write_all(&[record.status, record.visibility, record.kind])?;
    out.write_all(&(record.allow.len() as u32).to_le_bytes())?;
    for range in &record.allow {
        out.write_all(&range.network)?;
        out.write_all(&[range.prefix_len])?;
    }
    spool_bytes(out, record.idempotency_key.as_bytes())
}

fn spool_bytes(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

fn read_spooled(input: &mut impl Read) -> io::Result<StoredRecord> {
    fn array<const N: usize>(input: &mut impl Read) -> io::Result<[u8; N]> {
        let mut bytes = [0u8; N];
        input.read_exact(&mut bytes)?;
        Ok(bytes)
    }
    fn u32_of(input: &mut impl Read) -> io::Result<u32> {
        Ok(u32::from_le_bytes(array(input)?))
    }
    fn u64_of(input: &mut impl Read) -> io::Result<u64> {
        Ok(u64::from_le_bytes(array(input)?))
    }
    fn text(input: &mut impl Read) -> io::Result<String> {
        let mut bytes = vec![0u8; u32_of(input)? as usize];
        input.read_exact(&mut bytes)?;
        String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
    let id = u64_of(input)?;
    let hash = array(input)?;
    let tenant = u32_of(input)?;
    let name = text(input)?;
    let scope_count = u32_of(input)?;
    let scopes = (0..scope_count)
        .map(|_| u32_of(input))
        .collect::<io::Result<_>>()?;
    let created = u64_of(input)?;
    let not_before = u64_of(input)?;
    let expires = u64_of(input)?;
    let [status, visibility, kind] = array(input)?;
    let allow_count = u32_of(input)?;
    let allow = (0..allow_count)
        .map(|_| {
            let network = array(input)?;
            let [prefix_len] = array(input)?;
            Ok(StoredRange {
                network,
                prefix_len,
            })
        })
        .collect::<io::Result<_>>()?;
    let idempotency_key = text(input)?;
    Ok(StoredRecord {
        id,
        hash,
        tenant,
        name,
        scopes,
        created,
        not_before,
        expires,
        status,
        visibility,
        kind,
        allow,
        idempotency_key,
    })
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
