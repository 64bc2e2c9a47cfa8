//! The credential format: how a key looks on the wire and on a user's screen, how it is parsed,
//! and how its secret is hashed before it touches the table.
//!
//! A native credential is `{prefix}_{body}`:
//!
//! ```text
//! prefix  2..=16 lowercase ASCII letters or digits (default "kw", "kwpub" for public keys)
//! "_"     one underscore
//! body    72 characters: RFC 4648 base32, lowercase alphabet "abcdefghijklmnopqrstuvwxyz234567",
//!         no padding, of the 45-byte payload:
//!
//!   offset  size  field
//!   0       1     format version (1)
//!   1       8     key id, u64 big-endian (ids are never 0)
//!   9       32    secret, 256 bits from the OS random source
//!   41      4     CRC-32 (IEEE) big-endian over: prefix bytes, "_", payload bytes 0..41
//! ```
//!
//! Every character is a letter, a digit or `_`, so the whole credential is URL-safe and selected
//! by a double click. The checksum covers the prefix too, so a key cannot be moved between prefixes.
//! CRC-32 detects every error burst of up to 32 bits, so any single-character change (at most 5
//! bits of the payload, or one prefix byte) is always caught without a table lookup.
//!
//! Imported (foreign) keys are any other string of [`IMPORTED_BYTES_MIN`]..=[`IMPORTED_BYTES_MAX`]
//! bytes; they are found by a fingerprint of their keyed hash (see [`Hasher`]).

use std::fmt;

use subtle::ConstantTimeEq;

/// Version byte of the native credential payload.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes of secret in a native credential.
pub const SECRET_BYTES: usize = 32;
/// Bytes of the decoded payload: version, key id, secret, checksum.
pub const PAYLOAD_BYTES: usize = 1 + 8 + SECRET_BYTES + 4;
/// Characters of the base32 body.
pub const BODY_CHARS: usize = PAYLOAD_BYTES * 8 / 5;
/// Longest prefix accepted.
pub const PREFIX_BYTES_MAX: usize = 16;
/// Shortest prefix accepted.
pub const PREFIX_BYTES_MIN: usize = 2;
/// Shortest imported key.
pub const IMPORTED_BYTES_MIN: usize = 16;
/// Longest imported key.
pub const IMPORTED_BYTES_MAX: usize = 512;
/// Longest native credential.
pub const NATIVE_BYTES_MAX: usize = PREFIX_BYTES_MAX + 1 + BODY_CHARS;

const _: () = assert!(
    PAYLOAD_BYTES * 8 % 5 == 0,
    "the body must need no base32 padding"
);
const _: () = assert!(NATIVE_BYTES_MAX <= IMPORTED_BYTES_MAX);

/// The lowercase RFC 4648 base32 alphabet keys and tokens are written in.
pub const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Marks bytes outside the alphabet in [`DECODE`].
pub(crate) const INVALID: u8 = 0xff;
const _: () = assert!(
    INVALID & 0x80 != 0,
    "base32_decode tests bit 7 for an invalid character"
);
/// Byte → 5-bit value of the alphabet, or [`INVALID`].
pub(crate) const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 32 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// A key's identifier: embedded in its native credential, the primary key of the table.
/// Zero is never a valid id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u64);

impl KeyId {
    /// The largest key id: 2^53 - 1, so every id is exact as a JSON number in any client
    /// (a double holds integers up to 2^53 exactly). Ids are 1 to this; 0 is never an id.
    pub const MAX: u64 = (1 << 53) - 1;
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A 256-bit secret. It never prints itself.
#[derive(Clone)]
pub struct Secret(pub [u8; SECRET_BYTES]);

impl Secret {
    /// A fresh secret from the OS random source.
    pub fn random() -> Secret {
        let mut bytes = [0u8; SECRET_BYTES];
        getrandom::fill(&mut bytes).expect("the OS random source failed");
        Secret(bytes)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Whether a key is meant to stay secret or may be shown (as publishable keys are); the two
/// kinds carry different prefixes so scanners and people can tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    Secret,
    Public,
}

/// The prefixes a deployment uses. Both must be valid prefixes and differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefixes {
    pub secret: String,
    pub public: String,
}

impl Default for Prefixes {
    fn default() -> Prefixes {
        Prefixes {
            secret: "kw".to_string(),
            public: "kwpub".to_string(),
        }
    }
}

/// Why a prefix setting was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrefixError {
    #[error(
        "prefix {0:?} must be {PREFIX_BYTES_MIN} to {PREFIX_BYTES_MAX} lowercase letters or digits"
    )]
    Invalid(String),
    #[error("the secret and public prefixes must differ (both are {0:?})")]
    Same(String),
}

