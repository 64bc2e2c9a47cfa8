//! Reading the mapped table: the probe, the decoy a miss checks instead of a record, the fields a
//! verify reads through a record's policy, and the cold strings only tools read.

use super::{
    home, ArchivedBucket, ArchivedPolicy, ArchivedRecord, ArchivedStoredRange, Snapshot, EMPTY,
    FLAG_IMPORTED, FLAG_PUBLIC, FLAG_REVOKED, NAME_RESTART_RECORDS, TIME_WIDE,
};
use crate::credential::{fingerprint, KeyId, SecretHash, Visibility};
use crate::record::{
    Cidr, KeyKind, KeyRecord, KeyStatus, UnixSeconds, IDEMPOTENCY_KEY_BYTES_MAX, NAME_BYTES_MAX,
};

/// A record's cold strings entry, parsed. The name is front-coded against the previous record's
/// (`shared` bytes of it, then `suffix`); every [`NAME_RESTART_RECORDS`]th record's entry shares
/// nothing, so a name is rebuilt from at most that many entries.
pub(crate) struct StringsEntry<'a> {
    pub shared: usize,
    pub suffix: &'a [u8],
    pub idempotency_key: &'a str,
    /// created, not before, expires: present when a hot time field is [`TIME_WIDE`].
    pub wide_times: Option<[u64; 3]>,
    /// Offset just past the entry.
    pub end: u64,
}

/// Parses the entry at `at`; `None` when it does not fit or its idempotency key is not UTF-8
/// (the load check runs this over every record, and rebuilds every name, so lookups may rely
/// on both).
pub(crate) fn strings_entry(strings: &[u8], at: u64, wide: bool) -> Option<StringsEntry<'_>> {
    let mut rest = strings.get(usize::try_from(at).ok()?..)?;
    let (&shared, tail) = rest.split_first()?;
    rest = tail;
    let suffix = length_prefixed(&mut rest, NAME_BYTES_MAX)?;
    let idempotency_key =
        std::str::from_utf8(length_prefixed(&mut rest, IDEMPOTENCY_KEY_BYTES_MAX)?).ok()?;
    let wide_times = if wide {
        let (bytes, tail) = rest.split_at_checked(24)?;
        rest = tail;
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        Some([u64_at(0), u64_at(1), u64_at(2)])
    } else {
        None
    };
    Some(StringsEntry {
        shared: usize::from(shared),
        suffix,
        idempotency_key,
        wide_times,
        end: (strings.len() - rest.len()) as u64,
    })
}

/// A u8 length, then that many bytes (at most `longest`), taken off the front of `rest`.
fn length_prefixed<'a>(rest: &mut &'a [u8], longest: usize) -> Option<&'a [u8]> {
    let (&len, tail) = rest.split_first()?;
    let len = usize::from(len);
    if len > longest {
        return None;
    }
    let (bytes, tail) = tail.split_at_checked(len)?;
    *rest = tail;
    Some(bytes)
}

/// Applies an entry to the previous record's name in `name`; false when it does not fit.
pub(crate) fn next_name(name: &mut Vec<u8>, entry: &StringsEntry<'_>) -> bool {
    if entry.shared > name.len() || entry.shared + entry.suffix.len() > NAME_BYTES_MAX {
        return false;
    }
    name.truncate(entry.shared);
    name.extend_from_slice(entry.suffix);
    true
}

/// Whether a record keeps exact times in its strings entry.
#[inline]
pub(crate) fn has_wide_times(record: &ArchivedRecord) -> bool {
    [record.created, record.not_before, record.expires]
        .iter()
        .any(|t| t.to_native() == TIME_WIDE)
}

/// Mixed into a key before it picks a decoy record, so the decoy is not the record its slot
/// would hold.
const DECOY_SALT: u64 = 0x6b65_7977_6172_6421;

