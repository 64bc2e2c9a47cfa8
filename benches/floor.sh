#!/usr/bin/env bash
# The two ways of answering PING at the kernel's floor, side by side in one run: keyward-floor in
# epoll mode (one read and one write per wake-up) and in --uring mode (keyward's io_uring turn),
# both pinned to CPU $SERVER_CPU, keyward-loadgen pinned to CPU $CLIENT_CPU, 16 connections at
# depth 1 and 16, rounds alternating; syscalls per request counted with perf tracepoints when
# perf is there.   benches/floor.sh [seconds per run] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-3}
ROUNDS=${2:-3}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
CONNECTIONS=${CONNECTIONS:-16}
BIN=target/release
cargo build --release --quiet -p keyward-ctl -p keyward-loadgen
WORK=$(mktemp -d)
"$BIN/keyward-floor" --listen 127.0.0.1:7581 --cpu "$SERVER_CPU" >"$WORK/epoll.log" 2>&1 &
EPOLL=$!
"$BIN/keyward-floor" --listen 127.0.0.1:7582 --cpu "$SERVER_CPU" --uring >"$WORK/uring.log" 2>&1 &
URING=$!
trap 'kill $EPOLL $URING 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
sleep 0.5
echo "# $(nproc) CPUs; responders on CPU $SERVER_CPU, loadgen on CPU $CLIENT_CPU; $CONNECTIONS connections; $SECONDS_PER_RUN s per run"
for round in $(seq "$ROUNDS"); do
  for depth in 1 16; do
    for mode in epoll uring; do
      if [ "$mode" = epoll ]; then port=7581; pid=$EPOLL; else port=7582; pid=$URING; fi
      PERF=
      if command -v perf >/dev/null; then
        perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$WORK/perf.csv" & PERF=$!
        sleep 0.1
      fi
      "$BIN/keyward-loadgen" --server "127.0.0.1:$port" --op ping --cpus "$CLIENT_CPU" \
        --connections "$CONNECTIONS" --depth "$depth" --duration "$SECONDS_PER_RUN" --warmup 0 \
        --quiet --json >"$WORK/load.json"
      if [ -n "$PERF" ]; then kill -INT "$PERF"; wait "$PERF" || true; else : >"$WORK/perf.csv"; fi
      python3 - "$WORK/load.json" "$WORK/perf.csv" "$mode" "$depth" "$round" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
counts = [float(line.split(",")[0]) for line in open(sys.argv[2])
          if line.strip() and line.split(",")[0].replace(".", "").isdigit()]
calls = f"{counts[0] / report['requests']:.3f}" if counts else "n/a"
print(f"round {sys.argv[5]} depth {sys.argv[4]:>2} {sys.argv[3]}: {report['requests_per_sec']:>12,.0f}/s "
      f"p50 {report['latency']['p50_us']:.0f} us  syscalls/request {calls}")
PY
    done
  done
done
