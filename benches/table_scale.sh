#!/usr/bin/env bash
# The key table at scale: for each key count, the snapshot's bytes per key by section
# (`keyward-ctl table stats`), peak RSS and time of building it (`keyward-ctl keys generate`,
# then `keyward-ctl table build` from the same credentials in reverse id order, read from a
# pipe), the time from starting `keyward serve` to its first answer with a warm and (as root) a
# cold page cache, and, with CRITERION=1, criterion's in-process native verify on a table that
# size.
#   benches/table_scale.sh [COUNT ...]        (default: 1000000; 100000000 peaked at 2.6 GB of memory and needs 25+ GB of disk)
# Not for CI: 10 M keys take minutes. Files stay in $OUT (default target/table-scale).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=("${@:-1000000}")
OUT=${OUT:-target/table-scale}
SERVER_CPU=${SERVER_CPU:-0}
cargo build --release --quiet -p keyward -p keyward-ctl
BIN=target/release
mkdir -p "$OUT"
command -v /usr/bin/time >/dev/null || { echo "benches/table_scale.sh: /usr/bin/time is missing (apt-get install time)" >&2; exit 2; }

first_answer() { # data dir -> seconds from start to the first PONG
  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local control; control=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 - "$BIN/keyward" "$1" "$port" "$control" "$SERVER_CPU" <<'PY'
import socket, struct, subprocess, sys, time
binary, data, port, control, cpu = sys.argv[1:]
started = time.monotonic()
server = subprocess.Popen([binary, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
                           "--control", f"127.0.0.1:{control}", "--shards", "1", "--cpus", cpu],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    deadline = started + 600
    while time.monotonic() < deadline:
        try:
            s = socket.create_connection(("127.0.0.1", int(port)), timeout=1)
            s.sendall(bytes([1, 1, 0, 0]) + struct.pack("<II", 1, 0))
            if len(s.recv(12)) == 12:
                print(f"{time.monotonic() - started:.3f}")
                break
        except OSError:
            time.sleep(0.001)
    else:
        print("timeout")
finally:
    server.terminate(); server.wait()
PY
}

echo "# $(nproc) CPUs, kernel $(uname -r), $("$BIN/keyward" --version)"
for count in "${COUNTS[@]}"; do
  dir="$OUT/$count"; rm -rf "$dir"; mkdir -p "$dir"
  /usr/bin/time -v "$BIN/keyward-ctl" keys generate --data-dir "$dir/data" --count "$count" \
    --out-keys "$dir/keys.txt" >/dev/null 2>"$dir/generate.time"
  rss_kib=$(awk -F: '/Maximum resident/ {gsub(/ /, "", $2); print $2}' "$dir/generate.time")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$dir/generate.time")
  snapshot_bytes=$(stat -c %s "$dir/data/snapshot.kws")
  echo "## $count keys"
  "$BIN/keyward-ctl" table stats "$dir/data" | tee "$dir/stats.txt"
  python3 -c 'import sys; r, s = int(sys.argv[1]) * 1024, int(sys.argv[2]); print(f"keys generate: {sys.argv[3]} wall, peak RSS {r / 1e6:,.0f} MB = {r / s:.2f} x the snapshot ({s / 1e6:,.0f} MB)")' \
    "$rss_kib" "$snapshot_bytes" "$wall"
  first_answer "$dir/data" >/dev/null  # warms the page cache
  echo "first answer, warm page cache: $(first_answer "$dir/data") s, $(first_answer "$dir/data") s"
  if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then
    sync; echo 3 >/proc/sys/vm/drop_caches
    echo "first answer, cold page cache: $(first_answer "$dir/data") s"
  else
    echo "first answer, cold page cache: not measured (needs root to drop the page cache)"
  fi
  # table build: unsorted input (reverse id order), sorted in runs on disk.
  grep -v '^#' "$dir/keys.txt" | cut -f1 | tac | awk '{print "{\"credential\":\"" $1 "\",\"name\":\"built " NR "\"}"}' \
    | /usr/bin/time -v "$BIN/keyward-ctl" table build --data-dir "$dir/built" --from /dev/stdin >/dev/null 2>"$dir/build.time"
  rss_kib=$(awk -F: '/Maximum resident/ {gsub(/ /, "", $2); print $2}' "$dir/build.time")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$dir/build.time")
  built_bytes=$(stat -c %s "$dir/built/snapshot.kws")
  python3 -c 'import sys; r, s = int(sys.argv[1]) * 1024, int(sys.argv[2]); print(f"table build (reverse order): {sys.argv[3]} wall, peak RSS {r / 1e6:,.0f} MB = {r / s:.2f} x the snapshot ({s / 1e6:,.0f} MB)")' \
    "$rss_kib" "$built_bytes" "$wall"
  rm -rf "$dir/built"
  if [ "${CRITERION:-0}" = 1 ]; then
    KEYWARD_BENCH_KEYS=$count taskset -c "$SERVER_CPU" cargo bench --quiet --bench hot_path -- \
      "verify_1m/native_valid|table_1m/lookup_hit" --warm-up-time 1 --measurement-time 3 2>/dev/null \
      | grep -E "^(verify|table)|time:"
  fi
done
