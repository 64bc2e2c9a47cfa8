//! Control requests from the network: the admin-token prefix and every operation's JSON body.
//! Parsing must never panic, and a body that parses must serialize and parse back to itself.
#![no_main]

use keyward::admin::{AdminAddRequest, AdminRemoveRequest, ImportRequest, InspectRequest, IssueRequest, ListRequest, RevokeRequest, RotateRequest, UpdateRequest};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(json: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(json) {
        let again = serde_json::to_vec(&value).unwrap();
        assert_eq!(serde_json::from_slice::<T>(&again).unwrap(), value);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&token_bytes, rest)) = data.split_first() else { return };
    let Some(json) = rest.get(usize::from(token_bytes)..) else { return };
    round_trip::<IssueRequest>(json);
    round_trip::<ImportRequest>(json);
    round_trip::<RevokeRequest>(json);
    round_trip::<RotateRequest>(json);
    round_trip::<UpdateRequest>(json);
    round_trip::<InspectRequest>(json);
    round_trip::<ListRequest>(json);
    round_trip::<AdminAddRequest>(json);
    round_trip::<AdminRemoveRequest>(json);
    round_trip::<keyward::audit::Entry>(json);
});
