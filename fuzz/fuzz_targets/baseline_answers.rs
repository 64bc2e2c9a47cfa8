//! The load generator's answer parsers (keyward frames, RESP, memcached text), driven the way a
//! client thread drives them: answers are taken from the buffer until it is incomplete or
//! broken. No input may panic, and an answer never claims more bytes than it was given; an
//! answer that parses must parse the same from a buffer cut right after it.
#![no_main]

use keyward_loadgen::wire::Protocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let protocol = match selector % 3 {
        0 => Protocol::Keyward,
        1 => Protocol::Resp,
        _ => Protocol::Memcache,
    };
    let mut at = 0;
    while let Ok(Some((taken, answer))) = protocol.parse(&data[at..]) {
        assert!(taken > 0 && at + taken <= data.len());
        let again = protocol.parse(&data[at..at + taken]);
        assert_eq!(again, Ok(Some((taken, answer))));
        at += taken;
    }
});
