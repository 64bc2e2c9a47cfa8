//! Where a snapshot's bytes go and how well its hash tables probe: `keyward-ctl table stats`,
//! the measure of the table's layout (bytes per key by section, load factors, probe lengths).

use crate::snapshot::{
    slot_hash, ArchivedSlot, ArchivedStoredRange, ArchivedStoredRecord, Snapshot, EMPTY,
    HEADER_BYTES,
};

/// Where a snapshot's bytes go and how well its hash tables probe (`keyward-ctl table stats`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TableStats {
    pub file_bytes: u64,
    pub records: u64,
    /// Bytes by section: `header`, `id_slots`, `fingerprint_slots`, `records` (the fixed part
    /// of each record), `record_data` (what records point to: names, idempotency keys, scope
    /// lists, allowlists), `dictionaries` (interned tenant and scope names), `other` (rkyv's
    /// padding and root).
    pub sections: Vec<(&'static str, u64)>,
    /// Occupied share of each hash table's slots.
    pub id_load_factor: f64,
    pub fingerprint_load_factor: f64,
    /// Slots a lookup of each present key reads, for the id table: `probe_lengths[n]` keys take
    /// n + 1 slots (the last entry counts every longer probe).
    pub probe_lengths: Vec<u64>,
    pub probe_length_mean: f64,
    pub tenants: u64,
    pub scopes: u64,
}

/// Longest probe the histogram tells apart.
const PROBE_HISTOGRAM_BUCKETS: usize = 16;

impl Snapshot {
    /// Counts where the bytes go and how the id table probes: O(n), for tools.
    pub fn stats(&self) -> TableStats {
        let body = self.body();
        let string_data = |s: &rkyv::string::ArchivedString| {
            // rkyv keeps strings of up to 8 bytes inside the record.
            if s.len() > 8 {
                s.len() as u64
            } else {
                0
            }
        };
        let mut record_data = 0u64;
        for record in body.records.iter() {
            record_data += string_data(&record.name) + string_data(&record.idempotency_key);
            record_data += (record.scopes.len() * std::mem::size_of::<u32>()) as u64;
            record_data += (record.allow.len() * std::mem::size_of::<ArchivedStoredRange>()) as u64;
        }
        let dictionary = |names: &rkyv::vec::ArchivedVec<rkyv::string::ArchivedString>| {
            (names.len() * std::mem::size_of::<rkyv::string::ArchivedString>()) as u64
                + names.iter().map(string_data).sum::<u64>()
        };
        let slot_bytes = std::mem::size_of::<ArchivedSlot>() as u64;
        let mut sections = vec![
            ("header", HEADER_BYTES as u64),
            ("id_slots", body.id_slots.len() as u64 * slot_bytes),
            (
                "fingerprint_slots",
                body.fingerprint_slots.len() as u64 * slot_bytes,
            ),
            (
                "records",
                (body.records.len() * std::mem::size_of::<ArchivedStoredRecord>()) as u64,
            ),
            ("record_data", record_data),
            (
                "dictionaries",
                dictionary(&body.tenants) + dictionary(&body.scopes),
            ),
        ];
        let file_bytes = HEADER_BYTES as u64 + self.header().body_bytes;
        let counted: u64 = sections.iter().map(|(_, bytes)| bytes).sum();
        sections.push(("other", file_bytes.saturating_sub(counted)));
        let occupied = |slots: &[ArchivedSlot]| {
            slots
                .iter()
                .filter(|s| s.record.to_native() != EMPTY)
                .count()
        };
        let load = |slots: &[ArchivedSlot]| match slots.len() {
            0 => 0.0,
            n => occupied(slots) as f64 / n as f64,
        };
        let mut probe_lengths = vec![0u64; PROBE_HISTOGRAM_BUCKETS];
        let mut probes_total = 0u64;
        let mask = body.id_slots.len().wrapping_sub(1);
        for (at, slot) in body.id_slots.iter().enumerate() {
            if slot.record.to_native() == EMPTY {
                continue;
            }
            let home = slot_hash(slot.key.to_native()) as usize & mask;
            let length = ((at + body.id_slots.len() - home) & mask) + 1;
            probes_total += length as u64;
            probe_lengths[(length - 1).min(PROBE_HISTOGRAM_BUCKETS - 1)] += 1;
        }
        let present: u64 = probe_lengths.iter().sum();
        TableStats {
            file_bytes,
            records: body.records.len() as u64,
            sections,
            id_load_factor: load(&body.id_slots),
            fingerprint_load_factor: load(&body.fingerprint_slots),
            probe_lengths,
            probe_length_mean: if present == 0 {
                0.0
            } else {
                probes_total as f64 / present as f64
            },
            tenants: body.tenants.len() as u64,
            scopes: body.scopes.len() as u64,
        }
    }
}
