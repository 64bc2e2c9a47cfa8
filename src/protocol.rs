//! The verify protocol codec: frames, request bodies and response bodies. Every byte is
//! specified in docs/PROTOCOL.md; this module is the reference implementation of that page.
//!
//! ```text
//! frame header, 12 bytes, little-endian
//! offset size field
//! 0      1    version (1)
//! 1      1    opcode
//! 2      2    flags (0; anything else is a broken header)
//! 4      4    request id, echoed in the response
//! 8      4    body length in bytes, at most the server's frame body limit
//! ```
//!
//! Decoding checks before it parses: a frame is `Incomplete` until its whole body is buffered,
//! and its declared length is checked against the limit before anything waits for it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::record::{UnixSeconds, SCOPE_BYTES_MAX, TENANT_BYTES_MAX};

pub const VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 12;
/// Longest credential in a VERIFY (native keys, imported keys and derived tokens).
pub const CREDENTIAL_BYTES_MAX: usize = 2048;
/// Most items in one VERIFY_BATCH.
pub const BATCH_ITEMS_MAX: usize = 256;
/// Default (and smallest allowed) limit on a frame's body.
pub const BODY_BYTES_DEFAULT: usize = 64 * 1024;
/// Largest body limit a server may be configured with.
pub const BODY_BYTES_LIMIT: usize = 16 * 1024 * 1024;
/// Longest VERIFY body: credential, scope, tenant, IPv6 address.
pub const VERIFY_BODY_BYTES_MAX: usize =
    2 + CREDENTIAL_BYTES_MAX + 1 + SCOPE_BYTES_MAX + 1 + TENANT_BYTES_MAX + 1 + 16;
/// Longest error message.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 256;

const _: () = assert!(VERIFY_BODY_BYTES_MAX <= BODY_BYTES_DEFAULT);
const _: () = assert!(BODY_BYTES_DEFAULT <= BODY_BYTES_LIMIT);

/// Request and response opcodes.
pub mod opcode {
    pub const PING: u8 = 0x01;
    pub const VERIFY: u8 = 0x02;
    pub const VERIFY_BATCH: u8 = 0x03;
    pub const DERIVE: u8 = 0x04;
    pub const REVOKE_SELF: u8 = 0x05;
    pub const VERIFY_AT: u8 = 0x06;
    pub const PONG: u8 = 0x81;
    pub const VERIFY_RESULT: u8 = 0x82;
    pub const VERIFY_BATCH_RESULT: u8 = 0x83;
    pub const DERIVE_RESULT: u8 = 0x84;
    pub const REVOKE_SELF_RESULT: u8 = 0x85;
    pub const VERIFY_AT_RESULT: u8 = 0x86;
    pub const ERROR: u8 = 0xFF;
}

/// The answer to one VERIFY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Status {
    Valid = 0,
    Malformed = 1,
    Unknown = 2,
    Revoked = 3,
    Expired = 4,
    NotYetValid = 5,
    ScopeDenied = 6,
    AddressDenied = 7,
    TenantMismatch = 8,
    /// A DERIVE asked for more than its parent allows.
    TooWide = 9,
    /// (VERIFY_AT only) this node had not applied the sequence asked for within its wait.
    Stale = 10,
}

impl Status {
    pub const ALL: [Status; 11] = [
        Status::Valid,
        Status::Malformed,
        Status::Unknown,
        Status::Revoked,
        Status::Expired,
        Status::NotYetValid,
        Status::ScopeDenied,
        Status::AddressDenied,
        Status::TenantMismatch,
        Status::TooWide,
        Status::Stale,
    ];

    pub fn from_u8(value: u8) -> Option<Status> {
        Status::ALL.get(usize::from(value)).copied()
    }

