//! Sorting key records by id in bounded memory, for tables built from input in any order
//! (`keyward-ctl table build`): records are gathered, encoded as the delta log encodes them,
//! into runs of at most [`RUN_BYTES_MAX`] bytes, each run sorted and written to a temporary file
//! beside the output, and the runs merged back in id order. Memory is one run (its bytes and
//! 16 bytes a record) plus one record per run, whatever the count.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::delta;
use crate::record::KeyRecord;

/// Encoded bytes of records held in memory before a run is written.
pub const RUN_BYTES_MAX: usize = 64 << 20;
/// Most runs one sort writes: with 64 MiB runs, 256 GiB of encoded records.
pub const RUNS_MAX: usize = 4096;

/// Numbers the sorts of this process, so that two sorting in one directory never share a run
/// file.
static SORTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records being sorted: [`RecordSort::push`] each, then [`RecordSort::finish`].
pub struct RecordSort {
    directory: PathBuf,
    /// This sort's number among the process's sorts: part of its run files' names.
    sort: u64,
    /// The run being gathered: encoded records back to back, and (id, offset, length) of each.
    run: Vec<u8>,
    run_index: Vec<(u64, u32, u32)>,
    runs: Vec<PathBuf>,
    tenants: BTreeSet<String>,
    scopes: BTreeSet<String>,
}

impl RecordSort {
    /// Sorts with its runs as temporary files in `directory` (beside the table being built).
    pub fn new(directory: &Path) -> RecordSort {
        RecordSort {
            directory: directory.to_path_buf(),
            sort: SORTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            run: Vec::new(),
            run_index: Vec::new(),
            runs: Vec::new(),
            tenants: BTreeSet::new(),
            scopes: BTreeSet::new(),
        }
    }

    pub fn push(&mut self, record: KeyRecord) -> io::Result<()> {
        if !self.tenants.contains(&record.tenant) {
            self.tenants.insert(record.tenant.clone());
        }
        for scope in &record.scopes {
            if !self.scopes.contains(scope) {
                self.scopes.insert(scope.clone());
            }
        }
        let start = self.run.len();
        delta::put_record(&mut self.run, &record);
        self.run_index
            .push((record.id.0, start as u32, (self.run.len() - start) as u32));
        if self.run.len() >= RUN_BYTES_MAX {
            self.write_run()?;
        }
        Ok(())
    }

    /// Every tenant and scope name pushed so far (a table writer's dictionaries).
    pub fn names(&self) -> (Vec<String>, Vec<String>) {
        (
            self.tenants.iter().cloned().collect(),
            self.scopes.iter().cloned().collect(),
        )
    }

    fn write_run(&mut self) -> io::Result<()> {
        if self.runs.len() >= RUNS_MAX {
            return Err(io::Error::other(format!(
                "more than {RUNS_MAX} sorted runs of {RUN_BYTES_MAX} bytes: input too large"
            )));
        }
        // Stable: records with one id keep the order they came in.
        self.run_index.sort_by_key(|&(id, _, _)| id);
        let path = self.directory.join(format!(
            ".snapshot.kws.sort{}-run{}-{}",
            self.sort,
            self.runs.len(),
            std::process::id()
        ));
        self.runs.push(path.clone());
        let mut out = BufWriter::with_capacity(1 << 20, crate::datadir::create_private(&path)?);
        for &(_, start, length) in &self.run_index {
            let (start, length) = (start as usize, length as usize);
            out.write_all(&(length as u32).to_le_bytes())?;
            out.write_all(&self.run[start..start + length])?;
        }
        out.into_inner().map_err(|e| e.into_error())?;
        self.run.clear();
        self.run_index.clear();
        Ok(())
    }

    /// The records in id order (ties in the order pushed), read back from the runs.
    pub fn finish(mut self) -> io::Result<Sorted> {
        if !self.runs.is_empty() && !self.run.is_empty() {
            self.write_run()?;
        }
        self.run_index.sort_by_key(|&(id, _, _)| id);
        let mut readers = Vec::with_capacity(self.runs.len());
        for path in &self.runs {
            readers.push(BufReader::with_capacity(1 << 16, File::open(path)?));
        }
        let mut sorted = Sorted {
            memory: std::mem::take(&mut self.run),
            memory_index: std::mem::take(&mut self.run_index).into_iter(),
            readers,
            heads: BinaryHeap::new(),
            heads_records: Vec::new(),
            runs: std::mem::take(&mut self.runs),
        };
        for run in 0..sorted.readers.len() {
            sorted.refill(run)?;
        }
        Ok(sorted)
    }
}

