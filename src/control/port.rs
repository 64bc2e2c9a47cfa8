//! The control port: accepting connections, timeouts, reading a request with its admin token
//! checked before the rest of its body is read, and dispatching it to its command.
//!
//! Bounds, so that nobody without the token can lock admins out or hold memory:
//! - at most [`CONTROL_CONNECTIONS_MAX`] connections; when full, a new connection evicts the
//!   oldest connection that has not yet presented a valid token (its socket is shut down);
//!   only when every connection is authenticated is the new one refused with `busy`;
//! - a connection silent for the idle timeout between requests is closed, and a request must
//!   arrive whole within the frame timeout of its first byte (so a slow sender is closed too);
//! - before its token is checked a connection holds at most a header and a token
//!   ([`UNAUTHENTICATED_BYTES_MAX`]); a wrong token gets `unauthorized` and the connection is
//!   closed. Only then is the JSON body, up to `CONTROL_BODY_BYTES_MAX`, read.
//!
//! The token names an admin and its role (`crate::admins`), checked on every request; every
//! request gets its audit line (see `dispatch`).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::os::unix::io::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use serde::de::DeserializeOwned;

use super::{
    admins, commit, compaction, keys, queries, Caller, Control, Outcome, Refusal,
    CONTROL_CONNECTIONS_MAX,
};
use crate::admin::{self, opcode};
use crate::admins::{Actor, Role};
use crate::datadir::ADMIN_TOKEN_BYTES_MAX;
use crate::protocol::{self, ErrorCode, HEADER_BYTES};
use crate::throttle::Throttled;

/// Most bytes a connection reads before its admin token has been checked.
pub const UNAUTHENTICATED_BYTES_MAX: usize = HEADER_BYTES + 1 + ADMIN_TOKEN_BYTES_MAX;
/// Scratch buffer for the body of a request refused for its token.
const DISCARD_CHUNK_BYTES: usize = 4096;
/// Back-off after a failed accept (EMFILE leaves the connection queued: retrying at once spins).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// The open control connections, in accept order.
#[derive(Default)]
pub(super) struct Connections {
    open: RefCell<BTreeMap<u64, Connection>>,
    next: Cell<u64>,
    accept_failures: Throttled,
}

struct Connection {
    fd: RawFd,
    authenticated: bool,
}

impl Connections {
    fn register(&self, fd: RawFd) -> u64 {
        let number = self.next.get();
        self.next.set(number + 1);
        self.open.borrow_mut().insert(
            number,
            Connection {
                fd,
                authenticated: false,
            },
        );
        number
    }

    fn authenticated(&self, number: u64) {
        if let Some(connection) = self.open.borrow_mut().get_mut(&number) {
            connection.authenticated = true;
        }
    }

    fn remove(&self, number: u64) {
        self.open.borrow_mut().remove(&number);
    }

    /// Makes room for one more connection: true when there was room or the oldest connection
    /// without a valid token was evicted. Its socket is shut down, so its task wakes, sees the
    /// end of its stream and closes it; it no longer counts from now on.
    fn make_room(&self) -> bool {
        let mut open = self.open.borrow_mut();
        if open.len() < CONTROL_CONNECTIONS_MAX {
            return true;
        }
        let Some((&number, victim)) = open.iter().find(|(_, c)| !c.authenticated) else {
            return false;
        };
        // SAFETY: the descriptor belongs to a stream whose task is still running (it removes
        // its own entry before the stream is dropped, on this same thread), so it is open.
        unsafe { libc::shutdown(victim.fd, libc::SHUT_RDWR) };
        open.remove(&number);
        true
    }
}

