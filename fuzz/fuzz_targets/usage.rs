//! The key-usage journal's batch decoder, as a start runs it over `usage.log` from disk: it
//! never panics, never claims more good bytes than it had, and the good prefix alone decodes to
//! the same totals (what the start keeps after cutting the rest).
#![no_main]

use keyward::usage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (totals, good) = usage::decode_body(data);
    assert!(good <= data.len());
    let (again, good_again) = usage::decode_body(&data[..good]);
    assert_eq!(good_again, good);
    assert_eq!(again, totals);
});
