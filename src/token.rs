//! Derived capability tokens: short-lived, narrower than the key they come from, attenuable
//! offline by whoever holds them, dead the moment their parent is revoked.
//!
//! Text form: `{prefix}_{base32}` (default prefix `kwt`), the base32 (lowercase RFC 4648, no
//! padding) of:
//!
//! ```text
//! offset  size  field
//! 0       1     version (1)
//! 1       8     parent key id, u64 big-endian
//! 9       16    nonce (random)
//! 25      1     caveat count (1..=CAVEATS_MAX)
//! 26      …     caveats: kind u8, length u8, value (length bytes)
//! end-32  32    signature
//! ```
//!
//! The signature is a macaroon-style chain of keyed BLAKE3:
//! `sig0 = keyed(root(parent), version ‖ parent ‖ nonce)`, `sig_i = keyed(sig_{i-1}, caveat_i)`,
//! where `root(parent)` is derived from the server's master secret and the parent id, so only
//! the server can start a chain, and anyone holding a token can append a caveat (re-keying with
//! the last signature) but none can remove one. Every caveat only narrows: the effective
//! authority is the intersection of all of them and of the parent key.

use std::net::IpAddr;

use crate::credential::KeyId;
use crate::record::{self, Cidr, UnixSeconds, SCOPE_BYTES_MAX, TENANT_BYTES_MAX};

pub const VERSION: u8 = 1;
/// Most caveats in one token.
pub const CAVEATS_MAX: usize = 32;
/// Longest token text (the verify protocol's credential limit).
pub const TOKEN_TEXT_BYTES_MAX: usize = crate::protocol::CREDENTIAL_BYTES_MAX;
/// Longest claim key and value (wire limits, shared with DERIVE).
pub const CLAIM_KEY_BYTES_MAX: usize = crate::protocol::CLAIM_KEY_BYTES_MAX;
pub const CLAIM_VALUE_BYTES_MAX: usize = crate::protocol::CLAIM_VALUE_BYTES_MAX;
/// Most scopes in one scope caveat.
pub const CAVEAT_SCOPES_MAX: usize = 32;
const HEADER_BYTES: usize = 1 + 8 + 16 + 1;
const SIGNATURE_BYTES: usize = 32;
const ROOT_CONTEXT: &str = "keyward 2026-11 derived token root v1";

/// Caveat kinds on the wire.
pub mod kind {
    pub const EXPIRES: u8 = 1;
    pub const NOT_BEFORE: u8 = 2;
    pub const SCOPES: u8 = 3;
    pub const TENANT: u8 = 4;
    pub const ADDRESS: u8 = 5;
    pub const CLAIM: u8 = 6;
}

/// One restriction carried by a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caveat {
    /// Invalid at and after this time.
    Expires(UnixSeconds),
    /// Invalid before this time.
    NotBefore(UnixSeconds),
    /// Only these scopes (intersected with every other scope caveat and the parent's scopes).
    Scopes(Vec<String>),
    /// Only for this tenant (which must be the parent's).
    Tenant(String),
    /// Only from client addresses inside this range.
    Address(Cidr),
    /// An opaque key=value handed back to the verifier on a valid answer.
    Claim(String, String),
}

/// Why a token's text or bytes were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("token is not base32 or is too long")]
    Encoding,
    #[error("token ends early")]
    Truncated,
    #[error("unsupported token version")]
    Version,
    #[error("token must carry 1 to {CAVEATS_MAX} caveats")]
    CaveatCount,
    #[error("caveat {0} is malformed")]
    Caveat(usize),
    #[error("the first caveat must be an expiry")]
    NoExpiry,
    #[error("token has bytes after its signature")]
    Trailing,
    #[error("a {0} caveat is out of bounds")]
    Bounds(&'static str),
}

/// A parsed (not yet verified) token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub parent: KeyId,
    pub nonce: [u8; 16],
    pub caveats: Vec<Caveat>,
    pub signature: [u8; 32],
}

