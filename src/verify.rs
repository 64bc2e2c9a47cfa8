//! The verify decision: from a presented credential and the caller's requirements to a status.
//!
//! Order of checks (docs/PROTOCOL.md repeats it):
//! 1. shape: a string with one of our prefixes must parse (length, alphabet, version, checksum),
//!    anything else must be an imported-key candidate of 16..=512 bytes → otherwise `malformed`;
//! 2. lookup and secret: keyed hash of the secret, compared in constant time with the record's
//!    (or with a decoy when no record exists, so a miss costs the same) → otherwise `unknown`;
//! 3. only now, statuses that reveal something about the key: `revoked`, `expired`,
//!    `not_yet_valid`, `tenant_mismatch`, `scope_denied`, `address_denied`, in that order.

use crate::credential::{self, Hasher, Parsed, Prefixes, SecretHash};
use crate::overlay::{Found, TableView};
use crate::protocol::{self, Status, VerifyRequest};
use crate::record::{self, KeyKind, UnixSeconds};

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
    pub record: Option<Found<'t>>,
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
        table: &TableView<'t>,
        request: &VerifyRequest<'_>,
        now: UnixSeconds,
    ) -> Verdict<'t> {
        let record = match credential::parse(request.credential, &self.prefixes) {
            Parsed::Native(native) => {
                let presented = self.hasher.native(native.key_id, &native.secret);
                let found = table
                    .find(native.key_id)
                    .filter(|r| r.kind() == KeyKind::Native as u8)
                    .filter(|r| r.visibility() == record::visibility_to_u8(native.visibility));
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
                    .filter(|r| r.kind() == KeyKind::Imported as u8);
                self.match_secret(found, &presented)
            }
        };
        let Some(record) = record else {
            return Verdict::status(Status::Unknown);
        };
        Verdict {
            status: judge(&record, request, now),
            record: Some(record),
        }
    }

    /// Constant-time comparison against the record's hash, or against the decoy when there is
    /// no record, so hit and miss take the same time.
    #[inline]
    fn match_secret<'t>(
        &self,
        found: Option<Found<'t>>,
        presented: &SecretHash,
    ) -> Option<Found<'t>> {
        let stored = found.as_ref().map_or(&self.decoy, |r| r.hash());
        let equal = credential::hashes_equal(stored, presented);
        found.filter(|_| equal)
    }
}

/// The checks that may reveal something about a key; run only after its secret matched.
fn judge(record: &Found<'_>, request: &VerifyRequest<'_>, now: UnixSeconds) -> Status {
    if !record.is_active() {
        return Status::Revoked;
    }
    let expires = record.expires();
    if expires != 0 && now.0 >= expires {
        return Status::Expired;
    }
    if now.0 < record.not_before() {
        return Status::NotYetValid;
    }
    if let Some(tenant) = request.tenant {
        if record.tenant().as_bytes() != tenant {
            return Status::TenantMismatch;
        }
    }
    if let Some(scope) = request.scope {
        if !record.has_scope(scope) {
            return Status::ScopeDenied;
        }
    }
    if !record.address_allowed(request.address) {
        return Status::AddressDenied;
    }
    Status::Valid
}

/// Appends the VERIFY result body for a verdict.
pub fn put_verdict(out: &mut Vec<u8>, verdict: &Verdict<'_>) {
    match (verdict.status, verdict.record) {
        (Status::Valid, Some(record)) => protocol::put_valid(
            out,
            record.id().0,
            record.expires(),
            record.tenant(),
            record.scopes(),
        ),
        (status, _) => protocol::put_status(out, status),
    }
}