impl Prefixes {
    pub fn new(secret: &str, public: &str) -> Result<Prefixes, PrefixError> {
        check_prefix(secret)?;
        check_prefix(public)?;
        if secret == public {
            return Err(PrefixError::Same(secret.to_string()));
        }
        Ok(Prefixes {
            secret: secret.to_string(),
            public: public.to_string(),
        })
    }

    fn for_visibility(&self, visibility: Visibility) -> &str {
        match visibility {
            Visibility::Secret => &self.secret,
            Visibility::Public => &self.public,
        }
    }

    /// The visibility a prefix stands for, if it is one of ours.
    fn visibility_of(&self, prefix: &[u8]) -> Option<Visibility> {
        if prefix == self.secret.as_bytes() {
            Some(Visibility::Secret)
        } else if prefix == self.public.as_bytes() {
            Some(Visibility::Public)
        } else {
            None
        }
    }
}

/// Checks one prefix (of keys or of derived tokens): 2 to 16 lowercase letters or digits.
pub fn check_prefix(prefix: &str) -> Result<(), PrefixError> {
    let ok = (PREFIX_BYTES_MIN..=PREFIX_BYTES_MAX).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(PrefixError::Invalid(prefix.to_string()))
    }
}

/// A parsed native credential.
#[derive(Clone, Debug)]
pub struct NativeCredential {
    pub key_id: KeyId,
    pub secret: Secret,
    pub visibility: Visibility,
}

/// Why a string that claims to be a native credential (it starts with one of our prefixes and
/// an underscore) is not one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    #[error("credential body must be {BODY_CHARS} characters")]
    Length,
    #[error("credential body has a character outside the base32 alphabet")]
    Alphabet,
    #[error("unsupported credential format version")]
    Version,
    #[error("credential checksum does not match (typo or truncated key)")]
    Checksum,
    #[error("key id 0 is reserved")]
    ZeroId,
}

/// What a presented credential string turned out to be.
#[derive(Debug)]
pub enum Parsed {
    /// A well-formed native credential.
    Native(NativeCredential),
    /// It carries one of our prefixes but is broken: rejected without a lookup.
    Malformed(CredentialError),
    /// Not native: an imported key or a derived token, decided by the caller.
    Other,
}

impl NativeCredential {
    /// Encodes the credential as text.
    pub fn encode(&self, prefixes: &Prefixes) -> String {
        let prefix = prefixes.for_visibility(self.visibility);
        let mut payload = [0u8; PAYLOAD_BYTES];
        payload[0] = FORMAT_VERSION;
        payload[1..9].copy_from_slice(&self.key_id.0.to_be_bytes());
        payload[9..41].copy_from_slice(&self.secret.0);
        let checksum = checksum(prefix.as_bytes(), &payload[..41]);
        payload[41..45].copy_from_slice(&checksum.to_be_bytes());

        let mut text = String::with_capacity(prefix.len() + 1 + BODY_CHARS);
        text.push_str(prefix);
        text.push('_');
        base32_encode(&payload, &mut text);
        text
    }
}

/// Parses a presented credential. Allocation-free; never panics on any input.
pub fn parse(text: &[u8], prefixes: &Prefixes) -> Parsed {
    let split = text
        .iter()
        .take(PREFIX_BYTES_MAX + 1)
        .position(|&b| b == b'_');
    let Some(split) = split else {
        return Parsed::Other;
    };
    let prefix = &text[..split];
    let Some(visibility) = prefixes.visibility_of(prefix) else {
        return Parsed::Other;
    };
    match parse_body(prefix, &text[split + 1..]) {
        Ok((key_id, secret)) => Parsed::Native(NativeCredential {
            key_id,
            secret,
            visibility,
        }),
        Err(error) => Parsed::Malformed(error),
    }
}