pub(super) async fn accept_loop(listener: &TcpListener, control: &Rc<Control>) {
    loop {
        match listener.accept().await {
            Ok(stream) if control.connections.make_room() => {
                let number = control.connections.register(stream.as_raw_fd());
                let control = control.clone();
                glommio::spawn_local(async move {
                    let _ = serve_connection(stream, &control, number).await;
                    control.connections.remove(number);
                })
                .detach();
            }
            Ok(stream) => {
                glommio::spawn_local(refuse(stream)).detach();
            }
            Err(error) => {
                control
                    .connections
                    .accept_failures
                    .log(|| format!("control accept failed: {error}; backing off"));
                glommio::timer::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn refuse(mut stream: TcpStream) {
    let mut out = Vec::new();
    protocol::put_error_frame(
        &mut out,
        0,
        ErrorCode::Busy,
        "too many authenticated control connections",
    );
    let _ = stream.write_all(&out).await;
}

/// How a read that must fill its buffer ended early.
enum Short {
    Closed,
    TimedOut,
}

/// Fills `buffer` by `deadline`.
async fn read_full(
    stream: &mut TcpStream,
    buffer: &mut [u8],
    deadline: Instant,
) -> std::io::Result<Result<(), Short>> {
    let mut filled = 0;
    while filled < buffer.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Err(Short::TimedOut));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buffer[filled..]).await {
            Ok(0) => return Ok(Err(Short::Closed)),
            Ok(read) => filled += read,
            Err(error) if error.kind() == ErrorKind::TimedOut => return Ok(Err(Short::TimedOut)),
            Err(error) => return Err(error),
        }
    }
    Ok(Ok(()))
}

/// Sends a fatal error and ends the connection.
async fn close_with(
    stream: &mut TcpStream,
    request_id: u32,
    code: ErrorCode,
    message: &str,
) -> std::io::Result<()> {
    debug_assert!(code.is_fatal());
    let mut out = Vec::new();
    protocol::put_error_frame(&mut out, request_id, code, message);
    stream.write_all(&out).await?;
    stream.close().await
}

/// Serves one control connection: one answer per request, in order.
async fn serve_connection(
    mut stream: TcpStream,
    control: &Rc<Control>,
    number: u64,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr().ok();
    let settings = &control.settings;
    let frame_ms = settings.frame_timeout.as_millis();
    loop {
        let mut header = [0u8; HEADER_BYTES];
        let idle_deadline = Instant::now() + settings.idle_timeout;
        match read_full(&mut stream, &mut header[..1], idle_deadline).await? {
            Ok(()) => {}
            Err(Short::Closed) => return Ok(()),
            Err(Short::TimedOut) => {
                let message = format!(
                    "no request for {} ms: connection closed",
                    settings.idle_timeout.as_millis()
                );
                return close_with(&mut stream, 0, ErrorCode::Timeout, &message).await;
            }
        }
        let deadline = Instant::now() + settings.frame_timeout;
        let too_slow = format!("a request must arrive whole within {frame_ms} ms");
        macro_rules! read_or_close {
            ($buffer:expr, $request_id:expr) => {
                match read_full(&mut stream, $buffer, deadline).await? {
                    Ok(()) => {}
                    Err(Short::Closed) => return Ok(()),
                    Err(Short::TimedOut) => {
                        return close_with(&mut stream, $request_id, ErrorCode::Timeout, &too_slow)
                            .await
                    }
                }
            };
        }
        read_or_close!(&mut header[1..], 0);
        let header = match protocol::decode_header(&header, admin::CONTROL_BODY_BYTES_MAX) {
            Ok(header) => header,
            Err(error) => {
                return close_with(&mut stream, 0, error.code(), &error.to_string()).await;
            }
        };
        let request_id = header.request_id;
        let body_bytes = header.body_bytes as usize;
        // The token comes first: check it before reading anything more.
        let mut token_length = [0u8; 1];
        if body_bytes == 0 {
            return unauthorized(&mut stream, request_id, 0, deadline).await;
        }
        read_or_close!(&mut token_length, request_id);
        let token_bytes = usize::from(token_length[0]).min(body_bytes - 1);
        let mut token = [0u8; ADMIN_TOKEN_BYTES_MAX];
        read_or_close!(&mut token[..token_bytes], request_id);
        let claimed = usize::from(token_length[0]);
        let actor = (claimed == token_bytes)
            .then(|| control.admins.borrow().authenticate(&token[..token_bytes]))
            .flatten();
        let Some(actor) = actor else {
            crate::log_debug!(
                "control request from {} refused: missing or wrong admin token",
                peer.map_or("?".into(), |p| p.to_string())
            );
            control.usage.unauthorized(peer.map(|p| p.ip()));
            let rest = body_bytes - 1 - token_bytes;
            return unauthorized(&mut stream, request_id, rest, deadline).await;
        };
        control.connections.authenticated(number);
        let mut json = vec![0u8; body_bytes - 1 - token_bytes];
        read_or_close!(&mut json, request_id);
        let mut out = Vec::new();
        crate::log_debug!(
            "control request {} ({} bytes) from {} by admin {:?}",
            opcode::name(header.opcode).unwrap_or("unknown"),
            body_bytes,
            peer.map_or("?".into(), |p| p.to_string()),
            actor.name
        );
        match dispatch(control, &actor, peer, header.opcode, &json).await {
            Ok(value) => {
                let json = serde_json::to_vec(&value).expect("JSON values serialize");
                protocol::put_header(&mut out, opcode::OK, request_id, json.len());
                out.extend_from_slice(&json);
            }
            Err(refusal) => {
                protocol::put_error_frame(&mut out, request_id, refusal.code, &refusal.message);
            }
        }
        stream.write_all(&out).await?;
    }
}

/// Refuses a request whose token is missing or wrong, and closes the connection. The rest of its
/// body is read into a small scratch buffer and dropped first (never held), so the peer is not
/// reset while still sending and reads the error.
async fn unauthorized(
    stream: &mut TcpStream,
    request_id: u32,
    mut rest: usize,
    deadline: Instant,
) -> std::io::Result<()> {
    let mut scratch = [0u8; DISCARD_CHUNK_BYTES];
    while rest > 0 {
        let chunk = rest.min(scratch.len());
        if read_full(stream, &mut scratch[..chunk], deadline)
            .await?
            .is_err()
        {
            return Ok(());
        }
        rest -= chunk;
    }
    let message = "missing or wrong admin token";
    close_with(stream, request_id, ErrorCode::Unauthorized, message).await
}

/// Requests that change something: only an admin with the `write` role may make them.
fn changes_something(opcode: u8) -> bool {
    matches!(
        opcode,
        opcode::ISSUE
            | opcode::IMPORT
            | opcode::REVOKE
            | opcode::ROTATE
            | opcode::UPDATE
            | opcode::COMPACT
            | opcode::ADMIN_ADD
            | opcode::ADMIN_REMOVE
    )
}

/// Checks the admin's role, runs one authenticated request, and sees that it has its audit
/// line: a change's goes with its delta (in the same group commit); a refusal's, an admin
/// change's and a no-op change's are made durable before the answer; a read's is written in
/// the next round.
async fn dispatch(
    control: &Rc<Control>,
    actor: &Actor,
    peer: Option<std::net::SocketAddr>,
    opcode: u8,
    json: &[u8],
) -> Outcome {
    let op = opcode::name(opcode).unwrap_or("unknown");
    let caller = Caller::new(&actor.name, peer.map(|p| p.to_string()));
    let writes = changes_something(opcode);
    let outcome = if writes && actor.role != Role::Write {
        Err(Refusal::new(
            ErrorCode::Forbidden,
            format!(
                "the admin {:?} has the read role: it cannot {op}",
                actor.name
            ),
        ))
    } else if writes && control.broken.borrow().is_some() {
        Err(commit::broken_refusal(control))
    } else if changes_keys(opcode) {
        // (Not COMPACT or the admin operations: they put nothing in the stream, and a long
        // compaction must not hold up this node's changes.)
        super::replicated::serialized(control, || run(control, &caller, opcode, json)).await
    } else {
        run(control, &caller, opcode, json).await
    };
    let mut outcome = outcome;
    if changes_keys(opcode) {
        // Every acknowledged change carries a sequence this node has applied it at: a VERIFY_AT
        // with it, on any node, is answered only by a node that has applied the change too.
        if let Ok(serde_json::Value::Object(answer)) = &mut outcome {
            let applied = control.durable.borrow().applied;
            answer.insert("sequence".into(), applied.into());
        }
    }
    if caller.audited.get() {
        return outcome;
    }
    let mut entry = caller.entry(
        op,
        match &outcome {
            Ok(_) => "ok",
            Err(refusal) => refusal.code.name(),
        },
    );
    subject_of(control, json, &mut entry);
    if let Err(refusal) = &outcome {
        let mut detail = entry.detail.take().unwrap_or_else(|| serde_json::json!({}));
        detail["message"] = refusal.message.clone().into();
        entry.detail = Some(detail);
    }
    if writes || outcome.is_err() {
        // A failed audit write refuses changes from now on; this answer stands as it is.
        let _ = commit::audit_now(control, entry).await;
    } else {
        commit::audit_later(control, entry);
    }
    outcome
}

/// The key id and tenant a request names, for its audit line. Never a credential: a tenant
/// that could not be one (too long) or that looks like a key or token (pasted into the wrong
/// field) is left out.
fn subject_of(control: &Control, json: &[u8], entry: &mut crate::audit::Entry) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    entry.key = value
        .get("id")
        .or_else(|| value.get("parent_id"))
        .and_then(serde_json::Value::as_u64);
    entry.tenant = value
        .get("tenant")
        .and_then(serde_json::Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= crate::record::TENANT_BYTES_MAX)
        .filter(|t| {
            let settings = &control.settings;
            let token = format!("{}_", settings.token_prefix);
            matches!(
                crate::credential::parse(t.as_bytes(), &settings.prefixes),
                crate::credential::Parsed::Other
            ) && !t.starts_with(&token)
        })
        .map(str::to_string);
}

