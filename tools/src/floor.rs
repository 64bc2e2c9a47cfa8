//! `keyward-floor`: the loopback floor. A minimal epoll responder that answers keyward PING
//! frames with PONG, one `read` and one `write` per wake-up of a connection, the way a good epoll
//! server does (Redis's event loop has the same shape). It does nothing else, so what it
//! achieves is the kernel's cost of one-request-per-syscall TCP on this machine: the physical
//! reference for keyward's own PING (`tools/compare` runs it beside keyward, Redis and
//! memcached).
//!
//! `--uring` answers the same PINGs through keyward's io_uring turn (`keyward::dataplane::turn`:
//! multishot accept and receive into a provided buffer ring, one send per connection per turn,
//! one `submit_and_wait` per turn), to measure that path against the epoll one.
//!
//! Epoll mode: one thread, level-triggered epoll, non-blocking sockets. Per readable connection: one `read`
//! of up to 64 KiB, a PONG for every whole PING frame in it (partial frames wait for the next
//! read), one `write` of all the answers (what the socket does not take is kept and written when
//! it turns writable, and the connection is not read meanwhile). Any frame that is not a PING
//! with an empty body closes the connection.

use keyward::outln;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::io::{AsRawFd, IntoRawFd, RawFd};
use std::process::ExitCode;

use clap::Parser;

use keyward::protocol::{self, opcode};

/// Most bytes one read takes.
const READ_BYTES_MAX: usize = 64 * 1024;
/// Events taken from one epoll_wait.
const EVENTS_MAX: usize = 256;
/// Most connections open at once; more are closed on accept.
const CONNECTIONS_MAX: usize = 65_536;
/// Unsent answers a connection may hold before it is no longer read.
const PENDING_BYTES_MAX: usize = 1024 * 1024;

#[derive(Parser)]
#[command(
    name = "keyward-floor",
    version,
    about = "Minimal epoll PING responder: the loopback floor keyward's PING is measured against"
)]
struct Args {
    /// Address to listen on (port 0: any free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:7590", value_name = "ADDR")]
    listen: SocketAddr,
    /// CPU to pin the responder to.
    #[arg(long, value_name = "CPU")]
    cpu: Option<usize>,
    /// Answer through keyward's io_uring turn instead of epoll.
    #[arg(long)]
    uring: bool,
}

struct Connection {
    fd: RawFd,
    input: Vec<u8>,
    filled: usize,
    pending: Vec<u8>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("keyward-floor: error: {message}");
            ExitCode::from(1)
        }
    }
}

fn check(result: libc::c_int, what: &str) -> Result<libc::c_int, String> {
    if result < 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(result)
}

fn serve(args: &Args) -> Result<(), String> {
    if let Some(cpu) = args.cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            return Err(format!("cannot pin to CPU {cpu}"));
        }
    }
    let listener = TcpListener::bind(args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    outln!("keyward-floor: listening on {address}");
    keyward::stdout::flush();
    if args.uring {
        let never = std::sync::atomic::AtomicBool::new(false);
        let settings = keyward::dataplane::turn::TurnSettings {
            frame_body_bytes_max: 0,
            ..Default::default()
        };
        let mut service = keyward::dataplane::ping::PingService {
            frame_body_bytes_max: 0,
        };
        return keyward::dataplane::turn::serve(
            listener.as_raw_fd(),
            settings,
            &never,
            &mut service,
        )
        .map(|_| ())
        .map_err(|e| format!("io_uring turn: {e}"));
    }
    // SAFETY: plain syscalls on descriptors this function owns; the event buffer outlives every
    // epoll_wait that writes into it.
    unsafe {
        let epoll = check(libc::epoll_create1(libc::EPOLL_CLOEXEC), "epoll_create1")?;
        let listener_fd = listener.as_raw_fd();
        watch(
            epoll,
            listener_fd,
            libc::EPOLLIN as u32,
            libc::EPOLL_CTL_ADD,
        )?;
        let mut connections: HashMap<RawFd, Connection> = HashMap::new();
        let mut events: Vec<libc::epoll_event> =
            vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX];
        loop {
            let ready = libc::epoll_wait(epoll, events.as_mut_ptr(), EVENTS_MAX as i32, -1);
            if ready < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("epoll_wait: {}", std::io::Error::last_os_error()));
            }
            for event in &events[..ready as usize] {
                let fd = event.u64 as RawFd;
                if fd == listener_fd {
                    accept_all(epoll, &listener, &mut connections)?;
                    continue;
                }
                let keep = match connections.get_mut(&fd) {
                    Some(connection) => serve_connection(epoll, connection, event.events),
                    None => continue,
                };
                if !keep {
                    connections.remove(&fd);
                    libc::close(fd);
                }
            }
        }
    }
}

