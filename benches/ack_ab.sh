#!/usr/bin/env bash
# REVOKE acknowledgement latency of two server builds side by side, in one run: one admin
# revoking a key every 2 ms (loadgen --op revoke), rounds alternating A and B, each on a fresh
# copy of the same table. Used to price the audit line that now shares each group commit.
#   benches/ack_ab.sh OLD_KEYWARD_BINARY [NEW_KEYWARD_BINARY] [revocations per run] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: benches/ack_ab.sh OLD_KEYWARD_BINARY [NEW_KEYWARD_BINARY] [revocations] [rounds]}
NEW=${2:-target/release/keyward}
REVOCATIONS=${3:-1000}
ROUNDS=${4:-3}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
KEYS=${KEYS:-100000}
cargo build --release --workspace --quiet
BIN=target/release
DATA=$(mktemp -d)
SERVER=
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT
"$BIN/keyward-ctl" keys generate --data-dir "$DATA/table" --count "$KEYS" --out-keys "$DATA/keys.txt" >/dev/null

run() { # label, binary
  rm -rf "$DATA/data"; cp -r "$DATA/table" "$DATA/data"
  "$2" serve --data-dir "$DATA/data" --listen 127.0.0.1:7595 --control 127.0.0.1:7594 --shards 1 \
    --cpus "$SERVER_CPU" >"$DATA/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 600); do grep -q "control port" "$DATA/server.log" && break; sleep 0.1; done
  "$BIN/keyward-loadgen" --op revoke --connections 1 --requests "$REVOCATIONS" --pace-ms 2 \
    --control 127.0.0.1:7594 --token-file "$DATA/data/admin.token" --cpus "$CLIENT_CPU" --json \
    >"$DATA/$1.json"
  kill "$SERVER"; wait "$SERVER" || true; SERVER=
}

echo "# A = $OLD"
echo "# B = $NEW"
echo "# $(nproc) CPUs; $KEYS keys; $REVOCATIONS revocations per run, one every 2 ms; server CPU $SERVER_CPU, client CPU $CLIENT_CPU"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then run "a-$round" "$OLD"; run "b-$round" "$NEW"
  else run "b-$round" "$NEW"; run "a-$round" "$OLD"; fi
done
python3 - "$DATA" "$ROUNDS" <<'PY'
import json, os, sys
data, rounds = sys.argv[1], int(sys.argv[2])
def load(name): return json.load(open(os.path.join(data, name + ".json")))
for r in range(1, rounds + 1):
    a, b = load(f"a-{r}"), load(f"b-{r}")
    print(f"round {r}: A p50 {a['p50_us']:.0f} µs p99 {a['p99_us']:.0f} µs | "
          f"B p50 {b['p50_us']:.0f} µs p99 {b['p99_us']:.0f} µs | B-A p50 {b['p50_us'] - a['p50_us']:+.0f} µs")
PY
