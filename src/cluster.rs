//! What the nodes of a cluster share besides the change stream (docs/CLUSTER.md): the secrets
//! every node needs to check the same keys (the pepper of the key hashes, the master secret of
//! derived tokens and idempotent issues) and the admin tokens, carried from node to node in a
//! file by the operator (`keyward-ctl cluster export-secrets` / `import-secrets`), never over
//! NATS; and the marker that says which stream a data directory follows.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::datadir::{self, DataDir, ADMIN_TOKEN_FILE, MASTER_FILE, PEPPER_FILE};

/// The file that says which change stream a data directory follows (docs/FORMATS.md).
pub const MARKER_FILE: &str = "cluster.json";
/// What the secrets file says it is.
const SECRETS_FORMAT: &str = "keyward cluster secrets v1";

/// The secrets file (docs/FORMATS.md, "Cluster secrets").
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    format: String,
    pepper: String,
    master_key: String,
    admin_token: String,
    /// `admins.json` as it was, when the node had named admins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admins: Option<serde_json::Value>,
    /// BLAKE3 of the fields above (pepper, master key, admin token, admins as compact JSON),
    /// so a truncated or hand-edited file is refused rather than half used.
    check: String,
}

fn check_of(pepper: &str, master: &str, token: &str, admins: &Option<serde_json::Value>) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [pepper, master, token] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    if let Some(admins) = admins {
        hasher.update(admins.to_string().as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// The secrets file of data directory `dir` (read while its server runs, if it does).
pub fn export_secrets(dir: &Path) -> Result<String, String> {
    let (pepper, master, admin_token) = DataDir::read_secrets(dir).map_err(|e| e.to_string())?;
    let admins_path = dir.join(crate::admins::FILE_NAME);
    let admins = match std::fs::read(&admins_path) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: {e}", admins_path.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", admins_path.display())),
    };
    let pepper = datadir::hex(&pepper);
    let master_key = datadir::hex(&master);
    let check = check_of(&pepper, &master_key, &admin_token, &admins);
    let file = SecretsFile {
        format: SECRETS_FORMAT.into(),
        pepper,
        master_key,
        admin_token,
        admins,
        check,
    };
    Ok(serde_json::to_string_pretty(&file).expect("serializes") + "\n")
}

/// Makes a new data directory `dir` (absent or empty) holding the secrets of `text`, an
/// exported secrets file, and an empty key table.
pub fn import_secrets(dir: &Path, text: &str) -> Result<(), String> {
    let file: SecretsFile =
        serde_json::from_str(text).map_err(|e| format!("not a keyward secrets file: {e}"))?;
    if file.format != SECRETS_FORMAT {
        return Err(format!(
            "not a keyward secrets file (its format is {:?})",
            file.format
        ));
    }
    if check_of(
        &file.pepper,
        &file.master_key,
        &file.admin_token,
        &file.admins,
    ) != file.check
    {
        return Err(
            "the secrets file is damaged (its check does not match): export it again".into(),
        );
    }
    let pepper = secret_bytes("pepper", &file.pepper)?;
    let master = secret_bytes("master_key", &file.master_key)?;
    datadir::check_admin_token(&file.admin_token)
        .map_err(|why| format!("the secrets file's admin token {why}"))?;
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(format!(
                "{} is not empty: import-secrets makes a new data directory",
                dir.display()
            ));
        }
    }
    let data = DataDir::open_or_create(dir).map_err(|e| e.to_string())?;
    let write = |name: &str, bytes: &[u8]| {
        datadir::replace_private(&dir.join(name), bytes)
            .map_err(|e| format!("cannot write {}: {e}", dir.join(name).display()))
    };
    write(PEPPER_FILE, &pepper)?;
    write(MASTER_FILE, &master)?;
    write(
        ADMIN_TOKEN_FILE,
        format!("{}\n", file.admin_token).as_bytes(),
    )?;
    if let Some(admins) = &file.admins {
        let text = serde_json::to_string_pretty(admins).expect("serializes") + "\n";
        write(crate::admins::FILE_NAME, text.as_bytes())?;
    }
    drop(data);
    Ok(())
}

