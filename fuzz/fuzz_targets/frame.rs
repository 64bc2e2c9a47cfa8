//! The verify protocol decoder, driven the way a shard drives it: frames are taken from the
//! buffer until it is incomplete or broken; every body that parses must re-encode to itself.
#![no_main]

use keyward::protocol::{self, opcode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The shard's decoder: one call per request frame, agreeing with the frame decoder below on
    // where each frame ends and on whether its body parses.
    let mut at = 0;
    while let Ok(Some(request)) = protocol::decode_request(&data[at..], protocol::BODY_BYTES_DEFAULT) {
        let frame = protocol::decode_frame(&data[at..], protocol::BODY_BYTES_DEFAULT).unwrap().unwrap();
        assert_eq!(request.bytes, frame.bytes());
        assert_eq!(request.request_id, frame.header.request_id);
        if let Ok(protocol::RequestKind::VerifyBatch(items, count)) = &request.kind {
            assert_eq!(items.clone().count(), *count);
        }
        at += request.bytes;
    }
    assert_eq!(
        protocol::decode_request(&data[at..], protocol::BODY_BYTES_DEFAULT).is_err(),
        protocol::decode_frame(&data[at..], protocol::BODY_BYTES_DEFAULT).is_err()
    );
    let mut at = 0;
    while let Ok(Some(frame)) = protocol::decode_frame(&data[at..], protocol::BODY_BYTES_DEFAULT) {
        assert!(frame.bytes() >= protocol::HEADER_BYTES);
        assert!(at + frame.bytes() <= data.len());
        at += frame.bytes();
        match frame.header.opcode {
            opcode::VERIFY => {
                if let Ok(request) = protocol::parse_verify(frame.body) {
                    let mut again = Vec::new();
                    protocol::put_verify(&mut again, &request);
                    assert_eq!(again, frame.body, "VERIFY body did not round-trip");
                }
            }
            opcode::VERIFY_BATCH => {
                if let Ok(count) = protocol::check_batch(frame.body) {
                    let items: Vec<_> = protocol::BatchItems::new(frame.body).unwrap().map(|i| i.unwrap()).collect();
                    assert_eq!(items.len(), count);
                    let mut again = count.to_le_bytes()[..2].to_vec();
                    for item in &items {
                        protocol::put_verify(&mut again, item);
                    }
                    assert_eq!(again, frame.body, "VERIFY_BATCH body did not round-trip");
                }
            }
            opcode::VERIFY_RESULT => {
                if let Ok(result) = protocol::parse_result(frame.body) {
                    let mut again = Vec::new();
                    protocol::put_result(&mut again, &result);
                    assert_eq!(protocol::parse_result(&again).unwrap(), result);
                }
            }
            opcode::DERIVE => {
                if let Ok(request) = protocol::parse_derive(frame.body) {
                    assert!(request.scopes.len() <= protocol::DERIVE_ITEMS_MAX);
                    for (network, prefix) in &request.ranges {
                        assert!(protocol::check_range(network, *prefix).is_ok());
                    }
                    let mut again = Vec::new();
                    protocol::put_derive_frame(&mut again, frame.header.request_id, &request);
                    assert_eq!(&again[protocol::HEADER_BYTES..], frame.body, "DERIVE body did not round-trip");
                }
            }
            opcode::VERIFY_AT => {
                if let Ok((sequence, request)) = protocol::parse_verify_at(frame.body) {
                    let mut again = Vec::new();
                    protocol::put_verify_at_frame(&mut again, frame.header.request_id, sequence, &request);
                    assert_eq!(&again[protocol::HEADER_BYTES..], frame.body, "VERIFY_AT body did not round-trip");
                }
            }
            opcode::VERIFY_AT_RESULT => {
                if let Ok((sequence, result)) = protocol::parse_verify_at_result(frame.body) {
                    let mut again = sequence.to_le_bytes().to_vec();
                    protocol::put_result(&mut again, &result);
                    assert_eq!(protocol::parse_verify_at_result(&again).unwrap(), (sequence, result));
                }
            }
            opcode::REVOKE_SELF => {
                if let Ok(request) = protocol::parse_revoke_self(frame.body) {
                    assert!(request.scope.is_none() && request.tenant.is_none() && request.address.is_none());
                    assert!(protocol::parse_verify(frame.body).is_ok());
                }
            }
            _ => {
                let _ = protocol::parse_batch_result(frame.body);
                let _ = protocol::parse_error(frame.body);
            }
        }
    }
});
