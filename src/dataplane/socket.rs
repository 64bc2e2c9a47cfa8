//! Small socket operations of the turn that are plain system calls: refusing a connection at
//! accept, and socket options.

use std::os::unix::io::RawFd;

use crate::protocol::{self, ErrorCode};

/// Tells a connection the shard cannot take it, and closes it.
pub fn refuse(fd: RawFd, message: &str) {
    let mut busy = Vec::new();
    protocol::put_error_frame(&mut busy, 0, ErrorCode::Busy, message);
    // SAFETY: `fd` is a connection just accepted, owned here and closed right after; a fresh
    // socket's send buffer takes the small frame without blocking.
    unsafe {
        libc::send(
            fd,
            busy.as_ptr().cast(),
            busy.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
        libc::close(fd);
    }
}

pub fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid pointer to a c_int of the right size; on a Unix socket it
    // fails harmlessly.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Sets or clears O_NONBLOCK.
pub fn set_nonblocking(fd: RawFd, on: bool) {
    // SAFETY: fcntl on an open descriptor of ours.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        libc::fcntl(fd, libc::F_SETFL, flags);
    }
}
