//! The server's log: one line per event on stderr, as text (`keyward: warning: …`) or as JSON
//! (`{"time":…,"level":"warning","message":…}`), at or above the chosen level. Set once at
//! start-up (`--log-format`, `--log-level`); until then text at `info`.
//!
//! No line ever holds a secret: credentials, key secrets, admin tokens and the data directory's
//! secret files are never formatted into a message (a test greps every line of a full run).

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

/// How lines are written.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Text,
    Json,
}

/// How much is written: a level and everything more severe.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error = 0,
    Warning = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

static FORMAT: AtomicU8 = AtomicU8::new(Format::Text as u8);
static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Chooses the format and level for every later line.
pub fn set(format: Format, level: Level) {
    FORMAT.store(format as u8, Ordering::Relaxed);
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether a line at `level` would be written.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one line at `level` on stderr (use the `log_*!` macros).
pub fn emit(level: Level, message: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    // One write per line, so lines of different threads do not interleave.
    let _ = std::io::stderr()
        .lock()
        .write_all(line(level, message).as_bytes());
}

/// One line in the chosen format, newline included (also for what the server prints on
/// stdout when it is ready).
pub fn line(level: Level, message: std::fmt::Arguments<'_>) -> String {
    if FORMAT.load(Ordering::Relaxed) == Format::Json as u8 {
        let text = |value: &str| serde_json::to_string(value).expect("strings serialize");
        format!(
            "{{\"time\":{},\"level\":{},\"message\":{}}}\n",
            text(&crate::audit::rfc3339(std::time::SystemTime::now())),
            text(level.name()),
            text(&message.to_string())
        )
    } else if level == Level::Info {
        format!("keyward: {message}\n")
    } else {
        format!("keyward: {}: {message}\n", level.name())
    }
}

#[macro_export]
macro_rules! log_error {
    ($($arg:tt)*) => {
        // The arguments are evaluated only when the line is written.
        if $crate::logging::enabled($crate::logging::Level::Error) {
            $crate::logging::emit($crate::logging::Level::Error, format_args!($($arg)*))
        }
    };
}
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)*) => {
        // The arguments are evaluated only when the line is written.
        if $crate::logging::enabled($crate::logging::Level::Warning) {
            $crate::logging::emit($crate::logging::Level::Warning, format_args!($($arg)*))
        }
    };
}
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)*) => {
        // The arguments are evaluated only when the line is written.
        if $crate::logging::enabled($crate::logging::Level::Info) {
            $crate::logging::emit($crate::logging::Level::Info, format_args!($($arg)*))
        }
    };
}
#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)*) => {
        // The arguments are evaluated only when the line is written.
        if $crate::logging::enabled($crate::logging::Level::Debug) {
            $crate::logging::emit($crate::logging::Level::Debug, format_args!($($arg)*))
        }
    };
}
