//! The metrics listener: `GET /metrics` (Prometheus text), `GET /healthz` (the process is
//! up), `GET /readyz` (every shard serving and the control plane running; the reasons when not).
//!
//! One thread of its own, off the verify cores' loops, one connection at a time: a scrape is a
//! few kilobytes every few seconds. Requests are parsed with `httparse`; a request is at most
//! [`REQUEST_BYTES_MAX`] bytes and must arrive within [`IO_TIMEOUT`], and every response closes
//! its connection, so a client that stalls holds the listener for at most that long.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{exposition, Board};
use crate::link::Shutdown;

/// Largest request head read.
pub const REQUEST_BYTES_MAX: usize = 8192;
/// Longest wait for a request to arrive, or for its answer to be taken.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the listener looks at the shutdown flag.
const STOP_POLL_MS: i32 = 200;
/// Most header lines a request may carry.
const HEADERS_MAX: usize = 64;

/// Serves the board on `listener` until `shutdown`.
pub fn spawn(
    listener: TcpListener,
    board: Arc<Board>,
    shutdown: Shutdown,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("keyward-metrics".into())
        .spawn(move || {
            let registry = exposition::registry(board.clone());
            while !shutdown.is_triggered() {
                if !readable(&listener, STOP_POLL_MS) {
                    continue;
                }
                if let Ok((stream, _)) = listener.accept() {
                    // A client's failure (reset, timeout) is its own; the listener goes on.
                    let _ = answer(stream, &board, &registry);
                }
            }
        })
}

/// Whether `listener` has a connection waiting, within `timeout_ms`.
fn readable(listener: &TcpListener, timeout_ms: i32) -> bool {
    let mut poll = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
    ready > 0 && poll.revents & libc::POLLIN != 0
}

fn answer(
    mut stream: TcpStream,
    board: &Board,
    registry: &prometheus_client::registry::Registry,
) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buffer = vec![0u8; REQUEST_BYTES_MAX];
    let mut filled = 0;
    let (method, path) = loop {
        if filled == buffer.len() {
            return respond(
                &mut stream,
                431,
                "text/plain",
                "request head too large\n",
                true,
            );
        }
        let read = stream.read(&mut buffer[filled..])?;
        if read == 0 {
            return Ok(());
        }
        filled += read;
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buffer[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    request.method.unwrap_or("").to_string(),
                    request.path.unwrap_or("").to_string(),
                );
            }
            Ok(httparse::Status::Partial) => continue,
            Err(_) => return respond(&mut stream, 400, "text/plain", "bad request\n", true),
        }
    };
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            &mut stream,
            405,
            "text/plain",
            "only GET and HEAD\n",
            head_only,
        );
    }
    let path = path.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let text = exposition::render(registry);
            respond(&mut stream, 200, exposition::CONTENT_TYPE, &text, head_only)
        }
        "/healthz" => respond(&mut stream, 200, "text/plain", "ok\n", head_only),
        "/readyz" => match board.readiness() {
            Ok(()) => respond(&mut stream, 200, "text/plain", "ready\n", head_only),
            Err(reasons) => respond(
                &mut stream,
                503,
                "text/plain",
                &format!("not ready: {reasons}\n"),
                head_only,
            ),
        },
        _ => respond(
            &mut stream,
            404,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n",
            head_only,
        ),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}
