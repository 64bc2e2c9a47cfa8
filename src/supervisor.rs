//! Talking to a service manager (systemd's `Type=notify`, sd_notify(3)): `STATUS=` lines while
//! starting, `READY=1` once every shard's loop and the control plane's run, `WATCHDOG=1` pings
//! while every shard and the control plane keep ticking, `STOPPING=1` on the way out. Without
//! `NOTIFY_SOCKET` in the environment every call here does nothing.
//!
//! The watchdog: a shard's loop ticks at least every 50 ms, busy or idle (`ShardMetrics::ticks`),
//! and so does a heartbeat task of the control plane (`Board::control_ticks`). Every half of
//! `WATCHDOG_USEC` the notifier thread compares each count with the last one it saw; only when
//! every shard and the control plane moved does it ping. A shard or the control plane stuck in a
//! computation, a dead-locked or stopped thread, stops the pings, and systemd kills and restarts
//! the server after `WatchdogSec` (docs/DEPLOY.md). `WatchdogSec` must be at least 1 s: a shorter
//! half-period could fall between two ticks of a healthy loop.

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
/// watchdog while every shard and the control plane tick, until `shutdown`. `None` without a
/// service manager.
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
    let mut control_ticks = board.control_ticks();
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
        let control_current = board.control_ticks();
        let stuck = Stuck {
            shards: stalled(&ticks, &current),
            control: control_current <= control_ticks,
        };
        ticks = current;
        control_ticks = control_current;
        let line = if stuck.is_none() {
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
                    "{} stopped ticking: its loop is stuck or stopped{}",
                    stuck.names(),
                    if watchdog.is_some() {
                        "; watchdog pings withheld, so the service manager restarts keyward"
                    } else {
                        ""
                    }
                );
            }
            format!("stalled: {} stopped ticking", stuck.names())
        };
        if line != last_status {
            status(&line);
            last_status = line;
        }
    }
    stopping("stopping: closing connections, stopping the shards");
}

/// What did not tick between two looks.
struct Stuck {
    shards: Vec<usize>,
    control: bool,
}

impl Stuck {
    fn is_none(&self) -> bool {
        self.shards.is_empty() && !self.control
    }

    /// `shard(s) [1, 3]`, `the control plane`, or both joined by "and".
    fn names(&self) -> String {
        let mut names = Vec::new();
        if !self.shards.is_empty() {
            names.push(format!("shard(s) {:?}", self.shards));
        }
        if self.control {
            names.push("the control plane".to_string());
        }
        names.join(" and ")
    }
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
    fn what_is_stuck_is_named() {
        let both = Stuck {
            shards: vec![1],
            control: true,
        };
        assert_eq!(both.names(), "shard(s) [1] and the control plane");
        assert!(!both.is_none());
        let none = Stuck {
            shards: vec![],
            control: false,
        };
        assert!(none.is_none());
    }

    #[test]
    fn a_shard_whose_ticks_did_not_move_is_stalled() {
        assert_eq!(stalled(&[1, 5, 9], &[2, 5, 10]), vec![1]);
        assert!(stalled(&[1, 2], &[3, 4]).is_empty());
    }
}