    /// The name used in key files, JSON output and docs.
    pub fn name(self) -> &'static str {
        match self {
            Status::Valid => "valid",
            Status::Malformed => "malformed",
            Status::Unknown => "unknown",
            Status::Revoked => "revoked",
            Status::Expired => "expired",
            Status::NotYetValid => "not_yet_valid",
            Status::ScopeDenied => "scope_denied",
            Status::AddressDenied => "address_denied",
            Status::TenantMismatch => "tenant_mismatch",
            Status::TooWide => "too_wide",
            Status::Stale => "stale",
        }
    }

    pub fn from_name(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Codes carried by an ERROR frame, on both ports: every wire error code is here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Header version is not 1. Fatal: the connection is closed.
    BadVersion = 1,
    /// Header flags are not 0. Fatal.
    BadFlags = 2,
    /// Declared body length is over the limit. Fatal.
    FrameTooLarge = 3,
    /// Opcode not known; the frame was skipped. The connection stays open.
    UnknownOpcode = 4,
    /// The body does not parse for its opcode; the frame was skipped. The connection stays open.
    BadBody = 5,
    /// The server is at a limit (connections, buffer memory, file descriptors). Fatal.
    Busy = 6,
    /// Control port: the admin token is missing or wrong. Fatal: the connection is closed.
    Unauthorized = 7,
    /// Control port: no such key.
    NotFound = 8,
    /// Control port: the request is well-formed but not allowed (bounds, state, id range).
    Invalid = 9,
    /// Control port: conflicts with work in progress (e.g. a compaction already running).
    Conflict = 10,
    /// The server cannot do it now (control plane stopping, compaction failed); try again.
    Unavailable = 11,
    /// A frame took longer than the frame timeout to arrive, or the connection was idle past
    /// its idle timeout. Fatal.
    Timeout = 12,
    /// Control port: the admin token is valid but its role (`read`) may not do this. The
    /// connection stays open.
    Forbidden = 13,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::BadVersion,
        ErrorCode::BadFlags,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownOpcode,
        ErrorCode::BadBody,
        ErrorCode::Busy,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::Invalid,
        ErrorCode::Conflict,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Forbidden,
    ];

    pub fn from_u8(value: u8) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|code| *code as u8 == value)
    }

    /// The code's name as PROTOCOL.md writes it (and metrics label it).
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadVersion => "bad_version",
            ErrorCode::BadFlags => "bad_flags",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnknownOpcode => "unknown_opcode",
            ErrorCode::BadBody => "bad_body",
            ErrorCode::Busy => "busy",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Forbidden => "forbidden",
        }
    }

    /// Whether the server closes the connection after sending this error.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::BadVersion
                | ErrorCode::BadFlags
                | ErrorCode::FrameTooLarge
                | ErrorCode::Busy
                | ErrorCode::Unauthorized
                | ErrorCode::Timeout
        )
    }
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub opcode: u8,
    pub request_id: u32,
    pub body_bytes: u32,
}

/// Why the byte stream cannot be framed. Every variant is fatal for the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("header flags must be zero, found {0:#06x}")]
    Flags(u16),
    #[error("frame body of {declared} bytes exceeds the limit of {limit}")]
    TooLarge { declared: u32, limit: usize },
}

impl FrameError {
    pub fn code(self) -> ErrorCode {
        match self {
            FrameError::Version(_) => ErrorCode::BadVersion,
            FrameError::Flags(_) => ErrorCode::BadFlags,
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        }
    }
}

/// One frame found in a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub body: &'a [u8],
}

impl Frame<'_> {
    /// Bytes the frame occupies in the buffer.
    pub fn bytes(&self) -> usize {
        HEADER_BYTES + self.body.len()
    }
}

/// Checks a frame header (version, flags, length against `body_bytes_max`) and decodes it.
pub fn decode_header(
    header: &[u8; HEADER_BYTES],
    body_bytes_max: usize,
) -> Result<FrameHeader, FrameError> {
    let [version, opcode, flags_low, flags_high, r0, r1, r2, r3, b0, b1, b2, b3] = *header;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let flags = u16::from_le_bytes([flags_low, flags_high]);
    if flags != 0 {
        return Err(FrameError::Flags(flags));
    }
    let body_bytes = u32::from_le_bytes([b0, b1, b2, b3]);
    if body_bytes as usize > body_bytes_max {
        return Err(FrameError::TooLarge {
            declared: body_bytes,
            limit: body_bytes_max,
        });
    }
    Ok(FrameHeader {
        opcode,
        request_id: u32::from_le_bytes([r0, r1, r2, r3]),
        body_bytes,
    })
}

/// Finds the first frame in `buffer`. `Ok(None)`: more bytes are needed. The header is checked
/// (version, flags, length against `body_bytes_max`) as soon as its 12 bytes are present.
pub fn decode_frame(buffer: &[u8], body_bytes_max: usize) -> Result<Option<Frame<'_>>, FrameError> {
    let Some((header, rest)) = buffer.split_first_chunk::<HEADER_BYTES>() else {
        return Ok(None);
    };
    let header = decode_header(header, body_bytes_max)?;
    let Some(body) = rest.get(..header.body_bytes as usize) else {
        return Ok(None);
    };
    Ok(Some(Frame { header, body }))
}

/// A request frame decoded into what it asks for: the codec's one entry point for the verify
/// port. Its body is parsed here, once; a body that does not parse is the request's `Err`
/// (answered with a `bad_body` ERROR), while a frame that cannot be framed is the call's error.
#[derive(Debug)]
pub struct Request<'a> {
    pub request_id: u32,
    /// Bytes the frame occupied in the buffer.
    pub bytes: usize,
    pub kind: Result<RequestKind<'a>, BodyError>,
}

