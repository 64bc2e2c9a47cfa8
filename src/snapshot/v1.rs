//! Snapshot format version 1, read only: `keyward-ctl table upgrade` turns such a file into the
//! current format. The server refuses it (see [`super::SnapshotError::OldVersion`]).
//!
//! Version 1 is one rkyv archive of [`TableBody`] behind a 96-byte header: every record inline
//! with its strings and lists, two power-of-two slot tables, one BLAKE3 of the whole body.

use std::fs::File;
use std::path::{Path, PathBuf};

use rkyv::{Archive, Serialize};

use super::{body_digest, io_error, SnapshotError};
use crate::credential::{KeyId, Visibility};
use crate::record::{self, Cidr, KeyKind, KeyRecord, KeyStatus, UnixSeconds};

pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 96;
const EMPTY: u32 = u32::MAX;

#[derive(Archive, Serialize, Clone, Copy, Debug)]
pub struct Slot {
    pub key: u64,
    pub record: u32,
}

#[derive(Archive, Serialize, Clone, Copy, Debug)]
pub struct StoredRange {
    pub network: [u8; 16],
    pub prefix_len: u8,
}

#[derive(Archive, Serialize, Clone, Debug)]
pub struct StoredRecord {
    pub id: u64,
    pub hash: [u8; 32],
    pub tenant: u32,
    pub name: String,
    pub scopes: Vec<u32>,
    pub created: u64,
    pub not_before: u64,
    pub expires: u64,
    pub status: u8,
    pub visibility: u8,
    pub kind: u8,
    pub allow: Vec<StoredRange>,
    pub idempotency_key: String,
}

#[derive(Archive, Serialize, Debug)]
pub struct TableBody {
    pub id_slots: Vec<Slot>,
    pub fingerprint_slots: Vec<Slot>,
    pub records: Vec<StoredRecord>,
    pub scopes: Vec<String>,
    pub tenants: Vec<String>,
}

/// The fields of a version-1 header that an upgrade carries over.
#[derive(Clone, Copy, Debug)]
pub struct HeaderV1 {
    pub sequence: u64,
    pub record_count: u64,
    pub body_bytes: u64,
    pub created: UnixSeconds,
    pub body_digest: [u8; 32],
}

/// A version-1 snapshot, mapped and fully checked (digest, archive, invariants).
pub struct TableV1 {
    map: memmap2::Mmap,
    pub header: HeaderV1,
    path: PathBuf,
}

