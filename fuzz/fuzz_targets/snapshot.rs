//! Snapshot loading from arbitrary file contents: never a panic; a file that loads and whose
//! indexes pass `check_lookups` must answer every lookup of every record it lists (the model:
//! the record list itself), and every lookup of a loaded file returns the record asked for.
//!
//! Odd first byte: the input is the whole file (exercises the header checks). Even first byte:
//! the input after 16 bytes becomes the body of a file with a correct header and section digests
//! (section ends taken from bytes 3..15), so the fuzzer reaches the archive validation and the
//! table invariants behind the checksums.
#![no_main]

use keyward::credential::KeyId;
use keyward::record::UnixSeconds;
use keyward::snapshot::{Header, Section, Snapshot, SECTIONS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = match data.first() {
        Some(mode) if mode % 2 == 0 && data.len() >= 16 => {
            let body = &data[16..];
            let mut ends: Vec<u64> = (0..SECTIONS.len() - 1)
                .map(|i| {
                    let at = 3 + 2 * i;
                    u64::from(u16::from_le_bytes([data[at], data[at + 1]])).min(body.len() as u64)
                })
                .collect();
            ends.sort_unstable();
            ends.push(body.len() as u64);
            let mut sections = [Section::default(); SECTIONS.len()];
            let mut start = 0;
            for (section, &end) in sections.iter_mut().zip(&ends) {
                section.end = end;
                section.digest = *blake3::hash(&body[start as usize..end as usize]).as_bytes();
                start = end;
            }
            let header = Header {
                sequence: 0,
                record_count: u64::from(data[1]) | (u64::from(data[2]) << 8),
                body_bytes: body.len() as u64,
                created: UnixSeconds(0),
                sections,
            };
            let mut file = header.encode().to_vec();
            file.extend_from_slice(body);
            file
        }
        _ => data.to_vec(),
    };
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("snapshot.kws");
    std::fs::write(&path, &file).unwrap();
    if let Ok(snapshot) = Snapshot::open(&path) {
        let complete = snapshot.check_lookups().is_ok();
        for record in snapshot.records() {
            let found = snapshot.find(record.id).map(|r| r.id.to_native());
            assert!(found.is_none() || found == Some(record.id.0));
            if complete {
                assert_eq!(found, Some(record.id.0));
                let stored = snapshot.find(record.id).unwrap();
                assert_eq!(snapshot.decode_record(stored), record);
            }
        }
        let _ = snapshot.find(KeyId(u64::MAX));
        let _ = snapshot.stats();
    }
});