/// Adds or modifies the epoll registration of `fd`.
unsafe fn watch(
    epoll: RawFd,
    fd: RawFd,
    events: u32,
    operation: libc::c_int,
) -> Result<(), String> {
    let mut event = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    check(
        libc::epoll_ctl(epoll, operation, fd, &mut event),
        "epoll_ctl",
    )
    .map(|_| ())
}

unsafe fn accept_all(
    epoll: RawFd,
    listener: &TcpListener,
    connections: &mut HashMap<RawFd, Connection>,
) -> Result<(), String> {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) => {
                eprintln!("keyward-floor: accept: {error}");
                return Ok(());
            }
        };
        if connections.len() >= CONNECTIONS_MAX {
            continue; // dropped: closed
        }
        let _ = stream.set_nodelay(true);
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let fd = stream.into_raw_fd();
        watch(epoll, fd, libc::EPOLLIN as u32, libc::EPOLL_CTL_ADD)?;
        connections.insert(
            fd,
            Connection {
                fd,
                input: vec![0; READ_BYTES_MAX],
                filled: 0,
                pending: Vec::new(),
            },
        );
    }
}

/// One wake-up of a connection: write what was pending, or one read and one write. False: close.
unsafe fn serve_connection(epoll: RawFd, connection: &mut Connection, events: u32) -> bool {
    if events & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 && events & libc::EPOLLIN as u32 == 0
    {
        return false;
    }
    if !connection.pending.is_empty() {
        // Writable again: flush, and read once everything is out.
        if !flush(connection) {
            return false;
        }
        if connection.pending.is_empty() {
            return watch(
                epoll,
                connection.fd,
                libc::EPOLLIN as u32,
                libc::EPOLL_CTL_MOD,
            )
            .is_ok();
        }
        return true;
    }
    let free = &mut connection.input[connection.filled..];
    let read = libc::read(connection.fd, free.as_mut_ptr().cast(), free.len());
    if read == 0 {
        return false;
    }
    if read < 0 {
        return std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock;
    }
    connection.filled += read as usize;
    let mut consumed = 0;
    loop {
        match protocol::decode_frame(&connection.input[consumed..connection.filled], 0) {
            Ok(Some(frame)) if frame.header.opcode == opcode::PING => {
                protocol::put_header(
                    &mut connection.pending,
                    opcode::PONG,
                    frame.header.request_id,
                    0,
                );
                consumed += frame.bytes();
            }
            Ok(None) => break,
            // Not a PING, or a body: this responder knows nothing else.
            Ok(Some(_)) | Err(_) => return false,
        }
    }
    connection.input.copy_within(consumed..connection.filled, 0);
    connection.filled -= consumed;
    if connection.pending.is_empty() {
        return true;
    }
    if !flush(connection) {
        return false;
    }
    if !connection.pending.is_empty() {
        if connection.pending.len() > PENDING_BYTES_MAX {
            return false;
        }
        // Wait until writable before reading again.
        return watch(
            epoll,
            connection.fd,
            libc::EPOLLOUT as u32,
            libc::EPOLL_CTL_MOD,
        )
        .is_ok();
    }
    true
}

/// One write of the pending answers; keeps what the socket did not take. False: close.
unsafe fn flush(connection: &mut Connection) -> bool {
    let written = libc::write(
        connection.fd,
        connection.pending.as_ptr().cast(),
        connection.pending.len(),
    );
    if written < 0 {
        return std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock;
    }
    connection.pending.drain(..written as usize);
    true
}
