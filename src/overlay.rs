//! The overlay: one shard's in-memory view of the deltas applied since its snapshot, and the
//! table view that consults it before the mapped snapshot.
//!
//! Each shard owns its overlay (no lock): deltas arrive over a channel and are applied in
//! sequence order on the shard's own core. A record in the overlay replaces the snapshot's record
//! with the same id, so a revocation is simply a newer record whose status is `revoked`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::credential::{fingerprint, KeyId, SecretHash};
use crate::delta::Delta;
use crate::record::{self, KeyKind, KeyRecord, KeyStatus};
use crate::snapshot::{ArchivedRecord, Snapshot};

/// Records changed since the snapshot. Each entry points into the delta that last set it (the
/// deltas are shared by every shard, so a record exists once in memory however many shards
/// there are); the delta's sequence says when the entry may be dropped.
#[derive(Default, Debug)]
pub struct Overlay {
    records: HashMap<KeyId, (Arc<Delta>, u32)>,
    /// Imported-key fingerprint → id, for imported records added after the snapshot.
    fingerprints: HashMap<u64, KeyId>,
    sequence: u64,
}

impl Overlay {
    pub fn new(sequence: u64) -> Overlay {
        Overlay {
            sequence,
            ..Overlay::default()
        }
    }

    /// An overlay with room for `records` changed records, so applying that many never grows
    /// (and rehashes) its tables.
    pub fn with_capacity(sequence: u64, records: usize) -> Overlay {
        Overlay {
            records: HashMap::with_capacity(records),
            fingerprints: HashMap::with_capacity(records / 8),
            sequence,
        }
    }

    /// The sequence of the last delta applied (or of the snapshot when none was).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Applies a delta. Deltas at or below the applied sequence are ignored (replays are safe).
    pub fn apply(&mut self, delta: &Arc<Delta>) {
        if delta.sequence <= self.sequence {
            return;
        }
        // Paired with the committer's check that it sends deltas in order: a gap here would
        // mean a lost change, a revocation perhaps, so stop rather than serve without it.
        assert_eq!(
            delta.sequence,
            self.sequence + 1,
            "deltas applied out of order"
        );
        for (index, record) in delta.records.iter().enumerate() {
            if record.kind == KeyKind::Imported {
                self.fingerprints
                    .insert(fingerprint(&record.hash), record.id);
            }
            self.records
                .insert(record.id, (delta.clone(), index as u32));
        }
        self.sequence = delta.sequence;
    }

    /// After switching to a snapshot that includes every delta up to `sequence`: drops the
    /// entries that snapshot now holds.
    pub fn drop_through(&mut self, sequence: u64) {
        self.records
            .retain(|_, (delta, _)| delta.sequence > sequence);
        let records = &self.records;
        self.fingerprints.retain(|_, id| records.contains_key(id));
        self.sequence = self.sequence.max(sequence);
    }

    pub fn get(&self, id: KeyId) -> Option<&KeyRecord> {
        self.records
            .get(&id)
            .map(|(delta, index)| &delta.records[*index as usize])
    }

    /// Every overlay record, in no particular order.
    pub fn records(&self) -> impl Iterator<Item = &KeyRecord> {
        self.records
            .values()
            .map(|(delta, index)| &delta.records[*index as usize])
    }
}

/// What a verify-path lookup found: the record, or a decoy to check in its place.
#[derive(Clone, Copy, Debug)]
pub enum Lookup<'t> {
    Hit(Found<'t>),
    /// No such record; a decoy from the table (none when the table is empty).
    Miss(Option<Found<'t>>),
}

/// A record found by a lookup: in the mapped snapshot, or in the overlay.
#[derive(Clone, Copy, Debug)]
pub enum Found<'t> {
    Mapped(&'t Snapshot, &'t ArchivedRecord),
    Owned(&'t KeyRecord),
}

impl<'t> Found<'t> {
    pub fn id(&self) -> KeyId {
        match self {
            Found::Mapped(_, r) => KeyId(r.id.to_native()),
            Found::Owned(r) => r.id,
        }
    }

    pub fn hash(&self) -> &'t SecretHash {
        match self {
            Found::Mapped(_, r) => &r.hash,
            Found::Owned(r) => &r.hash,
        }
    }

    pub fn kind(&self) -> u8 {
        match self {
            Found::Mapped(table, r) => table.kind(r),
            Found::Owned(r) => r.kind as u8,
        }
    }

    pub fn visibility(&self) -> u8 {
        match self {
            Found::Mapped(table, r) => table.visibility(r),
            Found::Owned(r) => record::visibility_to_u8(r.visibility),
        }
    }

    pub fn is_active(&self) -> bool {
        match self {
            Found::Mapped(table, r) => table.is_active(r),
            Found::Owned(r) => r.status == KeyStatus::Active,
        }
    }

    /// Unix seconds; 0 = never.
    pub fn expires(&self) -> u64 {
        match self {
            Found::Mapped(table, r) => table.expires(r),
            Found::Owned(r) => r.expires.map_or(0, |e| e.0.max(1)),
        }
    }

    pub fn not_before(&self) -> u64 {
        match self {
            Found::Mapped(table, r) => table.not_before(r),
            Found::Owned(r) => r.not_before.0,
        }
    }

    pub fn tenant(&self) -> &'t str {
        match self {
            Found::Mapped(table, r) => table.tenant(r),
            Found::Owned(r) => &r.tenant,
        }
    }

    pub fn scopes(&self) -> Scopes<'t> {
        match self {
            Found::Mapped(table, r) => Scopes::Mapped(table, table.scope_members(r).iter()),
            Found::Owned(r) => Scopes::Owned(r.scopes.iter()),
        }
    }

    pub fn has_scope(&self, scope: &[u8]) -> bool {
        match self {
            Found::Mapped(table, r) => table.has_scope(r, scope),
            Found::Owned(r) => r.scopes.iter().any(|s| s.as_bytes() == scope),
        }
    }

    /// Whether `address` passes the key's allowlist (an empty list allows any address, and a
    /// missing address passes only an empty list).
    pub fn address_allowed(&self, address: Option<IpAddr>) -> bool {
        let mapped = address.map(record::to_mapped);
        match self {
            Found::Mapped(table, r) => {
                let allow = table.allowlist(r);
                allow.is_empty()
                    || mapped.is_some_and(|a| {
                        allow
                            .iter()
                            .any(|range| record::contains(&range.network, range.prefix_len, &a))
                    })
            }
            Found::Owned(r) => {
                r.allow.is_empty()
                    || mapped.is_some_and(|a| {
                        r.allow
                            .iter()
                            .any(|range| record::contains(&range.network, range.prefix_len, &a))
                    })
            }
        }
    }
}

