//! Per-key usage: when a key was last presented with its right secret, and how many of those
//! verifies were answered `valid` and how many refused (revoked, expired, scope, address or
//! tenant denied). A derived token's verifies count for its parent key.
//!
//! Each shard tallies in a table of its own ([`Tallies`], no locks, no atomics) and hands it
//! to the control plane about once a second ([`REPORT_INTERVAL`]); the control plane merges the
//! shards' tallies and appends what changed to `usage.log` about once a second, so a restart
//! loses at most the last two seconds of counts (`kill -9`, power loss). The file is a journal
//! of absolute totals (docs/FORMATS.md, "usage.log"): replaying it keeps each key's last
//! record; it is rewritten whole once it holds more than twice what is live.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "usage.log";
/// How often a shard hands over its tallies, and the control plane persists them.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
const MAGIC: [u8; 8] = *b"KWUSAGE\0";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 16;
pub const RECORD_BYTES: usize = 32;
/// Most records in one batch of the journal.
pub const BATCH_RECORDS_MAX: usize = 1 << 20;

/// A key's usage as the control plane keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUsage {
    /// Unix seconds of the last verify with the key's secret right.
    pub last_used: u64,
    pub valid: u64,
    pub refused: u64,
}

/// What a shard counted for one key since its last report. Its last use is the report's time
/// (reports go out about once a second), so the slot need not hold it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub valid: u32,
    pub refused: u32,
}

/// Security events a shard saw for one key since its last report (a subset of its refusals).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events {
    pub revoked: u32,
    pub address_denied: u32,
    pub tenant_mismatch: u32,
}

/// What a shard hands the control plane about once a second.
#[derive(Debug, Default)]
pub struct Report {
    /// Unix seconds when the report was made: the last use of every key in it, within the
    /// report interval.
    pub at: u64,
    pub tallies: Vec<(u64, Tally)>,
    pub events: Vec<(u64, Events)>,
}

/// A hasher for key ids in the control plane's maps: one multiply and a fold (a key id gets
/// into them only after its secret matched, so nobody can choose colliding ids).
#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(self.0 ^ u64::from(byte));
        }
    }
    fn write_u64(&mut self, value: u64) {
        let mixed = value.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = mixed ^ (mixed >> 29);
    }
}

/// A map keyed by key id.
pub type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// How a verify of a key whose secret matched was answered, as [`Tallies`] counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Valid,
    /// Refused for a reason that is not a security event (expired, not yet valid, scope).
    Refused,
    Revoked,
    AddressDenied,
    TenantMismatch,
}

impl Outcome {
    /// The security event this outcome is, as an index into [`EventSlot::counts`].
    fn event(self) -> Option<usize> {
        match self {
            Outcome::Valid | Outcome::Refused => None,
            Outcome::Revoked => Some(0),
            Outcome::AddressDenied => Some(1),
            Outcome::TenantMismatch => Some(2),
        }
    }
}

/// A slot of an open-addressing table keyed by a 32-bit key id; id 0 is empty (key ids start
/// at 1).
trait Keyed: Copy + Default {
    fn id(&self) -> u32;
    fn set_id(&mut self, id: u32);
}

/// A verify's counts for one key: 8 bytes, eight to a cache line, so the table a shard
/// touches on every verify is as small as it can be (1 MiB for 100 000 keys).
#[derive(Clone, Copy, Default)]
#[repr(C, align(8))]
struct CountSlot {
    id: u32,
    valid: u16,
    refused: u16,
}

/// A key's security events (revoked, address denied, tenant mismatch), touched only on those.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct EventSlot {
    id: u32,
    counts: [u16; 3],
}

impl Keyed for CountSlot {
    fn id(&self) -> u32 {
        self.id
    }
    fn set_id(&mut self, id: u32) {
        self.id = id;
    }
}

impl Keyed for EventSlot {
    fn id(&self) -> u32 {
        self.id
    }
    fn set_id(&mut self, id: u32) {
        self.id = id;
    }
}

/// An open-addressing table (linear probing, Fibonacci hashing, at most 80 % full) that keeps
/// its size when emptied, so a shard's table settles at what its keys need in an interval.
struct Probing<S> {
    slots: Vec<S>,
    used: usize,
}

/// Slots a new table starts with.
const SLOTS_MIN: usize = 4096;

impl<S: Keyed> Probing<S> {
    fn new() -> Probing<S> {
        Probing {
            slots: vec![S::default(); SLOTS_MIN],
            used: 0,
        }
    }

