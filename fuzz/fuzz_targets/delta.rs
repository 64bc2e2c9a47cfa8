//! The delta-log record decoder, as replay runs it over bytes from disk: records are taken until
//! one fails to decode; every record that decodes must re-encode to exactly its bytes (the
//! model: encoding is canonical), and a decoded record never claims more bytes than it had.
#![no_main]

use keyward::delta;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok((decoded, used)) = delta::decode(&data[at..]) {
        assert!(used >= delta::RECORD_HEADER_BYTES && at + used <= data.len());
        assert_eq!(delta::encode(&decoded), &data[at..at + used], "delta record did not round-trip");
        at += used;
    }
});