/// Probes `index` for `key`: `Ok(record)` where `matches(record)` holds for a slot with the
/// key's tag, else `Err(the tag field of the free slot the probe ended on)`, so a caller can make
/// a later load depend on that read. Each bucket is one cache line; a probe reads the next one
/// only when a bucket is full.
#[inline]
fn probe(index: &[ArchivedBucket], key: u64, matches: impl Fn(u32) -> bool) -> Result<u32, u32> {
    let (mut at, tag) = home(key, index.len());
    for _ in 0..index.len() {
        let Some(bucket) = index.get(at) else { break };
        for slot in &bucket.slots {
            let record = slot.record.to_native();
            if record == EMPTY {
                return Err(slot.tag.to_native());
            }
            if slot.tag.to_native() == tag && matches(record) {
                return Ok(record);
            }
        }
        at = if at + 1 == index.len() { 0 } else { at + 1 };
    }
    Err(0)
}

impl Snapshot {
    #[inline]
    fn probe_id(&self, id: u64) -> Result<u32, u32> {
        let body = self.body();
        probe(&body.id_index, id, |record| {
            body.records
                .get(record as usize)
                .is_some_and(|r| r.id.to_native() == id)
        })
    }

    #[inline]
    fn probe_fingerprint(&self, key: u64) -> Result<u32, u32> {
        let body = self.body();
        probe(&body.fingerprint_index, key, |record| {
            body.records
                .get(record as usize)
                .is_some_and(|r| fingerprint(&r.hash) == key)
        })
    }

    /// Finds a record by key id.
    #[inline]
    pub fn find(&self, id: KeyId) -> Option<&ArchivedRecord> {
        let index = self.probe_id(id.0).ok()?;
        self.body().records.get(index as usize)
    }

    /// Asks the CPU to start loading the bucket where `id` would be found. A hint only: it
    /// changes nothing and cannot fault.
    #[inline]
    pub fn prefetch_slot(&self, id: KeyId) {
        let index = &self.body().id_index;
        let (at, _) = home(id.0, index.len());
        if let Some(bucket) = index.get(at) {
            prefetch(bucket as *const ArchivedBucket as *const u8);
        }
    }

    /// Asks the CPU to start loading `id`'s record (its bucket should be cached by now, see
    /// [`Snapshot::prefetch_slot`]).
    #[inline]
    pub fn prefetch_record(&self, id: KeyId) {
        // A miss prefetches its decoy, as the verify will load it: hit and miss stay alike.
        if let Ok(record) | Err(Some(record)) = self.find_or_decoy(id) {
            prefetch(record as *const ArchivedRecord as *const u8);
        }
    }

    /// Asks the CPU to start loading `id`'s policy and scope set, which the table shares
    /// between keys (its record should be cached by now, see [`Snapshot::prefetch_record`]).
    #[inline]
    pub fn prefetch_scopes(&self, id: KeyId) {
        if let Some(record) = self.find(id) {
            let policy = self.policy(record);
            prefetch(policy as *const ArchivedPolicy as *const u8);
            if let Some(set) = self
                .body()
                .scope_sets
                .get(policy.scope_set.to_native() as usize)
            {
                prefetch(set as *const _ as *const u8);
            }
        }
    }

    /// Looks `id` up; when it is absent, returns instead a decoy record (`Err`) picked by the id
    /// *and by the free slot the probe ended on*. Checking the presented credential against the
    /// decoy loads a record as a hit does, and since the decoy's address depends on the slot just
    /// read, its load waits for that read as a hit's record load does: a miss and a hit with a
    /// wrong secret cost the same (`benches/timing.rs` measures it). `Err(None)`: an empty table.
    #[inline]
    pub fn find_or_decoy(&self, id: KeyId) -> Result<&ArchivedRecord, Option<&ArchivedRecord>> {
        self.hit_or_decoy(self.probe_id(id.0), id.0)
    }

    /// [`Snapshot::find_or_decoy`] for an imported key's fingerprint.
    #[inline]
    pub fn find_fingerprint_or_decoy(
        &self,
        hash: &SecretHash,
    ) -> Result<&ArchivedRecord, Option<&ArchivedRecord>> {
        let key = fingerprint(hash);
        self.hit_or_decoy(self.probe_fingerprint(key), key)
    }

