//! `keyward-ctl cluster export-secrets|import-secrets`: carry a node's secrets and admin tokens
//! to a new node of the same cluster, in a file the operator moves (docs/CLUSTER.md).

use keyward::outln;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use clap::Subcommand;

use super::Failure;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Write this node's secrets (key-hash pepper, master secret) and admin tokens to a file
    /// (mode 0600) for `import-secrets` on a new node. The file unlocks every key: move it
    /// over a channel you trust (scp, a secrets manager), then delete it.
    ExportSecrets {
        /// Data directory of a node of the cluster.
        #[arg(long, default_value = "./keyward-data", value_name = "DIR")]
        data_dir: PathBuf,
        /// Where to write the secrets file (it must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Make a new data directory holding the secrets and admin tokens of an exported file and
    /// an empty key table; `keyward serve --replication nats` on it then joins the cluster.
    ImportSecrets {
        /// The new node's data directory (absent or empty).
        #[arg(long, default_value = "./keyward-data", value_name = "DIR")]
        data_dir: PathBuf,
        /// A file written by `export-secrets`.
        file: PathBuf,
    },
}

pub fn run(command: ClusterCommand) -> Result<(), Failure> {
    match command {
        ClusterCommand::ExportSecrets { data_dir, out } => {
            let text = keyward::cluster::export_secrets(&data_dir).map_err(Failure::Error)?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .map_err(|e| Failure::Error(format!("{}: {e}", out.display())))?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| Failure::Error(format!("{}: {e}", out.display())))?;
            outln!(
                "wrote {}: it unlocks every key of this cluster; move it to the new node over a channel you trust, then delete it",
                out.display()
            );
            Ok(())
        }
        ClusterCommand::ImportSecrets { data_dir, file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Failure::Error(format!("{}: {e}", file.display())))?;
            keyward::cluster::import_secrets(&data_dir, &text)
                .map_err(|e| Failure::Error(format!("{}: {e}", file.display())))?;
            outln!(
                "made {} with the cluster's secrets; start the node with: keyward serve --data-dir {} --replication nats --nats-servers URL,...",
                data_dir.display(),
                data_dir.display()
            );
            Ok(())
        }
    }
}