/// What a request asks for.
#[derive(Debug)]
pub enum RequestKind<'a> {
    Ping,
    Verify(VerifyRequest<'a>),
    /// A checked batch (every item parses) and its item count.
    VerifyBatch(BatchItems<'a>, usize),
    Derive(DeriveRequest<'a>),
    RevokeSelf(VerifyRequest<'a>),
    /// A VERIFY to be answered only at or after this delta sequence.
    VerifyAt(u64, VerifyRequest<'a>),
    /// An opcode the verify port does not know (answered with `unknown_opcode`).
    Unknown(u8),
}

/// Decodes the first request frame in `buffer`. `Ok(None)`: more bytes are needed.
pub fn decode_request(
    buffer: &[u8],
    body_bytes_max: usize,
) -> Result<Option<Request<'_>>, FrameError> {
    let Some(frame) = decode_frame(buffer, body_bytes_max)? else {
        return Ok(None);
    };
    let body = frame.body;
    let kind = match frame.header.opcode {
        opcode::PING if body.is_empty() => Ok(RequestKind::Ping),
        opcode::PING => Err(BodyError::PingBody),
        opcode::VERIFY => parse_verify(body).map(RequestKind::Verify),
        opcode::VERIFY_BATCH => check_batch(body)
            .map(|count| RequestKind::VerifyBatch(BatchItems::new(body).expect("checked"), count)),
        opcode::DERIVE => parse_derive(body).map(RequestKind::Derive),
        opcode::REVOKE_SELF => parse_revoke_self(body).map(RequestKind::RevokeSelf),
        opcode::VERIFY_AT => {
            parse_verify_at(body).map(|(sequence, verify)| RequestKind::VerifyAt(sequence, verify))
        }
        other => Ok(RequestKind::Unknown(other)),
    };
    Ok(Some(Request {
        request_id: frame.header.request_id,
        bytes: frame.bytes(),
        kind,
    }))
}

/// Appends a whole PONG frame.
pub fn put_pong_frame(out: &mut Vec<u8>, request_id: u32) {
    put_header(out, opcode::PONG, request_id, 0);
}

/// Appends a whole DERIVE_RESULT frame.
pub fn put_derive_result_frame(out: &mut Vec<u8>, request_id: u32, result: &DeriveResult) {
    let start = begin_frame(out, opcode::DERIVE_RESULT, request_id);
    put_derive_result(out, result);
    end_frame(out, start);
}

/// Appends a whole REVOKE_SELF_RESULT frame.
pub fn put_revoke_self_result_frame(out: &mut Vec<u8>, request_id: u32, status: Status) {
    put_header(out, opcode::REVOKE_SELF_RESULT, request_id, 1);
    out.push(status as u8);
}

/// Appends a frame header; the caller appends exactly `body_bytes` of body after it.
pub fn put_header(out: &mut Vec<u8>, opcode: u8, request_id: u32, body_bytes: usize) {
    out.push(VERSION);
    out.push(opcode);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&(body_bytes as u32).to_le_bytes());
}

/// Starts a frame whose body length is not known yet; finish it with [`end_frame`].
pub fn begin_frame(out: &mut Vec<u8>, opcode: u8, request_id: u32) -> usize {
    let start = out.len();
    put_header(out, opcode, request_id, 0);
    start
}

/// Writes the body length of the frame begun at `start`.
pub fn end_frame(out: &mut [u8], start: usize) {
    let body = out.len() - start - HEADER_BYTES;
    out[start + 8..start + 12].copy_from_slice(&(body as u32).to_le_bytes());
}

/// Why a body does not parse. Not fatal: the frame is answered with an ERROR and skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    #[error("body ends early")]
    Truncated,
    #[error("body has {0} bytes after its last field")]
    Trailing(usize),
    #[error("credential longer than {CREDENTIAL_BYTES_MAX} bytes")]
    CredentialLength,
    #[error("scope longer than {SCOPE_BYTES_MAX} bytes")]
    ScopeLength,
    #[error("tenant longer than {TENANT_BYTES_MAX} bytes")]
    TenantLength,
    #[error("address family must be 0, 4 or 6")]
    AddressFamily,
    #[error("batch must hold 1 to {BATCH_ITEMS_MAX} items")]
    BatchCount,
    #[error("a DERIVE holds at most {DERIVE_ITEMS_MAX} {0}")]
    DeriveItems(&'static str),
    #[error("address range prefix length {0} is over 128")]
    PrefixLength(u8),
    #[error("address range on an IPv4 network (::ffff:a.b.c.d) has prefix length {0}: it counts from 96 (::ffff:0:0/96), so an IPv4 /N is 96+N; below 96 it would cover more than IPv4")]
    MappedPrefix(u8),
    #[error("REVOKE_SELF carries a credential only: its scope, tenant and address must be empty")]
    RevokeSelfFields,
    #[error("a claim's key must be 1 to {max_key} bytes and its value at most {max_value}", max_key = CLAIM_KEY_BYTES_MAX, max_value = CLAIM_VALUE_BYTES_MAX)]
    ClaimLength,
    #[error("PING carries no body")]
    PingBody,
    #[error("unknown status {0}")]
    Status(u8),
    #[error("text field is not UTF-8")]
    Utf8,
}

/// A cursor over a body that never reads past its end.
#[derive(Clone, Debug)]
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], BodyError> {
        if count > self.bytes.len() {
            return Err(BodyError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, BodyError> {
        Ok(self.take(1)?[0])
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], BodyError> {
        let (head, tail) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or(BodyError::Truncated)?;
        self.bytes = tail;
        Ok(*head)
    }

    fn u16(&mut self) -> Result<u16, BodyError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, BodyError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn text(&mut self, count: usize) -> Result<&'a str, BodyError> {
        std::str::from_utf8(self.take(count)?).map_err(|_| BodyError::Utf8)
    }

    fn finish(&self) -> Result<(), BodyError> {
        match self.bytes.len() {
            0 => Ok(()),
            extra => Err(BodyError::Trailing(extra)),
        }
    }
}

/// One VERIFY: the credential, and what the caller requires of it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct VerifyRequest<'a> {
    pub credential: &'a [u8],
    /// A scope the key must carry.
    pub scope: Option<&'a [u8]>,
    /// The tenant the key must belong to.
    pub tenant: Option<&'a [u8]>,
    /// The end client's address, checked against the key's allowlist.
    pub address: Option<IpAddr>,
}

fn read_verify<'a>(reader: &mut Reader<'a>) -> Result<VerifyRequest<'a>, BodyError> {
    let credential_bytes = usize::from(reader.u16()?);
    if credential_bytes > CREDENTIAL_BYTES_MAX {
        return Err(BodyError::CredentialLength);
    }
    let credential = reader.take(credential_bytes)?;
    let scope_bytes = usize::from(reader.u8()?);
    if scope_bytes > SCOPE_BYTES_MAX {
        return Err(BodyError::ScopeLength);
    }
    let scope = reader.take(scope_bytes)?;
    let tenant_bytes = usize::from(reader.u8()?);
    if tenant_bytes > TENANT_BYTES_MAX {
        return Err(BodyError::TenantLength);
    }
    let tenant = reader.take(tenant_bytes)?;
    let address = match reader.u8()? {
        0 => None,
        4 => Some(IpAddr::V4(Ipv4Addr::from(reader.array::<4>()?))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(reader.array::<16>()?))),
        _ => return Err(BodyError::AddressFamily),
    };
    Ok(VerifyRequest {
        credential,
        scope: (!scope.is_empty()).then_some(scope),
        tenant: (!tenant.is_empty()).then_some(tenant),
        address,
    })
}