fn put_caveat(out: &mut Vec<u8>, caveat: &Caveat) {
    let start = out.len();
    let kind = match caveat {
        Caveat::Expires(_) => kind::EXPIRES,
        Caveat::NotBefore(_) => kind::NOT_BEFORE,
        Caveat::Scopes(_) => kind::SCOPES,
        Caveat::Tenant(_) => kind::TENANT,
        Caveat::Address(_) => kind::ADDRESS,
        Caveat::Claim(..) => kind::CLAIM,
    };
    out.push(kind);
    out.push(0);
    match caveat {
        Caveat::Expires(t) | Caveat::NotBefore(t) => out.extend_from_slice(&t.0.to_be_bytes()),
        Caveat::Scopes(scopes) => {
            out.push(scopes.len() as u8);
            for scope in scopes {
                out.push(scope.len() as u8);
                out.extend_from_slice(scope.as_bytes());
            }
        }
        Caveat::Tenant(tenant) => out.extend_from_slice(tenant.as_bytes()),
        Caveat::Address(range) => {
            out.extend_from_slice(&range.network);
            out.push(range.prefix_len);
        }
        Caveat::Claim(key, value) => {
            out.push(key.len() as u8);
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(value.as_bytes());
        }
    }
    let length = out.len() - start - 2;
    assert!(length <= usize::from(u8::MAX), "caveat over 255 bytes");
    out[start + 1] = length as u8;
}

/// Checks a caveat's bounds (the ones `put_caveat` relies on).
pub fn check_caveat(caveat: &Caveat) -> Result<(), TokenError> {
    let ok = match caveat {
        Caveat::Expires(_) | Caveat::NotBefore(_) | Caveat::Address(_) => true,
        Caveat::Scopes(scopes) => {
            scopes.len() <= CAVEAT_SCOPES_MAX
                && scopes
                    .iter()
                    .all(|s| !s.is_empty() && s.len() <= SCOPE_BYTES_MAX)
                && scopes.iter().map(|s| 1 + s.len()).sum::<usize>() < usize::from(u8::MAX)
        }
        Caveat::Tenant(tenant) => tenant.len() <= TENANT_BYTES_MAX,
        Caveat::Claim(key, value) => {
            !key.is_empty()
                && key.len() <= CLAIM_KEY_BYTES_MAX
                && value.len() <= CLAIM_VALUE_BYTES_MAX
        }
    };
    if ok {
        Ok(())
    } else {
        Err(TokenError::Bounds(match caveat {
            Caveat::Scopes(_) => "scopes",
            Caveat::Tenant(_) => "tenant",
            Caveat::Claim(..) => "claim",
            _ => "caveat",
        }))
    }
}

fn read_caveat(kind: u8, value: &[u8]) -> Option<Caveat> {
    let text = |bytes: &[u8]| std::str::from_utf8(bytes).ok().map(str::to_string);
    let time = |bytes: &[u8]| -> Option<UnixSeconds> {
        Some(UnixSeconds(u64::from_be_bytes(bytes.try_into().ok()?)))
    };
    let caveat = match kind {
        kind::EXPIRES => Caveat::Expires(time(value)?),
        kind::NOT_BEFORE => Caveat::NotBefore(time(value)?),
        kind::SCOPES => {
            let (&count, mut rest) = value.split_first()?;
            let mut scopes = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let (&length, tail) = rest.split_first()?;
                let scope = tail.get(..usize::from(length))?;
                scopes.push(text(scope)?);
                rest = &tail[usize::from(length)..];
            }
            if !rest.is_empty() {
                return None;
            }
            Caveat::Scopes(scopes)
        }
        kind::TENANT => Caveat::Tenant(text(value)?),
        kind::ADDRESS => {
            if value.len() != 17 || value[16] > 128 {
                return None;
            }
            Caveat::Address(Cidr {
                network: value[..16].try_into().ok()?,
                prefix_len: value[16],
            })
        }
        kind::CLAIM => {
            let (&length, rest) = value.split_first()?;
            let key = rest.get(..usize::from(length))?;
            Caveat::Claim(text(key)?, text(&rest[usize::from(length)..])?)
        }
        _ => return None,
    };
    check_caveat(&caveat).ok()?;
    Some(caveat)
}

/// The key every per-parent root key comes from: derived once from the master secret.
#[derive(Clone)]
pub struct RootKey([u8; 32]);

impl RootKey {
    pub fn new(master: &[u8; 32]) -> RootKey {
        RootKey(blake3::derive_key(ROOT_CONTEXT, master))
    }

    /// The per-parent root key, `keyed_hash(root, parent id big-endian)`: only a holder of the
    /// master secret can compute it.
    pub fn for_parent(&self, parent: KeyId) -> [u8; 32] {
        *blake3::keyed_hash(&self.0, &parent.0.to_be_bytes()).as_bytes()
    }

