//! The commands that change keys: issue, import, revoke, rotate, update. Each checks the request
//! against the view, turns it into one delta (`commit::assign`) and waits for the commit.

use std::rc::Rc;

use serde_json::json;

use super::commit::{self, assign};
use super::{Caller, Control, ControlSettings, Outcome, Refusal, View};
use crate::admin::{
    self, ImportRequest, IssueRequest, KeyInfo, KeySpec, RevokeRequest, RotateRequest,
    UpdateRequest,
};
use crate::credential::{self, KeyId, NativeCredential, Parsed, Secret, Visibility};
use crate::delta::{self, DeltaKind};
use crate::record::{KeyKind, KeyRecord, KeyStatus, UnixSeconds};

/// Turns a key spec into a record (without id, hash and kind), checking its bounds.
fn record_from_spec(spec: &KeySpec, now: UnixSeconds) -> Result<KeyRecord, Refusal> {
    let expires = match (spec.expires, spec.ttl_seconds) {
        (Some(expires), _) => Some(UnixSeconds(expires)),
        (None, Some(ttl)) => Some(UnixSeconds(now.0.saturating_add(ttl))),
        (None, None) => None,
    };
    let record = KeyRecord {
        id: KeyId(1),
        kind: KeyKind::Native,
        hash: [0; 32],
        tenant: spec.tenant.clone(),
        name: spec.name.clone(),
        scopes: spec.scopes.clone(),
        created: now,
        not_before: UnixSeconds(spec.not_before.unwrap_or(now.0)),
        expires,
        status: KeyStatus::Active,
        visibility: if spec.public {
            Visibility::Public
        } else {
            Visibility::Secret
        },
        allow: spec.allow.clone(),
        idempotency_key: String::new(),
    };
    record
        .validate()
        .map_err(|e| Refusal::invalid(e.to_string()))?;
    Ok(record)
}

/// The secret of a key issued under an idempotency key: derived, so a retry can return the
/// same credential without the secret ever being stored.
fn idempotent_secret(master: &[u8; 32], id: KeyId, idempotency_key: &str) -> Secret {
    let key = blake3::derive_key("keyward 2026-11 idempotent issue secret v1", master);
    let mut hasher = blake3::Hasher::new_keyed(&key);
    hasher.update(&id.0.to_be_bytes());
    hasher.update(idempotency_key.as_bytes());
    Secret(*hasher.finalize().as_bytes())
}

pub(super) async fn issue(
    control: &Rc<Control>,
    caller: &Caller,
    request: IssueRequest,
) -> Outcome {
    let now = UnixSeconds::now();
    let mut record = record_from_spec(&request.spec, now)?;
    let idempotency_key = request.idempotency_key.unwrap_or_default();
    if idempotency_key.len() > crate::record::IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(Refusal::invalid("idempotency_key is longer than 128 bytes"));
    }
    let settings = &control.settings;
    let (pending, credential, info, replayed) = {
        let mut view = control.view.borrow_mut();
        if let Some(&id) = (!idempotency_key.is_empty())
            .then(|| view.idempotency.get(&idempotency_key))
            .flatten()
        {
            let existing = view
                .find(id)
                .ok_or_else(|| Refusal::not_found("idempotent key vanished"))?;
            let secret = idempotent_secret(&settings.master_secret, id, &idempotency_key);
            let credential = NativeCredential {
                key_id: id,
                secret,
                visibility: existing.visibility,
            }
            .encode(&settings.prefixes);
            (None, credential, KeyInfo::from(&existing), true)
        } else {
            let id = view.fresh_id()?;
            let secret = if idempotency_key.is_empty() {
                Secret::random()
            } else {
                idempotent_secret(&settings.master_secret, id, &idempotency_key)
            };
            record.id = id;
            record.hash = settings.hasher.native(id, &secret);
            record.idempotency_key = idempotency_key.clone();
            let credential = NativeCredential {
                key_id: id,
                secret,
                visibility: record.visibility,
            }
            .encode(&settings.prefixes);
            let info = KeyInfo::from(&record);
            let pending = assign(&mut view, DeltaKind::Issue, String::new(), vec![record]);
            (Some(pending), credential, info, false)
        }
    };
    match pending {
        Some(pending) => commit::commit(control, caller, "issue", pending).await?,
        // The key exists, but its delta may still be on its way: wait for everything before us.
        None => commit::barrier(control).await?,
    }
    Ok(json!({ "credential": credential, "key": info, "replayed": replayed }))
}