fn secret_bytes(field: &str, hex: &str) -> Result<Vec<u8>, String> {
    let bytes: Option<Vec<u8>> = (hex.len() == 2 * datadir::SECRET_FILE_BYTES)
        .then(|| {
            (0..hex.len())
                .step_by(2)
                .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
                .collect()
        })
        .flatten();
    bytes.ok_or_else(|| {
        format!(
            "the secrets file's {field} is not {} hex bytes",
            datadir::SECRET_FILE_BYTES
        )
    })
}

/// Refuses a data directory that holds changes not from `stream`: its sequences would not be
/// the stream's. A new directory (at sequence 0) is marked as following it.
pub fn check_marker(dir: &Path, stream: &str, sequence: u64) -> Result<(), String> {
    let path = dir.join(MARKER_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let marker: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a cluster marker ({e})", path.display()))?;
            let followed = marker["stream"].as_str().unwrap_or_default();
            if followed != stream {
                return Err(format!(
                    "{} follows the change stream {followed:?}, not {stream:?}: start it with --nats-stream {followed}, or start a node of the other stream from an empty data directory",
                    dir.display(),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if sequence > 0 {
                return Err(format!(
                    "{} holds changes up to sequence {sequence} but no {MARKER_FILE}: changes made in local mode, which the change stream {stream:?} does not have (or the marker of a cluster node was removed: restore it from a backup). A cluster node starts from a new data directory (keyward-ctl cluster import-secrets); keys are imported through a node of the cluster",
                    dir.display(),
                ));
            }
            let marker = serde_json::json!({ "format": 1, "stream": stream });
            datadir::replace_private(&path, format!("{marker}\n").as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_travel_whole_and_a_damaged_file_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let first = root.path().join("first");
        drop(DataDir::open_or_create(&first).unwrap());
        let exported = export_secrets(&first).unwrap();
        let second = root.path().join("second");
        import_secrets(&second, &exported).unwrap();
        let (a, b) = (
            DataDir::open_existing(&first).unwrap(),
            DataDir::open_existing(&second).unwrap(),
        );
        assert_eq!(a.pepper(), b.pepper());
        assert_eq!(a.master_secret(), b.master_secret());
        assert_eq!(a.admin_token(), b.admin_token());
        drop((a, b));
        // Not into a directory that holds anything.
        let error = import_secrets(&second, &exported).unwrap_err();
        assert!(error.contains("not empty"), "{error}");
        // A changed byte anywhere is refused.
        let value: serde_json::Value = serde_json::from_str(&exported).unwrap();
        let pepper = value["pepper"].as_str().unwrap();
        let first = if pepper.starts_with('0') { "1" } else { "0" };
        let damaged = exported.replace(pepper, &format!("{first}{}", &pepper[1..]));
        assert_ne!(damaged, exported);
        let third = root.path().join("third");
        assert!(import_secrets(&third, &damaged).is_err());
        assert!(import_secrets(&third, "{}").is_err());
        assert!(import_secrets(&third, &exported[..exported.len() / 2]).is_err());
    }

    #[test]
    fn a_local_mode_directory_is_refused_and_a_new_one_marked() {
        let root = tempfile::tempdir().unwrap();
        let error = check_marker(root.path(), "KEYWARD", 5).unwrap_err();
        assert!(error.contains("local mode"), "{error}");
        check_marker(root.path(), "KEYWARD", 0).unwrap();
        check_marker(root.path(), "KEYWARD", 9).unwrap();
        let error = check_marker(root.path(), "OTHER", 9).unwrap_err();
        assert!(
            error.contains("follows the change stream \"KEYWARD\""),
            "{error}"
        );
    }
}
