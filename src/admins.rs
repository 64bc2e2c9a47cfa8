//! Named admin tokens with roles: who may use the control port, and for what.
//!
//! The token in `admin.token` (created on first run) is the admin named `admin`, role `write`.
//! Further tokens live in `admins.json` in the data directory (docs/FORMATS.md), each with a
//! name and a role:
//!
//! | role | may |
//! | --- | --- |
//! | `read` | inspect, list, stats, derive, list admins |
//! | `write` | everything: issue, import, revoke, rotate, update, compact, add and remove admins |
//!
//! Only a BLAKE3 hash of each added token is stored; the token itself is shown once, when it is
//! added. A presented token is hashed and compared with every stored hash in constant time
//! (no early exit), so neither a token nor which admin it belongs to leaks through timing. The
//! file is replaced atomically (write, fsync, rename, fsync the directory) before an ADMIN_ADD
//! or ADMIN_REMOVE is acknowledged, and the control plane checks the token on every request:
//! a removed token is refused from the next request on.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::datadir::hex;

pub const FILE_NAME: &str = "admins.json";
/// The name of the admin whose token is `admin.token`.
pub const BOOTSTRAP_NAME: &str = "admin";
/// Most admins besides the bootstrap one.
pub const ADMINS_MAX: usize = 64;
/// Longest admin name.
pub const NAME_BYTES_MAX: usize = 64;
const FORMAT_VERSION: u32 = 1;
/// Largest `admins.json` read (64 entries need about 10 KiB).
const FILE_BYTES_MAX: u64 = 1024 * 1024;

/// What an admin may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            _ => None,
        }
    }
}

/// One added admin, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredAdmin {
    pub name: String,
    pub role: Role,
    /// BLAKE3 of the token's bytes, 64 hex digits.
    pub token_blake3: String,
    /// Unix seconds.
    pub created: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredFile {
    version: u32,
    admins: Vec<StoredAdmin>,
}

/// An admin a token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: Role,
}

/// Why `admins.json` could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}; refusing to start (a damaged admin list could hand control to a removed token or lock admins out; restore the file from backup, or remove it to keep only admin.token)")]
    Damaged { path: PathBuf, problem: String },
}

/// Every admin: the bootstrap one and the added ones.
#[derive(Clone, Debug)]
pub struct Admins {
    path: PathBuf,
    bootstrap: [u8; 32],
    added: Vec<(StoredAdmin, [u8; 32])>,
}

fn token_hash(token: &[u8]) -> [u8; 32] {
    *blake3::hash(token).as_bytes()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (at, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * at..2 * at + 2)?, 16).ok()?;
    }
    Some(hash)
}

/// Why `name` cannot name an admin, if it cannot.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!(
            "an admin name has 1 to {NAME_BYTES_MAX} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err("an admin name holds only letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

/// A fresh admin token: "kwadmin_" and 64 hex digits (256 random bits).
pub fn new_token() -> String {
    let mut token = [0u8; 32];
    getrandom::fill(&mut token).expect("the OS random source failed");
    format!("kwadmin_{}", hex(&token))
}

