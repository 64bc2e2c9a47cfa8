//! A command's output on standard output, for the three binaries.
//!
//! `println!` panics when the reader has gone (`keyward-ctl audit tail | head`): Rust ignores
//! SIGPIPE, so the write fails with EPIPE and `println!` turns that into a panic. keyward keeps
//! SIGPIPE ignored on purpose — a peer that resets a socket must be an error the program
//! handles, not the end of the process — and writes its output through [`outln!`] and [`out!`]
//! instead: a reader that has gone ends the command quietly with [`EXIT_READER_GONE`], the
//! status a shell shows for a program stopped by SIGPIPE; any other failure to write (a full
//! disk behind `>`) ends it with a one-line error and [`EXIT_CANNOT_WRITE`].

use std::fmt;
use std::io::{ErrorKind, Write};

/// The exit status when standard output's reader has gone: 128 + SIGPIPE, as a shell reports
/// a program that SIGPIPE stopped.
pub const EXIT_READER_GONE: i32 = 128 + 13;

/// The exit status when standard output cannot be written for another reason (sysexits'
/// EX_IOERR).
pub const EXIT_CANNOT_WRITE: i32 = 74;

/// Writes `arguments` to standard output; see the module's documentation for a failed write.
pub fn write(arguments: fmt::Arguments) {
    let written = {
        let mut out = std::io::stdout().lock();
        out.write_fmt(arguments)
    };
    if let Err(error) = written {
        fail(error);
    }
}

/// Flushes standard output (for output without a newline, like a progress line).
pub fn flush() {
    if let Err(error) = std::io::stdout().flush() {
        fail(error);
    }
}

fn fail(error: std::io::Error) -> ! {
    if error.kind() == ErrorKind::BrokenPipe {
        std::process::exit(EXIT_READER_GONE);
    }
    let program = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|path| Some(path.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "keyward".to_string());
    eprintln!("{program}: error: cannot write to standard output: {error}");
    std::process::exit(EXIT_CANNOT_WRITE);
}

/// `println!` for a command's output: see [`crate::stdout`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::stdout::write(format_args!("\n"))
    };
    ($($argument:tt)*) => {
        $crate::stdout::write(format_args!("{}\n", format_args!($($argument)*)))
    };
}

/// `print!` for a command's output: see [`crate::stdout`].
#[macro_export]
macro_rules! out {
    ($($argument:tt)*) => {
        $crate::stdout::write(format_args!($($argument)*))
    };
}
