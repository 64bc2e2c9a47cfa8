//! Generated key sets for tests, demos and benchmarks: records for a table plus the plaintext
//! credentials with the status each must get. Secrets come from the OS random source; the mix
//! of kinds is a fixed function of the index, so every run has the same shape.

use std::io::{BufRead, Write};

use crate::credential::{Hasher, KeyId, NativeCredential, Prefixes, Secret, Visibility};
use crate::protocol::Status;
use crate::record::{Cidr, KeyKind, KeyRecord, KeyStatus, UnixSeconds};

/// Ids of well-formed credentials that are deliberately absent from the table start here.
pub const UNKNOWN_ID_BASE: u64 = 1 << 48;
const DAY: u64 = 86_400;

/// One line of a key file: a credential and the status a plain VERIFY of it must get
/// (no required scope, tenant or client address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedKey {
    pub credential: String,
    pub expected: Status,
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
        if slot != 19 {
            records.push(record);
        }
        keys.push(ExpectedKey {
            credential,
            expected,
        });
    }
    KeySet { records, keys }
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

/// Writes a key file: a comment line, then `credential<TAB>status` per line.
pub fn write_key_file(out: &mut impl Write, keys: &[ExpectedKey]) -> std::io::Result<()> {
    writeln!(
        out,
        "# keyward key file: credential<TAB>expected status of a plain VERIFY"
    )?;
    for key in keys {
        writeln!(out, "{}\t{}", key.credential, key.expected)?;
    }
    Ok(())
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
        let (credential, status) = line.split_once('\t').unwrap_or((line, "valid"));
        let expected = Status::from_name(status.trim()).ok_or_else(|| KeyFileError::Line {
            line: number + 1,
            message: format!("unknown status {status:?}"),
        })?;
        if credential.len() > crate::protocol::CREDENTIAL_BYTES_MAX {
            return Err(KeyFileError::Line {
                line: number + 1,
                message: "credential too long".into(),
            });
        }
        keys.push(ExpectedKey {
            credential: credential.to_string(),
            expected,
        });
    }
    Ok(keys)
}
