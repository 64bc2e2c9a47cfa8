//! The link between the planes: what the control plane and the shards say to each other, the
//! lock-free channels that carry it, their capacities, the function that builds them, and the
//! shutdown flag both planes watch.
//!
//! Per shard there are four bounded glommio shared channels:
//!
//! | direction | message | why |
//! | --- | --- | --- |
//! | control → shard | [`ShardMessage`] | apply a delta, or switch to a new snapshot |
//! | shard → control | [`Applied`] | the sequence the shard has applied after each message |
//! | shard → control | [`RevocationRequest`] | a holder revoking its own key on the verify port |
//! | control → shard | [`RevocationAnswer`] | done (durable and applied everywhere) or not |
//!
//! The control plane sends a shard at most [`COMMIT_ROUND_JOBS_MAX`] messages before it reads
//! their acknowledgements, which is below [`SHARD_CHANNEL_CAPACITY`], so the two sides never
//! wait on each other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};

use crate::credential::KeyId;
use crate::delta::Delta;
use crate::snapshot::Snapshot;

/// Most jobs the committer takes in one round (one write, one fsync, one fan-out).
pub const COMMIT_ROUND_JOBS_MAX: usize = 256;
/// Capacity of each channel between the planes, in messages.
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

/// A shard's ends of its channels.
pub struct ShardLink {
    pub inbox: SharedReceiver<ShardMessage>,
    pub acks: SharedSender<Applied>,
    pub revocations: SharedSender<RevocationRequest>,
    pub revoked: SharedReceiver<RevocationAnswer>,
}

/// The control plane's ends of one shard's channels.
pub struct ControlLink {
    pub to_shard: SharedSender<ShardMessage>,
    pub from_shard: SharedReceiver<Applied>,
    pub revocations: SharedReceiver<RevocationRequest>,
    pub revoked: SharedSender<RevocationAnswer>,
}

/// Builds the channels for `shards` shards: one [`ShardLink`] per shard, and the control
/// plane's [`ControlLink`] for each, in the same order.
pub fn build(shards: usize) -> (Vec<ShardLink>, Vec<ControlLink>) {
    let mut shard_links = Vec::with_capacity(shards);
    let mut control_links = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (to_shard, inbox) = shared_channel::new_bounded(SHARD_CHANNEL_CAPACITY);
        let (acks, from_shard) = shared_channel::new_bounded(SHARD_CHANNEL_CAPACITY);
        let (revocations, requests) = shared_channel::new_bounded(SHARD_CHANNEL_CAPACITY);
        let (answers, revoked) = shared_channel::new_bounded(SHARD_CHANNEL_CAPACITY);
        shard_links.push(ShardLink {
            inbox,
            acks,
            revocations,
            revoked,
        });
        control_links.push(ControlLink {
            to_shard,
            from_shard,
            revocations: requests,
            revoked: answers,
        });
    }
    (shard_links, control_links)
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
