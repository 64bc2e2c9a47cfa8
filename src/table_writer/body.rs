//! The body as it is serialized: the archive's fields in `snapshot::TableBody`'s order, the
//! hot records read back from their spool, each section digested as it goes out.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rkyv::munge::munge;
use rkyv::rancor::Fallible;
use rkyv::ser::{Allocator, Positional, Writer};
use rkyv::string::ArchivedString;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize};

use crate::record::UnixSeconds;
use crate::snapshot::{
    io_error, ArchivedBucket, ArchivedPolicy, ArchivedRecord, ArchivedScopeSet, ArchivedSpan,
    ArchivedStoredRange, ArchivedTableBody, Bucket, Header, Policy, Record, ScopeSet, Section,
    SnapshotError, Span, StoredRange, SECTIONS,
};

/// Everything of the body but the hot records.
pub(super) struct Parts {
    pub(super) record_count: usize,
    pub(super) id_index: Vec<Bucket>,
    pub(super) fingerprint_index: Vec<Bucket>,
    pub(super) policies: Vec<Policy>,
    pub(super) scope_sets: Vec<ScopeSet>,
    pub(super) scope_members: Vec<u32>,
    pub(super) allowlists: Vec<Span>,
    pub(super) ranges: Vec<StoredRange>,
    pub(super) tenants: Vec<String>,
    pub(super) scopes: Vec<String>,
    pub(super) strings: Vec<u8>,
}

impl Parts {
    /// Serializes the body into `out`, returning it and each section's end and digest.
    pub(super) fn serialize<W: Write>(
        &self,
        records: RecordSource,
        out: W,
        path: &Path,
    ) -> Result<(W, [Section; SECTIONS.len()]), SnapshotError> {
        let failure = match &records {
            RecordSource::File(spooled) => Some(spooled.failure.clone()),
            RecordSource::Memory(_) => None,
        };
        let digests = Rc::new(RefCell::new(SectionDigests::default()));
        let body = StreamedBody {
            parts: self,
            records,
            digests: digests.clone(),
        };
        let writer = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(
            &body,
            rkyv::ser::writer::IoWriter::new(Digesting {
                out,
                digests: digests.clone(),
            }),
        )
        .map_err(|e| SnapshotError::Serialize(e.to_string()))?;
        if let Some(error) = failure.and_then(|f| f.borrow_mut().take()) {
            return Err(io_error(path)(error));
        }
        let Digesting { out, .. } = writer.into_inner();
        let mut digests = digests.borrow_mut();
        let end = digests.written;
        digests.cut(end);
        let sections = digests.sections[..]
            .try_into()
            .expect("one digest per section");
        Ok((out, sections))
    }

    pub(super) fn header(
        &self,
        sequence: u64,
        created: UnixSeconds,
        sections: [Section; SECTIONS.len()],
    ) -> Header {
        Header {
            sequence,
            record_count: self.record_count as u64,
            body_bytes: sections[SECTIONS.len() - 1].end,
            created,
            sections,
        }
    }
}

/// The digest of the section being written and those of the sections before it.
#[derive(Default)]
struct SectionDigests {
    hasher: blake3::Hasher,
    written: u64,
    sections: Vec<Section>,
}

impl SectionDigests {
    /// Ends the current section at `end`, which must be all that was written.
    fn cut(&mut self, end: u64) {
        assert_eq!(end, self.written, "the serializer writes straight through");
        self.sections.push(Section {
            end,
            digest: *self.hasher.finalize().as_bytes(),
        });
        self.hasher.reset();
    }
}

/// A writer that digests what goes through it, section by section: the body is hashed as it
/// is written, with no second pass over the file.
struct Digesting<W> {
    out: W,
    digests: Rc<RefCell<SectionDigests>>,
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = self.out.write(bytes)?;
        let mut digests = self.digests.borrow_mut();
        digests.hasher.update(&bytes[..n]);
        digests.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The table body as `snapshot::TableBody` archives it, with the hot records read from their
/// source, noting where each section ends.
struct StreamedBody<'a> {
    parts: &'a Parts,
    records: RecordSource,
    digests: Rc<RefCell<SectionDigests>>,
}

struct StreamedBodyResolver {
    records: VecResolver,
    id_index: VecResolver,
    fingerprint_index: VecResolver,
    policies: VecResolver,
    scope_sets: VecResolver,
    scope_members: VecResolver,
    allowlists: VecResolver,
    ranges: VecResolver,
    tenants: VecResolver,
    scopes: VecResolver,
    strings: VecResolver,
}

impl Archive for StreamedBody<'_> {
    type Archived = ArchivedTableBody;
    type Resolver = StreamedBodyResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        munge!(let ArchivedTableBody {
            records, id_index, fingerprint_index, policies, scope_sets, scope_members,
            allowlists, ranges, tenants, scopes, strings,
        } = out);
        let parts = self.parts;
        ArchivedVec::resolve_from_len(parts.record_count, resolver.records, records);
        ArchivedVec::resolve_from_len(parts.id_index.len(), resolver.id_index, id_index);
        ArchivedVec::resolve_from_len(
            parts.fingerprint_index.len(),
            resolver.fingerprint_index,
            fingerprint_index,
        );
        ArchivedVec::resolve_from_len(parts.policies.len(), resolver.policies, policies);
        ArchivedVec::resolve_from_len(parts.scope_sets.len(), resolver.scope_sets, scope_sets);
        ArchivedVec::resolve_from_len(
            parts.scope_members.len(),
            resolver.scope_members,
            scope_members,
        );
        ArchivedVec::resolve_from_len(parts.allowlists.len(), resolver.allowlists, allowlists);
        ArchivedVec::resolve_from_len(parts.ranges.len(), resolver.ranges, ranges);
        ArchivedVec::resolve_from_len(parts.tenants.len(), resolver.tenants, tenants);
        ArchivedVec::resolve_from_len(parts.scopes.len(), resolver.scopes, scopes);
        ArchivedVec::resolve_from_len(parts.strings.len(), resolver.strings, strings);
    }
}

