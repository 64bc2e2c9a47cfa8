//! The io_uring checks: every feature the data plane uses, probed by using it on a loopback
//! socket with the data plane's own ring and buffer-ring code, never guessed from the kernel's
//! version (distributions backport, containers filter).

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::time::Duration;

use io_uring::{cqueue, opcode, types, IoUring};

use super::Check;
use crate::dataplane::buffers::BufferRing;
use crate::dataplane::ring;

/// The sysctl, the ring set-up and its optional modes, then each operation the turn relies on.
pub fn checks() -> Vec<Check> {
    let mut checks = vec![disabled_sysctl()];
    let (ring, features) = match ring::build(8) {
        Ok(built) => built,
        Err(error) => {
            checks.push(Check::fail(
                "io_uring",
                format!("cannot set up an io_uring ({error})"),
                setup_remedy(&error),
            ));
            return checks;
        }
    };
    checks.push(Check::pass("io_uring", "a ring sets up"));
    checks.push(if features.defer_taskrun {
        Check::pass(
            "io_uring defer_taskrun",
            "SINGLE_ISSUER + DEFER_TASKRUN: completions run only when a shard asks for them",
        )
    } else {
        Check::warn(
            "io_uring defer_taskrun",
            format!(
                "not available (shards use {}): completions interrupt a shard's work",
                if features.coop_taskrun {
                    "COOP_TASKRUN"
                } else {
                    "the default mode"
                }
            ),
            "Linux 6.1 or newer has it",
        )
    });
    let ext_arg = ring.params().is_feature_ext_arg();
    checks.push(if ext_arg {
        Check::pass(
            "io_uring ext_arg",
            "a wait carries its own timeout (timers without a timeout request)",
        )
    } else {
        Check::fail(
            "io_uring ext_arg",
            "IORING_FEAT_EXT_ARG is missing: a shard cannot wait with a timeout",
            "upgrade to Linux 6.0 or newer",
        )
    });
    checks.push(if ring::Enter::register(&ring).registered {
        Check::pass(
            "io_uring registered ring",
            "a shard enters its ring by index (no file lookup per enter)",
        )
    } else {
        Check::warn(
            "io_uring registered ring",
            "ring descriptors cannot be registered: each enter looks the ring up",
            "Linux 5.18 or newer has it",
        )
    });
    drop(ring);
    checks.push(operation_check(
        "io_uring buffer ring",
        "provided buffer rings register",
        buffer_ring,
    ));
    checks.push(operation_check(
        "io_uring multishot accept",
        "one accept request takes every new connection",
        multishot_accept,
    ));
    checks.push(operation_check(
        "io_uring multishot receive",
        "one receive request reads a connection into provided buffers",
        multishot_receive,
    ));
    checks
}

/// `kernel.io_uring_disabled`: 0 for everyone, 1 for root and `io_uring_group`, 2 for no one.
fn disabled_sysctl() -> Check {
    const NAME: &str = "io_uring_disabled";
    let value = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    match value {
        None => Check::pass(NAME, "no such sysctl (a kernel before 6.6): io_uring is on"),
        Some(0) => Check::pass(NAME, "kernel.io_uring_disabled = 0"),
        Some(1) => Check::warn(
            NAME,
            "kernel.io_uring_disabled = 1: only root and the io_uring_group may use io_uring",
            "run `sysctl kernel.io_uring_disabled=0`, or put keyward's user in the group named by kernel.io_uring_group",
        ),
        Some(value) => Check::fail(
            NAME,
            format!("kernel.io_uring_disabled = {value}: io_uring is off for everyone"),
            "run `sysctl kernel.io_uring_disabled=0` as root (and set it in /etc/sysctl.d/)",
        ),
    }
}

fn setup_remedy(error: &std::io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::ENOSYS) => {
            "the kernel has no io_uring (Linux 6.0 or newer is needed) or a seccomp profile hides it: containers must allow io_uring_setup, io_uring_enter and io_uring_register"
        }
        Some(libc::EPERM) => {
            "io_uring is restricted (kernel.io_uring_disabled = 1 allows only root and kernel.io_uring_group, or a seccomp profile forbids it): run `sysctl kernel.io_uring_disabled=0` or allow the syscalls"
        }
        Some(libc::ENOMEM) => {
            "the locked-memory limit is too low: raise it (ulimit -l 65536, or LimitMEMLOCK= in the systemd unit)"
        }
        _ => "see io_uring_setup(2)",
    }
}

