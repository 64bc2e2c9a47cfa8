//! Log lines that the world can provoke (a failing accept, a flood of bad connections) printed
//! at most once per interval, with a count of those held back, so no peer can fill the disk.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Shortest time between two lines of one [`Throttled`] log.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// One kind of log line, rate-limited. Not shared between threads: each shard has its own.
#[derive(Default, Debug)]
pub struct Throttled {
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl Throttled {
    /// Logs `line` as a warning unless a line was printed less than
    /// [`LOG_INTERVAL`] ago; then only counts it, and the next line says how many were held back.
    pub fn log(&self, line: impl FnOnce() -> String) {
        let now = Instant::now();
        if self
            .last
            .get()
            .is_some_and(|last| now.duration_since(last) < LOG_INTERVAL)
        {
            self.suppressed.set(self.suppressed.get() + 1);
            return;
        }
        self.last.set(Some(now));
        match self.suppressed.replace(0) {
            0 => crate::log_warn!("{}", line()),
            held => crate::log_warn!(
                "{} ({held} more like it in the last {} s were not logged)",
                line(),
                LOG_INTERVAL.as_secs()
            ),
        }
    }
}
