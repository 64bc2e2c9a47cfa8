//! The verify decision: from a presented credential and the caller's requirements to a status.
//!
//! Order of checks (docs/PROTOCOL.md repeats it):
//! 1. shape: a string with one of our prefixes must parse (length, alphabet, version, checksum),
//!    anything else must be an imported-key candidate of 16..=512 bytes → otherwise `malformed`;
//! 2. lookup and secret: keyed hash of the secret, compared in constant time with the record's
//!    (or, when no record exists, with the hash of a decoy record loaded from the table, so a
//!    miss does the same work and touches as much memory as a hit) → otherwise `unknown`;
//! 3. only now, statuses that reveal something about the key: `revoked`, `expired`,
//!    `not_yet_valid`, `tenant_mismatch`, `scope_denied`, `address_denied`, in that order.

use crate::credential::{self, Hasher, Parsed, Prefixes, SecretHash};
use crate::overlay::{Found, Lookup, TableView};
use crate::protocol::{self, Status, VerifyRequest};
use crate::record::{self, KeyKind, UnixSeconds};
use crate::token::{RootKey, Token};

/// Everything a shard needs to decide; immutable and shared.
#[derive(Clone)]
pub struct Verifier {
    hasher: Hasher,
    prefixes: Prefixes,
    decoy: SecretHash,
    token_root: RootKey,
    token_prefix: String,
}

/// What a presented credential looked like, for the metrics: a keyward key (its prefix was
/// one of ours), a derived token, or anything else (looked up as an imported key when its
/// length allows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    Native = 0,
    Imported = 1,
    Token = 2,
}

impl CredentialKind {
    pub const ALL: [CredentialKind; 3] = [
        CredentialKind::Native,
        CredentialKind::Imported,
        CredentialKind::Token,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CredentialKind::Native => "native",
            CredentialKind::Imported => "imported",
            CredentialKind::Token => "token",
        }
    }
}

/// The decision, with the matched record when the secret matched.
#[derive(Clone, Debug)]
pub struct Verdict<'t> {
    pub status: Status,
    pub kind: CredentialKind,
    /// Present when the secret matched (for every status from `revoked` on, and `valid`).
    pub record: Option<Found<'t>>,
    /// The derived token, when the credential was one (its caveats shape a valid answer).
    pub token: Option<Box<Token>>,
}

impl<'t> Verdict<'t> {
    fn status(status: Status, kind: CredentialKind) -> Verdict<'t> {
        Verdict {
            status,
            kind,
            record: None,
            token: None,
        }
    }
}

