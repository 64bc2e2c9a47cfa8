//! The link between the planes: what the control plane and the shards say to each other, the
//! lock-free queues that carry it, their capacities, the function that builds them, and the
//! shutdown flag both planes watch.
//!
//! Per shard there are four bounded lock-free queues (`crossbeam_queue::ArrayQueue`) and one
//! doorbell, a Unix socket pair:
//!
//! | direction | message | why |
//! | --- | --- | --- |
//! | control → shard | [`ShardMessage`] | apply a delta, or switch to a new snapshot |
//! | shard → control | [`Applied`] | the sequence the shard has applied after each message |
//! | shard → control | [`RevocationRequest`] | a holder revoking its own key on the verify port |
//! | control → shard | [`RevocationAnswer`] | done (durable and applied everywhere) or not |
//! | shard → control | [`UsageReport`] | per-key usage tallies, about once a second |
//!
//! A side pushes onto a queue, then writes one byte to its end of the doorbell. The shard keeps
//! a receive on its end armed in its io_uring, so a ring wakes it like any connection's bytes
//! and it drains its queues between turns; the control plane (glommio) reads its end as a
//! stream. Nothing on the verify path takes a lock: a shard touches the queues only when its
//! doorbell rang or it has something to send. A full doorbell (the peer has not read yet)
//! drops the byte: one unread byte is enough to wake it.
//!
//! The control plane sends a shard at most [`COMMIT_ROUND_JOBS_MAX`] messages before it reads
//! their acknowledgements, which is below [`SHARD_CHANNEL_CAPACITY`], so no queue is ever full.

use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use crate::credential::KeyId;
use crate::delta::Delta;
use crate::snapshot::Snapshot;

/// Most jobs the committer takes in one round (one write, one fsync, one fan-out).
pub const COMMIT_ROUND_JOBS_MAX: usize = 256;
/// Capacity of each queue between the planes, in messages.
pub const SHARD_CHANNEL_CAPACITY: usize = 1024;
const _: () = assert!(COMMIT_ROUND_JOBS_MAX + 1 < SHARD_CHANNEL_CAPACITY);

/// What the control plane sends a shard.
pub enum ShardMessage {
    /// Apply this delta to the overlay (deltas arrive in sequence order, one after another).
    Apply(Arc<Delta>),
    /// Switch to this snapshot and drop the overlay entries it includes.
    Switch(Arc<Snapshot>),
}

impl ShardMessage {
    /// Another handle on the same message, for the next shard.
    pub fn share(&self) -> ShardMessage {
        match self {
            ShardMessage::Apply(delta) => ShardMessage::Apply(delta.clone()),
            ShardMessage::Switch(snapshot) => ShardMessage::Switch(snapshot.clone()),
        }
    }
}

/// A shard's answer to each [`ShardMessage`]: the sequence of the last delta it has applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied(pub u64);

/// A self-service revocation forwarded by a shard, whose secret check passed.
#[derive(Clone, Copy, Debug)]
pub struct RevocationRequest {
    pub ticket: u64,
    pub key: KeyId,
}

/// The control plane's answer to a [`RevocationRequest`].
#[derive(Clone, Copy, Debug)]
pub struct RevocationAnswer {
    pub ticket: u64,
    /// The revocation is durable and applied on every shard.
    pub done: bool,
}

/// A shard's per-key tallies since its last report (`crate::usage`).
pub type UsageReport = crate::usage::Report;
/// Usage reports waiting at once; a shard whose report finds the queue full keeps tallying
/// and tries again on its next report.
pub const USAGE_REPORTS_WAITING_MAX: usize = 8;

/// The queues of one shard, shared by both ends.
pub struct Queues {
    pub usage: ArrayQueue<UsageReport>,
    pub to_shard: ArrayQueue<ShardMessage>,
    pub acks: ArrayQueue<Applied>,
    pub revocations: ArrayQueue<RevocationRequest>,
    pub revoked: ArrayQueue<RevocationAnswer>,
}

/// One end of a link: the shared queues and this side's end of the doorbell.
pub struct LinkEnd {
    pub queues: Arc<Queues>,
    bell: OwnedFd,
}

/// A shard's end.
pub type ShardLink = LinkEnd;
/// The control plane's end of one shard's link.
pub type ControlLink = LinkEnd;

impl LinkEnd {
    /// This side's doorbell descriptor: readable when the other side rang.
    pub fn bell_fd(&self) -> RawFd {
        self.bell.as_raw_fd()
    }

    /// Gives up the doorbell descriptor (the control plane wraps it in a glommio stream).
    pub fn into_parts(self) -> (Arc<Queues>, OwnedFd) {
        (self.queues, self.bell)
    }

    /// Wakes the other side: one byte on the doorbell. A full doorbell already holds a byte
    /// the other side has not read, and a closed one means it is gone: both are fine.
    pub fn ring(&self) {
        ring(self.bell.as_raw_fd());
    }
}

/// Writes one byte to a doorbell descriptor without waiting.
pub fn ring(fd: RawFd) {
    // SAFETY: a one-byte send from a static on an open socket we own; its result is not needed.
    unsafe {
        libc::send(
            fd,
            [1u8].as_ptr().cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
    }
}

/// Pushes onto a queue that by construction has room (see the module's note on capacities).
pub fn push<T>(queue: &ArrayQueue<T>, item: T) {
    assert!(
        queue.push(item).is_ok(),
        "a link queue is never full: at most COMMIT_ROUND_JOBS_MAX messages are in flight"
    );
}

/// Builds the links for `shards` shards: one [`ShardLink`] per shard, and the control plane's
/// [`ControlLink`] for each, in the same order.
pub fn build(shards: usize) -> std::io::Result<(Vec<ShardLink>, Vec<ControlLink>)> {
    let mut shard_links = Vec::with_capacity(shards);
    let mut control_links = Vec::with_capacity(shards);
    for _ in 0..shards {
        let queues = Arc::new(Queues {
            usage: ArrayQueue::new(USAGE_REPORTS_WAITING_MAX),
            to_shard: ArrayQueue::new(SHARD_CHANNEL_CAPACITY),
            acks: ArrayQueue::new(SHARD_CHANNEL_CAPACITY),
            revocations: ArrayQueue::new(SHARD_CHANNEL_CAPACITY),
            revoked: ArrayQueue::new(SHARD_CHANNEL_CAPACITY),
        });
        let (shard_bell, control_bell) = std::os::unix::net::UnixStream::pair()?;
        shard_bell.set_nonblocking(true)?;
        control_bell.set_nonblocking(true)?;
        shard_links.push(LinkEnd {
            queues: queues.clone(),
            bell: shard_bell.into(),
        });
        control_links.push(LinkEnd {
            queues,
            bell: control_bell.into(),
        });
    }
    Ok((shard_links, control_links))
}

/// A flag that asks the server to stop; cheap to clone, safe to set from a signal handler.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    pub fn trigger(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// The flag itself, for `signal_hook::flag::register`.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }

    /// Resolves once the flag is set, looking every `poll`.
    pub async fn triggered(&self, poll: std::time::Duration) {
        while !self.is_triggered() {
            glommio::timer::sleep(poll).await;
        }
    }
}
