#!/usr/bin/env bash
# Syscalls per request, counted: a figure the machine's noise cannot move. Runs keyward (1 shard
# on CPU $SERVER_CPU) under keyward-loadgen (CPU $CLIENT_CPU) at the given shapes and counts the
# server's system calls with perf's tracepoints (raw_syscalls:sys_enter, and the receive, send
# and io_uring_enter calls by name) over the whole load window.
#   benches/syscalls.sh [seconds per run]     (needs perf; root or kernel.perf_event_paranoid <= 1)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-3}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
KEYS=${KEYS:-100000}
SHAPES=${SHAPES:-"16x1 50x1 16x16"}
command -v perf >/dev/null || { echo "benches/syscalls.sh: perf is missing (apt-get install linux-perf)" >&2; exit 2; }
cargo build --release --workspace --quiet
BIN=target/release
DATA=$(mktemp -d)
SERVER=
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT
"$BIN/keyward-ctl" keys generate --data-dir "$DATA/data" --count "$KEYS" --out-keys "$DATA/keys.txt" >/dev/null 2>&1
"$BIN/keyward" serve --data-dir "$DATA/data" --listen 127.0.0.1:7595 --control 127.0.0.1:7594 --shards 1 \
  --cpus "$SERVER_CPU" >"$DATA/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 600); do grep -q "control port" "$DATA/server.log" && break; sleep 0.1; done
EVENTS=raw_syscalls:sys_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_io_uring_enter
echo "# keyward $("$BIN/keyward" --version | cut -d' ' -f2), 1 shard on CPU $SERVER_CPU, loadgen on CPU $CLIENT_CPU, $KEYS keys, $SECONDS_PER_RUN s per shape"
printf '%-8s %12s %10s %10s %10s %14s\n' shape requests syscalls/req recv/req send/req uring_enter/req
for shape in $SHAPES; do
  connections=${shape%x*}; depth=${shape#*x}
  perf stat -x, -e "$EVENTS" -p "$SERVER" -o "$DATA/perf-$shape.csv" &
  PERF=$!
  sleep 0.2
  "$BIN/keyward-loadgen" --server 127.0.0.1:7595 --keys "$DATA/keys.txt" --cpus "$CLIENT_CPU" \
    --connections "$connections" --depth "$depth" --duration "$SECONDS_PER_RUN" --warmup 0 --quiet --json \
    >"$DATA/load-$shape.json"
  kill -INT "$PERF"; wait "$PERF" || true
  python3 - "$DATA/perf-$shape.csv" "$DATA/load-$shape.json" "$shape" <<'PY'
import json, sys
counts = {}
for line in open(sys.argv[1]):
    fields = line.strip().split(",")
    if len(fields) > 2 and fields[0].replace(".", "").isdigit():
        counts[fields[2]] = float(fields[0])
requests = json.load(open(sys.argv[2]))["requests"]
per = lambda name: counts.get(name, 0) / requests
print(f"{sys.argv[3]:<8} {requests:>12,} {per('raw_syscalls:sys_enter'):>10.3f} {per('syscalls:sys_enter_recvfrom'):>10.3f} "
      f"{per('syscalls:sys_enter_sendto'):>10.3f} {per('syscalls:sys_enter_io_uring_enter'):>14.3f}")
PY
done
