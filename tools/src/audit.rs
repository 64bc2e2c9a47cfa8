//! `keyward-ctl audit verify|tail`: the audit trail of a data directory, read from its files
//! (docs/FORMATS.md, "audit.log"). Reading needs read access to the files, not a token.

use keyward::outln;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};

use keyward::audit::{self, Entry};

use super::Failure;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain across every file; names the first bad line. Prints the hash of
    /// the last line: record it elsewhere to detect lines cut off the end.
    Verify(VerifyArgs),
    /// Print the last lines, optionally only of one key or tenant or since a time, and with
    /// --follow keep printing new ones (across rotation) until interrupted.
    Tail(TailArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Data directory holding audit.log.
    #[arg(long, default_value = "./keyward-data", value_name = "DIR")]
    data_dir: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TailArgs {
    /// Data directory holding audit.log.
    #[arg(long, default_value = "./keyward-data", value_name = "DIR")]
    data_dir: PathBuf,
    /// Keep printing new lines as they are written.
    #[arg(long, short)]
    follow: bool,
    /// Only lines about this key id.
    #[arg(long, value_name = "ID")]
    key: Option<u64>,
    /// Only lines about this tenant.
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// Only lines from this time on: an age (30s, 10m, 2h, 7d, 2w) or a UTC time or its start
    /// (2026-11-30, 2026-11-30T16:00).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// How many of the matching lines to print first (0: all).
    #[arg(long, short = 'n', default_value_t = 20, value_name = "N")]
    lines: usize,
    /// Print the lines as they are stored (JSON), not as text.
    #[arg(long)]
    json: bool,
}

/// Seconds in an age such as `90d`, `12h`, `30m`, `45s`, `2w` (a bare number is seconds).
pub fn parse_age(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    number.checked_mul(unit)
}

/// The earliest `time` a `--since` keeps, as text that sorts with the entries' times.
fn since_bound(since: &str) -> Result<String, Failure> {
    if let Some(seconds) = parse_age(since) {
        let at = SystemTime::now() - Duration::from_secs(seconds);
        return Ok(audit::rfc3339(at));
    }
    let looks_like_time = since.len() >= 4
        && since
            .bytes()
            .all(|b| b.is_ascii_digit() || b"-T:.Z".contains(&b));
    if looks_like_time {
        Ok(since.to_string())
    } else {
        Err(Failure::Error(format!(
            "--since {since:?}: give an age (30s, 10m, 2h, 7d, 2w) or a UTC time (2026-11-30T16:00)"
        )))
    }
}

pub fn run(command: AuditCommand) -> Result<(), Failure> {
    match command {
        AuditCommand::Verify(args) => verify(&args),
        AuditCommand::Tail(args) => tail(&args),
    }
}

fn no_trail(dir: &Path) -> Failure {
    Failure::Error(format!(
        "{}: no audit trail here (pass --data-dir)",
        dir.join(audit::FILE_NAME).display()
    ))
}

fn verify(args: &VerifyArgs) -> Result<(), Failure> {
    if audit::files(&args.data_dir).map_or(true, |f| f.is_empty()) {
        return Err(no_trail(&args.data_dir));
    }
    match audit::walk(&args.data_dir, |_| {}) {
        Ok(verified) => {
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({ "ok": true, "verified": verified })
                );
            } else {
                outln!(
                    "audit trail intact: {} lines ({}..{}) in {} file(s); head {}",
                    verified.lines,
                    verified.first.unwrap_or(0),
                    verified.last.unwrap_or(0),
                    verified.files,
                    verified.head
                );
            }
            Ok(())
        }
        Err(broken) => {
            if args.json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "ok": false,
                        "file": broken.file,
                        "line": broken.line,
                        "n": broken.n,
                        "problem": broken.problem,
                    })
                );
            }
            Err(Failure::No(format!("audit trail broken: {broken}")))
        }
    }
}

