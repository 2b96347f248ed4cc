#!/usr/bin/env bash
# Cluster benchmarks on one machine, loopback only: a three-node Switchboard cluster against a
# single non-clustered node (same binary, no [cluster] section), with the same load generator.
#
#   (a) login storm: logins/s, i.e. resource binds, each a Raft-committed route change
#       (batched per node), plus the Raft entries committed (last_applied before/after);
#   (b) chat: messages/s and delivery latency between sessions on different nodes, on the same
#       node of the cluster, and on the single node.
#
# Plain TCP everywhere (c2s.require_tls = false, loadgen --tls none --mech scram-sha-256) so
# TLS handshakes stay out of the figures. Servers are pinned to one CPU, the generator to the
# other (both setups alike). Writes docs/cluster-benchmarks.md (see load-tests/cluster/README.md).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

STORM_USERS=1000
RATES=250,500,1000,2000,4000,8000
STEP_SECS=3
CHAT_USERS=300
PACED_MESSAGES=50
PACED_INTERVAL_MS=100
FLOOD_MESSAGES=200
FLOOD_INTERVAL_MS=2
CHAT_DURATION=60
C2S_BASE=35220          # node i: 127.0.0.1:$((C2S_BASE + i)); the single node: + 4
LINK_BASE=35230         # node i's NodeLink: 127.0.0.1i:$((LINK_BASE + i))
HTTP_BASE=35240         # node i's /metrics: 127.0.0.1:$((HTTP_BASE + i)); the single node: + 4
SERVER_CPU=0
LOADGEN_CPU=1
WORK=""
OUT="$ROOT/docs/cluster-benchmarks.md"
BUILD=1

usage() {
  cat <<EOF
usage: $0 [options]
  --storm-users N       accounts the storm cycles through (default $STORM_USERS)
  --rates LIST          storm target rates, logins/s (default $RATES)
  --step-secs T         storm step length (default $STEP_SECS)
  --chat-users N        chat users (default $CHAT_USERS)
  --paced M,I           paced chat: M messages per user every I ms (default $PACED_MESSAGES,$PACED_INTERVAL_MS)
  --flood M,I           flood chat (default $FLOOD_MESSAGES,$FLOOD_INTERVAL_MS)
  --work DIR            work dir (default: a new mktemp dir, removed at the end)
  --out FILE            report (default docs/cluster-benchmarks.md)
  --no-build            use the existing release binaries
EOF
}
while [ $# -gt 0 ]; do
  case "$1" in
    --storm-users) STORM_USERS=$2; shift 2;;
    --rates) RATES=$2; shift 2;;
    --step-secs) STEP_SECS=$2; shift 2;;
    --chat-users) CHAT_USERS=$2; shift 2;;
    --paced) PACED_MESSAGES=${2%,*}; PACED_INTERVAL_MS=${2#*,}; shift 2;;
    --flood) FLOOD_MESSAGES=${2%,*}; FLOOD_INTERVAL_MS=${2#*,}; shift 2;;
    --work) WORK=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --no-build) BUILD=0; shift;;
    -h|--help) usage; exit 0;;
    *) usage >&2; exit 2;;
  esac
done
# Every chat run has its own users (a message the server stored offline would otherwise be
# delivered in the next run): three setups × two loads on the cluster.
CHAT_RUNS=6
ACCOUNTS=$(( STORM_USERS > CHAT_RUNS * CHAT_USERS ? STORM_USERS : CHAT_RUNS * CHAT_USERS ))
SECRET="cluster-bench-secret-0123456789abcdef"

log() { echo "[cluster-bench $(date +%T)] $*" >&2; }

# ---------------------------------------------------------------- work dir, cleanup
# shellcheck source=../lib.sh
. "$ROOT/load-tests/lib.sh"
results_dir cluster-bench
POLL_PID=""
cleanup() {
  local p
  if [ -n "$POLL_PID" ]; then stop_pid "$POLL_PID"; fi
  stop_started
}
trap cleanup EXIT
trap 'exit 130' INT TERM

offline_total() {  # messages the current setup's routers stored offline (switchboard_routed_total)
  local port
  for port in "${HTTP_PORTS[@]}"; do curl -s --max-time 5 "http://127.0.0.1:$port/metrics" || true; done |
    awk '/^switchboard_routed_total\{.*destination="offline"/ { n += $NF } END { print n + 0 }'
}

# ---------------------------------------------------------------- binaries
release_binaries
three_node_ports_free

# ---------------------------------------------------------------- configs and accounts
for i in 1 2 3; do three_node_config "n$i" $(( C2S_BASE + i )) $(( HTTP_BASE + i )) "$i"; done
three_node_config single $(( C2S_BASE + 4 )) $(( HTTP_BASE + 4 ))
# Every node authenticates against its own account store: the same accounts on each, created
# offline (no node running) with `switchboard user import`.
for n in n1 n2 n3 single; do
  log "provisioning $ACCOUNTS accounts for $n"
  "$ROOT/load-tests/provision.sh" "$ACCOUNTS" "$WORK/$n/server.toml" "$SB" >"$WORK/$n/provision.log" 2>&1
done

