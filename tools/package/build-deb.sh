#!/usr/bin/env bash
# Builds the Debian package: target/debian/keyward_VERSION_ARCH.deb. Needs cargo-deb (installed
# here when missing). Extra arguments go to cargo deb (e.g. --deb-revision 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v cargo-deb >/dev/null; then
  cargo install cargo-deb --locked --version 3.8.0
fi
cargo build --release --locked --bins -p keyward -p keyward-ctl -p keyward-loadgen
# Stripped: the release profile keeps debug info for profiling, which would make the package
# six times larger; build from source to profile.
cargo deb --no-build --strip -p keyward "$@"
