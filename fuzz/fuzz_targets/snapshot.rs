//! Snapshot loading from arbitrary file contents: never a panic; a file that loads must answer
//! every lookup of every record it lists (the model: the record list itself).
//!
//! Odd first byte: the input is the whole file (exercises the header checks). Even first byte:
//! the input after 9 bytes becomes the body of a file with a correct header and digest, so the
//! fuzzer reaches the archive validation and the table invariants behind the checksums.
#![no_main]

use keyward::credential::KeyId;
use keyward::record::UnixSeconds;
use keyward::snapshot::{Header, Snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = match data.first() {
        Some(mode) if mode % 2 == 0 && data.len() >= 9 => {
            let body = &data[9..];
            let header = Header {
                sequence: 0,
                record_count: u64::from(data[1]) | (u64::from(data[2]) << 8),
                body_bytes: body.len() as u64,
                created: UnixSeconds(0),
                body_digest: *blake3::hash(body).as_bytes(),
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
        for record in snapshot.records() {
            assert_eq!(snapshot.find(record.id).map(|r| r.id.to_native()), Some(record.id.0));
        }
        let _ = snapshot.find(KeyId(u64::MAX));
    }
});