impl TableV1 {
    pub fn open(path: &Path) -> Result<TableV1, SnapshotError> {
        let file = File::open(path).map_err(io_error(path))?;
        // SAFETY: as for `Snapshot::open`: snapshots are never modified in place.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(io_error(path))?;
        let header = decode_header(&map, path)?;
        let found = map.len() as u64 - HEADER_BYTES as u64;
        if found != header.body_bytes {
            return Err(SnapshotError::Length {
                path: path.to_path_buf(),
                expected: header.body_bytes,
                found,
            });
        }
        if body_digest(&map[HEADER_BYTES..]) != header.body_digest {
            return Err(SnapshotError::BodyChecksum {
                path: path.to_path_buf(),
            });
        }
        let body = rkyv::access::<ArchivedTableBody, rkyv::rancor::Error>(&map[HEADER_BYTES..])
            .map_err(|e| SnapshotError::Archive {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        check_invariants(body, &header).map_err(|detail| SnapshotError::Invariant {
            path: path.to_path_buf(),
            detail,
        })?;
        Ok(TableV1 {
            map,
            header,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn body(&self) -> &ArchivedTableBody {
        // SAFETY: `open` validated exactly these bytes with `rkyv::access`.
        unsafe { rkyv::access_unchecked::<ArchivedTableBody>(&self.map[HEADER_BYTES..]) }
    }

    pub fn tenants(&self) -> Vec<String> {
        self.body().tenants.iter().map(|t| t.to_string()).collect()
    }

    pub fn scopes(&self) -> Vec<String> {
        self.body().scopes.iter().map(|s| s.to_string()).collect()
    }

    /// Every record, in id order.
    pub fn records(&self) -> impl Iterator<Item = KeyRecord> + '_ {
        let body = self.body();
        let name = |names: &'_ rkyv::vec::ArchivedVec<rkyv::string::ArchivedString>, i: u32| {
            names
                .get(i as usize)
                .map_or(String::new(), |s| s.to_string())
        };
        body.records.iter().map(move |stored| {
            let expires = stored.expires.to_native();
            KeyRecord {
                id: KeyId(stored.id.to_native()),
                kind: KeyKind::from_u8(stored.kind).unwrap_or(KeyKind::Native),
                hash: stored.hash,
                tenant: name(&body.tenants, stored.tenant.to_native()),
                name: stored.name.to_string(),
                scopes: stored
                    .scopes
                    .iter()
                    .map(|s| name(&body.scopes, s.to_native()))
                    .collect(),
                created: UnixSeconds(stored.created.to_native()),
                not_before: UnixSeconds(stored.not_before.to_native()),
                expires: (expires != 0).then_some(UnixSeconds(expires)),
                status: KeyStatus::from_u8(stored.status).unwrap_or(KeyStatus::Revoked),
                visibility: record::visibility_from_u8(stored.visibility)
                    .unwrap_or(Visibility::Secret),
                allow: stored
                    .allow
                    .iter()
                    .map(|r| Cidr {
                        network: r.network,
                        prefix_len: r.prefix_len,
                    })
                    .collect(),
                idempotency_key: stored.idempotency_key.to_string(),
            }
        })
    }
}

/// Magic, version 1 and the header checksum: version 1's header, byte for byte.
fn decode_header(bytes: &[u8], path: &Path) -> Result<HeaderV1, SnapshotError> {
    let path = path.to_path_buf();
    if bytes.len() < HEADER_BYTES {
        return Err(SnapshotError::TooShort {
            path,
            bytes: bytes.len() as u64,
        });
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    if bytes[0..8] != super::MAGIC {
        return Err(SnapshotError::Magic { path });
    }
    if u32_at(8) != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            path,
            found: u32_at(8),
        });
    }
    let reserved_zero = bytes[84..HEADER_BYTES].iter().all(|&b| b == 0);
    if u32_at(80) != crc32fast::hash(&bytes[0..80])
        || u32_at(12) as usize != HEADER_BYTES
        || !reserved_zero
    {
        return Err(SnapshotError::HeaderChecksum { path });
    }
    Ok(HeaderV1 {
        sequence: u64_at(16),
        record_count: u64_at(24),
        body_bytes: u64_at(32),
        created: UnixSeconds(u64_at(40)),
        body_digest: bytes[48..80].try_into().unwrap(),
    })
}

fn check_invariants(body: &ArchivedTableBody, header: &HeaderV1) -> Result<(), String> {
    let records = body.records.len();
    if records as u64 != header.record_count {
        return Err(format!(
            "header says {} records, body has {records}",
            header.record_count
        ));
    }
    for slots in [&body.id_slots, &body.fingerprint_slots] {
        if slots.iter().any(|s| {
            let record = s.record.to_native();
            record != EMPTY && record as usize >= records
        }) {
            return Err("a slot points past the records".into());
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
        if record.tenant.to_native() >= tenants
            || record.scopes.iter().any(|s| s.to_native() >= scopes)
            || KeyKind::from_u8(record.kind).is_none()
            || KeyStatus::from_u8(record.status).is_none()
            || record::visibility_from_u8(record.visibility).is_none()
            || record.allow.iter().any(|r| r.prefix_len > 128)
        {
            return Err(format!("record {id} has an out-of-range field"));
        }
    }
    Ok(())
}