    #[inline]
    fn home(&self, id: u32) -> usize {
        let bits = self.slots.len().trailing_zeros();
        (u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as usize
    }

    /// The slot of `id`, taken if it had none.
    #[inline]
    fn claim(&mut self, id: u32) -> &mut S {
        if 5 * (self.used + 1) > 4 * self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut at = self.home(id);
        loop {
            let slot = self.slots[at].id();
            if slot == id {
                return &mut self.slots[at];
            }
            if slot == 0 {
                self.used += 1;
                self.slots[at].set_id(id);
                return &mut self.slots[at];
            }
            at = (at + 1) & mask;
        }
    }

    #[cold]
    fn grow(&mut self) {
        let doubled = vec![S::default(); self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        self.used = 0;
        for slot in old.into_iter().filter(|s| s.id() != 0) {
            *self.claim(slot.id()) = slot;
        }
    }

    /// The taken slots, leaving the table empty (its size kept).
    fn drain(&mut self) -> impl Iterator<Item = S> + '_ {
        self.used = 0;
        self.slots
            .iter_mut()
            .filter(|s| s.id() != 0)
            .map(std::mem::take)
    }
}

/// Counts carried out of a full `u16`, and keys with ids past `u32::MAX`: valid, refused,
/// revoked, address denied, tenant mismatch.
type Spilled = [u32; 5];

/// Adds one to a slot's counter, carrying a full `u16` to the spill map.
#[inline]
fn bump(count: &mut u16, spill: &mut HashMap<u64, Spilled>, id: u64, counter: usize) {
    if *count == u16::MAX {
        spill.entry(id).or_default()[counter] += u32::from(u16::MAX);
        *count = 0;
    }
    *count += 1;
}

/// A shard's tallies since its last report, by key id: one open-addressing table of 8-byte
/// count slots, whose slot a verify will touch is prefetched together with the key's table
/// entries ([`Tallies::prefetch`]), and a second one for the security events, touched only on
/// those. A general-purpose map's miss per verify cost a fifth of the verify port's
/// throughput (docs/PERFORMANCE.md, "Usage tracking").
pub struct Tallies {
    counts: Probing<CountSlot>,
    events: Probing<EventSlot>,
    spill: HashMap<u64, Spilled>,
}

impl Default for Tallies {
    fn default() -> Tallies {
        Tallies {
            counts: Probing::new(),
            events: Probing::new(),
            spill: HashMap::new(),
        }
    }
}

impl Tallies {
    /// Starts loading the slot `id` would use.
    #[inline]
    pub fn prefetch(&self, id: u64) {
        let at = self.counts.home(id as u32);
        crate::snapshot::lookup::prefetch(self.counts.slots[at..].as_ptr().cast());
    }

    /// Counts one verify of key `id` (id 0 is not a key).
    #[inline]
    pub fn count(&mut self, id: u64, outcome: Outcome) {
        debug_assert!(id != 0, "key ids start at 1");
        let Ok(short) = u32::try_from(id) else {
            let spilled = self.spill.entry(id).or_default();
            spilled[usize::from(outcome != Outcome::Valid)] += 1;
            if let Some(event) = outcome.event() {
                spilled[2 + event] += 1;
            }
            return;
        };
        let slot = self.counts.claim(short);
        if outcome == Outcome::Valid {
            bump(&mut slot.valid, &mut self.spill, id, 0);
            return;
        }
        bump(&mut slot.refused, &mut self.spill, id, 1);
        if let Some(event) = outcome.event() {
            let slot = self.events.claim(short);
            bump(&mut slot.counts[event], &mut self.spill, id, 2 + event);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.used == 0 && self.spill.is_empty()
    }

    /// Keys counted.
    pub fn len(&self) -> usize {
        self.counts.used
            + self
                .spill
                .keys()
                .filter(|id| u32::try_from(**id).is_err())
                .count()
    }

    /// A report made at `at` (Unix seconds) of every key's counts and security events, leaving
    /// the tables empty (their sizes kept for the next interval).
    pub fn take(&mut self, at: u64) -> Report {
        let mut tallies: Vec<(u64, Tally)> = self
            .counts
            .drain()
            .map(|slot| {
                let tally = Tally {
                    valid: u32::from(slot.valid),
                    refused: u32::from(slot.refused),
                };
                (u64::from(slot.id), tally)
            })
            .collect();
        let mut events: Vec<(u64, Events)> = self
            .events
            .drain()
            .map(|slot| {
                let [revoked, address_denied, tenant_mismatch] = slot.counts.map(u32::from);
                let events = Events {
                    revoked,
                    address_denied,
                    tenant_mismatch,
                };
                (u64::from(slot.id), events)
            })
            .collect();
        if !self.spill.is_empty() {
            merge_spill(&mut tallies, &mut events, std::mem::take(&mut self.spill));
        }
        Report {
            at,
            tallies,
            events,
        }
    }
}

/// Adds the spilled counts into a report's lists (rare: a key verified 65 536 times in an
/// interval, or an id past `u32::MAX`).
#[cold]
fn merge_spill(
    tallies: &mut Vec<(u64, Tally)>,
    events: &mut Vec<(u64, Events)>,
    mut spill: HashMap<u64, Spilled>,
) {
    for (id, tally) in tallies.iter_mut() {
        if let Some(spilled) = spill.get(id) {
            tally.valid += spilled[0];
            tally.refused += spilled[1];
        }
    }
    for (id, found) in events.iter_mut() {
        if let Some(spilled) = spill.get_mut(id) {
            found.revoked += spilled[2];
            found.address_denied += spilled[3];
            found.tenant_mismatch += spilled[4];
            spilled[2..].fill(0);
        }
    }
    for (id, spilled) in spill {
        if u32::try_from(id).is_err() {
            let tally = Tally {
                valid: spilled[0],
                refused: spilled[1],
            };
            tallies.push((id, tally));
        }
        if spilled[2..].iter().any(|&n| n > 0) {
            let found = Events {
                revoked: spilled[2],
                address_denied: spilled[3],
                tenant_mismatch: spilled[4],
            };
            events.push((id, found));
        }
    }
}

/// Why `usage.log` could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a keyward usage journal ({problem}); move it aside to start counting afresh (usage figures are not needed to verify keys)")]
    Foreign { path: PathBuf, problem: String },
}

/// The journal file, opened for appending.
#[derive(Debug)]
pub struct UsageStore {
    path: PathBuf,
    file: File,
    bytes: u64,
}

/// What opening the journal found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub usage: IdMap<KeyUsage>,
    /// Bytes cut from the end: a torn or damaged batch and whatever followed it.
    pub cut_bytes: u64,
}