/// Runs one probe; its error becomes a fail that says the data plane needs it.
fn operation_check(name: &'static str, works: &str, probe: fn() -> Result<(), String>) -> Check {
    match probe() {
        Ok(()) => Check::pass(name, works),
        Err(why) => Check::fail(
            name,
            format!("{why}: the data plane needs it"),
            "upgrade to Linux 6.0 or newer (and allow io_uring in any seccomp profile)",
        ),
    }
}

/// Waits up to a second for one completion.
fn one_completion(ring: &mut IoUring) -> Result<(i32, u32), String> {
    let timeout = types::Timespec::new().sec(1);
    let args = types::SubmitArgs::new().timespec(&timeout);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => {}
        Err(error) if error.raw_os_error() == Some(libc::ETIME) => {}
        Err(error) => return Err(format!("io_uring_enter failed ({error})")),
    }
    ring.completion()
        .next()
        .map(|c| (c.result(), c.flags()))
        .ok_or_else(|| "no completion within a second".to_string())
}

fn refused(what: &str, result: i32) -> String {
    format!(
        "{what} was refused ({})",
        std::io::Error::from_raw_os_error(-result)
    )
}

/// A loopback listener and a client connected to it (not yet accepted).
fn loopback() -> Result<(TcpListener, TcpStream), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let client = TcpStream::connect_timeout(&address, Duration::from_secs(1))
        .map_err(|e| format!("a loopback connection failed ({e})"))?;
    Ok((listener, client))
}

/// A ring as a shard builds it, with a small provided buffer ring registered.
fn ring_with_buffers() -> Result<(IoUring, BufferRing), String> {
    let (ring, _) = ring::build(8).map_err(|e| e.to_string())?;
    let buffers = BufferRing::register(&ring.submitter(), 1, 4, 64)
        .map_err(|e| format!("registering a provided buffer ring failed ({e})"))?;
    Ok((ring, buffers))
}

fn buffer_ring() -> Result<(), String> {
    let (ring, buffers) = ring_with_buffers()?;
    buffers
        .unregister(&ring.submitter())
        .map_err(|e| format!("unregistering a provided buffer ring failed ({e})"))
}

fn multishot_accept() -> Result<(), String> {
    let (listener, _client) = loopback()?;
    let (mut ring, _) = ring::build(8).map_err(|e| e.to_string())?;
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .build()
        .user_data(1);
    // SAFETY: the listener outlives the ring (dropped after it, below).
    unsafe { ring.submission().push(&accept) }.map_err(|e| e.to_string())?;
    let (result, flags) = one_completion(&mut ring)?;
    if result < 0 {
        return Err(refused("a multishot accept", result));
    }
    // SAFETY: the accepted descriptor is ours to close.
    unsafe { libc::close(result) };
    if !cqueue::more(flags) {
        return Err("an accept ended after one connection (no multishot)".into());
    }
    drop(ring);
    drop(listener);
    Ok(())
}

fn multishot_receive() -> Result<(), String> {
    let (listener, mut client) = loopback()?;
    let (server, _) = listener.accept().map_err(|e| e.to_string())?;
    let (mut ring, buffers) = ring_with_buffers()?;
    client.write_all(b"k").map_err(|e| e.to_string())?;
    let receive = opcode::RecvMulti::new(types::Fd(server.as_raw_fd()), buffers.group())
        .build()
        .user_data(2);
    // SAFETY: the socket and the buffers outlive the ring (dropped after it, below).
    unsafe { ring.submission().push(&receive) }.map_err(|e| e.to_string())?;
    let (result, flags) = one_completion(&mut ring)?;
    if result < 0 {
        return Err(refused("a multishot receive", result));
    }
    let Some(id) = cqueue::buffer_select(flags) else {
        return Err("a receive did not take a provided buffer".into());
    };
    if buffers.buffer(id, result as usize) != b"k" {
        return Err("a multishot receive read the wrong bytes".into());
    }
    if !cqueue::more(flags) {
        return Err("a receive ended after one read (no multishot)".into());
    }
    drop(ring);
    drop(buffers);
    Ok(())
}
