#!/usr/bin/env bash
# Regenerates the man pages and shell completions under tools/package/ from the three binaries'
# CLIs (each has a hidden generate-assets command). Tests fail when the committed copies drift.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --quiet --bins -p keyward -p keyward-ctl -p keyward-loadgen
out=tools/package
rm -rf "$out/man" "$out/completions"
target/debug/keyward generate-assets "$out"
target/debug/keyward-ctl generate-assets "$out"
target/debug/keyward-loadgen --generate-assets "$out"
echo "regenerated $(ls "$out/man" | wc -l) man pages and $(ls "$out/completions" | wc -l) completion files in $out"
