//! Setting up one shard's io_uring with the features a thread-per-core server wants, falling
//! back where the kernel lacks them:
//!
//! | flags | kernel | why |
//! | --- | --- | --- |
//! | `SINGLE_ISSUER` + `DEFER_TASKRUN` | 6.1 | completions are run only when the shard enters the kernel to reap them: no interrupts of the shard's work |
//! | `COOP_TASKRUN` | 5.19 | fewer forced interruptions than the default |
//! | none | 6.0 | what `server::check_io_uring` asks for at the least (multishot receive) |
//!
//! With `SINGLE_ISSUER` only the thread that built the ring may submit to it: build it on the
//! shard's own thread. Both optional modes also ask for `TASKRUN_FLAG`: the kernel then marks in
//! the shared ring when it holds completions it will post on the next enter, so a busy-polling
//! shard can look at memory instead of entering the kernel to find out.

use std::io;

use io_uring::IoUring;

/// Which optional set-up flags the ring got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub single_issuer: bool,
    pub defer_taskrun: bool,
    pub coop_taskrun: bool,
}

/// Builds a ring of `entries` submission entries (a power of two; the completion queue is twice
/// that), with the best flags the kernel accepts. The error is the plain set-up's, when even
/// that fails.
pub fn build(entries: u32) -> io::Result<(IoUring, Features)> {
    if let Ok(ring) = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(entries)
    {
        let features = Features {
            single_issuer: true,
            defer_taskrun: true,
            coop_taskrun: false,
        };
        return Ok((ring, features));
    }
    if let Ok(ring) = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(entries)
    {
        let features = Features {
            coop_taskrun: true,
            ..Features::default()
        };
        return Ok((ring, features));
    }
    Ok((IoUring::new(entries)?, Features::default()))
}

#[cfg(test)]
mod tests {
    use io_uring::opcode;

    use super::*;

    #[test]
    fn a_ring_is_built_with_the_best_flags_and_completes_work() {
        let (mut ring, features) = build(8).unwrap();
        assert!(!features.defer_taskrun || features.single_issuer);
        let nop = opcode::Nop::new().build().user_data(42);
        // SAFETY: a NOP references no memory.
        unsafe { ring.submission().push(&nop).unwrap() };
        ring.submit_and_wait(1).unwrap();
        let completion = ring.completion().next().unwrap();
        assert_eq!((completion.user_data(), completion.result()), (42, 0));
    }
}
