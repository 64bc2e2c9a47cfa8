//! The data directory: its secrets (pepper, master secret, admin token), its snapshot and delta
//! log, and the exclusive lock that keeps two processes from serving or rewriting the same keys.
//!
//! ```text
//! DATA_DIR/            mode 0700, created on first use
//!   LOCK               flock(2)-ed exclusively by the owner; holds its pid, for humans
//!   pepper             32 random bytes, mode 0600: the key of every stored secret hash
//!   master.key         32 random bytes, mode 0600: root of derived-token keys
//!   admin.token        "kwadmin_" + 64 hex digits + "\n", mode 0600: control-port credential
//!   snapshot.kws       the key table (see snapshot/mod.rs)
//!   deltas.log         changes since the snapshot (see delta.rs)
//!   init.tmp/          only while a new directory is being initialised (see below)
//! ```
//!
//! A directory is initialised only when it is wholly new: none of the five files above exists.
//! The files are written into `init.tmp/`, fsynced, then renamed into place one by one, the
//! snapshot last, and `init.tmp/` is removed; a start that finds `init.tmp/` finishes those
//! renames. A directory that holds some of the files but not all, or an empty or damaged one, is
//! refused with the file named: making a fresh pepper would turn every key `unknown`, and a
//! fresh log would bring back every key it revoked (docs/OPERATIONS.md, "A damaged data
//! directory").

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::delta;
use crate::record::UnixSeconds;
use crate::snapshot;

pub const LOCK_FILE: &str = "LOCK";
pub const PEPPER_FILE: &str = "pepper";
pub const MASTER_FILE: &str = "master.key";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Where a new directory's files are written before they are renamed into place.
pub const INIT_DIR: &str = "init.tmp";
pub const SECRET_FILE_BYTES: usize = 32;
/// Shortest admin token accepted from `admin.token` (a generated one has 72 characters).
pub const ADMIN_TOKEN_BYTES_MIN: usize = 16;
/// Longest admin token: the control frame gives its length one byte.
pub const ADMIN_TOKEN_BYTES_MAX: usize = 255;
/// How long opening a locked data directory waits for the lock before giving up.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Every file an initialised data directory holds, in the order a new one is put in place:
/// the snapshot last, so a directory with a snapshot is a directory that was fully initialised.
pub const FILES: [&str; 5] = [
    PEPPER_FILE,
    MASTER_FILE,
    ADMIN_TOKEN_FILE,
    delta::FILE_NAME,
    snapshot::FILE_NAME,
];

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
    #[error("{path}: {problem}; refusing to start (an admin token must be {ADMIN_TOKEN_BYTES_MIN} to {ADMIN_TOKEN_BYTES_MAX} printable characters without spaces; restore the file from backup or write a new token into it)")]
    AdminToken {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("data directory {path} is incomplete: {missing} is missing ({consequence}); refusing to start rather than create a new one. Restore it from backup (docs/OPERATIONS.md, \"A damaged data directory\")")]
    Incomplete {
        path: PathBuf,
        missing: &'static str,
        consequence: &'static str,
    },
    #[error("{path} is not a keyward data directory (it holds none of its files)")]
    NotADataDirectory { path: PathBuf },
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What losing one of the files would do, for the refusal that names it.
fn consequence_of_losing(file: &str) -> &'static str {
    match file {
        PEPPER_FILE => "a new pepper would make every stored key unknown",
        MASTER_FILE => "a new master key would invalidate every derived token and idempotent issue",
        ADMIN_TOKEN_FILE => "the control port's credential",
        f if f == delta::FILE_NAME => {
            "the changes since the snapshot, revocations included, would be lost"
        }
        _ => "the key table itself",
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
    /// Opens `path` and takes its exclusive lock. A directory that is missing, empty or holds
    /// none of the data files is initialised (fresh secrets, an empty table, an empty log); one
    /// that holds some but not all of them is refused.
    pub fn open_or_create(path: &Path) -> Result<DataDir, DataDirError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io_error(path))?;
        let lock = lock(path)?;
        let staging = path.join(INIT_DIR);
        let mut created = false;
        if staging.exists() {
            let renaming_began = FILES.iter().any(|name| path.join(name).exists());
            if renaming_began {
                // Renames start only once every staged file is whole and fsynced: finish them.
                finish_initialisation(path, &staging)?;
                created = true;
            } else {
                // Interrupted while staging: nothing was in place yet, so start again.
                fs::remove_dir_all(&staging).map_err(io_error(&staging))?;
            }
        }
        let present: Vec<&str> = FILES
            .iter()
            .copied()
            .filter(|name| path.join(name).exists())
            .collect();
        if present.is_empty() {
            initialise(path, &staging)?;
            created = true;
        } else if let Some(missing) = FILES.iter().find(|name| !present.contains(name)) {
            return Err(DataDirError::Incomplete {
                path: path.to_path_buf(),
                missing,
                consequence: consequence_of_losing(missing),
            });
        }
        let pepper = secret_file(&path.join(PEPPER_FILE))?;
        let master = secret_file(&path.join(MASTER_FILE))?;
        let admin_token = admin_token_file(&path.join(ADMIN_TOKEN_FILE))?;
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
            pepper,
            master,
            admin_token,
            created,
        })
    }

    /// Reads the secrets of a data directory without taking its lock (a running server may
    /// hold it): the pepper, the master secret and the first admin token.
    pub fn read_secrets(path: &Path) -> Result<([u8; 32], [u8; 32], String), DataDirError> {
        if !FILES.iter().any(|name| path.join(name).exists()) {
            return Err(DataDirError::NotADataDirectory {
                path: path.to_path_buf(),
            });
        }
        Ok((
            secret_file(&path.join(PEPPER_FILE))?,
            secret_file(&path.join(MASTER_FILE))?,
            admin_token_file(&path.join(ADMIN_TOKEN_FILE))?,
        ))
    }

    /// Opens an existing data directory (never initialising one) and takes its lock: for tools
    /// that only read or repair.
    pub fn open_existing(path: &Path) -> Result<DataDir, DataDirError> {
        if !FILES.iter().any(|name| path.join(name).exists()) {
            return Err(DataDirError::NotADataDirectory {
                path: path.to_path_buf(),
            });
        }
        DataDir::open_or_create(path)
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

    pub fn log_path(&self) -> PathBuf {
        self.path.join(delta::FILE_NAME)
    }
}

