//! The commands that read: inspect, list, stats, and an admin's derive (which mints a token but
//! changes nothing).

use serde_json::{json, Value};

use super::keys::locate;
use super::{Control, Outcome, Refusal, View};
use crate::admin::{self, InspectRequest, KeyInfo, ListRequest};
use crate::credential::KeyId;
use crate::protocol;
use crate::record::{KeyRecord, UnixSeconds};

pub(super) fn derive(control: &Control, request: admin::DeriveRequest) -> Outcome {
    let view = control.view.borrow();
    let parent = view
        .find(KeyId(request.parent_id))
        .ok_or_else(|| Refusal::not_found(format!("no key {}", request.parent_id)))?;
    let spec = crate::verify::DeriveSpec {
        ttl_seconds: request.ttl_seconds.unwrap_or(0),
        scopes: request.scopes,
        tenant: request.tenant,
        ranges: request.allow,
        claims: request.claims.into_iter().collect(),
    };
    let settings = &control.settings;
    match crate::verify::mint(
        &settings.token_root,
        &settings.token_prefix,
        &crate::overlay::Found::Owned(&parent),
        &spec,
        UnixSeconds::now(),
        settings.token_ttl_max_seconds,
    ) {
        protocol::DeriveResult::Minted { token, expires } => {
            Ok(json!({ "token": token, "expires": expires.0, "parent": KeyInfo::from(&parent) }))
        }
        protocol::DeriveResult::Refused { status, message } => {
            Err(Refusal::invalid(format!("{status}: {message}")))
        }
    }
}

pub(super) fn inspect(control: &Control, request: InspectRequest) -> Outcome {
    let view = control.view.borrow();
    let record = locate(
        &view,
        &control.settings,
        request.id,
        request.credential.as_deref(),
    )?;
    Ok(json!({ "key": info(control, &record) }))
}

/// Most records one LIST looks at: a filter that keeps few keys answers a short page (or none)
/// with `next` set, rather than scanning a hundred million keys in one request.
const LIST_SCAN_MAX: usize = 1_000_000;

/// A key as shown, with its usage.
fn info(control: &Control, record: &KeyRecord) -> KeyInfo {
    let mut info = KeyInfo::from(record);
    info.usage = control.usage.get(record.id);
    info
}

pub(super) fn list(control: &Control, request: ListRequest) -> Outcome {
    let limit = request.limit.unwrap_or(admin::LIST_LIMIT_DEFAULT);
    if limit == 0 || limit > admin::LIST_LIMIT_MAX {
        return Err(Refusal::invalid(format!(
            "limit must be 1 to {}",
            admin::LIST_LIMIT_MAX
        )));
    }
    let after = request.after.unwrap_or(0);
    let view = control.view.borrow();
    let tenant = request.tenant.as_deref();
    let unused_since = request.unused_since;
    let keep = |record: &KeyRecord| {
        tenant.is_none_or(|t| record.tenant == t)
            && unused_since.is_none_or(|since| {
                let last = control
                    .usage
                    .get(record.id)
                    .map_or(record.created.0, |u| u.last_used);
                last < since
            })
    };
    let mut page = Vec::with_capacity(limit.min(64));
    let mut more = false;
    let mut scanned = 0;
    let mut last_scanned = after;
    walk(&view, after, |record| {
        if !keep(&record) {
            scanned += 1;
            last_scanned = record.id.0;
            if scanned >= LIST_SCAN_MAX {
                more = true;
                return false;
            }
            return true;
        }
        if page.len() == limit {
            more = true;
            return false;
        }
        scanned += 1;
        last_scanned = record.id.0;
        page.push(info(control, &record));
        true
    });
    let next = more.then_some(last_scanned);
    Ok(json!({ "keys": page, "next": next }))
}

/// Visits every key with an id above `after`, in id order (the snapshot's records merged with
/// the overlay's), until `visit` returns `false`.
fn walk(view: &View, after: u64, mut visit: impl FnMut(KeyRecord) -> bool) {
    let mut overlay: Vec<&KeyRecord> = view.overlay.records().filter(|r| r.id.0 > after).collect();
    overlay.sort_by_key(|r| r.id);
    let records = &view.snapshot.body().records;
    let mut at = records.partition_point(|r| r.id.to_native() <= after);
    let mut next_overlay = 0;
    loop {
        let from_snapshot = records.get(at).map(|r| r.id.to_native());
        let from_overlay = overlay.get(next_overlay).map(|r| r.id.0);
        let record = match (from_snapshot, from_overlay) {
            (None, None) => return,
            (Some(s), Some(o)) if o <= s => {
                next_overlay += 1;
                if o == s {
                    at += 1;
                }
                overlay[next_overlay - 1].clone()
            }
            (Some(_), _) => {
                let stored = &records[at];
                at += 1;
                if view.overlay.get(KeyId(stored.id.to_native())).is_some() {
                    continue;
                }
                view.snapshot.decode_record(stored)
            }
            (None, Some(_)) => {
                next_overlay += 1;
                overlay[next_overlay - 1].clone()
            }
        };
        if !visit(record) {
            return;
        }
    }
}

/// BLAKE3 over every key's record in id order, as the delta log encodes it: two nodes with
/// the same keys in the same states have the same digest, whatever their snapshots and logs.
/// Reads the whole table (about a second per ten million keys).
fn state_digest(view: &View) -> String {
    let mut hasher = blake3::Hasher::new();
    let mut bytes = Vec::with_capacity(256);
    walk(view, 0, |record| {
        bytes.clear();
        crate::delta::put_record(&mut bytes, &record);
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
        true
    });
    hasher.finalize().to_hex().to_string()
}

pub(super) fn stats(control: &Control, request: admin::StatsRequest) -> Value {
    let view = control.view.borrow();
    let durable = control.durable.borrow();
    let snapshot = &durable.snapshot;
    let age = UnixSeconds::now()
        .0
        .saturating_sub(snapshot.header().created.0);
    json!({
        "sequence": view.assigned,
        "applied_sequence": durable.applied,
        "snapshot_sequence": snapshot.header().sequence,
        "snapshot_records": snapshot.header().record_count,
        "snapshot_age_seconds": age,
        "overlay_records": view.overlay.len(),
        "log_bytes": durable.log_bytes,
        "log_deltas": durable.committed.len(),
        "log_changes": durable.changes,
        "compacting": control.compaction.running(),
        "compactions": control.compaction.finished(),
        "compaction_failures": control.compaction.failures(),
        "uptime_seconds": control.started.elapsed().as_secs(),
        "audit_lines": durable.audit_lines,
        "audit_head": durable.audit_head,
        "usage_keys": control.usage.keys(),
        "changes_refused": control.broken.borrow().clone(),
        "state_digest": request.digest.then(|| state_digest(&view)),
        "replication": replication(control),
    })
}

/// Replicated mode's figures for STATS: the stream, this node's place in it, the connection.
fn replication(control: &Control) -> Value {
    let Some(replica) = &control.replica else {
        return json!({ "mode": "local" });
    };
    let status = &replica.status;
    let applied = control.durable.borrow().applied;
    json!({
        "mode": "nats",
        "stream": replica.settings.stream,
        "node": replica.settings.node,
        "connected": status.connected(),
        "following": status.opened(),
        "last_error": status.last_error(),
        "stream_last_sequence": status.last_sequence(),
        "stream_first_sequence": status.first_sequence(),
        "behind": status.last_sequence().saturating_sub(applied),
        "silent_seconds": status.silent_for().map(|d| d.as_secs_f64()),
        "problem": status.problem(),
    })
}
