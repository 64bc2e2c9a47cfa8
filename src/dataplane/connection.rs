//! One verify connection's state in the turn: what it received and has not yet answered, the
//! answers not yet sent, its clocks, and what it is waiting for.

use std::os::unix::io::RawFd;
use std::time::Instant;

use crate::protocol;

/// First size of a connection's input once something of a frame is pending; it grows to hold
/// one larger frame when one comes (charged to the shard's input budget).
pub const INPUT_BYTES_INITIAL: usize = 16 * 1024;

/// Names a connection across turns: its slot, and a serial so that a slot reused by a later
/// connection is never mistaken for it (an answer for a connection that has gone is dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    pub slot: usize,
    pub serial: u64,
}

pub struct Connection {
    pub fd: RawFd,
    pub serial: u64,
    /// Bytes received and not yet answered: the start of a frame still arriving, or (while
    /// `waiting`) frames held back until the answer that goes before theirs is in.
    pub input: Vec<u8>,
    /// Bytes of `input`'s capacity charged to the shard's input budget.
    pub charged: usize,
    /// Answers of this turn, not yet handed to the kernel.
    pub output: Vec<u8>,
    /// Answers the kernel is sending: owned here until the send's completion.
    pub sending: Vec<u8>,
    pub sent: usize,
    pub receive_armed: bool,
    /// Not read (its receive cancelled) until `held_back` is false again.
    pub paused: bool,
    /// Waits for an answer from outside the shard (a self-service revocation); frames behind it
    /// are held in `input`, so answers stay in request order.
    pub waiting: bool,
    pub closing: bool,
    /// When the last bytes arrived (for the idle timeout).
    pub last_input: Instant,
    /// When the kernel last took some of its answers (a client that stops reading makes none).
    pub last_output: Instant,
    /// When the first byte of the frame still pending arrived (for the frame timeout).
    pub frame_started: Option<Instant>,
}

impl Connection {
    pub fn new(fd: RawFd, serial: u64, now: Instant) -> Connection {
        Connection {
            fd,
            serial,
            input: Vec::new(),
            charged: 0,
            output: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            receive_armed: false,
            paused: false,
            waiting: false,
            closing: false,
            last_input: now,
            last_output: now,
            frame_started: None,
        }
    }

    /// Nothing of the kernel's refers to the connection any more: it may be closed.
    pub fn idle(&self) -> bool {
        !self.receive_armed && self.sending.is_empty()
    }

    /// Answers produced and not yet sent.
    pub fn unsent(&self) -> usize {
        self.output.len() + self.sending.len() - self.sent
    }

    /// Whether the connection should not be read for now: too many unsent answers, or frames
    /// held back behind a wait.
    pub fn held_back(&self, output_bytes_max: usize) -> bool {
        let output_limit = if self.paused {
            output_bytes_max / 2 // resume only once well below the bound
        } else {
            output_bytes_max
        };
        self.unsent() > output_limit || (self.waiting && self.input.len() >= INPUT_BYTES_INITIAL)
    }

    /// Bytes of the frame pending at the start of `input`, when its header is in and valid.
    pub fn pending_frame_bytes(&self, body_bytes_max: usize) -> Option<usize> {
        let header = self.input.first_chunk::<{ protocol::HEADER_BYTES }>()?;
        let header = protocol::decode_header(header, body_bytes_max).ok()?;
        Some(protocol::HEADER_BYTES + header.body_bytes as usize)
    }
}
