//! The table's layout against a model: every field of every record round trips, lookups find
//! what the model holds and nothing else, and the checks refuse what the writer never makes.

use proptest::prelude::*;

use super::*;
use crate::credential::{fingerprint, KeyId, Visibility};
use crate::record::{Cidr, KeyKind, KeyRecord, KeyStatus};

fn record(id: u64, kind: KeyKind) -> KeyRecord {
    KeyRecord {
        id: KeyId(id),
        kind,
        hash: *blake3::hash(&id.to_le_bytes()).as_bytes(),
        tenant: format!("tenant-{}", id % 3),
        name: format!("key {id}"),
        scopes: vec!["orders:read".into(), format!("scope-{}", id % 5)],
        created: UnixSeconds(1_700_000_000),
        not_before: UnixSeconds(1_700_000_000),
        expires: (id % 2 == 0).then_some(UnixSeconds(1_900_000_000)),
        status: KeyStatus::Active,
        visibility: Visibility::Secret,
        allow: vec!["10.0.0.0/8".parse().unwrap()],
        idempotency_key: String::new(),
    }
}

fn open(records: &[KeyRecord]) -> (tempfile::TempDir, Arc<Snapshot>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    write_atomic(&path, &encode(records, 7, UnixSeconds(5)).unwrap()).unwrap();
    let snapshot = Snapshot::open(&path).unwrap();
    (dir, snapshot)
}

/// Checks the snapshot against the records it was made from (the model).
fn agrees_with(snapshot: &Snapshot, model: &[KeyRecord]) {
    let mut sorted = model.to_vec();
    sorted.sort_by_key(|r| r.id);
    assert_eq!(snapshot.records().collect::<Vec<_>>(), sorted);
    for original in model {
        let found = snapshot
            .find(original.id)
            .expect("every record is found by id");
        assert_eq!(&snapshot.decode_record(found), original);
        assert!(snapshot.find_or_decoy(original.id).is_ok());
        for scope in &original.scopes {
            assert!(snapshot.has_scope(found, scope.as_bytes()));
        }
        assert!(!snapshot.has_scope(found, b"no such scope"));
        let by_hash = snapshot.find_fingerprint(&original.hash);
        if original.kind == KeyKind::Imported {
            assert_eq!(by_hash.unwrap().id.to_native(), original.id.0);
        } else {
            assert!(by_hash.is_none_or(|r| r.id.to_native() != original.id.0));
        }
    }
    let present: std::collections::HashSet<u64> = model.iter().map(|r| r.id.0).collect();
    for probe in 1..=2000u64 {
        let id = probe.wrapping_mul(0x9e37_79b9) % (1 << 40) + 1;
        if !present.contains(&id) {
            assert!(snapshot.find(KeyId(id)).is_none());
            assert!(snapshot.find_or_decoy(KeyId(id)).is_err());
        }
    }
}

#[test]
fn round_trip_through_a_file() {
    let records: Vec<KeyRecord> = (1..=1000)
        .map(|id| {
            let kind = if id % 10 == 0 {
                KeyKind::Imported
            } else {
                KeyKind::Native
            };
            record(id, kind)
        })
        .collect();
    let (_dir, snapshot) = open(&records);
    assert_eq!(snapshot.header().sequence, 7);
    assert_eq!(snapshot.header().record_count, 1000);
    agrees_with(&snapshot, &records);
    assert!(snapshot.find(KeyId(1001)).is_none());
    assert!(snapshot.find_fingerprint(&[9u8; 32]).is_none());
}

#[test]
fn times_past_2106_and_every_field_kind_round_trip() {
    let mut far = record(5, KeyKind::Native);
    far.created = UnixSeconds(u64::from(u32::MAX) + 7);
    far.not_before = UnixSeconds(u64::from(u32::MAX));
    far.expires = Some(UnixSeconds(u64::MAX));
    far.name = "naïve – ключ 🔑".into();
    far.idempotency_key = "idem-0001".into();
    let mut edge = record(6, KeyKind::Imported);
    edge.expires = Some(UnixSeconds(u64::from(u32::MAX) - 1));
    edge.status = KeyStatus::Revoked;
    edge.visibility = Visibility::Public;
    edge.scopes = vec!["b".into(), "a".into(), "b".into()];
    edge.allow = vec![
        "2001:db8::/32".parse::<Cidr>().unwrap(),
        "192.168.1.7".parse().unwrap(),
    ];
    edge.name = "x".repeat(crate::record::NAME_BYTES_MAX);
    let mut plain = record(7, KeyKind::Native);
    plain.tenant = String::new();
    plain.scopes.clear();
    plain.allow.clear();
    plain.name = "x".repeat(50);
    let records = vec![far, edge, plain];
    let (_dir, snapshot) = open(&records);
    agrees_with(&snapshot, &records);
    let far = snapshot.find(KeyId(5)).unwrap();
    assert_eq!(far.expires.to_native(), TIME_WIDE);
    assert_eq!(snapshot.expires(far), u64::MAX);
}