    #[inline]
    fn hit_or_decoy(
        &self,
        probed: Result<u32, u32>,
        key: u64,
    ) -> Result<&ArchivedRecord, Option<&ArchivedRecord>> {
        let records = &self.body().records;
        match probed {
            Ok(index) => records.get(index as usize).ok_or(None),
            Err(free_slot_tag) => {
                // A multiply to mix and a multiply-shift to scale: a few cycles, where a hash
                // and a division would make the miss measurably slower than a hit.
                let mixed = (key ^ DECOY_SALT ^ u64::from(std::hint::black_box(free_slot_tag)))
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let pick = ((u128::from(mixed) * records.len() as u128) >> 64) as usize;
                Err(records.get(pick))
            }
        }
    }

    /// Finds an imported key's record by the fingerprint of its keyed hash.
    #[inline]
    pub fn find_fingerprint(&self, hash: &SecretHash) -> Option<&ArchivedRecord> {
        let index = self.probe_fingerprint(fingerprint(hash)).ok()?;
        self.body().records.get(index as usize)
    }

    /// The record's policy (validated at load to be in the table).
    #[inline]
    pub fn policy(&self, record: &ArchivedRecord) -> &ArchivedPolicy {
        &self.body().policies[record.policy.to_native() as usize]
    }

    #[inline]
    fn flags(&self, record: &ArchivedRecord) -> u32 {
        self.policy(record).flags.to_native()
    }

    #[inline]
    pub fn is_active(&self, record: &ArchivedRecord) -> bool {
        self.flags(record) & FLAG_REVOKED == 0
    }

    /// [`KeyKind`] as its u8.
    #[inline]
    pub fn kind(&self, record: &ArchivedRecord) -> u8 {
        if self.flags(record) & FLAG_IMPORTED != 0 {
            KeyKind::Imported as u8
        } else {
            KeyKind::Native as u8
        }
    }

    /// Visibility as [`crate::record::visibility_to_u8`] gives it.
    #[inline]
    pub fn visibility(&self, record: &ArchivedRecord) -> u8 {
        u8::from(self.flags(record) & FLAG_PUBLIC != 0)
    }

    /// created, not before, expires in Unix seconds (expires 0: never).
    fn times(&self, record: &ArchivedRecord) -> [u64; 3] {
        let hot = [record.created, record.not_before, record.expires].map(|t| t.to_native());
        if hot.contains(&TIME_WIDE) {
            if let Some(exact) = self.strings_of(record).and_then(|e| e.wide_times) {
                return exact;
            }
        }
        hot.map(u64::from)
    }

    #[inline]
    pub fn expires(&self, record: &ArchivedRecord) -> u64 {
        match record.expires.to_native() {
            TIME_WIDE => self.times(record)[2],
            narrow => u64::from(narrow),
        }
    }

    #[inline]
    pub fn not_before(&self, record: &ArchivedRecord) -> u64 {
        match record.not_before.to_native() {
            TIME_WIDE => self.times(record)[1],
            narrow => u64::from(narrow),
        }
    }

    #[inline]
    pub fn tenant(&self, record: &ArchivedRecord) -> &str {
        self.tenant_name(self.policy(record).tenant.to_native())
    }

    /// The record's scopes, as ascending indices into the scope dictionary.
    #[inline]
    pub fn scope_members(&self, record: &ArchivedRecord) -> &[rkyv::rend::u32_le] {
        let body = self.body();
        let set = &body.scope_sets[self.policy(record).scope_set.to_native() as usize];
        let start = set.start.to_native() as usize;
        &body.scope_members[start..start + set.len.to_native() as usize]
    }