fn encode_batch(out: &mut Vec<u8>, records: &[(u64, KeyUsage)]) {
    let start = out.len();
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for (id, usage) in records {
        for value in [*id, usage.last_used, usage.valid, usage.refused] {
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Decodes the batches of a journal's body (what follows its 16-byte header): the totals they
/// leave, and how many bytes were good (a torn or damaged batch ends them). Never panics.
pub fn decode_body(body: &[u8]) -> (IdMap<KeyUsage>, usize) {
    let mut usage = IdMap::default();
    let good = decode_batches(body, &mut usage);
    (usage, good)
}

/// Decodes the batches of a journal body into `usage`; returns the bytes that were good.
fn decode_batches(body: &[u8], usage: &mut IdMap<KeyUsage>) -> usize {
    let mut at = 0;
    while body.len() - at >= 4 {
        let count = u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes")) as usize;
        if count > BATCH_RECORDS_MAX {
            break;
        }
        let end = at + 4 + count * RECORD_BYTES;
        if body.len() < end + 4 {
            break;
        }
        let crc = u32::from_le_bytes(body[end..end + 4].try_into().expect("4 bytes"));
        if crc32fast::hash(&body[at..end]) != crc {
            break;
        }
        for record in body[at + 4..end].chunks_exact(RECORD_BYTES) {
            let word =
                |i: usize| u64::from_le_bytes(record[8 * i..8 * i + 8].try_into().expect("8"));
            usage.insert(
                word(0),
                KeyUsage {
                    last_used: word(1),
                    valid: word(2),
                    refused: word(3),
                },
            );
        }
        at = end + 4;
    }
    at
}

fn header() -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}

impl UsageStore {
    /// Opens the journal in `dir` (creating it when missing) and replays it. A torn or damaged
    /// batch ends the replay and is cut off with what follows.
    pub fn open(dir: &Path) -> Result<(UsageStore, Loaded), UsageError> {
        let path = dir.join(FILE_NAME);
        let io_error = |source| UsageError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_error)?;
        let mut loaded = Loaded::default();
        if bytes.is_empty() {
            file.write_all(&header()).map_err(io_error)?;
            file.sync_all().map_err(io_error)?;
            bytes = header();
        }
        if bytes.len() < HEADER_BYTES || bytes[..8] != MAGIC {
            return Err(UsageError::Foreign {
                path,
                problem: "bad magic".into(),
            });
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(UsageError::Foreign {
                path,
                problem: format!("format version {version}"),
            });
        }
        let good = HEADER_BYTES + decode_batches(&bytes[HEADER_BYTES..], &mut loaded.usage);
        if good < bytes.len() {
            loaded.cut_bytes = (bytes.len() - good) as u64;
            file.set_len(good as u64).map_err(io_error)?;
            file.sync_all().map_err(io_error)?;
        }
        Ok((
            UsageStore {
                path,
                file,
                bytes: good as u64,
            },
            loaded,
        ))
    }

    /// Whether the journal has grown past twice the `live` keys' records (plus 1 MiB): then
    /// the next write should be a [`UsageStore::rewrite`].
    pub fn wants_rewrite(&self, live: usize) -> bool {
        self.bytes > 2 * (live * RECORD_BYTES) as u64 + (1 << 20)
    }

    /// Appends the changed keys' totals and makes them durable.
    pub fn append(&mut self, changed: &[(u64, KeyUsage)]) -> io::Result<()> {
        let mut out = Vec::with_capacity(8 + changed.len() * RECORD_BYTES);
        for batch in changed.chunks(BATCH_RECORDS_MAX) {
            encode_batch(&mut out, batch);
        }
        self.file.write_all(&out)?;
        self.file.sync_data()?;
        self.bytes += out.len() as u64;
        Ok(())
    }

    /// Replaces the journal with one holding just `all`, atomically and durably.
    pub fn rewrite(&mut self, all: &[(u64, KeyUsage)]) -> io::Result<()> {
        let mut out = header();
        for batch in all.chunks(BATCH_RECORDS_MAX) {
            encode_batch(&mut out, batch);
        }
        crate::datadir::replace_private(&self.path, &out)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.bytes = out.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn tallies_count_every_key_through_growth_overflow_and_take() {
        let mut tallies = Tallies::default();
        for round in 0..3u32 {
            for id in 1..=20_000u64 {
                tallies.prefetch(id * 7919);
                tallies.count(id * 7919, Outcome::Valid);
                if round > 0 {
                    tallies.count(id * 7919, Outcome::Refused);
                }
            }
        }
        let huge = u64::from(u32::MAX) + 5;
        tallies.count(huge, Outcome::Revoked);
        for _ in 0..70_000 {
            tallies.count(3, Outcome::AddressDenied);
        }
        assert_eq!(tallies.len(), 20_002);
        let Report {
            tallies: mut taken,
            mut events,
            ..
        } = tallies.take(0);
        assert!(tallies.is_empty());
        taken.sort_unstable_by_key(|(id, _)| *id);
        events.sort_unstable_by_key(|(id, _)| *id);
        assert_eq!(taken.len(), 20_002);
        assert_eq!(
            taken[0],
            (
                3,
                Tally {
                    valid: 0,
                    refused: 70_000
                }
            )
        );
        assert_eq!(taken[1].0, 7919);
        assert!(taken[1..20_001]
            .iter()
            .all(|(_, t)| t.valid == 3 && t.refused == 2));
        assert_eq!(
            taken[20_001],
            (
                huge,
                Tally {
                    valid: 0,
                    refused: 1
                }
            )
        );
        let address = Events {
            address_denied: 70_000,
            ..Events::default()
        };
        let revoked = Events {
            revoked: 1,
            ..Events::default()
        };
        assert_eq!(events, vec![(3, address), (huge, revoked)]);
        tallies.count(5, Outcome::TenantMismatch);
        let tenant = Events {
            tenant_mismatch: 1,
            ..Events::default()
        };
        let report = tallies.take(7);
        assert_eq!(report.at, 7);
        assert_eq!(
            report.tallies,
            vec![(
                5,
                Tally {
                    valid: 0,
                    refused: 1
                }
            )]
        );
        assert_eq!(report.events, vec![(5, tenant)]);
    }

    fn usage(n: u64) -> KeyUsage {
        KeyUsage {
            last_used: 1_800_000_000 + n,
            valid: n,
            refused: n / 2,
        }
    }

    #[test]
    fn totals_survive_reopening_rewriting_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, loaded) = UsageStore::open(dir.path()).unwrap();
        assert!(loaded.usage.is_empty());
        store.append(&[(1, usage(1)), (2, usage(2))]).unwrap();
        store.append(&[(1, usage(5))]).unwrap();
        drop(store);
        let (mut store, loaded) = UsageStore::open(dir.path()).unwrap();
        assert_eq!(loaded.usage[&1], usage(5));
        assert_eq!(loaded.usage[&2], usage(2));
        store.rewrite(&[(1, usage(5)), (2, usage(2))]).unwrap();
        store.append(&[(3, usage(3))]).unwrap();
        drop(store);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = fs::read(&path).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2, 3]);
        fs::write(&path, &bytes).unwrap();
        let (_, loaded) = UsageStore::open(dir.path()).unwrap();
        assert_eq!(loaded.cut_bytes, 7);
        assert_eq!(loaded.usage.len(), 3);
        assert_eq!(fs::metadata(&path).unwrap().len() as usize, whole);
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), b"something else entirely").unwrap();
        assert!(UsageStore::open(dir.path()).is_err());
    }
}