impl Admins {
    /// Loads the admins of the data directory at `dir`, whose `admin.token` holds `bootstrap`.
    /// A missing `admins.json` means no added admins.
    pub fn load(dir: &Path, bootstrap: &str) -> Result<Admins, AdminsError> {
        let path = dir.join(FILE_NAME);
        let mut admins = Admins {
            path: path.clone(),
            bootstrap: token_hash(bootstrap.as_bytes()),
            added: Vec::new(),
        };
        let damaged = |problem: String| AdminsError::Damaged {
            path: path.clone(),
            problem,
        };
        let bytes = match fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(admins),
            Err(source) => return Err(AdminsError::Io { path, source }),
            Ok(meta) if meta.len() > FILE_BYTES_MAX => {
                return Err(damaged(format!("larger than {FILE_BYTES_MAX} bytes")))
            }
            Ok(_) => fs::read(&path).map_err(|source| AdminsError::Io {
                path: path.clone(),
                source,
            })?,
        };
        let file: StoredFile =
            serde_json::from_slice(&bytes).map_err(|e| damaged(format!("not readable: {e}")))?;
        if file.version != FORMAT_VERSION {
            return Err(damaged(format!("unknown version {}", file.version)));
        }
        if file.admins.len() > ADMINS_MAX {
            return Err(damaged(format!("more than {ADMINS_MAX} admins")));
        }
        for admin in file.admins {
            check_name(&admin.name).map_err(|p| damaged(format!("{:?}: {p}", admin.name)))?;
            if admin.name == BOOTSTRAP_NAME
                || admins.added.iter().any(|(a, _)| a.name == admin.name)
            {
                return Err(damaged(format!("the name {:?} appears twice", admin.name)));
            }
            let hash = parse_hash(&admin.token_blake3).ok_or_else(|| {
                damaged(format!(
                    "{:?}: token_blake3 is not 64 hex digits",
                    admin.name
                ))
            })?;
            admins.added.push((admin, hash));
        }
        Ok(admins)
    }

    /// The admin `token` belongs to, if any. Every stored hash is compared, whatever matches.
    pub fn authenticate(&self, token: &[u8]) -> Option<Actor> {
        let hash = token_hash(token);
        let mut found = hash.ct_eq(&self.bootstrap);
        let mut index = u32::MAX;
        for (at, (_, stored)) in self.added.iter().enumerate() {
            let matches = hash.ct_eq(stored);
            index.conditional_assign(&(at as u32), matches);
            found |= matches;
        }
        if !bool::from(found) {
            return None;
        }
        Some(match self.added.get(index as usize) {
            Some((admin, _)) => Actor {
                name: admin.name.clone(),
                role: admin.role,
            },
            None => Actor {
                name: BOOTSTRAP_NAME.to_string(),
                role: Role::Write,
            },
        })
    }

    /// The added admins (never their tokens).
    pub fn added(&self) -> impl Iterator<Item = &StoredAdmin> {
        self.added.iter().map(|(admin, _)| admin)
    }

    /// A copy with `name` added for `token`; the caller saves it before using it.
    pub fn with_added(
        &self,
        name: &str,
        role: Role,
        token: &str,
        now: u64,
    ) -> Result<Admins, String> {
        check_name(name)?;
        if name == BOOTSTRAP_NAME || self.added.iter().any(|(a, _)| a.name == name) {
            return Err(format!("an admin named {name:?} exists already"));
        }
        if self.added.len() >= ADMINS_MAX {
            return Err(format!(
                "there are {ADMINS_MAX} admins already; remove one first"
            ));
        }
        let hash = token_hash(token.as_bytes());
        let mut next = self.clone();
        next.added.push((
            StoredAdmin {
                name: name.to_string(),
                role,
                token_blake3: hex(&hash),
                created: now,
            },
            hash,
        ));
        Ok(next)
    }

    /// A copy without `name`; the caller saves it before using it.
    pub fn without(&self, name: &str) -> Result<Admins, String> {
        if name == BOOTSTRAP_NAME {
            return Err(format!(
                "the admin {BOOTSTRAP_NAME:?} is the token in admin.token: replace that file's token and restart instead"
            ));
        }
        let mut next = self.clone();
        let before = next.added.len();
        next.added.retain(|(admin, _)| admin.name != name);
        if next.added.len() == before {
            return Err(format!("no admin is named {name:?}"));
        }
        Ok(next)
    }

    /// Replaces `admins.json` atomically and durably with this list.
    pub fn save(&self) -> std::io::Result<()> {
        let file = StoredFile {
            version: FORMAT_VERSION,
            admins: self.added().cloned().collect(),
        };
        let mut json = serde_json::to_vec_pretty(&file).expect("admins serialize");
        json.push(b'\n');
        crate::datadir::replace_private(&self.path, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_as_their_admin_and_removed_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let admins = Admins::load(dir.path(), "kwadmin_bootstrap_token").unwrap();
        assert_eq!(
            admins
                .authenticate(b"kwadmin_bootstrap_token")
                .unwrap()
                .name,
            "admin"
        );
        assert!(admins.authenticate(b"kwadmin_other").is_none());
        let reader = new_token();
        let admins = admins.with_added("ci", Role::Read, &reader, 1).unwrap();
        admins.save().unwrap();
        let loaded = Admins::load(dir.path(), "kwadmin_bootstrap_token").unwrap();
        let actor = loaded.authenticate(reader.as_bytes()).unwrap();
        assert_eq!((actor.name.as_str(), actor.role), ("ci", Role::Read));
        assert!(loaded.with_added("ci", Role::Write, "x", 1).is_err());
        assert!(loaded.with_added("admin", Role::Write, "x", 1).is_err());
        assert!(loaded.with_added("bad name", Role::Write, "x", 1).is_err());
        let removed = loaded.without("ci").unwrap();
        assert!(removed.authenticate(reader.as_bytes()).is_none());
        assert!(removed.without("ci").is_err());
        assert!(removed.without("admin").is_err());
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "not json",
            r#"{"version":2,"admins":[]}"#,
            r#"{"version":1,"admins":[{"name":"a","role":"read","token_blake3":"zz","created":0}]}"#,
            r#"{"version":1,"admins":[{"name":"admin","role":"read","token_blake3":"00","created":0}]}"#,
        ] {
            fs::write(dir.path().join(FILE_NAME), bad).unwrap();
            let error = Admins::load(dir.path(), "kwadmin_bootstrap_token").unwrap_err();
            assert!(error.to_string().contains("refusing to start"), "{error}");
        }
    }
}