impl Drop for RecordSort {
    fn drop(&mut self) {
        for path in &self.runs {
            let _ = fs::remove_file(path);
        }
    }
}

/// Records in id order: from memory when one run held them all, else merged from the runs.
pub struct Sorted {
    memory: Vec<u8>,
    memory_index: std::vec::IntoIter<(u64, u32, u32)>,
    readers: Vec<BufReader<File>>,
    /// (id, run, position of the record in `heads_records`).
    heads: BinaryHeap<Reverse<(u64, usize)>>,
    heads_records: Vec<Option<KeyRecord>>,
    runs: Vec<PathBuf>,
}

impl Sorted {
    fn refill(&mut self, run: usize) -> io::Result<()> {
        if self.heads_records.len() <= run {
            self.heads_records.resize(run + 1, None);
        }
        let reader = &mut self.readers[run];
        let mut length = [0u8; 4];
        match reader.read_exact(&mut length) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error),
        }
        let length = u32::from_le_bytes(length) as usize;
        if length > RUN_BYTES_MAX {
            return Err(io::Error::other("a sorted run is damaged"));
        }
        let mut bytes = vec![0u8; length];
        reader.read_exact(&mut bytes)?;
        let record = decode(&bytes)?;
        self.heads.push(Reverse((record.id.0, run)));
        self.heads_records[run] = Some(record);
        Ok(())
    }

    /// The next record in id order, or `None` at the end.
    pub fn next_record(&mut self) -> io::Result<Option<KeyRecord>> {
        if self.readers.is_empty() {
            let Some((_, start, length)) = self.memory_index.next() else {
                return Ok(None);
            };
            let (start, length) = (start as usize, length as usize);
            return decode(&self.memory[start..start + length]).map(Some);
        }
        let Some(Reverse((_, run))) = self.heads.pop() else {
            return Ok(None);
        };
        let record = self.heads_records[run]
            .take()
            .expect("a head per queued run");
        self.refill(run)?;
        Ok(Some(record))
    }
}

fn decode(bytes: &[u8]) -> io::Result<KeyRecord> {
    delta::decode_record(bytes)
        .map_err(|e| io::Error::other(format!("a sorted run is damaged: {e}")))
}

impl Drop for Sorted {
    fn drop(&mut self) {
        for path in &self.runs {
            let _ = fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{Hasher, Prefixes};
    use crate::record::UnixSeconds;

    #[test]
    fn records_come_back_in_id_order_across_many_runs_and_leave_no_file() {
        let set = crate::keyset::generate(
            30_000,
            &Hasher::new(&[3; 32]),
            &Prefixes::default(),
            UnixSeconds(1_800_000_000),
        );
        let mut shuffled = set.records.clone();
        let mut state = 7u64;
        for i in (1..shuffled.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            shuffled.swap(i, (state >> 33) as usize % (i + 1));
        }
        let directory = tempfile::tempdir().unwrap();
        let mut sort = RecordSort::new(directory.path());
        // A second sort with runs in the same directory (table build keeps imported keys
        // without an id in one): its runs must not replace the first one's.
        let mut other = RecordSort::new(directory.path());
        for (count, record) in shuffled.into_iter().enumerate() {
            other
                .push(KeyRecord {
                    id: crate::credential::KeyId(count as u64 + 1),
                    ..record.clone()
                })
                .unwrap();
            sort.push(record).unwrap();
            if count % 3000 == 2999 {
                // many small runs, as a large input would make
                sort.write_run().unwrap();
                other.write_run().unwrap();
            }
        }
        let mut other = other.finish().unwrap();
        assert_eq!(other.next_record().unwrap().unwrap().id.0, 1);
        let mut sorted = sort.finish().unwrap();
        let mut expected = set.records.clone();
        expected.sort_by_key(|r| r.id);
        let mut out = Vec::new();
        while let Some(record) = sorted.next_record().unwrap() {
            out.push(record);
        }
        assert_eq!(out, expected);
        drop((sorted, other));
        assert_eq!(fs::read_dir(directory.path()).unwrap().count(), 0);
    }
}
