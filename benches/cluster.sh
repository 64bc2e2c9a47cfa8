#!/usr/bin/env bash
# Replicated mode, measured end to end on loopback (docs/PERFORMANCE.md, "Cluster"):
#   benches/cluster.sh [revocations] [issues]
# Starts a 3-server NATS JetStream cluster (nats-server on PATH) and three keyward nodes on one
# change stream (R3), then:
#   1. cross-node propagation: REVOKE on node A, then VERIFY on node C until it stops answering
#      valid; the time from A's acknowledgement to C's first refusal, idle;
#   2. the same while C serves a verify load (16 connections x depth 16);
#   3. change throughput: ISSUE from 16 clients on node A, then the same on a node in local
#      mode (its own delta log, no NATS), side by side.
# Node CPUs: every node and the load generator share the machine's CPUs (on 2 CPUs, as CI's,
# the figures are an upper bound of what dedicated hosts would see).
set -euo pipefail
cd "$(dirname "$0")/.."
REVOCATIONS=${1:-1000}
ISSUES=${2:-5000}
command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }
cargo build --release --workspace --quiet
BIN=$PWD/target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

CLIENT=(); ROUTE=()
for i in 0 1 2; do CLIENT+=("$(port)"); ROUTE+=("$(port)"); done
ROUTES="nats-route://127.0.0.1:${ROUTE[0]}, nats-route://127.0.0.1:${ROUTE[1]}, nats-route://127.0.0.1:${ROUTE[2]}"
for i in 0 1 2; do
  cat >"$WORK/nats-$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${CLIENT[$i]}
jetstream { store_dir: "$WORK/nats-$i", max_memory_store: 64MB, max_file_store: 1GB }
cluster { name: bench, listen: 127.0.0.1:${ROUTE[$i]}, routes: [$ROUTES] }
EOF
  nats-server -c "$WORK/nats-$i.conf" >"$WORK/nats-$i.log" 2>&1 &
  PIDS+=($!)
done
URLS="nats://127.0.0.1:${CLIENT[0]},nats://127.0.0.1:${CLIENT[1]},nats://127.0.0.1:${CLIENT[2]}"

start_node() { # index, extra flags...
  local i=$1; shift
  "$BIN/keyward" serve --data-dir "$WORK/node-$i" --listen "127.0.0.1:$((7610 + 10 * i))" \
    --control "127.0.0.1:$((7611 + 10 * i))" --metrics-listen "" --shards 1 "$@" \
    >"$WORK/node-$i.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do grep -q "control port" "$WORK/node-$i.log" && return; sleep 0.1; done
  echo "node $i did not start:" >&2; cat "$WORK/node-$i.log" >&2; exit 1
}
# Node 0 makes its data directory; the others get its secrets as an operator would.
start_node 0 --replication nats --nats-servers "$URLS" --node-name node-0
"$BIN/keyward-ctl" cluster export-secrets --data-dir "$WORK/node-0" --out "$WORK/secrets.json" >/dev/null
for i in 1 2; do
  "$BIN/keyward-ctl" cluster import-secrets --data-dir "$WORK/node-$i" "$WORK/secrets.json" >/dev/null
  start_node "$i" --replication nats --nats-servers "$URLS" --node-name "node-$i"
done
for i in 0 1 2; do
  for _ in $(seq 300); do
    "$BIN/keyward-ctl" stats --control "127.0.0.1:$((7611 + 10 * i))" --data-dir "$WORK/node-$i" --json \
      | grep -Eq '"following": ?true' && break
    sleep 0.1
  done
done

A_CONTROL=127.0.0.1:7611; C_VERIFY=127.0.0.1:7630
echo "# $(nproc) CPUs; NATS cluster of 3 (R3); 3 keyward nodes, 1 shard each; $(date -u +%F)"
echo "== cross-node propagation, idle: revoke on A, verify on C"
"$BIN/keyward-loadgen" --op propagation --control "$A_CONTROL" --token-file "$WORK/node-0/admin.token" \
  --server "$C_VERIFY" --requests "$REVOCATIONS"

echo "== cross-node propagation while C serves 16 x 16 pipelined verifies"
# 1000 imported keys: one per line is both the import file and the load generator's key file.
python3 -c 'for i in range(1000): print(f"bench_cluster_load_key_{i:06}")' >"$WORK/keys.txt"
"$BIN/keyward-ctl" import --control "$A_CONTROL" --data-dir "$WORK/node-0" "$WORK/keys.txt" >/dev/null
"$BIN/keyward-loadgen" --server "$C_VERIFY" --keys "$WORK/keys.txt" --connections 16 --depth 16 \
  --duration 600 --quiet --json >"$WORK/load.json" 2>&1 &
LOAD=$!
PIDS+=("$LOAD")
sleep 1
"$BIN/keyward-loadgen" --op propagation --control "$A_CONTROL" --token-file "$WORK/node-0/admin.token" \
  --server "$C_VERIFY" --requests "$REVOCATIONS"
kill -INT "$LOAD" 2>/dev/null || true

echo "== change throughput: ISSUE from 16 clients, replicated (node A) vs local mode"
"$BIN/keyward-loadgen" --op issue --control "$A_CONTROL" --token-file "$WORK/node-0/admin.token" \
  --connections 16 --requests "$ISSUES"
start_node 5
"$BIN/keyward-loadgen" --op issue --control 127.0.0.1:7661 --token-file "$WORK/node-5/admin.token" \
  --connections 16 --requests "$ISSUES"