    /// [`RootKey::for_parent`] through a small per-thread cache (a thread is a shard, so no
    /// lock): tokens of the same parent keep coming back, and this saves a hash each time.
    pub fn for_parent_cached(&self, parent: KeyId) -> [u8; 32] {
        PARENT_ROOTS.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some(root) = cache.get(&(self.0, parent.0)) {
                return *root;
            }
            if cache.len() >= PARENT_ROOTS_CACHED_MAX {
                cache.clear();
            }
            let root = self.for_parent(parent);
            cache.insert((self.0, parent.0), root);
            root
        })
    }
}

/// (token root, parent id) → per-parent root key.
type ParentRoots = std::collections::HashMap<([u8; 32], u64), [u8; 32]>;

/// Most per-parent root keys one thread keeps; past it the cache starts again empty.
pub const PARENT_ROOTS_CACHED_MAX: usize = 4096;

thread_local! {
    /// (token root, parent id) → per-parent root key. Keyed by the token root too, so servers
    /// with different master secrets in one process (tests) never share entries.
    static PARENT_ROOTS: std::cell::RefCell<ParentRoots> =
        std::cell::RefCell::new(std::collections::HashMap::with_capacity(PARENT_ROOTS_CACHED_MAX));
}

fn header_bytes(parent: KeyId, nonce: &[u8; 16]) -> [u8; 25] {
    let mut bytes = [0u8; 25];
    bytes[0] = VERSION;
    bytes[1..9].copy_from_slice(&parent.0.to_be_bytes());
    bytes[9..25].copy_from_slice(nonce);
    bytes
}

/// Extends a chain by one caveat.
fn chain(signature: &[u8; 32], caveat: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(signature, caveat).as_bytes()
}

impl Token {
    /// Mints a token (server side): `caveats` must start with an expiry.
    pub fn mint(
        root: &RootKey,
        parent: KeyId,
        nonce: [u8; 16],
        caveats: Vec<Caveat>,
    ) -> Result<Token, TokenError> {
        if !matches!(caveats.first(), Some(Caveat::Expires(_))) {
            return Err(TokenError::NoExpiry);
        }
        if caveats.len() > CAVEATS_MAX {
            return Err(TokenError::CaveatCount);
        }
        let mut signature =
            *blake3::keyed_hash(&root.for_parent(parent), &header_bytes(parent, &nonce)).as_bytes();
        let mut encoded = Vec::new();
        for caveat in &caveats {
            check_caveat(caveat)?;
            encoded.clear();
            put_caveat(&mut encoded, caveat);
            signature = chain(&signature, &encoded);
        }
        Ok(Token {
            parent,
            nonce,
            caveats,
            signature,
        })
    }

    /// Appends a caveat without the server (offline attenuation): the result can only be
    /// narrower.
    pub fn attenuate(&self, caveat: Caveat) -> Result<Token, TokenError> {
        check_caveat(&caveat)?;
        if self.caveats.len() >= CAVEATS_MAX {
            return Err(TokenError::CaveatCount);
        }
        let mut encoded = Vec::new();
        put_caveat(&mut encoded, &caveat);
        let mut token = self.clone();
        token.signature = chain(&self.signature, &encoded);
        token.caveats.push(caveat);
        Ok(token)
    }

