#!/usr/bin/env bash
# Control-plane benchmarks, side by side in one run: ISSUE throughput with 1 and 64 clients
# (group commit), REVOKE acknowledgement latency idle and under full verify load, verify
# latency with and without compactions running, and a bulk IMPORT of 1M keys.
# Server: 1 shard pinned to CPU $SERVER_CPU (the control plane is not pinned); loadgen on
# CPU $CLIENT_CPU. Usage: benches/control.sh   (results also land in target/bench-control/)
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
KEYS=${KEYS:-1000000}
IMPORT_KEYS=${IMPORT_KEYS:-1000000}
OUT=target/bench-control
mkdir -p "$OUT"
cargo build --release --workspace --quiet
BIN=target/release
DATA=$(mktemp -d)
SERVER=
trap 'kill $SERVER 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT

"$BIN/keyward-ctl" keys generate --data-dir "$DATA/data" --count "$KEYS" --out-keys "$DATA/keys.txt" >/dev/null 2>&1
"$BIN/keyward" serve --data-dir "$DATA/data" --listen 127.0.0.1:7599 --control 127.0.0.1:7598 --shards 1 \
  --cpus "$SERVER_CPU" >"$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 600); do grep -q "control port" "$OUT/server.log" && break; sleep 0.1; done
grep -q "control port" "$OUT/server.log" || { echo "server did not start"; cat "$OUT/server.log"; exit 1; }
CONTROL=(--control 127.0.0.1:7598 --token-file "$DATA/data/admin.token" --cpus "$CLIENT_CPU" --json)
VERIFY=(--server 127.0.0.1:7599 --keys "$DATA/keys.txt" --cpus "$CLIENT_CPU" --quiet --json)

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "# table: $KEYS credentials; server CPU $SERVER_CPU, clients CPU $CLIENT_CPU"
"$BIN/keyward-loadgen" --op issue --connections 1 --requests 3000 "${CONTROL[@]}" | tee "$OUT/issue-1.json"
"$BIN/keyward-loadgen" --op issue --connections 64 --requests 30000 "${CONTROL[@]}" | tee "$OUT/issue-64.json"
"$BIN/keyward-loadgen" --op revoke --connections 1 --requests 1000 --pace-ms 2 "${CONTROL[@]}" | tee "$OUT/revoke-idle.json"
"$BIN/keyward-loadgen" --connections 64 --depth 16 --duration 8 --warmup 0 "${VERIFY[@]}" >"$OUT/verify-during-revoke.json" &
LOAD=$!
sleep 1
"$BIN/keyward-loadgen" --op revoke --connections 1 --requests 1000 --pace-ms 2 "${CONTROL[@]}" | tee "$OUT/revoke-loaded.json"
wait $LOAD
cat "$OUT/verify-during-revoke.json"

# Verify latency at a moderate load, without and then with compactions running back to back.
"$BIN/keyward-loadgen" --connections 8 --depth 4 --duration 10 "${VERIFY[@]}" | tee "$OUT/verify-quiet.json"
"$BIN/keyward-loadgen" --connections 8 --depth 4 --duration 10 "${VERIFY[@]}" >"$OUT/verify-compacting.json" &
LOAD=$!
COMPACTIONS=0
while kill -0 $LOAD 2>/dev/null; do
  "$BIN/keyward-ctl" compact --control 127.0.0.1:7598 --data-dir "$DATA/data" --json >>"$OUT/compactions.jsonl" && COMPACTIONS=$((COMPACTIONS + 1))
done
wait $LOAD
cat "$OUT/verify-compacting.json"
echo "{\"compactions_during_run\":$COMPACTIONS}"
tail -n 1 "$OUT/compactions.jsonl"

"$BIN/keyward-loadgen" --op import --connections 4 --requests "$IMPORT_KEYS" --batch 1000 "${CONTROL[@]}" | tee "$OUT/import.json"
# An automatic compaction may still be running after the import; wait for our turn.
for _ in $(seq 120); do
  "$BIN/keyward-ctl" compact --control 127.0.0.1:7598 --data-dir "$DATA/data" --json >"$OUT/compact-after-import.json" 2>/dev/null && break
  sleep 1
done
cat "$OUT/compact-after-import.json"

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def get(name): return json.load(open(os.path.join(out, name + ".json")))
i1, i64 = get("issue-1"), get("issue-64")
print(f"ISSUE: 1 client {i1['requests_per_sec']:.0f}/s (p50 {i1['p50_us']:.0f} us), 64 clients {i64['requests_per_sec']:.0f}/s (group commit x{i64['requests_per_sec']/i1['requests_per_sec']:.1f})")
ri, rl = get("revoke-idle"), get("revoke-loaded")
print(f"REVOKE ack idle:   p50 {ri['p50_us']:.0f} us  p99 {ri['p99_us']:.0f} us")
print(f"REVOKE ack loaded: p50 {rl['p50_us']:.0f} us  p99 {rl['p99_us']:.0f} us")
q, c = get("verify-quiet"), get("verify-compacting")
print(f"verify p99.9 quiet {q['latency']['p99.9_us']:.0f} us, compacting {c['latency']['p99.9_us']:.0f} us: ratio {c['latency']['p99.9_us']/q['latency']['p99.9_us']:.2f}; mismatches {q['mismatches']}+{c['mismatches']}")
im = get("import")
print(f"IMPORT {im['items_per_sec']:.0f} keys/s ({im['requests']} batches of 1000 in {im['seconds']:.1f} s; batch p50 {im['p50_us']/1000:.0f} ms, p99 {im['p99_us']/1000:.0f} ms)")
ca = get("compact-after-import")
print(f"compaction of {ca['records']} keys: {ca['seconds']:.1f} s, {ca['bytes']/1e6:.0f} MB")
PY
