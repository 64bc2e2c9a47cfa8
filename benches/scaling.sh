#!/usr/bin/env bash
# How verify throughput grows with shards: keyward with 1, 2, 4 and 8 shards (one pinned per
# CPU), driven by keyward-loadgen on CPUs of its own, closed loop, same settings per shard.
# Runs only the shard counts that fit beside the client's CPUs on this machine, and says which
# it skipped. Results: a table on stdout, JSON per run in target/scaling/.
#
# Usage: benches/scaling.sh [seconds per run]
#   env: SHARDS="1 2 4 8"  KEYS=1000000  CONNECTIONS_PER_SHARD=16  DEPTH=16
#        CLIENT_CPUS_PER_SHARD=1 (client threads per shard; the client needs about as much CPU
#        as the server at this load)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
SHARDS=${SHARDS:-"1 2 4 8"}
KEYS=${KEYS:-1000000}
CONNECTIONS_PER_SHARD=${CONNECTIONS_PER_SHARD:-16}
DEPTH=${DEPTH:-16}
CLIENT_CPUS_PER_SHARD=${CLIENT_CPUS_PER_SHARD:-1}
OUT=target/scaling
mkdir -p "$OUT"
rm -f "$OUT"/*.json
cargo build --release --quiet -p keyward -p keyward-ctl -p keyward-loadgen
BIN=target/release
CPUS=$(nproc)
DATA=$(mktemp -d)
SERVER=
trap 'if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; fi; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT

echo "# machine: $CPUS CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "# $KEYS credentials; per shard: $CONNECTIONS_PER_SHARD connections x depth $DEPTH, $CLIENT_CPUS_PER_SHARD client CPU(s); $SECONDS_PER_RUN s per run"
"$BIN/keyward-ctl" keys generate --data-dir "$DATA/data" --count "$KEYS" --out-keys "$DATA/keys.txt" >/dev/null 2>&1

ran=()
skipped=()
for shards in $SHARDS; do
  client_cpus=$((shards * CLIENT_CPUS_PER_SHARD))
  if [ $((shards + client_cpus)) -gt "$CPUS" ]; then
    skipped+=("$shards")
    continue
  fi
  server_list=$(seq -s, 0 $((shards - 1)))
  client_list=$(seq -s, "$shards" $((shards + client_cpus - 1)))
  "$BIN/keyward" serve --data-dir "$DATA/data" --listen 127.0.0.1:7599 --control 127.0.0.1:7598 \
    --shards "$shards" --cpus "$server_list" >"$OUT/server-$shards.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 600); do grep -q "control port" "$OUT/server-$shards.log" && break; sleep 0.1; done
  "$BIN/keyward-loadgen" --server 127.0.0.1:7599 --keys "$DATA/keys.txt" \
    --connections $((shards * CONNECTIONS_PER_SHARD)) --depth "$DEPTH" --threads "$client_cpus" \
    --cpus "$client_list" --duration "$SECONDS_PER_RUN" --warmup 1 --quiet --json >"$OUT/shards-$shards.json"
  kill "$SERVER"; wait "$SERVER" || true; SERVER=
  ran+=("$shards")
done

python3 - "$OUT" "${ran[*]:-}" <<'PY'
import json, os, sys
out, ran = sys.argv[1], [int(s) for s in sys.argv[2].split()]
base = None
print(f"{'shards':>6} {'requests/s':>12} {'per shard':>11} {'vs 1 shard':>10} {'p50 µs':>8} {'p99 µs':>8} {'wrong':>6}")
for shards in ran:
    r = json.load(open(os.path.join(out, f"shards-{shards}.json")))
    rps = r["requests_per_sec"]
    base = base or (rps if shards == 1 else None)
    scale = f"{rps / base:.2f}x" if base else "-"
    print(f"{shards:>6} {rps:>12,.0f} {rps / shards:>11,.0f} {scale:>10} {r['latency']['p50_us']:>8.0f} {r['latency']['p99_us']:>8.0f} {r['mismatches']:>6}")
PY
if [ ${#skipped[@]} -gt 0 ]; then
  echo "# skipped ${skipped[*]} shard(s): this machine has $CPUS CPUs, and each shard needs its own CPU plus $CLIENT_CPUS_PER_SHARD for its share of the client"
fi
