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

/// Whether the files `binary`'s `generate-assets` wrote under `generated` are byte for byte the
/// committed ones under `committed` (both holding `man/` and `completions/`); `Err` names the
/// first difference. The drift tests of the three binaries call it.
pub fn compare(generated: &Path, committed: &Path, binary: &str) -> Result<(), String> {
    let others: Vec<String> = ["keyward-ctl", "keyward-loadgen"]
        .iter()
        .filter(|other| **other != binary && other.starts_with(binary))
        .map(|other| other.to_string())
        .collect();
    let mine = |name: &str| {
        let stem = name.trim_start_matches('_');
        let stem = stem.split('.').next().unwrap_or(stem);
        (stem == binary || stem.starts_with(&format!("{binary}-")))
            && !others
                .iter()
                .any(|other| stem == other || stem.starts_with(&format!("{other}-")))
    };
    for kind in ["man", "completions"] {
        let names = |dir: &Path| -> std::io::Result<Vec<String>> {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(dir)? {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if mine(&name) {
                    names.push(name);
                }
            }
            names.sort();
            Ok(names)
        };
        let fresh = names(&generated.join(kind)).map_err(|e| e.to_string())?;
        let kept = names(&committed.join(kind)).map_err(|e| e.to_string())?;
        if fresh != kept {
            return Err(format!(
                "{kind}: the CLI gives {fresh:?}, {} holds {kept:?}",
                committed.join(kind).display()
            ));
        }
        for name in fresh {
            let new = std::fs::read(generated.join(kind).join(&name)).map_err(|e| e.to_string())?;
            let old = std::fs::read(committed.join(kind).join(&name)).map_err(|e| e.to_string())?;
            if new != old {
                return Err(format!("{kind}/{name} differs from what the CLI generates"));
            }
        }
    }
    Ok(())
}
