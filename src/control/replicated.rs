//! Replicated mode (docs/CLUSTER.md): every change goes through the change stream on NATS
//! JetStream, and every node, the one that took the change included, applies the stream in
//! order.
//!
//! A change is checked against the view at the last sequence this node has applied, `S`, and
//! published with "expected last sequence `S`": JetStream stores it at `S + 1` only if nothing
//! else got there first, so all changes have one order and each was checked against the state
//! it lands on. One that lost the race is checked again once this node has caught up
//! ([`serialized`]). The request is answered once the stream has delivered the change back and
//! it is durable in this node's own log and applied on every shard; the other nodes apply it
//! as soon as their followers deliver it.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel;

use super::commit::{self, Job};
use super::{Control, Outcome, Refusal};
use crate::audit::Entry;
use crate::delta::{self, Delta};
use crate::protocol::ErrorCode;
use crate::replication::{Incoming, PublishFailure};

/// How often a request that lost the race for a sequence is checked again before it is
/// refused.
const RACES_MAX: usize = 16;
/// How long a request waits for its own change to come back from the stream and be applied.
const APPLY_WAIT: Duration = Duration::from_secs(10);
/// How long a request that lost a race waits for this node to catch up before checking again.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// Runs a change request; in replicated mode with this node's write turn held, and again when
/// its change lost the race for the stream's next sequence.
pub(super) async fn serialized<F, Fut>(control: &Rc<Control>, attempt: F) -> Outcome
where
    F: Fn() -> Fut,
    Fut: Future<Output = Outcome>,
{
    if control.replica.is_none() {
        return attempt().await;
    }
    let turn = control.write_turn.take().await;
    for _ in 0..RACES_MAX {
        match attempt().await {
            Err(refusal) if refusal.lost_race => continue,
            outcome => {
                control.write_turn.give_back(turn);
                return outcome;
            }
        }
    }
    control.write_turn.give_back(turn);
    Err(Refusal::new(
        ErrorCode::Unavailable,
        format!("other nodes' changes took the stream's next sequence {RACES_MAX} times in a row; try again"),
    ))
}

/// Publishes a delta made against the view and waits until it is applied here.
pub(super) async fn publish(
    control: &Control,
    delta: &Delta,
    encoded: Vec<u8>,
    audit: Entry,
) -> Result<(), Refusal> {
    let replica = control.replica.as_ref().expect("replicated mode");
    let mut audit = audit;
    let mut detail = audit.detail.take().unwrap_or_else(|| serde_json::json!({}));
    if let Some(fields) = detail.as_object_mut() {
        fields.insert("node".into(), replica.settings.node.clone().into());
    }
    audit.detail = Some(detail);
    let audit = serde_json::to_string(&audit).expect("audit entries serialize");
    let expected = delta.sequence - 1;
    match replica.publish(encoded, expected, audit).await {
        Ok(stored) if stored == delta.sequence => {
            // The next change on this node may be checked once this one is in the view: it
            // need not wait for this one's fsyncs and fan-out here.
            catch_up(control, stored).await;
            // Only a request holding the turn publishes (see `serialized`).
            control.write_turn.give_back(control.write_turn.holder.get());
            wait_applied(control, stored).await
        }
        Ok(stored) => Err(Refusal::new(
            ErrorCode::Unavailable,
            format!(
                "the change stream stored the change at sequence {stored}, not {}: is another stream bound to its subject?",
                delta.sequence
            ),
        )),
        Err(PublishFailure::Conflict) => {
            catch_up(control, delta.sequence).await;
            let mut refusal = Refusal::new(ErrorCode::Unavailable, "lost the race");
            refusal.lost_race = true;
            Err(refusal)
        }
        Err(PublishFailure::Unavailable(why)) => Err(Refusal::new(
            ErrorCode::Unavailable,
            format!("the change stream did not store the change: {why}"),
        )),
    }
}

/// A node's turn to put a change in the stream's race: taken by a request before it checks
/// against the view, given back once its change is in the view (or it failed). Waiters are
/// woken in order.
#[derive(Default)]
pub(super) struct Turn {
    taken: std::cell::Cell<bool>,
    /// The ticket of the request holding the turn, while it is taken.
    holder: std::cell::Cell<u64>,
    tickets: std::cell::Cell<u64>,
    waiting: std::cell::RefCell<std::collections::VecDeque<local_channel::LocalSender<()>>>,
}

impl Turn {
    /// Waits for the turn; returns the holder's ticket.
    async fn take(&self) -> u64 {
        while self.taken.get() {
            let (wake, woken) = local_channel::new_bounded(1);
            self.waiting.borrow_mut().push_back(wake);
            let _ = woken.recv().await;
        }
        let ticket = self.tickets.get() + 1;
        self.tickets.set(ticket);
        self.holder.set(ticket);
        self.taken.set(true);
        ticket
    }

