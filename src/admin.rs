//! The control protocol's messages (shared by the server and `keyward-ctl`) and a blocking
//! admin client. Frames use the verify protocol's 12-byte header (docs/PROTOCOL.md); a request
//! body is the admin token (u8 length + bytes) followed by a JSON document, and a response is an
//! OK frame with a JSON body or an ERROR frame.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::read_frame;
use crate::protocol::{self, opcode as verify_opcode};
use crate::record::{Cidr, KeyKind, KeyRecord, KeyStatus};

/// Control-port opcodes.
pub mod opcode {
    pub const ISSUE: u8 = 0x10;
    pub const IMPORT: u8 = 0x11;
    pub const REVOKE: u8 = 0x12;
    pub const ROTATE: u8 = 0x13;
    pub const UPDATE: u8 = 0x14;
    pub const INSPECT: u8 = 0x15;
    pub const LIST: u8 = 0x16;
    pub const STATS: u8 = 0x17;
    pub const COMPACT: u8 = 0x18;
    pub const DERIVE: u8 = 0x19;
    pub const ADMIN_ADD: u8 = 0x1a;
    pub const ADMIN_REMOVE: u8 = 0x1b;
    pub const ADMIN_LIST: u8 = 0x1c;
    pub const OK: u8 = 0x90;
    pub const ERROR: u8 = super::verify_opcode::ERROR;

    /// The name of a request opcode, for logs and errors.
    pub fn name(opcode: u8) -> Option<&'static str> {
        Some(match opcode {
            ISSUE => "issue",
            IMPORT => "import",
            REVOKE => "revoke",
            ROTATE => "rotate",
            UPDATE => "update",
            INSPECT => "inspect",
            LIST => "list",
            STATS => "stats",
            COMPACT => "compact",
            DERIVE => "derive",
            ADMIN_ADD => "admin_add",
            ADMIN_REMOVE => "admin_remove",
            ADMIN_LIST => "admin_list",
            _ => return None,
        })
    }
}

/// The control port's error codes, as bytes (the names live in [`crate::protocol::ErrorCode`]).
pub mod error_code {
    use crate::protocol::ErrorCode;
    pub const UNAUTHORIZED: u8 = ErrorCode::Unauthorized as u8;
    pub const NOT_FOUND: u8 = ErrorCode::NotFound as u8;
    pub const INVALID: u8 = ErrorCode::Invalid as u8;
    pub const CONFLICT: u8 = ErrorCode::Conflict as u8;
    pub const UNAVAILABLE: u8 = ErrorCode::Unavailable as u8;
    pub const FORBIDDEN: u8 = ErrorCode::Forbidden as u8;
}

/// Largest control frame body: a 1000-key import with room to spare.
pub const CONTROL_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most items in one IMPORT.
pub const IMPORT_ITEMS_MAX: usize = 1000;
/// Most keys in one LIST page.
pub const LIST_LIMIT_MAX: usize = 1000;
pub const LIST_LIMIT_DEFAULT: usize = 100;

/// The attributes of a key to mint or import.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KeySpec {
    pub tenant: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// Unix seconds; `None` and no `ttl_seconds`: never.
    pub expires: Option<u64>,
    /// Seconds from now; used when `expires` is absent.
    pub ttl_seconds: Option<u64>,
    /// Unix seconds; default now.
    pub not_before: Option<u64>,
    pub allow: Vec<Cidr>,
    /// Mint with the public prefix.
    pub public: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    #[serde(flatten)]
    pub spec: KeySpec,
    /// A retried ISSUE with the same key returns the same credential instead of a new key.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImportItem {
    pub credential: String,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(flatten)]
    pub spec: KeySpec,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub keys: Vec<ImportItem>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RevokeRequest {
    pub id: Option<u64>,
    pub credential: Option<String>,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RotateRequest {
    pub id: u64,
    /// The old key stays valid this long; absent or 0: revoked at once.
    pub grace_seconds: Option<u64>,
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub expires: Option<u64>,
    pub allow: Option<Vec<Cidr>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateRequest {
    pub id: u64,
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub allow: Option<Vec<Cidr>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct InspectRequest {
    pub id: Option<u64>,
    pub credential: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ListRequest {
    pub tenant: Option<String>,
    /// Return keys with ids above this (the previous page's `next`).
    pub after: Option<u64>,
    pub limit: Option<usize>,
    /// Only keys not used since this Unix time: last used before it, or never used and created
    /// before it.
    pub unused_since: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// STATS: with `digest`, the answer also carries `state_digest`, a hash of every key's state
/// (it reads the whole table).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StatsRequest {
    pub digest: bool,
}

/// ADMIN_ADD: a new named admin token; the answer holds the token (shown only this once).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminAddRequest {
    pub name: String,
    pub role: crate::admins::Role,
}

/// ADMIN_REMOVE: the named admin's token is refused from the next request on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminRemoveRequest {
    pub name: String,
}

/// An admin DERIVE: a token from any key, without its secret.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DeriveRequest {
    pub parent_id: u64,
    /// 0 or absent: the longest allowed.
    pub ttl_seconds: Option<u64>,
    pub scopes: Vec<String>,
    pub tenant: Option<String>,
    pub allow: Vec<Cidr>,
    pub claims: std::collections::BTreeMap<String, String>,
}

/// A key as the control port shows it: everything but the hash.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: u64,
    pub kind: KeyKind,
    pub tenant: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created: u64,
    pub not_before: u64,
    pub expires: Option<u64>,
    pub status: KeyStatus,
    pub public: bool,
    pub allow: Vec<Cidr>,
    /// Last use and verify counts (absent when never used since usage was first recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::usage::KeyUsage>,
}