impl Verifier {
    pub fn new(
        pepper: &[u8; 32],
        master: &[u8; 32],
        prefixes: Prefixes,
        token_prefix: &str,
    ) -> Verifier {
        let hasher = Hasher::new(pepper);
        let decoy = hasher.imported(b"keyward decoy: compared when no record exists");
        Verifier {
            hasher,
            prefixes,
            decoy,
            token_root: RootKey::new(master),
            token_prefix: token_prefix.to_string(),
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
        let (kind, record) = match credential::parse(request.credential, &self.prefixes) {
            Parsed::Native(native) => {
                let presented = self.hasher.native(native.key_id, &native.secret);
                // With no record, a decoy record from the table goes through the same checks
                // (and so the same cache lines) as a real one; only a real one can match.
                let (real, candidate) = match table.find_or_decoy(native.key_id) {
                    Lookup::Hit(record) => (true, Some(record)),
                    Lookup::Miss(decoy) => (false, decoy),
                };
                let shaped = std::hint::black_box(
                    candidate
                        .filter(|r| r.kind() == KeyKind::Native as u8)
                        .filter(|r| r.visibility() == record::visibility_to_u8(native.visibility)),
                );
                let found = shaped.filter(|_| real);
                let matched = self.match_secret(found, &presented, || candidate.map(|r| r.hash()));
                (CredentialKind::Native, matched)
            }
            Parsed::Malformed(_) => {
                return Verdict::status(Status::Malformed, CredentialKind::Native)
            }
            Parsed::Other => {
                if let Some(parsed) = Token::parse_raw(request.credential, &self.token_prefix) {
                    return match parsed {
                        Ok((token, bytes)) => self.verify_token(table, token, &bytes, request, now),
                        Err(_) => Verdict::status(Status::Malformed, CredentialKind::Token),
                    };
                }
                let length = request.credential.len();
                if !(credential::IMPORTED_BYTES_MIN..=credential::IMPORTED_BYTES_MAX)
                    .contains(&length)
                {
                    return Verdict::status(Status::Malformed, CredentialKind::Imported);
                }
                let presented = self.hasher.imported(request.credential);
                let (real, candidate) = match table.find_fingerprint_or_decoy(&presented) {
                    Lookup::Hit(record) => (true, Some(record)),
                    Lookup::Miss(decoy) => (false, decoy),
                };
                let shaped =
                    std::hint::black_box(candidate.filter(|r| r.kind() == KeyKind::Imported as u8));
                let found = shaped.filter(|_| real);
                let matched = self.match_secret(found, &presented, || candidate.map(|r| r.hash()));
                (CredentialKind::Imported, matched)
            }
        };
        let Some(record) = record else {
            return Verdict::status(Status::Unknown, kind);
        };
        Verdict {
            status: judge(&record, request, now),
            kind,
            record: Some(record),
            token: None,
        }
    }

    /// Verifies a derived token: its MAC chain first (a forged or altered token is `unknown`),
    /// then its caveats and its parent's current record, intersected.
    fn verify_token<'t>(
        &self,
        table: &TableView<'t>,
        token: Token,
        bytes: &[u8],
        request: &VerifyRequest<'_>,
        now: UnixSeconds,
    ) -> Verdict<'t> {
        if !crate::token::chain_matches(&self.token_root, bytes) {
            return Verdict::status(Status::Unknown, CredentialKind::Token);
        }
        let Some(parent) = table.find(token.parent) else {
            return Verdict::status(Status::Unknown, CredentialKind::Token);
        };
        let status = judge_token(&parent, &token, request, now);
        Verdict {
            status,
            kind: CredentialKind::Token,
            record: Some(parent),
            token: Some(Box::new(token)),
        }
    }

    pub fn token_prefix(&self) -> &str {
        &self.token_prefix
    }

    pub fn token_root(&self) -> &RootKey {
        &self.token_root
    }

    /// Constant-time comparison against the record's hash. With no record, the presented hash
    /// is compared with a decoy record's hash from the table (`decoy`), so the miss loads a
    /// record and compares like a hit: an unknown id and a known id with a wrong secret cost the
    /// same work and touch the same amount of memory.
    #[inline]
    fn match_secret<'t>(
        &self,
        found: Option<Found<'t>>,
        presented: &SecretHash,
        decoy: impl FnOnce() -> Option<&'t SecretHash>,
    ) -> Option<Found<'t>> {
        let stored = match &found {
            Some(record) => record.hash(),
            None => decoy().unwrap_or(&self.decoy),
        };
        // black_box: the result of a decoy comparison is unused, and must not be optimised away.
        let equal = std::hint::black_box(credential::hashes_equal(stored, presented));
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

/// The parent's checks and the token's caveats, intersected, in the same order as for keys.
fn judge_token(
    parent: &Found<'_>,
    token: &Token,
    request: &VerifyRequest<'_>,
    now: UnixSeconds,
) -> Status {
    if !parent.is_active() {
        return Status::Revoked;
    }
    let limits = token.limits();
    if effective_expiry(parent, &limits).is_some_and(|e| now.0 >= e) {
        return Status::Expired;
    }
    if now.0 < parent.not_before().max(limits.not_before.0) {
        return Status::NotYetValid;
    }
    let tenant = parent.tenant();
    if limits.tenants.iter().any(|t| t.as_str() != tenant) {
        return Status::TenantMismatch;
    }
    if request.tenant.is_some_and(|t| t != tenant.as_bytes()) {
        return Status::TenantMismatch;
    }
    if let Some(scope) = request.scope {
        if !parent.has_scope(scope) || !limits.allows_scope(scope) {
            return Status::ScopeDenied;
        }
    }
    if !parent.address_allowed(request.address) || !limits.allows_address(request.address) {
        return Status::AddressDenied;
    }
    Status::Valid
}

