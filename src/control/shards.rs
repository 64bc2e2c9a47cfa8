//! The control plane's ends of the shards' links (see `link.rs`): sending messages and
//! revocation answers, and one task per shard that waits on its doorbell and hands what the
//! shard sent to the committer (acknowledgements) or to `self_service` (revocations).

use std::os::unix::io::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;

use futures_lite::AsyncReadExt;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::UnixStream;

use super::{self_service, Control};
use crate::link::{self, Applied, ControlLink, Queues, RevocationAnswer, ShardMessage};

/// The exit code when start-up cannot get a descriptor it needs.
const EXIT_NO_DESCRIPTOR: i32 = 71;

/// What the control plane holds of one shard's link.
pub(super) struct ShardEnd {
    queues: Arc<Queues>,
    /// The doorbell, written here; the pump task reads a duplicate of it, so this descriptor
    /// stays ours (never a number reused by another file) for as long as the end lives.
    bell: OwnedFd,
}

impl ShardEnd {
    /// Queues a message; the shard sees it once [`ShardEnd::ring`] is called.
    pub(super) fn send(&self, message: ShardMessage) {
        link::push(&self.queues.to_shard, message);
    }

    pub(super) fn ring(&self) {
        link::ring(self.bell.as_raw_fd());
    }

    pub(super) fn answer(&self, answer: RevocationAnswer) {
        link::push(&self.queues.revoked, answer);
        self.ring();
    }
}

/// Takes over the control ends: returns, per shard, its end and the receiver of its
/// acknowledgements, and spawns the pump tasks. A receiver ends when its shard has stopped.
pub(super) fn connect(
    control: &Rc<Control>,
    links: Vec<ControlLink>,
) -> (Vec<Rc<ShardEnd>>, Vec<LocalReceiver<Applied>>) {
    let mut ends = Vec::with_capacity(links.len());
    let mut receivers = Vec::with_capacity(links.len());
    for link in links {
        let (queues, bell) = link.into_parts();
        let reader = bell.try_clone().unwrap_or_else(|error| {
            crate::log_error!("fatal: cannot duplicate a shard's doorbell descriptor: {error}");
            std::process::exit(EXIT_NO_DESCRIPTOR);
        });
        // SAFETY: `reader` is a duplicate of our end of a non-blocking Unix socket pair, owned
        // by the stream from now on (and closed with it).
        let stream = unsafe { UnixStream::from_raw_fd(reader.into_raw_fd()) };
        let end = Rc::new(ShardEnd { queues, bell });
        let (acks, received) = local_channel::new_unbounded();
        glommio::spawn_local(pump(stream, end.clone(), acks, control.clone())).detach();
        ends.push(end);
        receivers.push(received);
    }
    (ends, receivers)
}

/// Reads the doorbell until the shard hangs up, moving what the shard queued to where it goes.
async fn pump(
    mut stream: UnixStream,
    end: Rc<ShardEnd>,
    acks: LocalSender<Applied>,
    control: Rc<Control>,
) {
    let mut rung = [0u8; 64];
    loop {
        match stream.read(&mut rung).await {
            Ok(1..) => {}
            _ => return, // the shard stopped: its end is closed
        }
        while let Some(applied) = end.queues.acks.pop() {
            if acks.try_send(applied).is_err() {
                return;
            }
        }
        while let Some(report) = end.queues.usage.pop() {
            control.usage.merge(report);
        }
        while let Some(request) = end.queues.revocations.pop() {
            glommio::spawn_local(self_service::carry_out(
                control.clone(),
                end.clone(),
                request,
            ))
            .detach();
        }
    }
}
