//! Key records: what the table knows about a key (never its secret), and the small value types
//! a record is made of: time, status, kind, client-address ranges.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::credential::{KeyId, SecretHash, Visibility};

/// Seconds since the Unix epoch, UTC.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixSeconds(pub u64);

impl UnixSeconds {
    pub fn now() -> UnixSeconds {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the system clock is before 1970");
        UnixSeconds(since.as_secs())
    }
}

/// Longest scope name, in bytes.
pub const SCOPE_BYTES_MAX: usize = 64;
/// Most scopes on one key.
pub const SCOPES_PER_KEY_MAX: usize = 32;
/// Longest tenant name, in bytes.
pub const TENANT_BYTES_MAX: usize = 64;
/// Longest key name, in bytes.
pub const NAME_BYTES_MAX: usize = 128;
/// Most client-address ranges on one key.
pub const ALLOW_RANGES_MAX: usize = 16;
/// Longest idempotency key, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// Whether an admin has revoked the key. Expiry is not a status: it is computed from the time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Active = 0,
    Revoked = 1,
}

impl KeyStatus {
    pub fn from_u8(value: u8) -> Option<KeyStatus> {
        match value {
            0 => Some(KeyStatus::Active),
            1 => Some(KeyStatus::Revoked),
            _ => None,
        }
    }
}

/// How the key's secret is presented: a keyward credential, or a foreign string imported as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Native = 0,
    Imported = 1,
}

impl KeyKind {
    pub fn from_u8(value: u8) -> Option<KeyKind> {
        match value {
            0 => Some(KeyKind::Native),
            1 => Some(KeyKind::Imported),
            _ => None,
        }
    }
}

pub fn visibility_to_u8(visibility: Visibility) -> u8 {
    match visibility {
        Visibility::Secret => 0,
        Visibility::Public => 1,
    }
}

pub fn visibility_from_u8(value: u8) -> Option<Visibility> {
    match value {
        0 => Some(Visibility::Secret),
        1 => Some(Visibility::Public),
        _ => None,
    }
}

/// A client-address range. IPv4 ranges are held as IPv4-mapped IPv6 (`::ffff:a.b.c.d`), so one
/// comparison serves both families; `prefix_len` counts bits of that 128-bit form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub network: [u8; 16],
    pub prefix_len: u8,
}

/// Why a CIDR string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid address range {0:?}: expected ADDRESS or ADDRESS/BITS, e.g. 10.0.0.0/8 or 2001:db8::/32")]
pub struct CidrError(pub String);

impl Cidr {
    /// Whether `address` lies inside the range.
    pub fn contains(&self, address: IpAddr) -> bool {
        contains(&self.network, self.prefix_len, &to_mapped(address))
    }
}

/// Whether `address` (16 bytes, mapped) lies inside `network/prefix_len`.
pub fn contains(network: &[u8; 16], prefix_len: u8, address: &[u8; 16]) -> bool {
    let bits = u32::from(prefix_len.min(128));
    let network = u128::from_be_bytes(*network);
    let address = u128::from_be_bytes(*address);
    if bits == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - bits);
    network & mask == address & mask
}

