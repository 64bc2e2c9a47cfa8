#!/usr/bin/env bash
# Installs the Debian package on this machine and checks it end to end, as root:
#   - dpkg -i: the keyward user, /var/lib/keyward (0700, the user's), the config, man pages,
#     completions, the unit; `systemd-analyze verify` on the installed unit;
#   - the installed binary, started as the keyward user with the packaged config, serves: a key
#     issued through the control port verifies valid through the verify port;
#   - an upgrade (a newer revision of the package) keeps the data directory and a changed
#     config: the same key still verifies, the change is still there;
#   - dpkg --purge removes the package and keeps the data directory (it holds the secrets).
# Then it cleans up: the package, the data directory, the user. It refuses to run where keyward
# is already installed or /var/lib/keyward exists, so it never touches a real installation.
set -euo pipefail
cd "$(dirname "$0")/../.."

[ "$(id -u)" = 0 ] || { echo "install-check: run as root (it installs a package)" >&2; exit 1; }
if dpkg -s keyward >/dev/null 2>&1 || [ -e /var/lib/keyward ]; then
  echo "install-check: keyward is installed here (or /var/lib/keyward exists); not touching it" >&2
  exit 1
fi

server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  dpkg --purge keyward >/dev/null 2>&1 || true
  rm -rf /var/lib/keyward /etc/keyward "${packages:-}"
  userdel keyward >/dev/null 2>&1 || true
}
trap cleanup EXIT

fail() { echo "install-check: FAILED: $*" >&2; exit 1; }

# build-deb.sh prints the package's path last; revision 2 stands in for the next release.
# Each is copied away at once: cargo-deb clears older builds of the package from target/debian.
packages=$(mktemp -d)
cp "$(tools/package/build-deb.sh --deb-revision 1 | tail -n 1)" "$packages/"
cp "$(tools/package/build-deb.sh --deb-revision 2 | tail -n 1)" "$packages/"
first=$(ls "$packages"/keyward_*-1_*.deb)
second=$(ls "$packages"/keyward_*-2_*.deb)
version=$(dpkg-deb -f "$second" Version)

echo "-- dpkg -i $first"
dpkg -i "$first"
getent passwd keyward >/dev/null || fail "no keyward user"
[ "$(stat -c '%U %a' /var/lib/keyward)" = "keyward 700" ] || fail "/var/lib/keyward is $(stat -c '%U %a' /var/lib/keyward), not keyward 700"
[ -f /etc/keyward/keyward.toml ] || fail "no /etc/keyward/keyward.toml"
grep -qx /etc/keyward/keyward.toml /var/lib/dpkg/info/keyward.conffiles || fail "the config is not a conffile"
[ -f /usr/share/man/man1/keyward-serve.1.gz ] || fail "no man page keyward-serve(1)"
[ -f /usr/share/bash-completion/completions/keyward-ctl ] || fail "no bash completion for keyward-ctl"
[ -f /usr/lib/systemd/system/keyward.service ] || fail "no systemd unit"
keyward --version

echo "-- systemd-analyze verify"
if ! command -v systemd-analyze >/dev/null && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null 2>&1 || true
fi
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify /usr/lib/systemd/system/keyward.service
  echo "systemd-analyze verify: clean"
else
  echo "systemd-analyze is not installable here: unit not verified"
fi

start_server() {
  : >/tmp/keyward-install-check.log
  # setpriv execs the server itself (runuser would stay in between and eat the exit status).
  setpriv --reuid keyward --regid keyward --init-groups \
    keyward serve --config /etc/keyward/keyward.toml >>/tmp/keyward-install-check.log 2>&1 &
  server_pid=$!
  for _ in $(seq 1 300); do
    if curl -fsS http://127.0.0.1:7502/readyz >/dev/null 2>&1; then return 0; fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat /tmp/keyward-install-check.log >&2
  fail "the installed server did not become ready"
}
stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid" || fail "the server did not exit 0 on SIGTERM"
  server_pid=""
}

echo "-- keyward serve as the keyward user with the packaged config"
runuser -u keyward -- keyward config check --config /etc/keyward/keyward.toml
start_server
[ "$(stat -c '%U %a' /var/lib/keyward/pepper)" = "keyward 600" ] || fail "pepper is not the user's, mode 600"
key=$(keyward-ctl issue --data-dir /var/lib/keyward --name install-check)
keyward-ctl verify "$key" || fail "an issued key did not verify valid"
echo "issued and verified ${key%%_*}_… through the installed server"

echo "-- upgrade to $second keeps the data directory and a changed config"
stop_server
sed -i 's/^# log_level = "info"$/log_level = "debug"/' /etc/keyward/keyward.toml
grep -qx 'log_level = "debug"' /etc/keyward/keyward.toml || fail "could not change the config"
dpkg -i --force-confold "$second"
[ "$(dpkg-query -W -f '${Version}' keyward)" = "$version" ] || fail "the upgrade did not install"
grep -qx 'log_level = "debug"' /etc/keyward/keyward.toml || fail "the upgrade lost the config change"
start_server
keyward-ctl verify "$key" || fail "the key issued before the upgrade no longer verifies"
stop_server

echo "-- purge keeps the data directory"
dpkg --purge keyward
[ -f /var/lib/keyward/pepper ] || fail "purge removed the data directory"
echo "install-check: passed"
