//! Generated key sets for tests, demos and benchmarks: records for a table plus the plaintext
//! credentials with the status each must get. Secrets come from the OS random source; the mix
//! of kinds is a fixed function of the index, so every run has the same shape.

use std::io::{BufRead, Write};
use std::net::IpAddr;

use crate::credential::{Hasher, KeyId, NativeCredential, Prefixes, Secret, Visibility};
use crate::protocol::Status;
use crate::record::{Cidr, KeyKind, KeyRecord, KeyStatus, UnixSeconds};

/// Ids of well-formed credentials that are deliberately absent from the table start here.
pub const UNKNOWN_ID_BASE: u64 = 1 << 48;
const DAY: u64 = 86_400;

/// One line of a key file: a credential, the status a plain VERIFY of it must get (no required
/// scope, tenant or client address), and, when the file says so, the key's scopes and address
/// allowlist, from which the status of a VERIFY that does require a scope or name an address
/// follows (see [`ExpectedKey::expected_for`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedKey {
    pub credential: String,
    pub expected: Status,
    /// The key's scopes; `None` when the key file does not list them.
    pub scopes: Option<Vec<String>>,
    /// The key's address allowlist (empty: any address); `None` when the file does not say.
    pub allow: Option<Vec<Cidr>>,
}

impl ExpectedKey {
    /// A key file line with only a credential and its plain status.
    pub fn plain(credential: String, expected: Status) -> ExpectedKey {
        ExpectedKey {
            credential,
            expected,
            scopes: None,
            allow: None,
        }
    }

    /// The status a VERIFY requiring `scope` and naming the client `address` must get, following
    /// the server's order of checks (revoked, expired, not yet valid, tenant, scope, address).
    /// `None` when that depends on facts the key file does not hold.
    pub fn expected_for(&self, scope: Option<&str>, address: Option<IpAddr>) -> Option<Status> {
        if !matches!(self.expected, Status::Valid | Status::AddressDenied) {
            return Some(self.expected);
        }
        if scope.is_none() && address.is_none() {
            return Some(self.expected);
        }
        if let Some(scope) = scope {
            if !self.scopes.as_ref()?.iter().any(|s| s == scope) {
                return Some(Status::ScopeDenied);
            }
        }
        let allow = self.allow.as_ref()?;
        let allowed = allow.is_empty()
            || address.is_some_and(|address| allow.iter().any(|range| range.contains(address)));
        Some(if allowed {
            Status::Valid
        } else {
            Status::AddressDenied
        })
    }
}

/// A generated key set.
pub struct KeySet {
    pub records: Vec<KeyRecord>,
    pub keys: Vec<ExpectedKey>,
}

/// Generates `count` credentials. Of every 20: 14 valid native keys (every 7th public),
/// 1 revoked, 1 expired, 1 not yet valid, 1 valid imported key, 1 restricted to 10.0.0.0/8
/// (so a VERIFY without an address is address-denied), 1 well-formed but unknown.
pub fn generate(count: usize, hasher: &Hasher, prefixes: &Prefixes, now: UnixSeconds) -> KeySet {
    let mut records = Vec::with_capacity(count);
    let mut keys = Vec::with_capacity(count);
    generate_each(count, hasher, prefixes, now, |record, key| {
        keys.push(key);
        records.extend(record);
    });
    KeySet { records, keys }
}

/// Tenants a generated key set's records name.
pub fn generated_tenants() -> Vec<String> {
    (0..16).map(|i| format!("tenant-{i}")).collect()
}

/// Scopes a generated key set's records name.
pub fn generated_scopes() -> Vec<String> {
    ["orders:read", "orders:write", "billing:read"]
        .map(String::from)
        .to_vec()
}