/// The scope names of a found record.
pub enum Scopes<'t> {
    Mapped(&'t Snapshot, std::slice::Iter<'t, rkyv::rend::u32_le>),
    Owned(std::slice::Iter<'t, String>),
}

impl<'t> Iterator for Scopes<'t> {
    type Item = &'t str;

    fn next(&mut self) -> Option<&'t str> {
        match self {
            Scopes::Mapped(table, indices) => {
                indices.next().map(|i| table.scope_name(i.to_native()))
            }
            Scopes::Owned(names) => names.next().map(String::as_str),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Scopes::Mapped(_, indices) => indices.size_hint(),
            Scopes::Owned(names) => names.size_hint(),
        }
    }
}

impl ExactSizeIterator for Scopes<'_> {}

/// The table a verify reads: the overlay first, then the mapped snapshot.
#[derive(Clone, Copy)]
pub struct TableView<'t> {
    pub snapshot: &'t Snapshot,
    pub overlay: &'t Overlay,
}

impl<'t> TableView<'t> {
    #[inline]
    pub fn find(&self, id: KeyId) -> Option<Found<'t>> {
        if !self.overlay.is_empty() {
            if let Some(record) = self.overlay.get(id) {
                return Some(Found::Owned(record));
            }
        }
        self.snapshot
            .find(id)
            .map(|r| Found::Mapped(self.snapshot, r))
    }

    /// Finds `id`; when absent, gives a decoy record to check instead, so the miss does the work
    /// of a hit (see [`Snapshot::find_or_decoy`]). The verify path uses this; a decoy is never a
    /// match, since the caller knows it is one.
    #[inline]
    pub fn find_or_decoy(&self, id: KeyId) -> Lookup<'t> {
        if !self.overlay.is_empty() {
            if let Some(record) = self.overlay.get(id) {
                return Lookup::Hit(Found::Owned(record));
            }
        }
        match self.snapshot.find_or_decoy(id) {
            Ok(record) => Lookup::Hit(Found::Mapped(self.snapshot, record)),
            Err(decoy) => Lookup::Miss(decoy.map(|r| Found::Mapped(self.snapshot, r))),
        }
    }

    /// [`TableView::find_or_decoy`] for an imported key, by the fingerprint of its hash.
    #[inline]
    pub fn find_fingerprint_or_decoy(&self, hash: &SecretHash) -> Lookup<'t> {
        if !self.overlay.is_empty() {
            if let Some(id) = self.overlay.fingerprints.get(&fingerprint(hash)) {
                if let Some(record) = self.overlay.get(*id) {
                    return Lookup::Hit(Found::Owned(record));
                }
            }
        }
        match self.snapshot.find_fingerprint_or_decoy(hash) {
            Ok(record) => {
                let id = KeyId(record.id.to_native());
                match self.overlay.get(id) {
                    Some(newer) if !self.overlay.is_empty() => Lookup::Hit(Found::Owned(newer)),
                    _ => Lookup::Hit(Found::Mapped(self.snapshot, record)),
                }
            }
            Err(decoy) => Lookup::Miss(decoy.map(|r| Found::Mapped(self.snapshot, r))),
        }
    }

    /// Finds an imported key by the fingerprint of its hash. A snapshot record that the overlay
    /// has replaced (revoked, updated) is returned in its overlay version.
    #[inline]
    pub fn find_fingerprint(&self, hash: &SecretHash) -> Option<Found<'t>> {
        if !self.overlay.is_empty() {
            if let Some(id) = self.overlay.fingerprints.get(&fingerprint(hash)) {
                if let Some(record) = self.overlay.get(*id) {
                    return Some(Found::Owned(record));
                }
            }
        }
        let record = self.snapshot.find_fingerprint(hash)?;
        let id = KeyId(record.id.to_native());
        match self.overlay.get(id) {
            Some(newer) if !self.overlay.is_empty() => Some(Found::Owned(newer)),
            _ => Some(Found::Mapped(self.snapshot, record)),
        }
    }
}
