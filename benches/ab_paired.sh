#!/usr/bin/env bash
# Verify throughput of two server setups in many short paired runs, for a machine too noisy for
# benches/ab.sh (single runs there swing by ±20 % from one minute to the next):
#   benches/ab_paired.sh A_BINARY B_BINARY [pairs] [seconds per run]
# Both servers stay up for the whole run, pinned to the same CPU (one at a time is loaded; the
# other waits in the kernel). The load generator, on another CPU, drives A then B (B then A in
# odd pairs) for a short run each, so the two runs of a pair see the same neighbours. The
# answer is the median of the pairs' B/A ratios, with its middle half.
# Extra server flags: A_FLAGS and B_FLAGS (e.g. B_FLAGS="--config off.toml" for one binary
# with a setting off vs on).
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: benches/ab_paired.sh A_BINARY B_BINARY [pairs] [seconds]}
B=${2:?usage: benches/ab_paired.sh A_BINARY B_BINARY [pairs] [seconds]}
PAIRS=${3:-40}
SECONDS_PER_RUN=${4:-1.5}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
KEYS=${KEYS:-100000}
DEPTH=${DEPTH:-16}
A_FLAGS=${A_FLAGS:-}
B_FLAGS=${B_FLAGS:-}
cargo build --release --workspace --quiet
BIN=target/release
DATA=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT
"$BIN/keyward-ctl" keys generate --data-dir "$DATA/a" --count "$KEYS" --out-keys "$DATA/keys.txt" >/dev/null
cp -r "$DATA/a" "$DATA/b"

start() { # name, binary, verify port, control port, metrics port, flags
  local metrics=
  # Builds from before the metrics listener have no such flag (and no listener to move).
  if "$2" serve --help | grep -q -- --metrics-listen; then metrics="--metrics-listen 127.0.0.1:$5"; fi
  # shellcheck disable=SC2086
  "$2" serve --data-dir "$DATA/$1" --listen "127.0.0.1:$3" --control "127.0.0.1:$4" \
    $metrics --shards 1 --cpus "$SERVER_CPU" $6 >"$DATA/$1.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 600); do grep -q "control port" "$DATA/$1.log" && return; sleep 0.1; done
  echo "server $1 did not start:" >&2; cat "$DATA/$1.log" >&2; exit 1
}
start a "$A" 7591 7592 7593 "$A_FLAGS"
start b "$B" 7594 7595 7596 "$B_FLAGS"

run() { # name, port, pair
  "$BIN/keyward-loadgen" --server "127.0.0.1:$2" --cpus "$CLIENT_CPU" --duration "$SECONDS_PER_RUN" \
    --warmup 0.3 --quiet --json --keys "$DATA/keys.txt" --connections 16 --depth "$DEPTH" \
    >"$DATA/$1-$3.json"
}

echo "# A = $A $A_FLAGS"
echo "# B = $B $B_FLAGS"
echo "# $(nproc) CPUs; $KEYS keys; 16 connections x depth $DEPTH; servers on CPU $SERVER_CPU, loadgen on CPU $CLIENT_CPU; $PAIRS pairs of $SECONDS_PER_RUN s"
for pair in $(seq "$PAIRS"); do
  if [ $((pair % 2)) = 1 ]; then run a 7591 "$pair"; run b 7594 "$pair"
  else run b 7594 "$pair"; run a 7591 "$pair"; fi
done
python3 - "$DATA" "$PAIRS" <<'PY'
import json, os, sys
data, pairs = sys.argv[1], int(sys.argv[2])
def rate(name): return json.load(open(os.path.join(data, name + ".json")))["requests_per_sec"]
ratios, a_all, b_all = [], [], []
for p in range(1, pairs + 1):
    a, b = rate(f"a-{p}"), rate(f"b-{p}")
    a_all.append(a); b_all.append(b); ratios.append(b / a)
ratios.sort()
q = len(ratios) // 4
print(f"A median {sorted(a_all)[pairs // 2]:,.0f}/s, B median {sorted(b_all)[pairs // 2]:,.0f}/s")
print(f"B/A median {ratios[pairs // 2]:.3f} (middle half {ratios[q]:.3f}-{ratios[-q - 1]:.3f}; all {ratios[0]:.3f}-{ratios[-1]:.3f}); "
      f"B/A of the summed rates {sum(b_all) / sum(a_all):.3f}")
PY
