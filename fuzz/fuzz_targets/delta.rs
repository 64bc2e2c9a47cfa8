//! The delta log as replay and `keyward-ctl log check` read it from disk: the file header (format
//! 1 or 2), then records taken until one fails to decode; every record that decodes must
//! re-encode to exactly its bytes (the model: encoding is canonical), and a decoded record never
//! claims more bytes than it had. A header that reads never claims more bytes than there are, and
//! reading a whole file, damage and all, never panics.
#![no_main]

use keyward::delta;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = delta::read_header(data) {
        assert!(header.bytes <= data.len());
        assert!(header.version == 1 || header.follows == u64::from_le_bytes(data[16..24].try_into().unwrap()));
    }
    if let Ok(report) = delta::inspect(data) {
        for (offset, _) in &report.records {
            assert!((*offset as usize) < data.len());
        }
    }
    let mut at = 0;
    while let Ok((decoded, used)) = delta::decode(&data[at..]) {
        assert!(used >= delta::RECORD_HEADER_BYTES && at + used <= data.len());
        assert_eq!(delta::encode(&decoded), &data[at..at + used], "delta record did not round-trip");
        at += used;
    }
});
