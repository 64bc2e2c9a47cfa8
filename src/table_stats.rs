//! Where a snapshot's bytes go and how well its indexes probe: `keyward-ctl table stats`, the
//! measure of the table's layout (bytes per key by section, load factors, probe lengths,
//! interned values).

use crate::snapshot::{
    home, ArchivedBucket, Snapshot, BUCKET_SLOTS, EMPTY, HEADER_BYTES, SECTIONS,
};

/// Where a snapshot's bytes go and how well its indexes probe (`keyward-ctl table stats`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TableStats {
    pub file_bytes: u64,
    pub records: u64,
    /// Bytes by section: `header`, then the body's sections in file order (`records`,
    /// `id_index`, `fingerprint_index`, `dictionaries`, `strings`, `root`).
    pub sections: Vec<(&'static str, u64)>,
    /// Occupied share of each index's slots.
    pub id_load_factor: f64,
    pub fingerprint_load_factor: f64,
    /// Buckets (cache lines) a lookup of each present key reads, for the id index:
    /// `probe_lengths[n]` keys take n + 1 buckets (the last entry counts every longer probe).
    pub probe_lengths: Vec<u64>,
    pub probe_length_mean: f64,
    pub tenants: u64,
    pub scopes: u64,
    pub scope_sets: u64,
    /// Scope sets that a 64-bit bitmap answers alone (every member among the first 64 scopes).
    pub scope_sets_bitmap_only: u64,
    pub allowlists: u64,
    pub policies: u64,
}

/// Longest probe the histogram tells apart.
const PROBE_HISTOGRAM_BUCKETS: usize = 8;

impl Snapshot {
    /// Counts where the bytes go and how the id index probes: O(n), for tools.
    pub fn stats(&self) -> TableStats {
        let body = self.body();
        let header = self.header();
        let mut sections = vec![("header", HEADER_BYTES as u64)];
        for (index, name) in SECTIONS.iter().enumerate() {
            sections.push((*name, header.section_range(index).len() as u64));
        }
        let used = |index: &[ArchivedBucket]| {
            index
                .iter()
                .flat_map(|b| b.slots.iter())
                .filter(|s| s.record.to_native() != EMPTY)
                .count()
        };
        let load = |index: &[ArchivedBucket]| match index.len() {
            0 => 0.0,
            n => used(index) as f64 / (n * BUCKET_SLOTS) as f64,
        };
        let mut probe_lengths = vec![0u64; PROBE_HISTOGRAM_BUCKETS];
        let mut probes_total = 0u64;
        let buckets = body.id_index.len();
        for (at, bucket) in body.id_index.iter().enumerate() {
            for slot in &bucket.slots {
                let Some(record) = body.records.get(slot.record.to_native() as usize) else {
                    continue;
                };
                let (home, _) = home(record.id.to_native(), buckets);
                let length = (at + buckets - home) % buckets + 1;
                probes_total += length as u64;
                probe_lengths[(length - 1).min(PROBE_HISTOGRAM_BUCKETS - 1)] += 1;
            }
        }
        let present: u64 = probe_lengths.iter().sum();
        TableStats {
            file_bytes: HEADER_BYTES as u64 + header.body_bytes,
            records: body.records.len() as u64,
            sections,
            id_load_factor: load(&body.id_index),
            fingerprint_load_factor: load(&body.fingerprint_index),
            probe_lengths,
            probe_length_mean: if present == 0 {
                0.0
            } else {
                probes_total as f64 / present as f64
            },
            tenants: body.tenants.len() as u64,
            scopes: body.scopes.len() as u64,
            scope_sets: body.scope_sets.len() as u64,
            scope_sets_bitmap_only: body
                .scope_sets
                .iter()
                .filter(|set| set.bitmap.to_native().count_ones() == set.len.to_native())
                .count() as u64,
            allowlists: body.allowlists.len() as u64,
            policies: body.policies.len() as u64,
        }
    }
}