/// Writes every file of a new directory into `staging`, then moves them into place.
fn initialise(path: &Path, staging: &Path) -> Result<(), DataDirError> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(staging)
        .map_err(io_error(staging))?;
    let mut pepper = [0u8; 32];
    let mut master = [0u8; 32];
    let mut token = [0u8; 32];
    for secret in [&mut pepper, &mut master, &mut token] {
        getrandom::fill(secret).expect("the OS random source failed");
    }
    let token = format!("kwadmin_{}\n", hex(&token));
    let snapshot = snapshot::encode(&[], 0, UnixSeconds::now())?;
    let contents: [(&str, &[u8]); 5] = [
        (PEPPER_FILE, &pepper),
        (MASTER_FILE, &master),
        (ADMIN_TOKEN_FILE, token.as_bytes()),
        (delta::FILE_NAME, &delta::empty_log()),
        (snapshot::FILE_NAME, &snapshot),
    ];
    for (name, bytes) in contents {
        write_private(&staging.join(name), bytes)?;
    }
    sync_directory(staging)?;
    finish_initialisation(path, staging)
}

/// Renames the staged files into place (those not there already), snapshot last, then removes
/// the staging directory.
fn finish_initialisation(path: &Path, staging: &Path) -> Result<(), DataDirError> {
    for name in FILES {
        let staged = staging.join(name);
        if staged.exists() {
            fs::rename(&staged, path.join(name)).map_err(io_error(&staged))?;
        }
    }
    sync_directory(path)?;
    fs::remove_dir(staging).map_err(io_error(staging))?;
    sync_directory(path)
}

