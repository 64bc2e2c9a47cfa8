//! `keyward-ctl log`: read a data directory's delta log offline, and the recovery step for a
//! log the server refuses (damage followed by valid records; docs/OPERATIONS.md, "A damaged
//! delta log").

use keyward::outln;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use keyward::datadir::DataDir;
use keyward::delta::{self, Delta};

use crate::Failure;

#[derive(Subcommand)]
pub enum LogCommand {
    /// List every record of the delta log and where damage begins (the server must be stopped).
    /// Exit 0: no damage; 1: damage found.
    Check {
        /// Data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Cut the delta log at a byte offset, dropping every record from there on. The whole log
    /// is first copied to deltas.log.damaged-OFFSET beside it, and the changes dropped are
    /// listed so they can be made again (a revocation dropped here is undone until it is).
    Cut {
        /// Data directory (the server must be stopped).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Byte offset to cut at: the damaged record's, as the server's refusal names it.
        #[arg(long, value_name = "OFFSET")]
        at: u64,
        /// Confirms that the records from OFFSET on are to be dropped.
        #[arg(long)]
        drop_changes: bool,
    },
}

pub fn run(command: LogCommand) -> Result<(), Failure> {
    match command {
        LogCommand::Check { data_dir } => check(&data_dir),
        LogCommand::Cut {
            data_dir,
            at,
            drop_changes,
        } => cut(&data_dir, at, drop_changes),
    }
}

fn describe(delta: &Delta) -> String {
    let ids: Vec<String> = delta.records.iter().map(|r| r.id.0.to_string()).collect();
    let revoked: Vec<String> = delta
        .records
        .iter()
        .filter(|r| r.status == keyward::record::KeyStatus::Revoked)
        .map(|r| r.id.0.to_string())
        .collect();
    let mut line = format!(
        "sequence {} {:?} keys [{}]",
        delta.sequence,
        delta.kind,
        ids.join(", ")
    );
    if !revoked.is_empty() {
        line.push_str(&format!(" revoked [{}]", revoked.join(", ")));
    }
    line
}

fn read_log(data_dir: &DataDir) -> Result<(PathBuf, Vec<u8>), Failure> {
    let path = data_dir.log_path();
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path, bytes))
}

fn check(data_dir: &Path) -> Result<(), Failure> {
    let data_dir = DataDir::open_existing(data_dir)?;
    let (path, bytes) = read_log(&data_dir)?;
    let report = delta::inspect(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(header) = report.header {
        if header.version >= 2 {
            outln!(
                "format {}: follows the key table at sequence {}",
                header.version,
                header.follows
            );
        } else {
            outln!("format 1: the key table it follows is not recorded");
        }
    }
    for (offset, delta) in &report.records {
        outln!("offset {offset}: {}", describe(delta));
    }
    match report.damage {
        None => {
            outln!(
                "{}: {} records, {} bytes, no damage",
                path.display(),
                report.records.len(),
                bytes.len()
            );
            Ok(())
        }
        Some((offset, reason)) => {
            let after = report.records.iter().filter(|(o, _)| *o > offset).count();
            Err(Failure::No(format!(
                "{}: damage at byte offset {offset} ({reason}); {after} whole records after it{}",
                path.display(),
                if after > 0 {
                    " (the server refuses this log; see `keyward-ctl log cut --help`)"
                } else {
                    " (a torn tail: the server cuts it on start)"
                }
            )))
        }
    }
}

fn cut(data_dir: &Path, at: u64, drop_changes: bool) -> Result<(), Failure> {
    let data_dir = DataDir::open_existing(data_dir)?;
    let (path, bytes) = read_log(&data_dir)?;
    let report = delta::inspect(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let header_bytes = report.header.map_or(delta::FILE_HEADER_BYTES, |h| h.bytes) as u64;
    if at < header_bytes || at > bytes.len() as u64 {
        return Err(Failure::Error(format!(
            "--at must be between {header_bytes} (the end of the header) and the log's length, {}",
            bytes.len()
        )));
    }
    let kept_end = report
        .records
        .iter()
        .map(|(offset, _)| *offset)
        .chain([bytes.len() as u64])
        .any(|offset| offset == at);
    if !kept_end && report.damage.as_ref().is_none_or(|(o, _)| *o != at) {
        return Err(Failure::Error(format!(
            "byte offset {at} is not where a record or the damage begins; run `keyward-ctl log check`"
        )));
    }
    let dropped: Vec<&(u64, Delta)> = report.records.iter().filter(|(o, _)| *o >= at).collect();
    if !drop_changes {
        let mut message = format!(
            "cutting at {at} would drop {} bytes and these {} whole records:",
            bytes.len() as u64 - at,
            dropped.len()
        );
        for (offset, delta) in &dropped {
            message.push_str(&format!("\n  offset {offset}: {}", describe(delta)));
        }
        message.push_str("\npass --drop-changes to cut, then make those changes again");
        return Err(Failure::No(message));
    }
    let backup = path.with_file_name(format!("{}.damaged-{at}", delta::FILE_NAME));
    std::fs::write(&backup, &bytes).map_err(|e| format!("{}: {e}", backup.display()))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.set_len(at)?;
    file.sync_all()?;
    outln!(
        "cut {} at byte offset {at}; the whole log was saved as {}",
        path.display(),
        backup.display()
    );
    if !dropped.is_empty() {
        outln!("dropped changes, to make again once the server runs:");
        for (offset, delta) in dropped {
            outln!("  offset {offset}: {}", describe(delta));
        }
    }
    Ok(())
}
