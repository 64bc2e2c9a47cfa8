//! Talking to a service manager (systemd's `Type=notify`, sd_notify(3)): `STATUS=` lines while
//! starting, `READY=1` once every shard's loop and the control plane's run, `WATCHDOG=1` pings
//! while every shard keeps ticking, `STOPPING=1` on the way out. Without `NOTIFY_SOCKET` in the
//! environment every call here does nothing.
//!
//! The watchdog: a shard's loop ticks at least every 50 ms, busy or idle (`ShardMetrics::ticks`).
//! Every half of `WATCHDOG_USEC` the notifier thread compares each shard's count with the last
//! one it saw; only when every shard moved does it ping. A shard stuck in a computation, a
//! dead-locked or stopped thread, stops the pings, and systemd kills and restarts the server
//! after `WatchdogSec` (docs/DEPLOY.md). `WatchdogSec` must be at least 1 s: a shorter half-period
//! could fall between two ticks of a healthy shard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::link::Shutdown;
use crate::metrics::Board;

/// Sends `STATUS=text` (nothing without a service manager).
pub fn status(text: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(text)]);
}

/// Sends `STOPPING=1` with a status line.
pub fn stopping(text: &str) {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status(text)]);
}

/// Whether a service manager listens (`NOTIFY_SOCKET` is set).
pub fn present() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// How often the readiness and the shards are looked at before `READY=1`.
const STARTING_POLL: Duration = Duration::from_millis(2);
/// How often the status line is refreshed after `READY=1`, when no watchdog asks for more.
const STATUS_PERIOD: Duration = Duration::from_secs(1);

/// Starts the notifier thread: it sends `READY=1` with `serving` as the status once every shard
/// and the control plane run, then keeps the status line true to `/readyz` and pings the
/// watchdog while every shard ticks, until `shutdown`. `None` without a service manager.
pub fn spawn(
    board: Arc<Board>,
    shutdown: Shutdown,
    serving: String,
) -> Option<std::thread::JoinHandle<()>> {
    if !present() {
        return None;
    }
    let watchdog = sd_notify::watchdog_enabled();
    std::thread::Builder::new()
        .name("keyward-notify".into())
        .spawn(move || notify_loop(&board, &shutdown, &serving, watchdog))
        .ok()
}

fn notify_loop(board: &Board, shutdown: &Shutdown, serving: &str, watchdog: Option<Duration>) {
    let mut last_status = String::new();
    while let Err(starting) = board.started() {
        if shutdown.is_triggered() {
            return;
        }
        if starting != last_status {
            status(&starting);
            last_status = starting;
        }
        std::thread::sleep(STARTING_POLL);
    }
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(serving)]);
    last_status = serving.to_string();
    let period = watchdog.map_or(STATUS_PERIOD, |usec| {
        (usec / 2).max(Duration::from_millis(1))
    });
    let mut ticks = board.shard_ticks();
    let mut stalled_since: Option<Instant> = None;
    let mut next = Instant::now() + period;
    while !shutdown.is_triggered() {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        next += period;
        let current = board.shard_ticks();
        let stuck: Vec<usize> = stalled(&ticks, &current);
        ticks = current;
        let line = if stuck.is_empty() {
            stalled_since = None;
            if watchdog.is_some() {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
            match board.readiness() {
                Ok(()) => serving.to_string(),
                Err(reasons) => format!("not ready: {reasons}"),
            }
        } else {
            let since = *stalled_since.get_or_insert(now);
            if since == now {
                crate::log_error!(
                    "shard(s) {stuck:?} stopped ticking: their loop is stuck{}",
                    if watchdog.is_some() {
                        "; watchdog pings withheld, so the service manager restarts keyward"
                    } else {
                        ""
                    }
                );
            }
            format!("stalled: shard(s) {stuck:?} stopped ticking")
        };
        if line != last_status {
            status(&line);
            last_status = line;
        }
    }
    stopping("stopping: closing connections, stopping the shards");
}

/// The shards whose tick count did not move between two looks.
fn stalled(before: &[u64], after: &[u64]) -> Vec<usize> {
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (b, a))| a <= b)
        .map(|(index, _)| index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_whose_ticks_did_not_move_is_stalled() {
        assert_eq!(stalled(&[1, 5, 9], &[2, 5, 10]), vec![1]);
        assert!(stalled(&[1, 2], &[3, 4]).is_empty());
    }
}
