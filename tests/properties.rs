//! Property tests: credential round trip and typo detection, protocol codec round trips, and
//! decoders that never panic on arbitrary bytes.

use std::net::IpAddr;

use proptest::prelude::*;

use keyward::credential::{self, KeyId, NativeCredential, Parsed, Prefixes, Secret, Visibility};
use keyward::protocol::{self, Grant, Status, VerifyRequest, VerifyResult};
use keyward::record::UnixSeconds;

fn prefixes() -> impl Strategy<Value = Prefixes> {
    ("[a-z0-9]{2,16}", "[a-z0-9]{2,16}")
        .prop_filter("prefixes must differ", |(a, b)| a != b)
        .prop_map(|(a, b)| Prefixes::new(&a, &b).unwrap())
}

fn native() -> impl Strategy<Value = NativeCredential> {
    (1..=u64::MAX, any::<[u8; 32]>(), any::<bool>()).prop_map(|(id, secret, public)| {
        NativeCredential {
            key_id: KeyId(id),
            secret: Secret(secret),
            visibility: if public {
                Visibility::Public
            } else {
                Visibility::Secret
            },
        }
    })
}

const URL_SAFE: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.~";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn credential_round_trips(credential in native(), prefixes in prefixes()) {
        let text = credential.encode(&prefixes);
        prop_assert!(text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        let Parsed::Native(parsed) = credential::parse(text.as_bytes(), &prefixes) else {
            return Err(TestCaseError::fail(format!("{text} did not parse")));
        };
        prop_assert_eq!(parsed.key_id, credential.key_id);
        prop_assert_eq!(parsed.secret.0, credential.secret.0);
        prop_assert_eq!(parsed.visibility, credential.visibility);
    }

    #[test]
    fn any_single_character_change_is_rejected(
        credential in native(),
        position in any::<prop::sample::Index>(),
        replacement in prop::sample::select(URL_SAFE.to_vec()),
    ) {
        let prefixes = Prefixes::default();
        let mut text = credential.encode(&prefixes).into_bytes();
        let at = position.index(text.len());
        prop_assume!(text[at] != replacement);
        let body_starts = text.iter().position(|&b| b == b'_').unwrap() + 1;
        text[at] = replacement;
        let parsed = credential::parse(&text, &prefixes);
        if at >= body_starts {
            // Inside the body: the checksum (or the alphabet check) catches it, no lookup.
            prop_assert!(matches!(parsed, Parsed::Malformed(_)), "{:?} accepted", String::from_utf8_lossy(&text));
        } else {
            // In the prefix or separator: no longer one of our credentials at all.
            prop_assert!(!matches!(parsed, Parsed::Native(_)), "{:?} accepted", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn verify_frames_round_trip(
        credential in prop::collection::vec(any::<u8>(), 0..=protocol::CREDENTIAL_BYTES_MAX),
        scope in prop::collection::vec(any::<u8>(), 0..=64),
        tenant in prop::collection::vec(any::<u8>(), 0..=64),
        address in prop::option::of(any::<IpAddr>()),
        request_id in any::<u32>(),
    ) {
        let request = VerifyRequest {
            credential: &credential,
            scope: (!scope.is_empty()).then_some(&scope[..]),
            tenant: (!tenant.is_empty()).then_some(&tenant[..]),
            address,
        };
        let mut bytes = Vec::new();
        protocol::put_verify_frame(&mut bytes, request_id, &request);
        let frame = protocol::decode_frame(&bytes, protocol::BODY_BYTES_DEFAULT).unwrap().unwrap();
        prop_assert_eq!(frame.header.request_id, request_id);
        prop_assert_eq!(frame.bytes(), bytes.len());
        prop_assert_eq!(protocol::parse_verify(frame.body).unwrap(), request.clone());
        // Every strict prefix of the frame is incomplete, never an error or a frame.
        for cut in [0, 1, protocol::HEADER_BYTES - 1, protocol::HEADER_BYTES, bytes.len() - 1] {
            if cut < bytes.len() {
                prop_assert_eq!(protocol::decode_frame(&bytes[..cut], protocol::BODY_BYTES_DEFAULT), Ok(None));
            }
        }
    }

    #[test]
    fn batch_frames_round_trip(credentials in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 1..=protocol::BATCH_ITEMS_MAX)) {
        let requests: Vec<VerifyRequest<'_>> = credentials.iter().map(|c| VerifyRequest { credential: c, ..Default::default() }).collect();
        let mut bytes = Vec::new();
        protocol::put_batch_frame(&mut bytes, 3, &requests);
        let frame = protocol::decode_frame(&bytes, protocol::BODY_BYTES_LIMIT).unwrap().unwrap();
        prop_assert_eq!(protocol::check_batch(frame.body).unwrap(), requests.len());
        let parsed: Vec<_> = protocol::BatchItems::new(frame.body).unwrap().map(|r| r.unwrap()).collect();
        prop_assert_eq!(parsed, requests);
    }

    #[test]
    fn results_round_trip(
        status in prop::sample::select(Status::ALL.to_vec()),
        key_id in any::<u64>(),
        expires in prop::option::of(1..u64::MAX),
        tenant in "[a-z0-9-]{0,64}",
        scopes in prop::collection::vec("[a-z:]{1,64}", 0..32),
        claims in prop::collection::vec(("[a-z]{1,32}", "[ -~]{0,100}"), 0..8),
    ) {
        let grant = (status == Status::Valid).then(|| Grant { key_id, expires: expires.map(UnixSeconds), tenant, scopes, claims });
        let result = VerifyResult { status, grant };
        let mut body = Vec::new();
        protocol::put_result(&mut body, &result);
        prop_assert_eq!(protocol::parse_result(&body).unwrap(), result.clone());
        let mut batch = 2u16.to_le_bytes().to_vec();
        protocol::put_result(&mut batch, &result);
        protocol::put_result(&mut batch, &result);
        prop_assert_eq!(protocol::parse_batch_result(&batch).unwrap(), vec![result.clone(), result]);
    }

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = protocol::decode_frame(&bytes, protocol::BODY_BYTES_DEFAULT);
        let _ = protocol::parse_verify(&bytes);
        let _ = protocol::check_batch(&bytes);
        let _ = protocol::parse_result(&bytes);
        let _ = protocol::parse_batch_result(&bytes);
        let _ = protocol::parse_error(&bytes);
        let _ = credential::parse(&bytes, &Prefixes::default());
        let mut prefixed = b"kw_".to_vec();
        prefixed.extend_from_slice(&bytes);
        prop_assert!(!matches!(credential::parse(&prefixed, &Prefixes::default()), Parsed::Native(_)) || prefixed.len() == 3 + credential::BODY_CHARS);
    }
}

#[test]
fn damaged_snapshots_never_load_and_never_panic() {
    use keyward::credential::Hasher;
    use keyward::snapshot::{self, Snapshot};
    let directory = tempfile::tempdir().unwrap();
    let hasher = Hasher::new(&[5; 32]);
    let set = keyward::keyset::generate(
        300,
        &hasher,
        &Prefixes::default(),
        UnixSeconds(1_800_000_000),
    );
    let good = snapshot::encode(&set.records, 0, UnixSeconds(1)).unwrap();
    let path = directory.path().join(snapshot::FILE_NAME);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..400 {
        let mut bytes = good.clone();
        match round % 3 {
            0 => {
                let at = next() as usize % bytes.len();
                bytes[at] ^= 1 << (next() % 8);
            }
            1 => bytes.truncate(next() as usize % bytes.len()),
            _ => {
                let at = next() as usize % bytes.len();
                bytes.insert(at, next() as u8);
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            Snapshot::open(&path).is_err(),
            "round {round}: damaged snapshot loaded"
        );
    }
    std::fs::write(&path, &good).unwrap();
    assert!(Snapshot::open(&path).is_ok());
}