/// Generates the key set of [`generate`] one key at a time, in id order, handing each key and
/// its record (none for the unknown ones) to `each`: for sets too large to hold in memory.
pub fn generate_each(
    count: usize,
    hasher: &Hasher,
    prefixes: &Prefixes,
    now: UnixSeconds,
    mut each: impl FnMut(Option<KeyRecord>, ExpectedKey),
) {
    for index in 0..count as u64 {
        let id = index + 1;
        let slot = index % 20;
        let visibility = if slot % 7 == 3 {
            Visibility::Public
        } else {
            Visibility::Secret
        };
        let mut record = KeyRecord {
            id: KeyId(id),
            kind: KeyKind::Native,
            hash: [0; 32],
            tenant: format!("tenant-{}", index % 16),
            name: format!("generated key {id}"),
            scopes: scopes_for(index),
            created: UnixSeconds(now.0.saturating_sub(30 * DAY)),
            not_before: UnixSeconds(now.0.saturating_sub(30 * DAY)),
            expires: (index % 3 == 0).then_some(UnixSeconds(now.0 + 365 * DAY)),
            status: KeyStatus::Active,
            visibility,
            allow: Vec::new(),
            idempotency_key: String::new(),
        };
        let mut expected = Status::Valid;
        match slot {
            14 => {
                record.status = KeyStatus::Revoked;
                expected = Status::Revoked;
            }
            15 => {
                record.expires = Some(UnixSeconds(now.0.saturating_sub(DAY)));
                expected = Status::Expired;
            }
            16 => {
                record.not_before = UnixSeconds(now.0 + 30 * DAY);
                record.expires = None;
                expected = Status::NotYetValid;
            }
            18 => {
                record.allow = vec!["10.0.0.0/8".parse::<Cidr>().unwrap()];
                expected = Status::AddressDenied;
            }
            _ => {}
        }
        let credential = if slot == 17 {
            let mut raw = [0u8; 20];
            getrandom::fill(&mut raw).expect("the OS random source failed");
            let text = format!("sk_live_{}", crate::datadir::hex(&raw));
            record.kind = KeyKind::Imported;
            record.visibility = Visibility::Secret;
            record.hash = hasher.imported(text.as_bytes());
            text
        } else {
            let secret = Secret::random();
            record.hash = hasher.native(record.id, &secret);
            let key_id = if slot == 19 {
                KeyId(UNKNOWN_ID_BASE + id)
            } else {
                record.id
            };
            if slot == 19 {
                expected = Status::Unknown;
            }
            NativeCredential {
                key_id,
                secret,
                visibility,
            }
            .encode(prefixes)
        };
        let known = slot != 19;
        let key = ExpectedKey {
            credential,
            expected,
            scopes: known.then(|| record.scopes.clone()),
            allow: known.then(|| record.allow.clone()),
        };
        each(known.then_some(record), key);
    }
}

fn scopes_for(index: u64) -> Vec<String> {
    let mut scopes = vec!["orders:read".to_string()];
    if index % 3 == 0 {
        scopes.push("orders:write".to_string());
    }
    if index % 5 == 0 {
        scopes.push("billing:read".to_string());
    }
    scopes
}

/// Writes a key file: a comment line, then `credential<TAB>status[<TAB>scopes<TAB>allow]` per
/// line (scopes and ranges comma-separated, `-` for none).
pub fn write_key_file(out: &mut impl Write, keys: &[ExpectedKey]) -> std::io::Result<()> {
    write_key_file_header(out)?;
    for key in keys {
        write_key_line(out, key)?;
    }
    Ok(())
}

/// The first line of a key file.
pub fn write_key_file_header(out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "# keyward key file: credential<TAB>expected status of a plain VERIFY<TAB>scopes<TAB>allowed addresses"
    )
}

/// One key's line of a key file.
pub fn write_key_line(out: &mut impl Write, key: &ExpectedKey) -> std::io::Result<()> {
    write!(out, "{}\t{}", key.credential, key.expected)?;
    if let (Some(scopes), Some(allow)) = (&key.scopes, &key.allow) {
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "-".to_string()
            } else {
                items.join(",")
            }
        };
        write!(
            out,
            "\t{}\t{}",
            list(scopes.clone()),
            list(allow.iter().map(Cidr::to_string).collect())
        )?;
    }
    writeln!(out)
}

/// Why a key file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
}