    /// Recomputes the chain and compares it with the signature in constant time.
    pub fn signature_matches(&self, root: &RootKey) -> bool {
        let root = root.for_parent(self.parent);
        let mut signature =
            *blake3::keyed_hash(&root, &header_bytes(self.parent, &self.nonce)).as_bytes();
        let mut encoded = Vec::with_capacity(64);
        for caveat in &self.caveats {
            encoded.clear();
            put_caveat(&mut encoded, caveat);
            signature = chain(&signature, &encoded);
        }
        crate::credential::hashes_equal(&signature, &self.signature)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = header_bytes(self.parent, &self.nonce).to_vec();
        out.push(self.caveats.len() as u8);
        for caveat in &self.caveats {
            put_caveat(&mut out, caveat);
        }
        out.extend_from_slice(&self.signature);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Token, TokenError> {
        if bytes.len() < HEADER_BYTES + SIGNATURE_BYTES {
            return Err(TokenError::Truncated);
        }
        if bytes[0] != VERSION {
            return Err(TokenError::Version);
        }
        let parent = KeyId(u64::from_be_bytes(bytes[1..9].try_into().unwrap()));
        let nonce: [u8; 16] = bytes[9..25].try_into().unwrap();
        let count = usize::from(bytes[25]);
        if count == 0 || count > CAVEATS_MAX {
            return Err(TokenError::CaveatCount);
        }
        let body_end = bytes.len() - SIGNATURE_BYTES;
        let mut at = HEADER_BYTES;
        let mut caveats = Vec::with_capacity(count);
        for index in 0..count {
            let kind = *bytes
                .get(at)
                .filter(|_| at < body_end)
                .ok_or(TokenError::Truncated)?;
            let length = usize::from(
                *bytes
                    .get(at + 1)
                    .filter(|_| at + 1 < body_end)
                    .ok_or(TokenError::Truncated)?,
            );
            let value = bytes
                .get(at + 2..at + 2 + length)
                .filter(|_| at + 2 + length <= body_end)
                .ok_or(TokenError::Truncated)?;
            caveats.push(read_caveat(kind, value).ok_or(TokenError::Caveat(index))?);
            at += 2 + length;
        }
        if at != body_end {
            return Err(TokenError::Trailing);
        }
        if !matches!(caveats.first(), Some(Caveat::Expires(_))) {
            return Err(TokenError::NoExpiry);
        }
        let signature: [u8; 32] = bytes[body_end..].try_into().unwrap();
        Ok(Token {
            parent,
            nonce,
            caveats,
            signature,
        })
    }

    pub fn encode(&self, prefix: &str) -> String {
        let bytes = self.to_bytes();
        let mut text = String::with_capacity(prefix.len() + 1 + bytes.len() * 8 / 5 + 1);
        text.push_str(prefix);
        text.push('_');
        base32_encode(&bytes, &mut text);
        text
    }

    /// Parses a token's text; `None` when it does not carry `prefix` (not a token at all).
    pub fn parse(text: &[u8], prefix: &str) -> Option<Result<Token, TokenError>> {
        Some(Token::parse_raw(text, prefix)?.map(|(token, _)| token))
    }

    /// Parses a token's text and also returns its decoded bytes, for [`chain_matches`].
    pub fn parse_raw(text: &[u8], prefix: &str) -> Option<Result<(Token, Vec<u8>), TokenError>> {
        let rest = text.strip_prefix(prefix.as_bytes())?.strip_prefix(b"_")?;
        if text.len() > TOKEN_TEXT_BYTES_MAX {
            return Some(Err(TokenError::Encoding));
        }
        Some(
            base32_decode(rest)
                .ok_or(TokenError::Encoding)
                .and_then(|bytes| {
                    let token = Token::from_bytes(&bytes)?;
                    Ok((token, bytes))
                }),
        )
    }

    /// What the caveats allow, before the parent is consulted.
    pub fn limits(&self) -> Limits<'_> {
        let mut limits = Limits::default();
        for caveat in &self.caveats {
            match caveat {
                Caveat::Expires(t) => {
                    limits.expires = Some(limits.expires.map_or(*t, |e: UnixSeconds| e.min(*t)))
                }
                Caveat::NotBefore(t) => limits.not_before = limits.not_before.max(*t),
                Caveat::Scopes(scopes) => limits.scope_sets.push(scopes),
                Caveat::Tenant(tenant) => limits.tenants.push(tenant),
                Caveat::Address(range) => limits.ranges.push(*range),
                Caveat::Claim(key, value) => limits.claims.push((key, value)),
            }
        }
        limits
    }
}

/// Recomputes the chain over a token's decoded bytes (as checked by `from_bytes`), hashing each
/// caveat exactly as it arrived, and compares it with the signature in constant time. Same result
/// as [`Token::signature_matches`], without re-encoding the caveats.
pub fn chain_matches(root: &RootKey, bytes: &[u8]) -> bool {
    let parent = bytes.get(1..9).and_then(|p| <[u8; 8]>::try_from(p).ok());
    let (Some(parent), Some(&count)) = (parent, bytes.get(25)) else {
        return false;
    };
    let Some(body_end) = bytes.len().checked_sub(SIGNATURE_BYTES) else {
        return false;
    };
    let parent = KeyId(u64::from_be_bytes(parent));
    let mut signature =
        *blake3::keyed_hash(&root.for_parent_cached(parent), &bytes[..25]).as_bytes();
    let mut at = HEADER_BYTES;
    for _ in 0..count {
        let Some(&length) = bytes.get(at + 1) else {
            return false;
        };
        let end = at + 2 + usize::from(length);
        let Some(caveat) = bytes.get(at..end).filter(|_| end <= body_end) else {
            return false;
        };
        signature = chain(&signature, caveat);
        at = end;
    }
    let stored: [u8; 32] = match bytes[body_end..].try_into() {
        Ok(stored) => stored,
        Err(_) => return false,
    };
    at == body_end && crate::credential::hashes_equal(&signature, &stored)
}