# ---------------------------------------------------------------- nodes
json_get() {  # json_get KEY < JSON
  python3 -c 'import json,sys; v=json.load(sys.stdin).get(sys.argv[1]); print("null" if v is None else v)' "$1"
}
poll_status() {  # poll_status FILE: "epoch_secs last_applied term" every second (node 1)
  while :; do
    node_status n1 2>/dev/null | python3 -c '
import json, sys, time
s = json.load(sys.stdin)
print("%.3f %s %s %s" % (time.time(), s["last_applied"], s["term"], s["leader"]))' >> "$1" || true
    sleep 1
  done
}
# ---------------------------------------------------------------- scenarios
run_lg() {  # run_lg NAME SERVERS SCENARIO ARGS...
  local name=$1 servers=$2; shift 2
  local o0 o1
  log "$name: $*"
  o0=$(offline_total)
  timed_lg "$name" 300 "$servers" "$@"
  o1=$(offline_total)
  echo "{$LG_MEASURED, \"stored_offline\": $(( o1 - o0 ))}" > "$RES/$name.cpu.json"
}
CHAT_FIRST=1
chat_runs() {  # chat_runs PREFIX SERVERS [--cross-node-only]: the next two user ranges
  local prefix=$1 servers=$2; shift 2
  run_lg "$prefix-paced" "$servers" -n "$CHAT_USERS" --first "$CHAT_FIRST" chat \
    --messages "$PACED_MESSAGES" --interval-ms "$PACED_INTERVAL_MS" --duration-secs "$CHAT_DURATION" "$@"
  CHAT_FIRST=$(( CHAT_FIRST + CHAT_USERS ))
  run_lg "$prefix-flood" "$servers" -n "$CHAT_USERS" --first "$CHAT_FIRST" chat \
    --messages "$FLOOD_MESSAGES" --interval-ms "$FLOOD_INTERVAL_MS" --duration-secs "$CHAT_DURATION" "$@"
  CHAT_FIRST=$(( CHAT_FIRST + CHAT_USERS ))
}
STORM=(-n "$STORM_USERS" login --rates "$RATES" --step-secs "$STEP_SECS")
ALL="127.0.0.1:$(( C2S_BASE + 1 )),127.0.0.1:$(( C2S_BASE + 2 )),127.0.0.1:$(( C2S_BASE + 3 ))"
ONE="127.0.0.1:$(( C2S_BASE + 1 ))"
SINGLE="127.0.0.1:$(( C2S_BASE + 4 ))"

log "== cluster: starting n1 n2 n3"
for i in 1 2 3; do start_node "n$i" $(( C2S_BASE + i )) $(( HTTP_BASE + i )); done
wait_formed
FORMED_AT=$(date -u +%FT%T)
log "cluster formed: leader $(node_status n1 | json_get leader)"
sleep 2
snapshot storm-before
poll_status "$RES/storm-poll.txt" &
POLL_PID=$!; STARTED_PIDS+=("$POLL_PID")
run_lg storm-cluster "$ALL" "${STORM[@]}"
sleep 2
stop_pid "$POLL_PID"; POLL_PID=""
snapshot storm-after
chat_runs chat-cross "$ALL" --cross-node-only
chat_runs chat-mixed "$ALL"
chat_runs chat-onenode "$ONE"
snapshot end
STOPPED_AT=$(date -u +%FT%T)
stop_nodes

log "== single node"
CHAT_FIRST=1
start_node single $(( C2S_BASE + 4 )) $(( HTTP_BASE + 4 ))
run_lg storm-single "$SINGLE" "${STORM[@]}"
chat_runs chat-single "$SINGLE"
stop_nodes

# ---------------------------------------------------------------- report
keep_node_files n1 n2 n3 single
{
  machine_meta
  echo "switchboard_bin=$(date -u -r "$SB" +%FT%TZ)"
  echo "loadgen_bin=$(date -u -r "$LG" +%FT%TZ)"
  echo "storm_users=$STORM_USERS"; echo "rates=$RATES"; echo "step_secs=$STEP_SECS"
  echo "chat_users=$CHAT_USERS"
  echo "paced_messages=$PACED_MESSAGES"; echo "paced_interval_ms=$PACED_INTERVAL_MS"
  echo "flood_messages=$FLOOD_MESSAGES"; echo "flood_interval_ms=$FLOOD_INTERVAL_MS"
  echo "chat_duration=$CHAT_DURATION"
  echo "formed_at=$FORMED_AT"
  echo "stopped_at=$STOPPED_AT"
  echo "server_cpu=$SERVER_CPU"; echo "loadgen_cpu=$LOADGEN_CPU"
  echo "c2s_base=$C2S_BASE"; echo "link_base=$LINK_BASE"
} > "$RES/meta.txt"
mkdir -p "$(dirname "$OUT")"
python3 "$HERE/report.py" "$RES" > "$OUT"
log "wrote $OUT"
rm -rf "$HERE/last-run"; mkdir -p "$HERE/last-run"
cp "$RES"/*.json "$RES"/*.txt "$RES"/*.err "$RES"/*.load "$RES"/*.time "$RES"/*.toml "$RES"/*.log "$HERE/last-run/" 2>/dev/null || true
log "raw results copied to $HERE/last-run"