fn parse_body(prefix: &[u8], body: &[u8]) -> Result<(KeyId, Secret), CredentialError> {
    if body.len() != BODY_CHARS {
        return Err(CredentialError::Length);
    }
    let mut payload = [0u8; PAYLOAD_BYTES];
    base32_decode(body, &mut payload)?;
    if payload[0] != FORMAT_VERSION {
        return Err(CredentialError::Version);
    }
    let stored = u32::from_be_bytes(payload[41..45].try_into().unwrap());
    if stored != checksum(prefix, &payload[..41]) {
        return Err(CredentialError::Checksum);
    }
    let key_id = u64::from_be_bytes(payload[1..9].try_into().unwrap());
    if key_id == 0 {
        return Err(CredentialError::ZeroId);
    }
    let mut secret = [0u8; SECRET_BYTES];
    secret.copy_from_slice(&payload[9..41]);
    Ok((KeyId(key_id), Secret(secret)))
}

/// The key id a native-looking credential names, read from its first 16 characters without
/// checking the prefix, the rest or the checksum: a hint for prefetching the table, never a
/// decision. `None` when those characters are not base32.
#[inline]
pub fn peek_key_id(text: &[u8]) -> Option<KeyId> {
    let split = text
        .iter()
        .take(PREFIX_BYTES_MAX + 1)
        .position(|&b| b == b'_')?;
    let chars = text.get(split + 1..split + 17)?;
    let mut bytes = [0u8; 10];
    for (group, chars) in bytes.chunks_exact_mut(5).zip(chars.chunks_exact(8)) {
        let mut word = 0u64;
        for &c in chars {
            let value = DECODE[c as usize];
            if value == INVALID {
                return None;
            }
            word = (word << 5) | u64::from(value);
        }
        for (i, b) in group.iter_mut().enumerate() {
            *b = (word >> (32 - i * 8)) as u8;
        }
    }
    Some(KeyId(u64::from_be_bytes(bytes[1..9].try_into().unwrap())))
}

/// True when `text` would be taken for a native credential (so it cannot be imported).
pub fn claims_native_prefix(text: &[u8], prefixes: &Prefixes) -> bool {
    !matches!(parse(text, prefixes), Parsed::Other)
}

fn checksum(prefix: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(prefix);
    hasher.update(b"_");
    hasher.update(payload);
    hasher.finalize()
}

fn base32_encode(bytes: &[u8; PAYLOAD_BYTES], out: &mut String) {
    for group in bytes.chunks_exact(5) {
        let mut word = 0u64;
        for &b in group {
            word = (word << 8) | u64::from(b);
        }
        for i in (0..8).rev() {
            out.push(ALPHABET[((word >> (i * 5)) & 31) as usize] as char);
        }
    }
}

fn base32_decode(text: &[u8], out: &mut [u8; PAYLOAD_BYTES]) -> Result<(), CredentialError> {
    debug_assert_eq!(text.len(), BODY_CHARS);
    // No branch per character: the values' bits are OR-ed together and checked once at the end
    // (INVALID has bit 7 set, every alphabet value is below 32). On the verify path.
    let mut seen = 0u8;
    for (group, chars) in out.chunks_exact_mut(5).zip(text.chunks_exact(8)) {
        let mut word = 0u64;
        for &c in chars {
            let value = DECODE[c as usize];
            seen |= value;
            word = (word << 5) | u64::from(value & 31);
        }
        for (i, b) in group.iter_mut().enumerate() {
            *b = (word >> (32 - i * 8)) as u8;
        }
    }
    if seen & 0x80 != 0 {
        return Err(CredentialError::Alphabet);
    }
    Ok(())
}

/// A keyed hash of a secret, as stored in the table.
pub type SecretHash = [u8; 32];

/// Hashes secrets under the deployment's pepper. Two keys are derived from the pepper so native
/// secrets and imported keys live in separate hash domains.
#[derive(Clone)]
pub struct Hasher {
    native_key: [u8; 32],
    imported_key: [u8; 32],
}

const NATIVE_CONTEXT: &str = "keyward 2026-11 native secret hash v1";
const IMPORTED_CONTEXT: &str = "keyward 2026-11 imported key hash v1";

impl Hasher {
    pub fn new(pepper: &[u8; 32]) -> Hasher {
        Hasher {
            native_key: blake3::derive_key(NATIVE_CONTEXT, pepper),
            imported_key: blake3::derive_key(IMPORTED_CONTEXT, pepper),
        }
    }

    /// keyed-BLAKE3(native key, key id as u64 big-endian ‖ secret).
    pub fn native(&self, key_id: KeyId, secret: &Secret) -> SecretHash {
        let mut input = [0u8; 8 + SECRET_BYTES];
        input[..8].copy_from_slice(&key_id.0.to_be_bytes());
        input[8..].copy_from_slice(&secret.0);
        *blake3::keyed_hash(&self.native_key, &input).as_bytes()
    }