impl<S> Serialize<S> for StreamedBody<'_>
where
    S: Fallible + Allocator + Writer + Positional + ?Sized,
    Record: Serialize<S, Archived = ArchivedRecord>,
    Bucket: Serialize<S, Archived = ArchivedBucket>,
    Policy: Serialize<S, Archived = ArchivedPolicy>,
    ScopeSet: Serialize<S, Archived = ArchivedScopeSet>,
    u32: Serialize<S, Archived = rkyv::rend::u32_le>,
    Span: Serialize<S, Archived = ArchivedSpan>,
    StoredRange: Serialize<S, Archived = ArchivedStoredRange>,
    String: Serialize<S, Archived = ArchivedString>,
    u8: Serialize<S, Archived = u8>,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        // In the order of `TableBody`'s fields, as its derived serializer writes them.
        let parts = self.parts;
        let cut = |serializer: &mut S| self.digests.borrow_mut().cut(serializer.pos() as u64);
        let records = match &self.records {
            RecordSource::File(spooled) => ArchivedVec::<ArchivedRecord>::serialize_from_iter::<
                Record,
                _,
                _,
            >(spooled.clone(), serializer)?,
            RecordSource::Memory(records) => {
                ArchivedVec::<ArchivedRecord>::serialize_from_slice(records, serializer)?
            }
        };
        cut(serializer);
        let id_index =
            ArchivedVec::<ArchivedBucket>::serialize_from_slice(&parts.id_index, serializer)?;
        cut(serializer);
        let fingerprint_index = ArchivedVec::<ArchivedBucket>::serialize_from_slice(
            &parts.fingerprint_index,
            serializer,
        )?;
        cut(serializer);
        let resolver = StreamedBodyResolver {
            records,
            id_index,
            fingerprint_index,
            policies: ArchivedVec::serialize_from_slice(&parts.policies, serializer)?,
            scope_sets: ArchivedVec::serialize_from_slice(&parts.scope_sets, serializer)?,
            scope_members: ArchivedVec::serialize_from_slice(&parts.scope_members, serializer)?,
            allowlists: ArchivedVec::serialize_from_slice(&parts.allowlists, serializer)?,
            ranges: ArchivedVec::serialize_from_slice(&parts.ranges, serializer)?,
            tenants: ArchivedVec::serialize_from_slice(&parts.tenants, serializer)?,
            scopes: ArchivedVec::serialize_from_slice(&parts.scopes, serializer)?,
            strings: {
                cut(serializer);
                ArchivedVec::serialize_from_slice(&parts.strings, serializer)?
            },
        };
        cut(serializer);
        Ok(resolver)
    }
}

/// Where the hot records come from when the body is serialized.
pub(super) enum RecordSource {
    File(SpooledRecords),
    Memory(Vec<Record>),
}

/// The spooled records, read from the start by every clone. A read error is kept in `failure`
/// (an iterator cannot return it) and fails the write once serialization is over.
pub(super) struct SpooledRecords {
    pub(super) path: PathBuf,
    pub(super) remaining: usize,
    pub(super) reader: Option<BufReader<File>>,
    pub(super) failure: Rc<RefCell<Option<io::Error>>>,
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
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let read = (|| {
            if self.reader.is_none() {
                self.reader = Some(BufReader::with_capacity(1 << 20, File::open(&self.path)?));
            }
            let mut bytes = [0u8; SPOOLED_BYTES];
            self.reader
                .as_mut()
                .expect("opened")
                .read_exact(&mut bytes)?;
            Ok(unspooled(&bytes))
        })();
        Some(read.unwrap_or_else(|error: io::Error| {
            self.failure.borrow_mut().get_or_insert(error);
            Record {
                id: 0,
                hash: [0; 32],
                policy: 0,
                not_before: 0,
                expires: 0,
                created: 0,
                strings: 0,
            }
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for SpooledRecords {}

// The spool is private to one write: a hot record's fields, little-endian, in order.
const SPOOLED_BYTES: usize = 64;

pub(super) fn spooled(record: &Record) -> [u8; SPOOLED_BYTES] {
    let mut bytes = [0u8; SPOOLED_BYTES];
    bytes[0..8].copy_from_slice(&record.id.to_le_bytes());
    bytes[8..40].copy_from_slice(&record.hash);
    bytes[40..44].copy_from_slice(&record.policy.to_le_bytes());
    bytes[44..48].copy_from_slice(&record.not_before.to_le_bytes());
    bytes[48..52].copy_from_slice(&record.expires.to_le_bytes());
    bytes[52..56].copy_from_slice(&record.created.to_le_bytes());
    bytes[56..64].copy_from_slice(&record.strings.to_le_bytes());
    bytes
}

fn unspooled(bytes: &[u8; SPOOLED_BYTES]) -> Record {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    Record {
        id: u64_at(0),
        hash: bytes[8..40].try_into().unwrap(),
        policy: u32_at(40),
        not_before: u32_at(44),
        expires: u32_at(48),
        created: u32_at(52),
        strings: u64_at(56),
    }
}
