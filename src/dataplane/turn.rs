//! The io_uring turn, in its first form: one thread, one ring, one listener. Each turn takes
//! every completion (multishot accepts, multishot receives into the provided buffer ring,
//! sends), hands every whole frame a connection received to the caller's handler, queues at most
//! one send per connection with all the answers of the turn, and ends in one `submit_and_wait`.
//! No per-request syscall: the receives and sends are the ring's.
//!
//! It serves any frame handler; `keyward-floor --uring` runs it with a PING handler, to measure
//! what the kernel's io_uring path costs against the epoll floor. The shards do not run on it
//! yet (no timers, no connection bound beyond `connections_max`, no control-plane link).
//!
//! Backpressure: a connection whose unsent answers pass `output_bytes_max` has its multishot
//! receive cancelled and is not re-armed until they drain below half of it.
//!
//! A connection's bytes are copied out of the provided buffer at once and the buffer returned,
//! so a frame split across buffers (or sends) is simply joined in the connection's input; a
//! completion's `user_data` names the operation and the connection's slot.

use std::io;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::buffers::BufferRing;
use super::ring;
use crate::protocol::{self, Frame};

/// The bounds of one turn loop.
#[derive(Clone, Copy, Debug)]
pub struct TurnSettings {
    /// Most connections at once; more are closed on accept.
    pub connections_max: usize,
    /// Buffers in the provided buffer ring (a power of two).
    pub buffers: u16,
    /// Bytes per buffer.
    pub buffer_bytes: u32,
    /// Largest frame body; a larger one ends the connection.
    pub frame_body_bytes_max: usize,
    /// How often the loop looks at the stop flag when idle.
    pub stop_poll: Duration,
    /// Unsent answers one connection may hold: past it the connection is not read (its
    /// receive is cancelled) until they drain below half, so a client that sends and never
    /// reads cannot grow the server's memory.
    pub output_bytes_max: usize,
}

impl Default for TurnSettings {
    fn default() -> TurnSettings {
        TurnSettings {
            connections_max: 4096,
            buffers: 1024,
            buffer_bytes: 4096,
            frame_body_bytes_max: protocol::BODY_BYTES_DEFAULT,
            stop_poll: Duration::from_millis(50),
            output_bytes_max: 1 << 20,
        }
    }
}

/// What a completion was for: the low 8 bits of `user_data`; the slot is the rest.
const ACCEPT: u64 = 1;
const RECEIVE: u64 = 2;
const SEND: u64 = 3;
const CANCEL: u64 = 4;
const BUFFER_GROUP: u16 = 0;

fn user_data(kind: u64, slot: usize) -> u64 {
    kind | (slot as u64) << 8
}

struct Connection {
    fd: RawFd,
    input: Vec<u8>,
    /// Answers of this turn, not yet handed to the kernel.
    output: Vec<u8>,
    /// Answers the kernel is sending: owned here until the send's completion.
    sending: Vec<u8>,
    sent: usize,
    receive_armed: bool,
    /// Not read until its unsent answers drain (see `TurnSettings::output_bytes_max`).
    paused: bool,
    closing: bool,
}

impl Connection {
    fn idle(&self) -> bool {
        !self.receive_armed && self.sending.is_empty()
    }

    fn unsent(&self) -> usize {
        self.output.len() + self.sending.len() - self.sent
    }
}