/// Creates (or truncates) `path` for writing, readable and writable by its owner alone (0600),
/// whatever the umask, and whatever mode a file left there before had: every file in a data
/// directory, and every temporary one beside them, is made this way.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Replaces the file at `path` with `bytes`, atomically and durably: written to `PATH.tmp`
/// (mode 0600) and fsynced, renamed over `path`, the directory fsynced. A failure leaves the
/// old file as it was (and removes the staged one).
pub fn replace_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut staged = path.as_os_str().to_owned();
    staged.push(".tmp");
    let staged = PathBuf::from(staged);
    let result = (|| {
        let mut file = create_private(&staged)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&staged, path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&staged);
    }
    result
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_directory(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Makes a rename into `path`'s directory durable: fsyncs that directory.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    File::open(parent_directory(path))?.sync_all()
}

fn sync_directory(path: &Path) -> Result<(), DataDirError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_error(path))
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

/// Reads a 32-byte secret file.
fn secret_file(path: &Path) -> Result<[u8; 32], DataDirError> {
    warn_if_readable_by_others(path);
    let bytes = fs::read(path).map_err(io_error(path))?;
    if bytes.len() != SECRET_FILE_BYTES {
        return Err(DataDirError::SecretLength {
            path: path.to_path_buf(),
            found: bytes.len(),
        });
    }
    let mut secret = [0u8; 32];
    secret.copy_from_slice(&bytes);
    Ok(secret)
}

/// Reads the admin token; refuses one that is empty, short, or not one printable word (an
/// empty token would let any request with a zero-length token through).
fn admin_token_file(path: &Path) -> Result<String, DataDirError> {
    warn_if_readable_by_others(path);
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    let token = text.trim();
    check_admin_token(token).map_err(|problem| DataDirError::AdminToken {
        path: path.to_path_buf(),
        problem,
    })?;
    Ok(token.to_string())
}

/// Why `token` cannot be an admin token, if it cannot.
pub fn check_admin_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("the admin token is empty");
    }
    if token.len() < ADMIN_TOKEN_BYTES_MIN {
        return Err("the admin token is too short");
    }
    if token.len() > ADMIN_TOKEN_BYTES_MAX {
        return Err("the admin token is too long");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the admin token holds spaces or control characters");
    }
    Ok(())
}

/// Writes a new file readable by its owner only, durably (the file fsynced; its directory is
/// the caller's to fsync).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(metadata) = fs::metadata(path) {
        if metadata.permissions().mode() & 0o077 != 0 {
            crate::log_warn!(
                "{} is readable by group or others; run: chmod 600 {}",
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

    #[test]
    fn an_interrupted_initialisation_is_finished_or_restarted() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("data");
        let first = DataDir::open_or_create(&path).unwrap();
        let pepper = *first.pepper();
        drop(first);
        // As if interrupted after the pepper and master key were renamed into place: the rest
        // is still staged, and is put in place on the next open.
        let staging = path.join(INIT_DIR);
        fs::create_dir(&staging).unwrap();
        for name in [ADMIN_TOKEN_FILE, delta::FILE_NAME, snapshot::FILE_NAME] {
            fs::rename(path.join(name), staging.join(name)).unwrap();
        }
        let again = DataDir::open_or_create(&path).unwrap();
        assert_eq!(
            again.pepper(),
            &pepper,
            "a finished initialisation kept its pepper"
        );
        assert!(!staging.exists());
        drop(again);
        // As if interrupted while staging: nothing in place yet, so it starts over.
        let fresh = root.path().join("fresh");
        fs::create_dir_all(fresh.join(INIT_DIR)).unwrap();
        fs::write(fresh.join(INIT_DIR).join(PEPPER_FILE), b"torn").unwrap();
        let made = DataDir::open_or_create(&fresh).unwrap();
        assert!(made.was_created());
        assert!(FILES.iter().all(|name| fresh.join(name).exists()));
    }

    #[test]
    fn a_directory_missing_one_file_is_refused_by_name() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("data");
        drop(DataDir::open_or_create(&path).unwrap());
        for name in FILES {
            let saved = fs::read(path.join(name)).unwrap();
            fs::remove_file(path.join(name)).unwrap();
            match DataDir::open_or_create(&path) {
                Err(DataDirError::Incomplete { missing, .. }) => assert_eq!(missing, name),
                other => panic!("{name} missing: {other:?}"),
            }
            fs::write(path.join(name), saved).unwrap();
        }
    }
}
