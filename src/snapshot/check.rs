//! The checks a snapshot passes before any answer is drawn from it: every section's digest
//! (hashed on every core), rkyv's validation of the archive, and the table's own invariants,
//! the last two beside the first. A digest mismatch is the error reported first, naming the
//! section.

use std::path::Path;

use super::lookup::{has_wide_times, next_name};
use super::{ArchivedBucket, ArchivedTableBody, Header, SnapshotError, EMPTY, SECTIONS};
use super::{FLAGS_KNOWN, FLAG_IMPORTED, NAME_RESTART_RECORDS};
use crate::record::{ALLOW_RANGES_MAX, SCOPES_PER_KEY_MAX, SCOPE_BYTES_MAX, TENANT_BYTES_MAX};

pub(super) fn check_body(body: &[u8], header: &Header, path: &Path) -> Result<(), SnapshotError> {
    let (damaged, checked) = std::thread::scope(|scope| {
        let damaged = scope.spawn(|| first_damaged_section(body, header));
        let checked = rkyv::access::<ArchivedTableBody, rkyv::rancor::Error>(body)
            .map_err(|e| SnapshotError::Archive {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })
            .and_then(|archived| {
                invariants(archived, header, body).map_err(|detail| SnapshotError::Invariant {
                    path: path.to_path_buf(),
                    detail,
                })
            });
        (
            damaged.join().expect("the digest thread does not panic"),
            checked,
        )
    });
    if let Some(index) = damaged {
        let range = header.section_range(index);
        return Err(SnapshotError::SectionChecksum {
            path: path.to_path_buf(),
            section: SECTIONS[index],
            start: range.start as u64,
            end: range.end as u64,
        });
    }
    checked
}

fn first_damaged_section(body: &[u8], header: &Header) -> Option<usize> {
    (0..SECTIONS.len()).find(|&index| {
        let range = header.section_range(index);
        super::body_digest(&body[range]) != header.sections[index].digest
    })
}

/// Where `items` lies in `body`, as a byte range.
fn placed<T>(items: &[T], body: &[u8]) -> std::ops::Range<usize> {
    let start = (items.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    start..start + std::mem::size_of_val(items)
}

/// The table's own invariants, beyond what rkyv validation checks. O(n), once per load.
fn invariants(table: &ArchivedTableBody, header: &Header, body: &[u8]) -> Result<(), String> {
    sections_hold_their_data(table, header, body)?;
    dictionaries(table)?;
    let imported = records(table)?;
    let records = table.records.len();
    index("id", &table.id_index, records, records)?;
    index("fingerprint", &table.fingerprint_index, imported, records)?;
    Ok(())
}

/// Each section holds the arrays it is named for (so a damaged section is the part of the table
/// that it names), and the records and buckets start on a cache line.
fn sections_hold_their_data(
    table: &ArchivedTableBody,
    header: &Header,
    body: &[u8],
) -> Result<(), String> {
    if table.records.len() as u64 != header.record_count {
        return Err(format!(
            "header says {} records, body has {}",
            header.record_count,
            table.records.len()
        ));
    }
    let within = |name: &str, index: usize, range: std::ops::Range<usize>| {
        let section = header.section_range(index);
        if range.start < section.start || range.end > section.end {
            return Err(format!(
                "{name} lie outside the `{}` section",
                SECTIONS[index]
            ));
        }
        Ok(())
    };
    within("records", 0, placed(table.records.as_slice(), body))?;
    within("id buckets", 1, placed(table.id_index.as_slice(), body))?;
    within(
        "fingerprint buckets",
        2,
        placed(table.fingerprint_index.as_slice(), body),
    )?;
    within("policies", 3, placed(table.policies.as_slice(), body))?;
    within("scope sets", 3, placed(table.scope_sets.as_slice(), body))?;
    within(
        "scope members",
        3,
        placed(table.scope_members.as_slice(), body),
    )?;
    within("allowlists", 3, placed(table.allowlists.as_slice(), body))?;
    within("ranges", 3, placed(table.ranges.as_slice(), body))?;
    for name in table.tenants.iter().chain(table.scopes.iter()) {
        within("names", 3, placed(name.as_bytes(), body))?;
    }
    within("tenants", 3, placed(table.tenants.as_slice(), body))?;
    within("scopes", 3, placed(table.scopes.as_slice(), body))?;
    within("strings", 4, placed(table.strings.as_slice(), body))?;
    let base = body.as_ptr() as usize;
    for (name, at) in [
        ("records", table.records.as_ptr() as usize),
        ("id buckets", table.id_index.as_ptr() as usize),
        (
            "fingerprint buckets",
            table.fingerprint_index.as_ptr() as usize,
        ),
    ] {
        if (at - base) % 64 != 0 {
            return Err(format!("{name} do not start on a 64-byte boundary"));
        }
    }
    Ok(())
}

fn dictionaries(table: &ArchivedTableBody) -> Result<(), String> {
    for (what, names, longest, empty_ok) in [
        ("tenant", &table.tenants, TENANT_BYTES_MAX, true),
        ("scope", &table.scopes, SCOPE_BYTES_MAX, false),
    ] {
        if names.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(format!("{what} names are not sorted and unique"));
        }
        if names
            .iter()
            .any(|n| n.len() > longest || (n.is_empty() && !empty_ok))
        {
            return Err(format!("a {what} name is out of bounds"));
        }
    }
    let scopes = table.scopes.len() as u32;
    let members = table.scope_members.as_slice();
    for set in table.scope_sets.iter() {
        let (start, len) = (set.start.to_native() as usize, set.len.to_native() as usize);
        let Some(list) = members.get(start..start.saturating_add(len)) else {
            return Err("a scope set lies outside the member list".into());
        };
        let mut bitmap = 0u64;
        for member in list {
            if member.to_native() < 64 {
                bitmap |= 1 << member.to_native();
            }
        }
        if len > SCOPES_PER_KEY_MAX
            || list.iter().any(|m| m.to_native() >= scopes)
            || bitmap != set.bitmap.to_native()
        {
            return Err(format!("scope set at {start} is malformed"));
        }
    }
    for list in table.allowlists.iter() {
        let (start, len) = (
            list.start.to_native() as usize,
            list.len.to_native() as usize,
        );
        if len > ALLOW_RANGES_MAX || start.saturating_add(len) > table.ranges.len() {
            return Err(format!("allowlist at {start} is malformed"));
        }
    }
    if table.ranges.iter().any(|r| r.prefix_len > 128) {
        return Err("an address range has a prefix longer than 128 bits".into());
    }
    let (tenants, sets, lists) = (
        table.tenants.len() as u32,
        table.scope_sets.len() as u32,
        table.allowlists.len() as u32,
    );
    for policy in table.policies.iter() {
        if policy.tenant.to_native() >= tenants
            || policy.scope_set.to_native() >= sets
            || policy.allowlist.to_native() >= lists
            || policy.flags.to_native() & !FLAGS_KNOWN != 0
        {
            return Err("a policy names something outside the dictionaries".into());
        }
    }
    Ok(())
}