pub(super) async fn import(
    control: &Rc<Control>,
    caller: &Caller,
    request: ImportRequest,
) -> Outcome {
    if request.keys.is_empty() || request.keys.len() > admin::IMPORT_ITEMS_MAX {
        return Err(Refusal::invalid(format!(
            "an import holds 1 to {} keys",
            admin::IMPORT_ITEMS_MAX
        )));
    }
    let now = UnixSeconds::now();
    let settings = &control.settings;
    let mut results = Vec::with_capacity(request.keys.len());
    let pending = {
        let mut view = control.view.borrow_mut();
        let mut records = Vec::new();
        let mut fingerprints = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        let mut next_free = 0u64;
        for item in &request.keys {
            let outcome = (|| -> Result<KeyRecord, String> {
                let mut record =
                    record_from_spec(&item.spec, now).map_err(|refusal| refusal.message)?;
                let bytes = item.credential.as_bytes();
                if credential::claims_native_prefix(bytes, &settings.prefixes) {
                    return Err(
                        "looks like a keyward credential; only foreign keys can be imported".into(),
                    );
                }
                if !(credential::IMPORTED_BYTES_MIN..=credential::IMPORTED_BYTES_MAX)
                    .contains(&bytes.len())
                {
                    return Err(format!(
                        "an imported key must be {} to {} bytes",
                        credential::IMPORTED_BYTES_MIN,
                        credential::IMPORTED_BYTES_MAX
                    ));
                }
                let hash = settings.hasher.imported(bytes);
                if let Some(existing) = view.table().find_fingerprint(&hash) {
                    return Err(format!("already imported as key {}", existing.id()));
                }
                if !fingerprints.insert(credential::fingerprint(&hash)) {
                    return Err("appears twice in this import".into());
                }
                let id = match item.id {
                    Some(id) if !(1..=KeyId::MAX).contains(&id) => {
                        return Err(format!("key id {id} is outside 1 to {}", KeyId::MAX))
                    }
                    Some(id) if view.find(KeyId(id)).is_some() || !ids.insert(id) => {
                        return Err(format!("key id {id} is taken"))
                    }
                    Some(id) => KeyId(id),
                    None => {
                        // Past every id this import has used, so none is handed out twice.
                        let id = (view.next_id + records.len() as u64).max(next_free);
                        let id =
                            (id..=KeyId::MAX)
                                .find(|id| !ids.contains(id))
                                .ok_or_else(|| {
                                    format!(
                                    "the key id space is used up (the largest id, {}, is taken)",
                                    KeyId::MAX
                                )
                                })?;
                        ids.insert(id);
                        next_free = id + 1;
                        KeyId(id)
                    }
                };
                record.id = id;
                record.kind = KeyKind::Imported;
                record.visibility = Visibility::Secret;
                record.hash = hash;
                Ok(record)
            })();
            match outcome {
                Ok(record) => {
                    results.push(json!({ "ok": true, "id": record.id.0 }));
                    records.push(record);
                }
                Err(message) => results.push(json!({ "ok": false, "error": message })),
            }
        }
        (!records.is_empty()).then(|| assign(&mut view, DeltaKind::Import, String::new(), records))
    };
    if let Some(pending) = pending {
        commit::commit(control, caller, "import", pending).await?;
    }
    let imported = results.iter().filter(|r| r["ok"] == true).count();
    Ok(json!({ "imported": imported, "results": results }))
}

/// Finds the record a request names by id or by credential (whose secret must match).
pub(super) fn locate(
    view: &View,
    settings: &ControlSettings,
    id: Option<u64>,
    credential: Option<&str>,
) -> Result<KeyRecord, Refusal> {
    match (id, credential) {
        (Some(id), None) => view
            .find(KeyId(id))
            .ok_or_else(|| Refusal::not_found(format!("no key {id}"))),
        (None, Some(text)) => {
            let bytes = text.as_bytes();
            let found = match credential::parse(bytes, &settings.prefixes) {
                Parsed::Native(native) => view
                    .find(native.key_id)
                    .filter(|r| r.kind == KeyKind::Native)
                    .filter(|r| {
                        credential::hashes_equal(
                            &r.hash,
                            &settings.hasher.native(native.key_id, &native.secret),
                        )
                    }),
                Parsed::Malformed(error) => {
                    return Err(Refusal::invalid(format!("credential: {error}")))
                }
                Parsed::Other => {
                    let hash = settings.hasher.imported(bytes);
                    let id = view.table().find_fingerprint(&hash).map(|found| found.id());
                    id.and_then(|id| view.find(id))
                        .filter(|r| credential::hashes_equal(&r.hash, &hash))
                }
            };
            found.ok_or_else(|| Refusal::not_found("no key has this credential"))
        }
        _ => Err(Refusal::invalid("give exactly one of id and credential")),
    }
}

