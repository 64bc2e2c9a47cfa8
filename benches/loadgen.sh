#!/usr/bin/env bash
# End-to-end benchmark of the verify port with keyward-loadgen, side by side in one run:
# VERIFY vs PING (the I/O ceiling) and derived tokens vs keys at 64 connections x depth 16,
# VERIFY_BATCH, and the
# single-connection idle round trip under several spin-before-park settings.
# Server: 1 shard pinned to CPU $SERVER_CPU; loadgen pinned to CPU $CLIENT_CPU.
# Usage: benches/loadgen.sh [seconds per run]   (results also land in target/bench-e2e/)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
KEYS=${KEYS:-1000000}
OUT=target/bench-e2e
mkdir -p "$OUT"
cargo build --release --workspace --quiet
BIN=target/release
DATA=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT
SERVER=

"$BIN/keyward-ctl" keys generate --data-dir "$DATA/data" --count "$KEYS" --out-keys "$DATA/keys.txt" >/dev/null

start_server() { # $1 = spin_before_park_us
  "$BIN/keyward" serve --data-dir "$DATA/data" --listen 127.0.0.1:7599 --control 127.0.0.1:7598 --shards 1 \
    --cpus "$SERVER_CPU" --spin-before-park-us "$1" >"$OUT/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 600); do grep -q "control port" "$OUT/server.log" && return; sleep 0.1; done
  echo "server did not start"; cat "$OUT/server.log"; exit 1
}
stop_server() { kill "$SERVER"; wait "$SERVER" || true; }
load() { # name, loadgen args...
  local name=$1; shift
  "$BIN/keyward-loadgen" --server 127.0.0.1:7599 --cpus "$CLIENT_CPU" --duration "$SECONDS_PER_RUN" \
    --warmup 1 --quiet --json "$@" | tee "$OUT/$name.json"
}

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "# table: $KEYS credentials; server CPU $SERVER_CPU, loadgen CPU $CLIENT_CPU; $SECONDS_PER_RUN s per run"
start_server 200
for round in 1 2; do
  load "verify-64x16-$round" --keys "$DATA/keys.txt" --connections 64 --depth 16
  load "ping-64x16-$round" --op ping --connections 64 --depth 16
  load "tokens-64x16-$round" --keys "$DATA/keys.txt" --tokens 20000 --connections 64 --depth 16
done
load "batch64-4x4" --keys "$DATA/keys.txt" --connections 4 --depth 4 --batch 64
stop_server
for spin in 0 50 200 1000; do
  start_server "$spin"
  load "idle-rtt-spin$spin" --keys "$DATA/keys.txt" --connections 1 --depth 1
  stop_server
done
python3 - "$OUT" <<'PY'
import json, sys, glob, os
out = sys.argv[1]
def get(name): return json.load(open(os.path.join(out, name + ".json")))
for r in (1, 2):
    v, p = get(f"verify-64x16-{r}"), get(f"ping-64x16-{r}")
    print(f"round {r}: VERIFY {v['requests_per_sec']:.0f}/s  PING {p['requests_per_sec']:.0f}/s  ratio {v['requests_per_sec']/p['requests_per_sec']:.2f}")
for r in (1, 2):
    v, t = get(f"verify-64x16-{r}"), get(f"tokens-64x16-{r}")
    print(f"round {r}: derived tokens {t['requests_per_sec']:.0f}/s vs keys {v['requests_per_sec']:.0f}/s: ratio {t['requests_per_sec']/v['requests_per_sec']:.2f}")
b = get("batch64-4x4")
print(f"VERIFY_BATCH 64: {b['credentials_per_sec']:.0f} credentials/s")
for spin in (0, 50, 200, 1000):
    i = get(f"idle-rtt-spin{spin}")
    print(f"idle round trip, spin {spin:>4} us: p50 {i['latency']['p50_us']:.1f} us  p99 {i['latency']['p99_us']:.1f} us")
PY