/// Reads a key file. Lines without a status column are expected to be valid.
pub fn read_key_file(input: impl BufRead) -> Result<Vec<ExpectedKey>, KeyFileError> {
    let mut keys = Vec::new();
    for (number, line) in input.lines().enumerate() {
        let line = line?;
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |message: String| KeyFileError::Line {
            line: number + 1,
            message,
        };
        let mut columns = line.split('\t');
        let credential = columns.next().unwrap_or_default();
        let status = columns.next().unwrap_or("valid");
        let expected = Status::from_name(status.trim())
            .ok_or_else(|| bad(format!("unknown status {status:?}")))?;
        let list = |column: &str| -> Vec<String> {
            match column.trim() {
                "-" | "" => Vec::new(),
                items => items.split(',').map(str::to_string).collect(),
            }
        };
        let scopes = columns.next().map(list);
        let allow = match columns.next().map(list) {
            Some(ranges) => Some(
                ranges
                    .iter()
                    .map(|range| range.parse::<Cidr>().map_err(|e| bad(e.to_string())))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        if columns.next().is_some() {
            return Err(bad("more than four tab-separated columns".into()));
        }
        if credential.len() > crate::protocol::CREDENTIAL_BYTES_MAX {
            return Err(KeyFileError::Line {
                line: number + 1,
                message: "credential too long".into(),
            });
        }
        keys.push(ExpectedKey {
            credential: credential.to_string(),
            expected,
            scopes,
            allow,
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(expected: Status, scopes: &[&str], allow: &[&str]) -> ExpectedKey {
        ExpectedKey {
            credential: "kw_x".into(),
            expected,
            scopes: Some(scopes.iter().map(|s| s.to_string()).collect()),
            allow: Some(allow.iter().map(|a| a.parse().unwrap()).collect()),
        }
    }

    #[test]
    fn key_files_round_trip_with_and_without_scope_columns() {
        let keys = vec![
            key(Status::Valid, &["orders:read", "billing:read"], &[]),
            key(Status::AddressDenied, &["orders:read"], &["10.0.0.0/8"]),
            ExpectedKey::plain("kw_y".into(), Status::Unknown),
        ];
        let mut file = Vec::new();
        write_key_file(&mut file, &keys).unwrap();
        assert_eq!(read_key_file(&file[..]).unwrap(), keys);
        let bare = read_key_file(&b"kw_a\nkw_b\trevoked\n"[..]).unwrap();
        assert_eq!(bare[0], ExpectedKey::plain("kw_a".into(), Status::Valid));
        assert_eq!(bare[1].expected, Status::Revoked);
        let error = read_key_file(&b"kw_a\tvalid\t-\tnot-a-range\n"[..]).unwrap_err();
        assert!(error.to_string().starts_with("line 1:"), "{error}");
        assert!(read_key_file(&b"kw_a\tvalid\t-\t-\textra\n"[..]).is_err());
        assert!(read_key_file(&b"kw_a\tfine\n"[..]).is_err());
    }

    #[test]
    fn expected_status_follows_the_server_order_of_checks() {
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        let open = key(Status::Valid, &["orders:read"], &[]);
        assert_eq!(open.expected_for(None, None), Some(Status::Valid));
        assert_eq!(
            open.expected_for(Some("orders:read"), Some(outside)),
            Some(Status::Valid)
        );
        assert_eq!(
            open.expected_for(Some("orders:write"), None),
            Some(Status::ScopeDenied)
        );
        let fenced = key(Status::AddressDenied, &["orders:read"], &["10.0.0.0/8"]);
        assert_eq!(fenced.expected_for(None, Some(inside)), Some(Status::Valid));
        assert_eq!(
            fenced.expected_for(None, Some(outside)),
            Some(Status::AddressDenied)
        );
        // Scope is checked before the address.
        assert_eq!(
            fenced.expected_for(Some("billing:read"), Some(outside)),
            Some(Status::ScopeDenied)
        );
        let revoked = key(Status::Revoked, &[], &[]);
        assert_eq!(
            revoked.expected_for(Some("x"), Some(inside)),
            Some(Status::Revoked)
        );
        let bare = ExpectedKey::plain("kw_z".into(), Status::Valid);
        assert_eq!(bare.expected_for(Some("orders:read"), None), None);
        assert_eq!(bare.expected_for(None, None), Some(Status::Valid));
    }
}