struct Filter {
    key: Option<u64>,
    tenant: Option<String>,
    since: Option<String>,
}

impl Filter {
    fn keeps(&self, entry: &Entry) -> bool {
        self.key
            .is_none_or(|key| entry.key == Some(key) || entry.keys.contains(&key))
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| entry.tenant.as_ref() == Some(t))
            && self.since.as_ref().is_none_or(|s| entry.time >= *s)
    }
}

fn show(entry: &Entry, json: bool) {
    if json {
        outln!("{}", serde_json::to_string(entry).unwrap_or_default());
        return;
    }
    let mut line = format!("{} #{} {} {}", entry.time, entry.n, entry.actor, entry.op);
    if let Some(key) = entry.key {
        line += &format!(" key {key}");
    }
    if !entry.keys.is_empty() {
        line += &format!(" keys {}", entry.keys.len());
    }
    if let Some(tenant) = &entry.tenant {
        line += &format!(" tenant {tenant:?}");
    }
    line += &format!(" {}", entry.outcome);
    if let Some(client) = &entry.client {
        line += &format!(" from {client}");
    }
    if let Some(detail) = &entry.detail {
        line += &format!(" {detail}");
    }
    outln!("{line}");
}

fn tail(args: &TailArgs) -> Result<(), Failure> {
    let dir = &args.data_dir;
    if audit::files(dir).map_or(true, |f| f.is_empty()) {
        return Err(no_trail(dir));
    }
    let filter = Filter {
        key: args.key,
        tenant: args.tenant.clone(),
        since: args.since.as_deref().map(since_bound).transpose()?,
    };
    let mut kept = std::collections::VecDeque::new();
    let walked = audit::walk(dir, |line| {
        if filter.keeps(&line.entry) {
            kept.push_back(line.entry.clone());
            if args.lines > 0 && kept.len() > args.lines {
                kept.pop_front();
            }
        }
    });
    for entry in &kept {
        show(entry, args.json);
    }
    if let Err(broken) = walked {
        return Err(Failure::Error(format!(
            "stopped at a break in the chain: {broken} (see keyward-ctl audit verify)"
        )));
    }
    if args.follow {
        follow(dir, &filter, args.json)?;
    }
    Ok(())
}

/// Prints lines appended to `audit.log` from its current end on, reopening it when it is
/// rotated (after reading what the old file still held). Runs until interrupted.
fn follow(dir: &Path, filter: &Filter, json: bool) -> Result<(), Failure> {
    let path = dir.join(audit::FILE_NAME);
    let open = |at_end: bool| -> std::io::Result<(BufReader<File>, u64)> {
        let mut file = File::open(&path)?;
        let inode = file.metadata()?.ino();
        if at_end {
            file.seek(SeekFrom::End(0))?;
        }
        Ok((BufReader::new(file), inode))
    };
    let (mut reader, mut inode) = open(true)?;
    let mut pending = Vec::new();
    loop {
        loop {
            let read = reader.read_until(b'\n', &mut pending)?;
            if read == 0 || pending.last() != Some(&b'\n') {
                break; // nothing more yet, or a line still being written
            }
            if let Ok(entry) = serde_json::from_slice::<Entry>(&pending) {
                if filter.keeps(&entry) {
                    show(&entry, json);
                }
            }
            pending.clear();
        }
        let rotated = std::fs::metadata(&path).is_ok_and(|m| m.ino() != inode);
        if rotated {
            (reader, inode) = open(false)?;
            pending.clear();
            continue;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse() {
        assert_eq!(parse_age("90d"), Some(90 * 86_400));
        assert_eq!(parse_age("45"), Some(45));
        assert_eq!(parse_age("2w"), Some(14 * 86_400));
        assert_eq!(parse_age("3y"), None);
        assert_eq!(parse_age("d"), None);
        assert_eq!(parse_age("99999999999999999999d"), None);
    }
}