/// Checks an address range from the wire: a prefix length of at most 128, and at least 96 on
/// an IPv4-mapped network (`::ffff:0:0/96`), where a shorter prefix would silently reach past
/// IPv4 (`::ffff:10.0.0.0` with 8 would mean `::/8`). Bits past the prefix are ignored.
pub fn check_range(network: &[u8; 16], prefix_len: u8) -> Result<(), BodyError> {
    if prefix_len > 128 {
        return Err(BodyError::PrefixLength(prefix_len));
    }
    let ipv4_mapped = network[..10].iter().all(|&b| b == 0) && network[10..12] == [0xff, 0xff];
    if ipv4_mapped && prefix_len < 96 {
        return Err(BodyError::MappedPrefix(prefix_len));
    }
    Ok(())
}

/// Parses a REVOKE_SELF body: a VERIFY body whose scope, tenant and address are empty.
pub fn parse_revoke_self(body: &[u8]) -> Result<VerifyRequest<'_>, BodyError> {
    let request = parse_verify(body)?;
    if request.scope.is_some() || request.tenant.is_some() || request.address.is_some() {
        return Err(BodyError::RevokeSelfFields);
    }
    Ok(request)
}

/// Parses a VERIFY_AT body: the least sequence (u64 LE), then a VERIFY body.
pub fn parse_verify_at(body: &[u8]) -> Result<(u64, VerifyRequest<'_>), BodyError> {
    let (sequence, verify) = body.split_first_chunk::<8>().ok_or(BodyError::Truncated)?;
    Ok((u64::from_le_bytes(*sequence), parse_verify(verify)?))
}

/// Parses a VERIFY body.
pub fn parse_verify(body: &[u8]) -> Result<VerifyRequest<'_>, BodyError> {
    let mut reader = Reader { bytes: body };
    let request = read_verify(&mut reader)?;
    reader.finish()?;
    Ok(request)
}

/// Checks a VERIFY_BATCH body and returns its item count; items are then read with
/// [`BatchItems`]. Checking first means a bad batch is refused whole, before any answer.
pub fn check_batch(body: &[u8]) -> Result<usize, BodyError> {
    let mut items = BatchItems::new(body)?;
    let count = items.remaining;
    for item in items.by_ref() {
        item?;
    }
    items.reader.finish()?;
    Ok(count)
}