/// Runs the loop on `listener` (a bound, listening socket this call borrows) until `stop` is set.
/// `handle` answers one frame by appending to the output; false ends the connection once what
/// it appended is sent.
pub fn serve(
    listener: RawFd,
    settings: TurnSettings,
    stop: &AtomicBool,
    mut handle: impl FnMut(&Frame<'_>, &mut Vec<u8>) -> bool,
) -> io::Result<()> {
    let entries = (settings.connections_max * 2)
        .next_power_of_two()
        .clamp(64, 32768) as u32;
    let (mut ring, _features) = ring::build(entries)?;
    let mut buffers = BufferRing::register(
        &ring.submitter(),
        BUFFER_GROUP,
        settings.buffers,
        settings.buffer_bytes,
    )?;
    let mut connections: Vec<Option<Connection>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    arm_accept(&mut ring, listener)?;
    let timeout = types::Timespec::from(settings.stop_poll);
    let mut completions = Vec::with_capacity(entries as usize);
    // Connections a turn's completions touched (reused: a turn allocates nothing it can keep).
    let mut touched: Vec<usize> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let args = types::SubmitArgs::new().timespec(&timeout);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(error) if matches!(error.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(error) => return Err(error),
        }
        completions.clear();
        completions.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        touched.clear();
        for &(data, result, flags) in &completions {
            let slot = (data >> 8) as usize;
            match data & 0xff {
                ACCEPT => {
                    if result >= 0 {
                        accept(result, &settings, &mut connections, &mut free, &mut ring)?;
                    }
                    if !cqueue::more(flags) {
                        arm_accept(&mut ring, listener)?;
                    }
                }
                RECEIVE => {
                    let Some(Some(connection)) = connections.get_mut(slot) else {
                        continue;
                    };
                    if let Some(id) = cqueue::buffer_select(flags) {
                        if result > 0 {
                            connection
                                .input
                                .extend_from_slice(buffers.buffer(id, result as usize));
                        }
                        buffers.recycle(id);
                    }
                    if result > 0 {
                        if !answer_frames(connection, &settings, &mut handle) {
                            connection.closing = true;
                        }
                    } else if !matches!(-result, libc::ENOBUFS | libc::ECANCELED) {
                        connection.closing = true; // end of stream or an error
                    }
                    if connection.unsent() > settings.output_bytes_max && !connection.paused {
                        connection.paused = true;
                        if cqueue::more(flags) {
                            let cancel = opcode::AsyncCancel::new(user_data(RECEIVE, slot))
                                .build()
                                .user_data(user_data(CANCEL, slot));
                            push(&mut ring, &cancel)?;
                        }
                    }
                    if !cqueue::more(flags) {
                        connection.receive_armed = false;
                        if !connection.closing && !connection.paused {
                            arm_receive(&mut ring, connection, slot)?;
                        }
                    }
                    touched.push(slot);
                }
                SEND => {
                    let Some(Some(connection)) = connections.get_mut(slot) else {
                        continue;
                    };
                    if result < 0 {
                        connection.closing = true;
                        connection.sending.clear();
                        connection.sent = 0;
                    } else {
                        connection.sent += result as usize;
                        if connection.sent < connection.sending.len() {
                            // A short send: the rest goes before anything newer.
                            push_send(&mut ring, connection, slot)?;
                        } else {
                            connection.sending.clear();
                            connection.sent = 0;
                        }
                    }
                    if connection.paused && connection.unsent() <= settings.output_bytes_max / 2 {
                        connection.paused = false;
                        if !connection.receive_armed && !connection.closing {
                            arm_receive(&mut ring, connection, slot)?;
                        }
                    }
                    touched.push(slot);
                }
                _ => {}
            }
        }
        // One send per connection per turn, with every answer the turn produced for it.
        for &slot in &touched {
            let Some(Some(connection)) = connections.get_mut(slot) else {
                continue;
            };
            if connection.sending.is_empty() && !connection.output.is_empty() {
                std::mem::swap(&mut connection.sending, &mut connection.output);
                push_send(&mut ring, connection, slot)?;
            }
            if connection.closing && connection.output.is_empty() {
                if connection.receive_armed {
                    // Ends the multishot receive (its last completion comes back) and leaves
                    // the sending side open for the answers still going out.
                    // SAFETY: shutdown on the connection's own open descriptor.
                    unsafe { libc::shutdown(connection.fd, libc::SHUT_RD) };
                }
                if connection.idle() {
                    // SAFETY: nothing in flight refers to the descriptor any more.
                    unsafe { libc::close(connection.fd) };
                    connections[slot] = None;
                    free.push(slot);
                }
            }
        }
        buffers.publish();
    }
    drop(ring); // cancels what is in flight before the buffers and connections go
    for connection in connections.into_iter().flatten() {
        // SAFETY: the ring is gone; the descriptors are ours.
        unsafe { libc::close(connection.fd) };
    }
    drop(buffers);
    Ok(())
}

fn arm_accept(ring: &mut IoUring, listener: RawFd) -> io::Result<()> {
    let accept = opcode::AcceptMulti::new(types::Fd(listener))
        .build()
        .user_data(user_data(ACCEPT, 0));
    push(ring, &accept)
}

