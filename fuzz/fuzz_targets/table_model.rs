//! The key table against a model: random sequences of issue, import, revoke, rotate, update and
//! compact go through the real delta encoder and decoder, the real overlay and the real snapshot
//! builder (compaction's own merge), and after every step every key — and ids that do not exist —
//! must look up exactly as in a plain map; imported keys must also be found by fingerprint.
#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use keyward::credential::{fingerprint, KeyId, Visibility};
use keyward::delta::{self, Delta, DeltaKind};
use keyward::overlay::{Found, Overlay, TableView};
use keyward::record::{KeyKind, KeyRecord, KeyStatus, UnixSeconds};
use keyward::snapshot::{self, Snapshot};
use libfuzzer_sys::fuzz_target;

/// Most operations taken from one input.
const STEPS_MAX: usize = 64;

fn snapshot_path() -> PathBuf {
    static DIRECTORY: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIRECTORY
        .get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .join(snapshot::FILE_NAME)
}

fn record(id: u64, kind: KeyKind, seed: u8) -> KeyRecord {
    let mut hash = [seed; 32];
    hash[..8].copy_from_slice(&id.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    KeyRecord {
        id: KeyId(id),
        kind,
        hash,
        tenant: format!("t{}", seed % 3),
        name: format!("key {id}"),
        scopes: vec![format!("s:{}", seed % 5)],
        created: UnixSeconds(1_000),
        not_before: UnixSeconds(1_000),
        expires: None,
        status: KeyStatus::Active,
        visibility: Visibility::Secret,
        allow: Vec::new(),
        idempotency_key: String::new(),
    }
}

fn owned(found: Found<'_>) -> KeyRecord {
    match found {
        Found::Owned(record) => record.clone(),
        Found::Mapped(table, record) => table.decode_record(record),
    }
}

struct Table {
    snapshot: Arc<Snapshot>,
    overlay: Overlay,
    /// Deltas since the snapshot, as compaction would merge them.
    deltas: Vec<Arc<Delta>>,
    sequence: u64,
}

impl Table {
    fn new() -> Table {
        let path = snapshot_path();
        let bytes = snapshot::encode(&[], 0, UnixSeconds(1_000)).unwrap();
        snapshot::write_atomic(&path, &bytes).unwrap();
        Table {
            snapshot: Snapshot::open(&path).unwrap(),
            overlay: Overlay::new(0),
            deltas: Vec::new(),
            sequence: 0,
        }
    }

    /// Logs a change the way the control plane does: encoded, decoded back, applied.
    fn change(&mut self, kind: DeltaKind, records: Vec<KeyRecord>) {
        self.sequence += 1;
        let written = Delta {
            sequence: self.sequence,
            kind,
            note: String::new(),
            records,
        };
        let bytes = delta::encode(&written);
        let (read, used) = delta::decode(&bytes).expect("a logged delta decodes");
        assert_eq!(used, bytes.len());
        assert_eq!(read, written);
        let read = Arc::new(read);
        self.overlay.apply(&read);
        assert_eq!(self.overlay.sequence(), self.sequence);
        self.deltas.push(read);
    }

    fn compact(&mut self) {
        let records = keyward::control::merge_records(&self.snapshot, &self.deltas);
        let path = snapshot_path();
        let bytes = snapshot::encode(&records, self.sequence, UnixSeconds(1_000)).unwrap();
        snapshot::write_atomic(&path, &bytes).unwrap();
        self.snapshot = Snapshot::open(&path).unwrap();
        self.overlay.drop_through(self.sequence);
        assert!(self.overlay.is_empty(), "a compaction left overlay entries");
        self.deltas.clear();
    }

    fn view(&self) -> TableView<'_> {
        TableView {
            snapshot: &self.snapshot,
            overlay: &self.overlay,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut table = Table::new();
    let mut model: BTreeMap<u64, KeyRecord> = BTreeMap::new();
    for step in data.chunks(2).take(STEPS_MAX) {
        let (operation, argument) = (step[0], step.get(1).copied().unwrap_or(0));
        let next = model.keys().last().map_or(1, |id| id + 1);
        let existing = (!model.is_empty())
            .then(|| *model.keys().nth(usize::from(argument) % model.len()).unwrap());
        match (operation % 6, existing) {
            (0, _) => {
                let issued = record(next, KeyKind::Native, argument);
                table.change(DeltaKind::Issue, vec![issued.clone()]);
                model.insert(next, issued);
            }
            (1, _) => {
                let imported = record(next, KeyKind::Imported, argument);
                table.change(DeltaKind::Import, vec![imported.clone()]);
                model.insert(next, imported);
            }
            (2, Some(id)) => {
                let mut revoked = model[&id].clone();
                revoked.status = KeyStatus::Revoked;
                table.change(DeltaKind::Revoke, vec![revoked.clone()]);
                model.insert(id, revoked);
            }
            (3, Some(id)) => {
                let mut old = model[&id].clone();
                old.status = KeyStatus::Revoked;
                let mut successor = old.clone();
                successor.id = KeyId(next);
                successor.kind = KeyKind::Native;
                successor.status = KeyStatus::Active;
                successor.hash = record(next, KeyKind::Native, argument).hash;
                table.change(DeltaKind::Rotate, vec![old.clone(), successor.clone()]);
                model.insert(id, old);
                model.insert(next, successor);
            }
            (4, Some(id)) => {
                let mut updated = model[&id].clone();
                updated.scopes = vec![format!("u:{argument}")];
                updated.name = format!("updated {argument}");
                table.change(DeltaKind::Update, vec![updated.clone()]);
                model.insert(id, updated);
            }
            (5, _) => table.compact(),
            _ => {}
        }
        let view = table.view();
        for (id, expected) in &model {
            let found = view.find(KeyId(*id)).map(owned);
            assert_eq!(found.as_ref(), Some(expected), "key {id} after {step:?}");
            if expected.kind == KeyKind::Imported {
                let by_fingerprint = view.find_fingerprint(&expected.hash).map(owned);
                assert_eq!(by_fingerprint.as_ref(), Some(expected), "fingerprint of {id}");
            }
        }
        let next = model.keys().last().map_or(1, |id| id + 1);
        for absent in [0, next, next + 1, u64::from(argument) + next] {
            assert!(view.find(KeyId(absent)).is_none(), "id {absent} exists");
        }
        let mut unknown = [0xA5u8; 32];
        unknown[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        if !model.values().any(|r| fingerprint(&r.hash) == fingerprint(&unknown)) {
            assert!(view.find_fingerprint(&unknown).is_none());
        }
    }
});