/// Iterates the items of a VERIFY_BATCH body.
#[derive(Clone, Debug)]
pub struct BatchItems<'a> {
    reader: Reader<'a>,
    remaining: usize,
}

impl<'a> BatchItems<'a> {
    pub fn new(body: &'a [u8]) -> Result<BatchItems<'a>, BodyError> {
        let mut reader = Reader { bytes: body };
        let count = usize::from(reader.u16()?);
        if count == 0 || count > BATCH_ITEMS_MAX {
            return Err(BodyError::BatchCount);
        }
        Ok(BatchItems {
            reader,
            remaining: count,
        })
    }
}

impl<'a> Iterator for BatchItems<'a> {
    type Item = Result<VerifyRequest<'a>, BodyError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        Some(read_verify(&mut self.reader))
    }
}

/// Appends a VERIFY body. Panics if a field is over its bound (a caller bug).
pub fn put_verify(out: &mut Vec<u8>, request: &VerifyRequest<'_>) {
    let scope = request.scope.unwrap_or_default();
    let tenant = request.tenant.unwrap_or_default();
    assert!(
        request.credential.len() <= CREDENTIAL_BYTES_MAX,
        "credential over its bound"
    );
    assert!(scope.len() <= SCOPE_BYTES_MAX, "scope over its bound");
    assert!(tenant.len() <= TENANT_BYTES_MAX, "tenant over its bound");
    out.extend_from_slice(&(request.credential.len() as u16).to_le_bytes());
    out.extend_from_slice(request.credential);
    out.push(scope.len() as u8);
    out.extend_from_slice(scope);
    out.push(tenant.len() as u8);
    out.extend_from_slice(tenant);
    match request.address {
        None => out.push(0),
        Some(IpAddr::V4(v4)) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        Some(IpAddr::V6(v6)) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

/// Appends a whole VERIFY frame.
pub fn put_verify_frame(out: &mut Vec<u8>, request_id: u32, request: &VerifyRequest<'_>) {
    let start = begin_frame(out, opcode::VERIFY, request_id);
    put_verify(out, request);
    end_frame(out, start);
}

/// Appends a whole VERIFY_AT frame: answered only once the server has applied `sequence`.
pub fn put_verify_at_frame(
    out: &mut Vec<u8>,
    request_id: u32,
    sequence: u64,
    request: &VerifyRequest<'_>,
) {
    let start = begin_frame(out, opcode::VERIFY_AT, request_id);
    out.extend_from_slice(&sequence.to_le_bytes());
    put_verify(out, request);
    end_frame(out, start);
}

/// Parses a VERIFY_AT_RESULT body: the sequence the answer was decided at, and the result.
pub fn parse_verify_at_result(body: &[u8]) -> Result<(u64, VerifyResult), BodyError> {
    let (sequence, result) = body.split_first_chunk::<8>().ok_or(BodyError::Truncated)?;
    Ok((u64::from_le_bytes(*sequence), parse_result(result)?))
}

/// Appends a whole VERIFY_BATCH frame. Panics on 0 or more than [`BATCH_ITEMS_MAX`] items.
pub fn put_batch_frame(out: &mut Vec<u8>, request_id: u32, requests: &[VerifyRequest<'_>]) {
    assert!(
        (1..=BATCH_ITEMS_MAX).contains(&requests.len()),
        "batch size out of bounds"
    );
    let start = begin_frame(out, opcode::VERIFY_BATCH, request_id);
    out.extend_from_slice(&(requests.len() as u16).to_le_bytes());
    for request in requests {
        put_verify(out, request);
    }
    end_frame(out, start);
}

/// Appends a whole PING frame.
pub fn put_ping_frame(out: &mut Vec<u8>, request_id: u32) {
    put_header(out, opcode::PING, request_id, 0);
}

/// What a valid answer says about the key.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Grant {
    pub key_id: u64,
    /// `None`: never expires.
    pub expires: Option<UnixSeconds>,
    pub tenant: String,
    pub scopes: Vec<String>,
    /// Claims carried by a derived token; empty for keys.
    pub claims: Vec<(String, String)>,
}

/// One VERIFY answer, decoded (client side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyResult {
    pub status: Status,
    /// Present exactly when `status` is `Valid`.
    pub grant: Option<Grant>,
}

/// Appends a non-valid VERIFY result body.
pub fn put_status(out: &mut Vec<u8>, status: Status) {
    debug_assert_ne!(status, Status::Valid);
    out.push(status as u8);
}

/// Appends a valid VERIFY result body. The grant's fields are written by the caller's closure
/// so the server can stream them from the mapped table without building a `Grant`.
pub fn put_valid<'s>(
    out: &mut Vec<u8>,
    key_id: u64,
    expires: u64,
    tenant: &str,
    scopes: impl ExactSizeIterator<Item = &'s str>,
) {
    debug_assert!(tenant.len() <= TENANT_BYTES_MAX);
    debug_assert!(scopes.len() <= usize::from(u8::MAX));
    out.push(Status::Valid as u8);
    out.extend_from_slice(&key_id.to_le_bytes());
    out.extend_from_slice(&expires.to_le_bytes());
    out.push(tenant.len() as u8);
    out.extend_from_slice(tenant.as_bytes());
    out.push(scopes.len() as u8);
    for scope in scopes {
        debug_assert!(scope.len() <= SCOPE_BYTES_MAX);
        out.push(scope.len() as u8);
        out.extend_from_slice(scope.as_bytes());
    }
    out.push(0); // claim count: keys carry none
}