pub(super) async fn revoke(
    control: &Rc<Control>,
    caller: &Caller,
    request: RevokeRequest,
) -> Outcome {
    if request.reason.len() > delta::NOTE_BYTES_MAX {
        return Err(Refusal::invalid("reason is longer than 1024 bytes"));
    }
    let (pending, info, already) = {
        let mut view = control.view.borrow_mut();
        let mut record = locate(
            &view,
            &control.settings,
            request.id,
            request.credential.as_deref(),
        )?;
        if record.status == KeyStatus::Revoked {
            (None, KeyInfo::from(&record), true)
        } else {
            record.status = KeyStatus::Revoked;
            let info = KeyInfo::from(&record);
            (
                Some(assign(
                    &mut view,
                    DeltaKind::Revoke,
                    request.reason,
                    vec![record],
                )),
                info,
                false,
            )
        }
    };
    match pending {
        Some(pending) => commit::commit(control, caller, "revoke", pending).await?,
        // Revoked already, perhaps by a change still in flight: answer once it is everywhere.
        None => commit::barrier(control).await?,
    }
    Ok(json!({ "key": info, "already_revoked": already }))
}

pub(super) async fn rotate(
    control: &Rc<Control>,
    caller: &Caller,
    request: RotateRequest,
) -> Outcome {
    let now = UnixSeconds::now();
    let settings = &control.settings;
    let (delta, encoded, credential, old_info, new_info) = {
        let mut view = control.view.borrow_mut();
        let mut old = view
            .find(KeyId(request.id))
            .ok_or_else(|| Refusal::not_found(format!("no key {}", request.id)))?;
        if old.status == KeyStatus::Revoked {
            return Err(Refusal::invalid(format!(
                "key {} is revoked; issue a new key instead",
                request.id
            )));
        }
        let id = view.fresh_id()?;
        let secret = Secret::random();
        let mut successor = old.clone();
        successor.id = id;
        successor.kind = KeyKind::Native;
        successor.hash = settings.hasher.native(id, &secret);
        successor.created = now;
        successor.not_before = now;
        successor.idempotency_key = String::new();
        if let Some(name) = request.name {
            successor.name = name;
        }
        if let Some(scopes) = request.scopes {
            successor.scopes = scopes;
        }
        if let Some(expires) = request.expires {
            successor.expires = Some(UnixSeconds(expires));
        }
        if let Some(allow) = request.allow {
            successor.allow = allow;
        }
        if old.kind == KeyKind::Imported {
            successor.visibility = Visibility::Secret;
        }
        successor
            .validate()
            .map_err(|e| Refusal::invalid(e.to_string()))?;
        match request.grace_seconds.filter(|&g| g > 0) {
            Some(grace) => {
                let until = UnixSeconds(now.0.saturating_add(grace));
                old.expires = Some(old.expires.map_or(until, |e| e.min(until)));
                if let Some(expires) = old.expires.filter(|&e| e < old.not_before) {
                    old.not_before = expires;
                }
            }
            None => old.status = KeyStatus::Revoked,
        }
        let credential = NativeCredential {
            key_id: id,
            secret,
            visibility: successor.visibility,
        }
        .encode(&settings.prefixes);
        let (old_info, new_info) = (KeyInfo::from(&old), KeyInfo::from(&successor));
        let note = format!("rotated {} to {}", old.id, id);
        let (delta, encoded) = assign(&mut view, DeltaKind::Rotate, note, vec![old, successor]);
        (delta, encoded, credential, old_info, new_info)
    };
    commit::commit(control, caller, "rotate", (delta, encoded)).await?;
    Ok(json!({ "credential": credential, "key": new_info, "previous": old_info }))
}

pub(super) async fn update(
    control: &Rc<Control>,
    caller: &Caller,
    request: UpdateRequest,
) -> Outcome {
    let (delta, encoded, info) = {
        let mut view = control.view.borrow_mut();
        let mut record = view
            .find(KeyId(request.id))
            .ok_or_else(|| Refusal::not_found(format!("no key {}", request.id)))?;
        if let Some(name) = request.name {
            record.name = name;
        }
        if let Some(scopes) = request.scopes {
            record.scopes = scopes;
        }
        if let Some(allow) = request.allow {
            record.allow = allow;
        }
        record
            .validate()
            .map_err(|e| Refusal::invalid(e.to_string()))?;
        let info = KeyInfo::from(&record);
        let (delta, encoded) = assign(&mut view, DeltaKind::Update, String::new(), vec![record]);
        (delta, encoded, info)
    };
    commit::commit(control, caller, "update", (delta, encoded)).await?;
    Ok(json!({ "key": info }))
}