/// The intersection of a token's caveats.
#[derive(Default, Debug)]
pub struct Limits<'a> {
    pub expires: Option<UnixSeconds>,
    pub not_before: UnixSeconds,
    /// Every scope caveat; a scope is allowed only if every set holds it.
    pub scope_sets: Vec<&'a Vec<String>>,
    pub tenants: Vec<&'a String>,
    pub ranges: Vec<Cidr>,
    pub claims: Vec<(&'a String, &'a String)>,
}

impl Limits<'_> {
    pub fn allows_scope(&self, scope: &[u8]) -> bool {
        self.scope_sets
            .iter()
            .all(|set| set.iter().any(|s| s.as_bytes() == scope))
    }

    /// Every range must hold the address (a token without ranges allows any).
    pub fn allows_address(&self, address: Option<IpAddr>) -> bool {
        if self.ranges.is_empty() {
            return true;
        }
        let Some(address) = address else { return false };
        let mapped = record::to_mapped(address);
        self.ranges
            .iter()
            .all(|r| record::contains(&r.network, r.prefix_len, &mapped))
    }
}

use crate::credential::{ALPHABET, DECODE, INVALID};

fn base32_encode(bytes: &[u8], out: &mut String) {
    let mut buffer = 0u32;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
}

fn base32_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer = 0u32;
    let mut bits = 0;
    for &c in text {
        let value = DECODE[usize::from(c)];
        if value == INVALID {
            return None;
        }
        let value = u32::from(value);
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    // Leftover bits must be padding zeros, fewer than 5: one text per token.
    if bits >= 5 || buffer & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: [u8; 32] = [9; 32];

    fn sample() -> Token {
        Token::mint(
            &RootKey::new(&MASTER),
            KeyId(42),
            [1; 16],
            vec![
                Caveat::Expires(UnixSeconds(2_000_000_000)),
                Caveat::Scopes(vec!["orders:read".into()]),
                Caveat::Claim("agent".into(), "build-bot".into()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn round_trips_and_verifies() {
        let token = sample();
        let text = token.encode("kwt");
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        let parsed = Token::parse(text.as_bytes(), "kwt").unwrap().unwrap();
        assert_eq!(parsed, token);
        assert!(parsed.signature_matches(&RootKey::new(&MASTER)));
        assert!(!parsed.signature_matches(&RootKey::new(&[8; 32])));
    }

    #[test]
    fn attenuation_verifies_and_cannot_be_undone() {
        let token = sample();
        let narrower = token
            .attenuate(Caveat::Expires(UnixSeconds(1_900_000_000)))
            .unwrap();
        assert!(narrower.signature_matches(&RootKey::new(&MASTER)));
        assert_eq!(narrower.limits().expires, Some(UnixSeconds(1_900_000_000)));
        let mut stripped = narrower.clone();
        stripped.caveats.pop();
        assert!(
            !stripped.signature_matches(&RootKey::new(&MASTER)),
            "removing a caveat must break the chain"
        );
    }

    /// The vector in docs/FORMATS.md, computed independently (Python, `blake3` package).
    #[test]
    fn test_vector_matches_formats_md() {
        let token = Token::mint(
            &RootKey::new(&[0x11; 32]),
            KeyId(42),
            std::array::from_fn(|i| i as u8),
            vec![
                Caveat::Expires(UnixSeconds(1_893_456_000)),
                Caveat::Scopes(vec!["orders:read".into()]),
            ],
        )
        .unwrap();
        assert_eq!(
            token.encode("kwt"),
            "kwt_aeaaaaaaaaaaakqaaebagbafaydqqcikbmga2dqpaiaqqaaaaaahbw6yqabq2ailn5zgizlsom5hezlbmt4numnudsbqknm7kb5ehku37jysajbat3nqiz2gdsateydv7jylc"
        );
    }

    #[test]
    fn base32_is_canonical() {
        for length in 0..20 {
            let bytes: Vec<u8> = (0..length).map(|i| (i as u8).wrapping_mul(37)).collect();
            let mut text = String::new();
            base32_encode(&bytes, &mut text);
            assert_eq!(base32_decode(text.as_bytes()).unwrap(), bytes);
        }
        assert!(
            base32_decode(b"ab").is_none(),
            "non-zero padding bits accepted"
        );
    }
}
