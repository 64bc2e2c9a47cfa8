//! Credential parsing: a string accepted as native must be the canonical encoding of what it
//! parsed to (the model: one text per credential), and nothing else may parse.
#![no_main]

use keyward::credential::{self, Parsed, Prefixes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let prefixes = Prefixes::default();
    if let Parsed::Native(parsed) = credential::parse(data, &prefixes) {
        assert_eq!(parsed.encode(&prefixes).as_bytes(), data, "non-canonical credential accepted");
    }
});