fn push(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    // SAFETY: every entry pushed here refers to memory owned by a connection (its `sending`
    // buffer, kept until the send's completion), the buffer ring, or nothing.
    unsafe {
        if ring.submission().push(entry).is_err() {
            ring.submit()?;
            ring.submission()
                .push(entry)
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
    }
    Ok(())
}

fn accept(
    fd: RawFd,
    settings: &TurnSettings,
    connections: &mut Vec<Option<Connection>>,
    free: &mut Vec<usize>,
    ring: &mut IoUring,
) -> io::Result<()> {
    let open = connections.len() - free.len();
    if open >= settings.connections_max {
        // SAFETY: the descriptor the accept just made, closed at once.
        unsafe { libc::close(fd) };
        return Ok(());
    }
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid pointer to a c_int of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let mut connection = Connection {
        fd,
        input: Vec::new(),
        output: Vec::new(),
        sending: Vec::new(),
        sent: 0,
        receive_armed: false,
        paused: false,
        closing: false,
    };
    let slot = match free.pop() {
        Some(slot) => slot,
        None => {
            connections.push(None);
            connections.len() - 1
        }
    };
    arm_receive(ring, &mut connection, slot)?;
    connections[slot] = Some(connection);
    Ok(())
}

/// Sends what is left of the connection's `sending` buffer, which stays put until the
/// send's completion.
fn push_send(ring: &mut IoUring, connection: &Connection, slot: usize) -> io::Result<()> {
    let rest = &connection.sending[connection.sent..];
    let send = opcode::Send::new(types::Fd(connection.fd), rest.as_ptr(), rest.len() as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data(SEND, slot));
    push(ring, &send)
}

fn arm_receive(ring: &mut IoUring, connection: &mut Connection, slot: usize) -> io::Result<()> {
    let receive = opcode::RecvMulti::new(types::Fd(connection.fd), BUFFER_GROUP)
        .build()
        .user_data(user_data(RECEIVE, slot));
    push(ring, &receive)?;
    connection.receive_armed = true;
    Ok(())
}

/// Answers every whole frame in the connection's input; false: end the connection.
fn answer_frames(
    connection: &mut Connection,
    settings: &TurnSettings,
    handle: &mut impl FnMut(&Frame<'_>, &mut Vec<u8>) -> bool,
) -> bool {
    let mut consumed = 0;
    let keep = loop {
        match protocol::decode_frame(&connection.input[consumed..], settings.frame_body_bytes_max) {
            Ok(Some(frame)) => {
                consumed += frame.bytes();
                if !handle(&frame, &mut connection.output) {
                    break false;
                }
            }
            Ok(None) => break true,
            Err(error) => {
                protocol::put_error_frame(
                    &mut connection.output,
                    0,
                    error.code(),
                    &error.to_string(),
                );
                break false;
            }
        }
    };
    connection.input.drain(..consumed);
    keep
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd;
    use std::sync::Arc;

    use super::*;
    use crate::protocol::opcode;

    fn pong(frame: &Frame<'_>, out: &mut Vec<u8>) -> bool {
        if frame.header.opcode != opcode::PING {
            return false;
        }
        protocol::put_header(out, opcode::PONG, frame.header.request_id, 0);
        true
    }

    #[test]
    fn frames_split_across_tiny_buffers_and_a_dry_ring_are_all_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let settings = TurnSettings {
            connections_max: 8,
            // 4 buffers of 16 bytes: every 12-byte frame straddles buffers, and 3 000 pipelined
            // frames run the ring dry again and again.
            buffers: 4,
            buffer_bytes: 16,
            frame_body_bytes_max: 0,
            stop_poll: Duration::from_millis(10),
            output_bytes_max: 1 << 20,
        };
        let serving = {
            let stop = stop.clone();
            std::thread::spawn(move || serve(listener.as_raw_fd(), settings, &stop, pong))
        };
        let clients: Vec<_> = (0..4u32)
            .map(|client| {
                std::thread::spawn(move || {
                    let mut stream = TcpStream::connect(address).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(20)))
                        .unwrap();
                    let mut pings = Vec::new();
                    for id in 0..3000 {
                        protocol::put_ping_frame(&mut pings, client << 16 | id);
                    }
                    stream.write_all(&pings).unwrap();
                    let mut answers = vec![0u8; pings.len()];
                    stream.read_exact(&mut answers).unwrap();
                    for (id, answer) in answers.chunks(protocol::HEADER_BYTES).enumerate() {
                        let header: &[u8; protocol::HEADER_BYTES] = answer.try_into().unwrap();
                        let header = protocol::decode_header(header, 0).unwrap();
                        assert_eq!(header.opcode, opcode::PONG);
                        assert_eq!(header.request_id, client << 16 | id as u32);
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        serving.join().unwrap().unwrap();
    }
}
