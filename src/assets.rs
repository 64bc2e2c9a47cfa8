//! Man pages (`clap_mangen`) and shell completions (`clap_complete`) generated from a binary's
//! real CLI, so they cannot say something the binary does not do. Each binary has a hidden
//! `generate-assets DIR` command that calls [`generate`]; the package ships what it writes, and
//! a test in each crate fails when the committed copies under `tools/package/` drift from it
//! (`tools/package/generate-assets.sh` refreshes them).

use std::path::Path;

use clap_complete::Shell;

/// Writes `DIR/man/NAME[-SUB].1` for the command and every visible subcommand, and
/// `DIR/completions/` for bash, zsh and fish.
pub fn generate(command: clap::Command, dir: &Path) -> std::io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(command.clone(), &man)?;
    let name = command.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut command = command.clone();
        clap_complete::generate_to(shell, &mut command, &name, &completions)?;
    }
    Ok(())
}