/// The 16-byte form of an address: IPv6 as is, IPv4 mapped into `::ffff:0:0/96`.
pub fn to_mapped(address: IpAddr) -> [u8; 16] {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let error = || CidrError(text.to_string());
        let (address, bits) = match text.split_once('/') {
            Some((address, bits)) => (address, Some(bits.parse::<u8>().map_err(|_| error())?)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| error())?;
        let (offset, family_bits) = match address {
            IpAddr::V4(_) => (96u8, 32u8),
            IpAddr::V6(_) => (0u8, 128u8),
        };
        let bits = bits.unwrap_or(family_bits);
        if bits > family_bits {
            return Err(error());
        }
        let prefix_len = offset + bits;
        let mut network = u128::from_be_bytes(to_mapped(address));
        if prefix_len < 128 {
            network &= !(u128::MAX >> prefix_len);
        }
        Ok(Cidr {
            network: network.to_be_bytes(),
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = Ipv6Addr::from(self.network);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.prefix_len >= 96 => write!(f, "{}/{}", v4, self.prefix_len - 96),
            _ => write!(f, "{}/{}", v6, self.prefix_len),
        }
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cidr({self})")
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One key, as the table holds it: everything but the secret, which is present only as its
/// keyed hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub kind: KeyKind,
    pub hash: SecretHash,
    pub tenant: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created: UnixSeconds,
    pub not_before: UnixSeconds,
    /// `None`: never expires.
    pub expires: Option<UnixSeconds>,
    pub status: KeyStatus,
    pub visibility: Visibility,
    /// Empty: any client address.
    pub allow: Vec<Cidr>,
    /// The idempotency key an ISSUE carried, so a retry finds this key; empty when none.
    pub idempotency_key: String,
}

/// Why a record cannot go into a table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    #[error("key id 0 is reserved")]
    ZeroId,
    #[error("key id {0} is above the largest id, {max}", max = KeyId::MAX)]
    IdRange(u64),
    #[error("tenant name is longer than {TENANT_BYTES_MAX} bytes")]
    TenantLength,
    #[error("key name is longer than {NAME_BYTES_MAX} bytes")]
    NameLength,
    #[error("scope {0:?} is empty or longer than {SCOPE_BYTES_MAX} bytes")]
    ScopeLength(String),
    #[error("a key may carry at most {SCOPES_PER_KEY_MAX} scopes")]
    ScopeCount,
    #[error("a key may carry at most {ALLOW_RANGES_MAX} address ranges")]
    AllowCount,
    #[error("expiry is before not-before")]
    ExpiryBeforeStart,
    #[error("idempotency key is longer than {IDEMPOTENCY_KEY_BYTES_MAX} bytes")]
    IdempotencyKeyLength,
}

impl KeyRecord {
    /// Checks the record's bounds, which the snapshot and the protocol rely on.
    pub fn validate(&self) -> Result<(), RecordError> {
        if self.id.0 == 0 {
            return Err(RecordError::ZeroId);
        }
        if self.id.0 > KeyId::MAX {
            return Err(RecordError::IdRange(self.id.0));
        }
        if self.tenant.len() > TENANT_BYTES_MAX {
            return Err(RecordError::TenantLength);
        }
        if self.name.len() > NAME_BYTES_MAX {
            return Err(RecordError::NameLength);
        }
        if self.scopes.len() > SCOPES_PER_KEY_MAX {
            return Err(RecordError::ScopeCount);
        }
        if let Some(scope) = self
            .scopes
            .iter()
            .find(|s| s.is_empty() || s.len() > SCOPE_BYTES_MAX)
        {
            return Err(RecordError::ScopeLength(scope.clone()));
        }
        if self.allow.len() > ALLOW_RANGES_MAX {
            return Err(RecordError::AllowCount);
        }
        if self.idempotency_key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(RecordError::IdempotencyKeyLength);
        }
        if matches!(self.expires, Some(expires) if expires < self.not_before) {
            return Err(RecordError::ExpiryBeforeStart);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_matches() {
        let range: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(range.contains("10.1.200.3".parse().unwrap()));
        assert!(!range.contains("10.2.0.1".parse().unwrap()));
        assert!(!range.contains("::1".parse().unwrap()));
        assert_eq!(range.to_string(), "10.1.0.0/16");

        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("10.1.0.1".parse().unwrap()));

        let host: Cidr = "192.168.1.7".parse().unwrap();
        assert_eq!(host.to_string(), "192.168.1.7/32");
        let any: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn cidr_rejects_garbage() {
        for text in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "::/129",
            "host",
            "10.0.0.0/x",
        ] {
            assert!(text.parse::<Cidr>().is_err(), "{text}");
        }
    }

    #[test]
    fn cidr_host_bits_are_cleared() {
        let range: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(range.to_string(), "10.0.0.0/8");
    }
}