    /// keyed-BLAKE3(imported key, the whole presented string).
    pub fn imported(&self, credential: &[u8]) -> SecretHash {
        *blake3::keyed_hash(&self.imported_key, credential).as_bytes()
    }
}

/// The lookup fingerprint of an imported key: the first 8 bytes of its keyed hash, big-endian.
pub fn fingerprint(hash: &SecretHash) -> u64 {
    u64::from_be_bytes(hash[..8].try_into().unwrap())
}

/// Constant-time equality of two hashes, compared as four 64-bit words.
pub fn hashes_equal(a: &SecretHash, b: &SecretHash) -> bool {
    let mut equal = subtle::Choice::from(1);
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let x = u64::from_le_bytes(x.try_into().unwrap());
        let y = u64::from_le_bytes(y.try_into().unwrap());
        equal &= x.ct_eq(&y);
    }
    equal.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector() -> NativeCredential {
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = i as u8;
        }
        NativeCredential {
            key_id: KeyId(42),
            secret: Secret(secret),
            visibility: Visibility::Secret,
        }
    }

    #[test]
    fn test_vector_matches_formats_md() {
        let text = vector().encode(&Prefixes::default());
        assert_eq!(
            text,
            "kw_aeaaaaaaaaaaakqaaebagbafaydqqcikbmga2dqpcaireeyuculbogazdinryhi6d7mnyfzx"
        );
        let Parsed::Native(parsed) = parse(text.as_bytes(), &Prefixes::default()) else {
            panic!("vector did not parse")
        };
        assert_eq!(parsed.key_id, KeyId(42));
        assert_eq!(parsed.secret.0, vector().secret.0);
    }

    #[test]
    fn peek_reads_the_key_id_without_judging_the_rest() {
        let mut credential = vector();
        credential.key_id = KeyId(0x0123_4567_89ab_cdef);
        let text = credential.encode(&Prefixes::default());
        assert_eq!(peek_key_id(text.as_bytes()), Some(credential.key_id));
        // Only the first 16 characters after the prefix matter: a broken checksum still peeks.
        let mut broken = text.clone().into_bytes();
        let last = broken.len() - 1;
        broken[last] = if broken[last] == b'a' { b'b' } else { b'a' };
        assert_eq!(peek_key_id(&broken), Some(credential.key_id));
        for other in [
            &b"sk_live_0123456789abcdef"[..],
            b"kw_",
            b"no separator",
            b"kw_AAAAAAAAAAAAAAAA",
            b"",
        ] {
            assert_eq!(peek_key_id(other), None, "{other:?}");
        }
    }

    #[test]
    fn public_prefix_round_trips() {
        let mut credential = vector();
        credential.visibility = Visibility::Public;
        let text = credential.encode(&Prefixes::default());
        assert!(text.starts_with("kwpub_"));
        let Parsed::Native(parsed) = parse(text.as_bytes(), &Prefixes::default()) else {
            panic!()
        };
        assert_eq!(parsed.visibility, Visibility::Public);
    }

    #[test]
    fn moved_prefix_fails_checksum() {
        let text = vector().encode(&Prefixes::default());
        let moved = text.replacen("kw_", "kwpub_", 1);
        assert!(matches!(
            parse(moved.as_bytes(), &Prefixes::default()),
            Parsed::Malformed(CredentialError::Checksum)
        ));
    }

    #[test]
    fn other_strings_are_not_native() {
        let prefixes = Prefixes::default();
        assert!(matches!(parse(b"", &prefixes), Parsed::Other));
        assert!(matches!(
            parse(b"sk_live_abcdefghijklmnop", &prefixes),
            Parsed::Other
        ));
        assert!(matches!(parse(b"kw", &prefixes), Parsed::Other));
        assert!(matches!(
            parse(b"kw_", &prefixes),
            Parsed::Malformed(CredentialError::Length)
        ));
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(Prefixes::new("kw", "kwpub").is_ok());
        assert!(Prefixes::new("KW", "kwpub").is_err());
        assert!(Prefixes::new("k", "kwpub").is_err());
        assert!(Prefixes::new("k_w", "kwpub").is_err());
        assert!(Prefixes::new("kw", "kw").is_err());
    }

    #[test]
    fn hashes_compare() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(hashes_equal(&a, &b));
        b[31] ^= 1;
        assert!(!hashes_equal(&a, &b));
    }
}