/// Appends the claims of a valid answer in place of the final claim count written by
/// [`put_valid`] (derived tokens carry claims; keys do not).
pub fn replace_claims<'s>(out: &mut Vec<u8>, claims: &[(&'s str, &'s str)]) {
    debug_assert_eq!(out.last(), Some(&0));
    debug_assert!(claims.len() <= usize::from(u8::MAX));
    out.pop();
    out.push(claims.len() as u8);
    for (key, value) in claims {
        out.push(key.len() as u8);
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
    }
}

/// Appends a result body for `result` (used by tests and tools; the server uses `put_valid`).
pub fn put_result(out: &mut Vec<u8>, result: &VerifyResult) {
    match &result.grant {
        Some(grant) if result.status == Status::Valid => {
            out.push(Status::Valid as u8);
            out.extend_from_slice(&grant.key_id.to_le_bytes());
            out.extend_from_slice(&grant.expires.map_or(0, |e| e.0).to_le_bytes());
            out.push(grant.tenant.len() as u8);
            out.extend_from_slice(grant.tenant.as_bytes());
            out.push(grant.scopes.len() as u8);
            for scope in &grant.scopes {
                out.push(scope.len() as u8);
                out.extend_from_slice(scope.as_bytes());
            }
            out.push(grant.claims.len() as u8);
            for (key, value) in &grant.claims {
                out.push(key.len() as u8);
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(&(value.len() as u16).to_le_bytes());
                out.extend_from_slice(value.as_bytes());
            }
        }
        _ => out.push(result.status as u8),
    }
}

fn read_result(reader: &mut Reader<'_>) -> Result<VerifyResult, BodyError> {
    let code = reader.u8()?;
    let status = Status::from_u8(code).ok_or(BodyError::Status(code))?;
    if status != Status::Valid {
        return Ok(VerifyResult {
            status,
            grant: None,
        });
    }
    let key_id = reader.u64()?;
    let expires = reader.u64()?;
    let tenant_bytes = usize::from(reader.u8()?);
    let tenant = reader.text(tenant_bytes)?.to_string();
    let scope_count = reader.u8()?;
    let mut scopes = Vec::with_capacity(usize::from(scope_count));
    for _ in 0..scope_count {
        let bytes = usize::from(reader.u8()?);
        scopes.push(reader.text(bytes)?.to_string());
    }
    let claim_count = reader.u8()?;
    let mut claims = Vec::with_capacity(usize::from(claim_count));
    for _ in 0..claim_count {
        let key_bytes = usize::from(reader.u8()?);
        let key = reader.text(key_bytes)?.to_string();
        let value_bytes = usize::from(reader.u16()?);
        claims.push((key, reader.text(value_bytes)?.to_string()));
    }
    let expires = (expires != 0).then_some(UnixSeconds(expires));
    Ok(VerifyResult {
        status,
        grant: Some(Grant {
            key_id,
            expires,
            tenant,
            scopes,
            claims,
        }),
    })
}

/// Parses a VERIFY_RESULT body.
pub fn parse_result(body: &[u8]) -> Result<VerifyResult, BodyError> {
    let mut reader = Reader { bytes: body };
    let result = read_result(&mut reader)?;
    reader.finish()?;
    Ok(result)
}

/// Parses a VERIFY_BATCH_RESULT body.
pub fn parse_batch_result(body: &[u8]) -> Result<Vec<VerifyResult>, BodyError> {
    let mut reader = Reader { bytes: body };
    let count = reader.u16()?;
    let mut results = Vec::with_capacity(usize::from(count).min(BATCH_ITEMS_MAX));
    for _ in 0..count {
        results.push(read_result(&mut reader)?);
    }
    reader.finish()?;
    Ok(results)
}

