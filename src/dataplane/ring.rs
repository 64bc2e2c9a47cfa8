//! Setting up one shard's io_uring with the features a thread-per-core server wants, falling
//! back where the kernel lacks them:
//!
//! | flags | kernel | why |
//! | --- | --- | --- |
//! | `SINGLE_ISSUER` + `DEFER_TASKRUN` | 6.1 | completions are run only when the shard enters the kernel to reap them: no interrupts of the shard's work |
//! | `COOP_TASKRUN` | 5.19 | fewer forced interruptions than the default |
//! | none | 6.0 | what `keyward doctor` probes for at the least (multishot receive) |
//!
//! With `SINGLE_ISSUER` only the thread that built the ring may submit to it: build it on the
//! shard's own thread. Both optional modes also ask for `TASKRUN_FLAG`: the kernel then marks in
//! the shared ring when it holds completions it will post on the next enter, so a busy-polling
//! shard can look at memory instead of entering the kernel to find out.

use std::io;
use std::os::unix::io::AsRawFd;
use std::time::Duration;

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

/// How a shard enters its ring: through the ring's registered index where the kernel allows it
/// (5.18: `IORING_REGISTER_RING_FDS`, which spares the kernel a descriptor lookup per enter),
/// else its descriptor. The io-uring crate keeps a registration only for one `Submitter`'s
/// life, so the shard enters through this instead.
pub struct Enter {
    fd: i32,
    flags: u32,
    pub registered: bool,
}

const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_ENTER_EXT_ARG: u32 = 8;
const IORING_ENTER_REGISTERED_RING: u32 = 16;
const IORING_REGISTER_RING_FDS: u32 = 20;

/// `struct io_uring_rsrc_update`.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// `struct io_uring_getevents_arg`.
#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

impl Enter {
    /// Registers `ring`'s descriptor with itself, or falls back to the plain descriptor.
    pub fn register(ring: &IoUring) -> Enter {
        let fd = ring.as_raw_fd();
        let mut update = RsrcUpdate {
            offset: u32::MAX, // any free slot
            resv: 0,
            data: fd as u64,
        };
        // SAFETY: io_uring_register with a pointer to one valid update, which it fills in.
        let registered = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                fd,
                IORING_REGISTER_RING_FDS,
                &mut update as *mut RsrcUpdate,
                1u32,
            )
        };
        if registered == 1 {
            Enter {
                fd: update.offset as i32,
                flags: IORING_ENTER_REGISTERED_RING,
                registered: true,
            }
        } else {
            Enter {
                fd,
                flags: 0,
                registered: false,
            }
        }
    }

    /// Submits `to_submit` entries and collects completions: waits for at least
    /// `min_complete`, for at most `timeout` (none: no limit). With `min_complete` 0 it only
    /// runs the completions the kernel holds and returns.
    pub fn enter(
        &self,
        to_submit: u32,
        min_complete: u32,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let timespec = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let arg = GeteventsArg {
            sigmask: 0,
            sigmask_sz: std::mem::size_of::<libc::sigset_t>() as u32,
            min_wait_usec: 0,
            ts: timespec
                .as_ref()
                .map_or(0, |t| t as *const libc::timespec as u64),
        };
        // SAFETY: io_uring_enter with EXT_ARG and a pointer to a valid getevents argument (and
        // its timespec), both alive for the call.
        let entered = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd,
                to_submit,
                min_complete,
                self.flags | IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
                &arg as *const GeteventsArg,
                std::mem::size_of::<GeteventsArg>(),
            )
        };
        if entered < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
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

    #[test]
    fn a_registered_ring_submits_waits_and_times_out() {
        let (mut ring, _) = build(8).unwrap();
        let enter = Enter::register(&ring);
        assert!(
            enter.registered,
            "this kernel registers ring descriptors (5.18)"
        );
        let nop = opcode::Nop::new().build().user_data(7);
        // SAFETY: a NOP references no memory.
        unsafe { ring.submission().push(&nop).unwrap() };
        let queued = ring.submission().len() as u32;
        enter
            .enter(queued, 1, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(ring.completion().next().unwrap().user_data(), 7);
        // Nothing to wait for: the timeout ends the wait.
        let started = std::time::Instant::now();
        let error = enter
            .enter(0, 1, Some(Duration::from_millis(20)))
            .unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ETIME));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }
}
