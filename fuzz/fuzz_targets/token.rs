//! Derived-token parsing from untrusted text: never a panic; a token that parses must encode
//! back to exactly the same text (the model: one text per token), the fast chain check over its
//! raw bytes must agree with the one over its parsed caveats, and attenuating it keeps it
//! parseable.
#![no_main]

use keyward::record::UnixSeconds;
use keyward::token::{chain_matches, Caveat, RootKey, Token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut text = b"kwt_".to_vec();
    text.extend_from_slice(data);
    if let Some(Ok((token, bytes))) = Token::parse_raw(&text, "kwt") {
        assert_eq!(token.encode("kwt").as_bytes(), &text[..], "non-canonical token accepted");
        let root = RootKey::new(&[1; 32]);
        assert_eq!(chain_matches(&root, &bytes), token.signature_matches(&root));
        if let Ok(narrower) = token.attenuate(Caveat::Expires(UnixSeconds(1))) {
            let again = narrower.encode("kwt");
            if again.len() <= keyward::token::TOKEN_TEXT_BYTES_MAX {
                assert_eq!(Token::parse(again.as_bytes(), "kwt").unwrap().unwrap(), narrower);
            }
        }
    }
});