    /// Gives the turn back if `ticket` still holds it (so giving it back twice is harmless)
    /// and wakes the next waiter.
    fn give_back(&self, ticket: u64) {
        if self.taken.get() && self.holder.get() == ticket {
            self.taken.set(false);
            // The first waiter still there (one whose request was dropped cannot be woken).
            while let Some(next) = self.waiting.borrow_mut().pop_front() {
                if next.try_send(()).is_ok() {
                    break;
                }
            }
        }
    }
}

/// Waits (at most [`CATCH_UP_WAIT`]) until the view holds `sequence`.
async fn catch_up(control: &Control, sequence: u64) {
    let deadline = Instant::now() + CATCH_UP_WAIT;
    while control.view.borrow().assigned < sequence && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_micros(200)).await;
    }
}

/// Waits until the committer has applied `sequence` on every shard.
async fn wait_applied(control: &Control, sequence: u64) -> Result<(), Refusal> {
    if control.durable.borrow().applied >= sequence {
        return Ok(());
    }
    let (done, finished) = local_channel::new_bounded(1);
    control.applied_waiters.borrow_mut().push((sequence, done));
    let waited = futures_lite::future::or(async { finished.recv().await }, async {
        glommio::timer::sleep(APPLY_WAIT).await;
        None
    })
    .await;
    match waited {
        Some(true) => Ok(()),
        Some(false) => Err(commit::broken_refusal(control)),
        None => Err(Refusal::new(
            ErrorCode::Unavailable,
            format!(
                "the change stream stored the change at sequence {sequence}, but it was not applied here within {} s; every node applies it once it follows the stream again",
                APPLY_WAIT.as_secs()
            ),
        )),
    }
}

/// Applies what the change stream delivers, in order: to the view at once, then through the
/// committer to this node's audit trail, delta log and shards.
pub(super) async fn follow(
    control: Rc<Control>,
    mut incoming: tokio::sync::mpsc::Receiver<Incoming>,
) {
    while let Some(message) = incoming.recv().await {
        let sequence = message.sequence;
        let delta = match decode(&message) {
            Ok(delta) => Arc::new(delta),
            Err(why) => {
                stop(
                    &control,
                    format!("the change stream's message {sequence} {why}"),
                );
                return;
            }
        };
        {
            let mut view = control.view.borrow_mut();
            if sequence <= view.assigned {
                continue; // already applied (delivered again after a reconnection)
            }
            if sequence != view.assigned + 1 {
                drop(view);
                stop(
                    &control,
                    format!(
                        "the change stream skipped from {} to {sequence}",
                        control.view.borrow().assigned
                    ),
                );
                return;
            }
            commit::apply_to_view(&mut view, &delta);
        }
        let audit = audit_entry(&message, &delta);
        let (done, _ignored) = local_channel::new_bounded(1);
        control.queue.borrow_mut().push_back(Job::Commit {
            delta,
            encoded: message.payload.to_vec(),
            audit,
            done,
            queued: Instant::now(),
        });
        let _ = control.wake.try_send(());
    }
}

/// The delta a message carries, which must be the one at the message's own sequence.
fn decode(message: &Incoming) -> Result<Delta, String> {
    let (delta, used) =
        delta::decode(&message.payload).map_err(|e| format!("is not a keyward change: {e}"))?;
    if used != message.payload.len() {
        return Err(format!(
            "carries {} bytes after its change",
            message.payload.len() - used
        ));
    }
    if delta.sequence != message.sequence {
        return Err(format!(
            "holds the change made for sequence {}",
            delta.sequence
        ));
    }
    Ok(delta)
}

/// The audit line for a change from the stream: the one its node wrote, or one of our own
/// when it came without (or with an unreadable one).
fn audit_entry(message: &Incoming, delta: &Delta) -> Entry {
    let mut entry = message
        .audit
        .as_deref()
        .and_then(|json| serde_json::from_str::<Entry>(json).ok())
        .unwrap_or_else(|| Entry::now("replication", delta.kind.name(), "ok"));
    entry.seq = Some(delta.sequence);
    entry
}

/// Stops following the stream: changes are refused from now on, verification goes on from
/// what was applied.
fn stop(control: &Control, why: String) {
    crate::log_error!("replication stopped: {why}; changes are refused from now on, verification goes on from sequence {}", control.view.borrow().assigned);
    *control.broken.borrow_mut() = Some(format!("replication stopped: {why}"));
}