impl From<&KeyRecord> for KeyInfo {
    fn from(record: &KeyRecord) -> KeyInfo {
        KeyInfo {
            id: record.id.0,
            kind: record.kind,
            tenant: record.tenant.clone(),
            name: record.name.clone(),
            scopes: record.scopes.clone(),
            created: record.created.0,
            not_before: record.not_before.0,
            expires: record.expires.map(|e| e.0),
            status: record.status,
            public: record.visibility == crate::credential::Visibility::Public,
            allow: record.allow.clone(),
            usage: None,
        }
    }
}

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{message} (error code {code})")]
    Server { code: u8, message: String },
    #[error("unexpected response: {0}")]
    Protocol(String),
}

/// Appends a control request frame: token, then the JSON body.
pub fn put_request(out: &mut Vec<u8>, opcode: u8, request_id: u32, token: &str, json: &[u8]) {
    assert!(token.len() <= usize::from(u8::MAX), "admin token too long");
    let start = protocol::begin_frame(out, opcode, request_id);
    out.push(token.len() as u8);
    out.extend_from_slice(token.as_bytes());
    out.extend_from_slice(json);
    protocol::end_frame(out, start);
}

/// A blocking connection to the control port.
pub struct AdminClient {
    stream: TcpStream,
    token: String,
    next_request_id: u32,
}

impl AdminClient {
    pub fn connect(address: impl ToSocketAddrs, token: &str) -> Result<AdminClient, AdminError> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(600)))?;
        Ok(AdminClient {
            stream,
            token: token.to_string(),
            next_request_id: 1,
        })
    }

    /// Sets how long a call waits for its answer (default 600 s: a compaction of a large
    /// table can take minutes).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), AdminError> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)?;
        Ok(())
    }

    /// Sends one request and returns the OK body as JSON.
    pub fn call(
        &mut self,
        opcode: u8,
        request: &impl Serialize,
    ) -> Result<serde_json::Value, AdminError> {
        let json = serde_json::to_vec(request).map_err(|e| AdminError::Protocol(e.to_string()))?;
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        let mut frame = Vec::with_capacity(json.len() + 64);
        put_request(&mut frame, opcode, request_id, &self.token, &json);
        self.stream.write_all(&frame)?;
        let (header, body) = read_frame(&mut self.stream).map_err(|e| match e {
            crate::client::ClientError::Io(io) => AdminError::Io(io),
            other => AdminError::Protocol(other.to_string()),
        })?;
        if header.opcode == opcode::ERROR {
            let error =
                protocol::parse_error(&body).map_err(|e| AdminError::Protocol(e.to_string()))?;
            return Err(AdminError::Server {
                code: error.code,
                message: error.message,
            });
        }
        if header.opcode != opcode::OK || header.request_id != request_id {
            return Err(AdminError::Protocol(format!(
                "expected OK for request {request_id}, got opcode {:#04x} for {}",
                header.opcode, header.request_id
            )));
        }
        serde_json::from_slice(&body).map_err(|e| AdminError::Protocol(e.to_string()))
    }
}