#[test]
fn scopes_past_the_bitmap_are_found_by_their_list() {
    let records: Vec<KeyRecord> = (1..=100u64)
        .map(|id| KeyRecord {
            scopes: vec![format!("s{id:03}"), format!("s{:03}", 100 - id)],
            ..record(id, KeyKind::Native)
        })
        .collect();
    let (_dir, snapshot) = open(&records);
    agrees_with(&snapshot, &records);
    let stats = snapshot.stats();
    assert!(stats.scope_sets_bitmap_only < stats.scope_sets);
}

#[test]
fn empty_table_loads() {
    let (_dir, snapshot) = open(&[]);
    assert!(snapshot.find(KeyId(1)).is_none());
    assert!(matches!(snapshot.find_or_decoy(KeyId(1)), Err(None)));
    assert_eq!(snapshot.records().count(), 0);
}

#[test]
fn duplicate_ids_are_refused() {
    let records = vec![record(3, KeyKind::Native), record(3, KeyKind::Native)];
    assert!(matches!(
        encode(&records, 0, UnixSeconds(0)),
        Err(SnapshotError::DuplicateId(3))
    ));
}

#[test]
fn hot_records_and_buckets_are_one_cache_line_each_and_aligned() {
    let records: Vec<KeyRecord> = (1..=100).map(|id| record(id, KeyKind::Native)).collect();
    let (_dir, snapshot) = open(&records);
    let body = snapshot.body();
    assert_eq!(body.records.as_ptr() as usize % 64, 0);
    assert_eq!(body.id_index.as_ptr() as usize % 64, 0);
    assert_eq!(std::mem::size_of_val(&body.records[0]), 64);
}

#[test]
fn a_version_1_file_is_refused_with_the_upgrade_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let mut bytes = encode(&[record(1, KeyKind::Native)], 0, UnixSeconds(0)).unwrap();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let error = Snapshot::open(&path).unwrap_err().to_string();
    assert!(error.contains("keyward-ctl table upgrade"), "{error}");
}

fn arbitrary_record() -> impl Strategy<Value = KeyRecord> {
    let times = prop_oneof![
        (1_600_000_000u64..1_900_000_000).boxed(),
        (u64::from(u32::MAX) - 2..u64::from(u32::MAX) + 2).boxed(),
        any::<u64>().boxed(),
    ];
    (
        (
            1u64..5_000,
            any::<[u8; 32]>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        (
            "[a-c]{0,3}",
            "[a-z ]{0,20}",
            prop::collection::vec("[a-z]{1,3}", 0..5),
        ),
        (times.clone(), times.clone(), prop::option::of(times)),
        (
            prop::collection::vec((any::<[u8; 16]>(), 0u8..=128), 0..3),
            "[a-z0-9]{0,10}",
        ),
    )
        .prop_map(
            |(
                (id, hash, imported, revoked, public),
                (tenant, name, scopes),
                (created, not_before, expires),
                (allow, idempotency_key),
            )| KeyRecord {
                id: KeyId(id),
                kind: if imported {
                    KeyKind::Imported
                } else {
                    KeyKind::Native
                },
                hash,
                tenant,
                name,
                scopes,
                created: UnixSeconds(created),
                not_before: UnixSeconds(not_before),
                expires: expires.map(|e| UnixSeconds(e.max(not_before).max(1))),
                status: if revoked {
                    KeyStatus::Revoked
                } else {
                    KeyStatus::Active
                },
                visibility: if public {
                    Visibility::Public
                } else {
                    Visibility::Secret
                },
                allow: allow
                    .into_iter()
                    .map(|(network, prefix_len)| Cidr {
                        network,
                        prefix_len,
                    })
                    .collect(),
                idempotency_key,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_field_of_every_record_round_trips(
        records in prop::collection::vec(arbitrary_record(), 0..300)
    ) {
        let mut seen_ids = std::collections::HashSet::new();
        let mut seen_fingerprints = std::collections::HashSet::new();
        let records: Vec<KeyRecord> = records
            .into_iter()
            .filter(|r| seen_ids.insert(r.id))
            .filter(|r| r.kind == KeyKind::Native || seen_fingerprints.insert(fingerprint(&r.hash)))
            .collect();
        let (_dir, snapshot) = open(&records);
        agrees_with(&snapshot, &records);
    }
}
