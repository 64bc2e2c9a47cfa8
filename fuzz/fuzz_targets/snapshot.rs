//! Snapshot loading from arbitrary file contents: never a panic; a file that loads must answer
//! every lookup of every record it lists (the model: the record list itself).
#![no_main]

use keyward::credential::KeyId;
use keyward::snapshot::Snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("snapshot.kws");
    std::fs::write(&path, data).unwrap();
    if let Ok(snapshot) = Snapshot::open(&path) {
        for record in snapshot.records() {
            assert_eq!(snapshot.find(record.id).map(|r| r.id.to_native()), Some(record.id.0));
        }
        let _ = snapshot.find(KeyId(u64::MAX));
    }
});
