//! The delta log's unit tests: records, replay, torn tails and corruption, headers.

use super::*;

fn record(id: u64) -> KeyRecord {
    KeyRecord {
        id: KeyId(id),
        kind: KeyKind::Native,
        hash: [id as u8; 32],
        tenant: "acme".into(),
        name: format!("key {id}"),
        scopes: vec!["a:b".into()],
        created: UnixSeconds(10),
        not_before: UnixSeconds(10),
        expires: Some(UnixSeconds(99)),
        status: KeyStatus::Active,
        visibility: Visibility::Secret,
        allow: vec!["10.0.0.0/8".parse().unwrap()],
        idempotency_key: String::new(),
    }
}

fn delta(sequence: u64) -> Delta {
    Delta {
        sequence,
        kind: DeltaKind::Issue,
        note: "n".into(),
        records: vec![record(sequence)],
    }
}

#[test]
fn records_round_trip() {
    let original = delta(5);
    let bytes = encode(&original);
    assert_eq!(decode(&bytes), Ok((original, bytes.len())));
}

#[test]
fn replay_skips_what_the_snapshot_holds_and_cuts_a_torn_tail() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join(FILE_NAME);
    std::fs::write(&path, empty_log()).unwrap();
    let (mut log, replay) = DeltaLog::open(&path, 0).unwrap();
    assert!(replay.deltas.is_empty());
    for sequence in 1..=3 {
        log.append_durable(&encode(&delta(sequence))).unwrap();
    }
    let good = log.bytes();
    log.append_durable(&encode(&delta(4))[..20]).unwrap();
    drop(log);
    let (log, replay) = DeltaLog::open(&path, 1).unwrap();
    assert_eq!(
        replay.deltas.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(replay.last_sequence, 3);
    let (offset, dropped, _) = replay.cut.unwrap();
    assert_eq!((offset, dropped), (good, 20));
    assert_eq!(log.bytes(), good);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
}

fn log_of(directory: &Path, deltas: u64) -> (PathBuf, Vec<u64>) {
    let path = directory.join(FILE_NAME);
    std::fs::write(&path, empty_log()).unwrap();
    let (mut log, _) = DeltaLog::open(&path, 0).unwrap();
    let mut offsets = Vec::new();
    for sequence in 1..=deltas {
        offsets.push(log.bytes());
        log.append_durable(&encode(&delta(sequence))).unwrap();
    }
    (path, offsets)
}

#[test]
fn damage_followed_by_a_valid_record_is_corruption_and_nothing_is_cut() {
    let directory = tempfile::tempdir().unwrap();
    let (path, offsets) = log_of(directory.path(), 4);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offsets[1] as usize + 30] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    match DeltaLog::open(&path, 0) {
        Err(LogError::Corrupt {
            offset,
            next_offset,
            next_sequence,
            ..
        }) => {
            assert_eq!(offset, offsets[1]);
            assert_eq!((next_offset, next_sequence), (offsets[2], 3));
        }
        other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r)),
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the log was changed");
    let report = inspect(&bytes).unwrap();
    assert_eq!(report.damage.as_ref().map(|d| d.0), Some(offsets[1]));
    let sequences: Vec<u64> = report.records.iter().map(|(_, d)| d.sequence).collect();
    assert_eq!(sequences, vec![1, 3, 4]);
}

#[test]
fn a_zeroed_or_garbage_tail_is_torn_not_corrupt() {
    let directory = tempfile::tempdir().unwrap();
    let (path, _) = log_of(directory.path(), 3);
    let mut bytes = std::fs::read(&path).unwrap();
    let good = bytes.len();
    bytes.extend_from_slice(&[0u8; 4096]);
    bytes.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(&path, &bytes).unwrap();
    let (log, replay) = DeltaLog::open(&path, 0).unwrap();
    assert_eq!(replay.deltas.len(), 3);
    assert_eq!(replay.cut.map(|c| c.0), Some(good as u64));
    assert_eq!(log.bytes(), good as u64);
}

#[test]
fn an_empty_log_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join(FILE_NAME);
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        DeltaLog::open(&path, 0),
        Err(LogError::Empty { bytes: 0, .. })
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(DeltaLog::open(&path, 0), Err(LogError::Io { .. })));
}

#[test]
fn a_log_refuses_a_key_table_older_than_the_one_it_follows() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join(FILE_NAME);
    std::fs::write(&path, empty_log()).unwrap();
    let (mut log, _) = DeltaLog::open(&path, 0).unwrap();
    log.rewrite(5, &[encode(&delta(6))]).unwrap();
    drop(log);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        read_header(&bytes),
        Ok(Header {
            version: 2,
            bytes: FILE_HEADER_BYTES,
            follows: 5
        })
    );
    assert!(matches!(
        DeltaLog::open(&path, 4),
        Err(LogError::OlderSnapshot {
            follows: 5,
            snapshot: 4,
            ..
        })
    ));
    let (_, replay) = DeltaLog::open(&path, 5).unwrap();
    assert_eq!(replay.last_sequence, 6);
    // A newer table is fine: it holds what the log has and more.
    let (_, replay) = DeltaLog::open(&path, 9).unwrap();
    assert!(replay.deltas.is_empty());
}

#[test]
fn a_format_1_log_is_still_read() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join(FILE_NAME);
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&encode(&delta(1)));
    bytes.extend_from_slice(&encode(&delta(2)));
    std::fs::write(&path, &bytes).unwrap();
    let (_, replay) = DeltaLog::open(&path, 1).unwrap();
    assert_eq!(replay.deltas.len(), 1);
    assert_eq!(inspect(&bytes).unwrap().records.len(), 2);
    assert_eq!(read_header(&bytes).unwrap().follows, 0);
}

#[test]
fn short_or_unknown_headers_are_named() {
    let mut bytes = empty_log().to_vec();
    assert_eq!(read_header(&bytes[..20]), Err(HeaderError::Short(20)));
    assert_eq!(read_header(&bytes[..3]), Err(HeaderError::Short(3)));
    bytes[8] = 3;
    assert_eq!(read_header(&bytes), Err(HeaderError::Version(3)));
    bytes[0] = b'X';
    assert_eq!(read_header(&bytes), Err(HeaderError::Magic));
}
