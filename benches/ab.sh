#!/usr/bin/env bash
# Verify throughput of two server builds side by side, in one run, with the same load generator,
# the same key table and the same pinning, rounds alternating A and B (so drift hits both):
#   benches/ab.sh OLD_KEYWARD_BINARY [NEW_KEYWARD_BINARY] [seconds per run] [rounds]
# NEW defaults to this tree's release build. Server: 1 shard on CPU $SERVER_CPU; loadgen on
# CPU $CLIENT_CPU. Workloads: 16 connections x depth 16 (pipelined) and x depth 1 (DEPTHS).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: benches/ab.sh OLD_KEYWARD_BINARY [NEW_KEYWARD_BINARY] [seconds] [rounds]}
NEW=${2:-target/release/keyward}
SECONDS_PER_RUN=${3:-5}
ROUNDS=${4:-3}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
KEYS=${KEYS:-100000}
DEPTHS=${DEPTHS:-16 1}
cargo build --release --workspace --quiet
BIN=target/release
DATA=$(mktemp -d)
SERVER=
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT
"$BIN/keyward-ctl" keys generate --data-dir "$DATA/data" --count "$KEYS" --out-keys "$DATA/keys.txt" >/dev/null

run() { # label, binary, depth
  "$2" serve --data-dir "$DATA/data" --listen 127.0.0.1:7597 --control 127.0.0.1:7596 --shards 1 \
    --cpus "$SERVER_CPU" >"$DATA/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 600); do grep -q "control port" "$DATA/server.log" && break; sleep 0.1; done
  "$BIN/keyward-loadgen" --server 127.0.0.1:7597 --cpus "$CLIENT_CPU" --duration "$SECONDS_PER_RUN" \
    --warmup 1 --quiet --json --keys "$DATA/keys.txt" --connections 16 --depth "$3" >"$DATA/$1.json"
  kill "$SERVER"; wait "$SERVER" || true; SERVER=
}

echo "# A = $OLD"
echo "# B = $NEW"
echo "# $(nproc) CPUs; $KEYS keys; server CPU $SERVER_CPU, loadgen CPU $CLIENT_CPU; $SECONDS_PER_RUN s per run"
for round in $(seq "$ROUNDS"); do
  for depth in $DEPTHS; do
    # A then B in odd rounds, B then A in even ones, so neither always runs second.
    if [ $((round % 2)) = 1 ]; then
      run "a-$depth-$round" "$OLD" "$depth"; run "b-$depth-$round" "$NEW" "$depth"
    else
      run "b-$depth-$round" "$NEW" "$depth"; run "a-$depth-$round" "$OLD" "$depth"
    fi
  done
done
python3 - "$DATA" "$ROUNDS" $DEPTHS <<'PY'
import json, os, sys
data, rounds, depths = sys.argv[1], int(sys.argv[2]), [int(d) for d in sys.argv[3:]]
def rate(name): return json.load(open(os.path.join(data, name + ".json")))["requests_per_sec"]
for depth in depths:
    ratios = []
    for r in range(1, rounds + 1):
        a, b = rate(f"a-{depth}-{r}"), rate(f"b-{depth}-{r}")
        ratios.append(b / a)
        print(f"16x{depth} round {r}: A {a:,.0f}/s  B {b:,.0f}/s  B/A {b / a:.3f}")
    ratios.sort()
    print(f"16x{depth}: median B/A {ratios[len(ratios) // 2]:.3f} (range {ratios[0]:.3f}-{ratios[-1]:.3f})")
PY
