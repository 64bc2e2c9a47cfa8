//! The data directory: its secrets (pepper, master secret, admin token), its snapshot, and the
//! exclusive lock that keeps two processes from serving or rewriting the same keys.
//!
//! ```text
//! DATA_DIR/            mode 0700, created on first use
//!   LOCK               flock(2)-ed exclusively by the owner; holds its pid, for humans
//!   pepper             32 random bytes, mode 0600: the key of every stored secret hash
//!   master.key         32 random bytes, mode 0600: root of derived-token keys
//!   admin.token        "kwadmin_" + 64 hex digits + "\n", mode 0600: control-port credential
//!   snapshot.kws       the key table (see snapshot.rs); an empty one is written on first use
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::record::UnixSeconds;
use crate::snapshot;

pub const LOCK_FILE: &str = "LOCK";
pub const PEPPER_FILE: &str = "pepper";
pub const MASTER_FILE: &str = "master.key";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const SECRET_FILE_BYTES: usize = 32;
/// How long opening a locked data directory waits for the lock before giving up.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the data directory could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {path} is in use by another keyward process{holder}; stop it or use another --data-dir")]
    Locked { path: PathBuf, holder: String },
    #[error("{path}: expected {SECRET_FILE_BYTES} bytes, found {found} (damaged secret file; restore it from backup)")]
    SecretLength { path: PathBuf, found: usize },
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An opened, locked data directory. The lock is held until this value is dropped.
pub struct DataDir {
    path: PathBuf,
    _lock: File,
    pepper: [u8; 32],
    master: [u8; 32],
    admin_token: String,
    created: bool,
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DataDir {
    /// Opens `path`, creating it (and its secrets and an empty snapshot) when missing, and
    /// takes its exclusive lock.
    pub fn open_or_create(path: &Path) -> Result<DataDir, DataDirError> {
        let created = !path.join(PEPPER_FILE).exists();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io_error(path))?;
        let lock = lock(path)?;
        let pepper = secret_file(&path.join(PEPPER_FILE))?;
        let master = secret_file(&path.join(MASTER_FILE))?;
        let admin_token = admin_token_file(&path.join(ADMIN_TOKEN_FILE))?;
        let snapshot_path = path.join(snapshot::FILE_NAME);
        if !snapshot_path.exists() {
            let bytes = snapshot::encode(&[], 0, UnixSeconds::now())?;
            snapshot::write_atomic(&snapshot_path, &bytes)?;
        }
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
            pepper,
            master,
            admin_token,
            created,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pepper(&self) -> &[u8; 32] {
        &self.pepper
    }

    pub fn master_secret(&self) -> &[u8; 32] {
        &self.master
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// True when this call created the directory's secrets.
    pub fn was_created(&self) -> bool {
        self.created
    }

    pub fn snapshot_path(&self) -> PathBuf {
        self.path.join(snapshot::FILE_NAME)
    }
}

fn lock(directory: &Path) -> Result<File, DataDirError> {
    let path = directory.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_error(&path))?;
    // A lock can outlive its owner by a moment: a process that exits, or a child forked by the
    // owner just before it let go, holds the open file until it is gone. So wait briefly
    // before calling the directory busy.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let locked = loop {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break true;
        }
        if std::time::Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    if !locked {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => String::new(),
            pid => format!(" (pid {pid})"),
        };
        return Err(DataDirError::Locked {
            path: directory.to_path_buf(),
            holder,
        });
    }
    file.set_len(0).map_err(io_error(&path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_error(&path))?;
    Ok(file)
}

/// Reads a 32-byte secret file, creating it from the OS random source when missing.
fn secret_file(path: &Path) -> Result<[u8; 32], DataDirError> {
    let mut secret = [0u8; 32];
    if !path.exists() {
        getrandom::fill(&mut secret).expect("the OS random source failed");
        write_private(path, &secret)?;
        return Ok(secret);
    }
    warn_if_readable_by_others(path);
    let bytes = fs::read(path).map_err(io_error(path))?;
    if bytes.len() != SECRET_FILE_BYTES {
        return Err(DataDirError::SecretLength {
            path: path.to_path_buf(),
            found: bytes.len(),
        });
    }
    secret.copy_from_slice(&bytes);
    Ok(secret)
}

fn admin_token_file(path: &Path) -> Result<String, DataDirError> {
    if !path.exists() {
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).expect("the OS random source failed");
        let token = format!("kwadmin_{}", hex(&random));
        write_private(path, format!("{token}\n").as_bytes())?;
        return Ok(token);
    }
    warn_if_readable_by_others(path);
    Ok(fs::read_to_string(path)
        .map_err(io_error(path))?
        .trim()
        .to_string())
}

/// Writes a new file readable by its owner only, durably (file and directory fsynced).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))?;
    if let Some(directory) = path.parent() {
        File::open(directory)
            .and_then(|d| d.sync_all())
            .map_err(io_error(directory))?;
    }
    Ok(())
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(metadata) = fs::metadata(path) {
        if metadata.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "keyward: warning: {} is readable by group or others; run: chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_files_and_locks() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("data");
        let first = DataDir::open_or_create(&path).unwrap();
        assert!(first.was_created());
        for name in [PEPPER_FILE, MASTER_FILE, ADMIN_TOKEN_FILE] {
            let mode = fs::metadata(path.join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert!(first.admin_token().starts_with("kwadmin_"));
        let second = DataDir::open_or_create(&path);
        assert!(matches!(second, Err(DataDirError::Locked { .. })));
        let pepper = *first.pepper();
        drop(first);
        let again = DataDir::open_or_create(&path).unwrap();
        assert!(!again.was_created());
        assert_eq!(again.pepper(), &pepper);
    }
}