/// Whether `opcode` changes keys (and its answer carries the sequence of the change).
fn changes_keys(opcode: u8) -> bool {
    matches!(
        opcode,
        opcode::ISSUE | opcode::IMPORT | opcode::REVOKE | opcode::ROTATE | opcode::UPDATE
    )
}

/// Parses and runs one request the admin's role allows.
async fn run(control: &Rc<Control>, caller: &Caller, opcode: u8, json: &[u8]) -> Outcome {
    match opcode {
        opcode::ISSUE => keys::issue(control, caller, parse(json)?).await,
        opcode::IMPORT => keys::import(control, caller, parse(json)?).await,
        opcode::REVOKE => keys::revoke(control, caller, parse(json)?).await,
        opcode::ROTATE => keys::rotate(control, caller, parse(json)?).await,
        opcode::UPDATE => keys::update(control, caller, parse(json)?).await,
        opcode::INSPECT => queries::inspect(control, parse(json)?),
        opcode::DERIVE => queries::derive(control, parse(json)?),
        opcode::LIST => queries::list(control, parse(json)?),
        opcode::STATS => Ok(queries::stats(control, parse(json)?)),
        opcode::COMPACT => {
            let _: admin::Empty = parse(json)?;
            compaction::run(control).await
        }
        opcode::ADMIN_ADD => admins::add(control, caller, parse(json)?).await,
        opcode::ADMIN_REMOVE => admins::remove(control, caller, parse(json)?).await,
        opcode::ADMIN_LIST => {
            let _: admin::Empty = parse(json)?;
            admins::list(control)
        }
        other => Err(Refusal::new(
            ErrorCode::UnknownOpcode,
            format!("unknown control opcode {other:#04x}"),
        )),
    }
}

fn parse<T: DeserializeOwned>(json: &[u8]) -> Result<T, Refusal> {
    let json = if json.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        json
    };
    serde_json::from_slice(json).map_err(|e| Refusal::invalid(format!("bad request: {e}")))
}
