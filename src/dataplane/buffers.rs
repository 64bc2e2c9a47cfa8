//! A shard's provided buffer ring (kernel 5.19): a ring of buffer descriptors shared with the
//! kernel, from which a multishot receive takes one buffer per completion. The completion names
//! the buffer it filled (`cqueue::buffer_select`); once the shard has consumed its bytes it gives
//! the buffer back with [`BufferRing::recycle`] and makes the returns visible to the kernel with
//! [`BufferRing::publish`] (once per turn). When the ring is empty a multishot receive ends with
//! `ENOBUFS` (no `F_MORE`) and must be re-armed after buffers are returned.
//!
//! ```text
//! ring memory (page-aligned, entries x 16 bytes, shared with the kernel)
//!   entry i: addr u64 | len u32 | bid u16 | resv u16   (entry 0's resv is the ring's tail)
//! slab (ours): entries x buffer_bytes, buffer `bid` at bid x buffer_bytes
//! ```

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// Most buffers one ring may hold (the kernel's limit).
pub const BUFFERS_MAX: u16 = 1 << 15;

/// A registered provided buffer ring and the buffers it hands out.
pub struct BufferRing {
    entries: *mut BufRingEntry,
    ring_bytes: usize,
    slab: Vec<u8>,
    mask: u16,
    buffer_bytes: u32,
    group: u16,
    /// Our producer cursor; the kernel sees it once published.
    tail: u16,
}

impl BufferRing {
    /// Maps a ring of `count` buffers (a power of two, at most [`BUFFERS_MAX`]) of
    /// `buffer_bytes` each, gives every buffer to the kernel and registers the ring as buffer
    /// group `group`. The io_uring must be dropped, or the group unregistered with
    /// [`BufferRing::unregister`], before this value is.
    pub fn register(
        submitter: &Submitter<'_>,
        group: u16,
        count: u16,
        buffer_bytes: u32,
    ) -> io::Result<BufferRing> {
        assert!(count.is_power_of_two() && count <= BUFFERS_MAX && buffer_bytes > 0);
        let ring_bytes = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping (page-aligned, as the kernel requires); checked
        // for failure below and unmapped only in Drop.
        let memory = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if memory == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut ring = BufferRing {
            entries: memory.cast(),
            ring_bytes,
            slab: vec![0; usize::from(count) * buffer_bytes as usize],
            mask: count - 1,
            buffer_bytes,
            group,
            tail: 0,
        };
        for id in 0..count {
            ring.recycle(id);
        }
        ring.publish();
        // SAFETY: the ring memory and the slab live as long as this value, which the caller
        // keeps until the group is unregistered or the io_uring is gone.
        unsafe {
            submitter.register_buf_ring_with_flags(ring.entries as u64, count, group, 0)?;
        }
        Ok(ring)
    }

    /// The buffer group id to name in a receive.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Bytes per buffer.
    pub fn buffer_bytes(&self) -> u32 {
        self.buffer_bytes
    }

    /// The first `length` bytes of buffer `id`, as a completion reported them.
    pub fn buffer(&self, id: u16, length: usize) -> &[u8] {
        let start = usize::from(id & self.mask) * self.buffer_bytes as usize;
        &self.slab[start..start + length.min(self.buffer_bytes as usize)]
    }

    /// Gives buffer `id` back (visible to the kernel after [`BufferRing::publish`]). Each
    /// buffer must be returned once per completion that handed it out, never twice.
    pub fn recycle(&mut self, id: u16) {
        let id = id & self.mask;
        let address = self.slab[usize::from(id) * self.buffer_bytes as usize..].as_ptr();
        // SAFETY: the slot is inside the mapping (masked index); the kernel reads a slot only
        // between the old and the new published tail, and this one is past the published tail.
        unsafe {
            let entry = &mut *self.entries.add(usize::from(self.tail & self.mask));
            entry.set_addr(address as u64);
            entry.set_len(self.buffer_bytes);
            entry.set_bid(id);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes every buffer recycled so far to the kernel (a release store of the tail).
    pub fn publish(&self) {
        // SAFETY: the tail is the 16-bit field of entry 0 that the kernel reads atomically;
        // the mapping is page-aligned, so it is aligned for an AtomicU16.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Unregisters the group, after which this value may be dropped while the io_uring lives.
    pub fn unregister(&self, submitter: &Submitter<'_>) -> io::Result<()> {
        submitter.unregister_buf_ring(self.group)
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `register`, unmapped once.
        unsafe { libc::munmap(self.entries.cast(), self.ring_bytes) };
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd;

    use io_uring::{cqueue, opcode, types};

    use super::*;
    use crate::dataplane::ring;

    /// A connected loopback pair: (client, server side).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn arm(ring: &mut io_uring::IoUring, fd: i32, group: u16) {
        let receive = opcode::RecvMulti::new(types::Fd(fd), group)
            .build()
            .user_data(7);
        // SAFETY: the socket outlives the request (the test waits for its last completion).
        unsafe { ring.submission().push(&receive).unwrap() };
    }

    #[test]
    fn multishot_receive_draws_from_the_ring_and_rearms_after_running_dry() {
        let (mut ring, _features) = ring::build(64).unwrap();
        let mut buffers = BufferRing::register(&ring.submitter(), 3, 4, 64).unwrap();
        let (mut client, server) = pair();
        let fd = server.as_raw_fd();
        arm(&mut ring, fd, buffers.group());
        // 1 000 bytes, more than the 4 x 64 the ring holds, with no buffer given back.
        let sent: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        client.write_all(&sent).unwrap();
        let mut received = Vec::new();
        let mut held = Vec::new();
        let mut ran_dry = false;
        while received.len() < sent.len() {
            ring.submit_and_wait(1).unwrap();
            let completions: Vec<(i32, u32)> =
                ring.completion().map(|c| (c.result(), c.flags())).collect();
            for (result, flags) in completions {
                if result == -libc::ENOBUFS {
                    assert!(!cqueue::more(flags), "ENOBUFS ends the multishot receive");
                    ran_dry = true;
                    // Give back what was consumed, then re-arm.
                    for id in held.drain(..) {
                        buffers.recycle(id);
                    }
                    buffers.publish();
                    arm(&mut ring, fd, buffers.group());
                    continue;
                }
                assert!(result > 0, "receive failed: {result}");
                let id = cqueue::buffer_select(flags).expect("a provided buffer");
                received.extend_from_slice(buffers.buffer(id, result as usize));
                held.push(id);
                if !cqueue::more(flags) {
                    arm(&mut ring, fd, buffers.group());
                }
            }
        }
        assert!(
            ran_dry,
            "4 buffers of 64 bytes held 1 000 bytes without running dry"
        );
        assert_eq!(received, sent, "bytes lost, repeated or reordered");
        drop(ring);
        drop(buffers);
    }

    #[test]
    fn a_completion_names_the_buffer_it_filled() {
        let (mut ring, _) = ring::build(8).unwrap();
        let buffers = BufferRing::register(&ring.submitter(), 9, 2, 16).unwrap();
        let (mut client, server) = pair();
        arm(&mut ring, server.as_raw_fd(), buffers.group());
        client.write_all(b"hello").unwrap();
        ring.submit_and_wait(1).unwrap();
        let completion = ring.completion().next().unwrap();
        assert_eq!(completion.result(), 5);
        let id = cqueue::buffer_select(completion.flags()).unwrap();
        assert_eq!(buffers.buffer(id, 5), b"hello");
        buffers.unregister(&ring.submitter()).unwrap();
    }
}