/// The earlier of the token's expiry caveats and the parent's expiry (`None`: never).
pub fn effective_expiry(parent: &Found<'_>, limits: &crate::token::Limits<'_>) -> Option<u64> {
    let parent_expiry = Some(parent.expires()).filter(|&e| e != 0);
    let token_expiry = limits.expires.map(|e| e.0);
    match (parent_expiry, token_expiry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Appends a whole VERIFY_RESULT frame for a verdict.
pub fn put_verdict_frame(out: &mut Vec<u8>, request_id: u32, verdict: &Verdict<'_>) {
    let start = protocol::begin_frame(out, protocol::opcode::VERIFY_RESULT, request_id);
    put_verdict(out, verdict);
    protocol::end_frame(out, start);
}

/// Appends a whole VERIFY_BATCH_RESULT frame of `count` verdicts, each produced (and encoded)
/// in turn by `next`.
pub fn put_batch_frame<'t>(
    out: &mut Vec<u8>,
    request_id: u32,
    count: usize,
    mut next: impl FnMut() -> Verdict<'t>,
) {
    let start = protocol::begin_frame(out, protocol::opcode::VERIFY_BATCH_RESULT, request_id);
    out.extend_from_slice(&(count as u16).to_le_bytes());
    for _ in 0..count {
        put_verdict(out, &next());
    }
    protocol::end_frame(out, start);
}

/// Appends the VERIFY result body for a verdict.
pub fn put_verdict(out: &mut Vec<u8>, verdict: &Verdict<'_>) {
    match (verdict.status, verdict.record, &verdict.token) {
        (Status::Valid, Some(parent), Some(token)) => {
            let limits = token.limits();
            let scopes: Vec<&str> = parent
                .scopes()
                .filter(|s| limits.allows_scope(s.as_bytes()))
                .collect();
            let expires = effective_expiry(&parent, &limits).unwrap_or(0);
            protocol::put_valid(
                out,
                parent.id().0,
                expires,
                parent.tenant(),
                scopes.into_iter(),
            );
            let claims: Vec<(&str, &str)> = limits
                .claims
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            protocol::replace_claims(out, &claims);
        }
        (Status::Valid, Some(record), None) => protocol::put_valid(
            out,
            record.id().0,
            record.expires(),
            record.tenant(),
            record.scopes(),
        ),
        (status, _, _) => protocol::put_status(out, status),
    }
}

/// What a token is asked to be: the parts of a DERIVE after the parent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeriveSpec {
    /// 0: the longest allowed (capped by the parent's expiry).
    pub ttl_seconds: u64,
    /// Empty: all of the parent's scopes.
    pub scopes: Vec<String>,
    pub tenant: Option<String>,
    pub ranges: Vec<crate::record::Cidr>,
    pub claims: Vec<(String, String)>,
}

impl DeriveSpec {
    /// Converts a wire request (its credential aside). Text fields must be UTF-8.
    pub fn from_request(request: &protocol::DeriveRequest<'_>) -> Result<DeriveSpec, String> {
        let text = |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .map(str::to_string)
                .map_err(|_| "text is not UTF-8".to_string())
        };
        Ok(DeriveSpec {
            ttl_seconds: u64::from(request.ttl_seconds),
            scopes: request
                .scopes
                .iter()
                .map(|s| text(s))
                .collect::<Result<_, _>>()?,
            tenant: request.tenant.map(text).transpose()?,
            ranges: request
                .ranges
                .iter()
                .map(|(network, prefix_len)| crate::record::Cidr {
                    network: *network,
                    prefix_len: *prefix_len,
                })
                .collect(),
            claims: request
                .claims
                .iter()
                .map(|(k, v)| Ok((text(k)?, text(v)?)))
                .collect::<Result<_, String>>()?,
        })
    }
}

fn refused(status: Status, message: impl Into<String>) -> protocol::DeriveResult {
    protocol::DeriveResult::Refused {
        status,
        message: message.into(),
    }
}