/// Ids strictly increasing, policies in range, every strings entry whole; returns how many
/// records are imported keys.
fn records(table: &ArchivedTableBody) -> Result<usize, String> {
    let policies = table.policies.as_slice();
    let strings = table.strings.as_slice();
    let mut previous = 0u64;
    let mut imported = 0usize;
    let mut name = Vec::with_capacity(crate::record::NAME_BYTES_MAX);
    let mut next_entry = 0u64;
    for (index, record) in table.records.iter().enumerate() {
        let id = record.id.to_native();
        if id <= previous {
            return Err(format!("record ids are not strictly increasing at {id}"));
        }
        previous = id;
        let Some(policy) = policies.get(record.policy.to_native() as usize) else {
            return Err(format!("record {id} names a policy outside the table"));
        };
        imported += usize::from(policy.flags.to_native() & FLAG_IMPORTED != 0);
        let at = record.strings.to_native();
        let entry = super::lookup::strings_entry(strings, at, has_wide_times(record));
        let whole = entry.as_ref().is_some_and(|entry| {
            at == next_entry
                && (index % NAME_RESTART_RECORDS != 0 || entry.shared == 0)
                && next_name(&mut name, entry)
                && std::str::from_utf8(&name).is_ok()
        });
        let Some(entry) = entry.filter(|_| whole) else {
            return Err(format!("record {id}'s strings entry is malformed"));
        };
        next_entry = entry.end;
    }
    if next_entry != strings.len() as u64 {
        return Err("the strings section has bytes no record owns".into());
    }
    Ok(imported)
}

/// Slots name one of the `records`, fill each bucket from the front, and number `keys`.
fn index(
    name: &str,
    buckets: &[ArchivedBucket],
    keys: usize,
    records: usize,
) -> Result<(), String> {
    let mut used = 0usize;
    for bucket in buckets {
        let mut free_seen = false;
        for slot in &bucket.slots {
            let record = slot.record.to_native();
            if record == EMPTY {
                free_seen = true;
                continue;
            }
            if free_seen || record as usize >= records {
                return Err(format!("{name} index has a misplaced or out-of-range slot"));
            }
            used += 1;
        }
    }
    if buckets.is_empty() || used != keys || used >= buckets.len() * super::BUCKET_SLOTS {
        return Err(format!(
            "{name} index has {used} keys in {} buckets, expected {keys} and a free slot",
            buckets.len()
        ));
    }
    Ok(())
}

impl super::Snapshot {
    /// Looks every record up through the indexes, as a verify would: O(n) random reads, so
    /// `keyward-ctl table check` runs it and start-up does not. A load checks what memory safety
    /// and the answers rely on; an index that lost a key (which only a faulty writer could make,
    /// past the digests) makes that key `unknown`, never another key's answer, since every probe
    /// hit is confirmed against the record's own id or fingerprint.
    pub fn check_lookups(&self) -> Result<(), String> {
        for (index, record) in self.body().records.iter().enumerate() {
            let id = crate::credential::KeyId(record.id.to_native());
            if !self
                .find(id)
                .is_some_and(|found| std::ptr::eq(found, record))
            {
                return Err(format!(
                    "record {} (index {index}) is not found by its id",
                    id.0
                ));
            }
            let imported = self.kind(record) == crate::record::KeyKind::Imported as u8;
            if imported
                && !self
                    .find_fingerprint(&record.hash)
                    .is_some_and(|found| std::ptr::eq(found, record))
            {
                return Err(format!(
                    "imported record {} is not found by its fingerprint",
                    id.0
                ));
            }
        }
        Ok(())
    }
}
