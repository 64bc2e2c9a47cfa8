//! The verify decision: from a presented credential and the caller's requirements to a status.
//!
//! Order of checks (docs/PROTOCOL.md repeats it):
//! 1. shape: a string with one of our prefixes must parse (length, alphabet, version, checksum),
//!    anything else must be an imported-key candidate of 16..=512 bytes → otherwise `malformed`;
//! 2. lookup and secret: keyed hash of the secret, compared in constant time with the record's
//!    (or with a decoy when no record exists, so a miss costs the same) → otherwise `unknown`;
//! 3. only now, statuses that reveal something about the key: `revoked`, `expired`,
//!    `not_yet_valid`, `tenant_mismatch`, `scope_denied`, `address_denied`, in that order.

use crate::credential::{self, Hasher, KeyId, Parsed, Prefixes, SecretHash};
use crate::protocol::{self, Status, VerifyRequest};
use crate::record::{self, KeyKind, KeyStatus, UnixSeconds};
use crate::snapshot::{ArchivedStoredRecord, Snapshot};

/// Everything a shard needs to decide; immutable and shared.
#[derive(Clone)]
pub struct Verifier {
    hasher: Hasher,
    prefixes: Prefixes,
    decoy: SecretHash,
}

/// The decision, with the matched record when the secret matched.
#[derive(Clone, Copy, Debug)]
pub struct Verdict<'t> {
    pub status: Status,
    /// Present when the secret matched (for every status from `revoked` on, and `valid`).
    pub record: Option<&'t ArchivedStoredRecord>,
}

impl<'t> Verdict<'t> {
    fn status(status: Status) -> Verdict<'t> {
        Verdict {
            status,
            record: None,
        }
    }
}

impl Verifier {
    pub fn new(pepper: &[u8; 32], prefixes: Prefixes) -> Verifier {
        let hasher = Hasher::new(pepper);
        let decoy = hasher.imported(b"keyward decoy: compared when no record exists");
        Verifier {
            hasher,
            prefixes,
            decoy,
        }
    }

    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    pub fn prefixes(&self) -> &Prefixes {
        &self.prefixes
    }

    /// Decides one request against one table at time `now`.
    pub fn verify<'t>(
        &self,
        table: &'t Snapshot,
        request: &VerifyRequest<'_>,
        now: UnixSeconds,
    ) -> Verdict<'t> {
        let record = match credential::parse(request.credential, &self.prefixes) {
            Parsed::Native(native) => {
                let presented = self.hasher.native(native.key_id, &native.secret);
                let found = table
                    .find(native.key_id)
                    .filter(|r| r.kind == KeyKind::Native as u8)
                    .filter(|r| r.visibility == record::visibility_to_u8(native.visibility));
                self.match_secret(found, &presented)
            }
            Parsed::Malformed(_) => return Verdict::status(Status::Malformed),
            Parsed::Other => {
                let length = request.credential.len();
                if !(credential::IMPORTED_BYTES_MIN..=credential::IMPORTED_BYTES_MAX)
                    .contains(&length)
                {
                    return Verdict::status(Status::Malformed);
                }
                let presented = self.hasher.imported(request.credential);
                let found = table
                    .find_fingerprint(&presented)
                    .filter(|r| r.kind == KeyKind::Imported as u8);
                self.match_secret(found, &presented)
            }
        };
        let Some(record) = record else {
            return Verdict::status(Status::Unknown);
        };
        Verdict {
            status: judge(table, record, request, now),
            record: Some(record),
        }
    }

    /// Constant-time comparison against the record's hash, or against the decoy when there is
    /// no record, so hit and miss take the same time.
    #[inline]
    fn match_secret<'t>(
        &self,
        found: Option<&'t ArchivedStoredRecord>,
        presented: &SecretHash,
    ) -> Option<&'t ArchivedStoredRecord> {
        let stored = found.map_or(&self.decoy, |r| &r.hash);
        let equal = credential::hashes_equal(stored, presented);
        found.filter(|_| equal)
    }
}

/// The checks that may reveal something about a key; run only after its secret matched.
fn judge(
    table: &Snapshot,
    record: &ArchivedStoredRecord,
    request: &VerifyRequest<'_>,
    now: UnixSeconds,
) -> Status {
    if KeyStatus::from_u8(record.status) != Some(KeyStatus::Active) {
        return Status::Revoked;
    }
    let expires = record.expires.to_native();
    if expires != 0 && now.0 >= expires {
        return Status::Expired;
    }
    if now.0 < record.not_before.to_native() {
        return Status::NotYetValid;
    }
    if let Some(tenant) = request.tenant {
        if table.tenant_name(record.tenant.to_native()).as_bytes() != tenant {
            return Status::TenantMismatch;
        }
    }
    if let Some(scope) = request.scope {
        let granted = record
            .scopes
            .iter()
            .any(|s| table.scope_name(s.to_native()).as_bytes() == scope);
        if !granted {
            return Status::ScopeDenied;
        }
    }
    if !record.allow.is_empty() {
        let Some(address) = request.address else {
            return Status::AddressDenied;
        };
        let address = record::to_mapped(address);
        let allowed = record
            .allow
            .iter()
            .any(|r| record::contains(&r.network, r.prefix_len, &address));
        if !allowed {
            return Status::AddressDenied;
        }
    }
    Status::Valid
}

/// Appends the VERIFY result body for a verdict.
pub fn put_verdict(out: &mut Vec<u8>, table: &Snapshot, verdict: &Verdict<'_>) {
    match (verdict.status, verdict.record) {
        (Status::Valid, Some(record)) => protocol::put_valid(
            out,
            record.id.to_native(),
            record.expires.to_native(),
            table.tenant_name(record.tenant.to_native()),
            record
                .scopes
                .iter()
                .map(|s| table.scope_name(s.to_native())),
        ),
        (status, _) => protocol::put_status(out, status),
    }
}

/// The id a verdict refers to, when the secret matched.
pub fn verdict_key(verdict: &Verdict<'_>) -> Option<KeyId> {
    verdict.record.map(|r| KeyId(r.id.to_native()))
}