/// Appends a whole ERROR frame.
/// Appends a whole ERROR frame. The message is cut, at a character boundary, to
/// [`ERROR_MESSAGE_BYTES_MAX`].
pub fn put_error_frame(out: &mut Vec<u8>, request_id: u32, code: ErrorCode, message: &str) {
    let mut end = message.len().min(ERROR_MESSAGE_BYTES_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message[..end];
    put_header(out, opcode::ERROR, request_id, 1 + 2 + message.len());
    out.push(code as u8);
    out.extend_from_slice(&(message.len() as u16).to_le_bytes());
    out.extend_from_slice(message.as_bytes());
}

/// An ERROR frame's body, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    /// The raw code; [`ErrorCode::from_u8`] names it when known.
    pub code: u8,
    pub message: String,
}

pub fn parse_error(body: &[u8]) -> Result<ErrorBody, BodyError> {
    let mut reader = Reader { bytes: body };
    let code = reader.u8()?;
    let bytes = usize::from(reader.u16()?);
    let message = String::from_utf8_lossy(reader.take(bytes)?).into_owned();
    reader.finish()?;
    Ok(ErrorBody { code, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_come_first() {
        let mut frame = Vec::new();
        put_header(&mut frame, opcode::PING, 9, 0);
        assert_eq!(decode_frame(&frame[..11], 64), Ok(None));
        let decoded = decode_frame(&frame, 64).unwrap().unwrap();
        assert_eq!(
            decoded.header,
            FrameHeader {
                opcode: opcode::PING,
                request_id: 9,
                body_bytes: 0
            }
        );

        let mut bad = frame.clone();
        bad[0] = 2;
        assert_eq!(decode_frame(&bad, 64), Err(FrameError::Version(2)));
        let mut bad = frame.clone();
        bad[3] = 1;
        assert_eq!(decode_frame(&bad, 64), Err(FrameError::Flags(0x100)));
        let mut big = Vec::new();
        put_header(&mut big, opcode::VERIFY, 1, 65);
        assert_eq!(
            decode_frame(&big, 64),
            Err(FrameError::TooLarge {
                declared: 65,
                limit: 64
            })
        );
    }

    #[test]
    fn verify_rejects_trailing_and_truncated() {
        let request = VerifyRequest {
            credential: b"abc",
            ..Default::default()
        };
        let mut body = Vec::new();
        put_verify(&mut body, &request);
        assert_eq!(parse_verify(&body), Ok(request));
        body.push(0);
        assert_eq!(parse_verify(&body), Err(BodyError::Trailing(1)));
        body.truncate(body.len() - 2);
        assert_eq!(parse_verify(&body), Err(BodyError::Truncated));
    }

    #[test]
    fn batch_count_is_bounded() {
        assert_eq!(
            check_batch(&0u16.to_le_bytes()).err(),
            Some(BodyError::BatchCount)
        );
        assert_eq!(
            check_batch(&257u16.to_le_bytes()).err(),
            Some(BodyError::BatchCount)
        );
        assert_eq!(
            check_batch(&1u16.to_le_bytes()).err(),
            Some(BodyError::Truncated)
        );
    }
}

/// One DERIVE: mint a token from a parent key the caller holds.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DeriveRequest<'a> {
    /// The parent key's credential: proves the caller holds it.
    pub credential: &'a [u8],
    /// Requested lifetime in seconds; 0 means the longest allowed.
    pub ttl_seconds: u32,
    /// Scopes for the token; empty means all of the parent's.
    pub scopes: Vec<&'a [u8]>,
    /// Tenant the token is limited to (must be the parent's).
    pub tenant: Option<&'a [u8]>,
    /// Client-address ranges: 16-byte IPv4-mapped network and prefix length.
    pub ranges: Vec<([u8; 16], u8)>,
    /// Opaque claims handed back on every valid verify of the token.
    pub claims: Vec<(&'a [u8], &'a [u8])>,
}

/// Most scopes, ranges and claims in one DERIVE.
pub const DERIVE_ITEMS_MAX: usize = 16;
/// Longest claim key in a DERIVE (and a token's claim caveat); at least 1 byte.
pub const CLAIM_KEY_BYTES_MAX: usize = 32;
/// Longest claim value.
pub const CLAIM_VALUE_BYTES_MAX: usize = 128;

/// Parses a DERIVE body.
pub fn parse_derive(body: &[u8]) -> Result<DeriveRequest<'_>, BodyError> {
    let mut reader = Reader { bytes: body };
    let credential_bytes = usize::from(reader.u16()?);
    if credential_bytes > CREDENTIAL_BYTES_MAX {
        return Err(BodyError::CredentialLength);
    }
    let credential = reader.take(credential_bytes)?;
    let ttl_seconds = u32::from_le_bytes(reader.take(4)?.try_into().unwrap());
    let count = usize::from(reader.u8()?);
    if count > DERIVE_ITEMS_MAX {
        return Err(BodyError::DeriveItems("scopes"));
    }
    let mut scopes = Vec::with_capacity(count);
    for _ in 0..count {
        let length = usize::from(reader.u8()?);
        if length == 0 || length > SCOPE_BYTES_MAX {
            return Err(BodyError::ScopeLength);
        }
        scopes.push(reader.take(length)?);
    }
    let tenant_bytes = usize::from(reader.u8()?);
    if tenant_bytes > TENANT_BYTES_MAX {
        return Err(BodyError::TenantLength);
    }
    let tenant = reader.take(tenant_bytes)?;
    let count = usize::from(reader.u8()?);
    if count > DERIVE_ITEMS_MAX {
        return Err(BodyError::DeriveItems("address ranges"));
    }
    let mut ranges = Vec::with_capacity(count);
    for _ in 0..count {
        let network: [u8; 16] = reader.array::<16>()?;
        let prefix_len = reader.u8()?;
        check_range(&network, prefix_len)?;
        ranges.push((network, prefix_len));
    }
    let count = usize::from(reader.u8()?);
    if count > DERIVE_ITEMS_MAX {
        return Err(BodyError::DeriveItems("claims"));
    }
    let mut claims = Vec::with_capacity(count);
    for _ in 0..count {
        let key_bytes = usize::from(reader.u8()?);
        let key = reader.take(key_bytes)?;
        let value_bytes = usize::from(reader.u8()?);
        let value = reader.take(value_bytes)?;
        if key.is_empty() || key.len() > CLAIM_KEY_BYTES_MAX || value.len() > CLAIM_VALUE_BYTES_MAX
        {
            return Err(BodyError::ClaimLength);
        }
        claims.push((key, value));
    }
    reader.finish()?;
    Ok(DeriveRequest {
        credential,
        ttl_seconds,
        scopes,
        tenant: (!tenant.is_empty()).then_some(tenant),
        ranges,
        claims,
    })
}