    /// Whether the record carries the scope `name`: one binary search of the dictionary, then
    /// a bit of the set's bitmap (or a scan of its list, at most 32, past the 64th scope).
    #[inline]
    pub fn has_scope(&self, record: &ArchivedRecord, name: &[u8]) -> bool {
        let Some(wanted) = self.scope_index(name) else {
            return false;
        };
        let body = self.body();
        let set = &body.scope_sets[self.policy(record).scope_set.to_native() as usize];
        if wanted < 64 {
            return set.bitmap.to_native() & (1 << wanted) != 0;
        }
        self.scope_members(record)
            .iter()
            .any(|m| m.to_native() == wanted)
    }

    /// The record's allowlist (empty: any address).
    #[inline]
    pub fn allowlist(&self, record: &ArchivedRecord) -> &[ArchivedStoredRange] {
        let body = self.body();
        let list = &body.allowlists[self.policy(record).allowlist.to_native() as usize];
        let start = list.start.to_native() as usize;
        &body.ranges[start..start + list.len.to_native() as usize]
    }

    /// The record's idempotency key ("" when none); cold: read only by the control plane.
    pub fn idempotency_key(&self, record: &ArchivedRecord) -> &str {
        self.strings_of(record).map_or("", |e| e.idempotency_key)
    }

    fn strings_of(&self, record: &ArchivedRecord) -> Option<StringsEntry<'_>> {
        strings_entry(
            self.body().strings.as_slice(),
            record.strings.to_native(),
            has_wide_times(record),
        )
    }

    /// The record's position in the table.
    fn index_of(&self, record: &ArchivedRecord) -> usize {
        let base = self.body().records.as_ptr() as usize;
        (record as *const ArchivedRecord as usize - base) / std::mem::size_of::<ArchivedRecord>()
    }

    /// The record's name, rebuilt from the entries since the last restart point.
    pub fn name(&self, record: &ArchivedRecord) -> String {
        let index = self.index_of(record);
        let records = &self.body().records;
        let mut name = Vec::new();
        for earlier in &records[index - index % NAME_RESTART_RECORDS..=index] {
            match self.strings_of(earlier) {
                Some(entry) if next_name(&mut name, &entry) => {}
                _ => return String::new(),
            }
        }
        String::from_utf8(name).unwrap_or_default()
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

    /// Every record, decoded into owned form (for inspection tools and compaction), each name
    /// rebuilt from the one before it.
    pub fn records(&self) -> impl Iterator<Item = KeyRecord> + '_ {
        let mut name = Vec::new();
        self.body().records.iter().map(move |stored| {
            if let Some(entry) = self.strings_of(stored) {
                next_name(&mut name, &entry);
            }
            self.decode_with_name(stored, String::from_utf8_lossy(&name).into_owned())
        })
    }

    pub fn decode_record(&self, stored: &ArchivedRecord) -> KeyRecord {
        self.decode_with_name(stored, self.name(stored))
    }

    fn decode_with_name(&self, stored: &ArchivedRecord, name: String) -> KeyRecord {
        let [created, not_before, expires] = self.times(stored);
        let idempotency_key = self.idempotency_key(stored).to_string();
        KeyRecord {
            id: KeyId(stored.id.to_native()),
            kind: KeyKind::from_u8(self.kind(stored)).unwrap_or(KeyKind::Native),
            hash: stored.hash,
            tenant: self.tenant(stored).to_string(),
            name,
            scopes: self
                .scope_members(stored)
                .iter()
                .map(|s| self.scope_name(s.to_native()).to_string())
                .collect(),
            created: UnixSeconds(created),
            not_before: UnixSeconds(not_before),
            expires: (expires != 0).then_some(UnixSeconds(expires)),
            status: if self.is_active(stored) {
                KeyStatus::Active
            } else {
                KeyStatus::Revoked
            },
            visibility: if self.visibility(stored) == 1 {
                Visibility::Public
            } else {
                Visibility::Secret
            },
            allow: self
                .allowlist(stored)
                .iter()
                .map(|r| Cidr {
                    network: r.network,
                    prefix_len: r.prefix_len,
                })
                .collect(),
            idempotency_key,
        }
    }
}

/// Prefetches the cache line at `at` (no-op where the CPU offers no hint).
#[inline]
pub(crate) fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and reads nothing into the program,
    // whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(at as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}