/// Mints a token from a parent record that is valid now. A request wider than the parent (or
/// than `ttl_max_seconds`) is refused with `too_wide`, never silently narrowed.
pub fn mint(
    root: &RootKey,
    token_prefix: &str,
    parent: &Found<'_>,
    spec: &DeriveSpec,
    now: UnixSeconds,
    ttl_max_seconds: u64,
) -> protocol::DeriveResult {
    use crate::token::Caveat;
    if !parent.is_active() {
        return refused(Status::Revoked, "the parent key is revoked");
    }
    let parent_expires = Some(parent.expires()).filter(|&e| e != 0);
    if parent_expires.is_some_and(|e| now.0 >= e) {
        return refused(Status::Expired, "the parent key has expired");
    }
    if now.0 < parent.not_before() {
        return refused(Status::NotYetValid, "the parent key is not valid yet");
    }
    if spec.ttl_seconds > ttl_max_seconds {
        return refused(
            Status::TooWide,
            format!(
                "ttl {} s is over the maximum of {ttl_max_seconds} s",
                spec.ttl_seconds
            ),
        );
    }
    let ttl = if spec.ttl_seconds == 0 {
        ttl_max_seconds
    } else {
        spec.ttl_seconds
    };
    let mut expires = now.0.saturating_add(ttl);
    if let Some(parent_expires) = parent_expires {
        if spec.ttl_seconds != 0 && expires > parent_expires {
            return refused(
                Status::TooWide,
                "the requested expiry is later than the parent key's",
            );
        }
        expires = expires.min(parent_expires);
    }
    if let Some(scope) = spec.scopes.iter().find(|s| !parent.has_scope(s.as_bytes())) {
        return refused(
            Status::TooWide,
            format!("the parent key does not hold scope {scope:?}"),
        );
    }
    if let Some(tenant) = &spec.tenant {
        if tenant != parent.tenant() {
            return refused(
                Status::TooWide,
                format!("the parent key is not in tenant {tenant:?}"),
            );
        }
    }
    let mut caveats = vec![Caveat::Expires(UnixSeconds(expires))];
    if !spec.scopes.is_empty() {
        caveats.push(Caveat::Scopes(spec.scopes.clone()));
    }
    if let Some(tenant) = &spec.tenant {
        caveats.push(Caveat::Tenant(tenant.clone()));
    }
    caveats.extend(spec.ranges.iter().map(|r| Caveat::Address(*r)));
    caveats.extend(
        spec.claims
            .iter()
            .map(|(k, v)| Caveat::Claim(k.clone(), v.clone())),
    );
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).expect("the OS random source failed");
    let token = match crate::token::Token::mint(root, parent.id(), nonce, caveats) {
        Ok(token) => token.encode(token_prefix),
        Err(error) => return refused(Status::TooWide, error.to_string()),
    };
    if token.len() > crate::token::TOKEN_TEXT_BYTES_MAX {
        return refused(
            Status::TooWide,
            "the token would be longer than 2048 characters",
        );
    }
    protocol::DeriveResult::Minted {
        token,
        expires: UnixSeconds(expires),
    }
}

impl Verifier {
    /// A self-service DERIVE: the caller proves it holds the parent by presenting it.
    pub fn derive(
        &self,
        table: &TableView<'_>,
        request: &protocol::DeriveRequest<'_>,
        now: UnixSeconds,
        ttl_max_seconds: u64,
    ) -> protocol::DeriveResult {
        if Token::parse(request.credential, &self.token_prefix).is_some() {
            return refused(
                Status::TooWide,
                "derive from a key, not a token; narrow a token with attenuate",
            );
        }
        let spec = match DeriveSpec::from_request(request) {
            Ok(spec) => spec,
            Err(message) => return refused(Status::Malformed, message),
        };
        let plain = VerifyRequest {
            credential: request.credential,
            ..VerifyRequest::default()
        };
        let verdict = self.verify(table, &plain, now);
        // The parent's address allowlist is not checked here: it binds every verify of the
        // token instead (the token's caveats are intersected with the parent's record).
        match (verdict.status, verdict.record) {
            (Status::Valid | Status::AddressDenied, Some(parent)) => mint(
                &self.token_root,
                &self.token_prefix,
                &parent,
                &spec,
                now,
                ttl_max_seconds,
            ),
            (status, _) => refused(status, format!("the parent key is {status}")),
        }
    }
}