/// Appends a whole DERIVE frame. Panics if a field is over its bound (a caller bug).
pub fn put_derive_frame(out: &mut Vec<u8>, request_id: u32, request: &DeriveRequest<'_>) {
    assert!(request.credential.len() <= CREDENTIAL_BYTES_MAX);
    assert!(
        request.scopes.len() <= DERIVE_ITEMS_MAX
            && request.ranges.len() <= DERIVE_ITEMS_MAX
            && request.claims.len() <= DERIVE_ITEMS_MAX
    );
    let start = begin_frame(out, opcode::DERIVE, request_id);
    out.extend_from_slice(&(request.credential.len() as u16).to_le_bytes());
    out.extend_from_slice(request.credential);
    out.extend_from_slice(&request.ttl_seconds.to_le_bytes());
    out.push(request.scopes.len() as u8);
    for scope in &request.scopes {
        out.push(scope.len() as u8);
        out.extend_from_slice(scope);
    }
    let tenant = request.tenant.unwrap_or_default();
    out.push(tenant.len() as u8);
    out.extend_from_slice(tenant);
    out.push(request.ranges.len() as u8);
    for (network, prefix_len) in &request.ranges {
        out.extend_from_slice(network);
        out.push(*prefix_len);
    }
    out.push(request.claims.len() as u8);
    for (key, value) in &request.claims {
        assert!(key.len() <= 255 && value.len() <= 255);
        out.push(key.len() as u8);
        out.extend_from_slice(key);
        out.push(value.len() as u8);
        out.extend_from_slice(value);
    }
    end_frame(out, start);
}

/// A DERIVE answer: the token and its expiry, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeriveResult {
    Minted { token: String, expires: UnixSeconds },
    Refused { status: Status, message: String },
}

pub fn put_derive_result(out: &mut Vec<u8>, result: &DeriveResult) {
    match result {
        DeriveResult::Minted { token, expires } => {
            out.push(Status::Valid as u8);
            out.extend_from_slice(&(token.len() as u16).to_le_bytes());
            out.extend_from_slice(token.as_bytes());
            out.extend_from_slice(&expires.0.to_le_bytes());
        }
        DeriveResult::Refused { status, message } => {
            let mut end = message.len().min(usize::from(u8::MAX));
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            out.push(*status as u8);
            out.push(end as u8);
            out.extend_from_slice(&message.as_bytes()[..end]);
        }
    }
}

pub fn parse_derive_result(body: &[u8]) -> Result<DeriveResult, BodyError> {
    let mut reader = Reader { bytes: body };
    let code = reader.u8()?;
    let status = Status::from_u8(code).ok_or(BodyError::Status(code))?;
    let result = if status == Status::Valid {
        let length = usize::from(reader.u16()?);
        let token = reader.text(length)?.to_string();
        DeriveResult::Minted {
            token,
            expires: UnixSeconds(reader.u64()?),
        }
    } else {
        let length = usize::from(reader.u8()?);
        DeriveResult::Refused {
            status,
            message: reader.text(length)?.to_string(),
        }
    };
    reader.finish()?;
    Ok(result)
}
